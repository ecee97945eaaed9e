"""Accuracy benchmark, leave-tasks-out: does a basis recycled from a LoRA bank help on unseen tasks?

    python -m benchmarks.accuracy --config quick|default|full [--stage bank|grid|compress|report|all]

Stages (each resumable): `bank` trains one real PEFT LoRA adapter per task (edge_eigenlora.bank, cached under
~/.cache/edge-eigenlora/bench/banks/); `grid` trains every (method, held-out task, seed, regime, bank size) of the
config and appends one JSON line per finished run to ~/.cache/edge-eigenlora/bench/<config>-<hash>.jsonl, so an
interrupted run resumes where it stopped; `compress` projects bank adapters onto their bank's basis (in-sample and
leave-one-out) and measures the accuracy kept; `report` writes benchmarks/results/accuracy/<config>.json, a
markdown report and plots (benchmarks.report).

For a held-out task t, the bank of size N is the first N tasks of a fixed family-round-robin order of all other
tasks, so small banks are subsets of large ones and every family is represented early.

Method names (strings, so result lines stay greppable):
  head | lora/r8 | vera/r256 | random/k32[/r<rank>][/mean] | wsvd/k32
  meanhead                               the bank's mean adapter merged into the encoder (frozen), head trained
  eigen/<gauge_free|factors>/k<K>/aug<P>/<zero|bank|mean>[/r<rank>]   EigenLoRAx on the bank's basis
      init zero: delta W starts at 0; bank: the mean adapter's best rank-r part inside the basis (the paper's);
      mean: the bank's full mean delta W merged as a frozen offset, coefficients from 0. `random/kK/mean` is
      the same offset under a random basis, so eigen .../mean vs random .../mean differ in the basis only.

With `lr_grid` in the config ({"head": [...], "lora": [...], "vera": [...], "coefficients": [...]}) every run
trains once per learning rate of its kind's grid (the head's learning rate for head and meanhead) and keeps the
one with the best validation accuracy: every method gets the same tuning budget.
  eigenout/<method>/k<K>/aug<P>/<init>   output side (U_B) from the bank, input side (U_A) random orthonormal
  family/<method>/k<K>/aug<P>/<init>     basis from the bank adapters of the held-out task's own family only
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import CACHE_ROOT, append_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONFIG_DIR = Path(__file__).parent / "configs"
RESULTS_DIR = Path(__file__).parent / "results" / "accuracy"
CACHE = CACHE_ROOT / "bench"


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def load_config(name_or_path: str) -> dict[str, Any]:
    """A config by name (benchmarks/configs/<name>.json) or path; plain JSON, never executed."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise SystemExit(f"no config {name_or_path!r}; choose one of {names} or give a JSON path.")
    config = json.loads(path.read_text())
    config["model"] = (
        os.path.expanduser(config["model"]) if config["model"].startswith("~") else config["model"]
    )
    return config


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def bank_dir(config: dict[str, Any]) -> Path:
    """Bank cache folder: keyed by everything that changes an adapter (model, LoRA spec, training, caps)."""
    key = {k: config[k] for k in ("model", "max_length")} | {"bank": config["bank"]}
    model = config["model"].rsplit("/", 1)[-1]
    return CACHE / "banks" / f"{model}-{_digest(key)}"


def results_path(config: dict[str, Any]) -> Path:
    """JSONL of finished runs: keyed by the settings that change a run (not by the grid, which may grow)."""
    key = {k: config[k] for k in ("model", "max_length", "caps", "regimes", "lr_overrides", "bank")}
    if config.get("lr_grid"):
        key["lr_grid"] = config["lr_grid"]  # absent from older configs: their cache keys stay valid
    return CACHE / f"{config['name']}-{_digest(key)}.jsonl"


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _subset(split: Any, n: int | None, seed: int) -> Any:
    """A seeded random subset of at most n examples (the split is already shuffled and stratified)."""
    from edge_eigenlora.datasets import Split

    if n is None or len(split) <= n:
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return Split(tuple(split.texts[i] for i in idx), tuple(split.labels[i] for i in idx))


def _per_class(split: Any, per_class: int, seed: int) -> Any:
    """per_class examples of each label (seeded): the low-data regime; each seed draws a different subset."""
    from edge_eigenlora.datasets import Split

    rng = np.random.default_rng(10_000 + seed)
    labels = np.asarray(split.labels)
    keep: list[int] = []
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        keep.extend(rng.permutation(where)[:per_class].tolist())
    keep = sorted(keep)
    return Split(tuple(split.texts[i] for i in keep), tuple(split.labels[i] for i in keep))


_TASK_CACHE: dict[str, Any] = {}


