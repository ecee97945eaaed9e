"""Accuracy report: results JSON (written by benchmarks.accuracy) -> markdown tables + PNG plots.

    python -m benchmarks.report benchmarks/results/accuracy/default.json

Every comparison is paired: the same task, seed and data subset under two methods; spreads are across seeds
(std, and the standard error std / sqrt(n)). Nothing here trains anything, so the report regenerates in seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

LORA = "lora/r8"
RANDOM = "random/k{k}"
Rows = list[dict[str, Any]]


def label(method: str) -> str:
    """A readable method name."""
    parts = method.split("/")
    kind = parts[0]
    if kind == "head":
        return "head only"
    if kind == "meanhead":
        return "bank mean adapter + head"
    if kind == "lora":
        return f"LoRA r={parts[1][1:]}"
    if kind == "vera":
        return f"VeRA r={parts[1][1:]}"
    if kind == "random":
        text = f"random basis K={parts[1][1:]}"
        for part in parts[2:]:
            text += ", mean offset" if part == "mean" else (f" r={part[1:]}" if part.startswith("r") else "")
        return text
    if kind == "wsvd":
        return f"weight-SVD basis K={parts[1][1:]}"
    names = {"eigen": "EigenLoRAx", "eigenout": "bank out / random in", "family": "EigenLoRAx, family bank"}
    sub = {"gauge_free": "gauge-free", "factors": "factors"}[parts[1]]
    text = f"{names[kind]} {sub} K={parts[2][1:]}"
    if parts[3] != "aug0":
        text += f"+{parts[3][3:]} aug"
    text += ", mean offset" if parts[4] == "mean" else f", {parts[4]} init"
    if len(parts) > 5:
        text += f", r={parts[5][1:]}"
    return text


def uses_bank(method: str) -> bool:
    parts = method.split("/")
    return parts[0] in ("eigen", "eigenout", "meanhead") or (parts[0] == "random" and "mean" in parts[2:])


def _stats(values: Sequence[float]) -> tuple[float, float, float, int]:
    """mean, std (ddof=1), standard error, n."""
    x = np.asarray(values, float)
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    return float(x.mean()), std, std / math.sqrt(n) if n > 1 else math.nan, n


def _index(rows: Rows) -> dict[tuple, dict]:
    return {(r["method"], r["task"], r["seed"], r["regime"], r["bank_size"]): r for r in rows}


def _size_of(method: str, size: int) -> int:
    return size if uses_bank(method) else 0


def seed_means(
    rows: Rows,
    method: str,
    regime: str,
    size: int,
    tasks: Sequence[str],
    value: Callable[[dict], float] = lambda r: r["test_accuracy"],
) -> dict[int, float]:
    """Per seed, the mean over tasks (only seeds where every task finished)."""
    idx = _index(rows)
    seeds = sorted({r["seed"] for r in rows if r["regime"] == regime})
    out = {}
    for seed in seeds:
        vals = [idx.get((method, t, seed, regime, _size_of(method, size))) for t in tasks]
        if all(v is not None for v in vals):
            out[seed] = float(np.mean([value(v) for v in vals]))  # type: ignore[arg-type]
    return out


def paired(rows: Rows, a: str, b: str, regime: str, size: int, tasks: Sequence[str]) -> list[float]:
    """acc(a) - acc(b) per task: averaged over the seeds both finished, so an SE of this list is over tasks
    (the independent units), never over task x seed pairs."""
    idx = _index(rows)
    per_task: dict[str, list[float]] = defaultdict(list)
    for (m, t, s, g, n), r in idx.items():
        if m == a and g == regime and t in tasks and n == _size_of(a, size):
            other = idx.get((b, t, s, regime, _size_of(b, size)))
            if other is not None:
                per_task[t].append(r["test_accuracy"] - other["test_accuracy"])
    return [float(np.mean(v)) for _, v in sorted(per_task.items())]


def task_means(rows: Rows, method: str, regime: str, size: int, tasks: Sequence[str]) -> dict[str, float]:
    """Per task, the test accuracy averaged over the finished seeds."""
    idx = _index(rows)
    acc: dict[str, list[float]] = defaultdict(list)
    for (m, t, _s, g, n), r in idx.items():
        if m == method and g == regime and t in tasks and n == _size_of(method, size):
            acc[t].append(r["test_accuracy"])
    return {t: float(np.mean(v)) for t, v in acc.items()}


def steps_to_target(rows: Rows, method: str, regime: str, size: int, fraction: float = 0.95) -> list[float]:
    """Steps until validation accuracy first reaches `fraction` of LoRA r=8's final (best) one; inf if never."""
    idx = _index(rows)
    out = []
    for (m, t, s, g, n), r in idx.items():
        if m != method or g != regime or n != _size_of(method, size):
            continue
        lora = idx.get((LORA, t, s, regime, 0))
        if lora is None:
            continue
        target = fraction * lora["val_accuracy"]
        hit = next((h["step"] for h in r["history"] if h["val_metric"] >= target - 1e-9), math.inf)
        out.append(hit)
    return out


