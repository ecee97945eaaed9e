"""Build a bank of real PEFT LoRA adapters, one per task, as public adapters would be trained.

Each adapter: PEFT's own folder format (plus the task head in `classifier_head.safetensors` and a
`training.json` record), its own seed, early stopping on the validation split. Finished adapters are
skipped, so an interrupted build resumes; each folder appears atomically (written aside, then renamed).
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from edge_eigenlora.adapters import CONFIG_NAME, write_head
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.fileio import make_temp_dir
from edge_eigenlora.train import TrainConfig, TrainResult, evaluate_classifier, train_classifier

__all__ = [
    "LoraSpec",
    "RECORD_NAME",
    "attach_lora",
    "build_adapter",
    "build_bank",
    "is_finished",
    "task_seed",
    "train_lora_classifier",
]

RECORD_NAME = "training.json"


@dataclass(frozen=True)
class LoraSpec:
    """target_modules: module name suffixes, or "all-linear" for every Linear of the encoder."""

    r: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] | str = ("query", "value")
    dropout: float = 0.0


def attach_lora(encoder: Any, spec: LoraSpec, seed: int) -> Any:
    """Wrap a transformers encoder in a PEFT LoRA model (PEFT's init, seeded)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    targets = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    config = LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, target_modules=targets, lora_dropout=spec.dropout, bias="none"
    )
    return get_peft_model(encoder, config)


def task_seed(name: str, base_seed: int = 0) -> int:
    """A different, stable seed per task (crc32 of the name), as independent public adapters would have."""
    return (zlib.crc32(name.encode()) + base_seed) % (2**31)


def train_lora_classifier(
    model_name: str, task: Any, *, spec: LoraSpec, config: TrainConfig, seed: int, desc: str = "LoRA"
) -> tuple[Any, Any, TrainResult]:
    """A TextClassifier whose encoder is a PEFT LoRA model, trained on task.train / task.validation."""
    from dataclasses import replace

    from edge_eigenlora.model import TextClassifier
    from edge_eigenlora.pretrained import load_encoder

    encoder, tokenizer = load_encoder(model_name)
    peft_model = attach_lora(encoder, spec, seed)
    classifier = TextClassifier(peft_model, len(task.label_names))
    result = train_classifier(
        classifier,
        tokenizer,
        (task.train.texts, task.train.labels),
        (task.validation.texts, task.validation.labels),
        replace(config, seed=seed),
        desc=desc,
    )
    return classifier, tokenizer, result


def build_adapter(
    model_name: str, task: Any, out_dir: str | Path, *, spec: LoraSpec, config: TrainConfig, seed: int
) -> Path:
    """Train one adapter and write its folder atomically (all files aside, then one rename)."""
    from edge_eigenlora.pretrained import hub_name, resolve_model_path

    out = Path(out_dir)
    classifier, tokenizer, result = train_lora_classifier(
        model_name, task, spec=spec, config=config, seed=seed, desc=f"LoRA {task.spec.name}"
    )
    test = evaluate_classifier(
        classifier, tokenizer, task.test.texts, task.test.labels, max_length=config.max_length
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, f".{out.name}.")  # umask-respecting, unlike mkdtemp (0o700)
    try:
        peft_model = classifier.encoder
        peft_model.peft_config["default"].base_model_name_or_path = hub_name(
            str(resolve_model_path(model_name))
        )
        peft_model.save_pretrained(tmp, save_embedding_layers=False)
        head = classifier.head
        write_head(tmp, head.weight.detach().numpy(), head.bias.detach().numpy(), list(task.label_names))
        record = {
            "task": task.spec.name,
            "family": task.spec.family,
            "seed": seed,
            "lora": asdict(spec),
            "train": asdict(config),
            "steps": result.steps,
            "best_step": result.best_step,
            "stopped_early": result.stopped_early,
            "seconds": result.seconds,
            "val_accuracy": result.best_metric,
            "test_accuracy": test["accuracy"],
            "history": result.history,
        }
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2))
        if out.exists():
            shutil.rmtree(out)  # an unfinished leftover (finished ones are skipped by build_bank)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def is_finished(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and (folder / RECORD_NAME).is_file()


def build_bank(
    model_name: str,
    task_names: Sequence[str],
    cache_dir: str | Path,
    *,
    spec: LoraSpec | None = None,
    config: TrainConfig | None = None,
    data_seed: int = 0,
    base_seed: int = 0,
    load: Any = None,
) -> list[Path]:
    """Train (or reuse) one adapter per task under cache_dir/<task>; returns the folders in task order."""
    from edge_eigenlora import datasets

    spec = spec or LoraSpec()
    config = config or TrainConfig(epochs=4, lr=1e-3, head_lr=3e-3, patience=2, eval_every=20)
    load = load or datasets.load_task
    if not task_names:
        raise EdgeEigenLoraError("build_bank needs at least one task name.")
    cache = Path(cache_dir)
    folders = []
    for name in tqdm(task_names, desc="bank", unit="adapter"):
        folder = cache / name
        if is_finished(folder):
            tqdm.write(f"bank: {name}: cached at {folder}")
        else:
            build_adapter(
                model_name,
                load(name, seed=data_seed),
                folder,
                spec=spec,
                config=config,
                seed=task_seed(name, base_seed),
            )
            record = json.loads((folder / RECORD_NAME).read_text())
            tqdm.write(
                f"bank: {name}: test accuracy {record['test_accuracy']:.3f} after {record['steps']} steps "
                f"({record['seconds']:.0f} s)"
            )
        folders.append(folder)
    return folders
