"""The device half of `make demo` (edge_eigenlora.demo_device) on a tiny seeded BERT bundle.

One module fixture exports the phone bundle (int8 base + int8 basis, train step; the .ort conversion left out)
and the fp32 reference with the demo's own `export_bundles`; the tests then run the torch-free runner, the switch measurement, device
training and the final table on it. The real MiniLM run is `make demo`.
"""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
from edge_eigenlora.demo_device import (
    FP32_RECIPE,
    PHONE_RECIPE,
    DeviceDemoConfig,
    Labelled,
    device_half,
    export_bundles,
    final_table,
    paired_switch_cost,
    product_figures,
    run_device_runner,
)
from edge_eigenlora.model import TextClassifier, attach_basis, task_from_model
from edge_eigenlora.runtime import DeviceRuntime, RuntimeOptions
from edge_eigenlora.task import save_task
from tests.helpers import keyword_data, tiny_bert, tiny_bert_bank_dirs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, minilm):
    _, tokenizer = minilm
    model = tiny_bert(tokenizer.vocab_size)
    root = tmp_path_factory.mktemp("demo_device")
    basis = fit_basis(load_bank(tiny_bert_bank_dirs(root / "bank")), SubspaceConfig(k=8), progress=False)
    basis_path = save_basis(basis, root / "basis.safetensors")
    tasks = []
    for name, labels, seed in (("held", ["x", "y", "z"], 3), ("other", ["p", "q"], 4)):
        clf = TextClassifier(attach_basis(copy.deepcopy(model), basis, rank=4), num_labels=len(labels))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in clf.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        tasks.append(save_task(task_from_model(clf, name, labels=labels), root / f"{name}.safetensors"))
    # The phone recipe without the .ort conversion (two onnxruntime subprocesses; test_export_* cover it).
    exported = export_bundles(
        "tiny-bert",
        basis_path,
        tasks,
        root,
        rank=4,
        model=model,
        tokenizer=tokenizer,
        phone_recipe={**PHONE_RECIPE, "ort_format": False},
    )
    return {"root": root, "exported": exported, "tasks": tasks}


def test_recipes_match_export_phone_json():
    recipe = json.loads((ROOT / "export" / "phone.json").read_text())["config"]
    assert {k: (tuple(v) if isinstance(v, list) else v) for k, v in recipe.items()} == PHONE_RECIPE
    assert FP32_RECIPE["basis_quant"] == FP32_RECIPE["base_quant"] == "none" and not FP32_RECIPE["ort_format"]


def test_export_bundles_measures_both(bundles):
    ex = bundles["exported"]
    phone = ex["phone"]["files"]
    assert any(f.startswith("model_train_step") for f in phone)
    assert not any(f.startswith("model_train_step") for f in ex["fp32"]["files"])
    assert ex["phone"]["bytes"] == sum(phone.values()) > 0
    graph = ex["inference_graph"]
    assert (
        graph["phone_format"] == ".onnx"
    )  # the fixture leaves out the .ort conversion (slow; tested elsewhere)
    assert 0 < graph["phone_bytes"] < graph["fp32_onnx_bytes"]  # int8 base and basis
    assert ex["train_step_graph_bytes"] > 0
    assert {"tasks/held.safetensors", "tasks/other.safetensors"} <= set(phone)


def test_torch_free_runner_gives_the_in_process_logits(bundles, tmp_path):
    phone = bundles["exported"]["phone"]["path"]
    texts, labels = keyword_data(10, 1)
    spec = {
        "bundle": phone,
        "prefer_ort": True,
        "threads": 1,
        "max_length": 24,
        "eval": [{"task": "held", "texts": texts, "labels": labels}],
        "logits_out": str(tmp_path / "logits.npz"),
    }
    result, proc = run_device_runner(spec, tmp_path)
    assert result["torch_blocked"] is True and result["forbidden_modules_loaded"] == []
    assert result["prefer_ort"] is True and proc.peak_rss_mib > 20
    device = np.load(tmp_path / "logits.npz")["held"]
    rt = DeviceRuntime(phone, options=RuntimeOptions(threads=1, prefer_ort=True), max_length=24)
    local = rt.run(texts, task="held")
    assert device.shape == local.shape == (10, 3)
    np.testing.assert_allclose(device, local, atol=1e-5, rtol=0)
    acc = result["accuracy"]["held"]
    assert acc["n"] == 10 and acc["accuracy"] == pytest.approx(float((local.argmax(-1) == labels).mean()))


