"""Train a new task on the device with the bundle's train-step graph (loss + gradients from onnxruntime).

numpy AdamW, mini-batches with gradient accumulation, early stopping on a validation split, a checkpoint
every N optimizer steps (atomic; a killed process resumes losing at most N steps), and a guard that rolls back
to the last good coefficients and lowers the learning rate when the loss turns NaN or explodes.

The recipe mirrors the workstation's (`edge_eigenlora.train`): the same init (alpha_B = 0, alpha_A uniform,
head N(0, 0.02)), AdamW, a seeded permutation per epoch from one `default_rng(seed)`, early stopping on
validation accuracy with the best weights restored. One difference: the exported graph has no dropout.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_eigenlora import bundle as contract
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import read_safetensors, save_safetensors_atomic
from edge_eigenlora.runtime.optim import AdamW
from edge_eigenlora.runtime.session import DeviceRuntime, LoadedTask
from edge_eigenlora.runtime.tokenize import pad_ids
from edge_eigenlora.task import Task, save_task

__all__ = [
    "CHECKPOINT_FORMAT",
    "DeviceTrainConfig",
    "Examples",
    "GradientLoop",
    "GradientTrainer",
    "PARAMS",
    "TrainOutcome",
    "check_labels",
    "cross_entropy",
    "embed_examples",
    "evaluate",
    "init_coefficients",
    "init_params",
    "make_task",
    "probe_head",
    "split_examples",
    "stderr_log",
    "tokenize_examples",
    "write_task",
]

CHECKPOINT_FORMAT = "edge-eigenlora-device-checkpoint"
PARAMS = contract.TRAIN_PARAMS
HeadInit = Literal["random", "probe"]
Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class DeviceTrainConfig:
    """How to train on the device. Steps are optimizer steps (each = `accumulation` micro-batches).

    eval_every: optimizer steps between validation runs (None: once per epoch); early stopping after
    `patience` evaluations without a better validation accuracy. checkpoint_every: optimizer steps between
    checkpoints. explode_factor: a step whose loss exceeds this multiple of the recent median loss counts as
    exploding (like a NaN): the trainer restores the last good state and multiplies the learning rate by
    `lr_backoff`, at most `max_rollbacks` times. head_init "probe": start the head from a ridge-regression
    probe on the frozen embeddings (one forward pass over the training set) instead of N(0, 0.02).
    """

    epochs: int = 10
    batch_size: int = 32
    accumulation: int = 1
    lr: float = 5e-3
    head_lr: float | None = None
    weight_decay: float = 0.0
    max_steps: int | None = None
    eval_every: int | None = None
    patience: int = 3
    checkpoint_every: int = 10
    validation_fraction: float = 0.15
    seed: int = 0
    explode_factor: float = 8.0
    lr_backoff: float = 0.5
    max_rollbacks: int = 5
    head_init: HeadInit = "random"
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        for name in (
            "epochs",
            "batch_size",
            "accumulation",
            "patience",
            "checkpoint_every",
            "max_rollbacks",
            "eval_batch_size",
        ):
            if getattr(self, name) < 1:
                raise EdgeEigenLoraError(f"DeviceTrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if not self.lr > 0 or (self.head_lr is not None and not self.head_lr > 0):
            raise EdgeEigenLoraError(
                f"DeviceTrainConfig: learning rates must be > 0, got lr={self.lr}, head_lr={self.head_lr}."
            )
        if not 0 <= self.validation_fraction < 1:
            raise EdgeEigenLoraError(
                f"DeviceTrainConfig.validation_fraction must be in [0, 1), got {self.validation_fraction}."
            )
        if not 0 < self.lr_backoff < 1 or not self.explode_factor > 1:
            raise EdgeEigenLoraError(
                "DeviceTrainConfig: lr_backoff must be in (0, 1) and explode_factor > 1."
            )
        if self.head_init not in ("random", "probe"):
            raise EdgeEigenLoraError(
                f"DeviceTrainConfig.head_init must be 'random' or 'probe', got {self.head_init!r}."
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise EdgeEigenLoraError(f"DeviceTrainConfig.max_steps must be >= 1, got {self.max_steps}.")


@dataclass
class Examples:
    """Tokenized examples: token id rows (unpadded) and integer labels."""

    rows: list[list[int]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: Sequence[int], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, mask = pad_ids([self.rows[i] for i in idx], pad_id)
        return ids, mask, self.labels[np.asarray(idx)]

    def weight(self, labels: np.ndarray) -> int:
        """What a micro-batch's mean loss is averaged over: its rows."""
        return len(labels)

    def digest(self) -> str:
        h = hashlib.sha256()
        for row, label in zip(self.rows, self.labels.tolist(), strict=True):
            h.update(np.asarray(row, np.int64).tobytes() + b"|" + str(label).encode() + b"\n")
        return h.hexdigest()


