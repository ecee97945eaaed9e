"""Decoder LMs on the device, measured on the real SmolLM2-135M-Instruct (issue 12): latency, the KV cache,
per-row tasks, memory, bytes and the quantized bundles' quality, and the peers, in one run.

    python -m benchmarks.lm [--quick] [--fresh [TABLE ...]] [--no-peers]   # results in benchmarks/results/lm/
        [--graphs shared per_row merged train_step factored] [--stand-in-bank]

--graphs: the fp32 graphs to export (default all four; each SmolLM2 graph is a torch export of 10-35 minutes
on a shared 2-core machine); a table that needs a graph left out is reported as not measured.
--stand-in-bank: 3 seeded PEFT LoRA adapters of the LM bank's shapes instead of the bank (for when it is not
built): every figure but the task's held-out loss depends only on the shapes.

Set-up (cached under ~/.cache/edge-eigenlora/lm_bench/<basis id>/, atomic, never in git): the LM bank of
`edge_eigenlora.lm_bank` (3 PEFT LoRA r=8 q/k/v/o adapters, built by `build_lm_bank`; this script only reads
it), a basis fitted on it (gauge-free, K per module and side), the 3 adapters compressed onto it plus the mean
of their coefficients (4 tasks), ONE torch export of an fp32 bundle (shared, per_row, merged = the
verb_definitions task folded into the weights, train_step), and the int8 (weight-only int8 base + int8 basis)
and int4 (4-bit base + 4-bit basis) bundles derived from it without torch (shared + merged each).

Tables (each one interleaved run with its control; each table's JSON is cached as it completes, so an
interrupted run resumes; --fresh re-measures all, --fresh latency only that table):
    latency    prefill ms of a 128-token prompt and decode ms/token at batch 1, 1 and 2 threads: base (the
               merged graph: the base model's graph with delta W folded in, the same compute as the base),
               unmerged shared fp32, a second session of it (the control), shared and merged int8 / int4, and
               (graph "factored": its own torch export, int8 / int4 derived) the factored graph, whose
               factors the runtime forms once per task and binds for the whole generation.
               Every round opens every session anew (where a session's weights land moves a batch-1 decode
               by up to 10%) and runs each once, in a new random order; ratios are per round (paired).
    kv_cache   decode ms at positions 16 and 240 with the cache kept in onnxruntime (IO binding) against
               the control that passes it through numpy at every step, and attention's arithmetic growth.
    per_row    4 prompts with 4 different tasks in one per_row batch vs the same 4 generated one after
               another with the shared graph (tokens/s), a batch of 4 with one shared task as the control,
               and whether each row's greedy token ids equal the sequential ones.
    memory     peak RSS (VmHWM read inside each child process; the child's VmHWM after its imports is its
               baseline) while generating (fp32, int8) and during the device train step (batch 8 x 64
               tokens, AdamW on the coefficients), against PyTorch + PEFT LoRA r=8 q/k/v/o (dropout 0,
               forward + backward + AdamW) on the same batch and PyTorch generate with a LoRA adapter.
    bytes      bundle bytes (fp32 export vs int8 / int4), task file vs a PEFT adapter_model.safetensors,
               and the held-out next-token loss (nats) of each bundle on WordNet adverb definitions (a
               part of speech that is in no bank adapter).
    peers      benchmarks/lm_peers.py (onnxruntime-genai and llama.cpp in child processes) in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import CACHE_ROOT
from benchmarks.lm_peers import PROMPT_TEXT, status_mib

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "lm"
CACHE = CACHE_ROOT
BANK_ROOT = CACHE / "demo_lm" / "bank"
BENCH_CACHE = CACHE / "lm_bench"
K, RANK = 16, 8
MERGED_TASK = "verb_definitions"  # the bank's first task; a stand-in bank's first adapter (see configure())
GRAPHS = ("shared", "per_row", "merged", "train_step", "factored")
STAND_IN = ("stand_in_a", "stand_in_b", "stand_in_c")
MEAN_TASK = "mean_of_bank"
PROMPT_TOKENS = 128
KV_POSITIONS = (16, 240)
HELD_OUT = 64
TRAIN_BATCH, TRAIN_SEQ = 8, 64
TABLES = ("latency", "kv_cache", "per_row", "memory", "bytes", "peers")
PER_ROW_PROMPTS = (
    'Define the adverb "quickly":',
    'Define the adverb "reluctantly":',
    "Tell me something about the sea.",
    'Define the verb "wander":',
)

__all__ = [
    "DEFAULT",
    "QUICK",
    "Settings",
    "child_main",
    "main",
    "paired_ratios",
    "render_report",
    "run_child",
    "spread",
]


@dataclass(frozen=True)
class Settings:
    name: str
    rounds: int  # latency, kv_cache and per_row rounds
    decode_tokens: int  # decode steps timed per latency run
    kv_steps: int
    per_row_tokens: int
    memory_rounds: int
    train_steps: int
    peers_rounds: int
    peers_repeats: int
    threads: tuple[int, ...] = (1, 2)
    work_threads: int = 2  # kv_cache, per_row, memory, quality


DEFAULT = Settings("default", 5, 16, 8, 24, 1, 2, 3, 2)
QUICK = Settings("quick", 2, 6, 3, 6, 1, 2, 1, 1)


# ------------------------------------------------------------------------------------------- pure helpers


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of a list (the per-round values of one figure)."""
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "n": len(values),
    }


def paired_ratios(rounds: list[dict[str, float]], num: str, den: str) -> dict[str, float]:
    """num/den within each round (the two measured in the same round), summarised by spread()."""
    return spread([r[num] / r[den] for r in rounds if num in r and den in r])


def _fmt(s: dict[str, float], f: str = ".1f") -> str:
    return f"{s['median']:{f}} ({s['min']:{f}}-{s['max']:{f}})"


def _load_range(tables: dict, loads: list[float]) -> list[float]:
    """Min and max of the 1-minute load averages recorded while measuring (per round and at each table's end)."""
    values = list(loads)
    for t in tables.values():
        for r in t.get("rounds", []) if isinstance(t, dict) else []:
            values += (
                [r["loadavg"]]
                if "loadavg" in r
                else [v["loadavg"] for v in r.values() if isinstance(v, dict)]
            )
    return [min(values), max(values)] if values else []


def _load_text(meta: dict) -> str:
    lo, hi = meta.get("load_average_range") or meta["load_average"]
    return f"{lo:.1f} to {hi:.1f} while measuring"


