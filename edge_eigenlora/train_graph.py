"""The train-step ONNX graph: loss and gradients on a plain (inference-only) onnxruntime.

Inputs: input_ids, attention_mask [batch, seq] int64, labels [batch] int64, coefficients [P] float32 (the
bundle's packed layout), head_weight [labels, hidden], head_bias [labels]. Outputs: loss (mean cross-entropy),
logits [batch, labels], grad_coefficients [P], grad_head_weight [labels, hidden], grad_head_bias [labels].
Batch, sequence and label count are dynamic, so one graph trains any classification task of the bundle.

How: `torch.export.experimental._export_forward_backward` turns an exported program whose only parameter is the
packed coefficient vector into a joint forward+backward graph; a thin module that feeds the frozen weights
as buffers and the coefficients as an argument is then exported with the dynamo ONNX exporter. Only standard
ai.onnx ops come out, so the graph runs on onnxruntime, onnxruntime-mobile (.ort) and web builds alike.
The head enters as an input (so its label count stays dynamic); its gradient is the closed form
(softmax - onehot)^T pooled / batch, computed inside the graph. This is a private torch API: pinned to torch
2.13 and checked against autograd by tests/test_train_graph.py. Eager attention is required (sdpa's joint
graph gives wrong gradients; see the toolchain notes).
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge_eigenlora import bundle as contract
from edge_eigenlora.basis import Basis, load_basis
from edge_eigenlora.decoder_graph import DecoderStepGraph
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.graph_modules import AdapterGraph, CoefficientFeed, adapter_copy
from edge_eigenlora.model import attach_basis, base_fingerprint, eigenlora_layers, mean_pool
from edge_eigenlora.onnx_tools import (
    WeightStore,
    clean_model,
    convert_to_ort,
    dedupe_transposed_initializers,
    graph_io,
    name_contract_dims,
    op_counts,
)
from edge_eigenlora.pretrained import load_model

__all__ = ["TRAIN_LOSS", "add_train_step", "build_train_step"]

TRAIN_LOSS = "cross_entropy_mean"


class _LossModule(nn.Module):
    """forward(ids, mask, labels, head_weight, head_bias) -> (loss, logits, head grads); `coefficients` trains."""

    def __init__(self, attached: nn.Module, layout: contract.CoefficientLayout) -> None:
        super().__init__()
        self.graph = AdapterGraph(adapter_copy(attached), layout, "classification", per_row=False)
        for p in self.graph.parameters():
            p.requires_grad_(False)
        self.coefficients = nn.Parameter(torch.zeros(layout.size))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        head_weight: torch.Tensor,
        head_bias: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        self.graph.feed.set_coefficients(self.coefficients)
        pooled = mean_pool(self.graph.model, input_ids, attention_mask)
        logits = pooled @ head_weight.T + head_bias
        loss = F.cross_entropy(logits, labels)
        # Closed-form head gradients on detached values: the joint graph differentiates only the parameter.
        lg = logits.detach()
        onehot = (labels[:, None] == torch.arange(lg.shape[-1])[None, :]).to(lg.dtype)
        g = (torch.softmax(lg, -1) - onehot) / lg.shape[0]
        return loss, lg, g.T @ pooled.detach(), g.sum(0)


class _LMLossModule(nn.Module):
    """forward(ids, mask, labels) -> (loss,): next-token cross-entropy on the tokens whose label is not
    IGNORE_INDEX (a completion's tokens), through the same step graph the device generates with (empty past)."""

    def __init__(self, attached: nn.Module, layout: contract.CoefficientLayout) -> None:
        super().__init__()
        copy_ = adapter_copy(attached)
        self.step = DecoderStepGraph(copy_, CoefficientFeed(copy_, layout, per_row=False))
        for p in self.step.parameters():
            p.requires_grad_(False)
        self.coefficients = nn.Parameter(torch.zeros(layout.size))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor]:
        s = self.step.shape
        batch = input_ids.shape[0]
        empty = input_ids.new_zeros((batch, s.num_kv_heads, 0, s.head_dim), dtype=torch.float32)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        past = [empty] * (2 * s.num_layers)
        logits = self.step(input_ids, attention_mask, positions, *past, self.coefficients)[0]
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=contract.IGNORE_INDEX,
        )
        return (loss,)


