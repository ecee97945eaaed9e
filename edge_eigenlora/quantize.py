"""Quantization of exported graphs (basis and base model) and the error measures that choose defaults.

Basis int8: each basis tensor (stored transposed, width x d) becomes int8 + one scale per direction, read by a
per-axis DequantizeLinear (runs on ORT CPU and in .ort files). Basis 4-bit: the basis MatMuls become
com.microsoft.MatMulNBits (the only 4-bit form ORT-format files load). Base int8: onnxruntime's dynamic
quantization (MatMulInteger) of the base model's MatMuls; base 4-bit: MatMulNBits on them. The basis nodes
are excluded from the base passes so that the two choices stay independent.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_eigenlora import bundle as contract
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.onnx_tools import basis_nodes

__all__ = [
    "EMBEDDING_MIN_ROWS",
    "basis_sqnr",
    "embedding_gathers",
    "int8_per_channel",
    "matmul_nbits",
    "quantize_base",
    "quantize_basis",
    "quantize_basis_int4",
    "quantize_basis_int8",
    "quantize_embeddings",
    "quantize_embeddings_int4",
    "quantize_embeddings_int8",
    "relative_error",
    "sqnr_db",
    "to_fp16",
    "untie_transposed_weights",
]


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better; +inf when identical)."""
    reference, test = np.asarray(reference, np.float64), np.asarray(test, np.float64)
    noise = float(np.sum((reference - test) ** 2))
    if noise == 0.0:
        return float("inf")
    return float(10 * np.log10(np.sum(reference**2) / noise))


def relative_error(reference: np.ndarray, test: np.ndarray) -> float:
    """||test - reference|| / ||reference|| (Frobenius)."""
    reference, test = np.asarray(reference, np.float64), np.asarray(test, np.float64)
    return float(np.linalg.norm(test - reference) / max(np.linalg.norm(reference), 1e-30))


def _basis_initializers(model: Any) -> list[str]:
    names = [i.name for i in model.graph.initializer if i.name.endswith(contract.BASIS_SUFFIXES)]
    if not names:
        raise EdgeEigenLoraError(
            "the graph has no basis tensors (*.U_A_t / *.U_B_t); was it exported by edge-eigenlora?"
        )
    return names


EMBEDDING_MIN_ROWS = 1000  # a lookup table this tall is a vocabulary (positions and token types are smaller)


def _matmul_nodes(model: Any) -> list[Any]:
    return [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]


def int8_per_channel(weight: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per slice along `axis`: (q, scale)."""
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    scale = np.max(np.abs(weight), axis=reduce) / 127.0
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def quantize_basis_int8(model: Any) -> Any:
    """Replace each basis initializer by int8 + per-direction scales and a DequantizeLinear(axis=0)."""
    from onnx import helper, numpy_helper

    names = set(_basis_initializers(model))
    keep, new_nodes = [], []
    for init in model.graph.initializer:
        if init.name not in names:
            keep.append(init)
            continue
        q, scale = int8_per_channel(numpy_helper.to_array(init), axis=0)
        keep += [
            numpy_helper.from_array(q, init.name + "_q"),
            numpy_helper.from_array(scale, init.name + "_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), init.name + "_zero_point"),
        ]
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [init.name + "_q", init.name + "_scale", init.name + "_zero_point"],
                [init.name],
                name=init.name + "_DequantizeLinear",
                axis=0,
            )
        )
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    nodes = new_nodes + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def matmul_nbits(
    model: Any,
    exclude: list[str],
    block_size: int,
    op_types: tuple[str, ...] = ("MatMul",),
    bits: int = 4,
    symmetric: bool = True,
    accuracy_level: int = 0,
) -> Any:
    """MatMulNBits (4 or 8 bits, blocks of `block_size`, symmetric or with zero points) on every constant-weight
    MatMul not excluded; with op_types ("Gather",) the same blocks make a com.microsoft.GatherBlockQuantized."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    config = DefaultWeightOnlyQuantConfig(
        bits=bits,
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=accuracy_level,
        op_types_to_quantize=op_types,
        quant_axes=(("Gather", 1),),
    )
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def embedding_gathers(model: Any, min_rows: int = EMBEDDING_MIN_ROWS) -> list[int]:
    """Positions (in graph.node) of the Gathers that look up rows of a large constant float table."""
    from onnx import TensorProto

    tables = {
        i.name
        for i in model.graph.initializer
        if i.data_type == TensorProto.FLOAT and len(i.dims) == 2 and i.dims[0] >= min_rows
    }
    return [k for k, n in enumerate(model.graph.node) if n.op_type == "Gather" and n.input[0] in tables]


