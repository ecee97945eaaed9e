"""The torch modules that become the bundle's graphs, and their export to ONNX.

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
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_eigenlora import bundle as contract
from edge_eigenlora.basis import Basis
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.layers import EigenLoraLinear
from edge_eigenlora.model import apply_task, detect_kind, eigenlora_layers, mean_pool
from edge_eigenlora.onnx_tools import clean_model, name_contract_dims
from edge_eigenlora.task import Task

__all__ = [
    "AdapterGraph",
    "CoefficientFeed",
    "ExportAdapter",
    "MergedGraph",
    "adapter_copy",
    "build_graph",
    "example_inputs",
    "merged_copy",
    "to_onnx",
]


class ExportAdapter(nn.Module):
    """Stands in for an EigenLoraLinear in the export copy: base Linear, transposed basis, per-call factors."""

    def __init__(self, layer: EigenLoraLinear) -> None:
        super().__init__()
        self.base = layer.base
        self.basis_module = layer.basis_module
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


class CoefficientFeed:
    """Slices the packed coefficient input ([P] shared, [batch, P] per row) into each adapter's factors."""

    def __init__(self, model: nn.Module, layout: contract.CoefficientLayout, per_row: bool) -> None:
        self.per_row = per_row
        self.segments = [(m, layout.module_offset(m), layout.widths[m]) for m in layout.modules]
        self.rank = layout.rank
        adapters = {m.basis_module: m for m in model.modules() if isinstance(m, ExportAdapter)}
        missing = [m for m in layout.modules if m not in adapters]
        if missing:
            raise EdgeEigenLoraError(
                f"basis modules {missing[:3]} are not attached to the model being exported."
            )
        self.adapters = {m: adapters[m] for m in layout.modules}

    def set_coefficients(self, coefficients: torch.Tensor) -> None:
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


class AdapterGraph(nn.Module):
    """forward(input_ids, attention_mask, coefficients[, head_weight, head_bias]) -> logits."""

    def __init__(
        self, model: nn.Module, layout: contract.CoefficientLayout, kind: str, per_row: bool
    ) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.per_row = per_row
        self.feed = CoefficientFeed(model, layout, per_row)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        coefficients: torch.Tensor,
        head_weight: torch.Tensor | None = None,
        head_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.feed.set_coefficients(coefficients)
        if self.kind == "causal_lm":
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        pooled = mean_pool(self.model, input_ids, attention_mask)
        if self.per_row:
            return torch.einsum("bh,blh->bl", pooled, head_weight) + head_bias
        return pooled @ head_weight.T + head_bias


class MergedGraph(nn.Module):
    """forward(input_ids, attention_mask) -> logits of a model whose task is folded into its weights."""

    def __init__(self, model: nn.Module, kind: str, head: nn.Linear | None) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "causal_lm":
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return self.head(mean_pool(self.model, input_ids, attention_mask))


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
        return ExportAdapter(layer)

    _replace_layers(model, make)
    return model.eval()


def merged_copy(model: nn.Module, task: Task) -> nn.Module:
    """A copy of an attached model with `task` folded into its weights and the adapters removed."""
    model = copy.deepcopy(model)
    apply_task(model, task)

    def make(layer: EigenLoraLinear) -> nn.Module:
        layer.merge()
        return layer.base

    _replace_layers(model, make)
    return model.eval()


def example_inputs(
    model: nn.Module,
    variant: str,
    kind: str,
    layout: contract.CoefficientLayout | None,
    *,
    labels: int = 3,
    batch: int = 2,
    seq: int = 7,
) -> tuple[tuple, dict]:
    """Seeded example arguments and dynamic shapes (batch, seq, labels) for exporting one variant."""
    vocab = int(getattr(model.config, "vocab_size", 100))
    hidden = int(model.config.hidden_size)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[1, -2:] = 0
    B, S, L = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("labels")
    shapes: dict = {contract.INPUT_IDS: {0: B, 1: S}, contract.ATTENTION_MASK: {0: B, 1: S}}
    if variant == contract.MERGED:
        return (ids, mask), shapes
    per_row = variant == contract.PER_ROW
    coeffs = torch.randn((batch, layout.size) if per_row else (layout.size,), generator=g) * 0.01
    args: tuple = (ids, mask, coeffs)
    shapes[contract.COEFFICIENTS] = {0: B} if per_row else None
    if kind == "classification":
        lead = (batch,) if per_row else ()
        args += (torch.randn(*lead, labels, hidden, generator=g), torch.randn(*lead, labels, generator=g))
        shapes[contract.HEAD_WEIGHT] = {0: B, 1: L} if per_row else {0: L}
        shapes[contract.HEAD_BIAS] = {0: B, 1: L} if per_row else {0: L}
    return args, shapes


def to_onnx(
    module: nn.Module,
    args: tuple,
    dynamic_shapes: Any,
    input_names: list[str],
    output_names: list[str],
    *,
    optimize: bool = True,
) -> Any:
    """torch -> onnx.ModelProto (dynamo exporter, the contract's opset), cleaned of metadata and source paths.

    optimize: run onnxscript's optimizer on the exported graph; a decoder LM's graphs turn it off (it takes
    most of their export time, over 20 minutes on SmolLM2's train step; ONNX Runtime optimizes at load).
    """
    import onnx

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "graph.onnx"
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            opset_version=contract.OPSET,
            optimize=optimize,
            verbose=False,
            report=False,
        )
        program.save(str(path), external_data=False)
        model = onnx.load(str(path))
    return clean_model(model)


def build_graph(
    model: nn.Module,
    basis: Basis,
    rank: int,
    variant: str,
    *,
    kind: str | None = None,
    task: Task | None = None,
) -> tuple[Any, contract.CoefficientLayout]:
    """The fp32 ONNX graph of one inference variant for a model with `basis` attached (at `rank`)."""
    kind = kind or detect_kind(model)
    layout = contract.CoefficientLayout.from_basis(basis, rank)
    if variant == contract.MERGED:
        if task is None:
            raise EdgeEigenLoraError("the merged variant needs a task to fold.")
        head = None
        if kind == "classification":
            if task.head_weight is None:
                raise EdgeEigenLoraError(f"task {task.name!r} has no head; a merged classifier needs one.")
            head = nn.Linear(task.head_weight.shape[1], task.head_weight.shape[0])
            with torch.no_grad():
                head.weight.copy_(torch.from_numpy(np.asarray(task.head_weight, np.float32)))
                bias = task.head_bias if task.head_bias is not None else np.zeros(task.head_weight.shape[0])
                head.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
        module: nn.Module = MergedGraph(merged_copy(model, task), kind, head).eval()
    else:
        module = AdapterGraph(adapter_copy(model), layout, kind, per_row=variant == contract.PER_ROW).eval()
    args, shapes = example_inputs(model, variant, kind, layout)
    names = list(contract.graph_input_names(kind, variant))
    proto = to_onnx(module, args, shapes, names, list(contract.graph_output_names(kind, variant)))
    name_contract_dims(proto, kind, variant)
    return proto, layout
