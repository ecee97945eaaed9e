"""Compression of bank adapters onto the basis, and export of any task back to a standard PEFT folder."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_eigenlora import subspace
from edge_eigenlora.adapters import (
    CONFIG_NAME,
    HEAD_NAME,
    WEIGHTS_NAME,
    AdapterBank,
    LoraAdapter,
    read_head,
    write_head,
)
from edge_eigenlora.basis import Basis
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import make_temp_dir, save_safetensors_atomic, write_json_atomic
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


# What PEFT's save_pretrained (and this toolkit) put in an adapter folder: the only files --overwrite replaces.
PEFT_FOLDER_FILES = frozenset(
    {CONFIG_NAME, WEIGHTS_NAME, "adapter_model.bin", "README.md", HEAD_NAME, "training.json"}
)


def _check_peft_out(out: Path, overwrite: bool) -> None:
    """Refuse an `out` that is a file, holds files that are not an adapter's, or is an adapter (unless overwrite)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise EdgeEigenLoraError(
            f"{out} is a file or a symbolic link; choose a new folder for the PEFT adapter."
        )
    if not out.exists() or not any(out.iterdir()):
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in PEFT_FOLDER_FILES or not p.is_file())
    if others:
        raise EdgeEigenLoraError(
            f"{out} already holds files that are not a PEFT adapter's ({', '.join(others[:5])}); "
            "choose a new or empty folder for the PEFT adapter."
        )
    if not overwrite:
        raise EdgeEigenLoraError(
            f"{out} already holds a PEFT adapter; choose a new folder or pass --overwrite (overwrite=True) to "
            "replace it."
        )


def task_to_peft(
    task: Task, basis: Basis, out_dir: str | Path, *, base_model: str | None = None, overwrite: bool = False
) -> Path:
    """Write a task as a standard PEFT LoRA folder (scale 1: lora_alpha = r), loadable by PeftModel.

    A classification head, if any, is written beside it as `classifier_head.safetensors` (PEFT ignores it).
    An existing adapter folder is replaced only with overwrite=True, and then as a whole: the new folder is
    written beside it and swapped in, so old and new files never mix (a crash between the two renames leaves
    the old adapter in `.<name>.old.*/` beside it).
    """
    from peft import LoraConfig

    if task.basis_fingerprint != basis.fingerprint:
        raise EdgeEigenLoraError(
            f"task {task.name!r} belongs to basis {task.basis_fingerprint[:12]}, not {basis.short_id}."
        )
    out = Path(out_dir)
    _check_peft_out(out, overwrite)
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
    config_dict = config.to_dict()
    config_dict["target_modules"] = sorted(ranks)
    new = make_temp_dir(out.parent, f".{out.name}.new.")
    try:
        save_safetensors_atomic(new / WEIGHTS_NAME, tensors, {"format": "pt"})
        if task.head_weight is not None:
            write_head(new, task.head_weight, task.head_bias, task.labels)
        write_json_atomic(new / CONFIG_NAME, config_dict)  # last: a folder with a config is complete
        if out.exists():  # an empty folder, or (checked above) an adapter to replace
            old = make_temp_dir(out.parent, f".{out.name}.old.")
            os.replace(out, old / out.name)
            os.replace(new, out)
            shutil.rmtree(old)
        else:
            os.replace(new, out)
    finally:
        if new.exists():
            shutil.rmtree(new)
    return out
