"""Hub-scale fit from real files: N adapters written as PEFT folders, fitted single-process and on Dask.

Shape (default): 24 layers x (q_proj, v_proj), d=2048, r=16, fp32: 12.6 MB per adapter. Every module of
every adapter is drawn from a decaying (not flat) spectrum: 128 shared directions per module and side with
weights exp(-j/16), plus isotropic noise, so the top-32 subspace is well defined but not trivial. The
adapters are written as real `adapter_config.json` + `adapter_model.safetensors` folders, in shard folders
of `--shard` adapters (a folder tree, what `edge-eigenlora fit` reads), read back lazily by
`bank_sources.open_bank`, and deleted at the end. Disk use is bounded: the run refuses to write more than
`--max-disk-gib`.

Each fit runs in a child process (`--child ENGINE`); the parent samples the resident memory of the child's
whole process tree (the Dask workers are grandchildren) every 0.2 s and records its peak sum and the peak
of each process, the wall time, and the CPU seconds of the tree. Between runs the page cache of the bank's
files is dropped with posix_fadvise(DONTNEED) on each file, so both engines read from disk alike.
Sampled modules are then re-solved with the exact eigensolver (SubspaceConfig(solver="exact")) and compared
with both engines' bases: principal angles and captured energy.

    python -m benchmarks.hub_scale --adapters 1000            # writes, fits twice, validates, deletes
    python -m benchmarks.hub_scale --report-only              # re-render report.md from results.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "hub_scale"
SHARED = 128
DECAY = 16.0
NOISE = 0.05


def module_names(layers: int) -> list[str]:
    return [f"model.layers.{i}.self_attn.{p}" for i in range(layers) for p in ("q_proj", "v_proj")]


def planted(layers: int, d: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for j, m in enumerate(module_names(layers)):
        g = np.random.default_rng([seed, 7, j])
        out[m] = (
            np.linalg.qr(g.standard_normal((d, SHARED)))[0].astype(np.float32),
            np.linalg.qr(g.standard_normal((d, SHARED)))[0].astype(np.float32),
        )
    return out


def write_adapter(folder: Path, index: int, table: dict, d: int, r: int, seed: int) -> None:
    """One PEFT folder; the config is written last, so a folder with a config is complete (resumable)."""
    from safetensors.numpy import save_file

    if (folder / "adapter_config.json").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng([seed, index])
    weights = np.exp(-np.arange(SHARED) / DECAY).astype(np.float32)[:, None]
    tensors = {}
    for m, (p_in, p_out) in table.items():
        a_t = p_in @ (weights * g.standard_normal((SHARED, r), dtype=np.float32))
        a_t += NOISE * g.standard_normal((d, r), dtype=np.float32)
        b = p_out @ (weights * g.standard_normal((SHARED, r), dtype=np.float32))
        b += NOISE * g.standard_normal((d, r), dtype=np.float32)
        tensors[f"base_model.model.{m}.lora_A.weight"] = np.ascontiguousarray(a_t.T / np.sqrt(d))
        tensors[f"base_model.model.{m}.lora_B.weight"] = np.ascontiguousarray(b * 0.01)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "synthetic/1b-24l-d2048",
        "use_rslora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))


def drop_cache(root: Path) -> None:
    """Evict the bank's files from the page cache (only ours), so every engine reads from disk."""
    for path in root.rglob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _child(args: argparse.Namespace) -> None:
    """Inside the measured process: open the bank from its folder tree and fit it with one engine."""
    from edge_eigenlora.bank_sources import open_bank
    from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis

    config = SubspaceConfig(k=args.k)
    start = time.perf_counter()
    opened = open_bank([args.bank])
    opened_s = time.perf_counter() - start
    info: dict = {"adapters": len(opened.bank.adapters), "open_seconds": opened_s}
    if args.child == "single":
        basis = fit_basis(opened.bank, config, progress=False)
    else:
        from edge_eigenlora.distributed_fit import DaskEngine, local_client

        t0 = time.perf_counter()
        client = local_client(args.workers)
        info["cluster_start_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        basis = fit_basis(opened.bank, config, progress=False, engine=DaskEngine(client))
        info["dask_fit_seconds"] = time.perf_counter() - t1

        def own_peak() -> float:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        info["worker_peak_rss_mib"] = sorted(client.run(own_peak).values())
        client.close()
        client.cluster.close()
    info["fit_seconds"] = time.perf_counter() - start
    info["fallbacks"] = sum(
        1 for m in basis.modules.values() for s in m.solver.values() if s["method"] == "exact_fallback"
    )
    info["iterations"] = [s["iterations"] for m in basis.modules.values() for s in m.solver.values()]
    save_basis(basis, args.save)
    print(json.dumps(info))


def measure(engine: str, args: argparse.Namespace, bank: Path, save: Path) -> dict:
    import psutil

    drop_cache(bank)
    cmd = [sys.executable, "-m", "benchmarks.hub_scale", "--child", engine, "--bank", str(bank)]
    cmd += ["--k", str(args.k), "--workers", str(args.workers), "--save", str(save)]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak_total, peak_each, cpu = 0.0, {}, {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0.0
        for p in tree:
            try:
                rss = p.memory_info().rss / 2**20
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                continue
            total += rss
            peak_each[p.pid] = max(peak_each.get(p.pid, 0.0), rss)
        peak_total = max(peak_total, total)
        time.sleep(0.2)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} failed:\n{err[-3000:]}")
    info = json.loads(out.strip().splitlines()[-1])
    return {
        "engine": engine if engine == "single" else f"dask LocalCluster {args.workers} workers",
        **info,
        "wall_seconds": wall,
        "cpu_seconds_sampled": sum(cpu.values()),
        "peak_rss_total_mib": peak_total,
        "peak_rss_largest_process_mib": max(peak_each.values(), default=0.0),
        "processes": len(peak_each),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def validate(args: argparse.Namespace, bank: Path, saves: dict[str, Path]) -> dict:
    """Sampled modules re-solved with the exact eigensolver; angles and captured energy of each engine."""
    from edge_eigenlora import subspace
    from edge_eigenlora.bank_sources import open_bank
    from edge_eigenlora.basis import SubspaceConfig, accumulate_module, finish_module, load_basis

    opened = open_bank([bank])
    names = list(opened.bank.module_shapes)
    picks = sorted(
        np.random.default_rng(args.seed).choice(
            len(names), min(args.validate_modules, len(names)), replace=False
        )
    )
    bases = {engine: load_basis(path) for engine, path in saves.items()}
    rows = []
    for i in picks:
        module = names[int(i)]
        acc = accumulate_module(opened.bank.adapters, module, opened.bank.module_shapes[module], "gauge_free")
        grams = {side: acc.stack.gram(side) for side in ("A", "B")}
        exact = finish_module(acc, SubspaceConfig(k=args.k, solver="exact")).basis
        ev = {side: np.linalg.eigvalsh(grams[side])[::-1] for side in ("A", "B")}
        row = {"module": module, "columns": acc.stack.columns}
        for side in ("A", "B"):
            lam = ev[side]
            row[f"relative_gap_{side}"] = float((lam[args.k - 1] - lam[args.k]) / lam[0])
            u_exact = getattr(exact, f"U_{side}").astype(np.float64)
            best = float(np.trace(u_exact.T @ grams[side] @ u_exact))
            for engine, basis in bases.items():
                u = getattr(basis.modules[module], f"U_{side}").astype(np.float64)
                row[f"angle_{side}_{engine}"] = float(np.max(subspace.principal_angles(u, u_exact)))
                row[f"energy_ratio_{side}_{engine}"] = float(np.trace(u.T @ grams[side] @ u) / best)
        rows.append(row)
    return {"modules": rows}


def project(args: argparse.Namespace) -> dict:
    """Per adapter-module accumulation time and per-module eigensolve time at d=2048 and d=4096, measured here
    in memory (no I/O), so the measured run can be scaled to other shapes."""
    from edge_eigenlora.adapters import LoraFactors
    from edge_eigenlora.basis import ModuleAccumulator, SubspaceConfig, finish_module

    out = {"load_average_before": os.getloadavg()[0], "shapes": []}
    for d in (2048, 4096):
        n = 2 * 2 * d // args.r  # two folds of the Gram matrices at 2 d columns each
        g = np.random.default_rng(0)
        p_in = np.linalg.qr(g.standard_normal((d, SHARED)))[0]
        p_out = np.linalg.qr(g.standard_normal((d, SHARED)))[0]
        weights = np.exp(-np.arange(SHARED) / DECAY)[:, None]
        factors = []
        for _ in range(n):
            a_t = p_in @ (weights * g.standard_normal((SHARED, args.r))) + NOISE * g.standard_normal(
                (d, args.r)
            )
            b = p_out @ (weights * g.standard_normal((SHARED, args.r))) + NOISE * g.standard_normal(
                (d, args.r)
            )
            factors.append(
                LoraFactors(A=(a_t.T / np.sqrt(d)).astype(np.float32), B=(b * 0.01).astype(np.float32))
            )
        acc = ModuleAccumulator.empty("m", (d, d), "gauge_free")
        start = time.process_time()
        for i, f in enumerate(factors):
            acc.add(f"a{i}", f)
        acc.stack.delta_sum()  # fold the remainder
        per_adapter = (time.process_time() - start) / n
        start = time.process_time()
        fitted = finish_module(acc, SubspaceConfig(k=args.k))
        solve = time.process_time() - start
        out["shapes"].append(
            {
                "d": d,
                "adapters": n,
                "cpu_seconds_per_adapter_module": per_adapter,
                "cpu_seconds_per_module_solve": solve,
                "solver": fitted.basis.solver,
            }
        )
        print(json.dumps(out["shapes"][-1]), flush=True)
    out["load_average_after"] = os.getloadavg()[0]
    return out


def render_report(results: dict, out: Path) -> Path:
    cfg = results["config"]
    lines = [
        "# Hub-scale fit from real files: single process against a Dask LocalCluster",
        "",
        f"Generated by `python -m benchmarks.hub_scale` (re-render: `--report-only`). Bank: "
        f"{cfg['adapters']} adapters written as real PEFT folders (fp32 safetensors, {cfg['layers']} layers x q,v, "
        f"d={cfg['d']}, r={cfg['r']}; {cfg['bank_gib']:.1f} GiB on disk in shard folders of {cfg['shard']}), "
        f"decaying spectrum (128 shared directions per module and side, weights exp(-j/{DECAY:g}), noise "
        f"{NOISE}); gauge-free, K={cfg['k']}. Machine: {results['cpu_count']} CPUs shared with other jobs (load "
        "average in the table). The page cache of the bank's files is dropped before each run.",
        "",
        "Peak RSS: sum over the child's process tree (client, scheduler, workers), sampled every 0.2 s, and the "
        "largest single process. Fit time includes reading every header (`open_bank`); for Dask it includes "
        "starting the LocalCluster (shown apart).",
        "",
        "| engine | adapters | fit s | of which cluster start s | wall s | CPU s (sampled) | peak RSS total MiB |"
        " largest process MiB | load avg before/after | solver fall-backs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['engine']} | {r['adapters']} | {r['fit_seconds']:.0f} | "
            f"{r.get('cluster_start_seconds', 0):.0f} | {r['wall_seconds']:.0f} | {r['cpu_seconds_sampled']:.0f} | "
            f"{r['peak_rss_total_mib']:.0f} | {r['peak_rss_largest_process_mib']:.0f} | "
            f"{r['load_average_before']:.1f}/{r['load_average_after']:.1f} | {r['fallbacks']} |"
        )
    modules = cfg["layers"] * 2
    lines += [
        "",
        "On cores shared with other jobs, two worker processes get a larger share of the machine than one process "
        "does, and the load changed between the runs: read the wall times with the CPU seconds and the load "
        "averages beside them. The single process runs numpy with 2 BLAS threads; each Dask worker with 1.",
    ]
    lines += ["", "Throughput (adapter-modules per second of fit time, all modules):", ""]
    for r in results["runs"]:
        rate = r["adapters"] * modules / r["fit_seconds"]
        lines.append(
            f"- {r['engine']}: {rate:.0f} adapter-modules/s ({r['fit_seconds'] / modules:.1f} s per module)"
        )
    if "parity" in results:
        p = results["parity"]
        lines += [
            "",
            f"Dask against single process, every module: max principal angle {p['max_angle']:.1e} rad, "
            f"max |mean_core| difference {p['max_mean_core_diff']:.1e}, singular values max relative difference "
            f"{p['max_singular_value_rel_diff']:.1e}.",
        ]
    if "validation" in results:
        engines = [r["engine"] for r in results["runs"]]
        lines += [
            "",
            "Sampled modules re-solved with the exact eigensolver (`SubspaceConfig(solver='exact')`), "
            "largest principal angle to the exact top-K subspace and captured energy trace(U^T G U) relative "
            "to the exact one:",
            "",
            "| module | side | relative gap at K | "
            + " | ".join(f"{e}: angle rad / energy" for e in engines)
            + " |",
            "|---|---|---|" + "---|" * len(engines),
        ]
        keys = {"single": "single"}
        keys.update({e: "dask" for e in engines if e != "single"})
        for row in results["validation"]["modules"]:
            for side in ("A", "B"):
                cells = " | ".join(
                    f"{row[f'angle_{side}_{keys[e]}']:.1e} / {row[f'energy_ratio_{side}_{keys[e]}']:.9f}"
                    for e in engines
                )
                lines.append(f"| {row['module']} | {side} | {row[f'relative_gap_{side}']:.1e} | {cells} |")
    if "projection" in results and results["runs"]:
        lines += _projection_section(results)
    lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _projection_section(results: dict) -> list[str]:
    """10,000 adapters of this shape (extrapolated from the measured run) and of a 7B shape (projected)."""
    cfg, proj = results["config"], results["projection"]
    shapes = {row["d"]: row for row in proj["shapes"]}
    c2, c4 = shapes[2048]["cpu_seconds_per_adapter_module"], shapes[4096]["cpu_seconds_per_adapter_module"]
    s2, s4 = shapes[2048]["cpu_seconds_per_module_solve"], shapes[4096]["cpu_seconds_per_module_solve"]
    modules = 2 * cfg["layers"]
    single = next(r for r in results["runs"] if r["engine_key"] == "single")
    n = single["adapters"]
    # what reading + parsing from files adds to the in-memory work, per adapter-module (CPU), in the measured run
    measured_cpu = single["cpu_seconds_sampled"] / (n * modules)
    overhead = max(measured_cpu - c2 - s2 / n, 0.0)
    lines = [
        "",
        "## From the measured run to 10,000 adapters (EXTRAPOLATION, not measured)",
        "",
        f"In-memory CPU cost measured by `--project-only` (load average {proj['load_average_before']:.1f}): per "
        f"adapter-module (balanced factors + the Gram and delta folds) {c2 * 1e3:.1f} ms at d=2048 and "
        f"{c4 * 1e3:.1f} ms at d=4096; per module eigensolve (two sides, eigenvalues + top-{cfg['k']} vectors) "
        f"{s2:.1f} s at d=2048 and {s4:.1f} s at d=4096. The measured single-process run spent "
        f"{measured_cpu * 1e3:.1f} ms of CPU per adapter-module, so reading and parsing the files added "
        f"~{overhead * 1e3:.1f} ms (bytes read scale with d, like that cost).",
        "",
        "| case | adapters | modules | CPU hours (sum over workers) | wall on 1 / 8 / 32 / 64 one-core workers |",
        "|---|---|---|---|---|",
    ]

    def row(name: str, adapters: int, mods: int, per_adapter: float, per_solve: float) -> str:
        cpu = adapters * mods * per_adapter + mods * per_solve
        walls = []
        for workers in (1, 8, 32, 64):
            # modules x shards give the parallelism; the per-module solve is not split
            wall = max(cpu / workers, per_solve + adapters * per_adapter * mods / workers)
            walls.append(f"{wall / 3600:.2f} h")
        return f"| {name} | {adapters:,} | {mods} | {cpu / 3600:.1f} | {' / '.join(walls)} |"

    lines.append(row(f"measured shape, d=2048 ({n} measured)", 10_000, modules, c2 + overhead, s2))
    lines.append(
        row(
            "7B shape (32 layers x q,v, d=4096, r=16), measured d=4096 costs",
            10_000,
            64,
            c4 + 2 * overhead,
            s4,
        )
    )
    # the d=4096 costs were measured on a shared machine; the flop counts give the pessimistic bound
    lines.append(
        row(
            "7B shape, d=2048 costs scaled by flops (x4 per adapter, x8 per solve)",
            10_000,
            64,
            4 * c2 + 2 * overhead,
            8 * s2,
        )
    )
    scale = (10_000 * (c2 + overhead) + s2) / (n * (c2 + overhead) + s2)
    linear = "; ".join(
        f"{r['engine']}: {r['fit_seconds'] * scale / 3600:.1f} h, peak RSS unchanged "
        f"(~{r['peak_rss_total_mib']:.0f} MiB: memory does not grow with the bank)"
        for r in results["runs"]
    )
    lines += [
        "",
        f"10,000 adapters of the measured shape on this machine (EXTRAPOLATION): the measured fit time scaled by "
        f"the modelled cost ratio x{scale:.1f} (per module: adapters x per adapter-module cost + one solve, whose "
        f"share shrinks as the bank grows): {linear}. The bank would be 126 GB of fp32 files.",
    ]
    lines += [
        "",
        "The two 7B rows bracket it: the per adapter-module work is three d x d x columns products per fold (Gram A, "
        "Gram B, sum of deltas: 4x the flops at twice d) and the per-module solve is dominated by the full "
        "eigenvalue decomposition (eigvalsh, 8x); CPU seconds measured on a shared machine came out below those "
        "ratios.",
    ]
    bytes_7b = 10_000 * 64 * 2 * 4096 * 16 * 4
    worker_mib = [max(r.get("worker_peak_rss_mib", [0.0]) or [0.0]) for r in results["runs"]]
    lines += [
        "",
        f"What the 7B case needs: the bank is {bytes_7b / 1e9:.0f} GB (fp32) and is read once (one pass: the "
        "directions and the mean delta come from the same read); at the 64-worker wall time above that is "
        f"{bytes_7b / 1e6 / max(1.0, (10_000 * 64 * (4 * c2 + 2 * overhead) + 64 * 8 * s2) / 64):.0f} MB/s (flop-scaled row) from "
        "shared storage (an object store through fsspec, or a parallel file system), spread over the workers. "
        "Memory per worker: what the d=2048 workers peaked at here (up to 2 modules in flight per worker, each an "
        "accumulator of 3 d^2 float64 sums plus up to 2 d pending columns per side, two of them during a merge) "
        f"times 4 for d=4096: ~{4 * max(worker_mib) / 1024:.1f} GiB (measured {max(worker_mib) or float('nan'):.0f} MiB). Parallelism: 64 modules x shards, so up to hundreds of "
        "workers stay busy; beyond ~64 workers the per-module eigensolve (not split) sets the floor. The "
        "scheduler holds each shard's adapter list (a few KB per adapter): ~100 MB for 10,000 adapters.",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=1000, help="adapters in the bank")
    parser.add_argument("--layers", type=int, default=24, help="layers (q and v adapted in each)")
    parser.add_argument("--d", type=int, default=2048, help="hidden size")
    parser.add_argument("--r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--k", type=int, default=32, help="principal directions kept")
    parser.add_argument("--shard", type=int, default=250, help="adapters per shard folder")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bank and the sampled modules")
    parser.add_argument("--validate-modules", type=int, default=3, help="modules re-solved exactly")
    parser.add_argument("--engines", nargs="+", default=["single", "dask"], help="which engines to run")
    parser.add_argument("--max-disk-gib", type=float, default=18.0, help="refuse banks larger than this")
    parser.add_argument(
        "--scratch", default="/tmp/edge-eigenlora-hub-scale", help="where the bank is written"
    )
    parser.add_argument("--keep", action="store_true", help="do not delete the bank at the end")
    parser.add_argument("--out", default=str(RESULTS), help="folder for results.json and report.md")
    parser.add_argument("--report-only", action="store_true", help="re-render report.md from results.json")
    parser.add_argument(
        "--project-only",
        action="store_true",
        help="only measure in-memory per adapter-module and per-module solve CPU time at d=2048 and 4096",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bank", default="", help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        print(render_report(json.loads((out / "results.json").read_text()), out))
        return 0
    if args.project_only:
        from edge_eigenlora.fileio import write_json_atomic

        results = json.loads((out / "results.json").read_text())
        results["projection"] = project(args)
        write_json_atomic(out / "results.json", results)
        print(render_report(results, out))
        return 0
    from edge_eigenlora.fileio import write_json_atomic

    per_adapter = args.layers * 2 * 2 * args.d * args.r * 4
    bank_gib = args.adapters * per_adapter / 2**30
    if bank_gib > args.max_disk_gib:
        raise SystemExit(f"the bank needs {bank_gib:.1f} GiB > --max-disk-gib {args.max_disk_gib}")
    scratch = Path(args.scratch)
    bank = scratch / f"bank-{args.adapters}-{args.layers}x{args.d}-r{args.r}-s{args.seed}"
    config = {k: getattr(args, k) for k in ("adapters", "layers", "d", "r", "k", "shard", "workers", "seed")}
    config["bank_gib"] = bank_gib
    results: dict = {"config": config, "cpu_count": os.cpu_count(), "runs": []}
    previous = out / "results.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        if old.get("config") == config:
            results = old  # resume: keep finished runs
    t0 = time.perf_counter()
    table = planted(args.layers, args.d, args.seed)
    for i in range(args.adapters):
        write_adapter(
            bank / f"shard{i // args.shard:03d}" / f"adapter{i:05d}", i, table, args.d, args.r, args.seed
        )
        if (i + 1) % 100 == 0:
            print(f"written {i + 1}/{args.adapters} ({time.perf_counter() - t0:.0f} s)", flush=True)
    results["write_seconds"] = results.get("write_seconds") or time.perf_counter() - t0
    saves = {}
    done = {r["engine_key"] for r in results["runs"]}
    for engine in args.engines:
        save = scratch / f"basis-{engine}-{args.adapters}.safetensors"
        saves[engine] = save
        if engine in done and save.is_file():
            continue
        row = measure(engine, args, bank, save)
        row["engine_key"] = engine
        results["runs"] = [r for r in results["runs"] if r["engine_key"] != engine] + [row]
        print(json.dumps(row), flush=True)
        write_json_atomic(previous, results)
        render_report(results, out)
    if {"single", "dask"} <= set(saves):
        from edge_eigenlora import subspace
        from edge_eigenlora.basis import load_basis

        a, b = load_basis(saves["single"]), load_basis(saves["dask"])
        angles, cores, svs = [], [], []
        for m, ma in a.modules.items():
            mb = b.modules[m]
            for side in ("A", "B"):
                u, v = (
                    getattr(ma, f"U_{side}").astype(np.float64),
                    getattr(mb, f"U_{side}").astype(np.float64),
                )
                angles.append(float(np.max(subspace.principal_angles(u, v))))
                s1, s2 = getattr(ma, f"singular_values_{side}"), getattr(mb, f"singular_values_{side}")
                svs.append(float(np.max(np.abs(s1[: args.k] - s2[: args.k]) / s1[0])))
            cores.append(float(np.max(np.abs(ma.mean_core - mb.mean_core))))
        results["parity"] = {
            "max_angle": max(angles),
            "max_mean_core_diff": max(cores),
            "max_singular_value_rel_diff": max(svs),
        }
    if args.validate_modules:
        results["validation"] = validate(args, bank, saves)
    write_json_atomic(previous, results)
    print(render_report(results, out))
    if not args.keep:
        shutil.rmtree(bank, ignore_errors=True)
        for save in saves.values():
            save.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