def matched_random(method: str, width: int) -> str:
    """The random-basis control with the same start: zero init against zero, a mean-adapter start (bank init
    or mean offset) against the random basis on the mean offset."""
    init = method.split("/")[4] if method.split("/")[0] in ("eigen", "eigenout", "family") else "zero"
    return RANDOM.format(k=width) + ("" if init == "zero" else "/mean")


MATCHED = [
    ("basis, both from zero", "eigen/gauge_free/k{k}/aug0/zero", "random/k{k}"),
    ("basis, both on the mean offset", "eigen/gauge_free/k{k}/aug0/mean", "random/k{k}/mean"),
    (
        "recycled bank init vs random on the mean offset",
        "eigen/gauge_free/k{k}/aug0/bank",
        "random/k{k}/mean",
    ),
    (
        "init: bank vs zero (recycled basis)",
        "eigen/gauge_free/k{k}/aug0/bank",
        "eigen/gauge_free/k{k}/aug0/zero",
    ),
    ("mean adapter under a trained head vs head only", "meanhead", "head"),
    ("coefficient training on top of the mean adapter", "eigen/gauge_free/k{k}/aug0/bank", "meanhead"),
    ("coefficients (recycled, zero init) vs head only", "eigen/gauge_free/k{k}/aug0/zero", "head"),
    ("LoRA r=8 vs head only", "lora/r8", "head"),
]


def matched_controls(rows: Rows, regime: str, size: int, tasks: Sequence[str]) -> list[str]:
    """Paired differences of the controls that differ in one factor, SE over tasks."""
    lines = []
    for k in sorted({int(m.split("/")[1][1:]) for m in methods_in(rows, regime) if m.startswith("random/")}):
        for question, a, b in MATCHED:
            a, b = a.format(k=k), b.format(k=k)
            d = _stats(paired(rows, a, b, regime, size, tasks))
            if d[3] == 0:
                continue
            verdict = "A better" if d[0] > 2 * d[2] else ("B better" if d[0] < -2 * d[2] else "level")
            lines.append(
                f"| {question} | {label(a)} - {label(b)} | {d[0] * 100:+.1f} +- {d[2] * 100:.1f} | {d[3]} | "
                f"{verdict if d[3] > 1 else 'one task'} |"
            )
    if not lines:
        return []
    head = [
        "| question (one factor differs) | A - B | points, mean +- SE over tasks | tasks | beyond 2 SE |",
        "|---|---|---|---|---|",
    ]
    return head + list(dict.fromkeys(lines))


def methods_in(rows: Rows, regime: str) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["regime"] == regime and r["method"] not in seen:
            seen.append(r["method"])
    return seen


def fmt(x: float, digits: int = 1, scale: float = 100.0) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * scale:.{digits}f}"


