"""Property-based fuzzing of the manifest reader: whatever manifest.json holds, `read_manifest` returns a typed
manifest or raises EdgeEigenLoraError with a message; never another exception.

Three generators: arbitrary JSON documents, the real format-2 golden manifest with one field replaced by an
arbitrary JSON value (deep in the tree, where type and range checks matter), and raw bytes. EXAMPLES inputs
each (FUZZ_EXAMPLES=N overrides it).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_eigenlora import bundle
from edge_eigenlora.errors import EdgeEigenLoraError

GOLDEN = (
    Path(__file__).resolve().parents[1] / "android_demo" / "core" / "src" / "test" / "resources" / "golden"
)
BASE = json.loads((GOLDEN / "manifest_v2.json").read_text())
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    """Every (path) to a value inside the manifest."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(BASE) if p]


def _read(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / bundle.MANIFEST).write_bytes(text)
        try:
            bundle.read_manifest(tmp)
        except EdgeEigenLoraError as exc:
            assert str(exc)


@FUZZ
@given(JSON)
def test_any_json_document_is_read_or_refused_in_words(doc):
    _read(json.dumps(doc).encode())


@FUZZ
@given(st.sampled_from(PATHS), JSON)
def test_the_real_manifest_with_any_field_replaced_is_read_or_refused_in_words(path, value):
    data = json.loads(json.dumps(BASE))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    _read(json.dumps(data).encode())


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_are_read_or_refused_in_words(raw):
    _read(raw)


def test_the_unchanged_golden_manifest_reads():
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / bundle.MANIFEST).write_text(json.dumps(BASE))
        assert bundle.read_manifest(tmp).format_version == 2
