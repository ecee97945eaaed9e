"""The device runtime on a tiny seeded BERT bundle (hidden 32, 2 layers, the real MiniLM vocabulary).

Everything here runs in seconds: the train-step graph of the tiny model exports in a few seconds. The real
MiniLM numbers (gradient parity, training on a real task) are in test_train_graph.py.
"""

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_eigenlora import bundle
from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.export import ExportConfig, export_bundle
from edge_eigenlora.model import TextClassifier, apply_task, attach_basis
from edge_eigenlora.runtime import DeviceRuntime, RuntimeOptions
from edge_eigenlora.runtime.optim import AdamW
from edge_eigenlora.runtime.session import switch_cost_us
from edge_eigenlora.runtime.tokenize import TruncationWarning
from edge_eigenlora.runtime.trainer import (
    DeviceTrainConfig,
    GradientTrainer,
    evaluate,
    init_params,
    make_task,
)
from edge_eigenlora.runtime.zeroth_order import ZerothOrderTrainer, ZOConfig
from edge_eigenlora.task import load_task, save_task
from edge_eigenlora.train_graph import add_train_step
from tests.helpers import keyword_data, tiny_bert, tiny_bert_bank_dirs

RANK = 4
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm):
    """A tiny BERT bundle with shared + per_row + train_step graphs, and one task t0 (3 labels)."""
    _, tokenizer = minilm
    model = tiny_bert(tokenizer.vocab_size)
    root = tmp_path_factory.mktemp("rt")
    dirs = tiny_bert_bank_dirs(root / "bank")
    basis = fit_basis(load_bank(dirs), SubspaceConfig(k=8), progress=False)
    basis_path = save_basis(basis, root / "basis.safetensors")
    clf = TextClassifier(attach_basis(copy.deepcopy(model), basis, rank=RANK), num_labels=3)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in clf.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    from edge_eigenlora.model import task_from_model

    t0 = save_task(task_from_model(clf, "t0", labels=["x", "y", "z"]), root / "t0.safetensors")
    out = export_bundle(
        "tiny-bert",
        basis_path,
        root / "bundle",
        tasks=[t0],
        model=model,
        tokenizer=tokenizer,
        config=ExportConfig(rank=RANK, variants=("shared", "per_row"), basis_quant="none", max_length=24),
    )
    add_train_step(out, basis_path, model=model)
    # a second basis, for "task of another basis" refusals
    other = fit_basis(load_bank(dirs[:2]), SubspaceConfig(k=8), progress=False)
    return {
        "model": model,
        "tokenizer": tokenizer,
        "basis": basis,
        "other_basis": other,
        "bundle": out,
        "root": root,
        "t0": t0,
        "basis_path": basis_path,
    }


def _copy(tiny, tmp_path):
    return shutil.copytree(tiny["bundle"], tmp_path / "b")


def _torch_clf(tiny, task):
    clf = TextClassifier(attach_basis(copy.deepcopy(tiny["model"]), tiny["basis"], rank=RANK), num_labels=2)
    apply_task(clf, task)
    return clf.eval()


TEXTS = [
    "The film was a delight.",
    "Ich habe heute keine Zeit.",
    "short",
    "a much longer sentence than the others",
]


def test_run_matches_torch_and_tokenizer_matches_transformers(tiny):
    rt = DeviceRuntime(tiny["bundle"], options=RuntimeOptions(threads=1))
    ids, mask = rt.encode(TEXTS)
    ref = tiny["tokenizer"](TEXTS, padding=True, truncation=True, max_length=24, return_tensors="np")
    assert np.array_equal(ids, ref["input_ids"]) and np.array_equal(mask, ref["attention_mask"])
    logits = rt.run(TEXTS, task="t0", batch_size=3)
    with torch.no_grad():
        expect = _torch_clf(tiny, load_task(tiny["t0"]))(
            torch.from_numpy(ids), torch.from_numpy(mask)
        ).numpy()
    assert logits.shape == (4, 3)
    assert np.max(np.abs(logits - expect)) < 1e-4
    assert rt.predict(TEXTS[:1], task="t0")[0] in ("x", "y", "z")


