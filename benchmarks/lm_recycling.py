"""Does a recycled basis help a language model? SmolLM2-135M, real generation tasks, matched controls.

    python -m benchmarks.lm_recycling --config quick|default|full [--stage bank|grid|report|all] [--shard k/n]
    python -m benchmarks.lm_recycling --config quick --workers 2      # bank, grid, report: 2 shards at once

Stages, each resumable and shardable (`--shard k/n`: item i runs in shard i % n == k):
- `bank`: one PEFT LoRA adapter (r=8 on q/k/v/o, alpha 16, the adapter's own seed) per bank task, trained on
  the completion loss with early stopping on validation (curve recorded); cached under
  ~/.cache/edge-eigenlora/bench/banks/lm-<settings hash>/<task>/ (PEFT's folder + training.json); finished
  adapters are skipped, a half-written one is rebuilt.
- `grid`: each cell (method, held-out task, seed, n training examples) trains once per learning rate of the
  method's grid; every finished training is one JSON line in ~/.cache/edge-eigenlora/bench/lm-<hash>.jsonl
  (keyed by the settings that change a run, so configs that share them share runs). The report picks, per
  cell, the learning rate with the best validation loss: every method gets the same tuning budget.
- `report`: benchmarks/results/lm_recycling/<config>.json, <config>.md and <config>_params.png
  (benchmarks.lm_report).

Methods (strings, as in the JSONL):
  base                          no adapter
  mean                          the bank's mean adapter (mean of the bank's delta W), no training
  lora/r8                       PEFT LoRA on q/k/v/o
  vera/r256                     PEFT VeRA on q/k/v/o
  eigen/k<K>/<init>[/r<R>]      EigenLoRAx coefficients on the bank's gauge-free basis; init zero (delta 0),
                                bank (the paper's init: the mean adapter's best rank-R part inside the basis),
                                or mean (the bank's full mean delta W as a frozen offset, coefficients from 0)
  random/k<K>/<init>[/r<R>]     the same on a random orthonormal basis; init zero or mean
  eigenout/k<K>/<init>[/r<R>]   output side (U_B) from the bank's basis, input side (U_A) random; zero or mean
  vlora/k<k>                    vlora-dev 1.0.0: its own subspace of the same bank (flattened factors, centered
                                PCA, k components per side and module), its orthogonal_init, loadings trained
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import CACHE_ROOT, append_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONFIG_DIR = Path(__file__).parent / "configs"
RESULTS_DIR = Path(__file__).parent / "results" / "lm_recycling"
CACHE = CACHE_ROOT / "bench"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def load_config(name_or_path: str) -> dict[str, Any]:
    """A config by name (benchmarks/configs/lm_<name>.json) or path; plain JSON, never executed."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"lm_{name_or_path}.json"
    if not path.is_file():
        names = sorted(p.stem.removeprefix("lm_") for p in CONFIG_DIR.glob("lm_*.json"))
        raise SystemExit(f"no LM config {name_or_path!r}; choose one of {names} or give a JSON path.")
    return json.loads(path.read_text())


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def bank_dir(config: dict[str, Any]) -> Path:
    """Keyed by everything that changes an adapter, not by the list of bank tasks (banks share adapters)."""
    key = {k: config[k] for k in ("model", "max_length", "max_completion", "data")} | {
        "train": config["bank"]["train"],
        "lora": config["bank"]["lora"],
    }
    return CACHE / "banks" / f"lm-{digest(key)}"


def results_path(config: dict[str, Any]) -> Path:
    key = {k: config[k] for k in ("model", "max_length", "max_completion", "data", "train")} | {
        "bank_dir": bank_dir(config).name,
        "bank": config["bank"]["tasks"],
    }
    return CACHE / f"lm-{digest(key)}.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill: that run is simply redone
    return rows


def in_shard(i: int, shard: str) -> bool:
    k, n = (int(x) for x in shard.split("/"))
    if not 0 <= k < n:
        raise SystemExit(f"--shard {shard}: need k/n with 0 <= k < n")
    return i % n == k


# ----------------------------------------------------------------------------------------------
# Data: prompt + completion token ids, loss on the completion only
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    ids: tuple[int, ...]
    prompt_len: int  # tokens before the completion


