"""The device half of `make demo`: a phone bundle, run and swapped and trained in processes without torch.

The workstation (torch) exports the bundle; everything after that runs in child processes in which importing
torch, transformers, onnx or peft raises `ImportError` (a `sys.meta_path` blocker installed by a
`sitecustomize.py` on the child's `PYTHONPATH`), so the figures are those of the device runtime alone:

- `python -m edge_eigenlora.demo_device SPEC.json RESULT.json` (this module, `runner_main`): opens the bundle with
  `DeviceRuntime`, measures test accuracy per task, the task-switch cost a user sees, and the first run on a new
  session;
- `python -m edge_eigenlora.runtime train BUNDLE --name ... --train-file X.csv` (`edge-eigenlora-device train`):
  gradient training of a new task from a CSV; its peak RSS is its own VmHWM, written at exit by the hook.

Task-switch design (`paired_switch_cost`): batch 1, one fixed text, runs in the order A A B B A A ... Every
"probe" run is compared with the mean of its two neighbours, which both run the same task as the run before
them: diff = t(probe) - (t(before) + t(after)) / 2, so a slow drift cancels. Probe runs alternate between a real
switch (the task changes at the probe) and a control (it does not): the control's diffs show the noise floor.

Only the standard library and numpy are imported at module level: the runner must load without torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_eigenlora.bundle import SHARED, TRAIN_STEP, graph_bytes, read_manifest

__all__ = [
    "BLOCKED_MODULES",
    "FP32_RECIPE",
    "PHONE_RECIPE",
    "DeviceDemoConfig",
    "DeviceProcess",
    "Labelled",
    "Progress",
    "device_half",
    "export_bundles",
    "final_table",
    "folder_bytes",
    "product_figures",
    "paired_switch_cost",
    "run_device_runner",
    "run_torch_free",
    "runner_main",
    "torch_free_env",
    "write_labelled_csv",
]

BLOCKED_MODULES = ("torch", "transformers", "onnx", "onnxscript", "peft")

PEAK_RSS_ENV = "EDGE_EIGENLORA_PEAK_RSS_FILE"

_SITECUSTOMIZE = f'''"""Written by edge_eigenlora.demo_device: the device runtime must run without these modules."""
import atexit
import importlib.abc
import os
import sys

_BLOCKED = {BLOCKED_MODULES!r}


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ImportError(f"{{name}} is blocked: the device runtime must not import it")
        return None


sys.meta_path.insert(0, _Block())


def _write_peak_rss(path=os.environ.get({PEAK_RSS_ENV!r})):
    # VmHWM: this process's own high-water RSS. (ru_maxrss is not: Linux carries the forking parent's into it.)
    with open("/proc/self/status") as fh:
        peak = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    with open(path, "w") as fh:
        fh.write(peak)


if os.environ.get({PEAK_RSS_ENV!r}) and os.path.exists("/proc/self/status"):
    atexit.register(_write_peak_rss)
'''


def torch_free_env(site_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Environment for a child process in which torch & co. cannot be imported (and this package is importable)."""
    site = Path(site_dir)
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    package_root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(package_root)])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@dataclass(frozen=True)
class DeviceProcess:
    """A finished child process: exit status, its stdout, wall seconds and its own peak RSS (VmHWM, MiB)."""

    returncode: int
    stdout: str
    seconds: float
    peak_rss_mib: float


def run_torch_free(
    args: Sequence[str],
    site_dir: str | os.PathLike[str],
    log_dir: str | os.PathLike[str],
    *,
    name: str,
    show_stderr: bool = True,
    timeout_s: float = 900.0,
) -> DeviceProcess:
    """Run `python ARGS` with torch unimportable; stderr goes to the terminal (progress) or to a log file.

    The peak RSS is the child's own VmHWM (written at exit by the sitecustomize hook): `ru_maxrss` from
    `wait4`/`RUSAGE_CHILDREN` would include the workstation parent's RSS, which a forked child starts with.
    """
    log = Path(log_dir)
    log.mkdir(parents=True, exist_ok=True)
    out_path, err_path, rss_path = (log / f"{name}.{ext}" for ext in ("stdout", "stderr", "peak_rss_kib"))
    rss_path.unlink(missing_ok=True)
    env = torch_free_env(site_dir)
    env[PEAK_RSS_ENV] = str(rss_path)
    started = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, *map(str, args)],
            env=env,
            stdout=out,
            stderr=None if show_stderr else err,
        )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    seconds = time.perf_counter() - started
    stdout = out_path.read_text()
    if proc.returncode != 0:
        tail = err_path.read_text()[-2000:] if not show_stderr else "(see the messages above)"
        raise RuntimeError(f"device process {name} exited with {proc.returncode}: {tail}")
    peak = int(rss_path.read_text()) / 1024.0 if rss_path.is_file() else float("nan")
    return DeviceProcess(proc.returncode, stdout, seconds, peak)


def write_labelled_csv(
    path: str | os.PathLike[str], texts: Sequence[str], labels: Sequence[int], names: Sequence[str]
) -> Path:
    """A `text,label` CSV (label names), the format `edge-eigenlora-device train --train-file` reads."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for text, label in zip(texts, labels, strict=True):
            writer.writerow([text, names[int(label)]])
    return path


# ----------------------------------------------------------------------------------------------------------
# Measurements (pure: they take a callable that runs one batch-1 inference)
# ----------------------------------------------------------------------------------------------------------


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    p25, p50, p75 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return {"p25": float(p25), "p50": float(p50), "p75": float(p75)}


def paired_switch_cost(
    run: Callable[[str], Any],
    tasks: tuple[str, str],
    rounds: int = 100,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Cost of a task switch as a user sees it, in ms: p50 of "run right after a switch" minus "same task".

    `rounds` probe runs of each kind (switch, control), interleaved. Each probe's diff is its time minus the mean
    of its two neighbours (both runs of the task that ran just before them). Returns the p25/p50/p75 of the
    switch and control diffs, of the "same task" runs and of the "after a switch" runs, and the counts.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    a, b = tasks
    current = a
    kinds: list[str] = ["warm", "same"]
    order: list[str] = [a, a]
    for i in range(2 * rounds):
        switch = i % 2 == 0
        if switch:
            current = b if current == a else a
        order += [current, current]
        kinds += ["switch" if switch else "control", "same"]
    times = []
    for task in order:
        t0 = clock()
        run(task)
        times.append((clock() - t0) * 1e3)
    diffs: dict[str, list[float]] = {"switch": [], "control": []}
    after, same = [], []
    for i, kind in enumerate(kinds):
        if kind in diffs:
            assert order[i - 1] == order[i - 2] and order[i + 1] == order[i]  # the pairing, by construction
            diffs[kind].append(times[i] - (times[i - 1] + times[i + 1]) / 2)
            if kind == "switch":
                after.append(times[i])
        elif kind == "same":
            same.append(times[i])
    return {
        "design": "batch 1, one text; tasks A A B B A A ...; diff = probe - mean(neighbours); "
        "probes alternate switch / control (no switch)",
        "pairs": len(diffs["switch"]),
        "switch_minus_same_ms": _percentiles(diffs["switch"]),
        "control_minus_same_ms": _percentiles(diffs["control"]),
        "run_after_switch_ms": _percentiles(after),
        "run_same_task_ms": _percentiles(same),
    }


# ----------------------------------------------------------------------------------------------------------
# The runner: executed in the torch-free child
# ----------------------------------------------------------------------------------------------------------


def _torch_is_blocked() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return True
    return False


def runner_main(spec_path: str | os.PathLike[str], result_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Open the bundle with the device runtime and measure what the spec asks; write the result JSON.

    spec: {"bundle", "prefer_ort", "threads", "max_length", "eval": [{"task", "texts", "labels"}],
    "logits_out" (optional .npz path: the eval logits), "switch": {"tasks": [a, b], "text", "rounds"} (optional),
    "new_sessions": N (optional)}.
    """
    blocked = _torch_is_blocked()
    from edge_eigenlora.runtime import DeviceRuntime, RuntimeOptions

    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    options = RuntimeOptions(
        threads=int(spec.get("threads", 0)), prefer_ort=bool(spec.get("prefer_ort", False))
    )
    rt = DeviceRuntime(spec["bundle"], options=options, max_length=spec.get("max_length"), on_long="silent")
    opened = time.perf_counter() - started
    result: dict[str, Any] = {"torch_blocked": blocked, "open_seconds": opened, "accuracy": {}}
    logits_out = {}
    for job in spec.get("eval", []):
        t0 = time.perf_counter()
        logits = rt.run(job["texts"], task=job["task"], batch_size=32)
        labels = np.asarray(job["labels"], dtype=np.int64)
        result["accuracy"][job["task"]] = {
            "accuracy": float((logits.argmax(-1) == labels).mean()),
            "n": int(labels.size),
            "seconds": time.perf_counter() - t0,
        }
        logits_out[job["task"]] = logits
    if spec.get("logits_out"):
        np.savez(spec["logits_out"], **logits_out)
    switch = spec.get("switch")
    if switch:
        text = [switch["text"]]
        tasks = tuple(switch["tasks"])
        for name in tasks:
            rt.task(name)  # read once and cached: the switch below is what a running app does
        result["switch"] = paired_switch_cost(
            lambda name: rt.run(text, task=name, batch_size=1), tasks, rounds=int(switch.get("rounds", 100))
        )
        result["switch"]["tokens"] = int(rt.encode(text)[1].sum())
        fresh = []
        for _ in range(int(spec.get("new_sessions", 3))):
            rt.close()
            t0 = time.perf_counter()
            rt.session(SHARED)
            t1 = time.perf_counter()
            rt.run(text, task=tasks[1], batch_size=1)
            t2 = time.perf_counter()
            fresh.append({"load_ms": (t1 - t0) * 1e3, "first_run_ms": (t2 - t1) * 1e3})
        result["new_session"] = {
            "repeats": len(fresh),
            "load_ms_p50": float(np.median([f["load_ms"] for f in fresh])),
            "first_run_ms_p50": float(np.median([f["first_run_ms"] for f in fresh])),
            "load_plus_first_run_ms_p50": float(np.median([f["load_ms"] + f["first_run_ms"] for f in fresh])),
        }
    result["prefer_ort"] = options.prefer_ort
    result["forbidden_modules_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED_MODULES)
    result["seconds"] = time.perf_counter() - started
    Path(result_path).write_text(json.dumps(result, indent=2))
    return result


def run_device_runner(
    spec: dict[str, Any], work_dir: str | os.PathLike[str], *, name: str = "runner"
) -> tuple[dict[str, Any], DeviceProcess]:
    """Write the spec, run `runner_main` in a torch-free child, return its result and the process record."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work / f"{name}_spec.json", work / f"{name}_result.json"
    spec_path.write_text(json.dumps(spec))
    proc = run_torch_free(
        ["-m", "edge_eigenlora.demo_device", spec_path, result_path], work / "site", work / "logs", name=name
    )
    result = json.loads(result_path.read_text())
    if not result["torch_blocked"] or result["forbidden_modules_loaded"]:
        raise RuntimeError(f"the device runner was not torch-free: {result['forbidden_modules_loaded']}")
    return result, proc


# ----------------------------------------------------------------------------------------------------------
# The device half of the demo, orchestrated from the workstation process
# ----------------------------------------------------------------------------------------------------------

# The phone recipe (export/phone.json): int8 base (dynamic MatMulInteger) + int8 basis, .ort for ORT Mobile.
PHONE_RECIPE: dict[str, Any] = {
    "variants": (SHARED,),
    "basis_quant": "int8",
    "base_quant": "int8",
    "precision": "fp32",
    "ort_format": True,
    "max_length": 128,
}
# The reference: the same graph with nothing quantized, no .ort, no train step.
FP32_RECIPE: dict[str, Any] = {
    "variants": (SHARED,),
    "basis_quant": "none",
    "base_quant": "none",
    "precision": "fp32",
    "ort_format": False,
    "max_length": 128,
}


class Progress:
    """Prints `[step/total] message (t+seconds)`; `elapsed()` is the time since the demo started."""

    def __init__(self, total: int, started: float | None = None) -> None:
        self.total = total
        self.started = time.perf_counter() if started is None else started
        self.steps: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step(self, number: int, key: str, message: str) -> None:
        self._close()
        self._current = (key, time.perf_counter())
        print(f"[{number}/{self.total}] {message}  (t+{self.elapsed():.0f} s)", flush=True)

    def note(self, message: str) -> None:
        print(f"      {message}", flush=True)

    def _close(self) -> None:
        if self._current:
            key, t0 = self._current
            self.steps[key] = round(time.perf_counter() - t0, 1)
            self._current = None

    def finish(self) -> dict[str, float]:
        self._close()
        return dict(self.steps)


@dataclass(frozen=True)
class Labelled:
    """A task's name, label names and labelled texts (train / validation / test, as needed)."""

    name: str
    label_names: tuple[str, ...]
    test: tuple[list[str], list[int]]
    train: tuple[list[str], list[int]] | None = None
    validation: tuple[list[str], list[int]] | None = None


@dataclass(frozen=True)
class DeviceDemoConfig:
    """The device half's budget. max_length 48 matches the workstation's evaluation; training is capped."""

    max_length: int = 48
    threads: int = 0
    switch_rounds: int = 100
    new_sessions: int = 3
    train_max_steps: int = 40
    train_batch_size: int = 16
    train_eval_every: int = 10
    train_epochs: int = 10
    train_lr: float = 5e-3


def folder_bytes(folder: str | os.PathLike[str]) -> dict[str, int]:
    """Every file under a folder (relative path -> bytes), hidden files and folders (checkpoints) left out."""
    root = Path(folder)
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def export_bundles(
    model_name: str,
    basis_path: str | os.PathLike[str],
    task_paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    rank: int,
    model: Any = None,
    tokenizer: Any = None,
    progress: Progress | None = None,
    phone_recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export the phone bundle (phone recipe + train-step graph) and the fp32 reference; measure their bytes.

    Both with the public `export_bundle`; existing folders of the same name under out_dir are replaced.
    `phone_recipe` replaces PHONE_RECIPE (tests leave out the slow .ort conversion).
    """
    import shutil

    from edge_eigenlora.export import ExportConfig, export_bundle

    out = Path(out_dir)
    result: dict[str, Any] = {}
    phone_recipe = PHONE_RECIPE if phone_recipe is None else phone_recipe
    for key, recipe, train_step in (("fp32", FP32_RECIPE, False), ("phone", phone_recipe, True)):
        folder = out / f"bundle-{key}"
        if folder.exists():
            shutil.rmtree(folder)
        config = ExportConfig(rank=rank, train_step=train_step, target=key, **recipe)
        if progress:
            what = "int8 base + int8 basis, .ort, + train-step graph" if key == "phone" else "fp32, .onnx"
            progress.note(f"exporting the {key} bundle ({what}) ...")
        t0 = time.perf_counter()
        export_bundle(
            model_name,
            basis_path,
            folder,
            config=config,
            tasks=list(task_paths),
            model=model,
            tokenizer=tokenizer,
        )
        files = folder_bytes(folder)
        result[key] = {
            "path": str(folder),
            "seconds": round(time.perf_counter() - t0, 1),
            "files": files,
            "bytes": sum(files.values()),
        }
        if progress:
            progress.note(f"{key} bundle: {_mb(result[key]['bytes'])} in {result[key]['seconds']:.0f} s")
    phone, fp32 = (read_manifest(result[k]["path"]) for k in ("phone", "fp32"))
    shared = phone.graph(SHARED)
    ort_bytes = (phone.root / shared.ort_file).stat().st_size if shared.ort_file else 0
    result["inference_graph"] = {
        "phone_format": ".ort" if ort_bytes else ".onnx",
        "phone_bytes": ort_bytes or graph_bytes(phone, SHARED),
        "fp32_onnx_bytes": graph_bytes(fp32, SHARED),
    }
    train = phone.graph(TRAIN_STEP)
    train_ort = (phone.root / train.ort_file).stat().st_size if train.ort_file else 0
    result["train_step_graph_bytes"] = graph_bytes(phone, TRAIN_STEP) + train_ort
    return result


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def device_half(
    phone_bundle: str | os.PathLike[str],
    fp32_bundle: str | os.PathLike[str] | None,
    work_dir: str | os.PathLike[str],
    *,
    held_out: Labelled,
    second: Labelled,
    new_task: Labelled,
    config: DeviceDemoConfig | None = None,
    progress: Progress | None = None,
    first_step: int = 7,
) -> dict[str, Any]:
    """Steps c-e of the demo in torch-free children: run, swap, train. Returns the measured figures."""
    config = config or DeviceDemoConfig()
    work = Path(work_dir)
    say = progress.note if progress else print
    if progress:
        progress.step(
            first_step,
            "device_run",
            "device runtime in a process where torch cannot be imported: accuracy, task switch, new session",
        )
    switch_text = min(held_out.test[0], key=lambda t: abs(len(t) - 80))  # a typical short text
    spec = {
        "bundle": str(phone_bundle),
        "prefer_ort": True,
        "threads": config.threads,
        "max_length": config.max_length,
        "eval": [
            {"task": t.name, "texts": list(t.test[0]), "labels": list(map(int, t.test[1]))}
            for t in (held_out, second)
        ],
        "switch": {
            "tasks": [held_out.name, second.name],
            "text": switch_text,
            "rounds": config.switch_rounds,
        },
        "new_sessions": config.new_sessions,
    }
    phone_run, proc = run_device_runner(spec, work, name="runner_phone")
    say(
        f"torch import blocked: {phone_run['torch_blocked']}; forbidden modules loaded: "
        f"{phone_run['forbidden_modules_loaded'] or 'none'}; {proc.seconds:.1f} s, peak RSS {proc.peak_rss_mib:.0f} MiB"
    )
    for name, acc in phone_run["accuracy"].items():
        say(f"{name}: device (phone bundle) test accuracy {acc['accuracy']:.3f} on {acc['n']} texts")
    sw = phone_run["switch"]
    say(
        f"switch {held_out.name} <-> {second.name}: run after a switch minus same task, p50 "
        f"{sw['switch_minus_same_ms']['p50']:+.3f} ms (control, no switch: {sw['control_minus_same_ms']['p50']:+.3f} ms; "
        f"{sw['pairs']} pairs, batch 1, {sw['tokens']} tokens); run after a switch p50 "
        f"{sw['run_after_switch_ms']['p50']:.2f} ms; first run on a new session "
        f"{phone_run['new_session']['load_plus_first_run_ms_p50']:.0f} ms (load + run)"
    )
    fp32_run = None
    if fp32_bundle is not None:
        fp32_spec = {
            "bundle": str(fp32_bundle),
            "prefer_ort": False,
            "threads": config.threads,
            "max_length": config.max_length,
            "eval": spec["eval"][:1],
        }
        fp32_run, _ = run_device_runner(fp32_spec, work, name="runner_fp32")
        acc = fp32_run["accuracy"][held_out.name]["accuracy"]
        say(
            f"{held_out.name}: the fp32 graph on the same runtime scores {acc:.3f} (isolates the int8 effect)"
        )

    if progress:
        progress.step(
            first_step + 1,
            "device_train",
            f"train a new task on the device from a CSV "
            f"({new_task.name}, gradient trainer, torch-free process)",
        )
    if new_task.train is None or new_task.validation is None:
        raise ValueError(
            f"new task {new_task.name!r}: give train and validation texts to train it on the device."
        )
    csv_train = write_labelled_csv(work / f"{new_task.name}.train.csv", *new_task.train, new_task.label_names)
    csv_val = write_labelled_csv(
        work / f"{new_task.name}.validation.csv", *new_task.validation, new_task.label_names
    )
    csv_test = write_labelled_csv(work / f"{new_task.name}.test.csv", *new_task.test, new_task.label_names)
    baseline = run_torch_free(
        ["-c", "import numpy, onnxruntime\nfrom edge_eigenlora.runtime import __main__, trainer"],
        work / "site",
        work / "logs",
        name="import_baseline",
    )
    train_args = [
        "-m",
        "edge_eigenlora.runtime",
        "train",
        phone_bundle,
        "--name",
        new_task.name,
        "--train-file",
        csv_train,
        "--validation-file",
        csv_val,
        "--max-steps",
        config.train_max_steps,
        "--epochs",
        config.train_epochs,
        "--batch-size",
        config.train_batch_size,
        "--eval-every",
        config.train_eval_every,
        "--lr",
        config.train_lr,
        "--threads",
        config.threads,
        "--max-length",
        config.max_length,
        "--on-long",
        "silent",
    ]
    say("$ edge-eigenlora-device " + " ".join(str(a) for a in train_args[2:]))
    train_proc = run_torch_free(train_args, work / "site", work / "logs", name="device_train")
    trained = json.loads(train_proc.stdout.strip().splitlines()[-1])
    run_args = [
        "-m",
        "edge_eigenlora.runtime",
        "run",
        phone_bundle,
        "--task",
        new_task.name,
        "--file",
        csv_test,
        "--json",
        "--prefer-ort",
        "--max-length",
        config.max_length,
        "--on-long",
        "silent",
    ]
    run_proc = run_torch_free(run_args, work / "site", work / "logs", name="device_run_new_task")
    predicted = [json.loads(line)["label"] for line in run_proc.stdout.splitlines() if line.strip()]
    truth = [new_task.label_names[y] for y in new_task.test[1]]
    new_acc = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    majority = float(np.bincount(new_task.test[1]).max() / len(new_task.test[1]))
    say(
        f"trained {trained['steps']} steps in {trained['seconds']:.0f} s (process {train_proc.seconds:.0f} s): "
        f"validation {trained['val_accuracy']:.3f}, test {new_acc:.3f} (majority class {majority:.3f}); "
        f"peak RSS {train_proc.peak_rss_mib:.0f} MiB (import baseline {baseline.peak_rss_mib:.0f} MiB)"
    )
    return {
        "phone_run": phone_run,
        "fp32_run": fp32_run,
        "switch_text": switch_text,
        "new_task": {
            "name": new_task.name,
            "labels": list(new_task.label_names),
            "train_examples": len(new_task.train[0]),
            "validation_examples": len(new_task.validation[0]),
            "test_examples": len(new_task.test[0]),
            "command": "edge-eigenlora-device " + " ".join(str(a) for a in train_args[2:]),
            "trainer": trained,
            "test_accuracy": new_acc,
            "majority_class_accuracy": majority,
            "process_seconds": train_proc.seconds,
            "peak_rss_mib": train_proc.peak_rss_mib,
            "import_baseline_peak_rss_mib": baseline.peak_rss_mib,
        },
    }


def product_figures(
    exported: dict[str, Any],
    device: dict[str, Any],
    *,
    held_out: str,
    second: str,
    workstation_accuracy: float,
    task_file_bytes: int,
    peft_adapter_bytes: int,
    peft_head_bytes: int,
    second_reference_accuracy: float | None = None,
) -> dict[str, Any]:
    """The figures the final table prints (and summary.json keeps under "product")."""
    inference = exported["inference_graph"]
    phone_run = device["phone_run"]
    held = phone_run["accuracy"][held_out]
    fp32_acc = device["fp32_run"]["accuracy"][held_out]["accuracy"] if device.get("fp32_run") else None
    sw = phone_run["switch"]
    return {
        "bundle": {
            "phone_bytes": exported["phone"]["bytes"],
            "fp32_export_bytes": exported["fp32"]["bytes"],
            "ratio": exported["phone"]["bytes"] / exported["fp32"]["bytes"],
            "inference_graph_phone_format": inference["phone_format"],
            "inference_graph_phone_bytes": inference["phone_bytes"],
            "inference_graph_fp32_onnx_bytes": inference["fp32_onnx_bytes"],
            "inference_graph_ratio": inference["phone_bytes"] / max(inference["fp32_onnx_bytes"], 1),
            "train_step_graph_bytes": exported["train_step_graph_bytes"],
            "phone_files": exported["phone"]["files"],
            "fp32_files": exported["fp32"]["files"],
        },
        "task_bytes": {
            "task_file": task_file_bytes,
            "peft_adapter_model_safetensors": peft_adapter_bytes,
            "peft_head_file": peft_head_bytes,
            "ratio": task_file_bytes / max(peft_adapter_bytes + peft_head_bytes, 1),
        },
        "accuracy": {
            "task": held_out,
            "test_examples": held["n"],
            "device_int8_ort": held["accuracy"],
            "device_fp32_onnx": fp32_acc,
            "workstation_torch": workstation_accuracy,
        },
        "second_task": {
            "task": second,
            "device_int8_ort": phone_run["accuracy"][second]["accuracy"],
            "test_examples": phone_run["accuracy"][second]["n"],
            "reference_peft_lora_accuracy": second_reference_accuracy,
        },
        "switch": {
            "tasks": [held_out, second],
            "p50_switch_minus_same_ms": sw["switch_minus_same_ms"]["p50"],
            "p50_control_minus_same_ms": sw["control_minus_same_ms"]["p50"],
            "control_iqr_ms": sw["control_minus_same_ms"]["p75"] - sw["control_minus_same_ms"]["p25"],
            # Resolved only when the switch's p50 differs from the no-switch control's by more than the control's IQR.
            "resolved": abs(sw["switch_minus_same_ms"]["p50"] - sw["control_minus_same_ms"]["p50"])
            > sw["control_minus_same_ms"]["p75"] - sw["control_minus_same_ms"]["p25"],
            "p50_run_after_switch_ms": sw["run_after_switch_ms"]["p50"],
            "p50_run_same_task_ms": sw["run_same_task_ms"]["p50"],
            "p50_new_session_load_plus_first_run_ms": phone_run["new_session"]["load_plus_first_run_ms_p50"],
            "p50_new_session_first_run_ms": phone_run["new_session"]["first_run_ms_p50"],
            "detail": sw,
            "new_session": phone_run["new_session"],
        },
        "device_training": device["new_task"],
    }


def _kb(n: float) -> str:
    return f"{n / 1e3:.1f} KB"


def final_table(figures: dict[str, Any]) -> list[str]:
    """The demo's closing table, one line per figure: what we measured, the reference, and the ratio."""
    b, t, a, s, tr = (figures[k] for k in ("bundle", "task_bytes", "accuracy", "switch", "device_training"))
    second = figures["second_task"]
    fp32 = f"; fp32 graph on device {a['device_fp32_onnx']:.3f}" if a["device_fp32_onnx"] is not None else ""
    ref2 = second["reference_peft_lora_accuracy"]
    rows = [
        (
            "bundle on disk, all files",
            _mb(b["phone_bytes"]),
            f"fp32 export {_mb(b['fp32_export_bytes'])}",
            f"{b['ratio']:.2f}x",
        ),
        (
            f"  inference graph (int8 {b['inference_graph_phone_format']})",
            _mb(b["inference_graph_phone_bytes"]),
            f"fp32 .onnx {_mb(b['inference_graph_fp32_onnx_bytes'])}",
            f"{b['inference_graph_ratio']:.2f}x",
        ),
        (
            "  train-step graph (fp32 .onnx+.ort)",
            _mb(b["train_step_graph_bytes"]),
            "(not in the fp32 export)",
            "",
        ),
        (
            "task file (coefficients + head)",
            _kb(t["task_file"]),
            f"PEFT LoRA r=8 {_kb(t['peft_adapter_model_safetensors'])} + head {_kb(t['peft_head_file'])}",
            f"{t['ratio']:.3f}x",
        ),
        (
            f"accuracy {a['task']} ({a['test_examples']} test)",
            f"device {a['device_int8_ort']:.3f}",
            f"workstation {a['workstation_torch']:.3f}{fp32}",
            f"{a['device_int8_ort'] - a['workstation_torch']:+.3f}",
        ),
        (
            f"accuracy {second['task']} ({second['test_examples']} test)",
            f"device {second['device_int8_ort']:.3f}",
            f"its PEFT LoRA {ref2:.3f}" if ref2 is not None else "",
            "",
        ),
        (
            "task switch: after-switch - same, p50",
            f"{s['p50_switch_minus_same_ms']:+.3f} ms",
            f"control (no switch) {s['p50_control_minus_same_ms']:+.3f} ms, IQR {s['control_iqr_ms']:.3f} ms",
            "resolved" if s["resolved"] else "in noise",
        ),
        (
            "  run after a switch vs new session",
            f"{s['p50_run_after_switch_ms']:.1f} ms",
            f"new session: load + first run {s['p50_new_session_load_plus_first_run_ms']:.0f} ms",
            f"{s['p50_new_session_load_plus_first_run_ms'] / max(s['p50_run_after_switch_ms'], 1e-9):.0f}x",
        ),
        (
            "device training, peak RSS",
            f"{tr['peak_rss_mib']:.0f} MiB",
            f"import baseline {tr['import_baseline_peak_rss_mib']:.0f} MiB",
            "",
        ),
        (
            f"  new task {tr['name']}",
            f"test {tr['test_accuracy']:.3f}",
            f"majority {tr['majority_class_accuracy']:.3f}; {tr['trainer']['steps']} steps, "
            f"{tr['process_seconds']:.0f} s",
            "",
        ),
    ]
    head = ("figure", "edge-eigenlora", "reference", "ratio")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m edge_eigenlora.demo_device SPEC.json RESULT.json")
    runner_main(sys.argv[1], sys.argv[2])