def untie_transposed_weights(model: Any) -> Any:
    """Give each Transpose of a constant weight its own transposed initializer (a tied LM head reads the
    embedding table through one): the head's MatMul then has a constant weight that the base quantizers
    take, and the table stays for the lookup. Quantized, both copies together are smaller than one fp32."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if (
            node.op_type == "Transpose"
            and node.input[0] in inits
            and not node.input[0].endswith(contract.BASIS_SUFFIXES)
        ):
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            arr = numpy_helper.to_array(inits[node.input[0]])
            model.graph.initializer.append(
                numpy_helper.from_array(arr.transpose(perm).copy(), node.output[0])
            )
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
    unused = [i for i in model.graph.initializer if i.name not in used]
    for i in unused:
        model.graph.initializer.remove(i)
    return model


def _replace_embedding_gathers(model: Any, replace: Any) -> Any:
    """Swap each embedding Gather for `replace(table, ids, output)` -> (new initializers, new nodes)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    targets = set(embedding_gathers(model))
    nodes = []
    for k, node in enumerate(model.graph.node):
        if k not in targets:
            nodes.append(node)
            continue
        name = node.input[0]
        tensors, new_nodes = replace(
            numpy_helper.to_array(inits[name]).astype(np.float32), node.input[1], node.output[0]
        )
        model.graph.initializer.remove(inits[name])
        model.graph.initializer.extend(
            numpy_helper.from_array(v, f"{name}{suffix}") for suffix, v in tensors.items()
        )
        nodes += [n(name) for n in new_nodes]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def quantize_embeddings_int8(model: Any) -> Any:
    """Each token-embedding table -> int8 rows + one scale per row: Gather(int8) -> Cast -> Mul(Gather(scale))."""
    from onnx import TensorProto, helper

    def replace(w: np.ndarray, ids: str, out: str) -> tuple[dict[str, np.ndarray], list[Any]]:
        q, scale = int8_per_channel(w, axis=0)
        tensors = {"_q": q, "_row_scale": scale, "_last_axis": np.array([-1], np.int64)}
        return tensors, [
            lambda t: helper.make_node(
                "Gather", [t + "_q", ids], [out + "_q"], name=out + "_GatherInt8", axis=0
            ),
            lambda t: helper.make_node(
                "Cast", [out + "_q"], [out + "_f"], name=out + "_Cast", to=TensorProto.FLOAT
            ),
            lambda t: helper.make_node(
                "Gather", [t + "_row_scale", ids], [out + "_s"], name=out + "_GatherScale", axis=0
            ),
            lambda t: helper.make_node(
                "Unsqueeze", [out + "_s", t + "_last_axis"], [out + "_s1"], name=out + "_Unsq"
            ),
            lambda t: helper.make_node("Mul", [out + "_f", out + "_s1"], [out], name=out + "_Dequantize"),
        ]

    return _replace_embedding_gathers(model, replace)


def quantize_embeddings_int4(model: Any, block_size: int = 32) -> Any:
    """Each token-embedding table -> com.microsoft.GatherBlockQuantized: 4-bit values packed two per uint8 (low
    nibble first, stored +8: MatMulNBits' convention), one scale per block of the hidden axis. uint8 storage,
    not the int4 type, so that ORT-format (.ort) files load it."""
    from onnx import helper

    def replace(w: np.ndarray, ids: str, out: str) -> tuple[dict[str, np.ndarray], list[Any]]:
        block = block_size
        while w.shape[1] % block:
            block //= 2
        if block < 2:
            raise EdgeEigenLoraError(f"embedding of {out}: hidden size {w.shape[1]} has no even block size.")
        blocks = w.reshape(w.shape[0], -1, block)
        scale = np.abs(blocks).max(-1) / 7.0
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        q = np.clip(np.round(blocks / scale[..., None]), -8, 7).astype(np.int16).reshape(w.shape) + 8
        packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
        node = lambda t: helper.make_node(  # noqa: E731
            "GatherBlockQuantized",
            [t + "_q4", ids, t + "_q4_scale"],
            [out],
            name=out + "_GatherBlockQuantized",
            domain="com.microsoft",
            gather_axis=0,
            quantize_axis=1,
            block_size=block,
            bits=4,
        )
        return {"_q4": packed, "_q4_scale": scale}, [node]

    model = _replace_embedding_gathers(model, replace)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def quantize_embeddings(model: Any, mode: str, *, block_size: int = 32) -> Any:
    """int8 (per-row scales) or 4-bit (GatherBlockQuantized, blocks along the hidden axis) token embeddings."""
    if mode == "none" or not embedding_gathers(model):
        return model
    if mode == "int8":
        return quantize_embeddings_int8(model)
    if mode == "int4":
        return quantize_embeddings_int4(model, block_size)
    raise EdgeEigenLoraError(f"embedding quantization must be none, int8 or int4, got {mode!r}.")


