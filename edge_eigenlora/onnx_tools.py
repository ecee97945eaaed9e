"""Tools on ONNX ModelProtos (no torch): cleaning, I/O description, axis names, op analysis, ORT-format
conversion, and storing every graph's weights once in a shared external-data file.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge_eigenlora import bundle as contract
from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = [
    "WeightStore",
    "basis_nodes",
    "clean_model",
    "convert_to_ort",
    "dedupe_transposed_initializers",
    "graph_io",
    "name_contract_dims",
    "op_counts",
    "per_token_matmul_widths",
    "rename_dynamic_dims",
]


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
                if attr.HasField("g"):
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


def graph_io(model: Any) -> tuple[tuple[contract.TensorSpec, ...], tuple[contract.TensorSpec, ...]]:
    """The graph's inputs (initializers excluded) and outputs as the manifest describes them."""
    from onnx import helper

    init = {i.name for i in model.graph.initializer}

    def spec(vi: Any) -> contract.TensorSpec:
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in vi.type.tensor_type.shape.dim
        )
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
        return contract.TensorSpec(vi.name, dtype, dims)

    inputs = tuple(spec(v) for v in model.graph.input if v.name not in init)
    return inputs, tuple(spec(v) for v in model.graph.output)


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


def name_contract_dims(model: Any, kind: str, variant: str) -> None:
    """Give the dynamic axes the contract's names (batch, seq, labels, vocab) instead of s0, s1, ..."""
    per_row = variant == contract.PER_ROW
    lead = ["batch"] if per_row else []
    rename_dynamic_dims(
        model,
        {
            contract.INPUT_IDS: ["batch", "seq"],
            contract.ATTENTION_MASK: ["batch", "seq"],
            contract.LABELS: ["batch", "seq"],
            contract.COEFFICIENTS: ["batch", None] if per_row else [None],
            contract.HEAD_WEIGHT: [*lead, "labels", None],
            contract.HEAD_BIAS: [*lead, "labels"],
        },
    )
    want = ["batch", "seq", "vocab"] if kind == "causal_lm" else ["batch", "labels"]
    for output in model.graph.output:
        if output.name == contract.LOGITS:
            for dim, new in zip(output.type.tensor_type.shape.dim, want, strict=False):
                if dim.dim_param:
                    dim.dim_param = new


def op_counts(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def basis_nodes(model: Any) -> list[str]:
    """Names of the MatMul / MatMulNBits nodes whose constant weight is (derived from) a basis tensor."""
    producers = {o: n for n in model.graph.node for o in n.output}
    suffixes = contract.BASIS_SUFFIXES
    out = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "MatMulNBits") or len(node.input) < 2:
            continue
        src = node.input[1]
        if src in producers and producers[src].op_type == "DequantizeLinear":
            src = producers[src].input[0]
        if src.endswith(suffixes) or any(src.endswith(s + "_Q4") or src.endswith(s + "_q") for s in suffixes):
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
        shapes[vi.name] = [
            d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim
        ]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    tainted = {contract.INPUT_IDS, contract.ATTENTION_MASK}
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


def dedupe_transposed_initializers(model: Any, min_size: int = 4096) -> Any:
    """Store a weight once when a graph holds both W and W^T: W^T becomes a Transpose node.

    The backward pass multiplies by each frozen weight's transpose, which the exporter folds into a second
    constant. Keeping one copy shrinks the file (onnxruntime may fold the Transpose again when it loads).
    """
    from onnx import helper, numpy_helper

    by_key: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    for init in model.graph.initializer:
        if len(init.dims) == 2 and int(np.prod(init.dims)) >= min_size:
            arr = numpy_helper.to_array(init)
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
    for k, (dup, src) in enumerate(sorted(replace.items())):
        model.graph.node.insert(
            k, helper.make_node("Transpose", [src], [dup], name=f"dedupe_T_{k}", perm=[1, 0])
        )
    return model


