"""benchmarks/lm_peers.py: its pure helpers (fast), and that the onnxruntime-genai peer, built from the local
SmolLM2 folder with its PEFT adapter turned into an .onnx_adapter, computes what transformers + PEFT compute
(slow: the builder takes minutes; skipped where `make peers` has not installed onnxruntime-genai)."""

import importlib.util
import json

import numpy as np
import pytest

from benchmarks import lm_peers


def _tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(lm_peers.PROMPT_TEXT.replace(".", " ").replace(",", " ").replace("?", " ").split()))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_prompt_is_exactly_n_tokens_repeating_the_passage_and_deterministic(tmp_path):
    path = _tokenizer_json(tmp_path)
    one = lm_peers.prompt_token_ids(path, 5)
    long = lm_peers.prompt_token_ids(path, 300)
    assert len(one) == 5 and len(long) == 300 and long[:5] == one
    assert lm_peers.prompt_token_ids(path, 300) == long
    assert len(set(long)) > 20  # real words, not padding


def _result(peer, variant, threads, decode, prefill=10.0, rnd=0, tokens=(1, 2)):
    return {
        "peer": peer,
        "precision": "fp32",
        "variant": variant,
        "threads": threads,
        "round": rnd,
        "prefill_ms": prefill,
        "decode_ms": decode,
        "load_ms": 100.0,
        "peak_rss_mib": 600.0,
        "import_rss_mib": 50.0,
        "end_rss_mib": 590.0,
        "tokens": list(tokens),
    }


def test_summarize_takes_medians_over_rounds_and_ratios_against_the_same_peer_and_threads():
    results = [
        _result("ortgenai", "base", 1, 10.0, rnd=0),
        _result("ortgenai", "base", 1, 12.0, rnd=1),
        _result("ortgenai", "base", 1, 11.0, rnd=2),
        _result("ortgenai", "lora", 1, 13.2, prefill=13.0, tokens=(1, 3)),
        _result("ortgenai", "base", 2, 6.0),
        _result("llamacpp", "lora", 1, 9.0),  # no llama.cpp base: no ratio
        {"peer": "llamacpp", "precision": "f32", "variant": "base", "threads": 1, "error": "boom"},
    ]
    rows = {(r["peer"], r["variant"], r["threads"]): r for r in lm_peers.summarize(results)}
    base = rows[("ortgenai", "base", 1)]
    assert base["rounds"] == 3 and base["decode_ms"] == 11.0 and base["decode_spread"] == pytest.approx(1.2)
    assert base["peak_above_import_mib"] == 550.0
    lora = rows[("ortgenai", "lora", 1)]
    assert lora["decode_vs_base"] == pytest.approx(1.2) and lora["prefill_vs_base"] == pytest.approx(1.3)
    assert lora["same_tokens_as_base"] is False
    assert rows[("ortgenai", "base", 2)]["decode_vs_base"] == 1.0
    assert "decode_vs_base" not in rows[("llamacpp", "lora", 1)]
    table = lm_peers.format_table(list(rows.values()))
    assert (
        table.count("\n") == 2 + len(rows)
        and "| ortgenai | fp32 | lora | 1 | 13.0 | 13.20 | 1.200 |" in table
    )


def test_report_quotes_the_command_the_table_token_agreement_and_errors():
    results = [_result("ortgenai", "base", 1, 10.0), _result("ortgenai", "lora", 1, 11.0, tokens=(1, 3))]
    results += [{**_result("llamacpp", "base", 1, 9.0), "precision": "f32", "loadavg_1min": 2.0}]
    run = {
        "command": "python -m benchmarks.lm_peers --rounds 1",
        "config": {"prompt_tokens": 128, "decode_tokens": 64, "repeats": 3, "rounds": 1},
        "summary": lm_peers.summarize(results),
        "artifacts": {
            "versions": {"onnxruntime-genai": "0.18.0", "torch": None},
            "bytes": {"peft_adapter": 2**20},
            "errors": {"ortgenai/int4": "RuntimeError: no"},
        },
    }
    report = lm_peers.report_markdown(run)
    assert (
        report.startswith("`python -m benchmarks.lm_peers --rounds 1`")
        and "onnxruntime-genai 0.18.0" in report
    )
    assert "torch" not in report.split("\n")[2]
    assert "ortgenai fp32 t1: LoRA gives different tokens as base" in report
    assert "- base, fp32: the greedy tokens of llamacpp and ortgenai, every thread count, agree." in report
    assert "- lora, fp32: the greedy tokens of ortgenai" in report and "peft_adapter 1.0 MiB" in report
    assert "- ortgenai/int4: not measured: RuntimeError: no" in report


