"""ONNX inference graphs for a model with a basis attached, and the bundle writer.

Graph building needs torch; the bundle format itself (manifest, packing, verify) lives in `bundle.py`,
which the device runtime imports without torch.

Three graph variants:
- "shared": `coefficients` [P] and the head ([labels, hidden], [labels]) are shared by the whole batch;
- "per_row": `coefficients` [batch, P] and the head per row, so each row of one batch runs its own task;
- "merged": one fixed task folded into the weights (delta W added to W, head as constants); zero adapter cost.

Per adapted Linear the graph forms A^T = U_A alpha_A (d_in x r) and B^T = alpha_B^T U_B^T (r x d_out) once
per call and adds (x A^T) B^T per token: r (d_in + d_out) multiply-adds per token, what unmerged LoRA costs.
The basis is stored transposed (U^T: width x d), so each factor is a MatMul with a constant right-hand
weight: the form that per-channel int8 DequantizeLinear and 4-bit MatMulNBits quantize.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from edge_eigenlora import bundle as bundle_mod
from edge_eigenlora.basis import Basis, load_basis
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import tensors_fingerprint, write_bytes_atomic
from edge_eigenlora.layers import EigenLoraLinear
from edge_eigenlora.model import apply_task, attach_basis, eigenlora_layers
from edge_eigenlora.task import Task, load_task

Variant = Literal["shared", "per_row", "merged"]
Kind = Literal["auto", "classification", "causal_lm"]
QuantMode = Literal["none", "int8", "int4"]
VARIANTS: tuple[str, ...] = ("shared", "per_row", "merged")
QUANT_MODES: tuple[str, ...] = ("none", "int8", "int4")
OPSET = 18
BASIS_SUFFIXES = (".U_A_t", ".U_B_t")


@dataclass(frozen=True)
class ExportConfig:
    """What to build. Defaults: the desktop CPU target (fp32 base, int8 basis; see docs/export.md).

    rank: r of every task in the bundle (one rank per bundle).
    kind: "classification" (encoder + mean pooling + head inputs) or "causal_lm" (logits over the vocabulary);
        "auto" reads the model config (architectures ending in ForCausalLM -> causal_lm).
    variants: graphs to build; "merged" needs `merged_task` (a task name among the exported tasks).
    basis_quant / base_quant: "none", "int8" (basis: per-channel DequantizeLinear; base: dynamic int8
        MatMulInteger) or "int4" (MatMulNBits, block `block_size`).
    precision: "fp32" or "fp16" (fp16 for GPU execution providers; inputs and outputs stay float32).
    ort_format: also write .ort files (ORT Mobile) with their required-operators config.
    onnx_adapters: also write each task as an ONNX Runtime `.onnx_adapter` file (shared variant inputs).
    max_length: the tokenizer's truncation length recorded in the manifest.
    train_step: also write the train-step graph (loss + gradients) for on-device training (classification).
    """

    rank: int = 8
    kind: Kind = "auto"
    variants: tuple[str, ...] = ("shared",)
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
        if self.kind not in ("auto", "classification", "causal_lm"):
            raise EdgeEigenLoraError(
                f"ExportConfig.kind must be auto, classification or causal_lm, got {self.kind!r}."
            )
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise EdgeEigenLoraError(
                f"ExportConfig.variants must be a non-empty subset of {VARIANTS}, got {self.variants}."
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
        if "merged" in self.variants and not self.merged_task:
            raise EdgeEigenLoraError(
                "ExportConfig: the 'merged' variant folds one task: set merged_task (--merged-task NAME)."
            )
        if self.max_length < 1:
            raise EdgeEigenLoraError(f"ExportConfig.max_length must be >= 1, got {self.max_length}.")


# ----------------------------------------------------------------------------------------------
# Export modules
# ----------------------------------------------------------------------------------------------


class _ExportAdapter(nn.Module):
    """Stands in for an EigenLoraLinear in the export copy: base Linear, transposed basis, per-call factors."""

    def __init__(self, layer: EigenLoraLinear) -> None:
        super().__init__()
        self.base = layer.base
        self.register_buffer("U_A_t", layer.U_A.T.contiguous().float())  # width x d_in
        self.register_buffer("U_B_t", layer.U_B.T.contiguous().float())  # width x d_out
        self._a_t: torch.Tensor | None = None
        self._b_t: torch.Tensor | None = None

    def set_coefficients(self, alpha_a: torch.Tensor, alpha_b: torch.Tensor) -> None:
        """alpha: [width, r] (shared) or [batch, width, r] (per row). Forms the factors once per call."""
        self._a_t = (alpha_a.transpose(-1, -2) @ self.U_A_t).transpose(-1, -2)  # [.., d_in, r]
        self._b_t = alpha_b.transpose(-1, -2) @ self.U_B_t  # [.., r, d_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self._a_t) @ self._b_t


class AdapterGraph(nn.Module):
    """forward(input_ids, attention_mask, coefficients[, head_weight, head_bias]) -> logits."""

    def __init__(
        self, model: nn.Module, layout: bundle_mod.CoefficientLayout, kind: str, per_row: bool
    ) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.per_row = per_row
        self.segments = [(m, layout.module_offset(m), layout.widths[m]) for m in layout.modules]
        self.rank = layout.rank
        self.adapters = {m: _find_adapter(model, m) for m in layout.modules}

    def _set(self, coefficients: torch.Tensor) -> None:
        r = self.rank
        for module, offset, width in self.segments:
            n = width * r
            if self.per_row:
                a = coefficients[:, offset : offset + n].reshape(-1, width, r)
                b = coefficients[:, offset + n : offset + 2 * n].reshape(-1, width, r)
            else:
                a = coefficients[offset : offset + n].reshape(width, r)
                b = coefficients[offset + n : offset + 2 * n].reshape(width, r)
            self.adapters[module].set_coefficients(a, b)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, coefficients: torch.Tensor,
                head_weight: torch.Tensor | None = None, head_bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        self._set(coefficients)
        if self.kind == "causal_lm":
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        pooled = mean_pool(self.model, input_ids, attention_mask)
        if self.per_row:
            return torch.einsum("bh,blh->bl", pooled, head_weight) + head_bias
        return pooled @ head_weight.T + head_bias


class _MergedGraph(nn.Module):
    def __init__(self, model: nn.Module, kind: str, head: nn.Linear | None) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "causal_lm":
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return self.head(mean_pool(self.model, input_ids, attention_mask))


def mean_pool(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _find_adapter(model: nn.Module, basis_module: str) -> _ExportAdapter:
    for m in model.modules():
        if isinstance(m, _ExportAdapter) and getattr(m, "basis_module", None) == basis_module:
            return m
    raise EdgeEigenLoraError(f"basis module {basis_module!r} is not attached to the model being exported.")


def _replace_layers(model: nn.Module, make: Any) -> None:
    for name, layer in list(eigenlora_layers(model).items()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(layer))


def adapter_copy(model: nn.Module) -> nn.Module:
    """A copy of an attached model whose EigenLoraLinears are export adapters (coefficients from inputs)."""
    model = copy.deepcopy(model)

    def make(layer: EigenLoraLinear) -> nn.Module:
        if layer.merged:
            raise EdgeEigenLoraError("unmerge the model before exporting the adapter graph.")
        adapter = _ExportAdapter(layer)
        adapter.basis_module = layer.basis_module  # type: ignore[assignment]
        return adapter

    _replace_layers(model, make)
    return model.eval()


def _merged_copy(model: nn.Module, task: Task) -> nn.Module:
    model = copy.deepcopy(model)
    apply_task(model, task)

    def make(layer: EigenLoraLinear) -> nn.Module:
        layer.merge()
        return layer.base

    _replace_layers(model, make)
    return model.eval()


def detect_kind(model: nn.Module) -> str:
    archs = list(getattr(getattr(model, "config", None), "architectures", None) or [])
    if any(a.endswith("ForCausalLM") for a in archs) or hasattr(model, "lm_head"):
        return "causal_lm"
    return "classification"


# ----------------------------------------------------------------------------------------------
# Graph export and cleaning
# ----------------------------------------------------------------------------------------------


def _dummy(model: nn.Module, per_row: bool, kind: str, layout: bundle_mod.CoefficientLayout | None,
           hidden: int, labels: int = 3, batch: int = 2, seq: int = 7) -> tuple[tuple, dict]:  # fmt: skip
    vocab = int(getattr(model.config, "vocab_size", 100))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[1, -2:] = 0
    B, S, L = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("labels")
    if layout is None:
        return (ids, mask), {"input_ids": {0: B, 1: S}, "attention_mask": {0: B, 1: S}}
    P = layout.size
    coeffs = torch.randn((batch, P) if per_row else (P,), generator=g) * 0.01
    args: tuple = (ids, mask, coeffs)
    shapes: dict = {
        "input_ids": {0: B, 1: S},
        "attention_mask": {0: B, 1: S},
        "coefficients": {0: B} if per_row else None,
    }
    if kind == "classification":
        if per_row:
            args += (torch.randn(batch, labels, hidden, generator=g), torch.randn(batch, labels, generator=g))
            shapes.update(head_weight={0: B, 1: L}, head_bias={0: B, 1: L})
        else:
            args += (torch.randn(labels, hidden, generator=g), torch.randn(labels, generator=g))
            shapes.update(head_weight={0: L}, head_bias={0: L})
    return args, shapes


def export_onnx(module: nn.Module, args: tuple, dynamic_shapes: dict, input_names: list[str]) -> Any:
    """torch -> onnx.ModelProto (dynamo exporter), cleaned of metadata and source paths."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "graph.onnx"
        program = torch.onnx.export(
            module, args, dynamo=True, dynamic_shapes=dynamic_shapes, input_names=input_names,
            output_names=["logits"], opset_version=OPSET, optimize=True, verbose=False, report=False,
        )  # fmt: skip
        program.save(str(path), external_data=False)
        model = onnx.load(str(path))
    return clean_model(model)