def test_paired_switch_cost_pairing_on_a_fake_clock():
    """A run costs 1 ms, plus 0.25 ms when its task differs from the previous run's: the diff recovers it."""
    now = [0.0]
    last = [None]

    def run(task):
        now[0] += 1e-3 + (0.25e-3 if last[0] not in (None, task) else 0.0)
        last[0] = task

    out = paired_switch_cost(run, ("a", "b"), rounds=7, clock=lambda: now[0])
    assert out["pairs"] == 7
    assert out["switch_minus_same_ms"]["p50"] == pytest.approx(0.25)
    assert out["control_minus_same_ms"]["p50"] == pytest.approx(0.0, abs=1e-12)
    assert out["run_after_switch_ms"]["p50"] == pytest.approx(1.25)
    assert out["run_same_task_ms"]["p50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rounds"):
        paired_switch_cost(run, ("a", "b"), rounds=0)


def test_device_half_runs_swaps_trains_and_tabulates(bundles, tmp_path):
    ex = bundles["exported"]
    texts, labels = keyword_data(24, 2)
    train_texts, train_labels = keyword_data(40, 3)
    val_texts, val_labels = keyword_data(12, 4)
    held = Labelled("held", ("x", "y", "z"), (texts, [y % 3 for y in range(24)]))
    other = Labelled("other", ("p", "q"), (texts, labels))
    new = Labelled(
        "kw",
        ("pos", "neg"),
        test=(texts, labels),
        train=(train_texts, train_labels),
        validation=(val_texts, val_labels),
    )
    cfg = DeviceDemoConfig(
        max_length=24,
        threads=1,
        switch_rounds=20,
        new_sessions=2,
        train_max_steps=4,
        train_batch_size=8,
        train_eval_every=2,
        train_lr=0.02,
    )
    device = device_half(
        ex["phone"]["path"],
        ex["fp32"]["path"],
        tmp_path,
        held_out=held,
        second=other,
        new_task=new,
        config=cfg,
    )
    sw = device["phone_run"]["switch"]
    assert sw["pairs"] == 20 and sw["tokens"] > 0
    for key in ("switch_minus_same_ms", "control_minus_same_ms", "run_after_switch_ms", "run_same_task_ms"):
        assert all(math.isfinite(v) for v in sw[key].values())
    assert sw["run_same_task_ms"]["p50"] > 0 and sw["run_after_switch_ms"]["p50"] > 0
    assert device["phone_run"]["new_session"]["repeats"] == 2
    tr = device["new_task"]
    assert 1 <= tr["trainer"]["steps"] <= 4 and tr["trainer"]["task"] == "kw"
    assert tr["peak_rss_mib"] > tr["import_baseline_peak_rss_mib"] > 20
    assert 0.0 <= tr["test_accuracy"] <= 1.0 and tr["majority_class_accuracy"] == pytest.approx(0.5)
    assert (Path(ex["phone"]["path"]) / "tasks" / "kw.safetensors").is_file()

    figures = product_figures(
        ex,
        device,
        held_out="held",
        second="other",
        workstation_accuracy=0.5,
        task_file_bytes=1000,
        peft_adapter_bytes=9000,
        peft_head_bytes=1000,
        second_reference_accuracy=0.75,
    )
    assert figures["task_bytes"]["ratio"] == pytest.approx(0.1)
    assert figures["bundle"]["ratio"] == pytest.approx(ex["phone"]["bytes"] / ex["fp32"]["bytes"])
    acc = figures["accuracy"]
    assert acc["device_int8_ort"] == device["phone_run"]["accuracy"]["held"]["accuracy"]
    assert acc["device_fp32_onnx"] == device["fp32_run"]["accuracy"]["held"]["accuracy"]
    assert figures["switch"]["p50_switch_minus_same_ms"] == sw["switch_minus_same_ms"]["p50"]
    iqr = sw["control_minus_same_ms"]["p75"] - sw["control_minus_same_ms"]["p25"]
    assert iqr >= 0 and figures["switch"]["control_iqr_ms"] == pytest.approx(iqr)
    margin = abs(sw["switch_minus_same_ms"]["p50"] - sw["control_minus_same_ms"]["p50"])
    assert figures["switch"]["resolved"] == (margin > iqr)
    json.dumps(figures)  # summary.json must be able to hold it
    table = final_table(figures)
    assert len(table) == 12 and "peak RSS" in table[10] and "PEFT LoRA r=8" in table[5]
