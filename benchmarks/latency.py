"""Inference latency of every deployment variant, interleaved in one process so that ratios share the noise.

For each cell (batch, sequence, threads) every variant x quantization gets its own onnxruntime session (thread
counts set explicitly), opened in a random order in every round (fresh sessions each round: where a session's
weights land in memory is a new draw), then runs are interleaved: each repetition runs every session once, in an
order rotated by one per repetition (no variant is always first after a context switch). The ratio of a variant to the base
model at the same quantization is taken per repetition (runs seconds apart), so machine load cancels; p50 and p90
of those paired ratios are reported, and the p50 of each of `rounds` rounds gives the run-to-run spread.

    python -m benchmarks.latency --config quick --build <perf build folder> --out benchmarks/results/perf/quick
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.perf import LABELS, load_config, session_options


def make_inputs(batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random in-vocabulary token ids, every position a real token (so seq is the work actually done)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 20000, (batch, seq)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


class Runner:
    """One variant's session and what it needs per run (feeds, run options with an active adapter)."""

    def __init__(
        self, build: Path, variant: str, quant: str, threads: int, batch: int, arena: bool = True
    ) -> None:
        import onnxruntime as ort

        from edge_eigenlora import bundle as bundle_mod

        info = json.loads((build / "variants.json").read_text())
        self.name = f"{variant}/{quant}"
        self.variant, self.quant = variant, quant
        # base_again: a second session of the base graph, the control for session-to-session variance (where
        # each session's weights land in memory matters when a batch-1 run streams ~100s of MB of weights)
        path = build / info["files"]["base" if variant == "base_again" else variant][quant]
        self.session = ort.InferenceSession(
            str(path), sess_options=session_options(threads, arena), providers=["CPUExecutionProvider"]
        )
        self.extra: dict[str, np.ndarray] = {}
        self.run_options = None
        self._keep: list[Any] = []
        if variant in ("eigen_shared", "eigen_per_row"):
            manifest = bundle_mod.read_manifest(build / "bundle_fp32")
            tasks = [bundle_mod.load_bundle_task(manifest, n) for n in ("t0", "t1")]
            if variant == "eigen_shared":
                self.extra = bundle_mod.task_feeds(tasks[0], manifest)
            else:  # rows alternate between two tasks: what per-row batching is for
                per_row = [bundle_mod.task_feeds(tasks[i % 2], manifest) for i in range(batch)]
                self.extra = bundle_mod.row_feeds(per_row)[0]
        elif variant == "eigen_factored":  # the task's factors, formed once by the bundle's factors graph
            folder = path.parent
            manifest = bundle_mod.read_manifest(folder)
            feeds = bundle_mod.task_feeds(bundle_mod.load_bundle_task(manifest, "t0"), manifest)
            factors = ort.InferenceSession(
                str(folder / "model_factors.onnx"), providers=["CPUExecutionProvider"]
            )
            names = [o.name for o in factors.get_outputs()]
            coefficients = feeds.pop(bundle_mod.COEFFICIENTS)
            formed = factors.run(names, {bundle_mod.COEFFICIENTS: coefficients})
            self.extra = {**feeds, **dict(zip(names, formed, strict=True))}
        elif variant == "ort_lora":
            adapter = ort.LoraAdapter()
            adapter.Load(str(build / "adapters" / "t0.onnx_adapter"))
            self.run_options = ort.RunOptions()
            self.run_options.add_active_adapter(adapter)
            self._keep.append(adapter)  # ORT needs the adapter alive while it runs

    def __call__(self, inputs: dict[str, np.ndarray]) -> float:
        feeds = {**inputs, **self.extra}
        start = time.perf_counter()
        self.session.run(["logits"], feeds, self.run_options)
        return time.perf_counter() - start


def measure_cell(
    build: Path,
    variants: list[str],
    quants: list[str],
    batch: int,
    seq: int,
    threads: int,
    cfg: dict[str, Any],
) -> dict[str, Any]:
    """Interleaved timings of all variant x quant sessions on one (batch, seq, threads) cell.

    Every round opens fresh sessions: where a session's weights land in memory moves a batch-1 run by several
    percent (the base_again control measures it), so each round is a new draw and the per-round ratios show it.
    """

    rng = np.random.default_rng([batch, seq, threads])
    order_log: list[list[str]] = []

    def open_sessions() -> list[Runner]:
        """Every session, opened in a new random order (the first-opened session must not always be the base)."""
        pairs = [(v, q) for q in quants for v in variants]
        opened = [
            Runner(build, v, q, threads, batch) for v, q in (pairs[i] for i in rng.permutation(len(pairs)))
        ]
        order_log.append([r.name for r in opened])
        return opened

    runners = open_sessions()
    inputs = make_inputs(batch, seq)
    outputs = {}
    for r in runners:
        out = r.session.run(["logits"], {**inputs, **r.extra}, r.run_options)[0]
        if out.shape != (batch, LABELS) or not np.all(np.isfinite(out)):
            raise RuntimeError(f"{r.name}: bad output {out.shape}")
        outputs[r.name] = out[0]  # row 0 runs task t0 in every variant (per-row: rows alternate t0, t1)
        for _ in range(cfg["warmup"]):
            r(inputs)
    # every variant computes the same task: max |logit difference| to EigenLoRAx unmerged fp32 (base: no task)
    ref = outputs.get("eigen_shared/fp32")
    parity = {n: float(np.max(np.abs(o - ref))) for n, o in outputs.items()} if ref is not None else {}
    base_first = next(r for r in runners if r.name == f"base/{quants[0]}")
    probe = float(np.median([base_first(inputs) for _ in range(3)]))  # the base: sets the repetitions
    reps = int(
        min(
            cfg["max_reps_per_round"],
            max(cfg["min_reps_per_round"], math.ceil(cfg["seconds_per_round"] / probe)),
        )
    )
    times: dict[str, list[list[float]]] = {r.name: [] for r in runners}
    for round_index in range(cfg["rounds"]):
        if round_index:
            del runners[:]  # release the previous round's sessions before opening the next
            runners = open_sessions()
            for r in runners:
                for _ in range(cfg["warmup"]):
                    r(inputs)
        round_times: dict[str, list[float]] = {r.name: [] for r in runners}
        for rep in range(reps):
            shift = rep % len(runners)
            for r in runners[shift:] + runners[:shift]:
                round_times[r.name].append(r(inputs))
        for name, ts in round_times.items():
            times[name].append(ts)
    times = {
        k: [[round(t, 7) for t in ts] for ts in v] for k, v in times.items()
    }  # 0.1 us: keeps the JSON small
    return {
        "batch": batch,
        "seq": seq,
        "threads": threads,
        "reps_per_round": reps,
        "rounds": cfg["rounds"],
        "times_s": times,
        "open_order": order_log,
        "max_abs_logit_diff_to_eigen_shared_fp32": parity,
    }


