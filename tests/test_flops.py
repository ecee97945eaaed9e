"""The graph multiply-add counter (benchmarks/flops.py): exact counts on tiny graphs, built and exported."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from benchmarks.flops import GraphMacs, NodeMacs, count_graph, node_macs

D_IN, D_OUT, K, R, N4 = 8, 6, 4, 2, 16


def _tiny_graph() -> onnx.ModelProto:
    """x [batch, seq, 8]; per-token linear, per-call factor forming, attention-like scores, a 4-bit matmul,
    an Einsum over the batch, and a pooled Gemm head."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((D_IN, D_OUT)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((K, D_IN)).astype(np.float32), "U_t"),
        numpy_helper.from_array(np.zeros((N4, 1, 16), np.uint8), "Wq"),  # MatMulNBits: N x blocks x block/2
        numpy_helper.from_array(np.ones((N4,), np.float32), "Wscale"),
        numpy_helper.from_array(rng.standard_normal((3, D_OUT)).astype(np.float32), "Hw"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="linear"),  # B S 8 6
        helper.make_node("MatMul", ["alpha_t", "U_t"], ["a_t"], name="factor"),  # 2x4 @ 4x8: per call
        helper.make_node("Transpose", ["a_t"], ["a"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "a"], ["xa"], name="adapter"),  # B S 8 2
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["scores"], name="scores"),  # B S S 8
        helper.make_node(
            "MatMulNBits",
            ["x", "Wq", "Wscale"],
            ["q4"],
            name="nbits",
            domain="com.microsoft",
            K=D_IN,
            N=N4,
            bits=4,
            block_size=32,
        ),
        helper.make_node("Einsum", ["h", "h"], ["gram"], name="einsum", equation="bsi,bsj->bij"),  # B S 6 6
        helper.make_node("ReduceMean", ["h", "axis1"], ["pooled"], keepdims=0),
        helper.make_node("Gemm", ["pooled", "Hw"], ["logits"], name="head", transB=1),  # B 6 3
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D_IN]),
            helper.make_tensor_value_info("alpha_t", TensorProto.FLOAT, [R, K]),
        ],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
            for n in ("logits", "xa", "scores", "q4", "gram")
        ],
        inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )


def test_exact_counts_and_classes_on_a_built_graph():
    g = count_graph(_tiny_graph())
    by = {n.name: n for n in g.nodes}
    assert by["linear"] == NodeMacs("linear", "MatMul", 0, 0, D_IN * D_OUT, 0)
    assert by["factor"] == NodeMacs("factor", "MatMul", R * K * D_IN, 0, 0, 0)
    assert by["adapter"].per_token == D_IN * R and by["adapter"].kind == "per_token"
    assert by["scores"] == NodeMacs("scores", "MatMul", 0, 0, 0, D_IN)
    assert by["nbits"].per_token == D_IN * N4 and by["nbits"].op_type == "MatMulNBits"
    assert by["einsum"].per_token == D_OUT * D_OUT
    assert by["head"] == NodeMacs("head", "Gemm", 0, D_OUT * 3, 0, 0)
    assert [by[n].kind for n in ("factor", "head", "scores")] == ["per_call", "per_sequence", "attention"]
    b, s = 3, 10
    expected = (
        R * K * D_IN
        + b * D_OUT * 3
        + b * s * (D_IN * D_OUT + D_IN * R + D_IN * N4 + D_OUT**2)
        + b * s * s * D_IN
    )
    assert g.at(b, s) == expected
    assert g.total("per_call") == R * K * D_IN
    assert g.per_token(b, s) == pytest.approx(expected / (b * s))


def test_unknown_shape_is_an_error_not_a_guess():
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="m")
    with pytest.raises(ValueError, match="unknown"):
        node_macs(node, {"x": [2, -1, 8], "W": [8, 4]})


class _LoraLinear(torch.nn.Module):
    """A Linear plus an unmerged low-rank path whose factors are formed per call from a basis (as exported)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.base = torch.nn.Linear(D_IN, D_OUT)
        self.register_buffer("U_A_t", torch.randn(K, D_IN, generator=g))
        self.register_buffer("U_B_t", torch.randn(K, D_OUT, generator=g))

    def forward(self, x: torch.Tensor, alpha_a: torch.Tensor, alpha_b: torch.Tensor) -> torch.Tensor:
        a_t = (alpha_a.T @ self.U_A_t).T  # d_in x r, per call: r K d_in
        b_t = alpha_b.T @ self.U_B_t  # r x d_out, per call: r K d_out
        return self.base(x) + (x @ a_t) @ b_t


def test_exact_counts_on_a_torch_exported_graph(tmp_path):
    from edge_eigenlora.graph_modules import to_onnx

    x = torch.randn(2, 5, D_IN)
    alpha = (torch.randn(K, R), torch.randn(K, R))
    B, S = torch.export.Dim("batch"), torch.export.Dim("seq")
    shapes = {"x": {0: B, 1: S}, "alpha_a": None, "alpha_b": None}
    model = to_onnx(_LoraLinear().eval(), (x, *alpha), shapes, list(shapes), ["logits"])
    for dim in model.graph.input[0].type.tensor_type.shape.dim[:2]:
        assert dim.dim_param  # dynamic
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "seq"
    path = tmp_path / "tiny.onnx"
    onnx.save_model(model, str(path))
    g = count_graph(path)
    assert isinstance(g, GraphMacs)
    assert g.total("per_call") == R * K * (D_IN + D_OUT)
    assert g.total("per_token") == D_IN * D_OUT + R * (
        D_IN + D_OUT
    )  # the design's r (d_in + d_out) per token
    assert g.total("per_sequence") == 0 and g.total("attention") == 0
    assert g.at(4, 7) == R * K * (D_IN + D_OUT) + 28 * (D_IN * D_OUT + R * (D_IN + D_OUT))
