"""The task file: a task's coefficients (+ classification head) bound to one basis by its fingerprint.

numpy + safetensors only, so the device runtime reads the same files the workstation writes.
Tensors: `<module>.alpha_A`, `<module>.alpha_B` (each (k+p) x r) and, for classifiers, `head.weight`
(labels x hidden) and `head.bias` (labels).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import read_safetensors, save_safetensors_atomic

TASK_FORMAT = "edge-eigenlora-task"
TASK_FORMAT_VERSION = 1
TaskKind = Literal["classification", "causal_lm", "feature_extraction"]
TASK_KINDS = ("classification", "causal_lm", "feature_extraction")

__all__ = ["TASK_FORMAT", "TASK_FORMAT_VERSION", "Task", "load_task", "require_basis", "save_task"]


def require_basis(task_fingerprint: str, expected: str, where: str, carrier: str) -> None:
    """Refuse coefficients fitted for another basis: the one check and message, wherever a task is used.

    `carrier` names what holds the expected basis ("this bundle", "the model", ...).
    """
    if task_fingerprint != expected:
        raise EdgeEigenLoraError(
            f"{where} was trained for basis {task_fingerprint[:12]} but {carrier} carries basis {expected[:12]}. "
            "Coefficients only mean something on their own basis: use the matching basis, or re-train the task "
            "on this one."
        )


@dataclass
class Task:
    name: str
    basis_fingerprint: str
    coefficients: dict[str, tuple[np.ndarray, np.ndarray]]  # module -> (alpha_A, alpha_B)
    kind: TaskKind = "classification"
    labels: list[str] = field(default_factory=list)
    head_weight: np.ndarray | None = None
    head_bias: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)  # free-form: metrics, source, pooling, base model

    def num_parameters(self, include_head: bool = True) -> int:
        n = sum(a.size + b.size for a, b in self.coefficients.values())
        if include_head and self.head_weight is not None:
            n += self.head_weight.size + (0 if self.head_bias is None else self.head_bias.size)
        return int(n)

    def check_finite(self, where: str) -> None:
        for module, (a, b) in self.coefficients.items():
            if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
                raise EdgeEigenLoraError(f"{where}: coefficients of module {module!r} contain NaN or Inf.")
        for label, arr in (("head.weight", self.head_weight), ("head.bias", self.head_bias)):
            if arr is not None and not np.all(np.isfinite(arr)):
                raise EdgeEigenLoraError(f"{where}: {label} contains NaN or Inf.")


def save_task(task: Task, path: str | Path) -> Path:
    """Write the task atomically."""
    task.check_finite(f"task {task.name!r}")
    tensors: dict[str, np.ndarray] = {}
    for module, (alpha_a, alpha_b) in task.coefficients.items():
        tensors[f"{module}.alpha_A"] = np.asarray(alpha_a, np.float32)
        tensors[f"{module}.alpha_B"] = np.asarray(alpha_b, np.float32)
    if task.head_weight is not None:
        tensors["head.weight"] = np.asarray(task.head_weight, np.float32)
        if task.head_bias is not None:
            tensors["head.bias"] = np.asarray(task.head_bias, np.float32)
    metadata = {
        "format": TASK_FORMAT,
        "format_version": str(TASK_FORMAT_VERSION),
        "name": task.name,
        "basis_fingerprint": task.basis_fingerprint,
        "kind": task.kind,
        "labels": json.dumps(task.labels),
        "info": json.dumps(task.info, sort_keys=True, default=str),
    }
    path = Path(path)
    save_safetensors_atomic(path, tensors, metadata)
    return path


def load_task(path: str | Path, *, expected_basis: str | None = None) -> Task:
    """Read a task file; with `expected_basis`, refuse one fitted for another basis."""
    tensors, meta = read_safetensors(path, "task file")
    if meta.get("format") != TASK_FORMAT:
        raise EdgeEigenLoraError(
            f"{path}: metadata field 'format' is {meta.get('format')!r}; not a task file."
        )
    if meta.get("format_version") != str(TASK_FORMAT_VERSION):
        raise EdgeEigenLoraError(
            f"{path}: task format_version {meta.get('format_version')!r} is not supported "
            f"(this edge-eigenlora reads version {TASK_FORMAT_VERSION})."
        )
    fingerprint = meta.get("basis_fingerprint", "")
    if expected_basis is not None:
        require_basis(fingerprint, expected_basis, f"task file {path}", "this model/bundle")
    coefficients: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key in tensors:
        if key.endswith(".alpha_A"):
            module = key[: -len(".alpha_A")]
            if f"{module}.alpha_B" not in tensors:
                raise EdgeEigenLoraError(f"{path}: {module}.alpha_B is missing; the task file is incomplete.")
            alpha_a, alpha_b = tensors[key], tensors[f"{module}.alpha_B"]
            if alpha_a.ndim != 2 or alpha_a.shape != alpha_b.shape:
                raise EdgeEigenLoraError(
                    f"{path}: module {module!r} has alpha_A {alpha_a.shape} and alpha_B {alpha_b.shape}; both "
                    "must be (K+P) x r. The task file is damaged: re-create it."
                )
            coefficients[module] = (alpha_a, alpha_b)
    try:
        labels = json.loads(meta.get("labels", "[]"))
        info = json.loads(meta.get("info", "{}"))
    except (ValueError, RecursionError) as exc:
        raise EdgeEigenLoraError(
            f"{path}: metadata field 'labels' or 'info' is not valid JSON ({str(exc)[:100]})."
        ) from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise EdgeEigenLoraError(f"{path}: metadata field 'labels' must be a JSON list of label names.")
    if not isinstance(info, dict):
        raise EdgeEigenLoraError(f"{path}: metadata field 'info' must be a JSON object.")
    kind = meta.get("kind", "classification")
    if kind not in TASK_KINDS:
        raise EdgeEigenLoraError(
            f"{path}: metadata field 'kind' is {kind[:40]!r}; expected one of {', '.join(TASK_KINDS)}."
        )
    head_w, head_b = tensors.get("head.weight"), tensors.get("head.bias")
    if head_w is not None and head_w.ndim != 2:
        raise EdgeEigenLoraError(f"{path}: head.weight is {head_w.shape}, not labels x hidden.")
    if head_b is not None and (head_w is None or head_b.shape != (head_w.shape[0],)):
        raise EdgeEigenLoraError(
            f"{path}: head.bias is {head_b.shape} but head.weight is "
            f"{None if head_w is None else head_w.shape}; the bias needs one value per label."
        )
    if head_w is not None and labels and len(labels) != head_w.shape[0]:
        raise EdgeEigenLoraError(
            f"{path}: metadata field 'labels' names {len(labels)} labels but head.weight has "
            f"{head_w.shape[0]} rows; each label needs one row. The task file is damaged or was edited: "
            "re-create it."
        )
    task = Task(
        name=meta.get("name", Path(path).stem),
        basis_fingerprint=fingerprint,
        coefficients=coefficients,
        kind=kind,  # type: ignore[arg-type]
        labels=labels,
        head_weight=head_w,
        head_bias=head_b,
        info=info,
    )
    task.check_finite(str(path))
    return task
