"""benchmarks/ and scripts/ use only public names and never import `tests` (issue 11, deliverable 5).

Read from the source (AST), so the rule cannot silently erode. PENDING lists the library-private names the lead
will expose publicly; it may only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PENDING = {
    ("benchmarks/perf.py", "export._MergedGraph"),
    ("benchmarks/perf.py", "export._dummy"),
    ("benchmarks/perf.py", "export._rename_dims"),
    ("benchmarks/perf.py", "quantize._nbits"),
    ("scripts/make_android_goldens.py", "tokenizers[length]._tok"),
}


def _violations() -> set[tuple[str, str]]:
    found = set()
    for path in sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "tests" or a.name.startswith("tests."):
                        found.add((rel, f"import {a.name}"))
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if mod == "tests" or mod.startswith("tests."):
                    found.add((rel, f"from {mod} import"))
                for a in node.names:
                    if a.name.startswith("_") and mod != "__future__":
                        found.add((rel, f"from {mod} import {a.name}"))
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                owner = ast.unparse(node.value)
                if owner != "self":  # a class's own private attributes are its business
                    found.add((rel, f"{owner}.{node.attr}"))
    return found


def test_benchmarks_and_scripts_use_only_public_names_and_never_import_tests():
    unexpected = _violations() - PENDING
    assert not unexpected, f"private names or tests imports in benchmarks/scripts: {sorted(unexpected)}"


def test_the_pending_list_only_names_what_is_still_there():
    stale = PENDING - _violations()
    assert not stale, f"fixed: remove from PENDING: {sorted(stale)}"
