"""Tiny fixtures for the tests; the adapter writers themselves live in edge_eigenlora.synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_eigenlora.synthetic import planted_bank, write_peft_adapter

__all__ = [
    "planted_bank",
    "random_adapter_dirs",
    "tiny_llama_bank_dirs",
    "tiny_llama_model",
    "write_peft_adapter",
]


def tiny_llama_bank_dirs(root: Path, n: int = 3) -> list[Path]:
    """n PEFT adapters (r=4, seeded) for the tiny test Llama: q_proj 64 -> 64, v_proj 64 -> 32, two layers."""
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(n):
        mods = {}
        for layer in range(2):
            mods[f"model.layers.{layer}.self_attn.q_proj"] = (
                rng.standard_normal((4, 64)),
                rng.standard_normal((64, 4)),
            )
            mods[f"model.layers.{layer}.self_attn.v_proj"] = (
                rng.standard_normal((4, 64)),
                rng.standard_normal((32, 4)),
            )
        dirs.append(write_peft_adapter(Path(root) / f"a{i}", mods, r=4, alpha=4, base_model="tiny-llama"))
    return dirs


TINY_MODULES = [f"encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
POS = ["good", "great", "lovely", "excellent", "wonderful", "superb"]
NEG = ["bad", "awful", "terrible", "poor", "horrible", "dreadful"]
FILLER = ["the", "film", "was", "really", "quite", "a", "story", "and", "day", "food", "service", "it"]


def keyword_data(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Texts whose label is which word family they contain: learnable by a tiny random encoder + head."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(FILLER, 5)) + [rng.choice(NEG if label else POS)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def tiny_bert(vocab_size: int, max_positions: int = 64):
    """A seeded 2-layer BERT (hidden 32) with eager attention, for fast exports of the bundle's graphs."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        attn_implementation="eager",
    )
    return BertModel(config).eval()


def tiny_bert_bank_dirs(root: Path, seed: int = 0) -> list[Path]:
    """Three synthetic PEFT adapters (r=4) on the tiny BERT's query/value projections."""
    rng = np.random.default_rng(seed)
    dirs = []
    for i in range(3):
        mods = {m: (rng.standard_normal((4, 32)), rng.standard_normal((32, 4))) for m in TINY_MODULES}
        dirs.append(write_peft_adapter(Path(root) / f"a{i}", mods, r=4, alpha=4, base_model="tiny-bert"))
    return dirs


def tiny_llama_model(vocab_size: int):
    """A seeded 2-layer Llama (hidden 64, 4 heads, 2 KV heads, 128 positions, eager attention)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).eval()


def random_adapter_dirs(
    model, root: Path, suffixes: tuple[str, ...], n: int = 3, base_model: str = ""
) -> list[Path]:
    """n seeded synthetic PEFT adapters (r=4, alpha 8, entries N(0, 0.02)) on the model's Linears ending in
    `suffixes`: a basis for a real model where the test is about the graph, not the bank."""
    import numpy as np

    rng = np.random.default_rng(0)
    shapes = {
        m: (lin.out_features, lin.in_features) for m, lin in model.named_modules() if m.endswith(suffixes)
    }
    return [
        write_peft_adapter(
            root / f"a{i}",
            {
                m: (rng.standard_normal((4, d_in)) * 0.02, rng.standard_normal((d_out, 4)) * 0.02)
                for m, (d_out, d_in) in shapes.items()
            },
            r=4,
            alpha=8,
            base_model=base_model,
        )
        for i in range(n)
    ]
