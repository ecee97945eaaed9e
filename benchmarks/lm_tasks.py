"""Real text-generation tasks for the language-model recycling benchmark, read offline.

Each task is a list of (prompt, completion) pairs; a model is scored on the completion only (loss in nats per
completion token, and exact match where the answer is definite). Five families, 22 tasks:

- `define`   write a WordNet definition of a verb (by lexicographer category) or an adjective; never nouns
             (data.noun is reserved for independent evaluation). Prompt `Define the verb "run":`.
- `word`     the reverse: name the verb / adverb a WordNet gloss defines (definite: exact match). Held out
             as a whole family in the default config, so the bank never saw this form.
- `continue` continue a fortune (first 6 words given, the next 12 to write) by English topic file or by
             language (Debian fortunes, fortunes-de/-es/-it).
- `chat`     chatterbot-corpus dialogue by language: the reply to a user line.
- `label`    a labelled task of `edge_eigenlora.datasets` posed as generation: the text, then its label word
             (definite: exact match).

Splits are deterministic (a seeded permutation of the de-duplicated pairs): test and validation first, the rest
is the training pool. Every completion ends with a newline, the stop a user would cut at; exact match means the
greedy continuation reproduces the completion up to and including that newline (computed exactly from the
teacher-forced argmax of the same forward pass that gives the loss).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge_eigenlora import datasets
from edge_eigenlora.datasets import FORTUNES_DIR, LEXNAMES, WORDNET_DIR, cap_text, read_fortune_file

__all__ = [
    "LMExample",
    "LMTaskData",
    "LMTaskSpec",
    "lm_task_names",
    "lm_tasks",
    "load_lm_task",
    "make_split",
]

Pair = tuple[str, str]


@dataclass(frozen=True)
class LMExample:
    prompt: str
    completion: str  # starts with a space, ends with "\n"


@dataclass(frozen=True)
class LMTaskSpec:
    name: str
    family: str
    definite: bool  # exact match is meaningful (one right answer)
    source: str
    description: str


@dataclass(frozen=True)
class LMTaskData:
    spec: LMTaskSpec
    train: tuple[LMExample, ...]
    validation: tuple[LMExample, ...]
    test: tuple[LMExample, ...]


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


def _wordnet_entries(filename: str) -> list[tuple[str, str, str]]:
    """(lexname, first lemma, definition) per synset of data.verb / data.adj / data.adv (never data.noun)."""
    if filename not in datasets.WORDNET_FILES:
        raise ValueError(f"{filename}: only {datasets.WORDNET_FILES} may be read (data.noun is reserved)")
    out = []
    text = (WORDNET_DIR / filename).read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        if not line or line.startswith(" "):
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split(" ")
        lexname = LEXNAMES.get(int(fields[1]))
        if lexname is None:
            continue
        lemma = fields[4].replace("_", " ")
        lemma = lemma.split("(")[0]  # adjective markers such as "(a)"
        definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
        if definition:
            out.append((lexname, lemma, definition))
    return out


def _define(filename: str, lexnames: Sequence[str], pos: str) -> list[Pair]:
    pairs = []
    for lexname, lemma, definition in _wordnet_entries(filename):
        if lexname in lexnames:
            pairs.append((f'Define the {pos} "{lemma}":', " " + cap_text(definition, 90)))
    return pairs


def _word(filename: str, lexnames: Sequence[str], pos: str) -> list[Pair]:
    pairs = []
    for lexname, lemma, definition in _wordnet_entries(filename):
        if lexname in lexnames and " " not in lemma:
            pairs.append((f"Meaning: {cap_text(definition, 110)}\n{pos}:", " " + lemma))
    return pairs


def _continuations(entries: Sequence[str], head_words: int = 6, tail_words: int = 12) -> list[Pair]:
    pairs = []
    for entry in entries:
        words = datasets.normalise_text(entry).split()
        if len(words) < head_words + 3:
            continue
        pairs.append(
            (" ".join(words[:head_words]), " " + " ".join(words[head_words : head_words + tail_words]))
        )
    return pairs


def _fortune_topic(files: Sequence[str]) -> list[Pair]:
    return _continuations([e for f in files for e in read_fortune_file(FORTUNES_DIR / f)])


def _fortune_language(subdir: str) -> list[Pair]:
    folder = FORTUNES_DIR / subdir
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8") and p.stat().st_size > 0
    )
    return _continuations([e for p in files for e in read_fortune_file(p)])


def _chatterbot_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise datasets.TaskSourceMissing(
            "chatterbot-corpus is not installed: pip install --no-deps chatterbot-corpus==1.3.3"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _chat(language: str) -> list[Pair]:
    import yaml

    pairs = []
    for path in sorted((_chatterbot_root() / language).glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in doc.get("conversations") or []:
            if not isinstance(conversation, list):
                continue
            lines = [
                datasets.normalise_text(str(x)) for x in conversation if isinstance(x, str | int | float)
            ]
            for user, reply in zip(lines, lines[1:], strict=False):
                if user and reply:
                    pairs.append((f"User: {cap_text(user, 100)}\nBot:", " " + cap_text(reply, 80)))
    return pairs


_LANGUAGE_NAMES = {
    "en": "English",
    "de": "German",
    "it": "Italian",
    "es": "Spanish",
    "pl": "Polish",
    "cs": "Czech",
    "eo": "Esperanto",
    "ga": "Irish",
    "pt": "Portuguese",
    "sk": "Slovak",
    "ru": "Russian",
    "bg": "Bulgarian",
}


def _label(task: str, word: Callable[[str], str]) -> list[Pair]:
    data = datasets.load_task(task, seed=0)
    pairs = []
    for split in (data.train, data.validation, data.test):
        for text, label in zip(split.texts, split.labels, strict=True):
            pairs.append((f"Text: {cap_text(text, 110)}\nCategory:", " " + word(data.label_names[label])))
    return pairs


_VERBS_A = ("verb.motion",)
_VERBS_B = ("verb.communication",)
_VERBS_C = ("verb.change",)
_VERBS_D = ("verb.contact",)
_VERBS_E = ("verb.social",)
_VERBS_WORD = ("verb.cognition", "verb.emotion", "verb.perception", "verb.body", "verb.consumption")

_REGISTRY: dict[str, tuple[LMTaskSpec, Callable[[], list[Pair]]]] = {}


def _register(name: str, family: str, definite: bool, source: str, description: str, read: Callable) -> None:
    _REGISTRY[name] = (LMTaskSpec(name, family, definite, source, description), read)


def _register_all() -> None:
    wn = "Debian wordnet-base"
    for name, lex in (
        ("define_verb_motion", _VERBS_A),
        ("define_verb_communication", _VERBS_B),
        ("define_verb_change", _VERBS_C),
        ("define_verb_contact", _VERBS_D),
        ("define_verb_social", _VERBS_E),
    ):
        _register(
            name,
            "define",
            False,
            f"{wn}: data.verb ({', '.join(lex)})",
            "definition of a verb",
            lambda lex=lex: _define("data.verb", lex, "verb"),
        )
    _register(
        "define_adj",
        "define",
        False,
        f"{wn}: data.adj",
        "definition of an adjective",
        lambda: _define("data.adj", ("adj.all",), "adjective"),
    )
    _register(
        "word_verb",
        "word",
        True,
        f"{wn}: data.verb ({', '.join(_VERBS_WORD)})",
        "the one-word verb a gloss defines",
        lambda: _word("data.verb", _VERBS_WORD, "Verb"),
    )
    _register(
        "word_adv",
        "word",
        True,
        f"{wn}: data.adv",
        "the one-word adverb a gloss defines",
        lambda: _word("data.adv", ("adv.all",), "Adverb"),
    )
    fortunes = "Debian fortunes"
    for name, files in (
        ("continue_en_computers", ("computers",)),
        ("continue_en_science", ("science", "education")),
        ("continue_en_politics", ("politics", "law")),
    ):
        _register(
            name,
            "continue",
            False,
            f"{fortunes}: {', '.join(files)}",
            "fortune continuation (English topic)",
            lambda files=files: _fortune_topic(files),
        )
    for lang in ("de", "es", "it"):
        _register(
            f"continue_{lang}",
            "continue",
            False,
            f"Debian fortunes-{lang}: {FORTUNES_DIR}/{lang}",
            f"fortune continuation ({_LANGUAGE_NAMES[lang]})",
            lambda lang=lang: _fortune_language(lang),
        )
    chat = "PyPI chatterbot-corpus 1.3.3"
    for code, language in (("en", "english"), ("es", "spanish"), ("it", "italian"), ("pt", "portuguese")):
        _register(
            f"chat_{code}",
            "chat",
            False,
            f"{chat}: data/{language}/*.yml",
            f"dialogue reply ({language})",
            lambda language=language: _chat(language),
        )
    for name, task, word in (
        ("label_language", "langid_fortunes_latin", lambda s: _LANGUAGE_NAMES.get(s, s)),
        ("label_sentiment", "sentiment_movie_sentences_en", lambda s: s),
        ("label_topic", "topic_fortunes_en_subjects", lambda s: s),
        ("label_verb_category", "semantic_verb_category", lambda s: s.split(".", 1)[1]),
        ("label_pos", "semantic_pos_from_gloss", lambda s: {"adj": "adjective", "adv": "adverb"}.get(s, s)),
    ):
        _register(
            name,
            "label",
            True,
            f"edge_eigenlora.datasets task {task}",
            f"{task} posed as generation",
            lambda task=task, word=word: _label(task, word),
        )


_register_all()


def lm_tasks() -> list[LMTaskSpec]:
    return [spec for spec, _ in _REGISTRY.values()]


def lm_task_names() -> list[str]:
    return list(_REGISTRY)


def make_split(
    pairs: Sequence[Pair], name: str, *, n_val: int, n_test: int, max_train: int
) -> tuple[tuple[LMExample, ...], tuple[LMExample, ...], tuple[LMExample, ...]]:
    """De-duplicate by prompt (first kept), then a permutation seeded by the task name: test, val, train."""
    seen: set[str] = set()
    unique = []
    for prompt, completion in pairs:
        key = prompt.strip().lower()
        if key in seen or not completion.strip():
            continue
        seen.add(key)
        unique.append(LMExample(prompt, completion.rstrip() + "\n"))
    if len(unique) < n_val + n_test + 8:
        raise ValueError(f"LM task {name!r}: only {len(unique)} distinct examples")
    order = np.random.default_rng(zlib.crc32(name.encode())).permutation(len(unique))
    items = [unique[i] for i in order]
    test = tuple(items[:n_test])
    val = tuple(items[n_test : n_test + n_val])
    train = tuple(items[n_test + n_val : n_test + n_val + max_train])
    return train, val, test


@lru_cache(maxsize=64)
def load_lm_task(name: str, *, n_val: int = 32, n_test: int = 64, max_train: int = 512) -> LMTaskData:
    if name not in _REGISTRY:
        raise KeyError(f"unknown LM task {name!r}; known: {lm_task_names()}")
    spec, read = _REGISTRY[name]
    train, val, test = make_split(read(), name, n_val=n_val, n_test=n_test, max_train=max_train)
    return LMTaskData(spec, train, val, test)
