"""Quantization on a real task: coefficients trained on the real MiniLM (WordPiece glosses -> part of speech),
exported once, then every quantization measured by logits error against fp32 and by test accuracy.

Slow (training + export, ~3 min on 2 cores): `pytest -m slow tests/test_quantize_real.py -s` prints the table
that docs/export.md quotes. Set EDGE_EIGENLORA_QUANT_REPORT=path to also write it as JSON.
"""

import copy
import json
import os

import numpy as np
import onnx
import pytest
import torch

from edge_eigenlora import bundle, quantize
from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
from edge_eigenlora.export import ExportConfig, derive_bundle, export_bundle
from edge_eigenlora.model import TextClassifier, attach_basis, task_from_model
from edge_eigenlora.task import save_task

pytestmark = [pytest.mark.real_model, pytest.mark.slow]
MODES = [
    ("int8", "none"),
    ("int4", "none"),
    ("none", "int8"),
    ("none", "int4"),
    ("int8", "int8"),
    ("int4", "int4"),
]


def _eval(path, manifest, texts, labels, tokenizer, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = []
    for i in range(0, len(texts), 64):
        enc = tokenizer(
            list(texts[i : i + 64]), padding=True, truncation=True, max_length=48, return_tensors="np"
        )
        ids = {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
        }
        outs.append(sess.run(["logits"], {**ids, **feeds})[0])
    logits = np.concatenate(outs)
    return logits, float(np.mean(logits.argmax(1) == np.asarray(labels)))


def test_quantization_error_and_accuracy_on_a_real_task(tmp_path, minilm, minilm_bank_dirs):
    from edge_eigenlora.datasets import load_task as load_data
    from edge_eigenlora.train import TrainConfig, train_classifier

    encoder, tokenizer = minilm
    basis = fit_basis(load_bank(minilm_bank_dirs), SubspaceConfig(k=16), progress=False)
    basis_path = save_basis(basis, tmp_path / "basis.safetensors")
    data = load_data("semantic_pos_from_gloss", seed=0, max_per_class=120)
    torch.manual_seed(0)
    clf = TextClassifier(
        attach_basis(copy.deepcopy(encoder), basis, rank=8), num_labels=len(data.label_names)
    )
    config = TrainConfig(epochs=2, batch_size=16, lr=5e-3, head_lr=1e-2, max_length=48, progress=False)
    train_classifier(
        clf,
        tokenizer,
        (data.train.texts, data.train.labels),
        (data.validation.texts, data.validation.labels),
        config,
    )
    task_path = save_task(
        task_from_model(clf, "pos", labels=list(data.label_names)), tmp_path / "pos.safetensors"
    )
    fp32 = export_bundle(
        "sentence-transformers/all-MiniLM-L6-v2",
        basis_path,
        tmp_path / "fp32",
        tasks=[task_path],
        config=ExportConfig(basis_quant="none"),
        model=encoder,
        tokenizer=tokenizer,
    )
    manifest = bundle.verify_bundle(fp32)
    feeds = bundle.task_feeds(bundle.load_bundle_task(manifest, "pos"), manifest)
    test = (data.test.texts, data.test.labels)
    ref, acc32 = _eval(fp32 / "model_shared.onnx", manifest, *test, tokenizer, feeds)
    rows = {
        "fp32": {
            "accuracy": acc32,
            "rel_error": 0.0,
            "sqnr_db": None,
            "mb": bundle.graph_bytes(manifest, "shared") / 2**20,  # the .onnx and the weights it reads
        }
    }
    for basis_q, base_q in MODES + [("fp16", "fp16")]:
        precision = "fp16" if basis_q == "fp16" else "fp32"
        cfg = ExportConfig(
            basis_quant="none" if precision == "fp16" else basis_q,
            base_quant="none" if precision == "fp16" else base_q,
            precision=precision,
        )
        out = derive_bundle(fp32, tmp_path / f"{basis_q}_{base_q}", config=cfg)
        logits, acc = _eval(out / "model_shared.onnx", manifest, *test, tokenizer, feeds)
        rows[f"basis={basis_q},base={base_q}"] = {
            "accuracy": acc,
            "rel_error": quantize.relative_error(ref, logits),
            "sqnr_db": quantize.sqnr_db(ref, logits),
            "mb": bundle.graph_bytes(bundle.read_manifest(out), "shared") / 2**20,
        }
    rows["basis_sqnr_db"] = {m: quantize.basis_sqnr(basis, m) for m in ("int8", "int4")}
    rows["test_examples"] = len(test[0])
    print(json.dumps(rows, indent=1))
    if os.environ.get("EDGE_EIGENLORA_QUANT_REPORT"):
        with open(os.environ["EDGE_EIGENLORA_QUANT_REPORT"], "w") as fh:
            json.dump(rows, fh, indent=1)
    assert acc32 > 0.6
    assert abs(rows["basis=int8,base=none"]["accuracy"] - acc32) <= 0.01
    assert rows["basis=int8,base=none"]["sqnr_db"] > 40
    assert abs(rows["basis=int4,base=none"]["accuracy"] - acc32) <= 0.02
    assert abs(rows["basis=none,base=int8"]["accuracy"] - acc32) <= 0.05
    assert rows["basis=fp16,base=fp16"]["rel_error"] < 5e-3
    onnx.checker.check_model(str(fp32 / "model_shared.onnx"))
