"""Banks from folder trees, list files and fsspec URLs, read lazily; bad adapters refused or skipped, never used."""

from __future__ import annotations

import json
import re

import fsspec
import numpy as np
import pytest
from safetensors.numpy import save_file

from edge_eigenlora import subspace
from edge_eigenlora.adapters import load_bank
from edge_eigenlora.bank_sources import open_bank, resolve_sources
from edge_eigenlora.basis import BadAdapterSkipped, SubspaceConfig, fit_basis, load_basis, save_basis
from edge_eigenlora.errors import EdgeEigenLoraError
from tests.helpers import write_peft_adapter

MODULES = ("layers.0.q", "layers.1.q")


def _adapter(rng, r: int, d_in: int = 24, d_out: int = 20):
    return {m: (rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r))) for m in MODULES}


@pytest.fixture
def tree(tmp_path):
    """Two shard folders, mixed ranks (2, 4, 8), seeded."""
    rng = np.random.default_rng(0)
    dirs = []
    for i, r in enumerate([2, 4, 8, 4, 2, 8, 4, 4]):
        dirs.append(
            write_peft_adapter(
                tmp_path / "bank" / f"shard{i % 2}" / f"a{i}", _adapter(rng, r), r=r, alpha=2 * r
            )
        )
    return tmp_path / "bank", dirs


def _same(a, b, tol=1e-6):
    assert set(a.modules) == set(b.modules)
    for m in a.modules:
        for side in ("A", "B"):
            u, v = getattr(a.modules[m], f"U_{side}"), getattr(b.modules[m], f"U_{side}")
            assert np.max(subspace.principal_angles(u, v)) < tol
        np.testing.assert_allclose(a.modules[m].mean_core, b.modules[m].mean_core, atol=1e-5)


def test_tree_list_file_and_urls_give_the_eager_bank_basis(tree, tmp_path):
    root, dirs = tree
    config = SubspaceConfig(k=6)
    eager = fit_basis(load_bank(dirs), config, progress=False)
    names = [n for n, _ in resolve_sources([root])]
    assert names == sorted(f"shard{i % 2}/a{i}" for i in range(8))
    listing = tmp_path / "bank.txt"
    listing.write_text("# my bank\n" + "\n".join(str(d.relative_to(tmp_path)) for d in dirs) + "\n\n")
    memory = fsspec.filesystem("memory")
    for d in dirs:
        for f in d.iterdir():
            memory.pipe(f"/bank16/{d.parent.name}/{d.name}/{f.name}", f.read_bytes())
    for source in ([root], [listing], [f"file://{root}"], ["memory://bank16"]):
        opened = open_bank(source)
        assert len(opened.bank.adapters) == 8 and not opened.skipped
        _same(fit_basis(opened.bank, config, progress=False), eager)


def test_modules_are_read_lazily_and_in_any_float_dtype(tmp_path):
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((4, 24)).astype(np.float32), rng.standard_normal((20, 4)).astype(np.float32)
    folder = write_peft_adapter(tmp_path / "a", {"layers.0.q": (A, B)}, r=4, alpha=8)
    weights = folder / "adapter_model.safetensors"
    for dtype, atol in (("float16", 2e-3), ("bfloat16", 2e-2)):
        if dtype == "bfloat16":  # bf16: the top 16 bits of each float32, as torch writes it
            a16 = (A.view(np.uint32) >> 16).astype(np.uint16)
            b16 = (B.view(np.uint32) >> 16).astype(np.uint16)
            header_dtype = "BF16"
        else:
            a16, b16, header_dtype = A.astype(np.float16), B.astype(np.float16), "F16"
        save_file(
            {
                "base_model.model.layers.0.q.lora_A.weight": a16,
                "base_model.model.layers.0.q.lora_B.weight": b16,
            },
            str(weights),
        )
        if header_dtype == "BF16":  # safetensors' numpy API has no bfloat16: relabel the header's U16
            raw = weights.read_bytes()
            n = int.from_bytes(raw[:8], "little")
            head = raw[8 : 8 + n].rstrip().replace(b'"U16"', b'"BF16"')
            head += b" " * (-len(head) % 8)
            weights.write_bytes(len(head).to_bytes(8, "little") + head + raw[8 + n :])
        adapter = open_bank([folder]).bank.adapters[0]
        factors = adapter.modules["layers.0.q"]  # read now, not at open time
        np.testing.assert_allclose(factors.A, A, atol=atol)
        np.testing.assert_allclose(factors.B, B * 2.0, atol=2 * atol)


