"""benchmarks/lm.py's pure helpers: the spread and paired-ratio math, and the report rendered from a result
(every table, a missing peers module, targets met and not met). Fast: no model, no bundle."""

import pytest

from benchmarks import lm


def test_spread_is_median_min_max_and_count():
    assert lm.spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}


def test_paired_ratios_divide_within_each_round():
    rounds = [{"a": 2.0, "b": 1.0}, {"a": 9.0, "b": 3.0}, {"a": 4.0, "b": 4.0}, {"a": 1.0}]
    r = lm.paired_ratios(rounds, "a", "b")
    assert r == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}  # the round without b is left out


def _s(x):
    return {"median": x, "min": x * 0.9, "max": x * 1.1, "n": 5}


def _result(peers):
    lat = {
        "summary": {n: {"prefill_ms": _s(100.0), "decode_ms": _s(20.0)} for n, _, _ in lm.LATENCY_CONFIGS},
        "ratios": {
            f"{name} {m}": _s(1.02 if name.startswith("unmerged/base") else 1.0)
            for name in (
                "unmerged/base fp32",
                "unmerged/base int8",
                "unmerged/base int4",
                "control/unmerged fp32",
                "unmerged int8/base fp32",
                "unmerged int4/base fp32",
            )
            for m in ("decode", "prefill")
        },
        "same_tokens_unmerged_vs_merged_fp32": True,
    }
    lat_slow = {**lat, "ratios": {**lat["ratios"], "unmerged/base fp32 decode": _s(1.2)}}
    lat["ratios"].update({"factored/base fp32 decode": _s(1.01), "factored/base fp32 prefill": _s(1.0)})
    lat["same_tokens_factored_vs_shared_fp32"] = True
    kv = {
        "positions": [16, 240],
        "steps": 8,
        "summary": {f"{a}|{p}": _s(10.0) for a in ("bound", "numpy") for p in (16, 240)},
        "growth": {"bound": _s(1.05), "numpy": _s(1.4)},
        "numpy/bound": {"16": _s(1.0), "240": _s(1.3)},
        "arithmetic_growth": 1.057,
        "cache_mib": {"16": 0.7, "240": 10.5},
    }
    per_row = {
        "tasks": ["a", "b", "c", "d"],
        "prompt_tokens": [9, 9, 8, 7],
        "new_tokens": 24,
        "summary": {"per_row batch (4 tasks)": _s(60.0), "sequential (4 x shared)": _s(20.0)},
        "ratio": _s(3.0),
        "control_ratio": _s(3.5),
        "rows_equal": [True, True, True, False],
        "first_difference": [None, None, None, 7],
    }
    arm = {"peak_mib": _s(500.0), "import_mib": _s(50.0), "above_import_mib": _s(450.0), "work_s": _s(3.0)}
    memory = {
        "threads": 2,
        "train_batch": [8, 64],
        "train_steps": 2,
        "generate_tokens": 16,
        "summary": {a: arm for a in lm.MEMORY_ARMS},
        "ratios": {"device train / torch LoRA train, above import": 0.4},
    }
    size = {
        "bundle_total": 2**30,
        "shared_graph": 2**29,
        "merged_graph": 2**29,
        "phone_bundle": 2**29 + 2**20,
        "task_file": 250_000,
    }
    q = {"nats_per_token": 2.5, "delta_vs_fp32_per_text": 0.01, "delta_se": 0.002, "texts": 64}
    by = {
        "sizes": {"fp32": size, "int8": size, "int4": size},
        "peft_adapter_bytes": 3_600_000,
        "ratios": {"int4 / fp32 phone_bundle": 0.21},
        "quality": {"fp32|task x (shared)": q, "int4|task x (shared)": q},
    }
    meta = {
        "command": "python -m benchmarks.lm --quick",
        "settings": {"name": "quick"},
        "machine": "x86_64, 2 cores (shared)",
        "onnxruntime": "1.0",
        "load_average": [5.5, 6.25],
        "k": 16,
        "rank": 8,
        "wall_s": 600.0,
    }
    tables = {
        "latency": {"prompt_tokens": 128, "threads": {"1": lat, "2": lat_slow}},
        "kv_cache": kv,
        "per_row": per_row,
        "memory": memory,
        "bytes": by,
        "peers": peers,
    }
    return {"meta": meta, "tables": tables}


@pytest.mark.parametrize(
    "peers",
    [{"error": "benchmarks/lm_peers.py is not available"}, {"markdown": "| peer |\n", "artifacts": {}}],
)
def test_report_renders_every_table_with_its_command_and_targets(peers):
    text = lm.render_report(_result(peers))
    assert text.startswith("# Decoder LMs on the device")
    assert "`python -m benchmarks.lm --quick`" in text and "load average 5.5 to 6.2 while measuring" in text
    assert (
        "1 thread(s): unmerged fp32 decode 1.010x base with the factored graph, 1.020x with the shared graph "
        "(met)" in text
    )
    assert ", of factored and shared equal." in text
    assert "2 thread(s): unmerged fp32 decode 1.200x with the shared graph (NOT met)" in text
    assert "| bound | 10.00 (9.00-11.00) | 10.00 (9.00-11.00) | 1.050 (0.945-1.155) |" in text
    assert "10.5 MiB at 240" in text
    assert "3.00 (2.70-3.30)x (target at least 2.5x: met)" in text and "3 of 4 rows" in text
    assert "0.40x (met)" in text
    assert "| fp32 | 1024.0 | 512.0 | 512.0 | 513.0 | 244.1 |" in text
    assert "| int4, task x (shared) | 2.5000 | +0.0100 +- 0.0020 | 64 |" in text
    if "error" in peers:
        assert "## Not measured\n\n- peers: benchmarks/lm_peers.py is not available" in text
    else:
        assert "| peer |" in text


def test_report_leaves_out_tables_not_measured():
    result = _result({"error": "x"})
    result["tables"] = {"per_row": result["tables"]["per_row"]}
    text = lm.render_report(result)
    assert "## Per-row" in text and "## Latency" not in text and "## Memory" not in text
