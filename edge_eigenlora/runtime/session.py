"""Open a bundle on the device and run tasks: onnxruntime + numpy only.

A task is a few KB of coefficients fed as graph inputs, so every task shares one loaded graph. Tasks are read
once and cached as ready-to-feed arrays: switching task is a dict lookup (microseconds), not a session load.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_eigenlora import bundle as bundle_mod
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.runtime.tokenize import BundleTokenizer, OnLong, check_ids
from edge_eigenlora.task import Task

TRAIN_VARIANT = "train_step"
Optimization = Literal["disable", "basic", "extended", "all"]


@dataclass(frozen=True)
class RuntimeOptions:
    """onnxruntime session settings that matter on a phone.

    threads: intra-op threads (0: onnxruntime's default, one per core). arena: the CPU memory arena (faster
    repeated runs, higher peak RSS; off on small devices). mem_pattern: pre-planned activation buffers.
    prepacking: MLAS weight pre-packing (faster matmuls, a second copy of the weights in memory).
    prefer_ort: load the .ort (ORT Mobile) file of a graph when the bundle has one.
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

    @classmethod
    def low_memory(cls, threads: int = 0) -> RuntimeOptions:
        """Arena off and no constant folding: the train step peaks at ~0.4x PyTorch LoRA training (measured)."""
        return cls(threads=threads, arena=False, disabled_optimizers=("ConstantFolding",))

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise EdgeEigenLoraError(
                f"RuntimeOptions.threads must be >= 0 (0 = all cores), got {self.threads}."
            )
        if self.optimization not in ("disable", "basic", "extended", "all"):
            raise EdgeEigenLoraError(
                f"RuntimeOptions.optimization must be disable, basic, extended or all, got {self.optimization!r}."
            )


def make_session(path: str | os.PathLike[str], options: RuntimeOptions) -> Any:
    """An onnxruntime CPU session configured by `options`."""
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
    head_weight: np.ndarray  # [labels, hidden]
    head_bias: np.ndarray  # [labels]
    labels: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return int(self.head_weight.shape[0])

    def feeds(self) -> dict[str, np.ndarray]:
        return {
            "coefficients": self.coefficients,
            "head_weight": self.head_weight,
            "head_bias": self.head_bias,
        }


