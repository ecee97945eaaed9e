"""Performance benchmarks: build every deployment variant once, then measure latency, switching, memory, size.

    python -m benchmarks.perf --config quick     # make bench: a few minutes (graphs cached after the first run)
    python -m benchmarks.perf --config full      # the committed results
    python -m benchmarks.perf --config full --only report   # re-render report.md and the plots from the JSON

Variants (all run through onnxruntime on the same real all-MiniLM-L6-v2, the same task, same rank r=8 on q/v):
    base            the base model alone (+ mean pooling + the task's head as constants)
    eigen_shared    EigenLoRAx unmerged: basis in the graph, the task's coefficients and head as inputs
    eigen_per_row   EigenLoRAx per-row: a coefficient vector per row of the batch
    eigen_merged    EigenLoRAx merged: delta W folded into W
    eigen_factored  EigenLoRAx factored: the task's factors A^T, B^T formed once (the bundle's factors graph)
                    and fed as inputs with the head; what the device runtime runs for a one-task batch
    peft_unmerged   PEFT LoRA (the same task as a PEFT folder) exported by torch with its A/B as constants
    lora_merged     PEFT merge_and_unload, exported
    ort_lora        the PEFT graph whose A/B are inputs with default initializers; the task as an .onnx_adapter
                    activated with RunOptions.add_active_adapter (ONNX Runtime's multi-LoRA API)
Quantization levels: fp32; int8 (base: dynamic int8 MatMulInteger, basis: per-channel int8; LoRA A/B of the
PEFT graph are quantized like any constant weight); int4 (MatMulNBits, block 32, on base and basis). The
ort_lora graph keeps its A/B inputs in fp32 (they are fed), so only its base is quantized.

Graphs are cached under ~/.cache/edge-eigenlora/perf/<model>-<hash of the build settings>/ (not in git).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import CACHE_ROOT
from benchmarks.fixtures import peft_key, synthetic_task, write_peft_adapter

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).parent / "configs"
RESULTS = Path(__file__).parent / "results" / "perf"
CACHE = CACHE_ROOT / "perf"
VARIANTS = (
    "base",
    "eigen_shared",
    "eigen_per_row",
    "eigen_merged",
    "eigen_factored",
    "peft_unmerged",
    "lora_merged",
    "ort_lora",
)
QUANTS = ("fp32", "int8", "int4")
RANK, LABELS = 8, 3
ATTENTION_QV = ("query", "value", "q", "v")  # BERT names them query/value, MPNet q/v
BUILD_VERSION = 2  # bump when the build changes what it writes (2: the factored graph)


def adapted_modules(encoder: Any) -> list[str]:
    """The encoder's attention query/value projections: what every variant adapts (LoRA r=8 on q and v)."""
    import torch

    names = [
        n
        for n, m in encoder.named_modules()
        if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ATTENTION_QV
    ]
    if not names:
        raise RuntimeError(f"no attention q/v projections (named {ATTENTION_QV}) in {type(encoder).__name__}")
    return names


def load_config(name_or_path: str) -> dict[str, Any]:
    """A plain-JSON config by name (benchmarks/configs/perf_<name>.json) or path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIGS / f"perf_{name_or_path}.json"
    config = json.loads(path.read_text())
    config["name"] = config.get("name", path.stem.removeprefix("perf_"))
    return config


def thread_env(threads: int) -> dict[str, str]:
    """Environment that pins every thread pool a child might start (BLAS, OpenMP) to `threads`."""
    n = str(threads)
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS=n,
        OPENBLAS_NUM_THREADS=n,
        MKL_NUM_THREADS=n,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )


def session_options(threads: int, arena: bool = True) -> Any:
    """An onnxruntime session with explicit thread counts (intra-op = threads, inter-op = 1, no spinning)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = arena
    so.log_severity_level = 3
    # Spinning worker threads burn a core while idle: on a shared 2-core machine that slows the other variants.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


# ----------------------------------------------------------------------------------------------
# Building the variants (torch; once, cached)
# ----------------------------------------------------------------------------------------------


