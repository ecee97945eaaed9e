"""ONNX export of a small Llama-architecture decoder (tiny, seeded) as the KV-cache step graph: logits parity
with torch for fp32, per-row, merged, quantized and .ort graphs, the efficient adapter form, the bundle's
decoder manifest, and generation (tests/test_generate.py covers the generate API on this fixture's kind).
"""

import copy
import json
from pathlib import Path

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
from tests.helpers import tiny_llama_bank_dirs, tiny_llama_model

RANK, K = 4, 6  # hidden 64, kv 32, heads of 16, 8 rotary frequencies: K=6 appears only as the basis width
TEXTS = ["A fortune a day keeps", "Keep the faith", "Nothing"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory, minilm):
    _, tokenizer = minilm  # a real WordPiece vocabulary
    model = tiny_llama_model(tokenizer.vocab_size)
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
            rank=RANK,
            variants=("shared", "per_row", "merged", "factored"),
            basis_quant="none",
            merged_task="lm1",
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


def _runtime(bundle_dir):
    from edge_eigenlora.runtime.generate import LMRuntime

    return LMRuntime(bundle_dir)


def _full(bundle_dir, ids, graph_file=None, **task):
    """Full-sequence logits through a bundle's step graph (empty cache); graph_file picks e.g. the .ort."""
    rt = _runtime(bundle_dir)
    if graph_file is not None:
        from edge_eigenlora.runtime.session import RuntimeOptions

        rt = type(rt)(bundle_dir, options=RuntimeOptions(prefer_ort=True))
    return rt.forward(ids["input_ids"], ids["attention_mask"], **task)


def test_decoder_manifest(llama):
    manifest = bundle.verify_bundle(llama["fp32"])
    assert manifest.kind == "causal_lm" and json.loads(manifest.path.read_text())["head"] is None
    graph = manifest.graph("shared")
    cache = bundle.cache_input_names(2)
    assert graph.input_names == ("input_ids", "attention_mask", "position_ids", *cache, "coefficients")
    assert graph.inputs[-1].shape == (4 * 2 * K * RANK,)
    assert graph.inputs[1].shape == ("batch", "total_seq")
    assert graph.inputs[3].shape == ("batch", 2, "past_seq", 16)
    assert graph.output_names == ("logits", *bundle.cache_output_names(2))
    assert graph.outputs[0].shape == ("batch", "seq", 30522)
    assert graph.outputs[1].shape == ("batch", 2, "total_seq", 16)
    d = manifest.decoder
    assert (d.num_layers, d.num_heads, d.num_kv_heads, d.head_dim, d.max_positions) == (2, 4, 2, 16, 128)
    assert manifest.tokenizer.padding_side == "left" and manifest.tokenizer.truncation is False


def test_fp32_decoder_logits_equal_torch(llama):
    for name in ("lm0", "lm1"):
        got = _full(llama["fp32"], llama["ids"], task=name)
        assert got.shape == llama["torch"][name].shape
        real = llama["ids"]["attention_mask"].astype(bool)  # right-padded rows: compare the real tokens
        assert np.max(np.abs(got - llama["torch"][name])[real]) < 1e-4


def test_per_row_and_merged_decoder(llama):
    real = llama["ids"]["attention_mask"].astype(bool)
    got = _full(llama["fp32"], llama["ids"], tasks=["lm0", "lm1", "lm0"])
    for i, name in enumerate(("lm0", "lm1", "lm0")):
        assert np.max(np.abs(got[i] - llama["torch"][name][i])[real[i]]) < 1e-4
    merged = _full(llama["fp32"], llama["ids"])  # no task: the merged graph (lm1 folded)
    assert np.max(np.abs(merged - llama["torch"]["lm1"])[real]) < 1e-4