def clean_model(model: Any) -> Any:
    """Drop node metadata, doc strings and producer paths: the shipped graph names no file of this machine."""
    model.doc_string = ""
    del model.metadata_props[:]

    def clean_graph(graph: Any) -> None:
        graph.doc_string = ""
        for item in list(graph.input) + list(graph.output) + list(graph.value_info) + list(graph.initializer):
            item.doc_string = ""
            del item.metadata_props[:]
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.g is not None and attr.HasField("g"):
                    clean_graph(attr.g)
        del graph.metadata_props[:]

    clean_graph(model.graph)
    for fn in model.functions:
        fn.doc_string = ""
        del fn.metadata_props[:]
        for node in fn.node:
            node.doc_string = ""
            del node.metadata_props[:]
    model.producer_name = "edge-eigenlora"
    return model


def build_graph(model: nn.Module, basis: Basis, rank: int, variant: str, *, kind: str | None = None,
                task: Task | None = None) -> tuple[Any, bundle_mod.CoefficientLayout]:  # fmt: skip
    """The fp32 ONNX graph of one variant for a model with `basis` attached (at `rank`)."""
    kind = kind or detect_kind(model)
    layout = bundle_mod.CoefficientLayout.from_basis(basis, rank)
    hidden = int(model.config.hidden_size)
    if variant == "merged":
        if task is None:
            raise EdgeEigenLoraError("the merged variant needs a task to fold.")
        merged = _merged_copy(model, task)
        head = None
        if kind == "classification":
            if task.head_weight is None:
                raise EdgeEigenLoraError(f"task {task.name!r} has no head; a merged classifier needs one.")
            head = nn.Linear(hidden, task.head_weight.shape[0])
            with torch.no_grad():
                head.weight.copy_(torch.from_numpy(np.asarray(task.head_weight, np.float32)))
                bias = task.head_bias if task.head_bias is not None else np.zeros(task.head_weight.shape[0])
                head.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
        module = _MergedGraph(merged, kind, head).eval()
        args, shapes = _dummy(model, False, kind, None, hidden)
    else:
        module = AdapterGraph(adapter_copy(model), layout, kind, per_row=variant == "per_row").eval()
        args, shapes = _dummy(model, variant == "per_row", kind, layout, hidden)
    names = list(shapes)
    return export_onnx(module, args, shapes, names), layout