def headline(rows: Rows, regime: str, size: int, tasks: Sequence[str]) -> tuple[list[str], list[dict]]:
    """One row per method at bank size `size`: accuracy, paired ratio to LoRA r=8, params, cost."""
    lines = [
        "| method | adapter params | params with head | test acc % (mean over tasks +- std over tasks) | SE (tasks) | "
        "ratio to LoRA r=8 (paired) | vs head-only (paired, pts +- SE) | vs random same K (paired, pts +- SE) | "
        "s / epoch | "
        "steps to 95% of LoRA (median; never) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = []
    lora_by_task = task_means(rows, LORA, regime, 0, tasks)
    for method in methods_in(rows, regime):
        if uses_bank(method) or method.startswith("family"):
            sizes = {r["bank_size"] for r in rows if r["method"] == method and r["regime"] == regime}
            if size not in sizes:
                continue
        by_task = task_means(rows, method, regime, size, tasks)
        if not by_task:
            continue
        mean, std, se, n = _stats(list(by_task.values()))
        ratios = [by_task[t] / lora_by_task[t] for t in by_task if t in lora_by_task]
        ratio = _stats(ratios)
        mine = [
            r
            for r in rows
            if r["method"] == method
            and r["regime"] == regime
            and r["bank_size"] == _size_of(method, size)
            and r["task"] in tasks
        ]
        params = int(np.median([r["params"] for r in mine]))
        with_head = int(np.median([r["params_with_head"] for r in mine]))
        spe = float(np.median([r["seconds_per_epoch"] for r in mine]))
        steps = steps_to_target(rows, method, regime, size)
        finite = [s for s in steps if math.isfinite(s)]
        never = len(steps) - len(finite)
        steps_txt = (f"{np.median(finite):.0f}" if finite else "-") + f"; {never}/{len(steps)}"
        vs_random, vs_head = "-", "-"
        if method != "head":
            h = _stats(paired(rows, method, "head", regime, size, tasks))
            vs_head = f"{h[0] * 100:+.1f} +- {h[2] * 100:.1f}" if h[3] > 1 else "-"
        kind = method.split("/")[0]
        if kind in ("eigen", "eigenout", "family", "wsvd"):
            k = int(method.split("/")[2 if kind != "wsvd" else 1][1:])
            width = k + (int(method.split("/")[3][3:]) if kind != "wsvd" else 0)
            diffs = paired(rows, method, matched_random(method, width), regime, size, tasks)
            if diffs:
                d = _stats(diffs)
                vs_random = f"{d[0] * 100:+.1f} +- {d[2] * 100:.1f} (n={d[3]})"
        lines.append(
            f"| {label(method)} | {params:,} | {with_head:,} | {fmt(mean)} +- {fmt(std)} | {fmt(se)} | "
            f"{fmt(ratio[0], 3, 1)} +- {fmt(ratio[1], 3, 1)} | {vs_head} | {vs_random} | {spe:.2f} | {steps_txt} |"
        )
        table.append(
            {
                "method": method,
                "label": label(method),
                "params": params,
                "params_with_head": with_head,
                "mean": mean,
                "std": std,
                "se": se,
                "n_tasks": n,
                "ratio_to_lora": ratio[0],
                "ratio_std": ratio[1],
                "seconds_per_epoch": spe,
            }
        )
    return lines, table


def per_task(rows: Rows, regime: str, size: int, tasks: Sequence[str], methods: Sequence[str]) -> list[str]:
    idx = _index(rows)
    lines = [
        "| method | " + " | ".join(t.replace("_", " ") for t in tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for method in methods:
        cells = []
        for t in tasks:
            vals = [
                r["test_accuracy"]
                for (m, tt, s, g, n), r in idx.items()
                if m == method and tt == t and g == regime and n == _size_of(method, size)
            ]
            mean, std, _, n = _stats(vals)
            cells.append(f"{fmt(mean)} +- {fmt(std)}" if n else "-")
        lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
    return lines


def lora_gaps(rows: Rows, regime: str, tasks: Sequence[str]) -> dict[str, tuple[float, float, int]]:
    """LoRA r=8 minus head-only per task: (mean, SE, n) in accuracy units."""
    idx = _index(rows)
    out = {}
    for t in tasks:
        diffs = [
            r["test_accuracy"] - idx[("head", t, s, g, n)]["test_accuracy"]
            for (m, tt, s, g, n), r in idx.items()
            if m == LORA and tt == t and g == regime and ("head", t, s, g, n) in idx
        ]
        stats = _stats(diffs)  # within one task: the spread over its seeds
        out[t] = (stats[0], stats[2], stats[3])
    return out


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_params(tables: dict[str, list[dict]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 5), squeeze=False)
    for ax, (regime, table) in zip(axes[0], tables.items(), strict=True):
        for row in table:
            kind = row["method"].split("/")[0]
            color = {
                "eigen": "C0",
                "family": "C9",
                "eigenout": "C4",
                "random": "C3",
                "wsvd": "C5",
                "lora": "C2",
                "vera": "C1",
                "head": "k",
                "meanhead": "C6",
            }[kind]
            x = max(row["params"], 1)
            ax.errorbar(x, row["mean"] * 100, yerr=(row["se"] or 0) * 100, fmt="o", color=color, capsize=3)
            ax.annotate(
                row["label"], (x, row["mean"] * 100), fontsize=6, xytext=(3, 2), textcoords="offset points"
            )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters without the head (head-only, mean adapter + head plotted at 1)")
        ax.set_ylabel("held-out test accuracy % (mean over tasks; bars: SE over tasks)")
        ax.set_title(f"{regime} data")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bank_size(
    rows: Rows, regime: str, tasks: Sequence[str], methods: Sequence[str], path: Path
) -> list[str]:
    """Accuracy against bank size for recycled-basis methods, with the random basis of the same K as a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    lines = [
        "| method | bank size | acc % (mean +- SE over tasks) | minus the matched random basis (pts, paired, "
        "+- SE over tasks) |",
        "|---|---|---|---|",
    ]
    for i, method in enumerate(methods):
        sizes = sorted({r["bank_size"] for r in rows if r["method"] == method and r["regime"] == regime})
        xs, ys, es = [], [], []
        k = int(method.split("/")[2][1:]) + int(method.split("/")[3][3:])
        for n in sizes:
            by_task = task_means(rows, method, regime, n, tasks)
            if not by_task:
                continue
            mean, _, se, _ = _stats(list(by_task.values()))
            d = _stats(paired(rows, method, matched_random(method, k), regime, n, tasks))
            xs.append(n)
            ys.append(mean * 100)
            es.append((se if not math.isnan(se) else 0) * 100)
            gap = (
                f"{d[0] * 100:+.1f} +- {d[2] * 100:.1f}"
                if d[3]
                else f"- (no {label(matched_random(method, k))} run)"
            )
            lines.append(f"| {label(method)} | {n} | {fmt(mean)} +- {fmt(se)} | {gap} |")
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label(method), color=f"C{i}")
    for ref, style in ((RANDOM.format(k=32), "--"), ("head", ":"), (LORA, "-.")):
        by_seed = seed_means(rows, ref, regime, 0, tasks)
        if by_seed:
            ax.axhline(np.mean(list(by_seed.values())) * 100, ls=style, color="gray", label=label(ref))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("adapters in the bank")
    ax.set_ylabel(f"held-out test accuracy % ({regime} data)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return lines


def compression_table(rows: Rows) -> tuple[list[str], dict[tuple[int, str], dict]]:
    agg: dict[tuple[int, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        a = agg[(r["k"], r["variant"])]
        a["kept_lora"].append(r["accuracy"] / r["lora_accuracy"])
        gain = r["lora_accuracy"] - r["head_accuracy"]
        if gain > 0.02:  # gain kept is only meaningful where the adapter gained something over head-only
            a["kept_gain"].append((r["accuracy"] - r["head_accuracy"]) / gain)
        a["error"].append(r["delta_error"])
        a["bytes"].append(r["bytes_coefficients"])
        a["bytes_head"].append(r["bytes_head"])
        a["lora_bytes"].append(r["bytes_lora_file"])
        a["acc"].append(r["accuracy"])
    lines = [
        "| K | variant | adapters | accuracy kept vs LoRA (mean, min) | gain over head-only kept (mean, min; "
        "adapters with gain > 2 pts) | rel. delta W error | bytes coefficients (+ head) | LoRA file bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    out = {}
    for (k, variant), a in sorted(agg.items()):
        kl, kg = np.array(a["kept_lora"]), np.array(a["kept_gain"])
        gain_txt = f"{kg.mean() * 100:.1f}%, {kg.min() * 100:.1f}% (n={kg.size})" if kg.size else "-"
        lines.append(
            f"| {k} | {variant} | {kl.size} | {kl.mean() * 100:.1f}%, {kl.min() * 100:.1f}% | {gain_txt} | "
            f"{np.mean(a['error']):.3f} | {np.mean(a['bytes']):,.0f} (+{np.mean(a['bytes_head']):,.0f}) | "
            f"{np.mean(a['lora_bytes']):,.0f} |"
        )
        out[(k, variant)] = {
            "kept_lora": float(kl.mean()),
            "kept_gain": float(kg.mean()) if kg.size else math.nan,
            "kept_gain_min": float(kg.min()) if kg.size else math.nan,
            "error": float(np.mean(a["error"])),
        }
    return lines, out


def plot_compression(summary: dict[tuple[int, str], dict], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant, style in (("in_sample", "-o"), ("leave_one_out", "--s")):
        ks = sorted(k for k, v in summary if v == variant)
        axes[0].plot(ks, [summary[(k, variant)]["kept_gain"] * 100 for k in ks], style, label=variant)
        axes[0].plot(
            ks,
            [summary[(k, variant)]["kept_lora"] * 100 for k in ks],
            style,
            alpha=0.4,
            label=f"{variant} (accuracy kept vs LoRA)",
        )
        axes[1].plot(ks, [summary[(k, variant)]["error"] for k in ks], style, label=variant)
    axes[0].axhline(98, color="gray", ls=":", label="98% target")
    axes[0].set_xlabel("K")
    axes[0].set_ylabel("% of the adapter's gain over head-only kept")
    axes[1].set_xlabel("K")
    axes[1].set_ylabel("relative delta W error")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def _best(table: list[dict], keep: Callable[[dict], bool]) -> dict | None:
    rows = [r for r in table if keep(r) and not math.isnan(r["mean"])]
    return max(rows, key=lambda r: r["mean"]) if rows else None


def render(summary: dict[str, Any], out_dir: Path) -> Path:
    """Write <name>.md and the PNG plots next to it; returns the markdown path."""
    config = summary["config"]
    name = config["name"]
    rows: Rows = summary["runs"]
    tasks = list(config["held_out"])
    far = set(config.get("no_close_relative", []))
    related = [t for t in tasks if t not in far]
    regimes = [g for g in config["regimes"] if any(r["regime"] == g for r in rows)]
    # the largest bank that has runs: a partial run (`--bank-sizes 8` first) reports on the bank it has
    ran = [r["bank_size"] for r in rows if r.get("bank_size")]
    top = max(ran) if ran else max((s for block in config["grid"] for s in block["bank_sizes"]), default=0)
    md: list[str] = [f"# Accuracy benchmark: `{name}` configuration", ""]
    md += [
        f"Generated by `python -m benchmarks.accuracy --config {name}` (report only: "
        f"`python -m benchmarks.report {_relative(out_dir / (name + '.json'))}`).",
        "",
    ]
    md += _setup(summary)
    tables: dict[str, list[dict]] = {}
    for regime in regimes:
        lines, table = headline(rows, regime, top, tasks)
        tables[regime] = table
        md += [f"## Held-out accuracy, {regime} data (bank of {top} for bank methods)", "", *lines, ""]
    if tables:
        plot_params(tables, out_dir / f"{name}_params.png")
        md += [f"![accuracy vs parameters]({name}_params.png)", ""]
    for regime in regimes:
        controls = matched_controls(rows, regime, top, tasks)
        if controls:
            md += [f"## Matched controls, {regime} data (bank of {top})", "", *controls, ""]
    for regime in regimes:
        gaps = lora_gaps(rows, regime, tasks)
        md += [f"### Per task, {regime} data (test acc %, mean +- std over seeds)", ""]
        md += per_task(rows, regime, top, tasks, methods_in(rows, regime)) + [""]
        md += [
            "LoRA r=8 minus head-only, paired per seed (points +- SE): "
            + "; ".join(f"{t}: {g[0] * 100:+.1f} +- {g[1] * 100:.1f}" for t, g in gaps.items() if g[2]),
            "",
        ]
    sweep = [
        m
        for m in methods_in(rows, "low")
        if uses_bank(m) and len({r["bank_size"] for r in rows if r["method"] == m}) > 1
    ]
    bank_lines: list[str] = []
    if sweep:
        bank_lines = plot_bank_size(rows, "low", tasks, sweep, out_dir / f"{name}_bank_size.png")
        md += [
            "## Bank size, low data: recycled basis vs the random-basis control",
            "",
            *bank_lines,
            "",
            f"![accuracy vs bank size]({name}_bank_size.png)",
            "",
        ]
    md += _span(summary)
    comp_summary: dict = {}
    if summary.get("compression"):
        lines, comp_summary = compression_table(summary["compression"])
        plot_compression(comp_summary, out_dir / f"{name}_compression.png")
        md += [
            "## Compression of the bank's own adapters",
            "",
            "Each adapter is projected onto the basis of its bank (in-sample) or of the bank without it "
            "(leave-one-out), then evaluated on its own test set with its own head. Gain kept = "
            "(projected - head-only) / (LoRA - head-only), head-only being a linear probe on frozen "
            "features trained to convergence; a projection that keeps nothing scores about 0%.",
            "",
            *lines,
            "",
            f"![compression]({name}_compression.png)",
            "",
        ]
    md += _targets(rows, tables, tasks, related, top, comp_summary, sweep)
    md += _defaults(rows, tables, tasks, top)
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _setup(summary: dict[str, Any]) -> list[str]:
    config = summary["config"]
    bank = summary.get("bank", [])
    durations = summary.get("durations", {})
    md = ["## Setup", ""]
    md.append(
        f"- model `{config['model']}`, max_length {config['max_length']}, torch threads {config.get('threads')}; "
        f"held-out tasks: {', '.join('`' + t + '`' for t in config['held_out'])}."
    )
    md.append(f"- runs finished: {len(summary['runs'])} of {summary['runs_expected']} in the grid.")
    for regime, spec in config["regimes"].items():
        t = spec["train"]
        data = (
            f"{spec['per_class']} examples per class"
            if spec.get("per_class")
            else f"train capped at {config['caps']['train']}"
        )
        grid = config.get("lr_grid")
        lr = (
            "learning rate chosen on validation per method kind from "
            + ", ".join(f"{kind} {values}" for kind, values in grid.items())
            if grid
            else f"lr {t['lr']} (LoRA {config.get('lr_overrides', {}).get('lora')}, "
            f"VeRA {config.get('lr_overrides', {}).get('vera')}), head lr {t['head_lr']}"
        )
        md.append(
            f"- regime `{regime}`: {data}; "
            f"batch {t['batch_size']}, at most {t['max_steps']} steps, validation every {t['eval_every']} "
            f"steps, patience {t['patience']}, {lr}."
        )
    if bank:
        steps = [b["steps"] for b in bank]
        md.append(
            f"- bank: {len(bank)} PEFT LoRA adapters (r={config['bank']['lora_r']}, targets "
            f"{config['bank']['targets']}), each with its own seed, early stopping on validation, at most "
            f"{config['bank']['train']['max_steps']} steps (median {np.median(steps):.0f}; stopped early: "
            f"{sum(b['stopped_early'] for b in bank)}); mean test accuracy "
            f"{np.mean([b['test_accuracy'] for b in bank]) * 100:.1f}%."
        )
    names = {
        "bank_train_seconds": "bank adapter training (sum over adapters)",
        "grid_train_seconds": "grid training + validation (sum over runs)",
    }
    if durations:
        parts = [
            f"{names.get(k, k.replace('_wall_seconds', ' stage wall time (sum over finished workers)'))} "
            f"{v / 60:.1f} min"
            for k, v in durations.items()
        ]
        md.append("- compute: " + ", ".join(parts) + ".")
    for note in config.get("notes", []):
        md.append(f"- {note}")
    md.append("")
    return md


def _relative(path: Path) -> Path:
    """The path as typed from the repository root when it lies under the working directory."""
    try:
        return Path(path).resolve().relative_to(Path.cwd())
    except ValueError:
        return Path(path)


def _span(summary: dict[str, Any]) -> list[str]:
    span = summary.get("span") or []
    spectrum = summary.get("spectrum") or []
    md: list[str] = []
    if span:
        md += [
            "## Why: how much of a held-out task's own LoRA lies in the bank's span",
            "",
            "Squared-norm share of the held-out task's own adapter (balanced factors; trained like the bank "
            "adapters, never part of its own bank) inside a K-dimensional span (mean over the adapted modules "
            "and the held-out tasks). A random K-dim span holds K/d in expectation (d: the model's width).",
            "",
            "| basis | method | K | output side | input side | delta W (both sides) |",
            "|---|---|---|---|---|---|",
        ]
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in span:
            groups[(r["bank_size"], r["method"], r["k"])].append(r)
        for (size, method, k), rs in sorted(groups.items()):
            md.append(
                f"| {f'bank of {size}' if size else 'random'} | {method} | {k} | "
                f"{np.mean([r['output_share'] for r in rs]) * 100:.1f}% | "
                f"{np.mean([r['input_share'] for r in rs]) * 100:.1f}% | "
                f"{np.mean([r['delta_share'] for r in rs]) * 100:.1f}% |"
            )
        md.append("")
    drift = summary.get("init_drift") or []
    if drift:
        a = np.array([r["a_drift"] for r in drift])
        b = np.array([r["b_over_a"] for r in drift])
        steps = sorted({r["steps"] for r in drift})
        md += [
            "Training length of the bank: how far each bank adapter's A moved from PEFT's seeded random init "
            "(rebuilt exactly from its recorded seed), ||A - A0|| / ||A0|| averaged over its modules, and how large "
            "B (which starts at zero) grew, ||B|| / ||A||:",
            "",
            "| adapters | steps trained | A drift mean (min, max) | B / A norm mean (min, max) |",
            "|---|---|---|---|",
            f"| {len(drift)} | {', '.join(map(str, steps))} | {a.mean():.2f} ({a.min():.2f}, {a.max():.2f}) | "
            f"{b.mean():.2f} ({b.min():.2f}, {b.max():.2f}) |",
            "",
        ]
    if spectrum:
        md += [
            "Explained variance of the bank's stacked factors at K (mean over modules):",
            "",
            "| bank size | method | K | A (input) side | B (output) side | columns in the stack |",
            "|---|---|---|---|---|---|",
        ]
        for r in spectrum:
            md.append(
                f"| {r['bank_size']} | {r['method']} | {r['k']} | {r['explained_A'] * 100:.1f}% | "
                f"{r['explained_B'] * 100:.1f}% | {r['stack_columns']} |"
            )
        md.append("")
    return md


def _targets(
    rows: Rows,
    tables: dict[str, list[dict]],
    tasks: Sequence[str],
    related: Sequence[str],
    top: int,
    comp: dict,
    sweep: Sequence[str],
) -> list[str]:
    md = ["## Targets", ""]
    lora_params = next((r["params"] for t in tables.values() for r in t if r["method"] == LORA), None)
    for regime, table in tables.items():
        if lora_params is None:
            break
        cheap = _best(
            table,
            lambda r: r["method"].split("/")[0] in ("eigen", "family", "eigenout")
            and r["params"] * 50 <= lora_params,
        )
        best = _best(table, lambda r: r["method"].split("/")[0] in ("eigen", "family", "eigenout"))
        for what, row in (("with >= 50x fewer adapter parameters", cheap), ("at any K tried", best)):
            if row is None:
                md.append(f"- {regime} data, EigenLoRAx {what}: not run.")
                continue
            ok = row["ratio_to_lora"] >= 0.95
            head = next((r for r in table if r["method"] == "head"), None)
            verdict = "met" if ok else "missed"
            trivial = ""
            if head is not None:
                lora_mean = next(r["mean"] for r in table if r["method"] == LORA)
                gain = (
                    (row["mean"] - head["mean"]) / (lora_mean - head["mean"])
                    if lora_mean > head["mean"]
                    else 0
                )
                trivial = (
                    f"; head only reaches {head['ratio_to_lora'] * 100:.1f}%, and this arm keeps "
                    f"{gain * 100:.0f}% of LoRA's gain over head only"
                )
                h = _stats(paired(rows, row["method"], "head", regime, top, tasks))
                trivial += f" ({h[0] * 100:+.1f} +- {h[2] * 100:.1f} pts over head only, SE over tasks)"
                if ok and not h[0] > 2 * h[2]:
                    verdict = "met on paper, but level with head only: the target does not resolve"
            md.append(
                f"- {regime} data, best EigenLoRAx {what}: {row['label']} ({row['params']:,} params, "
                f"{lora_params / max(row['params'], 1):.0f}x fewer) reaches {row['ratio_to_lora'] * 100:.1f}% "
                f"+- {row['ratio_std'] * 100:.1f} of LoRA r=8{trivial}: **{verdict}** (target 95%)."
            )
        for ref in ("vera/r256", "lora/r1"):
            ref_row = next((r for r in table if r["method"] == ref), None)
            if ref_row is None or best is None:
                continue
            contenders = [
                r
                for r in table
                if r["method"].split("/")[0] in ("eigen", "family", "eigenout")
                and r["params"] <= ref_row["params"] * 1.1
            ]
            win = max(contenders, key=lambda r: r["mean"]) if contenders else None
            if win is None:
                continue
            d = _stats(paired(rows, win["method"], ref, regime, top, tasks))
            verdict = "met" if d[0] > 0 else "missed"
            md.append(
                f"- {regime} data, vs {label(ref)} ({ref_row['params']:,} params): best EigenLoRAx at <= its "
                f"count, {win['label']}, {d[0] * 100:+.1f} +- {d[2] * 100:.1f} pts (paired SE): **{verdict}**."
            )
    for method in [m for m in methods_in(rows, "low") if m.startswith("eigen/")]:
        k = int(method.split("/")[2][1:]) + int(method.split("/")[3][3:])
        d = _stats(paired(rows, method, matched_random(method, k), "low", top, related))
        if d[3] < 2:
            continue
        ok = d[0] > 2 * d[2]
        md.append(
            f"- low data, tasks with relatives in the bank ({len(related)} tasks), {label(method)} minus "
            f"{label(matched_random(method, k))}: {d[0] * 100:+.2f} +- {d[2] * 100:.2f} pts (SE over tasks, "
            f"n={d[3]}): "
            f"**{'met' if ok else 'missed'}** (> 2 SE)."
        )
    for method in sweep:
        k = int(method.split("/")[2][1:]) + int(method.split("/")[3][3:])
        sizes = sorted({r["bank_size"] for r in rows if r["method"] == method})
        gaps = [_stats(paired(rows, method, matched_random(method, k), "low", n, related))[0] for n in sizes]
        if len(gaps) > 1 and all(math.isfinite(g) for g in gaps):
            slope = np.polyfit(np.log2(sizes), gaps, 1)[0]
            md.append(
                f"- gap to random grows with bank size ({label(method)}): gaps "
                + ", ".join(f"N={n}: {g * 100:+.1f}" for n, g in zip(sizes, gaps, strict=True))
                + f" pts; slope {slope * 100:+.2f} pts per doubling: **{'met' if slope > 0 else 'missed'}**."
            )
    if (32, "in_sample") in comp:
        c = comp[(32, "in_sample")]
        md.append(
            f"- compression, K=32 in-sample: {c['kept_gain'] * 100:.1f}% of the gain over head-only kept "
            f"(min {c['kept_gain_min'] * 100:.1f}%): **{'met' if c['kept_gain'] >= 0.98 else 'missed'}** "
            "(target 98%)."
        )
    md.append("")
    return md


def _defaults(rows: Rows, tables: dict[str, list[dict]], tasks: Sequence[str], top: int) -> list[str]:
    """The EigenLoRAx setting the data favour: best low-data mean, with paired differences to the others."""
    table = tables.get("low") or next(iter(tables.values()), [])
    regime = "low" if "low" in tables else next(iter(tables), "low")
    eig = [r for r in table if r["method"].startswith("eigen/")]
    if not eig:
        return []
    best = max(eig, key=lambda r: r["mean"])
    md = [
        "## Defaults from the data",
        "",
        f"Best EigenLoRAx variant on held-out tasks, {regime} data, bank of {top}: **{best['label']}** "
        f"({best['mean'] * 100:.1f}%)."
        + (
            " Paired differences (best minus each other variant, points +- SE over tasks):"
            if len(eig) > 1
            else " (the only EigenLoRAx variant in this grid)"
        ),
        "",
    ]
    for r in sorted(eig, key=lambda r: -r["mean"]):
        if r is best:
            continue
        d = _stats(paired(rows, best["method"], r["method"], regime, top, tasks))
        sig = "clear" if d[0] > 2 * d[2] else "within 2 SE"
        md.append(f"- vs {r['label']}: {d[0] * 100:+.1f} +- {d[2] * 100:.1f} ({sig})")
    md.append("")
    return md + _cli_default(rows, tables, tasks, top)


def cli_default_method() -> str:
    """The method name the CLI's defaults amount to (read from the library, so the report cannot drift)."""
    import inspect

    from edge_eigenlora.basis import SubspaceConfig
    from edge_eigenlora.train import train_task

    sub = SubspaceConfig()
    init = inspect.signature(train_task).parameters["init"].default
    return f"eigen/{sub.method}/k{sub.k}/aug{sub.augment}/{init}"


def _cli_default(rows: Rows, tables: dict[str, list[dict]], tasks: Sequence[str], top: int) -> list[str]:
    """Where the CLI's default stands: within noise of the best in low data, and against the random control."""
    method = cli_default_method()
    rand = matched_random(method, int(method.split("/")[2][1:]))  # the random basis with the same start
    md = [f"The CLI's default (`{method}`):", ""]
    for regime, table in tables.items():
        row = next((r for r in table if r["method"] == method), None)
        if row is None:
            continue
        best = max((r for r in table if r["method"].startswith("eigen/")), key=lambda r: r["mean"])
        line = f"- {regime} data: {row['mean'] * 100:.1f}%; "
        if best["method"] == method:
            line += "the best EigenLoRAx variant run there"
        else:
            d = _stats(paired(rows, best["method"], method, regime, top, tasks))
            line += (
                f"the best EigenLoRAx variant there ({best['label']}) is {d[0] * 100:+.1f} +- "
                f"{d[2] * 100:.1f} pts ahead ({'within 2 SE' if d[0] <= 2 * d[2] else 'clearly'})"
            )
        if any(r["method"] == rand for r in table):
            g = _stats(paired(rows, method, rand, regime, top, tasks))
            line += f"; minus {label(rand)}: {g[0] * 100:+.1f} +- {g[2] * 100:.1f} pts (SE over tasks)"
        else:
            line += f"; no matched random control ({label(rand)}) in this run"
        md.append(line + ".")
    md.append("")
    return md


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="results JSON written by benchmarks.accuracy")
    args = parser.parse_args(argv)
    summary = json.loads(args.results.read_text())
    print(render(summary, args.results.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