def split_examples(
    name: str,
    num_labels: int,
    train: tuple[Sequence[str], Sequence[int]],
    validation: tuple[Sequence[str], Sequence[int]] | None,
    validation_fraction: float,
    seed: int,
) -> tuple[list[str], list[int], tuple[Sequence[str], Sequence[int]] | None]:
    """Check the examples and, when no validation split is given, hold out a seeded fraction for one."""
    if num_labels < 2:
        raise EdgeEigenLoraError(f"task {name!r}: a classifier needs at least 2 labels, got {num_labels}.")
    texts, labels = list(train[0]), list(train[1])
    if len(texts) < 2:
        raise EdgeEigenLoraError(
            f"task {name!r}: {len(texts)} training examples; give at least two labelled texts."
        )
    if validation is None and validation_fraction > 0 and len(texts) >= 4:
        order = np.random.default_rng(seed).permutation(len(texts))
        n_val = max(1, round(len(texts) * validation_fraction))
        val_idx, train_idx = order[:n_val], order[n_val:]
        validation = ([texts[i] for i in val_idx], [labels[i] for i in val_idx])
        texts, labels = [texts[i] for i in train_idx], [labels[i] for i in train_idx]
    return texts, labels, validation


def tokenize_examples(
    runtime: DeviceRuntime, texts: Sequence[str], labels: Sequence[int], num_labels: int, where: str
) -> Examples:
    """Tokenize once (truncation warns) and check every label against the head's range."""
    labels_arr = np.asarray(list(labels), dtype=np.int64)
    if len(texts) != labels_arr.size:
        raise EdgeEigenLoraError(f"{where}: {len(texts)} texts but {labels_arr.size} labels.")
    check_labels(labels_arr, num_labels, where)
    if not len(texts):
        return Examples([], labels_arr)
    tok = runtime.tokenizer
    rows = [e.ids for e in _encode_all(tok, list(texts), where)]
    return Examples(rows, labels_arr)


def _encode_all(tok: Any, texts: list[str], where: str) -> list[Any]:
    import warnings

    from edge_eigenlora.runtime.tokenize import TruncationWarning

    encodings = tok.encode_batch(texts)
    long = [i for i, e in enumerate(encodings) if e.overflowing]
    if long:
        what = where.replace(" labels", " texts")
        message = (
            f"{len(long)} of {len(texts)} {what} are longer than max_length {tok.max_length} tokens "
            f"(first: text {long[0]}); "
        )
        if tok.on_long == "error":
            raise EdgeEigenLoraError(message + "shorten them, or allow truncation (on_long='warn').")
        if tok.on_long == "warn":
            warnings.warn(message + "they were truncated.", TruncationWarning, stacklevel=3)
    return encodings


