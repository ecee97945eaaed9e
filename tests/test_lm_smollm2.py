"""The real SmolLM2-135M-Instruct as a KV-cache bundle: greedy generation on the device is token-identical to
transformers' `generate` on the workstation model with a trained task attached, with logits within 1e-4
relative at every step (5 prompts x 48 tokens). Slow (one SmolLM2 graph export, minutes): `.ci/run` runs it.
"""

import copy

import numpy as np
import pytest
import torch

from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
from edge_eigenlora.export import ExportConfig, export_bundle
from edge_eigenlora.lm_data import definition_examples
from edge_eigenlora.model import attach_basis, task_from_model
from edge_eigenlora.task import save_task
from edge_eigenlora.train import TrainConfig, train_causal_lm
from tests.helpers import write_peft_adapter

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

PROMPTS = [
    'Define the verb "walk":',
    "The capital of France is",
    "Write a short poem about the sea.",
    "List three colours:",
    "Once upon a time",
]
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    from edge_eigenlora.pretrained import SMOLLM2, load_causal_lm

    model, tokenizer = load_causal_lm()
    root = tmp_path_factory.mktemp("smol_kv")
    rng = np.random.default_rng(0)
    shapes = {n: (m.out_features, m.in_features) for n, m in model.named_modules() if n.endswith(MODULES)}
    dirs = [
        write_peft_adapter(
            root / f"a{i}",
            {
                n: (rng.standard_normal((4, i_)) * 0.02, rng.standard_normal((o, 4)) * 0.02)
                for n, (o, i_) in shapes.items()
            },
            r=4,
            alpha=8,
            base_model=SMOLLM2,
        )
        for i in range(3)
    ]
    basis = fit_basis(load_bank(dirs), SubspaceConfig(k=8), progress=False)
    basis_path = save_basis(basis, root / "basis.safetensors")
    attached = attach_basis(copy.deepcopy(model), basis, rank=4)
    texts = [p + c for p, c in definition_examples("verb", 64)]
    config = TrainConfig(epochs=1, batch_size=8, lr=2e-2, max_length=32, max_steps=6, progress=False)
    train_causal_lm(attached, tokenizer, texts[8:], texts[:8], config)  # a trained task, not a zero delta
    task_path = save_task(task_from_model(attached, "verbs"), root / "verbs.safetensors")
    bundle_dir = export_bundle(
        SMOLLM2,
        basis_path,
        root / "bundle",
        config=ExportConfig(rank=4, basis_quant="none"),
        tasks=[task_path],
        model=model,
        tokenizer=tokenizer,
    )
    return {"attached": attached.eval(), "tokenizer": tokenizer, "bundle": bundle_dir}


def test_smollm2_greedy_generation_equals_transformers_token_for_token(smol):
    from edge_eigenlora.runtime.generate import LMRuntime

    rt = LMRuntime(smol["bundle"])
    tokenizer, model = smol["tokenizer"], smol["attached"]
    worst = 0.0
    for prompt in PROMPTS:
        stats = {"record_logits": True}
        (gen,) = rt.generate(prompt, task="verbs", max_new_tokens=48, eos=(), chat=False, stats=stats)
        enc = tokenizer([prompt], return_tensors="pt")
        assert enc.input_ids[0].tolist() == rt.encode_prompt(prompt, chat=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=48,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        ref_ids = out.sequences[0, enc.input_ids.shape[1] :].tolist()
        assert gen.token_ids == ref_ids, prompt
        ref = torch.stack(out.logits)[:, 0].numpy()
        mine = np.concatenate(stats["step_logits"])
        rel = np.abs(mine - ref).max(-1) / np.abs(ref).max(-1)
        worst = max(worst, float(rel.max()))
    assert worst < 1e-4, worst


def test_smollm2_chat_template_renders_like_transformers(smol):
    from edge_eigenlora.runtime.generate import LMRuntime

    rt = LMRuntime(smol["bundle"])
    prompt = "What is a verb?"
    ids = smol["tokenizer"].apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    assert rt.encode_prompt(prompt) == list(ids)
