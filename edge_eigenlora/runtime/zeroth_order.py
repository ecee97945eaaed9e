"""Forward-only training (SPSA / MeZO): for runtimes that can run the inference graph but not the train step.

Each step draws a random direction z (seeded), runs the same mini-batch at theta + eps z and theta - eps z
through the inference graph, and moves theta by -lr * (L+ - L-) / (2 eps) * z: an unbiased estimate of the
gradient's projection, at two forward passes per step and no activation memory for a backward pass. The
head starts from a ridge probe on the frozen embeddings (forward passes only), which zeroth-order methods need
(MeZO relies on a good starting point; from a random head it learns very slowly).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edge_eigenlora import bundle as contract
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.runtime.session import DeviceRuntime
from edge_eigenlora.runtime.trainer import (
    PARAMS,
    HeadInit,
    Log,
    TrainOutcome,
    cross_entropy,
    evaluate,
    init_params,
    make_task,
    probe_head,
    split_examples,
    stderr_log,
    tokenize_examples,
)

__all__ = ["ZOConfig", "ZerothOrderTrainer"]


@dataclass(frozen=True)
class ZOConfig:
    """steps: optimizer steps (2 x perturbations forward passes each). lr: SGD step on the projected gradient.

    eps: perturbation size. head_lr_scale: the head's step relative to the coefficients'. eval_every /
    patience: early stopping on validation accuracy. max_seconds: a wall-clock budget (None: no limit).
    """

    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-2
    head_lr_scale: float = 1.0
    eps: float = 1e-3
    perturbations: int = 1
    head_init: HeadInit = "probe"
    eval_every: int = 50
    patience: int = 4
    validation_fraction: float = 0.15
    seed: int = 0
    eval_batch_size: int = 64
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "perturbations", "eval_every", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise EdgeEigenLoraError(f"ZOConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if not (self.lr > 0 and self.eps > 0 and self.head_lr_scale >= 0):
            raise EdgeEigenLoraError("ZOConfig: lr and eps must be > 0 and head_lr_scale >= 0.")
        if self.head_init not in ("random", "probe"):
            raise EdgeEigenLoraError(
                f"ZOConfig.head_init must be 'random' or 'probe', got {self.head_init!r}."
            )


class ZerothOrderTrainer:
    """MeZO-style training through the shared inference graph only."""

    def __init__(
        self,
        runtime: DeviceRuntime,
        name: str,
        train: tuple[Sequence[str], Sequence[int]],
        label_names: Sequence[str],
        *,
        validation: tuple[Sequence[str], Sequence[int]] | None = None,
        config: ZOConfig | None = None,
        log: Log = stderr_log,
        callback: object = None,
    ) -> None:
        self.runtime = runtime
        self.config = config or ZOConfig()
        self.name = contract.check_task_name(name)
        self.label_names = list(label_names)
        self.num_labels = len(self.label_names)
        self.log = log
        self.callback = callback
        texts, labels, validation = split_examples(
            name, self.num_labels, train, validation, self.config.validation_fraction, self.config.seed
        )
        self.train = tokenize_examples(runtime, texts, labels, self.num_labels, "training labels")
        val = validation or ([], [])
        self.val = tokenize_examples(
            runtime, list(val[0]), list(val[1]), self.num_labels, "validation labels"
        )

    def _loss(self, params: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray, y: np.ndarray) -> float:
        logits = self.runtime.logits_with(ids, mask, params)
        return float(cross_entropy(logits, y).mean())

    def fit(self) -> TrainOutcome:
        c = self.config
        start = time.perf_counter()
        params = init_params(self.runtime, self.num_labels, c.seed)
        if c.head_init == "probe":
            probe_head(self.runtime, params, self.train, self.num_labels)
        rng = np.random.default_rng(c.seed + 1)
        order_rng = np.random.default_rng(c.seed)
        order, pos = order_rng.permutation(len(self.train)), 0
        lrs = {
            contract.COEFFICIENTS: c.lr,
            contract.HEAD_WEIGHT: c.lr * c.head_lr_scale,
            contract.HEAD_BIAS: c.lr * c.head_lr_scale,
        }
        pad = self.runtime.tokenizer.pad_id
        history: list[dict] = []
        best, best_metric, best_step, bad, stopped, running = None, -math.inf, 0, 0, False, []
        step = 0

        def check(step: int) -> bool:
            nonlocal best, best_metric, best_step, bad, running
            metrics = evaluate(self.runtime, params, self.val, c.eval_batch_size) if len(self.val) else None
            entry = {
                "step": step,
                "train_loss": float(np.mean(running)) if running else float("nan"),
                "seconds": time.perf_counter() - start,
            }
            running = []
            if metrics is not None:
                entry.update(val_accuracy=metrics["accuracy"], val_loss=metrics["loss"])
            history.append(entry)
            if callable(self.callback):
                self.callback(step, params, entry)
            if metrics is None:
                return False
            if metrics["accuracy"] > best_metric + 1e-9:
                best, best_metric, best_step, bad = (
                    {k: v.copy() for k, v in params.items()},
                    metrics["accuracy"],
                    step,
                    0,
                )
                return False
            bad += 1
            return bad >= c.patience

        check(0)
        while step < c.steps and not stopped:
            if pos + c.batch_size > len(order):
                order, pos = order_rng.permutation(len(self.train)), 0
            idx = order[pos : pos + c.batch_size]
            pos += c.batch_size
            ids, mask, y = self.train.batch(idx, pad)
            losses = []
            for _ in range(c.perturbations):
                z = {k: rng.standard_normal(params[k].shape).astype(np.float32) for k in PARAMS}
                plus = {k: params[k] + c.eps * z[k] for k in PARAMS}
                minus = {k: params[k] - c.eps * z[k] for k in PARAMS}
                lp, lm = self._loss(plus, ids, mask, y), self._loss(minus, ids, mask, y)
                if not (math.isfinite(lp) and math.isfinite(lm)):
                    self.log(f"warning: non-finite loss at step {step}; skipped this direction")
                    continue
                g = (lp - lm) / (2 * c.eps)
                for k in PARAMS:
                    params[k] -= (lrs[k] * g / c.perturbations) * z[k]
                losses.append((lp + lm) / 2)
            step += 1
            running.extend(losses)
            if step % c.eval_every == 0 or step == c.steps:
                stopped = check(step)
            if c.max_seconds is not None and time.perf_counter() - start > c.max_seconds:
                if step % c.eval_every:
                    stopped = check(step) or True
                break
        if best is not None:
            params.update(best)
        seconds = time.perf_counter() - start
        info = {
            "source": "device",
            "trainer": "zeroth_order",
            "val_accuracy": best_metric,
            "steps": step,
            "best_step": best_step,
            "train_config": asdict(c),
            "pooling": "mean",
            "max_length": self.runtime.max_length,
        }
        task = make_task(self.runtime, self.name, params, self.label_names, info)
        return TrainOutcome(task, best_metric, best_step, step, seconds, stopped, None, 0, history)
