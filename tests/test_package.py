"""Importing the package and its torch-free modules has no side effects and never imports torch."""

import subprocess
import sys

TORCH_FREE = [
    "edge_eigenlora",
    "edge_eigenlora.subspace",
    "edge_eigenlora.task",
    "edge_eigenlora.fileio",
    "edge_eigenlora.labelled_file",
    "edge_eigenlora.datasets",
    "edge_eigenlora.errors",
]


def test_torch_free_modules_do_not_import_torch_or_write_files(tmp_path):
    code = (
        "import sys, os\n"
        f"for m in {TORCH_FREE!r}: __import__(m)\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'peft') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "none"
    assert list(tmp_path.iterdir()) == []


def test_cli_help_documents_every_subcommand():
    result = subprocess.run(
        [sys.executable, "-m", "edge_eigenlora.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in (
        "fit",
        "inspect",
        "train",
        "compress",
        "to-peft",
        "build-bank",
        "export",
        "bundle",
        "data",
        "demo",
    ):
        assert command in result.stdout
