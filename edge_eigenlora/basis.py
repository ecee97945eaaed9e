"""The basis: per adapted module, principal directions shared by a bank, plus optional augmentation.

`fit_basis(bank, SubspaceConfig(...))` is the stage; `save_basis` / `load_basis` the file format
(safetensors + JSON metadata + a sha256 fingerprint over the tensors that task files bind to).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from tqdm.auto import tqdm

from edge_eigenlora import subspace
from edge_eigenlora.adapters import AdapterBank, LoraAdapter, LoraFactors
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import read_safetensors, save_safetensors_atomic, tensors_fingerprint

__all__ = [
    "BASIS_FORMAT",
    "BASIS_FORMAT_VERSION",
    "BadAdapterSkipped",
    "Basis",
    "Engine",
    "FittedModule",
    "METHODS",
    "ModuleAccumulator",
    "ModuleBasis",
    "SolverFallbackWarning",
    "SubspaceConfig",
    "accumulate_module",
    "finish_module",
    "fit_basis",
    "fit_module",
    "load_basis",
    "plot_explained_variance",
    "save_basis",
    "single_process",
    "variance_report",
]

BASIS_FORMAT = "edge-eigenlora-basis"
BASIS_FORMAT_VERSION = 1
Method = Literal["gauge_free", "factors"]
METHODS: tuple[str, ...] = ("gauge_free", "factors")
SOLVERS: tuple[str, ...] = ("iterative", "exact")


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
    solver: "iterative" (default) takes the top-k directions of a wide stack's Gram matrix by subspace
        iteration; "exact" by a full eigendecomposition (always used where the iteration cannot save time).
    solver_tol: the iteration stops when every top-k Ritz pair's residual ||G v - theta v|| is below
        solver_tol * theta_1; where `solver_max_iter` iterations do not reach it the fit falls back to the
        exact solver for that module and side and warns (SolverFallbackWarning), so the result is never an
        unconverged iterate.
    """

    method: Method = "gauge_free"
    k: int | None = 32  # from benchmarks/results/accuracy (see benchmarks/README.md)
    variance_threshold: float | None = None
    augment: int = 0
    seed: int = 0
    clip_k: bool = False
    solver: Literal["iterative", "exact"] = "iterative"
    solver_tol: float = 1e-8
    solver_max_iter: int = 100

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
        if self.solver not in SOLVERS:
            raise EdgeEigenLoraError(f"SubspaceConfig.solver must be one of {SOLVERS}, got {self.solver!r}.")
        if not (isinstance(self.solver_tol, int | float) and 0 < self.solver_tol < 1):
            raise EdgeEigenLoraError(
                f"SubspaceConfig.solver_tol must be in (0, 1), got {self.solver_tol!r} (1e-8 is the default)."
            )
        if not isinstance(self.solver_max_iter, int) or self.solver_max_iter < 1:
            raise EdgeEigenLoraError(
                f"SubspaceConfig.solver_max_iter must be an integer >= 1, got {self.solver_max_iter!r}."
            )


class SolverFallbackWarning(UserWarning):
    """The top-k subspace iteration did not reach SubspaceConfig.solver_tol; the exact solver was used."""


class BadAdapterSkipped(UserWarning):
    """An adapter was left out of the fit (skip_bad=True); the basis records it under `skipped`."""


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
    solver: dict[str, dict[str, Any]] = field(default_factory=dict)  # side -> how the directions were solved

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
    skipped: dict[str, str] = field(default_factory=dict)  # adapter -> why it was left out (skip_bad)

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


@dataclass
class ModuleAccumulator:
    """One module's streamed stacks over a shard of adapters: the unit that engines add up and merge.

    Holds O(d^2) numbers whatever the shard's size; `adapters` keeps the order they were added in, `bad`
    the adapters whose tensors could not be used (only filled when skip_bad is on; otherwise reading them
    raises).
    """

    module: str
    shape: tuple[int, int]  # (d_out, d_in)
    method: str
    stack: subspace.FactorStack
    adapters: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)

    @classmethod
    def empty(cls, module: str, shape: tuple[int, int], method: str) -> ModuleAccumulator:
        return cls(module, tuple(shape), method, subspace.FactorStack(d_in=shape[1], d_out=shape[0]))

    def add(self, name: str, factors: LoraFactors) -> None:
        A, B = (
            subspace.balanced_factors(factors.A, factors.B)
            if self.method == "gauge_free"
            else (factors.A, factors.B)
        )
        self.stack.add(np.asarray(A, np.float64).T, np.asarray(B, np.float64))
        self.adapters.append(name)

    def merge(self, other: ModuleAccumulator) -> ModuleAccumulator:
        """The accumulation of both shards, self's adapters first (other is consumed)."""
        if (other.module, other.shape, other.method) != (self.module, self.shape, self.method):
            raise ValueError(f"cannot merge accumulations of {other.module!r} into {self.module!r}")
        self.stack.merge(other.stack)
        self.adapters += other.adapters
        self.bad.update(other.bad)
        return self


