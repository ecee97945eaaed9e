"""`python -m edge_eigenlora.runtime` (`edge-eigenlora-device`): the device's command line, without torch.

edge-eigenlora-device tasks BUNDLE                                   # the tasks a bundle carries
edge-eigenlora-device run BUNDLE --task NAME --text "..." [--text ...] # predict
edge-eigenlora-device run BUNDLE --task NAME --file texts.txt|.csv|.jsonl
edge-eigenlora-device train BUNDLE --name NEW --train-file data.csv  # teach the device a new task
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["build_parser", "main"]


def _runtime(args: argparse.Namespace) -> object:
    from dataclasses import replace

    from edge_eigenlora.runtime.session import DeviceRuntime, RuntimeOptions

    # Training defaults to low memory (RuntimeOptions.low_memory: one copy of the weights for the inference and
    # train-step sessions; docs/runtime.md has its memory and step-time cost): on a phone memory is the
    # constraint. Inference keeps onnxruntime's defaults unless asked.
    low_memory = args.low_memory if args.low_memory is not None else args.command == "train"
    if low_memory:
        options = replace(RuntimeOptions.low_memory(args.threads), prefer_ort=args.prefer_ort)
    else:
        options = RuntimeOptions(threads=args.threads, arena=not args.no_arena, prefer_ort=args.prefer_ort)
    return DeviceRuntime(args.bundle, options=options, max_length=args.max_length, on_long=args.on_long)


def _read_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise EdgeEigenLoraError(f"text file {path} does not exist.")
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".ndjson"):
        import csv

        if path.suffix.lower() in (".jsonl", ".ndjson"):
            texts = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        texts.append(str(json.loads(line)["text"]))
                    except (json.JSONDecodeError, KeyError, TypeError) as exc:
                        raise EdgeEigenLoraError(
                            f'{path}:{number}: expected an object with "text" ({exc}).'
                        ) from exc
            return texts
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if "text" not in (reader.fieldnames or []):
                raise EdgeEigenLoraError(
                    f"{path}: the header must name a 'text' column (found {reader.fieldnames})."
                )
            return [row["text"] for row in reader]
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _cmd_tasks(args: argparse.Namespace) -> int:
    rt = _runtime(args)
    rows = rt.list_tasks()  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps({"bundle": str(args.bundle), "graphs": rt.variants(), "tasks": rows}, indent=2))  # type: ignore[attr-defined]
        return 0
    print(f"bundle {args.bundle}: graphs {', '.join(rt.variants())}; {len(rows)} task(s)")  # type: ignore[attr-defined]
    for row in rows:
        print(
            f"  {row['name']:<24} {row.get('num_labels') or '?':>3} labels  {', '.join(map(str, row.get('labels', [])))[:70]}"
        )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    rt = _runtime(args)
    texts = list(args.text or [])
    if args.file:
        texts += _read_texts(Path(args.file))
    if not texts:
        raise EdgeEigenLoraError("nothing to run: give --text TEXT (repeatable) or --file FILE.")
    loaded = rt.task(args.task)  # type: ignore[attr-defined]
    logits = rt.run(texts, task=loaded, batch_size=args.batch_size)  # type: ignore[attr-defined]
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    names = loaded.labels or [str(i) for i in range(loaded.num_labels)]
    for text, p in zip(texts, probs, strict=True):
        i = int(p.argmax())
        if args.json:
            print(json.dumps({"text": text, "label": names[i], "probability": round(float(p[i]), 6),
                              "scores": {n: round(float(v), 6) for n, v in zip(names, p, strict=True)}}))  # fmt: skip
        else:
            print(f"{names[i]}\t{p[i]:.3f}\t{text[:100]}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from edge_eigenlora.labelled_file import read_labelled_file
    from edge_eigenlora.runtime.trainer import DeviceTrainConfig, GradientTrainer, write_task
    from edge_eigenlora.runtime.zeroth_order import ZerothOrderTrainer, ZOConfig

    if args.no_add and not args.out:
        raise EdgeEigenLoraError("--no-add without --out would throw the trained task away; pass --out FILE.")
    rt = _runtime(args)
    data = read_labelled_file(args.train_file)
    validation = None
    if args.validation_file:
        val = read_labelled_file(args.validation_file, label_names=data.label_names)
        validation = (val.texts, val.labels)
    if args.name in rt.manifest.tasks and not args.overwrite:  # type: ignore[attr-defined]
        raise EdgeEigenLoraError(
            f"task {args.name!r} already exists in {args.bundle}; choose another --name or pass --overwrite."
        )
    if args.method == "zo":
        config = ZOConfig(steps=args.max_steps or ZOConfig.steps, batch_size=args.batch_size, lr=args.lr or ZOConfig.lr,
                          eval_every=args.eval_every or 50, patience=args.patience, seed=args.seed,
                          validation_fraction=args.validation_fraction, max_seconds=args.max_seconds)  # fmt: skip
        trainer = ZerothOrderTrainer(rt, args.name, (data.texts, data.labels), data.label_names,
                                     validation=validation, config=config)  # type: ignore[arg-type]  # fmt: skip
    else:
        config = DeviceTrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, accumulation=args.accumulation, lr=args.lr or DeviceTrainConfig.lr,
            head_lr=args.head_lr, max_steps=args.max_steps, eval_every=args.eval_every, patience=args.patience,
            checkpoint_every=args.checkpoint_every, validation_fraction=args.validation_fraction, seed=args.seed,
            head_init=args.head_init,
        )  # fmt: skip
        checkpoint = (
            Path(args.checkpoint)
            if args.checkpoint
            else Path(args.bundle) / ".checkpoints" / f"{args.name}.safetensors"
        )
        trainer = GradientTrainer(rt, args.name, (data.texts, data.labels), data.label_names,  # type: ignore[arg-type]
                                  validation=validation, config=config, checkpoint=checkpoint,
                                  resume=not args.no_resume)  # fmt: skip
    print(f"training task {args.name!r} on {len(trainer.train)} examples ({len(trainer.val)} for validation), "
          f"{len(data.label_names)} labels, method {args.method}", file=sys.stderr, flush=True)  # fmt: skip
    outcome = trainer.fit()
    written = write_task(rt, outcome.task, output=args.out, add_to_bundle=not args.no_add)  # type: ignore[arg-type]
    if args.method != "zo" and trainer.checkpoint is not None and trainer.checkpoint.exists():  # type: ignore[attr-defined]
        trainer.checkpoint.unlink()  # type: ignore[attr-defined]
    summary = {"task": args.name, "steps": outcome.steps, "best_step": outcome.best_step,
               "val_accuracy": outcome.best_metric, "seconds": round(outcome.seconds, 2),
               "resumed_from": outcome.resumed_from, "rollbacks": outcome.rollbacks, "written": written}  # fmt: skip
    print(json.dumps(summary))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="the bundle folder (manifest.json, graphs, tokenizer, tasks)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    p.add_argument(
        "--no-arena", action="store_true", help="disable onnxruntime's CPU memory arena (lower peak memory)"
    )
    p.add_argument(
        "--low-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="arena off, no constant folding or prepacking, weights shared between sessions: one copy of each weight "
        "(default: on for train, off for run and tasks)",
    )
    p.add_argument(
        "--prefer-ort", action="store_true", help="load the .ort (ORT Mobile) graph files when present"
    )
    p.add_argument(
        "--max-length", type=int, default=None, help="token limit per text (default: the bundle's)"
    )
    p.add_argument("--on-long", choices=("warn", "error", "silent"), default="warn",
                   help="texts longer than the limit: truncate with a warning, refuse, or truncate silently")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from edge_eigenlora.runtime.trainer import DeviceTrainConfig
    from edge_eigenlora.runtime.zeroth_order import ZOConfig

    d, z = DeviceTrainConfig(), ZOConfig()
    parser = argparse.ArgumentParser(prog="edge-eigenlora-device", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tasks", help="list the bundle's graphs and tasks (verifies every checksum)")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_tasks)

    p = sub.add_parser("run", help="classify texts with one of the bundle's tasks")
    _common(p)
    p.add_argument("--task", required=True, help="task name (see `tasks`)")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--file", help="texts: .txt (one per line), or .csv/.jsonl with a 'text' field")
    p.add_argument("--batch-size", type=int, default=32, help="texts per graph call")
    p.add_argument(
        "--json", action="store_true", help="one JSON object per text with every label's probability"
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train", help="train a new task on the device from a CSV/JSONL file of labelled texts")
    _common(p)
    p.add_argument("--name", required=True, help="name of the new task (letters, digits, . _ -)")
    p.add_argument(
        "--train-file", required=True, help=".csv/.tsv (header text,label) or .jsonl ({text, label})"
    )
    p.add_argument(
        "--validation-file", help="labelled validation texts (default: split off the training file)"
    )
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=d.validation_fraction,
        help="share of the training file held out",
    )
    p.add_argument("--method", choices=("grad", "zo"), default="grad",
                   help="grad: the train-step graph (gradients); zo: forward-only SPSA/MeZO on the inference graph")  # fmt: skip
    p.add_argument("--epochs", type=int, default=d.epochs, help="upper bound on epochs (grad)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per micro-batch")
    p.add_argument(
        "--accumulation", type=int, default=d.accumulation, help="micro-batches per optimizer step (grad)"
    )
    p.add_argument(
        "--lr", type=float, default=None, help=f"learning rate (default: {d.lr:g} grad, {z.lr:g} zo)"
    )
    p.add_argument("--head-lr", type=float, default=None, help="head learning rate (grad; default: --lr)")
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps (zo default: 300)")
    p.add_argument("--max-seconds", type=float, default=None, help="wall-clock budget (zo)")
    p.add_argument(
        "--eval-every", type=int, default=None, help="steps between validations (grad default: one epoch)"
    )
    p.add_argument(
        "--patience", type=int, default=d.patience, help="validations without improvement before stopping"
    )
    p.add_argument("--head-init", choices=("random", "probe"), default=d.head_init,
                   help="grad: random N(0, 0.02) head, or a ridge probe on the frozen embeddings")  # fmt: skip
    p.add_argument("--checkpoint", help="checkpoint file (default: BUNDLE/.checkpoints/NAME.safetensors)")
    p.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, help="optimizer steps between checkpoints"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of init, split and shuffling")
    p.add_argument("--out", help="also write the task file here")
    p.add_argument("--no-add", action="store_true", help="do not add the task to the bundle (use with --out)")
    p.add_argument("--overwrite", action="store_true", help="replace a task of the same name in the bundle")
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"  # type: ignore[assignment]
    try:
        return int(args.func(args))
    except EdgeEigenLoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
