"""Open a bundle on the device and run tasks: onnxruntime + numpy only.

A task is a few KB of coefficients fed as graph inputs, so every task shares one loaded graph. Tasks are read
once and cached as ready-to-feed arrays, so a switch costs what feeding other inputs costs. When the bundle
has the factored graph, a one-task batch runs it instead of the shared graph: the factors graph turns the
task's coefficients into every module's A^T and B^T once per task switch (the last few are kept), so no call
re-forms them. The graphs' weights live once in the bundle's external-data file; with `share_weights` every
session of this runtime (inference and train step) uses one memory-mapped copy of them instead of one copy
per session.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_eigenlora import bundle as contract
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.runtime.tokenize import BundleTokenizer, OnLong, check_ids
from edge_eigenlora.task import Task

__all__ = [
    "BundleRuntime",
    "DeviceRuntime",
    "LoadedTask",
    "RuntimeOptions",
    "SharedWeights",
    "make_session",
    "switch_cost_us",
]

Optimization = Literal["disable", "basic", "extended", "all"]


@dataclass(frozen=True)
class RuntimeOptions:
    """onnxruntime session settings that matter on a phone.

    threads: intra-op threads (0: onnxruntime's default, one per core). arena: the CPU memory arena (faster
    repeated runs, higher peak RSS; off on small devices). mem_pattern: pre-planned activation buffers.
    prepacking: MLAS weight pre-packing (faster matmuls, a second copy of the weights in memory).
    prefer_ort: load the .ort (ORT Mobile) file of a graph when the bundle has one.
    share_weights: hand onnxruntime the graphs' external weights as pre-made initializers backed by one
    memory map of the bundle's weights file, so two sessions (run + train) hold one copy of the base model.
    It pays only with prepacking off: prepacking makes per-session packed copies anyway, and the mapped
    weights then come on top (measured in benchmarks/results/bundle/report.md), hence off by default and on
    in `low_memory()`.
    disabled_optimizers: onnxruntime graph optimizers to skip, e.g. ("ConstantFolding",) keeps the train
    graph's weight transposes as nodes instead of folding them into second copies of the weights.
    """

    threads: int = 0
    arena: bool = True
    mem_pattern: bool = True
    prepacking: bool = True
    optimization: Optimization = "all"
    prefer_ort: bool = False
    disabled_optimizers: tuple[str, ...] = ()
    share_weights: bool = False

    @classmethod
    def low_memory(cls, threads: int = 0) -> RuntimeOptions:
        """Arena off, no constant folding, no prepacking, weights shared between sessions: one copy of the model.

        What each setting saves and costs in time: benchmarks/results/bundle/report.md.
        """
        return cls(
            threads=threads,
            arena=False,
            prepacking=False,
            share_weights=True,
            disabled_optimizers=("ConstantFolding",),
        )

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise EdgeEigenLoraError(
                f"RuntimeOptions.threads must be >= 0 (0 = all cores), got {self.threads}."
            )
        if self.optimization not in ("disable", "basic", "extended", "all"):
            raise EdgeEigenLoraError(
                f"RuntimeOptions.optimization must be disable, basic, extended or all, got {self.optimization!r}."
            )


def make_session(
    path: str | os.PathLike[str], options: RuntimeOptions, initializers: dict[str, Any] | None = None
) -> Any:
    """An onnxruntime CPU session configured by `options`; `initializers` (name -> OrtValue) are shared."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = options.threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = options.arena
    so.enable_mem_pattern = options.mem_pattern
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.optimization]
    if not options.prepacking:
        so.add_session_config_entry("session.disable_prepacking", "1")
    if options.disabled_optimizers:
        so.add_session_config_entry(
            "optimization.disable_specified_optimizers", ",".join(options.disabled_optimizers)
        )
    for name, value in (initializers or {}).items():
        so.add_initializer(name, value)
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise EdgeEigenLoraError(
            f"onnxruntime cannot load {path} ({type(exc).__name__}: {str(exc)[:300]}); the graph file is corrupt "
            "or was built for a newer onnxruntime: re-copy or re-export the bundle."
        ) from exc