def accumulate_module(
    adapters: Iterable[LoraAdapter],
    module: str,
    shape: tuple[int, int],
    method: str,
    *,
    skip_bad: bool = False,
    exclude: Collection[str] = (),
) -> ModuleAccumulator:
    """Read one module of each adapter (once, then dropped) into a ModuleAccumulator.

    An adapter whose module cannot be read (corrupt bytes, NaN/Inf, a shape that disagrees) raises
    EdgeEigenLoraError, or with skip_bad is recorded in `bad` and left out.
    """
    acc = ModuleAccumulator.empty(module, shape, method)
    for adapter in adapters:
        if module not in adapter.modules or adapter.name in exclude:
            continue
        try:
            factors = adapter.modules[module]
            if factors.shape != tuple(shape):
                raise EdgeEigenLoraError(
                    f"{adapter.path}: module {module!r} is {factors.shape} (d_out, d_in) but the bank's is "
                    f"{tuple(shape)}: the adapter was not trained on this base model. Leave it out."
                )
        except EdgeEigenLoraError as exc:
            if not skip_bad:
                raise
            acc.bad[adapter.name] = str(exc)
            continue
        acc.add(adapter.name, factors)
    return acc


@dataclass(frozen=True)
class FittedModule:
    """A module's basis plus what the driver must tell the user (clipping, solver fall-backs, bad adapters)."""

    basis: ModuleBasis
    notes: tuple[str, ...]
    fallbacks: tuple[str, ...]
    bad: dict[str, str]


def finish_module(acc: ModuleAccumulator, config: SubspaceConfig) -> FittedModule:
    """Eigensolve a module's accumulated stacks: top-k directions, augmentation, the bank's mean core."""
    module, count = acc.module, len(acc.adapters)
    if count == 0:
        raise EdgeEigenLoraError(
            f"module {module!r}: no usable adapter adapts it (all were left out as bad); nothing to fit."
        )
    s_a, rank_a = acc.stack.spectrum("A")
    s_b, rank_b = acc.stack.spectrum("B")
    supported = min(rank_a, rank_b)
    if supported == 0:
        raise EdgeEigenLoraError(f"module {module!r}: every adapter's delta W is zero; nothing to fit.")
    if config.k is not None:
        k = config.k
    else:
        thr = float(config.variance_threshold)  # type: ignore[arg-type]
        k = max(subspace.k_for_variance(s_a[:supported], thr), subspace.k_for_variance(s_b[:supported], thr))
    notes = []
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
        notes.append(f"{message}; clipped to k={supported}.")
        k = supported
    d_out, d_in = acc.shape
    p = config.augment
    if k + p > min(d_in, d_out):
        raise EdgeEigenLoraError(
            f"module {module!r}: k + augment = {k + p} exceeds the layer's dimension {min(d_in, d_out)}."
        )
    solves = {
        side: acc.stack.directions(
            side, k, tol=config.solver_tol, max_iter=config.solver_max_iter, solver=config.solver
        )
        for side in ("A", "B")
    }
    fallbacks = tuple(
        f"module {module!r} side {side}: subspace iteration reached a relative residual of {sol.residual:.1e} "
        f"after {sol.iterations} iterations, above SubspaceConfig.solver_tol={config.solver_tol:g}; used the "
        "exact eigendecomposition instead (raise solver_max_iter, or set solver='exact' to skip the iteration)."
        for side, sol in solves.items()
        if not sol.converged
    )
    basis_a = subspace.canonical_signs(solves["A"].vectors)
    basis_b = subspace.canonical_signs(solves["B"].vectors)
    aug_a = subspace.orthogonal_complement_directions(
        basis_a, p, np.random.default_rng(subspace.module_seed(config.seed, module, "A"))
    )
    aug_b = subspace.orthogonal_complement_directions(
        basis_b, p, np.random.default_rng(subspace.module_seed(config.seed, module, "B"))
    )
    U_A = np.concatenate([basis_a, aug_a], axis=1)
    U_B = np.concatenate([basis_b, aug_b], axis=1)
    # the bank's mean delta W in basis coordinates (for init="bank"), from the same single reading pass
    mean_core = U_B.T @ acc.stack.delta_sum() @ U_A / count
    solver = {
        side: {"method": sol.method, "iterations": sol.iterations, "residual": float(f"{sol.residual:.3e}")}
        for side, sol in solves.items()
    }
    basis = ModuleBasis(
        U_A=U_A.astype(np.float32),
        U_B=U_B.astype(np.float32),
        k=k,
        p=p,
        singular_values_A=s_a[: acc.stack.columns],
        singular_values_B=s_b[: acc.stack.columns],
        adapters=tuple(acc.adapters),
        mean_core=mean_core,
        solver=solver,
    )
    return FittedModule(basis=basis, notes=tuple(notes), fallbacks=fallbacks, bad=dict(acc.bad))


