"""Basis and task files: numeric round trips, fingerprints, and refusals."""

import numpy as np
import pytest

from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis, load_basis, plot_explained_variance, save_basis
from edge_eigenlora.compress import compress_bank
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.task import load_task, save_task
from tests.helpers import write_peft_adapter


@pytest.fixture
def bank(tmp_path):
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(3):
        mods = {f"l{j}.q": (rng.standard_normal((4, 24)), rng.standard_normal((20, 4))) for j in range(2)}
        dirs.append(write_peft_adapter(tmp_path / f"a{i}", mods, r=4, alpha=8))
    return load_bank(dirs)


def test_basis_round_trip_keeps_tensors_metadata_and_fingerprint(tmp_path, bank):
    basis = fit_basis(bank, SubspaceConfig(k=5, augment=2), progress=False)
    path = save_basis(basis, tmp_path / "basis.safetensors")
    loaded = load_basis(path)
    assert loaded.fingerprint == basis.fingerprint and len(basis.fingerprint) == 64
    assert loaded.config == basis.config and loaded.bank == ("a0", "a1", "a2")
    for name, mb in basis.modules.items():
        np.testing.assert_array_equal(loaded.modules[name].U_A, mb.U_A)
        np.testing.assert_array_equal(loaded.modules[name].U_B, mb.U_B)
        assert loaded.modules[name].explained() == pytest.approx(mb.explained(), abs=1e-6)
        assert (loaded.modules[name].k, loaded.modules[name].p) == (5, 2)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_tampered_basis_is_refused(tmp_path, bank):
    path = save_basis(fit_basis(bank, SubspaceConfig(k=5), progress=False), tmp_path / "basis.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # flip one bit inside the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(EdgeEigenLoraError, match="do not match the stored fingerprint"):
        load_basis(path)


def test_explained_variance_plot_is_written(tmp_path, bank):
    path = plot_explained_variance(fit_basis(bank, SubspaceConfig(k=5), progress=False), tmp_path / "ev.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_task_round_trip_and_wrong_basis(tmp_path, bank):
    basis = fit_basis(bank, SubspaceConfig(k=5), progress=False)
    task = compress_bank(bank, basis)[0].task
    task.head_weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    task.head_bias = np.array([0.5, -0.5], np.float32)
    task.labels = ["neg", "pos"]
    path = save_task(task, tmp_path / "t.safetensors")
    loaded = load_task(path, expected_basis=basis.fingerprint)
    assert loaded.labels == ["neg", "pos"] and loaded.basis_fingerprint == basis.fingerprint
    for m, (a, b) in task.coefficients.items():
        np.testing.assert_array_equal(loaded.coefficients[m][0], a)
        np.testing.assert_array_equal(loaded.coefficients[m][1], b)
    np.testing.assert_array_equal(loaded.head_weight, task.head_weight)
    other = fit_basis(bank, SubspaceConfig(k=4), progress=False)
    with pytest.raises(
        EdgeEigenLoraError, match=rf"trained for basis {basis.short_id} but .* basis {other.short_id}"
    ):
        load_task(path, expected_basis=other.fingerprint)


def test_nan_coefficients_are_never_written(tmp_path, bank):
    basis = fit_basis(bank, SubspaceConfig(k=5), progress=False)
    task = compress_bank(bank, basis)[0].task
    task.coefficients["l0.q"][0][0, 0] = np.inf
    with pytest.raises(EdgeEigenLoraError, match=r"coefficients of module 'l0.q' contain NaN or Inf"):
        save_task(task, tmp_path / "t.safetensors")
    assert not (tmp_path / "t.safetensors").exists()