# ----------------------------------------------------------------------------------------------
# Op analysis (used by tests and reports)
# ----------------------------------------------------------------------------------------------


def op_counts(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def basis_nodes(model: Any) -> list[str]:
    """Names of the MatMul / MatMulNBits nodes whose constant weight is (derived from) a basis tensor."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "MatMulNBits") or len(node.input) < 2:
            continue
        src = node.input[1]
        if src in producers and producers[src].op_type == "DequantizeLinear":
            src = producers[src].input[0]
        if src.endswith(BASIS_SUFFIXES) or any(
            src.endswith(s + "_Q4") or src.endswith(s + "_q") for s in BASIS_SUFFIXES
        ):
            out.append(node.name)
    return out


def per_token_matmul_widths(model: Any) -> list[tuple[str, str, list]]:
    """(node, op, shapes of its other inputs) for every matmul fed by a per-token tensor.

    A per-token tensor depends on input_ids or attention_mask. The efficient form has no such matmul whose
    other operand is a basis-sized (width) tensor.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [
            d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim
        ]
        shapes[vi.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    tainted = {"input_ids", "attention_mask"}
    for node in model.graph.node:  # graph nodes are topologically sorted
        if any(i in tainted for i in node.input):
            tainted.update(node.output)
    rows = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "MatMulNBits", "MatMulInteger", "Einsum"):
            if any(i in tainted for i in node.input):
                others = [shapes.get(i) for i in node.input if i and i not in tainted]
                rows.append((node.name, node.op_type, others))
    return rows


# ----------------------------------------------------------------------------------------------
# Bundle writer
# ----------------------------------------------------------------------------------------------


def load_model(model_name_or_path: str | os.PathLike[str], kind: str) -> tuple[nn.Module, Any, Path]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from edge_eigenlora.pretrained import load_encoder, resolve_model_path

    path = resolve_model_path(str(model_name_or_path))
    if kind == "auto":
        archs = list(AutoConfig.from_pretrained(path, local_files_only=True).architectures or [])
        kind = "causal_lm" if any(a.endswith("ForCausalLM") for a in archs) else "classification"
    if kind == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(
            path, attn_implementation="eager", local_files_only=True
        ).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    else:
        model, tokenizer = load_encoder(str(path))
    return model.float(), tokenizer, path


def _tokenizer_files(tokenizer: Any, out: Path) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        written = tokenizer.save_pretrained(tmp)
        names = []
        for f in sorted(Path(p) for p in written):
            if f.is_file():
                dest = out / "tokenizer" / f.name
                write_bytes_atomic(dest, f.read_bytes())
                names.append(f"tokenizer/{f.name}")
    return names


def graph_io(model: Any) -> tuple[list[dict], list[dict]]:
    from onnx import helper

    init = {i.name for i in model.graph.initializer}

    def row(vi: Any) -> dict:
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in vi.type.tensor_type.shape.dim
        ]
        return {
            "name": vi.name,
            "dtype": helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name,
            "shape": dims,
        }

    return [row(v) for v in model.graph.input if v.name not in init], [row(v) for v in model.graph.output]


