"""Multiply-adds counted from an ONNX graph: the arithmetic floor each deployment variant must pay.

Why from the graph: the latency report compares a measured time with what the exported graph asks the CPU to
do, so a variant that is slow because of overhead (small unfused matmuls, per-call work) is told apart from one
that is slow because it does more arithmetic.

How: the graph's dynamic input dimensions are set to concrete values (batch B, sequence S, `extra` names such as
labels), onnxruntime's symbolic shape inference propagates shapes (it knows the com.microsoft ops, e.g.
MatMulNBits, and falls back to ONNX's inference for the rest), and every MatMul, Gemm, MatMulInteger,
MatMulNBits and Einsum node is counted. Doing this at several (B, S) points and solving for
    macs(B, S) = per_call + per_sequence * B + per_token * B * S + attention * B * S^2
classifies each node exactly (integer coefficients, zero residual or an error):
    per_call       forming a task's factors from the basis (once per run, whatever the batch)
    per_sequence   pooled-vector work (the head), per-row factor forming
    per_token      linear layers, adapters
    attention      scores and context (per token, growing with the sequence)
Elementwise ops, softmax, layer norm and gathers are not counted: they are not multiply-adds of weights and are a
small, variant-independent share on these models.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

COUNTED = ("MatMul", "Gemm", "MatMulInteger", "MatMulNBits", "Einsum")
POINTS: tuple[tuple[int, int], ...] = ((1, 8), (2, 8), (1, 16), (3, 16), (1, 32), (2, 40))
CLASSES = ("per_call", "per_sequence", "per_token", "attention")


@dataclass(frozen=True)
class NodeMacs:
    """One counted node: its coefficients in macs(B, S) = c + b B + t B S + a B S^2 and its class."""

    name: str
    op_type: str
    per_call: int
    per_sequence: int
    per_token: int
    attention: int

    @property
    def kind(self) -> str:
        """The highest-order term present (a node is classified by how its cost grows)."""
        for label in ("attention", "per_token", "per_sequence", "per_call"):
            if getattr(self, label):
                return label
        return "per_call"

    def at(self, batch: int, seq: int) -> int:
        return (
            self.per_call
            + self.per_sequence * batch
            + self.per_token * batch * seq
            + self.attention * batch * seq * seq
        )


@dataclass(frozen=True)
class GraphMacs:
    """All counted nodes of a graph, with totals per class."""

    nodes: tuple[NodeMacs, ...]

    def total(self, label: str) -> int:
        return int(sum(getattr(n, label) for n in self.nodes))

    def at(self, batch: int, seq: int) -> int:
        """Multiply-adds of one run on a [batch, seq] input."""
        return int(sum(n.at(batch, seq) for n in self.nodes))

    def per_token(self, batch: int, seq: int) -> float:
        """Multiply-adds per token of one run, per-call and per-sequence work amortized over its tokens."""
        return self.at(batch, seq) / (batch * seq)

    def summary(self, batch: int, seq: int) -> dict[str, Any]:
        return {
            "per_call": self.total("per_call"),
            "per_sequence": self.total("per_sequence"),
            "per_token_linear": self.total("per_token"),
            "attention_per_token_at_seq": self.total("attention") * seq,
            "per_token_amortized": self.per_token(batch, seq),
            "total": self.at(batch, seq),
            "nodes": len(self.nodes),
            "nodes_by_kind": {k: sum(1 for n in self.nodes if n.kind == k) for k in CLASSES},
        }


def _concrete(model: Any, batch: int, seq: int, extra: dict[str, int]) -> Any:
    """A copy of the model whose dynamic input dims are fixed: batch, seq and names in `extra` (others: 1)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    values = {"batch": batch, "seq": seq, **extra}
    for vi in model.graph.input:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") or not dim.HasField("dim_value"):
                name = dim.dim_param
                dim.Clear()
                dim.dim_value = int(values.get(name, 1))
    del model.graph.value_info[:]
    for vi in model.graph.output:
        vi.type.tensor_type.shape.Clear()
    return _plain_gathers(model)


def _plain_gathers(model: Any) -> Any:
    """Each com.microsoft.GatherBlockQuantized (a quantized embedding, which the symbolic shape inference does
    not know) -> a Gather over a float table of its unpacked shape: the same output shape, no multiply-adds."""
    from onnx import TensorProto, helper

    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "GatherBlockQuantized":
            continue
        dims = list(inits[node.input[0]].dims)
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        dims[-1] = dims[-1] * 8 // bits
        name = node.input[0] + "_unpacked"
        model.graph.initializer.append(
            helper.make_tensor(name, TensorProto.FLOAT, dims, np.zeros(int(np.prod(dims)), np.float32))
        )
        node.CopyFrom(
            helper.make_node("Gather", [name, node.input[1]], list(node.output), name=node.name, axis=0)
        )
    return model