class DeviceRuntime:
    """A verified bundle with lazily created sessions and an in-memory task cache.

    `run(texts, task=...)` -> logits; `run_rows(texts, tasks=[...])` runs a different task per row;
    `train_step(...)` runs the train-step graph (loss + gradients) when the bundle carries one.
    """

    def __init__(self, bundle: str | os.PathLike[str], *, options: RuntimeOptions | None = None,
                 verify: bool = True, max_length: int | None = None, on_long: OnLong = "warn") -> None:  # fmt: skip
        self.root = Path(bundle)
        self.manifest = bundle_mod.verify_bundle(self.root) if verify else bundle_mod.read_manifest(self.root)
        if self.manifest.kind != "classification":
            raise EdgeEigenLoraError(
                f"{self.root / bundle_mod.MANIFEST}: kind is {self.manifest.kind!r}; the device runtime runs "
                "classification bundles (text -> labels)."
            )
        self.options = options or RuntimeOptions()
        self.layout = self.manifest.layout
        self.on_long = on_long
        settings = dict(self.manifest.data.get("tokenizer") or {})
        self.max_length = int(max_length or settings.get("max_length") or 128)
        self._settings = settings
        self._tokenizer: BundleTokenizer | None = None
        self._sessions: dict[str, Any] = {}
        self._tasks: dict[str, LoadedTask] = {}

    # -- bundle contents -------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.manifest.hidden_size

    @property
    def basis_fingerprint(self) -> str:
        return self.manifest.basis_fingerprint

    def variants(self) -> list[str]:
        return [g["variant"] for g in self.manifest.data["graphs"]]

    @property
    def has_train_step(self) -> bool:
        return TRAIN_VARIANT in self.variants()

    def list_tasks(self) -> list[dict[str, Any]]:
        return [{"name": n, **info} for n, info in sorted(self.manifest.tasks.items())]

    @property
    def tokenizer(self) -> BundleTokenizer:
        if self._tokenizer is None:
            self._tokenizer = BundleTokenizer(
                self.root, self._settings, max_length=self.max_length, on_long=self.on_long
            )
        return self._tokenizer

    def vocab_size(self) -> int | None:
        try:
            return self.tokenizer._tok.get_vocab_size()
        except EdgeEigenLoraError:
            return None

    # -- sessions --------------------------------------------------------------------------------------
    def session(self, variant: str = "shared") -> Any:
        """The onnxruntime session of one graph variant (created on first use, then kept)."""
        if variant not in self._sessions:
            graph = self.manifest.graph(variant)
            rel = (
                graph.get("ort_file") if self.options.prefer_ort and graph.get("ort_file") else graph["file"]
            )
            path = bundle_mod.inside_bundle(self.root, rel, str(self.root / bundle_mod.MANIFEST))
            self._sessions[variant] = make_session(path, self.options)
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
            return self._load(task, where=f"task {task.name!r}")
        cached = self._tasks.get(task)
        if cached is None:
            loaded = bundle_mod.load_bundle_task(self.manifest, task)
            cached = self._tasks[task] = self._load(loaded, where=f"task {task!r}")
        return cached

    def _load(self, task: Task, where: str) -> LoadedTask:
        if task.basis_fingerprint != self.basis_fingerprint:
            raise EdgeEigenLoraError(
                f"{where} was trained for basis {task.basis_fingerprint[:12]} but this bundle carries basis "
                f"{self.basis_fingerprint[:12]}. Coefficients only mean something on their own basis: re-train "
                "the task on this bundle."
            )
        feeds = bundle_mod.task_feeds(task, self.manifest)
        return LoadedTask(task.name, task, feeds["coefficients"], feeds["head_weight"], feeds["head_bias"],
                          list(task.labels))  # fmt: skip

    def preload(self) -> list[str]:
        """Read every task of the bundle into the cache (then every switch is a lookup)."""
        return [self.task(name).name for name in sorted(self.manifest.tasks)]

    def add_task(self, task: Task) -> str:
        """Write a task into the bundle (atomically; manifest re-hashed) and cache it."""
        name = bundle_mod.add_task_object(self.root, task)
        self.manifest = bundle_mod.read_manifest(self.root)
        self._tasks.pop(name, None)
        self.task(name)
        return name

    # -- running ---------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str] | None = None, input_ids: np.ndarray | None = None,
               attention_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Texts (tokenized here) or token ids (validated, cut at max_length) -> (ids, mask)."""
        if (texts is None) == (input_ids is None):
            raise EdgeEigenLoraError("pass either texts or input_ids (not both).")
        if texts is not None:
            return self.tokenizer(texts)
        vocab = (
            self.vocab_size()
            if any(f.endswith("tokenizer.json") for f in self._settings.get("files", []))
            else None
        )
        return check_ids(
            input_ids, attention_mask, vocab_size=vocab, max_length=self.max_length, on_long=self.on_long
        )

    def run(self, texts: Sequence[str] | None = None, *, task: str | Task | LoadedTask,
            input_ids: np.ndarray | None = None, attention_mask: np.ndarray | None = None,
            batch_size: int = 32) -> np.ndarray:  # fmt: skip
        """Logits [N, labels] of one task for all rows (mini-batched; each batch padded to its longest row)."""
        loaded = self.task(task)
        session = self.session("shared")
        outs = []
        for ids, mask in self._batches(texts, input_ids, attention_mask, batch_size):
            outs.append(
                session.run(["logits"], {"input_ids": ids, "attention_mask": mask, **loaded.feeds()})[0]
            )
        return np.concatenate(outs)

    def _batches(self, texts: Sequence[str] | None, input_ids: np.ndarray | None, attention_mask: np.ndarray | None,
                 batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
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

    def run_rows(self, texts: Sequence[str] | None = None, *, tasks: Sequence[str | Task | LoadedTask],
                 input_ids: np.ndarray | None = None, attention_mask: np.ndarray | None = None) -> list[np.ndarray]:  # fmt: skip
        """Row i runs tasks[i]: one per-row graph call when the bundle has it, else one call per distinct task.

        Returns one logits vector per row (tasks may have different label counts).
        """
        ids, mask = self.encode(texts, input_ids, attention_mask)
        if len(tasks) != ids.shape[0]:
            raise EdgeEigenLoraError(
                f"run_rows: {ids.shape[0]} rows but {len(tasks)} tasks; give one task per row."
            )
        loaded = [self.task(t) for t in tasks]
        if "per_row" in self.variants():
            width = max(t.num_labels for t in loaded)
            hw = np.zeros((len(loaded), width, self.hidden_size), np.float32)
            hb = np.full((len(loaded), width), -np.inf, np.float32)
            for i, t in enumerate(loaded):
                hw[i, : t.num_labels], hb[i, : t.num_labels] = t.head_weight, t.head_bias
            feeds = {"input_ids": ids, "attention_mask": mask, "coefficients": np.stack([t.coefficients for t in loaded]),
                     "head_weight": hw, "head_bias": hb}  # fmt: skip
            logits = self.session("per_row").run(["logits"], feeds)[0]
            return [logits[i, : t.num_labels] for i, t in enumerate(loaded)]
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

    def embed(self, texts: Sequence[str] | None = None, *, task: str | Task | LoadedTask,
              input_ids: np.ndarray | None = None, attention_mask: np.ndarray | None = None,
              batch_size: int = 32) -> np.ndarray:  # fmt: skip
        """Pooled sentence embeddings [N, hidden] under a task's coefficients (identity head through the graph)."""
        loaded = self.task(task)
        eye = np.eye(self.hidden_size, dtype=np.float32)
        feeds = {
            "coefficients": loaded.coefficients,
            "head_weight": eye,
            "head_bias": np.zeros(self.hidden_size, np.float32),
        }
        session = self.session("shared")
        outs = [session.run(["logits"], {"input_ids": i, "attention_mask": m, **feeds})[0]
                for i, m in self._batches(texts, input_ids, attention_mask, batch_size)]  # fmt: skip
        return np.concatenate(outs)

    # -- training graph --------------------------------------------------------------------------------
    def train_step(self, input_ids: np.ndarray, attention_mask: np.ndarray, labels: np.ndarray,
                   coefficients: np.ndarray, head_weight: np.ndarray, head_bias: np.ndarray) -> dict[str, Any]:  # fmt: skip
        """Loss, logits and gradients of one batch (mean cross-entropy) from the train-step graph."""
        if not self.has_train_step:
            raise EdgeEigenLoraError(
                f"{self.root}: this bundle has no train-step graph; add one on the workstation "
                "(edge_eigenlora.train_graph.add_train_step) or train forward-only (trainer 'zo')."
            )
        session = self.session(TRAIN_VARIANT)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": np.asarray(labels, np.int64),
                 "coefficients": coefficients, "head_weight": head_weight, "head_bias": head_bias}  # fmt: skip
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))


def switch_cost_us(runtime: DeviceRuntime, names: Sequence[str], repeats: int = 1000) -> float:
    """Mean microseconds to fetch a cached task's feeds (what switching task costs between runs)."""
    for n in names:
        runtime.task(n)
    start = time.perf_counter()
    for i in range(repeats):
        runtime.task(names[i % len(names)]).feeds()
    return (time.perf_counter() - start) / repeats * 1e6