def load_capped(
    name: str, caps: dict[str, int | None], *, per_class: int | None = None, seed: int = 0
) -> Any:
    """The task's standard split (data seed 0), each part capped; test and validation never depend on `seed`."""
    from edge_eigenlora.datasets import load_task

    if name not in _TASK_CACHE:
        _TASK_CACHE[name] = load_task(name, seed=0)
    task = _TASK_CACHE[name]
    train = (
        _per_class(task.train, per_class, seed) if per_class else _subset(task.train, caps.get("train"), 0)
    )
    return replace(
        task,
        train=train,
        validation=_subset(task.validation, caps.get("validation"), 1),
        test=_subset(task.test, caps.get("test"), 2),
    )


def family_order(tasks: Sequence[Any]) -> list[str]:
    """Round-robin over families (in first-seen order), so a bank of 4 already spans four families."""
    families: dict[str, list[str]] = {}
    for spec in tasks:
        families.setdefault(spec.family, []).append(spec.name)
    order: list[str] = []
    while any(families.values()):
        for names in families.values():
            if names:
                order.append(names.pop(0))
    return order


def all_task_order() -> list[str]:
    from edge_eigenlora.datasets import available_tasks

    return family_order(available_tasks())


def bank_for(held_out: str, size: int, order: Sequence[str]) -> list[str]:
    """The first `size` tasks of the order, skipping the held-out task itself (leave-task-out)."""
    others = [t for t in order if t != held_out]
    if size > len(others):
        raise SystemExit(f"bank size {size} needs {size} other tasks; only {len(others)} are available.")
    return others[:size]


def families() -> dict[str, str]:
    from edge_eigenlora.datasets import available_tasks

    return {spec.name: spec.family for spec in available_tasks()}


# ----------------------------------------------------------------------------------------------
# Bank
# ----------------------------------------------------------------------------------------------


def _train_config(fields: dict[str, Any], max_length: int, **extra: Any) -> Any:
    from edge_eigenlora.train import TrainConfig

    return TrainConfig(max_length=max_length, progress=False, **(fields | extra))


def lora_spec(config: dict[str, Any]) -> Any:
    from edge_eigenlora.bank import LoraSpec

    bank = config["bank"]
    targets = bank["targets"]
    return LoraSpec(
        r=bank["lora_r"],
        alpha=bank["lora_alpha"],
        target_modules=targets if isinstance(targets, str) else tuple(targets),
    )


def build(config: dict[str, Any], tasks: Sequence[str] | None = None) -> list[Path]:
    """Train (or reuse) the bank adapters of every task the config needs; resumable, cached outside git."""
    from edge_eigenlora.bank import build_bank

    order = all_task_order()
    tasks = list(tasks) if tasks else needed_bank_tasks(config, order)
    caps = config["bank"]["caps"]
    train = _train_config(config["bank"]["train"], config["max_length"])
    folder = bank_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bank_config.json").write_text(
        json.dumps({"model": config["model"], "bank": config["bank"]}, indent=2)
    )
    start = time.perf_counter()
    paths = build_bank(
        config["model"],
        tasks,
        folder,
        spec=lora_spec(config),
        config=train,
        load=lambda name, seed=0: load_capped(name, caps, seed=seed),
    )
    print(f"bank: {len(paths)} adapters ready in {folder} ({time.perf_counter() - start:.0f} s this call)")
    return paths


def needed_bank_tasks(config: dict[str, Any], order: Sequence[str]) -> list[str]:
    """Every task that appears in some held-out task's bank, plus the compression bank, in bank order."""
    need: set[str] = set()
    sizes = {s for block in config["grid"] for s in block["bank_sizes"]}
    for task in config["held_out"]:
        for size in sizes:
            need.update(bank_for(task, size, order))
        if any(m.startswith("family/") for block in config["grid"] for m in block["methods"]):
            fam = families()[task]
            need.update(t for t in order if t != task and families()[t] == fam)
    comp = config.get("compression")
    if comp:
        need.update(order[: comp["bank_size"]])
    return [t for t in order if t in need]


# ----------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A parsed method name (see the module docstring)."""

    kind: str  # head | meanhead | lora | vera | random | wsvd | eigen | eigenout | family
    r: int = 8  # LoRA / VeRA rank, or the coefficient rank of a basis method
    subspace: str = "gauge_free"
    k: int = 0
    augment: int = 0
    init: str = "zero"  # zero | bank | mean (mean: the bank's mean delta W as a frozen offset)

    @property
    def uses_bank(self) -> bool:
        return self.kind in ("eigen", "eigenout", "meanhead") or self.init == "mean"

    @property
    def trains_adapter(self) -> bool:
        return self.kind not in ("head", "meanhead")


