"""The Android demo's JVM core (android_demo/core, Kotlin): compiled with kotlinc and run under JUnit against
golden files written from a real exported bundle (scripts/make_android_goldens.py), plus the Python side's
checks of those goldens and of a task file the Kotlin code writes.

The toolchain comes from scripts/install_kotlin_toolchain.sh (npm kotlin-compiler into .tools/, Debian junit4);
without it the JUnit test skips and says how to install it. A cold compile takes ~40 s on 2 cores; a warm run
(sources unchanged) ~3 s.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_eigenlora import bundle
from edge_eigenlora.runtime.optim import AdamW
from edge_eigenlora.task import load_task

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "android_demo" / "core" / "src" / "test" / "resources" / "golden"
SCRIPT = ROOT / "scripts" / "android_core_test.sh"
KOTLIN_HOME = (
    Path(os.environ.get("EDGE_TOOLS_DIR", ROOT / ".tools")) / "kotlin" / "node_modules" / "kotlin-compiler"
)
MIN_TESTS = 43


def _f32(name):
    return np.fromfile(GOLDEN / name, dtype="<f4")


def test_goldens_are_small_and_complete():
    total = sum(p.stat().st_size for p in GOLDEN.rglob("*") if p.is_file())
    assert total < 1_000_000, total
    for name in (
        "tokenizer_cases.json",
        "manifest_full.json",
        "packed.json",
        "adamw.json",
        "bundle/manifest.json",
    ):
        assert (GOLDEN / name).is_file(), name


def test_golden_bundle_verifies_in_python_and_packs_to_the_golden_vectors():
    manifest = bundle.verify_bundle(GOLDEN / "bundle")
    full = json.loads((GOLDEN / "manifest_full.json").read_text())
    assert manifest.basis_fingerprint == full["basis"]["fingerprint"]
    assert manifest.layout.to_json() == full["coefficients"]
    for name in ("sentiment", "topic"):
        feeds = bundle.task_feeds(bundle.load_bundle_task(manifest, name), manifest)
        np.testing.assert_array_equal(feeds["coefficients"], _f32(f"packed_{name}.bin"))


def test_golden_token_ids_match_an_independent_wordpiece_build():
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(
        str(GOLDEN / "bundle" / "tokenizer" / "vocab.txt"),
        lowercase=True,
        strip_accents=None,
        clean_text=True,
        handle_chinese_chars=True,
    )
    cases = json.loads((GOLDEN / "tokenizer_cases.json").read_text())["cases"]
    assert len(cases) >= 20
    for case in cases:
        tok.enable_truncation(case["max_length"])
        assert tok.encode(case["text"]).ids == case["ids"], case["text"]


def test_golden_adamw_steps_replay_in_numpy():
    spec = json.loads((GOLDEN / "adamw.json").read_text())
    names = list(spec["params"])
    params = {n: _f32(f"adamw_param0_{n}.bin").copy() for n in names}
    opt = AdamW(
        lrs=spec["lrs"], betas=tuple(spec["betas"]), eps=spec["eps"], weight_decay=spec["weight_decay"]
    )
    for step in range(1, spec["steps"] + 1):
        opt.step(params, {n: _f32(f"adamw_grad{step}_{n}.bin") for n in names})
    for n in names:
        np.testing.assert_array_equal(params[n], _f32(f"adamw_param3_{n}.bin"))
    assert spec["losses"][-1] < spec["losses"][0]


def _toolchain_missing() -> str | None:
    if not (KOTLIN_HOME / "bin" / "kotlinc").exists():
        return f"kotlinc not found under {KOTLIN_HOME}: run scripts/install_kotlin_toolchain.sh"
    if not Path("/usr/share/java/junit4.jar").exists():
        return "JUnit 4 (/usr/share/java/junit4.jar) missing: run scripts/install_kotlin_toolchain.sh"
    if shutil.which("java") is None:
        return "java missing: run scripts/install_kotlin_toolchain.sh"
    return None


def test_kotlin_core_passes_its_junit_tests(tmp_path):
    missing = _toolchain_missing()
    if missing:
        pytest.skip(missing)
    env = {**os.environ, "ANDROID_CORE_OUT": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=900, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    match = re.search(r"^OK \((\d+) tests\)", output, re.M)
    assert match and int(match.group(1)) >= MIN_TESTS, output[-2000:]
    assert "AdamW vs numpy: max abs diff" in output

    # A task file written by the Kotlin TaskCodec reads back in Python, bound to the bundle's basis.
    manifest = bundle.read_manifest(GOLDEN / "bundle")
    written = load_task(tmp_path / "kotlin_written.safetensors", expected_basis=manifest.basis_fingerprint)
    original = bundle.load_bundle_task(manifest, "topic")
    assert written.name == "kotlin_written" and written.labels == original.labels
    np.testing.assert_array_equal(
        bundle.pack(written.coefficients, manifest.layout),
        bundle.pack(original.coefficients, manifest.layout),
    )
    np.testing.assert_array_equal(written.head_weight, original.head_weight)
    np.testing.assert_array_equal(written.head_bias, original.head_bias)
    assert written.info == {"source": "PackingTest"}


@pytest.mark.slow
@pytest.mark.real_model
def test_goldens_regenerate_from_a_fresh_export():
    """Exports a new real bundle (~2.5 min on 2 cores), rebuilds the goldens from it and compares them."""
    result = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            str(ROOT / "scripts" / "make_android_goldens.py"),
            "--check",
            "--fresh",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "goldens match" in result.stdout