class _JointStep(nn.Module):
    """Runs the joint graph with the frozen weights as buffers and the coefficients as an input.

    forward(*inputs) takes the contract's train-step inputs in order; returns the contract's outputs.
    """

    def __init__(self, joint: Any, kind: str) -> None:
        super().__init__()
        self.gm = joint.graph_module
        _replace_empty_permuted(self.gm)
        self.kind = kind
        self.specs = list(joint.graph_signature.input_specs)
        state = {**joint.state_dict, **joint.constants}
        self.slots: list[str] = []
        for i, spec in enumerate(self.specs):
            kind_name = spec.kind.name
            if kind_name == "USER_INPUT":
                self.slots.append("user")
            elif spec.target == contract.COEFFICIENTS:  # the loss module's one parameter
                self.slots.append(contract.COEFFICIENTS)
            else:
                self.register_buffer(f"frozen_{i}", state[spec.target].detach().clone(), persistent=False)
                self.slots.append(f"frozen_{i}")

    def forward(self, *inputs: torch.Tensor) -> tuple:
        names = contract.graph_input_names(self.kind, contract.TRAIN_STEP)
        given = dict(zip(names, inputs, strict=True))
        coefficients = given.pop(contract.COEFFICIENTS)
        user = iter(given.values())  # the loss module's order: ids, mask, labels[, head_weight, head_bias]
        args = [
            next(user) if s == "user" else coefficients if s == contract.COEFFICIENTS else getattr(self, s)
            for s in self.slots
        ]
        out = self.gm(*args)
        if self.kind == "classification":
            loss, logits, grad_hw, grad_hb, grad_c = out
            return loss, logits, grad_c, grad_hw, grad_hb
        loss, grad_c = out
        return loss, grad_c