def build_key(config: dict[str, Any]) -> str:
    settings = {
        "v": BUILD_VERSION,
        "model": config["model"],
        "k": config["k"],
        "rank": RANK,
        "bank": config["bank_adapters"],
        "quants": config["quants"],
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def build_dir(config: dict[str, Any]) -> Path:
    return CACHE / f"{Path(config['model']).name}-{build_key(config)}"


def _export_classifier(model: Any, task: Any) -> Any:
    """A (possibly PEFT-wrapped) encoder + mean pooling + the task's head, exported like the bundle's graphs."""
    import torch

    from edge_eigenlora import bundle
    from edge_eigenlora.graph_modules import MergedGraph, example_inputs, to_onnx
    from edge_eigenlora.onnx_tools import name_contract_dims

    hidden = task.head_weight.shape[1]
    head = torch.nn.Linear(hidden, LABELS)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(task.head_weight))
        head.bias.copy_(torch.from_numpy(task.head_bias))
    module = MergedGraph(model, "classification", head).eval()
    args, shapes = example_inputs(model, bundle.MERGED, "classification", None)
    proto = to_onnx(module, args, shapes, list(shapes), [bundle.LOGITS])
    name_contract_dims(proto, "classification", bundle.MERGED)
    return proto


def lora_nodes(model: Any, peft_tensors: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """(MatMul node names, initializer names) of the LoRA A/B weights in an exported PEFT graph.

    The exporter folds each weight's transpose into an anonymous initializer (val_N), so the LoRA weights are
    found by value: an initializer equal to the transpose of a PEFT tensor. They are renamed
    `<module>.lora_A_t` / `.lora_B_t` (the names the ORT adapter files use).
    """
    from onnx import numpy_helper

    by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for key, arr in peft_tensors.items():
        by_shape.setdefault(arr.T.shape, []).append((key, np.ascontiguousarray(arr.T)))
    rename = {}
    for init in model.graph.initializer:
        cands = by_shape.get(tuple(init.dims))
        if not cands:
            continue
        value = numpy_helper.to_array(init)
        for key, arr in cands:
            if np.array_equal(value, arr):
                module = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
                rename[init.name] = f"{module}.lora_{key.rsplit('.lora_', 1)[1][0]}_t"
                break
    for init in model.graph.initializer:
        if init.name in rename:
            init.name = rename[init.name]
    nodes = []
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
                nodes.append(node.name)
    return nodes, sorted(rename.values())


def promote_to_inputs(model: Any, names: list[str]) -> Any:
    """Make initializers overridable graph inputs (input + default initializer): ORT's multi-LoRA form."""
    from onnx import helper

    inits = {i.name: i for i in model.graph.initializer}
    for name in names:
        init = inits[name]
        model.graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    return model


def quantize_except(model: Any, mode: str, exclude: list[str]) -> Any:
    """Base-model quantization (as edge_eigenlora.quantize does) leaving the `exclude` MatMuls in fp32."""
    from edge_eigenlora import quantize

    return quantize.quantize_base(model, mode, block_size=32, exclude=exclude)


def build(config: dict[str, Any]) -> Path:
    """Every variant x quantization as .onnx files + tasks, PEFT folders and adapters; returns the folder."""
    out = build_dir(config)
    if (out / "variants.json").exists():
        return out
    import copy

    import onnx
    import torch

    from edge_eigenlora import bundle as bundle_mod
    from edge_eigenlora.adapters import load_bank
    from edge_eigenlora.basis import SubspaceConfig, fit_basis, save_basis
    from edge_eigenlora.compress import task_to_peft
    from edge_eigenlora.export import ExportConfig, derive_bundle, export_bundle
    from edge_eigenlora.pretrained import hub_name, load_encoder
    from edge_eigenlora.task import save_task

    torch.set_num_threads(2)
    tmp = out.with_name(out.name + ".tmp")  # a cut build resumes: each step skips what it already wrote
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    encoder, tokenizer = load_encoder(config["model"])
    modules, hidden = adapted_modules(encoder), encoder.config.hidden_size
    dirs = []
    for i in range(config["bank_adapters"]):
        mods = {
            m: (rng.standard_normal((RANK, hidden)) * 0.05, rng.standard_normal((hidden, RANK)) * 0.05)
            for m in modules
        }
        dirs.append(
            write_peft_adapter(
                tmp / "bank" / f"a{i}", mods, r=RANK, alpha=2 * RANK, base_model=hub_name(config["model"])
            )
        )
    basis = fit_basis(load_bank(dirs), SubspaceConfig(k=config["k"]), progress=False)
    basis_path = save_basis(basis, tmp / "basis.safetensors")
    tasks = [synthetic_task(basis, f"t{i}", i, hidden, rank=RANK, labels=LABELS) for i in range(2)]
    task_paths = [save_task(t, tmp / "tasks" / f"{t.name}.safetensors") for t in tasks]
    files: dict[str, dict[str, str]] = {v: {} for v in VARIANTS}
    print(f"[build] bank + basis {time.perf_counter() - t0:.0f} s", flush=True)

    ecfg = ExportConfig(
        rank=RANK,
        variants=("shared", "per_row", "merged", "factored"),
        basis_quant="none",
        base_quant="none",
        merged_task="t0",
        onnx_adapters=True,
        max_length=128,
    )
    if not (tmp / "bundle_fp32" / "manifest.json").exists():
        shutil.rmtree(tmp / "bundle_fp32", ignore_errors=True)
        export_bundle(
            config["model"],
            basis_path,
            tmp / "bundle_fp32",
            config=ecfg,
            tasks=task_paths,
            model=encoder,
            tokenizer=tokenizer,
        )
    print(f"[build] EigenLoRAx bundle {time.perf_counter() - t0:.0f} s", flush=True)
    for q in config["quants"]:
        if q == "fp32" or (tmp / f"bundle_{q}" / "manifest.json").exists():
            continue
        shutil.rmtree(tmp / f"bundle_{q}", ignore_errors=True)
        derive_bundle(
            tmp / "bundle_fp32",
            tmp / f"bundle_{q}",
            config=ExportConfig(
                rank=RANK,
                variants=("shared", "per_row", "merged", "factored"),
                basis_quant=q,
                base_quant=q,
                merged_task="t0",
                max_length=128,
            ),
        )
    for q in config["quants"]:
        for v in ("shared", "per_row", "merged", "factored"):
            files[f"eigen_{v}"][q] = f"bundle_{q}/model_{v}.onnx"
    print(f"[build] quantized bundles {time.perf_counter() - t0:.0f} s", flush=True)

    from peft import PeftModel

    (tmp / "graphs").mkdir(exist_ok=True)
    peft_dirs = [task_to_peft(t, basis, tmp / "peft" / t.name) for t in tasks]

    def exported(name: str, make: Any) -> Any:
        path = tmp / "graphs" / f"raw_{name}.onnx"
        if not path.exists():
            onnx.save_model(make(), str(path))
        return onnx.load(str(path))

    def peft_model() -> Any:
        return PeftModel.from_pretrained(copy.deepcopy(encoder), str(peft_dirs[0])).eval()

    base_proto = exported("base", lambda: _export_classifier(copy.deepcopy(encoder), tasks[0]))
    peft_proto = exported("peft", lambda: _export_classifier(peft_model(), tasks[0]))
    merged_proto = exported(
        "merged", lambda: _export_classifier(peft_model().merge_and_unload().eval(), tasks[0])
    )
    print(f"[build] base / PEFT / merged exports {time.perf_counter() - t0:.0f} s", flush=True)
    from safetensors.numpy import load_file

    peft_tensors = load_file(str(peft_dirs[0] / "adapter_model.safetensors"))
    l_nodes, l_weights = lora_nodes(peft_proto, peft_tensors)
    if len(l_nodes) != 2 * len(modules):
        raise RuntimeError(
            f"expected {2 * len(modules)} LoRA MatMuls in the PEFT graph, found {len(l_nodes)}"
        )
    for q in config["quants"]:
        mode = {"fp32": "none", "int8": "int8", "int4": "int4"}[q]
        for variant, proto, exclude in (
            ("base", base_proto, []),
            ("peft_unmerged", peft_proto, []),
            ("lora_merged", merged_proto, []),
            ("ort_lora", peft_proto, l_nodes),
        ):
            p = quantize_except(onnx.ModelProto.FromString(proto.SerializeToString()), mode, exclude)
            if variant == "ort_lora":
                p = promote_to_inputs(p, l_weights)
            path = tmp / "graphs" / f"{variant}_{q}.onnx"
            onnx.save_model(p, str(path))
            files[variant][q] = path.relative_to(tmp).as_posix()
    # the same tasks as ORT adapter files for the ort_lora graph: its A/B initializers by name
    _write_lora_adapters(tmp, peft_dirs, l_weights, peft_proto)
    print(f"[build] quantized peers + adapters {time.perf_counter() - t0:.0f} s", flush=True)
    manifest = bundle_mod.read_manifest(tmp / "bundle_fp32")
    info = {
        "files": files,
        "lora_inputs": l_weights,
        "build_seconds": time.perf_counter() - t0,
        "coefficients": manifest.layout.size,
        "k": config["k"],
        "rank": RANK,
        "labels": LABELS,
        "modules": modules,
        "hidden": hidden,
        "model": config["model"],
    }
    (tmp / "variants.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _write_lora_adapters(root: Path, peft_dirs: list[Path], names: list[str], proto: Any) -> None:
    """adapters/<task>.onnx_adapter for the ort_lora graph: each PEFT task's A^T / B^T under the graph's names."""
    import onnxruntime as ort
    from safetensors.numpy import load_file

    for folder in peft_dirs:
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        params = {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(tensors[peft_key(name)].T))
            for name in names
        }
        fmt = ort.AdapterFormat()
        fmt.set_adapter_version(1)
        fmt.set_model_version(1)
        fmt.set_parameters(params)
        (root / "adapters").mkdir(exist_ok=True)
        fmt.export_adapter(str(root / "adapters" / f"{folder.name}.onnx_adapter"))


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def run_stage(module: str, config_name: str, build_path: Path, out: Path, timeout: float) -> float:
    """Run one measurement module in its own process (fresh interpreter: no state shared between stages)."""
    start = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        f"benchmarks.{module}",
        "--config",
        config_name,
        "--build",
        str(build_path),
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, env=thread_env(2), timeout=timeout)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--config",
        default="quick",
        help="quick | full | full_mpnet (benchmarks/configs/perf_*) or a JSON path",
    )
    p.add_argument(
        "--only",
        nargs="*",
        choices=("build", "flops", "latency", "switch", "memory", "report"),
        help="stages to run (default: all)",
    )
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/perf/<config>)")
    args = p.parse_args(argv)
    config = load_config(args.config)
    out = Path(args.out) if args.out else RESULTS / config["name"]
    out.mkdir(parents=True, exist_ok=True)
    stages = args.only or ["build", "flops", "latency", "switch", "memory", "report"]
    durations: dict[str, float] = {}
    timing_file = out / "durations.json"
    if timing_file.exists():
        durations = json.loads(timing_file.read_text())
    start = time.perf_counter()
    path = build_dir(config)
    if "build" in stages or not (path / "variants.json").exists():
        cached = (path / "variants.json").exists()
        path = build(config)
        durations["build"] = 0.0 if cached else time.perf_counter() - start
        print(f"[perf] graphs in {path}", flush=True)
    info = json.loads((path / "variants.json").read_text())
    model_info = {
        "model": info["model"],
        "layers": len(info["modules"]) // 2,
        "k": info["k"],
        "rank": info["rank"],
        "hidden": info.get("hidden", 384),
    }
    (out / "build.json").write_text(json.dumps(model_info, indent=1) + "\n")
    if "flops" in stages:
        from benchmarks.flops import variant_table

        t = time.perf_counter()
        variant_table(path, out)
        durations["flops"] = time.perf_counter() - t
    for stage, module in (("latency", "latency"), ("switch", "task_switch"), ("memory", "memory_size")):
        if stage in stages:
            durations[stage] = run_stage(
                module, args.config, path, out, timeout=config.get("stage_timeout_s", 7200)
            )
            print(f"[perf] {stage}: {durations[stage]:.0f} s", flush=True)
    if set(stages) - {"report"}:  # a report-only run measures nothing: keep the measured total
        durations["total_this_invocation"] = time.perf_counter() - start
        timing_file.write_text(json.dumps(durations, indent=1) + "\n")
    if "report" in stages:
        from benchmarks.perf_report import render

        print(render(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