def test_per_row_and_task_switch_in_microseconds(tiny, tmp_path):
    rt = DeviceRuntime(_copy(tiny, tmp_path), options=RuntimeOptions(threads=1))
    t1 = make_task(rt, "t1", init_params(rt, 5, seed=1), list("abcde"), {})
    t1.coefficients = {
        m: (a, np.random.default_rng(2).standard_normal(b.shape).astype(np.float32) * 0.3)
        for m, (a, b) in t1.coefficients.items()
    }
    rt.add_task(t1)
    assert [t["name"] for t in rt.list_tasks()] == ["t0", "t1"]
    rows = rt.run_rows(TEXTS, tasks=["t0", "t1", "t1", "t0"])
    assert [r.shape[0] for r in rows] == [3, 5, 5, 3]
    for i, name in enumerate(["t0", "t1", "t1", "t0"]):
        alone = rt.run(TEXTS[i : i + 1], task=name)[0]
        assert np.max(np.abs(rows[i] - alone)) < 1e-4
    us = switch_cost_us(rt, ["t0", "t1"])
    assert us < 50, f"switching a cached task took {us:.1f} us"


def test_truncation_warns_or_refuses(tiny):
    long_text = " ".join(["word"] * 60)
    rt = DeviceRuntime(tiny["bundle"], verify=False)
    with pytest.warns(
        TruncationWarning, match=r"1 of 2 texts are longer than the bundle's max_length of 24 tokens"
    ):
        ids, _ = rt.encode(["short", long_text])
    assert ids.shape == (2, 24)
    strict = DeviceRuntime(tiny["bundle"], verify=False, on_long="error")
    with pytest.raises(
        EdgeEigenLoraError, match="longer than the bundle's max_length of 24 tokens.*shorten them"
    ):
        strict.run([long_text], task="t0")
    with pytest.warns(
        TruncationWarning, match="input_ids have 40 positions, more than the bundle's max_length 24"
    ):
        assert rt.run(input_ids=np.ones((1, 40), np.int64), task="t0").shape == (1, 3)
    with pytest.raises(EdgeEigenLoraError, match="outside the vocabulary"):
        rt.run(input_ids=np.array([[101, 10**7]]), task="t0")


def test_train_graph_gradients_match_torch_tiny(tiny):
    # low_memory: no constant folding, so the weight transposes stay Transpose nodes; results must not change
    rt = DeviceRuntime(tiny["bundle"], verify=False, options=RuntimeOptions.low_memory(threads=1))
    params = init_params(rt, 3, seed=0)
    params["coefficients"] += (
        np.random.default_rng(1).standard_normal(params["coefficients"].shape).astype(np.float32) * 0.3
    )
    ids, mask = rt.encode(TEXTS)
    labels = np.array([0, 2, 1, 2])
    out = rt.train_step(ids, mask, labels, **params)
    clf = _torch_clf(tiny, make_task(rt, "g", params, ["a", "b", "c"], {}))
    loss = torch.nn.functional.cross_entropy(
        clf(torch.from_numpy(ids), torch.from_numpy(mask)), torch.from_numpy(labels)
    )
    loss.backward()
    from edge_eigenlora.model import eigenlora_layers

    grads = {
        layer.basis_module: (layer.eigenlora_alpha_A.grad.numpy(), layer.eigenlora_alpha_B.grad.numpy())
        for layer in eigenlora_layers(clf).values()
    }
    ref = bundle.pack(grads, rt.layout)
    rel = np.linalg.norm(out["grad_coefficients"] - ref) / np.linalg.norm(ref)
    assert abs(float(out["loss"]) - loss.item()) < 1e-5
    assert rel < 1e-4
    assert (
        np.linalg.norm(out["grad_head_weight"] - clf.head.weight.grad.numpy())
        / np.linalg.norm(clf.head.weight.grad.numpy())
        < 1e-4
    )
    entry = rt.manifest.graph("train_step")
    assert entry.input_names == (
        "input_ids",
        "attention_mask",
        "labels",
        "coefficients",
        "head_weight",
        "head_bias",
    )
    assert all(not k.startswith("com.") for k in entry.op_counts)  # standard ai.onnx ops only
    raw = (tiny["bundle"] / entry.file).read_bytes()
    assert b"/work/" not in raw and str(ROOT).encode() not in raw  # no source paths shipped


