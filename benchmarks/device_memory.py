"""Peak memory (RSS) of the device runtime vs PyTorch training, measured from outside each process.

    .venv/bin/python benchmarks/device_memory.py [--batch 16 --seq 64 --steps 10 --threads 1]

Each scenario runs in its own child process; the parent polls /proc/<pid>/status (VmRSS) and takes the kernel's
high-water mark from wait4() (ru_maxrss), so nothing inside the measured process counts for it. Scenarios, all
on the same batch (random token ids, real MiniLM, rank 8 on q/v of all 6 layers, 3 labels):
    baseline          import numpy + onnxruntime + edge_eigenlora.runtime, nothing loaded
    inference         the inference graph, `steps` forward passes
    grad_step         the train-step graph + numpy AdamW, `steps` steps
    zo_step           the inference graph, `steps` SPSA/MeZO steps (2 forward passes each)
    torch_lora        PyTorch + PEFT LoRA r=8 (q, v) + head, AdamW, `steps` steps
    torch_eigenlora   PyTorch with the basis attached (coefficients + head), AdamW, `steps` steps
The onnxruntime scenarios run with the CPU arena on and off, and grad_step also from the .ort file.
Writes benchmarks/results/device/memory.json and memory.md.
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

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "device"
LABELS = 3


def _batch(batch: int, seq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (batch, seq)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.ones_like(ids), rng.integers(0, LABELS, batch).astype(np.int64)


def child(args: argparse.Namespace) -> None:
    """Runs inside the measured process: do the work, print timings as JSON."""
    scenario = args.child
    ids, mask, labels = _batch(args.batch, args.seq)
    times = []
    if scenario.startswith("torch"):
        _torch_child(scenario, args, ids, mask, labels, times)
    else:
        from edge_eigenlora.runtime import DeviceRuntime, RuntimeOptions
        from edge_eigenlora.runtime.optim import AdamW
        from edge_eigenlora.runtime.trainer import cross_entropy, init_params

        if scenario != "baseline":
            opts = RuntimeOptions(
                threads=args.threads,
                arena=not args.no_arena,
                prefer_ort=args.ort,
                prepacking=not args.no_prepack,
                disabled_optimizers=("ConstantFolding",) if args.no_fold else (),
            )
            rt = DeviceRuntime(args.bundle, options=opts, verify=False)
            params = init_params(rt, LABELS, 0)
            opt = AdamW({k: 5e-3 for k in params})
            rng = np.random.default_rng(1)
            for _ in range(args.steps):
                t = time.perf_counter()
                if scenario == "inference":
                    rt.session("shared").run(["logits"], {"input_ids": ids, "attention_mask": mask, **params})
                elif scenario == "grad_step":
                    out = rt.train_step(ids, mask, labels, **params)
                    opt.step(params, {k: out[f"grad_{k}"] for k in params})
                elif scenario == "zo_step":
                    z = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
                    losses = []
                    for sign in (1, -1):
                        feeds = {k: v + sign * 1e-3 * z[k] for k, v in params.items()}
                        logits = rt.session("shared").run(
                            ["logits"], {"input_ids": ids, "attention_mask": mask, **feeds}
                        )[0]
                        losses.append(cross_entropy(logits, labels).mean())
                    g = (losses[0] - losses[1]) / 2e-3
                    for k in params:
                        params[k] -= 1e-3 * g * z[k]
                times.append(time.perf_counter() - t)
        else:
            import onnxruntime  # noqa: F401

            import edge_eigenlora.runtime  # noqa: F401
    print(json.dumps({"step_seconds": times, "torch_loaded": "torch" in sys.modules}), flush=True)


def _torch_child(scenario: str, args: argparse.Namespace, ids: np.ndarray, mask: np.ndarray, labels: np.ndarray,
                 times: list) -> None:  # fmt: skip
    import torch
    import torch.nn.functional as F

    from edge_eigenlora.model import TextClassifier
    from edge_eigenlora.pretrained import load_encoder

    torch.set_num_threads(args.threads)
    encoder, _ = load_encoder()
    if scenario == "torch_lora":
        from peft import LoraConfig, get_peft_model

        encoder = get_peft_model(encoder, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
    else:
        from edge_eigenlora.basis import load_basis
        from edge_eigenlora.model import attach_basis

        attach_basis(encoder, load_basis(args.basis), rank=8)
    clf = TextClassifier(encoder, LABELS)
    clf.train()
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=5e-3)
    x, m, y = torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels)
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = F.cross_entropy(clf(x, m), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)


def measure(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; peak RSS from wait4 (kernel high-water mark) and from polling /proc (10 ms)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    polled = 0
    status = f"/proc/{proc.pid}/status"
    while True:
        try:
            with open(status) as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        polled = max(polled, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            pass
        done = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if done is not None:
            break
        time.sleep(0.01)
    _, code, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(code)
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()  # type: ignore[union-attr]
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {stderr[-2000:]}")
    info = json.loads(stdout.strip().splitlines()[-1])
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "polled_max_rss_mib": polled / 1024,
            "median_step_s": float(np.median(info["step_seconds"][1:] or info["step_seconds"] or [float("nan")])),
            "torch_loaded": info["torch_loaded"]}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="rows per batch")
    p.add_argument("--seq", type=int, default=64, help="tokens per row")
    p.add_argument("--steps", type=int, default=10, help="steps per scenario")
    p.add_argument("--threads", type=int, default=1, help="threads (onnxruntime intra-op, torch)")
    p.add_argument("--bundle", help="bundle folder (default: the benchmark bundle, built if missing)")
    p.add_argument("--basis", help="basis file of the bundle (for torch_eigenlora)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--no-arena", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ort", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-prepack", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-fold", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--only", nargs="*", help="run only these scenario labels (e.g. 'grad_step (no arena)')")
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    if not args.bundle:
        sys.path.insert(0, str(ROOT))
        from benchmarks.device_training import ensure_bundle

        bundle_dir, basis_path = ensure_bundle()
        args.bundle, args.basis = str(bundle_dir), str(basis_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(args.threads))  # fmt: skip
    base = [sys.executable, __file__, "--bundle", args.bundle, "--basis", args.basis or "", "--batch", str(args.batch),
            "--seq", str(args.seq), "--steps", str(args.steps), "--threads", str(args.threads)]  # fmt: skip
    runs = [("baseline", []), ("inference", []), ("inference", ["--no-arena"]), ("inference", ["--no-arena", "--ort"]),
            ("grad_step", []), ("grad_step", ["--no-arena"]), ("grad_step", ["--no-arena", "--no-fold"]),
            ("grad_step", ["--no-arena", "--no-prepack"]), ("grad_step", ["--no-arena", "--ort"]),
            ("grad_step", ["--no-arena", "--ort", "--no-prepack"]), ("zo_step", []), ("zo_step", ["--no-arena"]),
            ("zo_step", ["--no-arena", "--ort"]), ("torch_lora", []), ("torch_eigenlora", [])]  # fmt: skip
    previous = {}
    if args.only is not None and (OUT / "memory.json").exists():
        previous = {r["scenario"]: r for r in json.loads((OUT / "memory.json").read_text())["rows"]}
    rows = []
    for scenario, extra in runs:
        label = scenario + (
            "" if not extra else " (" + ", ".join(e.strip("-").replace("-", " ") for e in extra) + ")"
        )
        if args.only is not None and label not in args.only and label in previous:
            rows.append(previous[label])
            continue
        r = measure([*base, "--child", scenario, *extra], env)
        r["scenario"] = label
        rows.append(r)
        print(
            f"{label:<40} peak {r['peak_rss_mib']:7.1f} MiB  step {r['median_step_s'] * 1e3:7.1f} ms",
            flush=True,
        )
    by = {r["scenario"]: r["peak_rss_mib"] for r in rows}
    lora = by["torch_lora"]
    checks = {
        "grad_step / torch_lora (target <= 0.5)": {k: by[k] / lora for k in by if k.startswith("grad_step")},
        "zo_step / inference, same arena setting (target <= 1.1)": {
            "arena on": by["zo_step"] / by["inference"], "arena off": by["zo_step (no arena)"] / by["inference (no arena)"],
            "arena off, .ort": by["zo_step (no arena, ort)"] / by["inference (no arena, ort)"]},
    }  # fmt: skip
    result = {"batch": args.batch, "seq": args.seq, "steps": args.steps, "threads": args.threads, "rows": rows,
              "ratios": checks, "command": "python benchmarks/device_memory.py " + " ".join(sys.argv[1:])}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Peak RSS: device runtime vs PyTorch (batch {args.batch} x {args.seq} tokens, {args.threads} thread, "
             f"{args.steps} steps)", "", "Measured from outside each process: wait4() ru_maxrss (kernel high-water "
             "mark); polled /proc VmRSS beside it.", "", "| scenario | peak RSS MiB | polled max MiB | median step ms |",
             "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['peak_rss_mib']:.0f} | {r['polled_max_rss_mib']:.0f} | {r['median_step_s'] * 1e3:.0f} |"
        )
    lines += ["", "Ratios:", ""]
    for name, vals in checks.items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in vals.items()))
    (OUT / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