def _export_time(meta: dict) -> str:
    s = meta.get("export_seconds", {}).get("fp32")
    return f" of {s / 60:.0f} min" if s else ""


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------------------ set-up


def bank_folders(stand_in: bool = False) -> list[Path]:
    """The LM bank's adapter folders; stand_in: 3 seeded PEFT LoRA adapters of the same shapes (r=8, alpha 16,
    q/k/v/o of every layer; PEFT's init for A, B ~ N(0, 0.01)) for when the bank is not built: every figure
    but the tasks' quality depends only on the shapes."""
    from edge_eigenlora.bank import RECORD_NAME
    from edge_eigenlora.lm_bank import DEMO_LM_BANK

    if stand_in:
        from benchmarks.lm_peers import make_peft_adapter

        return [
            make_peft_adapter(out=BENCH_CACHE / "stand_in_bank" / name, seed=i + 1)
            for i, name in enumerate(STAND_IN)
        ]

    folders = [BANK_ROOT / t.name for t in DEMO_LM_BANK]
    missing = [f for f in folders if not (f / RECORD_NAME).is_file()]
    if missing:
        raise SystemExit(
            f"the LM bank is not built: {', '.join(str(m) for m in missing)} missing. Build it first with "
            "edge_eigenlora.lm_bank.build_lm_bank(SMOLLM2, ~/.cache/edge-eigenlora/demo_lm/bank)."
        )
    return folders


