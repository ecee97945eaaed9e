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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_eigenlora import bundle as bundle_mod
from edge_eigenlora.basis import Basis, load_basis
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import write_bytes_atomic
from edge_eigenlora.model import attach_basis, eigenlora_layers

TRAIN_VARIANT = "train_step"
TRAIN_FILE = "model_train_step.onnx"
TRAIN_INPUTS = ("input_ids", "attention_mask", "labels", "coefficients", "head_weight", "head_bias")
TRAIN_OUTPUTS = ("loss", "logits", "grad_coefficients", "grad_head_weight", "grad_head_bias")
OPSET = 18


class _LossModule(nn.Module):
    """forward(ids, mask, labels, head_weight, head_bias) -> (loss, logits, head grads); `coefficients` trains."""

    def __init__(self, attached: nn.Module, layout: bundle_mod.CoefficientLayout) -> None:
        super().__init__()
        from edge_eigenlora.export import AdapterGraph, adapter_copy

        self.graph = AdapterGraph(adapter_copy(attached), layout, "classification", per_row=False)
        for p in self.graph.parameters():
            p.requires_grad_(False)
        self.coefficients = nn.Parameter(torch.zeros(layout.size))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                head_weight: torch.Tensor, head_bias: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
        from edge_eigenlora.export import mean_pool

        self.graph._set(self.coefficients)
        pooled = mean_pool(self.graph.model, input_ids, attention_mask)
        logits = pooled @ head_weight.T + head_bias
        loss = F.cross_entropy(logits, labels)
        # Closed-form head gradients on detached values: the joint graph differentiates only the parameter.
        lg = logits.detach()
        onehot = (labels[:, None] == torch.arange(lg.shape[-1])[None, :]).to(lg.dtype)
        g = (torch.softmax(lg, -1) - onehot) / lg.shape[0]
        return loss, lg, g.T @ pooled.detach(), g.sum(0)


class _JointStep(nn.Module):
    """Runs the joint graph with the frozen weights as buffers and the coefficients as an input."""

    def __init__(self, joint: Any) -> None:
        super().__init__()
        self.gm = joint.graph_module
        self.specs = list(joint.graph_signature.input_specs)
        state = {**joint.state_dict, **joint.constants}
        self.slots: list[str] = []
        for i, spec in enumerate(self.specs):
            kind = spec.kind.name
            if kind == "USER_INPUT":
                self.slots.append("user")
            elif spec.target == "coefficients":
                self.slots.append("coefficients")
            else:
                self.register_buffer(f"frozen_{i}", state[spec.target].detach().clone(), persistent=False)
                self.slots.append(f"frozen_{i}")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                coefficients: torch.Tensor, head_weight: torch.Tensor, head_bias: torch.Tensor) -> tuple:  # fmt: skip
        user = iter((input_ids, attention_mask, labels, head_weight, head_bias))
        args = [
            next(user) if s == "user" else coefficients if s == "coefficients" else getattr(self, s)
            for s in self.slots
        ]
        loss, logits, grad_hw, grad_hb, grad_c = self.gm(*args)
        return loss, logits, grad_c, grad_hw, grad_hb


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


def build_train_step(model: nn.Module, basis: Basis, rank: int) -> tuple[Any, bundle_mod.CoefficientLayout]:
    """The cleaned ONNX ModelProto of the train step for an encoder (plain or with `basis` attached)."""
    from torch.export.experimental import _export_forward_backward

    from edge_eigenlora.export import clean_model

    attached = _attached_copy(model, basis, rank)
    layout = bundle_mod.CoefficientLayout.from_basis(basis, rank)
    loss_module = _LossModule(attached, layout).eval()
    hidden = int(attached.config.hidden_size)
    vocab = int(attached.config.vocab_size)
    max_seq = int(getattr(attached.config, "max_position_embeddings", 512))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, -2:] = 0
    labels = torch.tensor([0, 2])
    hw, hb = torch.randn(3, hidden, generator=g) * 0.02, torch.zeros(3)
    coeffs = torch.randn(layout.size, generator=g) * 0.01
    B, S, L = torch.export.Dim("batch"), torch.export.Dim("seq", max=max_seq), torch.export.Dim("labels")
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        program = torch.export.export(
            loss_module, (ids, mask, labels, hw, hb),
            dynamic_shapes=({0: B, 1: S}, {0: B, 1: S}, {0: B}, {0: L}, {0: L}),
        )  # fmt: skip
        joint = _export_forward_backward(program)
        step = _JointStep(joint).eval()
        onnx_program = torch.onnx.export(
            step, (ids, mask, labels, coeffs, hw, hb), dynamo=True,
            dynamic_shapes=({0: B, 1: S}, {0: B, 1: S}, {0: B}, None, {0: L}, {0: L}),
            input_names=list(TRAIN_INPUTS), output_names=list(TRAIN_OUTPUTS), opset_version=OPSET,
            optimize=True, verbose=False, report=False,
        )  # fmt: skip
        path = Path(tmp) / "train.onnx"
        onnx_program.save(str(path), external_data=False)
        import onnx

        proto = onnx.load(str(path))
    proto = dedupe_transposed_initializers(proto)
    _name_dims(proto)
    return clean_model(proto), layout


