"""ONNX export of the real all-MiniLM-L6-v2 with a basis attached: parity with torch, quantized error floors,
.ort parity, merged export, and the efficient adapter form checked in the graph's op list.

Tolerances: fp32 graphs match torch to 1e-4 absolute on logits of size ~1 (ORT's fused kernels reorder sums);
quantized graphs are accepted by a relative-error ceiling set ~1.5x above the measured value (docs/export.md).
"""

import copy

import numpy as np
import onnx
import pytest
import torch

from edge_eigenlora import bundle, quantize
from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
from edge_eigenlora.export import ExportConfig, export_bundle
from edge_eigenlora.model import TextClassifier, apply_task, attach_basis, eigenlora_layers, task_from_model
from edge_eigenlora.onnx_tools import basis_nodes, convert_to_ort, op_counts, per_token_matmul_widths
from edge_eigenlora.task import save_task

pytestmark = pytest.mark.real_model
RANK, K = 8, 16  # K=16 is no dimension of MiniLM (384, 1536, 12 heads of 32), so a K-sized matmul is visible
TEXTS = [
    "The film was a delight from start to finish.",
    "Ich habe heute keine Zeit.",
    "short",
    "Two more words here.",
]


def _session(model_or_path):
    import onnxruntime as ort

    src = (
        model_or_path.SerializeToString()
        if isinstance(model_or_path, onnx.ModelProto)
        else str(model_or_path)
    )
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, minilm, minilm_bank_dirs):
    encoder, tokenizer = minilm
    root = tmp_path_factory.mktemp("minilm_export")
    basis = fit_basis(load_bank(minilm_bank_dirs), SubspaceConfig(k=K), progress=False)
    basis_path = save_basis(basis, root / "basis.safetensors")
    paths, torch_logits = {}, {}
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    for i, labels in enumerate((4, 2)):
        clf = TextClassifier(attach_basis(copy.deepcopy(encoder), basis, rank=RANK), num_labels=labels)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for layer in eigenlora_layers(clf).values():
                layer.eigenlora_alpha_A.copy_(torch.randn(layer.eigenlora_alpha_A.shape, generator=g))
                layer.eigenlora_alpha_B.copy_(torch.randn(layer.eigenlora_alpha_B.shape, generator=g) * 0.05)
            clf.head.weight.copy_(torch.randn(clf.head.weight.shape, generator=g))
            torch_logits[f"t{i}"] = clf(batch["input_ids"], batch["attention_mask"]).numpy()
        paths[f"t{i}"] = save_task(task_from_model(clf, f"t{i}"), root / f"t{i}.safetensors")
    config = ExportConfig(
        rank=RANK, variants=("shared", "per_row", "merged", "factored"), basis_quant="none", merged_task="t0"
    )
    out = export_bundle(
        "sentence-transformers/all-MiniLM-L6-v2",
        basis_path,
        root / "bundle",
        config=config,
        tasks=list(paths.values()),
        model=encoder,
        tokenizer=tokenizer,
    )
    manifest = bundle.verify_bundle(out)
    enc = tokenizer(TEXTS, padding=True, return_tensors="np")
    ids = {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
    }
    feeds = {n: bundle.task_feeds(bundle.load_bundle_task(manifest, n), manifest) for n in paths}
    return {
        "dir": out,
        "manifest": manifest,
        "ids": ids,
        "feeds": feeds,
        "torch": torch_logits,
        "basis": basis,
        "encoder": encoder,
        "tokenizer": tokenizer,
        "root": root,
    }


def test_fp32_graph_equals_torch_and_swaps_tasks_in_one_session(exported):
    sess = _session(exported["dir"] / "model_shared.onnx")
    for name in ("t0", "t1", "t0"):
        got = sess.run(["logits"], {**exported["ids"], **exported["feeds"][name]})[0]
        expected = exported["torch"][name]
        assert got.shape == expected.shape
        assert np.max(np.abs(got - expected)) < 1e-4, name
        assert quantize.relative_error(expected, got) < 1e-5


