"""Reading PEFT folders: scaling rules, key prefixes, and every bad input with its message pinned."""

import json
import math

import numpy as np
import pytest
import torch

from edge_eigenlora.adapters import load_bank, read_adapter
from edge_eigenlora.errors import EdgeEigenLoraError
from tests.helpers import write_peft_adapter

Q, V = "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"


def _modules(rng, r=4, d=16, names=(Q, V)):
    return {n: (rng.standard_normal((r, d)), rng.standard_normal((d, r))) for n in names}


def test_scale_is_folded_into_B(tmp_path):
    rng = np.random.default_rng(0)
    mods = _modules(rng)
    adapter = read_adapter(write_peft_adapter(tmp_path / "a", mods, r=4, alpha=8))
    A, B = mods[Q]
    np.testing.assert_allclose(adapter.modules[Q].delta(), 2.0 * B @ A, rtol=1e-5)


def test_rslora_and_rank_alpha_patterns(tmp_path):
    rng = np.random.default_rng(1)
    mods = {
        Q: (rng.standard_normal((4, 16)), rng.standard_normal((16, 4))),
        V: (rng.standard_normal((2, 16)), rng.standard_normal((16, 2))),
    }
    extra = {
        "use_rslora": True,
        "rank_pattern": {"value": 2},
        "alpha_pattern": {"layer.0.attention.self.value": 6},
    }
    adapter = read_adapter(write_peft_adapter(tmp_path / "a", mods, r=4, alpha=8, extra_config=extra))
    np.testing.assert_allclose(
        adapter.modules[Q].delta(), 8 / math.sqrt(4) * mods[Q][1] @ mods[Q][0], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        adapter.modules[V].delta(), 6 / math.sqrt(2) * mods[V][1] @ mods[V][0], rtol=1e-4, atol=1e-5
    )
    assert (adapter.modules[Q].rank, adapter.modules[V].rank) == (4, 2)


def test_key_prefixes_and_adapter_names_in_keys(tmp_path):
    rng = np.random.default_rng(2)
    plain = read_adapter(write_peft_adapter(tmp_path / "a", _modules(rng), r=4, alpha=4, prefix=""))
    assert sorted(plain.modules) == [Q, V]
    folder = write_peft_adapter(tmp_path / "b", _modules(rng), r=4, alpha=4)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    renamed = {k.replace(".weight", ".default.weight"): v for k, v in tensors.items()}
    save_file(renamed, str(folder / "adapter_model.safetensors"))
    assert sorted(read_adapter(folder).modules) == [Q, V]


def test_missing_modules_are_recorded_and_mixed_ranks_allowed(tmp_path):
    rng = np.random.default_rng(3)
    a = write_peft_adapter(tmp_path / "a", _modules(rng, r=4), r=4, alpha=4)
    b = write_peft_adapter(tmp_path / "b", _modules(rng, r=8, names=(Q,)), r=8, alpha=8)
    bank = load_bank([a, b])
    assert bank.missing() == {V: ["b"]}
    assert [x.name for x in bank.adapters_with(V)] == ["a"]


def test_truncated_safetensors_is_refused(tmp_path):
    folder = write_peft_adapter(tmp_path / "a", _modules(np.random.default_rng(4)), r=4, alpha=4)
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
        EdgeEigenLoraError,
        match=r"adapter_model.safetensors is not a valid safetensors file: it is truncated: its header describes \d+ bytes of tensor data but the file holds \d+",
    ):
        read_adapter(folder)


def test_garbage_safetensors_is_refused(tmp_path):
    folder = write_peft_adapter(tmp_path / "a", _modules(np.random.default_rng(4)), r=4, alpha=4)
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(
        EdgeEigenLoraError, match="not a valid safetensors file: its header is not valid JSON"
    ):
        read_adapter(folder)


def test_missing_config_is_refused(tmp_path):
    folder = write_peft_adapter(tmp_path / "a", _modules(np.random.default_rng(5)), r=4, alpha=4)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(
        EdgeEigenLoraError, match=r"is not a PEFT adapter folder: adapter_config.json is missing"
    ):
        read_adapter(folder)


def test_malformed_config_is_refused(tmp_path):
    folder = write_peft_adapter(tmp_path / "a", _modules(np.random.default_rng(5)), r=4, alpha=4)
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(EdgeEigenLoraError, match=r"adapter_config.json is not valid JSON"):
        read_adapter(folder)
    (folder / "adapter_config.json").write_text(json.dumps({"r": "eight", "lora_alpha": 16}))
    with pytest.raises(
        EdgeEigenLoraError,
        match=r"field 'r' must be a positive whole number \(the LoRA rank\), found 'eight'",
    ):
        read_adapter(folder)


