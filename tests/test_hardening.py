"""Issue 14: every bad input a user can give is refused in words, and nothing on disk changes.

Each test is a case from the issue in the form a user hits it: the CLI (`main(argv)` or a subprocess) or the
public API, with real files in tmp_path; it checks the exit code, the message (file, field, fix) and that the
files already there are byte-for-byte what they were. The bundle-writer cases live with the bundle format.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from edge_eigenlora import fileio
from edge_eigenlora.adapters import read_adapter
from edge_eigenlora.cli import main
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.labelled_file import read_labelled_file
from edge_eigenlora.runtime.__main__ import main as device_main
from tests.helpers import write_peft_adapter
from tests.test_runtime import keyword_data, tiny  # noqa: F401  (the tiny bundle fixture)

ROOT = Path(__file__).resolve().parents[1]
Q, V = "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root (or root itself): sha256 and mode. Equal snapshots = nothing changed."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())
    return {
        str(p.relative_to(root.parent)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else f"-> {os.readlink(p)}",
            p.lstat().st_mode,
        )
        for p in paths
    }


def run_cli(capsys, argv, device=False):
    code = (device_main if device else main)([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _modules(rng, r=4, d=16):
    return {n: (rng.standard_normal((r, d)), rng.standard_normal((d, r))) for n in (Q, V)}


def _bank(root: Path, n=3, **config) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_peft_adapter(root / f"adapter{i}", _modules(rng), r=4, alpha=8, extra_config=config or None)
    return root


# -- adapters -----------------------------------------------------------------------------------------------
def test_bfloat16_and_float16_adapters_are_read_as_float32_without_torch(tmp_path):
    import torch
    from safetensors.torch import save_file as save_torch

    rng = np.random.default_rng(1)
    mods = _modules(rng)
    expected = {}
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        folder = write_peft_adapter(tmp_path / name, mods, r=4, alpha=8)
        tensors = {}
        for m, (A, B) in mods.items():
            a = torch.tensor(A, dtype=torch.float32).to(dtype)
            b = torch.tensor(B, dtype=torch.float32).to(dtype)
            tensors[f"base_model.model.{m}.lora_A.weight"], tensors[f"base_model.model.{m}.lora_B.weight"] = (
                a,
                b,
            )
            expected[name, m] = (
                a.float().numpy(),
                b.float().numpy() * np.float32(2.0),
            )  # scale 8/4 folded in B
        save_torch(tensors, str(folder / "adapter_model.safetensors"))
        adapter = read_adapter(folder)
        for m in (Q, V):
            assert adapter.modules[m].A.dtype == np.float32
            assert np.array_equal(adapter.modules[m].A, expected[name, m][0])
            assert np.array_equal(adapter.modules[m].B, expected[name, m][1])
    # the bf16 path needs numpy only: read it in a process where torch cannot be imported
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from edge_eigenlora.adapters import read_adapter\n"
        f"a = read_adapter({str(tmp_path / 'bf16')!r})\n"
        f"print(float(a.modules[{Q!r}].A.sum()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == pytest.approx(float(expected["bf16", Q][0].sum()), rel=1e-6)


def test_int8_lora_factors_are_refused_naming_the_tensor(tmp_path, capsys):
    folder = write_peft_adapter(tmp_path / "bank" / "q8", _modules(np.random.default_rng(2)), r=4, alpha=8)
    tensors = {
        f"base_model.model.{m}.lora_{s}.weight": np.clip(x * 40, -127, 127).astype(np.int8)
        for m, pair in _modules(np.random.default_rng(2)).items()
        for s, x in zip("AB", pair, strict=True)
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    before = snapshot(tmp_path)
    code, _, err = run_cli(
        capsys, ["fit", tmp_path / "bank", "--out", tmp_path / "basis.safetensors", "--k", "4"]
    )
    assert code == 2
    assert f"{folder / 'adapter_model.safetensors'}: tensor 'base_model.model.{Q}.lora_A.weight' is I8" in err
    assert "de-quantize the adapter to float16/bfloat16/float32 and save it again" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"lora_alpha": float("nan")},
            r"field 'lora_alpha' must be a positive, finite number \(LoRA's alpha\), found nan",
        ),
        (
            {"lora_alpha": float("inf")},
            r"field 'lora_alpha' must be a positive, finite number \(LoRA's alpha\), found inf",
        ),
        ({"lora_alpha": float("-inf")}, r"field 'lora_alpha' must be a positive, finite number .*found -inf"),
        (
            {"alpha_pattern": {"value": "abc"}},
            r"field alpha_pattern\['value'\] must be a positive, finite number .*found 'abc'",
        ),
        (
            {"alpha_pattern": {"value": -2}},
            r"field alpha_pattern\['value'\] must be a positive, finite number .*found -2",
        ),
        ({"r": 8.5}, r"field 'r' must be a positive whole number \(the LoRA rank\), found 8.5"),
        (
            {"rank_pattern": {"query": 0}},
            r"field rank_pattern\['query'\] must be a positive whole number .*found 0",
        ),
        (
            {"use_rslora": "false"},
            r"field 'use_rslora' must be true or false \(a JSON boolean\), found 'false'",
        ),
        ({"use_dora": "no"}, r"field 'use_dora' must be true or false"),
        (
            {"alpha_pattern": {"(value": 4}},
            r"field alpha_pattern has the key '\(value', which is not a valid module pattern",
        ),
        ({"base_model_name_or_path": 7}, r"field 'base_model_name_or_path' must be a string"),
    ],
)
def test_bad_adapter_config_fields_are_refused_with_file_field_and_fix(tmp_path, capsys, config, message):
    import re

    bank = _bank(tmp_path / "bank", n=2)
    config_path = bank / "adapter1" / "adapter_config.json"
    written = json.loads(config_path.read_text())
    written.update(config)
    config_path.write_text(json.dumps(written))  # NaN / Infinity as Python's json writes them
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, ["fit", bank, "--out", tmp_path / "basis.safetensors", "--k", "4"])
    assert code == 2 and "Traceback" not in err
    assert (
        err.strip().splitlines()[-1].startswith(f"edge-eigenlora fit: error: {config_path}: ")
    )  # after progress
    assert re.search(message, err), err
    assert re.search(r"Set it to|Write use_|Use the module's name|use plain LoRA|must be a string", err)
    assert snapshot(tmp_path) == before


def test_rslora_false_is_not_scaled_as_rslora(tmp_path):
    """The string "false" used to count as true; a real false must give lora_alpha / r."""
    mods = _modules(np.random.default_rng(3))
    folder = write_peft_adapter(tmp_path / "a", mods, r=4, alpha=8, extra_config={"use_rslora": False})
    np.testing.assert_allclose(
        read_adapter(folder).modules[Q].delta(), 2.0 * mods[Q][1] @ mods[Q][0], rtol=1e-5
    )


def test_huge_finite_adapter_values_are_refused(tmp_path, capsys):
    mods = _modules(np.random.default_rng(4))
    mods[V][1][2, 1] = 3e30
    folder = write_peft_adapter(tmp_path / "bank" / "big", mods, r=4, alpha=8)
    write_peft_adapter(tmp_path / "bank" / "ok", _modules(np.random.default_rng(5)), r=4, alpha=8)
    before = snapshot(tmp_path)
    code, _, err = run_cli(
        capsys, ["fit", tmp_path / "bank", "--out", tmp_path / "basis.safetensors", "--k", "4"]
    )
    assert code == 2
    assert (
        f"{folder / 'adapter_model.safetensors'}: tensor 'base_model.model.{V}.lora_B.weight' (module '{V}' "
        "lora_B) holds values as large as 3e+30; LoRA factors are of order 1" in err
    )
    assert "re-train it or leave it out of the bank" in err and snapshot(tmp_path) == before


# -- workstation CLI ----------------------------------------------------------------------------------------


def test_fit_refuses_k_together_with_variance_threshold(tmp_path, bank_dir, capsys):
    code, _, err = run_cli(
        capsys,
        ["fit", bank_dir, "--out", tmp_path / "b.safetensors", "--k", "4", "--variance-threshold", "0.9"],
    )
    assert code == 2
    assert "--k and --variance-threshold both choose the number of directions; give only one of them." in err
    assert not (tmp_path / "b.safetensors").exists()
    assert (
        run_cli(
            capsys, ["fit", bank_dir, "--out", tmp_path / "b.safetensors", "--variance-threshold", "0.9"]
        )[0]
        == 0
    )


def test_fit_does_not_overwrite_a_basis_without_overwrite(tmp_path, bank_dir, capsys):
    from edge_eigenlora.basis import load_basis

    out = tmp_path / "basis.safetensors"
    assert run_cli(capsys, ["fit", bank_dir, "--out", out, "--k", "12"])[0] == 0
    before = snapshot(out)
    code, _, err = run_cli(capsys, ["fit", bank_dir, "--out", out, "--k", "4"])
    assert code == 2
    assert f"basis file {out} already exists; choose another path or pass --overwrite to replace it." in err
    assert snapshot(out) == before
    assert run_cli(capsys, ["fit", bank_dir, "--out", out, "--k", "4", "--overwrite"])[0] == 0
    assert load_basis(out).config.k == 4


def _task_files(tmp_path, bank_dir, capsys):
    basis = tmp_path / "basis.safetensors"
    assert run_cli(capsys, ["fit", bank_dir, "--out", basis, "--k", "12"])[0] == 0
    assert run_cli(capsys, ["compress", bank_dir, "--basis", basis, "--out-dir", tmp_path / "tasks"])[0] == 0
    return basis, tmp_path / "tasks"


def test_to_peft_refuses_an_existing_adapter_and_overwrite_replaces_it_whole(tmp_path, bank_dir, capsys):
    basis, tasks = _task_files(tmp_path, bank_dir, capsys)
    peft = tmp_path / "peft"
    assert (
        run_cli(
            capsys, ["to-peft", "--basis", basis, "--task", tasks / "adapter1.safetensors", "--out", peft]
        )[0]
        == 0
    )
    # an adapter with a head and a model card, as an older export or PEFT would leave it
    shutil.copy(tasks / "adapter0.safetensors", peft / "classifier_head.safetensors")
    (peft / "README.md").write_text("old card\n")
    before = snapshot(peft)
    argv = ["to-peft", "--basis", basis, "--task", tasks / "adapter2.safetensors", "--out", peft]
    code, _, err = run_cli(capsys, argv)
    assert code == 2
    assert f"{peft} already holds a PEFT adapter; choose a new folder or pass --overwrite" in err
    assert snapshot(peft) == before
    assert run_cli(capsys, argv + ["--overwrite"])[0] == 0
    assert sorted(p.name for p in peft.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    fresh = tmp_path / "fresh"
    assert (
        run_cli(
            capsys, ["to-peft", "--basis", basis, "--task", tasks / "adapter2.safetensors", "--out", fresh]
        )[0]
        == 0
    )
    assert (peft / "adapter_model.safetensors").read_bytes() == (
        fresh / "adapter_model.safetensors"
    ).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bank",
        "basis.safetensors",
        "fresh",
        "peft",
        "tasks",
    ]
    # a folder with the user's own files is never replaced, even with --overwrite
    (peft / "notes.txt").write_text("mine\n")
    before = snapshot(peft)
    code, _, err = run_cli(capsys, argv + ["--overwrite"])
    assert code == 2 and "already holds files that are not a PEFT adapter's (notes.txt)" in err
    assert snapshot(peft) == before


def test_compress_and_train_do_not_overwrite_task_files(tmp_path, bank_dir, capsys):
    basis, tasks = _task_files(tmp_path, bank_dir, capsys)
    before = snapshot(tasks)
    code, _, err = run_cli(capsys, ["compress", bank_dir, "--basis", basis, "--out-dir", tasks])
    assert code == 2 and f"output file {tasks / 'adapter0.safetensors'} already exists" in err
    assert snapshot(tasks) == before
    assert (
        run_cli(capsys, ["compress", bank_dir, "--basis", basis, "--out-dir", tasks, "--overwrite"])[0] == 0
    )


def _csv(path: Path, n=12) -> Path:
    path.write_text("text,label\n" + "".join(f"example number {i},{i % 2}\n" for i in range(n)))
    return path


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--max-steps", "0"],
            "TrainConfig.max_steps must be >= 1 (or None for no limit), got 0 (--max-steps)",
        ),
        (
            ["--validation-fraction", "1"],
            "validation fraction (--validation-fraction) must be above 0 and below 1, got 1.0",
        ),
        (
            ["--validation-fraction", "0"],
            "validation fraction (--validation-fraction) must be above 0 and below 1, got 0.0",
        ),
        (["--rank", "13"], "rank 13 (--rank) must be between 1 and the basis' number of directions K+P = 12"),
        (["--lr", "0"], "learning rates must be > 0"),
    ],
)
def test_workstation_train_refuses_settings_that_cannot_train(tmp_path, bank_dir, capsys, flags, message):
    basis = tmp_path / "basis.safetensors"
    assert run_cli(capsys, ["fit", bank_dir, "--out", basis, "--k", "12"])[0] == 0
    data = _csv(tmp_path / "data.csv")
    before = snapshot(tmp_path)
    code, _, err = run_cli(
        capsys, ["train", "--basis", basis, "--train-file", data, "--out", tmp_path / "t.safetensors", *flags]
    )
    assert code == 2 and message in err, err
    assert snapshot(tmp_path) == before


def test_workstation_train_does_not_overwrite_a_task_file(tmp_path, bank_dir, capsys):
    basis = tmp_path / "basis.safetensors"
    assert run_cli(capsys, ["fit", bank_dir, "--out", basis, "--k", "12"])[0] == 0
    (tmp_path / "t.safetensors").write_bytes(b"an earlier task")
    data = _csv(tmp_path / "d.csv")
    before = snapshot(tmp_path)
    argv = ["train", "--basis", basis, "--train-file", data, "--out", tmp_path / "t.safetensors"]
    code, _, err = run_cli(capsys, argv)
    assert code == 2
    assert (
        f"task file {tmp_path / 't.safetensors'} already exists; choose another path or pass --overwrite"
        in err
    )
    assert snapshot(tmp_path) == before


# -- labelled files ---------------------------------------------------------------------------------------
def test_labels_1_and_1_0_are_one_class(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\na,1\nb,1.0\nc,0\nd,0.0\ne,01\nf,+1\n")
    got = read_labelled_file(csv)
    assert got.label_names == ["0", "1"] and got.labels == [1, 1, 0, 0, 1, 1]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1.0}\n{"text": "c", "label": "0"}\n')
    got = read_labelled_file(jsonl)
    assert got.label_names == ["0", "1"] and got.labels == [1, 1, 0]
    assert read_labelled_file(csv, label_names=["0", "1"]).labels == [1, 1, 0, 0, 1, 1]
    jsonl.write_text('{"text": "a", "label": 1.5}\n{"text": "b", "label": 0}\n')
    with pytest.raises(EdgeEigenLoraError, match=r"d.jsonl:1: label 1.5 is not a whole number"):
        read_labelled_file(jsonl)


def test_csv_with_a_utf8_bom_is_read(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,label\ncafé,pos\nbad,neg\n".encode())
    got = read_labelled_file(path)
    assert got.texts == ["café", "bad"] and got.label_names == ["neg", "pos"]


def test_huge_csv_field_binary_and_non_utf8_files_are_refused(tmp_path, bank_dir, capsys):
    basis = tmp_path / "basis.safetensors"
    assert run_cli(capsys, ["fit", bank_dir, "--out", basis, "--k", "12"])[0] == 0
    big = tmp_path / "big.csv"
    big.write_text("text,label\nshort,0\n" + "x" * 5_000_000 + ",1\nok,1\n")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"text,label\n\x00\x01\x02,1\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\nok,0\ncafé,1\n".encode("latin-1"))
    cases = [
        (big, f"{big}:3: a field is longer than 131,072 characters. Texts are cut to the model's max_length"),
        (binary, f"{binary}: this is a binary file (a NUL byte at offset 11), not UTF-8 text."),
        (latin, f"{latin}:3: not UTF-8 text (byte 0xe9 at offset 19). Save the file as UTF-8."),
    ]
    for path, message in cases:
        before = snapshot(tmp_path)
        code, _, err = run_cli(
            capsys, ["train", "--basis", basis, "--train-file", path, "--out", tmp_path / "t.st"]
        )
        assert code == 2 and message in err and "Traceback" not in err, err
        assert snapshot(tmp_path) == before


# -- OS errors: permission denied, disk full ------------------------------------------------------------------
def test_disk_full_is_a_message_and_the_old_file_stays(tmp_path, bank_dir, capsys, monkeypatch):
    out = tmp_path / "basis.safetensors"
    assert run_cli(capsys, ["fit", bank_dir, "--out", out, "--k", "12"])[0] == 0
    before = snapshot(tmp_path)
    real_save = fileio.save_file

    def full_disk(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(
            Path(filename).read_bytes()[:100]
        )  # what got written before the disk filled
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(fileio, "save_file", full_disk)
    code, _, err = run_cli(capsys, ["fit", bank_dir, "--out", out, "--k", "4", "--overwrite"])
    assert code == 2 and "Traceback" not in err
    assert "No space left on device; the disk is full: free some space or write elsewhere" in err
    assert snapshot(tmp_path) == before  # the old basis intact, no temporary file left behind


def test_permission_denied_is_a_message(tmp_path, bank_dir, capsys, monkeypatch):
    out = tmp_path / "basis.safetensors"

    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(fileio.os, "replace", denied)
    code, _, err = run_cli(capsys, ["fit", bank_dir, "--out", out, "--k", "12"])
    monkeypatch.undo()
    assert code == 2
    assert err.strip().splitlines()[-1] == (  # (the lines before are the fit's progress bar)
        f"edge-eigenlora fit: error: {out}: Permission denied; check the permissions of the file and its "
        "folder, or choose another path."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_permission_denied_on_a_read_only_folder(tmp_path, bank_dir, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run_cli(capsys, ["fit", bank_dir, "--out", locked / "basis.safetensors", "--k", "12"])
    assert code == 2 and "Permission denied; check the permissions" in err


def test_an_output_path_through_a_file_is_a_message(tmp_path, bank_dir, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli(
        capsys, ["fit", bank_dir, "--out", tmp_path / "afile" / "basis.safetensors", "--k", "12"]
    )
    assert (
        code == 2
        and err.strip().splitlines()[-1].startswith(f"edge-eigenlora fit: error: {tmp_path / 'afile'}: ")
        and "Traceback" not in err
    )


# -- file modes ---------------------------------------------------------------------------------------------
def test_outputs_respect_the_umask(tmp_path, bank_dir, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "basis.safetensors"
        assert run_cli(capsys, ["fit", bank_dir, "--out", out, "--k", "12"])[0] == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        basis, tasks = out, tmp_path / "tasks"
        assert run_cli(capsys, ["compress", bank_dir, "--basis", basis, "--out-dir", tasks])[0] == 0
        assert {stat.S_IMODE(p.stat().st_mode) for p in tasks.iterdir()} == {0o644}
        peft = tmp_path / "peft"
        assert (
            run_cli(
                capsys, ["to-peft", "--basis", basis, "--task", tasks / "adapter0.safetensors", "--out", peft]
            )[0]
            == 0
        )
        assert stat.S_IMODE(peft.stat().st_mode) == 0o755
        assert {stat.S_IMODE(p.stat().st_mode) for p in peft.iterdir()} == {0o644}
        os.umask(0o077)
        assert run_cli(capsys, ["fit", bank_dir, "--out", out, "--k", "4", "--overwrite"])[0] == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        os.umask(old)


# -- the device CLI -----------------------------------------------------------------------------------------
@pytest.fixture
def device_bundle(tiny, tmp_path):  # noqa: F811
    bundle = shutil.copytree(tiny["bundle"], tmp_path / "b")
    texts, labels = keyword_data(24, seed=1)
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts, labels, strict=True)))
    return bundle, data


@pytest.mark.parametrize(
    "inside", ["manifest.json", "tasks/t0.safetensors", "model_shared.onnx", ".checkpoints"]
)
def test_device_train_refuses_a_checkpoint_over_a_bundle_file(device_bundle, capsys, inside):
    bundle, data = device_bundle
    before = snapshot(bundle)
    target = bundle / inside
    code, _, err = run_cli(
        capsys,
        ["train", bundle, "--name", "new", "--train-file", data, "--checkpoint", target, "--no-resume"],
        True,
    )
    assert code == 2
    assert f"--checkpoint {target} is inside the bundle {bundle} but not in its .checkpoints/ folder" in err
    assert snapshot(bundle) == before


def test_device_train_refuses_a_symlinked_or_foreign_checkpoint(device_bundle, tmp_path, capsys):
    bundle, data = device_bundle
    link = tmp_path / "ckpt.safetensors"
    link.symlink_to(bundle / "manifest.json")
    foreign = tmp_path / "mine.safetensors"
    shutil.copy(bundle / "tasks" / "t0.safetensors", foreign)
    before = snapshot(tmp_path)
    for path, message in (
        (link, "is inside the bundle"),
        (
            foreign,
            f"--checkpoint {foreign} exists and is not a device training checkpoint (format 'edge-eigenlora-task')",
        ),
    ):
        argv = ["train", bundle, "--name", "new", "--train-file", data, "--checkpoint", path, "--no-resume"]
        code, _, err = run_cli(capsys, argv, True)
        assert code == 2 and message in err, err
    assert snapshot(tmp_path) == before


def _checkpoint(bundle: Path, data: Path, lr: float = 5e-3) -> Path:
    """A checkpoint as the CLI's defaults would leave it after one step (the library's defaults, 15% validation)."""
    from edge_eigenlora.runtime import DeviceRuntime
    from edge_eigenlora.runtime.trainer import DeviceTrainConfig, GradientTrainer

    examples = read_labelled_file(data)
    path = bundle / ".checkpoints" / "new.safetensors"
    config = DeviceTrainConfig(lr=lr, max_steps=1, checkpoint_every=1)
    GradientTrainer(
        DeviceRuntime(bundle),
        "new",
        (examples.texts, examples.labels),
        examples.label_names,
        config=config,
        checkpoint=path,
        log=lambda m: None,
    ).fit()
    assert path.is_file()
    return path


def test_truncated_checkpoint_gets_a_precise_message(device_bundle, capsys):
    bundle, data = device_bundle
    path = _checkpoint(bundle, data)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - 40])
    before = snapshot(bundle)
    code, _, err = run_cli(capsys, ["train", bundle, "--name", "new", "--train-file", data], True)
    assert code == 2
    assert f"checkpoint {path} is not a valid safetensors file: it is truncated: its header describes" in err
    assert "but the file holds" in err and "Delete it, or pass --no-resume to start over." in err
    assert "re-download" not in err
    assert snapshot(bundle) == before


def test_resuming_after_the_learning_rate_changed_is_refused(device_bundle, tmp_path, capsys):
    bundle, data = device_bundle
    _checkpoint(bundle, data, lr=5e-3)
    before = snapshot(bundle)
    code, _, err = run_cli(
        capsys, ["train", bundle, "--name", "new", "--train-file", data, "--lr", "0.01"], True
    )
    assert code == 2
    assert "the checkpoint was trained with lr=0.005; this run asks for lr=0.01." in err
    assert "resume with the old value (--lr / --head-lr), or pass --no-resume" in err
    assert snapshot(bundle) == before
    argv = [
        "train",
        bundle,
        "--name",
        "new",
        "--train-file",
        data,
        "--max-steps",
        "2",
        "--no-add",
        "--out",
        tmp_path / "new.safetensors",
    ]
    code, out, _ = run_cli(capsys, argv, True)
    assert code == 0 and json.loads(out)["resumed_from"] == 1


def test_device_run_refuses_bad_max_length_and_empty_or_binary_texts(device_bundle, tmp_path, capsys):
    bundle, _ = device_bundle
    run = ["run", bundle, "--task", "t0"]
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"hello\x00\x01\x02")
    latin = tmp_path / "l.txt"
    latin.write_bytes("ok\ncafé\n".encode("latin-1"))
    cases = [
        (
            ["--text", "hi", "--max-length", "0"],
            "--max-length must be between 2 (the [CLS] and [SEP] tokens) and 8192, got 0",
        ),
        (
            ["--text", "hi", "--max-length", "100"],
            "--max-length 100 is more than this bundle's model accepts: its graph fails on 100 positions",
        ),
        (["--text", "hi", "--text", "  "], "--text number 2 is empty; give the text to classify."),
        (["--file", binary], f"{binary}: this is a binary file (a NUL byte at offset 5), not UTF-8 text."),
        (["--file", latin], f"{latin}:2: not UTF-8 text (byte 0xe9 at offset 6). Save the file as UTF-8."),
    ]
    for flags, message in cases:
        code, out, err = run_cli(capsys, run + flags, True)
        assert code == 2 and message in err and out == "", (flags, err)
    code, out, _ = run_cli(
        capsys, run + ["--text", "hi", "--max-length", "40"], True
    )  # the model has 64 positions
    assert code == 0 and out.split("\t")[0] in ("x", "y", "z")


def test_device_run_reads_a_csv_with_a_bom(device_bundle, tmp_path, capsys):
    bundle, _ = device_bundle
    path = tmp_path / "texts.csv"
    path.write_bytes("\ufefftext\ngood film\nbad food\n".encode())
    code, out, _ = run_cli(capsys, ["run", bundle, "--task", "t0", "--file", path, "--json"], True)
    assert code == 0 and [json.loads(line)["text"] for line in out.splitlines()] == ["good film", "bad food"]


def test_device_json_output_has_no_infinity(device_bundle, tmp_path, capsys):
    bundle, data = device_bundle
    argv = [
        "train",
        bundle,
        "--name",
        "j",
        "--train-file",
        data,
        "--validation-fraction",
        "0",
        "--max-steps",
        "2",
        "--no-add",
        "--out",
        tmp_path / "j.safetensors",
    ]
    code, out, _ = run_cli(capsys, argv, True)
    assert code == 0 and "Infinity" not in out and "NaN" not in out

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    summary = json.loads(out, parse_constant=refuse)
    assert summary["val_accuracy"] is None and summary["steps"] == 2


@pytest.mark.parametrize("method", ["grad", "zo"])
def test_device_train_refuses_max_steps_0(device_bundle, capsys, method):
    bundle, data = device_bundle
    before = snapshot(bundle)
    argv = ["train", bundle, "--name", "n", "--train-file", data, "--max-steps", "0", "--method", method]
    code, _, err = run_cli(capsys, argv, True)
    assert code == 2 and "--max-steps must be at least 1, got 0: with 0 nothing would be trained." in err
    assert snapshot(bundle) == before


def test_device_train_does_not_overwrite_a_task_or_a_file(device_bundle, tmp_path, capsys):
    bundle, data = device_bundle
    (tmp_path / "kept.safetensors").write_bytes(b"mine")
    before = snapshot(tmp_path)
    for argv, message in (
        (
            ["--name", "t0"],
            f"task 't0' already exists in {bundle}; choose another --name or pass --overwrite.",
        ),
        (
            ["--name", "n", "--out", tmp_path / "kept.safetensors"],
            f"task file {tmp_path / 'kept.safetensors'} already exists; choose another --out or pass --overwrite",
        ),
    ):
        code, _, err = run_cli(capsys, ["train", bundle, "--train-file", data, *argv], True)
        assert code == 2 and message in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        (
            "edge_eigenlora.runtime",
            ["run", "{bundle}", "--task", "t0", "--text", ""],
            "error: --text number 1 is empty",
        ),
        (
            "edge_eigenlora.runtime",
            ["run", "{bundle}", "--task", "t0", "--file", "{bundle}"],
            "error: text file",
        ),
        (
            "edge_eigenlora.cli",
            ["inspect", "{bundle}/tasks/t0.safetensors"],
            "edge-eigenlora inspect: error: ",
        ),
    ],
)
def test_entry_points_print_one_error_line_and_exit_2(device_bundle, module, argv, message):
    bundle, _ = device_bundle
    done = subprocess.run(
        [sys.executable, "-m", module, *[a.format(bundle=bundle) for a in argv]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message in done.stderr and done.stdout == ""


def test_device_run_prints_control_characters_escaped(device_bundle, capsys):
    from edge_eigenlora.runtime import DeviceRuntime
    from edge_eigenlora.runtime.trainer import init_params, make_task

    bundle, _ = device_bundle
    rt = DeviceRuntime(bundle)
    rt.add_task(make_task(rt, "esc", init_params(rt, 2, seed=0), ["\x1b[2Jwiped", "\rplain"], {}))
    code, out, _ = run_cli(capsys, ["run", bundle, "--task", "esc", "--text", "red \x1b[31malert"], True)
    assert code == 0 and "\x1b" not in out and "\r" not in out
    assert out.split("\t")[0] in ("\\x1b[2Jwiped", "\\rplain") and out.rstrip("\n").endswith(
        "red \\x1b[31malert"
    )
    code, out, _ = run_cli(capsys, ["tasks", bundle], True)
    assert code == 0 and "\\x1b[2Jwiped, \\rplain" in out and "\x1b" not in out
