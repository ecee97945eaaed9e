"""Task switching: how long it takes to serve another task, and what each task costs on disk and in memory.

Switch paths, timed interleaved in one process (1 thread, batch 1):
    eigen_cached    EigenLoRAx: fetch another cached task's feeds (DeviceRuntime.task(name).feeds(): a lookup)
    eigen_cold      EigenLoRAx: read + validate a task file from disk (safetensors -> packed feeds)
    ort_adapter     ORT multi-LoRA: LoraAdapter().Load(.onnx_adapter) + RunOptions.add_active_adapter
    new_session     a merged model per task: a new InferenceSession + its first run
and, for each path, the run that follows a switch against a run that repeats the same task (what a switch adds to
the next inference). Bytes per task (1, 10, 100 resident tasks): files on disk, and the RSS growth of a child
process that holds N tasks ready to run, read from outside (/proc/<pid>/status between two handshakes).

    python -m benchmarks.task_switch --config quick --build <perf build folder> --out <results folder>
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

import numpy as np

from benchmarks.latency import make_inputs
from benchmarks.perf import RANK, _peft_key, _task, load_config, session_options, thread_env


def _pcts(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)), "n": int(a.size)}


def make_tasks(build: Path, n: int) -> Path:
    """N tasks in every format (written once): EigenLoRAx task files (+ .onnx_adapter), PEFT LoRA folders and the
    ort_lora graph's .onnx_adapter files. numpy only: the PEFT file is the format PEFT writes (A r x d, B d x r)."""
    import onnxruntime as ort
    from safetensors.numpy import save_file

    from edge_eigenlora import bundle as bundle_mod
    from edge_eigenlora import subspace
    from edge_eigenlora.basis import load_basis
    from edge_eigenlora.task import load_task, save_task

    root = build / f"switch_tasks_{n}"
    if (root / "done").exists():
        return root
    basis = load_basis(build / "basis.safetensors")
    info = json.loads((build / "variants.json").read_text())
    manifest = bundle_mod.read_manifest(build / "bundle_fp32")
    for sub in ("eigen", "eigen_adapter", "peft", "ort_adapter"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    hidden = load_task(build / "tasks" / "t0.safetensors").head_weight.shape[1]
    for i in range(n):
        task = _task(basis, f"s{i:03d}", 1000 + i, hidden)
        save_task(task, root / "eigen" / f"{task.name}.safetensors")
        feeds = bundle_mod.task_feeds(task, manifest)
        _adapter({k: v for k, v in feeds.items()}, root / "eigen_adapter" / f"{task.name}.onnx_adapter", ort)
        tensors, params = {}, {}
        for m, (alpha_a, alpha_b) in task.coefficients.items():
            mb = basis.modules[m]
            A, B = subspace.coefficients_to_factors(alpha_a, alpha_b, mb.U_A, mb.U_B)
            tensors[f"base_model.model.{m}.lora_A.weight"] = np.ascontiguousarray(A, np.float32)
            tensors[f"base_model.model.{m}.lora_B.weight"] = np.ascontiguousarray(B, np.float32)
        folder = root / "peft" / task.name
        folder.mkdir(exist_ok=True)
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": RANK, "lora_alpha": RANK,
                                                               "target_modules": sorted({m.rsplit(".", 1)[-1] for m in task.coefficients})}))  # fmt: skip
        save_file(
            {"weight": task.head_weight, "bias": task.head_bias}, str(folder / "classifier_head.safetensors")
        )
        params = {name: np.ascontiguousarray(tensors[_peft_key(name)].T) for name in info["lora_inputs"]}
        _adapter(params, root / "ort_adapter" / f"{task.name}.onnx_adapter", ort)
    (root / "done").write_text("ok")
    return root


