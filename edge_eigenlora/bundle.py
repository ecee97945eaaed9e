"""The bundle contract: names, manifest schema, coefficient layout, task files, checksums, verify, writes.

numpy + standard library only (NO torch, no onnx): the device runtime imports this module. It is the one
place that spells a graph variant, a graph input or output name, the opset or a manifest field; every other
module (export, train step, runtime, benchmarks) uses the names and typed dataclasses defined here.

A bundle is a folder:
    manifest.json                 format version, fingerprints, graphs and their inputs/outputs, layout, files
    model_<variant>.onnx          graph structure; its large tensors live in the shared weights file
    weights.data                  ONNX external data: every distinct tensor of every graph, stored once
    model_<variant>.ort           ORT Mobile form (self-contained) + .required_operators.config, when asked
    tokenizer/...                 the tokenizer's files
    tasks/<name>.safetensors      one task: coefficients (+ head), bound to the basis fingerprint
Every file except manifest.json is listed under `files` with its sha256, hashed once when it is written.
Writes are atomic (temp + rename); writers of an existing bundle hold `.manifest.lock`, so concurrent
`add_task` calls from two processes both land.

Packed coefficient vector (one per task, float32, length `coefficients.size` = P): basis modules in sorted
name order; for each, alpha_A (width x r, row-major) then alpha_B (width x r).

Format history: version 1 stored each graph self-contained and gave the train-step entry its own fields
(`coefficients_size`, no `bytes`); `read_manifest` migrates it in memory, and the next write stores version 2.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import atomic_path, sha256_file, write_bytes_atomic
from edge_eigenlora.task import Task, load_task, require_basis, save_task

__all__ = [
    "ATTENTION_MASK",
    "BASIS_SUFFIXES",
    "BaseModelInfo",
    "BasisInfo",
    "DecoderInfo",
    "BundleWriter",
    "COEFFICIENTS",
    "CoefficientLayout",
    "FORMAT",
    "FORMAT_VERSION",
    "GRAD_PREFIX",
    "GraphEntry",
    "HEAD_BIAS",
    "HEAD_WEIGHT",
    "FACTORED",
    "FACTORS",
    "FACTOR_A",
    "FACTOR_B",
    "INFERENCE_VARIANTS",
    "INPUT_IDS",
    "KINDS",
    "IGNORE_INDEX",
    "LOCK_FILE",
    "LABELS",
    "LOGITS",
    "LOSS",
    "MANIFEST",
    "MERGED",
    "Manifest",
    "OPSET",
    "PAST_KEY",
    "PAST_VALUE",
    "PER_ROW",
    "POSITION_IDS",
    "PRESENT_KEY",
    "PRESENT_VALUE",
    "Quantization",
    "SHARED",
    "TRAIN_PARAMS",
    "TRAIN_STEP",
    "TaskEntry",
    "TensorSpec",
    "TokenizerSettings",
    "VARIANTS",
    "WEIGHTS_FILE",
    "add_task",
    "add_task_object",
    "cache_input_names",
    "cache_output_names",
    "check_task_fits",
    "check_task_name",
    "graph_bytes",
    "graph_file",
    "factor_names",
    "graph_input_names",
    "graph_output_names",
    "inside_bundle",
    "list_tasks",
    "load_bundle_task",
    "onnx_external_locations",
    "onnx_external_tensors",
    "pack",
    "read_manifest",
    "row_feeds",
    "task_feeds",
    "train_params",
    "unpack",
    "update_bundle",
    "verify_bundle",
]

FORMAT = "edge-eigenlora-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
LOCK_FILE = ".manifest.lock"
WEIGHTS_FILE = "weights.data"
OPSET = 18
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Graph variants. "factored" takes each adapted module's factors A^T, B^T as inputs instead of the
# coefficients: the runtime forms them once per task switch with the "factors" graph (coefficients -> factors,
# the basis inside), so no call re-forms them; export writes "factors" whenever it writes "factored".
SHARED, PER_ROW, MERGED, TRAIN_STEP = "shared", "per_row", "merged", "train_step"
FACTORED, FACTORS = "factored", "factors"
INFERENCE_VARIANTS: tuple[str, ...] = (SHARED, PER_ROW, MERGED, FACTORED)
VARIANTS: tuple[str, ...] = INFERENCE_VARIANTS + (FACTORS, TRAIN_STEP)
KINDS: tuple[str, ...] = ("classification", "causal_lm")

# Graph input and output names (the names optimum / transformers.js use where one exists).
INPUT_IDS, ATTENTION_MASK, LABELS = "input_ids", "attention_mask", "labels"
COEFFICIENTS, HEAD_WEIGHT, HEAD_BIAS = "coefficients", "head_weight", "head_bias"
LOGITS, LOSS, GRAD_PREFIX = "logits", "loss", "grad_"
TRAIN_PARAMS: tuple[str, ...] = (COEFFICIENTS, HEAD_WEIGHT, HEAD_BIAS)
# A decoder's step graph: positions and the KV cache, one key and one value per layer (optimum's names).
POSITION_IDS = "position_ids"
PAST_KEY, PAST_VALUE = "past_key_values.{}.key", "past_key_values.{}.value"
PRESENT_KEY, PRESENT_VALUE = "present.{}.key", "present.{}.value"
IGNORE_INDEX = -100  # a causal-LM label that takes no loss (prompt and padding tokens)
# The factored graph's inputs (the factors graph's outputs): for module j of the layout's sorted modules,
# A_j^T [d_in, r] and B_j^T [r, d_out], what the shared graph forms from the coefficients on every call.
FACTOR_A, FACTOR_B = "factor_a.{}", "factor_b.{}"
# Initializer-name suffixes of the (transposed) basis tensors inside a graph: quantization finds them by these.
BASIS_SUFFIXES: tuple[str, ...] = (".U_A_t", ".U_B_t")


def graph_file(variant: str) -> str:
    """The ONNX file name of a variant's graph inside a bundle."""
    return f"model_{variant}.onnx"


