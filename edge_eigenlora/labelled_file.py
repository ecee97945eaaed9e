"""Read a user's labelled texts from CSV or JSONL, for training a task from one's own data.

Standard library + numpy only (the device runtime uses it too). CSV needs a header with `text` and
`label` columns; JSONL needs one object per line with "text" and "label". Labels may be names or
integers; names are mapped to indices in sorted order unless `label_names` fixes the order.

Files are UTF-8, with or without a byte-order mark (Excel writes one). A label that is a whole number is one
class however it is written: `1`, `1.0`, `01`, `+1` and JSON's 1 and 1.0 are all the label "1" (spreadsheets
turn 1 into 1.0). Other labels are names, compared exactly after stripping spaces. Binary files, text that is
not UTF-8, and CSV fields longer than the csv module's limit (131,072 characters) are refused with the line that has the problem.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["LabelledTexts", "canonical_label", "decode_text_file", "read_labelled_file"]
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,30}(?:\.0*)?", re.ASCII)


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def split(self, validation_fraction: float, seed: int) -> tuple[LabelledTexts, LabelledTexts]:
        """A seeded, disjoint train/validation split (at least one validation example when possible)."""
        if not 0 < validation_fraction < 1:
            raise EdgeEigenLoraError(
                f"validation fraction (--validation-fraction) must be above 0 and below 1, got "
                f"{validation_fraction}: the rest of the examples are the training set. 0.15 is typical."
            )
        order = np.random.default_rng(seed).permutation(len(self.texts))
        n_val = min(max(1, round(len(order) * validation_fraction)), len(order) - 1) if len(order) > 1 else 0
        pick = lambda idx: LabelledTexts(  # noqa: E731
            [self.texts[i] for i in idx], [self.labels[i] for i in idx], self.label_names
        )
        return pick(order[n_val:]), pick(order[:n_val])


def _rows(path: Path, data: bytes) -> list[tuple[int, object, object]]:
    """(line number, text, label) for every record."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv", ".tsv"):
        raise EdgeEigenLoraError(f"{path}: unknown file type {path.suffix!r}; use .csv, .tsv or .jsonl.")
    text = decode_text_file(path, data)
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EdgeEigenLoraError(f"{path}:{number}: not valid JSON ({exc.msg}).") from exc
            except (RecursionError, ValueError) as exc:  # nesting too deep, an integer of 4,300+ digits
                raise EdgeEigenLoraError(f"{path}:{number}: not valid JSON ({str(exc)[:100]}).") from None
            if not isinstance(record, dict) or "text" not in record or "label" not in record:
                raise EdgeEigenLoraError(
                    f'{path}:{number}: each line must be an object with "text" and "label".'
                )
            rows.append((number, record["text"], record["label"]))
        return rows
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
    try:
        fields = reader.fieldnames or []
        if "text" not in fields or "label" not in fields:
            raise EdgeEigenLoraError(
                f"{path}: the header must name columns 'text' and 'label' (found {[f[:40] for f in fields][:10]}). "
                "Add that header row."
            )
        rows = []
        for row in reader:
            if row["text"] is None or row["label"] is None:
                raise EdgeEigenLoraError(
                    f"{path}:{reader.line_num}: the row has fewer fields than the header; give text and label."
                )
            rows.append((reader.line_num, row["text"], row["label"]))
        return rows
    except csv.Error as exc:
        line = reader.line_num + 1  # the record that failed starts after the last complete line
        if "field larger than field limit" in str(exc):
            raise EdgeEigenLoraError(
                f"{path}:{line}: a field is longer than {csv.field_size_limit():,} characters. Texts are cut to the "
                "model's max_length tokens anyway: shorten it (or check for an unclosed quote, which makes "
                "the rest of the file one field)."
            ) from None
        raise EdgeEigenLoraError(f"{path}:{line}: not valid CSV ({exc}).") from None


def decode_text_file(path: Path, data: bytes) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); binary files and other encodings are refused."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise EdgeEigenLoraError(
            f"{path}: this is a binary file (a NUL byte at offset {nul}), not UTF-8 text. Give a text file "
            "(.csv/.tsv/.jsonl/.txt saved as UTF-8)."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise EdgeEigenLoraError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}). Save the file "
            "as UTF-8."
        ) from None


def read_labelled_file(path: str | Path, label_names: Sequence[str] | None = None) -> LabelledTexts:
    """Parse and validate the file; every problem names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise EdgeEigenLoraError(f"training file {path} does not exist.")
    data = path.read_bytes()
    if not data.strip() or not data.removeprefix(b"\xef\xbb\xbf").strip():
        raise EdgeEigenLoraError(f"{path} holds no examples; it needs at least two labelled texts.")
    rows = _rows(path, data)
    if not rows:
        raise EdgeEigenLoraError(f"{path} holds no examples; it needs at least two labelled texts.")
    texts, raw_labels = [], []
    for number, text, label in rows:
        if not isinstance(text, str) or not text.strip():
            raise EdgeEigenLoraError(f"{path}:{number}: field 'text' is empty or not a string.")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise EdgeEigenLoraError(f"{path}:{number}: field 'label' is empty.")
        if isinstance(label, float) and (not np.isfinite(label) or label != int(label)):
            raise EdgeEigenLoraError(
                f"{path}:{number}: label {label!r} is not a whole number; give class names or class numbers."
            )
        if not isinstance(label, str | int | float) or isinstance(label, bool):
            raise EdgeEigenLoraError(
                f"{path}:{number}: field 'label' is a {type(label).__name__}; give a class name (string) or "
                "a class number."
            )
        texts.append(text.strip())
        raw_labels.append(canonical_label(label))
    if label_names is not None:
        names = list(label_names)
        index = {canonical_label(name): i for i, name in enumerate(names)}
    else:
        names = sorted(set(raw_labels), key=_label_sort_key)
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


def canonical_label(label: object) -> str:
    """One spelling per class: whole numbers (1, 1.0, "01", "+1") become "1"; names are stripped."""
    if isinstance(label, int | float) and not isinstance(label, bool):
        return str(int(label))
    text = str(label).strip()
    if _WHOLE_NUMBER.fullmatch(text):
        return str(int(text.split(".")[0]))
    return text


def _label_sort_key(label: str) -> tuple[int, int | str]:
    """Integers in numeric order, before names in alphabetical order."""
    return (0, int(label)) if _WHOLE_NUMBER.fullmatch(label) else (1, label)
