"""The workstation training settings, torch-free so the CLI can read its defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """epochs: upper bound; training stops early after `patience` evaluations without improvement.

    eval_every: steps between evaluations (None: once per epoch). max_steps caps the total.
    lr applies to the adapter (coefficients or LoRA); head_lr to the head (defaults to lr).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-3
    head_lr: float | None = None
    weight_decay: float = 0.0
    max_length: int = 64
    patience: int = 3
    eval_every: int | None = None
    max_steps: int | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length", "patience"):
            if getattr(self, name) < 1:
                raise EdgeEigenLoraError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if not self.lr > 0 or (self.head_lr is not None and not self.head_lr > 0):
            raise EdgeEigenLoraError(
                f"TrainConfig: learning rates must be > 0, got lr={self.lr}, head_lr={self.head_lr} "
                "(--lr, --head-lr)."
            )
        for name in ("max_steps", "eval_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EdgeEigenLoraError(
                    f"TrainConfig.{name} must be >= 1 (or None for no limit), got {value} "
                    f"(--{name.replace('_', '-')}): with 0 nothing would be trained."
                )