def cache_input_names(num_layers: int) -> tuple[str, ...]:
    """past_key_values.{i}.key, past_key_values.{i}.value for every layer, layer by layer."""
    return tuple(n.format(i) for i in range(num_layers) for n in (PAST_KEY, PAST_VALUE))


def cache_output_names(num_layers: int) -> tuple[str, ...]:
    return tuple(n.format(i) for i in range(num_layers) for n in (PRESENT_KEY, PRESENT_VALUE))


def factor_names(num_modules: int) -> tuple[str, ...]:
    """factor_a.{j}, factor_b.{j} for every adapted module j (the layout's sorted order), module by module."""
    return tuple(n.format(j) for j in range(num_modules) for n in (FACTOR_A, FACTOR_B))


def _factor_count(variant: str, num_modules: int | None) -> int:
    if not num_modules:
        raise EdgeEigenLoraError(
            f"the {variant} graph carries one factor pair per adapted module: give num_modules to name them."
        )
    return num_modules


def train_params(kind: str) -> tuple[str, ...]:
    """The train step's trainable inputs: coefficients, and the head for a classifier."""
    return TRAIN_PARAMS if kind == "classification" else (COEFFICIENTS,)


def _decoder_layers(kind: str, variant: str, num_layers: int | None) -> int:
    if kind != "causal_lm" or variant == TRAIN_STEP:
        return 0
    if not num_layers:
        raise EdgeEigenLoraError(
            "a causal-LM inference graph carries a KV cache: give num_layers to name its inputs."
        )
    return num_layers


def graph_input_names(
    kind: str, variant: str, num_layers: int | None = None, num_modules: int | None = None
) -> tuple[str, ...]:
    """The contract's input names, in order, for one kind of model and one variant.

    A causal-LM inference graph is the step graph (prefill with an empty past, then one token at a time):
    input_ids, attention_mask (past + new), position_ids, the past cache of `num_layers` layers. The factored
    graph takes `num_modules` factor pairs where the others take coefficients; the factors graph takes only
    the coefficients.
    """
    if variant == FACTORS:
        return (COEFFICIENTS,)
    tokens = (INPUT_IDS, ATTENTION_MASK)
    layers = _decoder_layers(kind, variant, num_layers)
    if layers:
        tokens += (POSITION_IDS,) + cache_input_names(layers)
    head = (HEAD_WEIGHT, HEAD_BIAS) if kind == "classification" else ()
    if variant == MERGED:
        return tokens
    if variant == TRAIN_STEP:
        return tokens + (LABELS, COEFFICIENTS) + head
    if variant == FACTORED:
        return tokens + factor_names(_factor_count(variant, num_modules)) + head
    return tokens + (COEFFICIENTS,) + head


def graph_output_names(
    kind: str, variant: str, num_layers: int | None = None, num_modules: int | None = None
) -> tuple[str, ...]:
    """A causal-LM train step returns no logits (a [batch, seq, vocab] output would dwarf the step)."""
    if variant == FACTORS:
        return factor_names(_factor_count(variant, num_modules))
    if variant == TRAIN_STEP:
        grads = tuple(GRAD_PREFIX + p for p in train_params(kind))
        return (LOSS, LOGITS) + grads if kind == "classification" else (LOSS,) + grads
    return (LOGITS,) + cache_output_names(_decoder_layers(kind, variant, num_layers))


# ----------------------------------------------------------------------------------------------
# Coefficient layout and packing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoefficientLayout:
    """Where each module's coefficients sit in the packed vector."""

    modules: tuple[str, ...]  # sorted basis module names
    widths: dict[str, int]  # module -> width (k + p)
    rank: int

    @classmethod
    def from_widths(cls, widths: dict[str, int], rank: int) -> CoefficientLayout:
        names = tuple(sorted(widths))
        return cls(modules=names, widths={m: int(widths[m]) for m in names}, rank=int(rank))

    @classmethod
    def from_basis(cls, basis: Any, rank: int) -> CoefficientLayout:
        return cls.from_widths({m: mb.width for m, mb in basis.modules.items()}, rank)

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

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "rank": self.rank,
            "dtype": "float32",
            "order": "row-major",
            "segments": self.segments(),
        }


def pack(
    coefficients: dict[str, tuple[np.ndarray, np.ndarray]], layout: CoefficientLayout, where: str = "task"
) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------
# Manifest schema: frozen dataclasses, read with field-level validation
# ----------------------------------------------------------------------------------------------


