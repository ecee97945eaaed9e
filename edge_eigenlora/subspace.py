"""Pure numpy math of the shared subspace: canonicalization, stacking, SVD, augmentation, projection.

Conventions (per adapted Linear with W: d_out x d_in): A is r x d_in, B is d_out x r, delta W = B @ A.
Bases are column-orthonormal: U_A is d_in x K, U_B is d_out x K. Coefficients alpha_A, alpha_B are K x r and
give delta W = U_B @ alpha_B @ alpha_A.T @ U_A.T. Everything is computed in float64.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "StreamedPrincipalDirections",
    "balanced_factors",
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
        return top_eigenvectors(self._gram, k)

    def finish(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(U with every direction, singular values, numerical rank): the whole decomposition at once."""
        s, rank = self.spectrum()
        return self.directions(min(self.dim, s.size)), s, rank


def top_eigenvectors(
    gram: np.ndarray, k: int, *, oversample: int = 16, max_iter: int = 30, tol: float = 1e-10
) -> np.ndarray:
    """Top-k eigenvectors of a symmetric PSD matrix by block subspace iteration with Rayleigh-Ritz.

    Each iteration is one d x d by d x (k + oversample) product, so k << d costs far less than a full eigh;
    iteration stops when the Ritz values settle (relative change below `tol`). Seeded: deterministic.
    """
    d = gram.shape[0]
    width = min(d, k + oversample)
    if width >= d // 2:  # no saving: solve exactly
        values, vectors = np.linalg.eigh(gram)
        return vectors[:, np.argsort(values)[::-1][:k]]
    q, _ = np.linalg.qr(gram @ np.random.default_rng(0).standard_normal((d, width)))
    previous = None
    for _ in range(max_iter):
        q, _ = np.linalg.qr(gram @ q)
        ritz = np.linalg.eigvalsh(q.T @ gram @ q)[::-1][:k]
        if previous is not None and np.max(np.abs(ritz - previous)) <= tol * max(ritz[0], 1e-300):
            break
        previous = ritz
    values, vectors = np.linalg.eigh(q.T @ gram @ q)
    return q @ vectors[:, np.argsort(values)[::-1][:k]]


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
