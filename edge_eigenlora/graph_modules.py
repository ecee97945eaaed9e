"""The torch modules that become the bundle's graphs, and their export to ONNX.

- "shared": `coefficients` [P] and the head ([labels, hidden], [labels]) are shared by the whole batch;
- "per_row": `coefficients` [batch, P] and the head per row, so each row of one batch runs its own task;
- "merged": one fixed task folded into the weights (delta W added to W, head as constants); zero adapter cost.
- "factored": each adapted module's factors A^T, B^T are inputs (the head too); "factors" forms them from the
  coefficients (only the basis inside). The runtime runs "factors" once per task switch and feeds its outputs
  to every call of "factored", which then costs what unmerged LoRA costs and nothing more.

Per adapted Linear the graph forms A^T = U_A alpha_A (d_in x r) and B^T = alpha_B^T U_B^T (r x d_out) once
per call and adds (x A^T) B^T per token: r (d_in + d_out) multiply-adds per token, what unmerged LoRA costs.
The basis is stored transposed (U^T: width x d), so each factor is a MatMul with a constant right-hand
weight: the form that per-channel int8 DequantizeLinear and 4-bit MatMulNBits quantize.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Iterator
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
    "FactorAdapter",
    "FactorFeed",
    "FactorGraph",
    "FactoredAdapterGraph",
    "MergedGraph",
    "adapter_copy",
    "build_factor_graph",
    "build_graph",
    "example_inputs",
    "factor_example_inputs",
    "factored_copy",
    "merged_copy",
    "to_onnx",
]


def form_factors(
    alpha_a: torch.Tensor, alpha_b: torch.Tensor, u_a_t: torch.Tensor, u_b_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A^T [.., d_in, r], B^T [.., r, d_out]) from alpha [.., width, r] and the transposed basis [width, d]."""
    return (alpha_a.transpose(-1, -2) @ u_a_t).transpose(-1, -2), alpha_b.transpose(-1, -2) @ u_b_t


class FactorAdapter(nn.Module):
    """Stands in for an EigenLoraLinear in the factored graph: base Linear + (x A^T) B^T, factors set per call."""

    def __init__(self, layer: EigenLoraLinear) -> None:
        super().__init__()
        self.base = layer.base
        self.basis_module = layer.basis_module
        self._a_t: torch.Tensor | None = None
        self._b_t: torch.Tensor | None = None

    def set_factors(self, a_t: torch.Tensor, b_t: torch.Tensor) -> None:
        self._a_t, self._b_t = a_t, b_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self._a_t) @ self._b_t


class ExportAdapter(FactorAdapter):
    """Stands in for an EigenLoraLinear in the export copy: base Linear, transposed basis, per-call factors."""

    def __init__(self, layer: EigenLoraLinear) -> None:
        super().__init__(layer)
        self.register_buffer("U_A_t", layer.U_A.T.contiguous().float())  # width x d_in
        self.register_buffer("U_B_t", layer.U_B.T.contiguous().float())  # width x d_out

    def set_coefficients(self, alpha_a: torch.Tensor, alpha_b: torch.Tensor) -> None:
        """alpha: [width, r] (shared) or [batch, width, r] (per row). Forms the factors once per call."""
        self.set_factors(*form_factors(alpha_a, alpha_b, self.U_A_t, self.U_B_t))


def _adapters(model: nn.Module, layout: contract.CoefficientLayout, kind: type) -> dict[str, Any]:
    """The model's adapters of `kind`, in the layout's module order (every basis module must have one)."""
    adapters = {m.basis_module: m for m in model.modules() if isinstance(m, kind)}
    missing = [m for m in layout.modules if m not in adapters]
    if missing:
        raise EdgeEigenLoraError(f"basis modules {missing[:3]} are not attached to the model being exported.")
    return {m: adapters[m] for m in layout.modules}


