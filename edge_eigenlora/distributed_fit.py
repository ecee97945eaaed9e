"""The fit spread over a Dask cluster: per-module, per-shard accumulation, a tree reduction, one eigensolve.

A module's basis needs only that module's factors of every adapter, and its accumulation (Gram matrices
and the sum of deltas) is a sum over adapters. So each (module, shard of adapters) pair is one task that
reads its adapters' module lazily and returns a `ModuleAccumulator` (O(d^2), whatever the shard size);
pairs of partial sums are merged in a binary tree and the module's eigensolve runs on one worker. The
tasks are the same functions the single-process fit runs, in the same adapter order, so the basis is the
same up to floating-point summation order. Every task's inputs stay in the graph (the shards are tasks
too), so when a worker dies Dask recomputes what it held and the result does not change.

dask and distributed are imported only when this engine is used; `import edge_eigenlora` never imports them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from edge_eigenlora.adapters import AdapterBank, LoraAdapter
from edge_eigenlora.basis import (
    Basis,
    FittedModule,
    ModuleAccumulator,
    SubspaceConfig,
    accumulate_module,
    finish_module,
    fit_basis,
)
from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["DaskEngine", "fit_basis_dask", "local_client"]


def _shard(adapters: tuple[LoraAdapter, ...]) -> tuple[LoraAdapter, ...]:
    """Identity task: keeps a shard's adapter list in the graph, so a lost copy is recomputed, not lost."""
    return adapters


def _accumulate(
    shard: tuple[LoraAdapter, ...],
    module: str,
    shape: tuple[int, int],
    method: str,
    skip_bad: bool,
    exclude: frozenset[str],
) -> ModuleAccumulator:
    return accumulate_module(shard, module, shape, method, skip_bad=skip_bad, exclude=exclude)


def _merge(left: ModuleAccumulator, right: ModuleAccumulator) -> ModuleAccumulator:
    return left.merge(right)


def local_client(workers: int, **cluster_options: Any) -> Any:
    """A Client on a LocalCluster of `workers` processes with one thread each (BLAS threads stay at 1)."""
    from dask.distributed import Client, LocalCluster

    options = {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": ":0",
        "silence_logs": logging.ERROR,
    }
    options.update(cluster_options)
    cluster = LocalCluster(**options)
    return Client(cluster)


@dataclass
class DaskEngine:
    """An engine for `basis.fit_basis(..., engine=DaskEngine(client))`.

    shard_size: adapters per accumulation task (default: the bank split into one shard per worker thread,
    at least 1). max_modules: modules in flight at once (default 2 per worker thread), which bounds the
    partial sums held by the cluster to max_modules x shards x one module's accumulator.
    """

    client: Any
    shard_size: int | None = None
    max_modules: int | None = None

    def __call__(
        self,
        bank: AdapterBank,
        modules: list[str],
        config: SubspaceConfig,
        *,
        skip_bad: bool,
        exclude: Collection[str],
        progress: bool,
    ) -> dict[str, FittedModule]:
        from dask.distributed import as_completed

        client = self.client
        threads = max(1, sum(client.nthreads().values()))
        excluded = frozenset(exclude)
        adapters = [a for a in bank.adapters if a.name not in excluded]
        size = self.shard_size or max(1, -(-len(adapters) // threads))
        shards = [
            client.submit(_shard, tuple(adapters[i : i + size]), pure=False)
            for i in range(0, len(adapters), size)
        ]
        limit = self.max_modules or 2 * threads

        def submit(module: str) -> Any:
            shape = bank.module_shapes[module]
            partial = [
                client.submit(_accumulate, s, module, shape, config.method, skip_bad, excluded, pure=False)
                for s in shards
            ]
            while len(partial) > 1:  # binary tree: log2(shards) levels of pairwise merges
                pairs = [
                    client.submit(_merge, a, b, pure=False)
                    for a, b in zip(partial[::2], partial[1::2], strict=False)
                ]
                partial = pairs + ([partial[-1]] if len(partial) % 2 else [])
            future = client.submit(finish_module, partial[0], config, pure=False)
            names[future.key] = module
            return future

        names: dict[str, str] = {}
        waiting = list(modules)
        running = as_completed([submit(m) for m in waiting[:limit]])
        waiting = waiting[limit:]
        out: dict[str, FittedModule] = {}
        with tqdm(
            total=len(modules), desc="fitting subspace (dask)", unit="module", disable=not progress
        ) as bar:
            for future in running:
                out[names[future.key]] = future.result()  # re-raises a task's EdgeEigenLoraError here
                bar.update()
                if waiting:
                    running.add(submit(waiting.pop(0)))
        for s in shards:
            s.release()
        return out


def fit_basis_dask(
    bank: AdapterBank,
    config: SubspaceConfig | None = None,
    *,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    shard_size: int | None = None,
    progress: bool = True,
    skip_bad: bool = False,
    skipped: dict[str, str] | None = None,
) -> Basis:
    """`fit_basis` on a Dask cluster: an existing `client`, a scheduler ADDRESS, or a LocalCluster of N workers.

    Gives the same basis as the single-process fit (see the module docstring); a cluster this function
    starts is closed when it returns.
    """
    given = [x is not None for x in (client, scheduler, workers)]
    if sum(given) > 1:
        raise EdgeEigenLoraError(
            "give at most one of client, scheduler (--scheduler) and workers (--workers)."
        )
    if workers is not None and workers < 1:
        raise EdgeEigenLoraError(f"workers (--workers) must be >= 1, got {workers}.")
    own = client is None
    if own:
        if scheduler is not None:
            from dask.distributed import Client

            try:
                client = Client(scheduler, timeout="30s")
            except OSError as exc:
                raise EdgeEigenLoraError(
                    f"could not reach the Dask scheduler at {scheduler!r} ({exc}). Start one with "
                    "`dask scheduler` (and `dask worker ADDRESS`), or use --workers N for a local cluster."
                ) from exc
        else:
            client = local_client(workers or 2)
    try:
        engine = DaskEngine(client, shard_size=shard_size)
        return fit_basis(bank, config, progress=progress, skip_bad=skip_bad, skipped=skipped, engine=engine)
    finally:
        if own:
            cluster = client.cluster if scheduler is None else None
            client.close()
            if cluster is not None:
                cluster.close()
