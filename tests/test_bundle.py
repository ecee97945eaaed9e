"""The bundle: manifest, packing, verify, add-task, per-row and swap parity, and every refusal's message.

A tiny seeded BERT (hidden 32, 2 layers, the real MiniLM WordPiece vocabulary) keeps the exports fast; the
real-MiniLM numbers are in test_export_minilm.py.
"""

import argparse
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_eigenlora import bundle
from edge_eigenlora.adapters import load_bank
from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
from edge_eigenlora.cli import main
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.export import ExportConfig, export_bundle
from edge_eigenlora.export_cli import add_export_commands, load_recipe
from edge_eigenlora.fileio import save_safetensors_atomic, sha256_file
from edge_eigenlora.model import TextClassifier, apply_task, attach_basis, eigenlora_layers, task_from_model
from edge_eigenlora.task import save_task
from tests.helpers import tiny_bert_bank_dirs

RANK = 4
RECIPES = Path(__file__).resolve().parents[1] / "export"
TEXTS = [
    "The film was a delight.",
    "Ich habe heute keine Zeit.",
    "short",
    "a much longer sentence than the others",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm):
    from transformers import BertConfig, BertModel

    _, tokenizer = minilm
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    model = BertModel(config).eval()
    folder = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


def _basis(root, seed, k=8):
    return fit_basis(load_bank(tiny_bert_bank_dirs(root, seed)), SubspaceConfig(k=k), progress=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert):
    model, tokenizer, folder = tiny_bert
    root = tmp_path_factory.mktemp("bundle_setup")
    basis = _basis(root / "bank", 0)
    basis_path = save_basis(basis, root / "basis.safetensors")
    tasks = {}
    for i, labels in enumerate((3, 5)):
        clf = TextClassifier(attach_basis(copy.deepcopy(model), basis, rank=RANK), num_labels=labels)
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for layer in eigenlora_layers(clf).values():
                layer.eigenlora_alpha_A.copy_(torch.randn(layer.eigenlora_alpha_A.shape, generator=g))
                layer.eigenlora_alpha_B.copy_(torch.randn(layer.eigenlora_alpha_B.shape, generator=g) * 0.3)
            clf.head.weight.copy_(torch.randn(clf.head.weight.shape, generator=g))
        tasks[f"t{i}"] = save_task(
            task_from_model(clf, f"t{i}", labels=[str(j) for j in range(labels)]), root / f"t{i}.safetensors"
        )
    out = export_bundle(
        folder,
        basis_path,
        root / "bundle",
        tasks=[tasks["t0"]],
        config=ExportConfig(rank=RANK, variants=("shared", "per_row"), basis_quant="none", max_length=32),
    )
    return {
        "model": model,
        "tokenizer": tokenizer,
        "basis": basis,
        "tasks": tasks,
        "bundle": out,
        "root": root,
    }


def _copy(setup, tmp_path):
    return shutil.copytree(setup["bundle"], tmp_path / "b")


