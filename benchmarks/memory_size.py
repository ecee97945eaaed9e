"""Peak memory of each variant at inference (read from outside the process) and bundle size per quantization.

Each (variant, quantization) runs in its own child: import onnxruntime + numpy, open the graph's session (1
thread, CPU arena on), run `runs` forward passes on a [batch, seq] input, exit. The parent takes the kernel's
high-water mark from os.wait4 (ru_maxrss) and polls /proc/<pid>/status VmRSS every 10 ms beside it.
A `baseline` child only imports onnxruntime + numpy: the floor every variant pays.

    python -m benchmarks.memory_size --config quick --build <perf build folder> --out <results folder>
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.perf import load_config, thread_env


def child(build: Path, variant: str, quant: str, batch: int, seq: int, threads: int, runs: int) -> None:
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401

    if variant != "baseline":
        from benchmarks.latency import Runner, make_inputs

        runner = Runner(build, variant, quant, threads, batch)
        inputs = make_inputs(batch, seq)
        for _ in range(runs):
            runner(inputs)
    print(json.dumps({"torch_loaded": "torch" in sys.modules}), flush=True)


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Peak RSS of `cmd` from outside: wait4 ru_maxrss and the largest polled VmRSS."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    polled = 0
    while True:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        polled = max(polled, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            pass
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        time.sleep(0.01)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    info = json.loads(out.strip().splitlines()[-1])
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "polled_max_rss_mib": polled / 1024, **info}


def sizes(build: Path) -> dict[str, Any]:
    """Graph file bytes per variant and quantization, and whole EigenLoRAx bundle folders per quantization."""
    info = json.loads((build / "variants.json").read_text())
    graphs = {
        v: {q: (build / rel).stat().st_size for q, rel in qs.items()} for v, qs in info["files"].items()
    }
    bundles = {}
    for folder in sorted(build.glob("bundle_*")):
        files = [p for p in folder.rglob("*") if p.is_file()]
        bundles[folder.name.removeprefix("bundle_")] = {
            "total_bytes": sum(p.stat().st_size for p in files),
            "graphs_bytes": {p.name: p.stat().st_size for p in files if p.suffix == ".onnx"},
            "tasks_bytes": sum(p.stat().st_size for p in files if p.parent.name == "tasks"),
        }
    return {"graphs": graphs, "bundles": bundles}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="quick")
    p.add_argument("--build", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "QUANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = load_config(args.config)["memory"]
    build = Path(args.build)
    if args.child:
        child(build, args.child[0], args.child[1], cfg["batch"], cfg["seq"], cfg["threads"], cfg["runs"])
        return 0
    start = time.perf_counter()
    base = [
        sys.executable,
        "-m",
        "benchmarks.memory_size",
        "--config",
        args.config,
        "--build",
        str(build),
        "--out",
        args.out,
        "--child",
    ]
    env = thread_env(cfg["threads"])
    rows = [{"variant": "baseline", "quant": "-", **measure([*base, "baseline", "-"], env)}]
    for q in cfg["quants"]:
        for v in cfg["variants"]:
            rows.append({"variant": v, "quant": q, **measure([*base, v, q], env)})
            print(f"[memory] {v}/{q}: peak {rows[-1]['peak_rss_mib']:.0f} MiB", flush=True)
    result = {"config": cfg, "rows": rows, "sizes": sizes(build), "seconds": time.perf_counter() - start}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "memory_size.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
