"""The math of the subspace on synthetic banks with known answers."""

import numpy as np
import pytest

from edge_eigenlora import subspace
from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis
from edge_eigenlora.compress import compress_bank
from edge_eigenlora.errors import EdgeEigenLoraError
from tests.helpers import planted_bank, write_peft_adapter

MODULE = "layers.0.attn.q"


def _bank(tmp_path, adapters, alpha=None, names=None):
    dirs = []
    for i, (A, B) in enumerate(adapters):
        r = A.shape[0]
        dirs.append(write_peft_adapter(tmp_path / f"a{i}", {MODULE: (A, B)}, r=r, alpha=alpha or r))
    return load_bank(dirs)


@pytest.mark.parametrize("method", ["gauge_free", "factors"])
def test_planted_subspace_is_recovered(tmp_path, method):
    rng = np.random.default_rng(1)
    adapters, U_A, U_B = planted_bank(rng, n=6, r=4, d_in=48, d_out=40, k=8)
    basis = fit_basis(_bank(tmp_path, adapters), SubspaceConfig(method=method, k=8), progress=False)
    mb = basis.modules[MODULE]
    assert np.max(subspace.principal_angles(mb.U_A, U_A)) < 1e-5
    assert np.max(subspace.principal_angles(mb.U_B, U_B)) < 1e-5
    assert mb.explained() == pytest.approx((1.0, 1.0), abs=1e-9)


@pytest.mark.parametrize("method", ["gauge_free", "factors"])
def test_full_rank_projection_reconstructs_every_adapter(tmp_path, method):
    rng = np.random.default_rng(2)
    adapters = [(rng.standard_normal((4, 40)), rng.standard_normal((32, 4))) for _ in range(3)]
    bank = _bank(tmp_path, adapters)
    basis = fit_basis(bank, SubspaceConfig(method=method, k=12), progress=False)  # 3 x r4 = rank 12
    for result in compress_bank(bank, basis):
        assert result.errors[MODULE] < 1e-6


def test_truncated_projection_error_matches_dense_computation(tmp_path):
    rng = np.random.default_rng(3)
    adapters = [(rng.standard_normal((4, 40)), rng.standard_normal((32, 4))) for _ in range(3)]
    bank = _bank(tmp_path, adapters)
    basis = fit_basis(bank, SubspaceConfig(k=5), progress=False)
    mb = basis.modules[MODULE]
    A, B = adapters[0]
    alpha_a, alpha_b = subspace.project_factors(A, B, mb.U_A, mb.U_B)
    dense = mb.U_B @ alpha_b @ alpha_a.T @ mb.U_A.T
    expected = np.linalg.norm(B @ A - dense) / np.linalg.norm(B @ A)
    got = compress_bank(bank, basis)[0].errors[MODULE]
    assert got == pytest.approx(expected, rel=1e-4)
    assert 0.1 < got < 1.0


def _gauge(A, B, rng):
    G = rng.standard_normal((A.shape[0], A.shape[0])) + 3 * np.eye(A.shape[0])
    return np.linalg.solve(G, A), B @ G


def test_gauge_free_basis_ignores_the_factorization_and_factors_method_does_not(tmp_path):
    rng = np.random.default_rng(4)
    adapters = [(rng.standard_normal((4, 40)), rng.standard_normal((32, 4))) for _ in range(5)]
    regauged = [_gauge(A, B, rng) for A, B in adapters]
    for A, B in zip(adapters, regauged, strict=True):
        np.testing.assert_allclose(A[1] @ A[0], B[1] @ B[0], atol=1e-9)
    config = {"k": 6}
    free = [
        fit_basis(_bank(tmp_path / tag, bank), SubspaceConfig(method="gauge_free", **config), progress=False)
        for tag, bank in (("orig", adapters), ("gauge", regauged))
    ]
    paper = [
        fit_basis(
            _bank(tmp_path / f"p{tag}", bank), SubspaceConfig(method="factors", **config), progress=False
        )
        for tag, bank in (("orig", adapters), ("gauge", regauged))
    ]
    for side in ("U_A", "U_B"):
        angles_free = subspace.principal_angles(
            getattr(free[0].modules[MODULE], side), getattr(free[1].modules[MODULE], side)
        )
        angles_paper = subspace.principal_angles(
            getattr(paper[0].modules[MODULE], side), getattr(paper[1].modules[MODULE], side)
        )
        assert np.max(angles_free) < 1e-6
        assert np.max(angles_paper) > 0.1