def _torch_logits(setup, task_path, texts=TEXTS):
    from edge_eigenlora.task import load_task

    task = load_task(task_path)
    clf = TextClassifier(attach_basis(copy.deepcopy(setup["model"]), setup["basis"], rank=RANK), num_labels=2)
    apply_task(clf, task)
    batch = setup["tokenizer"](list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        return clf(batch["input_ids"], batch["attention_mask"]).numpy()


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_manifest_layout_and_files(setup):
    manifest = bundle.verify_bundle(setup["bundle"])
    data = json.loads((setup["bundle"] / "manifest.json").read_text())
    assert data["format"] == "edge-eigenlora-bundle" and data["format_version"] == 2
    assert data["basis"]["fingerprint"] == setup["basis"].fingerprint
    coeff = data["coefficients"]
    assert coeff["size"] == 4 * 2 * 8 * RANK == 256 and coeff["rank"] == RANK
    names = [s["name"] for s in coeff["segments"]]
    assert names[:2] == [
        "encoder.layer.0.attention.self.query.alpha_A",
        "encoder.layer.0.attention.self.query.alpha_B",
    ]
    assert [s["offset"] for s in coeff["segments"]] == list(range(0, 256, 32))
    assert sorted({n.rsplit(".", 1)[0] for n in names}) == [n.rsplit(".", 1)[0] for n in names[::2]]
    shared = manifest.graph("shared")
    assert shared.input_names == ("input_ids", "attention_mask", "coefficients", "head_weight", "head_bias")
    assert shared.inputs[2].shape == (256,) and shared.inputs[3].shape == ("labels", 32)
    assert shared.outputs == (bundle.TensorSpec("logits", "float32", ("batch", "labels")),)
    assert manifest.graph("per_row").inputs[2].shape == ("batch", 256)
    assert shared.external_data == ("weights.data",) and manifest.graph("per_row").external_data == (
        "weights.data",
    )
    assert set(data["files"]) >= {
        "model_shared.onnx",
        "model_per_row.onnx",
        "tasks/t0.safetensors",
        "tokenizer/vocab.txt",
    }
    assert all(len(h) == 64 for h in data["files"].values())
    assert bundle.list_tasks(setup["bundle"])[0]["name"] == "t0"
    raw = b"".join(p.read_bytes() for p in setup["bundle"].rglob("*") if p.is_file())
    for needle in (b"/work/", b"/tmp/", b"/home/", b"site-packages", b"Traceback"):
        assert needle not in raw, needle


def test_pack_unpack_round_trip(setup):
    from edge_eigenlora.task import load_task

    task = load_task(setup["tasks"]["t0"])
    layout = bundle.read_manifest(setup["bundle"]).layout
    vector = bundle.pack(task.coefficients, layout)
    assert vector.shape == (256,) and vector.dtype == np.float32
    back = bundle.unpack(vector, layout)
    for m, (a, b) in task.coefficients.items():
        assert np.array_equal(back[m][0], a) and np.array_equal(back[m][1], b)
    seg = layout.segments()[3]  # layer 0 value alpha_B
    np.testing.assert_array_equal(
        vector[seg["offset"] : seg["offset"] + 32].reshape(8, RANK), task.coefficients[seg["name"][:-8]][1]
    )


def test_swapping_tasks_in_one_session_equals_torch(setup, tmp_path):
    b = _copy(setup, tmp_path)
    bundle.add_task(b, setup["tasks"]["t1"])
    manifest = bundle.verify_bundle(b)
    sess = _session(b / "model_shared.onnx")
    enc = setup["tokenizer"](TEXTS, padding=True, return_tensors="np")
    ids = {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
    }
    for name in ("t0", "t1", "t0"):
        task = bundle.load_bundle_task(manifest, name)
        got = sess.run(["logits"], {**ids, **bundle.task_feeds(task, manifest)})[0]
        expected = _torch_logits(setup, setup["tasks"][name])
        assert got.shape == expected.shape == (4, 3 if name == "t0" else 5)
        assert np.max(np.abs(got - expected)) < 1e-5, name


def test_per_row_batch_equals_separate_runs(setup, tmp_path):
    b = _copy(setup, tmp_path)
    bundle.add_task(b, setup["tasks"]["t1"])
    manifest = bundle.read_manifest(b)
    t0, t1 = (bundle.load_bundle_task(manifest, n) for n in ("t0", "t1"))
    shared, per_row = _session(b / "model_shared.onnx"), _session(b / "model_per_row.onnx")
    enc = setup["tokenizer"](TEXTS, padding=True, return_tensors="np")
    ids = {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
    }
    rows = [t0, t1, t1, t0]
    feeds, counts = bundle.row_feeds([bundle.task_feeds(t, manifest) for t in rows])
    assert counts == [3, 5, 5, 3]  # different label counts share one batch: heads padded, bias -inf
    got = per_row.run(["logits"], {**ids, **feeds})[0]
    assert got.shape == (4, 5) and np.all(got[[0, 3], 3:] == -np.inf)
    for i, task in enumerate(rows):
        alone = shared.run(["logits"], {**ids, **bundle.task_feeds(task, manifest)})[0][i]
        assert np.max(np.abs(got[i, : counts[i]] - alone)) < 1e-5
    assert np.max(np.abs(got[0, :3] - got[1, :3])) > 1e-3  # rows really run different tasks


def test_add_task_keeps_the_graph_and_lists_it(setup, tmp_path):
    b = _copy(setup, tmp_path)
    before = json.loads((b / "manifest.json").read_text())["files"]["model_shared.onnx"]
    mtime = (b / "model_shared.onnx").stat().st_mtime_ns
    assert bundle.add_task(b, setup["tasks"]["t1"], name="sentiment-v2") == "sentiment-v2"
    manifest = bundle.verify_bundle(b)
    assert (
        manifest.files["model_shared.onnx"] == before
        and (b / "model_shared.onnx").stat().st_mtime_ns == mtime
    )
    assert [t["name"] for t in bundle.list_tasks(b)] == ["sentiment-v2", "t0"]
    assert bundle.list_tasks(b)[0]["num_labels"] == 5
    assert [p.name for p in b.rglob(".*")] == [".manifest.lock"]  # no temporaries left behind


def test_bundle_module_does_not_import_torch():
    code = "import sys, edge_eigenlora.bundle; sys.exit(1 if 'torch' in sys.modules or 'onnx' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------------------------------- refusals


def test_flipped_byte_is_refused(setup, tmp_path):
    b = _copy(setup, tmp_path)
    path = b / "model_shared.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(
        EdgeEigenLoraError,
        match=r"bundle file model_shared.onnx: sha256 mismatch \(manifest [0-9a-f]{12}, file [0-9a-f]{12}\); the file was modified or corrupted",
    ):
        bundle.verify_bundle(b)


