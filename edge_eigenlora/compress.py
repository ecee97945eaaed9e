"""Compression of bank adapters onto the basis, and export of any task back to a standard PEFT folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_eigenlora import subspace
from edge_eigenlora.adapters import CONFIG_NAME, WEIGHTS_NAME, AdapterBank, LoraAdapter, read_head, write_head
from edge_eigenlora.basis import Basis
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import save_safetensors_atomic, write_json_atomic
from edge_eigenlora.task import Task

__all__ = ["CompressionResult", "compress_adapter", "compress_bank", "task_to_peft"]


@dataclass
class CompressionResult:
    adapter: str
    task: Task
    errors: dict[str, float]  # module -> ||delta - delta_hat||_F / ||delta||_F

    @property
    def mean_error(self) -> float:
        return float(np.mean(list(self.errors.values())))


def compress_adapter(adapter: LoraAdapter, basis: Basis) -> CompressionResult:
    """Orthogonally project each module of the adapter onto the basis; keep its head if it has one."""
    coefficients, errors = {}, {}
    for module, factors in adapter.modules.items():
        if module not in basis.modules:
            raise EdgeEigenLoraError(
                f"adapter {adapter.name!r} adapts {module!r}, which basis {basis.short_id} does not cover. "
                "Fit the basis on a bank that includes this module."
            )
        mb = basis.modules[module]
        if factors.shape != mb.shape:
            raise EdgeEigenLoraError(
                f"adapter {adapter.name!r} module {module!r} is {factors.shape}; the basis expects {mb.shape}."
            )
        alpha_a, alpha_b = subspace.project_factors(factors.A, factors.B, mb.U_A, mb.U_B)
        A_hat, B_hat = subspace.coefficients_to_factors(alpha_a, alpha_b, mb.U_A, mb.U_B)
        errors[module] = subspace.relative_delta_error(factors.A, factors.B, A_hat, B_hat)
        coefficients[module] = (alpha_a.astype(np.float32), alpha_b.astype(np.float32))
    missing = sorted(set(basis.modules) - set(coefficients))
    for module in missing:  # the adapter leaves this module unchanged: zero coefficients say exactly that
        width = basis.modules[module].width
        rank = next(iter(adapter.modules.values())).rank
        coefficients[module] = (np.zeros((width, rank), np.float32), np.zeros((width, rank), np.float32))
    head = read_head(adapter.path)
    task = Task(
        name=adapter.name,
        basis_fingerprint=basis.fingerprint,
        coefficients=coefficients,
        labels=head.labels if head else [],
        head_weight=head.weight if head else None,
        head_bias=head.bias if head else None,
        info={
            "source": "projected",
            "adapter": str(adapter.path),
            "mean_delta_error": float(np.mean(list(errors.values()))),
        },
    )
    return CompressionResult(adapter=adapter.name, task=task, errors=errors)


def compress_bank(bank: AdapterBank, basis: Basis) -> list[CompressionResult]:
    return [compress_adapter(adapter, basis) for adapter in bank.adapters]


def task_to_peft(task: Task, basis: Basis, out_dir: str | Path, *, base_model: str | None = None) -> Path:
    """Write a task as a standard PEFT LoRA folder (scale 1: lora_alpha = r), loadable by PeftModel.

    A classification head, if any, is written beside it as `classifier_head.safetensors` (PEFT ignores it).
    """
    from peft import LoraConfig

    if task.basis_fingerprint != basis.fingerprint:
        raise EdgeEigenLoraError(
            f"task {task.name!r} belongs to basis {task.basis_fingerprint[:12]}, not {basis.short_id}."
        )
    out = Path(out_dir)
    tensors, ranks = {}, {}
    for module, (alpha_a, alpha_b) in task.coefficients.items():
        mb = basis.modules[module]
        A, B = subspace.coefficients_to_factors(alpha_a, alpha_b, mb.U_A, mb.U_B)
        tensors[f"base_model.model.{module}.lora_A.weight"] = A.astype(np.float32)
        tensors[f"base_model.model.{module}.lora_B.weight"] = B.astype(np.float32)
        ranks[module] = int(A.shape[0])
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {m: k for m, k in ranks.items() if k != r}
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=sorted(ranks),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM" if task.kind == "causal_lm" else None,
    )
    config.base_model_name_or_path = base_model or basis.base_model
    save_safetensors_atomic(out / WEIGHTS_NAME, tensors, {"format": "pt"})
    if task.head_weight is not None:
        write_head(out, task.head_weight, task.head_bias, task.labels)
    config_dict = config.to_dict()
    config_dict["target_modules"] = sorted(ranks)
    write_json_atomic(out / CONFIG_NAME, config_dict)  # last: a folder with a config is complete
    return out
