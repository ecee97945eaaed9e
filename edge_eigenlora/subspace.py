"""Pure numpy math of the shared subspace: canonicalization, stacking, SVD, augmentation, projection.

Conventions (per adapted Linear with W: d_out x d_in): A is r x d_in, B is d_out x r, delta W = B @ A.
Bases are column-orthonormal: U_A is d_in x K, U_B is d_out x K. Coefficients alpha_A, alpha_B are K x r and
give delta W = U_B @ alpha_B @ alpha_A.T @ U_A.T. Everything is computed in float64.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EigenSolve",
    "FactorStack",
    "StreamedPrincipalDirections",
    "balanced_factors",
    "canonical_signs",
    "coefficients_to_factors",
    "explained_variance",
    "k_for_variance",
    "module_seed",
    "numerical_rank",
    "orthogonal_complement_directions",
    "principal_angles",
    "principal_directions",
    "project_factors",
    "relative_delta_error",
    "stack_columns",
    "top_eigenvectors",
]


def _orthonormal_factor(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, R) with X = (X M) R, X M orthonormal, from the r x r Gram matrix of X (columns X: d x r).

    An r x r eigendecomposition instead of a d x r Householder QR: ~50x faster for LoRA's tall-skinny factors
    (the QR dominated fitting 1000-adapter banks). Directions X does not span (zero eigenvalues) are dropped:
    they carry no part of delta W.
    """
    values, vectors = np.linalg.eigh(X.T @ X)
    keep = values > values.max(initial=0.0) * X.shape[0] * np.finfo(np.float64).eps * 10
    root = np.sqrt(values[keep])
    return vectors[:, keep] / root, root[:, None] * vectors[:, keep].T


