"""A small bank of real PEFT LoRA adapters for a decoder LM (the LM demo's and the LM benchmark's basis).

Each adapter: LoRA r=8 on q/k/v/o, trained on (prompt + completion) texts with early stopping on a
validation split, written as PEFT's own folder plus `training.json` (curve included). Finished adapters are
skipped, so an interrupted build resumes; each folder appears atomically (written aside, then renamed).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from edge_eigenlora.bank import RECORD_NAME, LoraSpec, attach_lora, is_finished, task_seed
from edge_eigenlora.fileio import make_temp_dir
from edge_eigenlora.lm_data import Example, definition_examples, fortune_examples
from edge_eigenlora.train import evaluate_causal_lm, train_causal_lm
from edge_eigenlora.train_config import TrainConfig

__all__ = ["DEMO_LM_BANK", "LM_LORA", "LM_TRAIN", "LmBankTask", "build_lm_bank", "example_texts"]

LM_LORA = LoraSpec(r=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
# ~30 steps of 8 x 40 tokens: a few CPU-minutes per adapter on 2 cores (measured in each training.json)
LM_TRAIN = TrainConfig(
    epochs=4, batch_size=8, lr=3e-3, max_length=40, patience=2, eval_every=10, max_steps=30, progress=True
)


@dataclass(frozen=True)
class LmBankTask:
    """lr: the task's own learning rate where the default diverges (free text at 3e-3 did: 6.17 -> 10.1)."""

    name: str
    examples: Callable[[], list[Example]]
    lr: float | None = None


# Definitions of verbs and adjectives share the held-out adverb task's form; fortunes are unrelated text.
DEMO_LM_BANK: tuple[LmBankTask, ...] = (
    LmBankTask("verb_definitions", lambda: definition_examples("verb", 600)),
    LmBankTask("adjective_definitions", lambda: definition_examples("adjective", 600)),
    LmBankTask("fortunes_en", lambda: fortune_examples(400), lr=1e-3),
)


def example_texts(examples: Sequence[Example]) -> list[str]:
    """What a base model sees in training: the prompt followed by the completion."""
    return [p + c for p, c in examples]


def build_lm_bank(
    model_name: str,
    root: str | Path,
    tasks: Sequence[LmBankTask] = DEMO_LM_BANK,
    *,
    spec: LoraSpec = LM_LORA,
    config: TrainConfig = LM_TRAIN,
    validation: int = 32,
    progress: bool = True,
) -> list[Path]:
    """Train the missing adapters of `tasks` under root/<task>/ and return every adapter folder."""
    from edge_eigenlora.pretrained import SMOLLM2, hub_name, load_causal_lm

    root = Path(root)
    folders = []
    todo = [t for t in tasks if not is_finished(root / t.name)]
    bar = tqdm(total=len(todo), desc="LM bank", unit="adapter", disable=not progress or not todo)
    for task in tasks:
        out = root / task.name
        folders.append(out)
        if is_finished(out):
            continue
        model, tokenizer = load_causal_lm(model_name)
        seed = task_seed(task.name)
        peft_model = attach_lora(model, spec, seed)
        texts = example_texts(task.examples())
        val, train = texts[:validation], texts[validation:]
        before = evaluate_causal_lm(peft_model, tokenizer, val, max_length=config.max_length)
        task_config = replace(config, seed=seed, lr=task.lr or config.lr)
        result = train_causal_lm(peft_model, tokenizer, train, val, task_config, desc=task.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(out.parent, f".{out.name}.")
        try:
            name = SMOLLM2 if model_name == SMOLLM2 else hub_name(model_name)
            peft_model.peft_config["default"].base_model_name_or_path = name
            peft_model.save_pretrained(tmp)
            record = {
                "task": task.name,
                "seed": seed,
                "lora": asdict(spec),
                "train": asdict(task_config),
                "examples": {"train": len(train), "validation": len(val)},
                "validation_loss_before": before,
                "validation_loss_best": -result.best_metric,
                "steps": result.steps,
                "best_step": result.best_step,
                "seconds": result.seconds,
                "curve": result.history,
            }
            (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2, default=str))
            tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        bar.update(1)
    bar.close()
    return folders
