"""Choosing the next token from logits: greedy, or sampled after repetition penalty, temperature, top-k and
top-p, in that order (transformers' order, so a seeded greedy run matches `generate`). numpy only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["GenerationConfig", "apply_repetition_penalty", "next_tokens"]


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate. Greedy unless `do_sample`; `eos` None means the bundle's end-of-sequence ids.

    stop: strings that end a row's text (the text is cut before the first one). chat: wrap each prompt in the
    bundle's chat template (None: when the bundle has one).
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    eos: tuple[int, ...] | None = None
    chat: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.eos is not None:
            object.__setattr__(self, "eos", tuple(int(e) for e in self.eos))
        if self.max_new_tokens < 1:
            raise EdgeEigenLoraError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.do_sample and not self.temperature > 0:
            raise EdgeEigenLoraError(
                f"temperature must be > 0 when sampling, got {self.temperature}; for deterministic output "
                "generate greedily (do_sample=False, the default)."
            )
        if self.top_k < 0:
            raise EdgeEigenLoraError(f"top_k must be >= 0 (0 = off), got {self.top_k}.")
        if not 0 < self.top_p <= 1:
            raise EdgeEigenLoraError(f"top_p must be in (0, 1], got {self.top_p}.")
        if not self.repetition_penalty > 0:
            raise EdgeEigenLoraError(
                f"repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty}."
            )
        empty = [i for i, s in enumerate(self.stop) if not isinstance(s, str) or not s]
        if empty:
            raise EdgeEigenLoraError(
                f"stop string {empty[0]} is empty; an empty stop string would end every row at once: remove it."
            )


def apply_repetition_penalty(logits: np.ndarray, seen: Sequence[Sequence[int]], penalty: float) -> np.ndarray:
    """transformers' rule: a seen token's logit is divided by `penalty` when positive, multiplied when not."""
    if penalty == 1.0:
        return logits
    out = logits.copy()
    for row, tokens in enumerate(seen):
        idx = np.unique(np.asarray(tokens, np.int64))
        values = out[row, idx]
        out[row, idx] = np.where(values > 0, values / penalty, values * penalty)
    return out


def next_tokens(
    logits: np.ndarray, seen: Sequence[Sequence[int]], config: GenerationConfig, rng: np.random.Generator
) -> np.ndarray:
    """One token id per row from last-position logits [batch, vocab]."""
    scores = apply_repetition_penalty(np.asarray(logits, np.float32), seen, config.repetition_penalty)
    if not config.do_sample:
        return scores.argmax(-1)
    scores = scores.astype(np.float64) / config.temperature
    if config.top_k and config.top_k < scores.shape[-1]:
        kth = np.partition(scores, -config.top_k, axis=-1)[:, -config.top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if config.top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, -1)
        # keep the smallest prefix whose mass reaches top_p (always the first token)
        drop_sorted = np.cumsum(sorted_probs, -1) - sorted_probs >= config.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=p) for p in probs], dtype=np.int64)