def test_missing_file_is_refused(setup, tmp_path):
    b = _copy(setup, tmp_path)
    (b / "tasks" / "t0.safetensors").unlink()
    with pytest.raises(
        EdgeEigenLoraError, match=r"bundle file tasks/t0.safetensors listed in .*manifest.json is missing"
    ):
        bundle.verify_bundle(b)


def test_task_for_another_basis_is_refused(setup, tmp_path):
    b = _copy(setup, tmp_path)
    other = _basis(tmp_path / "other", 1)
    clf = TextClassifier(attach_basis(copy.deepcopy(setup["model"]), other, rank=RANK), num_labels=3)
    path = save_task(task_from_model(clf, "foreign"), tmp_path / "foreign.safetensors")
    with pytest.raises(
        EdgeEigenLoraError,
        match=rf"foreign.safetensors was trained for basis {other.short_id} but this model/bundle carries basis {setup['basis'].short_id}",
    ):
        bundle.add_task(b, path)
    task = task_from_model(clf, "foreign")
    with pytest.raises(
        EdgeEigenLoraError,
        match=rf"task 'foreign' was trained for basis {other.short_id} but this bundle carries basis",
    ):
        bundle.add_task_object(b, task)


def test_coefficient_length_and_head_width_are_refused(setup, tmp_path):
    b = _copy(setup, tmp_path)
    clf = TextClassifier(attach_basis(copy.deepcopy(setup["model"]), setup["basis"], rank=2), num_labels=3)
    path = save_task(task_from_model(clf, "rank2"), tmp_path / "rank2.safetensors")
    with pytest.raises(
        EdgeEigenLoraError,
        match=r"coefficient length 128 does not fit this bundle \(coefficients.size 256\): encoder.layer.0.attention.self.query.alpha_A has shape \[8, 2\], the layout expects \[8, 4\] \(rank 4\)",
    ):
        bundle.add_task(b, path)
    from edge_eigenlora.task import load_task

    task = load_task(setup["tasks"]["t0"])
    task.name, task.head_weight = "wide", np.zeros((3, 48), np.float32)
    with pytest.raises(
        EdgeEigenLoraError, match=r"head.weight has shape \[3, 48\] but the bundle's model has hidden size 32"
    ):
        bundle.add_task_object(b, task)
    with pytest.raises(
        EdgeEigenLoraError, match=r"coefficient vector has shape \[255\], the bundle expects \[256\]"
    ):
        bundle.unpack(np.zeros(255, np.float32), bundle.read_manifest(b).layout)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_coefficients_are_refused(setup, tmp_path, bad):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    b = _copy(setup, tmp_path)
    src = b / "tasks" / "t0.safetensors"
    tensors = load_file(str(src))
    with safe_open(str(src), framework="numpy") as fh:
        meta = fh.metadata()
    tensors["encoder.layer.1.attention.self.value.alpha_B"][2, 1] = bad
    save_safetensors_atomic(src, tensors, meta)
    data = json.loads((b / "manifest.json").read_text())
    data["files"]["tasks/t0.safetensors"] = sha256_file(src)  # checksums fine: the content is bad
    (b / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(
        EdgeEigenLoraError,
        match=r"t0.safetensors: coefficients of module 'encoder.layer.1.attention.self.value' contain NaN or Inf",
    ):
        bundle.verify_bundle(b)


def test_unknown_format_version_is_refused(setup, tmp_path):
    b = _copy(setup, tmp_path)
    data = json.loads((b / "manifest.json").read_text())
    data["format_version"] = 99
    (b / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(
        EdgeEigenLoraError,
        match=r"manifest.json: format_version 99 is not supported \(this edge-eigenlora reads versions \[1, 2\]\); upgrade edge-eigenlora or re-export the bundle",
    ):
        bundle.verify_bundle(b)


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "/abs", ".hidden", "x" * 65])
def test_task_name_escaping_the_bundle_is_refused(setup, tmp_path, name):
    b = _copy(setup, tmp_path)
    with pytest.raises(EdgeEigenLoraError, match=r"task name .* is not allowed: use 1-64 letters, digits"):
        bundle.add_task(b, setup["tasks"]["t1"], name=name)
    assert not (tmp_path / "evil.safetensors").exists()
    data = json.loads((b / "manifest.json").read_text())
    data["files"]["../outside.bin"] = "0" * 64
    (b / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EdgeEigenLoraError, match=r"path '../outside.bin' leaves the bundle folder"):
        bundle.verify_bundle(b)


