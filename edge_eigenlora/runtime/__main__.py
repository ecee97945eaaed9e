"""`python -m edge_eigenlora.runtime` (`edge-eigenlora-device`): the device's command line, without torch.

edge-eigenlora-device tasks BUNDLE                                   # the tasks a bundle carries
edge-eigenlora-device run BUNDLE --task NAME --text "..." [--text ...] # predict
edge-eigenlora-device run BUNDLE --task NAME --file texts.txt|.csv|.jsonl
edge-eigenlora-device train BUNDLE --name NEW --train-file data.csv  # teach the device a new task
edge-eigenlora-device serve BUNDLE [--port 8765]                     # the web page + bundle on 127.0.0.1
edge-eigenlora-device generate BUNDLE --task NAME --prompt "..." [--prompt ...] [--stream] [--json]  # an LM
edge-eigenlora-device train BUNDLE --kind causal_lm --name NEW --train-file data.jsonl  # personalize an LM
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
MIN_LENGTH = 2  # [CLS] and [SEP]
# --max-length above this is refused without trying: a probe would cost O(L^2) memory
MAX_PROBE_LENGTH = 8192


def _bundle_kind(args: argparse.Namespace) -> str:
    """The bundle's kind (manifest field 'kind'), checked against what the command runs."""
    from edge_eigenlora import bundle as contract

    kind = contract.read_manifest(Path(args.bundle)).kind
    if args.command == "run" and kind == "causal_lm":
        raise EdgeEigenLoraError(
            f"{args.bundle} is a causal_lm bundle (a language model); `run` classifies texts with a classification "
            f"bundle. Generate text with: edge-eigenlora-device generate {args.bundle} --task NAME --prompt TEXT"
        )
    if args.command == "generate" and kind != "causal_lm":
        raise EdgeEigenLoraError(
            f"{args.bundle} is a {kind} bundle; `generate` needs a causal_lm bundle (a decoder language model "
            f"exported with its KV cache). Classify texts with: edge-eigenlora-device run {args.bundle} --task "
            "NAME --text TEXT"
        )
    wanted = getattr(args, "kind", None)
    if wanted is not None and wanted != kind:
        raise EdgeEigenLoraError(
            f"--kind {wanted}, but {args.bundle} is a {kind} bundle (its manifest's field 'kind'); give "
            f"--kind {kind} or leave --kind out (it is read from the bundle)."
        )
    return kind


def _runtime(args: argparse.Namespace) -> object:
    from dataclasses import replace

    from edge_eigenlora.runtime.session import DeviceRuntime, RuntimeOptions

    if args.max_length is not None and not MIN_LENGTH <= args.max_length <= MAX_PROBE_LENGTH:
        raise EdgeEigenLoraError(
            f"--max-length must be between {MIN_LENGTH} (the [CLS] and [SEP] tokens) and {MAX_PROBE_LENGTH}, "
            f"got {args.max_length}; leave it out to use the bundle's own limit."
        )
    # Training defaults to low memory (RuntimeOptions.low_memory: one copy of the weights for the inference and
    # train-step sessions; docs/runtime.md has its memory and step-time cost): on a phone memory is the
    # constraint. Inference keeps onnxruntime's defaults unless asked.
    low_memory = args.low_memory if args.low_memory is not None else args.command == "train"
    if low_memory:
        options = replace(RuntimeOptions.low_memory(args.threads), prefer_ort=args.prefer_ort)
    else:
        options = RuntimeOptions(threads=args.threads, arena=not args.no_arena, prefer_ort=args.prefer_ort)
    if _bundle_kind(args) == "causal_lm":
        from edge_eigenlora.runtime.generate import LMRuntime

        lm = LMRuntime(args.bundle, options=options, max_length=args.max_length, on_long=args.on_long)
        context = lm.decoder.max_positions
        if args.max_length is not None and args.max_length > context:
            raise EdgeEigenLoraError(
                f"--max-length {args.max_length} is more than the model's context of {context} positions "
                "(manifest field 'decoder.max_positions'); use at most that, or leave --max-length out."
            )
        return lm
    rt = DeviceRuntime(args.bundle, options=options, max_length=args.max_length, on_long=args.on_long)
    _check_max_length(rt, args.max_length)
    return rt


