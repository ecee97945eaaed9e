"""The top-k eigensolver converges to a stated tolerance or falls back to the exact one, and says so."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from edge_eigenlora import subspace
from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SolverFallbackWarning, SubspaceConfig, fit_basis
from edge_eigenlora.errors import EdgeEigenLoraError
from tests.helpers import write_peft_adapter


def _gram(spectrum: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((spectrum.size, spectrum.size)))
    return (q * spectrum) @ q.T, q


def _energy(gram: np.ndarray, u: np.ndarray) -> float:
    return float(np.trace(u.T @ gram @ u))


def test_well_separated_spectrum_converges_to_the_exact_subspace():
    spectrum = np.exp(-np.arange(300) / 8.0)  # decaying: relative gap at k=12 is ~0.1
    gram, q = _gram(spectrum)
    solve = subspace.top_eigenvectors(gram, 12, tol=1e-10)
    assert solve.method == "subspace_iteration" and solve.converged
    assert solve.residual <= 1e-10
    assert 1 < solve.iterations < 100
    assert np.max(subspace.principal_angles(solve.vectors, q[:, :12])) < 1e-8


def test_tolerance_is_what_the_iteration_reaches():
    gram, q = _gram(np.exp(-np.arange(300) / 8.0))
    loose = subspace.top_eigenvectors(gram, 12, tol=1e-4)
    tight = subspace.top_eigenvectors(gram, 12, tol=1e-12)
    assert loose.residual <= 1e-4 and tight.residual <= 1e-12
    assert loose.iterations < tight.iterations
    # Davis-Kahan: angle <= residual / relative gap (gap ~ 0.1 here)
    gap = (np.exp(-11 / 8.0) - np.exp(-12 / 8.0)) / 1.0
    assert np.max(subspace.principal_angles(loose.vectors, q[:, :12])) <= loose.residual / gap * 1.01


def test_near_degenerate_pair_at_k_keeps_the_captured_energy():
    # eigenvalues k and k+1 differ by 1e-13: the top-k subspace is not unique, its captured energy is
    spectrum = np.exp(-np.arange(300) / 8.0)
    spectrum[12] = spectrum[11] * (1 - 1e-13)
    gram, _ = _gram(spectrum)
    solve = subspace.top_eigenvectors(gram, 12, tol=1e-10)
    assert solve.converged and solve.method == "subspace_iteration"
    exact = subspace.top_eigenvectors(gram, 12, solver="exact")
    assert exact.method == "exact"
    assert abs(_energy(gram, solve.vectors) - _energy(gram, exact.vectors)) <= 1e-12 * _energy(
        gram, exact.vectors
    )


def test_flat_spectrum_past_the_block_falls_back_to_the_exact_solver():
    # 64 nearly equal eigenvalues around k=12 with a block of 28: the iteration cannot separate them
    spectrum = np.concatenate([1 + 1e-3 * np.random.default_rng(1).random(64), np.full(236, 1e-3)])
    gram, _ = _gram(spectrum)
    solve = subspace.top_eigenvectors(gram, 12, max_iter=20, tol=1e-10)
    assert solve.method == "exact_fallback" and not solve.converged
    assert solve.iterations == 20 and solve.residual > 1e-10
    values, vectors = np.linalg.eigh(gram)
    top = vectors[:, np.argsort(values)[::-1][:12]]
    assert np.max(subspace.principal_angles(solve.vectors, top)) < 1e-8


def _bank_dirs(tmp_path, spectrum: np.ndarray, n: int = 60, d: int = 100, r: int = 4):
    """n adapters (r x d) whose factors draw from a planted spectrum: 240 columns > 2 d, the Gram route."""
    rng = np.random.default_rng(3)
    p_in, _ = np.linalg.qr(rng.standard_normal((d, spectrum.size)))
    p_out, _ = np.linalg.qr(rng.standard_normal((d, spectrum.size)))
    dirs = []
    for i in range(n):
        A = (p_in @ (spectrum[:, None] * rng.standard_normal((spectrum.size, r)))).T
        B = p_out @ (spectrum[:, None] * rng.standard_normal((spectrum.size, r)))
        dirs.append(write_peft_adapter(tmp_path / f"a{i:02d}", {"layers.0.q": (A, B)}, r=r, alpha=r))
    return dirs


def test_fit_warns_and_falls_back_when_the_iteration_does_not_converge(tmp_path):
    bank = load_bank(_bank_dirs(tmp_path, np.ones(60)))  # flat planted spectrum of 60 directions
    config = SubspaceConfig(method="factors", k=8, solver_max_iter=3)
    with pytest.warns(SolverFallbackWarning, match=r"layers\.0\.q.*solver_tol=1e-08; used the exact"):
        basis = fit_basis(bank, config, progress=False)
    assert basis.modules["layers.0.q"].solver["A"]["method"] == "exact_fallback"
    exact = fit_basis(bank, SubspaceConfig(method="factors", k=8, solver="exact"), progress=False)
    angle = subspace.principal_angles(basis.modules["layers.0.q"].U_A, exact.modules["layers.0.q"].U_A)
    assert np.max(angle) < 1e-6


def test_fit_on_a_decaying_spectrum_converges_silently_and_matches_the_exact_solver(tmp_path):
    bank = load_bank(_bank_dirs(tmp_path, np.exp(-np.arange(40) / 4.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SolverFallbackWarning)
        basis = fit_basis(bank, SubspaceConfig(method="factors", k=8), progress=False)
    exact = fit_basis(bank, SubspaceConfig(method="factors", k=8, solver="exact"), progress=False)
    module, ex = basis.modules["layers.0.q"], exact.modules["layers.0.q"]
    assert module.solver["A"]["method"] == "subspace_iteration" and module.solver["A"]["residual"] <= 1e-8
    for side in ("A", "B"):
        assert (
            np.max(subspace.principal_angles(getattr(module, f"U_{side}"), getattr(ex, f"U_{side}"))) < 1e-6
        )
    np.testing.assert_allclose(module.mean_core, ex.mean_core, atol=1e-6)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("solver_tol", 0.0, "solver_tol must be in"),
        ("solver_tol", 2.0, "solver_tol must be in"),
        ("solver_max_iter", 0, "solver_max_iter must be an integer"),
        ("solver", "lanczos", "solver must be one of"),
    ],
)
def test_solver_settings_are_validated(field, value, match):
    with pytest.raises(EdgeEigenLoraError, match=match):
        SubspaceConfig(**{field: value})
