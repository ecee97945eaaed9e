"""Next-token choice (numpy) against transformers' logits processors, the generation settings' errors, and the
chat template's sandbox: a bundle's template can format messages and nothing else."""

import numpy as np
import pytest
import torch

from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.runtime.chat_template import ChatTemplate
from edge_eigenlora.runtime.sampling import GenerationConfig, apply_repetition_penalty, next_tokens


def test_repetition_penalty_equals_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 50)).astype(np.float32)
    seen = [[1, 4, 4, 9], [0, 49]]
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(seen[0])[None], torch.tensor(logits[:1]))
    assert np.allclose(apply_repetition_penalty(logits, seen, 1.3)[0], ref.numpy()[0])
    assert np.array_equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_top_k_and_top_p_keep_the_tokens_transformers_keeps():
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(1)
    logits = rng.standard_normal((1, 40)) * 3
    for config, warper in [
        (GenerationConfig(do_sample=True, top_k=5), TopKLogitsWarper(5)),
        (GenerationConfig(do_sample=True, top_p=0.7), TopPLogitsWarper(0.7)),
    ]:
        keep = np.isfinite(warper(None, torch.tensor(logits)).numpy()[0])
        draws = {int(next_tokens(logits, [[]], config, np.random.default_rng(s))[0]) for s in range(400)}
        assert draws <= set(np.flatnonzero(keep)) and len(draws) >= min(3, keep.sum())


def test_greedy_is_argmax_and_sampling_is_seeded():
    logits = np.array([[0.1, 2.0, 0.3], [5.0, 0.0, 4.9]], np.float32)
    assert next_tokens(logits, [[], []], GenerationConfig(), np.random.default_rng(0)).tolist() == [1, 0]
    config = GenerationConfig(do_sample=True, temperature=5.0)
    a = [next_tokens(logits, [[], []], config, np.random.default_rng(3)).tolist() for _ in range(3)]
    assert a[0] == a[1] == a[2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"do_sample": True, "temperature": 0.0}, "temperature must be > 0 when sampling"),
        ({"do_sample": True, "temperature": -1.0}, "temperature must be > 0 when sampling"),
        ({"stop": ["ok", ""]}, "stop string 1 is empty"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
    ],
)
def test_generation_config_names_the_bad_setting(kwargs, message):
    with pytest.raises(EdgeEigenLoraError, match=message):
        GenerationConfig(**kwargs)


SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}\n"
)


def test_chat_template_renders_a_user_turn_and_the_assistant_opening():
    text = ChatTemplate(SMOL_TEMPLATE, "t.jinja").render("hi")
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{% set x = messages.append(1) %}{{ x }}",
    ],
)
def test_a_hostile_chat_template_is_refused_by_the_sandbox(template):
    with pytest.raises(EdgeEigenLoraError, match="chat template failed"):
        ChatTemplate(template, "evil.jinja").render("hi")


def test_a_broken_chat_template_names_its_file():
    with pytest.raises(EdgeEigenLoraError, match="bad.jinja: the chat template is not valid Jinja"):
        ChatTemplate("{% for %}", "bad.jinja")