def test_adamw_equals_torch():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(7).astype(np.float32)
    opt = AdamW({"w": 0.01}, weight_decay=0.1)
    params = {"w": p0.copy()}
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    topt = torch.optim.AdamW([tp], lr=0.01, weight_decay=0.1)
    for _ in range(5):
        g = rng.standard_normal(7).astype(np.float32)
        opt.step(params, {"w": g})
        tp.grad = torch.from_numpy(g)
        topt.step()
    assert np.max(np.abs(params["w"] - tp.detach().numpy())) < 1e-6


def test_gradient_training_lowers_loss_and_learns(tiny, tmp_path):
    rt = DeviceRuntime(_copy(tiny, tmp_path), options=RuntimeOptions(threads=1))
    texts, labels = keyword_data(96, 0)
    vt, vl = keyword_data(40, 1)
    trainer = GradientTrainer(
        rt,
        "kw",
        (texts, labels),
        ["pos", "neg"],
        validation=(vt, vl),
        log=lambda m: None,
        config=DeviceTrainConfig(epochs=20, batch_size=16, lr=2e-2, eval_every=6, patience=100),
    )
    start_loss = evaluate(rt, init_params(rt, 2, 0), trainer.val)["loss"]
    outcome = trainer.fit()
    end = evaluate(rt, bundle.task_feeds(outcome.task, rt.manifest), trainer.val)
    assert end["loss"] < 0.6 * start_loss  # measured: 0.69 -> 0.31
    assert end["accuracy"] >= 0.8  # majority class: 0.5; measured 0.85
    assert outcome.task.info["trainer"] == "gradient" and outcome.steps == 120


def test_zeroth_order_lowers_loss_with_inference_graph_only(tiny, tmp_path):
    rt = DeviceRuntime(_copy(tiny, tmp_path), options=RuntimeOptions(threads=1))
    texts, labels = keyword_data(96, 0)
    vt, vl = keyword_data(40, 1)
    trainer = ZerothOrderTrainer(
        rt,
        "zo",
        (texts, labels),
        ["pos", "neg"],
        validation=(vt, vl),
        log=lambda m: None,
        config=ZOConfig(steps=300, batch_size=16, lr=1e-2, eval_every=50, head_init="random", patience=100),
    )
    outcome = trainer.fit()
    losses = [h["val_loss"] for h in outcome.history]
    assert losses[-1] < losses[0] - 0.02  # measured: 0.692 -> 0.653 (random head; forward passes only)
    assert "train_step" not in rt._sessions  # forward-only: the train graph was never loaded


def test_a_factored_only_bundle_runs_tasks_and_trains_forward_only(tiny, tmp_path):
    out = export_bundle(
        "tiny-bert",
        tiny["basis_path"],
        tmp_path / "factored",
        tasks=[tiny["t0"]],
        model=tiny["model"],
        tokenizer=tiny["tokenizer"],
        config=ExportConfig(rank=RANK, variants=("factored",), basis_quant="none", max_length=24),
    )
    factored, shared = DeviceRuntime(out), DeviceRuntime(_copy(tiny, tmp_path))
    probe = ["a good film", "a bad day", "hello there"]
    assert np.max(np.abs(factored.run(probe, task="t0") - shared.run(probe, task="t0"))) < 1e-5
    texts, labels = keyword_data(32, 0)

    def first_val_loss(rt):  # probe head init embeds through the graph; each ZO loss forms its own factors
        config = ZOConfig(steps=2, batch_size=8, eval_every=1, head_init="probe", patience=100)
        trainer = ZerothOrderTrainer(
            rt,
            "zo",
            (texts, labels),
            ["pos", "neg"],
            validation=(texts[:16], labels[:16]),
            log=lambda m: None,
            config=config,
        )
        return trainer.fit().history[0]["val_loss"]

    assert abs(first_val_loss(factored) - first_val_loss(shared)) < 1e-4
    assert "shared" not in factored._sessions and {"factored", "factors"} <= set(factored._sessions)