def test_rank_that_contradicts_the_config_is_refused(tmp_path):
    folder = write_peft_adapter(tmp_path / "a", _modules(np.random.default_rng(5), r=4), r=8, alpha=8)
    with pytest.raises(EdgeEigenLoraError, match=r"has rank 4 in the weights but the config says r=8"):
        read_adapter(folder)


def test_two_base_models_in_one_bank_are_refused(tmp_path):
    rng = np.random.default_rng(6)
    a = write_peft_adapter(tmp_path / "a", _modules(rng), r=4, alpha=4, base_model="org/model-one")
    b = write_peft_adapter(tmp_path / "b", _modules(rng), r=4, alpha=4, base_model="org/model-two")
    with pytest.raises(
        EdgeEigenLoraError, match=r"adapters of two different base models in one bank: 'org/model-one'"
    ):
        load_bank([a, b])


def test_same_module_with_other_shape_is_refused(tmp_path):
    rng = np.random.default_rng(7)
    a = write_peft_adapter(tmp_path / "a", _modules(rng, d=16), r=4, alpha=4, base_model="")
    b = write_peft_adapter(tmp_path / "b", _modules(rng, d=24), r=4, alpha=4, base_model="")
    with pytest.raises(EdgeEigenLoraError, match=r"is \(24, 24\) \(d_out, d_in\) in .* but \(16, 16\)"):
        load_bank([a, b])


def test_local_path_and_hub_id_of_one_model_agree(tmp_path):
    rng = np.random.default_rng(8)
    a = write_peft_adapter(tmp_path / "a", _modules(rng), r=4, alpha=4, base_model="org/all-MiniLM-L6-v2")
    b = write_peft_adapter(
        tmp_path / "b", _modules(rng), r=4, alpha=4, base_model="/models/all-MiniLM-L6-v2/"
    )
    assert load_bank([a, b]).base_model == "org/all-MiniLM-L6-v2"


def test_nan_in_an_adapter_is_refused(tmp_path):
    mods = _modules(np.random.default_rng(9))
    mods[V][1][3, 1] = np.nan
    folder = write_peft_adapter(tmp_path / "a", mods, r=4, alpha=4)
    with pytest.raises(EdgeEigenLoraError, match=r"module '.*value' lora_B contains NaN or Inf"):
        read_adapter(folder)


def test_pickled_adapter_needs_the_trust_flag_and_loads_weights_only(tmp_path):
    rng = np.random.default_rng(10)
    mods = _modules(rng)
    folder = write_peft_adapter(tmp_path / "a", mods, r=4, alpha=4)
    from safetensors.numpy import load_file

    state = {k: torch.from_numpy(v) for k, v in load_file(str(folder / "adapter_model.safetensors")).items()}
    (folder / "adapter_model.safetensors").unlink()
    torch.save(state, folder / "adapter_model.bin")
    with pytest.raises(
        EdgeEigenLoraError, match=r"adapter_model.bin is a pickled PyTorch file.*--trust-pickle"
    ):
        read_adapter(folder)
    trusted = read_adapter(folder, trust_pickle=True)
    np.testing.assert_allclose(trusted.modules[Q].delta(), mods[Q][1] @ mods[Q][0], rtol=1e-4, atol=1e-5)


def test_pickle_with_code_is_refused_even_when_trusted(tmp_path):
    folder = write_peft_adapter(tmp_path / "a", _modules(np.random.default_rng(11)), r=4, alpha=4)
    (folder / "adapter_model.safetensors").unlink()
    torch.save({"x": print}, folder / "adapter_model.bin")  # an arbitrary object: weights_only must reject it
    with pytest.raises(EdgeEigenLoraError, match=r"could not be loaded with weights_only=True"):
        read_adapter(folder, trust_pickle=True)


def test_dora_and_non_lora_types_are_refused(tmp_path):
    folder = write_peft_adapter(
        tmp_path / "a", _modules(np.random.default_rng(12)), r=4, alpha=4, extra_config={"use_dora": True}
    )
    with pytest.raises(EdgeEigenLoraError, match=r"field 'use_dora' is true"):
        read_adapter(folder)
    folder = write_peft_adapter(
        tmp_path / "b", _modules(np.random.default_rng(12)), r=4, alpha=4, extra_config={"peft_type": "IA3"}
    )
    with pytest.raises(EdgeEigenLoraError, match=r"field 'peft_type' is 'IA3'; only LoRA"):
        read_adapter(folder)