def _adapter(arrays: dict[str, np.ndarray], path: Path, ort: Any) -> None:
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters(
        {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    )
    fmt.export_adapter(str(path))


def disk_bytes(tasks: Path, build: Path) -> dict[str, Any]:
    """Bytes per task on disk, per format (median over the tasks; totals for 1, 10, 100 in the report)."""

    def sizes(pattern: str) -> list[int]:
        return [p.stat().st_size for p in sorted((tasks).glob(pattern))]

    peft_dirs = sorted((tasks / "peft").iterdir())
    out = {
        "eigen_task_file": sizes("eigen/*.safetensors"),
        "eigen_onnx_adapter": sizes("eigen_adapter/*.onnx_adapter"),
        "peft_lora_weights": [(d / "adapter_model.safetensors").stat().st_size for d in peft_dirs],
        "peft_lora_folder": [sum(f.stat().st_size for f in d.iterdir()) for d in peft_dirs],
        "ort_onnx_adapter": sizes("ort_adapter/*.onnx_adapter"),
    }
    from safetensors.numpy import load_file

    info = json.loads((build / "variants.json").read_text())
    # the raw payloads, without file headers or heads: P float32 coefficients vs the A/B of a rank-r LoRA
    out["eigen_coefficients_only"] = [int(info["coefficients"]) * 4]
    out["lora_ab_only"] = [
        sum(v.nbytes for v in load_file(str(peft_dirs[0] / "adapter_model.safetensors")).values())
    ]
    for q, rel in info["files"]["eigen_merged"].items():
        out[f"merged_model_{q}"] = [(build / rel).stat().st_size]
    return {k: {"median": int(np.median(v)), "count": len(v)} for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Switch timing (one process, interleaved)
# ----------------------------------------------------------------------------------------------


def time_switches(build: Path, tasks: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    from edge_eigenlora.runtime import DeviceRuntime, RuntimeOptions
    from edge_eigenlora.task import load_task

    threads, seq, repeats = cfg["threads"], cfg["seq"], cfg["repeats"]
    info = json.loads((build / "variants.json").read_text())
    inputs = make_inputs(1, seq)
    rt = DeviceRuntime(build / "bundle_fp32", options=RuntimeOptions(threads=threads), verify=False)
    names = sorted(p.stem for p in (tasks / "eigen").glob("*.safetensors"))[:10]
    cached = [rt.task(load_task(tasks / "eigen" / f"{n}.safetensors")) for n in names]
    by_name = {t.name: t for t in cached}
    rt._tasks.update(by_name)  # the runtime's cache, as preload() fills it for bundle tasks
    shared = rt.session("shared")
    ort_sess = ort.InferenceSession(str(build / info["files"]["ort_lora"]["fp32"]),
                                    sess_options=session_options(threads), providers=["CPUExecutionProvider"])  # fmt: skip
    adapter_paths = [tasks / "ort_adapter" / f"{n}.onnx_adapter" for n in names]
    res: dict[str, list[float]] = {k: [] for k in ("eigen_cached", "eigen_cold", "ort_adapter_load",
                                                   "ort_adapter_activate", "ort_adapter")}  # fmt: skip
    for i in range(repeats):  # interleaved: each repetition times every switch path once
        name = names[i % len(names)]
        t = time.perf_counter()
        rt.task(name).feeds()
        res["eigen_cached"].append(time.perf_counter() - t)
        t = time.perf_counter()
        rt.task(load_task(tasks / "eigen" / f"{name}.safetensors")).feeds()
        res["eigen_cold"].append(time.perf_counter() - t)
        t = time.perf_counter()
        adapter = ort.LoraAdapter()
        adapter.Load(str(adapter_paths[i % len(names)]))
        t1 = time.perf_counter()
        ro = ort.RunOptions()
        ro.add_active_adapter(adapter)
        t2 = time.perf_counter()
        res["ort_adapter_load"].append(t1 - t)
        res["ort_adapter_activate"].append(t2 - t1)
        res["ort_adapter"].append(t2 - t)
    # the run after a switch vs a run repeating the task (what the switch adds to the next inference)
    adapters = []
    for p in adapter_paths[:2]:
        a = ort.LoraAdapter()
        a.Load(str(p))
        adapters.append(a)
    opts = []
    for a in adapters:
        ro = ort.RunOptions()
        ro.add_active_adapter(a)
        opts.append(ro)
    runs: dict[str, list[float]] = {
        k: [] for k in ("eigen_same", "eigen_switched", "ort_same", "ort_switched")
    }
    for _ in range(3):
        shared.run(["logits"], {**inputs, **by_name[names[0]].feeds()})
        ort_sess.run(["logits"], inputs, opts[0])
    current = 0
    for i in range(max(20, repeats // 20)):
        switch = i % 2 == 1
        nxt = 1 - current if switch else current
        t = time.perf_counter()
        shared.run(["logits"], {**inputs, **rt.task(names[nxt]).feeds()})
        runs["eigen_switched" if switch else "eigen_same"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ort_sess.run(["logits"], inputs, opts[nxt])
        runs["ort_switched" if switch else "ort_same"].append(time.perf_counter() - t)
        current = nxt
    # a new session per task (merged models): create + first run; alternating two merged graph files
    merged = [build / info["files"]["eigen_merged"]["fp32"], build / info["files"]["lora_merged"]["fp32"]]
    create, first, steady = [], [], []
    for i in range(cfg["session_repeats"]):
        t = time.perf_counter()
        sess = ort.InferenceSession(str(merged[i % 2]), sess_options=session_options(threads),
                                    providers=["CPUExecutionProvider"])  # fmt: skip
        t1 = time.perf_counter()
        sess.run(["logits"], inputs)
        t2 = time.perf_counter()
        sess.run(["logits"], inputs)
        t3 = time.perf_counter()
        create.append(t1 - t)
        first.append(t2 - t1)
        steady.append(t3 - t2)
        del sess
    out = {k: _pcts(v) for k, v in res.items()}
    out.update({k: _pcts(v) for k, v in runs.items()})
    out["new_session_create"] = _pcts(create)
    out["new_session_first_run"] = _pcts(first)
    out["new_session"] = _pcts([a + b for a, b in zip(create, first, strict=True)])
    out["merged_steady_run"] = _pcts(steady)
    return out


# ----------------------------------------------------------------------------------------------
# Resident tasks: RSS growth read from outside
# ----------------------------------------------------------------------------------------------


def resident_child(build: Path, tasks: Path, kind: str, n: int, threads: int) -> None:
    """Load the graph, handshake, hold n tasks ready to run, handshake, exit. The parent reads /proc between."""
    import onnxruntime as ort

    from edge_eigenlora.runtime import DeviceRuntime, RuntimeOptions
    from edge_eigenlora.task import load_task

    info = json.loads((build / "variants.json").read_text())
    inputs = make_inputs(1, 32)
    held: list[Any] = []
    nbytes = 0
    if kind == "eigen":
        rt = DeviceRuntime(build / "bundle_fp32", options=RuntimeOptions(threads=threads), verify=False)
        first = rt.task(load_task(next(iter(sorted((tasks / "eigen").glob("*.safetensors"))))))
        rt.session("shared").run(["logits"], {**inputs, **first.feeds()})
    elif kind == "ort_adapter":
        sess = ort.InferenceSession(str(build / info["files"]["ort_lora"]["fp32"]),
                                    sess_options=session_options(threads), providers=["CPUExecutionProvider"])  # fmt: skip
        sess.run(["logits"], inputs)
    print("ready0", flush=True)
    sys.stdin.readline()
    if kind == "eigen":
        for p in sorted((tasks / "eigen").glob("*.safetensors"))[:n]:
            t = rt.task(load_task(p))
            held.append(t)
            nbytes += sum(v.nbytes for v in t.feeds().values())
        for t in held:  # each task actually runs once: what "ready to run" means
            rt.session("shared").run(["logits"], {**inputs, **t.feeds()})
    elif kind == "ort_adapter":
        for p in sorted((tasks / "ort_adapter").glob("*.onnx_adapter"))[:n]:
            a = ort.LoraAdapter()
            a.Load(str(p))
            ro = ort.RunOptions()
            ro.add_active_adapter(a)
            sess.run(["logits"], inputs, ro)
            held.append((a, ro))
            nbytes += p.stat().st_size
    elif kind == "merged_session":
        for i in range(n):
            path = build / info["files"][("eigen_merged", "lora_merged")[i % 2]]["fp32"]
            s = ort.InferenceSession(
                str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
            s.run(["logits"], inputs)
            held.append(s)
            nbytes += path.stat().st_size
    print(json.dumps({"ready1": True, "payload_bytes": nbytes}), flush=True)
    sys.stdin.readline()


def _vmrss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def resident_bytes(build: Path, tasks: Path, kind: str, n: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.task_switch", "--child", kind, "--n", str(n), "--build", str(build),
           "--tasks", str(tasks), "--threads", str(threads), "--out", "-"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=thread_env(threads)
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdout.readline()
    time.sleep(0.2)
    before = _vmrss_kib(proc.pid)
    proc.stdin.write("\n")
    proc.stdin.flush()
    payload = json.loads(proc.stdout.readline())
    time.sleep(0.2)
    after = _vmrss_kib(proc.pid)
    proc.stdin.write("\n")
    proc.stdin.flush()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"resident child {kind} n={n} failed")
    growth = (after - before) * 1024
    return {"kind": kind, "tasks": n, "rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
            "rss_growth_bytes": growth, "rss_growth_per_task": growth / n, "payload_bytes": payload["payload_bytes"],
            "payload_per_task": payload["payload_bytes"] / n, "peak_rss_mib": usage.ru_maxrss / 1024}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="quick")
    p.add_argument("--build", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--tasks", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    build = Path(args.build)
    if args.child:
        resident_child(build, Path(args.tasks), args.child, args.n, args.threads)
        return 0
    cfg = load_config(args.config)["switch"]
    start = time.perf_counter()
    tasks = make_tasks(build, max(cfg["resident"]))
    switch = time_switches(build, tasks, cfg)
    resident = []
    for n in cfg["resident"]:
        for kind in ("eigen", "ort_adapter", "merged_session"):
            if kind == "merged_session" and n > 10:
                continue  # 100 sessions of ~90 MB: 9 GB; the 1 and 10 points already show it is linear
            resident.append(resident_bytes(build, tasks, kind, n, cfg["threads"]))
            r = resident[-1]
            print(f"[switch] resident {kind:15s} n={n:3d}: RSS +{r['rss_growth_per_task'] / 1024:9.1f} KiB/task",
                  flush=True)  # fmt: skip
    result = {"config": cfg, "switch": switch, "disk": disk_bytes(tasks, build), "resident": resident,
              "seconds": time.perf_counter() - start}  # fmt: skip
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "task_switch.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v["p50_ms"] for k, v in switch.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
