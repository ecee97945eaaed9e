"""On-device personalization of a decoder LM (issue 12, item 3) and the device CLI's `generate` / `train
--kind causal_lm`.

Fast tests run on a tiny seeded Llama (hidden 64, 2 layers) with the real MiniLM WordPiece vocabulary and a
small chat template; the real SmolLM2-135M tests share one exported bundle (shared + train-step graphs).
"""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
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
from edge_eigenlora.model import attach_basis, eigenlora_layers, task_from_model
from edge_eigenlora.runtime.generate import LMRuntime
from edge_eigenlora.runtime.lm_trainer import (
    LMRecord,
    LMTrainer,
    evaluate_lm,
    init_lm_params,
    lm_records,
    read_lm_file,
    tokenize_lm_examples,
)
from edge_eigenlora.runtime.session import RuntimeOptions
from edge_eigenlora.runtime.tokenize import TruncationWarning
from edge_eigenlora.runtime.trainer import DeviceTrainConfig
from edge_eigenlora.task import load_task, save_task
from tests.helpers import random_adapter_dirs, tiny_llama_bank_dirs, tiny_llama_model
from tests.test_runtime import (  # noqa: F401  (a classification bundle for the refusals)
    BLOCK_TORCH,
    _cli,
    tiny,
)

RANK, K = 4, 6
ROOT = Path(__file__).resolve().parents[1]
CHAT = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
PAIRS = [
    (f"name a colour number {i}", f"the colour {c} is lovely") for i, c in enumerate(["red", "blue"] * 8)
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory, minilm):
    """A tiny Llama bundle with shared, per_row and train-step graphs, a chat template and tasks lm0, lm1."""
    tokenizer = copy.deepcopy(minilm[1])
    tokenizer.chat_template = CHAT
    model = tiny_llama_model(tokenizer.vocab_size)
    root = tmp_path_factory.mktemp("lm_device")
    basis = fit_basis(load_bank(tiny_llama_bank_dirs(root)), SubspaceConfig(k=K), progress=False)
    basis_path = save_basis(basis, root / "basis.safetensors")
    tasks = []
    for i in range(2):
        attached = attach_basis(copy.deepcopy(model), basis, rank=RANK)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for layer in eigenlora_layers(attached).values():
                layer.eigenlora_alpha_A.copy_(torch.randn(layer.eigenlora_alpha_A.shape, generator=g))
                layer.eigenlora_alpha_B.copy_(torch.randn(layer.eigenlora_alpha_B.shape, generator=g) * 0.3)
        tasks.append(save_task(task_from_model(attached, f"lm{i}"), root / f"lm{i}.safetensors"))
    out = export_bundle(
        "tiny-llama",
        basis_path,
        root / "bundle",
        tasks=tasks,
        model=model,
        tokenizer=tokenizer,
        config=ExportConfig(rank=RANK, variants=("shared", "per_row"), basis_quant="none", train_step=True),
    )
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    return {"model": model, "basis": basis, "bundle": out, "root": root, "data": data}


def _copy(lm, tmp_path):
    return shutil.copytree(lm["bundle"], tmp_path / "b")


def _torch_loss(model, basis, coefficients, layout, ids, mask, labels, rank=RANK):
    """HF's causal-LM loss (shift, mean over labelled tokens) with the coefficients attached; (loss, model)."""
    attached = attach_basis(copy.deepcopy(model), basis, rank=rank)
    _set_coefficients(attached, coefficients, layout)
    out = attached(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        labels=torch.from_numpy(labels),
    )
    return out.loss, attached


def _set_coefficients(attached, coefficients, layout):
    values = bundle.unpack(coefficients, layout)
    with torch.no_grad():
        for layer in eigenlora_layers(attached).values():
            a, b = values[layer.basis_module]
            layer.eigenlora_alpha_A.copy_(torch.from_numpy(a))
            layer.eigenlora_alpha_B.copy_(torch.from_numpy(b))