def test_nan_rolls_back_and_lowers_lr(tiny, tmp_path, monkeypatch):
    rt = DeviceRuntime(_copy(tiny, tmp_path), verify=False, options=RuntimeOptions(threads=1))
    texts, labels = keyword_data(64, 0)
    messages = []
    trainer = GradientTrainer(
        rt,
        "nan",
        (texts, labels),
        ["pos", "neg"],
        log=messages.append,
        config=DeviceTrainConfig(epochs=2, batch_size=16, lr=1e-2, validation_fraction=0),
    )
    real = trainer.loss_and_grads
    calls = {"n": 0, "at_bad": None}

    def faulty(params, micro):
        calls["n"] += 1
        loss, grads, used = real(params, micro)
        if calls["n"] == 4:
            calls["at_bad"] = {k: v.copy() for k, v in params.items()}
            return float("nan"), grads, used
        if calls["n"] == 6:
            return loss * 100, grads, used  # exploding
        return loss, grads, used

    monkeypatch.setattr(trainer, "loss_and_grads", faulty)
    outcome = trainer.fit()
    assert outcome.rollbacks == 2
    assert (
        "loss NaN/Inf at step 3: rolled back to the last good coefficients and lowered the learning rate to 0.005"
        in messages[0]
    )
    assert "exploding" in messages[1] and "lowered the learning rate to 0.0025" in messages[1]
    assert all(np.all(np.isfinite(a)) for pair in outcome.task.coefficients.values() for a in pair)
    assert outcome.steps == trainer.total_steps == 8  # rolled-back steps are redone, not counted


def test_too_many_rollbacks_is_an_error(tiny, monkeypatch):
    rt = DeviceRuntime(tiny["bundle"], verify=False)
    texts, labels = keyword_data(32, 0)
    trainer = GradientTrainer(
        rt,
        "bad",
        (texts, labels),
        ["pos", "neg"],
        log=lambda m: None,
        config=DeviceTrainConfig(epochs=3, batch_size=8, max_rollbacks=2, validation_fraction=0),
    )
    monkeypatch.setattr(
        trainer, "loss_and_grads", lambda p, m: (float("nan"), {k: np.zeros_like(v) for k, v in p.items()}, 1)
    )
    with pytest.raises(
        EdgeEigenLoraError,
        match=r"training task 'bad' diverged: loss NaN/Inf at step 0 after 2 rollbacks; lower the learning rate",
    ):
        trainer.fit()


def test_bad_inputs_messages(tiny, tmp_path):
    rt = DeviceRuntime(_copy(tiny, tmp_path))
    texts, labels = keyword_data(16, 0)
    no_val = DeviceTrainConfig(validation_fraction=0)
    with pytest.raises(
        EdgeEigenLoraError, match=r"training labels: label 3 is outside the head's range 0..1"
    ):
        GradientTrainer(rt, "x", (texts, labels[:-1] + [3]), ["pos", "neg"], config=no_val)
    with pytest.raises(
        EdgeEigenLoraError, match=r"training labels: label -1 is outside the head's range 0..2"
    ):
        GradientTrainer(rt, "x", (texts, [-1] + labels[1:]), ["a", "b"], init_task="t0", config=no_val)
    with pytest.raises(EdgeEigenLoraError, match="task name 'a/b' is not allowed"):
        GradientTrainer(rt, "a/b", (texts, labels), ["pos", "neg"])
    # a task file for another basis
    other = make_task(rt, "other", init_params(rt, 2, 0), ["a", "b"], {})
    other.basis_fingerprint = tiny["other_basis"].fingerprint
    with pytest.raises(
        EdgeEigenLoraError, match=r"task 'other' was trained for basis .* but this bundle carries basis"
    ):
        rt.run(TEXTS, task=other)
    with pytest.raises(EdgeEigenLoraError, match="Coefficients only mean something on their own basis"):
        rt.add_task(other)
    with pytest.raises(EdgeEigenLoraError, match=r"task 'nope' is not in bundle"):
        rt.run(TEXTS, task="nope")