def _replace_empty_permuted(gm: Any) -> None:
    """The joint graph of a SiLU MLP allocates with aten.empty_permuted, which the ONNX exporter lacks; with
    the identity layout it is aten.empty (the buffer is overwritten before use either way)."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.empty_permuted.default:
            size, layout = node.args[:2]
            if list(layout) != list(range(len(layout))):
                raise EdgeEigenLoraError(f"train step: empty_permuted with layout {layout} is not supported.")
            node.target = torch.ops.aten.empty.memory_format
            node.args = (size,)
    gm.recompile()


def _attached_copy(model: nn.Module, basis: Basis, rank: int) -> nn.Module:
    model = copy.deepcopy(model).float().eval()
    if not eigenlora_layers(model):
        attach_basis(model, basis, rank=rank)
    elif getattr(model, "_eigenlora_basis", None) != basis.fingerprint:
        raise EdgeEigenLoraError(
            "the model carries another basis than the one given; pass the plain encoder."
        )
    attn = getattr(model.config, "_attn_implementation", "eager")
    if attn not in (None, "eager"):
        raise EdgeEigenLoraError(
            f"the model uses attn_implementation={attn!r}; the train-step graph needs 'eager' attention (sdpa's "
            "backward graph is wrong and does not export). Load it with load_encoder() or attn_implementation='eager'."
        )
    return model


def build_train_step(
    model: nn.Module, basis: Basis, rank: int, *, kind: str = "classification"
) -> tuple[Any, contract.CoefficientLayout]:
    """The cleaned ONNX ModelProto of the train step (plain model or with `basis` attached).

    kind "classification": cross-entropy over labels with the head as inputs; "causal_lm": next-token loss on
    the tokens labelled in `labels` [batch, seq] (IGNORE_INDEX elsewhere), no logits output.
    """
    from torch.export.experimental import _export_forward_backward

    if rank < 1:
        raise EdgeEigenLoraError(f"rank must be >= 1, got {rank}.")
    attached = _attached_copy(model, basis, rank)
    layout = contract.CoefficientLayout.from_basis(basis, rank)
    hidden = int(attached.config.hidden_size)
    vocab = int(attached.config.vocab_size)
    max_seq = int(getattr(attached.config, "max_position_embeddings", 512))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, -2:] = 0
    coeffs = torch.randn(layout.size, generator=g) * 0.01
    B, S, L = torch.export.Dim("batch"), torch.export.Dim("seq", max=max_seq), torch.export.Dim("labels")
    if kind == "classification":
        loss_module: nn.Module = _LossModule(attached, layout).eval()
        labels = torch.tensor([0, 2])
        hw, hb = torch.randn(3, hidden, generator=g) * 0.02, torch.zeros(3)
        user, user_shapes = (ids, mask, labels, hw, hb), ({0: B, 1: S}, {0: B, 1: S}, {0: B}, {0: L}, {0: L})
        full, full_shapes = (ids, mask, labels, coeffs, hw, hb), user_shapes[:3] + (None,) + user_shapes[3:]
    else:
        loss_module = _LMLossModule(attached, layout).eval()
        labels = ids.masked_fill(mask == 0, contract.IGNORE_INDEX)
        labels[:, :2] = contract.IGNORE_INDEX  # a prompt: no loss
        # AUTO: the cache slicing makes guards (min(seq, seq * seq) == seq) that named dims cannot prove
        auto = {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}
        user, user_shapes = (ids, mask, labels), (auto, auto, auto)
        full, full_shapes = (*user, coeffs), (*user_shapes, None)
    names = contract.graph_input_names(kind, contract.TRAIN_STEP)
    outputs = contract.graph_output_names(kind, contract.TRAIN_STEP)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        program = torch.export.export(loss_module, user, dynamic_shapes=user_shapes)
        step = _JointStep(_export_forward_backward(program), kind).eval()
        onnx_program = torch.onnx.export(
            step,
            full,
            dynamo=True,
            dynamic_shapes=(full_shapes,),
            input_names=list(names),
            output_names=list(outputs),
            opset_version=contract.OPSET,
            optimize=kind == "classification",  # the decoder's joint graph: see graph_modules.to_onnx
            verbose=False,
            report=False,
        )
        path = Path(tmp) / "train.onnx"
        onnx_program.save(str(path), external_data=False)
        import onnx

        proto = onnx.load(str(path))
    proto = dedupe_transposed_initializers(proto)
    name_contract_dims(proto, kind, contract.TRAIN_STEP)
    return clean_model(proto), layout


def add_train_step(
    bundle_dir: str | os.PathLike[str],
    basis_path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    model_name_or_path: str | None = None,
    ort_format: bool = False,
) -> contract.GraphEntry:
    """Export the train-step graph into an existing classification bundle and list it in the manifest.

    The model must be the bundle's base model (checked by fingerprint) and the basis the bundle's basis. Its
    frozen weights point into the bundle's existing weights file where they are equal (by content); only
    what is new goes into `model_train_step.data`. Only the new files are hashed.
    """
    root = Path(bundle_dir)
    manifest = contract.verify_bundle(root)
    if manifest.kind != "classification":
        raise EdgeEigenLoraError(
            f"{manifest.path}: kind is {manifest.kind!r}; the train-step graph is built for classification bundles only."
        )
    if manifest.has_graph(contract.TRAIN_STEP):
        raise EdgeEigenLoraError(
            f"{manifest.path}: the bundle already has a train-step graph; export into a fresh bundle."
        )
    basis = load_basis(basis_path)
    if basis.fingerprint != manifest.basis_fingerprint:
        raise EdgeEigenLoraError(
            f"basis {basis_path} (fingerprint {basis.short_id}) is not the bundle's basis "
            f"({manifest.basis_fingerprint[:12]}); pass the basis file the bundle was exported with."
        )
    if model is None:
        model, _, _ = load_model(model_name_or_path or manifest.base_model.name, "classification")
    if base_fingerprint(model) != manifest.base_model.fingerprint:
        raise EdgeEigenLoraError(
            "the model's weights differ from the bundle's base model (fingerprint mismatch); pass the model the "
            "bundle was exported from."
        )
    proto, _ = build_train_step(model, basis, manifest.layout.rank)
    name = contract.graph_file(contract.TRAIN_STEP)
    stem = Path(name).stem
    ort = convert_to_ort(proto, root, stem) if ort_format else None
    inputs, outputs = graph_io(proto)
    counts = op_counts(proto)
    store = WeightStore(location=f"{stem}.data")
    store.index_existing(root, [g.file for g in manifest.graphs])
    store.add_graph(proto)
    with contract.update_bundle(root) as (current, writer):
        if current.has_graph(contract.TRAIN_STEP):
            raise EdgeEigenLoraError(f"{current.path}: another process added a train-step graph meanwhile.")
        if store.size:
            writer.write_chunks(store.location, store.data())
        path = writer.write_bytes(name, proto.SerializeToString())
        entry = contract.GraphEntry(
            variant=contract.TRAIN_STEP,
            file=name,
            inputs=inputs,
            outputs=outputs,
            quantization=contract.Quantization(),
            op_counts=counts,
            bytes=path.stat().st_size,
            external_data=tuple(sorted(store.used)),
            loss=TRAIN_LOSS,
            max_seq=int(getattr(model.config, "max_position_embeddings", 512)),
        )
        if ort is not None:
            writer.write_bytes(f"{stem}.ort", ort[0])
            writer.write_bytes(f"{stem}.required_operators.config", ort[1])
            entry = replace(
                entry, ort_file=f"{stem}.ort", required_operators=f"{stem}.required_operators.config"
            )
        writer.manifest = replace(current, graphs=current.graphs + (entry,))
    contract.verify_bundle(root)
    return entry