def _attr(node: Any, name: str, default: int = 0) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def share_head_table(model: Any, max_error: float = 0.02) -> Any:
    """Read each fp32 token table through the 8-bit MatMulNBits weight of the tied LM head, not a copy of it.

    A tied head is untied for quantization (`untie_transposed_weights`), so an int8 decoder would store the
    vocabulary twice (SmolLM2: 2 x 27 MiB). Instead the lookup becomes a com.microsoft.GatherBlockQuantized
    (bits 8) over the head's uint8 blocks [vocab, blocks, block] and their scales, then Reshape and Slice off
    the block padding. Only a head whose dequantized weight is the table within `max_error` relative error
    (the tie) is used; any other table is left for `quantize_embeddings`.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    heads = [
        n
        for n in model.graph.node
        if n.op_type == "MatMulNBits"
        and _attr(n, "bits", 4) == 8
        and len(n.input) == 3
        and n.input[1] in inits
    ]
    replaced: dict[int, list[Any]] = {}
    for k in embedding_gathers(model):
        gather = model.graph.node[k]
        table = numpy_helper.to_array(inits[gather.input[0]]).astype(np.float32)
        vocab, hidden = table.shape
        for head in heads:
            if (_attr(head, "N"), _attr(head, "K")) != (vocab, hidden):
                continue
            q = numpy_helper.to_array(inits[head.input[1]])  # uint8 [N, blocks, block], stored + 128
            scale = numpy_helper.to_array(inits[head.input[2]]).astype(np.float32).reshape(vocab, -1, 1)
            block = q.shape[2]
            rows = np.linspace(0, vocab - 1, 64).astype(int)  # a sample of rows: enough to tell a tie
            approx = ((q[rows].astype(np.float32) - 128.0) * scale[rows]).reshape(len(rows), -1)[:, :hidden]
            if relative_error(table[rows], approx) > max_error:
                continue
            out, name = gather.output[0], gather.input[0]
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(scale, f"{name}_head_scale"),  # the head's bytes, another shape
                    numpy_helper.from_array(np.array([0, 0, -1], np.int64), f"{name}_flat"),
                    numpy_helper.from_array(np.array([0], np.int64), f"{name}_start"),
                    numpy_helper.from_array(np.array([hidden], np.int64), f"{name}_end"),
                    numpy_helper.from_array(np.array([-1], np.int64), f"{name}_axis"),
                ]
            )
            replaced[k] = [
                helper.make_node(
                    "GatherBlockQuantized",
                    [head.input[1], gather.input[1], f"{name}_head_scale"],
                    [out + "_blocks"],
                    name=out + "_GatherHeadBlocks",
                    domain="com.microsoft",
                    gather_axis=0,
                    quantize_axis=2,
                    block_size=block,
                    bits=8,
                ),
                helper.make_node(
                    "Reshape", [out + "_blocks", f"{name}_flat"], [out + "_padded"], name=out + "_Flat"
                ),
                helper.make_node(
                    "Slice",
                    [out + "_padded", f"{name}_start", f"{name}_end", f"{name}_axis"],
                    [out],
                    name=out + "_Unpad",
                ),
            ]
            model.graph.initializer.remove(inits[name])
            break
    if not replaced:
        return model
    nodes = [m for k, n in enumerate(model.graph.node) for m in replaced.get(k, [n])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def quantize_basis_int4(model: Any, block_size: int = 32) -> Any:
    """Basis MatMuls -> MatMulNBits (4-bit, symmetric, blocks along the basis width)."""
    _basis_initializers(model)
    keep = set(basis_nodes(model))
    exclude = [n.name for n in _matmul_nodes(model) if n.name not in keep]
    return matmul_nbits(model, exclude, min(block_size, _basis_block(model)))


def _basis_block(model: Any) -> int:
    """Largest power-of-two block (>= 16) not above the basis width, so blocks do not pad much."""
    from onnx import numpy_helper

    width = min(
        numpy_helper.to_array(i).shape[0]
        for i in model.graph.initializer
        if i.name.endswith(contract.BASIS_SUFFIXES)
    )
    block = 16
    while block * 2 <= width and block < 128:
        block *= 2
    return block


def quantize_basis(model: Any, mode: str, *, block_size: int = 32) -> Any:
    if mode == "none":
        return model
    if mode == "int8":
        return quantize_basis_int8(model)
    if mode == "int4":
        return quantize_basis_int4(model, block_size)
    raise EdgeEigenLoraError(f"basis quantization must be none, int8 or int4, got {mode!r}.")


def quantize_base(
    model: Any,
    mode: str,
    *,
    block_size: int = 32,
    exclude: list[str] | None = None,
    embeddings: bool = True,
    decoder: bool = False,
) -> Any:
    """Quantize the base model's constant-weight MatMuls, leaving `exclude` (default: the basis MatMuls) fp32,
    and (embeddings=True) its token-embedding tables in the same mode; a tied LM head is untied first.

    int8 is dynamic (MatMulInteger: int8 activations too); for a `decoder` LM it is weight-only (8-bit
    MatMulNBits, float activations) and int4 is asymmetric (a zero point per block): on SmolLM2-135M dynamic
    int8 cost +0.32 nats per token where weight-only cost +0.005, and symmetric 4-bit +0.29 where
    asymmetric cost +0.11 (docs/lm.md).
    """
    import onnx

    if mode == "none":
        return model
    if mode == "int8" and decoder:
        # accuracy_level 4 (int8 activations per block) selects ORT's fast 8-bit kernel: one SmolLM2 token in
        # 47 ms instead of 1006 ms (fp32: 79 ms), for +0.018 nats instead of +0.008 (docs/lm.md). A tied
        # table is then read through the head's 8-bit blocks: the vocabulary is stored once.
        model = untie_transposed_weights(model) if embeddings else model
        exclude = basis_nodes(model) if exclude is None else exclude
        model = matmul_nbits(model, exclude, max(block_size, 128), bits=8, accuracy_level=4)
        return quantize_embeddings(share_head_table(model), mode) if embeddings else model
    if embeddings:
        model = quantize_embeddings(untie_transposed_weights(model), mode, block_size=block_size)
    exclude = basis_nodes(model) if exclude is None else exclude
    if mode == "int4":
        return matmul_nbits(model, exclude, block_size, symmetric=not decoder)
    if mode != "int8":
        raise EdgeEigenLoraError(f"base quantization must be none, int8 or int4, got {mode!r}.")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save_model(model, str(src))
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
        )
        return onnx.load(str(dst))


def to_fp16(model: Any) -> Any:
    """fp16 weights and compute (for GPU execution providers); float32 inputs and outputs are kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)


