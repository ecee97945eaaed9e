"""Bundle I/O on the real all-MiniLM-L6-v2: export time, bundle bytes against one graph, the cost of adding
a task, and the memory of a runtime that holds the inference and train-step sessions at once.

    python -m benchmarks.bundle_io prepare --dir D           # synthetic MiniLM-shaped bank -> basis, two tasks
    python -m benchmarks.bundle_io measure --dir D --label L # export + sizes + add-task (API common to versions)
    python -m benchmarks.bundle_io memory --dir D            # RSS with run + train sessions, shared vs not
    python -m benchmarks.bundle_io report --dir D            # benchmarks/results/bundle/{bundle_io.json,report.md}

`measure` uses only calls that every version of the toolkit has (export_bundle, add_task, verify_bundle),
so the same script times the previous version (run it with PYTHONPATH at an older checkout, `--label before`).
The bank is synthetic (the file format and the sizes are the point here, not accuracy); the model is real.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import CACHE_ROOT

RESULTS = Path(__file__).resolve().parent / "results" / "bundle"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODULES = [f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")]
RANK, K = 8, 32


def prepare(folder: Path) -> None:
    import copy

    import torch

    from edge_eigenlora.adapters import load_bank
    from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
    from edge_eigenlora.model import TextClassifier, attach_basis, eigenlora_layers, task_from_model
    from edge_eigenlora.pretrained import load_encoder
    from edge_eigenlora.synthetic import write_peft_adapter
    from edge_eigenlora.task import save_task

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    dirs = [
        write_peft_adapter(
            folder / "bank" / f"a{i}",
            {
                m: (rng.standard_normal((8, 384)) * 0.05, rng.standard_normal((384, 8)) * 0.05)
                for m in MODULES
            },
            r=8,
            alpha=16,
            base_model=MODEL,
        )
        for i in range(8)
    ]
    basis = fit_basis(load_bank(dirs), SubspaceConfig(k=K), progress=False)
    save_basis(basis, folder / "basis.safetensors")
    encoder, _ = load_encoder()
    for i, labels in enumerate((2, 4)):
        clf = TextClassifier(attach_basis(copy.deepcopy(encoder), basis, rank=RANK), num_labels=labels)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for layer in eigenlora_layers(clf).values():
                layer.eigenlora_alpha_B.copy_(torch.randn(layer.eigenlora_alpha_B.shape, generator=g) * 0.01)
        save_task(task_from_model(clf, f"t{i}"), folder / f"t{i}.safetensors")


def _read_bytes() -> int:
    """Bytes this process has read through read() so far (/proc/self/io rchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return -1


def _size(folder: Path, suffixes: tuple[str, ...] = (".onnx", ".data")) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffixes))


def measure(folder: Path, label: str) -> dict:
    from edge_eigenlora import bundle
    from edge_eigenlora.export import ExportConfig, export_bundle

    out = folder / label
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = folder / "t0.safetensors"
    start = time.perf_counter()
    export_bundle(
        MODEL, folder / "basis.safetensors", out / "one", config=ExportConfig(rank=RANK, basis_quant="none")
    )
    one_graph_s = time.perf_counter() - start
    config = ExportConfig(
        rank=RANK,
        basis_quant="none",
        variants=("shared", "per_row", "merged"),
        merged_task="t0",
        train_step=True,
    )
    start = time.perf_counter()
    export_bundle(MODEL, folder / "basis.safetensors", out / "all", config=config, tasks=[t0])
    all_s = time.perf_counter() - start
    before = _read_bytes()
    start = time.perf_counter()
    bundle.add_task(out / "all", folder / "t1.safetensors", name="added")
    add_s = time.perf_counter() - start
    add_read = _read_bytes() - before
    start = time.perf_counter()
    bundle.verify_bundle(out / "all")
    verify_s = time.perf_counter() - start
    row = {
        "label": label,
        "export_one_graph_s": round(one_graph_s, 1),
        "export_four_graphs_s": round(all_s, 1),
        "one_graph_bytes": _size(out / "one"),
        "four_graphs_bytes": _size(out / "all"),
        "bundle_bytes": _size(out / "all", ("",)),
        "add_task_s": round(add_s, 3),
        "add_task_read_bytes": add_read,
        "verify_s": round(verify_s, 2),
    }
    row["four_over_one"] = round(row["four_graphs_bytes"] / row["one_graph_bytes"], 3)
    print(json.dumps(row))
    (folder / f"measure_{label}.json").write_text(json.dumps(row, indent=2))
    return row


_MEMORY_CHILD = """
import json, sys, time
from dataclasses import replace
import numpy as np
from edge_eigenlora.runtime import DeviceRuntime, RuntimeOptions
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
base = hwm()
settings = json.loads(sys.argv[2])
rt = DeviceRuntime(sys.argv[1], options=replace(RuntimeOptions.low_memory(threads=1), **settings))
ids = np.full((8, 64), 1000, np.int64); mask = np.ones_like(ids)
task = rt.task('t0')
rt.run(input_ids=ids, attention_mask=mask, task=task)
steps = []
for _ in range(6):
    start = time.perf_counter()
    rt.train_step(ids, mask, np.zeros(8, np.int64), task.coefficients, task.head_weight, task.head_bias)
    steps.append(time.perf_counter() - start)
print(json.dumps({"import_mib": base, "peak_mib": hwm(), "step_ms": 1000 * float(np.median(steps[1:]))}))
"""