def summarize(cell: dict[str, Any], macs: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant: p50/p90 ms, paired ratio to the base at the same quantization (p50, p90, per-round p50s),
    multiply-adds per token from the graph, the arithmetic ratio, and measured/expected."""
    b, s = cell["batch"], cell["seq"]
    rows = []
    for name, rounds in cell["times_s"].items():
        variant, quant = name.split("/")
        flat = np.concatenate([np.asarray(r) for r in rounds])
        base_name = f"base/{quant}"
        row: dict[str, Any] = {
            "variant": variant,
            "quant": quant,
            "batch": b,
            "seq": s,
            "threads": cell["threads"],
            "p50_ms": float(np.percentile(flat, 50) * 1e3),
            "p90_ms": float(np.percentile(flat, 90) * 1e3),
            "samples": int(flat.size),
        }
        if base_name in cell["times_s"]:
            base_rounds = cell["times_s"][base_name]
            paired = np.concatenate(
                [np.asarray(v) / np.asarray(w) for v, w in zip(rounds, base_rounds, strict=True)]
            )
            per_round = [
                float(np.median(np.asarray(v) / np.asarray(w)))
                for v, w in zip(rounds, base_rounds, strict=True)
            ]
            row.update(
                ratio_p50=float(np.percentile(paired, 50)),
                ratio_p90=float(np.percentile(paired, 90)),
                ratio_round_median=float(np.median(per_round)),
                ratio_p10=float(np.percentile(paired, 10)),
                ratio_round_p50s=per_round,
                ratio_round_spread=float(max(per_round) - min(per_round)),
            )
        if "peft_unmerged/" + quant in cell["times_s"] and variant.startswith("eigen"):
            peft = cell["times_s"]["peft_unmerged/" + quant]
            paired = np.concatenate(
                [np.asarray(v) / np.asarray(w) for v, w in zip(rounds, peft, strict=True)]
            )
            row["ratio_to_peft_p50"] = float(np.percentile(paired, 50))
            row["ratio_to_peft_p90"] = float(np.percentile(paired, 90))
            row["ratio_to_peft_round_p50s"] = [
                float(np.median(np.asarray(v) / np.asarray(w))) for v, w in zip(rounds, peft, strict=True)
            ]
        m = macs.get(base_name if variant == "base_again" else name)
        mb = macs.get(base_name)
        if m is not None:
            total = macs_at(m, b, s)
            row["macs_per_token"] = total / (b * s)
            row["gmacs_per_s"] = total / (row["p50_ms"] / 1e3) / 1e9
            if mb is not None and "ratio_p50" in row:
                row["macs_ratio"] = total / macs_at(mb, b, s)
                row["measured_over_expected"] = row["ratio_p50"] / row["macs_ratio"]
        rows.append(row)
    return rows


def macs_at(m: dict[str, int], batch: int, seq: int) -> int:
    return (
        m["per_call"]
        + m["per_sequence"] * batch
        + m["per_token"] * batch * seq
        + m["attention"] * batch * seq * seq
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="quick")
    p.add_argument("--build", required=True, help="folder written by benchmarks.perf (variants.json)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    cfg = load_config(args.config)["latency"]
    out = Path(args.out)
    macs = json.loads((out / "flops.json").read_text())["graphs"] if (out / "flops.json").exists() else {}
    cells, rows = [], []
    start = time.perf_counter()
    for batch, seq, threads in cfg["cells"]:
        t = time.perf_counter()
        cell = measure_cell(Path(args.build), cfg["variants"], cfg["quants"], batch, seq, threads, cfg)
        cell["seconds"] = time.perf_counter() - t
        cells.append(cell)
        rows += summarize(cell, macs)
        shared = next((r for r in rows[-len(cell["times_s"]) :] if r["variant"] == "eigen_shared"), {})
        print(
            f"[latency] B={batch} S={seq} threads={threads}: {cell['seconds']:.0f} s, "
            f"eigen_shared/base p50 {shared.get('ratio_p50', float('nan')):.3f}",
            flush=True,
        )
        result = {
            "config": cfg,
            "cells": cells,
            "rows": rows,
            "seconds": time.perf_counter() - start,
            "load_average": list(__import__("os").getloadavg()),
        }
        (out / "latency.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