class _Reader:
    """Typed access to one JSON object; every error names the manifest file and the field's path."""

    def __init__(self, obj: Any, path: str, where: Path) -> None:
        if not isinstance(obj, dict):
            raise _bad(where, path, f"must be an object, got {type(obj).__name__}")
        self.obj, self.path, self.where = obj, path, where

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str, optional: bool = False) -> Any:
        if key not in self.obj:
            if optional:
                return None
            raise EdgeEigenLoraError(
                f"{self.where}: field {self._name(key)!r} is missing; re-export the bundle."
            )
        return self.obj[key]

    def child(self, key: str) -> _Reader:
        return _Reader(self.raw(key), self._name(key), self.where)

    def str(self, key: str, optional: bool = False) -> str | None:
        value = self.raw(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise _bad(self.where, self._name(key), f"must be a string, got {value!r}")
        return value

    def int(self, key: str, minimum: int | None = None, optional: bool = False) -> int | None:
        value = self.raw(key, optional)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(self.where, self._name(key), f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise _bad(self.where, self._name(key), f"must be >= {minimum}, got {value}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.raw(key, optional=True)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise _bad(self.where, self._name(key), f"must be true or false, got {value!r}")
        return value

    def strs(self, key: str, optional: bool = False) -> tuple[str, ...]:
        value = self.raw(key, optional)
        if value is None and optional:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(self.where, self._name(key), "must be a list of strings")
        return tuple(value)

    def items(self, key: str) -> list[_Reader]:
        value = self.raw(key)
        if not isinstance(value, list):
            raise _bad(self.where, self._name(key), "must be a list")
        return [_Reader(v, f"{self._name(key)}[{i}]", self.where) for i, v in enumerate(value)]

    def choice(self, key: str, allowed: Sequence[str]) -> str:
        value = self.str(key)
        if value not in allowed:
            raise _bad(self.where, self._name(key), f"must be one of {list(allowed)}, got {value!r}")
        return value  # type: ignore[return-value]


def _bad(where: Path, name: str, why: str) -> EdgeEigenLoraError:
    return EdgeEigenLoraError(
        f"{where}: field {name!r} {why}; the manifest is damaged: re-export the bundle."
    )


def _relative_file(reader: _Reader, key: str, optional: bool = False) -> str | None:
    """A file name in the manifest: relative, inside the bundle, no '..' and no absolute path."""
    rel = reader.str(key, optional)
    if rel is not None:
        _check_relative(rel, reader.where, reader._name(key))
    return rel


def _check_relative(rel: str, where: Path, name: str) -> None:
    parts = Path(rel).parts
    if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or ".." in parts or "\\" in rel:
        raise EdgeEigenLoraError(
            f"{where}: field {name!r} path {rel!r} leaves the bundle folder; the manifest is unsafe: re-export."
        )


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def read(cls, r: _Reader) -> TensorSpec:
        shape = r.raw("shape")
        if not isinstance(shape, list) or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or isinstance(d, str) for d in shape
        ):
            raise _bad(r.where, r._name("shape"), "must be a list of sizes (>= 0) or axis names")
        return cls(r.str("name"), r.str("dtype"), tuple(shape))  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


QUANT_MODES: tuple[str, ...] = ("none", "int8", "int4")


@dataclass(frozen=True)
class Quantization:
    basis: str = "none"
    base: str = "none"
    precision: str = "fp32"
    block_size: int | None = None

    @classmethod
    def read(cls, r: _Reader) -> Quantization:
        return cls(
            r.choice("basis", QUANT_MODES),
            r.choice("base", QUANT_MODES),
            r.choice("precision", ("fp32", "fp16")),
            r.int("block_size", minimum=1, optional=True),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"basis": self.basis, "base": self.base, "precision": self.precision}
        if self.block_size is not None:
            out["block_size"] = self.block_size
        return out


@dataclass(frozen=True)
class GraphEntry:
    """One graph of the bundle; the same schema for every variant, the train step included.

    external_data: the files holding its large tensors (ONNX external data, shared between graphs).
    task: the task folded into a merged graph. loss / max_seq: the train step's loss and longest sequence.
    """

    variant: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    quantization: Quantization
    op_counts: dict[str, int] = field(default_factory=dict)
    bytes: int | None = None
    external_data: tuple[str, ...] = ()
    ort_file: str | None = None
    required_operators: str | None = None
    task: str | None = None
    loss: str | None = None
    max_seq: int | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)

    def files(self) -> list[str]:
        """Every bundle file this graph needs."""
        return [self.file, *self.external_data] + [f for f in (self.ort_file, self.required_operators) if f]

    @classmethod
    def read(cls, r: _Reader) -> GraphEntry:
        counts = r.raw("op_counts", optional=True) or {}
        if not isinstance(counts, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in counts.values()
        ):
            raise _bad(r.where, r._name("op_counts"), "must map op names to counts")
        return cls(
            variant=r.choice("variant", VARIANTS),
            file=_relative_file(r, "file"),  # type: ignore[arg-type]
            inputs=tuple(TensorSpec.read(s) for s in r.items("inputs")),
            outputs=tuple(TensorSpec.read(s) for s in r.items("outputs")),
            quantization=Quantization.read(r.child("quantization")),
            op_counts=dict(counts),
            bytes=r.int("bytes", minimum=0, optional=True),
            external_data=tuple(_checked_list(r, "external_data")),
            ort_file=_relative_file(r, "ort_file", optional=True),
            required_operators=_relative_file(r, "required_operators", optional=True),
            task=r.str("task", optional=True),
            loss=r.str("loss", optional=True),
            max_seq=r.int("max_seq", minimum=1, optional=True),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "variant": self.variant,
            "file": self.file,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "quantization": self.quantization.to_json(),
            "op_counts": dict(sorted(self.op_counts.items())),
            "external_data": list(self.external_data),
        }
        for key in ("bytes", "ort_file", "required_operators", "task", "loss", "max_seq"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _checked_list(r: _Reader, key: str) -> list[str]:
    names = list(r.strs(key, optional=True))
    for i, rel in enumerate(names):
        _check_relative(rel, r.where, f"{r._name(key)}[{i}]")
    return names


@dataclass(frozen=True)
class BaseModelInfo:
    name: str
    fingerprint: str
    architecture: str
    hidden_size: int

    @classmethod
    def read(cls, r: _Reader) -> BaseModelInfo:
        return cls(
            r.str("name"), r.str("fingerprint"), r.str("architecture"), r.int("hidden_size", minimum=1)
        )  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "architecture": self.architecture,
            "hidden_size": self.hidden_size,
        }


@dataclass(frozen=True)
class BasisInfo:
    fingerprint: str
    modules: tuple[str, ...]
    widths: dict[str, int]

    @classmethod
    def read(cls, r: _Reader) -> BasisInfo:
        widths = r.raw("width")
        if not isinstance(widths, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in widths.values()
        ):
            raise _bad(r.where, r._name("width"), "must map module names to widths >= 1")
        return cls(r.str("fingerprint"), r.strs("modules"), dict(widths))  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "modules": list(self.modules), "width": dict(self.widths)}