# Arms: the device trainer's low-memory settings (arena off, no constant folding) with prepacking and weight
# sharing switched one at a time; "previous" is what low_memory() was before (prepacking on, no sharing) on the
# format-1 bundle that the previous version wrote, when `measure --label before` has made one.
ARMS = {
    "prepack, separate (previous low_memory)": {"prepacking": True, "share_weights": False},
    "prepack, shared": {"prepacking": True, "share_weights": True},
    "no prepack, separate": {"prepacking": False, "share_weights": False},
    "no prepack, shared (low_memory now)": {"prepacking": False, "share_weights": True},
}


def memory(folder: Path, rounds: int = 3) -> dict:
    """Peak RSS and train-step time of one process holding the inference and train-step sessions (interleaved)."""
    bundles = {name: folder / "after" / "all" for name in ARMS}
    if (folder / "before" / "all").is_dir():
        bundles["format-1 bundle, previous low_memory"] = folder / "before" / "all"
    settings = {
        **ARMS,
        "format-1 bundle, previous low_memory": ARMS["prepack, separate (previous low_memory)"],
    }
    rows: dict[str, list[dict]] = {name: [] for name in bundles}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        for name in rng.permutation(list(bundles)):
            result = subprocess.run(
                [sys.executable, "-c", _MEMORY_CHILD, str(bundles[name]), json.dumps(settings[name])],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            rows[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
    summary: dict = {"rounds": rounds, "batch": [8, 64], "arms": {}}
    for name, values in rows.items():
        summary["arms"][name] = {
            "settings": settings[name],
            "peak_mib": round(float(np.median([v["peak_mib"] for v in values])), 1),
            "above_import_mib": round(float(np.median([v["peak_mib"] - v["import_mib"] for v in values])), 1),
            "step_ms": round(float(np.median([v["step_ms"] for v in values])), 1),
            "peak_mib_all": [round(v["peak_mib"], 1) for v in values],
        }
    print(json.dumps(summary))
    (folder / "memory.json").write_text(json.dumps(summary, indent=2))
    return summary


def report(folder: Path) -> None:
    found = {p.stem.split("_", 1)[1]: json.loads(p.read_text()) for p in folder.glob("measure_*.json")}
    rows = {label: found[label] for label in sorted(found, key=lambda label: (label != "before", label))}
    mem = json.loads((folder / "memory.json").read_text()) if (folder / "memory.json").exists() else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bundle_io.json").write_text(json.dumps({"measure": rows, "memory": mem}, indent=2) + "\n")
    mib = 1 << 20
    lines = [
        "# Bundle I/O (all-MiniLM-L6-v2, fp32, r=8, K=32)",
        "",
        "Made by `python -m benchmarks.bundle_io` (prepare, measure --label before/after, memory, report); `before`",
        "is the same `measure` run against the previous version of the toolkit (commit 9f911f9). One graph: a bundle",
        "with the shared variant only. Four graphs: shared, per-row, merged and the train step. Timings on a shared",
        "2-core machine, the two rows one after the other, not interleaved: the export seconds are indicative (load",
        "can differ between the rows); sizes and bytes read are exact.",
        "",
        "| version | export 1 graph (s) | export 4 graphs (s) | 1 graph (MiB) | 4 graphs (MiB) | 4 / 1 |"
        " add a task (s) | read by add-task (MiB) | verify (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(
            f"| {label} | {r['export_one_graph_s']} | {r['export_four_graphs_s']} | {r['one_graph_bytes'] / mib:.1f} "
            f"| {r['four_graphs_bytes'] / mib:.1f} | {r['four_over_one']}x | {r['add_task_s']} "
            f"| {r['add_task_read_bytes'] / mib:.2f} | {r['verify_s']} |"
        )
    if mem:
        lines += [
            "",
            "One device process holding the inference and train-step sessions (one run, then 6 train steps at batch",
            f"{mem['batch'][0]} x {mem['batch'][1]}, 1 thread, arena off, no constant folding; median of {mem['rounds']}"
            " rounds, arms in random order each round). Peak RSS of the whole process and above its import baseline;",
            "step time is the median of steps 2-6. Arms differ in one setting from their neighbour.",
            "",
            "| arm | whole process (MiB) | above import (MiB) | train step (ms) |",
            "|---|---|---|---|",
        ]
        for name, arm in mem["arms"].items():
            lines.append(f"| {name} | {arm['peak_mib']} | {arm['above_import_mib']} | {arm['step_ms']} |")
    (RESULTS / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bundle_io", description=__doc__.split("\n")[0]
    )
    parser.add_argument("stage", choices=("prepare", "measure", "memory", "report"))
    parser.add_argument("--dir", type=Path, default=CACHE_ROOT / "bundle_io")
    parser.add_argument("--label", default="after")
    args = parser.parse_args(argv)
    if args.stage == "prepare":
        prepare(args.dir)
    elif args.stage == "measure":
        measure(args.dir, args.label)
    elif args.stage == "memory":
        memory(args.dir)
    else:
        report(args.dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
