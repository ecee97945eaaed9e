"""Property-based fuzzing of every reader that takes a file from outside (hypothesis, pinned in constraints).

Readers: the PEFT adapter config, the safetensors header and tensors of adapters, task files, basis files and
the labelled CSV/JSONL reader. The property is the same for each: whatever the bytes, the reader returns a
value or raises EdgeEigenLoraError with a non-empty message; never another exception (a traceback for the
user). The manifest reader is fuzzed with the bundle format.

Each test runs EXAMPLES generated inputs (a few thousand); FUZZ_EXAMPLES=N overrides it for a longer run.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_eigenlora.adapters import read_adapter
from edge_eigenlora.basis import SubspaceConfig, fit_basis, load_basis, save_basis
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.labelled_file import read_labelled_file
from edge_eigenlora.task import Task, load_task, save_task
from tests.helpers import write_peft_adapter

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
Q, V = "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"


def refused_or_read(read, *args, **kwargs):
    """The property: a result, or the toolkit's own error with a message."""
    try:
        return read(*args, **kwargs)
    except EdgeEigenLoraError as exc:
        assert str(exc).strip(), "an EdgeEigenLoraError without a message"
        return None


# -- strategies -------------------------------------------------------------------------------------------
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-10, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "abc", "false", "true", "8", "NaN", "LORA", "lora", "ADALORA"]),
    st.text(max_size=6),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=4,
)
PATTERN_KEYS = st.one_of(
    st.sampled_from(["value", "query", "self.value", ".*", "(", "a)|(b", "(?i)value", "[", "layer.0", "\\"]),
    st.text(max_size=5),
)


def _bytes_mutations(original: bytes) -> st.SearchStrategy[bytes]:
    """Truncations, byte flips and insertions of a valid file: the faults a copy or a disk produces."""
    n = len(original)
    truncate = st.integers(0, n).map(lambda i: original[:i])
    flip = st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1, max_size=4).map(
        lambda edits: _apply_flips(original, edits)
    )
    insert = st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=16)).map(
        lambda e: original[: e[0]] + e[1] + original[e[0] :]
    )
    return st.one_of(truncate, flip, insert)