def check_labels(labels: np.ndarray, num_labels: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        bad = int(labels.max() if labels.max() >= num_labels else labels.min())
        raise EdgeEigenLoraError(
            f"{where}: label {bad} is outside the head's range 0..{num_labels - 1}. Give labels as class indices "
            f"below the number of labels ({num_labels}), or start a new task with more labels."
        )


def init_coefficients(layout: contract.CoefficientLayout, rng: np.random.Generator) -> np.ndarray:
    """LoRA's init moved into the subspace: alpha_A uniform(+-1/sqrt(width)), alpha_B = 0 (so delta W = 0)."""
    parts = []
    for m in layout.modules:
        width = layout.widths[m]
        bound = 1.0 / math.sqrt(width)
        parts.append(rng.uniform(-bound, bound, (width, layout.rank)).astype(np.float32).ravel())
        parts.append(np.zeros(width * layout.rank, np.float32))
    return np.concatenate(parts)


def init_params(
    runtime: DeviceRuntime, num_labels: int, seed: int, init_task: LoadedTask | None = None
) -> dict[str, np.ndarray]:
    """Starting point: a given task's values, or LoRA's init moved into the subspace (delta W = 0)."""
    if init_task is not None:
        if init_task.num_labels != num_labels:
            raise EdgeEigenLoraError(
                f"task {init_task.name!r} has {init_task.num_labels} labels but the data has {num_labels}; "
                "start a new task instead of continuing this one."
            )
        return {
            contract.COEFFICIENTS: init_task.coefficients.copy(),
            contract.HEAD_WEIGHT: init_task.head_weight.copy(),
            contract.HEAD_BIAS: init_task.head_bias.copy(),
        }
    rng = np.random.default_rng(seed)
    coefficients = init_coefficients(runtime.layout, rng)
    head = (rng.standard_normal((num_labels, runtime.hidden_size)) * 0.02).astype(np.float32)
    return {
        contract.COEFFICIENTS: coefficients,
        contract.HEAD_WEIGHT: head,
        contract.HEAD_BIAS: np.zeros(num_labels, np.float32),
    }


def probe_head(
    runtime: DeviceRuntime,
    params: dict[str, np.ndarray],
    data: Examples,
    num_labels: int,
    batch_size: int = 64,
    ridge: float = 1.0,
) -> None:
    """Set the head to a ridge-regression probe on the pooled embeddings (forward passes only)."""
    feats = embed_examples(runtime, params[contract.COEFFICIENTS], data, batch_size)
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    x = (feats - mu) / sd
    y = np.eye(num_labels, dtype=np.float32)[data.labels] - 1.0 / num_labels
    w = np.linalg.solve(x.T @ x + ridge * len(x) * np.eye(x.shape[1]), x.T @ y).T  # [labels, hidden]
    # Least squares gives the direction, not the temperature: pick the logit scale with the lowest training loss.
    base = x @ w.T
    scales = np.geomspace(0.1, 100.0, 61)
    scale = float(scales[int(np.argmin([cross_entropy(base * s, data.labels).mean() for s in scales]))])
    params[contract.HEAD_WEIGHT] = (w / sd * scale).astype(np.float32)
    params[contract.HEAD_BIAS] = (-(w / sd * scale) @ mu).astype(np.float32)


def embed_examples(
    runtime: DeviceRuntime, coefficients: np.ndarray, data: Examples, batch_size: int = 64
) -> np.ndarray:
    eye = np.eye(runtime.hidden_size, dtype=np.float32)
    zero = np.zeros(runtime.hidden_size, np.float32)
    pad = runtime.tokenizer.pad_id
    out = []
    for i in range(0, len(data), batch_size):
        ids, mask, _ = data.batch(range(i, min(i + batch_size, len(data))), pad)
        params = {contract.COEFFICIENTS: coefficients, contract.HEAD_WEIGHT: eye, contract.HEAD_BIAS: zero}
        out.append(runtime.logits_with(ids, mask, params))
    return np.concatenate(out)


def evaluate(
    runtime: DeviceRuntime,
    params: dict[str, np.ndarray],
    data: Examples,
    batch_size: int = 64,
    graph: str = contract.SHARED,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy with the inference graph (shared, or factored through the factors graph;
    see `DeviceRuntime.logits_with`) or the train-step graph (graph=TRAIN_STEP)."""
    if not len(data):
        return {"accuracy": float("nan"), "loss": float("nan")}
    pad = runtime.tokenizer.pad_id
    correct, loss_sum = 0, 0.0
    for i in range(0, len(data), batch_size):
        ids, mask, y = data.batch(range(i, min(i + batch_size, len(data))), pad)
        if graph == contract.TRAIN_STEP:
            logits = runtime.train_step(
                ids,
                mask,
                y,
                params[contract.COEFFICIENTS],
                params[contract.HEAD_WEIGHT],
                params[contract.HEAD_BIAS],
            )[contract.LOGITS]
        else:
            logits = runtime.logits_with(ids, mask, params)
        loss_sum += float(cross_entropy(logits, y).sum())
        correct += int((logits.argmax(-1) == y).sum())
    return {"accuracy": correct / len(data), "loss": loss_sum / len(data)}


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy (stable log-softmax)."""
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


def make_task(
    runtime: DeviceRuntime,
    name: str,
    params: dict[str, np.ndarray],
    label_names: Sequence[str],
    info: dict[str, Any],
) -> Task:
    contract.check_task_name(name)
    return Task(
        name=name,
        basis_fingerprint=runtime.basis_fingerprint,
        coefficients=contract.unpack(params[contract.COEFFICIENTS], runtime.layout),
        kind="classification",
        labels=list(label_names),
        head_weight=params[contract.HEAD_WEIGHT].copy(),
        head_bias=params[contract.HEAD_BIAS].copy(),
        info=info,
    )


@dataclass
class TrainOutcome:
    """best_metric: the best validation accuracy (classifier) or completion loss (language model)."""

    task: Task
    best_metric: float
    best_step: int
    steps: int
    seconds: float
    stopped_early: bool
    resumed_from: int | None
    rollbacks: int
    history: list[dict[str, Any]] = field(default_factory=list)


class GradientLoop:
    """The train-step loop every model kind shares: AdamW over `param_names`, gradient accumulation weighted by
    what each micro-batch's loss averages over, validation with early stopping and the best weights restored, a
    checkpoint every N steps (atomic, fingerprinted, resumable after SIGKILL) and rollback with a learning-rate
    back-off on NaN or an exploding loss.

    A subclass sets `runtime`, `config`, `name`, `train`, `val` (examples with `__len__`, `batch(idx, pad)`,
    `weight(labels)` and `digest()`), `param_names`, `checkpoint`, `resume`, `log`, `pad`, and implements the
    hooks below. `runtime.train_step(ids, mask, labels, **params)` must return `loss` and `grad_<param>`.
    """

    runtime: Any
    config: DeviceTrainConfig
    name: str
    train: Any
    val: Any
    param_names: tuple[str, ...]
    checkpoint: Path | None
    resume: bool
    log: Log
    pad: int
    state: dict[str, Any]  # the running state of `fit` (params, optimizer, history...)
    higher_is_better = True  # the validation metric: accuracy (higher) or loss (lower)
    metric_name = "val_accuracy"

    # -- hooks ------------------------------------------------------------------------------------------
    def initial_params(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def initial_history(self, params: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """History entries of a fresh run before its first step (e.g. the starting validation loss)."""
        return []

    def validate(self, params: dict[str, np.ndarray]) -> dict[str, float]:
        """Validation metrics of `params`; must hold `self.metric_name` (the early-stopping metric)."""
        raise NotImplementedError

    def build_task(self, params: dict[str, np.ndarray], info: dict[str, Any]) -> Task:
        raise NotImplementedError

    def fingerprint_extra(self) -> dict[str, Any]:
        """What else a checkpoint must have been written for (compared on resume)."""
        return {}

    def checkpoint_extra(self) -> dict[str, Any]:
        """Extra metadata stored in a checkpoint (not compared)."""
        return {}

    def task_info(self) -> dict[str, Any]:
        """Extra fields of the trained task's info."""
        return {}

    def learning_rates(self) -> dict[str, float]:
        return {k: self.config.lr for k in self.param_names}

    # -- schedule ---------------------------------------------------------------------------------------
    @property
    def micro_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.config.batch_size)

    @property
    def total_steps(self) -> int:
        total = math.ceil(self.config.epochs * self.micro_per_epoch / self.config.accumulation)
        return min(total, self.config.max_steps) if self.config.max_steps else total

    @property
    def eval_every(self) -> int:
        return self.config.eval_every or max(1, math.ceil(self.micro_per_epoch / self.config.accumulation))

    def _order(self, epoch: int) -> np.ndarray:
        """The workstation's shuffle: one default_rng(seed), one permutation per epoch, replayed on resume."""
        if getattr(self, "_orders_epoch", None) != epoch:
            rng = np.random.default_rng(self.config.seed)
            for _ in range(epoch + 1):
                order = rng.permutation(len(self.train))
            self._orders_epoch, self._order_cache = epoch, order
        return self._order_cache

    def _micro_indices(self, micro: int) -> np.ndarray:
        epoch, slot = divmod(micro, self.micro_per_epoch)
        bs = self.config.batch_size
        return self._order(epoch)[slot * bs : (slot + 1) * bs]

    def micro_batch(self, micro: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, attention_mask, labels) of micro-batch number `micro` (epochs follow one another)."""
        return self.train.batch(self._micro_indices(micro), self.pad)

    # -- one optimizer step -----------------------------------------------------------------------------
    def loss_and_grads(
        self, params: dict[str, np.ndarray], micro_start: int
    ) -> tuple[float, dict[str, np.ndarray], int]:
        """Mean loss and gradients over `accumulation` micro-batches, each weighted by what its loss averages
        over (rows for a classifier, labelled tokens for a language model)."""
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        total, loss_sum, used = 0, 0.0, 0
        for j in range(self.config.accumulation):
            ids, mask, y = self.micro_batch(micro_start + j)
            used += 1
            n = self.train.weight(y)
            if n == 0:
                continue
            out = self.runtime.train_step(ids, mask, y, **params)
            loss_sum += float(out[contract.LOSS]) * n
            for k in self.param_names:
                grads[k] += out[contract.GRAD_PREFIX + k] * n
            total += n
        if total == 0:
            return float("nan"), grads, used
        for k in grads:
            grads[k] /= total
        return loss_sum / total, grads, used

    # -- checkpoints ------------------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {
            "data": self.train.digest(),
            "val": self.val.digest(),
            "basis": self.runtime.basis_fingerprint,
            "size": self.runtime.layout.size,
            **self.fingerprint_extra(),
            "batch_size": c.batch_size,
            "accumulation": c.accumulation,
            "seed": c.seed,
            "name": self.name,
        }

    def _save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.checkpoint is None:
            return
        tensors = {f"params.{k}": v for k, v in state["params"].items()}
        tensors.update({f"best.{k}": v for k, v in state["best"].items()})
        tensors.update(state["opt"].state_arrays())
        meta = {
            k: state[k] for k in ("step", "micro", "best_metric", "best_step", "bad", "rollbacks", "history")
        }
        meta.update(
            adam_steps=state["opt"].step_count,
            lr_scale=state["opt"].scale,
            fingerprint=self._fingerprint(),
            config=asdict(self.config),
            **self.checkpoint_extra(),
        )
        save_safetensors_atomic(
            self.checkpoint, tensors, {"format": CHECKPOINT_FORMAT, "state": json.dumps(meta)}
        )

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if self.checkpoint is None or not self.checkpoint.exists() or not self.resume:
            return None
        fix = "Delete it, or pass --no-resume to start over."
        tensors, meta = read_safetensors(self.checkpoint, "checkpoint", fix=fix)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise EdgeEigenLoraError(
                f"{self.checkpoint}: not a device training checkpoint; delete it or choose another path."
            )
        try:
            state = json.loads(meta["state"])
            saved_fingerprint = dict(state["fingerprint"])
            saved_config = dict(state.get("config") or {})
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            raise EdgeEigenLoraError(
                f"{self.checkpoint}: the checkpoint's metadata field 'state' is damaged ({str(exc)[:100]}). {fix}"
            ) from None
        mine = self._fingerprint()
        diff = [k for k in mine if saved_fingerprint.get(k) != mine[k]]
        if diff:
            raise EdgeEigenLoraError(
                f"{self.checkpoint}: checkpoint was written for other training settings or data (differs in "
                f"{', '.join(diff)}); delete it, pass --no-resume, or resume with the same data and settings."
            )
        changed = [
            k
            for k in ("lr", "head_lr", "weight_decay")
            if k in saved_config and saved_config[k] != getattr(self.config, k)
        ]
        if changed:
            was = ", ".join(f"{k}={saved_config[k]}" for k in changed)
            now = ", ".join(f"{k}={getattr(self.config, k)}" for k in changed)
            raise EdgeEigenLoraError(
                f"{self.checkpoint}: the checkpoint was trained with {was}; this run asks for {now}. Resuming "
                "would silently mix two learning-rate schedules (AdamW's moments were built with the old one): "
                "resume with the old value (--lr / --head-lr), or pass --no-resume to start over with the new one."
            )
        try:
            opt = self._optimizer()
            opt.load_state_arrays(tensors, state["adam_steps"], state["lr_scale"])
            state["opt"] = opt
            state["params"] = {k: tensors[f"params.{k}"].copy() for k in self.param_names}
            state["best"] = {
                k: tensors[f"best.{k}"].copy() for k in self.param_names if f"best.{k}" in tensors
            }
            for k in ("step", "micro", "best_metric", "best_step", "bad", "rollbacks", "history"):
                state[k]  # noqa: B018  (present, or the checkpoint is incomplete)
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeEigenLoraError(
                f"{self.checkpoint}: the checkpoint is incomplete (missing or wrong {str(exc)[:100]}). {fix}"
            ) from None
        return state

    def _optimizer(self) -> AdamW:
        return AdamW(self.learning_rates(), weight_decay=self.config.weight_decay)

    def _better(self, metric: float, best: float) -> bool:
        return metric > best + 1e-9 if self.higher_is_better else metric < best - 1e-9

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> TrainOutcome:
        c = self.config
        start = time.perf_counter()
        state = self._load_checkpoint()
        resumed_from = None
        if state is None:
            params = self.initial_params()
            state = {
                "params": params,
                "best": {},
                "opt": self._optimizer(),
                "step": 0,
                "micro": 0,
                "best_metric": -math.inf if self.higher_is_better else math.inf,
                "best_step": 0,
                "bad": 0,
                "rollbacks": 0,
                "history": self.initial_history(params),
            }
        else:
            resumed_from = int(state["step"])
            self.log(f"resuming task {self.name!r} from checkpoint {self.checkpoint} at step {resumed_from}")
        self.state = state
        params, opt = state["params"], state["opt"]
        recent: list[float] = [h["train_loss"] for h in state["history"] if "train_loss" in h][-10:]
        stopped = False
        running: list[float] = []
        while state["step"] < self.total_steps and not stopped:
            loss, grads, used = self.loss_and_grads(params, state["micro"])
            state["micro"] += used
            finite = math.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
            ref = float(np.median(recent)) if len(recent) >= 3 else None
            if not finite or (ref is not None and loss > c.explode_factor * max(ref, 1e-3)):
                self._rollback(state, loss, ref)
                continue
            snap = ({k: v.copy() for k, v in params.items()}, opt.snapshot())
            state["good"] = snap
            opt.step(params, grads)
            if not all(np.all(np.isfinite(v)) for v in params.values()):
                self._rollback(state, float("nan"), ref)
                continue
            state["step"] += 1
            running.append(loss)
            recent = (recent + [loss])[-10:]
            step = state["step"]
            if step % self.eval_every == 0 or step == self.total_steps:
                metrics = self.validate(params) if len(self.val) else None
                entry = {
                    "step": step,
                    "train_loss": float(np.mean(running)),
                    "seconds": time.perf_counter() - start,
                }
                running = []
                if metrics is not None:
                    entry.update(metrics)
                    metric = metrics[self.metric_name]
                    if self._better(metric, state["best_metric"]):
                        state.update(
                            best_metric=metric,
                            best_step=step,
                            bad=0,
                            best={k: v.copy() for k, v in params.items()},
                        )
                    else:
                        state["bad"] += 1
                        stopped = state["bad"] >= c.patience
                state["history"].append(entry)
            if step % c.checkpoint_every == 0 or stopped or step == self.total_steps:
                self._save_checkpoint(state)
        if state["best"]:
            params.update({k: v.copy() for k, v in state["best"].items()})
        seconds = time.perf_counter() - start
        info = {
            "source": "device",
            "trainer": "gradient",
            self.metric_name: state["best_metric"],
            "steps": state["step"],
            "best_step": state["best_step"],
            "rollbacks": state["rollbacks"],
            "train_config": asdict(c),
            **self.task_info(),
        }
        return TrainOutcome(
            self.build_task(params, info),
            state["best_metric"],
            state["best_step"],
            state["step"],
            seconds,
            stopped,
            resumed_from,
            state["rollbacks"],
            state["history"],
        )

    def _rollback(self, state: dict[str, Any], loss: float, ref: float | None) -> None:
        c = self.config
        state["rollbacks"] += 1
        opt: AdamW = state["opt"]
        what = (
            "NaN/Inf"
            if not math.isfinite(loss)
            else f"exploding ({loss:.4g} > {c.explode_factor} x recent median {ref:.4g})"
        )
        if state["rollbacks"] > c.max_rollbacks:
            raise EdgeEigenLoraError(
                f"training task {self.name!r} diverged: loss {what} at step {state['step']} after {c.max_rollbacks} "
                f"rollbacks; lower the learning rate (--lr, now {c.lr * opt.scale:.3g}) or check the data."
            )
        if "good" in state:
            params, opt_snap = state["good"]
            state["params"].update({k: v.copy() for k, v in params.items()})
            opt.restore(opt_snap)
        opt.scale *= c.lr_backoff
        message = (
            f"warning: loss {what} at step {state['step']}: rolled back to the last good coefficients and "
            f"lowered the learning rate to {c.lr * opt.scale:.3g} (rollback {state['rollbacks']}/{c.max_rollbacks})"
        )
        state["history"].append({"step": state["step"], "event": "rollback", "message": message})
        self.log(message)


class GradientTrainer(GradientLoop):
    """Trains a classifier's coefficients + head with the bundle's train-step graph; see DeviceTrainConfig."""

    def __init__(
        self,
        runtime: DeviceRuntime,
        name: str,
        train: tuple[Sequence[str], Sequence[int]],
        label_names: Sequence[str],
        *,
        validation: tuple[Sequence[str], Sequence[int]] | None = None,
        config: DeviceTrainConfig | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        resume: bool = True,
        init_task: str | Task | None = None,
        log: Log = stderr_log,
        eval_graph: str = contract.SHARED,
    ) -> None:
        self.runtime = runtime
        self.config = config or DeviceTrainConfig()
        self.name = contract.check_task_name(name)
        self.label_names = list(label_names)
        self.log = log
        self.param_names = contract.train_params(runtime.manifest.kind)
        if not runtime.has_train_step:
            raise EdgeEigenLoraError(
                f"{runtime.root}: this bundle has no train-step graph; add one on the workstation "
                "(edge_eigenlora.train_graph.add_train_step) or use the forward-only trainer (--method zo)."
            )
        self.init_task = runtime.task(init_task) if init_task is not None else None
        self.num_labels = self.init_task.num_labels if self.init_task is not None else len(self.label_names)
        texts, labels, validation = split_examples(
            name, self.num_labels, train, validation, self.config.validation_fraction, self.config.seed
        )
        self.train = tokenize_examples(runtime, texts, labels, self.num_labels, "training labels")
        val = validation or ([], [])
        self.val = tokenize_examples(
            runtime, list(val[0]), list(val[1]), self.num_labels, "validation labels"
        )
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.resume = resume
        self.eval_graph = eval_graph if eval_graph in runtime.variants() else contract.TRAIN_STEP
        self.pad = runtime.tokenizer.pad_id

    def initial_params(self) -> dict[str, np.ndarray]:
        params = init_params(self.runtime, self.num_labels, self.config.seed, self.init_task)
        if self.config.head_init == "probe" and self.init_task is None:
            probe_head(self.runtime, params, self.train, self.num_labels)
        return params

    def validate(self, params: dict[str, np.ndarray]) -> dict[str, float]:
        m = evaluate(self.runtime, params, self.val, self.config.eval_batch_size, self.eval_graph)
        return {"val_accuracy": m["accuracy"], "val_loss": m["loss"]}

    def learning_rates(self) -> dict[str, float]:
        c = self.config
        head_lr = c.head_lr or c.lr
        return {contract.COEFFICIENTS: c.lr, contract.HEAD_WEIGHT: head_lr, contract.HEAD_BIAS: head_lr}

    def fingerprint_extra(self) -> dict[str, Any]:
        return {"num_labels": self.num_labels}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"labels": self.label_names}

    def task_info(self) -> dict[str, Any]:
        return {"pooling": "mean", "max_length": self.runtime.max_length}

    def build_task(self, params: dict[str, np.ndarray], info: dict[str, Any]) -> Task:
        names = self.label_names or [str(i) for i in range(self.num_labels)]
        return make_task(self.runtime, self.name, params, names, info)


def write_task(
    runtime: DeviceRuntime,
    task: Task,
    *,
    output: str | os.PathLike[str] | None = None,
    add_to_bundle: bool = True,
) -> list[str]:
    """Save the trained task atomically: into the bundle (tasks/<name>.safetensors + manifest) and/or a file."""
    written = []
    if output is not None:
        written.append(str(save_task(task, output)))
    if add_to_bundle:
        runtime.add_task(task)
        written.append(str(runtime.root / f"tasks/{task.name}.safetensors"))
    return written