def test_corrupt_bundle_is_refused(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    graph = root / "model_train_step.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(
        EdgeEigenLoraError, match=r"bundle file model_train_step.onnx: sha256 mismatch .* re-copy the bundle"
    ):
        DeviceRuntime(root)
    (root / "manifest.json").write_text("{ not json")
    with pytest.raises(EdgeEigenLoraError, match=r"manifest.json is not valid JSON"):
        DeviceRuntime(root)
    shutil.rmtree(root)
    root = _copy(tiny, tmp_path)
    (root / "model_shared.onnx").write_bytes(b"garbage")
    rt = DeviceRuntime(root, verify=False)
    with pytest.raises(
        EdgeEigenLoraError, match=r"onnxruntime cannot load .*model_shared.onnx .* re-copy or re-export"
    ):
        rt.run(TEXTS, task="t0")


# ---------------------------------------------------------------------------------------------------
# CLI, torch-free, SIGKILL + resume
# ---------------------------------------------------------------------------------------------------

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "onnx", "onnxscript"):
                raise ImportError(f"{name} is blocked: the device runtime must not import it")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def _cli(args, tmp_path, block=True, **kw):
    env = dict(os.environ)
    paths = [str(ROOT)]
    if block:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(BLOCK_TORCH)
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    cmd = [sys.executable, "-m", "edge_eigenlora.runtime", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, **kw)


def _write_csv(path, texts, labels, names=("pos", "neg")):
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for t, y in zip(texts, labels, strict=True):
            w.writerow([t, names[y]])
    return path