def basis_sqnr(basis: Any, mode: str, block_size: int = 32) -> dict[str, float]:
    """SQNR (dB) of the quantized basis against fp32, worst and mean over modules and sides (numpy emulation)."""
    values = []
    for mb in basis.modules.values():
        for u in (mb.U_A.T, mb.U_B.T):  # width x d, as stored in the graph
            if mode == "int8":
                q, s = int8_per_channel(u, axis=0)
                deq = q * s[:, None]
            elif mode == "int4":
                deq = _int4_blocks(u, min(block_size, 1 << (max(u.shape[0], 16).bit_length() - 1)))
            else:
                deq = u
            values.append(sqnr_db(u, deq))
    return {"min_db": float(np.min(values)), "mean_db": float(np.mean(values))}


def _int4_blocks(w: np.ndarray, block: int) -> np.ndarray:
    """Symmetric 4-bit along axis 0 in blocks (MatMulNBits' scheme: scale = absmax / 8, range [-8, 7])."""
    out = np.empty_like(w, dtype=np.float64)
    for start in range(0, w.shape[0], block):
        chunk = w[start : start + block].astype(np.float64)
        amax = np.max(np.abs(chunk), axis=0, keepdims=True)
        # the quantizer picks the signed max so that -8 is used: scale = max_abs_signed / -8
        scale = np.where(amax == 0, 1.0, amax / 8.0)
        out[start : start + block] = np.clip(np.round(chunk / scale), -8, 7) * scale
    return out
