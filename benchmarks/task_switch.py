"""Task switching: what a switch costs the user's next run, and what each task costs on disk and in memory.

The headline (paired, one process, 1 thread, batch 1, public calls only):
    switched - same   p50 over units of (a run repeating the current task, then a run right after a switch to the
                      other task), per path:
        eigen_cached      EigenLoRAx, tasks cached by the runtime (DeviceRuntime.preload(), then task(name))
        eigen_cold        EigenLoRAx, the task file read + validated at the switch (DeviceRuntime.task(Task))
        ort_adapter       ORT multi-LoRA: both .onnx_adapter files loaded, the switch activates the other one
        ort_adapter_cold  ORT multi-LoRA: the .onnx_adapter file loaded + activated at the switch
    new session       a merged model per task: a new InferenceSession + its first run, against a run right after
                      an EigenLoRAx switch in the same unit (ratio per unit, p50)
Details: the switch operation alone (the runtime's cache lookup, reading a task file, loading an ORT adapter).
Bytes per task (1, 10, 100 resident tasks): files on disk, and the RSS growth of a child process that holds N tasks
ready to run, read from outside (/proc/<pid>/status between two handshakes).

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

from benchmarks.fixtures import peft_key, synthetic_task
from benchmarks.latency import make_inputs
from benchmarks.perf import LABELS, RANK, load_config, session_options, thread_env


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
        task = synthetic_task(basis, f"s{i:03d}", 1000 + i, hidden, rank=RANK, labels=LABELS)
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
        (folder / "adapter_config.json").write_text(
            json.dumps(
                {
                    "peft_type": "LORA",
                    "r": RANK,
                    "lora_alpha": RANK,
                    "target_modules": sorted({m.rsplit(".", 1)[-1] for m in task.coefficients}),
                }
            )
        )
        save_file(
            {"weight": task.head_weight, "bias": task.head_bias}, str(folder / "classifier_head.safetensors")
        )
        params = {name: np.ascontiguousarray(tensors[peft_key(name)].T) for name in info["lora_inputs"]}
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


def paired_delta(deltas: list[float]) -> dict[str, float]:
    """p50, p10, p90 of the paired differences (ms) and a bootstrap 95% interval of their p50."""
    a = np.asarray(deltas) * 1e3
    boot = np.median(np.random.default_rng(0).choice(a, (2000, a.size)), axis=1)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p10_ms": float(np.percentile(a, 10)),
        "p90_ms": float(np.percentile(a, 90)),
        "p50_ci95_ms": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "n": int(a.size),
    }


def time_switches(build: Path, tasks: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The switch a user sees, through public calls only (DeviceRuntime.run, ORT's run with RunOptions).

    Paired loop: each unit is a run that repeats the current task and then a run right after a switch to the other
    task (alternating t0/t1), so `switched - same` is taken between neighbouring runs and the machine's load
    cancels. Per path: EigenLoRAx with the task cached (`session("shared").run` with `task(name).feeds()` after
    `preload()`),
    EigenLoRAx with the task read from its file at the switch, ORT multi-LoRA (adapters loaded, the switch
    activates the other one) and ORT with the adapter file loaded at the switch. Second loop, also paired: a
    run right after an EigenLoRAx switch against the first run on a new session of a merged model (what a
    merged-model deployment does to change task), both inside one unit.
    """
    import onnxruntime as ort

    from edge_eigenlora.runtime import DeviceRuntime, RuntimeOptions
    from edge_eigenlora.task import load_task

    threads, seq, repeats = cfg["threads"], cfg["seq"], cfg["repeats"]
    pairs = int(cfg.get("pairs", max(20, repeats // 10)))
    info = json.loads((build / "variants.json").read_text())
    inputs = make_inputs(1, seq)
    rt = DeviceRuntime(build / "bundle_fp32", options=RuntimeOptions(threads=threads), verify=False)
    bundle_tasks = rt.preload()[:2]  # the bundle's own tasks (t0, t1), cached: the runtime's normal path
    # DeviceRuntime.run(task=...) is session("shared").run with task(...).feeds() after encode(); encode() of token
    # ids currently spends ~8 ms per call asking the tokenizer for its vocabulary size (the same in both arms of
    # a pair, but it would double the run that the new-session ratio compares against), so the runs here call
    # the same two public methods directly.
    shared = rt.session("shared")
    task_files = [build / "tasks" / f"{n}.safetensors" for n in bundle_tasks]
    names = sorted(p.stem for p in (tasks / "eigen").glob("*.safetensors"))[:10]
    ort_sess = ort.InferenceSession(
        str(build / info["files"]["ort_lora"]["fp32"]),
        sess_options=session_options(threads),
        providers=["CPUExecutionProvider"],
    )
    ort_files = [tasks / "ort_adapter" / f"{n}.onnx_adapter" for n in names[:2]]

    def ort_options(path: Path) -> Any:
        adapter = ort.LoraAdapter()
        adapter.Load(str(path))
        ro = ort.RunOptions()
        ro.add_active_adapter(adapter)
        return adapter, ro  # the adapter must stay referenced while it runs

    ort_loaded = [ort_options(p) for p in ort_files]

    # Each path: (same, switch). `same(i)` runs task i again as the run before did; `switch(i)` switches to task i
    # the way that deployment does it and runs it. The "cold" paths read the task file at the switch and keep it.
    held: dict[str, Any] = {"eigen_cold": None, "ort_adapter_cold": None}

    def eigen_same(i: int) -> None:
        shared.run(["logits"], {**inputs, **rt.task(bundle_tasks[i]).feeds()})

    def eigen_cold_same(i: int) -> None:
        shared.run(["logits"], {**inputs, **held["eigen_cold"].feeds()})

    def eigen_cold_switch(i: int) -> None:
        held["eigen_cold"] = rt.task(load_task(task_files[i]))
        shared.run(["logits"], {**inputs, **held["eigen_cold"].feeds()})

    def ort_same(i: int) -> None:
        ort_sess.run(["logits"], inputs, ort_loaded[i][1])

    def ort_cold_same(i: int) -> None:
        ort_sess.run(["logits"], inputs, held["ort_adapter_cold"][1])

    def ort_cold_switch(i: int) -> None:
        held["ort_adapter_cold"] = ort_options(ort_files[i])
        ort_sess.run(["logits"], inputs, held["ort_adapter_cold"][1])

    paths = {
        "eigen_cached": (eigen_same, eigen_same),
        "eigen_cold": (eigen_cold_same, eigen_cold_switch),
        "ort_adapter": (ort_same, ort_same),
        "ort_adapter_cold": (ort_cold_same, ort_cold_switch),
    }
    eigen_cached = eigen_same
    for same_fn, switch_fn in paths.values():  # warm every path on both tasks; ends holding task 0
        for i in (1, 0):
            switch_fn(i)
            same_fn(i)
    same: dict[str, list[float]] = {k: [] for k in paths}
    switched: dict[str, list[float]] = {k: [] for k in paths}
    current = dict.fromkeys(paths, 0)
    rng = np.random.default_rng(0)
    for _ in range(pairs):
        for k in rng.permutation(list(paths)):  # the paths in a random order in every unit
            same_fn, switch_fn = paths[k]
            cur = current[k]
            t = time.perf_counter()
            same_fn(cur)  # the same task as the run before
            t1 = time.perf_counter()
            switch_fn(1 - cur)  # right after a switch
            t2 = time.perf_counter()
            same[k].append(t1 - t)
            switched[k].append(t2 - t1)
            current[k] = 1 - cur
    out: dict[str, Any] = {"paired": {}, "detail": {}, "new_session": {}}
    for k in paths:
        out["paired"][k] = {
            "same": _pcts(same[k]),
            "switched": _pcts(switched[k]),
            "delta": paired_delta([b - a for a, b in zip(same[k], switched[k], strict=True)]),
        }

    # First run on a new session (merged model per task) against a run right after an EigenLoRAx switch,
    # paired in one unit; the two merged graphs alternate so the file cache holds both, as for a device's tasks.
    merged = [build / info["files"]["eigen_merged"]["fp32"], build / info["files"]["lora_merged"]["fp32"]]
    create, first, steady, after_switch = [], [], [], []
    cur = 0
    for i in range(cfg["session_repeats"]):
        t = time.perf_counter()
        eigen_cached(1 - cur)
        after_switch.append(time.perf_counter() - t)
        cur = 1 - cur
        t = time.perf_counter()
        sess = ort.InferenceSession(
            str(merged[i % 2]), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
        t1 = time.perf_counter()
        sess.run(["logits"], inputs)
        t2 = time.perf_counter()
        sess.run(["logits"], inputs)
        t3 = time.perf_counter()
        create.append(t1 - t)
        first.append(t2 - t1)
        steady.append(t3 - t2)
        del sess
    total = [a + b for a, b in zip(create, first, strict=True)]
    ns = out["new_session"]
    ns["create"] = _pcts(create)
    ns["first_run"] = _pcts(first)
    ns["create_plus_first_run"] = _pcts(total)
    ns["steady_run"] = _pcts(steady)
    ns["eigen_run_after_switch"] = _pcts(after_switch)
    ratios = np.asarray(total) / np.asarray(after_switch)
    ns["ratio_create_plus_first_run_to_switched_run"] = {
        "p50": float(np.percentile(ratios, 50)),
        "min": float(ratios.min()),
        "max": float(ratios.max()),
        "n": int(ratios.size),
    }
    first_ratio = np.asarray(first) / np.asarray(after_switch)
    ns["ratio_first_run_to_switched_run"] = {
        "p50": float(np.percentile(first_ratio, 50)),
        "min": float(first_ratio.min()),
        "max": float(first_ratio.max()),
        "n": int(first_ratio.size),
    }

    # Detail: the switch operation alone, without the run (the runtime's cache lookup is a dict lookup).
    res: dict[str, list[float]] = {
        k: [] for k in ("eigen_lookup", "eigen_read_task", "ort_adapter_load", "ort_adapter_activate")
    }
    for i in range(repeats):
        name = bundle_tasks[i % 2]
        t = time.perf_counter()
        rt.task(name).feeds()
        res["eigen_lookup"].append(time.perf_counter() - t)
        t = time.perf_counter()
        rt.task(load_task(tasks / "eigen" / f"{names[i % len(names)]}.safetensors")).feeds()
        res["eigen_read_task"].append(time.perf_counter() - t)
        t = time.perf_counter()
        adapter = ort.LoraAdapter()
        adapter.Load(str(tasks / "ort_adapter" / f"{names[i % len(names)]}.onnx_adapter"))
        t1 = time.perf_counter()
        ro = ort.RunOptions()
        ro.add_active_adapter(adapter)
        res["ort_adapter_load"].append(t1 - t)
        res["ort_adapter_activate"].append(time.perf_counter() - t1)
    out["detail"] = {k: _pcts(v) for k, v in res.items()}
    out["pairs"] = pairs
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
        sess = ort.InferenceSession(
            str(build / info["files"]["ort_lora"]["fp32"]),
            sess_options=session_options(threads),
            providers=["CPUExecutionProvider"],
        )
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
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.task_switch",
        "--child",
        kind,
        "--n",
        str(n),
        "--build",
        str(build),
        "--tasks",
        str(tasks),
        "--threads",
        str(threads),
        "--out",
        "-",
    ]
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
    return {
        "kind": kind,
        "tasks": n,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "rss_growth_bytes": growth,
        "rss_growth_per_task": growth / n,
        "payload_bytes": payload["payload_bytes"],
        "payload_per_task": payload["payload_bytes"] / n,
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }


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
            print(
                f"[switch] resident {kind:15s} n={n:3d}: RSS +{r['rss_growth_per_task'] / 1024:9.1f} KiB/task",
                flush=True,
            )
    result = {
        "config": cfg,
        "switch": switch,
        "disk": disk_bytes(tasks, build),
        "resident": resident,
        "seconds": time.perf_counter() - start,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "task_switch.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v["delta"]["p50_ms"] for k, v in switch["paired"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