def test_augmentation_is_orthonormal_and_orthogonal_to_the_basis(tmp_path):
    rng = np.random.default_rng(5)
    adapters = [(rng.standard_normal((4, 40)), rng.standard_normal((32, 4))) for _ in range(3)]
    basis = fit_basis(_bank(tmp_path, adapters), SubspaceConfig(k=6, augment=10, seed=7), progress=False)
    mb = basis.modules[MODULE]
    assert (mb.k, mb.p, mb.U_A.shape, mb.U_B.shape) == (6, 10, (40, 16), (32, 16))
    for U in (mb.U_A.astype(np.float64), mb.U_B.astype(np.float64)):
        np.testing.assert_allclose(U.T @ U, np.eye(16), atol=1e-6)
    again = fit_basis(
        _bank(tmp_path / "again", adapters), SubspaceConfig(k=6, augment=10, seed=7), progress=False
    )
    np.testing.assert_array_equal(again.modules[MODULE].U_A, mb.U_A)
    other = fit_basis(
        _bank(tmp_path / "other", adapters), SubspaceConfig(k=6, augment=10, seed=8), progress=False
    )
    assert not np.allclose(other.modules[MODULE].U_A[:, 6:], mb.U_A[:, 6:])


def test_k_larger_than_the_stack_is_refused_or_clipped(tmp_path):
    rng = np.random.default_rng(6)
    adapters = [(rng.standard_normal((4, 40)), rng.standard_normal((32, 4))) for _ in range(2)]
    bank = _bank(tmp_path, adapters)
    with pytest.raises(
        EdgeEigenLoraError, match=r"k=9 but the stack of 2 adapters supports only 8 .*--clip-k"
    ):
        fit_basis(bank, SubspaceConfig(k=9), progress=False)
    clipped = fit_basis(bank, SubspaceConfig(k=9, clip_k=True), progress=False)
    assert clipped.modules[MODULE].k == 8


def test_variance_threshold_picks_the_smallest_sufficient_k():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert subspace.k_for_variance(s, 9 / 14) == 1
    assert subspace.k_for_variance(s, 0.9) == 2
    assert subspace.k_for_variance(s, 1.0) == 3
    np.testing.assert_allclose(subspace.explained_variance(s), [9 / 14, 13 / 14, 1.0, 1.0])


def test_balanced_factors_reproduce_delta_with_equal_norms():
    rng = np.random.default_rng(7)
    A, B = rng.standard_normal((5, 30)), rng.standard_normal((20, 5))
    A2, B2 = subspace.balanced_factors(A, B)
    np.testing.assert_allclose(B2 @ A2, B @ A, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(A2, axis=1), np.linalg.norm(B2, axis=0), rtol=1e-10)


def test_streamed_gram_solver_matches_the_exact_svd_when_the_stack_is_wider_than_d():
    rng = np.random.default_rng(8)
    blocks = [rng.standard_normal((30, 4)) * (1 + i % 3) for i in range(40)]  # 160 columns > 30 rows
    streamed = subspace.StreamedPrincipalDirections(30)
    for b in blocks:
        streamed.add(b)
    u, s, rank = streamed.finish()
    assert streamed.uses_gram and rank == 30
    u_exact, s_exact = subspace.principal_directions(subspace.stack_columns(blocks))
    np.testing.assert_allclose(s, s_exact, rtol=1e-9)
    assert np.max(subspace.principal_angles(u[:, :10], u_exact[:, :10])) < 1e-7


def test_lazy_bank_gives_the_same_basis_as_an_eager_one(tmp_path):
    rng = np.random.default_rng(9)
    adapters = [
        (rng.standard_normal((4, 12)), rng.standard_normal((10, 4))) for _ in range(6)
    ]  # 24 cols > 12 rows
    dirs = [
        write_peft_adapter(tmp_path / f"a{i}", {MODULE: ab}, r=4, alpha=8) for i, ab in enumerate(adapters)
    ]
    eager = fit_basis(load_bank(dirs), SubspaceConfig(k=6), progress=False)
    lazy = fit_basis(load_bank(dirs, lazy=True), SubspaceConfig(k=6), progress=False)
    assert np.max(subspace.principal_angles(eager.modules[MODULE].U_A, lazy.modules[MODULE].U_A)) < 1e-6
    np.testing.assert_allclose(eager.modules[MODULE].mean_core, lazy.modules[MODULE].mean_core, atol=1e-5)


def test_top_eigenvectors_by_subspace_iteration_match_a_full_eigh():
    rng = np.random.default_rng(10)
    q, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    spectrum = np.concatenate([np.linspace(50, 10, 20), np.full(280, 1.0) * np.linspace(1, 0.01, 280)])
    gram = (q * spectrum) @ q.T
    top = subspace.top_eigenvectors(gram, 12).vectors
    assert top.shape == (300, 12)
    assert np.max(subspace.principal_angles(top, q[:, :12])) < 1e-6


def test_balanced_factors_of_rank_deficient_and_zero_adapters():
    rng = np.random.default_rng(11)
    A, B = rng.standard_normal((4, 30)), rng.standard_normal((20, 4))
    B[:, 3] = B[:, 2]  # rank 3
    A2, B2 = subspace.balanced_factors(A, B)
    assert (A2.shape, B2.shape) == ((3, 30), (20, 3))
    np.testing.assert_allclose(B2 @ A2, B @ A, atol=1e-10)
    A0, B0 = subspace.balanced_factors(A, np.zeros((20, 4)))  # an untrained LoRA (B = 0): nothing to stack
    assert (A0.shape, B0.shape) == ((0, 30), (20, 0))