@dataclass(frozen=True)
class DecoderInfo:
    """A causal LM's step graph: what the runtime needs to build an empty KV cache and to stop generating.

    The cache of layer i is [batch, num_kv_heads, positions, head_dim] float32; max_positions bounds
    prompt + generated tokens; chat_template names a Jinja file among the tokenizer files (or None).
    """

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int
    vocab_size: int
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    chat_template: str | None = None

    @classmethod
    def read(cls, r: _Reader) -> DecoderInfo:
        eos = r.raw("eos_token_ids", optional=True) or []
        if not isinstance(eos, list) or not all(
            isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in eos
        ):
            raise _bad(r.where, r._name("eos_token_ids"), "must be a list of token ids >= 0")
        info = cls(
            num_layers=r.int("num_layers", minimum=1),  # type: ignore[arg-type]
            num_heads=r.int("num_heads", minimum=1),  # type: ignore[arg-type]
            num_kv_heads=r.int("num_kv_heads", minimum=1),  # type: ignore[arg-type]
            head_dim=r.int("head_dim", minimum=1),  # type: ignore[arg-type]
            max_positions=r.int("max_positions", minimum=1),  # type: ignore[arg-type]
            vocab_size=r.int("vocab_size", minimum=1),  # type: ignore[arg-type]
            eos_token_ids=tuple(eos),
            bos_token_id=r.int("bos_token_id", minimum=0, optional=True),
            chat_template=_relative_file(r, "chat_template", optional=True),
        )
        if info.num_heads % info.num_kv_heads:
            raise _bad(r.where, r._name("num_kv_heads"), f"must divide num_heads ({info.num_heads})")
        return info

    def to_json(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_positions": self.max_positions,
            "vocab_size": self.vocab_size,
            "eos_token_ids": list(self.eos_token_ids),
            "bos_token_id": self.bos_token_id,
            "chat_template": self.chat_template,
        }


@dataclass(frozen=True)
class TokenizerSettings:
    files: tuple[str, ...] = ()
    max_length: int = 128
    padding_side: str = "right"
    truncation: bool = True
    pooling: str = "mean"
    pad_token_id: int | None = None

    @classmethod
    def read(cls, r: _Reader) -> TokenizerSettings:
        return cls(
            files=tuple(_checked_list(r, "files")),
            max_length=r.int("max_length", minimum=1, optional=True) or 128,  # type: ignore[arg-type]
            padding_side=r.str("padding_side", optional=True) or "right",  # type: ignore[arg-type]
            truncation=r.bool("truncation", True),
            pooling=r.str("pooling", optional=True) or "mean",  # type: ignore[arg-type]
            pad_token_id=r.int("pad_token_id", minimum=0, optional=True),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "files": list(self.files),
            "max_length": self.max_length,
            "padding_side": self.padding_side,
            "truncation": self.truncation,
            "pooling": self.pooling,
            "pad_token_id": self.pad_token_id,
        }


