"""The decoder LM's step graph: a Llama forward with an explicit KV cache, exported with the names that
optimum, transformers.js and onnxruntime-genai use.

forward(input_ids [batch, seq], attention_mask [batch, past + seq], position_ids [batch, seq],
past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim] ..., [coefficients])
-> logits [batch, seq, vocab], present.{i}.key / .value [batch, kv_heads, past + seq, head_dim] ...

One graph serves prefill (past of length 0) and every decode step. The attention is written out here, not
taken from transformers' cache classes, so the graph's inputs are plain tensors: the runtime keeps each
layer's present as an onnxruntime value and feeds it back as the next past, never through numpy. The
adapted projections are the export adapters of `graph_modules` (coefficients per call, shared or per row),
the factored graph's adapters (A^T, B^T fed as inputs), or the base Linears with delta W folded in (merged).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edge_eigenlora import bundle as contract
from edge_eigenlora.basis import Basis
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.graph_modules import (
    CoefficientFeed,
    FactorFeed,
    adapter_copy,
    build_factor_graph,
    factor_example_inputs,
    factored_copy,
    merged_copy,
    to_onnx,
)
from edge_eigenlora.onnx_tools import rename_dynamic_dims
from edge_eigenlora.task import Task

__all__ = [
    "DecoderShape",
    "DecoderStepGraph",
    "build_decoder_graph",
    "decoder_example_inputs",
    "decoder_info",
    "decoder_shape",
    "name_decoder_dims",
]


class DecoderShape:
    """What the runtime needs to build an empty cache: layers, kv heads, head size, context length."""

    def __init__(self, config: Any) -> None:
        self.num_layers = int(config.num_hidden_layers)
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.num_heads)
        self.max_positions = int(config.max_position_embeddings)
        self.vocab_size = int(config.vocab_size)


def decoder_shape(model: nn.Module) -> DecoderShape:
    return DecoderShape(model.config)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DecoderStepGraph(nn.Module):
    """A Llama-family causal LM as one prefill/decode step with the cache as inputs and outputs."""

    def __init__(self, model: nn.Module, feed: CoefficientFeed | FactorFeed | None = None) -> None:
        super().__init__()
        self.model = model
        self.feed = feed
        self.shape = decoder_shape(model)
        attention = model.model.layers[0].self_attn
        self.scaling = float(attention.scaling)
        self.groups = self.shape.num_heads // self.shape.num_kv_heads

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *rest: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        layers = self.model.model.layers
        past, extra = rest[: 2 * len(layers)], rest[2 * len(layers) :]
        if self.feed is not None:
            self.feed.take(extra)
        hidden = self.model.model.embed_tokens(input_ids)
        cos, sin = self.model.model.rotary_emb(hidden, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [batch, 1, seq, head_dim]
        allowed = self._allowed(attention_mask, input_ids.shape[1])
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(layers):
            residual = hidden
            hidden = layer.input_layernorm(hidden)
            out, key, value = self._attention(
                layer.self_attn, hidden, cos, sin, past[2 * i], past[2 * i + 1], allowed
            )
            presents += [key, value]
            hidden = residual + out
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        logits = self.model.lm_head(self.model.model.norm(hidden))
        return (logits, *presents)

    @staticmethod
    def _allowed(attention_mask: torch.Tensor, seq: int) -> torch.Tensor:
        """[batch, 1, seq, total]: query i (cache slot total - seq + i) sees key j <= that slot, unpadded."""
        total = attention_mask.shape[1]
        keys = torch.arange(total, device=attention_mask.device)
        queries = keys[total - seq :]
        causal = keys.unsqueeze(0) <= queries.unsqueeze(1)  # [seq, total]
        return causal.unsqueeze(0).unsqueeze(0) & attention_mask.bool().unsqueeze(1).unsqueeze(1)

    def _attention(
        self,
        attn: nn.Module,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        allowed: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, seq, _ = hidden.shape
        s = self.shape
        q = attn.q_proj(hidden).view(batch, seq, s.num_heads, s.head_dim).transpose(1, 2)
        k = attn.k_proj(hidden).view(batch, seq, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v = attn.v_proj(hidden).view(batch, seq, s.num_kv_heads, s.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        key = torch.cat([past_key, k], dim=2)
        value = torch.cat([past_value, v], dim=2)
        # grouped-query attention without repeating the cache: [batch, kv, groups * seq, head_dim]
        qg = q.reshape(batch, s.num_kv_heads, self.groups * seq, s.head_dim)
        scores = (qg @ key.transpose(2, 3)) * self.scaling
        scores = scores.view(batch, s.num_kv_heads, self.groups, seq, -1)
        mask = allowed.unsqueeze(1)  # [batch, 1, 1, seq, total]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1).view(batch, s.num_kv_heads, self.groups * seq, -1)
        out = (probs @ value).view(batch, s.num_heads, seq, s.head_dim)
        out = out.transpose(1, 2).reshape(batch, seq, s.num_heads * s.head_dim)
        return attn.o_proj(out), key, value


def decoder_example_inputs(
    model: nn.Module,
    variant: str,
    layout: contract.CoefficientLayout | None,
    *,
    batch: int = 2,
    seq: int = 3,
    past: int = 4,
) -> tuple[tuple, dict]:
    """Seeded example arguments and dynamic shapes (batch, seq, past) for exporting one decoder variant."""
    s = decoder_shape(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, s.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    mask[1, :2] = 0  # a left-padded row
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    cache = [
        torch.randn(batch, s.num_kv_heads, past, s.head_dim, generator=g) for _ in range(2 * s.num_layers)
    ]
    auto = torch.export.Dim.AUTO
    rest: list[Any] = [{0: auto, 2: auto} for _ in cache]
    args: tuple = (ids, mask, positions, *cache)
    if variant == contract.FACTORED:
        factors = factor_example_inputs(model, layout)
        args += tuple(factors)
        rest += [None] * len(factors)
    elif variant != contract.MERGED:
        per_row = variant == contract.PER_ROW
        coeffs = torch.randn((batch, layout.size) if per_row else (layout.size,), generator=g) * 0.01
        args += (coeffs,)
        rest.append({0: auto} if per_row else None)
    # the signature is (input_ids, attention_mask, position_ids, *rest): shapes follow its structure
    return args, ({0: auto, 1: auto}, {0: auto, 1: auto}, {0: auto, 1: auto}, tuple(rest))


def name_decoder_dims(proto: Any, num_layers: int) -> None:
    """batch, seq, past_seq, total_seq and vocab instead of the exporter's s0, s1, ... and sums of them."""
    past: list[str | None] = [None, None, "past_seq", None]
    names: dict[str, list[str | None]] = {
        contract.INPUT_IDS: ["batch", "seq"],
        contract.ATTENTION_MASK: ["batch", "total_seq"],
        contract.POSITION_IDS: ["batch", "seq"],
        contract.COEFFICIENTS: ["batch", None],
    }
    names.update({n: past for n in contract.cache_input_names(num_layers)})
    rename_dynamic_dims(proto, names)
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.name in contract.cache_input_names(num_layers) or vi.name in contract.cache_output_names(
            num_layers
        ):
            dims[0].dim_param = "batch"
        if vi.name in contract.cache_output_names(num_layers):
            dims[2].dim_param = "total_seq"
        if vi.name == contract.LOGITS:
            for dim, new in zip(dims, ["batch", "seq", "vocab"], strict=False):
                if dim.dim_param:
                    dim.dim_param = new


