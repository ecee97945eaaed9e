"""Attach a basis to a transformers model, detach it, merge, and move tasks in and out.

`attach_basis(model, basis, rank=8, init="zero")` swaps each targeted nn.Linear for an EigenLoraLinear and
freezes everything else; `TextClassifier` adds mean pooling and a linear head for classification.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from edge_eigenlora.basis import Basis
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import tensors_fingerprint
from edge_eigenlora.layers import COEFFICIENT_PREFIX, EigenLoraLinear
from edge_eigenlora.task import Task, require_basis

__all__ = [
    "TextClassifier",
    "apply_task",
    "attach_basis",
    "bank_init_coefficients",
    "base_fingerprint",
    "coefficient_parameters",
    "count_coefficients",
    "detach_basis",
    "detect_kind",
    "eigenlora_layers",
    "mean_pool",
    "merge",
    "resolve_module_name",
    "task_from_model",
    "unmerge",
]

Init = Literal["zero", "bank"]


def mean_pool(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the last hidden states over real (unmasked) tokens: the one pooling of every graph and model."""
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def detect_kind(model_or_config: Any) -> str:
    """ "causal_lm" for a decoder LM (architectures ending in ForCausalLM, or an lm_head), else "classification"."""
    config = getattr(model_or_config, "config", model_or_config)
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForCausalLM") for a in archs) or hasattr(model_or_config, "lm_head"):
        return "causal_lm"
    return "classification"