@dataclass(frozen=True)
class TaskEntry:
    file: str
    kind: str
    labels: tuple[str, ...]
    num_labels: int | None

    @classmethod
    def read(cls, r: _Reader, name: str) -> TaskEntry:
        check_task_name(name)
        entry = cls(
            file=_relative_file(r, "file"),  # type: ignore[arg-type]
            kind=r.str("kind", optional=True) or "classification",  # type: ignore[arg-type]
            labels=r.strs("labels", optional=True),
            num_labels=r.int("num_labels", minimum=1, optional=True),
        )
        if entry.file != f"tasks/{name}.safetensors":
            raise _bad(r.where, r._name("file"), f"must be tasks/{name}.safetensors, got {entry.file!r}")
        if entry.num_labels is not None and entry.labels and len(entry.labels) != entry.num_labels:
            raise _bad(r.where, r.path, f"lists {len(entry.labels)} labels for num_labels {entry.num_labels}")
        return entry

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "kind": self.kind,
            "labels": list(self.labels),
            "num_labels": self.num_labels,
        }


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest.json, typed. `root` is the folder it was read from (not stored in the file)."""

    kind: str
    base_model: BaseModelInfo
    basis: BasisInfo
    layout: CoefficientLayout
    graphs: tuple[GraphEntry, ...]
    tokenizer: TokenizerSettings
    tasks: dict[str, TaskEntry] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    target: str = "custom"
    created_by: str = ""
    decoder: DecoderInfo | None = None
    root: Path = Path(".")
    format_version: int = FORMAT_VERSION

    @property
    def path(self) -> Path:
        return self.root / MANIFEST

    @property
    def hidden_size(self) -> int:
        return self.base_model.hidden_size

    @property
    def basis_fingerprint(self) -> str:
        return self.basis.fingerprint

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(g.variant for g in self.graphs)

    def has_graph(self, variant: str) -> bool:
        return variant in self.variants

    def graph(self, variant: str = SHARED) -> GraphEntry:
        for g in self.graphs:
            if g.variant == variant:
                return g
        raise EdgeEigenLoraError(
            f"{self.path}: this bundle has no {variant!r} graph (it has {list(self.variants)}); re-export with "
            "that variant."
        )

    def referenced_files(self) -> list[str]:
        """Every file the manifest points at, each once."""
        refs = [f for g in self.graphs for f in g.files()] + list(self.tokenizer.files)
        if self.decoder is not None and self.decoder.chat_template:
            refs.append(self.decoder.chat_template)
        refs += [t.file for t in self.tasks.values()]
        return list(dict.fromkeys(refs))

    def _base_json(self) -> dict[str, Any]:
        from edge_eigenlora import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_by": self.created_by or f"edge-eigenlora {__version__}",
            "target": self.target,
            "kind": self.kind,
            "base_model": self.base_model.to_json(),
            "basis": self.basis.to_json(),
            "coefficients": self.layout.to_json(),
            "head": {"hidden": self.hidden_size, "labels": "dynamic"}
            if self.kind == "classification"
            else None,
            "graphs": [g.to_json() for g in self.graphs],
            "tokenizer": self.tokenizer.to_json(),
            "tasks": {n: t.to_json() for n, t in sorted(self.tasks.items())},
            "files": dict(sorted(self.files.items())),
        }

    def to_json(self) -> dict[str, Any]:
        """The decoder section is written only where there is one (classification manifests are unchanged)."""
        out = self._base_json()
        if self.decoder is not None:
            out["decoder"] = self.decoder.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any, root: Path) -> Manifest:
        """Validate every field (type and range) and build the typed manifest; format 1 is migrated."""
        where = root / MANIFEST
        r = _Reader(data, "", where)
        if data.get("format") != FORMAT:
            raise EdgeEigenLoraError(
                f"{where}: field 'format' is not {FORMAT!r}; this is not an edge-eigenlora bundle."
            )
        version = data.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise EdgeEigenLoraError(
                f"{where}: format_version {version!r} is not supported (this edge-eigenlora reads versions "
                f"{list(READABLE_VERSIONS)}); upgrade edge-eigenlora or re-export the bundle."
            )
        kind = r.choice("kind", KINDS)
        layout = _read_layout(r.child("coefficients"))
        graphs = tuple(GraphEntry.read(g) for g in r.items("graphs"))
        if version == 1:
            graphs = tuple(_migrate_v1_graph(g, r, layout) for g in graphs)
        seen = [g.variant for g in graphs]
        if len(set(seen)) != len(seen):
            raise _bad(where, "graphs", f"lists a variant twice ({seen})")
        if FACTORED in seen and FACTORS not in seen:
            raise _bad(
                where,
                "graphs",
                f"has the {FACTORED!r} graph without the {FACTORS!r} graph that forms its inputs; re-export both",
            )
        files = r.raw("files")
        if not isinstance(files, dict) or not all(
            isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in files.values()
        ):
            raise _bad(where, "files", "must map file names to sha256 hex digests")
        for i, rel in enumerate(files):
            _check_relative(rel, where, f"files[{i}]")
        tasks_raw = r.raw("tasks", optional=True) or {}
        if not isinstance(tasks_raw, dict):
            raise _bad(where, "tasks", "must be an object")
        tasks = {n: TaskEntry.read(_Reader(v, f"tasks.{n}", where), n) for n, v in tasks_raw.items()}
        manifest = cls(
            kind=kind,
            base_model=BaseModelInfo.read(r.child("base_model")),
            basis=BasisInfo.read(r.child("basis")),
            layout=layout,
            graphs=graphs,
            tokenizer=TokenizerSettings.read(r.child("tokenizer"))
            if r.raw("tokenizer", optional=True) is not None
            else TokenizerSettings(),
            tasks=tasks,
            files=dict(files),
            target=r.str("target", optional=True) or "custom",  # type: ignore[arg-type]
            created_by=r.str("created_by", optional=True) or "",  # type: ignore[arg-type]
            decoder=DecoderInfo.read(r.child("decoder"))
            if r.raw("decoder", optional=True) is not None
            else None,
            root=root,
            format_version=int(version),
        )
        if set(manifest.basis.modules) != set(layout.modules):
            raise _bad(where, "basis.modules", "names other modules than coefficients.segments")
        for rel in manifest.referenced_files():
            if rel not in manifest.files:
                raise EdgeEigenLoraError(
                    f"{where}: {rel} is referenced but has no sha256 under 'files'; re-export."
                )
        return manifest


def _read_layout(r: _Reader) -> CoefficientLayout:
    rank = r.int("rank", minimum=1)
    widths: dict[str, int] = {}
    for seg in r.items("segments"):
        module, _, side = seg.str("name").rpartition(".")  # type: ignore[union-attr]
        shape = seg.raw("shape")
        if side == "alpha_A" and isinstance(shape, list) and shape and isinstance(shape[0], int):
            widths[module] = int(shape[0])
    layout = CoefficientLayout.from_widths(widths, rank)  # type: ignore[arg-type]
    if (
        layout.segments() != r.raw("segments")
        or layout.size != r.int("size", minimum=1)
        or r.raw("dtype", optional=True) not in (None, "float32")
    ):
        raise _bad(
            r.where,
            "coefficients",
            "is inconsistent (segments are not the sorted, contiguous float32 alpha_A/alpha_B layout of size 'size')",
        )
    return layout


def _migrate_v1_graph(graph: GraphEntry, r: _Reader, layout: CoefficientLayout) -> GraphEntry:
    """Format 1's train-step entry carried `coefficients_size`: check it against the layout."""
    if graph.variant != TRAIN_STEP:
        return graph
    raw = next(g for g in r.raw("graphs") if g.get("variant") == TRAIN_STEP)
    size = raw.get("coefficients_size")
    if size is not None and size != layout.size:
        raise _bad(r.where, "graphs.train_step.coefficients_size", f"is {size}, the layout has {layout.size}")
    return graph


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Parse and validate manifest.json (no checksums: see verify_bundle)."""
    root = Path(root)
    path = root / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise EdgeEigenLoraError(
            f"{path} does not exist or is not a regular file: {root} is not a bundle (build one with "
            "`edge-eigenlora export`)."
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise EdgeEigenLoraError(
            f"{path} is not valid JSON ({exc}); re-copy or re-export the bundle."
        ) from exc
    except OSError as exc:
        raise EdgeEigenLoraError(f"{path} cannot be read ({exc.strerror}); check its permissions.") from exc
    if not isinstance(data, dict):
        raise EdgeEigenLoraError(f"{path}: the manifest must be a JSON object; re-export the bundle.")
    return Manifest.from_json(data, root)


# ----------------------------------------------------------------------------------------------
# Tasks against a bundle
# ----------------------------------------------------------------------------------------------


def check_task_fits(task: Task, layout: CoefficientLayout, kind: str, hidden: int, where: str) -> np.ndarray:
    """Refuse a task that cannot run on this bundle; returns its packed vector."""
    task.check_finite(where)
    if task.kind in KINDS and task.kind != kind:
        raise EdgeEigenLoraError(
            f"{where}: the task is a {task.kind} task but this bundle is a {kind} bundle; a classifier's task "
            "runs on a classification bundle (`run`), a language model's on a causal_lm bundle (`generate`)."
        )
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
        if task.labels and len(task.labels) != hw.shape[0]:
            raise EdgeEigenLoraError(
                f"{where}: field 'labels' lists {len(task.labels)} names but head.weight has {hw.shape[0]} rows; "
                "give one label name per head row (or none)."
            )
    return vector


def check_task_name(name: str) -> str:
    if not isinstance(name, str) or not TASK_NAME.match(name) or ".." in name:
        raise EdgeEigenLoraError(
            f"task name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit, with no path separators and no '..'. Rename the task (Task.name / --name)."
        )
    return name


def inside_bundle(root: Path, rel: str, where: str) -> Path:
    """The path of a bundle file, refusing anything that leaves the folder (also through symlinks)."""
    _check_relative(rel, Path(where), "path")
    path = root / rel
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()) or any(
        p.is_symlink() for p in [path, *path.parents] if p.is_relative_to(root) and p != root
    ):
        raise EdgeEigenLoraError(
            f"{where}: path {rel!r} leaves the bundle folder; the manifest is unsafe: re-export."
        )
    return path


def load_bundle_task(bundle: str | os.PathLike[str] | Manifest, name: str) -> Task:
    """Read one of the bundle's tasks, refusing one that does not fit it."""
    manifest = bundle if isinstance(bundle, Manifest) else read_manifest(bundle)
    check_task_name(name)
    if name not in manifest.tasks:
        raise EdgeEigenLoraError(
            f"task {name!r} is not in bundle {manifest.root}; it has {sorted(manifest.tasks)}."
        )
    path = inside_bundle(manifest.root, manifest.tasks[name].file, str(manifest.path))
    task = load_task(path, expected_basis=manifest.basis_fingerprint)
    check_task_fits(
        task, manifest.layout, manifest.kind, manifest.hidden_size, where=f"task file {path.name}"
    )
    return task


