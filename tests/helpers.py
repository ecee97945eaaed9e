"""Writers for tiny PEFT-format fixtures (the layout PEFT's save_pretrained produces)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write_peft_adapter(
    folder: Path,
    modules: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    r: int,
    alpha: float,
    base_model: str = "tiny/base",
    extra_config: dict | None = None,
    prefix: str = "base_model.model.",
) -> Path:
    """modules: name -> (A: r x d_in, B: d_out x r), unscaled as PEFT stores them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (A, B) in modules.items():
        tensors[f"{prefix}{name}.lora_A.weight"] = np.ascontiguousarray(A, dtype=np.float32)
        tensors[f"{prefix}{name}.lora_B.weight"] = np.ascontiguousarray(B, dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in modules}),
        "base_model_name_or_path": base_model,
        "use_rslora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    config.update(extra_config or {})
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


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