@dataclass
class LoadedTask:
    """A task as the graph consumes it: packed coefficients + head, validated once."""

    name: str
    task: Task
    coefficients: np.ndarray  # [P] float32
    head_weight: np.ndarray | None  # [labels, hidden]; None for a language model's task
    head_bias: np.ndarray | None  # [labels]
    labels: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return 0 if self.head_weight is None else int(self.head_weight.shape[0])

    def feeds(self) -> dict[str, np.ndarray]:
        out = {contract.COEFFICIENTS: self.coefficients}
        if self.head_weight is not None:
            out.update({contract.HEAD_WEIGHT: self.head_weight, contract.HEAD_BIAS: self.head_bias})
        return out


class SharedWeights:
    """The bundle's external weights, memory-mapped once, as OrtValues for every session of one runtime."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._maps: dict[str, np.memmap] = {}
        self._values: dict[tuple[str, int, int], Any] = {}

    def initializers(
        self, graph_path: Path, manifest: contract.Manifest, graph: contract.GraphEntry
    ) -> dict[str, Any]:
        import onnxruntime as ort

        out = {}
        for t in contract.onnx_external_tensors(graph_path.read_bytes(), f"graph file {graph.file}"):
            if t["location"] not in graph.external_data:
                raise EdgeEigenLoraError(
                    f"{manifest.path}: graph {graph.file} reads {t['location']!r}, which its entry does not list."
                )
            dtype = _ONNX_DTYPES.get(t.get("data_type", 0))
            if dtype is None:
                return {}  # a type numpy cannot view: let onnxruntime load this graph's weights itself
            count = int(np.prod(t["dims"], dtype=np.int64))
            length = t["length"] if t["length"] is not None else count * dtype.itemsize
            key = (t["location"], t["offset"], length)
            if key not in self._values:
                data = self._map(t["location"], manifest)
                if t["offset"] + length > data.size or count * dtype.itemsize != length:
                    raise EdgeEigenLoraError(
                        f"{graph.file}: tensor {t['name']!r} does not fit {t['location']} (offset {t['offset']}, "
                        f"length {length}); the bundle is damaged: re-copy or re-export it."
                    )
                array = data[t["offset"] : t["offset"] + length].view(dtype).reshape(t["dims"])
                self._values[key] = (array, ort.OrtValue.ortvalue_from_numpy(array))
            out[t["name"]] = self._values[key][1]
        return out

    def _map(self, location: str, manifest: contract.Manifest) -> np.memmap:
        if location not in self._maps:
            path = contract.inside_bundle(self.root, location, str(manifest.path))
            self._maps[location] = np.memmap(path, dtype=np.uint8, mode="c")  # copy-on-write: never written
        return self._maps[location]


# TensorProto.DataType -> numpy, for the types a bundle's weights use.
_ONNX_DTYPES = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
}


class BundleRuntime:
    """A verified bundle with lazily created sessions and an in-memory task cache: what every model kind's
    runtime shares (DeviceRuntime for classifiers, generate.LMRuntime for decoder LMs)."""

    KIND = "classification"
    USE = "DeviceRuntime (run, predict, run_rows)"

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        *,
        options: RuntimeOptions | None = None,
        verify: bool = True,
        max_length: int | None = None,
        on_long: OnLong = "warn",
        factored: bool = True,
    ) -> None:
        """factored: run one-task batches on the factored graph when the bundle has it (False: the shared
        graph, which forms the factors from the coefficients on every call; the benchmarks' control)."""
        self.root = Path(bundle)
        self.manifest = contract.verify_bundle(self.root) if verify else contract.read_manifest(self.root)
        if self.manifest.kind != self.KIND:
            other = LM_USE if self.manifest.kind == "causal_lm" else BundleRuntime.USE
            raise EdgeEigenLoraError(
                f"{self.manifest.path}: kind is {self.manifest.kind!r}, but {type(self).__name__} runs "
                f"{self.KIND} bundles; open it with {other}."
            )
        self.options = options or RuntimeOptions()
        self.layout = self.manifest.layout
        self.on_long = on_long
        self.max_length = int(max_length or self.manifest.tokenizer.max_length)
        self._tokenizer: BundleTokenizer | None = None
        self._sessions: dict[str, Any] = {}
        self._tasks: dict[str, LoadedTask] = {}
        self._weights = SharedWeights(self.root) if self.options.share_weights else None
        self.factored = factored
        self._factors: OrderedDict[int, tuple[LoadedTask, dict[str, np.ndarray]]] = OrderedDict()

    # -- bundle contents -------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.manifest.hidden_size

    @property
    def basis_fingerprint(self) -> str:
        return self.manifest.basis_fingerprint

    def variants(self) -> list[str]:
        return list(self.manifest.variants)

    @property
    def has_train_step(self) -> bool:
        return self.manifest.has_graph(contract.TRAIN_STEP)

    def list_tasks(self) -> list[dict[str, Any]]:
        return [{"name": n, **t.to_json()} for n, t in sorted(self.manifest.tasks.items())]

    @property
    def tokenizer(self) -> BundleTokenizer:
        if self._tokenizer is None:
            self._tokenizer = BundleTokenizer(
                self.root, self.manifest.tokenizer, max_length=self.max_length, on_long=self.on_long
            )
        return self._tokenizer

    def vocab_size(self) -> int | None:
        try:
            return self.tokenizer.vocab_size
        except EdgeEigenLoraError:
            return None

    # -- sessions --------------------------------------------------------------------------------------
    def session(self, variant: str = contract.SHARED) -> Any:
        """The onnxruntime session of one graph variant (created on first use, then kept)."""
        if variant not in self._sessions:
            graph = self.manifest.graph(variant)
            use_ort = self.options.prefer_ort and graph.ort_file is not None
            path = contract.inside_bundle(
                self.root, graph.ort_file if use_ort else graph.file, str(self.manifest.path)
            )
            shared = None
            if self._weights is not None and not use_ort and graph.external_data:
                shared = self._weights.initializers(path, self.manifest, graph)
            self._sessions[variant] = make_session(path, self.options, shared)
        return self._sessions[variant]

    def close(self, variant: str | None = None) -> None:
        """Drop sessions (all, or one variant) to give their memory back."""
        for v in [variant] if variant else list(self._sessions):
            self._sessions.pop(v, None)

    # -- tasks -----------------------------------------------------------------------------------------
    def task(self, task: str | Task | LoadedTask) -> LoadedTask:
        """A cached, validated task: by name from the bundle, or a Task object (checked against the bundle)."""
        if isinstance(task, LoadedTask):
            return task
        if isinstance(task, Task):
            return self._load(task)
        cached = self._tasks.get(task)
        if cached is None:
            loaded = contract.load_bundle_task(self.manifest, task)
            cached = self._tasks[task] = self._load(loaded)
        return cached

    def _load(self, task: Task) -> LoadedTask:
        feeds = contract.task_feeds(task, self.manifest)  # refuses another kind, basis, layout or head size
        return LoadedTask(
            task.name,
            task,
            feeds[contract.COEFFICIENTS],
            feeds.get(contract.HEAD_WEIGHT),
            feeds.get(contract.HEAD_BIAS),
            list(task.labels),
        )

    # -- the factored graph -----------------------------------------------------------------------------
    FACTOR_CACHE = 4  # tasks whose factors are kept (SmolLM2 r=8 on q, k, v, o: 3.5 MiB each)

    @property
    def uses_factored(self) -> bool:
        """Whether one-task batches run the factored graph (asked for, or the bundle has no shared graph)."""
        has = self.manifest.has_graph
        return has(contract.FACTORED) and (self.factored or not has(contract.SHARED))

    def coefficient_graph(self, coefficients: np.ndarray) -> tuple[str, dict[str, np.ndarray]]:
        """(variant, feeds) that run a raw coefficient vector (no task, not cached), e.g. during training."""
        if self.uses_factored:
            return contract.FACTORED, self.form_factors(coefficients)
        return contract.SHARED, {contract.COEFFICIENTS: np.asarray(coefficients, np.float32)}

    def form_factors(self, coefficients: np.ndarray) -> dict[str, np.ndarray]:
        """Every module's A^T and B^T (the factored graph's inputs) from a coefficient vector [P]."""
        names = self.manifest.graph(contract.FACTORS).output_names
        vector = np.ascontiguousarray(coefficients, np.float32)
        outputs = self.session(contract.FACTORS).run(list(names), {contract.COEFFICIENTS: vector})
        return dict(zip(names, outputs, strict=True))

    def task_graph(self, task: str | Task | LoadedTask) -> tuple[str, dict[str, np.ndarray]]:
        """(variant, feeds) that run one task for a whole batch: the factored graph with the task's factors
        (formed on its first use, kept for the last FACTOR_CACHE tasks) when the bundle has it, else the
        shared graph with the coefficients."""
        loaded = self.task(task)
        if not self.uses_factored:
            return contract.SHARED, loaded.feeds()
        key = id(loaded)
        if key in self._factors:
            self._factors.move_to_end(key)
        else:
            factors = self.form_factors(loaded.coefficients)
            self._factors[key] = (loaded, factors)  # keeps `loaded` alive, so its id stays unique
            while len(self._factors) > self.FACTOR_CACHE:
                self._factors.popitem(last=False)
        feeds = dict(self._factors[key][1])
        if loaded.head_weight is not None:
            feeds.update({contract.HEAD_WEIGHT: loaded.head_weight, contract.HEAD_BIAS: loaded.head_bias})
        return contract.FACTORED, feeds

    def preload(self) -> list[str]:
        """Read every task of the bundle into the cache (then every switch is a lookup)."""
        return [self.task(name).name for name in sorted(self.manifest.tasks)]

    def add_task(self, task: Task, *, overwrite: bool = False) -> str:
        """Write a task into the bundle (atomically; only the new file is hashed) and cache it."""
        name = contract.add_task_object(self.root, task, overwrite=overwrite)
        self.manifest = contract.read_manifest(self.root)
        old = self._tasks.pop(name, None)
        if old is not None:
            self._factors.pop(id(old), None)
        self.task(name)
        return name


LM_USE = "edge_eigenlora.runtime.generate.LMRuntime (generate, stream)"


class DeviceRuntime(BundleRuntime):
    """A classification bundle on the device.

    `run(texts, task=...)` -> logits; `run_rows(texts, tasks=[...])` runs a different task per row;
    `train_step(...)` runs the train-step graph (loss + gradients) when the bundle carries one.
    """

    # -- running ---------------------------------------------------------------------------------------
    def encode(
        self,
        texts: Sequence[str] | None = None,
        input_ids: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Texts (tokenized here) or token ids (validated, cut at max_length) -> (ids, mask)."""
        if (texts is None) == (input_ids is None):
            raise EdgeEigenLoraError("pass either texts or input_ids (not both).")
        if texts is not None:
            return self.tokenizer(texts)
        has_vocab = any(f.endswith("tokenizer.json") for f in self.manifest.tokenizer.files)
        vocab = self.vocab_size() if has_vocab else None
        return check_ids(
            input_ids, attention_mask, vocab_size=vocab, max_length=self.max_length, on_long=self.on_long
        )

    def run(
        self,
        texts: Sequence[str] | None = None,
        *,
        task: str | Task | LoadedTask,
        input_ids: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Logits [N, labels] of one task for all rows (mini-batched; each batch padded to its longest row)."""
        variant, task_feeds = self.task_graph(task)
        session = self.session(variant)
        outs = []
        for ids, mask in self._batches(texts, input_ids, attention_mask, batch_size):
            feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask, **task_feeds}
            outs.append(session.run([contract.LOGITS], feeds)[0])
        return np.concatenate(outs)

    def _batches(
        self,
        texts: Sequence[str] | None,
        input_ids: np.ndarray | None,
        attention_mask: np.ndarray | None,
        batch_size: int,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        if batch_size < 1:
            raise EdgeEigenLoraError(f"batch_size must be >= 1, got {batch_size}.")
        if texts is not None:
            texts = [texts] if isinstance(texts, str) else list(texts)
            return [self.encode(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)] or [
                self.encode(texts)
            ]
        ids, mask = self.encode(None, input_ids, attention_mask)
        out = []
        for i in range(0, ids.shape[0], batch_size):
            m = mask[i : i + batch_size]
            width = max(int(m.sum(1).max()), 1)
            out.append((ids[i : i + batch_size, :width], m[:, :width]))
        return out

    def predict(
        self, texts: Sequence[str], *, task: str | Task | LoadedTask, batch_size: int = 32
    ) -> list[str]:
        """Label names (or indices as strings when the task has no names) for each text."""
        loaded = self.task(task)
        index = self.run(texts, task=loaded, batch_size=batch_size).argmax(-1)
        return [loaded.labels[i] if i < len(loaded.labels) else str(i) for i in index]

    def run_rows(
        self,
        texts: Sequence[str] | None = None,
        *,
        tasks: Sequence[str | Task | LoadedTask],
        input_ids: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Row i runs tasks[i]: one per-row graph call when the bundle has it, else one call per distinct task.

        Returns one logits vector per row, cut to that row's own label count (see `bundle.row_feeds`).
        """
        ids, mask = self.encode(texts, input_ids, attention_mask)
        if len(tasks) != ids.shape[0]:
            raise EdgeEigenLoraError(
                f"run_rows: {ids.shape[0]} rows but {len(tasks)} tasks; give one task per row."
            )
        loaded = [self.task(t) for t in tasks]
        if self.manifest.has_graph(contract.PER_ROW):
            feeds, counts = contract.row_feeds([t.feeds() for t in loaded])
            feeds.update({contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask})
            logits = self.session(contract.PER_ROW).run([contract.LOGITS], feeds)[0]
            return [logits[i, :n] for i, n in enumerate(counts)]
        out: list[np.ndarray | None] = [None] * len(loaded)
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(loaded):
            groups.setdefault(id(t), []).append(i)
        for rows in groups.values():
            sub = mask[rows]
            width = max(int(sub.sum(1).max()), 1)
            logits = self.run(
                input_ids=ids[rows, :width], attention_mask=sub[:, :width], task=loaded[rows[0]]
            )
            for j, i in enumerate(rows):
                out[i] = logits[j]
        return out  # type: ignore[return-value]

    def logits_with(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, params: dict[str, np.ndarray]
    ) -> np.ndarray:
        """Logits for raw parameters being trained (coefficients + head_weight + head_bias): the shared graph,
        or the factored graph through the factors graph (a bundle may ship only the factored one)."""
        head = {k: v for k, v in params.items() if k != contract.COEFFICIENTS}
        variant, feeds = self.coefficient_graph(params[contract.COEFFICIENTS])
        feeds = {contract.INPUT_IDS: input_ids, contract.ATTENTION_MASK: attention_mask, **head, **feeds}
        return self.session(variant).run([contract.LOGITS], feeds)[0]

    # -- training graph --------------------------------------------------------------------------------
    def train_step(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        labels: np.ndarray,
        coefficients: np.ndarray,
        head_weight: np.ndarray,
        head_bias: np.ndarray,
    ) -> dict[str, Any]:
        """Loss, logits and gradients (`grad_<input>`) of one batch (mean cross-entropy) from the train-step graph."""
        if not self.has_train_step:
            raise EdgeEigenLoraError(
                f"{self.root}: this bundle has no train-step graph; add one on the workstation "
                "(edge_eigenlora.train_graph.add_train_step) or train forward-only (trainer 'zo')."
            )
        session = self.session(contract.TRAIN_STEP)
        feeds = {
            contract.INPUT_IDS: input_ids,
            contract.ATTENTION_MASK: attention_mask,
            contract.LABELS: np.asarray(labels, np.int64),
            contract.COEFFICIENTS: coefficients,
            contract.HEAD_WEIGHT: head_weight,
            contract.HEAD_BIAS: head_bias,
        }
        names = list(contract.graph_output_names(self.manifest.kind, contract.TRAIN_STEP))
        return dict(zip(names, session.run(names, feeds), strict=True))


def switch_cost_us(runtime: DeviceRuntime, names: Sequence[str], repeats: int = 1000) -> float:
    """Mean microseconds to fetch a cached task's feeds (what switching task costs between runs)."""
    for n in names:
        runtime.task(n)
    start = time.perf_counter()
    for i in range(repeats):
        runtime.task(names[i % len(names)]).feeds()
    return (time.perf_counter() - start) / repeats * 1e6
