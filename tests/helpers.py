"""Tiny fixtures for the tests; the adapter writers themselves live in edge_eigenlora.synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_eigenlora.synthetic import planted_bank, write_peft_adapter

__all__ = ["planted_bank", "tiny_llama_bank_dirs", "write_peft_adapter"]


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
