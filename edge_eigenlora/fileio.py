"""Atomic writes and hashing: nothing on disk is ever left half-written.

Pure standard library + safetensors' numpy API, so the device runtime can use it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = [
    "atomic_path",
    "read_safetensors",
    "save_safetensors_atomic",
    "sha256_file",
    "tensors_fingerprint",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_with",
]


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
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


def read_safetensors(path: str | os.PathLike[str], what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load tensors and metadata, turning every low-level failure into one clear message."""
    path = Path(path)
    if not path.is_file():
        raise EdgeEigenLoraError(f"{what} {path} does not exist.")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            metadata = dict(fh.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, MemoryError) as exc:
        raise EdgeEigenLoraError(
            f"{what} {path} is not a readable safetensors file ({exc}). It may be truncated or corrupt: "
            "re-create or re-download it."
        ) from exc
    return tensors, metadata


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