def test_runtime_imports_and_trains_with_torch_unimportable(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    probe = _cli(["tasks", root], tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert "t0" in probe.stdout and "train_step" in probe.stdout
    code = (
        "import sys\n"
        "try:\n    import torch\nexcept ImportError as e:\n    print('BLOCKED', e)\n"
        "from edge_eigenlora.runtime import DeviceRuntime\n"
        "from edge_eigenlora.runtime import trainer, zeroth_order, __main__\n"
        f"rt = DeviceRuntime({str(root)!r})\n"
        "print(rt.predict(['a good film'], task='t0'))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnx')))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(ROOT)]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "BLOCKED torch is blocked" in out.stdout and out.stdout.strip().endswith("[]")
    texts, labels = keyword_data(48, 0)
    csv_path = _write_csv(tmp_path / "kw.csv", texts, labels)
    res = _cli(
        [
            "train",
            root,
            "--name",
            "kw",
            "--train-file",
            csv_path,
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "0.02",
            "--threads",
            "1",
            "--low-memory",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 * math.ceil(41 / 8) and summary["task"] == "kw"
    run = _cli(["run", root, "--task", "kw", "--text", "a great film", "--json"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["label"] in ("pos", "neg")
    assert not (root / ".checkpoints" / "kw.safetensors").exists()
    bundle.verify_bundle(root)


def test_cli_bad_files_messages(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    res = _cli(["train", root, "--name", "e", "--train-file", empty], tmp_path)
    assert res.returncode == 2 and "holds no examples; it needs at least two labelled texts" in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "a"}\n{"text": "broken"\n')
    res = _cli(["train", root, "--name", "e", "--train-file", bad], tmp_path)
    assert res.returncode == 2 and "bad.jsonl:2: not valid JSON" in res.stderr
    nohead = tmp_path / "nohead.csv"
    nohead.write_text("a,b\nc,d\n")
    res = _cli(["train", root, "--name", "e", "--train-file", nohead], tmp_path)
    assert res.returncode == 2 and "the header must name columns 'text' and 'label'" in res.stderr
    res = _cli(
        ["run", root, "--task", "t0", "--on-long", "error", "--text", " ".join(["word"] * 60)], tmp_path
    )
    assert res.returncode == 2 and "longer than the bundle's max_length of 24 tokens" in res.stderr
    res = _cli(["run", root, "--task", "t0", "--text", " ".join(["word"] * 60)], tmp_path)
    assert (
        res.returncode == 0 and "warning: 1 of 1 texts are longer than the bundle's max_length" in res.stderr
    )
    (root / "tasks" / "t0.safetensors").write_bytes(b"\x00" * 10)
    res = _cli(["tasks", root], tmp_path)
    assert res.returncode == 2 and "tasks/t0.safetensors: sha256 mismatch" in res.stderr


def test_sigkill_mid_training_then_resume(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    texts, labels = keyword_data(200, 0)
    csv_path = _write_csv(tmp_path / "kw.csv", texts, labels)
    ckpt = tmp_path / "kw.ckpt.safetensors"
    args = [
        "train",
        root,
        "--name",
        "kw",
        "--train-file",
        csv_path,
        "--epochs",
        "20",
        "--batch-size",
        "4",
        "--patience",
        "1000",
        "--checkpoint",
        ckpt,
        "--checkpoint-every",
        "5",
        "--threads",
        "1",
        "--out",
        tmp_path / "kw.safetensors",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_eigenlora.runtime", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    from edge_eigenlora.fileio import read_safetensors

    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and step < 15:
        time.sleep(0.2)
        if ckpt.exists():
            try:
                step = json.loads(read_safetensors(ckpt, "checkpoint")[1]["state"])["step"]
            except EdgeEigenLoraError:
                pass  # replaced while reading: try again
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert step >= 15
    # after the kill: the bundle and its task files are intact, the checkpoint is readable, no task was half-written
    bundle.verify_bundle(root)
    tensors, meta = read_safetensors(ckpt, "checkpoint")
    saved = json.loads(meta["state"])["step"]
    assert saved % 5 == 0 and saved >= 15
    assert not (tmp_path / "kw.safetensors").exists()
    res = _cli(args, tmp_path, block=False)
    assert res.returncode == 0, res.stderr
    assert f"resuming task 'kw' from checkpoint {ckpt} at step {saved}" in res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == saved and summary["steps"] > saved
    task = load_task(tmp_path / "kw.safetensors", expected_basis=tiny["basis"].fingerprint)
    assert task.info["steps"] == summary["steps"]
    # the same run without interruption ends at the same coefficients (deterministic resume)
    fresh = _cli(
        [
            *args[:-2],
            "--out",
            tmp_path / "fresh.safetensors",
            "--name",
            "kw2",
            "--checkpoint",
            tmp_path / "c2.safetensors",
        ],
        tmp_path,
        block=False,
    )
    assert fresh.returncode == 0, fresh.stderr
    ref = load_task(tmp_path / "fresh.safetensors")
    diff = max(
        float(np.max(np.abs(a - b)))
        for m in task.coefficients
        for a, b in zip(task.coefficients[m], ref.coefficients[m], strict=True)
    )
    assert diff < 1e-5


def test_train_step_runs_identically_from_the_ort_file(tiny, tmp_path):
    import onnx

    from edge_eigenlora.onnx_tools import convert_to_ort

    root = _copy(tiny, tmp_path)
    ort_bytes, config = convert_to_ort(onnx.load(str(root / "model_train_step.onnx")), tmp_path, "train")
    ort_path = tmp_path / "train.ort"
    ort_path.write_bytes(ort_bytes)
    assert "ScatterND" in config.decode()
    rt = DeviceRuntime(root, verify=False, options=RuntimeOptions(threads=1))
    params = init_params(rt, 3, seed=0)
    ids, mask = rt.encode(TEXTS)
    feeds = {"input_ids": ids, "attention_mask": mask, "labels": np.array([0, 1, 2, 0]), **params}
    from edge_eigenlora.runtime.session import make_session

    a = rt.session("train_step").run(None, feeds)
    b = make_session(ort_path, RuntimeOptions(threads=1)).run(None, feeds)
    assert all(np.max(np.abs(x - y)) < 1e-6 for x, y in zip(a, b, strict=True))
