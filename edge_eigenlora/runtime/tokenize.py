"""Text -> (input_ids, attention_mask) with the bundle's own tokenizer files, no transformers, no torch.

The bundle ships `tokenizer/tokenizer.json` (the fast tokenizer's full definition: normalizer, WordPiece/BPE
model, special-token post-processor), so the `tokenizers` library alone reproduces the workstation's ids.
Texts longer than the bundle's `max_length` are truncated with a warning (or refused with
`on_long="error"`): silently cutting a user's text changes its prediction without telling anyone.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_eigenlora.bundle import MANIFEST, TokenizerSettings, inside_bundle
from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["BundleTokenizer", "OnLong", "TruncationWarning", "check_ids", "pad_ids"]

OnLong = Literal["warn", "error", "silent"]


class TruncationWarning(UserWarning):
    """Some texts were longer than the bundle's max_length and were cut."""


class BundleTokenizer:
    """Batch tokenization padded to the longest row (right padding), truncated at `max_length`."""

    def __init__(
        self,
        root: str | Path,
        settings: TokenizerSettings,
        *,
        max_length: int | None = None,
        on_long: OnLong = "warn",
    ) -> None:
        from tokenizers import Tokenizer

        root = Path(root)
        files = [f for f in settings.files if f.endswith("tokenizer.json")]
        if not files:
            raise EdgeEigenLoraError(
                f"{root / MANIFEST}: field 'tokenizer.files' lists no tokenizer.json, so texts cannot be "
                "tokenized on the device; re-export the bundle with a fast tokenizer, or pass token ids."
            )
        if on_long not in ("warn", "error", "silent"):
            raise EdgeEigenLoraError(f"on_long must be 'warn', 'error' or 'silent', got {on_long!r}.")
        self.max_length = int(max_length or settings.max_length)
        if self.max_length < 2:
            raise EdgeEigenLoraError(f"max_length must be >= 2, got {self.max_length}.")
        self.pad_id = int(settings.pad_token_id or 0)
        self.on_long = on_long
        self._tok = Tokenizer.from_file(str(inside_bundle(root, files[0], str(root / MANIFEST))))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=self.max_length)

    def encode_one(self, text: str, add_special_tokens: bool = True) -> Any:
        """One text's `tokenizers.Encoding` (ids, tokens, offsets), truncated at max_length, unpadded
        (`overflowing` is non-empty when the text was cut)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens)

    def encode_ids(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """One text's token ids (a chat template's text carries its own special tokens: pass False)."""
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode_batch(self, texts: Sequence[str]) -> list[Any]:
        """Each text's `tokenizers.Encoding`, truncated at max_length, unpadded (`overflowing` marks cut texts)."""
        return self._tok.encode_batch(list(texts))

    @functools.cached_property
    def vocab_size(self) -> int:
        """Computed once: the tokenizers library rebuilds the vocabulary on every call (~8 ms for WordPiece)."""
        return int(self._tok.get_vocab_size())

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both int64 [batch, longest]."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise EdgeEigenLoraError("no texts given: pass at least one text.")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise EdgeEigenLoraError(f"text {bad[0]} is a {type(texts[bad[0]]).__name__}, not a string.")
        encodings = self._tok.encode_batch(texts)
        long = [i for i, e in enumerate(encodings) if e.overflowing]
        if long:
            message = (
                f"{len(long)} of {len(texts)} texts are longer than the bundle's max_length of {self.max_length} "
                f"tokens (first: text {long[0]}); "
            )
            if self.on_long == "error":
                raise EdgeEigenLoraError(message + "shorten them, or allow truncation (on_long='warn').")
            if self.on_long == "warn":
                warnings.warn(message + "they were truncated.", TruncationWarning, stacklevel=2)
        return pad_ids([e.ids for e in encodings], self.pad_id)


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id rows to the longest: (ids, mask) int64."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def check_ids(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    *,
    vocab_size: int | None,
    max_length: int,
    on_long: OnLong = "warn",
) -> tuple[np.ndarray, np.ndarray]:
    """Validate token ids given directly; cut rows longer than `max_length` (warning) or refuse them."""
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise EdgeEigenLoraError(
            f"input_ids must be a non-empty [batch, seq] array, got shape {list(ids.shape)}."
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise EdgeEigenLoraError(f"input_ids must be integers, got dtype {ids.dtype}.")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.ndim == 1:
        mask = mask[None, :]
    if mask.shape != ids.shape:
        raise EdgeEigenLoraError(
            f"attention_mask shape {list(mask.shape)} differs from input_ids {list(ids.shape)}."
        )
    if ids.min() < 0 or (vocab_size is not None and ids.max() >= vocab_size):
        raise EdgeEigenLoraError(
            f"input_ids hold {int(ids.min())}..{int(ids.max())}, outside the vocabulary 0..{(vocab_size or 0) - 1}; "
            "tokenize with the bundle's tokenizer."
        )
    if ids.shape[1] > max_length:
        message = f"input_ids have {ids.shape[1]} positions, more than the bundle's max_length {max_length}; "
        if on_long == "error":
            raise EdgeEigenLoraError(message + "shorten them, or allow truncation (on_long='warn').")
        if on_long == "warn":
            warnings.warn(message + "they were truncated.", TruncationWarning, stacklevel=2)
        ids, mask = ids[:, :max_length], mask[:, :max_length]
    return ids.astype(np.int64), mask.astype(np.int64)
