"""A bank given as folders, folder trees, list files or fsspec URLs, read lazily one module at a time.

Hub-scale banks do not fit in memory and often not on one disk: `open_bank` reads only each adapter's
config and safetensors header (a few KB), checks them against each other, and returns an ordinary
`AdapterBank` whose modules are read from storage (local files by plain reads, anything else through
fsspec byte ranges) when the fit asks for them. The safetensors header is parsed here as JSON and the
byte ranges are checked against the file size, so a truncated or corrupt file is found before the fit
starts; nothing is ever unpickled. Adapter sources are picklable, so Dask workers read their own shards.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_eigenlora.adapters import (
    _KEY,
    CONFIG_NAME,
    PICKLE_NAMES,
    WEIGHTS_NAME,
    AdapterBank,
    LazyModules,
    LoraAdapter,
    LoraFactors,
    _pattern_value,
    _same_base,
    check_factor_values,
    parse_adapter_config,
)
from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["AdapterSource", "OpenedBank", "open_bank", "resolve_sources"]

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_MAX_HEADER = 100 * 2**20


def _is_url(location: str) -> bool:
    return "://" in location


def _join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}" if _is_url(location) else str(Path(location) / name)


def _fs(location: str) -> tuple[Any, str]:
    import fsspec  # only for URLs: plain paths are read with open()

    return fsspec.core.url_to_fs(location)


def _read_bytes(location: str, start: int | None = None, end: int | None = None) -> bytes:
    if not _is_url(location):
        with open(location, "rb") as fh:
            if start is None:
                return fh.read()
            fh.seek(start)
            return fh.read(end - start)  # type: ignore[operator]
    fs, path = _fs(location)
    if start is None:
        return fs.cat_file(path)
    return fs.cat_file(path, start=start, end=end)


def _size(location: str) -> int:
    if not _is_url(location):
        return os.path.getsize(location)
    fs, path = _fs(location)
    return int(fs.size(path))


def _exists(location: str) -> bool:
    if not _is_url(location):
        return os.path.isfile(location)
    fs, path = _fs(location)
    return bool(fs.isfile(path))


def resolve_sources(items: Sequence[str | Path]) -> list[tuple[str, str]]:
    """(name, location) of every adapter folder the items stand for, in a stable order.

    An item is an adapter folder (it holds adapter_config.json), a folder tree (every folder below that
    holds one; names are paths relative to the tree's root), a list file (one item per line, '#' comments,
    relative paths relative to the list file) or an fsspec URL of any of those (file://, memory://, s3://
    when its filesystem package is installed).
    """
    out: list[tuple[str, str]] = []
    for raw in items:
        item = str(raw)
        if _is_url(item):
            fs, path = _fs(item)
            is_dir, is_file = fs.isdir(path), fs.isfile(path)
        else:
            path, is_dir, is_file = item, os.path.isdir(item), os.path.isfile(item)
        if is_file:
            out.extend(resolve_sources(_list_file(item)))
        elif not is_dir:
            raise EdgeEigenLoraError(
                f"adapter source {item} does not exist. Give a PEFT adapter folder, a folder tree of them, "
                "a list file (one location per line) or an fsspec URL."
            )
        elif _exists(_join(item, CONFIG_NAME)):
            out.append((Path(item.rstrip("/")).name, item))
        else:
            found = _tree(item)
            if not found:
                raise EdgeEigenLoraError(
                    f"{item} holds no PEFT adapter folders (no */{CONFIG_NAME} below it)."
                )
            out.extend(found)
    return out


def _list_file(item: str) -> list[str]:
    try:
        text = _read_bytes(item).decode()
    except UnicodeDecodeError as exc:
        raise EdgeEigenLoraError(
            f"{item} is a file but not a text list of adapter locations ({exc}). Give one location per line."
        ) from exc
    base = item.rsplit("/", 1)[0] if _is_url(item) else str(Path(item).parent)
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    entries = [line for line in lines if line]
    if not entries:
        raise EdgeEigenLoraError(f"list file {item} names no adapters (one folder or URL per line).")
    return [e if _is_url(e) or os.path.isabs(e) else _join(base, e) for e in entries]


def _tree(root: str) -> list[tuple[str, str]]:
    """Adapter folders below root, named by their path relative to it (unique across shards of a tree)."""
    if _is_url(root):
        fs, path = _fs(root)
        protocol = root.split("://", 1)[0]
        found = sorted(p for p in fs.find(path) if p.endswith("/" + CONFIG_NAME))
        folders = [p[: -len(CONFIG_NAME) - 1] for p in found]
        rel = [f[len(path.rstrip("/")) + 1 :] for f in folders]
        return [(r, f"{protocol}://{f}" if "://" not in f else f) for r, f in zip(rel, folders, strict=True)]
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if CONFIG_NAME in files:
            out.append((os.path.relpath(folder, root), folder))
            dirs.clear()  # an adapter folder's subfolders are not adapters
    return sorted(out)


@dataclass(frozen=True)
class _Tensor:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int
    key: str  # the tensor's name in the file


@dataclass(frozen=True)
class AdapterSource:
    """What is needed to read one adapter's modules later, from any process: location, layout, scales."""

    name: str
    location: str
    weights: str
    base_model: str | None
    config: dict[str, Any]
    tensors: dict[str, tuple[_Tensor, _Tensor, float]]  # module -> (lora_A, lora_B, scale)

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {m: (int(b.shape[0]), int(a.shape[1])) for m, (a, b, _) in self.tensors.items()}

    def _array(self, module: str, side: str, t: _Tensor) -> np.ndarray:
        try:
            raw = _read_bytes(self.weights, t.start, t.end)
        except OSError as exc:
            raise EdgeEigenLoraError(
                f"{self.weights}: module {module!r} lora_{side} could not be read ({exc}). Check the file is "
                "still there and readable, or leave the adapter out (--skip-bad)."
            ) from exc
        if len(raw) != t.end - t.start:
            raise EdgeEigenLoraError(
                f"{self.weights}: module {module!r} lora_{side} is cut short ({len(raw)} of {t.end - t.start} "
                "bytes): the file changed or is truncated. Re-download it, or leave it out (--skip-bad)."
            )
        array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[t.dtype]).newbyteorder("<")).reshape(t.shape)
        if t.dtype == "BF16":  # bfloat16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array.astype(np.float32)

    def load(self, module: str) -> LoraFactors:
        """Read one module's factors (scale folded into B); NaN or Inf is refused with the file and field."""
        a, b, scale = self.tensors[module]
        A, B = self._array(module, "A", a), self._array(module, "B", b)
        for side, array, tensor in (("A", A, a), ("B", B, b)):
            check_factor_values(array, self.weights, module, side, tensor.key)
        return LoraFactors(A=A, B=(B * np.float32(scale)).astype(np.float32))

    def adapter(self) -> LoraAdapter:
        return LoraAdapter(
            name=self.name,
            path=Path(self.location),
            base_model=self.base_model,
            modules=LazyModules(sorted(self.tensors), self.load),
            config=self.config,
            shapes=self.shapes(),
        )


