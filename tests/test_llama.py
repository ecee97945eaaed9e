"""Llama-family decoders: attach to q_proj/v_proj, causal-LM coefficient training, PEFT export.

A tiny seeded Llama (a synthetic fixture for the mechanics) trained on real text from the fortunes package.
"""

import copy

import pytest
import torch

from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis
from edge_eigenlora.compress import task_to_peft
from edge_eigenlora.model import attach_basis, eigenlora_layers, task_from_model
from edge_eigenlora.train import TrainConfig, evaluate_causal_lm, train_causal_lm
from tests.helpers import tiny_llama_bank_dirs, tiny_llama_model


@pytest.fixture(scope="module")
def tiny_llama(minilm):
    _, tokenizer = minilm  # a real WordPiece vocabulary for the real text
    return tiny_llama_model(tokenizer.vocab_size), tokenizer


@pytest.fixture(scope="module")
def llama_basis(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama_bank")
    dirs = tiny_llama_bank_dirs(root)
    return fit_basis(load_bank(dirs), SubspaceConfig(k=8), progress=False)


def _logits(model, tokenizer, texts=("A fortune a day.", "Keep the faith")):
    batch = tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _fortunes():
    from edge_eigenlora.datasets import load_task

    data = load_task("topic_fortunes_en_subjects", seed=0, max_per_class=40)
    return list(data.train.texts[:160]), list(data.validation.texts[:48])


def test_attach_to_llama_is_a_no_op_at_zero_delta(tiny_llama, llama_basis):
    model, tokenizer = tiny_llama
    attached = attach_basis(copy.deepcopy(model), llama_basis, rank=4)
    assert len(eigenlora_layers(attached)) == 4
    assert torch.max(torch.abs(_logits(attached, tokenizer) - _logits(model, tokenizer))).item() < 1e-5


def test_causal_lm_coefficient_training_lowers_validation_loss(tiny_llama, llama_basis):
    model, tokenizer = tiny_llama
    attached = attach_basis(copy.deepcopy(model), llama_basis, rank=4)
    train, val = _fortunes()
    before = evaluate_causal_lm(attached, tokenizer, val, max_length=48)
    config = TrainConfig(epochs=3, batch_size=16, lr=1e-1, max_length=48, progress=False, eval_every=10)
    result = train_causal_lm(attached, tokenizer, train, val, config)
    after = evaluate_causal_lm(attached, tokenizer, val, max_length=48)
    assert after < before - 0.05, (before, after)
    assert result.best_metric == pytest.approx(-after, abs=1e-4)


def test_llama_peft_export_matches(tmp_path, tiny_llama, llama_basis):
    from peft import PeftModel

    model, tokenizer = tiny_llama
    attached = attach_basis(copy.deepcopy(model), llama_basis, rank=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in eigenlora_layers(attached).values():
            layer.eigenlora_alpha_B.copy_(torch.randn(layer.eigenlora_alpha_B.shape, generator=g) * 0.1)
    task = task_from_model(attached, "lm")
    assert task.kind == "causal_lm"
    folder = task_to_peft(task, llama_basis, tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), folder)
    expected = _logits(attached, tokenizer)
    assert torch.max(torch.abs(_logits(peft_model, tokenizer) - expected)).item() < 1e-4
    assert torch.max(torch.abs(expected - _logits(model, tokenizer))).item() > 1e-3
