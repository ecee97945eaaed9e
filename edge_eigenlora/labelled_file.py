"""Read a user's labelled texts from CSV or JSONL, for training a task from one's own data.

Standard library + numpy only (the device runtime uses it too). CSV needs a header with `text` and
`label` columns; JSONL needs one object per line with "text" and "label". Labels may be names or
integers; names are mapped to indices in sorted order unless `label_names` fixes the order.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["LabelledTexts", "read_labelled_file"]


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def split(self, validation_fraction: float, seed: int) -> tuple[LabelledTexts, LabelledTexts]:
        """A seeded, disjoint train/validation split (at least one validation example when possible)."""
        order = np.random.default_rng(seed).permutation(len(self.texts))
        n_val = min(max(1, round(len(order) * validation_fraction)), len(order) - 1) if len(order) > 1 else 0
        pick = lambda idx: LabelledTexts(  # noqa: E731
            [self.texts[i] for i in idx], [self.labels[i] for i in idx], self.label_names
        )
        return pick(order[n_val:]), pick(order[:n_val])


def _rows(path: Path) -> list[tuple[int, object, object]]:
    """(line number, text, label) for every record."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EdgeEigenLoraError(f"{path}:{number}: not valid JSON ({exc.msg}).") from exc
            if not isinstance(record, dict) or "text" not in record or "label" not in record:
                raise EdgeEigenLoraError(
                    f'{path}:{number}: each line must be an object with "text" and "label".'
                )
            rows.append((number, record["text"], record["label"]))
        return rows
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            fields = reader.fieldnames or []
            if "text" not in fields or "label" not in fields:
                raise EdgeEigenLoraError(
                    f"{path}: the header must name columns 'text' and 'label' (found {fields}). Add that header row."
                )
            return [(n + 2, row["text"], row["label"]) for n, row in enumerate(reader)]
    raise EdgeEigenLoraError(f"{path}: unknown file type {path.suffix!r}; use .csv, .tsv or .jsonl.")


def read_labelled_file(path: str | Path, label_names: Sequence[str] | None = None) -> LabelledTexts:
    """Parse and validate the file; every problem names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise EdgeEigenLoraError(f"training file {path} does not exist.")
    if not path.read_bytes().strip():
        raise EdgeEigenLoraError(f"{path} holds no examples; it needs at least two labelled texts.")
    try:
        rows = _rows(path)
    except UnicodeDecodeError as exc:
        raise EdgeEigenLoraError(f"{path}: not UTF-8 text ({exc.reason}). Save it as UTF-8.") from exc
    if not rows:
        raise EdgeEigenLoraError(f"{path} holds no examples; it needs at least two labelled texts.")
    texts, raw_labels = [], []
    for number, text, label in rows:
        if not isinstance(text, str) or not text.strip():
            raise EdgeEigenLoraError(f"{path}:{number}: field 'text' is empty or not a string.")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise EdgeEigenLoraError(f"{path}:{number}: field 'label' is empty.")
        texts.append(text.strip())
        raw_labels.append(str(label).strip())
    names = list(label_names) if label_names is not None else sorted(set(raw_labels), key=_label_sort_key)
    index = {name: i for i, name in enumerate(names)}
    labels = []
    for (number, _, _), label in zip(rows, raw_labels, strict=True):
        if label not in index:
            raise EdgeEigenLoraError(
                f"{path}:{number}: label {label!r} is not one of the task's labels {names}. "
                "Fix the label, or train a new task with these labels."
            )
        labels.append(index[label])
    if len(set(labels)) < 2 and label_names is None:
        raise EdgeEigenLoraError(
            f"{path}: all examples have the same label; a classifier needs at least two."
        )
    return LabelledTexts(texts, labels, names)


def _label_sort_key(label: str) -> tuple[int, int | str]:
    """Integers in numeric order, before names in alphabetical order."""
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)