def test_dynamic_batch_and_sequence(exported):
    sess = _session(exported["dir"] / "model_shared.onnx")
    tok = exported["tokenizer"]
    for texts in (["one"], TEXTS * 3):
        enc = tok(texts, padding="max_length", max_length=37 if len(texts) == 1 else 61, return_tensors="np")
        ids = {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
        }
        got = sess.run(["logits"], {**ids, **exported["feeds"]["t1"]})[0]
        clf = TextClassifier(
            attach_basis(copy.deepcopy(exported["encoder"]), exported["basis"], rank=RANK), 2
        )
        apply_task(clf, bundle.load_bundle_task(exported["manifest"], "t1"))
        with torch.no_grad():
            expected = clf(
                torch.from_numpy(ids["input_ids"]), torch.from_numpy(ids["attention_mask"])
            ).numpy()
        assert got.shape == (len(texts), 2) and np.max(np.abs(got - expected)) < 1e-4


def test_per_row_equals_separate_runs(exported):
    shared, per_row = (
        _session(exported["dir"] / "model_shared.onnx"),
        _session(exported["dir"] / "model_per_row.onnx"),
    )
    f0, f1 = exported["feeds"]["t0"], exported["feeds"]["t1"]
    f1 = {
        **f1,
        "head_weight": np.concatenate([f1["head_weight"]] * 2),
        "head_bias": np.concatenate([f1["head_bias"]] * 2),
    }
    rows = [f0, f1, f1, f0]
    stacked = {k: np.stack([r[k] for r in rows]) for k in f0}
    got = per_row.run(["logits"], {**exported["ids"], **stacked})[0]
    for i, r in enumerate(rows):
        alone = shared.run(["logits"], {**exported["ids"], **r})[0][i]
        assert np.max(np.abs(got[i] - alone)) < 1e-5


def test_merged_graph_equals_torch_and_has_no_adapter_path(exported):
    path = exported["dir"] / "model_merged.onnx"
    got = _session(path).run(["logits"], exported["ids"])[0]
    assert np.max(np.abs(got - exported["torch"]["t0"])) < 1e-4
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert not [i for i in model.graph.initializer if i.name.endswith(("U_A_t", "U_B_t"))]
    counts = op_counts(model)
    adapter_counts = op_counts(onnx.load(str(exported["dir"] / "model_shared.onnx")))
    # base: 6 layers x 6 Linears + 12 attention matmuls = 48 (+1 head Gemm/MatMul); adapters add 4 per module
    assert counts.get("MatMul", 0) + counts.get("Gemm", 0) == 49
    assert adapter_counts["MatMul"] + adapter_counts.get("Gemm", 0) == 48 + 1 + 4 * 12


def test_efficient_adapter_form_is_exported(exported):
    model = onnx.load(str(exported["dir"] / "model_shared.onnx"))
    rows = per_token_matmul_widths(model)
    k_sized = [r for r in rows if any(s and K in s for s in r[2])]
    assert k_sized == []  # no per-token matmul touches a width-K tensor
    r_sized = [r for r in rows if any(s and RANK in s for s in r[2])]
    assert len(r_sized) == 2 * 12  # x @ A^T (d_in x r) and h @ B^T (r x d_out), once per adapted module
    assert len(basis_nodes(model)) == 2 * 12  # factor-forming matmuls: once per call, not per token