def test_factored_graph_takes_factors_formed_once_and_equals_the_shared_graph(llama):
    manifest = bundle.verify_bundle(llama["fp32"])
    factored, factors = manifest.graph("factored"), manifest.graph("factors")
    names = bundle.factor_names(len(manifest.layout.modules))
    assert factored.input_names[-len(names) :] == names and "coefficients" not in factored.input_names
    assert factors.input_names == ("coefficients",) and factors.output_names == names
    assert manifest.layout.modules[-1] == "model.layers.1.self_attn.v_proj"  # sorted: its factors come last
    assert factored.inputs[-2].shape == (64, RANK) and factored.inputs[-1].shape == (RANK, 32)  # kv width 32
    graph = onnx.load(str(llama["fp32"] / "model_factored.onnx"), load_external_data=False)
    assert not [i.name for i in graph.graph.initializer if i.name.endswith(bundle.BASIS_SUFFIXES)]  # no basis
    rows = per_token_matmul_widths(graph)
    assert [r for r in rows if any(s and K in s for s in r[2])] == []
    rt, control = _runtime(llama["fp32"]), type(_runtime(llama["fp32"]))(llama["fp32"], factored=False)
    assert rt.uses_factored and not control.uses_factored
    real = llama["ids"]["attention_mask"].astype(bool)
    for name in ("lm0", "lm1", "lm0"):  # task switches on one session
        got = rt.forward(llama["ids"]["input_ids"], llama["ids"]["attention_mask"], task=name)
        assert np.max(np.abs(got - llama["torch"][name])[real]) < 1e-4
        shared = control.forward(llama["ids"]["input_ids"], llama["ids"]["attention_mask"], task=name)
        assert np.max(np.abs(got - shared)) < 1e-5
    stats: dict = {}
    a = rt.generate(TEXTS, task="lm1", max_new_tokens=6, chat=False, eos=(), stats=stats)
    b = control.generate(TEXTS, task="lm1", max_new_tokens=6, chat=False, eos=())
    assert stats["variant"] == "factored" and [g.token_ids for g in a] == [g.token_ids for g in b]


def test_factored_bundle_quantizes_the_basis_in_the_factors_graph(llama, tmp_path):
    root = derive_bundle(
        llama["fp32"],
        tmp_path / "int8f",
        config=ExportConfig(
            rank=RANK, variants=("factored",), basis_quant="int8", base_quant="int8", ort_format=True
        ),
    )
    manifest = bundle.verify_bundle(root)
    assert manifest.variants == ("factored", "factors")
    assert all(g.ort_file for g in manifest.graphs)  # both graphs also as ORT Mobile files
    assert manifest.graph("factors").quantization.basis == "int8"
    assert manifest.graph("factored").quantization.base == "int8"
    assert "DequantizeLinear" in op_counts(onnx.load(str(root / "model_factors.onnx")))
    got = _full(root, llama["ids"], task="lm0")
    real = llama["ids"]["attention_mask"].astype(bool)
    assert quantize.relative_error(llama["torch"]["lm0"][real], got[real]) < 0.02
    assert np.max(np.abs(_full(root, llama["ids"], graph_file="ort", task="lm0") - got)) < 1e-4


def test_a_factored_graph_without_its_factors_graph_is_refused(llama, tmp_path):
    import shutil

    root = shutil.copytree(llama["fp32"], tmp_path / "broken")
    data = json.loads((root / "manifest.json").read_text())
    data["graphs"] = [g for g in data["graphs"] if g["variant"] != "factors"]
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match="'factored' graph without the 'factors' graph"):
        bundle.read_manifest(root)


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
    counts = op_counts(onnx.load(str(llama["mobile"] / graph.file)))
    assert counts["com.microsoft.MatMulNBits"] == 15 + 8  # the untied head too
    assert counts["com.microsoft.GatherBlockQuantized"] == 1  # the 4-bit token embedding
    onnx_out = _full(llama["mobile"], llama["ids"], task="lm0")
    ort_out = _full(llama["mobile"], llama["ids"], graph.ort_file, task="lm0")
    assert np.max(np.abs(ort_out - onnx_out)) < 1e-4
    real = llama["ids"]["attention_mask"].astype(bool)
    rel = quantize.relative_error(llama["torch"]["lm0"][real], onnx_out[real])
    assert 0 < rel < 0.3, rel  # 4-bit everywhere on a random tiny model: a ceiling, not equality