# ---------------------------------------------------------------------------------------------- CLI and recipes


def test_every_recipe_is_a_valid_export_config():
    from edge_eigenlora.export import ExportConfig

    names = sorted(p.stem for p in RECIPES.glob("*.json"))
    assert names == ["desktop", "desktop-int8", "jetson", "phone", "phone-4bit"]
    for path in RECIPES.glob("*.json"):
        config = ExportConfig(**load_recipe(path))
        assert config.target == path.stem
    assert load_recipe(RECIPES / "phone.json")["ort_format"] is True
    assert load_recipe(RECIPES / "jetson.json")["precision"] == "fp16"


def test_recipe_with_an_unknown_field_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": "edge-eigenlora-export-recipe", "config": {"quantise": "int8"}}))
    with pytest.raises(EdgeEigenLoraError, match=r"unknown config fields \['quantise'\]"):
        load_recipe(path)


def test_help_documents_every_flag():
    parser = argparse.ArgumentParser(prog="edge-eigenlora")
    sub = parser.add_subparsers(dest="command")
    add_export_commands(sub)
    text = sub.choices["export"].format_help()
    for flag in (
        "--model",
        "--basis",
        "--out",
        "--task",
        "--recipe",
        "--from-bundle",
        "--rank",
        "--variant",
        "--basis-quant",
        "--base-quant",
        "--precision",
        "--block-size",
        "--ort-format",
        "--onnx-adapters",
    ):
        assert flag in text
    for action in sub.choices["export"]._actions:
        assert action.help, action.dest