def fit_module(bank: AdapterBank, module: str, config: SubspaceConfig) -> tuple[ModuleBasis, str | None]:
    """Fit one module; returns the basis and a warning when k had to be clipped."""
    acc = accumulate_module(bank.adapters, module, bank.module_shapes[module], config.method)
    fitted = finish_module(acc, config)
    for message in fitted.fallbacks:
        warnings.warn(message, SolverFallbackWarning, stacklevel=2)
    return fitted.basis, (fitted.notes[0] if fitted.notes else None)


class Engine(Protocol):
    """Fits a list of modules of a bank, leaving out the adapters named in `exclude`."""

    def __call__(
        self,
        bank: AdapterBank,
        modules: list[str],
        config: SubspaceConfig,
        *,
        skip_bad: bool,
        exclude: Collection[str],
        progress: bool,
    ) -> dict[str, FittedModule]: ...


def single_process(
    bank: AdapterBank,
    modules: list[str],
    config: SubspaceConfig,
    *,
    skip_bad: bool,
    exclude: Collection[str],
    progress: bool,
) -> dict[str, FittedModule]:
    """The default engine: one module after the other in this process, one module of memory."""
    out = {}
    for module in tqdm(modules, desc="fitting subspace", unit="module", disable=not progress):
        acc = accumulate_module(
            bank.adapters,
            module,
            bank.module_shapes[module],
            config.method,
            skip_bad=skip_bad,
            exclude=exclude,
        )
        out[module] = finish_module(acc, config)
    return out


def fit_basis(
    bank: AdapterBank,
    config: SubspaceConfig | None = None,
    *,
    progress: bool = True,
    skip_bad: bool = False,
    skipped: Mapping[str, str] | None = None,
    engine: Engine | None = None,
) -> Basis:
    """Per adapted module and side, the top-k principal directions of the bank's stacked factors.

    engine: None fits in this process (the default); `distributed_fit.DaskEngine(...)` spreads the work
    over a Dask cluster and gives the same basis. skip_bad: an adapter that fails to read during the fit
    is reported (BadAdapterSkipped), left out of every module (modules fitted before it was found are
    fitted again without it) and listed in `Basis.skipped`, together with `skipped` (adapters left out
    before the fit, e.g. by `bank_sources.open_bank`).
    """
    config = config or SubspaceConfig()
    engine = engine or single_process
    left_out: dict[str, str] = dict(skipped or {})
    results: dict[str, FittedModule] = {}
    todo = list(bank.module_shapes)
    while todo:
        fitted = engine(bank, todo, config, skip_bad=skip_bad, exclude=set(left_out), progress=progress)
        new_bad = {name: why for f in fitted.values() for name, why in f.bad.items() if name not in left_out}
        results.update(fitted)
        for name, why in new_bad.items():
            warnings.warn(f"left out adapter {name!r}: {why}", BadAdapterSkipped, stacklevel=2)
        left_out.update(new_bad)
        # a module fitted before an adapter was found bad included it: fit it again without
        todo = [m for m, f in results.items() if set(f.basis.adapters) & set(new_bad)]
    modules = {m: results[m].basis for m in bank.module_shapes}
    for m in bank.module_shapes:
        for note in results[m].notes:
            tqdm.write(f"warning: {note}")
        for message in results[m].fallbacks:
            warnings.warn(message, SolverFallbackWarning, stacklevel=2)
    used = [name for name in bank.names() if name not in left_out]
    return Basis(
        modules=modules, config=config, base_model=bank.base_model, bank=tuple(used), skipped=left_out
    )


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
            "solver": m.solver,
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
        "skipped": json.dumps(basis.skipped, sort_keys=True),
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
                solver=dict(m.get("solver", {})),
            )
            for name, m in info.items()
        }
        skipped = json.loads(meta.get("skipped", "{}"))
        if not isinstance(skipped, dict):
            raise TypeError("field 'skipped' must be an object")
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
    basis = Basis(
        modules=modules,
        config=config,
        base_model=meta.get("base_model") or None,
        bank=bank,
        skipped=dict(skipped),
    )
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
