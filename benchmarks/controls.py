"""Control bases for the accuracy benchmark: same coefficient training, different (non-recycled) directions.

- `random_basis`: seeded random orthonormal directions per module and side (the NOLA / VeRA-style control:
  what a K-dimensional subspace does with no knowledge of any bank).
- `weight_svd_basis`: the base weight's own top-K singular directions (PiSSA / LoRA-XS style: knowledge of the
  model, none of the bank).
- `mix_basis`: output side from one basis, input side from another (e.g. bank output side, random input side).

Each returns an `edge_eigenlora.basis.Basis` that `attach_basis` accepts; `mean_core` is zero (there is no bank
adapter to average), so only init="zero" is meaningful for them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_eigenlora import subspace
from edge_eigenlora.basis import Basis, ModuleBasis, SubspaceConfig
from edge_eigenlora.errors import EdgeEigenLoraError


def _orthonormal(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """d x k with orthonormal columns, uniformly distributed (QR of a Gaussian with the sign fixed)."""
    if k > d:
        raise EdgeEigenLoraError(f"cannot draw {k} orthonormal directions in dimension {d}.")
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return q * np.sign(np.diag(r))


def _module(U_A: np.ndarray, U_B: np.ndarray, k: int, source: str) -> ModuleBasis:
    width = U_A.shape[1]
    return ModuleBasis(
        U_A=U_A.astype(np.float32),
        U_B=U_B.astype(np.float32),
        k=k,
        p=width - k,
        singular_values_A=np.ones(width),
        singular_values_B=np.ones(width),
        adapters=(source,),
        mean_core=np.zeros((width, width)),
    )


def random_basis(shapes: Mapping[str, tuple[int, int]], k: int, *, seed: int = 0) -> Basis:
    """Random orthonormal U_A (d_in x k) and U_B (d_out x k) per module; shapes: module -> (d_out, d_in)."""
    modules = {}
    for name, (d_out, d_in) in shapes.items():
        rng_a = np.random.default_rng(subspace.module_seed(seed, name, "A"))
        rng_b = np.random.default_rng(subspace.module_seed(seed, name, "B"))
        modules[name] = _module(_orthonormal(d_in, k, rng_a), _orthonormal(d_out, k, rng_b), k, "random")
    return Basis(modules=modules, config=SubspaceConfig(k=k, seed=seed), base_model=None, bank=("random",))


def weight_svd_basis(weights: Mapping[str, np.ndarray], k: int) -> Basis:
    """Top-k singular directions of each base weight W (d_out x d_in): U_B = left, U_A = right vectors."""
    modules = {}
    for name, weight in weights.items():
        w = np.asarray(weight, np.float64)
        if k > min(w.shape):
            raise EdgeEigenLoraError(
                f"module {name!r}: k={k} exceeds the weight's rank bound {min(w.shape)}."
            )
        u, _, vt = np.linalg.svd(w, full_matrices=False)
        modules[name] = _module(vt[:k].T, u[:, :k], k, "weight_svd")
    return Basis(modules=modules, config=SubspaceConfig(k=k), base_model=None, bank=("weight_svd",))


def mix_basis(output_from: Basis, input_from: Basis) -> Basis:
    """U_B (output side) of `output_from` with U_A (input side) of `input_from`; widths must agree."""
    modules = {}
    for name, out_mb in output_from.modules.items():
        in_mb = input_from.modules.get(name)
        if in_mb is None or in_mb.width != out_mb.width:
            raise EdgeEigenLoraError(f"module {name!r}: the two bases do not both have it at the same width.")
        modules[name] = _module(in_mb.U_A, out_mb.U_B, out_mb.k, "mixed")
    return Basis(
        modules=modules, config=output_from.config, base_model=output_from.base_model, bank=output_from.bank
    )


def module_weights(model: object, names: list[str]) -> dict[str, np.ndarray]:
    """Base weights (d_out x d_in) of the named Linears of a torch model, for `weight_svd_basis`."""
    from edge_eigenlora.model import resolve_module_name

    out = {}
    for name in names:
        module = model.get_submodule(resolve_module_name(model, name))  # type: ignore[attr-defined]
        out[name] = module.weight.detach().double().numpy().copy()
    return out
