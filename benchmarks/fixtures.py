"""Fixtures the benchmarks and scripts build from: PEFT-format adapter folders and synthetic tasks.

Public on purpose: `benchmarks/` and `scripts/` never import `tests`. The PEFT-folder writer itself is the
library's (`edge_eigenlora.synthetic`), re-exported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_eigenlora.synthetic import write_peft_adapter

__all__ = ["peft_key", "synthetic_task", "write_peft_adapter"]


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
