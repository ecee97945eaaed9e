"""Atomic writes and hashing: nothing on disk is ever left half-written.

Pure standard library + safetensors' numpy API, so the device runtime can use it too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = [
    "SafetensorsHeader",
    "TensorEntry",
    "atomic_path",
    "json_safe",
    "make_temp_dir",
    "read_float_tensor",
    "read_safetensors",
    "read_safetensors_header",
    "save_safetensors_atomic",
    "sha256_file",
    "tensors_fingerprint",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_with",
]


def _new_temp_file(parent: Path, name: str) -> tuple[Path, int]:
    """Create an empty, unique file beside the target with mode 0o666 minus the umask (as `open` would).

    tempfile.mkstemp would give 0o600 and every output would stay private; reading the umask with os.umask()
    would briefly change it for every thread. Letting the kernel apply it to os.open's mode does neither.
    Returns the path and the mode the file got.
    """
    for _ in range(100):
        path = parent / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return path, mode
    raise FileExistsError(f"could not create a temporary file in {parent}")


def make_temp_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A new, unique folder in `parent` with mode 0o777 minus the umask (tempfile.mkdtemp gives 0o700)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a temporary folder in {parent}")


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only if the block succeeds.

    The file ends with mode 0o666 minus the umask, like any file `open()` creates.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path, mode = _new_temp_file(target.parent, target.name)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, mode)  # a writer that re-created the file may have left another mode
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: str | os.PathLike[str], obj: Any) -> None:
    write_bytes_atomic(target, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_with(target: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Run `writer(tmp_path)` and move the result into place atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)


def save_safetensors_atomic(
    target: str | os.PathLike[str], tensors: dict[str, np.ndarray], metadata: dict[str, str]
) -> None:
    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    write_with(target, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


# safetensors dtypes -> (numpy dtype of the stored bytes, bytes per element). Sub-byte types are left out.
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U64": ("<u8", 8),
    "U32": ("<u4", 4),
    "U16": ("<u2", 2),
    "U8": ("u1", 1),
    "BOOL": ("u1", 1),
    "F8_E4M3": ("u1", 1),
    "F8_E5M2": ("u1", 1),
    "F8_E8M0": ("u1", 1),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data section
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    data_start: int  # file offset of the data section
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]


def _corrupt(path: Path, what: str, problem: str, fix: str) -> EdgeEigenLoraError:
    return EdgeEigenLoraError(f"{what} {path} is not a valid safetensors file: {problem}. {fix}")


def read_safetensors_header(
    path: str | os.PathLike[str], what: str, *, fix: str = "Re-create or re-download it."
) -> SafetensorsHeader:
    """Parse and check a safetensors header without trusting a byte of it.

    Checks the 8-byte length, the JSON, every entry's dtype, shape and offsets (inside the file, not
    overlapping, size = elements x item size). A file whose tensors end past its last byte is reported as
    truncated, with both sizes.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgeEigenLoraError(f"{what} {path} does not exist.")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _corrupt(path, what, f"it is {size} bytes long, shorter than the 8-byte header length", fix)
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES:
            raise _corrupt(path, what, f"its header claims {n} bytes (the limit is {MAX_HEADER_BYTES})", fix)
        if 8 + n > size:
            raise _corrupt(
                path, what, f"it is truncated: its header needs {8 + n} bytes but the file holds {size}", fix
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _corrupt(path, what, f"its header is not valid JSON ({exc})", fix) from None
    if not isinstance(header, dict):
        raise _corrupt(path, what, f"its header is a JSON {type(header).__name__}, not an object", fix)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, what, "its '__metadata__' must map names to strings", fix)
    tensors: dict[str, TensorEntry] = {}
    for name, entry in header.items():
        where = f"tensor {name[:80]!r}"
        if not isinstance(entry, dict):
            raise _corrupt(
                path, what, f"{where} is described by a {type(entry).__name__}, not an object", fix
            )
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise _corrupt(
                path, what, f"{where} has dtype {str(dtype)[:40]!r}, which this reader does not support", fix
            )
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _corrupt(path, what, f"{where} has shape {str(shape)[:80]}, not a list of sizes >= 0", fix)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise _corrupt(path, what, f"{where} has data_offsets {str(offsets)[:80]}, not [begin, end]", fix)
        count = 1
        for d in shape:
            count *= d
        if offsets[1] - offsets[0] != count * SAFETENSORS_DTYPES[dtype][1]:
            raise _corrupt(
                path,
                what,
                f"{where} is {dtype} {shape} ({count * SAFETENSORS_DTYPES[dtype][1]} bytes) but its "
                f"data_offsets span {offsets[1] - offsets[0]} bytes",
                fix,
            )
        tensors[name] = TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])
    data_size = size - 8 - n
    previous_end, previous = 0, None
    for name, entry in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if entry.begin < previous_end:
            raise _corrupt(path, what, f"tensors {previous[:80]!r} and {name[:80]!r} overlap", fix)
        previous_end, previous = max(previous_end, entry.end), name
    if previous_end > data_size:
        raise _corrupt(
            path,
            what,
            f"it is truncated: its header describes {previous_end} bytes of tensor data but the file holds "
            f"{data_size} (it was cut short after it was written: an interrupted copy or download, or a full "
            "disk)",
            fix,
        )
    return SafetensorsHeader(path, 8 + n, tensors, {str(k): v for k, v in metadata.items()})