def test_factored_graph_forms_no_factor_per_call_and_equals_torch(exported, tmp_path):
    from edge_eigenlora.export import derive_bundle
    from edge_eigenlora.runtime import DeviceRuntime

    model = onnx.load(str(exported["dir"] / "model_factored.onnx"))
    assert basis_nodes(model) == []  # the factors arrive as inputs: nothing forms them per call
    counts = op_counts(model)
    assert (
        counts["MatMul"] + counts.get("Gemm", 0) == 48 + 1 + 2 * 12
    )  # base + head + x A^T, h B^T per module
    rt, control = DeviceRuntime(exported["dir"]), DeviceRuntime(exported["dir"], factored=False)
    ids, mask = exported["ids"]["input_ids"], exported["ids"]["attention_mask"]
    for name in ("t0", "t1", "t0"):  # switches: each task's factors formed once, then reused
        got = rt.run(input_ids=ids, attention_mask=mask, task=name)
        assert np.max(np.abs(got - exported["torch"][name])) < 1e-4, name
        assert np.max(np.abs(got - control.run(input_ids=ids, attention_mask=mask, task=name))) < 1e-5
    assert set(rt._sessions) == {"factored", "factors"} and len(rt._factors) == 2
    int8 = derive_bundle(
        exported["dir"],
        tmp_path / "int8",
        config=ExportConfig(
            rank=RANK, variants=("shared", "factored"), basis_quant="int8", base_quant="int8"
        ),
    )
    fast, slow = DeviceRuntime(int8), DeviceRuntime(int8, factored=False)
    assert op_counts(onnx.load(str(int8 / "model_factored.onnx")))["MatMulInteger"] == 36
    got = fast.run(input_ids=ids, attention_mask=mask, task="t0")
    assert np.max(np.abs(got - slow.run(input_ids=ids, attention_mask=mask, task="t0"))) < 1e-4


@pytest.fixture(scope="module")
def quantized(exported):
    """The shared graph with each quantization; errors against the fp32 graph's logits."""
    ref = _session(exported["dir"] / "model_shared.onnx").run(
        ["logits"], {**exported["ids"], **exported["feeds"]["t0"]}
    )[0]
    out = {}
    for basis_q, base_q in (
        ("int8", "none"),
        ("int4", "none"),
        ("none", "int8"),
        ("none", "int4"),
        ("int4", "int4"),
    ):
        model = onnx.load(str(exported["dir"] / "model_shared.onnx"))
        model = quantize.quantize_base(quantize.quantize_basis(model, basis_q), base_q)
        got = _session(model).run(["logits"], {**exported["ids"], **exported["feeds"]["t0"]})[0]
        out[(basis_q, base_q)] = {"model": model, "rel": quantize.relative_error(ref, got), "logits": got}
    return out


@pytest.mark.parametrize(
    ("mode", "ceiling", "op", "n_ops"),
    [
        (("int8", "none"), 2e-3, "DequantizeLinear", 24),
        (("int4", "none"), 2e-2, "com.microsoft.MatMulNBits", 24),
        (("none", "int8"), 0.25, "MatMulInteger", 36),
        (("none", "int4"), 0.35, "com.microsoft.MatMulNBits", 36),
        (("int4", "int4"), 0.35, "com.microsoft.MatMulNBits", 60),
    ],
)
def test_quantized_error_floor(quantized, mode, ceiling, op, n_ops):
    q = quantized[mode]
    assert 0 < q["rel"] < ceiling, q["rel"]
    assert op_counts(q["model"]).get(op) == n_ops


def test_basis_sqnr_floor(exported):
    assert quantize.basis_sqnr(exported["basis"], "int8")["min_db"] > 38.0
    assert quantize.basis_sqnr(exported["basis"], "int4")["min_db"] > 15.0


def test_ort_files_give_the_onnx_outputs(quantized, tmp_path, exported):
    for mode in (("int8", "none"), ("int4", "int4")):
        ort_bytes, config = convert_to_ort(quantized[mode]["model"], tmp_path, f"model_{mode[0]}_{mode[1]}")
        ort_file = tmp_path / f"model_{mode[0]}_{mode[1]}.ort"
        ort_file.write_bytes(ort_bytes)
        got = _session(ort_file).run(["logits"], {**exported["ids"], **exported["feeds"]["t0"]})[0]
        assert np.max(np.abs(got - quantized[mode]["logits"])) < 1e-4
        ops = config.decode()
        assert ("MatMulNBits" in ops) == (mode[1] == "int4") and ("DequantizeLinear" in ops) == (
            mode[0] == "int8"
        )
        assert "/" not in ops  # no paths in the shipped config
