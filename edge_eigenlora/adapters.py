"""Read PEFT LoRA adapter folders into plain numpy factors, and validate a bank of them.

A PEFT folder holds `adapter_config.json` and `adapter_model.safetensors` with keys such as
`base_model.model.encoder.layer.0.attention.self.query.lora_A.weight`. The scale (lora_alpha / r, or
lora_alpha / sqrt(r) with rsLoRA, per-module overrides from rank_pattern / alpha_pattern) is folded
into B, so that delta W = B @ A exactly for every module.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import (
    FLOAT_DTYPES,
    SafetensorsHeader,
    read_float_tensor,
    read_safetensors,
    read_safetensors_header,
    save_safetensors_atomic,
)

__all__ = [
    "AdapterBank",
    "CONFIG_NAME",
    "ClassifierHead",
    "HEAD_NAME",
    "LazyModules",
    "LoraAdapter",
    "LoraFactors",
    "PICKLE_NAMES",
    "WEIGHTS_NAME",
    "check_factor_values",
    "load_bank",
    "parse_adapter_config",
    "read_adapter",
    "read_head",
    "write_head",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$"
)


@dataclass(frozen=True)
class LoraFactors:
    """One adapted Linear: delta W = B @ A with the scale already folded into B."""

    A: np.ndarray  # r x d_in
    B: np.ndarray  # d_out x r

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in), like the Linear weight it adapts."""
        return int(self.B.shape[0]), int(self.A.shape[1])

    def delta(self) -> np.ndarray:
        return self.B.astype(np.float64) @ self.A.astype(np.float64)


@dataclass(frozen=True)
class LoraAdapter:
    name: str
    path: Path
    base_model: str | None
    modules: Mapping[str, LoraFactors]
    config: dict[str, Any] = field(repr=False)
    shapes: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # module -> (d_out, d_in), from the header


@dataclass(frozen=True)
class AdapterBank:
    """Adapters of one base model. Modules may be missing from some adapters (recorded, not an error)."""

    adapters: tuple[LoraAdapter, ...]
    base_model: str | None
    module_shapes: dict[str, tuple[int, int]]

    def names(self) -> list[str]:
        return [a.name for a in self.adapters]

    def adapters_with(self, module: str) -> list[LoraAdapter]:
        return [a for a in self.adapters if module in a.modules]

    def missing(self) -> dict[str, list[str]]:
        """Module -> names of the adapters that do not adapt it."""
        out = {}
        for module in self.module_shapes:
            lacking = [a.name for a in self.adapters if module not in a.modules]
            if lacking:
                out[module] = lacking
        return out


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the module name or its dotted suffix."""
    for key, value in patterns.items():
        if module == key or re.fullmatch(rf"(?:.*\.)?(?:{key})", module):
            return value
    return default


MAX_FACTOR_VALUE = 1e6  # LoRA factors are O(1); anything this large is a broken or non-LoRA tensor


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_rank(value: Any, path: str | Path, field: str) -> int:
    if not _is_number(value) or not math.isfinite(value) or value != int(value) or value < 1:
        raise EdgeEigenLoraError(
            f"{path}: field {field} must be a positive whole number (the LoRA rank), found {value!r}. "
            "Set it to the rank the adapter was trained with (the first dimension of lora_A)."
        )
    return int(value)


def _check_alpha(value: Any, path: str | Path, field: str) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0 or value > 1e12:
        raise EdgeEigenLoraError(
            f"{path}: field {field} must be a positive, finite number (LoRA's alpha), found {value!r}. "
            "Set it to the lora_alpha the adapter was trained with."
        )
    return float(value)


def _check_bool(config: dict[str, Any], key: str, path: str | Path) -> bool:
    value = config.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise EdgeEigenLoraError(
            f"{path}: field {key!r} must be true or false (a JSON boolean), found {value!r}. "
            f"Write {key}: false or {key}: true without quotes."
        )
    return value


def check_factor_values(array: np.ndarray, path: str | Path, module: str, side: str, tensor: str) -> None:
    """Refuse NaN, Inf and values no LoRA factor has: the one check for every source of a bank."""
    if not np.all(np.isfinite(array)):
        raise EdgeEigenLoraError(
            f"{path}: module {module!r} lora_{side} contains NaN or Inf (or values beyond float32's range) in "
            f"tensor {tensor!r}. The adapter is broken; re-train it or leave it out of the bank (--skip-bad)."
        )
    peak = float(np.abs(array).max()) if array.size else 0.0
    if peak > MAX_FACTOR_VALUE:
        raise EdgeEigenLoraError(
            f"{path}: tensor {tensor!r} (module {module!r} lora_{side}) holds values as large as {peak:.3g}; "
            f"LoRA factors are of order 1 and this reader refuses anything above {MAX_FACTOR_VALUE:.0e}, where "
            "the subspace fit would lose all precision. The adapter is broken or not a LoRA adapter; re-train it "
            "or leave it out of the bank (--skip-bad)."
        )


def _read_config(folder: Path) -> dict[str, Any]:
    """Read a local adapter folder's adapter_config.json (see `parse_adapter_config`)."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise EdgeEigenLoraError(
            f"{folder} is not a PEFT adapter folder: {CONFIG_NAME} is missing. "
            "Point to the folder written by PEFT's save_pretrained()."
        )
    return parse_adapter_config(path.read_bytes(), path)