def _atomic_dir(final: Path, build: Any) -> Path:
    """build(tmp) writes into a new folder next to `final`, renamed into place when it returns."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        build(tmp)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def prepare(stand_in: bool = False, graphs: tuple[str, ...] = GRAPHS) -> Path:
    """Fit the basis, compress the tasks, export fp32 once and derive int8 / int4 (what is missing)."""
    from edge_eigenlora.adapters import load_bank
    from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
    from edge_eigenlora.compress import compress_adapter
    from edge_eigenlora.export import ExportConfig, derive_bundle, export_bundle
    from edge_eigenlora.task import Task, save_task

    folders = bank_folders(stand_in)
    merged_task = folders[0].name
    bank = load_bank(folders)
    basis = fit_basis(bank, SubspaceConfig(k=K, clip_k=True), progress=False)
    short = {"shared": "s", "per_row": "p", "merged": "m", "train_step": "t", "factored": ""}
    # the factored bundles are exported apart (fp32_factored, ...): adding them keeps the others' folder
    root = BENCH_CACHE / f"{basis.short_id}-k{K}-r{RANK}-{''.join(short[g] for g in graphs)}"
    root.mkdir(parents=True, exist_ok=True)
    setup = {"bank": [str(f) for f in folders], "stand_in": stand_in, "merged_task": merged_task}
    (root / "bench.json").write_text(json.dumps(setup | {"graphs": list(graphs)}, indent=1))
    basis_path = root / "basis.safetensors"
    if not basis_path.is_file():
        save_basis(basis, basis_path)
    tasks_dir = root / "tasks"
    errors = {}
    if not (tasks_dir / f"{MEAN_TASK}.safetensors").is_file():
        tasks_dir.mkdir(exist_ok=True)
        results = [compress_adapter(a, basis) for a in bank.adapters]
        for r in results:
            r.task.kind = "causal_lm"
            save_task(r.task, tasks_dir / f"{r.task.name}.safetensors")
            errors[r.task.name] = r.mean_error
        modules = results[0].task.coefficients
        mean = {
            m: tuple(np.mean([r.task.coefficients[m][s] for r in results], axis=0) for s in (0, 1))
            for m in modules
        }
        task = Task(
            name=MEAN_TASK,
            basis_fingerprint=basis.fingerprint,
            coefficients=mean,
            kind="causal_lm",
            info={"source": "the mean of the bank tasks' coefficients"},
        )
        save_task(task, tasks_dir / f"{MEAN_TASK}.safetensors")
        (root / "compression.json").write_text(json.dumps(errors, indent=1))
    task_paths = sorted(tasks_dir.glob("*.safetensors"))

    def export_fp32(tmp: Path) -> None:
        from edge_eigenlora.pretrained import SMOLLM2, load_causal_lm

        model, tokenizer = load_causal_lm(SMOLLM2)
        start = time.perf_counter()
        export_bundle(
            SMOLLM2,
            basis_path,
            tmp,
            tasks=task_paths,
            model=model,
            tokenizer=tokenizer,
            config=ExportConfig(
                rank=RANK,
                kind="causal_lm",
                variants=tuple(g for g in GRAPHS[:3] if g in graphs),
                basis_quant="none",
                base_quant="none",
                merged_task=merged_task if "merged" in graphs else None,
                train_step="train_step" in graphs,
            ),
        )
        (root / "export_seconds.json").write_text(json.dumps({"fp32": time.perf_counter() - start}))

    fp32 = _atomic_dir(root / "fp32", export_fp32)
    if "factored" in graphs:
        _prepare_factored(root, basis_path, task_paths)
    for mode in ("int8", "int4"):
        config = ExportConfig(
            rank=RANK,
            kind="causal_lm",
            variants=tuple(g for g in ("shared", "merged") if g in graphs),
            basis_quant=mode,
            base_quant=mode,
            merged_task=merged_task if "merged" in graphs else None,
        )
        _atomic_dir(root / mode, lambda tmp, c=config: derive_bundle(fp32, tmp, config=c))
    return root


def _prepare_factored(root: Path, basis_path: Path, task_paths: list[Path]) -> None:
    """The factored graph (factors fed, formed once per task switch) and its factors graph: one more torch
    export (fp32_factored), and int8 / int4 derived from it with the same recipes as the shared bundles."""
    from edge_eigenlora.export import ExportConfig, derive_bundle, export_bundle
    from edge_eigenlora.pretrained import SMOLLM2, load_causal_lm

    def export(tmp: Path) -> None:
        model, tokenizer = load_causal_lm(SMOLLM2)
        start = time.perf_counter()
        config = ExportConfig(
            rank=RANK, kind="causal_lm", variants=("factored",), basis_quant="none", base_quant="none"
        )
        export_bundle(
            SMOLLM2, basis_path, tmp, tasks=task_paths, model=model, tokenizer=tokenizer, config=config
        )
        (root / "export_seconds_factored.json").write_text(json.dumps({"fp32": time.perf_counter() - start}))

    fp32 = _atomic_dir(root / "fp32_factored", export)
    for mode in ("int8", "int4"):
        config = ExportConfig(
            rank=RANK, kind="causal_lm", variants=("factored",), basis_quant=mode, base_quant=mode
        )
        _atomic_dir(root / f"{mode}_factored", lambda tmp, c=config: derive_bundle(fp32, tmp, config=c))


def configure(root: Path) -> dict:
    """Read the set-up prepare() recorded (bank, merged task, graphs) and point this module at it."""
    global MERGED_TASK
    setup = json.loads((root / "bench.json").read_text())
    MERGED_TASK = setup["merged_task"]
    return setup


NEEDS = {
    "latency": ("shared", "merged"),
    "kv_cache": ("shared",),
    "per_row": ("shared", "per_row"),
    "memory": ("shared",),
    "bytes": ("shared",),
    "peers": (),
}


# ------------------------------------------------------------------------------------------------ inputs


def exact_prompt(rt: Any, n: int) -> str:
    """A text of PROMPT_TEXT (repeated) that the bundle's tokenizer encodes to exactly n tokens (no chat)."""
    text = " ".join([PROMPT_TEXT] * (1 + n // 100))
    ids = rt.tokenizer.encode_ids(text, False)
    for cut in sorted(range(max(1, n - 8), n + 9), key=lambda c: abs(c - n)):
        candidate = rt.decode(ids[:cut])
        if len(rt.encode_prompt(candidate, chat=False)) == n:
            return candidate
    raise RuntimeError(f"no prefix of the prompt text encodes to {n} tokens")


def held_out_examples() -> list[tuple[str, str]]:
    from edge_eigenlora.lm_data import definition_examples

    return definition_examples("adverb", HELD_OUT + 200, seed=1)


def labelled_rows(rt: Any, examples: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) per example: the prompt's tokens take no loss, the completion's do."""
    from edge_eigenlora import bundle as contract

    rows = []
    for prompt, completion in examples:
        p = rt.tokenizer.encode_ids(prompt, True)
        c = rt.tokenizer.encode_ids(completion, False)
        rows.append((p + c, [contract.IGNORE_INDEX] * len(p) + c))
    return rows


def train_batch(rt: Any) -> dict[str, np.ndarray]:
    """TRAIN_BATCH rows of exactly TRAIN_SEQ tokens of held-out adverb definitions (not the quality set),
    every token labelled: the same arrays feed the device and PyTorch."""
    texts = [p + c for p, c in held_out_examples()[HELD_OUT:]]
    stream: list[int] = []
    for t in texts:
        stream += rt.tokenizer.encode_ids(t + "\n", False)
    ids = np.array(stream[: TRAIN_BATCH * TRAIN_SEQ], np.int64).reshape(TRAIN_BATCH, TRAIN_SEQ)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids.copy()}


# ------------------------------------------------------------------------------------------------ latency


def _runtime(bundle: Path, threads: int, **kw: Any) -> Any:
    from edge_eigenlora.runtime import RuntimeOptions
    from edge_eigenlora.runtime.generate import LMRuntime

    return LMRuntime(bundle, options=RuntimeOptions(threads=threads), **kw)


LATENCY_CONFIGS = (
    # name, bundle, task (None: the merged graph)
    ("base (merged) fp32", "fp32", None),
    ("unmerged shared fp32", "fp32", True),
    ("control: 2nd session shared fp32", "fp32", True),
    ("base (merged) int8", "int8", None),
    ("unmerged shared int8", "int8", True),
    ("base (merged) int4", "int4", None),
    ("unmerged shared int4", "int4", True),
)
# the factored graph: each task's factors formed once (by the factors graph) and fed to every step
FACTORED_CONFIGS = (
    ("unmerged factored fp32", "fp32_factored", True),
    ("unmerged factored int8", "int8_factored", True),
    ("unmerged factored int4", "int4_factored", True),
)


def latency_configs(root: Path) -> tuple[tuple[str, str, Any], ...]:
    """The latency table's arms: the factored ones when the factored bundles were prepared."""
    return LATENCY_CONFIGS + (FACTORED_CONFIGS if (root / "fp32_factored").is_dir() else ())


def _timed_generate(rt: Any, prompt: str, task: Any, tokens: int) -> tuple[float, float, list[int]]:
    """(prefill ms, median decode ms/token, token ids); task True: the bundle's merged task on the shared graph,
    None: the merged graph."""
    task = MERGED_TASK if task is True else task
    stats: dict[str, Any] = {}
    out = rt.generate(prompt, task=task, max_new_tokens=tokens + 1, eos=(), chat=False, stats=stats)
    return float(stats["prefill_ms"]), float(np.median(stats["step_ms"])), out[0].token_ids


def table_latency(root: Path, s: Settings) -> dict:
    """Every round opens every session anew, in a new random order: where a session's weights land in memory
    moves a batch-1 decode by up to 10% (the control session shows it), so each round is a fresh draw."""
    per_threads = {}
    configs = latency_configs(root)
    for threads in s.threads:
        rounds, tokens, session_orders = [], {}, []
        prompt = None
        for number in range(s.rounds):
            order = list(configs)
            random.Random(1000 * threads + number).shuffle(order)
            runtimes = {name: _runtime(root / b, threads) for name, b, _ in order}
            session_orders.append([name for name, _, _ in order])
            prompt = prompt or exact_prompt(next(iter(runtimes.values())), PROMPT_TOKENS)
            for name, _, task in order:  # warm-up: first runs done
                _timed_generate(runtimes[name], prompt, task, 2)
            random.Random(2000 * threads + number).shuffle(order)
            row: dict[str, float] = {"loadavg": _loadavg()}
            for name, _, task in order:
                prefill, decode, ids = _timed_generate(runtimes[name], prompt, task, s.decode_tokens)
                row[f"{name}|prefill"], row[f"{name}|decode"] = prefill, decode
                tokens[name] = ids
            del runtimes
            rounds.append(row)
            print(
                f"latency t{threads} round {number + 1}/{s.rounds}: "
                + ", ".join(f"{n} {row[f'{n}|decode']:.1f}" for n, _, _ in configs)
                + " ms/token",
                flush=True,
            )
        summary = {
            name: {
                "prefill_ms": spread([r[f"{name}|prefill"] for r in rounds]),
                "decode_ms": spread([r[f"{name}|decode"] for r in rounds]),
            }
            for name, _, _ in configs
        }
        ratios = {}
        for mode in ("fp32", "int8", "int4"):
            for metric in ("decode", "prefill"):
                ratios[f"unmerged/base {mode} {metric}"] = paired_ratios(
                    rounds, f"unmerged shared {mode}|{metric}", f"base (merged) {mode}|{metric}"
                )
        for mode in ("fp32", "int8", "int4"):
            if f"unmerged factored {mode}" not in summary:
                continue
            for metric in ("decode", "prefill"):
                ratios[f"factored/base {mode} {metric}"] = paired_ratios(
                    rounds, f"unmerged factored {mode}|{metric}", f"base (merged) {mode}|{metric}"
                )
                ratios[f"factored/shared {mode} {metric}"] = paired_ratios(
                    rounds, f"unmerged factored {mode}|{metric}", f"unmerged shared {mode}|{metric}"
                )
        for metric in ("decode", "prefill"):
            ratios[f"control/unmerged fp32 {metric}"] = paired_ratios(
                rounds, f"control: 2nd session shared fp32|{metric}", f"unmerged shared fp32|{metric}"
            )
            for mode in ("int8", "int4"):
                ratios[f"unmerged {mode}/base fp32 {metric}"] = paired_ratios(
                    rounds, f"unmerged shared {mode}|{metric}", f"base (merged) fp32|{metric}"
                )
        per_threads[str(threads)] = {
            "rounds": rounds,
            "summary": summary,
            "ratios": ratios,
            "session_orders": session_orders,
            "same_tokens_unmerged_vs_merged_fp32": tokens["unmerged shared fp32"]
            == tokens["base (merged) fp32"],
            "same_tokens_factored_vs_shared_fp32": tokens.get("unmerged factored fp32")
            == tokens["unmerged shared fp32"]
            if "unmerged factored fp32" in tokens
            else None,
        }
    return {"prompt_tokens": PROMPT_TOKENS, "decode_tokens": s.decode_tokens, "threads": per_threads}


# ------------------------------------------------------------------------------------------------ KV cache


def table_kv(root: Path, s: Settings) -> dict:
    from edge_eigenlora import bundle as contract

    arms = {"bound": _runtime(root / "fp32", s.work_threads), "numpy": None}
    arms["numpy"] = _runtime(root / "fp32", s.work_threads, bind_cache=False)
    prompts = {p: exact_prompt(arms["bound"], p) for p in KV_POSITIONS}
    for rt in arms.values():
        for p in prompts.values():
            _timed_generate(rt, p, MERGED_TASK, 2)
    rounds = []
    for number in range(s.rounds):
        jobs = [(a, p) for a in arms for p in KV_POSITIONS]
        random.Random(number).shuffle(jobs)
        row: dict[str, float] = {"loadavg": _loadavg()}
        for a, p in jobs:
            row[f"{a}|{p}"] = _timed_generate(arms[a], prompts[p], MERGED_TASK, s.kv_steps)[1]
        rounds.append(row)
        print(
            f"kv round {number + 1}/{s.rounds}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if "|" in k),
            flush=True,
        )
    lo, hi = KV_POSITIONS
    d = arms["bound"].decoder
    manifest = contract.verify_bundle(root / "fp32")
    params = contract.graph_bytes(manifest, contract.MERGED) / 4  # ~ multiply-adds per token
    attention = 2 * d.num_layers * d.num_heads * d.head_dim  # QK^T and AV per cached position
    cache_bytes = 2 * d.num_layers * d.num_kv_heads * d.head_dim * 4  # per position
    return {
        "positions": list(KV_POSITIONS),
        "steps": s.kv_steps,
        "rounds": rounds,
        "summary": {f"{a}|{p}": spread([r[f"{a}|{p}"] for r in rounds]) for a in arms for p in KV_POSITIONS},
        "growth": {a: paired_ratios(rounds, f"{a}|{hi}", f"{a}|{lo}") for a in arms},
        "numpy/bound": {str(p): paired_ratios(rounds, f"numpy|{p}", f"bound|{p}") for p in KV_POSITIONS},
        "arithmetic_growth": (params + attention * hi) / (params + attention * lo),
        "cache_mib": {str(p): cache_bytes * p / 2**20 for p in KV_POSITIONS},
        "macs_per_token": params,
    }


# ------------------------------------------------------------------------------------------------ per-row


def table_per_row(root: Path, s: Settings) -> dict:
    rt = _runtime(root / "fp32", s.work_threads)
    tasks = sorted(rt.manifest.tasks)
    assert len(tasks) == 4, tasks
    prompts = list(PER_ROW_PROMPTS)
    n = s.per_row_tokens

    def per_row() -> list[list[int]]:
        return [g.token_ids for g in rt.generate(prompts, tasks=tasks, max_new_tokens=n, eos=(), chat=False)]

    def shared_batch() -> list[list[int]]:
        return [
            g.token_ids for g in rt.generate(prompts, task=tasks[0], max_new_tokens=n, eos=(), chat=False)
        ]

    def sequential() -> list[list[int]]:
        return [
            rt.generate(p, task=t, max_new_tokens=n, eos=(), chat=False)[0].token_ids
            for p, t in zip(prompts, tasks, strict=True)
        ]

    arms = {"per_row batch (4 tasks)": per_row, "control: shared batch (1 task)": shared_batch}
    arms["sequential (4 x shared)"] = sequential
    for f in arms.values():  # warm-up
        f()
    rounds, outputs = [], {}
    for number in range(s.rounds):
        order = list(arms)
        random.Random(number).shuffle(order)
        row: dict[str, float] = {"loadavg": _loadavg()}
        for a in order:
            start = time.perf_counter()
            outputs[a] = arms[a]()
            row[a] = len(prompts) * n / (time.perf_counter() - start)  # tokens/s
        rounds.append(row)
        print(f"per_row round {number + 1}/{s.rounds}: " + ", ".join(f"{a} {row[a]:.1f} tok/s" for a in arms))
    seq, batch = outputs["sequential (4 x shared)"], outputs["per_row batch (4 tasks)"]
    first_diff = []
    for a, b in zip(batch, seq, strict=True):
        first_diff.append(next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None))
    return {
        "tasks": tasks,
        "prompts": prompts,
        "prompt_tokens": [len(rt.encode_prompt(p, chat=False)) for p in prompts],
        "new_tokens": n,
        "rounds": rounds,
        "summary": {a: spread([r[a] for r in rounds]) for a in arms},
        "ratio": paired_ratios(rounds, "per_row batch (4 tasks)", "sequential (4 x shared)"),
        "control_ratio": paired_ratios(rounds, "control: shared batch (1 task)", "sequential (4 x shared)"),
        "rows_equal": [d is None for d in first_diff],
        "first_difference": first_diff,
        "texts": {t: rt.decode(ids) for t, ids in zip(tasks, batch, strict=True)},
    }


# ------------------------------------------------------------------------------------------------ memory


def child_main(spec: dict) -> dict:
    """Runs in a fresh process: imports, reads VmHWM (the baseline), does the work, reads VmHWM again."""
    kind = spec["kind"]
    threads = spec["threads"]
    if kind.startswith("device"):
        import onnxruntime  # noqa: F401 - part of the device side's import baseline

        from edge_eigenlora import bundle as contract
        from edge_eigenlora.runtime import RuntimeOptions
        from edge_eigenlora.runtime.generate import LMRuntime
        from edge_eigenlora.runtime.optim import AdamW
    else:
        import peft  # noqa: F401 - part of the PyTorch side's import baseline
        import torch
        import transformers  # noqa: F401

        from edge_eigenlora.pretrained import SMOLLM2, load_causal_lm

        torch.set_num_threads(threads)
    out: dict[str, Any] = {"import_hwm_mib": status_mib("VmHWM"), "import_rss_mib": status_mib("VmRSS")}
    start = time.perf_counter()
    if kind in ("device_generate", "device_train", "device_train_low_memory"):
        options = (
            RuntimeOptions.low_memory(threads)
            if kind.endswith("low_memory")
            else RuntimeOptions(threads=threads)
        )
        rt = LMRuntime(spec["bundle"], options=options)
        if kind == "device_generate":
            g = rt.generate(
                spec["prompt"], task=spec["task"], max_new_tokens=spec["tokens"], eos=(), chat=False
            )
            out["tokens"] = g[0].token_ids
        else:
            batch = dict(np.load(spec["batch"]))
            params = {contract.COEFFICIENTS: rt.task(spec["task"]).feeds()[contract.COEFFICIENTS].copy()}
            opt = AdamW({contract.COEFFICIENTS: 1e-3})
            losses = []
            for _ in range(spec["steps"]):
                r = rt.train_step(
                    batch["input_ids"],
                    batch["attention_mask"],
                    batch["labels"],
                    params[contract.COEFFICIENTS],
                )
                opt.step(params, {contract.COEFFICIENTS: r[contract.GRAD_PREFIX + contract.COEFFICIENTS]})
                losses.append(float(r[contract.LOSS]))
            out["losses"] = losses
    elif kind == "torch_train":
        from peft import LoraConfig, get_peft_model

        model, _ = load_causal_lm(SMOLLM2)
        lora = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        )
        model = get_peft_model(model, lora)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        batch = {k: torch.from_numpy(v) for k, v in np.load(spec["batch"]).items()}
        losses = []
        for _ in range(spec["steps"]):
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
        out["losses"] = losses
    elif kind == "torch_generate":
        from peft import PeftModel

        model, tokenizer = load_causal_lm(SMOLLM2)
        model = PeftModel.from_pretrained(model, spec["adapter"]).eval()  # unmerged, like the shared graph
        ids = tokenizer(spec["prompt"], return_tensors="pt")
        with torch.no_grad():
            g = model.generate(
                **ids,
                max_new_tokens=spec["tokens"],
                min_new_tokens=spec["tokens"],
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        out["tokens"] = g[0, ids["input_ids"].shape[1] :].tolist()
    else:
        raise ValueError(kind)
    out["work_s"] = time.perf_counter() - start
    out["peak_mib"] = status_mib("VmHWM")
    return out


def run_child(spec: dict, timeout: float = 1800) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    load = _loadavg()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.lm", "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {spec['kind']} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][7:]), "loadavg": load}


