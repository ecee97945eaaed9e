"""ONNX export of a small Llama-architecture decoder (tiny, seeded; no KV cache): logits parity with torch for
fp32, per-row, merged, quantized and .ort graphs, the efficient adapter form, and the bundle's decoder manifest.
"""

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from edge_eigenlora import bundle, quantize
from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
from edge_eigenlora.export import ExportConfig, derive_bundle, export_bundle
from edge_eigenlora.model import attach_basis, eigenlora_layers, task_from_model
from edge_eigenlora.onnx_tools import op_counts, per_token_matmul_widths
from edge_eigenlora.task import save_task
from tests.helpers import tiny_llama_bank_dirs

RANK, K = 4, 6  # hidden 64, kv 32, heads of 16, 8 rotary frequencies: K=6 appears only as the basis width
TEXTS = ["A fortune a day keeps", "Keep the faith", "Nothing"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory, minilm):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = minilm  # a real WordPiece vocabulary
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    root = tmp_path_factory.mktemp("llama_export")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    dirs = tiny_llama_bank_dirs(root)
    basis = fit_basis(load_bank(dirs), SubspaceConfig(k=K), progress=False)
    basis_path = save_basis(basis, root / "basis.safetensors")
    tasks, logits = {}, {}
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    for i in range(2):
        attached = attach_basis(copy.deepcopy(model), basis, rank=RANK)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for layer in eigenlora_layers(attached).values():
                layer.eigenlora_alpha_A.copy_(torch.randn(layer.eigenlora_alpha_A.shape, generator=g))
                layer.eigenlora_alpha_B.copy_(torch.randn(layer.eigenlora_alpha_B.shape, generator=g) * 0.3)
            logits[f"lm{i}"] = attached(**batch).logits.numpy()
        tasks[f"lm{i}"] = save_task(task_from_model(attached, f"lm{i}"), root / f"lm{i}.safetensors")
    fp32 = export_bundle(
        root / "model",
        basis_path,
        root / "fp32",
        tasks=list(tasks.values()),
        config=ExportConfig(
            rank=RANK, variants=("shared", "per_row", "merged"), basis_quant="none", merged_task="lm1"
        ),
    )
    mobile = derive_bundle(  # no second torch export: quantize the fp32 bundle's graph
        fp32,
        root / "mobile",
        config=ExportConfig(rank=RANK, basis_quant="int4", base_quant="int4", ort_format=True),
    )
    enc = tokenizer(TEXTS, padding=True, return_tensors="np")
    ids = {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
    }
    return {
        "fp32": fp32,
        "mobile": mobile,
        "ids": ids,
        "torch": logits,
        "model": model,
        "basis": basis,
        "tasks": tasks,
    }


def _run(path, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]


def _feeds(bundle_dir, name):
    manifest = bundle.verify_bundle(bundle_dir)
    return bundle.task_feeds(bundle.load_bundle_task(manifest, name), manifest)


def test_decoder_manifest(llama):
    manifest = bundle.verify_bundle(llama["fp32"])
    assert manifest.kind == "causal_lm" and json.loads(manifest.path.read_text())["head"] is None
    graph = manifest.graph("shared")
    assert graph.input_names == ("input_ids", "attention_mask", "coefficients")
    assert graph.inputs[2].shape == (4 * 2 * K * RANK,)
    assert graph.outputs[0].shape == ("batch", "seq", 30522)


def test_fp32_decoder_logits_equal_torch(llama):
    for name in ("lm0", "lm1"):
        got = _run(llama["fp32"] / "model_shared.onnx", {**llama["ids"], **_feeds(llama["fp32"], name)})
        assert got.shape == llama["torch"][name].shape
        assert np.max(np.abs(got - llama["torch"][name])) < 1e-4


def test_per_row_and_merged_decoder(llama):
    f0, f1 = _feeds(llama["fp32"], "lm0"), _feeds(llama["fp32"], "lm1")
    stacked = {"coefficients": np.stack([f0["coefficients"], f1["coefficients"], f0["coefficients"]])}
    got = _run(llama["fp32"] / "model_per_row.onnx", {**llama["ids"], **stacked})
    for i, name in enumerate(("lm0", "lm1", "lm0")):
        assert np.max(np.abs(got[i] - llama["torch"][name][i])) < 1e-4
    merged = _run(llama["fp32"] / "model_merged.onnx", llama["ids"])
    assert np.max(np.abs(merged - llama["torch"]["lm1"])) < 1e-4


def test_decoder_graph_has_no_per_token_k_matmul(llama):
    rows = per_token_matmul_widths(onnx.load(str(llama["fp32"] / "model_shared.onnx")))
    assert [r for r in rows if any(s and K in s for s in r[2])] == []
    assert len([r for r in rows if any(s and RANK in s for s in r[2])]) == 2 * 4


def test_mobile_4bit_bundle_onnx_and_ort(llama):
    manifest = bundle.verify_bundle(llama["mobile"])
    graph = manifest.graph("shared")
    assert graph.quantization.basis == "int4" and graph.quantization.base == "int4"
    assert "MatMulNBits" in (llama["mobile"] / graph.required_operators).read_text()
    # 2 layers x 7 Linears + lm_head = 15 base, 2 x 4 basis factor matmuls
    assert op_counts(onnx.load(str(llama["mobile"] / graph.file)))["com.microsoft.MatMulNBits"] == 15 + 8
    feeds = {**llama["ids"], **_feeds(llama["mobile"], "lm0")}
    onnx_out = _run(llama["mobile"] / graph.file, feeds)
    ort_out = _run(llama["mobile"] / graph.ort_file, feeds)
    assert np.max(np.abs(ort_out - onnx_out)) < 1e-4
    rel = quantize.relative_error(llama["torch"]["lm0"], onnx_out)
    assert 0 < rel < 0.3, (
        rel
    )  # 4-bit everywhere on a random tiny model (measured 0.21): a floor, not equality


def test_fp16_graph_for_gpu_providers(llama, tmp_path):
    root = tmp_path / "fp16"
    derive_bundle(llama["fp32"], root, config=ExportConfig(rank=RANK, precision="fp16", basis_quant="none"))
    model = onnx.load(str(root / "model_shared.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    got = _run(
        root / "model_shared.onnx", {**llama["ids"], **_feeds(root, "lm0")}
    )  # ORT CPU runs the fp16 graph
    assert quantize.relative_error(llama["torch"]["lm0"], got) < 5e-3
