"""The adapted Linear: frozen base weight, frozen basis, trainable coefficients.

Per call the layer forms A = alpha_A^T U_A^T (r x d_in) and B = U_B alpha_B (d_out x r) once, then adds
(x A^T) B^T: per token it costs r (d_in + d_out) multiply-adds like unmerged LoRA, not K (d_in + d_out).
Trainable tensors carry the `eigenlora_` prefix: a contract the model helpers rely on.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["COEFFICIENT_PREFIX", "EigenLoraLinear"]

COEFFICIENT_PREFIX = "eigenlora_"


class EigenLoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, U_A: torch.Tensor, U_B: torch.Tensor, rank: int) -> None:
        super().__init__()
        if U_A.shape[0] != base.in_features or U_B.shape[0] != base.out_features:
            raise ValueError(
                f"basis shapes U_A {tuple(U_A.shape)}, U_B {tuple(U_B.shape)} do not fit Linear "
                f"({base.out_features} x {base.in_features})"
            )
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        dtype = base.weight.dtype
        self.register_buffer("U_A", U_A.detach().to(dtype).clone(), persistent=False)
        self.register_buffer("U_B", U_B.detach().to(dtype).clone(), persistent=False)
        width = U_A.shape[1]
        self.eigenlora_alpha_A = nn.Parameter(torch.zeros(width, rank, dtype=dtype))
        self.eigenlora_alpha_B = nn.Parameter(torch.zeros(width, rank, dtype=dtype))
        self.merged = False

    @property
    def rank(self) -> int:
        return int(self.eigenlora_alpha_A.shape[1])

    def reset_zero_delta(self, generator: torch.Generator | None = None) -> None:
        """LoRA's init moved into the subspace: alpha_B = 0 (delta W = 0), alpha_A random, so B gets gradient.

        Rows of A then have the norm of LoRA's kaiming-uniform init (about 1/sqrt(3)).
        """
        bound = 1.0 / math.sqrt(self.eigenlora_alpha_A.shape[0])
        with torch.no_grad():
            init = torch.rand(self.eigenlora_alpha_A.shape, generator=generator, dtype=torch.float64)
            self.eigenlora_alpha_A.copy_((init * 2 - 1) * bound)
            self.eigenlora_alpha_B.zero_()

    def set_coefficients(self, alpha_A: torch.Tensor, alpha_B: torch.Tensor) -> None:
        if self.merged:
            raise RuntimeError("unmerge before changing coefficients")
        if alpha_A.shape[0] != self.U_A.shape[1] or alpha_A.shape != alpha_B.shape:
            raise ValueError(
                f"coefficients {tuple(alpha_A.shape)} / {tuple(alpha_B.shape)} do not fit a basis of width "
                f"{self.U_A.shape[1]}"
            )
        dtype = self.base.weight.dtype
        if alpha_A.shape != self.eigenlora_alpha_A.shape:
            self.eigenlora_alpha_A = nn.Parameter(torch.zeros_like(alpha_A, dtype=dtype))
            self.eigenlora_alpha_B = nn.Parameter(torch.zeros_like(alpha_B, dtype=dtype))
        with torch.no_grad():
            self.eigenlora_alpha_A.copy_(alpha_A)
            self.eigenlora_alpha_B.copy_(alpha_B)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) with A: r x d_in and B: d_out x r, formed once per call."""
        return self.eigenlora_alpha_A.T @ self.U_A.T, self.U_B @ self.eigenlora_alpha_B

    def delta_weight(self) -> torch.Tensor:
        A, B = self.factors()
        return B @ A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        A, B = self.factors()
        return y + (x @ A.T) @ B.T

    def merge(self) -> None:
        """Fold delta W into the base weight: zero adapter cost per token."""
        if not self.merged:
            with torch.no_grad():
                self.base.weight += self.delta_weight()
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            with torch.no_grad():
                self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"d_in={self.U_A.shape[0]}, d_out={self.U_B.shape[0]}, width={self.U_A.shape[1]}, rank={self.rank}"
