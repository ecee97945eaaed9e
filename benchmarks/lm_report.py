"""Report of the language-model recycling benchmark: tables, paired differences, targets and plots.

Every number comes from the summary JSON that `benchmarks.lm_recycling` writes; re-render with
`python -m benchmarks.lm_recycling --config <name> --stage report`. Conventions (docs/../notes measuring):
a cell (method, task, seed, n) counts only when every learning rate of its grid has run; the learning rate
with the best validation loss is chosen per cell; seeds are averaged within a task first; the standard error
is over tasks (the independent units), and "beats" means a paired difference beyond 2 SE.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PAIRS",
    "chosen_cells",
    "lora_fraction",
    "paired",
    "per_task",
    "render",
    "targets",
]

LOWER_IS_BETTER = "loss in nats per completion token (lower is better)"

# (label, A, B, question): A - B in test loss; negative means A is better.
PAIRS: list[tuple[str, str, str, str]] = [
    ("recycled - random, both zero init, K=8", "eigen/k8/zero", "random/k8/zero", "basis (matched init)"),
    ("recycled - random, both mean offset, K=8", "eigen/k8/mean", "random/k8/mean", "basis (matched init)"),
    ("recycled - random, both zero init, K=32", "eigen/k32/zero", "random/k32/zero", "basis (matched init)"),
    (
        "recycled - random, both mean offset, K=32",
        "eigen/k32/mean",
        "random/k32/mean",
        "basis (matched init)",
    ),
    ("recycled bank init - random mean offset, K=8", "eigen/k8/bank", "random/k8/mean", "basis + init form"),
    (
        "recycled bank init - random mean offset, K=32",
        "eigen/k32/bank",
        "random/k32/mean",
        "basis + init form",
    ),
    (
        "recycled output side (input random) - random, both zero init, K=8",
        "eigenout/k8/zero",
        "random/k8/zero",
        "which side carries it",
    ),
    (
        "recycled output side (input random) - random, both mean offset, K=8",
        "eigenout/k8/mean",
        "random/k8/mean",
        "which side carries it",
    ),
    ("mean adapter (no training) - base", "mean", "base", "what the mean adapter carries"),
    ("recycled bank init - mean adapter, K=8", "eigen/k8/bank", "mean", "what coefficient training adds"),
    ("random mean offset - mean adapter, K=8", "random/k8/mean", "mean", "what coefficient training adds"),
    ("recycled mean offset - recycled zero, K=8", "eigen/k8/mean", "eigen/k8/zero", "init (same basis)"),
    ("recycled bank init - recycled zero, K=8", "eigen/k8/bank", "eigen/k8/zero", "init (same basis)"),
    ("EigenLoRAx K=8 r=1 bank init - vLoRA k=8 (same count)", "eigen/k8/bank/r1", "vlora/k8", "vs vLoRA"),
    ("EigenLoRAx K=3 r=1 bank init - vLoRA k=3 (same count)", "eigen/k3/bank/r1", "vlora/k3", "vs vLoRA"),
    ("EigenLoRAx K=16 r=1 bank init - vLoRA k=16 (same count)", "eigen/k16/bank/r1", "vlora/k16", "vs vLoRA"),
    ("LoRA r=8 - recycled bank init, K=8", "lora/r8", "eigen/k8/bank", "vs LoRA"),
    ("LoRA r=8 - recycled bank init, K=32", "lora/r8", "eigen/k32/bank", "vs LoRA"),
    ("VeRA r=256 - recycled bank init, K=32", "vera/r256", "eigen/k32/bank", "vs VeRA"),
]


def chosen_cells(summary: dict[str, Any]) -> dict[tuple[str, str, int, int], dict]:
    """Per complete cell, the run whose learning rate has the best validation loss."""
    grids = summary.get("lr_grids", {})
    by_cell: dict[tuple, list[dict]] = defaultdict(list)
    for r in summary["runs"]:
        by_cell[(r["method"], r["task"], r["seed"], r["n"])].append(r)
    out = {}
    for cell, rows in by_cell.items():
        need = grids.get(cell[0])
        if need is not None:
            have = {float(r["lr"]) for r in rows if r["lr"] is not None}
            if not {float(x) for x in need} <= have:
                continue  # an incomplete learning-rate grid would not be a fair choice
            rows = [r for r in rows if r["lr"] is not None and float(r["lr"]) in {float(x) for x in need}]
        finite = [r for r in rows if math.isfinite(r["val_loss"])]
        if finite:
            out[cell] = min(finite, key=lambda r: r["val_loss"])
    return out


def per_task(cells: dict[tuple, dict], method: str, n: int, metric: str = "test_loss") -> dict[str, float]:
    """Task -> the metric averaged over the seeds of that task."""
    acc: dict[str, list[float]] = defaultdict(list)
    for (m, task, _seed, nn), row in cells.items():
        if m == method and nn == n:
            acc[task].append(float(row[metric]))
    return {t: float(np.mean(v)) for t, v in acc.items()}


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return float(v.mean()), se


def paired(
    cells: dict[tuple, dict], a: str, b: str, n: int, tasks: Sequence[str] | None = None
) -> dict[str, Any] | None:
    """A - B per task (seeds paired and averaged within the task, only seeds both have), mean and SE over tasks."""
    seeds_a = {(t, s): r for (m, t, s, nn), r in cells.items() if m == a and nn == n}
    seeds_b = {(t, s): r for (m, t, s, nn), r in cells.items() if m == b and nn == n}
    diffs: dict[str, list[float]] = defaultdict(list)
    for key in seeds_a.keys() & seeds_b.keys():
        if tasks is None or key[0] in tasks:
            diffs[key[0]].append(seeds_a[key]["test_loss"] - seeds_b[key]["test_loss"])
    if not diffs:
        return None
    per = {t: float(np.mean(v)) for t, v in sorted(diffs.items())}
    mean, se = _mean_se(list(per.values()))
    if not math.isfinite(se):
        verdict = "one task: no SE"
    elif mean < -2 * se:
        verdict = "A better (beyond 2 SE)"
    elif mean > 2 * se:
        verdict = "B better (beyond 2 SE)"
    else:
        verdict = "level (within 2 SE)"
    return {"mean": mean, "se": se, "tasks": len(per), "per_task": per, "verdict": verdict}


def lora_fraction(cells: dict[tuple, dict], method: str, n: int) -> dict[str, Any] | None:
    """Share of LoRA r=8's loss reduction over the base model that a method reaches, on the tasks all three have.

    Reported as the ratio of the task-mean reductions, with each task's own ratio beside it.
    """
    base, lora, arm = (per_task(cells, m, n) for m in ("base", "lora/r8", method))
    tasks = sorted(base.keys() & lora.keys() & arm.keys())
    if not tasks:
        return None
    red_lora = np.array([base[t] - lora[t] for t in tasks])
    red_arm = np.array([base[t] - arm[t] for t in tasks])
    ratio = float(red_arm.mean() / red_lora.mean()) if red_lora.mean() > 0 else math.nan
    per = {t: float(a / b) if b > 0 else math.nan for t, a, b in zip(tasks, red_arm, red_lora, strict=True)}
    return {"fraction": ratio, "tasks": len(tasks), "per_task": per}


def _params(cells: dict[tuple, dict], method: str) -> int | None:
    counts = {int(r["params"]) for (m, *_), r in cells.items() if m == method}
    return max(counts) if counts else None


def targets(summary: dict[str, Any], cells: dict[tuple, dict]) -> list[dict[str, Any]]:
    """Item 5 of issue 13, each met / missed / not measured, with the evidence."""
    out = []
    low = min((c[3] for c in cells), default=32)
    # 1. recycled minus random, matched init, beyond 2 SE at 32 examples
    basis_pairs = [p for p in PAIRS if p[3] == "basis (matched init)"]
    rows = [(label, paired(cells, a, b, low)) for label, a, b, _ in basis_pairs]
    measured = [(label, r) for label, r in rows if r]
    rows = [(label, r) for label, r in measured if math.isfinite(r["se"])]  # one task: no SE, no verdict yet
    pending = [
        f"{label} ({r['tasks']} task so far, no SE)" for label, r in measured if not math.isfinite(r["se"])
    ]
    if rows:
        met = [label for label, r in rows if r["mean"] < -2 * r["se"]]
        detail = "; ".join(
            f"{label}: {r['mean']:+.3f} +- {r['se']:.3f} ({r['tasks']} tasks)" for label, r in rows
        )
        if pending:
            detail += "; not judged yet: " + ", ".join(pending)
        status = "MET" if len(met) == len(rows) else ("PARTLY MET" if met else "MISSED")
        out.append(
            {
                "target": f"recycled beats random (matched init) by > 2 SE at {low} examples",
                "status": status,
                "detail": detail,
            }
        )
    else:
        out.append(
            {
                "target": f"recycled beats random (matched init) by > 2 SE at {low} examples",
                "status": "NOT MEASURED",
                "detail": "",
            }
        )
    # 2. >= 90% of LoRA's loss reduction with >= 50x fewer trainable parameters
    lora_params = _params(cells, "lora/r8")
    for n in sorted({c[3] for c in cells}):
        best = None
        for method in sorted({c[0] for c in cells if c[0].startswith("eigen/")}):
            count = _params(cells, method)
            frac = lora_fraction(cells, method, n)
            if lora_params and count and frac and count * 50 <= lora_params:
                if best is None or frac["fraction"] > best[1]["fraction"]:
                    best = (method, frac, count)
        if best:
            method, frac, count = best
            status = "MET" if frac["fraction"] >= 0.9 else "MISSED"
            detail = (
                f"best EigenLoRAx arm with >= 50x fewer parameters: {method} ({count:,} vs LoRA {lora_params:,}, "
                f"{lora_params / count:.0f}x) reaches {100 * frac['fraction']:.0f}% of LoRA's loss reduction "
                f"({frac['tasks']} tasks)"
            )
        else:
            status, detail = "NOT MEASURED", ""
        out.append(
            {
                "target": f"EigenLoRAx >= 90% of LoRA r=8's loss reduction with >= 50x fewer parameters (n={n})",
                "status": status,
                "detail": detail,
            }
        )
    # 3. EigenLoRAx at least matches vLoRA at the same parameter count
    vs = [(label, a, b, paired(cells, a, b, low)) for label, a, b, q in PAIRS if q == "vs vLoRA"]
    vs = [(label, a, b, r) for label, a, b, r in vs if r]
    if vs:
        label, a, b, r = vs[0]
        worse = math.isfinite(r["se"]) and r["mean"] > 2 * r["se"]
        status = "MISSED" if worse else "MET"
        detail = f"{label}: {r['mean']:+.3f} +- {r['se']:.3f} ({r['tasks']} tasks; {_params(cells, a):,} vs {_params(cells, b):,} parameters)"
        out.append(
            {
                "target": f"EigenLoRAx at least matches vLoRA at the same parameter count ({low} examples)",
                "status": status,
                "detail": detail,
            }
        )
    else:
        out.append(
            {
                "target": f"EigenLoRAx at least matches vLoRA at the same parameter count ({low} examples)",
                "status": "NOT MEASURED",
                "detail": "",
            }
        )
    return out


def _fmt(mean: float, se: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} +- {se:.{digits}f}" if math.isfinite(se) else f"{mean:.{digits}f}"


def _plot(summary: dict[str, Any], cells: dict[tuple, dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({c[3] for c in cells})
    if not ns:
        return None
    fig, axes = plt.subplots(1, len(ns), figsize=(6.5 * len(ns), 4.6), squeeze=False)
    for ax, n in zip(axes[0], ns, strict=True):
        methods = sorted({c[0] for c in cells if c[3] == n})
        common = None
        for m in methods:
            tasks = set(per_task(cells, m, n))
            common = tasks if common is None else common & tasks
        common = sorted(common or [])
        if not common:
            continue
        for m in methods:
            vals = per_task(cells, m, n)
            mean, se = _mean_se([vals[t] for t in common])
            count = _params(cells, m) or 0
            if m in ("base", "mean"):
                ax.axhline(mean, ls="--", lw=1, color="grey" if m == "base" else "tab:purple")
                ax.text(1.2e3, mean, f" {m}", va="bottom", fontsize=8)
                continue
            family = m.split("/")[0]
            marker = {"eigen": "o", "random": "s", "lora": "^", "vera": "v", "vlora": "D", "eigenout": "P"}[
                family
            ]
            color = {"zero": "tab:blue", "bank": "tab:green", "mean": "tab:orange"}.get(
                m.split("/")[2] if family in ("eigen", "random", "eigenout") else "", "tab:red"
            )
            fill = "full" if family != "random" else "none"
            ax.errorbar(
                count,
                mean,
                yerr=se if math.isfinite(se) else None,
                fmt=marker,
                color=color,
                fillstyle=fill,
                capsize=3,
                ms=7,
            )
            ax.annotate(m, (count, mean), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("held-out completion loss (nats/token)")
        ax.set_title(f"{n} training examples, {len(common)} tasks (mean +- SE over tasks)")
    fig.suptitle(
        "SmolLM2-135M. Filled: recycled basis, LoRA, VeRA, vLoRA; hollow: random basis.\n"
        "Blue: zero init; orange: mean offset; green: bank init; dashed: no training",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_bank(bank: Sequence[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not bank:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, r in enumerate(bank):
        steps = [h["step"] for h in r["history"]]
        vals = [h["val_loss"] for h in r["history"]]
        ax.plot(steps, vals, marker=".", color=f"C{i % 10}", ls="-" if i < 10 else "--", label=r["task"])
        ax.plot([r["best_step"]], [r["val_loss"]], marker="o", color=f"C{i % 10}")
    ax.set_xlabel("training step (batch 8)")
    ax.set_ylabel("validation completion loss (nats/token)")
    ax.set_title("Bank adapters: validation curves (dot: the step kept)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(summary: dict[str, Any], out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    config = summary["config"]
    name = config["name"]
    cells = chosen_cells(summary)
    families = summary.get("tasks", {})
    lines = [f"# Does recycling help a language model? (`{name}`)", ""]
    lines += [config.get("description", ""), ""]
    lines += [
        f"Model `{config['model']}`; sequences at most {config['max_length']} tokens "
        f"(completion at most {config['max_completion']}); validation {config['data']['validation']} and test "
        f"{config['data']['test']} texts per task (fixed across seeds and methods, so every comparison is paired). "
        f"Metric: {LOWER_IS_BETTER}; exact match (greedy continuation reproduces the completion and its newline) "
        "on the tasks with one right answer. SE over tasks (seeds averaged within a task first); "
        '"beats" = paired difference beyond 2 SE.',
        "",
        "Reproduce: `python -m benchmarks.lm_recycling --config " + name + "` "
        "(stages `--stage bank|grid|report`, `--shard k/n` per worker, one torch thread each; `--workers 2` runs "
        "two shard workers at once, one per core).",
        "",
    ]
    if summary.get("lr_pass") is not None:
        lines += [
            f"**A first pass**: only learning rate number {summary['lr_pass'] + 1} of each method's grid has run "
            "(the grids below); the validation choice among the config's whole grid is still to come, so "
            "every method here had the same, untuned, budget.",
            "",
        ]
    done = len({c[:4] for c in cells})
    lines += [
        f"Cells complete: {done} of {summary['cells_expected']} in the config (a cell = method x task x seed x n, "
        "all of its learning rates run).",
        "",
    ]

    # --- targets
    lines += ["## Targets (issue 13, item 5)", "", "| target | status | evidence |", "|---|---|---|"]
    for t in targets(summary, cells):
        few = max((int(x) for x in re.findall(r"\((\d+) tasks", t["detail"])), default=0)
        status = t["status"] + (" (provisional: fewer than 4 tasks)" if t["detail"] and few < 4 else "")
        lines.append(f"| {t['target']} | **{status}** | {t['detail']} |")
    lines.append("")

    # --- main table
    for n in sorted({c[3] for c in cells}):
        lines += [f"## Held-out tasks, {n} training examples", ""]
        methods = [
            m
            for m in dict.fromkeys(c[0] for c in summary_cells_order(summary))
            if any(c[0] == m and c[3] == n for c in cells)
        ]
        tasks = sorted({c[1] for c in cells if c[3] == n})
        header = (
            "| method | trainable | loss, mean +- SE (tasks) | exact match, definite tasks | "
            + " | ".join(tasks)
            + " |"
        )
        lines += [header, "|" + "---|" * (4 + len(tasks))]
        for m in methods:
            vals = per_task(cells, m, n)
            mean, se = _mean_se(list(vals.values()))
            em = per_task(cells, m, n, "test_exact_match")
            em_def = [em[t] for t in em if families.get(t, {}).get("definite")]
            em_s = f"{100 * np.mean(em_def):.1f}% ({len(em_def)})" if em_def else "-"
            cols = " | ".join(f"{vals[t]:.3f}" if t in vals else "" for t in tasks)
            lines.append(
                f"| `{m}` | {_params(cells, m) or 0:,} | {_fmt(mean, se)} ({len(vals)}) | {em_s} | {cols} |"
            )
        lines.append("")
        lines += [
            "Paired differences A - B in test loss (negative: A better), mean +- SE over tasks:",
            "",
            "| question | A - B | all held-out | leave-task-out | leave-family-out | verdict (all) |",
            "|---|---|---|---|---|---|",
        ]
        lfo = set(config.get("leave_family_out", []))
        for label, a, b, question in PAIRS:
            r = paired(cells, a, b, n)
            if not r:
                continue
            lto = paired(cells, a, b, n, [t for t in r["per_task"] if t not in lfo])
            fo = paired(cells, a, b, n, [t for t in r["per_task"] if t in lfo])
            cols = [f"{_fmt(x['mean'], x['se'])} ({x['tasks']})" if x else "-" for x in (r, lto, fo)]
            lines.append(f"| {question} | {label} | {' | '.join(cols)} | {r['verdict']} |")
        lines.append("")
        lines += [
            "Share of LoRA r=8's loss reduction over the base model (ratio of task means; per task in brackets):",
            "",
        ]
        for m in methods:
            if m in ("base", "lora/r8"):
                continue
            f = lora_fraction(cells, m, n)
            if f:
                per = ", ".join(f"{t} {100 * v:.0f}%" for t, v in f["per_task"].items())
                count = _params(cells, m) or 0
                lp = _params(cells, "lora/r8") or 0
                fewer = f"{lp / count:.0f}x fewer parameters" if count else "no training"
                lines.append(f"- `{m}` ({fewer}): **{100 * f['fraction']:.0f}%** ({f['tasks']} tasks: {per})")
        lines.append("")

    plot = _plot(summary, cells, out_dir / f"{name}_params.png")
    if plot:
        lines += [f"![held-out loss vs trainable parameters]({plot.name})", ""]

    # --- learning rates chosen
    chosen: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for (m, *_), r in cells.items():
        if r["lr"] is not None:
            chosen[m][float(r["lr"])] += 1
    if chosen:
        lines += ["## Learning rates chosen on validation (count of cells)", ""]
        for m, counts in chosen.items():
            grid = summary.get("lr_grids", {}).get(m, [])
            lines.append(
                f"- `{m}` grid {grid}: " + ", ".join(f"{lr:g} x{c}" for lr, c in sorted(counts.items()))
            )
        lines.append("")

    # --- bank
    bank = summary.get("bank", [])
    if bank:
        lines += [
            "## The bank",
            "",
            "| adapter | family | examples | steps | best step | stopped early | val loss start -> best | test loss | exact match | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in bank:
            fam = families.get(r["task"], {}).get("family", "")
            start = r["history"][0]["val_loss"]
            lines.append(
                f"| {r['task']} | {fam} | {r['examples']} | {r['steps']} | {r['best_step']} | {r['stopped_early']} | "
                f"{start:.3f} -> {r['val_loss']:.3f} | {r['test_loss']:.3f} | {100 * r['test_exact_match']:.0f}% | {r['seconds']:.0f} |"
            )
        curves = _plot_bank(bank, out_dir / f"{name}_bank_curves.png")
        if curves:
            lines += ["", f"![validation curves of the bank adapters]({curves.name})"]
        converged = sum(1 for r in bank if r["stopped_early"])
        lines += [
            "",
            f"{converged} of {len(bank)} adapters stopped on validation (converged within the cap); the rest "
            f"reached the step cap of {config['bank']['train']['max_steps']} still improving (curves in the JSON).",
            "",
        ]

    # --- compute
    runs = summary["runs"]
    if runs or bank:
        bank_s = sum(r["seconds"] for r in bank)
        grid_s = sum(r.get("wall_seconds", 0.0) for r in runs)
        per_kind: dict[str, list[float]] = defaultdict(list)
        for r in runs:
            per_kind[r["method"].split("/")[0] + f" n={r['n']}"].append(r.get("wall_seconds", 0.0))
        lines += [
            "## Compute (measured on this run's machine, one torch thread per worker)",
            "",
            f"- bank: {len(bank)} adapters, {bank_s / 60:.0f} min of training",
            f"- grid: {len(runs)} runs, {grid_s / 60:.0f} min of wall time; of the trainings, "
            f"{sum(1 for r in runs if r.get('stopped_early'))} stopped early on validation and "
            f"{sum(1 for r in runs if r['lr'] is not None and not r.get('stopped_early'))} reached the step cap "
            f"({config['train']['max_steps']})",
            "- seconds per training (median: a worker paused mid-run inflates one wall time, not the median): "
            + ", ".join(f"{k} {np.median(v):.0f}" for k, v in sorted(per_kind.items())),
            "",
        ]
        lines += projected_cost(summary)
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def projected_cost(summary: dict[str, Any]) -> list[str]:
    """What the whole config costs on this machine: the median measured seconds per training (by n) x the
    trainings expected."""
    runs, config = summary["runs"], summary["config"]
    grids = summary.get("lr_grids", {})
    per_n: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        if r["lr"] is not None:
            per_n[int(r["n"])].append(float(r.get("wall_seconds", 0.0)))
    if not per_n or not summary.get("cells"):
        return []
    fallback = float(np.median([x for v in per_n.values() for x in v]))
    total, trainings, done = 0.0, 0, {(r["method"], r["task"], r["seed"], r["n"], r["lr"]) for r in runs}
    remaining = 0.0
    for method, task, seed, n in summary["cells"]:
        lrs = grids.get(method, [None])
        for lr in lrs:
            cost = float(np.median(per_n[n])) if per_n.get(n) else fallback
            cost = cost if lr is not None else 10.0  # an evaluation only
            total += cost
            trainings += lr is not None
            if (method, task, seed, n, lr) not in done:
                remaining += cost
    bank = summary.get("bank", [])
    bank_each = float(np.median([b["seconds"] for b in bank])) if bank else 0.0
    bank_total = bank_each * len(config["bank"]["tasks"])
    return [
        f"- projected cost of the whole `{config['name']}` config at these measured rates: {trainings} trainings, "
        f"{total / 3600:.1f} h of grid + {bank_total / 3600:.1f} h of bank on one single-thread worker "
        f"({remaining / 3600:.1f} h of grid still to run); n workers divide it (`--shard k/n`).",
        "",
    ]


def summary_cells_order(summary: dict[str, Any]) -> list[tuple]:
    """Methods in the order the config lists them (first appearance), for stable tables."""
    out = []
    for block in summary["config"]["grid"]:
        for m in block["methods"]:
            out.append((m,))
    return out