def parse_method(name: str) -> Method:
    parts = name.split("/")
    kind = parts[0]
    if kind in ("head", "meanhead") and len(parts) == 1:
        return Method(kind)
    if kind in ("lora", "vera"):
        return Method(kind, r=int(parts[1].lstrip("r")))
    if kind in ("random", "wsvd"):
        rank, init = 8, "zero"
        for part in parts[2:]:
            if part in ("zero", "mean") and kind == "random":
                init = part
            elif part.startswith("r") and part[1:].isdigit():
                rank = int(part[1:])
            else:
                raise SystemExit(f"method {name!r}: {part!r} is neither r<rank> nor an init (zero, mean)")
        return Method(kind, k=int(parts[1].lstrip("k")), r=rank, init=init)
    if kind in ("eigen", "eigenout", "family"):
        rank = int(parts[5].lstrip("r")) if len(parts) > 5 else 8
        if parts[4] not in ("zero", "bank", "mean"):
            raise SystemExit(f"method {name!r}: init must be zero, bank or mean")
        return Method(
            kind,
            r=rank,
            subspace=parts[1],
            k=int(parts[2].lstrip("k")),
            augment=int(parts[3].removeprefix("aug")),
            init=parts[4],
        )
    raise SystemExit(f"unknown method {name!r}")


class Workbench:
    """Holds what runs share: the base encoder (loaded once, deep-copied per run), bank adapters and bases."""

    def __init__(self, config: dict[str, Any]) -> None:
        from edge_eigenlora.pretrained import load_encoder

        self.config = config
        self.encoder, self.tokenizer = load_encoder(config["model"])
        self.order = all_task_order()
        self.families = families()
        self.folder = bank_dir(config)
        self._adapters: dict[str, Any] = {}
        self._bases: dict[tuple, Any] = {}

    def adapters(self, names: Sequence[str]) -> Any:
        """An AdapterBank of the named cached adapters (read once each)."""
        from edge_eigenlora.adapters import AdapterBank, load_bank

        missing = [n for n in names if n not in self._adapters]
        if missing:
            for adapter in load_bank([self.folder / n for n in missing], names=missing).adapters:
                self._adapters[adapter.name] = adapter
        one = load_bank([self.folder / names[0]], names=[names[0]])
        return AdapterBank(
            adapters=tuple(self._adapters[n] for n in names),
            base_model=one.base_model,
            module_shapes=one.module_shapes,
        )

    def basis(self, names: Sequence[str], subspace: str, k: int, augment: int) -> Any:
        from edge_eigenlora.basis import SubspaceConfig, fit_basis

        key = (tuple(names), subspace, k, augment)
        if key not in self._bases:
            cfg = SubspaceConfig(method=subspace, k=k, augment=augment, clip_k=True)  # type: ignore[arg-type]
            self._bases[key] = fit_basis(self.adapters(names), cfg, progress=False)
        return self._bases[key]

    def mean_deltas(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Per module, the mean of the named bank adapters' delta W (scale folded): the bank's mean adapter."""
        key = ("mean", tuple(names))
        if key not in self._bases:
            bank = self.adapters(names)
            self._bases[key] = {
                module: np.mean([a.modules[module].delta() for a in bank.adapters_with(module)], axis=0)
                for module in bank.module_shapes
            }
        return self._bases[key]

    def bank_names(self, method: Method, held_out: str, size: int) -> list[str]:
        if method.kind == "family":
            fam = self.families[held_out]
            return [
                t
                for t in self.order
                if t != held_out and self.families[t] == fam and (self.folder / t / "training.json").is_file()
            ]
        return bank_for(held_out, size, self.order)

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        return dict(self.adapters([self.order[0]]).module_shapes)

    def build_model(
        self, method: Method, held_out: str, size: int, num_labels: int, seed: int
    ) -> tuple[Any, dict]:
        """A TextClassifier for the method; returns it and facts about its basis (explained span etc.)."""
        import torch

        from benchmarks import controls
        from edge_eigenlora.bank import LoraSpec, attach_lora
        from edge_eigenlora.model import TextClassifier, attach_basis

        encoder = copy.deepcopy(self.encoder)
        info: dict[str, Any] = {}
        if method.uses_bank and (method.kind == "meanhead" or method.init == "mean"):
            names = bank_for(held_out, size, self.order)
            add_offset(encoder, self.mean_deltas(names))
            info["bank"] = names
        if method.kind in ("head", "meanhead"):
            for p in encoder.parameters():
                p.requires_grad_(False)
        elif method.kind == "lora":
            targets = lora_spec(self.config).target_modules  # the bank's q/v names (MPNet: q, v)
            encoder = attach_lora(
                encoder, LoraSpec(r=method.r, alpha=2 * method.r, target_modules=targets), seed
            )
        elif method.kind == "vera":
            from peft import VeraConfig, get_peft_model

            torch.manual_seed(seed)
            targets = self.config["bank"]["targets"]
            vera = VeraConfig(r=method.r, target_modules=targets, vera_dropout=0.0, projection_prng_key=seed)
            encoder = get_peft_model(encoder, vera)
        else:
            shapes = self.module_shapes()
            if method.kind == "random":
                basis = controls.random_basis(shapes, method.k, seed=1000 + seed)
            elif method.kind == "wsvd":
                basis = controls.weight_svd_basis(controls.module_weights(encoder, list(shapes)), method.k)
            else:
                names = self.bank_names(method, held_out, size)
                basis = self.basis(names, method.subspace, method.k, method.augment)
                info["bank"] = names
                if method.kind == "eigenout":
                    width = next(iter(basis.modules.values())).width
                    basis = controls.mix_basis(basis, controls.random_basis(shapes, width, seed=1000 + seed))
            info["width"] = next(iter(basis.modules.values())).width
            init = (
                "zero" if method.init == "mean" else method.init
            )  # mean: offset merged above, coefficients 0
            attach_basis(encoder, basis, rank=method.r, init=init, seed=seed)  # type: ignore[arg-type]
        torch.manual_seed(seed)
        return TextClassifier(encoder, num_labels), info


def add_offset(encoder: Any, deltas: dict[str, np.ndarray]) -> None:
    """W += delta per module, in place (frozen): a mean adapter merged into the encoder."""
    import torch

    from edge_eigenlora.model import resolve_module_name

    with torch.no_grad():
        for module, delta in deltas.items():
            linear = encoder.get_submodule(resolve_module_name(encoder, module))
            linear.weight += torch.from_numpy(np.asarray(delta, np.float32))


def lr_candidates(config: dict[str, Any], method: Method, regime: str) -> list[tuple[float, float]]:
    """(adapter lr, head lr) pairs to try: the config's `lr_grid` for the method's kind, else its one setting."""
    train = config["regimes"][regime]["train"]
    lr = config.get("lr_overrides", {}).get(method.kind, train["lr"])
    head_lr = train.get("head_lr") or lr
    grid = config.get("lr_grid")
    if not grid:
        return [(lr, head_lr)]
    if not method.trains_adapter:
        return [(lr, h) for h in grid["head"]]
    kind = method.kind if method.kind in grid else "coefficients"
    return [(x, head_lr) for x in grid[kind]]


def trainable_counts(model: Any) -> tuple[int, int]:
    """(trainable parameters without the head, with the head)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.head.parameters() if p.requires_grad)
    return total - head, total