def _name_dims(model: Any) -> None:
    """Name the dynamic axes batch / seq / labels (the exporter writes s0, s1, ...)."""
    from edge_eigenlora.export import rename_dynamic_dims

    rename_dynamic_dims(model, {
        "input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"], "labels": ["batch"],
        "head_weight": ["labels", None], "head_bias": ["labels"],
    })  # fmt: skip


def dedupe_transposed_initializers(model: Any, min_size: int = 4096) -> Any:
    """Store a weight once when the joint graph holds both W and W^T: W^T becomes a Transpose node.

    The backward pass multiplies by each frozen weight's transpose, which the exporter folds into a second
    constant. Keeping one copy shrinks the file (onnxruntime may fold the Transpose again when it loads).
    """
    from onnx import helper, numpy_helper

    by_key: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    arrays = {}
    for init in model.graph.initializer:
        if len(init.dims) == 2 and int(np.prod(init.dims)) >= min_size:
            arr = numpy_helper.to_array(init)
            arrays[init.name] = arr
            by_key.setdefault(tuple(sorted(arr.shape)) + (arr.dtype.str,), []).append((init.name, arr))
    replace: dict[str, str] = {}
    for group in by_key.values():
        for i, (name_a, a) in enumerate(group):
            if name_a in replace:
                continue
            for name_b, b in group[i + 1 :]:
                if name_b not in replace and b.shape == a.T.shape and np.array_equal(a.T, b):
                    replace[name_b] = name_a
    if not replace:
        return model
    kept = [init for init in model.graph.initializer if init.name not in replace]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = [helper.make_node("Transpose", [src], [dup], name=f"dedupe_T_{k}", perm=[1, 0])
             for k, (dup, src) in enumerate(sorted(replace.items()))]  # fmt: skip
    for k, node in enumerate(nodes):
        model.graph.node.insert(k, node)
    return model


def export_train_step(model: nn.Module, basis: Basis, rank: int, out_path: str | os.PathLike[str], *,
                      ort_format: bool = False) -> dict[str, Any]:  # fmt: skip
    """Write the train-step graph (atomically) and return its manifest entry (paths relative to its folder)."""
    from edge_eigenlora.export import convert_to_ort, graph_io, op_counts

    if rank < 1:
        raise EdgeEigenLoraError(f"rank must be >= 1, got {rank}.")
    proto, layout = build_train_step(model, basis, rank)
    out_path = Path(out_path)
    write_bytes_atomic(out_path, proto.SerializeToString())
    inputs, outputs = graph_io(proto)
    entry: dict[str, Any] = {
        "variant": TRAIN_VARIANT,
        "file": out_path.name,
        "inputs": inputs,
        "outputs": outputs,
        "loss": "cross_entropy_mean",
        "max_seq": int(getattr(model.config, "max_position_embeddings", 512)),
        "quantization": {"basis": "none", "base": "none", "precision": "fp32"},
        "op_counts": op_counts(proto),
        "coefficients_size": layout.size,
    }
    if ort_format:
        ort_file, cfg = convert_to_ort(out_path)
        entry["ort_file"] = ort_file.name
        entry["required_operators"] = cfg.name
    return entry


def add_train_step(bundle_dir: str | os.PathLike[str], basis_path: str | os.PathLike[str], *,
                   model: nn.Module | None = None, model_name_or_path: str | None = None,
                   ort_format: bool = False) -> dict[str, Any]:  # fmt: skip
    """Export the train-step graph into an existing classification bundle and list it in the manifest.

    The model must be the bundle's base model (checked by fingerprint) and the basis the bundle's basis.
    """
    from edge_eigenlora.export import base_fingerprint, load_model

    root = Path(bundle_dir)
    manifest = bundle_mod.read_manifest(root)
    where = root / bundle_mod.MANIFEST
    if manifest.kind != "classification":
        raise EdgeEigenLoraError(
            f"{where}: kind is {manifest.kind!r}; the train-step graph is built for classification bundles only."
        )
    if any(g["variant"] == TRAIN_VARIANT for g in manifest.data["graphs"]):
        raise EdgeEigenLoraError(
            f"{where}: the bundle already has a train-step graph; export into a fresh bundle."
        )
    basis = load_basis(basis_path)
    if basis.fingerprint != manifest.basis_fingerprint:
        raise EdgeEigenLoraError(
            f"basis {basis_path} (fingerprint {basis.short_id}) is not the bundle's basis "
            f"({manifest.basis_fingerprint[:12]}); pass the basis file the bundle was exported with."
        )
    if model is None:
        name = model_name_or_path or manifest.data["base_model"]["name"]
        model, _, _ = load_model(name, "classification")
    if base_fingerprint(model) != manifest.data["base_model"]["fingerprint"]:
        raise EdgeEigenLoraError(
            "the model's weights differ from the bundle's base model (fingerprint mismatch); pass the model the "
            "bundle was exported from."
        )
    entry = export_train_step(model, basis, manifest.layout.rank, root / TRAIN_FILE, ort_format=ort_format)
    data = manifest.data
    data["graphs"] = [g for g in data["graphs"] if g["variant"] != TRAIN_VARIANT] + [entry]
    bundle_mod.write_manifest(root, data)
    bundle_mod.verify_bundle(root)
    return entry
