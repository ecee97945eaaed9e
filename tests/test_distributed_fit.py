"""The Dask engine gives the single-process basis, survives a killed worker, and is never imported eagerly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace

import numpy as np
import pytest

from edge_eigenlora import subspace
from edge_eigenlora.adapters import AdapterBank, LoraFactors
from edge_eigenlora.bank_sources import open_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis
from edge_eigenlora.cli import main
from edge_eigenlora.errors import EdgeEigenLoraError
from tests.helpers import write_peft_adapter

MODULES = tuple(f"layers.{i}.{p}" for i in range(3) for p in ("q", "v"))
D_IN, D_OUT = 64, 48


def _bank_dirs(root, n: int = 40, spectrum: np.ndarray | None = None):
    """n adapters of mixed ranks with a decaying spectrum: 2 max(d) = 128 < 40 x ~4 columns, the Gram route."""
    rng = np.random.default_rng(0)
    spectrum = np.exp(-np.arange(24) / 4.0) if spectrum is None else spectrum
    planted = {
        m: (
            np.linalg.qr(rng.standard_normal((D_IN, spectrum.size)))[0],
            np.linalg.qr(rng.standard_normal((D_OUT, spectrum.size)))[0],
        )
        for m in MODULES
    }
    dirs = []
    for i in range(n):
        r = (2, 4, 6)[i % 3]
        factors = {}
        for m, (p_in, p_out) in planted.items():
            A = (p_in @ (spectrum[:, None] * rng.standard_normal((spectrum.size, r)))).T
            B = p_out @ (spectrum[:, None] * rng.standard_normal((spectrum.size, r)))
            factors[m] = (A + 0.01 * rng.standard_normal(A.shape), B + 0.01 * rng.standard_normal(B.shape))
        dirs.append(write_peft_adapter(root / f"shard{i // 10}" / f"a{i:02d}", factors, r=r, alpha=r))
    return dirs


@pytest.fixture(scope="module")
def client():
    from edge_eigenlora.distributed_fit import local_client

    c = local_client(2)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


def _max_angle(a, b) -> float:
    return max(
        float(
            np.max(
                subspace.principal_angles(getattr(a.modules[m], f"U_{s}"), getattr(b.modules[m], f"U_{s}"))
            )
        )
        for m in a.modules
        for s in ("A", "B")
    )


def test_dask_gives_the_single_process_basis(client, tmp_path):
    from edge_eigenlora.distributed_fit import DaskEngine, fit_basis_dask

    _bank_dirs(tmp_path)
    bank = open_bank([tmp_path]).bank
    config = SubspaceConfig(k=6)
    single = fit_basis(bank, config, progress=False)
    assert all(m.solver["A"]["method"] == "subspace_iteration" for m in single.modules.values())
    for shard_size in (3, 7, 40):  # 14, 6 and 1 shards: different trees, same basis
        dask = fit_basis(bank, config, progress=False, engine=DaskEngine(client, shard_size=shard_size))
        assert _max_angle(single, dask) < 1e-6
        for m in single.modules:
            a, b = single.modules[m], dask.modules[m]
            assert a.adapters == b.adapters
            np.testing.assert_allclose(a.mean_core, b.mean_core, atol=1e-6)
            np.testing.assert_allclose(a.singular_values_A, b.singular_values_A, rtol=1e-9, atol=1e-12)
    via_function = fit_basis_dask(bank, config, client=client, progress=False)
    assert _max_angle(single, via_function) < 1e-6
    via_address = fit_basis_dask(bank, config, scheduler=client.scheduler.address, progress=False)
    assert _max_angle(single, via_address) < 1e-6


def test_dask_skips_a_bad_adapter_like_the_single_process_fit(client, tmp_path):
    from edge_eigenlora.basis import BadAdapterSkipped
    from edge_eigenlora.distributed_fit import DaskEngine
    from tests.test_bank_sources import _nan

    dirs = _bank_dirs(tmp_path)
    _nan(dirs[13])  # NaN in its second module: found mid-fit, after the first module included it
    bank = open_bank([tmp_path]).bank
    config = SubspaceConfig(k=6)
    with pytest.raises(
        EdgeEigenLoraError, match=r"a13/adapter_model.safetensors: module 'layers.1.q' lora_A contains NaN"
    ):
        fit_basis(bank, config, progress=False, engine=DaskEngine(client, shard_size=5))
    with pytest.warns(BadAdapterSkipped):
        single = fit_basis(bank, config, progress=False, skip_bad=True)
    with pytest.warns(BadAdapterSkipped):
        dask = fit_basis(bank, config, progress=False, skip_bad=True, engine=DaskEngine(client, shard_size=5))
    assert list(dask.skipped) == list(single.skipped) == ["shard1/a13"]
    assert all("shard1/a13" not in m.adapters for m in dask.modules.values())
    assert _max_angle(single, dask) < 1e-6


def test_dask_keeps_the_captured_energy_where_the_spectrum_does_not_separate(client, tmp_path):
    from edge_eigenlora.distributed_fit import DaskEngine

    _bank_dirs(tmp_path, spectrum=np.ones(24))  # flat: the top-6 subspace is not unique
    bank = open_bank([tmp_path]).bank
    config = SubspaceConfig(method="factors", k=6, solver="exact")
    single = fit_basis(bank, config, progress=False)
    dask = fit_basis(bank, config, progress=False, engine=DaskEngine(client, shard_size=4))
    for m in MODULES:
        stack = np.concatenate([a.modules[m].A.T.astype(np.float64) for a in bank.adapters], axis=1)
        gram = stack @ stack.T
        e1 = np.trace(single.modules[m].U_A.T.astype(np.float64) @ gram @ single.modules[m].U_A)
        e2 = np.trace(dask.modules[m].U_A.T.astype(np.float64) @ gram @ dask.modules[m].U_A)
        assert abs(e1 - e2) <= 1e-6 * e1


class _GatedModules(Mapping[str, LoraFactors]):
    """Reads like the real lazy modules, but waits for a gate file first, so the fit cannot end before a worker
    is killed (a sleep-slowed read raced the kill on a loaded machine and lost)."""

    def __init__(self, inner: Mapping[str, LoraFactors], gate: str) -> None:
        self.inner, self.gate = inner, gate

    def __getitem__(self, module: str) -> LoraFactors:
        deadline = time.monotonic() + 120
        while not os.path.exists(self.gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {self.gate} never opened")
            time.sleep(0.02)
        return self.inner[module]

    def __iter__(self) -> Iterator[str]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def test_a_worker_killed_mid_fit_is_retried_and_the_basis_is_unchanged(client, tmp_path):
    from edge_eigenlora.distributed_fit import DaskEngine

    _bank_dirs(tmp_path)
    bank = open_bank([tmp_path]).bank
    gate = tmp_path / "gate"
    gated = AdapterBank(  # the first 20 adapters read at once, the last 20 wait for the gate
        adapters=tuple(
            a if i < 20 else replace(a, modules=_GatedModules(a.modules, str(gate)))
            for i, a in enumerate(bank.adapters)
        ),
        base_model=bank.base_model,
        module_shapes=bank.module_shapes,
    )
    config = SubspaceConfig(k=6)
    reference = fit_basis(bank, config, progress=False)
    pids = client.run(os.getpid)
    result: dict = {}

    def run() -> None:
        try:
            result["basis"] = fit_basis(
                gated, config, progress=False, engine=DaskEngine(client, shard_size=5)
            )
        except Exception as exc:  # surfaced by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and client.run_on_scheduler(_held_partial_sums) < 2:
        time.sleep(0.05)
    assert client.run_on_scheduler(_held_partial_sums) >= 2, "the ungated shards never finished"
    assert thread.is_alive(), "the fit ended before a worker could be killed"
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    gate.touch()
    # a peer still fetching from the dead worker waits out its connect timeout (~30 s) before the retry
    thread.join(timeout=120)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    basis = result["basis"]
    assert victim not in client.run(os.getpid).values()  # the killed process is gone (its nanny restarts one)
    assert _max_angle(reference, basis) < 1e-6
    for m in MODULES:
        np.testing.assert_allclose(reference.modules[m].mean_core, basis.modules[m].mean_core, atol=1e-6)
        assert reference.modules[m].adapters == basis.modules[m].adapters


def _held_partial_sums(dask_scheduler) -> int:
    """Finished accumulations and merges whose results the cluster holds (a killed worker loses its share)."""
    return sum(
        ts.state == "memory" and ("_accumulate" in str(ts.key) or "_merge" in str(ts.key))
        for ts in dask_scheduler.tasks.values()
    )


def test_cli_fit_with_the_dask_engine_equals_the_default(tmp_path, capsys):
    from edge_eigenlora.basis import load_basis

    _bank_dirs(tmp_path / "bank", n=20)
    listing = tmp_path / "bank.txt"
    listing.write_text(str(tmp_path / "bank") + "\n")
    args = ["--k", "4", "--method", "factors"]
    assert main(["fit", str(tmp_path / "bank"), "--out", str(tmp_path / "single.safetensors"), *args]) == 0
    dask_args = ["--engine", "dask", "--workers", "2"]
    assert main(["fit", str(listing), "--out", str(tmp_path / "dask.safetensors"), *args, *dask_args]) == 0
    assert (
        _max_angle(load_basis(tmp_path / "single.safetensors"), load_basis(tmp_path / "dask.safetensors"))
        < 1e-6
    )
    assert main(["fit", str(listing), "--out", str(tmp_path / "x.safetensors"), "--workers", "2"]) == 2
    assert "--scheduler and --workers belong to --engine dask" in capsys.readouterr().err


def test_importing_the_package_does_not_import_dask():
    code = (
        "import sys, edge_eigenlora, edge_eigenlora.basis, edge_eigenlora.bank_sources, edge_eigenlora.cli;"
        "bad = [m for m in ('dask', 'distributed', 'fsspec') if m in sys.modules]; assert not bad, bad"
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