def encode(tokenizer: Any, examples: Sequence[Any], max_length: int, max_completion: int) -> list[Encoded]:
    """Prompt (with the tokenizer's BOS) + completion (capped); a long prompt keeps its BOS and its end."""
    out = []
    for ex in examples:
        prompt = tokenizer(ex.prompt).input_ids
        completion = tokenizer(ex.completion, add_special_tokens=False).input_ids[:max_completion]
        budget = max_length - len(completion)
        if len(prompt) > budget:
            prompt = prompt[:1] + prompt[len(prompt) - budget + 1 :]
        out.append(Encoded(tuple(prompt + completion), len(prompt)))
    return out


def collate(items: Sequence[Encoded], pad_id: int) -> tuple[Any, Any, Any]:
    """input_ids, attention_mask and labels (-100 on prompt and padding), right-padded."""
    import torch

    width = max(len(e.ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    return ids, mask, labels


def lm_parts(model: Any) -> tuple[Any, Any]:
    """(decoder stack, lm_head) of a causal LM, through PEFT wrappers (adapters are injected in place)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model, inner.lm_head


def completion_loss(model: Any, ids: Any, mask: Any, labels: Any) -> tuple[Any, Any, Any]:
    """Sum of completion-token losses, token count, and per-row all-correct flags (greedy exact match).

    The vocabulary projection runs only where a completion token is predicted (a fifth of the step saved).
    """
    import torch
    import torch.nn.functional as F

    decoder, head = lm_parts(model)
    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    where = target != -100
    logits = head(hidden[:, :-1][where])
    gold = target[where]
    loss_sum = F.cross_entropy(logits, gold, reduction="sum")
    right = (logits.argmax(-1) == gold).to(torch.long)
    rows = torch.nonzero(where)[:, 0]
    wrong_per_row = torch.zeros(ids.shape[0], dtype=torch.long).index_add_(0, rows, 1 - right)
    return loss_sum, where.sum(), wrong_per_row == 0


def evaluate(model: Any, data: Sequence[Encoded], pad_id: int, batch_size: int = 32) -> dict[str, float]:
    import torch

    model.eval()
    loss, tokens, exact = 0.0, 0, 0
    order = sorted(range(len(data)), key=lambda i: len(data[i].ids))  # similar lengths pad less
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            batch = [data[j] for j in order[i : i + batch_size]]
            s, n, ok = completion_loss(model, *collate(batch, pad_id))
            loss += float(s)
            tokens += int(n)
            exact += int(ok.sum())
    return {"loss": loss / max(tokens, 1), "exact_match": exact / max(len(data), 1), "tokens": tokens}


def train(
    model: Any,
    params: Sequence[Any],
    train_data: Sequence[Encoded],
    val_data: Sequence[Encoded],
    pad_id: int,
    *,
    lr: float,
    batch_size: int,
    max_steps: int,
    eval_every: int,
    patience: int,
    seed: int,
) -> dict[str, Any]:
    """AdamW on `params`, early stopping on validation loss, best state restored; returns the curve."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(list(params), lr=lr, weight_decay=0.0)
    start = time.perf_counter()
    first = evaluate(model, val_data, pad_id)["loss"]
    history = [{"step": 0, "train_loss": None, "val_loss": first}]
    best, best_step, bad, step = first, 0, 0, 0
    best_state = [p.detach().clone() for p in params]
    running: list[float] = []
    stopped = False
    while step < max_steps and not stopped:
        order = rng.permutation(len(train_data))
        for i in range(0, len(order), batch_size):
            model.train()
            s, n, _ = completion_loss(
                model, *collate([train_data[j] for j in order[i : i + batch_size]], pad_id)
            )
            loss = s / n.clamp(min=1)
            if not torch.isfinite(loss):
                stopped = True  # diverged: the best state so far is kept (the lr grid will not choose it)
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running.append(loss.item())
            step += 1
            if step % eval_every == 0 or step == max_steps:
                val = evaluate(model, val_data, pad_id)["loss"]
                history.append({"step": step, "train_loss": float(np.mean(running)), "val_loss": val})
                running = []
                if val < best - 1e-4:
                    best, best_step, bad = val, step, 0
                    best_state = [p.detach().clone() for p in params]
                else:
                    bad += 1
                    if bad >= patience:
                        stopped = True
                        break
            if step >= max_steps:
                break
    with torch.no_grad():
        for p, b in zip(params, best_state, strict=True):
            p.copy_(b)
    model.eval()
    return {
        "val_loss": best,
        "best_step": best_step,
        "steps": step,
        "stopped_early": stopped,
        "seconds": time.perf_counter() - start,
        "history": history,
    }


# ----------------------------------------------------------------------------------------------
# Bank
# ----------------------------------------------------------------------------------------------


class Bench:
    """The base model (loaded once, deep-copied per run), the tokenizer and encoded task data."""

    def __init__(self, config: dict[str, Any]) -> None:
        from edge_eigenlora.pretrained import load_causal_lm

        self.config = config
        self.model, self.tokenizer = load_causal_lm(config["model"])
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self._encoded: dict[tuple[str, str], list[Encoded]] = {}
        self._bank: Any = None
        self._bases: dict[tuple, Any] = {}

    def data(self, task: str, split: str) -> list[Encoded]:
        from benchmarks.lm_tasks import load_lm_task

        if (task, split) not in self._encoded:
            d = self.config["data"]
            data = load_lm_task(task, n_val=d["validation"], n_test=d["test"], max_train=d["max_train"])
            self._encoded[(task, split)] = encode(
                self.tokenizer, getattr(data, split), self.config["max_length"], self.config["max_completion"]
            )
        return self._encoded[(task, split)]

    def train_subset(self, task: str, n: int, seed: int) -> list[Encoded]:
        pool = self.data(task, "train")
        idx = np.sort(np.random.default_rng(10_000 + seed).permutation(len(pool))[: min(n, len(pool))])
        return [pool[i] for i in idx]

    def fresh(self) -> Any:
        return copy.deepcopy(self.model)

    # --- the bank, its bases and its mean adapter ------------------------------------------------
    def bank(self) -> Any:
        from edge_eigenlora.adapters import load_bank

        if self._bank is None:
            folder = bank_dir(self.config)
            names = self.config["bank"]["tasks"]
            missing = [n for n in names if not (folder / n / "training.json").is_file()]
            if missing:
                raise SystemExit(f"bank adapters missing: {missing}; run --stage bank first.")
            self._bank = load_bank([folder / n for n in names], names=names)
        return self._bank

    def basis(self, kind: str, k: int, seed: int) -> Any:
        from benchmarks import controls
        from edge_eigenlora.basis import SubspaceConfig, fit_basis

        key = (kind, k, seed if kind == "random" else 0)
        if key not in self._bases:
            if kind == "random":
                self._bases[key] = controls.random_basis(dict(self.bank().module_shapes), k, seed=1000 + seed)
            else:
                cfg = SubspaceConfig(method="gauge_free", k=k, clip_k=True)
                self._bases[key] = fit_basis(self.bank(), cfg, progress=False)
        return self._bases[key]

    def mean_deltas(self) -> dict[str, np.ndarray]:
        bank = self.bank()
        out = {}
        for module in bank.module_shapes:
            deltas = [a.modules[module].delta() for a in bank.adapters if module in a.modules]
            out[module] = np.mean(deltas, axis=0)
        return out


def add_mean_offset(model: Any, deltas: dict[str, np.ndarray]) -> None:
    """W += the bank's mean delta W, in place, frozen (the mean adapter merged into the base)."""
    import torch

    from edge_eigenlora.model import resolve_module_name

    with torch.no_grad():
        for module, delta in deltas.items():
            linear = model.get_submodule(resolve_module_name(model, module))
            linear.weight += torch.from_numpy(delta.astype(np.float32))


def attach_peft_lora(model: Any, r: int, alpha: int, seed: int) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(TARGETS), lora_dropout=0.0, bias="none")
    return get_peft_model(model, config)


def build_bank(config: dict[str, Any], bench: Bench | None, shard: str, tasks: Sequence[str] | None) -> None:
    from edge_eigenlora.bank import task_seed
    from edge_eigenlora.fileio import make_temp_dir

    folder = bank_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    spec = config["bank"]
    names = list(tasks or spec["tasks"])
    for i, name in enumerate(names):
        if not in_shard(i, shard) or (folder / name / "training.json").is_file():
            continue
        bench = bench or Bench(config)
        seed = task_seed(name)
        model = attach_peft_lora(bench.fresh(), spec["lora"]["r"], spec["lora"]["alpha"], seed)
        params = [p for p in model.parameters() if p.requires_grad]
        t = spec["train"]
        data = bench.train_subset(name, t["examples"], seed=0)
        result = train(
            model,
            params,
            data,
            bench.data(name, "validation"),
            bench.pad_id,
            lr=t["lr"],
            batch_size=t["batch_size"],
            max_steps=t["max_steps"],
            eval_every=t["eval_every"],
            patience=t["patience"],
            seed=seed,
        )
        test = evaluate(model, bench.data(name, "test"), bench.pad_id)
        tmp = make_temp_dir(folder, f".{name}.")
        try:
            model.save_pretrained(tmp)
            record = {"task": name, "seed": seed, "examples": len(data), "lr": t["lr"], **result}
            record |= {"test_loss": test["loss"], "test_exact_match": test["exact_match"]}
            (tmp / "training.json").write_text(json.dumps(record, indent=1))
            if (folder / name).exists():
                shutil.rmtree(folder / name)
            tmp.rename(folder / name)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        print(
            f"bank {name}: val {result['val_loss']:.3f} test {test['loss']:.3f} after {result['steps']} steps "
            f"(best {result['best_step']}, early stop {result['stopped_early']}) {result['seconds']:.0f} s",
            flush=True,
        )


# ----------------------------------------------------------------------------------------------
# Methods and the grid
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    kind: str  # base | mean | lora | vera | eigen | random | vlora
    k: int = 0
    init: str = "zero"
    r: int = 8

    @property
    def trains(self) -> bool:
        return self.kind not in ("base", "mean")


def parse_method(name: str) -> Method:
    parts = name.split("/")
    kind = parts[0]
    if kind in ("base", "mean") and len(parts) == 1:
        return Method(kind)
    if kind in ("lora", "vera") and len(parts) == 2:
        return Method(kind, r=int(parts[1].lstrip("r")))
    if kind == "vlora" and len(parts) == 2:
        return Method(kind, k=int(parts[1].lstrip("k")))
    if kind in ("eigen", "random", "eigenout") and len(parts) in (3, 4):
        init = parts[2]
        allowed = ("zero", "bank", "mean") if kind == "eigen" else ("zero", "mean")
        if init not in allowed:
            raise SystemExit(f"method {name!r}: init must be one of {allowed}")
        return Method(
            kind,
            k=int(parts[1].lstrip("k")),
            init=init,
            r=int(parts[3].lstrip("r")) if len(parts) == 4 else 8,
        )
    raise SystemExit(f"unknown method {name!r}")


def vlora_attach(model: Any, bank: Any, k: int, seed: int) -> tuple[list[Any], list[Any]]:
    """vlora-dev's own subspace of the bank and its new-task init; forward hooks as its HF callback does.

    The bank's PEFT scale (alpha / r) is folded into B before vLoRA sees the factors: vLoRA's hooks add B @ A
    without a scale, so unfolded factors would halve every delta W.
    """
    import torch
    from vlora import SharedSubspace, SubspaceTrainer, orthogonal_init
    from vlora.io import LoRAWeights

    from edge_eigenlora.model import resolve_module_name

    modules = list(bank.module_shapes)
    weights = [
        LoRAWeights(
            layer_names=modules,
            lora_a={m: torch.from_numpy(np.asarray(a.modules[m].A, np.float32)) for m in modules},
            lora_b={m: torch.from_numpy(np.asarray(a.modules[m].B, np.float32)) for m in modules},
            rank=a.modules[modules[0]].rank,
        )
        for a in bank.adapters
    ]
    subspace = SharedSubspace.from_adapters(weights, task_ids=bank.names(), num_components=k)
    torch.manual_seed(seed)
    orthogonal_init(subspace, "new_task")
    trainer = SubspaceTrainer(subspace, "new_task")
    params = list(trainer.params.values())
    hooks = []
    rank = subspace.rank
    for layer in subspace.layer_names:
        la, lb = trainer.params[f"{layer}.loadings_a"], trainer.params[f"{layer}.loadings_b"]
        comp_a, comp_b = subspace.components_a[layer], subspace.components_b[layer]
        mean_a, mean_b = subspace.means_a[layer], subspace.means_b[layer]

        def hook(
            module: Any, inputs: Any, output: Any, la=la, lb=lb, ca=comp_a, cb=comp_b, ma=mean_a, mb=mean_b
        ) -> Any:
            x = inputs[0]
            A = (la @ ca + ma).reshape(rank, -1)
            B = (lb @ cb + mb).reshape(-1, rank)
            return output + x @ (B @ A).T

        linear = model.get_submodule(resolve_module_name(model, layer))
        hooks.append(linear.register_forward_hook(hook))
    return params, hooks


def build_run_model(bench: Bench, method: Method, seed: int) -> tuple[Any, list[Any], int]:
    """(model, trainable parameters, count) for a method; base and mean have nothing to train."""
    from edge_eigenlora.model import attach_basis

    model = bench.fresh()
    if method.kind == "base":
        return model, [], 0
    if method.kind == "mean" or method.init == "mean":
        add_mean_offset(model, bench.mean_deltas())
    if method.kind == "mean":
        return model, [], 0
    if method.kind == "lora":
        model = attach_peft_lora(model, method.r, 2 * method.r, seed)
    elif method.kind == "vera":
        import torch
        from peft import VeraConfig, get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(
            model,
            VeraConfig(r=method.r, target_modules=list(TARGETS), vera_dropout=0.0, projection_prng_key=seed),
        )
    elif method.kind == "vlora":
        params, _ = vlora_attach(model, bench.bank(), method.k, seed)
        return model, params, sum(p.numel() for p in params)
    else:
        basis = bench.basis("random" if method.kind == "random" else "eigen", method.k, seed)
        if (
            method.kind == "eigenout"
        ):  # output side (U_B) recycled, input side (U_A) random: which side carries it
            from benchmarks import controls

            basis = controls.mix_basis(basis, bench.basis("random", method.k, seed))
        init = "bank" if method.init == "bank" else "zero"
        attach_basis(model, basis, rank=method.r, init=init, seed=seed)  # type: ignore[arg-type]
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, sum(p.numel() for p in params)


def lr_grid(config: dict[str, Any], method: Method) -> list[float]:
    grids = config["train"]["lr_grid"]
    return list(grids.get(method.kind, grids["coefficients"]))


def grid_cells(config: dict[str, Any]) -> list[tuple[str, str, int, int]]:
    """(method, task, seed, n) in priority order: blocks as listed, seed-major, so a cut run stays paired."""
    cells, seen = [], set()
    for block in config["grid"]:
        for seed in block["seeds"]:
            for n in block["examples"]:
                for task in block.get("held_out", config["held_out"]):
                    for method in block["methods"]:
                        cell = (method, task, seed, n)
                        if cell not in seen:
                            seen.add(cell)
                            cells.append(cell)
    return cells


def run_key(method: str, task: str, seed: int, n: int, lr: float | None) -> tuple:
    return (method, task, seed, n, None if lr is None else float(lr))


def run_grid(
    config: dict[str, Any], shard: str, only: Sequence[str] | None, lr_index: int | None = None
) -> None:
    """Every missing training of the grid; lr_index runs only that learning rate of each grid (a first pass)."""
    import torch

    path = results_path(config)
    done = {run_key(r["method"], r["task"], r["seed"], r["n"], r["lr"]) for r in read_jsonl(path)}
    bench: Bench | None = None
    t = config["train"]
    for i, (name, task, seed, n) in enumerate(grid_cells(config)):
        if not in_shard(i, shard) or (only and not any(name.startswith(p) for p in only)):
            continue
        method = parse_method(name)
        lrs = lr_grid(config, method) if method.trains else [None]
        if lr_index is not None and method.trains:
            lrs = lrs[lr_index : lr_index + 1]
        for lr in lrs:
            if run_key(name, task, seed, n, lr) in done:
                continue
            bench = bench or Bench(config)
            start = time.perf_counter()
            model, params, count = build_run_model(bench, method, seed)
            row: dict[str, Any] = {
                "method": name,
                "task": task,
                "seed": seed,
                "n": n,
                "lr": lr,
                "params": count,
            }
            if params:
                train_data = bench.train_subset(task, n, seed)
                row["n"] = n
                row["n_used"] = len(train_data)
                steps = min(t["max_steps"], t["epochs"] * math.ceil(len(train_data) / t["batch_size"]))
                result = train(
                    model,
                    params,
                    train_data,
                    bench.data(task, "validation"),
                    bench.pad_id,
                    lr=lr,
                    batch_size=t["batch_size"],
                    max_steps=steps,
                    eval_every=t["eval_every"],
                    patience=t["patience"],
                    seed=seed,
                )
                row |= result
            else:
                row["val_loss"] = evaluate(model, bench.data(task, "validation"), bench.pad_id)["loss"]
            test = evaluate(model, bench.data(task, "test"), bench.pad_id)
            row |= {"test_loss": test["loss"], "test_exact_match": test["exact_match"]}
            row["wall_seconds"] = time.perf_counter() - start
            row["threads"] = torch.get_num_threads()
            append_jsonl(path, row)
            print(
                f"{name:22s} {task:24s} seed {seed} n {n:3d} lr {lr}: test {test['loss']:.3f} "
                f"em {test['exact_match']:.2f} val {row['val_loss']:.3f} steps {row.get('steps', 0)} "
                f"[{row['wall_seconds']:.0f} s]",
                flush=True,
            )
            del model, params


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


def bank_records(config: dict[str, Any]) -> list[dict]:
    folder = bank_dir(config)
    out = []
    for name in config["bank"]["tasks"]:
        path = folder / name / "training.json"
        if path.is_file():
            out.append(json.loads(path.read_text()))
    return out


def _grid_pass(config: dict[str, Any], method: str, lr_index: int | None) -> list[float]:
    method_ = parse_method(method)
    if not method_.trains:
        return []
    grid = lr_grid(config, method_)
    return grid if lr_index is None else grid[lr_index : lr_index + 1]


def write_results(config: dict[str, Any], out_dir: Path | None = None, lr_index: int | None = None) -> Path:
    """The summary JSON + report; lr_index: report a first pass (only that learning rate of every grid)."""
    from benchmarks import lm_report
    from benchmarks.lm_tasks import lm_tasks

    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = grid_cells(config)
    wanted = {(m, t, s, n) for m, t, s, n in cells}
    rows = [
        r for r in read_jsonl(results_path(config)) if (r["method"], r["task"], r["seed"], r["n"]) in wanted
    ]
    specs = {s.name: {"family": s.family, "definite": s.definite, "source": s.source} for s in lm_tasks()}
    summary = {
        "config": config,
        "cells_expected": len(cells),
        "cells": [list(c) for c in cells],
        "lr_grids": {m: grid for m in {c[0] for c in cells} if (grid := _grid_pass(config, m, lr_index))},
        "lr_pass": lr_index,
        "runs": rows,
        "bank": bank_records(config),
        "tasks": specs,
    }
    path = out_dir / f"{config['name']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(path)
    lm_report.render(summary, out_dir)
    print(f"results: {path}")
    return path


def run_workers(args: argparse.Namespace) -> int:
    """Each stage (bank, then grid) as `args.workers` child processes, shard k/n each; then the report."""
    common = ["--config", args.config, "--threads", str(args.threads)]
    common += ["--methods", *args.methods] if args.methods else []
    common += ["--tasks", *args.tasks] if args.tasks else []
    common += ["--lr-index", str(args.lr_index)] if args.lr_index is not None else []
    n = args.workers
    start = time.perf_counter()
    for stage in [s for s in ("bank", "grid") if args.stage in (s, "all")]:
        module = [sys.executable, "-m", "benchmarks.lm_recycling", *common, "--stage", stage]
        children = [subprocess.Popen([*module, "--shard", f"{k}/{n}"]) for k in range(n)]
        codes = [c.wait() for c in children]
        print(f"{stage}: {n} workers, {time.perf_counter() - start:.0f} s since the start", flush=True)
        if any(codes):
            return max(codes)
    if args.stage in ("report", "all"):
        write_results(load_config(args.config), lr_index=args.lr_index)
    print(f"wall time {time.perf_counter() - start:.0f} s with {n} workers", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.lm_recycling", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--config", default="quick", help="quick | default | full (configs/lm_*.json) or a path"
    )
    parser.add_argument("--stage", default="all", choices=["bank", "grid", "report", "all"])
    parser.add_argument("--shard", default="0/1", help="k/n: this worker runs items i with i %% n == k")
    parser.add_argument("--methods", nargs="*", help="grid: only methods starting with these prefixes")
    parser.add_argument("--tasks", nargs="*", help="bank: only these bank tasks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--lr-index",
        type=int,
        help="grid/report: only this learning rate of every method's grid (a first pass; the report says so)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run the bank and grid stages as this many single-thread shard workers at once (one per core), "
        "then the report",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and args.shard != "0/1":
        parser.error("--workers N starts the shards 0/N .. N-1/N itself: give --workers or --shard, not both")
    config = load_config(args.config)
    if args.workers > 1:
        return run_workers(args)
    import torch

    torch.set_num_threads(args.threads)
    if args.stage in ("bank", "all"):
        build_bank(config, None, args.shard, args.tasks)
    if args.stage in ("grid", "all"):
        run_grid(config, args.shard, args.methods, args.lr_index)
    if args.stage in ("report", "all"):
        write_results(config, lr_index=args.lr_index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