def run_one(bench: Workbench, method_name: str, task_name: str, seed: int, regime: str, size: int) -> dict:
    """Train one method on one held-out task and measure it; returns the JSON record."""
    import math

    from edge_eigenlora.train import evaluate_classifier, train_classifier

    config = bench.config
    reg = config["regimes"][regime]
    method = parse_method(method_name)
    caps = dict(config["caps"]) | ({"validation": reg["validation"]} if reg.get("validation") else {})
    task = load_capped(task_name, caps, per_class=reg.get("per_class"), seed=seed)
    tried = []
    best: tuple[Any, Any, Any, Any] | None = None
    for lr, head_lr in lr_candidates(config, method, regime):
        train_cfg = _train_config(
            reg["train"] | {"lr": lr, "head_lr": head_lr}, config["max_length"], seed=seed
        )
        model, info = bench.build_model(method, task_name, size, len(task.label_names), seed)
        result = train_classifier(
            model,
            bench.tokenizer,
            (task.train.texts, task.train.labels),
            (task.validation.texts, task.validation.labels),
            train_cfg,
            desc=method_name,
        )
        tried.append(
            {
                "lr": lr,
                "head_lr": head_lr,
                "val_accuracy": result.best_metric,
                "steps": result.steps,
                "seconds": result.seconds,
            }
        )
        if (
            best is None or result.best_metric > best[2].best_metric + 1e-9
        ):  # ties keep the first (smaller) lr
            best = (model, info, result, train_cfg)
    assert best is not None
    model, info, result, train_cfg = best
    adapter_params, with_head = trainable_counts(model)
    test = evaluate_classifier(
        model, bench.tokenizer, task.test.texts, task.test.labels, max_length=config["max_length"]
    )
    steps_per_epoch = math.ceil(len(task.train) / train_cfg.batch_size)
    return {
        "method": method_name,
        "task": task_name,
        "seed": seed,
        "regime": regime,
        "bank_size": size,
        "family": bench.families[task_name],
        "test_accuracy": test["accuracy"],
        "val_accuracy": result.best_metric,
        "params": adapter_params,
        "params_with_head": with_head,
        "steps": result.steps,
        "best_step": result.best_step,
        "seconds": sum(t["seconds"] for t in tried),
        "seconds_per_epoch": result.seconds * steps_per_epoch / max(result.steps, 1),
        "lr": train_cfg.lr,
        "head_lr": train_cfg.head_lr,
        "lr_tried": tried,
        "n_train": len(task.train),
        "n_test": len(task.test),
        "history": result.history,
        "bank": info.get("bank"),
        "width": info.get("width"),
    }