MEMORY_ARMS = (
    "device_generate fp32",
    "device_generate int8",
    "device_train fp32",
    "device_train_low_memory fp32",
    "torch_train",
    "torch_generate",
)


def table_memory(root: Path, s: Settings) -> dict:
    rt = _runtime(root / "fp32", 1)
    prompt = exact_prompt(rt, PROMPT_TOKENS)
    batch_path = root / "train_batch.npz"
    np.savez(batch_path, **train_batch(rt))
    del rt
    common = {"threads": s.work_threads, "task": MEAN_TASK, "steps": s.train_steps, "batch": str(batch_path)}
    setup = configure(root)
    common |= {"prompt": prompt, "tokens": s.decode_tokens, "adapter": setup["bank"][0]}
    specs = {}
    has_train = "train_step" in setup["graphs"]
    for arm in MEMORY_ARMS if has_train else [a for a in MEMORY_ARMS if not a.startswith("device_train")]:
        kind, _, bundle = arm.partition(" ")
        specs[arm] = {**common, "kind": kind, "bundle": str(root / (bundle or "fp32"))}
    specs["device_generate fp32"]["task"] = specs["device_generate int8"]["task"] = MERGED_TASK
    rounds = []
    for number in range(s.memory_rounds):
        order = list(specs)
        random.Random(number).shuffle(order)
        row = {}
        for arm in order:
            row[arm] = run_child(specs[arm])
            print(
                f"memory round {number + 1}/{s.memory_rounds} {arm}: peak {row[arm]['peak_mib']:.0f} MiB, "
                f"above import {row[arm]['peak_mib'] - row[arm]['import_hwm_mib']:.0f} MiB, "
                f"{row[arm]['work_s']:.1f} s",
                flush=True,
            )
        rounds.append(row)
    summary = {}
    for arm in specs:
        rs = [r[arm] for r in rounds]
        summary[arm] = {
            "peak_mib": spread([r["peak_mib"] for r in rs]),
            "import_mib": spread([r["import_hwm_mib"] for r in rs]),
            "above_import_mib": spread([r["peak_mib"] - r["import_hwm_mib"] for r in rs]),
            "work_s": spread([r["work_s"] for r in rs]),
        }
    med = {a: summary[a]["above_import_mib"]["median"] for a in summary}
    whole = {a: summary[a]["peak_mib"]["median"] for a in summary}
    ratios = {}
    if has_train:
        ratios |= {
            "device train / torch LoRA train, above import": med["device_train fp32"] / med["torch_train"],
            "device train (low_memory) / torch LoRA train, above import": med["device_train_low_memory fp32"]
            / med["torch_train"],
            "device train / torch LoRA train, whole process": whole["device_train fp32"]
            / whole["torch_train"],
            "device train (low_memory) / torch LoRA train, whole process": whole[
                "device_train_low_memory fp32"
            ]
            / whole["torch_train"],
        }
    ratios |= {
        "device generate fp32 / torch generate, above import": med["device_generate fp32"]
        / med["torch_generate"],
        "device generate int8 / torch generate, above import": med["device_generate int8"]
        / med["torch_generate"],
        "device generate fp32 / torch generate, whole process": whole["device_generate fp32"]
        / whole["torch_generate"],
        "device generate int8 / torch generate, whole process": whole["device_generate int8"]
        / whole["torch_generate"],
    }
    last = rounds[-1]
    return {
        "train_batch": [TRAIN_BATCH, TRAIN_SEQ],
        "train_steps": s.train_steps,
        "generate_tokens": s.decode_tokens,
        "threads": s.work_threads,
        "rounds": rounds,
        "summary": summary,
        "ratios": ratios,
        "losses": {a: last[a].get("losses") for a in specs if "train" in a},
        "generate_tokens_equal_device_torch": last["device_generate fp32"]["tokens"]
        == last["torch_generate"]["tokens"],
    }