def _check_max_length(rt: object, max_length: int | None) -> None:
    """A --max-length above the bundle's is tried once on the inference graph: refused if the model fails."""
    import numpy as np

    from edge_eigenlora import bundle as contract

    manifest = rt.manifest  # type: ignore[attr-defined]
    own = manifest.tokenizer.max_length
    if max_length is None or max_length <= own or not manifest.has_graph(contract.SHARED):
        return
    feeds = {
        contract.INPUT_IDS: np.full((1, max_length), rt.tokenizer.pad_id or 0, np.int64),  # type: ignore[attr-defined]
        contract.ATTENTION_MASK: np.ones((1, max_length), np.int64),
        contract.COEFFICIENTS: np.zeros(manifest.layout.size, np.float32),
        contract.HEAD_WEIGHT: np.zeros((2, manifest.hidden_size), np.float32),
        contract.HEAD_BIAS: np.zeros(2, np.float32),
    }
    try:
        rt.session(contract.SHARED).run([contract.LOGITS], feeds)  # type: ignore[attr-defined]
    except Exception as exc:  # onnxruntime's error types vary; any failure here means "too long"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EdgeEigenLoraError(
            f"--max-length {max_length} is more than this bundle's model accepts: its graph fails on "
            f"{max_length} positions ({reason}). The bundle was exported for {own} tokens; use at most the "
            "model's position limit, or leave --max-length out."
        ) from None