def _packed_grads(attached, layout):
    grads = {
        layer.basis_module: (layer.eigenlora_alpha_A.grad.numpy(), layer.eigenlora_alpha_B.grad.numpy())
        for layer in eigenlora_layers(attached).values()
    }
    return bundle.pack(grads, layout)


def _perturbed(rt, seed, scale_b):
    """Coefficients with alpha_B != 0 (at alpha_B = 0 alpha_A's gradient is exactly 0)."""
    c = init_lm_params(rt, seed)["coefficients"]
    return c + np.random.default_rng(seed + 1).standard_normal(c.shape).astype(np.float32) * scale_b


# ---------------------------------------------------------------------------------------------------
# examples, the JSONL reader
# ---------------------------------------------------------------------------------------------------


def test_examples_label_only_the_completion_and_eos(lm):
    rt = LMRuntime(lm["bundle"], verify=False)
    data = tokenize_lm_examples(rt, lm_records([PAIRS[0], PAIRS[1]]))
    eos = rt.decoder.eos_token_ids[0]
    prompt = rt.encode_prompt(PAIRS[0][0])  # as generation encodes it: the chat template
    assert rt.tokenizer.decode(prompt, False).startswith("< | user | > name a colour")
    completion = rt.tokenizer.encode_ids(PAIRS[0][1], False)
    assert data.rows[0] == prompt + completion + [eos]
    assert data.targets[0] == [-100] * len(prompt) + completion + [eos]
    ids, mask, labels = data.batch([0, 1], rt.tokenizer.pad_id)
    n0, n1 = len(data.rows[0]), len(data.rows[1])
    assert ids.shape == (2, max(n0, n1)) and mask[0].sum() == n0 and mask[1].sum() == n1
    assert (labels[mask == 0] == -100).all()  # right padding takes no loss
    assert data.weight(labels) == 2 * (len(completion) + 1)
    # no chat template; the text form labels every token
    plain = tokenize_lm_examples(rt, lm_records([PAIRS[0]]), chat=False)
    assert plain.rows[0][: len(rt.encode_prompt(PAIRS[0][0], chat=False))] == rt.encode_prompt(
        PAIRS[0][0], chat=False
    )
    text = tokenize_lm_examples(rt, lm_records(["a plain sentence"]))
    assert text.targets[0] == text.rows[0] and text.rows[0][-1] == eos


def test_long_examples_warn_or_are_refused(lm):
    long = [("a short prompt", " ".join(["word"] * 200))]
    rt = LMRuntime(lm["bundle"], verify=False, max_length=32)
    with pytest.warns(
        TruncationWarning, match=r"1 of 1 training examples are longer than the token limit of 32"
    ):
        data = tokenize_lm_examples(rt, lm_records(long))
    assert len(data.rows[0]) == 32 and data.rows[0][-1] != rt.decoder.eos_token_ids[0]
    strict = LMRuntime(lm["bundle"], verify=False, max_length=32, on_long="error")
    with pytest.raises(EdgeEigenLoraError, match=r"\(first: example 0\); shorten them, raise --max-length"):
        tokenize_lm_examples(strict, lm_records(long))
    with pytest.raises(
        EdgeEigenLoraError,
        match=r'example 0: field "prompt" has more than 32 tokens \(with the chat template: yes\); the token limit is 32',
    ):
        tokenize_lm_examples(rt, lm_records([(" ".join(["word"] * 40), "ok")]))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": ""}\n',
            r':2: field "completion" is empty',
        ),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "c"\n', r":2: not valid JSON"),
        ('{"prompt": "a"}\n', r':1: field "completion" is missing'),
        (
            '{"question": "a", "answer": "b"}\n',
            r':1: field "completion" is missing: each line needs "prompt"',
        ),
        ('{"prompt": "a", "completion": 3}\n', r':1: field "completion" must be a string, got int'),
        (
            '{"text": "a", "prompt": "b", "completion": "c"}\n',
            r':1: give either "text" or "prompt" \+ "completion"',
        ),
        (
            '{"prompt": "a", "completion": "b"}\n{"text": "c"}\n',
            r":2: this example is text but .*:1 is prompt/completion",
        ),
        ('["a", "b"]\n', r":1: expected a JSON object"),
        ("\n\n", r" holds no examples"),
    ],
)
def test_jsonl_reader_names_file_line_and_field(tmp_path, lines, message):
    path = tmp_path / "data.jsonl"
    path.write_text(lines)
    with pytest.raises(EdgeEigenLoraError, match=r"data\.jsonl" + message):
        read_lm_file(path)