def _config(location: str) -> dict[str, Any]:
    where = _join(location, CONFIG_NAME)
    try:
        data = _read_bytes(where)
    except OSError as exc:
        raise EdgeEigenLoraError(f"{where} could not be read ({exc}).") from exc
    return parse_adapter_config(data, where)


def _header(weights: str) -> dict[str, _Tensor]:
    """Parse a safetensors header (JSON) and check every tensor's byte range against the file size."""
    fix = "It may be truncated or corrupt: re-create or re-download it, or leave it out (--skip-bad)."
    try:
        size = _size(weights)
        head = _read_bytes(weights, 0, 8)
        (length,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
        if length is None or length > min(size - 8, _MAX_HEADER):
            raise EdgeEigenLoraError(f"{weights}: the safetensors header length is invalid. {fix}")
        header = json.loads(_read_bytes(weights, 8, 8 + length).decode())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeEigenLoraError(f"{weights} is not a readable safetensors file ({exc}). {fix}") from exc
    if not isinstance(header, dict):
        raise EdgeEigenLoraError(f"{weights}: the safetensors header is not a JSON object. {fix}")
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = (
                info["dtype"],
                tuple(int(x) for x in info["shape"]),
                info["data_offsets"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeEigenLoraError(
                f"{weights}: header entry {key!r} is malformed ({exc!r}). {fix}"
            ) from exc
        if dtype not in _DTYPES:
            if "lora_" in key:
                raise EdgeEigenLoraError(
                    f"{weights}: tensor {key!r} is {dtype}; LoRA factors must be F32, F16, BF16 or F64 (quantized "
                    "factors carry no scale this reader can trust): de-quantize the adapter to "
                    "float16/bfloat16/float32 and save it again."
                )
            continue
        nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
        start, stop = 8 + length + int(begin), 8 + length + int(end)
        if int(end) - int(begin) != nbytes or stop > size or begin < 0:
            raise EdgeEigenLoraError(
                f"{weights}: tensor {key!r} ({dtype} {list(shape)}) claims bytes {begin}-{end} but the file "
                f"holds {size - 8 - length} data bytes. {fix}"
            )
        out[key] = _Tensor(dtype, shape, start, stop, key)
    return out


def _source(name: str, location: str) -> AdapterSource:
    """Config + header of one adapter, validated; no tensor data is read."""
    config = _config(location)
    weights = _join(location, WEIGHTS_NAME)
    if not _exists(weights):
        pickled = [n for n in PICKLE_NAMES if _exists(_join(location, n))]
        hint = (
            f" It has {pickled[0]}: pickles are never read from a streamed bank; convert it to safetensors."
            if pickled
            else ""
        )
        raise EdgeEigenLoraError(f"{location}: no {WEIGHTS_NAME} found.{hint}")
    header = _header(weights)
    sides: dict[str, dict[str, str]] = {}
    for key in header:
        match = _KEY.match(key)
        if match is None:
            if "lora_" in key or "magnitude" in key:
                raise EdgeEigenLoraError(
                    f"{weights}: tensor {key!r} is not a LoRA A/B weight of a Linear layer (embedding LoRA, "
                    "DoRA and LoRA biases are not supported). Re-train without them."
                )
            continue
        sides.setdefault(match["module"], {})[match["side"]] = key
    if not sides:
        raise EdgeEigenLoraError(f"{weights} holds no LoRA weights (no '*.lora_A.weight' keys).")
    tensors = {}
    for module, pair in sorted(sides.items()):
        if set(pair) != {"A", "B"}:
            raise EdgeEigenLoraError(
                f"{weights}: module {module!r} has only lora_{''.join(pair)}; both A and B are needed."
            )
        a, b = header[pair["A"]], header[pair["B"]]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise EdgeEigenLoraError(
                f"{weights}: module {module!r} has lora_A {list(a.shape)} and lora_B {list(b.shape)}; "
                "expected A (r x d_in) and B (d_out x r)."
            )
        r = float(_pattern_value(config.get("rank_pattern") or {}, module, config["r"]))
        if r != a.shape[0]:
            raise EdgeEigenLoraError(
                f"{_join(location, CONFIG_NAME)}: module {module!r} has rank {a.shape[0]} in the weights but "
                f"the config says r={r:g} (field 'r' or 'rank_pattern'). Fix the config so the scale is right."
            )
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        tensors[module] = (a, b, scale)
    return AdapterSource(
        name=name,
        location=location,
        weights=weights,
        base_model=config.get("base_model_name_or_path"),
        config=config,
        tensors=tensors,
    )


@dataclass(frozen=True)
class OpenedBank:
    """A lazily read bank, and the adapters left out of it (name -> the error that says why)."""

    bank: AdapterBank
    sources: tuple[AdapterSource, ...]
    skipped: dict[str, str]


def open_bank(
    items: Sequence[str | Path],
    *,
    skip_bad: bool = False,
    base_model: str | None = None,
    progress: bool = False,
) -> OpenedBank:
    """Open every adapter the items stand for (see resolve_sources) and check them against each other.

    A bad adapter (unreadable or corrupt file, invalid config, a module whose shape disagrees with the rest
    of the bank, another base model) raises EdgeEigenLoraError naming the file, the field and the fix; with
    skip_bad it is left out and listed in `skipped`. The bank's base model is `base_model` if given, else
    the one most adapters name; a module's shape is the one most adapters have. Tensors with NaN or Inf are
    found when the fit reads them (see basis.fit_basis's skip_bad).
    """
    from tqdm.auto import tqdm

    located = resolve_sources(items)
    seen: dict[str, str] = {}
    for name, location in located:
        if name in seen:
            raise EdgeEigenLoraError(
                f"two adapters are named {name!r} ({seen[name]} and {location}); names must be unique: "
                "list each adapter once, or give folder trees whose relative paths differ."
            )
        seen[name] = location
    skipped: dict[str, str] = {}
    sources: list[AdapterSource] = []
    for name, location in tqdm(located, desc="reading headers", unit="adapter", disable=not progress):
        try:
            sources.append(_source(name, location))
        except EdgeEigenLoraError as exc:
            if not skip_bad:
                raise
            skipped[name] = str(exc)
    if not sources:
        raise EdgeEigenLoraError(
            "no usable adapter in the bank"
            + (f": all {len(skipped)} were left out as bad." if skipped else ".")
        )
    named = Counter(s.base_model for s in sources if s.base_model)
    reference = base_model or (named.most_common(1)[0][0] if named else None)
    shapes_seen: dict[str, Counter] = {}
    for s in sources:
        for module, shape in s.shapes().items():
            shapes_seen.setdefault(module, Counter())[shape] += 1
    shapes = {m: c.most_common(1)[0][0] for m, c in sorted(shapes_seen.items())}
    kept: list[AdapterSource] = []
    for s in sources:
        problem = None
        if not _same_base(reference, s.base_model):
            problem = (
                f"{_join(s.location, CONFIG_NAME)}: field 'base_model_name_or_path' is {s.base_model!r} but the "
                f"bank's base model is {reference!r}. A subspace is only shared by adapters of one base model: "
                "leave it out (--skip-bad) or fit it with its own bank."
            )
        else:
            for module, shape in s.shapes().items():
                if shape != shapes[module]:
                    problem = (
                        f"{s.weights}: module {module!r} is {shape} (d_out, d_in) but {shapes[module]} in the "
                        f"rest of the bank: this adapter was not trained on the same base model. Leave it out "
                        "(--skip-bad)."
                    )
                    break
        if problem is None:
            kept.append(s)
        elif skip_bad:
            skipped[s.name] = problem
        else:
            raise EdgeEigenLoraError(problem)
    module_shapes = {m: shapes[m] for m in shapes if any(m in s.tensors for s in kept)}
    bank = AdapterBank(
        adapters=tuple(s.adapter() for s in kept), base_model=reference, module_shapes=module_shapes
    )
    return OpenedBank(bank=bank, sources=tuple(kept), skipped=skipped)
