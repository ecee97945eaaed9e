"""Control bases (benchmarks.controls): orthonormal, seeded, the right shapes, usable by attach_basis."""

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import controls
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.model import attach_basis, count_coefficients

SHAPES = {"layer.0.query": (12, 10), "layer.0.value": (12, 10)}


def _orthonormal(u: np.ndarray) -> bool:
    return np.allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-5)


def test_random_basis_is_orthonormal_seeded_and_differs_per_module():
    a = controls.random_basis(SHAPES, 4, seed=3)
    b = controls.random_basis(SHAPES, 4, seed=3)
    c = controls.random_basis(SHAPES, 4, seed=4)
    mb = a.modules["layer.0.query"]
    assert mb.U_A.shape == (10, 4) and mb.U_B.shape == (12, 4) and mb.width == 4
    assert _orthonormal(mb.U_A) and _orthonormal(mb.U_B)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not np.allclose(a.modules["layer.0.query"].U_A, a.modules["layer.0.value"].U_A)
    assert np.all(mb.mean_core == 0)


def test_weight_svd_basis_spans_the_top_singular_directions():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 10))
    basis = controls.weight_svd_basis({"m": w}, 3)
    mb = basis.modules["m"]
    u, s, vt = np.linalg.svd(w)
    assert _orthonormal(mb.U_A) and _orthonormal(mb.U_B)
    # The projection of W onto the basis keeps exactly its top-3 singular values.
    core = mb.U_B.T.astype(np.float64) @ w @ mb.U_A.astype(np.float64)
    assert np.allclose(np.linalg.svd(core, compute_uv=False), s[:3], atol=1e-4)
    with pytest.raises(EdgeEigenLoraError):
        controls.weight_svd_basis({"m": w}, 11)


def test_mix_basis_takes_output_and_input_sides_from_different_bases():
    a = controls.random_basis(SHAPES, 4, seed=1)
    b = controls.random_basis(SHAPES, 4, seed=2)
    mixed = controls.mix_basis(a, b)
    m = mixed.modules["layer.0.value"]
    assert np.array_equal(m.U_B, a.modules["layer.0.value"].U_B)
    assert np.array_equal(m.U_A, b.modules["layer.0.value"].U_A)
    with pytest.raises(EdgeEigenLoraError):
        controls.mix_basis(a, controls.random_basis(SHAPES, 3, seed=2))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleDict(
            {"0": nn.ModuleDict({"query": nn.Linear(10, 12), "value": nn.Linear(10, 12)})}
        )


def test_control_bases_attach_at_zero_delta_and_train_only_coefficients():
    model = _Tiny()
    weights = controls.module_weights(model, ["layer.0.query", "layer.0.value"])
    for basis in (controls.random_basis(SHAPES, 4), controls.weight_svd_basis(weights, 4)):
        m = _Tiny()
        m.load_state_dict(model.state_dict())
        x = torch.randn(3, 10)
        before = m.layer["0"]["query"](x)
        attach_basis(m, basis, rank=2)
        assert torch.allclose(m.layer["0"]["query"](x), before, atol=1e-6)
        assert count_coefficients(m) == 2 * 2 * 4 * 2
        assert all(
            n.split(".")[-1].startswith("eigenlora_") for n, p in m.named_parameters() if p.requires_grad
        )
