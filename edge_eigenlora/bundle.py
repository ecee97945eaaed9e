"""The bundle format: manifest, coefficient layout, task files, checksums, verify.

numpy + standard library only (NO torch, no onnx): the device runtime imports this module.

A bundle is a folder:
    manifest.json                 format version, fingerprints, graphs and their inputs/outputs, layout, files
    model_<variant>.onnx          inference graph(s) (+ .ort and .required_operators.config for ORT Mobile)
    tokenizer/...                 the tokenizer's files
    tasks/<name>.safetensors      one task: coefficients (+ head), bound to the basis fingerprint
Every file except manifest.json is listed under `files` with its sha256; writes are atomic (temp + rename).

Packed coefficient vector (one per task, float32, length `coefficients.size` = P): basis modules in sorted
name order; for each, alpha_A (width x r, row-major) then alpha_B (width x r). `coefficients.segments` lists
{name: "<module>.alpha_A", offset, shape} for each piece.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import sha256_file, write_json_atomic
from edge_eigenlora.task import Task, load_task, save_task

FORMAT = "edge-eigenlora-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class CoefficientLayout:
    """Where each module's coefficients sit in the packed vector."""

    modules: list[str]  # sorted basis module names
    widths: dict[str, int]  # module -> width (k + p)
    rank: int

    @classmethod
    def from_widths(cls, widths: dict[str, int], rank: int) -> CoefficientLayout:
        return cls(modules=sorted(widths), widths={m: int(widths[m]) for m in sorted(widths)}, rank=int(rank))

    @classmethod
    def from_basis(cls, basis: Any, rank: int) -> CoefficientLayout:
        return cls.from_widths({m: mb.width for m, mb in basis.modules.items()}, rank)

    @classmethod
    def from_manifest(cls, coefficients: dict[str, Any]) -> CoefficientLayout:
        rank = int(coefficients["rank"])
        widths = {}
        for seg in coefficients["segments"]:
            module, side = seg["name"].rsplit(".", 1)
            if side == "alpha_A":
                widths[module] = int(seg["shape"][0])
        layout = cls.from_widths(widths, rank)
        if layout.segments() != coefficients["segments"] or layout.size != int(coefficients["size"]):
            raise EdgeEigenLoraError(
                "manifest.json: field 'coefficients' is inconsistent (segments are not the sorted, contiguous "
                "alpha_A/alpha_B layout of size 'size'); re-export the bundle."
            )
        return layout

    def module_offset(self, module: str) -> int:
        offset = 0
        for m in self.modules:
            if m == module:
                return offset
            offset += 2 * self.widths[m] * self.rank
        raise KeyError(module)

    @property
    def size(self) -> int:
        return sum(2 * w * self.rank for w in self.widths.values())

    def segments(self) -> list[dict[str, Any]]:
        out, offset = [], 0
        for m in self.modules:
            for side in ("alpha_A", "alpha_B"):
                out.append({"name": f"{m}.{side}", "offset": offset, "shape": [self.widths[m], self.rank]})
                offset += self.widths[m] * self.rank
        return out

    def to_manifest(self) -> dict[str, Any]:
        return {"size": self.size, "rank": self.rank, "dtype": "float32", "order": "row-major",
                "segments": self.segments()}  # fmt: skip


def pack(coefficients: dict[str, tuple[np.ndarray, np.ndarray]], layout: CoefficientLayout,
         where: str = "task") -> np.ndarray:  # fmt: skip
    """The flat float32 vector [P] of a task's coefficients, in the layout's order."""
    missing = [m for m in layout.modules if m not in coefficients]
    extra = sorted(set(coefficients) - set(layout.modules))
    if missing or extra:
        raise EdgeEigenLoraError(
            f"{where}: coefficients do not fit the bundle layout: missing modules {missing[:3]}, unknown modules "
            f"{extra[:3]}. The task belongs to another basis or model: re-train it on this bundle's basis."
        )
    parts = []
    for m in layout.modules:
        want = (layout.widths[m], layout.rank)
        for side, arr in zip(("alpha_A", "alpha_B"), coefficients[m], strict=True):
            arr = np.asarray(arr)
            if arr.shape != want:
                have = sum(np.asarray(a).size for pair in coefficients.values() for a in pair)
                raise EdgeEigenLoraError(
                    f"{where}: coefficient length {have} does not fit this bundle (coefficients.size {layout.size}): "
                    f"{m}.{side} has shape {list(arr.shape)}, the layout expects {list(want)} (rank {layout.rank}). "
                    f"Re-train the task at rank {layout.rank} on this bundle's basis."
                )
            parts.append(arr.astype(np.float32).ravel())
    vector = np.concatenate(parts)
    if not np.all(np.isfinite(vector)):
        raise EdgeEigenLoraError(f"{where}: coefficients contain NaN or Inf; re-train or re-export the task.")
    return vector


