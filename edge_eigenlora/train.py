"""Training on the workstation: whatever parameters require grad (coefficients + head, or a PEFT LoRA).

One loop serves classification and causal-LM loss: seeded shuffling, AdamW, periodic evaluation on a
validation split, early stopping with the best weights restored, and a progress bar.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.train_config import TrainConfig

__all__ = [
    "TrainConfig",
    "TrainResult",
    "causal_lm_loss",
    "evaluate_causal_lm",
    "evaluate_classifier",
    "train_causal_lm",
    "train_classifier",
    "train_task",
]


@dataclass
class TrainResult:
    best_metric: float  # validation accuracy (classification) or -loss (causal LM)
    best_step: int
    steps: int
    seconds: float
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    head, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.startswith("head.") else rest).append(p)
    if not head and not rest:
        raise EdgeEigenLoraError(
            "nothing to train: no parameter requires grad (attach a basis or a LoRA first)."
        )
    groups = [{"params": rest, "lr": config.lr}] if rest else []
    if head:
        groups.append({"params": head, "lr": config.head_lr or config.lr})
    return groups


def _fit(
    model: nn.Module,
    n_train: int,
    loss_on: Callable[[np.ndarray], torch.Tensor],
    evaluate: Callable[[], float],
    config: TrainConfig,
    desc: str,
) -> TrainResult:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(_param_groups(model, config), weight_decay=config.weight_decay)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    eval_every = config.eval_every or steps_per_epoch
    best_metric, best_step, best_state, bad, step = -math.inf, 0, None, 0, 0
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    stopped = False
    bar = tqdm(total=total, desc=desc, unit="step", disable=not config.progress, leave=False)
    running = []
    while step < total and not stopped:
        order = rng.permutation(n_train)
        for i in range(0, n_train, config.batch_size):
            model.train()
            loss = loss_on(order[i : i + config.batch_size])
            if not torch.isfinite(loss):
                raise EdgeEigenLoraError(
                    f"training loss became {loss.item()} at step {step}; lower the learning rate (now {config.lr})."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running.append(loss.item())
            bar.update(1)
            if step % eval_every == 0 or step == total:
                model.eval()
                metric = evaluate()
                history.append({"step": step, "train_loss": float(np.mean(running)), "val_metric": metric})
                running = []
                bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val=f"{metric:.3f}")
                if metric > best_metric + 1e-9:
                    best_metric, best_step, bad = metric, step, 0
                    best_state = {n: p.detach().clone() for n, p in trainable.items()}
                else:
                    bad += 1
                    if bad >= config.patience:
                        stopped = True
                        break
            if step >= total:
                break
    bar.close()
    if best_state is not None:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(best_state[n])
    model.eval()
    return TrainResult(
        best_metric=best_metric,
        best_step=best_step,
        steps=step,
        seconds=time.perf_counter() - start,
        stopped_early=stopped,
        history=history,
    )


def _tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def _check_labels(labels: Sequence[int], num_labels: int, where: str) -> np.ndarray:
    array = np.asarray(labels, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() >= num_labels):
        raise EdgeEigenLoraError(
            f"{where}: label {int(array.max() if array.max() >= num_labels else array.min())} is outside the "
            f"head's range 0..{num_labels - 1}. Give labels as class indices below the number of labels."
        )
    return array


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    batch_size: int = 64,
    max_length: int = 64,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of a classifier (anything mapping ids + mask to logits)."""
    model.eval()
    correct, loss_sum = 0, 0.0
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    for i in range(0, len(texts), batch_size):
        batch = _tokenize(tokenizer, texts[i : i + batch_size], max_length)
        logits = model(batch["input_ids"], batch["attention_mask"])
        target = y[i : i + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
    n = max(len(texts), 1)
    return {"accuracy": correct / n, "loss": loss_sum / n}


def train_classifier(
    model: nn.Module,
    tokenizer: Any,
    train: tuple[Sequence[str], Sequence[int]],
    validation: tuple[Sequence[str], Sequence[int]],
    config: TrainConfig | None = None,
    *,
    desc: str = "training",
) -> TrainResult:
    """Cross-entropy training of `model(input_ids, attention_mask) -> logits`; early stopping on val accuracy."""
    config = config or TrainConfig()
    texts, labels = list(train[0]), train[1]
    if not texts:
        raise EdgeEigenLoraError("the training split is empty.")
    num_labels = int(model.head.out_features) if hasattr(model, "head") else None
    y = torch.as_tensor(
        _check_labels(labels, num_labels, "training labels") if num_labels else np.asarray(labels, np.int64)
    )
    if num_labels:
        _check_labels(validation[1], num_labels, "validation labels")
    encoded = _tokenize(tokenizer, texts, config.max_length)

    def loss_on(idx: np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(idx)
        mask = encoded["attention_mask"][index]
        width = int(mask.sum(1).max())
        logits = model(encoded["input_ids"][index][:, :width], mask[:, :width])
        return F.cross_entropy(logits, y[index])

    def evaluate() -> float:
        return evaluate_classifier(
            model, tokenizer, list(validation[0]), validation[1], max_length=config.max_length
        )["accuracy"]

    return _fit(model, len(texts), loss_on, evaluate, config, desc)


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss


@torch.no_grad()
def evaluate_causal_lm(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 16, max_length: int = 64
) -> float:
    """Mean next-token loss over the texts."""
    model.eval()
    losses = [
        causal_lm_loss(model, _tokenize(tokenizer, texts[i : i + batch_size], max_length)).item()
        for i in range(0, len(texts), batch_size)
    ]
    return float(np.mean(losses))


def train_causal_lm(
    model: nn.Module,
    tokenizer: Any,
    train_texts: Sequence[str],
    validation_texts: Sequence[str],
    config: TrainConfig | None = None,
    *,
    desc: str = "training (causal LM)",
) -> TrainResult:
    """Next-token loss on the texts; early stopping on validation loss (the metric is -loss)."""
    config = config or TrainConfig()
    texts = list(train_texts)
    if not texts:
        raise EdgeEigenLoraError("the training split is empty.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def loss_on(idx: np.ndarray) -> torch.Tensor:
        return causal_lm_loss(model, _tokenize(tokenizer, [texts[i] for i in idx], config.max_length))

    def evaluate() -> float:
        return -evaluate_causal_lm(model, tokenizer, list(validation_texts), max_length=config.max_length)

    return _fit(model, len(texts), loss_on, evaluate, config, desc)


def train_task(
    basis: Any,
    train: tuple[Sequence[str], Sequence[int]],
    validation: tuple[Sequence[str], Sequence[int]],
    label_names: Sequence[str],
    *,
    name: str = "task",
    model_name: str | None = None,
    rank: int = 8,
    init: str = "bank",
    config: TrainConfig | None = None,
    desc: str = "EigenLoRAx coefficients",
) -> tuple[Any, nn.Module, Any, TrainResult]:
    """The coefficient-training stage: attach `basis` to the encoder, train coefficients + head, return a Task.

    Returns (task, classifier, tokenizer, result); the task records the validation accuracy and the
    training settings so its file is self-describing.
    """
    from dataclasses import asdict

    from edge_eigenlora.model import TextClassifier, attach_basis, task_from_model
    from edge_eigenlora.pretrained import DEFAULT_ENCODER, hub_name, load_encoder

    config = config or TrainConfig()
    width = min(m.width for m in basis.modules.values())
    if not 1 <= rank <= width:
        raise EdgeEigenLoraError(
            f"rank {rank} (--rank) must be between 1 and the basis' number of directions K+P = {width}: "
            "alpha_A and alpha_B are (K+P) x r, and a larger r adds parameters but no expressive power. "
            f"Use --rank {min(8, width)} or fit a basis with more directions."
        )
    model_name = model_name or basis.base_model or DEFAULT_ENCODER
    encoder, tokenizer = load_encoder(model_name)
    torch.manual_seed(config.seed)
    attach_basis(encoder, basis, rank=rank, init=init, seed=config.seed)  # type: ignore[arg-type]
    classifier = TextClassifier(encoder, len(label_names))
    result = train_classifier(classifier, tokenizer, train, validation, config, desc=desc)
    info = {
        "source": "trained",
        "base_model": hub_name(model_name),
        "rank": rank,
        "init": init,
        "pooling": "mean",
        "max_length": config.max_length,
        "val_accuracy": result.best_metric,
        "steps": result.steps,
        "train_config": asdict(config),
    }
    task = task_from_model(classifier, name, labels=list(label_names), info=info)
    return task, classifier, tokenizer, result