def _key(method: str, task: str, seed: int, regime: str, size: int) -> str:
    return f"{method}|{task}|{seed}|{regime}|{size}"


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by an interruption: ignore it, the run is redone
            continue
    return rows


def grid_runs(config: dict[str, Any]) -> list[tuple[str, str, int, str, int]]:
    """Every run of the config; methods that do not use a bank are run once (bank size 0)."""
    runs: list[tuple[str, str, int, str, int]] = []
    for block in config["grid"]:  # blocks in priority order; within one, seed-major so a cut run stays paired
        for regime in block["regimes"]:
            for seed in block["seeds"]:
                for task in config["held_out"]:
                    for size in block["bank_sizes"]:
                        for method in block["methods"]:
                            run = (method, task, seed, regime, size if parse_method(method).uses_bank else 0)
                            if run not in runs:
                                runs.append(run)
    return runs


def _matches(method: str, pattern: str) -> bool:
    """`=name` matches exactly; anything else is a prefix."""
    return method == pattern[1:] if pattern.startswith("=") else method.startswith(pattern)


def run_grid(
    config: dict[str, Any],
    shard: str = "0/1",
    methods: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
) -> Path:
    """Run every missing (method, task, seed, regime, bank size); append each result as one JSON line.

    shard "k/n": this worker takes runs k, k+n, ... of the grid, so n single-thread workers share the JSONL
    (each line is one small append).
    """
    path = results_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {_key(r["method"], r["task"], r["seed"], r["regime"], r["bank_size"]) for r in read_jsonl(path)}
    index, count = (int(x) for x in shard.split("/"))
    todo = [
        run
        for i, run in enumerate(grid_runs(config))
        if i % count == index
        and _key(*run) not in done
        and (not methods or any(_matches(run[0], m) for m in methods))
        and (not sizes or run[4] in sizes)
    ]
    print(f"grid: {len(done)} runs cached in {path}, {len(todo)} to do")
    if not todo:
        return path
    bench = Workbench(config)
    start = time.perf_counter()
    for i, run in enumerate(todo, 1):
        record = run_one(bench, *run)
        append_jsonl(path, record)
        elapsed = time.perf_counter() - start
        print(
            f"[{i}/{len(todo)}] {run[3]} {run[0]} {run[1]} seed={run[2]} N={run[4]}: "
            f"acc {record['test_accuracy']:.3f} ({record['steps']} steps, {record['seconds']:.1f} s; "
            f"eta {elapsed / i * (len(todo) - i) / 60:.1f} min)",
            flush=True,
        )
    return path


# ----------------------------------------------------------------------------------------------
# Compression of the bank's own adapters
# ----------------------------------------------------------------------------------------------