def _alphas(
    coefficients: torch.Tensor, layout: contract.CoefficientLayout, per_row: bool
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(module, alpha_A, alpha_B) slices of the packed coefficients ([P] shared, [batch, P] per row)."""
    r = layout.rank
    for module in layout.modules:
        offset, width = layout.module_offset(module), layout.widths[module]
        n = width * r
        if per_row:
            a = coefficients[:, offset : offset + n].reshape(-1, width, r)
            b = coefficients[:, offset + n : offset + 2 * n].reshape(-1, width, r)
        else:
            a = coefficients[offset : offset + n].reshape(width, r)
            b = coefficients[offset + n : offset + 2 * n].reshape(width, r)
        yield module, a, b


class CoefficientFeed:
    """Slices the packed coefficient input ([P] shared, [batch, P] per row) into each adapter's factors."""

    def __init__(self, model: nn.Module, layout: contract.CoefficientLayout, per_row: bool) -> None:
        self.per_row = per_row
        self.layout = layout
        self.adapters = _adapters(model, layout, ExportAdapter)

    def set_coefficients(self, coefficients: torch.Tensor) -> None:
        for module, a, b in _alphas(coefficients, self.layout, self.per_row):
            self.adapters[module].set_coefficients(a, b)

    def take(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Consume this feed's graph inputs (the coefficients) from `inputs`; returns the rest."""
        self.set_coefficients(inputs[0])
        return inputs[1:]


class FactorFeed:
    """Hands each adapter its factors from the factored graph's inputs (A_0^T, B_0^T, A_1^T, ...)."""

    def __init__(self, model: nn.Module, layout: contract.CoefficientLayout) -> None:
        self.adapters = _adapters(model, layout, FactorAdapter)

    def take(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Consume one factor pair per module from `inputs`; returns the rest."""
        for j, adapter in enumerate(self.adapters.values()):
            adapter.set_factors(inputs[2 * j], inputs[2 * j + 1])
        return inputs[2 * len(self.adapters) :]


class _BasisPair(nn.Module):
    def __init__(self, u_a_t: torch.Tensor, u_b_t: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("U_A_t", u_a_t)  # the names basis quantization finds (contract.BASIS_SUFFIXES)
        self.register_buffer("U_B_t", u_b_t)


class FactorGraph(nn.Module):
    """forward(coefficients [P]) -> (A_0^T, B_0^T, A_1^T, ...): the factors graph, the basis and nothing else."""

    def __init__(self, model: nn.Module, layout: contract.CoefficientLayout) -> None:
        super().__init__()
        self.layout = layout
        pairs = {}
        for layer in eigenlora_layers(model).values():
            pairs[layer.basis_module] = (layer.U_A.T.contiguous().float(), layer.U_B.T.contiguous().float())
        missing = [m for m in layout.modules if m not in pairs]
        if missing:
            raise EdgeEigenLoraError(
                f"basis modules {missing[:3]} are not attached to the model being exported."
            )
        self.pairs = nn.ModuleList(_BasisPair(*pairs[m]) for m in layout.modules)

    def forward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out: list[torch.Tensor] = []
        for pair, (_, a, b) in zip(self.pairs, _alphas(coefficients, self.layout, False), strict=True):
            out += form_factors(a, b, pair.U_A_t, pair.U_B_t)
        return tuple(out)


class _TaskGraph(nn.Module):
    """What every adapter graph does after its feed has set the factors: the model's logits, and for a
    classifier mean pooling and the head (shared [labels, hidden] or per row [batch, labels, hidden])."""

    def __init__(self, model: nn.Module, kind: str, per_row: bool) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.per_row = per_row

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        head_weight: torch.Tensor | None,
        head_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.kind == "causal_lm":
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        pooled = mean_pool(self.model, input_ids, attention_mask)
        if self.per_row:
            return torch.einsum("bh,blh->bl", pooled, head_weight) + head_bias
        return pooled @ head_weight.T + head_bias


class AdapterGraph(_TaskGraph):
    """forward(input_ids, attention_mask, coefficients[, head_weight, head_bias]) -> logits."""

    def __init__(
        self, model: nn.Module, layout: contract.CoefficientLayout, kind: str, per_row: bool
    ) -> None:
        super().__init__(model, kind, per_row)
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
        return self.logits(input_ids, attention_mask, head_weight, head_bias)


class FactoredAdapterGraph(_TaskGraph):
    """forward(input_ids, attention_mask, A_0^T, B_0^T, ...[, head_weight, head_bias]) -> logits."""

    def __init__(self, model: nn.Module, layout: contract.CoefficientLayout, kind: str) -> None:
        super().__init__(model, kind, per_row=False)
        self.feed = FactorFeed(model, layout)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *rest: torch.Tensor
    ) -> torch.Tensor:
        head = self.feed.take(rest)
        return self.logits(input_ids, attention_mask, *(head or (None, None)))


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


def _swap_adapters(model: nn.Module, adapter: type, graph: str) -> nn.Module:
    """A copy of an attached model whose EigenLoraLinears are `adapter`s (export or factored)."""
    model = copy.deepcopy(model)

    def make(layer: EigenLoraLinear) -> nn.Module:
        if layer.merged:
            raise EdgeEigenLoraError(f"unmerge the model before exporting the {graph} graph.")
        return adapter(layer)

    _replace_layers(model, make)
    return model.eval()


def adapter_copy(model: nn.Module) -> nn.Module:
    """A copy of an attached model whose EigenLoraLinears are export adapters (coefficients from inputs)."""
    return _swap_adapters(model, ExportAdapter, "adapter")


def factored_copy(model: nn.Module) -> nn.Module:
    """A copy of an attached model whose EigenLoraLinears take their factors from graph inputs (no basis)."""
    return _swap_adapters(model, FactorAdapter, "factored")


def factor_example_inputs(model: nn.Module, layout: contract.CoefficientLayout) -> list[torch.Tensor]:
    """Seeded example factors (A_j^T [d_in, r], B_j^T [r, d_out]) in the layout's module order."""
    layers = {layer.basis_module: layer for layer in eigenlora_layers(model).values()}
    g = torch.Generator().manual_seed(1)
    out = []
    for m in layout.modules:
        base = layers[m].base
        out += [
            torch.randn(base.in_features, layout.rank, generator=g) * 0.01,
            torch.randn(layout.rank, base.out_features, generator=g) * 0.01,
        ]
    return out


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
    if variant == contract.FACTORED:
        rest: list[torch.Tensor] = factor_example_inputs(model, layout)
        rest_shapes: list[Any] = [None] * len(rest)
        if kind == "classification":
            rest += [torch.randn(labels, hidden, generator=g), torch.randn(labels, generator=g)]
            rest_shapes += [{0: L}, {0: L}]
        return (ids, mask, *rest), (
            shapes[contract.INPUT_IDS],
            shapes[contract.ATTENTION_MASK],
            tuple(rest_shapes),
        )
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
    elif variant == contract.FACTORED:
        module = FactoredAdapterGraph(factored_copy(model), layout, kind).eval()
    elif variant == contract.FACTORS:
        return build_factor_graph(model, basis, rank), layout
    else:
        module = AdapterGraph(adapter_copy(model), layout, kind, per_row=variant == contract.PER_ROW).eval()
    args, shapes = example_inputs(model, variant, kind, layout)
    modules = len(layout.modules)
    names = list(contract.graph_input_names(kind, variant, num_modules=modules))
    outputs = list(contract.graph_output_names(kind, variant, num_modules=modules))
    proto = to_onnx(module, args, shapes, names, outputs)
    name_contract_dims(proto, kind, variant)
    return proto, layout


def build_factor_graph(model: nn.Module, basis: Basis, rank: int) -> Any:
    """The fp32 factors graph: coefficients [P] -> every module's A^T, B^T (what the factored graph takes)."""
    layout = contract.CoefficientLayout.from_basis(basis, rank)
    coefficients = torch.randn(layout.size, generator=torch.Generator().manual_seed(0)) * 0.01
    outputs = list(
        contract.graph_output_names("classification", contract.FACTORS, num_modules=len(layout.modules))
    )
    return to_onnx(FactorGraph(model, layout).eval(), (coefficients,), None, [contract.COEFFICIENTS], outputs)
