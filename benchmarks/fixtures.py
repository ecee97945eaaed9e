"""Fixtures the benchmarks and scripts build from: PEFT-format adapter folders and synthetic tasks.

Public on purpose: `benchmarks/` and `scripts/` never import `tests`; the tests import `write_peft_adapter` from
here (one implementation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

__all__ = ["peft_key", "synthetic_task", "write_peft_adapter"]


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
    """A PEFT LoRA folder (the layout PEFT's save_pretrained writes). modules: name -> (A: r x d_in, B: d_out x r),
    unscaled as PEFT stores them."""
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


def synthetic_task(basis: Any, name: str, seed: int, hidden: int, *, rank: int = 8, labels: int = 3) -> Any:
    """A task with random but realistic coefficients (delta W ~ a trained LoRA's norm) and a `labels`-way head."""
    from edge_eigenlora.task import Task

    g = np.random.default_rng(seed)
    coefficients = {}
    for m, mb in basis.modules.items():
        coefficients[m] = (
            (g.standard_normal((mb.width, rank)) * 0.3).astype(np.float32),
            (g.standard_normal((mb.width, rank)) * 0.02).astype(np.float32),
        )
    return Task(
        name=name,
        basis_fingerprint=basis.fingerprint,
        coefficients=coefficients,
        head_weight=g.standard_normal((labels, hidden)).astype(np.float32) * 0.1,
        head_bias=np.zeros(labels, np.float32),
        labels=[f"l{i}" for i in range(labels)],
    )


def peft_key(input_name: str) -> str:
    """'<module>.lora_A_t' (an ort_lora graph input) -> 'base_model.model.<module>.lora_A.weight' (PEFT's key)."""
    module, side = input_name.rsplit(".lora_", 1)
    return f"base_model.model.{module}.lora_{side[0]}.weight"