def test_jsonl_reader_reads_both_forms(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n\n{"prompt": "q", "completion": "d"}\n')
    assert read_lm_file(path) == [
        LMRecord("p", "c", None, f"{path}:1"),
        LMRecord("q", "d", None, f"{path}:3"),
    ]
    path.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert [r.text for r in read_lm_file(path)] == ["one", "two"]


# ---------------------------------------------------------------------------------------------------
# gradients and the trainer (tiny Llama)
# ---------------------------------------------------------------------------------------------------


def test_train_step_gradients_equal_autograd_tiny(lm):
    rt = LMRuntime(lm["bundle"], verify=False, options=RuntimeOptions(threads=1))
    data = tokenize_lm_examples(
        rt, lm_records(PAIRS[:3] + [("x", "a longer completion than the others are")])
    )
    ids, mask, labels = data.batch(range(4), rt.tokenizer.pad_id)
    coefficients = _perturbed(rt, 0, 0.3)
    out = rt.train_step(ids, mask, labels, coefficients)
    assert set(out) == {"loss", "grad_coefficients"}
    loss, attached = _torch_loss(lm["model"], lm["basis"], coefficients, rt.layout, ids, mask, labels)
    loss.backward()
    ref = _packed_grads(attached, rt.layout)
    assert abs(float(out["loss"]) - loss.item()) < 1e-5 * max(1.0, loss.item())
    assert np.linalg.norm(out["grad_coefficients"] - ref) / np.linalg.norm(ref) < 1e-4
    # the forward-only validation loss (shared graph) is the train step's loss
    total, tokens = rt.completion_loss(ids, mask, labels, coefficients=coefficients)
    assert tokens == data.weight(labels) and abs(total / tokens - loss.item()) < 1e-4


def test_device_run_and_workstation_run_agree_per_step(lm):
    rt = LMRuntime(lm["bundle"], verify=False, options=RuntimeOptions(threads=1))
    config = DeviceTrainConfig(
        batch_size=4, lr=3e-2, max_steps=5, eval_every=1, validation_fraction=0, epochs=5
    )
    trainer = LMTrainer(rt, "same", PAIRS, config=config, log=lambda m: None)
    outcome = trainer.fit()
    device = [h["train_loss"] for h in outcome.history if "train_loss" in h]
    # the workstation: torch autograd through attach_basis, HF's loss, torch.optim.AdamW, the same batches
    start = init_lm_params(rt, config.seed)["coefficients"]
    attached = attach_basis(copy.deepcopy(lm["model"]), lm["basis"], rank=RANK)
    _set_coefficients(attached, start, rt.layout)
    params = [
        p
        for layer in eigenlora_layers(attached).values()
        for p in (layer.eigenlora_alpha_A, layer.eigenlora_alpha_B)
    ]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    workstation = []
    for step in range(5):
        ids, mask, labels = trainer.micro_batch(step)
        opt.zero_grad()
        loss = attached(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            labels=torch.from_numpy(labels),
        ).loss
        loss.backward()
        opt.step()
        workstation.append(loss.item())
    assert len(device) == 5
    rel = [abs(a - b) / abs(b) for a, b in zip(device, workstation, strict=True)]
    assert max(rel) < 1e-4, (device, workstation)
    assert workstation[-1] < workstation[0]  # it trains
    final = bundle.pack({m: ab for m, ab in outcome.task.coefficients.items()}, rt.layout)
    ws = bundle.pack(
        {
            layer.basis_module: (
                layer.eigenlora_alpha_A.detach().numpy(),
                layer.eigenlora_alpha_B.detach().numpy(),
            )
            for layer in eigenlora_layers(attached).values()
        },
        rt.layout,
    )
    assert np.max(np.abs(final - ws)) < 1e-4


def test_lm_trainer_lowers_validation_loss_and_writes_the_task(lm, tmp_path):
    from edge_eigenlora.runtime.trainer import write_task

    rt = LMRuntime(_copy(lm, tmp_path), options=RuntimeOptions(threads=1))
    trainer = LMTrainer(
        rt,
        "colours",
        PAIRS,
        log=lambda m: None,
        config=DeviceTrainConfig(epochs=8, batch_size=4, lr=3e-2, patience=100),
    )
    outcome = trainer.fit()
    before, after = outcome.task.info["val_loss_before"], outcome.best_metric
    assert after < before - 0.1, (before, after)  # measured: 10.29 -> 10.07 (a random tiny model)
    assert outcome.task.kind == "causal_lm" and outcome.task.head_weight is None
    written = write_task(rt, outcome.task, output=tmp_path / "c.safetensors")
    assert len(written) == 2 and "colours" in bundle.verify_bundle(rt.root).tasks
    got = evaluate_lm(rt, rt.task("colours").coefficients, trainer.val)["loss"]
    assert abs(got - after) < 1e-6
    # continuing the trained task starts from its coefficients
    more = LMTrainer(
        rt, "more", PAIRS, init_task="colours", log=lambda m: None, config=DeviceTrainConfig(max_steps=1)
    )
    assert abs(more.validate(more.initial_params())["val_loss"] - after) < 1e-6


def test_lm_nan_rolls_back_and_lowers_lr(lm, monkeypatch):
    rt = LMRuntime(lm["bundle"], verify=False, options=RuntimeOptions(threads=1))
    messages = []
    trainer = LMTrainer(
        rt,
        "nan",
        PAIRS,
        log=messages.append,
        config=DeviceTrainConfig(epochs=2, batch_size=4, lr=1e-2, validation_fraction=0),
    )
    real = trainer.loss_and_grads
    calls = {"n": 0}

    def faulty(params, micro):
        calls["n"] += 1
        loss, grads, used = real(params, micro)
        if calls["n"] == 3:
            return float("nan"), grads, used
        if calls["n"] == 6:
            return loss * 100, grads, used
        return loss, grads, used

    monkeypatch.setattr(trainer, "loss_and_grads", faulty)
    outcome = trainer.fit()
    assert outcome.rollbacks == 2 and outcome.steps == trainer.total_steps == 8
    assert (
        "loss NaN/Inf at step 2: rolled back to the last good coefficients and lowered the learning rate to 0.005"
        in messages[0]
    )
    assert "exploding" in messages[1] and "0.0025" in messages[1]
    assert all(np.all(np.isfinite(a)) for pair in outcome.task.coefficients.values() for a in pair)


def test_lm_trainer_refusals(lm, tiny):  # noqa: F811
    from edge_eigenlora.runtime import DeviceRuntime

    rt = LMRuntime(lm["bundle"], verify=False)
    with pytest.raises(EdgeEigenLoraError, match="LMTrainer trains causal_lm bundles"):
        LMTrainer(DeviceRuntime(tiny["bundle"], verify=False), "x", PAIRS)
    with pytest.raises(EdgeEigenLoraError, match="a language model's task has no head"):
        LMTrainer(rt, "x", PAIRS, config=DeviceTrainConfig(head_init="probe"))
    with pytest.raises(EdgeEigenLoraError, match=r'training example 1: field "completion" is empty'):
        LMTrainer(rt, "x", [("a", "b"), ("c", " ")])
    with pytest.raises(EdgeEigenLoraError, match="task name 'a/b' is not allowed"):
        LMTrainer(rt, "a/b", PAIRS)


# ---------------------------------------------------------------------------------------------------
# the CLI (torch made unimportable), SIGKILL + resume
# ---------------------------------------------------------------------------------------------------


def test_cli_train_then_generate_json_and_stream_without_torch(lm, tmp_path):
    root = _copy(lm, tmp_path)
    res = _cli(
        [
            "train",
            root,
            "--kind",
            "causal_lm",
            "--name",
            "col",
            "--train-file",
            lm["data"],
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "0.03",
            "--threads",
            "1",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "training language-model task 'col' on 14 examples" in res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "causal_lm" and summary["steps"] == 12
    assert summary["val_loss"] < summary["val_loss_before"]
    assert not (root / ".checkpoints" / "col.safetensors").exists()
    assert "col" in bundle.verify_bundle(root).tasks
    prompts = ["name a colour number 3", "what is it"]
    res = _cli(
        [
            "generate",
            root,
            "--task",
            "col",
            "--prompt",
            prompts[0],
            "--prompt",
            prompts[1],
            "--max-new-tokens",
            "6",
            "--json",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    expected = LMRuntime(root).generate(prompts, task="col", max_new_tokens=6)
    for row, gen in zip(rows, expected, strict=True):
        assert set(row) == {"prompt", "task", "text", "token_ids", "finish_reason", "prompt_tokens", "ms"}
        assert row["token_ids"] == gen.token_ids and row["text"] == gen.text
        assert row["prompt_tokens"] == gen.prompt_tokens and row["finish_reason"] == gen.finish_reason
        assert set(row["ms"]) == {"prefill", "per_token", "total"}
    assert "2 prompt(s), " in res.stderr and "ms per decode step" in res.stderr
    res = _cli(
        ["generate", root, "--task", "col", "--prompt", prompts[0], "--max-new-tokens", "6", "--stream"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == expected[0].text + "\n"
    # per-row tasks, streamed in prompt order, and the JSON token events
    res = _cli(
        [
            "generate",
            root,
            "--tasks",
            "col",
            "lm0",
            "--prompt",
            prompts[0],
            "--prompt",
            prompts[1],
            "--max-new-tokens",
            "4",
            "--stream",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    rows = LMRuntime(root).generate(prompts, tasks=["col", "lm0"], max_new_tokens=4)
    assert res.stdout == f"[prompt 1] {prompts[0]}\n{rows[0].text}\n[prompt 2] {prompts[1]}\n{rows[1].text}\n"
    res = _cli(
        [
            "generate",
            root,
            "--task",
            "col",
            "--prompt",
            prompts[0],
            "--max-new-tokens",
            "3",
            "--stream",
            "--json",
        ],
        tmp_path,
    )
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["token_id"] for e in lines[:3]] == expected[0].token_ids[:3] and lines[3]["prompt"] == prompts[
        0
    ]


def test_cli_bad_inputs_name_the_argument_and_write_nothing(lm, tiny, tmp_path):  # noqa: F811
    root = _copy(lm, tmp_path)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    clf = tiny["bundle"]

    def fails(args, message):
        res = _cli(args, tmp_path)
        assert res.returncode == 2, (res.stdout, res.stderr)
        assert message in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1  # one line
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before

    gen = ["generate", root, "--task", "lm0"]
    fails(
        [*gen, "--prompt", " ".join(["word"] * 130)],
        "--prompt number 1 has more than 128 tokens; with --max-new-tokens 64 it exceeds the model's context of 128 positions",
    )
    fails([*gen, "--prompt", "hi", "--prompt", " ".join(["word"] * 100)], "--prompt number 2 has 1")
    fails(
        ["generate", clf, "--task", "t0", "--prompt", "hi"],
        "is a classification bundle; `generate` needs a causal_lm bundle",
    )
    fails(
        ["run", root, "--task", "lm0", "--text", "hi"],
        "is a causal_lm bundle (a language model); `run` classifies texts",
    )
    fails(
        ["generate", root, "--tasks", "lm0", "lm1", "--prompt", "a", "--prompt", "b", "--prompt", "c"],
        "--tasks lists 2 tasks for 3 prompts (--prompt)",
    )
    fails(
        [*gen, "--prompt", "hi", "--sample", "--temperature", "0"],
        "--temperature must be > 0 with --sample, got 0.0",
    )
    fails([*gen, "--prompt", "hi", "--stop", "x", "--stop", ""], "--stop number 2 is empty")
    fails([*gen, "--prompt", "  "], "--prompt number 1 is empty")
    fails(gen, "nothing to generate: give --prompt TEXT")
    fails([*gen, "--prompt", "hi", "--top-p", "0", "--sample"], "top_p must be in (0, 1]")
    fails(["generate", root, "--task", "nope", "--prompt", "hi"], "task 'nope' is not in bundle")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": ""}\n')
    train = ["train", root, "--name", "new", "--train-file"]
    fails([*train, empty], 'empty.jsonl:2: field "completion" is empty')
    fails([*train, lm["data"], "--kind", "classification"], "--kind classification, but ")
    fails([*train, lm["data"], "--method", "zo"], "--method zo trains classifiers")
    fails([*train, lm["data"], "--head-init", "probe"], "a language model's task has no head")
    fails(
        [*train, lm["data"], "--max-length", "500"],
        "--max-length 500 is more than the model's context of 128 positions",
    )
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\na,b\n")
    fails([*train, csv], "a language model trains from JSONL")
    res = _cli(["train", clf, "--kind", "causal_lm", "--name", "x", "--train-file", lm["data"]], tmp_path)
    assert (
        res.returncode == 2
        and "--kind causal_lm, but " in res.stderr
        and "is a classification bundle" in res.stderr
    )
    res = _cli([*gen, "--prompt", "hi", "--temperature", "0.5", "--max-new-tokens", "2"], tmp_path)
    assert res.returncode == 0 and "apply only with --sample" in res.stderr


def test_sigkill_mid_lm_training_then_resume(lm, tmp_path):
    from edge_eigenlora.fileio import read_safetensors

    root = _copy(lm, tmp_path)
    ckpt = tmp_path / "p.ckpt.safetensors"
    args = [
        "train",
        root,
        "--name",
        "p",
        "--train-file",
        lm["data"],
        "--epochs",
        "100",
        "--max-steps",
        "60",
        "--batch-size",
        "2",
        "--lr",
        "0.01",
        "--patience",
        "1000",
        "--checkpoint",
        ckpt,
        "--checkpoint-every",
        "3",
        "--threads",
        "1",
        "--out",
        tmp_path / "p.safetensors",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_eigenlora.runtime", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline, step = time.time() + 120, 0
    while time.time() < deadline and step < 9:
        time.sleep(0.1)
        if ckpt.exists():
            try:
                step = json.loads(read_safetensors(ckpt, "checkpoint")[1]["state"])["step"]
            except EdgeEigenLoraError:
                pass  # replaced while reading
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    bundle.verify_bundle(root)
    saved = json.loads(read_safetensors(ckpt, "checkpoint")[1]["state"])["step"]
    assert saved % 3 == 0 and 9 <= saved < 60
    assert not (tmp_path / "p.safetensors").exists() and "p" not in bundle.read_manifest(root).tasks
    # another data file is refused (fingerprint), nothing written
    other = tmp_path / "other.jsonl"
    other.write_text(lm["data"].read_text().replace("lovely", "nice"))
    res = _cli([a if a != lm["data"] else other for a in args], tmp_path, block=False)
    assert (
        res.returncode == 2
        and "checkpoint was written for other training settings or data (differs in data" in res.stderr
    )
    res = _cli(args, tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"resuming task 'p' from checkpoint {ckpt} at step {saved}" in res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == saved and summary["steps"] == 60
    task = load_task(tmp_path / "p.safetensors", expected_basis=lm["basis"].fingerprint)
    fresh = _cli(
        [
            *args[:-2],
            "--out",
            tmp_path / "fresh.safetensors",
            "--name",
            "p2",
            "--checkpoint",
            tmp_path / "c2.safetensors",
        ],
        tmp_path,
    )
    assert fresh.returncode == 0, fresh.stderr
    ref = load_task(tmp_path / "fresh.safetensors")
    diff = max(
        float(np.max(np.abs(a - b)))
        for m in task.coefficients
        for a, b in zip(task.coefficients[m], ref.coefficients[m], strict=True)
    )
    assert diff < 1e-6


# ---------------------------------------------------------------------------------------------------
# the real SmolLM2-135M
# ---------------------------------------------------------------------------------------------------

SMOL_RANK = 4


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """SmolLM2-135M-Instruct with a basis of a synthetic 3-adapter bank (q_proj, v_proj), exported with the
    shared and train-step graphs (fp32); ~3-5 min on 2 cores, once per module."""
    from edge_eigenlora.pretrained import SMOLLM2, load_causal_lm

    model, tokenizer = load_causal_lm()
    root = tmp_path_factory.mktemp("smol_device")
    dirs = random_adapter_dirs(model, root, ("q_proj", "v_proj"), base_model=SMOLLM2)
    basis = fit_basis(load_bank(dirs), SubspaceConfig(k=8), progress=False)
    basis_path = save_basis(basis, root / "basis.safetensors")
    out = export_bundle(
        SMOLLM2,
        basis_path,
        root / "bundle",
        model=model,
        tokenizer=tokenizer,
        config=ExportConfig(
            rank=SMOL_RANK, kind="causal_lm", variants=("shared",), basis_quant="none", train_step=True
        ),
    )
    return {"model": model, "tokenizer": tokenizer, "basis": basis, "bundle": out}


def _adverbs():
    """WordNet adverb definitions as prompt -> completion (a text style in no bank), split seeded."""
    from edge_eigenlora.datasets import WORDNET_DIR, read_wordnet_words

    path = WORDNET_DIR / "data.adv"
    if not path.exists():
        pytest.skip(f"{path} is missing (Debian package wordnet-base)")
    pairs = [
        (f'Define the adverb "{w}":', d) for w, d in read_wordnet_words(path) if " " not in w and len(d) < 80
    ]
    order = np.random.default_rng(0).permutation(len(pairs))
    return [pairs[i] for i in order[:320]], [pairs[i] for i in order[320:384]]


@pytest.mark.slow  # the shared fixture exports SmolLM2's step and train-step graphs (minutes)
@pytest.mark.real_model
def test_smollm2_train_step_gradients_equal_autograd(smol):
    rt = LMRuntime(smol["bundle"], verify=False)
    train, _ = _adverbs()
    data = tokenize_lm_examples(rt, lm_records(train[:3]))
    ids, mask, labels = data.batch(range(3), rt.tokenizer.pad_id)
    coefficients = _perturbed(rt, 0, 0.02)
    out = rt.train_step(ids, mask, labels, coefficients)
    loss, attached = _torch_loss(
        smol["model"], smol["basis"], coefficients, rt.layout, ids, mask, labels, SMOL_RANK
    )
    loss.backward()
    ref = _packed_grads(attached, rt.layout)
    rel = float(np.linalg.norm(out["grad_coefficients"] - ref) / np.linalg.norm(ref))
    print(
        f"SmolLM2 train step: loss {float(out['loss']):.6f} vs {loss.item():.6f}, gradient relative error {rel:.2e}"
    )
    assert abs(float(out["loss"]) - loss.item()) < 1e-4 * loss.item()
    assert rel < 1e-4  # measured: 4.75e-06 (loss 5.152286 vs 5.152285)


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_40_device_steps_lower_the_held_out_loss(smol, tmp_path):
    root = shutil.copytree(smol["bundle"], tmp_path / "b")
    rt = LMRuntime(root, options=RuntimeOptions.low_memory())
    train, held_out = _adverbs()
    config = DeviceTrainConfig(batch_size=8, lr=1e-2, max_steps=40, eval_every=40, epochs=1, patience=100)
    trainer = LMTrainer(rt, "adverbs", train, validation=held_out, config=config, log=lambda m: None)
    start = time.perf_counter()
    outcome = trainer.fit()
    before, after = outcome.task.info["val_loss_before"], outcome.best_metric
    print(
        f"SmolLM2 40 device steps: held-out loss {before:.4f} -> {after:.4f} in {time.perf_counter() - start:.0f} s"
    )
    assert outcome.steps == 40
    assert after < before - 1.3, (before, after)  # measured: 5.722 -> 3.003 (half the drop as the floor)


SMOL_PROMPTS = [
    'Define the verb "walk":',
    "The capital of France is",
    "Write a short poem about the sea.",
    "List three colours:",
    "Once upon a time",
]


@pytest.fixture(scope="module")
def smol_task_bundle(smol, tmp_path_factory):
    """The SmolLM2 bundle with a task trained on the workstation (6 steps on verb definitions: not a zero
    delta), added without re-exporting; and the workstation model carrying the same task."""
    from edge_eigenlora.lm_data import definition_examples
    from edge_eigenlora.train import TrainConfig, train_causal_lm

    attached = attach_basis(copy.deepcopy(smol["model"]), smol["basis"], rank=SMOL_RANK)
    texts = [p + c for p, c in definition_examples("verb", 64)]
    config = TrainConfig(epochs=1, batch_size=8, lr=2e-2, max_length=32, max_steps=6, progress=False)
    train_causal_lm(attached, smol["tokenizer"], texts[8:], texts[:8], config)
    root = shutil.copytree(smol["bundle"], tmp_path_factory.mktemp("smol_task") / "b")
    bundle.add_task_object(root, task_from_model(attached, "verbs"))
    return {"attached": attached.eval(), "bundle": root}


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_greedy_generation_equals_transformers_token_for_token(smol, smol_task_bundle):
    """48 greedy tokens from 5 prompts: the device's ids equal transformers' `generate` on the workstation
    model with the same trained task, and every step's logits are within 1e-4 relative."""
    rt = LMRuntime(smol_task_bundle["bundle"])
    tokenizer, model = smol["tokenizer"], smol_task_bundle["attached"]
    worst = 0.0
    for prompt in SMOL_PROMPTS:
        stats = {"record_logits": True}
        (gen,) = rt.generate(prompt, task="verbs", max_new_tokens=48, eos=(), chat=False, stats=stats)
        enc = tokenizer([prompt], return_tensors="pt")
        assert enc.input_ids[0].tolist() == rt.encode_prompt(prompt, chat=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=48,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        assert gen.token_ids == out.sequences[0, enc.input_ids.shape[1] :].tolist(), prompt
        ref = torch.stack(out.logits)[:, 0].numpy()
        mine = np.concatenate(stats["step_logits"])
        worst = max(worst, float((np.abs(mine - ref).max(-1) / np.abs(ref).max(-1)).max()))
    print(f"SmolLM2 generation: 5 x 48 tokens identical; worst step logits relative error {worst:.2e}")
    assert worst < 1e-4, worst


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_chat_template_gives_transformers_ids(smol):
    rt = LMRuntime(smol["bundle"], verify=False)
    prompt = "What is a verb?"
    ids = smol["tokenizer"].apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    assert rt.encode_prompt(prompt) == list(ids)


def test_generate_cli_defaults_equal_the_library_defaults():
    from dataclasses import fields

    from edge_eigenlora.runtime.__main__ import build_parser
    from edge_eigenlora.runtime.sampling import GenerationConfig

    args = vars(build_parser().parse_args(["generate", "B", "--task", "t", "--prompt", "p"]))
    flags = {"do_sample": "sample", "stop": None, "eos": None, "chat": None}
    for f in fields(GenerationConfig):
        name = flags.get(f.name, f.name)
        if name is not None:
            assert args[name] == (f.default if f.name != "do_sample" else False), f.name
    assert args["stop"] is None and args["no_chat"] is False
