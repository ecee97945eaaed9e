"""Plumbing of the language-model recycling benchmark (benchmarks/lm_recycling.py, lm_report.py, lm_tasks.py).

Synthetic fixtures for the bookkeeping (splits, masking, learning-rate choice, SE over tasks, targets); one
short test on the real SmolLM2-135M checks the exact-match flag against greedy generation, the completion
loss against transformers' own, and that vLoRA and EigenLoRAx get the same parameter count.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import lm_recycling as lm
from benchmarks import lm_report
from benchmarks.lm_tasks import LMExample, lm_tasks, load_lm_task, make_split


class _CharTokenizer:
    """One token per character, BOS = 1: enough to check truncation and masking exactly."""

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) % 200 + 2 for c in text]

        class _Out:
            input_ids = ([1] if add_special_tokens else []) + ids

        return _Out()


def test_split_is_deterministic_disjoint_and_deduplicated():
    pairs = [(f"p{i % 150}", f" c{i}") for i in range(300)]  # 150 distinct prompts, each twice
    train, val, test = make_split(pairs, "t", n_val=10, n_test=20, max_train=1000)
    again = make_split(pairs, "t", n_val=10, n_test=20, max_train=1000)
    assert (train, val, test) == again
    prompts = [e.prompt for e in train + val + test]
    assert len(prompts) == len(set(prompts)) == 150 and (len(val), len(test)) == (10, 20)
    assert all(e.completion.endswith("\n") for e in train)


def test_every_task_loads_with_disjoint_splits_and_families():
    specs = lm_tasks()
    assert len(specs) >= 16 and len({s.family for s in specs}) >= 4
    for spec in specs:
        data = load_lm_task(spec.name)
        assert (len(data.validation), len(data.test)) == (32, 64) and len(data.train) >= 256
        assert not {e.prompt for e in data.test} & {e.prompt for e in data.train + data.validation}


def test_no_task_reads_wordnet_nouns():
    assert all("data.noun" not in s.source for s in lm_tasks())


def test_encode_keeps_bos_and_the_prompt_end_and_masks_the_prompt():
    tok = _CharTokenizer()
    (e,) = lm.encode(tok, [LMExample("abcdefghij", " xyz\n")], max_length=8, max_completion=3)
    assert len(e.ids) == 8 and e.ids[0] == 1
    assert e.ids[1:5] == tuple(ord(c) + 2 for c in "ghij")  # the end of the prompt survives
    assert e.prompt_len == 5 and e.ids[5:] == tuple(ord(c) + 2 for c in " xy")
    short = lm.Encoded((1, 5, 6, 7), 2)
    ids, mask, labels = lm.collate([e, short], pad_id=0)
    assert labels[0].tolist() == [-100] * 5 + list(e.ids[5:])
    assert labels[1].tolist() == [-100, -100, 6, 7] + [-100] * 4
    assert mask[1].tolist() == [1] * 4 + [0] * 4


def test_grid_order_is_priority_ordered_and_shards_partition_it():
    config = {
        "held_out": ["a", "b"],
        "grid": [
            {"seeds": [0], "examples": [32], "held_out": ["a"], "methods": ["base", "lora/r8"]},
            {"seeds": [0, 1], "examples": [32], "methods": ["base", "lora/r8"]},
        ],
    }
    cells = lm.grid_cells(config)
    assert cells[:2] == [("base", "a", 0, 32), ("lora/r8", "a", 0, 32)]
    assert len(cells) == len(set(cells)) == 8
    shards = [[c for i, c in enumerate(cells) if lm.in_shard(i, f"{k}/3")] for k in range(3)]
    assert sorted(sum(shards, [])) == sorted(cells)


def test_method_names_parse_and_bad_ones_are_refused():
    assert lm.parse_method("eigen/k8/bank/r1") == lm.Method("eigen", k=8, init="bank", r=1)
    assert lm.parse_method("random/k32/mean") == lm.Method("random", k=32, init="mean")
    assert lm.parse_method("vlora/k8") == lm.Method("vlora", k=8)
    assert not lm.parse_method("mean").trains
    for bad in ("random/k8/bank", "eigen/k8", "lora", "foo/k1"):
        with pytest.raises(SystemExit):
            lm.parse_method(bad)


def _row(method, task, seed, lr, val, test, params=100, n=32):
    return {
        "method": method,
        "task": task,
        "seed": seed,
        "n": n,
        "lr": lr,
        "val_loss": val,
        "test_loss": test,
        "test_exact_match": 0.0,
        "params": params,
    }


def test_the_learning_rate_is_chosen_on_validation_and_only_from_a_complete_grid():
    summary = {
        "lr_grids": {"lora/r8": [0.001, 0.003]},
        "runs": [
            _row("lora/r8", "a", 0, 0.001, val=2.0, test=1.0),
            _row("lora/r8", "a", 0, 0.003, val=1.5, test=3.0),  # better on validation: chosen, worse test
            _row("lora/r8", "b", 0, 0.001, val=1.0, test=1.0),  # grid incomplete: not a cell
            _row("base", "a", 0, None, val=4.0, test=4.0),
        ],
    }
    cells = lm_report.chosen_cells(summary)
    assert cells[("lora/r8", "a", 0, 32)]["test_loss"] == 3.0
    assert ("lora/r8", "b", 0, 32) not in cells and ("base", "a", 0, 32) in cells


def test_paired_differences_average_seeds_within_a_task_and_take_the_se_over_tasks():
    runs = []
    diffs = {"t1": (-0.1, -0.3), "t2": (-0.2, -0.2), "t3": (0.0, -0.4)}
    for task, per_seed in diffs.items():
        for seed, d in enumerate(per_seed):
            runs += [_row("x", task, seed, None, 1, 2.0 + d), _row("y", task, seed, None, 1, 2.0)]
    cells = lm_report.chosen_cells({"runs": runs})
    r = lm_report.paired(cells, "x", "y", 32)
    assert r["tasks"] == 3 and r["mean"] == pytest.approx(-0.2)
    assert r["se"] == pytest.approx(0.0)  # every task's seed mean is -0.2: no spread over tasks
    assert r["verdict"] == "A better (beyond 2 SE)"
    one = lm_report.paired(cells, "x", "y", 32, ["t1"])
    assert one["tasks"] == 1 and not math.isfinite(one["se"])


def test_lora_fraction_and_the_targets():
    runs = []
    for task, (base, lora, eig, rnd) in {
        "a": (5, 3, 3.1, 3.6),
        "b": (4, 2, 2.1, 2.5),
        "c": (6, 4, 4.1, 4.6),
    }.items():
        runs += [
            _row("base", task, 0, None, 1, base, params=0),
            _row("lora/r8", task, 0, None, 1, lora, params=921_600),
            _row("eigen/k8/zero", task, 0, None, 1, eig, params=15_360),
            _row("random/k8/zero", task, 0, None, 1, rnd, params=15_360),
            _row("eigen/k8/bank/r1", task, 0, None, 1, eig, params=1_920),
            _row("vlora/k8", task, 0, None, 1, eig + 0.1, params=1_920),
        ]
    summary = {"runs": runs, "config": {}}
    cells = lm_report.chosen_cells(summary)
    frac = lm_report.lora_fraction(cells, "eigen/k8/zero", 32)
    assert frac["fraction"] == pytest.approx(0.95)
    found = lm_report.targets(summary, cells)
    assert [t["status"] for t in found] == ["MET", "MET", "MET"]
    assert "eigen/k8/bank/r1 (1,920 vs LoRA 921,600, 480x) reaches 95%" in found[1]["detail"]
    # a pair measured on one task so far has no SE: it is listed as not judged, not counted as missed
    runs += [_row("eigen/k32/zero", "a", 0, None, 1, 3.0), _row("random/k32/zero", "a", 0, None, 1, 3.5)]
    summary = {"runs": runs, "config": {}}
    first = lm_report.targets(summary, lm_report.chosen_cells(summary))[0]
    assert (
        first["status"] == "MET"
        and "not judged yet: recycled - random, both zero init, K=32" in first["detail"]
    )


def test_render_writes_a_report_from_synthetic_runs(tmp_path):
    runs = [
        _row(m, t, 0, None, 1.0, v, params=p)
        for t in ("a", "b")
        for m, v, p in (("base", 5.0, 0), ("lora/r8", 3.0, 921_600), ("mean", 4.5, 0))
    ]
    summary = {
        "config": {
            "name": "t",
            "model": "m",
            "max_length": 40,
            "max_completion": 16,
            "data": {"validation": 32, "test": 64},
            "grid": [{"methods": ["base", "mean", "lora/r8"]}],
            "bank": {"train": {"max_steps": 64}},
            "train": {"max_steps": 40},
        },
        "cells_expected": 6,
        "runs": runs,
        "bank": [],
        "tasks": {},
    }
    path = lm_report.render(summary, tmp_path)
    text = path.read_text()
    assert "mean adapter (no training) - base | -0.500 +- 0.000 (2)" in text
    assert (tmp_path / "t_params.png").stat().st_size > 1000


# ----------------------------------------------------------------------------------------------
# The real model
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    from edge_eigenlora.pretrained import load_causal_lm

    return load_causal_lm()


@pytest.mark.real_model
def test_completion_loss_and_exact_match_agree_with_transformers_and_greedy_generation(smollm2):
    model, tok = smollm2
    data = load_lm_task("label_verb_category").test[:6] + (
        LMExample('Define the verb "run":', " move fast\n"),
    )
    encoded = lm.encode(tok, data, max_length=40, max_completion=16)
    ids, mask, labels = lm.collate(encoded, tok.pad_token_id)
    with torch.no_grad():
        total, count, exact = lm.completion_loss(model, ids, mask, labels)
        reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert float(total / count) == pytest.approx(float(reference), rel=1e-4)
    for e, flag in zip(encoded, exact.tolist(), strict=True):
        prompt = torch.tensor([e.ids[: e.prompt_len]])
        with torch.no_grad():
            out = model.generate(
                prompt,
                max_new_tokens=len(e.ids) - e.prompt_len,
                do_sample=False,
                attention_mask=torch.ones_like(prompt),
                pad_token_id=tok.pad_token_id,
            )
        assert (out[0, e.prompt_len :].tolist() == list(e.ids[e.prompt_len :])) == flag


@pytest.mark.real_model
def test_vlora_and_eigenlorax_arms_on_smollm2_share_a_count_and_vlora_starts_at_its_mean(tmp_path, smollm2):
    from edge_eigenlora.adapters import load_bank
    from edge_eigenlora.synthetic import write_peft_adapter

    model, tok = smollm2
    rng = np.random.default_rng(0)
    shapes = {n: (m.out_features, m.in_features) for n, m in model.named_modules() if n.endswith(lm.TARGETS)}
    dirs = []
    for i in range(3):
        mods = {
            n: (rng.standard_normal((8, d_in)) * 0.02, rng.standard_normal((d_out, 8)) * 0.02)
            for n, (d_out, d_in) in shapes.items()
        }
        dirs.append(
            write_peft_adapter(
                tmp_path / f"a{i}", mods, r=8, alpha=16, base_model="HuggingFaceTB/SmolLM2-135M-Instruct"
            )
        )
    bench = lm.Bench.__new__(lm.Bench)
    bench.model, bench.tokenizer, bench.config = model, tok, {}
    bench._bank, bench._bases = load_bank(dirs), {}
    vl, vparams, vcount = lm.build_run_model(bench, lm.Method("vlora", k=2), seed=0)
    eg, _, ecount = lm.build_run_model(bench, lm.Method("eigen", k=2, init="bank", r=1), seed=0)
    assert vcount == ecount == 2 * 2 * len(shapes)
    # vLoRA's new task: B loadings zero, A loadings small random (its orthogonal_init); with the A loadings
    # zeroed too, its delta W is exactly mean(B) @ mean(A) of the bank's scale-folded factors
    assert all(float(p.abs().max()) == 0.0 for p in vparams[1::2])
    assert 0 < max(float(p.abs().max()) for p in vparams[0::2]) < 0.1
    with torch.no_grad():
        for p in vparams[0::2]:
            p.zero_()
    bank = bench.bank()
    name = next(iter(shapes))
    mean_a = np.mean([a.modules[name].A for a in bank.adapters], axis=0)
    mean_b = np.mean([a.modules[name].B for a in bank.adapters], axis=0)
    x = torch.randn(2, shapes[name][1])
    linear = vl.get_submodule(name)
    with torch.no_grad():
        got = linear(x) - torch.nn.functional.linear(x, linear.weight)
    want = x.numpy() @ (mean_b @ mean_a).T
    assert np.allclose(got.numpy(), want, atol=1e-5)


def test_workers_run_each_stage_as_shards_then_the_report(monkeypatch):
    started, reports = [], []

    class _Child:
        def __init__(self, cmd):
            started.append(cmd)

        def wait(self):
            return 0

    monkeypatch.setattr(lm.subprocess, "Popen", _Child)
    monkeypatch.setattr(lm, "write_results", lambda config, lr_index=None: reports.append(lr_index))
    assert lm.main(["--config", "quick", "--workers", "2", "--lr-index", "1", "--methods", "eigen"]) == 0
    stages = [(c[c.index("--stage") + 1], c[c.index("--shard") + 1]) for c in started]
    assert stages == [("bank", "0/2"), ("bank", "1/2"), ("grid", "0/2"), ("grid", "1/2")]
    assert all(
        c[c.index("--lr-index") + 1] == "1" and c[c.index("--methods") + 1] == "eigen" for c in started
    )
    assert reports == [1]  # the report once, after every shard of the grid


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--workers", "2", "--shard", "1/2"], "give --workers or --shard, not both"),
    ],
)
def test_workers_refuses_a_count_below_one_and_a_shard_beside_it(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        lm.main(["--config", "quick", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_every_benchmark_cache_moves_with_edge_eigenlora_cache(tmp_path):
    code = (
        "from benchmarks import accuracy, lm_recycling, perf\n"
        "print(accuracy.CACHE, lm_recycling.CACHE, perf.CACHE)"
    )
    env = dict(os.environ, EDGE_EIGENLORA_CACHE=str(tmp_path))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [str(tmp_path / "bench"), str(tmp_path / "bench"), str(tmp_path / "perf")]


def test_shard_workers_appending_to_one_run_log_lose_no_line(tmp_path):
    """Four writers, lines longer than a pipe buffer: a writer that split a line into several writes loses lines
    here (tried: 394 of 400 survived two writes per line)."""
    log = tmp_path / "runs.jsonl"
    code = (
        "import sys; from pathlib import Path; from benchmarks import append_jsonl\n"
        "for i in range(100): append_jsonl(Path(sys.argv[1]), {'w': sys.argv[2], 'i': i, 'pad': 'x' * 20000})"
    )
    root = Path(__file__).resolve().parents[1]
    workers = [subprocess.Popen([sys.executable, "-c", code, str(log), str(w)], cwd=root) for w in range(4)]
    assert [w.wait() for w in workers] == [0] * 4
    rows = lm.read_jsonl(log)
    assert len(rows) == 400 and {(r["w"], r["i"]) for r in rows} == {
        (str(w), i) for w in range(4) for i in range(100)
    }