def balanced_factors(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauge-free factors of delta = B @ A: (S^1/2 V^T, U S^1/2) from the thin SVD of delta.

    Any (B G, G^-1 A) gives the same result up to the signs of matching rows/columns, which the
    principal subspace of the stack does not see. Costs O((d_in + d_out) r^2), never forms delta.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    m_b, r_b = _orthonormal_factor(B)  # B = (B m_b) r_b
    m_a, r_a = _orthonormal_factor(A.T)  # A^T = (A^T m_a) r_a
    if r_b.shape[0] == 0 or r_a.shape[0] == 0:  # delta W = 0 (e.g. an untrained adapter): nothing to stack
        return np.zeros((0, A.shape[1])), np.zeros((B.shape[0], 0))
    u, s, vt = np.linalg.svd(r_b @ r_a.T, full_matrices=False)  # delta = (B m_b) u s vt (A^T m_a)^T
    root = np.sqrt(s)
    return root[:, None] * (vt @ (A.T @ m_a).T), (B @ (m_b @ u)) * root[None, :]


def stack_columns(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """[X_1 ... X_N] for column blocks of equal height (d x r_i each; ranks may differ)."""
    return np.concatenate([np.asarray(b, dtype=np.float64) for b in blocks], axis=1)


def principal_directions(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values of the stack (d x n), largest first, up to min(d, n)."""
    u, s, _ = np.linalg.svd(np.asarray(stack, dtype=np.float64), full_matrices=False)
    return u, s


def numerical_rank(singular_values: np.ndarray, shape: tuple[int, int], *, from_gram: bool = False) -> int:
    """Rank as numpy's matrix_rank defines it: singular values above max(shape) * eps * s_max.

    Singular values taken from a Gram matrix's eigenvalues carry error ~ s_max sqrt(max(shape) eps), so the
    threshold is raised accordingly there.
    """
    if singular_values.size == 0 or singular_values[0] == 0:
        return 0
    eps = np.finfo(np.float64).eps
    rel = 10 * np.sqrt(max(shape) * eps) if from_gram else max(shape) * eps
    return int(np.sum(singular_values > singular_values[0] * rel))


class StreamedPrincipalDirections:
    """Principal directions of a stack [X_1 ... X_N] (d x n) fed one block X_i at a time.

    Memory stays O(d^2) whatever N is: while the stack is narrower than d it is kept and solved exactly by
    SVD; beyond that the blocks are folded into the Gram matrix M M^T (in batches of ~d columns, so the
    update is one BLAS-3 product) and solved by a symmetric eigendecomposition. The Gram route squares the
    condition number: the leading directions stay accurate to ~1e-7 (float64), trailing tiny ones do not.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.columns = 0
        self._pending: list[np.ndarray] = []
        self._pending_columns = 0
        self._gram: np.ndarray | None = None

    def add(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float64)
        if block.ndim != 2 or block.shape[0] != self.dim:
            raise ValueError(f"block of shape {block.shape} does not have {self.dim} rows")
        self._pending.append(block)
        self._pending_columns += block.shape[1]
        self.columns += block.shape[1]
        if self._pending_columns >= 2 * self.dim:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        stack = np.concatenate(self._pending, axis=1)
        self._gram = stack @ stack.T if self._gram is None else self._gram + stack @ stack.T
        self._pending, self._pending_columns = [], 0

    @property
    def uses_gram(self) -> bool:
        return self._gram is not None

    def spectrum(self) -> tuple[np.ndarray, int]:
        """(singular values of the whole stack, largest first; numerical rank). Call before directions()."""
        if self._gram is None:
            stack = np.concatenate(self._pending, axis=1)
            self._u, s = principal_directions(stack)
            self._s, self._rank = s, numerical_rank(s, stack.shape)
        else:
            self._fold()
            # eigenvalues only: ~4x cheaper than a full eigh of d x d; vectors come from directions(k)
            eigenvalues = np.linalg.eigvalsh(self._gram)[::-1]
            self._s = np.sqrt(np.clip(eigenvalues, 0.0, None))
            self._rank = numerical_rank(self._s, (self.dim, self.columns), from_gram=True)
        return self._s, self._rank

    def directions(self, k: int) -> np.ndarray:
        """The top-k principal directions (d x k)."""
        if self._gram is None:
            return self._u[:, :k]
        return top_eigenvectors(self._gram, k).vectors

    def finish(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(U with every direction, singular values, numerical rank): the whole decomposition at once."""
        s, rank = self.spectrum()
        return self.directions(min(self.dim, s.size)), s, rank


class FactorStack:
    """One module's two stacks [A_1^T ... A_N^T] (d_in x n), [B_1 ... B_N] (d_out x n) and sum_i B_i A_i, streamed.

    The sum of deltas comes from the same blocks (sum_i B_i A_i = M_B M_A^T), so one reading pass gives the
    directions and the bank's mean delta. While the stack is narrower than 2 max(d_in, d_out) columns it is
    kept and solved exactly by SVD; beyond that blocks are folded into the Gram matrices. Partial stacks of
    disjoint shards of adapters `merge` into the stack of their union (the unit of a tree reduction): the
    result differs from adding the blocks one by one only in floating-point summation order.
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        self.d_in, self.d_out = d_in, d_out
        self.columns = 0
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self._pending = 0
        self._gram_a: np.ndarray | None = None
        self._gram_b: np.ndarray | None = None
        self._delta: np.ndarray | None = None

    @property
    def _limit(self) -> int:
        return 2 * max(self.d_in, self.d_out)

    @property
    def uses_gram(self) -> bool:
        return self._gram_a is not None

    def add(self, a_t: np.ndarray, b: np.ndarray) -> None:
        """Add one adapter's factors: a_t = A^T (d_in x r), b = B (d_out x r), delta W = b @ a_t.T."""
        a_t, b = np.asarray(a_t, np.float64), np.asarray(b, np.float64)
        if a_t.shape[0] != self.d_in or b.shape[0] != self.d_out or a_t.shape[1] != b.shape[1]:
            raise ValueError(
                f"factors {a_t.shape}, {b.shape} do not fit a ({self.d_out}, {self.d_in}) module"
            )
        self._a.append(a_t)
        self._b.append(b)
        self._pending += a_t.shape[1]
        self.columns += a_t.shape[1]
        if self._pending >= self._limit:
            self._fold()

    def merge(self, other: FactorStack) -> FactorStack:
        """The stack of both shards (self's adapters first); `other` is consumed."""
        if (other.d_in, other.d_out) != (self.d_in, self.d_out):
            raise ValueError("cannot merge the stacks of two different module shapes")
        for name in ("_gram_a", "_gram_b", "_delta"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs if mine is None else mine + theirs)
        self._a += other._a
        self._b += other._b
        self._pending += other._pending
        self.columns += other.columns
        if self._pending >= self._limit:
            self._fold()
        return self

    def _fold(self) -> None:
        if not self._a:
            return
        sa, sb = np.concatenate(self._a, axis=1), np.concatenate(self._b, axis=1)
        parts = (sa @ sa.T, sb @ sb.T, sb @ sa.T)
        if self._gram_a is None:
            self._gram_a, self._gram_b, self._delta = parts
        else:
            self._gram_a += parts[0]
            self._gram_b += parts[1]
            self._delta += parts[2]
        self._a, self._b, self._pending = [], [], 0

    def gram(self, side: str) -> np.ndarray:
        """M M^T of one side's whole stack (d x d): what the exact and iterative solvers both start from."""
        if self._gram_a is None:
            stack = np.concatenate(self._a if side == "A" else self._b, axis=1)
            return stack @ stack.T
        self._fold()
        return self._gram_a if side == "A" else self._gram_b  # type: ignore[return-value]

    def delta_sum(self) -> np.ndarray:
        """sum_i B_i A_i (d_out x d_in)."""
        if self._gram_a is None:
            if not self._a:
                return np.zeros((self.d_out, self.d_in))
            return np.concatenate(self._b, axis=1) @ np.concatenate(self._a, axis=1).T
        self._fold()
        return self._delta  # type: ignore[return-value]

    def spectrum(self, side: str) -> tuple[np.ndarray, int]:
        """(singular values of one side's whole stack, largest first; numerical rank)."""
        if self._gram_a is None:
            stack = np.concatenate(self._a if side == "A" else self._b, axis=1)
            s = np.linalg.svd(stack, compute_uv=False)
            return s, numerical_rank(s, stack.shape)
        self._fold()
        gram = self._gram_a if side == "A" else self._gram_b
        s = np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None))
        return s, numerical_rank(s, (gram.shape[0], self.columns), from_gram=True)

    def directions(self, side: str, k: int, *, tol: float, max_iter: int, solver: str) -> EigenSolve:
        """Top-k principal directions of one side: exact SVD of a narrow stack, else the Gram's eigenvectors."""
        if self._gram_a is None:
            stack = np.concatenate(self._a if side == "A" else self._b, axis=1)
            u, _, _ = np.linalg.svd(stack, full_matrices=False)
            return EigenSolve(u[:, :k], "exact_svd", 0, 0.0, True)
        self._fold()
        gram = self._gram_a if side == "A" else self._gram_b
        return top_eigenvectors(gram, k, tol=tol, max_iter=max_iter, solver=solver)


@dataclass(frozen=True)
class EigenSolve:
    """Top-k eigenvectors and how they were obtained, so a caller can say whether the iteration converged.

    residual: max_i ||G v_i - theta_i v_i|| / theta_1 over the k returned vectors (0 for the exact solver's
    own output is not claimed: it is measured the same way). method: "subspace_iteration" (converged),
    "exact" (asked for, or no saving possible) or "exact_fallback" (the iteration did not reach `tol`).
    """

    vectors: np.ndarray
    method: str
    iterations: int
    residual: float
    converged: bool


def _ritz_residual(gram: np.ndarray, vectors: np.ndarray) -> float:
    values = np.einsum("ij,ij->j", vectors, gram @ vectors)
    residual = np.linalg.norm(gram @ vectors - vectors * values, axis=0)
    return float(residual.max(initial=0.0) / max(float(values.max(initial=0.0)), 1e-300))


def top_eigenvectors(
    gram: np.ndarray,
    k: int,
    *,
    oversample: int = 16,
    max_iter: int = 100,
    tol: float = 1e-8,
    solver: str = "iterative",
) -> EigenSolve:
    """Top-k eigenvectors of a symmetric PSD matrix by block subspace iteration with Rayleigh-Ritz.

    Each iteration is one d x d by d x (k + oversample) product, so k << d costs far less than a full eigh.
    It stops when every one of the k Ritz pairs has a relative residual ||G v - theta v|| / theta_1 <= `tol`
    (by Davis-Kahan the angle to the exact top-k subspace is then <= tol / relative eigengap); when
    `max_iter` iterations do not get there (a flat or near-degenerate spectrum around k + oversample) it
    falls back to the exact eigendecomposition and says so in the result. Seeded: deterministic.
    """
    d = gram.shape[0]
    width = min(d, k + oversample)
    if solver == "exact" or width >= d // 2:  # asked for, or no saving: solve exactly
        values, vectors = np.linalg.eigh(gram)
        top = vectors[:, np.argsort(values)[::-1][:k]]
        return EigenSolve(top, "exact", 0, _ritz_residual(gram, top), True)
    q, _ = np.linalg.qr(gram @ np.random.default_rng(0).standard_normal((d, width)))
    residual = np.inf
    for iteration in range(1, max_iter + 1):
        z = gram @ q
        h = q.T @ z
        theta, w = np.linalg.eigh((h + h.T) / 2)
        order = np.argsort(theta)[::-1]
        theta, w = theta[order], w[:, order]
        v, gv = q @ w, z @ w
        top_residual = np.linalg.norm(gv[:, :k] - v[:, :k] * theta[:k], axis=0)
        residual = float(top_residual.max() / max(theta[0], 1e-300))
        if residual <= tol:
            return EigenSolve(v[:, :k], "subspace_iteration", iteration, residual, True)
        q, _ = np.linalg.qr(gv)
    values, vectors = np.linalg.eigh(gram)
    top = vectors[:, np.argsort(values)[::-1][:k]]
    return EigenSolve(top, "exact_fallback", max_iter, residual, False)


def canonical_signs(U: np.ndarray) -> np.ndarray:
    """Flip each column so its largest-magnitude entry is positive: eigensolvers return either sign, and
    a fixed convention makes bases from different engines (and their mean cores) comparable entry by entry."""
    rows = np.argmax(np.abs(U), axis=0)
    signs = np.sign(U[rows, np.arange(U.shape[1])])
    signs[signs == 0] = 1.0
    return U * signs


def explained_variance(singular_values: np.ndarray) -> np.ndarray:
    """Cumulative share of the stack's squared Frobenius norm captured by the first k directions."""
    energy = np.square(np.asarray(singular_values, dtype=np.float64))
    total = energy.sum()
    return np.cumsum(energy) / total if total > 0 else np.zeros_like(energy)


def k_for_variance(singular_values: np.ndarray, threshold: float) -> int:
    """Smallest k whose explained variance reaches `threshold` (0 < threshold <= 1)."""
    cumulative = explained_variance(singular_values)
    return int(min(np.searchsorted(cumulative, threshold - 1e-12) + 1, cumulative.size))


def module_seed(seed: int, module: str, side: str) -> int:
    """A stable per-module seed (crc32, not Python's salted hash) so augmentation is reproducible."""
    return (seed * 1_000_003 + zlib.crc32(f"{module}|{side}".encode())) % (2**32)


def orthogonal_complement_directions(basis: np.ndarray, p: int, rng: np.random.Generator) -> np.ndarray:
    """p random orthonormal directions orthogonal to the columns of `basis` (d x K), re-orthogonalized twice."""
    d, k = basis.shape
    if p == 0:
        return np.zeros((d, 0))
    if k + p > d:
        raise ValueError(f"cannot add {p} directions orthogonal to {k} in dimension {d}")
    x = rng.standard_normal((d, p))
    for _ in range(2):  # classical Gram-Schmidt against the basis, twice, is numerically orthogonal
        x -= basis @ (basis.T @ x)
    q, _ = np.linalg.qr(x)
    q -= basis @ (basis.T @ q)
    q, _ = np.linalg.qr(q)
    return q


def project_factors(
    A: np.ndarray, B: np.ndarray, U_A: np.ndarray, U_B: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonal projection of an adapter onto the basis: alpha_A = U_A^T A^T, alpha_B = U_B^T B (K x r)."""
    return (
        np.asarray(U_A, np.float64).T @ np.asarray(A, np.float64).T,
        np.asarray(U_B, np.float64).T @ np.asarray(B, np.float64),
    )


def coefficients_to_factors(
    alpha_A: np.ndarray, alpha_B: np.ndarray, U_A: np.ndarray, U_B: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """LoRA factors of a coefficient pair: A = alpha_A^T U_A^T (r x d_in), B = U_B alpha_B (d_out x r)."""
    return (
        np.asarray(alpha_A, np.float64).T @ np.asarray(U_A, np.float64).T,
        np.asarray(U_B, np.float64) @ np.asarray(alpha_B, np.float64),
    )


def relative_delta_error(A: np.ndarray, B: np.ndarray, A_hat: np.ndarray, B_hat: np.ndarray) -> float:
    """||B A - B_hat A_hat||_F / ||B A||_F, from the small Gram matrices (never forms d_out x d_in)."""

    def inner(b1: np.ndarray, a1: np.ndarray, b2: np.ndarray, a2: np.ndarray) -> float:
        # <B1 A1, B2 A2>_F = trace((B1^T B2) (A2 A1^T))
        return float(np.sum((b1.T @ b2) * (a1 @ a2.T)))

    A, B, A_hat, B_hat = (np.asarray(x, np.float64) for x in (A, B, A_hat, B_hat))
    norm2 = inner(B, A, B, A)
    if norm2 == 0:
        return 0.0
    err2 = norm2 - 2 * inner(B, A, B_hat, A_hat) + inner(B_hat, A_hat, B_hat, A_hat)
    return float(np.sqrt(max(err2, 0.0) / norm2))


def principal_angles(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of orthonormal U and V.

    Computed from the sines (the part of U outside span V), which stay accurate for tiny angles where
    arccos of the cosines loses half the digits.
    """
    U = np.asarray(U, np.float64)
    V = np.asarray(V, np.float64)
    outside = U - V @ (V.T @ U)
    sines = np.linalg.svd(outside, compute_uv=False)
    return np.sort(np.arcsin(np.clip(sines, 0.0, 1.0)))