def _shapes(model: Any) -> dict[str, list[int]]:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def node_macs(node: Any, shapes: dict[str, list[int]]) -> int:
    """Multiply-adds of one node from its input shapes (ValueError when a shape is unknown)."""

    def shape(i: int) -> list[int]:
        s = shapes.get(node.input[i])
        if s is None or any(d < 0 for d in s):
            raise ValueError(
                f"{node.op_type} node {node.name!r}: shape of input {node.input[i]!r} unknown ({s})"
            )
        return s

    op = node.op_type
    if op in ("MatMul", "MatMulInteger"):
        a, b = shape(0), shape(1)
        a2 = [1, *a] if len(a) == 1 else a
        b2 = [*b, 1] if len(b) == 1 else b
        batch = np.broadcast_shapes(tuple(a2[:-2]), tuple(b2[:-2]))
        return int(np.prod(batch, dtype=np.int64)) * a2[-2] * a2[-1] * b2[-1]
    if op == "Gemm":
        a, b = shape(0), shape(1)
        m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
        n = b[0] if _attr(node, "transB", 0) else b[1]
        return m * k * n
    if op == "MatMulNBits":
        a = shape(0)
        k, n = int(_attr(node, "K")), int(_attr(node, "N"))
        return int(np.prod(a[:-1], dtype=np.int64)) * k * n
    if op == "Einsum":
        inputs = _attr(node, "equation").decode().replace(" ", "").split("->")[0].split(",")
        sizes: dict[str, int] = {}
        for i, term in enumerate(inputs):
            for letter, d in zip(term, shape(i), strict=True):
                sizes[letter] = max(sizes.get(letter, 1), d)
        return int(np.prod(list(sizes.values()), dtype=np.int64))
    raise ValueError(f"not a counted op: {op}")


def count_at(
    model: Any, batch: int, seq: int, extra: dict[str, int] | None = None
) -> dict[str, tuple[str, int]]:
    """node name -> (op type, multiply-adds) for one concrete input shape."""
    concrete = _concrete(model, batch, seq, extra or {})
    shapes = _shapes(concrete)
    out = {}
    for i, node in enumerate(concrete.graph.node):
        if node.op_type in COUNTED:
            out[node.name or f"{node.op_type}_{i}"] = (node.op_type, node_macs(node, shapes))
    return out


def count_graph(
    model: Any, extra: dict[str, int] | None = None, points: Sequence[tuple[int, int]] = POINTS
) -> GraphMacs:
    """Count every matmul-like node at several (B, S) points and solve for its exact cost polynomial."""
    import onnx

    if isinstance(model, str | Path):
        model = onnx.load(str(model), load_external_data=True)
    per_point = [count_at(model, b, s, extra) for b, s in points]
    design = np.array([[1, b, b * s, b * s * s] for b, s in points], np.float64)
    nodes = []
    for name, (op, _) in per_point[0].items():
        y = np.array([p[name][1] for p in per_point], np.float64)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        ints = np.rint(coef).astype(np.int64)
        if not np.array_equal(design @ ints, y):
            raise ValueError(
                f"node {name!r}: multiply-adds {y.tolist()} at {list(points)} fit no c+bB+tBS+aBS^2"
            )
        nodes.append(NodeMacs(name, op, *(int(v) for v in ints)))
    return GraphMacs(tuple(nodes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("graphs", nargs="+", help="ONNX files")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--labels", type=int, default=3, help="value of a 'labels' dimension")
    p.add_argument("--nodes", action="store_true", help="list every counted node")
    args = p.parse_args(argv)
    for path in args.graphs:
        g = count_graph(path, {"labels": args.labels})
        out: dict[str, Any] = {"graph": path, **g.summary(args.batch, args.seq)}
        if args.nodes:
            out["node_list"] = [asdict(n) | {"kind": n.kind} for n in g.nodes]
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def variant_table(build: Path, out: Path) -> Path:
    """flops.json for a perf build: per variant/quant graph, its multiply-add totals by class."""
    info = json.loads((Path(build) / "variants.json").read_text())
    graphs: dict[str, Any] = {}
    for variant, files in info["files"].items():
        for quant, rel in files.items():
            g = count_graph(Path(build) / rel, {"labels": info["labels"]})
            graphs[f"{variant}/{quant}"] = {
                **{k: g.total(k) for k in CLASSES},
                "nodes": len(g.nodes),
                "nodes_by_kind": {k: sum(1 for n in g.nodes if n.kind == k) for k in CLASSES},
                "by_op": {
                    op: sum(1 for n in g.nodes if n.op_type == op)
                    for op in sorted({n.op_type for n in g.nodes})
                },
            }
            print(f"[flops] {variant}/{quant}: {graphs[f'{variant}/{quant}']}", flush=True)
    path = Path(out) / "flops.json"
    path.write_text(json.dumps({"graphs": graphs}, indent=1) + "\n")
    return path
