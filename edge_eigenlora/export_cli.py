"""CLI for the export stage: `edge-eigenlora export ...` and `edge-eigenlora bundle verify|add-task|list ...`.

`add_export_commands(subparsers)` registers both (cli.py calls it); each parser sets `func(args) -> int`.
Recipes (export/*.json) give an ExportConfig per device target; flags given on the command line override them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["RECIPE_FORMAT", "add_export_commands", "load_recipe"]

RECIPE_FORMAT = "edge-eigenlora-export-recipe"


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe JSON file: {"format", "target", "description", "config": {ExportConfig fields}}."""
    from edge_eigenlora.export import ExportConfig

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgeEigenLoraError(f"recipe {path}: cannot be read as JSON ({exc}).") from exc
    if data.get("format") != RECIPE_FORMAT:
        raise EdgeEigenLoraError(f"recipe {path}: field 'format' must be {RECIPE_FORMAT!r}.")
    allowed = {f.name for f in fields(ExportConfig)}
    config = dict(data.get("config", {}))
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise EdgeEigenLoraError(
            f"recipe {path}: unknown config fields {unknown}; allowed: {sorted(allowed)}."
        )
    if "variants" in config:
        config["variants"] = tuple(config["variants"])
    config.setdefault("target", data.get("target", path.stem))
    return config


def _config(args: argparse.Namespace) -> Any:
    from edge_eigenlora.export import ExportConfig

    values: dict[str, Any] = load_recipe(args.recipe) if args.recipe else {}
    overrides = dict(
        rank=args.rank,
        kind=args.kind,
        basis_quant=args.basis_quant,
        base_quant=args.base_quant,
        precision=args.precision,
        block_size=args.block_size,
        ort_format=args.ort_format,
        onnx_adapters=args.onnx_adapters,
        merged_task=args.merged_task,
        max_length=args.max_length,
        train_step=args.train_step,
        variants=tuple(args.variant) if args.variant else None,
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ExportConfig(**values)


def _cmd_export(args: argparse.Namespace) -> int:
    from edge_eigenlora.export import derive_bundle, export_bundle

    config = _config(args)
    if args.from_bundle:
        out = derive_bundle(args.from_bundle, args.out, config=config)
    else:
        if not args.model or not args.basis:
            raise EdgeEigenLoraError(
                "export: give --model and --basis (or --from-bundle to re-quantize a bundle)."
            )
        out = export_bundle(args.model, args.basis, args.out, config=config, tasks=args.task or [])
    return _cmd_list(argparse.Namespace(bundle=out, json=False), header=f"bundle written: {out}")


def _cmd_verify(args: argparse.Namespace) -> int:
    from edge_eigenlora.bundle import verify_bundle

    manifest = verify_bundle(args.bundle)
    graphs = ", ".join(f"{g.variant} ({g.quantization.basis}/{g.quantization.base})" for g in manifest.graphs)
    print(
        f"OK {args.bundle}: {len(manifest.files)} files checked; graphs: {graphs}; tasks: {len(manifest.tasks)}"
    )
    return 0


def _cmd_add_task(args: argparse.Namespace) -> int:
    from edge_eigenlora.bundle import add_task

    name = add_task(args.bundle, args.task, name=args.name, overwrite=args.overwrite)
    print(f"added task {name!r} to {args.bundle}")
    return 0


def _cmd_list(args: argparse.Namespace, header: str | None = None) -> int:
    from edge_eigenlora.bundle import list_tasks

    rows = list_tasks(args.bundle)
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return 0
    if header:
        print(header)
    for row in rows:
        print(f"{row['name']}\t{row['kind']}\tlabels={row.get('num_labels')}\t{row['file']}")
    return 0


def add_export_commands(subparsers: Any) -> None:
    """Register `export` and `bundle {verify,add-task,list}` on an argparse subparsers object."""
    from edge_eigenlora.export import QUANT_MODES, VARIANTS

    p = subparsers.add_parser(
        "export",
        help="export a model + basis to an ONNX bundle (graphs, manifest, tasks)",
        description="Export the inference graph(s) of a model with a basis attached into a bundle folder. "
        "A --recipe (export/*.json) sets a device target's options; flags override it.",
    )
    p.add_argument("--model", help="transformers model folder or packaged model id (e.g. all-MiniLM-L6-v2)")
    p.add_argument("--basis", help="basis file (.safetensors) from `edge-eigenlora fit`")
    p.add_argument("--out", required=True, help="new bundle folder (must not hold a bundle yet)")
    p.add_argument("--task", action="append", help="task file to include (repeatable)")
    p.add_argument(
        "--recipe", help="device recipe JSON (export/phone.json, export/jetson.json, export/desktop.json)"
    )
    p.add_argument("--from-bundle", help="derive from an fp32 bundle instead of exporting from torch again")
    p.add_argument("--rank", type=int, help="coefficient rank r of every task (default 8)")
    p.add_argument(
        "--kind", choices=["auto", "classification", "causal_lm"], help="graph kind (default auto)"
    )
    p.add_argument(
        "--variant",
        action="append",
        choices=VARIANTS,
        help="graph variant to build (repeatable; default shared). factored: the factors are inputs, formed once "
        "per task switch by a small factors graph written with it: what unmerged LoRA costs, no more; the Python "
        "device runtime prefers it for one-task batches (the Android core and the web page run shared)",
    )
    p.add_argument("--merged-task", help="task name folded into the 'merged' variant")
    p.add_argument(
        "--basis-quant",
        choices=QUANT_MODES,
        help="basis: none, int8 (DequantizeLinear) or int4 (MatMulNBits); default int8",
    )
    p.add_argument(
        "--base-quant",
        choices=QUANT_MODES,
        help="base model: none, int8 (dynamic; weight-only for a decoder LM) or int4 (MatMulNBits); embeddings "
        "too; default none",
    )
    p.add_argument(
        "--precision", choices=["fp32", "fp16"], help="fp16 for GPU execution providers (default fp32)"
    )
    p.add_argument("--block-size", type=int, choices=[16, 32, 64, 128], help="4-bit block size (default 32)")
    p.add_argument(
        "--ort-format",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write .ort files + required-operators config for ORT Mobile",
    )
    p.add_argument(
        "--onnx-adapters",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write tasks as ONNX Runtime .onnx_adapter files",
    )
    p.add_argument(
        "--train-step",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write the train-step graph (loss + gradients) for training on the device",
    )
    p.add_argument(
        "--max-length", type=int, help="tokenizer truncation length recorded in the manifest (default 128)"
    )
    p.set_defaults(func=_cmd_export)

    b = subparsers.add_parser(
        "bundle",
        help="check a bundle, add tasks to it, list its tasks",
        description="Work with an existing bundle folder without re-exporting its graphs.",
    )
    bsub = b.add_subparsers(dest="bundle_command", required=True)
    v = bsub.add_parser("verify", help="check the manifest, every file's sha256 and every task")
    v.add_argument("bundle", help="bundle folder")
    v.set_defaults(func=_cmd_verify)
    a = bsub.add_parser(
        "add-task", help="add a task file (tasks/<name>.safetensors); the graphs are untouched"
    )
    a.add_argument("bundle", help="bundle folder")
    a.add_argument("task", help="task file (.safetensors) trained on the bundle's basis")
    a.add_argument("--name", help="name in the bundle (default: the task's own name)")
    a.add_argument("--overwrite", action="store_true", help="replace a task of the same name")
    a.set_defaults(func=_cmd_add_task)
    ls = bsub.add_parser("list", help="list the bundle's tasks")
    ls.add_argument("bundle", help="bundle folder")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=_cmd_list)
