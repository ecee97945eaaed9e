"""AdamW in numpy, with its state as plain arrays so a checkpoint can carry it (no pickle).

Same update as torch.optim.AdamW (decoupled weight decay, bias-corrected moments), so device and workstation
training follow the same recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["AdamW"]


@dataclass
class AdamW:
    """Per-parameter learning rates via `lrs` (e.g. a faster head); `scale` multiplies them all (NaN back-off)."""

    lrs: dict[str, float]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    scale: float = 1.0
    step_count: int = 0
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, lr in self.lrs.items():
            if not lr > 0:
                raise EdgeEigenLoraError(f"learning rate for {name!r} must be > 0, got {lr}.")

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update `params` in place."""
        self.step_count += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.step_count, 1 - b2**self.step_count
        for name, p in params.items():
            g = np.asarray(grads[name], np.float32)
            if name not in self.m:
                self.m[name] = np.zeros_like(p, dtype=np.float32)
                self.v[name] = np.zeros_like(p, dtype=np.float32)
            m, v = self.m[name], self.v[name]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            lr = self.lrs[name] * self.scale
            if self.weight_decay:
                p *= 1 - lr * self.weight_decay
            p -= lr * (m / c1) / (np.sqrt(v / c2) + self.eps)

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {f"adam.m.{k}": v for k, v in self.m.items()}
        out.update({f"adam.v.{k}": v for k, v in self.v.items()})
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray], step_count: int, scale: float) -> None:
        self.m = {
            k[len("adam.m.") :]: np.array(v, np.float32) for k, v in arrays.items() if k.startswith("adam.m.")
        }
        self.v = {
            k[len("adam.v.") :]: np.array(v, np.float32) for k, v in arrays.items() if k.startswith("adam.v.")
        }
        self.step_count = int(step_count)
        self.scale = float(scale)

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
        return (
            {k: v.copy() for k, v in self.m.items()},
            {k: v.copy() for k, v in self.v.items()},
            self.step_count,
        )

    def restore(self, snap: tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]) -> None:
        m, v, count = snap
        self.m = {k: a.copy() for k, a in m.items()}
        self.v = {k: a.copy() for k, a in v.items()}
        self.step_count = count