def unpack(vector: np.ndarray, layout: CoefficientLayout) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Inverse of `pack`: module -> (alpha_A, alpha_B)."""
    vector = np.asarray(vector, np.float32)
    if vector.shape != (layout.size,):
        raise EdgeEigenLoraError(
            f"coefficient vector has shape {list(vector.shape)}, the bundle expects [{layout.size}] (coefficients.size)."
        )
    out = {}
    for m in layout.modules:
        off, n = layout.module_offset(m), layout.widths[m] * layout.rank
        shape = (layout.widths[m], layout.rank)
        out[m] = (
            vector[off : off + n].reshape(shape).copy(),
            vector[off + n : off + 2 * n].reshape(shape).copy(),
        )
    return out


def check_task_fits(task: Task, layout: CoefficientLayout, kind: str, hidden: int, where: str) -> np.ndarray:
    """Refuse a task that cannot run on this bundle; returns its packed vector."""
    task.check_finite(where)
    vector = pack(task.coefficients, layout, where)
    if kind == "classification":
        if task.head_weight is None:
            raise EdgeEigenLoraError(
                f"{where}: field 'head.weight' is missing; a classification bundle needs a head."
            )
        hw = np.asarray(task.head_weight)
        if hw.ndim != 2 or hw.shape[1] != hidden:
            raise EdgeEigenLoraError(
                f"{where}: head.weight has shape {list(hw.shape)} but the bundle's model has hidden size {hidden} "
                f"(expected [labels, {hidden}]); the head was trained for another base model."
            )
        if task.head_bias is not None and np.asarray(task.head_bias).shape != (hw.shape[0],):
            raise EdgeEigenLoraError(
                f"{where}: head.bias has shape {list(np.asarray(task.head_bias).shape)}, expected [{hw.shape[0]}]."
            )
    return vector


def check_task_name(name: str) -> str:
    if not TASK_NAME.match(name or "") or ".." in name:
        raise EdgeEigenLoraError(
            f"task name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit, with no path separators and no '..'. Rename the task (Task.name / --name)."
        )
    return name


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------


class Manifest:
    """A read manifest: the raw dict plus typed views of what the runtime needs."""

    def __init__(self, data: dict[str, Any], root: Path) -> None:
        self.data = data
        self.root = root
        self.layout = CoefficientLayout.from_manifest(data["coefficients"])

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    @property
    def hidden_size(self) -> int:
        return int(self.data["base_model"]["hidden_size"])

    @property
    def basis_fingerprint(self) -> str:
        return str(self.data["basis"]["fingerprint"])

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        return dict(self.data.get("tasks", {}))

    def graph(self, variant: str = "shared") -> dict[str, Any]:
        for g in self.data["graphs"]:
            if g["variant"] == variant:
                return g
        raise EdgeEigenLoraError(
            f"{self.root / MANIFEST}: this bundle has no {variant!r} graph (it has "
            f"{[g['variant'] for g in self.data['graphs']]}); re-export with that variant."
        )


def new_manifest(*, kind: str, base_model: dict, basis: dict, layout: CoefficientLayout, graphs: list[dict],
                 tokenizer: dict, target: str = "custom") -> dict[str, Any]:  # fmt: skip
    from edge_eigenlora import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"edge-eigenlora {__version__}",
        "target": target,
        "kind": kind,
        "base_model": base_model,
        "basis": basis,
        "coefficients": layout.to_manifest(),
        "head": {"hidden": base_model.get("hidden_size"), "labels": "dynamic"}
        if kind == "classification"
        else None,
        "graphs": graphs,
        "tokenizer": tokenizer,
        "tasks": {},
        "files": {},
    }


def inside_bundle(root: Path, rel: str, where: str) -> Path:
    path = (root / rel).resolve()
    if os.path.isabs(rel) or not path.is_relative_to(root.resolve()):
        raise EdgeEigenLoraError(
            f"{where}: path {rel!r} leaves the bundle folder; the manifest is unsafe: re-export."
        )
    return path


def _listed_files(root: Path) -> dict[str, str]:
    """sha256 of every regular file in the bundle except the manifest and hidden temporaries."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel != MANIFEST and not any(part.startswith(".") for part in Path(rel).parts):
            files[rel] = sha256_file(path)
    return files