def _apply_flips(original: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(original)
    for pos, xor in edits:
        data[pos] ^= xor
    return bytes(data)


def _safetensors(header: object, data: bytes, length: int | None = None) -> bytes:
    raw = json.dumps(header, allow_nan=True).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


DTYPES = st.sampled_from(
    ["F32", "F16", "BF16", "F64", "I8", "U8", "I64", "BOOL", "F8_E4M3", "F4", "C64", "f32", ""]
)
SHAPES = st.one_of(st.lists(st.integers(0, 9), max_size=3), JSON_VALUES)
OFFSETS = st.one_of(st.lists(st.integers(-2, 300), min_size=2, max_size=2), JSON_VALUES)
TENSOR_NAMES = st.sampled_from(
    [
        f"base_model.model.{Q}.lora_A.weight",
        f"base_model.model.{Q}.lora_B.weight",
        f"{V}.lora_A.weight",
        f"{V}.lora_B.weight",
        "head.weight",
        "x.lora_embedding_A",
        "__metadata__",
        "",
    ]
)


@st.composite
def safetensors_files(draw) -> bytes:
    """Headers written by hand: any dtype, shape and offsets, a wrong length field, any amount of data."""
    header = {}
    for name in draw(st.lists(TENSOR_NAMES, max_size=4, unique=True)):
        if name == "__metadata__":
            header[name] = draw(st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=2) | JSON_VALUES)
            continue
        entry = {"dtype": draw(DTYPES), "shape": draw(SHAPES), "data_offsets": draw(OFFSETS)}
        if draw(st.booleans()):  # a consistent entry: right size for its shape
            shape = draw(st.lists(st.integers(1, 4), min_size=2, max_size=2))
            begin = draw(st.integers(0, 64))
            size = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1}.get(entry["dtype"], 4)
            entry.update(shape=shape, data_offsets=[begin, begin + shape[0] * shape[1] * size])
        header[name] = entry
    data = draw(st.binary(max_size=300))
    length = draw(st.one_of(st.none(), st.integers(0, 2**64 - 1)))
    return _safetensors(draw(st.one_of(st.just(header), JSON_VALUES)), data, length)


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    # Thousands of small writes: on a tmpfs when there is one (here /tmp costs ~3 ms per write, /dev/shm 0.01 ms).
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="edge-eigenlora-fuzz.", dir=shm))
    else:
        root = tmp_path_factory.mktemp("fuzz")
    try:
        yield _make_files(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _make_files(root: Path) -> dict:
    rng = np.random.default_rng(0)
    mods = {m: (rng.standard_normal((4, 8)), rng.standard_normal((8, 4))) for m in (Q, V)}
    adapters = [write_peft_adapter(root / f"a{i}", mods, r=4, alpha=8) for i in range(2)]
    bank = [
        write_peft_adapter(
            root / f"bank{i}",
            {m: (rng.standard_normal((4, 8)), rng.standard_normal((8, 4))) for m in (Q, V)},
            r=4,
            alpha=8,
        )
        for i in range(2)
    ]
    from edge_eigenlora.adapters import load_bank

    basis = fit_basis(load_bank(bank), SubspaceConfig(k=4), progress=False)
    basis_path = save_basis(basis, root / "basis.safetensors")
    task = Task(
        name="t",
        basis_fingerprint=basis.fingerprint,
        coefficients={m: (rng.standard_normal((4, 2)).astype(np.float32),) * 2 for m in (Q, V)},
        labels=["a", "b"],
        head_weight=np.ones((2, 8), np.float32),
        head_bias=np.zeros(2, np.float32),
    )
    task_path = save_task(task, root / "task.safetensors")
    return {
        "root": root,
        "adapter": adapters[0],
        "adapter_config": (adapters[0] / "adapter_config.json").read_bytes(),
        "adapter_weights": (adapters[0] / "adapter_model.safetensors").read_bytes(),
        "scratch": adapters[1],
        "basis": basis_path.read_bytes(),
        "basis_fingerprint": basis.fingerprint,
        "task": task_path.read_bytes(),
    }


# -- the adapter config -----------------------------------------------------------------------------------
@st.composite
def adapter_configs(draw) -> bytes:
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": "tiny/base"}
    for key in draw(
        st.lists(
            st.sampled_from(
                [
                    "peft_type",
                    "r",
                    "lora_alpha",
                    "use_rslora",
                    "use_dora",
                    "base_model_name_or_path",
                    "rank_pattern",
                    "alpha_pattern",
                ]
            ),
            max_size=4,
            unique=True,
        )
    ):
        if key in ("rank_pattern", "alpha_pattern") and draw(st.booleans()):
            config[key] = draw(st.dictionaries(PATTERN_KEYS, JSON_VALUES, max_size=3))
        elif draw(st.booleans()):
            config.pop(key, None)
        else:
            config[key] = draw(JSON_VALUES)
    return json.dumps(draw(st.one_of(st.just(config), JSON_VALUES)), allow_nan=True).encode()


@FUZZ
@given(content=st.one_of(adapter_configs(), st.binary(max_size=80)))
def test_fuzz_adapter_config(files, content):
    folder = files["scratch"]
    (folder / "adapter_model.safetensors").write_bytes(files["adapter_weights"])
    (folder / "adapter_config.json").write_bytes(content)
    adapter = refused_or_read(read_adapter, folder)
    if adapter is not None:  # what was read is usable: finite factors of the header's shapes
        for factors in adapter.modules.values():
            assert np.all(np.isfinite(factors.delta()))


# -- the safetensors header (and tensors) of adapters --------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_fuzz_adapter_safetensors(files, data):
    content = data.draw(st.one_of(safetensors_files(), _bytes_mutations(files["adapter_weights"])))
    folder = files["scratch"]
    (folder / "adapter_config.json").write_bytes(files["adapter_config"])
    (folder / "adapter_model.safetensors").write_bytes(content)
    adapter = refused_or_read(read_adapter, folder)
    if adapter is not None:
        for factors in adapter.modules.values():
            assert factors.A.dtype == np.float32 and np.all(np.isfinite(factors.delta()))


# -- task files -------------------------------------------------------------------------------------------
@st.composite
def task_files(draw, original: bytes, fingerprint: str) -> bytes:
    if draw(st.booleans()):
        return draw(_bytes_mutations(original))
    meta = {
        "format": "edge-eigenlora-task",
        "format_version": "1",
        "name": "t",
        "basis_fingerprint": fingerprint,
        "kind": "classification",
        "labels": '["a", "b"]',
        "info": "{}",
    }
    for key in draw(st.lists(st.sampled_from(sorted(meta)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del meta[key]
        else:
            meta[key] = draw(
                st.one_of(st.text(max_size=8), JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True)))
            )
    tensors = {f"{Q}.alpha_A": np.ones((4, 2), np.float32), f"{Q}.alpha_B": np.ones((4, 2), np.float32)}
    drop = draw(st.sampled_from([None, f"{Q}.alpha_B", "head.weight"]))
    tensors["head.weight"] = np.ones((2, 8), np.float32) * draw(st.sampled_from([1.0, np.inf, np.nan]))
    tensors.pop(drop, None)
    from safetensors.numpy import save

    return save(tensors, metadata=meta)


@FUZZ
@given(data=st.data())
def test_fuzz_task_file(files, data):
    content = data.draw(task_files(files["task"], files["basis_fingerprint"]))
    path = files["root"] / "fuzzed_task.safetensors"
    path.write_bytes(content)
    expected = data.draw(st.sampled_from([None, files["basis_fingerprint"]]))
    task = refused_or_read(load_task, path, expected_basis=expected)
    if task is not None:
        assert isinstance(task.labels, list) and all(
            np.all(np.isfinite(a)) for pair in task.coefficients.values() for a in pair
        )


# -- basis files ------------------------------------------------------------------------------------------
@st.composite
def basis_files(draw, original: bytes) -> bytes:
    if draw(st.booleans()):
        return draw(_bytes_mutations(original))
    from safetensors.numpy import load

    tensors = load(original)
    n = int.from_bytes(original[:8], "little")
    meta = json.loads(original[8 : 8 + n])["__metadata__"]
    for key in draw(st.lists(st.sampled_from(sorted(meta)), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            del meta[key]
        elif key in ("modules", "config") and draw(st.booleans()):  # a field of the JSON inside changed
            inner = json.loads(meta[key])
            target = inner[next(iter(inner))] if key == "modules" else inner
            field = draw(st.sampled_from(sorted(target) + ["extra"]))
            target[field] = draw(JSON_VALUES)
            meta[key] = json.dumps(inner, allow_nan=True)
        else:
            meta[key] = draw(
                st.one_of(st.text(max_size=8), JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True)))
            )
    from safetensors.numpy import save

    return save(tensors, metadata=meta)


@FUZZ
@given(data=st.data())
def test_fuzz_basis_file(files, data):
    content = data.draw(basis_files(files["basis"]))
    path = files["root"] / "fuzzed_basis.safetensors"
    path.write_bytes(content)
    basis = refused_or_read(load_basis, path)
    if basis is not None:
        for m in basis.modules.values():
            assert m.U_A.shape[1] == m.U_B.shape[1] == m.width


# -- the labelled CSV/JSONL reader ------------------------------------------------------------------------
CELLS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["1", "1.0", "01", "+1", "-1", "0", " pos ", "neg", '"', '""', "a,b", "\n", "\ufeff", "\x00"]
    ),
)