def rename_dynamic_dims(model: Any, names: dict[str, list[str | None]]) -> None:
    """Rename the exporter's dynamic axes (s0, s1, ...) after the graph inputs they appear in, everywhere."""
    mapping: dict[str, str] = {}
    for vi in model.graph.input:
        for dim, new in zip(vi.type.tensor_type.shape.dim, names.get(vi.name, []), strict=False):
            if new and dim.dim_param:
                mapping[dim.dim_param] = new
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]


def _rename_dims(model: Any, kind: str, per_row: bool) -> None:
    """Give the dynamic axes the contract's names (batch, seq, labels) instead of the exporter's s0, s1..."""
    names = {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    names["coefficients"] = ["batch", None] if per_row else [None]
    names["head_weight"] = ["batch", "labels", None] if per_row else ["labels", None]
    names["head_bias"] = ["batch", "labels"] if per_row else ["labels"]
    rename_dynamic_dims(model, names)
    out = model.graph.output[0].type.tensor_type.shape.dim
    want = ["batch", "seq", "vocab"] if kind == "causal_lm" else ["batch", "labels"]
    for dim, new in zip(out, want, strict=False):
        if dim.dim_param:
            dim.dim_param = new


def convert_to_ort(onnx_path: Path) -> tuple[Path, Path]:
    """ORT-format (.ort) file + its required-operators config, via onnxruntime's own converter."""
    out_dir = onnx_path.parent
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / onnx_path.name
        shutil.copyfile(onnx_path, src)
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
               "--output_dir", tmp, "--optimization_style", "Fixed"]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        ort_file = next(Path(tmp).glob("*.ort"), None)
        config = next(Path(tmp).glob("*required_operators*.config"), None)
        if result.returncode != 0 or ort_file is None or config is None:
            tail = (result.stdout + result.stderr)[-600:]
            raise EdgeEigenLoraError(f"ORT-format conversion of {onnx_path.name} failed: {tail}")
        ort_dest = out_dir / (onnx_path.stem + ".ort")
        cfg_dest = out_dir / (onnx_path.stem + ".required_operators.config")
        write_bytes_atomic(ort_dest, ort_file.read_bytes())
        # The config's comment lines name the temporary input path: keep only the operator lines.
        lines = [ln for ln in config.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        write_bytes_atomic(cfg_dest, ("\n".join(lines) + "\n").encode())
    return ort_dest, cfg_dest


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over the base model's own weights (adapters and basis excluded)."""
    tensors = {
        n: t.detach().float().numpy()
        for n, t in model.state_dict().items()
        if "eigenlora_" not in n and not n.endswith((".U_A", ".U_B"))
    }
    tensors = {n.replace(".base.", "."): t for n, t in tensors.items()}
    return tensors_fingerprint(tensors)


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
    from edge_eigenlora.pretrained import hub_name

    config = config or ExportConfig()
    out = Path(out_dir)
    _refuse_existing(out)
    basis = load_basis(basis_path)
    if model is None:
        model, tokenizer, _ = load_model(model_name_or_path, config.kind)
    else:
        model = copy.deepcopy(model).float().eval()
    kind = detect_kind(model) if config.kind == "auto" else config.kind
    base_fp = base_fingerprint(model)
    if config.train_step and kind != "classification":
        raise EdgeEigenLoraError(
            f"ExportConfig.train_step: on-device training needs a classifier, not {kind!r}."
        )
    base_model = copy.deepcopy(model) if config.train_step else None  # the train step attaches its own basis
    attach_basis(model, basis, rank=config.rank)
    layout = bundle_mod.CoefficientLayout.from_basis(basis, config.rank)
    hidden = int(model.config.hidden_size)
    loaded = [load_task(p, expected_basis=basis.fingerprint) for p in tasks]
    for t, p in zip(loaded, tasks, strict=True):
        bundle_mod.check_task_fits(t, layout, kind, hidden, where=str(p))
    protos = {}
    for variant in config.variants:
        task = _merged_task(config, loaded) if variant == "merged" else None
        protos[variant], _ = build_graph(model, basis, config.rank, variant, kind=kind, task=task)
        _rename_dims(protos[variant], kind, variant == "per_row")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_files = _tokenizer_files(tokenizer, out) if tokenizer is not None else []
    parts = {
        "kind": kind,
        "base_model": {
            "name": _public_name(hub_name(str(model_name_or_path))),
            "fingerprint": base_fp,
            "architecture": type(model).__name__,
            "hidden_size": hidden,
        },  # fmt: skip
        "basis": {"fingerprint": basis.fingerprint, "modules": layout.modules, "width": layout.widths},
        "layout": layout,
        "tokenizer": {
            "files": tokenizer_files,
            "max_length": config.max_length,
            "padding_side": getattr(tokenizer, "padding_side", "right"),
            "truncation": True,
            "pooling": "mean" if kind == "classification" else "none",
            "pad_token_id": getattr(tokenizer, "pad_token_id", None),
        },  # fmt: skip
    }
    written = _write_bundle(out, protos, config, parts, loaded)
    if base_model is not None:
        from edge_eigenlora.train_graph import add_train_step

        add_train_step(written, basis_path, model=base_model, ort_format=config.ort_format)
    return written


def derive_bundle(
    src: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, config: ExportConfig
) -> Path:
    """A new bundle from an unquantized fp32 bundle: re-quantize / fp16 / .ort without re-exporting from torch.

    One torch export then serves every device target (the recipes in export/ use it).
    """
    if config.train_step:
        raise EdgeEigenLoraError(
            "derive_bundle re-quantizes inference graphs only; add the train-step graph to the derived bundle "
            "with edge_eigenlora.train_graph.add_train_step (or export from the model with --train-step)."
        )
    import onnx

    manifest = bundle_mod.verify_bundle(src)
    out = Path(out_dir)
    _refuse_existing(out)
    if config.rank != manifest.layout.rank:
        raise EdgeEigenLoraError(
            f"{src}: the bundle has rank {manifest.layout.rank}; set ExportConfig.rank to it."
        )
    protos = {}
    for variant in config.variants:
        graph = manifest.graph(variant)
        q = graph["quantization"]
        if q["basis"] != "none" or q["base"] != "none" or q["precision"] != "fp32":
            raise EdgeEigenLoraError(
                f"{src}: graph {graph['file']} is already quantized ({q}); derive from an fp32 bundle "
                "(export with --basis-quant none --base-quant none)."
            )
        if variant == "merged" and graph.get("task") != config.merged_task:
            raise EdgeEigenLoraError(
                f"{src}: the merged graph folds task {graph.get('task')!r}, not {config.merged_task!r}."
            )
        protos[variant] = onnx.load(str(Path(src) / graph["file"]))
    out.mkdir(parents=True, exist_ok=True)
    data = manifest.data
    for rel in data["tokenizer"].get("files", []):
        write_bytes_atomic(out / rel, (Path(src) / rel).read_bytes())
    parts = {k: data[k] for k in ("kind", "base_model", "basis", "tokenizer")}
    parts["tokenizer"] = {**parts["tokenizer"], "max_length": config.max_length}
    parts["layout"] = manifest.layout
    tasks = [bundle_mod.load_bundle_task(manifest, n) for n in sorted(manifest.tasks)]
    return _write_bundle(out, protos, config, parts, tasks)


def _refuse_existing(out: Path) -> None:
    if (out / bundle_mod.MANIFEST).exists():
        raise EdgeEigenLoraError(f"{out} already holds a bundle; choose a new folder or delete it first.")


def _merged_task(config: ExportConfig, loaded: list[Task]) -> Task:
    task = next((t for t in loaded if t.name == config.merged_task), None)
    if task is None:
        raise EdgeEigenLoraError(
            f"merged_task {config.merged_task!r} is not among the exported tasks {[t.name for t in loaded]}; "
            "pass its file with --task."
        )
    return task


def _write_bundle(out: Path, protos: dict[str, Any], config: ExportConfig, parts: dict[str, Any],
                  tasks: list[Task]) -> Path:  # fmt: skip
    """Quantize / convert each fp32 graph, write it (+ .ort), then the manifest and the tasks; verify."""
    from edge_eigenlora import quantize

    graphs = []
    for variant, proto in protos.items():
        quant = {
            "basis": "none",
            "base": "none",
            "precision": config.precision,
            "block_size": config.block_size,
        }
        if variant != "merged":
            proto = quantize.quantize_basis(proto, config.basis_quant, block_size=config.block_size)
            quant["basis"] = config.basis_quant
        proto = quantize.quantize_base(proto, config.base_quant, block_size=config.block_size)
        quant["base"] = config.base_quant
        if config.precision == "fp16":
            proto = quantize.to_fp16(proto)
        proto = clean_model(proto)
        name = f"model_{variant}.onnx"
        write_bytes_atomic(out / name, proto.SerializeToString())
        inputs, outputs = graph_io(proto)
        entry: dict[str, Any] = {
            "variant": variant, "file": name, "inputs": inputs, "outputs": outputs, "quantization": quant,
            "op_counts": op_counts(proto), "bytes": (out / name).stat().st_size,
        }  # fmt: skip
        if variant == "merged":
            entry["task"] = config.merged_task
        if config.ort_format:
            ort_file, cfg = convert_to_ort(out / name)
            entry["ort_file"] = ort_file.name
            entry["required_operators"] = cfg.name
        graphs.append(entry)
    manifest = bundle_mod.new_manifest(
        kind=parts["kind"], base_model=parts["base_model"], basis=parts["basis"], layout=parts["layout"],
        graphs=graphs, tokenizer=parts["tokenizer"], target=config.target,
    )  # fmt: skip
    bundle_mod.write_manifest(out, manifest)
    for t in tasks:
        bundle_mod.add_task_object(out, t)
        if config.onnx_adapters:
            write_onnx_adapter(out, t)
    bundle_mod.verify_bundle(out)
    return out


def _public_name(name: str) -> str:
    """A hub id as is; a local folder by its last component only (no absolute path in the bundle)."""
    return Path(name).name if os.path.isabs(name) or os.path.exists(name) else name


def write_onnx_adapter(bundle_dir: str | os.PathLike[str], task: Task) -> Path:
    """The task as an ONNX Runtime `.onnx_adapter` (for ORT's multi-LoRA API) beside its safetensors file.

    Caveat: ORT's Python `run` rejects a feed lacking a REQUIRED input even when an active adapter supplies
    it, and our inputs are required. Python users feed the arrays directly (`bundle.task_feeds`).
    """
    import onnxruntime as ort

    manifest = bundle_mod.read_manifest(bundle_dir)
    feeds = bundle_mod.task_feeds(task, manifest)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(bundle_mod.FORMAT_VERSION)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()})
    path = Path(bundle_dir) / "tasks" / f"{task.name}.onnx_adapter"
    with tempfile.TemporaryDirectory(dir=Path(bundle_dir)) as tmp:
        tmp_file = Path(tmp) / path.name
        fmt.export_adapter(str(tmp_file))
        write_bytes_atomic(path, tmp_file.read_bytes())
    bundle_mod.register_file(bundle_dir, path)
    return path