def convert_to_ort(model: Any, out_dir: Path, stem: str) -> tuple[bytes, bytes]:
    """ORT-format (.ort) bytes + its required-operators config, via onnxruntime's own converter.

    `model` must be self-contained (weights inline): an .ort file carries its weights (ORT Mobile loads one
    flatbuffer), so the shared external-data file does not apply to it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{stem}.onnx"
        src.write_bytes(model.SerializeToString())
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime.tools.convert_onnx_models_to_ort",
            str(src),
            "--output_dir",
            tmp,
            "--optimization_style",
            "Fixed",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        ort_file = next(Path(tmp).glob("*.ort"), None)
        config = next(Path(tmp).glob("*required_operators*.config"), None)
        if result.returncode != 0 or ort_file is None or config is None:
            tail = (result.stdout + result.stderr)[-600:]
            raise EdgeEigenLoraError(f"ORT-format conversion of {stem}.onnx failed: {tail}")
        # The config's comment lines name the temporary input path: keep only the operator lines.
        lines = [ln for ln in config.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        return ort_file.read_bytes(), ("\n".join(lines) + "\n").encode()


class WeightStore:
    """Moves graphs' large initializers into one external-data file, each distinct tensor stored once.

    Tensors are matched by content (dtype and bytes), so every graph of a bundle (shared, per-row, the merged
    graph's unchanged weights, the train step's frozen weights) points at the same bytes whatever the
    exporter named them. A 2-D tensor whose transpose is already stored becomes a Transpose node of it.
    Offsets are aligned to 4096 bytes, so onnxruntime can memory-map them.
    """

    ALIGN = 4096

    def __init__(self, location: str = contract.WEIGHTS_FILE, min_bytes: int = 1024) -> None:
        self.location = location
        self.min_bytes = min_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self._index: dict[str, tuple[str, int, int]] = {}  # content key -> (file, offset, length)
        self.used: set[str] = set()  # files the graphs added so far point into

    def index_existing(self, root: Path, graph_files: Iterable[str]) -> None:
        """Learn the tensors a bundle already stores, so new graphs point at them instead of copying."""
        import onnx
        from onnx import TensorProto, helper

        for rel in graph_files:
            model = onnx.load(str(root / rel), load_external_data=False)
            for init in model.graph.initializer:
                if init.data_location != TensorProto.EXTERNAL:
                    continue
                info = {e.key: e.value for e in init.external_data}
                location, offset, length = info["location"], int(info.get("offset", 0)), int(info["length"])
                with open(root / location, "rb") as fh:
                    fh.seek(offset)
                    raw = fh.read(length)
                dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
                self._index.setdefault(self._key(np.frombuffer(raw, dtype)), (location, offset, length))

    def add_graph(self, model: Any) -> Any:
        """Rewrite `model` in place so its large initializers live in this store; returns it."""
        from onnx import TensorProto, helper, numpy_helper

        kept, transposes = [], []
        for init in model.graph.initializer:
            if init.data_location == TensorProto.EXTERNAL:
                raise EdgeEigenLoraError(
                    f"initializer {init.name} is already external; load the graph with its data."
                )
            array = numpy_helper.to_array(init)
            if array.nbytes < self.min_bytes:
                kept.append(init)
                continue
            key = self._key(array)
            if key not in self._index and array.ndim == 2:
                key_t = self._key(array.T)
                if key_t in self._index:
                    source = numpy_helper.from_array(np.ascontiguousarray(array.T), init.name + "__stored_T")
                    kept.append(self._point(source, key_t))
                    transposes.append(
                        helper.make_node(
                            "Transpose", [source.name], [init.name], name=init.name + "__T", perm=[1, 0]
                        )
                    )
                    continue
            if key not in self._index:
                self._append(key, np.ascontiguousarray(array).tobytes())
            kept.append(self._point(numpy_helper.from_array(array, init.name), key))
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        for k, node in enumerate(transposes):
            model.graph.node.insert(k, node)
        return model

    @staticmethod
    def _key(array: np.ndarray) -> str:
        digest = hashlib.sha256(array.dtype.str.encode())
        digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def _append(self, key: str, data: bytes) -> None:
        pad = (-self.size) % self.ALIGN
        if pad:
            self.chunks.append(b"\0" * pad)
            self.size += pad
        self._index[key] = (self.location, self.size, len(data))
        self.chunks.append(data)
        self.size += len(data)

    def _point(self, tensor: Any, key: str) -> Any:
        from onnx import TensorProto

        location, offset, length = self._index[key]
        self.used.add(location)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = k, v
        return tensor

    def data(self) -> Iterable[bytes]:
        return iter(self.chunks)
