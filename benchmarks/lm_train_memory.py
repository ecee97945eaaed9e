"""Peak memory of one device LM train step against PyTorch + PEFT LoRA on the same batch (issue 12's target:
the device step's peak RSS above import at most 0.5x PyTorch LoRA's). Each arm runs in a fresh child that
reads its own VmHWM after its imports and after the work (benchmarks/lm.py's children); rounds interleave
the arms.

    python -m benchmarks.lm_train_memory BUNDLE TASK BATCH.npz [--rounds 2] [--steps 2]

BUNDLE: a SmolLM2 bundle with the train-step graph (e.g. `make demo-lm`'s out/demo_lm/bundle); BATCH: an npz
with input_ids, attention_mask, labels (benchmarks/lm.py writes train_batch.npz, 8 x 64 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from benchmarks.lm import run_child

__all__ = ["main"]

ARMS = ("device_train", "device_train_low_memory", "torch_train")
OUT = Path(__file__).parent / "results" / "lm" / "train_memory.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("task")
    p.add_argument("batch")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    runs: dict[str, list[dict]] = {a: [] for a in ARMS}
    for _ in range(args.rounds):
        for arm in ARMS:
            spec = {"kind": arm, "bundle": args.bundle, "task": args.task, "batch": args.batch}
            spec |= {"steps": args.steps, "threads": args.threads}
            runs[arm].append(run_child(spec))
    rows = {}
    for arm, results in runs.items():
        peak = statistics.median(r["peak_mib"] for r in results)
        base = statistics.median(r["import_hwm_mib"] for r in results)
        rows[arm] = {"peak_mib": peak, "import_mib": base, "above_import_mib": peak - base, "runs": results}
    torch_above = rows["torch_train"]["above_import_mib"]
    torch_peak = rows["torch_train"]["peak_mib"]
    ratios = {
        arm: {
            "above_import": rows[arm]["above_import_mib"] / torch_above,
            "whole_process": rows[arm]["peak_mib"] / torch_peak,
        }
        for arm in ARMS[:2]
    }
    print(f"{'arm':<26} {'peak MiB':>9} {'import MiB':>11} {'above import':>13}")
    for arm in ARMS:
        r = rows[arm]
        print(f"{arm:<26} {r['peak_mib']:9.0f} {r['import_mib']:11.0f} {r['above_import_mib']:13.0f}")
    for arm, ratio in ratios.items():
        print(
            f"{arm} / torch_train: above import {ratio['above_import']:.2f}x, whole {ratio['whole_process']:.2f}x"
        )
    result = {"args": vars(args), "loadavg_end": os.getloadavg()[0], "rows": rows, "ratios": ratios}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
