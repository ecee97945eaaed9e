"""Synthetic PEFT adapters (the layout PEFT's save_pretrained produces), for tests and benchmarks.

They carry no task: use them where the file format or the math is the point (bundle I/O, subspace recovery),
never where accuracy is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

__all__ = ["planted_bank", "write_peft_adapter"]


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


def planted_bank(
    rng: np.random.Generator, n: int, r: int, d_in: int, d_out: int, k: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """Adapters whose factors all lie in one planted k-dim subspace per side; returns (adapters, U_A, U_B)."""
    U_A, _ = np.linalg.qr(rng.standard_normal((d_in, k)))
    U_B, _ = np.linalg.qr(rng.standard_normal((d_out, k)))
    adapters = []
    for _ in range(n):
        A = (U_A @ rng.standard_normal((k, r))).T  # r x d_in
        B = U_B @ rng.standard_normal((k, r))  # d_out x r
        adapters.append((A, B))
    return adapters, U_A, U_B
