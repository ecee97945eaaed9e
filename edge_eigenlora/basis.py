"""The basis: per adapted module, principal directions shared by a bank, plus optional augmentation.

`fit_basis(bank, SubspaceConfig(...))` is the stage; `save_basis` / `load_basis` the file format
(safetensors + JSON metadata + a sha256 fingerprint over the tensors that task files bind to).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from edge_eigenlora import subspace
from edge_eigenlora.adapters import AdapterBank
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import read_safetensors, save_safetensors_atomic, tensors_fingerprint

__all__ = [
    "BASIS_FORMAT",
    "BASIS_FORMAT_VERSION",
    "Basis",
    "METHODS",
    "ModuleBasis",
    "SubspaceConfig",
    "fit_basis",
    "fit_module",
    "load_basis",
    "plot_explained_variance",
    "save_basis",
    "variance_report",
]

BASIS_FORMAT = "edge-eigenlora-basis"
BASIS_FORMAT_VERSION = 1
Method = Literal["gauge_free", "factors"]
METHODS: tuple[str, ...] = ("gauge_free", "factors")


@dataclass(frozen=True)
class SubspaceConfig:
    """How to fit a basis.

    method: "factors" stacks the raw (scaled) LoRA factors as in the EigenLoRAx paper; "gauge_free" first
        replaces each adapter by the balanced factors of its delta W, so the basis does not depend on
        LoRA's arbitrary factorization B A = (B G)(G^-1 A).
    k: principal directions per module and side; or None with `variance_threshold` set.
    variance_threshold: choose per module the smallest k reaching this explained variance on both sides.
    augment: extra random orthonormal directions orthogonal to the principal ones (seeded by `seed`).
    clip_k: when k exceeds the rank the stack supports, clip (with a warning) instead of refusing.
    """

    method: Method = "gauge_free"
    k: int | None = 32  # from benchmarks/results/accuracy (see benchmarks/README.md)
    variance_threshold: float | None = None
    augment: int = 0
    seed: int = 0
    clip_k: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgeEigenLoraError(f"SubspaceConfig.method must be one of {METHODS}, got {self.method!r}.")
        if (self.k is None) == (self.variance_threshold is None):
            raise EdgeEigenLoraError("SubspaceConfig: set exactly one of k and variance_threshold.")
        if self.k is not None and self.k < 1:
            raise EdgeEigenLoraError(f"SubspaceConfig.k must be >= 1, got {self.k}.")
        if self.variance_threshold is not None and not 0 < self.variance_threshold <= 1:
            raise EdgeEigenLoraError(
                f"SubspaceConfig.variance_threshold must be in (0, 1], got {self.variance_threshold}."
            )
        if self.augment < 0:
            raise EdgeEigenLoraError(f"SubspaceConfig.augment must be >= 0, got {self.augment}.")


@dataclass(frozen=True)
class ModuleBasis:
    """Orthonormal directions for one Linear: the first k columns are principal, the last p augmentation."""

    U_A: np.ndarray  # d_in x (k + p)
    U_B: np.ndarray  # d_out x (k + p)
    k: int
    p: int
    singular_values_A: np.ndarray  # of the whole stack, for explained-variance reports
    singular_values_B: np.ndarray
    adapters: tuple[str, ...]
    mean_core: np.ndarray  # (k+p) x (k+p): the bank's average delta W seen through the basis, for "bank" init

    @property
    def width(self) -> int:
        """Columns per side, k + p: the row count of each coefficient matrix."""
        return self.k + self.p

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.U_B.shape[0]), int(self.U_A.shape[0])

    def explained(self) -> tuple[float, float]:
        """Explained variance of the stack at k, for the A side and the B side."""
        ev_a = subspace.explained_variance(self.singular_values_A)
        ev_b = subspace.explained_variance(self.singular_values_B)
        return float(ev_a[self.k - 1]), float(ev_b[self.k - 1])


@dataclass(frozen=True)
class Basis:
    modules: dict[str, ModuleBasis]
    config: SubspaceConfig
    base_model: str | None
    bank: tuple[str, ...]
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", tensors_fingerprint(_tensors(self.modules)))

    @property
    def short_id(self) -> str:
        return self.fingerprint[:12]


def _tensors(modules: dict[str, ModuleBasis]) -> dict[str, np.ndarray]:
    out = {}
    for name, m in modules.items():
        out[f"{name}.U_A"] = m.U_A.astype(np.float32)
        out[f"{name}.U_B"] = m.U_B.astype(np.float32)
        out[f"{name}.singular_values_A"] = m.singular_values_A.astype(np.float32)
        out[f"{name}.singular_values_B"] = m.singular_values_B.astype(np.float32)
        out[f"{name}.mean_core"] = m.mean_core.astype(np.float32)
    return out


def _stack_sides(
    bank: AdapterBank, module: str, method: str, shape: tuple[int, int]
) -> tuple[subspace.StreamedPrincipalDirections, subspace.StreamedPrincipalDirections, int]:
    """Stream the bank's factors of one module into the two sides' solvers: A_i^T (d_in x r_i), B_i (d_out x r_i).

    Each adapter's module is read once and dropped, so a lazily loaded bank costs one module of memory.
    """
    d_out, d_in = shape
    side_a, side_b = subspace.StreamedPrincipalDirections(d_in), subspace.StreamedPrincipalDirections(d_out)
    count = 0
    for adapter in bank.adapters_with(module):
        f = adapter.modules[module]
        A, B = subspace.balanced_factors(f.A, f.B) if method == "gauge_free" else (f.A, f.B)
        side_a.add(np.asarray(A, np.float64).T)
        side_b.add(np.asarray(B, np.float64))
        count += 1
    return side_a, side_b, count


def fit_module(bank: AdapterBank, module: str, config: SubspaceConfig) -> tuple[ModuleBasis, str | None]:
    """Fit one module; returns the basis and a warning when k had to be clipped."""
    side_a, side_b, count = _stack_sides(bank, module, config.method, bank.module_shapes[module])
    s_a, rank_a = side_a.spectrum()
    s_b, rank_b = side_b.spectrum()
    supported = min(rank_a, rank_b)
    if supported == 0:
        raise EdgeEigenLoraError(f"module {module!r}: every adapter's delta W is zero; nothing to fit.")
    if config.k is not None:
        k = config.k
    else:
        thr = float(config.variance_threshold)  # type: ignore[arg-type]
        k = max(subspace.k_for_variance(s_a[:supported], thr), subspace.k_for_variance(s_b[:supported], thr))
    warning = None
    if k > supported:
        message = (
            f"module {module!r}: k={k} but the stack of {count} adapters supports only {supported} "
            "independent directions"
        )
        if not config.clip_k:
            raise EdgeEigenLoraError(
                f"{message}. Choose k <= {supported}, add adapters to the bank, or allow clipping "
                "(--clip-k / SubspaceConfig(clip_k=True))."
            )
        warning = f"{message}; clipped to k={supported}."
        k = supported
    d_out, d_in = bank.module_shapes[module]
    p = config.augment
    if k + p > min(d_in, d_out):
        raise EdgeEigenLoraError(
            f"module {module!r}: k + augment = {k + p} exceeds the layer's dimension {min(d_in, d_out)}."
        )
    basis_a, basis_b = side_a.directions(k), side_b.directions(k)
    aug_a = subspace.orthogonal_complement_directions(
        basis_a, p, np.random.default_rng(subspace.module_seed(config.seed, module, "A"))
    )
    aug_b = subspace.orthogonal_complement_directions(
        basis_b, p, np.random.default_rng(subspace.module_seed(config.seed, module, "B"))
    )
    U_A = np.concatenate([basis_a, aug_a], axis=1)
    U_B = np.concatenate([basis_b, aug_b], axis=1)
    users = bank.adapters_with(module)
    mean_core = np.zeros((U_B.shape[1], U_A.shape[1]))
    for adapter in users:  # second pass: the bank's mean delta W in basis coordinates, for init="bank"
        f = adapter.modules[module]
        mean_core += (U_B.T @ f.B.astype(np.float64)) @ (f.A.astype(np.float64) @ U_A)
    mean_core /= len(users)
    return (
        ModuleBasis(
            U_A=U_A.astype(np.float32),
            U_B=U_B.astype(np.float32),
            k=k,
            p=p,
            singular_values_A=s_a[: side_a.columns],
            singular_values_B=s_b[: side_b.columns],
            adapters=tuple(a.name for a in users),
            mean_core=mean_core,
        ),
        warning,
    )


def fit_basis(bank: AdapterBank, config: SubspaceConfig | None = None, *, progress: bool = True) -> Basis:
    """Per adapted module and side, the top-k principal directions of the bank's stacked factors."""
    config = config or SubspaceConfig()
    modules = {}
    for module in tqdm(bank.module_shapes, desc="fitting subspace", unit="module", disable=not progress):
        modules[module], warning = fit_module(bank, module, config)
        if warning:
            tqdm.write(f"warning: {warning}")
    return Basis(modules=modules, config=config, base_model=bank.base_model, bank=tuple(bank.names()))