def _read_texts(path: Path) -> list[str]:
    """Texts to run: .txt (one per non-blank line), .csv/.tsv with a 'text' column, or .jsonl with "text"."""
    import csv
    import io

    from edge_eigenlora.labelled_file import decode_text_file

    if not path.is_file():
        raise EdgeEigenLoraError(
            f"text file {path} does not exist or is not a file; give a .txt/.csv/.jsonl file."
        )
    content = decode_text_file(path, path.read_bytes())
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        texts = []
        for number, line in enumerate(content.splitlines(), start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                    text = record["text"]
                except (ValueError, KeyError, TypeError, RecursionError) as exc:
                    raise EdgeEigenLoraError(
                        f'{path}:{number}: expected an object with "text" ({str(exc)[:100]}).'
                    ) from None
                if not isinstance(text, str) or not text.strip():
                    raise EdgeEigenLoraError(f'{path}:{number}: field "text" is empty or not a string.')
                texts.append(text)
        return texts
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(content, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        try:
            if "text" not in (reader.fieldnames or []):
                raise EdgeEigenLoraError(
                    f"{path}: the header must name a 'text' column (found {(reader.fieldnames or [])[:10]})."
                )
            texts = []
            for row in reader:
                if not (row["text"] or "").strip():
                    raise EdgeEigenLoraError(f"{path}:{reader.line_num}: field 'text' is empty.")
                texts.append(row["text"])
            return texts
        except csv.Error as exc:
            raise EdgeEigenLoraError(
                f"{path}:{reader.line_num + 1}: not valid CSV ({exc}); a field over {csv.field_size_limit():,} "
                "characters, or an unclosed quote, causes this."
            ) from None
    return [line for line in content.splitlines() if line.strip()]


def _cmd_tasks(args: argparse.Namespace) -> int:
    rt = _runtime(args)
    rows = rt.list_tasks()  # type: ignore[attr-defined]
    if args.json:
        print(_json({"bundle": str(args.bundle), "graphs": rt.variants(), "tasks": rows}, indent=2))  # type: ignore[attr-defined]
        return 0
    print(f"bundle {args.bundle}: graphs {', '.join(rt.variants())}; {len(rows)} task(s)")  # type: ignore[attr-defined]
    for row in rows:
        if row.get("kind") == "causal_lm":
            print(f"  {row['name']:<24} language-model task")
            continue
        print(
            f"  {row['name']:<24} {row.get('num_labels') or '?':>3} labels  {_printable(', '.join(map(str, row.get('labels', [])))[:70])}"
        )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    texts = list(args.text or [])
    for i, text in enumerate(texts, start=1):
        if not text.strip():
            raise EdgeEigenLoraError(f"--text number {i} is empty; give the text to classify.")
    if args.file:
        texts += _read_texts(Path(args.file))
    if not texts:
        raise EdgeEigenLoraError("nothing to run: give --text TEXT (repeatable) or --file FILE.")
    rt = _runtime(args)
    loaded = rt.task(args.task)  # type: ignore[attr-defined]
    logits = rt.run(texts, task=loaded, batch_size=args.batch_size)  # type: ignore[attr-defined]
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    names = loaded.labels or [str(i) for i in range(loaded.num_labels)]
    for text, p in zip(texts, probs, strict=True):
        i = int(p.argmax())
        if args.json:
            print(
                _json(
                    {
                        "text": text,
                        "label": names[i],
                        "probability": round(float(p[i]), 6),
                        "scores": {n: round(float(v), 6) for n, v in zip(names, p, strict=True)},
                    }
                )
            )
        else:
            print(f"{_printable(names[i])}\t{p[i]:.3f}\t{_printable(text[:100])}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from edge_eigenlora.labelled_file import read_labelled_file
    from edge_eigenlora.runtime.trainer import GradientTrainer, write_task
    from edge_eigenlora.runtime.zeroth_order import ZerothOrderTrainer, ZOConfig

    if args.no_add and not args.out:
        raise EdgeEigenLoraError("--no-add without --out would throw the trained task away; pass --out FILE.")
    if args.max_steps is not None and args.max_steps < 1:
        raise EdgeEigenLoraError(
            f"--max-steps must be at least 1, got {args.max_steps}: with 0 nothing would be trained. Leave it "
            "out for the default."
        )
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise EdgeEigenLoraError(
            f"task file {args.out} already exists; choose another --out or pass --overwrite to replace it."
        )
    checkpoint = (
        _checkpoint_path(Path(args.bundle), Path(args.checkpoint))
        if args.checkpoint
        else Path(args.bundle) / ".checkpoints" / f"{args.name}.safetensors"
    )
    if _bundle_kind(args) == "causal_lm":
        return _train_lm(args, checkpoint)
    if args.chat is not None:
        raise EdgeEigenLoraError(
            "--chat/--no-chat format a language model's prompts; this is a classification bundle: leave it out."
        )
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
        if args.init_task:
            raise EdgeEigenLoraError(
                "--init-task continues a task with gradients: use it with --method grad."
            )
        config = ZOConfig(
            steps=args.max_steps or ZOConfig.steps,
            batch_size=args.batch_size,
            lr=args.lr or ZOConfig.lr,
            eval_every=args.eval_every or 50,
            patience=args.patience,
            seed=args.seed,
            validation_fraction=args.validation_fraction,
            max_seconds=args.max_seconds,
        )
        trainer = ZerothOrderTrainer(
            rt, args.name, (data.texts, data.labels), data.label_names, validation=validation, config=config
        )  # type: ignore[arg-type]
    else:
        config = _train_config(args)
        trainer = GradientTrainer(
            rt,
            args.name,
            (data.texts, data.labels),
            data.label_names,  # type: ignore[arg-type]
            validation=validation,
            config=config,
            checkpoint=checkpoint,
            resume=not args.no_resume,
            init_task=args.init_task,
        )
    print(
        f"training task {args.name!r} on {len(trainer.train)} examples ({len(trainer.val)} for validation), "
        f"{len(data.label_names)} labels, method {args.method}",
        file=sys.stderr,
        flush=True,
    )
    outcome = trainer.fit()
    written = write_task(rt, outcome.task, output=args.out, add_to_bundle=not args.no_add)  # type: ignore[arg-type]
    if args.method != "zo" and trainer.checkpoint is not None and trainer.checkpoint.exists():  # type: ignore[attr-defined]
        trainer.checkpoint.unlink()  # type: ignore[attr-defined]
    summary = {
        "task": args.name,
        "steps": outcome.steps,
        "best_step": outcome.best_step,
        "val_accuracy": outcome.best_metric,
        "seconds": round(outcome.seconds, 2),
        "resumed_from": outcome.resumed_from,
        "rollbacks": outcome.rollbacks,
        "written": written,
    }
    print(_json(summary))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from edge_eigenlora.runtime.serve import serve

    if not 0 <= args.port <= 65535:
        raise EdgeEigenLoraError(f"--port must be between 0 and 65535, got {args.port}.")
    return serve(args.bundle, args.port, args.web)


def _train_config(args: argparse.Namespace) -> object:
    from edge_eigenlora.runtime.trainer import DeviceTrainConfig

    return DeviceTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        accumulation=args.accumulation,
        lr=args.lr or DeviceTrainConfig.lr,
        head_lr=args.head_lr,
        max_steps=args.max_steps,
        eval_every=args.eval_every,
        patience=args.patience,
        checkpoint_every=args.checkpoint_every,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        head_init=args.head_init,
    )


def _train_lm(args: argparse.Namespace, checkpoint: Path) -> int:
    """`train` on a causal_lm bundle: JSONL of {"prompt", "completion"} or {"text"}, the LM trainer."""
    from edge_eigenlora.runtime.lm_trainer import LMTrainer, read_lm_file
    from edge_eigenlora.runtime.trainer import write_task

    if args.method != "grad":
        raise EdgeEigenLoraError(
            f"--method {args.method} trains classifiers; a causal_lm bundle trains with its train-step graph "
            "(--method grad, the default)."
        )
    if args.head_lr is not None or args.head_init != "random":
        raise EdgeEigenLoraError(
            "--head-lr and --head-init set a classifier's head; a language model's task has no head: leave them out."
        )
    rt = _runtime(args)
    if args.name in rt.manifest.tasks and not args.overwrite:  # type: ignore[attr-defined]
        raise EdgeEigenLoraError(
            f"task {args.name!r} already exists in {args.bundle}; choose another --name or pass --overwrite."
        )
    train = read_lm_file(args.train_file)
    validation = read_lm_file(args.validation_file) if args.validation_file else None
    trainer = LMTrainer(
        rt,  # type: ignore[arg-type]
        args.name,
        train,
        validation=validation,
        config=_train_config(args),  # type: ignore[arg-type]
        checkpoint=checkpoint,
        resume=not args.no_resume,
        init_task=args.init_task,
        chat=args.chat,
    )
    tokens = sum(trainer.train.weight(trainer.train.batch([i], 0)[2]) for i in range(len(trainer.train)))
    print(
        f"training language-model task {args.name!r} on {len(trainer.train)} examples ({tokens} completion "
        f"tokens; {len(trainer.val)} examples for validation), {trainer.total_steps} steps",
        file=sys.stderr,
        flush=True,
    )
    outcome = trainer.fit()
    written = write_task(rt, outcome.task, output=args.out, add_to_bundle=not args.no_add)  # type: ignore[arg-type]
    if trainer.checkpoint is not None and trainer.checkpoint.exists():
        trainer.checkpoint.unlink()
    summary = {
        "task": args.name,
        "kind": "causal_lm",
        "steps": outcome.steps,
        "best_step": outcome.best_step,
        "val_loss_before": outcome.task.info.get("val_loss_before"),
        "val_loss": outcome.best_metric,
        "seconds": round(outcome.seconds, 2),
        "resumed_from": outcome.resumed_from,
        "rollbacks": outcome.rollbacks,
        "written": written,
    }
    print(_json(summary))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import time

    from edge_eigenlora import bundle as contract
    from edge_eigenlora.runtime.sampling import GenerationConfig

    prompts = list(args.prompt or [])
    if not prompts:
        raise EdgeEigenLoraError("nothing to generate: give --prompt TEXT (repeatable).")
    for i, prompt in enumerate(prompts, start=1):
        if not prompt.strip():
            raise EdgeEigenLoraError(f"--prompt number {i} is empty; give the text to continue.")
    if args.tasks is not None and len(args.tasks) != len(prompts):
        raise EdgeEigenLoraError(
            f"--tasks lists {len(args.tasks)} tasks for {len(prompts)} prompts (--prompt); give one task per "
            "prompt, in order, or --task NAME for all of them."
        )
    for i, stop in enumerate(args.stop or [], start=1):
        if not stop:
            raise EdgeEigenLoraError(
                f"--stop number {i} is empty; an empty stop string would end every row at once: remove it."
            )
    if args.max_new_tokens < 1:
        raise EdgeEigenLoraError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if args.sample and not args.temperature > 0:
        raise EdgeEigenLoraError(
            f"--temperature must be > 0 with --sample, got {args.temperature}; for deterministic output leave "
            "--sample out (greedy)."
        )
    d = GenerationConfig()
    if not args.sample and (
        args.temperature != d.temperature or args.top_k != d.top_k or args.top_p != d.top_p
    ):
        print(
            "warning: --temperature, --top-k and --top-p apply only with --sample; generating greedily",
            file=sys.stderr,
        )
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=tuple(args.stop or ()),
        chat=False if args.no_chat else None,
    )
    rt = _runtime(args)
    context = rt.decoder.max_positions  # type: ignore[attr-defined]
    for i, prompt in enumerate(prompts, start=1):
        text, specials = rt.format_prompt(prompt, config.chat)  # type: ignore[attr-defined]
        enc = rt.tokenizer.encode_one(text, specials)  # type: ignore[attr-defined]
        n = f"more than {len(enc.ids)}" if enc.overflowing else str(len(enc.ids))
        if enc.overflowing or len(enc.ids) + args.max_new_tokens > context:
            raise EdgeEigenLoraError(
                f"--prompt number {i} has {n} tokens; with --max-new-tokens {args.max_new_tokens} it exceeds the "
                f"model's context of {context} positions: shorten the prompt or lower --max-new-tokens."
            )
    task = args.task if args.tasks is None else None
    names = args.tasks or [args.task] * len(prompts)
    # open the graph's session first, so the timings are generation's own
    manifest = rt.manifest  # type: ignore[attr-defined]
    per_row = args.tasks is not None and len(set(args.tasks)) > 1
    variant = contract.PER_ROW if per_row else contract.SHARED
    loading = time.perf_counter()
    if manifest.has_graph(variant):
        rt.session(variant)  # type: ignore[attr-defined]
    load_ms = (time.perf_counter() - loading) * 1e3
    start = time.perf_counter()
    stats: dict = {}
    texts, ids = [""] * len(prompts), [[] for _ in prompts]
    reasons = ["length"] * len(prompts)
    shown, several, finished = 0, len(prompts) > 1, [False] * len(prompts)
    if args.stream and not args.json and several:
        print(f"[prompt 1] {_printable(prompts[0][:60])}", flush=True)
    events = rt.stream(prompts, task=task, tasks=args.tasks, config=config, stats=stats)  # type: ignore[attr-defined]
    for event in events:
        row = event.row
        texts[row] += event.text
        ids[row].append(event.token_id)
        if event.finish_reason:
            reasons[row] = event.finish_reason
        if not args.stream:
            continue
        if args.json:
            print(
                _json(
                    {
                        "row": row,
                        "token_id": event.token_id,
                        "text": event.text,
                        "finish_reason": event.finish_reason,
                    }
                ),
                flush=True,
            )
            continue
        if row == shown:  # rows print in order: the first unfinished one live, later ones when reached
            print(event.text, end="", flush=True)
        if event.finish_reason:
            finished[row] = True
        while shown < len(prompts) and finished[shown]:
            shown += 1
            print(flush=True)
            if shown < len(prompts):
                print(f"[prompt {shown + 1}] {_printable(prompts[shown][:60])}", flush=True)
                print(texts[shown], end="", flush=True)
    total_ms = (time.perf_counter() - start) * 1e3
    steps = stats.get("step_ms", [])
    ms = {
        "prefill": round(float(stats.get("prefill_ms", 0.0)), 3),
        "per_token": round(sum(steps) / len(steps), 3) if steps else 0.0,
        "total": round(total_ms, 3),
    }
    if args.json:
        for i, prompt in enumerate(prompts):
            print(
                _json(
                    {
                        "prompt": prompt,
                        "task": names[i],
                        "text": texts[i],
                        "token_ids": ids[i],
                        "finish_reason": reasons[i],
                        "prompt_tokens": stats["prompt_tokens"][i],
                        "ms": ms,
                    }
                )
            )
    elif not args.stream:
        for i, text in enumerate(texts):
            if several:
                print(f"[prompt {i + 1}] {_printable(prompts[i][:60])}")
            print(text)
    generated = sum(len(r) for r in ids)
    print(
        f"{len(prompts)} prompt(s), {generated} tokens in {total_ms:.0f} ms (prefill {ms['prefill']:.1f} ms, "
        f"{ms['per_token']:.2f} ms per decode step; the session started in {load_ms:.0f} ms before)",
        file=sys.stderr,
    )
    return 0


def _printable(text: str) -> str:
    """Text for a terminal: control characters (escape sequences, carriage returns...) shown escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _json(obj: object, indent: int | None = None) -> str:
    """Strict JSON: NaN and +-Infinity (e.g. no validation accuracy) are written as null."""
    from edge_eigenlora.fileio import json_safe

    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def _checkpoint_path(bundle: Path, checkpoint: Path) -> Path:
    """A checkpoint lives outside the bundle or in its .checkpoints/ folder, never over the bundle's files;
    an existing file that is not a checkpoint is never overwritten (even with --no-resume)."""
    from edge_eigenlora.fileio import read_safetensors_header
    from edge_eigenlora.runtime.trainer import CHECKPOINT_FORMAT

    root, target = bundle.resolve(), checkpoint.resolve()  # resolve: a symlink cannot smuggle a path in
    own = root / ".checkpoints"
    if target.is_relative_to(root) and not (target.is_relative_to(own) and target != own):
        raise EdgeEigenLoraError(
            f"--checkpoint {checkpoint} is inside the bundle {bundle} but not in its .checkpoints/ folder: "
            "training would overwrite (and finally delete) a bundle file. Leave --checkpoint out (default "
            f"{bundle / '.checkpoints'}/NAME.safetensors) or choose a path outside the bundle."
        )
    if target.is_dir():
        raise EdgeEigenLoraError(f"--checkpoint {checkpoint} is a folder; give a file path.")
    if target.exists() and not target.is_relative_to(own):
        fix = (
            "If it is a checkpoint of yours that was cut short, delete it to start over; otherwise choose "
            "another --checkpoint path (training overwrites it and deletes it at the end)."
        )
        header = read_safetensors_header(target, "--checkpoint file", fix=fix)
        if header.metadata.get("format") != CHECKPOINT_FORMAT:
            raise EdgeEigenLoraError(
                f"--checkpoint {checkpoint} exists and is not a device training checkpoint "
                f"(format {header.metadata.get('format')!r}). {fix}"
            )
    return checkpoint


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
    p.add_argument(
        "--on-long",
        choices=("warn", "error", "silent"),
        default="warn",
        help="texts longer than the limit: truncate with a warning, refuse, or truncate silently",
    )


def build_parser() -> argparse.ArgumentParser:
    from edge_eigenlora.runtime.sampling import GenerationConfig
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

    p = sub.add_parser(
        "train",
        help="train a new task on the device: a classifier from labelled texts (CSV/JSONL), or a language model "
        'from JSONL of {"prompt", "completion"} or {"text"}',
    )
    _common(p)
    p.add_argument(
        "--kind",
        choices=("classification", "causal_lm"),
        default=None,
        help="the bundle's kind (default: read from its manifest; given, it is checked against it)",
    )
    p.add_argument("--name", required=True, help="name of the new task (letters, digits, . _ -)")
    p.add_argument(
        "--train-file",
        required=True,
        help='classifier: .csv/.tsv (header text,label) or .jsonl ({text, label}); causal_lm: .jsonl of {"prompt", '
        '"completion"} (loss on the completion) or {"text"} (loss on every token)',
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
    p.add_argument(
        "--method",
        choices=("grad", "zo"),
        default="grad",
        help="grad: the train-step graph (gradients); zo: forward-only SPSA/MeZO on the inference graph",
    )
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
    p.add_argument(
        "--head-init",
        choices=("random", "probe"),
        default=d.head_init,
        help="grad: random N(0, 0.02) head, or a ridge probe on the frozen embeddings",
    )
    p.add_argument("--checkpoint", help="checkpoint file (default: BUNDLE/.checkpoints/NAME.safetensors)")
    p.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, help="optimizer steps between checkpoints"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of init, split and shuffling")
    p.add_argument("--init-task", help="start from this task of the bundle instead of a zero delta (grad)")
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="causal_lm: format prompts with the bundle's chat template, as `generate` does (default: when the "
        "bundle has one)",
    )
    p.add_argument("--out", help="also write the task file here")
    p.add_argument("--no-add", action="store_true", help="do not add the task to the bundle (use with --out)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a task of the same name in the bundle (and the --out file)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "serve", help="serve the web page and this bundle on 127.0.0.1 (the browser as a device)"
    )
    p.add_argument("bundle", help="the bundle folder; only manifest.json and the files it lists are served")
    p.add_argument("--port", type=int, default=8765, help="TCP port on 127.0.0.1 (0: any free port)")
    p.add_argument("--web", type=Path, default=None, help="the page's folder (default: the checkout's web/)")
    p.set_defaults(func=_cmd_serve)

    g = GenerationConfig()
    p = sub.add_parser(
        "generate", help="generate text with a language-model bundle (one task, or one per prompt)"
    )
    _common(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--task", help="task name for every prompt (see `tasks`)")
    which.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help="one task per --prompt, in order (one batch, per-row graph)",
    )
    p.add_argument("--prompt", action="append", help="a prompt (repeatable: the prompts run as one batch)")
    p.add_argument(
        "--max-new-tokens", type=int, default=g.max_new_tokens, help="tokens to generate at most per prompt"
    )
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=g.temperature, help="sampling temperature (> 0)")
    p.add_argument("--top-k", type=int, default=g.top_k, help="sample among the k likeliest tokens (0: off)")
    p.add_argument("--top-p", type=float, default=g.top_p, help="nucleus sampling mass (1: off)")
    p.add_argument(
        "--repetition-penalty", type=float, default=g.repetition_penalty, help="transformers' rule (1: off)"
    )
    p.add_argument("--seed", type=int, default=g.seed, help="sampling seed")
    p.add_argument(
        "--stop", action="append", help="a string that ends a prompt's text (repeatable; cut before it)"
    )
    p.add_argument(
        "--no-chat",
        action="store_true",
        help="use the prompts as they are, without the bundle's chat template",
    )
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per prompt (text, token_ids, finish_reason, prompt_tokens, ms); with --stream, "
        "one per token first",
    )
    p.set_defaults(func=_cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error (bad input, permission denied, disk full) is one line and exit code 2."""
    from edge_eigenlora.errors import describe_os_error

    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"  # type: ignore[assignment]
    try:
        return int(args.func(args))
    except EdgeEigenLoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