def read_float_tensor(header: SafetensorsHeader, name: str, what: str) -> np.ndarray:
    """One tensor as float32: F32, F64, F16 and bfloat16 (decoded here; numpy has no bfloat16)."""
    entry = header.tensors[name]
    if entry.dtype not in FLOAT_DTYPES:
        raise EdgeEigenLoraError(
            f"{what} {header.path}: tensor {name!r} is {entry.dtype}, not a floating-point tensor "
            f"({', '.join(FLOAT_DTYPES)}). Quantized (e.g. int8) LoRA factors carry no scale this reader can "
            "trust: de-quantize the adapter to float16/bfloat16/float32 and save it again."
        )
    np_dtype, itemsize = SAFETENSORS_DTYPES[entry.dtype]
    count = (entry.end - entry.begin) // itemsize
    try:
        raw = np.fromfile(
            header.path, dtype=np.dtype(np_dtype), count=count, offset=header.data_start + entry.begin
        )
    except (OSError, ValueError) as exc:
        raise EdgeEigenLoraError(f"{what} {header.path}: tensor {name!r} could not be read ({exc}).") from exc
    if raw.size != count:
        raise EdgeEigenLoraError(
            f"{what} {header.path}: tensor {name!r} is truncated ({raw.size} of {count} values); the file "
            "changed while it was read or is cut short. Re-create or re-download it."
        )
    if entry.dtype == "BF16":
        values = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        with np.errstate(over="ignore"):
            values = raw.astype(np.float32)
    return values.reshape(entry.shape)


def read_safetensors(
    path: str | os.PathLike[str], what: str, *, fix: str = "Re-create or re-download it."
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load tensors and metadata, turning every low-level failure into one clear message.

    The header is checked by `read_safetensors_header` first, so truncation is reported as such; `fix`
    ends every message about a damaged file.
    """
    path = Path(path)
    header = read_safetensors_header(path, what, fix=fix)
    odd = sorted({e.dtype for e in header.tensors.values()} - {"F64", "F32", "F16", "I64", "I32", "I8", "U8"})
    if odd:
        raise EdgeEigenLoraError(
            f"{what} {path} holds tensors of type {', '.join(odd)}, which edge-eigenlora never writes. {fix}"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError, MemoryError) as exc:
        raise EdgeEigenLoraError(f"{what} {path} is not a readable safetensors file ({exc}). {fix}") from exc
    return tensors, dict(header.metadata)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensors_fingerprint(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: independent of file layout."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def json_safe(obj: Any) -> Any:
    """A copy of `obj` that strict JSON can carry: NaN and +-Infinity become null (json.dumps would write
    `NaN`/`-Infinity`, which JSON parsers other than Python's reject); numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