def _metadata(basis: Basis) -> dict[str, str]:
    modules = {
        name: {
            "d_out": m.shape[0],
            "d_in": m.shape[1],
            "k": m.k,
            "p": m.p,
            "adapters": list(m.adapters),
            "explained_variance_A": round(m.explained()[0], 6),
            "explained_variance_B": round(m.explained()[1], 6),
        }
        for name, m in basis.modules.items()
    }
    return {
        "format": BASIS_FORMAT,
        "format_version": str(BASIS_FORMAT_VERSION),
        "fingerprint": basis.fingerprint,
        "base_model": basis.base_model or "",
        "config": json.dumps(asdict(basis.config), sort_keys=True),
        "bank": json.dumps(list(basis.bank)),
        "modules": json.dumps(modules, sort_keys=True),
    }


def save_basis(basis: Basis, path: str | Path) -> Path:
    """Write the basis atomically as safetensors; returns the path."""
    path = Path(path)
    save_safetensors_atomic(path, _tensors(basis.modules), _metadata(basis))
    return path


def load_basis(path: str | Path) -> Basis:
    """Read a basis file and check its format, version and fingerprint."""
    tensors, meta = read_safetensors(path, "basis file")
    if meta.get("format") != BASIS_FORMAT:
        raise EdgeEigenLoraError(
            f"{path}: metadata field 'format' is {meta.get('format')!r}, not {BASIS_FORMAT!r}; "
            "this is not a basis file (fit one with `edge-eigenlora fit`)."
        )
    if meta.get("format_version") != str(BASIS_FORMAT_VERSION):
        raise EdgeEigenLoraError(
            f"{path}: basis format_version {meta.get('format_version')!r} is not supported "
            f"(this edge-eigenlora reads version {BASIS_FORMAT_VERSION}). Upgrade, or re-fit the basis."
        )
    try:
        info: dict[str, dict[str, Any]] = json.loads(meta["modules"])
        config = SubspaceConfig(**json.loads(meta["config"]))
        bank = tuple(json.loads(meta["bank"]))
        modules = {
            name: ModuleBasis(
                U_A=tensors[f"{name}.U_A"],
                U_B=tensors[f"{name}.U_B"],
                k=int(m["k"]),
                p=int(m["p"]),
                singular_values_A=tensors[f"{name}.singular_values_A"].astype(np.float64),
                singular_values_B=tensors[f"{name}.singular_values_B"].astype(np.float64),
                adapters=tuple(m["adapters"]),
                mean_core=tensors[f"{name}.mean_core"].astype(np.float64),
            )
            for name, m in info.items()
        }
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise EdgeEigenLoraError(
            f"{path}: basis metadata is incomplete or malformed ({str(exc)[:100]!r}); re-fit it."
        ) from None
    for name, m in modules.items():  # the metadata's k and p against the tensors they describe
        w = m.width
        if not (
            m.k >= 1
            and m.p >= 0
            and m.U_A.ndim == m.U_B.ndim == 2
            and m.U_A.shape[1] == m.U_B.shape[1] == w
            and m.singular_values_A.ndim == m.singular_values_B.ndim == 1
            and min(m.singular_values_A.size, m.singular_values_B.size) >= m.k
            and m.mean_core.shape == (w, w)
        ):
            raise EdgeEigenLoraError(
                f"{path}: module {name!r} has k={m.k}, p={m.p} in the metadata but tensors U_A {m.U_A.shape}, "
                f"U_B {m.U_B.shape}, mean_core {m.mean_core.shape}; the basis file is damaged: re-fit it."
            )
    basis = Basis(modules=modules, config=config, base_model=meta.get("base_model") or None, bank=bank)
    if basis.fingerprint != meta.get("fingerprint"):
        raise EdgeEigenLoraError(
            f"{path}: the tensors do not match the stored fingerprint; the file was modified or corrupted. "
            "Re-fit or re-copy the basis."
        )
    return basis