def write_manifest(root: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Recompute every file's sha256 and write manifest.json atomically."""
    root = Path(root)
    manifest = dict(manifest)
    manifest["files"] = _listed_files(root)
    write_json_atomic(root / MANIFEST, manifest)


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Parse manifest.json and check its format and version (no checksums: see verify_bundle)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise EdgeEigenLoraError(
            f"{path} does not exist: {root} is not a bundle (build one with `edge-eigenlora export`)."
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeEigenLoraError(
            f"{path} is not valid JSON ({exc}); re-copy or re-export the bundle."
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EdgeEigenLoraError(
            f"{path}: field 'format' is not {FORMAT!r}; this is not an edge-eigenlora bundle."
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise EdgeEigenLoraError(
            f"{path}: format_version {data.get('format_version')!r} is not supported (this edge-eigenlora reads "
            f"version {FORMAT_VERSION}); upgrade edge-eigenlora or re-export the bundle."
        )
    for key in ("kind", "base_model", "basis", "coefficients", "graphs", "files"):
        if key not in data:
            raise EdgeEigenLoraError(f"{path}: field {key!r} is missing; re-export the bundle.")
    try:
        return Manifest(data, root)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, EdgeEigenLoraError):
            raise
        raise EdgeEigenLoraError(
            f"{path}: field 'coefficients' is malformed ({exc!r}); re-export the bundle."
        ) from exc


def verify_bundle(root: str | os.PathLike[str]) -> Manifest:
    """Check the manifest, every file's presence and sha256, and every task against the layout."""
    root = Path(root)
    manifest = read_manifest(root)
    where = root / MANIFEST
    for rel, digest in manifest.data["files"].items():
        path = inside_bundle(root, rel, str(where))
        if not path.is_file():
            raise EdgeEigenLoraError(
                f"bundle file {rel} listed in {where} is missing; re-copy the bundle or re-export it."
            )
        actual = sha256_file(path)
        if actual != digest:
            raise EdgeEigenLoraError(
                f"bundle file {rel}: sha256 mismatch (manifest {digest[:12]}, file {actual[:12]}); the file was "
                "modified or corrupted: re-copy the bundle or re-export it."
            )
    referenced = [g["file"] for g in manifest.data["graphs"]]
    referenced += [
        g[k] for g in manifest.data["graphs"] for k in ("ort_file", "required_operators") if k in g
    ]
    referenced += list(manifest.data.get("tokenizer", {}).get("files", []))
    referenced += [t["file"] for t in manifest.tasks.values()]
    for rel in referenced:
        if rel not in manifest.data["files"]:
            raise EdgeEigenLoraError(
                f"{where}: {rel} is referenced but has no sha256 under 'files'; re-export."
            )
    for name, info in manifest.tasks.items():
        check_task_name(name)
        load_bundle_task(manifest, name)
        if info["file"] != f"tasks/{name}.safetensors":
            raise EdgeEigenLoraError(
                f"{where}: task {name!r} points at {info['file']!r}, not tasks/{name}.safetensors."
            )
    return manifest


def load_bundle_task(bundle: str | os.PathLike[str] | Manifest, name: str) -> Task:
    """Read one of the bundle's tasks, refusing one that does not fit it."""
    manifest = bundle if isinstance(bundle, Manifest) else read_manifest(bundle)
    check_task_name(name)
    if name not in manifest.tasks:
        raise EdgeEigenLoraError(
            f"task {name!r} is not in bundle {manifest.root}; it has {sorted(manifest.tasks)}."
        )
    path = inside_bundle(manifest.root, manifest.tasks[name]["file"], str(manifest.root / MANIFEST))
    task = load_task(path, expected_basis=manifest.basis_fingerprint)
    check_task_fits(
        task, manifest.layout, manifest.kind, manifest.hidden_size, where=f"task file {path.name}"
    )
    return task


def task_feeds(task: Task, manifest: Manifest) -> dict[str, np.ndarray]:
    """The shared-variant graph inputs that carry a task: coefficients [P] (+ head_weight, head_bias)."""
    vector = check_task_fits(
        task, manifest.layout, manifest.kind, manifest.hidden_size, where=f"task {task.name!r}"
    )
    feeds = {"coefficients": vector}
    if manifest.kind == "classification":
        hw = np.asarray(task.head_weight, np.float32)
        hb = (
            np.zeros(hw.shape[0], np.float32)
            if task.head_bias is None
            else np.asarray(task.head_bias, np.float32)
        )
        feeds.update(head_weight=hw, head_bias=hb)
    return feeds


def row_feeds(tasks: list[Task], manifest: Manifest) -> dict[str, np.ndarray]:
    """Per-row variant inputs: row i runs tasks[i]. Classifiers in one batch must share the label count."""
    per = [task_feeds(t, manifest) for t in tasks]
    if manifest.kind == "classification" and len({f["head_bias"].shape[0] for f in per}) > 1:
        raise EdgeEigenLoraError(
            "per-row batch: the tasks have different label counts; pad heads to one count (zero rows, bias -inf)."
        )
    return {k: np.stack([f[k] for f in per]) for k in per[0]}


def register_file(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Re-hash the bundle's files after writing `path` into it (manifest rewritten atomically)."""
    manifest = read_manifest(root)
    inside_bundle(Path(root), Path(path).relative_to(Path(root)).as_posix(), str(path))
    write_manifest(root, manifest.data)


def add_task_object(root: str | os.PathLike[str], task: Task) -> str:
    """Write a task into the bundle (tasks/<name>.safetensors) and list it; the graphs are untouched."""
    root = Path(root)
    manifest = read_manifest(root)
    name = check_task_name(task.name)
    if task.basis_fingerprint != manifest.basis_fingerprint:
        raise EdgeEigenLoraError(
            f"task {name!r} was trained for basis {task.basis_fingerprint[:12]} but this bundle carries basis "
            f"{manifest.basis_fingerprint[:12]}. Coefficients only mean something on their own basis: re-train the "
            "task on this basis."
        )
    check_task_fits(task, manifest.layout, manifest.kind, manifest.hidden_size, where=f"task {name!r}")
    rel = f"tasks/{name}.safetensors"
    save_task(task, inside_bundle(root, rel, "task name"))
    data = manifest.data
    data.setdefault("tasks", {})[name] = {
        "file": rel, "kind": task.kind, "labels": list(task.labels),
        "num_labels": None if task.head_weight is None else int(np.asarray(task.head_weight).shape[0]),
    }  # fmt: skip
    write_manifest(root, data)
    return name


def add_task(
    bundle: str | os.PathLike[str], task_path: str | os.PathLike[str], *, name: str | None = None
) -> str:
    """Add a task file to an existing bundle without re-exporting any graph; returns the task's name."""
    manifest = read_manifest(bundle)
    task = load_task(task_path, expected_basis=manifest.basis_fingerprint)
    check_task_fits(
        task, manifest.layout, manifest.kind, manifest.hidden_size, where=f"task file {task_path}"
    )
    if name is not None:
        task.name = name
    return add_task_object(bundle, task)


def list_tasks(bundle: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per task: name, kind, labels, file."""
    manifest = read_manifest(bundle)
    return [{"name": n, **info} for n, info in sorted(manifest.tasks.items())]