def head_only_probe(bench: Workbench, task: Any, seed: int = 0) -> float:
    """Head-only test accuracy on frozen (eval-mode) mean-pooled features, trained to convergence on them.

    The reference a reconstruction must beat: a projection that keeps nothing of the adapter still has the
    encoder and a head. Cheap: one forward pass per example, then a logistic regression with early stopping.
    """
    import torch
    import torch.nn.functional as F

    from edge_eigenlora.model import TextClassifier

    model = TextClassifier(bench.encoder, len(task.label_names)).eval()
    max_length = bench.config["max_length"]

    @torch.no_grad()
    def features(split: Any) -> tuple[Any, Any]:
        out = []
        for i in range(0, len(split), 64):
            batch = bench.tokenizer(
                list(split.texts[i : i + 64]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            out.append(model.pooled(batch["input_ids"], batch["attention_mask"]))
        return torch.cat(out), torch.as_tensor(split.labels)

    (xtr, ytr), (xva, yva), (xte, yte) = features(task.train), features(task.validation), features(task.test)
    torch.manual_seed(seed)
    head = torch.nn.Linear(xtr.shape[1], len(task.label_names))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    best, best_state, bad = -1.0, None, 0
    for epoch in range(400):
        opt.zero_grad()
        F.cross_entropy(head(xtr), ytr).backward()
        opt.step()
        if epoch % 10 == 9:
            with torch.no_grad():
                acc = (head(xva).argmax(-1) == yva).float().mean().item()
            if acc > best + 1e-9:
                best, bad, best_state = acc, 0, {k: v.clone() for k, v in head.state_dict().items()}
            else:
                bad += 1
                if bad >= 8:
                    break
    head.load_state_dict(best_state)  # type: ignore[arg-type]
    with torch.no_grad():
        return (head(xte).argmax(-1) == yte).float().mean().item()


def run_compression(config: dict[str, Any]) -> Path:
    """Project bank adapters onto their bank's basis (in-sample and leave-one-out) for each K; cached JSONL."""
    from edge_eigenlora.compress import compress_adapter
    from edge_eigenlora.model import TextClassifier, apply_task, attach_basis
    from edge_eigenlora.train import evaluate_classifier

    comp = config.get("compression")
    path = results_path(config).with_suffix(".compression.jsonl")
    if not comp:
        return path
    done = {(r["adapter"], r["k"], r["variant"]) for r in read_jsonl(path)}
    bench = Workbench(config)
    bank = bench.order[: comp["bank_size"]]
    chosen = comp.get("adapters") or bank[: comp.get("max_adapters") or len(bank)]
    caps = config["bank"]["caps"]
    start = time.perf_counter()
    head_acc: dict[str, float] = {}
    # K-major, largest K first: a cut run still has the K=32 in-sample numbers the target is about.
    for k in sorted(comp["ks"], reverse=True):
        for variant in ("in_sample", "leave_one_out"):
            for name in chosen:
                if (name, k, variant) in done:
                    continue
                task = load_capped(name, caps)
                record = json.loads((bench.folder / name / "training.json").read_text())
                lora_bytes = (bench.folder / name / "adapter_model.safetensors").stat().st_size
                head_bytes = (bench.folder / name / "classifier_head.safetensors").stat().st_size
                if name not in head_acc:
                    head_acc[name] = head_only_probe(bench, task)
                names = bank if variant == "in_sample" else [t for t in bank if t != name]
                basis = bench.basis(names, comp["method"], k, 0)
                adapter = bench.adapters([name]).adapters[0]
                result = compress_adapter(adapter, basis)
                encoder = copy.deepcopy(bench.encoder)
                attach_basis(encoder, basis, rank=adapter.modules[next(iter(adapter.modules))].rank)
                model = TextClassifier(encoder, len(task.label_names))
                apply_task(model, result.task)
                acc = evaluate_classifier(
                    model, bench.tokenizer, task.test.texts, task.test.labels, max_length=config["max_length"]
                )["accuracy"]
                row = {
                    "adapter": name,
                    "family": bench.families[name],
                    "k": k,
                    "variant": variant,
                    "accuracy": acc,
                    "lora_accuracy": record["test_accuracy"],
                    "head_accuracy": head_acc[name],
                    "delta_error": result.mean_error,
                    "bytes_coefficients": 4 * result.task.num_parameters(include_head=False),
                    "bytes_head": 4 * (result.task.num_parameters() - result.task.num_parameters(False)),
                    "bytes_lora_file": lora_bytes,
                    "bytes_head_file": head_bytes,
                }
                append_jsonl(path, row)
                print(
                    f"compress {name} K={k} {variant}: acc {acc:.3f} (LoRA {record['test_accuracy']:.3f}, "
                    f"head {head_acc[name]:.3f}), delta error {result.mean_error:.2f} "
                    f"[{time.perf_counter() - start:.0f} s]",
                    flush=True,
                )
    return path


# ----------------------------------------------------------------------------------------------
# Diagnostics and results
# ----------------------------------------------------------------------------------------------


def built_bank_size(config: dict[str, Any]) -> int | None:
    """The largest bank size of the grid whose adapters are all trained: the diagnostics of a partial run
    (e.g. `--bank-sizes 8` first) use it; None when no bank of the grid is complete."""
    folder, order = bank_dir(config), all_task_order()
    for size in sorted({s for block in config["grid"] for s in block["bank_sizes"]}, reverse=True):
        names = {n for task in config["held_out"] for n in bank_for(task, size, order)}
        if all((folder / n / "training.json").is_file() for n in names):
            return size
    return None


def span_diagnostics(config: dict[str, Any]) -> list[dict]:
    """Why a basis does or does not help: the share of a held-out task's own LoRA delta inside the bank's span.

    For each held-out task (whose own adapter the bank folder holds, trained like every bank adapter but never
    part of its own bank) and bank size: the squared-norm share of its balanced factors captured by the bank's
    K-dimensional span, output side, input side and both (the delta W), against a random span of the same K.
    """
    from benchmarks import controls
    from edge_eigenlora import subspace

    bench = _light_bench(config)
    k = config.get("diagnostics_k", 32)
    size = built_bank_size(config)
    sizes = [size] if size else []  # one bank size: gauge-free fits cost SVDs
    rows = []
    for task in config["held_out"]:
        if not (bench.folder / task / "training.json").is_file():
            continue
        own = bench.adapters([task]).adapters[0]
        rand = controls.random_basis(dict(bench.adapters([task]).module_shapes), k, seed=7)
        for label, size in [(f"bank {s}", s) for s in sizes] + [("random", 0)]:
            for method in ("gauge_free", "factors") if size else ("random",):
                if size:
                    names = bench.bank_names(parse_method(f"eigen/{method}/k{k}/aug0/zero"), task, size)
                    basis = bench.basis(names, method, k, 0)
                else:
                    basis = rand
                out_share, in_share, both = [], [], []
                for module, f in own.modules.items():
                    mb = basis.modules[module]
                    A, B = subspace.balanced_factors(f.A, f.B)
                    B2, A2 = float(np.sum(B**2)), float(np.sum(A**2))
                    out_share.append(float(np.sum((mb.U_B.T @ B) ** 2)) / B2)
                    in_share.append(float(np.sum((A @ mb.U_A) ** 2)) / A2)
                    delta = B @ A
                    core = mb.U_B.T @ delta @ mb.U_A
                    both.append(float(np.sum(core**2)) / float(np.sum(delta**2)))
                rows.append(
                    {
                        "task": task,
                        "basis": label,
                        "method": method,
                        "bank_size": size,
                        "k": k,
                        "output_share": float(np.mean(out_share)),
                        "input_share": float(np.mean(in_share)),
                        "delta_share": float(np.mean(both)),
                    }
                )
    return rows


def spectrum_diagnostics(config: dict[str, Any]) -> list[dict]:
    """Explained variance of the bank stack at K, per side and method: a flat spectrum means little sharing."""
    from edge_eigenlora import subspace

    bench = _light_bench(config)
    size = built_bank_size(config)
    if size is None:
        return []
    names = bank_for(config["held_out"][0], size, bench.order)
    rows = []
    for method in ("gauge_free", "factors"):
        basis = bench.basis(names, method, 32, 0)
        width = min(min(m.singular_values_A.size, m.singular_values_B.size) for m in basis.modules.values())
        for k in (k for k in (8, 16, 32) if k <= width):  # a small bank's stack has fewer directions
            ev_a = [subspace.explained_variance(m.singular_values_A)[k - 1] for m in basis.modules.values()]
            ev_b = [subspace.explained_variance(m.singular_values_B)[k - 1] for m in basis.modules.values()]
            rows.append(
                {
                    "bank_size": size,
                    "method": method,
                    "k": k,
                    "explained_A": float(np.mean(ev_a)),
                    "explained_B": float(np.mean(ev_b)),
                    "stack_columns": 8 * size,
                }
            )
    return rows


def init_drift_diagnostics(config: dict[str, Any]) -> list[dict]:
    """Training length of the bank, measured: how far each adapter's factors moved from PEFT's seeded init.

    PEFT starts A random (Kaiming) and B at zero. An A that moved little is still mostly its random init, so the
    bank's input-side span is close to a random one whatever the tasks were. The init is rebuilt exactly
    (`attach_lora` with the adapter's recorded seed), so no extra file is kept.
    """
    import copy

    from safetensors.numpy import load_file

    from edge_eigenlora.bank import attach_lora
    from edge_eigenlora.pretrained import load_encoder

    folder = bank_dir(config)
    size = built_bank_size(config)
    if size is None:
        return []
    names = [n for n in bank_for(config["held_out"][0], size, all_task_order()) if (folder / n).is_dir()]
    if not names:
        return []
    encoder, _ = load_encoder(config["model"])
    spec = lora_spec(config)
    rows = []
    for name in names:
        record = json.loads((folder / name / "training.json").read_text())
        init = {
            k: v.detach().numpy()
            for k, v in attach_lora(copy.deepcopy(encoder), spec, record["seed"]).state_dict().items()
            if "lora_A" in k
        }
        trained = load_file(str(folder / name / "adapter_model.safetensors"))
        drift, b_over_a = [], []
        for key, a0 in init.items():
            saved = key.replace(".default", "")
            if saved not in trained:
                continue
            a = trained[saved]
            b = trained[saved.replace("lora_A", "lora_B")]
            drift.append(float(np.linalg.norm(a - a0) / np.linalg.norm(a0)))
            b_over_a.append(float(np.linalg.norm(b) / np.linalg.norm(a)))
        if drift:
            rows.append(
                {
                    "task": name,
                    "steps": record["steps"],
                    "a_drift": float(np.mean(drift)),
                    "a_drift_max": float(np.max(drift)),
                    "b_over_a": float(np.mean(b_over_a)),
                }
            )
    return rows


class _LightBench(Workbench):
    """A Workbench without the encoder, for numpy-only diagnostics."""

    def __init__(self, config: dict[str, Any]) -> None:  # noqa: D107 - no encoder load
        self.config = config
        self.order = all_task_order()
        self.families = families()
        self.folder = bank_dir(config)
        self._adapters = {}
        self._bases = {}


_LIGHT: dict[str, Workbench] = {}


def _light_bench(config: dict[str, Any]) -> Workbench:
    """One shared numpy-only Workbench per config, so diagnostics reuse fitted bases."""
    key = _digest(config)
    if key not in _LIGHT:
        _LIGHT[key] = _LightBench(config)
    return _LIGHT[key]


def bank_records(config: dict[str, Any]) -> list[dict]:
    folder = bank_dir(config)
    rows = []
    for path in sorted(folder.glob("*/training.json")):
        r = json.loads(path.read_text())
        rows.append(
            {
                k: r[k]
                for k in (
                    "task",
                    "family",
                    "seed",
                    "steps",
                    "best_step",
                    "stopped_early",
                    "seconds",
                    "val_accuracy",
                    "test_accuracy",
                )
            }
        )
    return rows


def write_results(config: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Gather runs, compression rows, diagnostics and bank records into one JSON; then render the report."""
    from benchmarks import report

    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_jsonl(results_path(config))
    expected = {_key(*run) for run in grid_runs(config)}
    rows = [
        r for r in rows if _key(r["method"], r["task"], r["seed"], r["regime"], r["bank_size"]) in expected
    ]
    summary = {
        "config": config,
        "runs_expected": len(expected),
        "runs": rows,
        "compression": read_jsonl(results_path(config).with_suffix(".compression.jsonl")),
        "bank": bank_records(config),
        "span": span_diagnostics(config),
        "spectrum": spectrum_diagnostics(config),
        "init_drift": init_drift_diagnostics(config),
        "durations": _durations(config),
    }
    path = out_dir / f"{config['name']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(path)
    report.render(summary, out_dir)
    print(f"results: {path}")
    return path


def _durations(config: dict[str, Any]) -> dict[str, float]:
    """Compute seconds spent (sums of measured training/eval times, not wall clock across restarts)."""
    runs = read_jsonl(results_path(config))
    timing = read_jsonl(results_path(config).with_suffix(".timing.jsonl"))
    out = {
        "bank_train_seconds": float(sum(r["seconds"] for r in bank_records(config))),
        "grid_train_seconds": float(sum(r["seconds"] for r in runs)),
    }
    for row in timing:
        out[row["stage"] + "_wall_seconds"] = out.get(row["stage"] + "_wall_seconds", 0.0) + row["seconds"]
    return out


def log_timing(config: dict[str, Any], stage: str, seconds: float) -> None:
    path = results_path(config).with_suffix(".timing.jsonl")
    append_jsonl(path, {"stage": stage, "seconds": seconds, "time": time.time()})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config",
        default="default",
        help="quick | default | long | full | mpnet | mpnet_full (benchmarks/configs/) or a JSON path",
    )
    parser.add_argument("--stage", default="all", choices=["bank", "grid", "compress", "report", "all"])
    parser.add_argument("--tasks", nargs="*", help="bank stage: train adapters for these tasks only")
    parser.add_argument(
        "--targets", choices=["qv", "all-linear"], help="bank LoRA targets (default: the config's, q and v)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: the config's)")
    parser.add_argument(
        "--model", help="override the config's model (a hub id the package knows, or a folder)"
    )
    parser.add_argument(
        "--methods", nargs="*", help="grid stage: only methods starting with these prefixes (=name: exactly)"
    )
    parser.add_argument("--bank-sizes", nargs="*", type=int, help="grid stage: only these bank sizes")
    parser.add_argument(
        "--shard",
        default="0/1",
        help="grid stage: run only runs i with i %% n == k (k/n), for parallel workers",
    )
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.model:
        config["model"] = args.model
    if args.targets:
        configured = config["bank"]["targets"]  # q/v by the config's names (BERT: query/value, MPNet: q/v)
        qv = configured if isinstance(configured, list) else ["query", "value"]
        config["bank"]["targets"] = "all-linear" if args.targets == "all-linear" else qv
    import torch

    torch.set_num_threads(args.threads or config.get("threads", 2))
    for stage, fn in (
        ("bank", lambda: build(config, args.tasks)),
        ("grid", lambda: run_grid(config, args.shard, args.methods, args.bank_sizes)),
        ("compress", lambda: run_compression(config)),
    ):
        if args.stage in (stage, "all"):
            start = time.perf_counter()
            fn()
            log_timing(config, stage, time.perf_counter() - start)
    if args.stage in ("report", "all"):
        write_results(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
