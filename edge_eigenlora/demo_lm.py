"""`make demo-lm`: a decoder LM on the device, end to end on the real SmolLM2-135M-Instruct, no arguments.

Workstation (torch):
1. a small bank of real PEFT LoRA adapters (verb and adjective definitions from WordNet, English fortunes;
   r=8 on q/k/v/o; trained by the project and cached);
2. their shared subspace (the basis) and each adapter compressed onto it (a task of a few KB);
3. the bundle: KV-cache step graphs (shared and per-row, int8 basis) and the causal-LM train step.
Device (`demo_lm_device`, its own process, never imports torch):
4. two bank tasks in one batch, one per row;
5. a new task (WordNet adverb definitions, a style in no bank adapter) trained on the device from the
   shipped JSONL file; held-out loss and a sample before and after, ms per token, peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_eigenlora import bundle as contract
from edge_eigenlora.basis import SubspaceConfig
from edge_eigenlora.fileio import write_bytes_atomic

__all__ = ["DATA_DIR", "LmDemoConfig", "run_demo_lm"]

DATA_DIR = Path(__file__).parent / "data"
TRAIN_FILE = DATA_DIR / "demo_lm_adverbs_train.jsonl"
HELDOUT_FILE = DATA_DIR / "demo_lm_adverbs_heldout.jsonl"


@dataclass(frozen=True)
class LmDemoConfig:
    subspace: SubspaceConfig = SubspaceConfig(k=16)
    rank: int = 8
    device_steps: int = 40
    threads: int = 0


def _say(step: int, total: int, message: str) -> None:
    print(f"[{step}/{total}] {message}", flush=True)


def run_demo_lm(
    out_dir: str | os.PathLike[str] = "out/demo_lm",
    cache_dir: str | os.PathLike[str] | None = None,
    config: LmDemoConfig | None = None,
) -> dict[str, Any]:
    """Run the whole LM demo; writes out_dir/summary.json and returns it."""
    from edge_eigenlora.adapters import load_bank
    from edge_eigenlora.bank import RECORD_NAME, is_finished
    from edge_eigenlora.basis import fit_basis, save_basis
    from edge_eigenlora.compress import compress_adapter
    from edge_eigenlora.export import ExportConfig, export_bundle
    from edge_eigenlora.fileio import make_temp_dir
    from edge_eigenlora.lm_bank import DEMO_LM_BANK, build_lm_bank
    from edge_eigenlora.pretrained import SMOLLM2, load_causal_lm
    from edge_eigenlora.task import save_task

    config = config or LmDemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir or Path.home() / ".cache" / "edge-eigenlora" / "demo_lm")
    total = 5
    started = time.perf_counter()
    summary: dict[str, Any] = {"model": SMOLLM2, "seconds": {}}

    t = time.perf_counter()
    cached = all(is_finished(cache / "bank" / task.name) for task in DEMO_LM_BANK)
    _say(1, total, f"LM bank: {len(DEMO_LM_BANK)} PEFT LoRA adapters ({'cached' if cached else 'training'})")
    dirs = build_lm_bank(SMOLLM2, cache / "bank")
    summary["bank"] = {
        d.name: {k: v for k, v in json.loads((d / RECORD_NAME).read_text()).items() if k != "curve"}
        for d in dirs
    }
    summary["seconds"]["bank"] = time.perf_counter() - t

    t = time.perf_counter()
    bank = load_bank(dirs)
    basis = fit_basis(bank, config.subspace, progress=False)
    basis_path = save_basis(basis, out / "basis.safetensors")
    task_paths = []
    for adapter in bank.adapters:
        task = compress_adapter(adapter, basis).task
        task.kind = "causal_lm"
        task_paths.append(save_task(task, out / "tasks" / f"{adapter.name}.safetensors"))
    _say(2, total, f"basis K={config.subspace.k} over {len(bank.adapters)} adapters; {len(task_paths)} tasks")
    summary["seconds"]["basis"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(3, total, "export: KV-cache step graphs (shared, per-row; int8 basis) + train step (minutes)")
    model, tokenizer = load_causal_lm()
    staging = make_temp_dir(out, ".bundle.")
    bundle_dir = out / "bundle"
    export_bundle(
        SMOLLM2,
        basis_path,
        staging / "bundle",
        config=ExportConfig(rank=config.rank, variants=(contract.SHARED, contract.PER_ROW), train_step=True),
        tasks=task_paths,
        model=model,
        tokenizer=tokenizer,
    )
    if bundle_dir.exists():  # the demo's own output of an earlier run (tasks trained into it go with it)
        import shutil

        print(f"  replacing the bundle of an earlier run in {bundle_dir}", flush=True)
        shutil.rmtree(bundle_dir)
    (staging / "bundle").rename(bundle_dir)
    staging.rmdir()
    del model
    summary["bundle_bytes"] = sum(p.stat().st_size for p in bundle_dir.rglob("*") if p.is_file())
    summary["task_bytes"] = {p.stem: p.stat().st_size for p in task_paths}
    summary["seconds"]["export"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(4, total, "device: two tasks in one batch, then a new task trained on the device (no torch)")
    report_path = out / "device.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_eigenlora.demo_lm_device",
            str(bundle_dir),
            "--train-file",
            str(TRAIN_FILE),
            "--heldout-file",
            str(HELDOUT_FILE),
            "--steps",
            str(config.device_steps),
            "--threads",
            str(config.threads),
            "--out",
            str(report_path),
        ],
        check=True,
    )
    device = json.loads(report_path.read_text())
    summary["device"] = device
    summary["seconds"]["device"] = time.perf_counter() - t
    summary["seconds"]["total"] = time.perf_counter() - started
    write_bytes_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
    _say(5, total, "what changed")
    _print(summary)
    return summary


def _print(s: dict[str, Any]) -> None:
    d = s["device"]
    print("\nTwo tasks in one batch (per-row graph):")
    for row in d["two_tasks"]["rows"]:
        print(f"  [{row['task']}] {row['prompt']} ->{row['text']!r}")
    print(f"  {d['two_tasks']['decode_ms_per_step']:.1f} ms per decode step for the batch of 2")
    print(
        f"\nPersonalized on the device: {d['training']['steps']} steps, {d['training']['ms_per_step']:.0f} ms/step"
    )
    print(
        f"  held-out loss (nats/token, {d['heldout_examples']} examples): "
        f"{d['before']['heldout_loss']:.3f} -> {d['after']['heldout_loss']:.3f}"
    )
    print(f"  sample before: {d['before']['sample']!r}")
    print(f"  sample after:  {d['after']['sample']!r}")
    print(
        f"  decode {d['after']['decode_ms_per_token']:.1f} ms/token; device peak RSS {d['peak_rss_mib']:.0f} MiB; "
        f"torch imported on the device: {d['torch_imported']}"
    )
    sec = s["seconds"]
    print(
        f"\nbundle {s['bundle_bytes'] / 2**20:.0f} MiB; a task {max(s['task_bytes'].values()) / 1024:.0f} KiB; "
        f"time: bank {sec['bank']:.0f} s, export {sec['export']:.0f} s, device {sec['device']:.0f} s, "
        f"total {sec['total']:.0f} s"
    )
