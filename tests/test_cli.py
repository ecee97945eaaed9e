"""The CLI end to end on small banks: exit codes, files written, and error messages."""

import json

import pytest

from edge_eigenlora.basis import load_basis
from edge_eigenlora.cli import main
from edge_eigenlora.task import load_task


def test_fit_inspect_compress_to_peft(tmp_path, bank_dir, capsys):
    basis_path = tmp_path / "basis.safetensors"
    assert (
        main(
            ["fit", str(bank_dir), "--out", str(basis_path), "--k", "12", "--plot", str(tmp_path / "ev.png")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "from 3 adapters, 2 modules" in out and "mean explained variance at k: A 1.000, B 1.000" in out
    assert (tmp_path / "ev.png").stat().st_size > 5000
    assert main(["inspect", str(basis_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fingerprint"] == load_basis(basis_path).fingerprint and info["modules"][0]["k"] == 12
    assert (
        main(["compress", str(bank_dir), "--basis", str(basis_path), "--out-dir", str(tmp_path / "tasks")])
        == 0
    )
    report = json.loads((tmp_path / "tasks" / "compression.json").read_text())
    assert max(r["mean_relative_error"] for r in report.values()) < 1e-5  # k = full rank 12: exact
    task = tmp_path / "tasks" / "adapter1.safetensors"
    assert load_task(task).coefficients["l0.q"][0].shape == (12, 4)
    assert (
        main(["to-peft", "--basis", str(basis_path), "--task", str(task), "--out", str(tmp_path / "peft")])
        == 0
    )
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (4, 4, ["l0.q", "l1.q"])


def test_errors_exit_2_with_a_message(tmp_path, bank_dir, capsys):
    assert main(["fit", str(bank_dir), "--out", str(tmp_path / "b.safetensors"), "--k", "13"]) == 2
    assert "k=13 but the stack of 3 adapters supports only 12" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b.safetensors")]) == 2
    assert "adapter folder" in capsys.readouterr().err and not (tmp_path / "b.safetensors").exists()
    assert main(["inspect", str(bank_dir / "adapter0" / "adapter_model.safetensors")]) == 2
    assert "this is not a basis file" in capsys.readouterr().err


@pytest.mark.real_model
def test_train_from_a_csv_file_on_the_real_model(tmp_path, minilm_bank_dirs, capsys):
    basis_path = tmp_path / "basis.safetensors"
    assert main(["fit", *map(str, minilm_bank_dirs), "--out", str(basis_path), "--k", "8"]) == 0
    rows = (
        ["text,label"]
        + [f"I loved it number {i},pos" for i in range(12)]
        + [f"I hated it number {i},neg" for i in range(12)]
    )
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "mine.safetensors"
    args = [
        "train",
        "--basis",
        str(basis_path),
        "--train-file",
        str(tmp_path / "mine.csv"),
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    task = load_task(out, expected_basis=load_basis(basis_path).fingerprint)
    assert task.labels == ["neg", "pos"] and task.head_weight.shape == (2, 384)
    assert task.num_parameters(include_head=False) == 12 * 2 * 8 * 8
    assert "task mine: 1,536 coefficients + 770 head parameters" in capsys.readouterr().out
