"""Real text-generation examples for the decoder-LM demo, from packages on the machine (no network).

WordNet 3.0 (Debian wordnet-base; never data.noun) gives definition-writing tasks by part of speech:
prompt `Define the verb "run":`, completion the synset's gloss. Fortunes (Debian fortunes) give free text.
Each example is a (prompt, completion) pair; a free text has an empty prompt.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from edge_eigenlora.datasets import FORTUNES_DIR, WORDNET_DIR, read_fortune_file
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import atomic_path

__all__ = [
    "Example",
    "definition_examples",
    "fortune_examples",
    "write_examples_jsonl",
]

Example = tuple[str, str]  # (prompt, completion)

_POS = {"verb": "data.verb", "adjective": "data.adj", "adverb": "data.adv"}


def definition_examples(pos: str, limit: int | None = None, seed: int = 0) -> list[Example]:
    """`Define the <pos> "<lemma>":` -> ` <gloss>` for WordNet synsets of one part of speech (shuffled, seeded)."""
    if pos not in _POS:
        raise EdgeEigenLoraError(f"part of speech must be one of {sorted(_POS)}, got {pos!r}.")
    path = WORDNET_DIR / _POS[pos]
    if not path.is_file():
        raise EdgeEigenLoraError(f"{path} is missing: install Debian's wordnet-base (make env does).")
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" "):  # license header
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        lemma = fields[4].replace("_", " ")
        definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
        if 2 <= len(definition) <= 160 and lemma.isascii():
            out.append((f'Define the {pos} "{lemma}":', " " + definition))
    random.Random(seed).shuffle(out)
    return out[:limit] if limit else out


def fortune_examples(limit: int | None = None, seed: int = 0, max_chars: int = 200) -> list[Example]:
    """Short English fortunes (Debian fortunes) as free text: empty prompt, the fortune as completion."""
    path = FORTUNES_DIR / "fortunes"
    if not path.is_file():
        raise EdgeEigenLoraError(f"{path} is missing: install Debian's fortunes (make env does).")
    texts = [" ".join(t.split()) for t in read_fortune_file(path)]
    out = [("", t) for t in texts if 20 <= len(t) <= max_chars]
    random.Random(seed).shuffle(out)
    return out[:limit] if limit else out


def write_examples_jsonl(examples: list[Example], path: str | os.PathLike[str]) -> Path:
    """One {"prompt", "completion"} object per line, written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(
            "".join(
                json.dumps({"prompt": p, "completion": c}, ensure_ascii=False) + "\n" for p, c in examples
            ),
            encoding="utf-8",
        )
    return path