def build_decoder_graph(
    model: nn.Module, basis: Basis, rank: int, variant: str, *, task: Task | None = None
) -> tuple[Any, contract.CoefficientLayout]:
    """The fp32 ONNX step graph (KV cache in and out) of one inference variant of a decoder LM."""
    layout = contract.CoefficientLayout.from_basis(basis, rank)
    if variant == contract.MERGED:
        if task is None:
            raise EdgeEigenLoraError("the merged variant needs a task to fold.")
        module = DecoderStepGraph(merged_copy(model, task)).eval()
    elif variant == contract.FACTORS:
        return build_factor_graph(model, basis, rank), layout
    elif variant == contract.FACTORED:
        copy = factored_copy(model)
        module = DecoderStepGraph(copy, FactorFeed(copy, layout)).eval()
    else:
        copy = adapter_copy(model)
        module = DecoderStepGraph(copy, CoefficientFeed(copy, layout, variant == contract.PER_ROW)).eval()
    args, shapes = decoder_example_inputs(model, variant, layout)
    layers = decoder_shape(model).num_layers
    modules = len(layout.modules)
    inputs = list(contract.graph_input_names("causal_lm", variant, layers, modules))
    outputs = list(contract.graph_output_names("causal_lm", variant, layers, modules))
    proto = to_onnx(module, args, shapes, inputs, outputs, optimize=False)
    name_decoder_dims(proto, layers)
    return proto, layout


def decoder_info(
    model: nn.Module, tokenizer: Any = None, chat_template: str | None = None
) -> contract.DecoderInfo:
    """The manifest's decoder section from the model's config (and the tokenizer's end-of-sequence ids)."""
    s = decoder_shape(model)
    eos: list[int] = []
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is not None:  # the first that defines one: what transformers' generate stops on
            eos = [int(e) for e in (value if isinstance(value, list | tuple) else [value])]
            break
    bos = getattr(model.config, "bos_token_id", None)
    return contract.DecoderInfo(
        num_layers=s.num_layers,
        num_heads=s.num_heads,
        num_kv_heads=s.num_kv_heads,
        head_dim=s.head_dim,
        max_positions=s.max_positions,
        vocab_size=s.vocab_size,
        eos_token_ids=tuple(eos),
        bos_token_id=bos if isinstance(bos, int) else None,
        chat_template=chat_template,
    )
