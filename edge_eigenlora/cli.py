"""`edge-eigenlora`: one subcommand per workstation stage.

edge-eigenlora fit ADAPTER_DIR... --out basis.safetensors     # the shared subspace of a bank
    [--engine dask --workers N | --scheduler ADDRESS] [--skip-bad]  # (folder trees, list files, URLs)
edge-eigenlora inspect basis.safetensors [--plot ev.png]      # what a basis holds
edge-eigenlora train --basis B --task NAME|--train-file F      # coefficients (+ head) for a new task
edge-eigenlora compress --basis B ADAPTER_DIR...               # bank adapters -> coefficients + error
edge-eigenlora to-peft --basis B --task T.safetensors --out D  # any task -> a standard PEFT folder
edge-eigenlora build-bank --tasks A B ... --cache-dir D        # train real PEFT LoRA adapters
edge-eigenlora data                                            # list the real tasks installed here
edge-eigenlora demo                                            # the whole product on the real MiniLM
edge-eigenlora demo-lm                                         # a decoder LM (SmolLM2) on the device
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["build_parser", "main"]


def _adapter_dirs(paths: Sequence[str]) -> list[Path]:
    """Adapter folders as given; a folder that is not itself an adapter stands for its adapter subfolders."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not (path / "adapter_config.json").exists():
            children = sorted(p for p in path.iterdir() if (p / "adapter_config.json").is_file())
            if not children:
                raise EdgeEigenLoraError(f"{path} holds no PEFT adapter folders (no */adapter_config.json).")
            out.extend(children)
        else:
            out.append(path)
    return out


def _refuse_existing_file(path: str | Path, what: str, overwrite: bool = False) -> None:
    """Nothing existing is replaced without --overwrite (checked before any work is done)."""
    path = Path(path)
    if path.is_dir():
        raise EdgeEigenLoraError(f"{path} is a folder; give a file name for the {what}.")
    if path.exists() and not overwrite:
        raise EdgeEigenLoraError(
            f"{what} {path} already exists; choose another path or pass --overwrite to replace it."
        )