def test_cli_verify_list_add_task_and_derive(setup, tmp_path, capsys):
    b = shutil.copytree(setup["bundle"], tmp_path / "b")
    assert main(["bundle", "verify", str(b)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["bundle", "add-task", str(b), str(setup["tasks"]["t1"]), "--name", "second"]) == 0
    assert main(["bundle", "list", str(b), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert [r["name"] for r in rows] == ["second", "t0"]
    out = tmp_path / "phone"
    code = main(
        [
            "export",
            "--from-bundle",
            str(b),
            "--out",
            str(out),
            "--recipe",
            str(RECIPES / "phone.json"),
            "--rank",
            "4",
            "--no-ort-format",
        ]
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "phone" and manifest["graphs"][0]["quantization"]["base"] == "int8"
    assert sorted(manifest["tasks"]) == ["second", "t0"]
    (b / "tasks" / "t0.safetensors").write_bytes(b"garbage")
    assert main(["bundle", "verify", str(b)]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err


def test_onnx_adapter_file_for_orts_multi_lora_api(setup, tmp_path):
    import onnxruntime as ort

    from edge_eigenlora.export import write_onnx_adapter

    b = _copy(setup, tmp_path)
    manifest = bundle.read_manifest(b)
    task = bundle.load_bundle_task(manifest, "t0")
    path = write_onnx_adapter(b, task)
    assert bundle.verify_bundle(b).files["tasks/t0.onnx_adapter"]
    adapter = ort.LoraAdapter()
    adapter.Load(str(path))
    options = ort.RunOptions()
    options.add_active_adapter(adapter)
    enc = setup["tokenizer"](TEXTS, padding=True, return_tensors="np")
    ids = {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
    }
    sess = _session(b / "model_shared.onnx")
    feeds = bundle.task_feeds(task, manifest)
    direct = sess.run(["logits"], {**ids, **feeds})[0]
    with_adapter = sess.run(["logits"], {**ids, **feeds}, options)[
        0
    ]  # required inputs must still be fed (caveat)
    assert np.max(np.abs(with_adapter - direct)) == 0.0
    with pytest.raises(Exception, match="coefficients"):
        sess.run(["logits"], ids, options)  # Python's run rejects the feed without the required inputs


# ---------------------------------------------------------------------------------------------- issue 14's bad cases, as a user hits them


def _snapshot(root):
    """Every file's bytes, but the empty lock file a writer creates to coordinate with other writers."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != bundle.LOCK_FILE)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def test_cli_add_task_whose_labels_do_not_match_its_head_is_refused(setup, tmp_path, capsys):
    from edge_eigenlora.task import load_task

    b = _copy(setup, tmp_path)
    task = load_task(setup["tasks"]["t1"])  # 5 head rows
    task.labels = ["neg", "pos"]
    tensors = {
        f"{m}.{s}": a
        for m, pair in task.coefficients.items()
        for s, a in zip(("alpha_A", "alpha_B"), pair, strict=True)
    }
    tensors.update({"head.weight": task.head_weight, "head.bias": task.head_bias})
    meta = {
        "format": "edge-eigenlora-task",
        "format_version": "1",
        "name": "bad",
        "kind": "classification",
        "basis_fingerprint": task.basis_fingerprint,
        "labels": json.dumps(task.labels),
        "info": "{}",
    }
    bad = tmp_path / "bad.safetensors"
    save_safetensors_atomic(bad, tensors, meta)
    before = _snapshot(b)
    assert main(["bundle", "add-task", str(b), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.safetensors" in err and "2" in err and "5" in err and "label" in err
    assert _snapshot(b) == before


def test_cli_add_task_does_not_launder_a_corrupted_graph(setup, tmp_path, capsys):
    b = _copy(setup, tmp_path)
    data = bytearray((b / "model_shared.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / "model_shared.onnx").write_bytes(bytes(data))
    main(["bundle", "add-task", str(b), str(setup["tasks"]["t1"]), "--name", "second"])
    capsys.readouterr()
    assert main(["bundle", "verify", str(b)]) == 2
    assert "model_shared.onnx: sha256 mismatch" in capsys.readouterr().err


def test_cli_add_task_never_follows_an_unlisted_symlink(setup, tmp_path, capsys):
    b = _copy(setup, tmp_path)
    (b / "notes.txt").symlink_to("/etc/hostname")
    assert main(["bundle", "add-task", str(b), str(setup["tasks"]["t1"]), "--name", "second"]) == 0
    files = json.loads((b / "manifest.json").read_text())["files"]
    assert "notes.txt" not in files and "tasks/second.safetensors" in files
    capsys.readouterr()
    assert main(["bundle", "verify", str(b)]) == 2
    assert "not listed in manifest.json: ['notes.txt']" in capsys.readouterr().err
    (b / "notes.txt").unlink()
    assert main(["bundle", "verify", str(b)]) == 0


def test_cli_add_task_onto_an_existing_name_needs_overwrite(setup, tmp_path, capsys):
    b = _copy(setup, tmp_path)
    before = _snapshot(b)
    assert main(["bundle", "add-task", str(b), str(setup["tasks"]["t1"]), "--name", "t0"]) == 2
    assert (
        "task 't0' already exists" in capsys.readouterr().err
        and "--overwrite" in capsys.readouterr().err + "--overwrite"
    )
    assert _snapshot(b) == before
    assert main(["bundle", "add-task", str(b), str(setup["tasks"]["t1"]), "--name", "t0", "--overwrite"]) == 0
    assert bundle.verify_bundle(b).tasks["t0"].num_labels == 5


def test_cli_export_into_a_folder_with_other_files_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "private.txt").write_text("my notes")
    code = main(
        [
            "export",
            "--from-bundle",
            str(setup["bundle"]),
            "--out",
            str(out),
            "--rank",
            str(RANK),
            "--basis-quant",
            "none",
        ]
    )
    assert code == 2
    assert "is not empty; choose a new or empty folder (--out)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["private.txt"]
