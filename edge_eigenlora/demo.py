"""`make demo`: the whole workstation job on the real all-MiniLM-L6-v2 and real tasks, no arguments needed.

1. a bank of real PEFT LoRA adapters, one per bank task (trained by the project, cached);
2. the shared subspace of the bank (basis file + explained-variance plot);
3. compression of the bank onto the basis (relative delta-W error per adapter);
4. a task NOT in the bank, learned three ways with the same data and budget: EigenLoRAx coefficients,
   a LoRA r=8, and the head alone; printed side by side (accuracy, trainable parameters, seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_eigenlora.basis import SubspaceConfig

__all__ = ["DEMO_BANK", "DEMO_HELD_OUT", "DemoConfig", "run_demo"]

DEMO_BANK = (
    "topic_fortunes_en_subjects",
    "semantic_verb_category",
    "langid_chatterbot_latin",
    "style_health_tweets_print",
    "topic_news_outlet_en",
)
DEMO_HELD_OUT = "sentiment_tweets_en"


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
    from edge_eigenlora.adapters import load_bank
    from edge_eigenlora.bank import LoraSpec, build_bank, train_lora_classifier
    from edge_eigenlora.basis import fit_basis, plot_explained_variance, save_basis
    from edge_eigenlora.compress import compress_bank
    from edge_eigenlora.model import TextClassifier
    from edge_eigenlora.pretrained import DEFAULT_ENCODER, load_encoder
    from edge_eigenlora.task import save_task
    from edge_eigenlora.train import TrainConfig, evaluate_classifier, train_classifier, train_task

    config = config or DemoConfig()
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "edge-eigenlora" / "demo"
    started = time.perf_counter()

    print(f"[1/4] bank: {len(config.bank_tasks)} real PEFT LoRA adapters (r=8, q/v) on {DEFAULT_ENCODER}")
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
    folders = build_bank(
        DEFAULT_ENCODER,
        list(config.bank_tasks),
        cache / "bank",
        spec=LoraSpec(),
        config=bank_config,
        load=lambda name, seed: datasets.load_task(name, seed=seed, max_per_class=config.bank_per_class),
    )
    bank = load_bank(folders)

    print(f"[2/4] subspace: {config.subspace.method}, k={config.subspace.k}")
    basis = fit_basis(bank, config.subspace)
    out.mkdir(parents=True, exist_ok=True)
    save_basis(basis, out / "basis.safetensors")
    plot_explained_variance(basis, out / "explained_variance.png")
    explained = np.mean([m.explained() for m in basis.modules.values()], axis=0)
    print(
        f"      basis {basis.short_id}: explained variance at k (A, B) = {explained[0]:.2f}, {explained[1]:.2f}"
    )

    print("[3/4] compression of the bank onto the basis")
    compression = {r.adapter: r.mean_error for r in compress_bank(bank, basis)}
    for name, error in compression.items():
        print(f"      {name:32s} relative delta-W error {error:.3f}")

    data = datasets.load_task(config.held_out, seed=config.seed, max_per_class=config.held_out_per_class)
    n_train = len(data.train)
    print(
        f"[4/4] held-out task {config.held_out} ({len(data.label_names)} classes, {n_train} train, {len(data.test)} test)"
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

    def compare(method: str, fit: Callable[[], tuple[Any, Any, int]]) -> dict[str, Any]:
        """Train one way, then test: the same data, step budget and evaluation for every method."""
        t0 = time.perf_counter()
        classifier, tokenizer, adapter_params = fit()
        seconds = time.perf_counter() - t0
        accuracy = evaluate_classifier(classifier, tokenizer, *test, max_length=budget.max_length)["accuracy"]
        return _row(method, accuracy, adapter_params, head_params, seconds)

    def eigenlora() -> tuple[Any, Any, int]:
        task, classifier, tokenizer, _ = train_task(
            basis, train, val, data.label_names, name=config.held_out, rank=config.rank, init=config.init,
            config=replace(budget, lr=5e-3), desc="EigenLoRAx",
        )  # fmt: skip
        save_task(task, out / f"{config.held_out}.safetensors")
        return classifier, tokenizer, task.num_parameters(include_head=False)

    def lora() -> tuple[Any, Any, int]:
        classifier, tokenizer, _ = train_lora_classifier(
            DEFAULT_ENCODER, data, spec=LoraSpec(), config=budget, seed=config.seed, desc="LoRA r=8"
        )
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
    summary = {
        "held_out": config.held_out,
        "bank": list(config.bank_tasks),
        "basis": basis.fingerprint,
        "config": asdict(config),
        "majority_class_accuracy": majority,
        "compression_mean_relative_error": compression,
        "results": rows,
        "total_seconds": time.perf_counter() - started,
    }
    print()
    print(f"held-out task {config.held_out}: majority class {majority:.3f}")
    print(f"{'method':28s} {'test acc':>8s} {'adapter params':>15s} {'head params':>12s} {'seconds':>8s}")
    for r in rows:
        print(
            f"{r['method']:28s} {r['test_accuracy']:8.3f} {r['adapter_params']:15,d} {r['head_params']:12,d} "
            f"{r['seconds']:8.1f}"
        )
    if rows[1]["adapter_params"]:
        print(
            f"EigenLoRAx trains {rows[1]['adapter_params'] / max(rows[0]['adapter_params'], 1):.0f}x fewer adapter "
            "parameters than LoRA r=8."
        )
    from edge_eigenlora.fileio import write_json_atomic

    write_json_atomic(out / "summary.json", summary)
    print(
        f"wrote {out / 'summary.json'}, {out / 'basis.safetensors'}, {out / 'explained_variance.png'} "
        f"({summary['total_seconds']:.0f} s in all)"
    )
    return summary