def parse_adapter_config(data: bytes, path: str | Path) -> dict[str, Any]:
    """Check every adapter_config.json field this toolkit uses, so the scale is never wrong; `path` names it.

    The one check for every source (local folders, list files, fsspec URLs).
    """
    try:
        config = json.loads(data.decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise EdgeEigenLoraError(
            f"{path} is not valid JSON ({str(exc)[:200]}). Re-download or re-save the adapter."
        ) from None
    if not isinstance(config, dict):
        raise EdgeEigenLoraError(f"{path} must hold a JSON object, found {type(config).__name__}.")
    peft_type = config.get("peft_type", "LORA")
    if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
        raise EdgeEigenLoraError(
            f"{path}: field 'peft_type' is {str(peft_type)[:80]!r}; only LoRA adapters can be recycled."
        )
    if _check_bool(config, "use_dora", path):
        raise EdgeEigenLoraError(
            f"{path}: field 'use_dora' is true. DoRA's magnitude vector has no place in a shared subspace; "
            "use plain LoRA adapters."
        )
    _check_bool(config, "use_rslora", path)
    config["r"] = _check_rank(config.get("r"), path, "'r'")
    config["lora_alpha"] = _check_alpha(config.get("lora_alpha"), path, "'lora_alpha'")
    for key, check in (("rank_pattern", _check_rank), ("alpha_pattern", _check_alpha)):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            raise EdgeEigenLoraError(
                f"{path}: field {key!r} must be an object mapping module patterns to numbers, found "
                f"{type(patterns).__name__}."
            )
        for pattern, value in patterns.items():
            check(value, path, f"{key}[{pattern[:80]!r}]")
            try:
                re.compile(rf"(?:.*\.)?(?:{pattern})")  # the form _pattern_value matches with
            except (re.error, RecursionError, OverflowError) as exc:
                raise EdgeEigenLoraError(
                    f"{path}: field {key} has the key {pattern[:80]!r}, which is not a valid module pattern "
                    f"(a regular expression, as in PEFT: {exc}). Use the module's name, e.g. 'query'."
                ) from None
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise EdgeEigenLoraError(
            f"{path}: field 'base_model_name_or_path' must be a string (the base model's name), found "
            f"{type(base).__name__}."
        )
    return config


class _TensorSource:
    """Where an adapter's tensors come from: a safetensors file read lazily, or a trusted pickle in memory.

    Safetensors files are parsed by `fileio.read_safetensors_header` (every offset checked) and their
    float32, float64, float16 and bfloat16 tensors are read as float32; integer (quantized) ones are refused.
    """

    def __init__(self, folder: Path, trust_pickle: bool) -> None:
        self.path = folder / WEIGHTS_NAME
        self._tensors: dict[str, np.ndarray] | None = None
        self._header: SafetensorsHeader | None = None
        if self.path.is_file():
            self._header = read_safetensors_header(self.path, "adapter weights")
            self.shapes = {k: v.shape for k, v in self._header.tensors.items()}
            self.dtypes = {k: v.dtype for k, v in self._header.tensors.items()}
            return
        pickled = [folder / n for n in PICKLE_NAMES if (folder / n).is_file()]
        if not pickled:
            raise EdgeEigenLoraError(f"{folder}: no {WEIGHTS_NAME} found. Point to the folder PEFT wrote.")
        if not trust_pickle:
            raise EdgeEigenLoraError(
                f"{pickled[0]} is a pickled PyTorch file; loading it could run arbitrary code. Convert it to "
                f"{WEIGHTS_NAME}, or pass --trust-pickle (trust_pickle=True) if you trust its source."
            )
        import torch  # only on this explicit, trusted path

        self.path = pickled[0]
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types here
            raise EdgeEigenLoraError(
                f"{self.path} could not be loaded with weights_only=True ({exc})."
            ) from exc
        if not isinstance(state, dict):
            raise EdgeEigenLoraError(
                f"{self.path} holds a {type(state).__name__}, not a state dict of tensors."
            )
        self._tensors, self.dtypes = {}, {}
        for k, v in state.items():
            if not isinstance(v, torch.Tensor):
                raise EdgeEigenLoraError(f"{self.path}: entry {str(k)[:80]!r} is not a tensor.")
            if "lora_" in str(k) and not v.is_floating_point():
                raise EdgeEigenLoraError(
                    f"{self.path}: tensor {k!r} is {v.dtype}, not floating point. Quantized LoRA factors "
                    "carry no scale this reader can trust: de-quantize the adapter and save it again."
                )
            self._tensors[str(k)] = v.float().numpy() if v.is_floating_point() else v.numpy()
            self.dtypes[str(k)] = str(v.dtype)
        self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

    def get(self, key: str) -> np.ndarray:
        if self._tensors is not None:
            return self._tensors[key]
        assert self._header is not None
        return read_float_tensor(self._header, key, "adapter weights")


class LazyModules(Mapping[str, LoraFactors]):
    """Module -> factors, read from disk on each access: a bank of any size costs one module of memory."""

    def __init__(self, names: list[str], load: Callable[[str], LoraFactors]) -> None:
        self._names = names
        self._load = load

    def __getitem__(self, module: str) -> LoraFactors:
        if module not in self._names:
            raise KeyError(module)
        return self._load(module)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, module: object) -> bool:
        return module in self._names