class TextClassifier(nn.Module):
    """Encoder + mean pooling over real tokens + a linear head (the sentence-transformers recipe)."""

    def __init__(self, encoder: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.head = nn.Linear(hidden, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(self.encoder, input_ids, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask))


def resolve_module_name(model: nn.Module, name: str) -> str:
    """Find the model's module for a basis module name, allowing wrapper prefixes on either side.

    A basis fitted on `bert.encoder.layer.0...` (a *ForSequenceClassification adapter) attaches to a BertModel
    (`encoder.layer.0...`) and vice versa; the match must be unique.
    """
    names = [n for n, _ in model.named_modules()]
    parts = name.split(".")
    for start in range(len(parts) - 1):
        suffix = ".".join(parts[start:])
        hits = [n for n in names if n == suffix or n.endswith("." + suffix)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise EdgeEigenLoraError(
                f"basis module {name!r} matches several modules of the model: {hits[:4]}."
            )
    raise EdgeEigenLoraError(
        f"basis module {name!r} is not in the model. Was the basis fitted for another architecture? "
        f"The model has e.g. {[n for n in names if n][:3]}."
    )


def eigenlora_layers(model: nn.Module) -> dict[str, EigenLoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, EigenLoraLinear)}


def _basis_of(model: nn.Module) -> str:
    """The fingerprint of the attached basis, also through wrappers such as TextClassifier."""
    for module in model.modules():
        fingerprint = getattr(module, "_eigenlora_basis", None)
        if fingerprint is not None:
            return fingerprint
    raise EdgeEigenLoraError("this model has no basis attached; call attach_basis() first.")


def attach_basis(
    model: nn.Module, basis: Basis, *, rank: int = 8, init: Init = "zero", seed: int = 0
) -> nn.Module:
    """Replace each basis module's Linear by an EigenLoraLinear; freeze all but the coefficients.

    init="zero" starts at delta W = 0 (LoRA's init in the subspace); init="bank" starts at the best rank-r
    approximation of the bank's average adapter within the basis (the EigenLoRAx paper's init).
    """
    if getattr(model, "_eigenlora_basis", None) is not None:
        raise EdgeEigenLoraError("a basis is already attached to this model; detach_basis() it first.")
    if rank < 1:
        raise EdgeEigenLoraError(f"rank must be >= 1, got {rank}.")
    if init not in ("zero", "bank"):
        raise EdgeEigenLoraError(f"init must be 'zero' or 'bank', got {init!r}.")
    # Validate every module before changing anything: a bad fifth module must not leave four swapped.
    targets = []
    for module_name, mb in basis.modules.items():
        target = resolve_module_name(model, module_name)
        parent_name, _, child = target.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        if not isinstance(linear, nn.Linear):
            raise EdgeEigenLoraError(f"module {target!r} is a {type(linear).__name__}, not nn.Linear.")
        if (linear.out_features, linear.in_features) != mb.shape:
            raise EdgeEigenLoraError(
                f"module {target!r} is {linear.out_features} x {linear.in_features} but the basis was fitted "
                f"for {mb.shape[0]} x {mb.shape[1]}: the basis belongs to another base model."
            )
        targets.append((module_name, mb, parent, child, linear))
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for module_name, mb, parent, child, linear in targets:
        layer = EigenLoraLinear(linear, torch.from_numpy(mb.U_A), torch.from_numpy(mb.U_B), rank)
        layer.reset_zero_delta(generator)
        if init == "bank":
            random_a = layer.eigenlora_alpha_A.detach().numpy().astype(np.float64)
            alpha_a, alpha_b = bank_init_coefficients(mb.mean_core, rank, fallback_A=random_a)
            layer.set_coefficients(torch.from_numpy(alpha_a), torch.from_numpy(alpha_b))
        layer.basis_module = module_name  # type: ignore[assignment]
        setattr(parent, child, layer)
    model._eigenlora_basis = basis.fingerprint  # type: ignore[assignment]
    return model


def bank_init_coefficients(
    mean_core: np.ndarray, rank: int, *, fallback_A: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rank-r balanced factors of the bank's mean delta in basis coordinates: core ~ alpha_B alpha_A^T.

    Where the mean delta has fewer than r directions (a small or cancelling bank), the remaining columns
    take `fallback_A` (LoRA-style random) on the A side and zero on the B side: without it both factors of
    those columns would be zero and never receive a gradient.
    """
    u, s, vt = np.linalg.svd(np.asarray(mean_core, np.float64))
    width = s.size
    useful = int(np.sum(s > (s[0] if width else 0.0) * 1e-6)) if width and s[0] > 0 else 0
    r = min(rank, useful)
    root = np.sqrt(s[:r])
    alpha_b = np.zeros((width, rank))
    alpha_a = np.zeros((width, rank)) if fallback_A is None else np.array(fallback_A, np.float64)
    alpha_b[:, :r] = u[:, :r] * root
    alpha_a[:, :r] = vt[:r].T * root
    return alpha_a.astype(np.float32), alpha_b.astype(np.float32)


def detach_basis(model: nn.Module) -> nn.Module:
    """Put the original Linears back (unmerging first), leaving the model as it was."""
    for name, layer in eigenlora_layers(model).items():
        layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)
    if hasattr(model, "_eigenlora_basis"):
        del model._eigenlora_basis
    return model


def merge(model: nn.Module) -> None:
    for layer in eigenlora_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for layer in eigenlora_layers(model).values():
        layer.unmerge()


def coefficient_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1].startswith(COEFFICIENT_PREFIX)]


def count_coefficients(model: nn.Module) -> int:
    return sum(p.numel() for p in coefficient_parameters(model))


def task_from_model(
    model: nn.Module, name: str, *, labels: list[str] | None = None, info: dict | None = None
) -> Task:
    """Snapshot the coefficients (and the head of a TextClassifier) as a Task bound to the basis."""
    fingerprint = _basis_of(model)
    coefficients = {
        layer.basis_module: (
            layer.eigenlora_alpha_A.detach().float().numpy().copy(),
            layer.eigenlora_alpha_B.detach().float().numpy().copy(),
        )
        for layer in eigenlora_layers(model).values()
    }
    head = model.head if isinstance(model, TextClassifier) else None
    if head is not None:
        kind = "classification"
    elif callable(getattr(model, "can_generate", None)) and model.can_generate():
        kind = "causal_lm"
    else:
        kind = "feature_extraction"
    return Task(
        name=name,
        basis_fingerprint=fingerprint,
        coefficients=coefficients,
        kind=kind,
        labels=list(labels or []),
        head_weight=None if head is None else head.weight.detach().float().numpy().copy(),
        head_bias=None if head is None else head.bias.detach().float().numpy().copy(),
        info=dict(info or {}),
    )


def apply_task(model: nn.Module, task: Task) -> None:
    """Load a task's coefficients (and head) into a model that carries the same basis."""
    require_basis(task.basis_fingerprint, _basis_of(model), f"task {task.name!r}", "the model")
    layers = {layer.basis_module: layer for layer in eigenlora_layers(model).values()}
    missing = sorted(set(layers) - set(task.coefficients))
    if missing:
        raise EdgeEigenLoraError(f"task {task.name!r} has no coefficients for modules {missing[:3]}.")
    for module, (alpha_a, alpha_b) in task.coefficients.items():
        if module not in layers:
            raise EdgeEigenLoraError(
                f"task {task.name!r} has coefficients for {module!r}, which the basis lacks."
            )
        layers[module].set_coefficients(torch.from_numpy(alpha_a), torch.from_numpy(alpha_b))
    if isinstance(model, TextClassifier) and task.head_weight is not None:
        if model.head.weight.shape != task.head_weight.shape:
            model.head = nn.Linear(task.head_weight.shape[1], task.head_weight.shape[0])
            model.head.requires_grad_(True)
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(task.head_weight))
            bias = task.head_bias if task.head_bias is not None else np.zeros(task.head_weight.shape[0])
            model.head.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over the base model's own weights (adapters and basis excluded), attached or not."""
    tensors = {
        n.replace(".base.", "."): t.detach().float().numpy()
        for n, t in model.state_dict().items()
        if COEFFICIENT_PREFIX not in n and not n.endswith((".U_A", ".U_B"))
    }
    return tensors_fingerprint(tensors)
