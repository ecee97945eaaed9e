"""The LM demo's device half, run in its own process (`python -m edge_eigenlora.demo_lm_device`): torch is
never imported here, so what it measures (ms per token, peak RSS) is the device runtime's own cost.

1. two tasks in one batch: a different bank task for each row of one per-row generation;
2. personalization: a new task trained on the device from the shipped JSONL file (LMTrainer, the bundle's
   train-step graph), written into the bundle atomically;
3. what changed: held-out loss before (base model) and after, a sample before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_eigenlora.fileio import write_bytes_atomic

__all__ = ["DEMO_LM_PROMPTS", "main", "peak_rss_mib", "run_device_half"]

# one prompt per bank task shown in the per-row batch: (task, prompt)
DEMO_LM_PROMPTS: tuple[tuple[str, str], ...] = (
    ("verb_definitions", 'Define the verb "wander":'),
    ("fortunes_en", "Tell me my fortune."),
)
SAMPLE_PROMPT = 'Define the adverb "quietly":'


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB: per process, unlike ru_maxrss of children."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_device_half(
    bundle: str | Path,
    train_file: str | Path,
    heldout_file: str | Path,
    *,
    steps: int = 40,
    lr: float = 5e-3,
    batch_size: int = 8,
    max_new_tokens: int = 24,
    threads: int = 0,
) -> dict[str, Any]:
    from edge_eigenlora import bundle as contract
    from edge_eigenlora.runtime.generate import LMRuntime
    from edge_eigenlora.runtime.lm_trainer import (
        LMTrainer,
        evaluate_lm,
        make_lm_task,
        read_lm_file,
        tokenize_lm_examples,
    )
    from edge_eigenlora.runtime.session import RuntimeOptions
    from edge_eigenlora.runtime.trainer import DeviceTrainConfig, write_task

    report: dict[str, Any] = {"import_rss_mib": peak_rss_mib()}
    rt = LMRuntime(bundle, options=RuntimeOptions(threads=threads))
    tasks = [t for t, _ in DEMO_LM_PROMPTS]
    prompts = [p for _, p in DEMO_LM_PROMPTS]
    start = time.perf_counter()
    rows = rt.generate(prompts, tasks=tasks, max_new_tokens=max_new_tokens)
    report["two_tasks"] = {
        "seconds": time.perf_counter() - start,
        "decode_ms_per_step": rows[0].decode_ms_per_token,
        "prefill_ms": rows[0].prefill_ms,
        "rows": [{"task": g.task, "prompt": g.prompt, "text": g.text} for g in rows],
    }
    train, heldout = read_lm_file(train_file), read_lm_file(heldout_file)
    held = tokenize_lm_examples(rt, heldout, where="held-out")
    zero = np.zeros(rt.layout.size, np.float32)
    base_task = make_lm_task(rt, "base", {contract.COEFFICIENTS: zero}, {})
    report["before"] = {
        "heldout_loss": evaluate_lm(rt, zero, held)["loss"],
        "sample": rt.generate(SAMPLE_PROMPT, task=base_task, max_new_tokens=max_new_tokens)[0].text,
    }
    config = DeviceTrainConfig(
        max_steps=steps, batch_size=batch_size, lr=lr, eval_every=10, checkpoint_every=10, patience=10
    )
    name = "adverb_definitions"
    trainer = LMTrainer(
        rt,
        name,
        train,
        config=config,
        checkpoint=Path(bundle) / ".checkpoints" / f"{name}.safetensors",
        resume=False,
        log=lambda m: None,
    )
    start = time.perf_counter()
    outcome = trainer.fit()
    seconds = time.perf_counter() - start
    write_task(rt, outcome.task)
    trained = rt.task(name)
    report["training"] = {
        "steps": outcome.steps,
        "seconds": seconds,
        "ms_per_step": seconds / max(outcome.steps, 1) * 1e3,
        "best_step": outcome.best_step,
        "examples": len(trainer.train),
        "validation": len(trainer.val),
    }
    (after,) = rt.generate(SAMPLE_PROMPT, task=name, max_new_tokens=max_new_tokens)
    report["after"] = {
        "heldout_loss": evaluate_lm(rt, trained.coefficients, held)["loss"],
        "sample": after.text,
        "decode_ms_per_token": after.decode_ms_per_token,
    }
    report["heldout_examples"] = len(held)
    report["peak_rss_mib"] = peak_rss_mib()
    report["torch_imported"] = "torch" in sys.modules
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_eigenlora.demo_lm_device", description=__doc__)
    p.add_argument("bundle")
    p.add_argument("--train-file", required=True)
    p.add_argument("--heldout-file", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON report")
    args = p.parse_args(argv)
    report = run_device_half(
        args.bundle, args.train_file, args.heldout_file, steps=args.steps, threads=args.threads
    )
    write_bytes_atomic(Path(args.out), json.dumps(report, indent=2).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