def task_feeds(task: Task, manifest: Manifest) -> dict[str, np.ndarray]:
    """The shared-variant graph inputs that carry a task: coefficients [P] (+ head_weight, head_bias)."""
    require_basis(task.basis_fingerprint, manifest.basis_fingerprint, f"task {task.name!r}", "this bundle")
    vector = check_task_fits(
        task, manifest.layout, manifest.kind, manifest.hidden_size, where=f"task {task.name!r}"
    )
    feeds = {COEFFICIENTS: vector}
    if manifest.kind == "classification":
        hw = np.asarray(task.head_weight, np.float32)
        hb = (
            np.zeros(hw.shape[0], np.float32)
            if task.head_bias is None
            else np.asarray(task.head_bias, np.float32)
        )
        feeds.update({HEAD_WEIGHT: hw, HEAD_BIAS: hb})
    return feeds


def row_feeds(per_task: Sequence[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Per-row variant inputs from each row's `task_feeds`, and each row's label count.

    Tasks with different label counts share one batch: every head is padded to the largest count with zero
    weight rows and a bias of -inf, so a padded label never wins and its probability is exactly 0. Callers
    cut row i's logits to its own count (the second return value).
    """
    if not per_task:
        raise EdgeEigenLoraError("per-row batch: give at least one task.")
    feeds = {COEFFICIENTS: np.stack([f[COEFFICIENTS] for f in per_task])}
    if HEAD_WEIGHT not in per_task[0]:
        return feeds, [0] * len(per_task)
    counts = [int(f[HEAD_WEIGHT].shape[0]) for f in per_task]
    width, hidden = max(counts), per_task[0][HEAD_WEIGHT].shape[1]
    hw = np.zeros((len(per_task), width, hidden), np.float32)
    hb = np.full((len(per_task), width), -np.inf, np.float32)
    for i, f in enumerate(per_task):
        hw[i, : counts[i]], hb[i, : counts[i]] = f[HEAD_WEIGHT], f[HEAD_BIAS]
    feeds.update({HEAD_WEIGHT: hw, HEAD_BIAS: hb})
    return feeds, counts


def graph_bytes(manifest: Manifest, variant: str) -> int:
    """What one graph costs on its own: its .onnx plus every distinct external tensor it reads."""
    entry = manifest.graph(variant)
    path = inside_bundle(manifest.root, entry.file, str(manifest.path))
    tensors = onnx_external_tensors(path.read_bytes(), f"graph file {entry.file}")
    distinct = {(t["location"], t["offset"], t["length"]) for t in tensors}
    return path.stat().st_size + sum(length or 0 for _, _, length in distinct)


def list_tasks(bundle: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per task: name, kind, labels, num_labels, file."""
    manifest = read_manifest(bundle)
    return [{"name": n, **t.to_json()} for n, t in sorted(manifest.tasks.items())]


# ----------------------------------------------------------------------------------------------
# Verify
# ----------------------------------------------------------------------------------------------


def _bundle_files(root: Path) -> list[str]:
    """Every entry below the bundle (symlinks listed, never followed) but the manifest, its lock, writers'
    temporaries (`.name.*.tmp`) and `.checkpoints/`."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        if rel_dir.parts[:1] == (".checkpoints",):
            dirnames[:] = []
            continue
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            rel = (rel_dir / name).as_posix()
            temporary = name.startswith(".") and name.endswith(".tmp")
            if rel not in (MANIFEST, LOCK_FILE) and not temporary:
                out.append(rel)
    return sorted(out)


def verify_bundle(root: str | os.PathLike[str], *, strict: bool = True) -> Manifest:
    """Check the manifest, every listed file (regular, inside, sha256), every task, and every graph's external data.

    strict: also refuse files that are in the folder but not listed (a bundle ships exactly what it lists),
    and symlinks anywhere in it.
    """
    root = Path(root)
    manifest = read_manifest(root)
    where = manifest.path
    for rel, digest in manifest.files.items():
        path = inside_bundle(root, rel, str(where))
        if path.is_symlink() or not path.is_file():
            raise EdgeEigenLoraError(
                f"bundle file {rel} listed in {where} is missing or not a regular file; re-copy the bundle or "
                "re-export it."
            )
        actual = sha256_file(path)
        if actual != digest:
            raise EdgeEigenLoraError(
                f"bundle file {rel}: sha256 mismatch (manifest {digest[:12]}, file {actual[:12]}); the file was "
                "modified or corrupted: re-copy the bundle or re-export it."
            )
    if strict:
        unlisted = [rel for rel in _bundle_files(root) if rel not in manifest.files]
        if unlisted:
            raise EdgeEigenLoraError(
                f"{root}: {len(unlisted)} file(s) are in the bundle folder but not listed in {MANIFEST}: "
                f"{unlisted[:5]}. A bundle ships exactly what it lists: remove them (a symlink is never allowed)."
            )
    for graph in manifest.graphs:
        _check_external_data(manifest, graph)
    for name in manifest.tasks:
        load_bundle_task(manifest, name)
    return manifest


def _check_external_data(manifest: Manifest, graph: GraphEntry) -> None:
    """The graph's external-data locations (read from the ONNX file itself) must be listed, inside files."""
    path = manifest.root / graph.file
    for location in onnx_external_locations(path.read_bytes(), f"graph file {graph.file}"):
        if location not in graph.external_data or location not in manifest.files:
            raise EdgeEigenLoraError(
                f"{manifest.path}: graph {graph.file} reads external data from {location!r}, which is not a listed "
                f"file of its entry (external_data {list(graph.external_data)}); the bundle is unsafe: re-export."
            )


def onnx_external_locations(model_bytes: bytes, where: str = "an ONNX graph") -> set[str]:
    """The `location` of every external-data tensor in a serialized ONNX model."""
    return {t["location"] for t in onnx_external_tensors(model_bytes, where)}


def onnx_external_tensors(model_bytes: bytes, where: str = "an ONNX graph") -> list[dict[str, Any]]:
    """name, data_type, dims, location, offset and length of every external-data initializer (no onnx import).

    A minimal protobuf walk: ModelProto.graph(7) -> GraphProto.initializer(5) -> TensorProto {dims(1),
    data_type(2), name(8), external_data(13) = StringStringEntryProto{key(1), value(2)}}, recursing into node
    attributes' subgraphs (NodeProto(1).attribute(5).g(6) / graphs(11)).
    """
    tensors: list[dict[str, Any]] = []
    try:
        for num, wire, value in _fields(model_bytes):
            if num == 7 and wire == 2:
                _walk_graph(value, tensors)
    except (ValueError, IndexError) as exc:
        raise EdgeEigenLoraError(
            f"{where} is not a valid ONNX file ({exc}); re-copy or re-export the bundle."
        ) from exc
    return tensors


def _walk_graph(graph: bytes, out: list[dict[str, Any]]) -> None:
    for num, wire, value in _fields(graph):
        if num == 5 and wire == 2:  # initializer
            tensor: dict[str, Any] = {"dims": []}
            external: dict[str, str] = {}
            for tnum, twire, tval in _fields(value):
                if tnum == 1 and twire == 0:
                    tensor["dims"].append(tval)
                elif tnum == 1 and twire == 2:  # packed dims
                    pos = 0
                    while pos < len(tval):
                        dim, pos = _varint(tval, pos)
                        tensor["dims"].append(dim)
                elif tnum == 2 and twire == 0:
                    tensor["data_type"] = tval
                elif tnum == 8 and twire == 2:
                    tensor["name"] = tval.decode("utf-8", "replace")
                elif tnum == 13 and twire == 2:
                    entry = {k: v for k, _, v in _fields(tval)}
                    external[entry.get(1, b"").decode("utf-8", "replace")] = entry.get(2, b"").decode(
                        "utf-8", "replace"
                    )
            if "location" in external:
                try:
                    tensor.update(
                        location=external["location"],
                        offset=int(external.get("offset", "0")),
                        length=int(external["length"]) if "length" in external else None,
                    )
                except ValueError as exc:
                    raise EdgeEigenLoraError(
                        f"an ONNX graph's external data has a bad offset ({exc}); re-export."
                    ) from exc
                out.append(tensor)
        elif num == 1 and wire == 2:  # node -> attribute(5) -> g(6) / graphs(11)
            for anum, awire, aval in _fields(value):
                if anum == 5 and awire == 2:
                    for gnum, gwire, gval in _fields(aval):
                        if gnum in (6, 11) and gwire == 2:
                            _walk_graph(gval, out)


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; ValueError on malformed bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire}")
        if pos > end:
            raise ValueError("truncated")
        yield num, wire, value


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


# ----------------------------------------------------------------------------------------------
# Writes: hash each file once, lock the manifest for read-modify-write
# ----------------------------------------------------------------------------------------------


class BundleWriter:
    """Writes files into a bundle folder, hashing each once as it is written, then the manifest.

    Used by export (a new bundle) and by `update_bundle` (an existing one); a file written by another tool
    (ORT's converter) is hashed once by `add_existing`.
    """

    def __init__(self, root: str | os.PathLike[str], files: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.files: dict[str, str] = dict(files or {})
        self.manifest: Manifest | None = None  # what `update_bundle` stores when the block ends

    def write_bytes(self, rel: str, data: bytes) -> Path:
        path = inside_bundle(self.root, rel, "bundle writer")
        write_bytes_atomic(path, data)
        self.files[rel] = hashlib.sha256(data).hexdigest()
        return path

    def write_chunks(self, rel: str, chunks: Iterable[bytes]) -> Path:
        """Stream a large file (the shared weights) to disk, hashing it on the way."""
        path = inside_bundle(self.root, rel, "bundle writer")
        digest = hashlib.sha256()
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            for chunk in chunks:
                digest.update(chunk)
                fh.write(chunk)
        self.files[rel] = digest.hexdigest()
        return path

    def write_task(self, task: Task) -> str:
        rel = f"tasks/{check_task_name(task.name)}.safetensors"
        path = save_task(task, inside_bundle(self.root, rel, "bundle writer"))
        self.files[rel] = sha256_file(path)
        return rel

    def add_existing(self, rel: str) -> None:
        path = inside_bundle(self.root, rel, "bundle writer")
        if path.is_symlink() or not path.is_file():
            raise EdgeEigenLoraError(
                f"{path} is not a regular file; the bundle writer lists regular files only."
            )
        self.files[rel] = sha256_file(path)

    def write_manifest(self, manifest: Manifest) -> Manifest:
        manifest = replace(manifest, files=dict(self.files), root=self.root, format_version=FORMAT_VERSION)
        Manifest.from_json(
            json.loads(json.dumps(manifest.to_json())), self.root
        )  # never write what we cannot read
        with atomic_path(manifest.path) as tmp:
            tmp.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
        return manifest


@contextlib.contextmanager
def update_bundle(root: str | os.PathLike[str]) -> Iterator[tuple[Manifest, BundleWriter]]:
    """Read-modify-write of an existing bundle under an exclusive lock (other writers wait).

    Yields the current manifest and a writer seeded with its file digests; the caller writes new files with
    the writer and sets `writer.manifest` to the manifest to store (unchanged when it does not).
    """
    root = Path(root)
    lock_path = root / LOCK_FILE
    if lock_path.is_symlink():
        raise EdgeEigenLoraError(f"{lock_path} is a symlink; the bundle is unsafe: remove it.")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        _lock(fd)
        manifest = read_manifest(root)
        writer = BundleWriter(root, manifest.files)
        writer.manifest = manifest
        yield manifest, writer
        if writer.manifest is not None and writer.manifest is not manifest:
            writer.write_manifest(writer.manifest)
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: a single writer is assumed
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def add_task_object(root: str | os.PathLike[str], task: Task, *, overwrite: bool = False) -> str:
    """Write a task into the bundle (tasks/<name>.safetensors) and list it; only the new file is hashed."""
    name = check_task_name(task.name)
    with update_bundle(root) as (manifest, writer):
        require_basis(task.basis_fingerprint, manifest.basis_fingerprint, f"task {name!r}", "this bundle")
        check_task_fits(task, manifest.layout, manifest.kind, manifest.hidden_size, where=f"task {name!r}")
        if name in manifest.tasks and not overwrite:
            raise EdgeEigenLoraError(
                f"task {name!r} already exists in {manifest.root}; choose another name (--name) or pass "
                "--overwrite to replace it."
            )
        rel = writer.write_task(task)
        num_labels = None if task.head_weight is None else int(np.asarray(task.head_weight).shape[0])
        entry = TaskEntry(rel, task.kind, tuple(task.labels), num_labels)
        writer.manifest = replace(manifest, tasks={**manifest.tasks, name: entry})
    return name


def add_task(
    bundle: str | os.PathLike[str],
    task_path: str | os.PathLike[str],
    *,
    name: str | None = None,
    overwrite: bool = False,
) -> str:
    """Add a task file to an existing bundle without re-exporting or re-hashing any graph; returns its name."""
    manifest = read_manifest(bundle)
    task = load_task(task_path, expected_basis=manifest.basis_fingerprint)
    check_task_fits(
        task, manifest.layout, manifest.kind, manifest.hidden_size, where=f"task file {task_path}"
    )
    if name is not None:
        task.name = name
    return add_task_object(bundle, task, overwrite=overwrite)