def _cmd_fit(args: argparse.Namespace) -> int:
    from edge_eigenlora.basis import (
        SubspaceConfig,
        fit_basis,
        plot_explained_variance,
        save_basis,
        variance_report,
    )

    if args.k is not None and args.variance_threshold is not None:
        raise EdgeEigenLoraError(
            "--k and --variance-threshold both choose the number of directions; give only one of them."
        )
    _refuse_existing_file(args.out, "basis file", args.overwrite)
    config = SubspaceConfig(
        method=args.method,
        k=None
        if args.variance_threshold is not None
        else (args.k if args.k is not None else SubspaceConfig.k),
        variance_threshold=args.variance_threshold,
        augment=args.augment,
        seed=args.seed,
        clip_k=args.clip_k,
        solver=args.solver,
        solver_tol=args.solver_tol,
    )
    if args.engine == "single" and (args.scheduler or args.workers):
        raise EdgeEigenLoraError("--scheduler and --workers belong to --engine dask; add --engine dask.")
    if args.trust_pickle:  # pickled adapters are read eagerly by load_bank (never by the streamed sources)
        from edge_eigenlora.adapters import load_bank

        bank, skipped = load_bank(_adapter_dirs(args.adapters), trust_pickle=True), {}
    else:
        from edge_eigenlora.bank_sources import open_bank

        opened = open_bank(args.adapters, skip_bad=args.skip_bad, progress=True)
        bank, skipped = opened.bank, opened.skipped
    for module, names in bank.missing().items():
        print(f"note: {module} is missing from {', '.join(names)}; its basis uses the other adapters")
    if args.engine == "dask":
        from edge_eigenlora.distributed_fit import fit_basis_dask

        basis = fit_basis_dask(
            bank,
            config,
            scheduler=args.scheduler,
            workers=None if args.scheduler else (args.workers or 2),
            skip_bad=args.skip_bad,
            skipped=skipped,
        )
    else:
        basis = fit_basis(bank, config, skip_bad=args.skip_bad, skipped=skipped)
    save_basis(basis, args.out)
    for name, why in basis.skipped.items():
        print(f"skipped {name}: {why}")
    rows = variance_report(basis)
    print(f"basis {basis.short_id} from {len(basis.bank)} adapters, {len(rows)} modules -> {args.out}")
    if basis.skipped:
        print(
            f"{len(basis.skipped)} bad adapter(s) left out (--skip-bad); listed in the basis metadata 'skipped'"
        )
    print(
        f"mean explained variance at k: A {sum(r['explained_A'] for r in rows) / len(rows):.3f}, "
        f"B {sum(r['explained_B'] for r in rows) / len(rows):.3f}"
    )
    if args.plot:
        print(f"plot -> {plot_explained_variance(basis, args.plot)}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from edge_eigenlora.basis import load_basis, plot_explained_variance, variance_report

    basis = load_basis(args.basis)
    rows = variance_report(basis)
    if args.json:
        from edge_eigenlora.fileio import json_safe

        print(
            json.dumps(
                json_safe(
                    {
                        "fingerprint": basis.fingerprint,
                        "config": basis.config.__dict__,
                        "base_model": basis.base_model,
                        "bank": list(basis.bank),
                        "modules": rows,
                    }
                ),
                indent=2,
                allow_nan=False,
            )
        )
    else:
        c = basis.config
        print(f"basis {basis.fingerprint}")
        print(
            f"base model {basis.base_model}; method {c.method}; k {c.k}; threshold {c.variance_threshold}; "
            f"augment {c.augment}; bank of {len(basis.bank)}: {', '.join(basis.bank)}"
        )
        print(f"{'module':48s} {'k':>3s} {'p':>3s} {'EV A':>6s} {'EV B':>6s} {'adapters':>8s}")
        for r in rows:
            print(
                f"{r['module']:48s} {r['k']:3d} {r['p']:3d} {r['explained_A']:6.3f} {r['explained_B']:6.3f} "
                f"{r['adapters']:8d}"
            )
    if args.plot:
        print(f"plot -> {plot_explained_variance(basis, args.plot)}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from edge_eigenlora.basis import load_basis
    from edge_eigenlora.task import save_task
    from edge_eigenlora.train import TrainConfig, evaluate_classifier, train_task

    basis = load_basis(args.basis)
    if (args.task is None) == (args.train_file is None):
        raise EdgeEigenLoraError(
            "give exactly one of --task (a packaged task name) and --train-file (CSV/JSONL)."
        )
    test = None
    if args.task:
        from edge_eigenlora import datasets

        data = datasets.load_task(args.task, seed=args.seed, max_per_class=args.max_per_class)
        train, val = (data.train.texts, data.train.labels), (data.validation.texts, data.validation.labels)
        test, labels, name = (data.test.texts, data.test.labels), list(data.label_names), args.task
    else:
        from edge_eigenlora.labelled_file import read_labelled_file

        examples = read_labelled_file(args.train_file)
        tr, va = examples.split(args.validation_fraction, args.seed)
        train, val, labels = (tr.texts, tr.labels), (va.texts, va.labels), examples.label_names
        name = args.name or Path(args.train_file).stem
    out_path = args.out or f"{args.name or name}.safetensors"
    _refuse_existing_file(out_path, "task file", args.overwrite)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        max_length=args.max_length,
        patience=args.patience,
        eval_every=args.eval_every,
        max_steps=args.max_steps,
        seed=args.seed,
    )
    task, classifier, tokenizer, result = train_task(
        basis,
        train,
        val,
        labels,
        name=args.name or name,
        model_name=args.model,
        rank=args.rank,
        init=args.init,
        config=config,
    )
    if test is not None:
        task.info["test_accuracy"] = evaluate_classifier(
            classifier, tokenizer, *test, max_length=args.max_length
        )["accuracy"]
    out = save_task(task, out_path)
    print(
        f"task {task.name}: {task.num_parameters(False):,} coefficients + {task.num_parameters() - task.num_parameters(False):,} "
        f"head parameters; best validation accuracy {result.best_metric:.3f} at step {result.best_step}"
        + (f"; test accuracy {task.info['test_accuracy']:.3f}" if test is not None else "")
        + f" -> {out}"
    )
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from edge_eigenlora.adapters import load_bank
    from edge_eigenlora.basis import load_basis
    from edge_eigenlora.compress import compress_bank
    from edge_eigenlora.fileio import write_json_atomic
    from edge_eigenlora.task import save_task

    basis = load_basis(args.basis)
    bank = load_bank(_adapter_dirs(args.adapters), trust_pickle=args.trust_pickle)
    out = Path(args.out_dir)
    names = [a.name for a in bank.adapters]
    for target in [out / f"{n}.safetensors" for n in names] + [out / "compression.json"]:
        _refuse_existing_file(target, "output file", args.overwrite)
    report = {}
    for result in compress_bank(bank, basis):
        path = save_task(result.task, out / f"{result.adapter}.safetensors")
        lora_bytes = sum(f.size * 4 for pair in result.task.coefficients.values() for f in pair)
        report[result.adapter] = {
            "mean_relative_error": result.mean_error,
            "per_module": result.errors,
            "file": str(path),
        }
        print(
            f"{result.adapter:32s} relative delta-W error {result.mean_error:.4f}  ({lora_bytes:,} coefficient bytes)"
        )
    write_json_atomic(out / "compression.json", report)
    print(f"tasks and compression.json -> {out}")
    return 0


def _cmd_to_peft(args: argparse.Namespace) -> int:
    from edge_eigenlora.basis import load_basis
    from edge_eigenlora.compress import task_to_peft
    from edge_eigenlora.task import load_task

    basis = load_basis(args.basis)
    task = load_task(args.task, expected_basis=basis.fingerprint)
    out = task_to_peft(task, basis, args.out, base_model=args.base_model, overwrite=args.overwrite)
    print(f"PEFT LoRA folder -> {out}")
    return 0


def _cmd_build_bank(args: argparse.Namespace) -> int:
    from edge_eigenlora import datasets
    from edge_eigenlora.bank import LoraSpec, build_bank
    from edge_eigenlora.train import TrainConfig

    targets = "all-linear" if args.all_linear else tuple(args.target_modules)
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        head_lr=args.head_lr,
        max_length=args.max_length,
        patience=args.patience,
        eval_every=args.eval_every,
        max_steps=args.max_steps,
    )
    folders = build_bank(
        args.model,
        args.tasks,
        args.cache_dir,
        spec=LoraSpec(r=args.r, alpha=args.alpha, target_modules=targets),
        config=config,
        load=lambda name, seed: datasets.load_task(name, seed=seed, max_per_class=args.max_per_class),
    )
    print("\n".join(str(f) for f in folders))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from edge_eigenlora import datasets

    return datasets.main(["list"])