def test_scenarios_give_each_peer_its_own_base_and_lora_files():
    artifacts = {
        "prompt": list(range(200)),
        "peers": {
            "ortgenai": {"fp32": {"base": "B", "lora": "L", "adapter": "L/a.onnx_adapter"}},
            "llamacpp": {"f32": {"model": "M.gguf", "lora": "A.gguf", "adapter": "A.gguf"}},
        },
    }
    specs = lm_peers.peer_scenarios(artifacts, threads=(1, 2), prompt_tokens=128, decode_tokens=8, repeats=2)
    assert len(specs) == 8
    by = {(s["peer"], s["variant"], s["threads"]): s for s in specs}
    assert by[("ortgenai", "base", 1)]["model"] == "B" and by[("ortgenai", "base", 1)]["adapter"] is None
    assert by[("ortgenai", "lora", 2)]["model"] == "L" and by[("ortgenai", "lora", 2)]["adapter"].endswith(
        "adapter"
    )
    assert by[("llamacpp", "base", 1)]["model"] == "M.gguf" and by[("llamacpp", "base", 1)]["adapter"] is None
    assert by[("llamacpp", "lora", 1)]["adapter"] == "A.gguf"
    assert all(len(s["prompt"]) == 128 and s["decode_tokens"] == 8 for s in specs)
    json.dumps(specs)  # plain data: it travels to the child process as JSON


def test_module_declares_its_public_functions():
    for name in lm_peers.__all__:
        assert hasattr(lm_peers, name), name


# ---------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime_genai") is None or not lm_peers.BUILDER_PYTHON.is_file(),
    reason="make peers not run",
)
def test_ortgenai_peer_with_its_adapter_generates_what_transformers_and_peft_generate():
    import onnxruntime_genai as og
    import torch
    from peft import PeftModel

    from edge_eigenlora.pretrained import SMOLLM2, load_causal_lm

    built = lm_peers.build_ortgenai()
    adapter_dir = lm_peers.make_peft_adapter()
    assert built["lora_tensors"] == 30 * 4 * 2  # A and B of q, k, v, o in every layer
    model_hf, tokenizer = load_causal_lm(SMOLLM2)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three colours of the rainbow."}], add_generation_prompt=True
    )
    ids = torch.tensor([prompt])

    def hf_greedy(model):
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
            logits = model(ids).logits[0, -1].numpy()
        return out[0, len(prompt) :].tolist(), logits

    base_tokens, base_logits = hf_greedy(model_hf)
    lora_tokens, lora_logits = hf_greedy(PeftModel.from_pretrained(model_hf, adapter_dir).eval())

    def og_greedy(folder, adapter=None):
        model = og.Model(str(folder))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + 8, do_sample=False)
        gen = og.Generator(model, params)
        if adapter:
            adapters = og.Adapters(model)
            adapters.load(str(adapter), "task")
            gen.set_active_adapter(adapters, "task")
        gen.append_tokens(np.asarray([prompt], dtype=np.int32))
        logits = np.asarray(gen.get_logits()).reshape(-1).copy()
        while not gen.is_done():
            gen.generate_next_token()
        return [int(t) for t in gen.get_sequence(0)[len(prompt) :]], logits

    og_base_tokens, og_base_logits = og_greedy(built["base"])
    og_lora_tokens, og_lora_logits = og_greedy(built["lora"], built["adapter"])
    og_inactive_tokens, og_inactive_logits = og_greedy(built["lora"])  # adapter not active: zero defaults

    assert og_lora_tokens == lora_tokens and og_base_tokens == base_tokens
    scale = np.abs(lora_logits).max()
    assert np.abs(og_lora_logits - lora_logits).max() < 1e-3 * scale
    assert np.abs(og_inactive_logits - base_logits).max() < 1e-3 * scale
    # The adapter really is applied: the peer's LoRA shift of the logits is PEFT's.
    delta_hf, delta_og = lora_logits - base_logits, og_lora_logits - og_base_logits
    assert np.abs(delta_hf).max() > 1e-2
    assert np.linalg.norm(delta_og - delta_hf) < 0.05 * np.linalg.norm(delta_hf)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or not (lm_peers.LLAMA_CPP_SRC / "conversion").is_dir(),
    reason="make peers not run",
)
def test_llamacpp_peer_with_its_gguf_lora_generates_what_transformers_and_peft_generate():
    import torch
    from llama_cpp import Llama, llama_get_logits_ith
    from peft import PeftModel

    from edge_eigenlora.pretrained import SMOLLM2, load_causal_lm

    built = lm_peers.build_gguf()
    model_hf, tokenizer = load_causal_lm(SMOLLM2)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three colours of the rainbow."}], add_generation_prompt=True
    )
    ids = torch.tensor([prompt])
    peft_model = PeftModel.from_pretrained(model_hf, lm_peers.make_peft_adapter()).eval()
    with torch.no_grad():
        out = peft_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
        hf_logits = peft_model(ids).logits[0, -1].numpy()
    hf_tokens = out[0, len(prompt) :].tolist()

    llm = Llama(
        model_path=str(built["model"]), lora_path=str(built["lora"]), n_ctx=256, n_threads=2, verbose=False
    )
    vocab = llm.n_vocab()
    llm.eval(prompt)
    logits = np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(vocab,)).copy()
    tokens = [int(np.argmax(logits))]
    while len(tokens) < 8:
        llm.eval([tokens[-1]])
        tokens.append(
            int(np.argmax(np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))))
        )
    assert tokens == hf_tokens
    assert np.abs(logits - hf_logits).max() < 1e-2 * np.abs(hf_logits).max()
