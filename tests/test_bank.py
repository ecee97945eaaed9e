"""Bank builder on a tiny scale with the real all-MiniLM-L6-v2: PEFT folders, resume, rebuild of leftovers."""

import json

import pytest

from edge_eigenlora.adapters import CONFIG_NAME, load_bank
from edge_eigenlora.bank import RECORD_NAME, LoraSpec, build_bank, task_seed
from edge_eigenlora.datasets import Split, TaskData, TaskSpec
from edge_eigenlora.train import TrainConfig

pytestmark = pytest.mark.real_model

TEXTS = {
    "tiny_sentiment": (
        ["a lovely warm film", "truly great acting", "dull and far too long", "an awful mess"],
        [1, 1, 0, 0],
    ),
    "tiny_language": (
        ["the cat sleeps here", "we walk to town", "der Hund schläft hier", "wir gehen in die Stadt"],
        [0, 0, 1, 1],
    ),
}
SPEC = LoraSpec(r=2, alpha=4)
CONFIG = TrainConfig(
    epochs=1, batch_size=4, max_length=12, max_steps=1, eval_every=1, patience=1, progress=False
)


def _load(calls):
    def load(name, seed=0):
        calls.append(name)
        texts, labels = TEXTS[name]
        split = Split(tuple(texts), tuple(labels))
        spec = TaskSpec(name, "tiny", "test", "n/a", "a tiny task for the bank builder test")
        return TaskData(spec, ("a", "b"), split, split, split, {"a": 2, "b": 2})

    return load


def test_build_bank_writes_peft_folders_resumes_and_rebuilds_half_written_ones(tmp_path, minilm):
    names = list(TEXTS)
    calls: list[str] = []
    folders = build_bank(
        "sentence-transformers/all-MiniLM-L6-v2", names, tmp_path, spec=SPEC, config=CONFIG, load=_load(calls)
    )
    assert calls == names and [f.name for f in folders] == names
    for folder in folders:
        record = json.loads((folder / RECORD_NAME).read_text())
        assert record["seed"] == task_seed(folder.name) and record["steps"] == 1
        assert (folder / CONFIG_NAME).is_file() and (folder / "classifier_head.safetensors").is_file()
    bank = load_bank(folders)
    assert bank.base_model == "sentence-transformers/all-MiniLM-L6-v2" and len(bank.module_shapes) == 12
    assert task_seed(names[0]) != task_seed(names[1])

    # Resume: finished adapters are skipped (their data is not even loaded) and left untouched.
    stamp = (folders[0] / RECORD_NAME).stat().st_mtime_ns
    calls.clear()
    build_bank(
        "sentence-transformers/all-MiniLM-L6-v2", names, tmp_path, spec=SPEC, config=CONFIG, load=_load(calls)
    )
    assert calls == [] and (folders[0] / RECORD_NAME).stat().st_mtime_ns == stamp

    # A half-written folder (weights but no record, as after a crash) is rebuilt from scratch.
    (folders[1] / RECORD_NAME).unlink()
    (folders[1] / "stray.tmp").write_text("left over")
    build_bank(
        "sentence-transformers/all-MiniLM-L6-v2", names, tmp_path, spec=SPEC, config=CONFIG, load=_load(calls)
    )
    assert calls == [names[1]]
    assert (folders[1] / RECORD_NAME).is_file() and not (folders[1] / "stray.tmp").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind
