"""Personalize a decoder LM on the device: train a new task's coefficients with the bundle's causal-LM
train-step graph (next-token loss on the completion tokens, gradients for the coefficients), onnxruntime +
numpy + tokenizers only.

The loop is the classifier's (`trainer.GradientLoop`): AdamW, gradient accumulation, a checkpoint every N
steps (atomic; resume after SIGKILL with the data and settings checked), rollback with a learning-rate back-off
on NaN or an exploding loss, early stopping on the validation completion loss (lower is better) with the best
coefficients restored, and an atomic task write (`trainer.write_task`).

An example is a prompt and its completion, or a plain text:

- {"prompt", "completion"}: the prompt is formatted as generation formats it (`LMRuntime.format_prompt`: the
  bundle's chat template when it has one, unless chat=False), then the completion's tokens and the bundle's
  first end-of-sequence id follow. Only the completion and the EOS take loss (labels are IGNORE_INDEX on the
  prompt), so the task learns to answer, and to stop.
- {"text"}: the text's tokens and the EOS, every token taking loss (no chat template).

Rows are right-padded (labels IGNORE_INDEX on padding). An example longer than the token limit (the runtime's
max_length, at most the model's context) has its completion cut at the limit with a warning, or is refused
with on_long="error"; a prompt that leaves no room for a single completion token is always refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_eigenlora import bundle as contract
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.runtime.generate import LMRuntime
from edge_eigenlora.runtime.session import LoadedTask
from edge_eigenlora.runtime.tokenize import TruncationWarning
from edge_eigenlora.runtime.trainer import (
    DeviceTrainConfig,
    GradientLoop,
    Log,
    init_coefficients,
    stderr_log,
)
from edge_eigenlora.task import Task

__all__ = [
    "LMExamples",
    "LMRecord",
    "LMTrainer",
    "LM_EVAL_ROWS",
    "evaluate_lm",
    "init_lm_params",
    "lm_records",
    "make_lm_task",
    "read_lm_file",
    "tokenize_lm_examples",
]

# rows per forward pass when measuring the validation loss: the graph returns logits over the whole vocabulary
# for every position (SmolLM2: 49152 x 4 bytes per token), so evaluation batches stay small
LM_EVAL_ROWS = 8


@dataclass(frozen=True)
class LMRecord:
    """One training example: a prompt and its completion, or a text (loss on all its tokens).

    `where` names it in messages (e.g. "data.jsonl:3").
    """

    prompt: str | None = None
    completion: str | None = None
    text: str | None = None
    where: str = "example"

    @property
    def form(self) -> str:
        return "text" if self.text is not None else "prompt/completion"


def _record(obj: Any, where: str) -> LMRecord:
    """Check one example (a JSON object or a mapping) and return it as an LMRecord."""
    if not isinstance(obj, Mapping):
        raise EdgeEigenLoraError(
            f'{where}: expected a JSON object with "prompt" and "completion" (or "text"), got '
            f"{type(obj).__name__}."
        )
    has_text = "text" in obj
    has_pair = "prompt" in obj or "completion" in obj
    if has_text and has_pair:
        raise EdgeEigenLoraError(
            f'{where}: give either "text" or "prompt" + "completion", not both (fields: {sorted(obj)[:6]}).'
        )
    if not has_text and not has_pair:
        raise EdgeEigenLoraError(
            f'{where}: field "completion" is missing: each line needs "prompt" and "completion" (or "text"); '
            f"found fields {sorted(obj)[:6]}."
        )
    fields = ("text",) if has_text else ("prompt", "completion")
    for name in fields:
        if name not in obj:
            raise EdgeEigenLoraError(
                f'{where}: field "{name}" is missing; a prompt/completion example needs both fields.'
            )
        value = obj[name]
        if not isinstance(value, str):
            raise EdgeEigenLoraError(f'{where}: field "{name}" must be a string, got {type(value).__name__}.')
        if not value.strip():
            what = "nothing to learn" if name != "prompt" else "nothing to answer"
            raise EdgeEigenLoraError(
                f'{where}: field "{name}" is empty ({what}); fill it in or drop the line.'
            )
    if has_text:
        return LMRecord(text=obj["text"], where=where)
    return LMRecord(prompt=obj["prompt"], completion=obj["completion"], where=where)


def _one_form(records: Sequence[LMRecord], where: str) -> None:
    if records and any(r.form != records[0].form for r in records):
        other = next(r for r in records if r.form != records[0].form)
        raise EdgeEigenLoraError(
            f"{other.where}: this example is {other.form} but {records[0].where} is {records[0].form}; "
            f"{where} must use one form throughout (prompt/completion, or text)."
        )


def read_lm_file(path: str | os.PathLike[str]) -> list[LMRecord]:
    """Examples from a JSONL file: one {"prompt", "completion"} or {"text"} object per line (one form per file;
    blank lines are skipped). Errors name the file, the line and the field."""
    from edge_eigenlora.labelled_file import decode_text_file

    path = Path(path)
    if not path.is_file():
        raise EdgeEigenLoraError(f"training file {path} does not exist or is not a file; give a .jsonl file.")
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".json"):
        raise EdgeEigenLoraError(
            f'{path}: a language model trains from JSONL (one {{"prompt", "completion"}} or {{"text"}} object '
            f"per line); got a {path.suffix or 'suffix-less'} file."
        )
    content = decode_text_file(path, path.read_bytes())
    records = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise EdgeEigenLoraError(f"{where}: not valid JSON ({str(exc)[:100]}).") from None
        records.append(_record(obj, where))
    if not records:
        raise EdgeEigenLoraError(
            f'{path} holds no examples; write one {{"prompt", "completion"}} object per line.'
        )
    _one_form(records, str(path))
    return records


def lm_records(examples: Sequence[Any], where: str = "example") -> list[LMRecord]:
    """Examples given in code: LMRecords, {"prompt", "completion"} / {"text"} mappings, (prompt, completion)
    pairs or plain strings (texts). Checked as the file reader checks lines."""
    out = []
    for i, ex in enumerate(examples):
        name = f"{where} {i}"
        if isinstance(ex, LMRecord):
            out.append(ex)
        elif isinstance(ex, str):
            out.append(_record({"text": ex}, name))
        elif isinstance(ex, tuple | list) and len(ex) == 2:
            out.append(_record({"prompt": ex[0], "completion": ex[1]}, name))
        else:
            out.append(_record(ex, name))
    _one_form(out, f"the {where}s")
    return out


@dataclass
class LMExamples:
    """Tokenized examples: token rows and their labels (IGNORE_INDEX where no loss), unpadded."""

    rows: list[list[int]]
    targets: list[list[int]]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: Sequence[int], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, attention_mask, labels), right-padded to the longest row."""
        rows = [self.rows[i] for i in idx]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        labels = np.full((len(rows), width), contract.IGNORE_INDEX, np.int64)
        for j, i in enumerate(idx):
            n = len(self.rows[i])
            ids[j, :n], mask[j, :n], labels[j, :n] = self.rows[i], 1, self.targets[i]
        return ids, mask, labels

    def weight(self, labels: np.ndarray) -> int:
        """Tokens that take loss (HF's shift: label t is predicted at position t - 1, so column 0 never is)."""
        return int((np.asarray(labels)[:, 1:] != contract.IGNORE_INDEX).sum())

    def digest(self) -> str:
        h = hashlib.sha256()
        for row, target in zip(self.rows, self.targets, strict=True):
            h.update(
                np.asarray(row, np.int64).tobytes() + b"|" + np.asarray(target, np.int64).tobytes() + b"\n"
            )
        return h.hexdigest()


def tokenize_lm_examples(
    runtime: LMRuntime, records: Sequence[LMRecord], *, chat: bool | None = None, where: str = "training"
) -> LMExamples:
    """Token rows + labels of each record; the limit is the runtime's max_length (at most the context)."""
    eos_ids = runtime.decoder.eos_token_ids
    if not eos_ids:
        raise EdgeEigenLoraError(
            f"{runtime.manifest.path}: field 'decoder.eos_token_ids' is empty, so a completion cannot be taught to "
            "end; re-export the bundle with a tokenizer that has an end-of-sequence token."
        )
    eos = int(eos_ids[0])
    limit = min(runtime.max_length, runtime.decoder.max_positions)
    tok = runtime.tokenizer
    rows, targets, cut = [], [], []
    for rec in records:
        if rec.text is not None:
            enc = tok.encode_one(rec.text, True)
            ids = list(enc.ids) + [eos]
            labels = list(ids)
            too_long = bool(enc.overflowing) or len(ids) > limit
            if len(ids) < 2:
                raise EdgeEigenLoraError(f'{rec.where}: field "text" has no tokens; give some text.')
        else:
            text, specials = runtime.format_prompt(rec.prompt or "", chat)
            prompt = tok.encode_one(text, specials)
            completion = tok.encode_one(rec.completion or "", False)
            if prompt.overflowing or len(prompt.ids) >= limit:
                raise EdgeEigenLoraError(
                    f'{rec.where}: field "prompt" has {"more than " if prompt.overflowing else ""}{len(prompt.ids)} tokens '
                    f"(with the chat template: {'yes' if not specials else 'no'}); the token limit is {limit}, which "
                    "leaves no room for the completion: shorten the prompt, or raise --max-length (at most the "
                    f"model's context of {runtime.decoder.max_positions})."
                )
            if not completion.ids:
                raise EdgeEigenLoraError(f'{rec.where}: field "completion" has no tokens; give some text.')
            ids = list(prompt.ids) + list(completion.ids) + [eos]
            labels = [contract.IGNORE_INDEX] * len(prompt.ids) + list(completion.ids) + [eos]
            too_long = bool(completion.overflowing) or len(ids) > limit
        if too_long:
            cut.append(rec.where)
            ids, labels = ids[:limit], labels[:limit]
        rows.append(ids)
        targets.append(labels)
    if cut:
        message = (
            f"{len(cut)} of {len(records)} {where} examples are longer than the token limit of {limit} (first: "
            f"{cut[0]}); "
        )
        if runtime.on_long == "error":
            raise EdgeEigenLoraError(
                message + "shorten them, raise --max-length, or allow truncation (on_long='warn')."
            )
        if runtime.on_long == "warn":
            warnings.warn(
                message + "their completions were cut at the limit (without the end token).",
                TruncationWarning,
                stacklevel=2,
            )
    return LMExamples(rows, targets)


def init_lm_params(
    runtime: LMRuntime, seed: int, init_task: LoadedTask | None = None
) -> dict[str, np.ndarray]:
    """A given task's coefficients, or LoRA's init moved into the subspace (delta W = 0)."""
    if init_task is not None:
        return {contract.COEFFICIENTS: init_task.coefficients.copy()}
    return {contract.COEFFICIENTS: init_coefficients(runtime.layout, np.random.default_rng(seed))}


def evaluate_lm(
    runtime: LMRuntime,
    coefficients: np.ndarray,
    data: LMExamples,
    batch_size: int = LM_EVAL_ROWS,
    graph: str = contract.SHARED,
) -> dict[str, float]:
    """Mean next-token loss (nats per labelled token) and the token count, with the inference graph (forward
    only) or the train-step graph (graph=TRAIN_STEP, when the bundle has no shared graph)."""
    if not len(data):
        return {"loss": float("nan"), "tokens": 0}
    pad = runtime.tokenizer.pad_id
    total, tokens = 0.0, 0
    for i in range(0, len(data), batch_size):
        ids, mask, labels = data.batch(range(i, min(i + batch_size, len(data))), pad)
        if graph == contract.TRAIN_STEP:
            n = data.weight(labels)
            out = runtime.train_step(ids, mask, labels, coefficients)
            total, tokens = total + float(out[contract.LOSS]) * n, tokens + n
        else:
            loss, n = runtime.completion_loss(ids, mask, labels, coefficients=coefficients)
            total, tokens = total + loss, tokens + n
    return {"loss": total / max(tokens, 1), "tokens": tokens}


def make_lm_task(runtime: LMRuntime, name: str, params: dict[str, np.ndarray], info: dict[str, Any]) -> Task:
    contract.check_task_name(name)
    return Task(
        name=name,
        basis_fingerprint=runtime.basis_fingerprint,
        coefficients=contract.unpack(params[contract.COEFFICIENTS], runtime.layout),
        kind="causal_lm",
        info=info,
    )


class LMTrainer(GradientLoop):
    """Trains a language-model task (coefficients only) with the bundle's causal-LM train-step graph.

    train / validation: LMRecords, mappings, (prompt, completion) pairs or texts (see `lm_records`); without a
    validation set a seeded `config.validation_fraction` of the training examples is held out (when there are
    at least 4). chat: format prompts with the bundle's chat template (None: when it has one). The config's
    head_lr and head_init do not apply (a language model's task has no head).
    """

    higher_is_better = False
    metric_name = "val_loss"

    def __init__(
        self,
        runtime: LMRuntime,
        name: str,
        train: Sequence[Any],
        *,
        validation: Sequence[Any] | None = None,
        config: DeviceTrainConfig | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        resume: bool = True,
        init_task: str | Task | None = None,
        chat: bool | None = None,
        log: Log = stderr_log,
        eval_graph: str = contract.SHARED,
    ) -> None:
        if not isinstance(runtime, LMRuntime):
            raise EdgeEigenLoraError(
                f"{runtime.manifest.path}: kind is {runtime.manifest.kind!r}; LMTrainer trains causal_lm bundles "
                "(use trainer.GradientTrainer for a classifier)."
            )
        self.runtime = runtime
        self.config = config or DeviceTrainConfig()
        self.name = contract.check_task_name(name)
        self.log = log
        self.chat = chat
        self.param_names = contract.train_params(runtime.manifest.kind)
        if self.config.head_init != "random":
            raise EdgeEigenLoraError(
                f"head_init={self.config.head_init!r}: a language model's task has no head; leave head_init out."
            )
        if not runtime.has_train_step:
            raise EdgeEigenLoraError(
                f"{runtime.root}: this bundle has no train-step graph; export it with train_step=True "
                "(edge-eigenlora export --train-step) to train on the device."
            )
        self.init_task = runtime.task(init_task) if init_task is not None else None
        records = lm_records(train, "training example")
        if len(records) < 1:
            raise EdgeEigenLoraError(f"task {name!r}: no training examples; give at least one.")
        val_records = lm_records(validation, "validation example") if validation is not None else None
        if val_records is None and self.config.validation_fraction > 0 and len(records) >= 4:
            order = np.random.default_rng(self.config.seed).permutation(len(records))
            n_val = max(1, round(len(records) * self.config.validation_fraction))
            val_records = [records[i] for i in order[:n_val]]
            records = [records[i] for i in order[n_val:]]
        self.train = tokenize_lm_examples(runtime, records, chat=chat, where="training")
        self.val = tokenize_lm_examples(runtime, val_records or [], chat=chat, where="validation")
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.resume = resume
        self.eval_graph = eval_graph if eval_graph in runtime.variants() else contract.TRAIN_STEP
        self.pad = runtime.tokenizer.pad_id
        self.state: dict[str, Any] = {}

    def initial_params(self) -> dict[str, np.ndarray]:
        return init_lm_params(self.runtime, self.config.seed, self.init_task)

    def initial_history(self, params: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """The validation loss before training (step 0), so a run reports what it changed."""
        return [{"step": 0, **self.validate(params)}] if len(self.val) else []

    def validate(self, params: dict[str, np.ndarray]) -> dict[str, float]:
        m = evaluate_lm(
            self.runtime,
            params[contract.COEFFICIENTS],
            self.val,
            min(self.config.eval_batch_size, LM_EVAL_ROWS),
            self.eval_graph,
        )
        return {"val_loss": m["loss"], "val_tokens": m["tokens"]}

    def fingerprint_extra(self) -> dict[str, Any]:
        return {"kind": "causal_lm", "chat": self.chat}

    def task_info(self) -> dict[str, Any]:
        start = next((h for h in self.state.get("history", []) if h.get("step") == 0), None)
        return {
            "val_loss_before": start["val_loss"] if start else math.nan,
            "train_examples": len(self.train),
            "max_length": min(self.runtime.max_length, self.runtime.decoder.max_positions),
        }

    def build_task(self, params: dict[str, np.ndarray], info: dict[str, Any]) -> Task:
        return make_lm_task(self.runtime, self.name, params, info)
