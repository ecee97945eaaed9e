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
    "basis_sqnr",
    "int8_per_channel",
    "matmul_nbits",
    "quantize_base",
    "quantize_basis",
    "quantize_basis_int4",
    "quantize_basis_int8",
    "relative_error",
    "sqnr_db",
    "to_fp16",
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


def matmul_nbits(model: Any, exclude: list[str], block_size: int) -> Any:
    """4-bit MatMulNBits (symmetric, blocks of `block_size`) on every constant-weight MatMul not excluded."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(
        model, bits=4, block_size=block_size, is_symmetric=True, nodes_to_exclude=exclude
    )
    quantizer.process()
    return quantizer.model.model


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


def quantize_base(model: Any, mode: str, *, block_size: int = 32, exclude: list[str] | None = None) -> Any:
    """Quantize the base model's constant-weight MatMuls, leaving `exclude` (default: the basis MatMuls) fp32."""
    import onnx

    if mode == "none":
        return model
    exclude = basis_nodes(model) if exclude is None else exclude
    if mode == "int4":
        return matmul_nbits(model, exclude, block_size)
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