def test_fp16_graph_for_gpu_providers(llama, tmp_path):
    root = tmp_path / "fp16"
    derive_bundle(llama["fp32"], root, config=ExportConfig(rank=RANK, precision="fp16", basis_quant="none"))
    model = onnx.load(str(root / "model_shared.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    got = _full(root, llama["ids"], task="lm0")  # ORT CPU runs the fp16 graph
    real = llama["ids"]["attention_mask"].astype(bool)
    assert quantize.relative_error(llama["torch"]["lm0"][real], got[real]) < 5e-3


# -- generation on the device (LMRuntime) against transformers' generate ---------------------------------

PROMPTS = ["a fortune a day keeps the", "nothing", "keep the faith and", "the film was", "good day"]


def _attached(llama, name):
    from edge_eigenlora.model import apply_task

    model = attach_basis(copy.deepcopy(llama["model"]), llama["basis"], rank=RANK)
    apply_task(model, bundle.load_bundle_task(bundle.read_manifest(llama["fp32"]), name))
    return model.eval()


def _hf_generate(model, tokenizer, prompt, n):
    enc = tokenizer([prompt], return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.sequences[0, enc.input_ids.shape[1] :].tolist(), torch.stack(out.logits)[:, 0].numpy()


def test_greedy_generation_is_token_identical_to_transformers_with_logits_at_every_step(llama, minilm):
    _, tokenizer = minilm
    rt = _runtime(llama["fp32"])
    model = _attached(llama, "lm0")
    for prompt in PROMPTS:
        stats = {"record_logits": True}
        (gen,) = rt.generate(prompt, task="lm0", max_new_tokens=48, eos=(), stats=stats)
        ref_ids, ref_logits = _hf_generate(model, tokenizer, prompt, 48)
        assert gen.token_ids == ref_ids
        mine = np.concatenate(stats["step_logits"])
        rel = np.abs(mine - ref_logits).max(-1) / np.abs(ref_logits).max(-1)
        assert rel.max() < 1e-4, rel.max()


def test_prefill_and_decode_steps_equal_one_full_pass(llama):
    rt = _runtime(llama["fp32"])
    stats = {"record_logits": True}
    (gen,) = rt.generate(PROMPTS[0], task="lm1", max_new_tokens=12, eos=(), stats=stats)
    prompt_ids = rt.encode_prompt(PROMPTS[0])
    full = rt.forward(np.array([prompt_ids + gen.token_ids[:-1]]), task="lm1")[0]
    steps = np.concatenate(stats["step_logits"])  # logits that chose token t, for t = 0..11
    assert np.max(np.abs(full[len(prompt_ids) - 1 :] - steps)) < 1e-4


def test_batched_left_padded_and_per_row_generation_equal_one_prompt_at_a_time(llama):
    rt = _runtime(llama["fp32"])
    alone = {
        (p, t): rt.generate(p, task=t, max_new_tokens=10, eos=())[0].token_ids
        for p in PROMPTS[:3]
        for t in ("lm0", "lm1")
    }
    batched = rt.generate(PROMPTS[:3], task="lm0", max_new_tokens=10, eos=())
    assert [g.token_ids for g in batched] == [alone[(p, "lm0")] for p in PROMPTS[:3]]
    tasks = ["lm1", "lm0", "lm1"]
    rows = rt.generate(PROMPTS[:3], tasks=tasks, max_new_tokens=10, eos=())
    assert [g.token_ids for g in rows] == [alone[(p, t)] for p, t in zip(PROMPTS[:3], tasks, strict=True)]
    assert [g.task for g in rows] == tasks
    assert set(rt._sessions) == {"factored", "factors", "per_row"}  # a task switch reused the sessions


def test_sampling_is_seeded_and_top_k_1_is_greedy(llama):
    rt = _runtime(llama["fp32"])
    greedy = rt.generate(PROMPTS[0], task="lm0", max_new_tokens=8, eos=())[0].token_ids
    top1 = rt.generate(PROMPTS[0], task="lm0", max_new_tokens=8, eos=(), do_sample=True, top_k=1, seed=3)
    assert top1[0].token_ids == greedy
    a = rt.generate(PROMPTS[0], task="lm0", max_new_tokens=8, eos=(), do_sample=True, temperature=2.0, seed=7)
    b = rt.generate(PROMPTS[0], task="lm0", max_new_tokens=8, eos=(), do_sample=True, temperature=2.0, seed=7)
    c = rt.generate(PROMPTS[0], task="lm0", max_new_tokens=8, eos=(), do_sample=True, temperature=2.0, seed=8)
    assert a[0].token_ids == b[0].token_ids != c[0].token_ids


def test_eos_and_stop_strings_end_a_row(llama):
    rt = _runtime(llama["fp32"])
    (free,) = rt.generate(PROMPTS[0], task="lm0", max_new_tokens=6, eos=())
    k = next(i for i in range(1, 6) if free.token_ids[i] not in free.token_ids[:i])  # first new token
    (eos,) = rt.generate(PROMPTS[0], task="lm0", max_new_tokens=6, eos=(free.token_ids[k],))
    assert eos.finish_reason == "eos" and eos.token_ids == free.token_ids[: k + 1]
    word = free.text.split()[1]
    (stop,) = rt.generate(PROMPTS[0], task="lm0", max_new_tokens=6, eos=(), stop=[word])
    assert stop.finish_reason == "stop" and word not in stop.text and free.text.startswith(stop.text)
    assert free.finish_reason == "length"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": ["lm0"]}, "1 tasks for 2 prompts"),
        ({"task": "lm0", "do_sample": True, "temperature": 0.0}, "temperature must be > 0 when sampling"),
        ({"task": "lm0", "stop": ["x", ""]}, "stop string 1 is empty"),
        ({"task": "lm0", "max_new_tokens": 125}, "exceeds the model's context of 128 positions"),
        ({"task": "nope"}, "task 'nope' is not in bundle"),
    ],
)
def test_generate_refuses_bad_input_with_the_argument_named(llama, kwargs, message):
    from edge_eigenlora.errors import EdgeEigenLoraError

    with pytest.raises(EdgeEigenLoraError, match=message):
        _runtime(llama["fp32"]).generate(["the film was", "nothing"], **kwargs)


def test_a_classifier_bundle_and_an_lm_bundle_each_refuse_the_other_runtime(llama, tmp_path):
    from edge_eigenlora.errors import EdgeEigenLoraError
    from edge_eigenlora.runtime.generate import LMRuntime
    from edge_eigenlora.runtime.session import DeviceRuntime

    with pytest.raises(
        EdgeEigenLoraError, match="kind is 'causal_lm', but DeviceRuntime runs classification"
    ):
        DeviceRuntime(llama["fp32"])
    classifier = Path(__file__).parent / "fixtures" / "format1_bundle"
    with pytest.raises(EdgeEigenLoraError, match="kind is 'classification', but LMRuntime runs causal_lm"):
        LMRuntime(classifier)


def _tied_lm(vocab=1000, hidden=64):
    """Gather(table, ids) -> MatMul(., table^T): a tied embedding and LM head, as SmolLM2 exports them."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((vocab, hidden)).astype(np.float32) * 0.05
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["h"], axis=0),
        helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "table_t"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        [numpy_helper.from_array(table, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), table


def test_a_tied_table_is_stored_once_in_an_int8_decoder():
    import onnxruntime as ort

    model, table = _tied_lm()
    shared = quantize.quantize_base(copy.deepcopy(model), "int8", decoder=True)
    counts = op_counts(shared)
    assert counts["com.microsoft.GatherBlockQuantized"] == 1 and "Gather" not in counts
    assert [
        i.name for i in shared.graph.initializer if i.dims and i.dims[0] == 1000 and i.data_type == 2
    ] == [
        shared.graph.node[-1].input[1]
    ]  # one uint8 vocabulary table: the head's blocks, which the lookup reads too
    ids = np.array([[0, 5, 999], [17, 3, 3]], np.int64)

    def run(m):
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(["logits"], {"input_ids": ids})[0]

    reference = table[ids] @ table.T
    got = run(shared)
    assert quantize.relative_error(reference, got) < 0.02  # 8-bit blocks on both sides of the tie
    # the same head with its own per-row int8 table: 8 bits either way, so about as close (measured 0.0096 shared
    # vs 0.0083 separate on this table)
    separate = quantize.quantize_embeddings(quantize.untie_transposed_weights(copy.deepcopy(model)), "int8")
    separate = quantize.matmul_nbits(separate, [], 128, bits=8, accuracy_level=4)
    assert quantize.relative_error(reference, got) < quantize.relative_error(reference, run(separate)) * 1.5
    untied = copy.deepcopy(model)  # a head that is not the table is left alone
    untied.graph.initializer.append(onnx.numpy_helper.from_array(table.T * 2 + 0.1, "other"))
    untied.graph.node[2].input[1] = "other"
    del untied.graph.node[1]
    assert "com.microsoft.GatherBlockQuantized" not in op_counts(
        quantize.quantize_base(untied, "int8", decoder=True)
    )


def test_int8_phone_bundle_quantizes_the_embedding_and_keeps_generation_close(llama, tmp_path):
    root = tmp_path / "int8"
    derive_bundle(llama["fp32"], root, config=ExportConfig(rank=RANK, basis_quant="int8", base_quant="int8"))
    counts = op_counts(onnx.load(str(root / "model_shared.onnx")))
    assert counts["com.microsoft.MatMulNBits"] == 15  # weight-only 8-bit: 2 x 7 Linears + the untied head
    assert "MatMulInteger" not in counts  # no dynamic activation quantization in a decoder
    assert "com.microsoft.GatherBlockQuantized" not in counts  # an untied head: the table has its own int8
    got = _full(root, llama["ids"], task="lm0")
    real = llama["ids"]["attention_mask"].astype(bool)
    assert quantize.relative_error(llama["torch"]["lm0"][real], got[real]) < 0.02
    size = sum(p.stat().st_size for p in root.iterdir() if p.is_file())
    fp32 = sum(p.stat().st_size for p in llama["fp32"].iterdir() if p.is_file())
    assert size < 0.5 * fp32  # the fp32 bundle holds three graphs' weights once; this one, one graph
