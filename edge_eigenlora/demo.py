"""`make demo`: the whole product on the real all-MiniLM-L6-v2 and real tasks, no arguments needed.

Workstation (torch):
1. a bank of real PEFT LoRA adapters, one per bank task (trained by the project, cached);
2. the shared subspace of the bank (basis file + explained-variance plot);
3. compression of the bank onto the basis (relative delta-W error per adapter);
4. a task NOT in the bank, learned three ways with the same data and budget: EigenLoRAx coefficients,
   a LoRA r=8 (written with PEFT's save_pretrained), and the head alone; printed side by side.
Device (`demo_device`; everything after the export runs in processes where torch cannot be imported):
5. export the phone bundle (int8 base, int8 basis, .ort, train-step graph) with the held-out task and one
   compressed bank task, and the fp32 export of the same graph for the size comparison;
6. verify the bundle (sha256 of every file, every task against the basis);
7. the device runtime: test accuracy of both tasks, the task-switch cost, the first run on a new session;
8. train a new task on the device from a CSV with the gradient trainer (`edge-eigenlora-device train`);
9. the final table (sizes, task bytes, accuracy, switch cost, training peak RSS); all in summary.json.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_eigenlora.basis import SubspaceConfig
from edge_eigenlora.demo_device import DeviceDemoConfig

__all__ = ["DEMO_BANK", "DEMO_HELD_OUT", "DemoConfig", "run_demo"]

DEMO_BANK = (
    "topic_fortunes_en_subjects",
    "semantic_verb_category",
    "langid_chatterbot_latin",
    "style_health_tweets_print",
    "topic_news_outlet_en",
)
DEMO_HELD_OUT = "sentiment_tweets_en"
DEMO_SECOND = (
    "langid_chatterbot_latin"  # the bank task whose compressed coefficients ship beside the held-out task
)
DEMO_DEVICE_TASK = (
    "semantic_pos_from_gloss"  # trained on the device; in neither the bank nor the held-out set
)
TOTAL_STEPS = 9


@dataclass(frozen=True)
class DemoConfig:
    bank_tasks: tuple[str, ...] = DEMO_BANK
    held_out: str = DEMO_HELD_OUT
    subspace: SubspaceConfig = SubspaceConfig(method="gauge_free", k=32)
    rank: int = 8
    init: str = "bank"
    held_out_per_class: int = 250
    bank_per_class: int = 250
    seed: int = 0
    second_task: str = DEMO_SECOND
    device_task: str = DEMO_DEVICE_TASK
    device_task_per_class: int = 100
    device: DeviceDemoConfig = DeviceDemoConfig()


def _row(
    method: str, accuracy: float, adapter_params: int, head_params: int, seconds: float
) -> dict[str, Any]:
    return {
        "method": method,
        "test_accuracy": accuracy,
        "adapter_params": adapter_params,
        "head_params": head_params,
        "seconds": seconds,
    }


def run_demo(
    out_dir: str | Path = "out/demo", cache_dir: str | Path | None = None, config: DemoConfig | None = None
) -> dict[str, Any]:
    """Run the demo end to end; print progress and the comparison; write summary.json in out_dir."""
    from edge_eigenlora import datasets
    from edge_eigenlora.adapters import WEIGHTS_NAME, load_bank, write_head
    from edge_eigenlora.bank import LoraSpec, build_bank, train_lora_classifier
    from edge_eigenlora.basis import fit_basis, plot_explained_variance, save_basis
    from edge_eigenlora.bundle import verify_bundle
    from edge_eigenlora.compress import compress_bank
    from edge_eigenlora.demo_device import (
        Labelled,
        Progress,
        device_half,
        export_bundles,
        final_table,
        folder_bytes,
        product_figures,
    )
    from edge_eigenlora.fileio import write_json_atomic
    from edge_eigenlora.model import TextClassifier
    from edge_eigenlora.pretrained import DEFAULT_ENCODER, load_encoder
    from edge_eigenlora.task import save_task
    from edge_eigenlora.train import TrainConfig, evaluate_classifier, train_classifier, train_task

    config = config or DemoConfig()
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "edge-eigenlora" / "demo"
    started = time.perf_counter()
    load_start = os.getloadavg()
    progress = Progress(TOTAL_STEPS, started)

    progress.step(
        1, "bank", f"bank: {len(config.bank_tasks)} real PEFT LoRA adapters (r=8, q/v) on {DEFAULT_ENCODER}"
    )
    bank_config = TrainConfig(
        epochs=3,
        batch_size=32,
        lr=1e-3,
        head_lr=3e-3,
        max_length=48,
        patience=2,
        eval_every=20,
        max_steps=100,
    )
    bank_load = lambda name, seed: datasets.load_task(name, seed=seed, max_per_class=config.bank_per_class)  # noqa: E731
    folders = build_bank(
        DEFAULT_ENCODER,
        list(config.bank_tasks),
        cache / "bank",
        spec=LoraSpec(),
        config=bank_config,
        load=bank_load,
    )
    bank = load_bank(folders)

    progress.step(2, "subspace", f"subspace: {config.subspace.method}, k={config.subspace.k}")
    basis = fit_basis(bank, config.subspace)
    out.mkdir(parents=True, exist_ok=True)
    basis_path = save_basis(basis, out / "basis.safetensors")
    plot_explained_variance(basis, out / "explained_variance.png")
    explained = np.mean([m.explained() for m in basis.modules.values()], axis=0)
    progress.note(
        f"basis {basis.short_id}: explained variance at k (A, B) = {explained[0]:.2f}, {explained[1]:.2f}"
    )

    progress.step(3, "compression", "compression of the bank onto the basis")
    compressed = compress_bank(bank, basis)
    compression = {r.adapter: r.mean_error for r in compressed}
    for name, error in compression.items():
        progress.note(f"{name:32s} relative delta-W error {error:.3f}")
    second = next((r.task for r in compressed if r.adapter == config.second_task), None)
    if second is None:
        raise ValueError(f"DemoConfig.second_task {config.second_task!r} is not one of the bank's tasks.")
    second_path = save_task(second, out / "tasks" / f"{second.name}.safetensors")

    data = datasets.load_task(config.held_out, seed=config.seed, max_per_class=config.held_out_per_class)
    n_train = len(data.train)
    progress.step(
        4,
        "held_out",
        f"held-out task {config.held_out} ({len(data.label_names)} classes, {n_train} train, {len(data.test)} test)",
    )
    train = (data.train.texts, data.train.labels)
    val = (data.validation.texts, data.validation.labels)
    test = (data.test.texts, data.test.labels)
    budget = TrainConfig(
        epochs=6,
        batch_size=32,
        lr=1e-3,
        head_lr=3e-3,
        max_length=48,
        patience=3,
        eval_every=15,
        max_steps=150,
        seed=config.seed,
    )
    hidden = next(iter(basis.modules.values())).shape[1]  # q's input width = the encoder's hidden size
    head_params = (len(data.label_names)) * (hidden + 1)  # the linear head's weight and bias
    task_path = out / f"{config.held_out}.safetensors"
    peft_dir = out / "lora_r8_peft"

    def compare(method: str, fit: Callable[[], tuple[Any, Any, int]]) -> dict[str, Any]:
        """Train one way, then test: the same data, step budget and evaluation for every method."""
        t0 = time.perf_counter()
        classifier, tokenizer, adapter_params = fit()
        seconds = time.perf_counter() - t0
        accuracy = evaluate_classifier(classifier, tokenizer, *test, max_length=budget.max_length)["accuracy"]
        return _row(method, accuracy, adapter_params, head_params, seconds)

    def eigenlora() -> tuple[Any, Any, int]:
        task, classifier, tokenizer, _ = train_task(
            basis,
            train,
            val,
            data.label_names,
            name=config.held_out,
            rank=config.rank,
            init=config.init,
            config=replace(budget, lr=5e-3),
            desc="EigenLoRAx",
        )
        save_task(task, task_path)
        return classifier, tokenizer, task.num_parameters(include_head=False)

    def lora() -> tuple[Any, Any, int]:
        classifier, tokenizer, _ = train_lora_classifier(
            DEFAULT_ENCODER, data, spec=LoraSpec(), config=budget, seed=config.seed, desc="LoRA r=8"
        )
        # The real bytes a user would ship for this task with PEFT: its own save_pretrained, plus the head.
        classifier.encoder.save_pretrained(peft_dir, save_embedding_layers=False)
        head = classifier.head
        write_head(peft_dir, head.weight.detach().numpy(), head.bias.detach().numpy(), list(data.label_names))
        return (
            classifier,
            tokenizer,
            sum(p.numel() for p in classifier.encoder.parameters() if p.requires_grad),
        )

    def head_only() -> tuple[Any, Any, int]:
        encoder, tokenizer = load_encoder(DEFAULT_ENCODER)
        classifier = TextClassifier(encoder.requires_grad_(False), len(data.label_names))
        train_classifier(classifier, tokenizer, train, val, replace(budget, lr=3e-3), desc="head only")
        return classifier, tokenizer, 0

    rows = [
        compare(f"EigenLoRAx K={config.subspace.k} r={config.rank}", eigenlora),
        compare("LoRA r=8 (PEFT)", lora),
        compare("head only", head_only),
    ]
    majority = float(np.bincount(data.test.labels).max() / len(data.test))
    progress.note(f"held-out task {config.held_out}: majority class {majority:.3f}")
    progress.note(
        f"{'method':28s} {'test acc':>8s} {'adapter params':>15s} {'head params':>12s} {'seconds':>8s}"
    )
    for r in rows:
        progress.note(
            f"{r['method']:28s} {r['test_accuracy']:8.3f} {r['adapter_params']:15,d} {r['head_params']:12,d} "
            f"{r['seconds']:8.1f}"
        )
    if rows[1]["adapter_params"]:
        progress.note(
            f"EigenLoRAx trains {rows[1]['adapter_params'] / max(rows[0]['adapter_params'], 1):.0f}x fewer adapter "
            "parameters than LoRA r=8."
        )

    progress.step(
        5,
        "export",
        f"export: phone bundle (export/phone.json + train step) with tasks {config.held_out}, {second.name}; "
        "fp32 export of the same graph",
    )
    exported = export_bundles(
        DEFAULT_ENCODER, basis_path, [task_path, second_path], out, rank=config.rank, progress=progress
    )
    phone_path = Path(exported["phone"]["path"])

    progress.step(6, "verify", f"verify {phone_path}")
    t0 = time.perf_counter()
    verify_bundle(phone_path)
    progress.note(
        f"ok: {len(folder_bytes(phone_path)) - 1} files match their sha256 in manifest.json; both tasks match "
        f"basis {basis.short_id} and the coefficient layout ({time.perf_counter() - t0:.1f} s)"
    )

    device_data = datasets.load_task(
        config.device_task, seed=config.seed, max_per_class=config.device_task_per_class
    )
    second_data = bank_load(config.second_task, 0)  # the split its bank adapter was tested on
    device = device_half(
        phone_path,
        exported["fp32"]["path"],
        out / "device",
        held_out=Labelled(config.held_out, tuple(data.label_names), (list(test[0]), list(test[1]))),
        second=Labelled(
            second.name,
            tuple(second_data.label_names),
            (list(second_data.test.texts), list(second_data.test.labels)),
        ),
        new_task=Labelled(
            config.device_task,
            tuple(device_data.label_names),
            test=(list(device_data.test.texts), list(device_data.test.labels)),
            train=(list(device_data.train.texts), list(device_data.train.labels)),
            validation=(list(device_data.validation.texts), list(device_data.validation.labels)),
        ),
        config=config.device,
        progress=progress,
        first_step=7,
    )

    progress.step(9, "summary", "summary")
    second_record = json.loads((cache / "bank" / config.second_task / "training.json").read_text())
    figures = product_figures(
        exported,
        device,
        held_out=config.held_out,
        second=second.name,
        workstation_accuracy=rows[0]["test_accuracy"],
        task_file_bytes=task_path.stat().st_size,
        peft_adapter_bytes=(peft_dir / WEIGHTS_NAME).stat().st_size,
        peft_head_bytes=sum(
            p.stat().st_size for p in peft_dir.glob("*.safetensors") if p.name != WEIGHTS_NAME
        ),
        second_reference_accuracy=float(second_record["test_accuracy"]),
    )
    steps = progress.finish()
    summary = {
        "held_out": config.held_out,
        "bank": list(config.bank_tasks),
        "basis": basis.fingerprint,
        "config": asdict(config),
        "majority_class_accuracy": majority,
        "compression_mean_relative_error": compression,
        "results": rows,
        "product": figures,
        "device": device,
        "export_seconds": {k: exported[k]["seconds"] for k in ("fp32", "phone")},
        "step_seconds": steps,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "total_seconds": time.perf_counter() - started,
    }
    print()
    print(
        f"edge-eigenlora, the whole product on {DEFAULT_ENCODER} ({summary['total_seconds']:.0f} s on "
        f"{os.cpu_count()} cores, load average {load_start[0]:.1f} at the start)"
    )
    for line in final_table(figures):
        print(line)
    write_json_atomic(out / "summary.json", summary)
    print(
        f"wrote {out / 'summary.json'}, {basis_path}, {out / 'explained_variance.png'}, {phone_path} "
        f"({summary['total_seconds']:.0f} s in all)"
    )
    return summary
