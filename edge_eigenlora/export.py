"""The bundle writer: export a model + basis to a bundle folder (graphs, shared weights, tokenizer, tasks).

The graphs come from `graph_modules` (torch) and `train_graph`; `quantize` and `onnx_tools` transform them;
this module decides what a bundle holds and writes it once: each file hashed as it is written, every graph's
large tensors stored once in `weights.data` (so a bundle with the shared, per-row, merged and train-step
graphs costs about one model), then the manifest.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from torch import nn

from edge_eigenlora import bundle as contract
from edge_eigenlora import quantize
from edge_eigenlora.basis import load_basis
from edge_eigenlora.decoder_graph import build_decoder_graph, decoder_info
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.graph_modules import build_graph
from edge_eigenlora.model import attach_basis, base_fingerprint, detect_kind
from edge_eigenlora.onnx_tools import WeightStore, clean_model, convert_to_ort, graph_io, op_counts
from edge_eigenlora.pretrained import hub_name, load_model
from edge_eigenlora.task import Task, load_task
from edge_eigenlora.train_graph import TRAIN_LOSS, build_train_step

__all__ = [
    "QUANT_MODES",
    "VARIANTS",
    "ExportConfig",
    "derive_bundle",
    "export_bundle",
    "write_onnx_adapter",
]

Kind = Literal["auto", "classification", "causal_lm"]
QuantMode = Literal["none", "int8", "int4"]
QUANT_MODES = contract.QUANT_MODES
VARIANTS = contract.INFERENCE_VARIANTS


@dataclass(frozen=True)
class ExportConfig:
    """What to build. Defaults: the desktop CPU target (fp32 base, int8 basis; see docs/export.md).

    rank: r of every task in the bundle (one rank per bundle).
    kind: "classification" (encoder + mean pooling + head inputs) or "causal_lm" (the step graph: logits over
        the vocabulary and the KV cache in and out, see `decoder_graph`); "auto" reads the model config (architectures ending in ForCausalLM -> causal_lm).
    variants: inference graphs to build; "merged" needs `merged_task` (a task name among the exported tasks);
        "factored" (factors fed as inputs, formed once per task switch) brings its "factors" graph with it.
    basis_quant / base_quant: "none", "int8" (basis: per-channel DequantizeLinear; base: dynamic int8
        MatMulInteger) or "int4" (MatMulNBits, block `block_size`).
    precision: "fp32" or "fp16" (fp16 for GPU execution providers; inputs and outputs stay float32).
    ort_format: also write .ort files (ORT Mobile, self-contained) with their required-operators config.
    onnx_adapters: also write each task as an ONNX Runtime `.onnx_adapter` file (shared variant inputs).
    max_length: the tokenizer's truncation length recorded in the manifest.
    train_step: also write the train-step graph (loss + gradients) for on-device training (fp32, its frozen
        weights shared with the fp32 inference graphs): a classifier's cross-entropy over labels, or a causal
        LM's next-token loss on the labelled (completion) tokens.
    """

    rank: int = 8
    kind: Kind = "auto"
    variants: tuple[str, ...] = (contract.SHARED,)
    basis_quant: QuantMode = "int8"
    base_quant: QuantMode = "none"
    precision: Literal["fp32", "fp16"] = "fp32"
    block_size: int = 32
    ort_format: bool = False
    onnx_adapters: bool = False
    merged_task: str | None = None
    max_length: int = 128
    target: str = "custom"
    train_step: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise EdgeEigenLoraError(f"ExportConfig.rank must be >= 1, got {self.rank}.")
        if self.kind not in ("auto",) + contract.KINDS:
            raise EdgeEigenLoraError(
                f"ExportConfig.kind must be auto, classification or causal_lm, got {self.kind!r}."
            )
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants or len(set(self.variants)) != len(self.variants):
            raise EdgeEigenLoraError(
                f"ExportConfig.variants must be a non-empty subset of {VARIANTS} without repeats, got {self.variants}."
            )
        for name in ("basis_quant", "base_quant"):
            if getattr(self, name) not in QUANT_MODES:
                raise EdgeEigenLoraError(
                    f"ExportConfig.{name} must be one of {QUANT_MODES}, got {getattr(self, name)!r}."
                )
        if self.precision not in ("fp32", "fp16"):
            raise EdgeEigenLoraError(f"ExportConfig.precision must be fp32 or fp16, got {self.precision!r}.")
        if self.precision == "fp16" and (self.basis_quant != "none" or self.base_quant != "none"):
            raise EdgeEigenLoraError(
                "ExportConfig: precision fp16 is for unquantized graphs; set basis_quant and base_quant to 'none'."
            )
        if self.block_size not in (16, 32, 64, 128):
            raise EdgeEigenLoraError(
                f"ExportConfig.block_size must be 16, 32, 64 or 128, got {self.block_size}."
            )
        if contract.MERGED in self.variants and not self.merged_task:
            raise EdgeEigenLoraError(
                "ExportConfig: the 'merged' variant folds one task: set merged_task (--merged-task NAME)."
            )
        if self.max_length < 1:
            raise EdgeEigenLoraError(f"ExportConfig.max_length must be >= 1, got {self.max_length}.")


def export_bundle(
    model_name_or_path: str | os.PathLike[str],
    basis_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: ExportConfig | None = None,
    tasks: Sequence[str | os.PathLike[str]] = (),
    model: nn.Module | None = None,
    tokenizer: Any = None,
) -> Path:
    """Export graphs (+ quantized / fp16 / .ort forms) and write a verified bundle folder; returns its path.

    `model`/`tokenizer` may be passed to skip loading (tests); `model_name_or_path` is then only recorded.
    """
    config = config or ExportConfig()
    out = _new_bundle_folder(out_dir)
    basis = load_basis(basis_path)
    if model is None:
        model, tokenizer, _ = load_model(model_name_or_path, config.kind)
    else:
        model = copy.deepcopy(model).float().eval()
    kind = detect_kind(model) if config.kind == "auto" else config.kind
    base_fp = base_fingerprint(model)
    plain = copy.deepcopy(model) if config.train_step else None  # the train step attaches its own basis
    attach_basis(model, basis, rank=config.rank)
    layout = contract.CoefficientLayout.from_basis(basis, config.rank)
    hidden = int(model.config.hidden_size)
    loaded = [load_task(p, expected_basis=basis.fingerprint) for p in tasks]
    for t, p in zip(loaded, tasks, strict=True):
        contract.check_task_fits(t, layout, kind, hidden, where=str(p))
    graphs = {}
    for variant in _graph_variants(config.variants):
        task = _merged_task(config, loaded) if variant == contract.MERGED else None
        if kind == "causal_lm":
            proto, _ = build_decoder_graph(model, basis, config.rank, variant, task=task)
        else:
            proto, _ = build_graph(model, basis, config.rank, variant, kind=kind, task=task)
        graphs[variant] = _transform(proto, variant, config, kind)
    if plain is not None:
        graphs[contract.TRAIN_STEP] = build_train_step(plain, basis, config.rank, kind=kind)[0]
    files = _tokenizer_files(tokenizer) if tokenizer is not None else {}
    decoder = None
    if kind == "causal_lm":
        template = getattr(tokenizer, "chat_template", None)
        chat = None
        if isinstance(template, str) and template:
            chat = "tokenizer/chat_template.jinja"
            files.setdefault(chat, template.encode("utf-8"))
        decoder = decoder_info(model, tokenizer, chat_template=chat)
    manifest = contract.Manifest(
        kind=kind,
        base_model=contract.BaseModelInfo(
            name=_public_name(hub_name(str(model_name_or_path))),
            fingerprint=base_fp,
            architecture=type(model).__name__,
            hidden_size=hidden,
        ),
        basis=contract.BasisInfo(basis.fingerprint, layout.modules, dict(layout.widths)),
        layout=layout,
        graphs=(),
        tokenizer=_tokenizer_settings(kind, tokenizer, config, decoder),
        target=config.target,
        decoder=decoder,
    )
    max_seq = int(getattr(model.config, "max_position_embeddings", 512))
    return _write_bundle(out, graphs, config, manifest, loaded, tokenizer_files=files, max_seq=max_seq)


def _tokenizer_settings(
    kind: str, tokenizer: Any, config: ExportConfig, decoder: contract.DecoderInfo | None
) -> contract.TokenizerSettings:
    """A classifier truncates at max_length and pads right; a decoder pads left (generation appends on the
    right) and never truncates a prompt silently: its limit is the context length."""
    if decoder is not None:
        return contract.TokenizerSettings(
            max_length=decoder.max_positions,
            padding_side="left",
            truncation=False,
            pooling="none",
            pad_token_id=getattr(tokenizer, "pad_token_id", None),
        )
    return contract.TokenizerSettings(
        max_length=config.max_length,
        padding_side=getattr(tokenizer, "padding_side", "right"),
        pooling="mean",
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
    )


def derive_bundle(
    src: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, config: ExportConfig
) -> Path:
    """A new bundle from an unquantized fp32 bundle: re-quantize / fp16 / .ort without re-exporting from torch.

    One torch export then serves every device target (the recipes in export/ use it). The train-step graph
    (fp32) is carried over when the source has one and `config.train_step` is set.
    """
    import onnx

    manifest = contract.verify_bundle(src)
    out = _new_bundle_folder(out_dir)
    if config.rank != manifest.layout.rank:
        raise EdgeEigenLoraError(
            f"{src}: the bundle has rank {manifest.layout.rank}; set ExportConfig.rank to it."
        )
    wanted = _graph_variants(config.variants) + ([contract.TRAIN_STEP] if config.train_step else [])
    graphs = {}
    for variant in wanted:
        entry = manifest.graph(variant)
        q = entry.quantization
        if q.basis != "none" or q.base != "none" or q.precision != "fp32":
            raise EdgeEigenLoraError(
                f"{src}: graph {entry.file} is already quantized ({q.to_json()}); derive from an fp32 bundle "
                "(export with --basis-quant none --base-quant none)."
            )
        if variant == contract.MERGED and entry.task != config.merged_task:
            raise EdgeEigenLoraError(
                f"{src}: the merged graph folds task {entry.task!r}, not {config.merged_task!r}."
            )
        proto = onnx.load(str(Path(src) / entry.file))  # with its external data
        graphs[variant] = (
            proto if variant == contract.TRAIN_STEP else _transform(proto, variant, config, manifest.kind)
        )
    tasks = [contract.load_bundle_task(manifest, n) for n in sorted(manifest.tasks)]
    settings = replace(manifest.tokenizer, files=())
    if manifest.decoder is None:
        settings = replace(settings, max_length=config.max_length)
    base = replace(manifest, graphs=(), tasks={}, files={}, tokenizer=settings, target=config.target)
    copied = {rel: (Path(src) / rel).read_bytes() for rel in manifest.tokenizer.files}
    max_seq = manifest.graph(contract.TRAIN_STEP).max_seq if config.train_step else None
    return _write_bundle(out, graphs, config, base, tasks, tokenizer_files=copied, max_seq=max_seq)


def _new_bundle_folder(out_dir: str | os.PathLike[str]) -> Path:
    """The output folder must be new or empty: a bundle ships exactly the files it lists."""
    out = Path(out_dir)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise EdgeEigenLoraError(f"{out} is not a folder; choose a new folder for the bundle (--out).")
    if out.is_dir() and any(out.iterdir()):
        what = "already holds a bundle" if (out / contract.MANIFEST).exists() else "is not empty"
        raise EdgeEigenLoraError(
            f"{out} {what}; choose a new or empty folder (--out), or delete it first. Files in it would ship "
            "inside the bundle."
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def _graph_variants(variants: Sequence[str]) -> list[str]:
    """The graphs that `variants` need: the factored graph brings the factors graph that forms its inputs."""
    out = list(variants)
    if contract.FACTORED in out:
        out.insert(out.index(contract.FACTORED) + 1, contract.FACTORS)
    return out


def _has_basis(variant: str) -> bool:
    return variant not in (contract.MERGED, contract.FACTORED)


def _transform(proto: Any, variant: str, config: ExportConfig, kind: str) -> Any:
    """Quantize the basis (where there is one) and the base (where there is one), or convert to fp16."""
    if _has_basis(variant):
        proto = quantize.quantize_basis(proto, config.basis_quant, block_size=config.block_size)
    if variant != contract.FACTORS:
        proto = quantize.quantize_base(
            proto, config.base_quant, block_size=config.block_size, decoder=kind == "causal_lm"
        )
    if config.precision == "fp16":
        proto = quantize.to_fp16(proto)
    return clean_model(proto)


def _quantization(variant: str, config: ExportConfig) -> contract.Quantization:
    if variant == contract.TRAIN_STEP:
        return contract.Quantization()
    basis = config.basis_quant if _has_basis(variant) else "none"
    base = config.base_quant if variant != contract.FACTORS else "none"
    return contract.Quantization(basis, base, config.precision, config.block_size)


def _merged_task(config: ExportConfig, loaded: list[Task]) -> Task:
    task = next((t for t in loaded if t.name == config.merged_task), None)
    if task is None:
        raise EdgeEigenLoraError(
            f"merged_task {config.merged_task!r} is not among the exported tasks {[t.name for t in loaded]}; "
            "pass its file with --task."
        )
    return task


def _write_bundle(
    out: Path,
    graphs: dict[str, Any],
    config: ExportConfig,
    manifest: contract.Manifest,
    tasks: list[Task],
    *,
    tokenizer: Any = None,
    tokenizer_files: dict[str, bytes] | None = None,
    max_seq: int | None = None,
) -> Path:
    """Write every file once (graphs with shared weights, .ort, tokenizer, tasks), then the manifest; verify."""
    writer = contract.BundleWriter(out)
    store = WeightStore()
    entries = []
    for variant, proto in graphs.items():
        name = contract.graph_file(variant)
        ort = convert_to_ort(proto, out, Path(name).stem) if config.ort_format else None
        inputs, outputs = graph_io(proto)
        counts = op_counts(proto)
        store.used = set()
        store.add_graph(proto)
        path = writer.write_bytes(name, proto.SerializeToString())
        entry = contract.GraphEntry(
            variant=variant,
            file=name,
            inputs=inputs,
            outputs=outputs,
            quantization=_quantization(variant, config),
            op_counts=counts,
            bytes=path.stat().st_size,
            external_data=tuple(sorted(store.used)),
            task=config.merged_task if variant == contract.MERGED else None,
            loss=TRAIN_LOSS if variant == contract.TRAIN_STEP else None,
            max_seq=max_seq if variant == contract.TRAIN_STEP else None,
        )
        if ort is not None:
            stem = Path(name).stem
            writer.write_bytes(f"{stem}.ort", ort[0])
            writer.write_bytes(f"{stem}.required_operators.config", ort[1])
            entry = replace(
                entry, ort_file=f"{stem}.ort", required_operators=f"{stem}.required_operators.config"
            )
        entries.append(entry)
    if store.size:
        writer.write_chunks(store.location, store.data())
    files = dict(tokenizer_files or {})
    if tokenizer is not None:
        files.update(_tokenizer_files(tokenizer))
    for rel, data in sorted(files.items()):
        writer.write_bytes(rel, data)
    task_entries = {}
    for t in tasks:
        rel = writer.write_task(t)
        num_labels = None if t.head_weight is None else int(t.head_weight.shape[0])
        task_entries[t.name] = contract.TaskEntry(rel, t.kind, tuple(t.labels), num_labels)
    settings = replace(manifest.tokenizer, files=tuple(sorted(files)))
    writer.write_manifest(replace(manifest, graphs=tuple(entries), tasks=task_entries, tokenizer=settings))
    if config.onnx_adapters:
        for t in tasks:
            write_onnx_adapter(out, t)
    contract.verify_bundle(out)
    return out


def _tokenizer_files(tokenizer: Any) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        written = tokenizer.save_pretrained(tmp)
        return {
            f"tokenizer/{Path(p).name}": Path(p).read_bytes() for p in sorted(written) if Path(p).is_file()
        }


def _public_name(name: str) -> str:
    """A hub id as is; a local folder by its last component only (no absolute path in the bundle)."""
    return Path(name).name if os.path.isabs(name) or os.path.exists(name) else name


def write_onnx_adapter(bundle_dir: str | os.PathLike[str], task: Task) -> Path:
    """The task as an ONNX Runtime `.onnx_adapter` (for ORT's multi-LoRA API) beside its safetensors file.

    Caveat: ORT's Python `run` rejects a feed lacking a REQUIRED input even when an active adapter supplies
    it, and our inputs are required. Python users feed the arrays directly (`bundle.task_feeds`).
    """
    import onnxruntime as ort

    with contract.update_bundle(bundle_dir) as (manifest, writer):
        feeds = contract.task_feeds(task, manifest)
        fmt = ort.AdapterFormat()
        fmt.set_adapter_version(1)
        fmt.set_model_version(contract.FORMAT_VERSION)
        fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()})
        rel = f"tasks/{contract.check_task_name(task.name)}.onnx_adapter"
        with tempfile.TemporaryDirectory() as tmp:
            tmp_file = Path(tmp) / "adapter.onnx_adapter"
            fmt.export_adapter(str(tmp_file))
            path = writer.write_bytes(rel, tmp_file.read_bytes())
        writer.manifest = replace(manifest, files=dict(writer.files))
    return path
