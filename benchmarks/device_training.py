"""On-device training on a real task with the real all-MiniLM-L6-v2: gradient vs forward-only (ZO), and the
device-trained task against the same task trained on the workstation (same data, same budget).

    .venv/bin/python benchmarks/device_training.py [--task sentiment_tweets_en] [--quick]

Writes benchmarks/results/device/training.json and training.md. The bundle (MiniLM + a basis from a synthetic
bank, rank 8, fp32 basis, shared + train_step graphs) is built once into ~/.cache/edge-eigenlora/device_bench.
Everything on the device side runs through edge_eigenlora.runtime (onnxruntime + numpy), one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import CACHE_ROOT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OUT = ROOT / "benchmarks" / "results" / "device"
CACHE = CACHE_ROOT / "device_bench"
MODULES = [f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")]


def ensure_bundle(cache: Path = CACHE) -> tuple[Path, Path]:
    """(bundle dir, basis file): MiniLM with shared + train_step graphs; built once (about 2-3 minutes)."""
    from edge_eigenlora import bundle

    bundle_dir, basis_path = cache / "bundle", cache / "basis.safetensors"
    if (bundle_dir / bundle.MANIFEST).exists():
        if bundle.read_manifest(bundle_dir).format_version == bundle.FORMAT_VERSION:
            return bundle_dir, basis_path
        import shutil

        shutil.rmtree(bundle_dir)  # written by an older version: rebuild in the current format
    from benchmarks.fixtures import write_peft_adapter
    from edge_eigenlora.adapters import load_bank
    from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
    from edge_eigenlora.export import ExportConfig, export_bundle
    from edge_eigenlora.pretrained import load_encoder

    rng = np.random.default_rng(0)
    dirs = []
    for i in range(4):
        mods = {
            m: (rng.standard_normal((8, 384)) * 0.05, rng.standard_normal((384, 8)) * 0.05) for m in MODULES
        }
        dirs.append(
            write_peft_adapter(
                cache / "bank" / f"task{i}",
                mods,
                r=8,
                alpha=16,
                base_model="sentence-transformers/all-MiniLM-L6-v2",
            )
        )
    basis = fit_basis(load_bank(dirs), SubspaceConfig(k=16), progress=False)
    save_basis(basis, basis_path)
    model, tokenizer = load_encoder()
    tmp = cache / "bundle.tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    config = ExportConfig(
        rank=8, variants=("shared",), basis_quant="none", max_length=64, ort_format=True, train_step=True
    )
    export_bundle(
        "sentence-transformers/all-MiniLM-L6-v2",
        basis_path,
        tmp,
        model=model,
        tokenizer=tokenizer,
        config=config,
    )
    tmp.rename(bundle_dir)
    return bundle_dir, basis_path


def _split(data, n_train: int, n_val: int, n_test: int) -> dict:
    return {
        "train": (list(data.train.texts[:n_train]), list(data.train.labels[:n_train])),
        "val": (list(data.validation.texts[:n_val]), list(data.validation.labels[:n_val])),
        "test": (list(data.test.texts[:n_test]), list(data.test.labels[:n_test])),
    }


def device_runs(bundle_dir: Path, split: dict, labels: list[str], args: argparse.Namespace) -> dict:
    from edge_eigenlora import bundle as bundle_mod
    from edge_eigenlora.runtime import DeviceRuntime, RuntimeOptions
    from edge_eigenlora.runtime.trainer import DeviceTrainConfig, GradientTrainer, evaluate, tokenize_examples
    from edge_eigenlora.runtime.zeroth_order import ZerothOrderTrainer, ZOConfig

    rt = DeviceRuntime(bundle_dir, options=RuntimeOptions(threads=1), on_long="silent")
    test = tokenize_examples(rt, *split["test"], len(labels), "test labels")
    curves: dict = {}

    def test_acc(params: dict) -> float:
        return evaluate(rt, params, test)["accuracy"]

    results = {}
    for name, head_init in (("gradient", "random"), ("gradient_probe_head", "probe")):
        cfg = DeviceTrainConfig(
            epochs=100,
            batch_size=args.batch_size,
            lr=5e-3,
            max_steps=args.grad_steps,
            eval_every=args.eval_every,
            patience=100,
            head_init=head_init,
        )
        trainer = GradientTrainer(
            rt, name, split["train"], labels, validation=split["val"], config=cfg, log=print
        )
        out = trainer.fit()
        results[name] = {
            "test_accuracy": test_acc(bundle_mod.task_feeds(out.task, rt.manifest)),
            "best_val": out.best_metric,
            "steps": out.steps,
            "seconds": out.seconds,
            "forward_equivalents_per_step": 3,
        }
        curves[name] = out.history
        print(name, results[name], flush=True)
    zo_hist = []

    def on_eval(step: int, params: dict, entry: dict) -> None:
        zo_hist.append({**entry, "test_accuracy": test_acc(params)})

    cfg = ZOConfig(
        steps=args.zo_steps,
        batch_size=args.batch_size,
        lr=args.zo_lr,
        eps=1e-3,
        eval_every=args.eval_every * 5,
        patience=100,
        head_init="probe",
    )
    zo = ZerothOrderTrainer(
        rt, "zo", split["train"], labels, validation=split["val"], config=cfg, callback=on_eval
    )
    out = zo.fit()
    results["zeroth_order"] = {
        "test_accuracy": test_acc(bundle_mod.task_feeds(out.task, rt.manifest)),
        "best_val": out.best_metric,
        "steps": out.steps,
        "seconds": out.seconds,
        "probe_only_test_accuracy": zo_hist[0]["test_accuracy"],
        "forward_equivalents_per_step": 2,
    }
    curves["zeroth_order"] = zo_hist
    print("zo", results["zeroth_order"], flush=True)
    majority = float(np.bincount(test.labels).max() / len(test))
    return {"results": results, "curves": curves, "majority": majority}


def parity(
    bundle_dir: Path, basis_path: Path, split: dict, labels: list[str], args: argparse.Namespace
) -> dict:
    """Same data, init, order and budget: workstation (torch, with and without dropout) vs device (ORT)."""
    import torch

    from edge_eigenlora import bundle as bundle_mod
    from edge_eigenlora.basis import load_basis
    from edge_eigenlora.model import TextClassifier, attach_basis, task_from_model
    from edge_eigenlora.pretrained import load_encoder
    from edge_eigenlora.runtime import DeviceRuntime, RuntimeOptions
    from edge_eigenlora.runtime.trainer import DeviceTrainConfig, GradientTrainer, evaluate, tokenize_examples
    from edge_eigenlora.train import TrainConfig, train_classifier

    torch.set_num_threads(1)
    basis = load_basis(basis_path)
    rt = DeviceRuntime(bundle_dir, options=RuntimeOptions(threads=1), on_long="silent", verify=False)
    test = tokenize_examples(rt, *split["test"], len(labels), "test labels")
    out: dict = {
        "config": {"epochs": args.parity_epochs, "batch_size": args.batch_size, "lr": 5e-3, "max_length": 64}
    }
    for seed in args.seeds:
        encoder, tokenizer = load_encoder()
        torch.manual_seed(seed)
        attach_basis(encoder, basis, rank=8, seed=seed)
        clf = TextClassifier(encoder, len(labels))
        init_task = task_from_model(clf, f"init{seed}", labels=labels)
        row = {}
        for dropout in (True, False):
            model = __import__("copy").deepcopy(clf)
            if not dropout:
                for m in model.modules():
                    if isinstance(m, torch.nn.Dropout):
                        m.p = 0.0
            cfg = TrainConfig(
                epochs=args.parity_epochs,
                batch_size=args.batch_size,
                lr=5e-3,
                max_length=64,
                patience=100,
                seed=seed,
                progress=False,
            )
            t0 = time.perf_counter()
            train_classifier(model, tokenizer, split["train"], split["val"], cfg)
            task = task_from_model(model, "ws", labels=labels)
            acc = evaluate(rt, bundle_mod.task_feeds(task, rt.manifest), test)["accuracy"]
            row["workstation_dropout" if dropout else "workstation_no_dropout"] = {
                "test_accuracy": acc,
                "seconds": time.perf_counter() - t0,
            }
            print(seed, dropout, acc, flush=True)
        cfg = DeviceTrainConfig(
            epochs=args.parity_epochs, batch_size=args.batch_size, lr=5e-3, patience=100, seed=seed
        )
        trainer = GradientTrainer(
            rt,
            "dev",
            split["train"],
            labels,
            validation=split["val"],
            config=cfg,
            init_task=init_task,
            log=print,
        )
        res = trainer.fit()
        row["device"] = {
            "test_accuracy": evaluate(rt, bundle_mod.task_feeds(res.task, rt.manifest), test)["accuracy"],
            "seconds": res.seconds,
            "steps": res.steps,
        }
        print(seed, "device", row["device"], flush=True)
        out[f"seed{seed}"] = row
    return out


def write_report(result: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# On-device training: {result['task']} (real all-MiniLM-L6-v2, onnxruntime 1 thread)",
        "",
        f"train/val/test = {result['sizes']}; majority class on test = {result['device']['majority']:.3f}.",
        "Basis: 16 directions per side fitted on a synthetic 4-adapter bank (rank 8); fp32 basis.",
        "",
        "## Gradient (train-step graph) vs forward-only (SPSA/MeZO, inference graph)",
        "",
        "| trainer | steps | wall s | best val | test acc |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["device"]["results"].items():
        lines.append(
            f"| {name} | {r['steps']} | {r['seconds']:.1f} | {r['best_val']:.3f} | {r['test_accuracy']:.3f} |"
        )
    zo = result["device"]["results"]["zeroth_order"]
    lines += [
        "",
        f"The ridge probe alone (ZO's starting point, forward passes only): test {zo['probe_only_test_accuracy']:.3f}.",
        "",
        "Accuracy against steps and wall time (validation; ZO rows also test):",
        "",
        "| trainer | step | seconds | val acc | test acc |",
        "|---|---|---|---|---|",
    ]
    for name, hist in result["device"]["curves"].items():
        for h in hist:
            if "val_accuracy" in h:
                lines.append(
                    f"| {name} | {h['step']} | {h['seconds']:.1f} | {h['val_accuracy']:.3f} | "
                    f"{h.get('test_accuracy', float('nan')):.3f} |"
                )
    if "parity" in result:
        lines += [
            "",
            "## Device vs workstation (same data, init, shuffling and budget)",
            "",
            "| seed | workstation (dropout 0.1, its recipe) | workstation (no dropout) | device (ORT, no dropout) |",
            "|---|---|---|---|",
        ]
        for key, row in result["parity"].items():
            if key.startswith("seed"):
                lines.append(
                    f"| {key[4:]} | {row['workstation_dropout']['test_accuracy']:.3f} | "
                    f"{row['workstation_no_dropout']['test_accuracy']:.3f} | {row['device']['test_accuracy']:.3f} |"
                )
    (OUT / "training.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="sentiment_tweets_en", help="a task of edge_eigenlora.datasets")
    p.add_argument("--train", type=int, default=480, help="training examples")
    p.add_argument("--val", type=int, default=120, help="validation examples")
    p.add_argument("--test", type=int, default=400, help="test examples")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (all trainers)")
    p.add_argument("--grad-steps", type=int, default=90, help="gradient trainer steps")
    p.add_argument("--zo-steps", type=int, default=400, help="zeroth-order steps")
    p.add_argument("--zo-lr", type=float, default=3e-2, help="zeroth-order learning rate")
    p.add_argument("--eval-every", type=int, default=10, help="gradient steps between validations (ZO: 5x)")
    p.add_argument(
        "--parity-epochs", type=int, default=3, help="epochs for the workstation/device parity runs"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the parity runs")
    p.add_argument("--skip-parity", action="store_true", help="only the device trainers")
    p.add_argument("--skip-device", action="store_true", help="only the parity runs")
    args = p.parse_args()
    from edge_eigenlora.datasets import load_task

    bundle_dir, basis_path = ensure_bundle()
    data = load_task(args.task, seed=0)
    split = _split(data, args.train, args.val, args.test)
    labels = list(data.label_names)
    previous = json.loads((OUT / "training.json").read_text()) if (OUT / "training.json").exists() else {}
    result = {
        "task": args.task,
        "sizes": [len(split[k][0]) for k in ("train", "val", "test")],
        "args": vars(args),
    }
    result["device"] = (
        previous.get("device") if args.skip_device else device_runs(bundle_dir, split, labels, args)
    )
    if not args.skip_parity:
        result["parity"] = parity(bundle_dir, basis_path, split, labels, args)
    elif "parity" in previous:
        result["parity"] = previous["parity"]
    write_report(result)
    print((OUT / "training.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