def read_adapter(
    path: str | Path, *, name: str | None = None, trust_pickle: bool = False, lazy: bool = False
) -> LoraAdapter:
    """Read one PEFT LoRA folder; fold each module's scale into B.

    lazy=True reads only the safetensors header now and each module's tensors when asked for (streaming
    fits of large banks); shape and config checks happen here either way, NaN checks on each read.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise EdgeEigenLoraError(f"adapter folder {folder} does not exist.")
    config = _read_config(folder)
    source = _TensorSource(folder, trust_pickle)
    sides: dict[str, dict[str, str]] = {}
    for key in source.shapes:
        match = _KEY.match(key)
        if match is None:
            if "lora_" in key or "magnitude" in key:
                raise EdgeEigenLoraError(
                    f"{source.path}: tensor {key!r} is not a LoRA A/B weight of a Linear layer "
                    "(embedding LoRA, DoRA and LoRA biases are not supported). Re-train without them."
                )
            continue  # e.g. modules_to_save heads: not part of the subspace
        sides.setdefault(match["module"], {})[match["side"]] = key
    if not sides:
        raise EdgeEigenLoraError(f"{source.path} holds no LoRA weights (no '*.lora_A.weight' keys).")
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    scales: dict[str, float] = {}
    for module, pair in sorted(sides.items()):
        if set(pair) != {"A", "B"}:
            raise EdgeEigenLoraError(
                f"{source.path}: module {module!r} has only lora_{''.join(pair)}; both A and B are needed."
            )
        a_shape, b_shape = source.shapes[pair["A"]], source.shapes[pair["B"]]
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise EdgeEigenLoraError(
                f"{source.path}: module {module!r} has lora_A {a_shape} and lora_B {b_shape}; "
                "expected A (r x d_in) and B (d_out x r)."
            )
        for side in "AB":
            dtype = source.dtypes[pair[side]]
            if source._header is not None and dtype not in FLOAT_DTYPES:
                raise EdgeEigenLoraError(
                    f"{source.path}: tensor {pair[side]!r} is {dtype}, not floating point "
                    f"({', '.join(FLOAT_DTYPES)}). Quantized (e.g. int8) LoRA factors carry no scale this "
                    "reader can trust: de-quantize the adapter to float16/bfloat16/float32 and save it again."
                )
        r = int(_pattern_value(rank_pattern, module, config["r"]))
        if r != a_shape[0]:
            raise EdgeEigenLoraError(
                f"{folder / CONFIG_NAME}: module {module!r} has rank {a_shape[0]} in the weights but the config "
                f"says r={r} (field 'r' or 'rank_pattern'). Fix the config so the scale is right."
            )
        alpha = float(_pattern_value(alpha_pattern, module, config["lora_alpha"]))
        scales[module] = alpha / math.sqrt(r) if config.get("use_rslora") is True else alpha / r

    def load(module: str) -> LoraFactors:
        A = source.get(sides[module]["A"]).astype(np.float32)
        B = source.get(sides[module]["B"]).astype(np.float32)
        for side, array in (("A", A), ("B", B)):
            check_factor_values(array, source.path, module, side, sides[module][side])
        return LoraFactors(A=A, B=(B * np.float32(scales[module])).astype(np.float32))

    names = sorted(sides)
    modules: Mapping[str, LoraFactors] = LazyModules(names, load) if lazy else {m: load(m) for m in names}
    return LoraAdapter(
        name=name or folder.name,
        path=folder,
        base_model=config.get("base_model_name_or_path"),
        modules=modules,
        config=config,
        shapes={
            m: (int(source.shapes[sides[m]["B"]][0]), int(source.shapes[sides[m]["A"]][1])) for m in names
        },
    )


def _same_base(a: str | None, b: str | None) -> bool:
    """Hub ids and local folders name the same model when their last path components agree."""
    if not a or not b:
        return True
    return a == b or Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()


def load_bank(
    paths: Iterable[str | Path],
    *,
    trust_pickle: bool = False,
    names: Sequence[str] | None = None,
    lazy: bool = False,
) -> AdapterBank:
    """Read and validate N adapters: one base model (by config and by tensor shapes), unique names.

    lazy=True keeps only headers in memory (see read_adapter): for banks larger than memory.
    """
    paths = list(paths)
    if not paths:
        raise EdgeEigenLoraError("the adapter bank is empty: give at least one PEFT adapter folder.")
    if names is not None and len(names) != len(paths):
        raise EdgeEigenLoraError(f"{len(names)} names given for {len(paths)} adapters.")
    adapters = [
        read_adapter(p, name=None if names is None else names[i], trust_pickle=trust_pickle, lazy=lazy)
        for i, p in enumerate(paths)
    ]
    seen: dict[str, Path] = {}
    for adapter in adapters:
        if adapter.name in seen:
            raise EdgeEigenLoraError(
                f"two adapters are named {adapter.name!r} ({seen[adapter.name]} and {adapter.path}); "
                "adapter names must be unique: rename a folder or pass names."
            )
        seen[adapter.name] = adapter.path
    reference = next((a for a in adapters if a.base_model), adapters[0])
    shapes: dict[str, tuple[int, int]] = {}
    owner: dict[str, LoraAdapter] = {}
    for adapter in adapters:
        if not _same_base(reference.base_model, adapter.base_model):
            raise EdgeEigenLoraError(
                "adapters of two different base models in one bank: "
                f"{reference.base_model!r} ({reference.path / CONFIG_NAME}) and {adapter.base_model!r} "
                f"({adapter.path / CONFIG_NAME}). A subspace is only shared by adapters of one base model."
            )
        for module, shape in adapter.shapes.items():
            if module in shapes and shapes[module] != shape:
                raise EdgeEigenLoraError(
                    f"module {module!r} is {shape} (d_out, d_in) in {adapter.path} but "
                    f"{shapes[module]} in {owner[module].path}: these adapters were not trained on the same "
                    "base model."
                )
            shapes.setdefault(module, shape)
            owner.setdefault(module, adapter)
    return AdapterBank(
        adapters=tuple(adapters), base_model=reference.base_model, module_shapes=dict(sorted(shapes.items()))
    )


HEAD_NAME = "classifier_head.safetensors"


@dataclass(frozen=True)
class ClassifierHead:
    """The task head a bank adapter was trained with (our bank builder writes it beside PEFT's files)."""

    weight: np.ndarray  # labels x hidden
    bias: np.ndarray | None
    labels: list[str]


def read_head(folder: str | Path) -> ClassifierHead | None:
    path = Path(folder) / HEAD_NAME
    if not path.is_file():
        return None
    tensors, meta = read_safetensors(path, "classifier head")
    if "weight" not in tensors:
        raise EdgeEigenLoraError(f"{path}: tensor 'weight' is missing.")
    try:
        labels = json.loads(meta.get("labels", "[]"))
    except json.JSONDecodeError as exc:
        raise EdgeEigenLoraError(f"{path}: metadata field 'labels' is not valid JSON ({exc}).") from exc
    return ClassifierHead(weight=tensors["weight"], bias=tensors.get("bias"), labels=list(labels))


def write_head(folder: str | Path, weight: np.ndarray, bias: np.ndarray | None, labels: list[str]) -> Path:
    tensors = {"weight": np.asarray(weight, np.float32)}
    if bias is not None:
        tensors["bias"] = np.asarray(bias, np.float32)
    path = Path(folder) / HEAD_NAME
    save_safetensors_atomic(path, tensors, {"labels": json.dumps(list(labels))})
    return path
