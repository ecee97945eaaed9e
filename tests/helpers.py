"""Writers for tiny PEFT-format fixtures (the layout PEFT's save_pretrained produces)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.fixtures import write_peft_adapter  # noqa: F401  (one implementation, re-exported)


def planted_bank(rng: np.random.Generator, n: int, r: int, d_in: int, d_out: int, k: int):
    """Adapters whose factors all lie in one planted k-dim subspace per side; returns (adapters, U_A, U_B)."""
    U_A, _ = np.linalg.qr(rng.standard_normal((d_in, k)))
    U_B, _ = np.linalg.qr(rng.standard_normal((d_out, k)))
    adapters = []
    for _ in range(n):
        A = (U_A @ rng.standard_normal((k, r))).T  # r x d_in
        B = U_B @ rng.standard_normal((k, r))  # d_out x r
        adapters.append((A, B))
    return adapters, U_A, U_B


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