def variance_report(basis: Basis) -> list[dict[str, Any]]:
    """One row per module: k, p, explained variance per side, adapters used."""
    rows = []
    for name, m in basis.modules.items():
        ev_a, ev_b = m.explained()
        rows.append(
            {
                "module": name,
                "k": m.k,
                "p": m.p,
                "explained_A": ev_a,
                "explained_B": ev_b,
                "adapters": len(m.adapters),
            }
        )
    return rows


def plot_explained_variance(basis: Basis, path: str | Path) -> Path:
    """Cumulative explained variance against k, one line per module and side, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edge_eigenlora.fileio import write_with

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, side in zip(axes, ("A", "B"), strict=True):
        for name, m in basis.modules.items():
            ev = subspace.explained_variance(getattr(m, f"singular_values_{side}"))
            ax.plot(np.arange(1, ev.size + 1), ev, lw=1, alpha=0.7, label=name)
        k_values = sorted({m.k for m in basis.modules.values()})
        for k in k_values:
            ax.axvline(k, color="k", ls="--", lw=0.8)
        ax.set_title(f"{side} side ({basis.config.method})")
        ax.set_xlabel("directions k")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cumulative explained variance")
    if len(basis.modules) <= 12:
        axes[1].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"basis {basis.short_id}: {len(basis.bank)} adapters")
    fig.tight_layout()
    path = Path(path)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