def _corrupt(folder):
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated download
    return "truncated or corrupt"


def _nan(folder):
    weights = folder / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    start = 8 + n + header["base_model.model.layers.1.q.lora_A.weight"]["data_offsets"][0]
    raw[start : start + 4] = np.array([np.nan], np.float32).tobytes()  # the second module: found mid-fit
    weights.write_bytes(bytes(raw))
    return "lora_A contains NaN or Inf"


def _shape(folder):
    rng = np.random.default_rng(5)
    write_peft_adapter(folder, _adapter(rng, 4, d_in=30), r=4, alpha=8)
    return r"\(20, 30\) \(d_out, d_in\) but \(20, 24\)"


def _base(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "other/model"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return "field 'base_model_name_or_path' is 'other/model'"


@pytest.mark.parametrize(
    "spoil", [_corrupt, _nan, _shape, _base], ids=["corrupt", "nan", "shape", "base_model"]
)
def test_a_bad_adapter_stops_the_fit_or_is_skipped_and_reported(tree, spoil):
    root, dirs = tree
    bad = dirs[3]
    match = spoil(bad)
    config = SubspaceConfig(k=6)
    with pytest.raises(EdgeEigenLoraError, match=match) as info:
        fit_basis(open_bank([root]).bank, config, progress=False)
    assert str(bad) in str(info.value)  # names the file
    assert (
        "--skip-bad" in str(info.value)
        or "Leave it out" in str(info.value)
        or "leave it out" in str(info.value)
    )

    opened = open_bank([root], skip_bad=True)
    with pytest.warns(BadAdapterSkipped) if spoil is _nan else _no_warning():
        basis = fit_basis(opened.bank, config, progress=False, skip_bad=True, skipped=opened.skipped)
    name = "shard1/a3"
    assert list(basis.skipped) == [name] and re.search(match, basis.skipped[name])
    assert name not in basis.bank
    for m in basis.modules.values():
        assert name not in m.adapters  # never silently included, even in modules fitted before it was found
    good = [d for d in dirs if d != bad]
    _same(basis, fit_basis(load_bank(good), config, progress=False))


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_skipped_adapters_are_recorded_in_the_basis_file(tree, tmp_path):
    root, dirs = tree
    _nan(dirs[2])
    opened = open_bank([root], skip_bad=True)
    with pytest.warns(BadAdapterSkipped, match="shard0/a2"):
        basis = fit_basis(opened.bank, SubspaceConfig(k=6), progress=False, skip_bad=True)
    loaded = load_basis(save_basis(basis, tmp_path / "b.safetensors"))
    assert list(loaded.skipped) == ["shard0/a2"] and "NaN" in loaded.skipped["shard0/a2"]
    assert len(loaded.bank) == 7


def test_sources_that_are_not_banks_are_refused_with_the_fix(tmp_path):
    with pytest.raises(EdgeEigenLoraError, match="does not exist. Give a PEFT adapter folder"):
        open_bank([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeEigenLoraError, match="holds no PEFT adapter folders"):
        open_bank([tmp_path / "empty"])
    rng = np.random.default_rng(2)
    folder = write_peft_adapter(tmp_path / "p", _adapter(rng, 4), r=4, alpha=8)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(EdgeEigenLoraError, match="pickles are never read from a streamed bank"):
        open_bank([folder])
    twice = tmp_path / "twice.txt"
    twice.write_text(f"{folder}\n{folder}\n")
    with pytest.raises(EdgeEigenLoraError, match="two adapters are named 'p'"):
        open_bank([twice])
    config = json.loads((folder / "adapter_config.json").read_text())
    config["lora_alpha"] = float("nan")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(EdgeEigenLoraError, match="field 'lora_alpha' must be a positive, finite number"):
        open_bank([folder])


def test_cli_fit_refuses_a_bad_adapter_or_skips_and_reports_it(tree, tmp_path, capsys):
    from edge_eigenlora.cli import main

    root, dirs = tree
    _corrupt(dirs[3])
    out = tmp_path / "b.safetensors"
    assert main(["fit", str(root), "--out", str(out), "--k", "6"]) == 2
    err = capsys.readouterr().err
    assert str(dirs[3] / "adapter_model.safetensors") in err and "--skip-bad" in err
    assert main(["fit", str(root), "--out", str(out), "--k", "6", "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "skipped shard1/a3:" in printed and "basis" in printed and "from 7 adapters" in printed
    assert list(load_basis(out).skipped) == ["shard1/a3"]