# ------------------------------------------------------------------------------------------ bytes, quality


def _losses(rt: Any, rows: list[tuple[list[int], list[int]]], task: str | None) -> list[tuple[float, int]]:
    out = []
    for ids, labels in rows:
        total, count = rt.completion_loss(
            np.array([ids]), np.ones((1, len(ids)), np.int64), np.array([labels]), task=task
        )
        out.append((total, count))
    return out


def table_bytes(root: Path, s: Settings) -> dict:
    from edge_eigenlora import bundle as contract

    sizes = {}
    for b in ("fp32", "int8", "int4"):
        m = contract.verify_bundle(root / b)
        files = [p for p in (root / b).rglob("*") if p.is_file()]
        tokenizer = sum((root / b / f).stat().st_size for f in m.tokenizer.files)
        task = (root / b / m.tasks[MERGED_TASK].file).stat().st_size
        shared = contract.graph_bytes(m, contract.SHARED)
        sizes[b] = {
            "bundle_total": sum(p.stat().st_size for p in files),
            "shared_graph": shared,
            "merged_graph": contract.graph_bytes(m, contract.MERGED) if m.has_graph(contract.MERGED) else 0,
            "tokenizer": tokenizer,
            "task_file": task,
            "phone_bundle": shared + tokenizer + task,  # the shared graph, its tokenizer and one task
        }
        if m.has_graph(contract.TRAIN_STEP):
            sizes[b]["train_step_graph"] = contract.graph_bytes(m, contract.TRAIN_STEP)
        if m.has_graph(contract.PER_ROW):
            sizes[b]["per_row_graph"] = contract.graph_bytes(m, contract.PER_ROW)
    peft = (Path(configure(root)["bank"][0]) / "adapter_model.safetensors").stat().st_size
    rows = None
    quality = {}
    for b in ("fp32", "int8", "int4"):
        rt = _runtime(root / b, s.work_threads)
        if rows is None:
            rows = labelled_rows(rt, held_out_examples()[:HELD_OUT])
        for task in (MERGED_TASK, None) if rt.manifest.has_graph(contract.MERGED) else (MERGED_TASK,):
            label = f"{b}|{'task ' + MERGED_TASK + ' (shared)' if task else 'merged (the same task folded)'}"
            quality[label] = _losses(rt, rows, task)
        print(f"quality {b}: done", flush=True)
        del rt
    summary = {}
    for label, values in quality.items():
        b, what = label.split("|")
        ref = quality[f"fp32|{what}"]
        per_text = np.array([t / c for t, c in values])
        diff = per_text - np.array([t / c for t, c in ref])
        summary[label] = {
            "nats_per_token": sum(t for t, _ in values) / sum(c for _, c in values),
            "mean_per_text": float(per_text.mean()),
            "delta_vs_fp32_per_text": float(diff.mean()),
            "delta_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
            "texts": len(diff),
            "tokens": sum(c for _, c in values),
        }
    return {
        "sizes": sizes,
        "peft_adapter_bytes": peft,
        "ratios": {
            f"{b} / fp32 {k}": sizes[b][k] / sizes["fp32"][k]
            for b in ("int8", "int4")
            for k in ("shared_graph", "phone_bundle")
        }
        | {"task file / PEFT adapter": sizes["fp32"]["task_file"] / peft},
        "quality": summary,
    }


