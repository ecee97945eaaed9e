"""Peak memory (RSS) of on-device training (onnxruntime + numpy) vs PyTorch training, both sides in one run.

    python benchmarks/device_memory.py [--batch 16 --seq 64 --steps 10 --threads 1 --repeats 3]

Each scenario runs in its own child process; the parent polls /proc/<pid>/status (VmRSS) and takes the kernel's
high-water mark from wait4() (ru_maxrss), so nothing inside the measured process counts for it. Every round runs
every scenario once, in a new random order; `--repeats` rounds. Scenarios, all on the same batch (random token ids,
real MiniLM with eager attention, rank 8 on q/v of all 6 layers, 3 labels):
    baseline          import numpy + onnxruntime + edge_eigenlora.runtime (+ its trainer and optimizer), nothing loaded
    torch_baseline    import torch + transformers + peft + the edge_eigenlora modules the PyTorch scenarios use
    inference         the inference graph, `steps` forward passes
    grad_step         the train-step graph + numpy AdamW, `steps` steps
    zo_step           the inference graph, `steps` SPSA/MeZO steps (2 forward passes each)
    torch_lora        PyTorch + PEFT LoRA r=8 (q, v) + head, AdamW, `steps` steps
    torch_eigenlora   PyTorch with the basis attached (coefficients + head), AdamW, `steps` steps
The exported train-step graph has no dropout, so the PyTorch scenarios train with every dropout at 0 (BERT's hidden
and attention dropout, LoRA dropout 0): the same computation on both sides. Each row reports the whole process's
peak RSS (what a device has to hold) and the peak above its own runtime's import baseline from the same round
(what the work costs). The onnxruntime scenarios run with the CPU arena on and off, and grad_step also from the
.ort file. Writes benchmarks/results/device/memory.json and memory.md.
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
            if args.low_memory:  # exactly what `edge-eigenlora-device train` uses
                opts = RuntimeOptions.low_memory(threads=args.threads)
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
            import edge_eigenlora.runtime.optim  # noqa: F401
            import edge_eigenlora.runtime.trainer  # noqa: F401
    print(json.dumps({"step_seconds": times, "torch_loaded": "torch" in sys.modules}), flush=True)


def _torch_child(
    scenario: str,
    args: argparse.Namespace,
    ids: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray,
    times: list,
) -> None:
    import peft  # noqa: F401
    import torch
    import torch.nn.functional as F
    import transformers  # noqa: F401

    import edge_eigenlora.basis  # noqa: F401
    from edge_eigenlora.model import TextClassifier, attach_basis  # noqa: F401
    from edge_eigenlora.pretrained import load_encoder

    if scenario == "torch_baseline":  # the imports the PyTorch scenarios need, nothing loaded
        return
    torch.set_num_threads(args.threads)
    encoder, _ = load_encoder()
    if scenario == "torch_lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"])
        encoder = get_peft_model(encoder, lora)
    else:
        from edge_eigenlora.basis import load_basis
        from edge_eigenlora.model import attach_basis

        attach_basis(encoder, load_basis(args.basis), rank=8)
    clf = TextClassifier(encoder, LABELS)
    for module in clf.modules():  # the exported train-step graph has no dropout: the same computation here
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
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
    return {
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "polled_max_rss_mib": polled / 1024,
        "median_step_s": float(np.median(info["step_seconds"][1:] or info["step_seconds"] or [float("nan")])),
        "torch_loaded": info["torch_loaded"],
    }


LABELS_OF = {
    "baseline": "import onnxruntime + numpy + runtime",
    "torch_baseline": "import torch + transformers + peft",
}


def runtime_of(label: str) -> str:
    return "torch" if label.startswith("torch") else "ort"


def summarize(rounds: list[list[dict]]) -> list[dict]:
    """Per scenario: median and range over rounds of the whole-process peak and of the peak above the same round's
    import baseline of its runtime."""
    by: dict[str, list[dict]] = {}
    for rows in rounds:
        base = {runtime_of(r["scenario"]): r["peak_rss_mib"] for r in rows if r["scenario"] in LABELS_OF}
        for r in rows:
            above = r["peak_rss_mib"] - base[runtime_of(r["scenario"])]
            by.setdefault(r["scenario"], []).append({**r, "above_import_mib": above})
    out = []
    for label, rs in by.items():
        peak = np.array([r["peak_rss_mib"] for r in rs])
        above = np.array([r["above_import_mib"] for r in rs])
        steps = np.array([r["median_step_s"] for r in rs])
        out.append(
            {
                "scenario": label,
                "runtime": runtime_of(label),
                "n": len(rs),
                "peak_rss_mib": float(np.median(peak)),
                "peak_min": float(peak.min()),
                "peak_max": float(peak.max()),
                "above_import_mib": float(np.median(above)),
                "above_min": float(above.min()),
                "above_max": float(above.max()),
                "polled_max_rss_mib": float(np.median([r["polled_max_rss_mib"] for r in rs])),
                "median_step_s": float(np.median(steps)),
                "torch_loaded": rs[0]["torch_loaded"],
            }
        )
    return out


def ratios(rounds: list[list[dict]], ours: str, theirs: str) -> dict[str, float]:
    """ours / theirs per round (whole process and above import), then median and range over the rounds."""
    whole, above = [], []
    for rows in rounds:
        by = {r["scenario"]: r["peak_rss_mib"] for r in rows}
        whole.append(by[ours] / by[theirs])
        above.append((by[ours] - by["baseline"]) / (by[theirs] - by["torch_baseline"]))
    return {
        "whole_process": float(np.median(whole)),
        "whole_min": float(min(whole)),
        "whole_max": float(max(whole)),
        "above_import": float(np.median(above)),
        "above_min": float(min(above)),
        "above_max": float(max(above)),
        "n": len(whole),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="rows per batch")
    p.add_argument("--seq", type=int, default=64, help="tokens per row")
    p.add_argument("--steps", type=int, default=10, help="steps per scenario")
    p.add_argument("--threads", type=int, default=1, help="threads (onnxruntime intra-op, torch)")
    p.add_argument(
        "--repeats", type=int, default=3, help="rounds; each runs every scenario once, in a random order"
    )
    p.add_argument("--bundle", help="bundle folder (default: the benchmark bundle, built if missing)")
    p.add_argument("--basis", help="basis file of the bundle (for torch_eigenlora)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--no-arena", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ort", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-prepack", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-fold", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--low-memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--report-only", action="store_true", help="re-render memory.md from memory.json")
    args = p.parse_args()
    if args.report_only:
        write_report(json.loads((OUT / "memory.json").read_text()))
        print((OUT / "memory.md").read_text())
        return 0
    if args.child:
        child(args)
        return 0
    if not args.bundle:
        # Built in a child: Linux carries a parent's peak RSS into every child it forks (ru_maxrss survives
        # exec), so exporting in this process would raise every scenario's measured peak to the export's.
        code = "from benchmarks.device_training import ensure_bundle; print('\\n'.join(map(str, ensure_bundle())))"
        built = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        args.bundle, args.basis = built[-2], built[-1]
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(args.threads),
    )
    base = [
        sys.executable,
        __file__,
        "--bundle",
        args.bundle,
        "--basis",
        args.basis or "",
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    runs = [
        ("baseline", []),
        ("torch_baseline", []),
        ("inference", []),
        ("inference", ["--no-arena"]),
        ("inference", ["--no-arena", "--ort"]),
        ("grad_step", []),
        ("grad_step", ["--no-arena"]),
        ("grad_step", ["--no-arena", "--no-fold"]),
        ("grad_step", ["--low-memory"]),
        ("grad_step", ["--no-arena", "--no-prepack"]),
        ("grad_step", ["--no-arena", "--ort"]),
        ("grad_step", ["--no-arena", "--ort", "--no-prepack"]),
        ("zo_step", []),
        ("zo_step", ["--no-arena"]),
        ("zo_step", ["--no-arena", "--ort"]),
        ("torch_lora", []),
        ("torch_eigenlora", []),
    ]
    rng = np.random.default_rng(0)
    rounds: list[list[dict]] = []
    start = time.perf_counter()
    for round_index in range(args.repeats):
        rows = []
        for i in rng.permutation(len(runs)):
            scenario, extra = runs[i]
            label = scenario + (
                "" if not extra else " (" + ", ".join(e.strip("-").replace("-", " ") for e in extra) + ")"
            )
            r = measure([*base, "--child", scenario, *extra], env)
            r["scenario"] = label
            rows.append(r)
            print(
                f"[round {round_index + 1}/{args.repeats}] {label:<40} peak {r['peak_rss_mib']:7.1f} MiB  "
                f"step {r['median_step_s'] * 1e3:7.1f} ms",
                flush=True,
            )
        rounds.append(rows)
    order = [
        label
        for label in (
            s + ("" if not e else " (" + ", ".join(x.strip("-").replace("-", " ") for x in e) + ")")
            for s, e in runs
        )
    ]
    summary = sorted(summarize(rounds), key=lambda r: order.index(r["scenario"]))
    grads = [r["scenario"] for r in summary if r["scenario"].startswith("grad_step")]
    checks = {g: ratios(rounds, g, "torch_lora") for g in grads}
    checks_eigen = {g: ratios(rounds, g, "torch_eigenlora") for g in grads}
    by = {r["scenario"]: r for r in summary}
    zo = {
        "arena on": ("zo_step", "inference"),
        "arena off": ("zo_step (no arena)", "inference (no arena)"),
        "arena off, .ort": ("zo_step (no arena, ort)", "inference (no arena, ort)"),
    }
    zo_ratios = {k: by[a]["peak_rss_mib"] / by[b]["peak_rss_mib"] for k, (a, b) in zo.items()}
    result = {
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "threads": args.threads,
        "repeats": args.repeats,
        "seconds": time.perf_counter() - start,
        "rows": summary,
        "rounds": rounds,
        "ratios_to_torch_lora": checks,
        "ratios_to_torch_eigenlora": checks_eigen,
        "zo_over_inference": zo_ratios,
        "dropout": "0 on both sides (the exported train-step graph has none)",
        "command": "python benchmarks/device_memory.py " + " ".join(sys.argv[1:]),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(result)
    print((OUT / "memory.md").read_text())
    return 0


def write_report(result: dict) -> None:
    n = result["repeats"]
    lines = [
        f"# Peak RSS: on-device training vs PyTorch (batch {result['batch']} x {result['seq']} tokens, "
        f"{result['threads']} thread, {result['steps']} steps)",
        "",
        f"Made by `{result['command']}` (one invocation: both sides in the same run, {n} rounds, each running "
        f"every scenario once in a random order; {result.get('seconds', float('nan')) / 60:.1f} min). "
        "Measured from outside each process: wait4() ru_maxrss "
        "(kernel high-water mark); polled /proc VmRSS beside it. 'above import' = the peak minus the same "
        "round's import baseline of that runtime (onnxruntime + numpy + edge_eigenlora.runtime for the "
        "onnxruntime rows; torch + transformers + peft for the PyTorch rows). Dropout: "
        f"{result['dropout']}; eager attention on both sides. Values: median over the {n} rounds [min-max].",
        "",
        "| scenario | peak RSS MiB (whole process) | above import MiB | polled max MiB | median step ms |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['scenario']} | {r['peak_rss_mib']:.0f} [{r['peak_min']:.0f}-{r['peak_max']:.0f}] | "
            f"{r['above_import_mib']:.0f} [{r['above_min']:.0f}-{r['above_max']:.0f}] | "
            f"{r['polled_max_rss_mib']:.0f} | {r['median_step_s'] * 1e3:.0f} |"
        )
    for title, checks in (
        ("PyTorch + PEFT LoRA r=8", result["ratios_to_torch_lora"]),
        ("PyTorch EigenLoRAx coefficients", result["ratios_to_torch_eigenlora"]),
    ):
        lines += [
            "",
            f"Gradient step (onnxruntime) / {title} training, per round then median [min-max] over {n}:",
            "",
            "| onnxruntime setting | whole process | above import |",
            "|---|---|---|",
        ]
        for g, c in checks.items():
            lines.append(
                f"| {g} | {c['whole_process']:.2f} [{c['whole_min']:.2f}-{c['whole_max']:.2f}] | "
                f"{c['above_import']:.2f} [{c['above_min']:.2f}-{c['above_max']:.2f}] |"
            )
    ours = "grad_step (low memory)"
    low = result["ratios_to_torch_lora"].get(ours)
    by = {r["scenario"]: r for r in result["rows"]}
    if low:

        def verdict(lo: float, hi: float) -> str:
            return "MET in every round" if hi <= 0.5 else ("MISSED in every round" if lo > 0.5 else "MIXED")

        lines += [
            "",
            "Target 'gradient step <= 0.5x PyTorch LoRA', with the settings `edge-eigenlora-device train` uses "
            "(`RuntimeOptions.low_memory()`: arena off, no constant folding, no prepacking, weights shared between "
            "sessions), PyTorch with the same dropout (0):",
            "",
            f"- whole process {low['whole_process']:.2f} [{low['whole_min']:.3f}-{low['whole_max']:.3f}] -> "
            f"{verdict(low['whole_min'], low['whole_max'])} (counts each runtime's import: of the "
            f"{by['torch_lora']['peak_rss_mib'] - by[ours]['peak_rss_mib']:.0f} MiB between the two processes, "
            f"{by['torch_baseline']['peak_rss_mib'] - by['baseline']['peak_rss_mib']:.0f} MiB is the difference of "
            "the imports; medians);",
            f"- above each runtime's import {low['above_import']:.2f} [{low['above_min']:.3f}-{low['above_max']:.3f}] "
            f"-> {verdict(low['above_min'], low['above_max'])} (what the training itself costs).",
        ]
    lines += [
        "",
        "Forward-only (ZO) step / inference, same arena setting (target <= 1.1): "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["zo_over_inference"].items()),
    ]
    (OUT / "memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