@st.composite
def labelled_files(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".csv", ".tsv", ".jsonl", ".txt"]))
    kind = draw(st.sampled_from(["structured", "binary", "header_only"]))
    if kind == "binary":
        return suffix, draw(st.binary(max_size=200))
    rows = draw(st.lists(st.tuples(CELLS, CELLS | JSON_VALUES), max_size=6))
    if suffix == ".jsonl":
        lines = [
            json.dumps({"text": t, "label": label}, allow_nan=True)
            if draw(st.booleans())
            else json.dumps(draw(JSON_VALUES), allow_nan=True)
            for t, label in rows
        ]
    else:
        sep = "\t" if suffix == ".tsv" else ","
        header = draw(st.sampled_from([f"text{sep}label", f"label{sep}text", "text", f"x{sep}y", ""]))
        lines = [header] + (
            []
            if kind == "header_only"
            else [f"{t}{sep}{label}" for t, label in rows if isinstance(label, str)]
        )
    text = "\n".join(lines)
    bom = draw(st.sampled_from(["", "\ufeff"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"]))
    try:
        return suffix, (bom + text).encode(encoding)
    except UnicodeEncodeError:
        return suffix, (bom + text).encode("utf-8")


@FUZZ
@given(file=labelled_files(), label_names=st.one_of(st.none(), st.just(["0", "1"]), st.just(["neg", "pos"])))
def test_fuzz_labelled_file(files, file, label_names):
    suffix, content = file
    path = files["root"] / f"fuzzed{suffix}"
    path.write_bytes(content)
    result = refused_or_read(read_labelled_file, path, label_names=label_names)
    if result is not None:
        assert len(result.texts) == len(result.labels) >= 1
        assert all(t.strip() for t in result.texts)
        assert all(0 <= y < len(result.label_names) for y in result.labels)