# ------------------------------------------------------------------------------------------------ peers


def table_peers(root: Path, s: Settings) -> dict:
    try:
        from benchmarks import lm_peers  # benchmarks/lm_peers.py (its own branch until merged)
    except ImportError as e:
        return {"error": f"benchmarks/lm_peers.py is not available on this branch ({e})"}
    run = lm_peers.run_peers(
        rounds=s.peers_rounds,
        threads=s.threads,
        decode_tokens=s.decode_tokens,
        repeats=s.peers_repeats,
    )
    run["markdown"] = lm_peers.format_table(run["summary"])
    return run


# ------------------------------------------------------------------------------------------------ report


def render_report(result: dict) -> str:
    meta = result["meta"]
    t = {k: v for k, v in result["tables"].items() if "error" not in v}
    skipped = {k: v["error"] for k, v in result["tables"].items() if "error" in v}
    setup = meta.get("setup", {})
    bank = (
        "a STAND-IN bank (3 seeded PEFT LoRA adapters of the LM bank's shapes: r=8, alpha 16, q/k/v/o of all 30 "
        "layers; the LM bank was not built in time): latency, cache, per-row, memory and bytes depend only on the "
        "shapes; the task's held-out loss is not a trained task's"
        if setup.get("stand_in")
        else "the 3 adapters of the LM bank (edge_eigenlora.lm_bank)"
    )
    lines = [
        "# Decoder LMs on the device: SmolLM2-135M-Instruct (issue 12)",
        "",
        f"`{meta['command']}` ({meta['settings']['name']} settings), {meta['machine']}, onnxruntime "
        f"{meta['onnxruntime']}. 1-minute load average {_load_text(meta)} (other jobs share the cores: absolute times are slower than on "
        f"an idle machine; every ratio is within one round). Basis K={meta['k']} per module and side, rank "
        f"{meta['rank']}, fitted on {bank}; graphs exported: {', '.join(setup.get('graphs', GRAPHS))} "
        f"(one torch export{_export_time(meta)}, int8 and int4 derived from it without torch). Measuring time "
        f"{sum(meta.get('table_seconds', {}).values()) / 60 or meta['wall_s'] / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f}' for k, v in meta.get('table_seconds', {}).items())}). "
        "Figures are median (min-max) over rounds.",
        "",
    ]
    if "latency" in t:
        lat = t["latency"]
        lines += [
            f"## Latency: prefill of a {lat['prompt_tokens']}-token prompt, decode at batch 1",
            "",
            "base = the merged graph: the base model's graph with delta W folded into the weights, the same "
            "compute as the base model. unmerged shared = the shared graph: coefficients fed as an input, the "
            "factors formed from them in the graph at every call. unmerged factored = the factored graph: the "
            "runtime forms each task's factors once (the factors graph) and binds them for the whole generation. "
            "The control is a second session of the unmerged shared fp32 graph. Ratios are within each round.",
            "",
            "| config | threads | prefill ms | decode ms/token |",
            "|---|---|---|---|",
        ]
        for threads, r in lat["threads"].items():
            for name, v in r["summary"].items():
                lines.append(
                    f"| {name} | {threads} | {_fmt(v['prefill_ms'])} | {_fmt(v['decode_ms'], '.2f')} |"
                )
        lines += ["", "| ratio | threads | decode | prefill |", "|---|---|---|---|"]
        for threads, r in lat["threads"].items():
            names = sorted(
                {k.rsplit(" ", 1)[0] for k in r["ratios"]}, key=lambda x: (not x.startswith("unm"), x)
            )
            for name in names:
                lines.append(
                    f"| {name} | {threads} | {_fmt(r['ratios'][name + ' decode'], '.3f')} | "
                    f"{_fmt(r['ratios'][name + ' prefill'], '.3f')} |"
                )
        lines += ["", "Target: unmerged decode at most 1.05x base."]
        for threads, r in lat["threads"].items():
            ratio, ctl = r["ratios"]["unmerged/base fp32 decode"], r["ratios"]["control/unmerged fp32 decode"]
            factored = r["ratios"].get("factored/base fp32 decode")
            best = factored or ratio
            lines.append(
                f"- {threads} thread(s): unmerged fp32 decode "
                + (f"{factored['median']:.3f}x base with the factored graph, " if factored else "")
                + f"{ratio['median']:.3f}x with the shared graph "
                f"({'met' if best['median'] <= 1.05 else 'NOT met'}); the control's spread "
                f"{ctl['min']:.3f}-{ctl['max']:.3f}; greedy tokens of unmerged and merged fp32 "
                f"{'equal' if r['same_tokens_unmerged_vs_merged_fp32'] else 'differ'}"
                + (
                    f", of factored and shared {'equal' if r['same_tokens_factored_vs_shared_fp32'] else 'differ'}"
                    if factored
                    else ""
                )
                + "."
            )
        lines.append("")
    if "kv_cache" in t:
        kv = t["kv_cache"]
        lo, hi = kv["positions"]
        lines += [
            f"## KV cache: decode ms at positions {lo} and {hi} (fp32 shared, {kv['steps']} steps each)",
            "",
            "bound: the cache stays onnxruntime values bound as the next step's past (IO binding); numpy: the "
            "control that passes it through numpy at every step. Arithmetic growth: (multiply-adds per token + "
            f"attention's at {hi}) / (the same at {lo}).",
            "",
            f"| arm | ms at {lo} | ms at {hi} | {hi}/{lo} |",
            "|---|---|---|---|",
        ]
        for a in ("bound", "numpy"):
            lines.append(
                f"| {a} | {_fmt(kv['summary'][f'{a}|{lo}'], '.2f')} | {_fmt(kv['summary'][f'{a}|{hi}'], '.2f')} | "
                f"{_fmt(kv['growth'][a], '.3f')} |"
            )
        lines += [
            "",
            f"Attention's arithmetic growth {lo} -> {hi}: {kv['arithmetic_growth']:.3f}x; the cache holds "
            f"{kv['cache_mib'][str(hi)]:.1f} MiB at {hi}. numpy/bound: {_fmt(kv['numpy/bound'][str(lo)], '.3f')} "
            f"at {lo}, {_fmt(kv['numpy/bound'][str(hi)], '.3f')} at {hi}.",
            "",
        ]
    if "per_row" in t:
        pr = t["per_row"]
        lines += [
            f"## Per-row tasks: 4 prompts, 4 tasks, {pr['new_tokens']} new tokens each (fp32)",
            "",
            f"Tasks {', '.join(pr['tasks'])}; prompts of {pr['prompt_tokens']} tokens (left-padded in a batch).",
            "",
            "| arm | tokens/s |",
            "|---|---|",
        ]
        lines += [f"| {a} | {_fmt(v)} |" for a, v in pr["summary"].items()]
        eq = sum(pr["rows_equal"])
        lines += [
            "",
            f"per_row batch / sequential: {_fmt(pr['ratio'], '.2f')}x (target at least 2.5x: "
            f"{'met' if pr['ratio']['median'] >= 2.5 else 'NOT met'}); the control (one task for the batch) / "
            f"sequential: {_fmt(pr['control_ratio'], '.2f')}x. Greedy token ids equal to the sequential ones in "
            f"{eq} of {len(pr['rows_equal'])} rows (first differing position per row: {pr['first_difference']}).",
            "",
        ]
    if "memory" in t:
        mem = t["memory"]
        lines += [
            f"## Memory: peak RSS (VmHWM inside each child process), {mem['threads']} threads",
            "",
            f"Train step: batch {mem['train_batch'][0]} x {mem['train_batch'][1]} tokens, {mem['train_steps']} steps "
            "(device: train-step graph + AdamW on the coefficients; PyTorch: PEFT LoRA r=8 q/k/v/o, dropout 0, "
            "forward + backward + AdamW). Generate: the 128-token prompt, "
            f"{mem['generate_tokens']} new tokens (device: unmerged shared graph; PyTorch: PEFT LoRA adapter "
            "unmerged). Baseline: the child's VmHWM after its imports (onnxruntime + the device runtime, or "
            "torch + transformers + peft).",
            "",
            "| arm | whole process MiB | import baseline MiB | above import MiB | work s |",
            "|---|---|---|---|---|",
        ]
        for a, v in mem["summary"].items():
            lines.append(
                f"| {a} | {_fmt(v['peak_mib'], '.0f')} | {_fmt(v['import_mib'], '.0f')} | "
                f"{_fmt(v['above_import_mib'], '.0f')} | {_fmt(v['work_s'])} |"
            )
        lines += [""] + [f"- {k}: {v:.2f}x" for k, v in mem["ratios"].items()]
        r = mem["ratios"].get("device train / torch LoRA train, above import")
        lines += [
            f"- Target: device train step above import at most 0.5x PyTorch LoRA's: {r:.2f}x "
            f"({'met' if r <= 0.5 else 'NOT met'})."
            if r is not None
            else "- The device train step was not measured: the bundle has no train-step graph (see the set-up).",
            "",
        ]
    if "bytes" in t:
        by = t["bytes"]
        lines += [
            "## Bytes and the quantized bundles' quality",
            "",
            "phone bundle = the shared graph (its .onnx and every external tensor it reads), the tokenizer and "
            "one task file. The fp32 export's folder also holds the other graphs exported ("
            f"{', '.join(meta.get('setup', {}).get('graphs', GRAPHS))}).",
            "",
            "| bundle | whole folder MiB | shared graph MiB | merged graph MiB | phone bundle MiB | task file KiB |",
            "|---|---|---|---|---|---|",
        ]
        for b, v in by["sizes"].items():
            lines.append(
                f"| {b} | {_mib(v['bundle_total'])} | {_mib(v['shared_graph'])} | {_mib(v['merged_graph'])} | "
                f"{_mib(v['phone_bundle'])} | {v['task_file'] / 1024:.1f} |"
            )
        lines += [""] + [f"- {k}: {v:.3f}x" for k, v in by["ratios"].items()]
        lines += [
            f"- PEFT LoRA adapter_model.safetensors (r=8 q/k/v/o, 30 layers): {by['peft_adapter_bytes'] / 1024:.1f} KiB.",
            "",
            "Held-out next-token loss on the completions of WordNet adverb definitions (in no bank adapter), "
            "nats per token; delta = the mean over texts of each text's loss minus fp32's, +- SE over texts.",
            "",
            "| bundle, graph | nats/token | delta vs fp32 (per text) | texts |",
            "|---|---|---|---|",
        ]
        for label, v in by["quality"].items():
            lines.append(
                f"| {label.replace('|', ', ')} | {v['nats_per_token']:.4f} | {v['delta_vs_fp32_per_text']:+.4f} "
                f"+- {v['delta_se']:.4f} | {v['texts']} |"
            )
        lines.append("")
    if "peers" in t:
        p = t["peers"]
        lines += [
            "## Peers (benchmarks/lm_peers.py)",
            "",
            "Measured when this table's cache entry was written (its load is in lm.json's meta); compare it with "
            "latency rows measured at the same load only.",
            "",
            p["markdown"],
            "",
        ]
        for key, err in p.get("artifacts", {}).get("errors", {}).items():
            lines.append(f"- {key}: not measured: {err}")
        lines.append("")
    if skipped:
        lines += ["## Not measured", ""] + [f"- {k}: {v}" for k, v in skipped.items()] + [""]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds and tokens: a smoke test")
    parser.add_argument(
        "--fresh",
        nargs="*",
        choices=TABLES,
        default=None,
        help="re-measure these tables (no names: every table) instead of reading them from the cache",
    )
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument(
        "--stand-in-bank",
        action="store_true",
        help="3 seeded PEFT LoRA adapters of the bank's shapes instead of the LM bank (when it is not built)",
    )
    parser.add_argument(
        "--graphs",
        nargs="+",
        default=list(GRAPHS),
        choices=GRAPHS,
        help="the fp32 graphs to export (each SmolLM2 graph is a long torch export); tables needing others are "
        "reported as not measured",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child_main(json.loads(args.child))), flush=True)
        return 0
    graphs = tuple(g for g in GRAPHS if g in args.graphs)
    if "shared" not in graphs:
        parser.error("--graphs must include shared")
    if args.prepare:
        print(prepare(args.stand_in_bank, graphs))
        return 0
    settings = QUICK if args.quick else DEFAULT
    out = args.out or (OUT / "quick" if args.quick else OUT)
    cached = out / "tables"
    cached.mkdir(parents=True, exist_ok=True)
    start, load_start = time.perf_counter(), _loadavg()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the set-up (torch export) runs in its own process: this one stays torch-free while it measures
    prep = subprocess.run(
        [sys.executable, "-m", "benchmarks.lm", "--prepare", "--graphs", *graphs]
        + (["--stand-in-bank"] if args.stand_in_bank else []),
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    if prep.returncode != 0:
        return prep.returncode
    root = Path(prep.stdout.strip().splitlines()[-1])
    print(f"bundles: {root}", flush=True)
    setup = configure(root)
    key = json.loads(json.dumps({"bundles": root.name, "settings": asdict(settings)}))  # as read back
    funcs = {
        "latency": table_latency,
        "kv_cache": table_kv,
        "per_row": table_per_row,
        "memory": table_memory,
        "bytes": table_bytes,
        "peers": table_peers,
    }
    tables, seconds, loads = {}, {}, []
    wanted = [n for n in args.tables if not (n == "peers" and args.no_peers)]
    for name in TABLES:
        path = cached / f"{name}.json"
        fresh = args.fresh is not None and (not args.fresh or name in args.fresh)
        if path.is_file() and not fresh:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                tables[name], seconds[name] = data["table"], data["seconds"]
                loads.append(data["load_end"])
                print(f"{name}: cached ({path})", flush=True)
                continue
        if name not in wanted:
            continue
        missing = [g for g in NEEDS[name] if g not in graphs]
        if missing:
            tables[name] = {
                "error": f"needs the {' and '.join(missing)} graph(s), not exported in this run (--graphs "
                f"{' '.join(graphs)}: each SmolLM2 graph is a torch export of 10-35 minutes on this machine)"
            }
            continue
        t = time.perf_counter()
        tables[name] = funcs[name](root, settings)
        data = {"key": key, "seconds": time.perf_counter() - t, "load_end": _loadavg(), "table": tables[name]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        tmp.rename(path)
        seconds[name] = data["seconds"]
        loads.append(data["load_end"])
        print(f"{name}: {data['seconds']:.0f} s", flush=True)
    import importlib.metadata as md

    command = "python -m benchmarks.lm " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "command": command.strip(),
        "settings": asdict(settings),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "load_average": [load_start, _loadavg()],
        "load_average_range": _load_range(tables, loads),
        "onnxruntime": md.version("onnxruntime"),
        "k": K,
        "rank": RANK,
        "bundles": root.name,
        "setup": setup,
        "wall_s": time.perf_counter() - start,
        "table_seconds": seconds,  # each table's own measuring time (also when read from the cache)
    }
    exported = root / "export_seconds.json"
    if exported.is_file():
        meta["export_seconds"] = json.loads(exported.read_text())
    compression = root / "compression.json"
    if compression.is_file():
        meta["compression_mean_delta_error"] = json.loads(compression.read_text())
    result = {"meta": meta, "tables": tables}
    (out / "lm.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    text = render_report(result)
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
