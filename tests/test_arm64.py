"""The device runtime on a real aarch64 onnxruntime (the PyPI wheel) under qemu-user, against the x86 run.

Same workload on both (the real MiniLM bundle from scripts/make_android_goldens.py, its ORT-format graphs,
1 thread): open + sha256-verify the bundle, run task "sentiment", swap to "topic", swap back, then 3 training
steps (train-step graph + the runtime's AdamW). Outputs must agree within ARM64_TOL (stated below); the
emulated timings are printed and written to $EDGE_ARM64_REPORT (JSON) when set. Emulated, so slow: ~75 s with
the bundle cached (+~2.5 min to export it once; docs/android.md); marked slow: `make test-all` runs it.

Set up once with scripts/setup_arm64.sh (qemu-user-static, a Debian arm64 root with python3.11, aarch64 wheels).
This file is also the workload script: `python tests/test_arm64.py BUNDLE OUT_DIR` (no pytest needed there).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDGE_ARM64_CACHE", Path.home() / ".cache" / "edge-eigenlora" / "arm64"))
TEXTS = ["What a wonderful film.", "Dull and far too long.", "Café déjà vu 😍, 我爱北京!", "A waste of time."]
LABELS = [1, 0, 1, 0]
STEPS = 3
# Different CPU kernels (NEON vs AVX2/AVX-512) reorder float32 sums: measured max abs diff ~1e-6 on logits
# and ~1e-7 on gradients (docs/android.md); the bounds leave ~50x room.
ARM64_TOL = {"logits": 1e-4, "loss": 1e-4, "grad_rel": 1e-4}
# The emulated core: a Cortex-A76 (NEON + dot product, no SVE/SME), the big core of many phones since 2019.
# qemu's default "max" CPU advertises SVE/SME, which onnxruntime then uses and qemu emulates ~9x slower.
ARM64_CPU = "cortex-a76"


def workload(bundle: Path, out: Path) -> dict:
    """Open, run, swap, train; save arrays (npz) and timings (JSON) in `out`."""
    import onnxruntime

    from edge_eigenlora.runtime.optim import AdamW
    from edge_eigenlora.runtime.session import DeviceRuntime, RuntimeOptions, switch_cost_us

    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{platform.machine()}] {message}", file=sys.stderr, flush=True)

    t: dict[str, float] = {}
    start = time.perf_counter()
    rt = DeviceRuntime(
        bundle, options=RuntimeOptions(threads=1, prefer_ort=True), verify=True, on_long="error"
    )
    rt.preload()
    t["open_and_verify_s"] = time.perf_counter() - start
    log(f"bundle opened and verified in {t['open_and_verify_s']:.1f} s")
    start = time.perf_counter()
    rt.session("shared")
    t["shared_session_s"] = time.perf_counter() - start
    log(f"inference session in {t['shared_session_s']:.1f} s")
    arrays: dict[str, np.ndarray] = {}
    for key, task in (("sentiment", "sentiment"), ("topic", "topic"), ("sentiment_again", "sentiment")):
        start = time.perf_counter()
        arrays[f"logits_{key}"] = rt.run(TEXTS, task=task)
        t[f"run_{key}_s"] = time.perf_counter() - start
        log(f"run {key}: {t[f'run_{key}_s']:.2f} s")
    t["switch_us"] = switch_cost_us(rt, ["sentiment", "topic"], repeats=200)

    loaded = rt.task("sentiment")
    params = {
        "coefficients": loaded.coefficients.copy(),
        "head_weight": loaded.head_weight.copy(),
        "head_bias": loaded.head_bias.copy(),
    }
    opt = AdamW(lrs={"coefficients": 1e-2, "head_weight": 5e-2, "head_bias": 5e-2})
    ids, mask = rt.encode(TEXTS)
    start = time.perf_counter()
    rt.session("train_step")
    t["train_session_s"] = time.perf_counter() - start
    log(f"train-step session in {t['train_session_s']:.1f} s")
    losses, step_times = [], []
    for step in range(STEPS):
        start = time.perf_counter()
        r = rt.train_step(
            ids, mask, np.array(LABELS), params["coefficients"], params["head_weight"], params["head_bias"]
        )
        step_times.append(time.perf_counter() - start)
        losses.append(float(r["loss"]))
        log(f"train step {step + 1}: loss {losses[-1]:.4f} in {step_times[-1]:.2f} s")
        if step == 0:
            arrays.update(grad_coefficients=r["grad_coefficients"], grad_head_weight=r["grad_head_weight"])
        opt.step(
            params,
            {
                "coefficients": r["grad_coefficients"],
                "head_weight": r["grad_head_weight"],
                "head_bias": r["grad_head_bias"],
            },
        )
    t["train_step_s"] = float(np.median(step_times))
    arrays["losses"] = np.array(losses)
    arrays.update({f"final_{k}": v for k, v in params.items()})
    np.savez(out / "outputs.npz", **arrays)
    info = {
        "machine": platform.machine(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "timings": t,
        "losses": losses,
    }
    (out / "info.json").write_text(json.dumps(info, indent=1))
    return info


def compare(x86: dict, arm: dict) -> dict[str, float]:
    diffs = {}
    for key in ("logits_sentiment", "logits_topic", "logits_sentiment_again"):
        diffs[key] = float(np.max(np.abs(x86[key] - arm[key])))
    diffs["losses"] = float(np.max(np.abs(x86["losses"] - arm["losses"])))
    for key in ("grad_coefficients", "grad_head_weight"):
        diffs[key + "_rel"] = float(np.max(np.abs(x86[key] - arm[key])) / (np.max(np.abs(x86[key])) + 1e-30))
    diffs["final_coefficients"] = float(np.max(np.abs(x86["final_coefficients"] - arm["final_coefficients"])))
    return diffs


if __name__ == "__main__" and len(sys.argv) == 3:
    sys.path.insert(0, str(ROOT))
    print(json.dumps(workload(Path(sys.argv[1]), Path(sys.argv[2]))))
    raise SystemExit(0)

import pytest  # noqa: E402  (the emulated workload above runs without pytest)


def _arm64_command(out: Path, bundle: Path) -> tuple[list[str], dict]:
    rootfs, site = CACHE / "rootfs", CACHE / "site"
    cmd = [
        "qemu-aarch64-static",
        "-L",
        str(rootfs),
        str(rootfs / "usr/bin/python3.11"),
        str(Path(__file__)),
        str(bundle),
        str(out),
    ]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{site}:{ROOT}",
        "HOME": str(Path.home()),
        "QEMU_CPU": os.environ.get("EDGE_ARM64_CPU", ARM64_CPU),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    return cmd, env


@pytest.mark.slow
@pytest.mark.real_model
def test_arm64_runtime_equals_x86(tmp_path):
    if shutil.which("qemu-aarch64-static") is None or not (CACHE / "site" / ".wheels").is_file():
        pytest.skip(f"no ARM64 emulation set up under {CACHE}: run scripts/setup_arm64.sh")
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_android_goldens import DEFAULT_BUNDLE, build_bundle

    bundle = build_bundle(Path(os.environ.get("EDGE_EIGENLORA_ANDROID_BUNDLE", DEFAULT_BUNDLE)))
    x86 = subprocess.run(
        [sys.executable, __file__, str(bundle), str(tmp_path / "x86")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert x86.returncode == 0, x86.stderr[-3000:]
    cmd, env = _arm64_command(tmp_path / "arm64", bundle)
    start = time.perf_counter()
    arm = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    wall = time.perf_counter() - start
    assert arm.returncode == 0, arm.stderr[-3000:]
    info = {k: json.loads((tmp_path / k / "info.json").read_text()) for k in ("x86", "arm64")}
    assert info["arm64"]["machine"] == "aarch64" and info["x86"]["machine"] == "x86_64"
    assert info["arm64"]["onnxruntime"] == info["x86"]["onnxruntime"]
    x, a = (dict(np.load(tmp_path / k / "outputs.npz")) for k in ("x86", "arm64"))
    diffs = compare(x, a)
    report = {"diffs": diffs, "tolerance": ARM64_TOL, "emulated_wall_s": wall, **info}
    print(json.dumps(report, indent=1))
    if os.environ.get("EDGE_ARM64_REPORT"):
        Path(os.environ["EDGE_ARM64_REPORT"]).write_text(json.dumps(report, indent=1))
    # Swapping tasks inside one session is exact on each machine.
    for run in (x, a):
        np.testing.assert_array_equal(run["logits_sentiment"], run["logits_sentiment_again"])
        assert run["logits_topic"].shape == (len(TEXTS), 4)
        assert run["losses"][-1] < run["losses"][0]
    assert (
        max(diffs[k] for k in ("logits_sentiment", "logits_topic", "logits_sentiment_again"))
        < ARM64_TOL["logits"]
    ), diffs
    assert diffs["losses"] < ARM64_TOL["loss"], diffs
    assert (
        diffs["grad_coefficients_rel"] < ARM64_TOL["grad_rel"]
        and diffs["grad_head_weight_rel"] < ARM64_TOL["grad_rel"]
    ), diffs