def _cmd_demo_lm(args: argparse.Namespace) -> int:
    from edge_eigenlora.demo_lm import run_demo_lm

    run_demo_lm(args.out_dir, args.cache_dir)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from edge_eigenlora.demo import run_demo

    run_demo(args.out_dir, args.cache_dir)
    return 0


def _add_train_flags(p: argparse.ArgumentParser, *, lr: float | None = None) -> None:
    """Training flags whose defaults are the library's (TrainConfig), so the CLI and the API train alike."""
    from edge_eigenlora.train_config import TrainConfig

    d = TrainConfig()
    p.add_argument(
        "--epochs", type=int, default=d.epochs, help="upper bound on epochs (early stopping ends sooner)"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per step")
    p.add_argument("--lr", type=float, default=lr or d.lr, help="learning rate of the adapter parameters")
    p.add_argument(
        "--head-lr",
        type=float,
        default=d.head_lr,
        help="learning rate of the classification head (default: --lr)",
    )
    p.add_argument(
        "--max-length", type=int, default=d.max_length, help="tokens per text; longer texts are truncated"
    )
    p.add_argument(
        "--patience", type=int, default=d.patience, help="evaluations without improvement before stopping"
    )
    p.add_argument(
        "--eval-every", type=int, default=None, help="steps between evaluations (default: each epoch)"
    )
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps")
    p.add_argument(
        "--max-per-class", type=int, default=600, help="with a packaged task: examples kept per class"
    )


def build_parser() -> argparse.ArgumentParser:
    from edge_eigenlora.basis import METHODS, SubspaceConfig

    parser = argparse.ArgumentParser(
        prog="edge-eigenlora",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fit", help="fit the shared subspace (basis) of a bank of PEFT LoRA adapters")
    p.add_argument(
        "adapters",
        nargs="+",
        help="PEFT adapter folders, folder trees that contain them, list files (one location per line) or "
        "fsspec URLs of any of these; read lazily, one module at a time",
    )
    p.add_argument("--out", required=True, help="basis file to write (.safetensors)")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="gauge_free",
        help="gauge_free: SVD-balanced factors per adapter (default); factors: the paper's raw stacking",
    )
    p.add_argument(
        "--k",
        type=int,
        default=None,
        help=f"principal directions per module and side (default {SubspaceConfig.k})",
    )
    p.add_argument(
        "--variance-threshold",
        type=float,
        default=None,
        help="instead of --k: smallest k per module reaching this explained variance (0-1]",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--augment", type=int, default=0, help="extra random directions orthogonal to the basis")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation directions")
    p.add_argument(
        "--clip-k", action="store_true", help="clip k to what the bank supports instead of refusing"
    )
    p.add_argument("--plot", default=None, help="also draw explained variance per module to this PNG")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow adapter_model.bin files (loaded with torch.load(weights_only=True)); reads the bank eagerly",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out (and report) adapters that are corrupt, hold NaN/Inf, disagree in shape or name another "
        "base model, instead of stopping at the first",
    )
    p.add_argument(
        "--engine",
        choices=("single", "dask"),
        default="single",
        help="single: this process, one module at a time (default); dask: spread over a Dask cluster",
    )
    p.add_argument(
        "--scheduler", default=None, help="with --engine dask: address of a running Dask scheduler"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="with --engine dask: start a local cluster of N workers (default 2)",
    )
    p.add_argument(
        "--solver",
        choices=("iterative", "exact"),
        default="iterative",
        help="top-k eigensolver of wide stacks: iterative (falls back to exact, with a warning, when it does "
        "not converge) or exact",
    )
    p.add_argument(
        "--solver-tol",
        type=float,
        default=1e-8,
        help="convergence tolerance of the iterative solver (relative Ritz residual, default 1e-8)",
    )
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("inspect", help="print what a basis file holds")
    p.add_argument("basis", help="basis file (.safetensors)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", default=None, help="draw explained variance to this PNG")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("train", help="train coefficients (+ head) for a new classification task")
    p.add_argument("--basis", required=True, help="basis file")
    p.add_argument("--task", default=None, help="a packaged real task (see `edge-eigenlora data`)")
    p.add_argument("--train-file", default=None, help="your labelled texts: CSV/TSV (text,label) or JSONL")
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=0.15,
        help="with --train-file: held out for early stopping",
    )
    p.add_argument("--name", default=None, help="task name (default: the task or file name)")
    p.add_argument("--model", default=None, help="base model folder or id (default: the basis' base model)")
    p.add_argument("--rank", type=int, default=8, help="coefficient rank r: alpha_A, alpha_B are (k+p) x r")
    p.add_argument(
        "--init",
        choices=("zero", "bank"),
        default="bank",
        help="zero: delta W starts at 0; bank (default): start from the bank's average adapter, the part of a "
        "bank that carried over in the benchmarks (README: Defaults and where they come from)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of data split, init and shuffling")
    p.add_argument("--out", default=None, help="task file to write (default: NAME.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing task file")
    _add_train_flags(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("compress", help="project bank adapters onto a basis: coefficients + delta-W error")
    p.add_argument("adapters", nargs="+", help="PEFT adapter folders, or folders that contain them")
    p.add_argument("--basis", required=True, help="basis file")
    p.add_argument(
        "--out-dir", required=True, help="folder for <adapter>.safetensors task files and compression.json"
    )
    p.add_argument("--trust-pickle", action="store_true", help="allow adapter_model.bin files (weights_only)")
    p.add_argument("--overwrite", action="store_true", help="replace task files already in --out-dir")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("to-peft", help="write a task (trained or projected) as a standard PEFT LoRA folder")
    p.add_argument("--basis", required=True, help="the basis the task belongs to")
    p.add_argument("--task", required=True, help="task file (.safetensors)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument(
        "--base-model", default=None, help="base_model_name_or_path to record (default: the basis')"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing PEFT adapter folder (the new one is written aside, then swapped in)",
    )
    p.set_defaults(func=_cmd_to_peft)

    p = sub.add_parser("build-bank", help="train real PEFT LoRA adapters for packaged tasks (resumable)")
    p.add_argument("--tasks", nargs="+", required=True, help="packaged task names")
    p.add_argument(
        "--cache-dir", required=True, help="adapters go to CACHE_DIR/<task>; finished ones are skipped"
    )
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="base model")
    p.add_argument("--r", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=int, default=16, help="LoRA alpha")
    p.add_argument("--target-modules", nargs="+", default=["query", "value"], help="module name suffixes")
    p.add_argument("--all-linear", action="store_true", help="adapt every Linear layer instead")
    _add_train_flags(p, lr=1e-3)
    p.set_defaults(func=_cmd_build_bank)

    from edge_eigenlora.export_cli import add_export_commands

    add_export_commands(sub)

    p = sub.add_parser("data", help="list the real labelled tasks installed on this machine")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser(
        "demo",
        help="the whole product end to end on the real all-MiniLM-L6-v2: bank, basis, new task, phone bundle, "
        "device runtime, task switch, training on the device",
    )
    p.add_argument(
        "--out-dir", default="out/demo", help="where the basis, tasks, bundles, plot and summary go"
    )
    p.add_argument("--cache-dir", default=None, help="adapter cache (default ~/.cache/edge-eigenlora/demo)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "demo-lm",
        help="the decoder-LM demo on the real SmolLM2-135M: bank, basis, KV-cache bundle, per-row generation, "
        "personalization on the device",
    )
    p.add_argument("--out-dir", default="out/demo_lm", help="where the basis, tasks, bundle and summary go")
    p.add_argument(
        "--cache-dir", default=None, help="LM bank cache (default ~/.cache/edge-eigenlora/demo_lm)"
    )
    p.set_defaults(func=_cmd_demo_lm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a user error (bad input, permission denied, disk full) is one line and exit code 2."""
    from edge_eigenlora.errors import describe_os_error

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EdgeEigenLoraError as exc:
        print(f"edge-eigenlora {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edge-eigenlora {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
