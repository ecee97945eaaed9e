"""The browser as a device, measured: the web page on onnxruntime-web (WebAssembly, headless Debian chromium) against
the Python device runtime (onnxruntime CPU) on the same bundle, the same texts, the same machine, in one run.

    python -m benchmarks.web [--rounds 5] [--threads 1]     # or: make bench-web

Every round runs both sides in a new random order, each in a fresh process (a fresh browser for the page):
    first result      navigation start (page) / process start (Python) -> the first task's predictions on 4 texts
                      shown: fetch + sha256 of every file used, tokenizer, session creation, one run
    ms per text       a text at a time (median over 16 texts) and a batch of 16 (total / 16), after 2 warm-ups
    train step ms     20 steps of batch 8 from the same init and batches (tokens -> train-step graph -> AdamW),
                      the median of steps 2-20
    peak memory       the page's renderer process (VmHWM from /proc) vs the Python process (wait4 ru_maxrss); and
                      each above its own baseline from the same round: the page loaded with no bundle / Python with
                      the runtime imported; plus the page's JS heap (performance.memory, excludes WebAssembly memory)
Writes benchmarks/results/web/web.json and report.md (docs/web.md quotes the report).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "web"
EXAMPLES = ROOT / "web" / "examples" / "reviews.csv"
FIRST_TEXTS = [
    "What a wonderful film, I loved every minute.",
    "Dull and far too long.",
    "The striker scored twice in the final.",
    "Parliament passed the budget vote.",
]
STEPS, BATCH, LR, SEED = 20, 8, 5e-3, 0


def _examples() -> tuple[list[str], list[int], list[str]]:
    rows = list(csv.DictReader(EXAMPLES.open()))
    names = sorted({r["label"] for r in rows})
    return [r["text"] for r in rows], [names.index(r["label"]) for r in rows], names


def _texts() -> list[str]:
    texts, _, _ = _examples()
    return texts[:16]


def _batches(n: int) -> list[list[int]]:
    rng = np.random.default_rng(SEED)
    out: list[list[int]] = []
    order: list[int] = []
    while len(out) < STEPS:
        if not order:
            order = rng.permutation(n).tolist()
        out.append(order[:BATCH])
        order = order[BATCH:]
    return out


# ------------------------------------------------------------------------------------------------ Python side


def python_child(bundle: str, spawned: float, threads: int, work: bool) -> dict:
    """Runs in the measured process: the same workload as the page, printed as JSON."""
    from edge_eigenlora.runtime import DeviceRuntime, RuntimeOptions
    from edge_eigenlora.runtime.optim import AdamW
    from edge_eigenlora.runtime.tokenize import pad_ids
    from edge_eigenlora.runtime.trainer import init_params

    if not work:
        return {}
    rt = DeviceRuntime(bundle, options=RuntimeOptions(threads=threads), verify=True, on_long="silent")
    rt.run(FIRST_TEXTS, task="sentiment")
    first = time.time() - spawned
    texts = _texts()
    for _ in range(2):
        rt.run(texts, task="sentiment")
    one = []
    for t in texts:
        start = time.perf_counter()
        rt.run([t], task="sentiment")
        one.append((time.perf_counter() - start) * 1e3)
    start = time.perf_counter()
    rt.run(texts, task="sentiment")
    batch = (time.perf_counter() - start) * 1e3 / len(texts)
    train_texts, labels, names = _examples()
    params = init_params(rt, len(names), SEED)
    opt = AdamW({k: LR for k in params})
    rows = [e.ids for e in rt.tokenizer.encode_batch(train_texts)]
    step_ms, losses = [], []
    for idx in _batches(len(train_texts)):
        start = time.perf_counter()
        ids, mask = pad_ids([rows[i] for i in idx], rt.tokenizer.pad_id)
        out = rt.train_step(ids, mask, np.array([labels[i] for i in idx]), *params.values())
        opt.step(params, {k: out["grad_" + k] for k in params})
        step_ms.append((time.perf_counter() - start) * 1e3)
        losses.append(float(out["loss"]))
    return {
        "first_result_s": first,
        "ms_per_text_1": float(np.median(one)),
        "ms_per_text_16": batch,
        "step_ms": step_ms,
        "losses": losses,
    }


def run_python(bundle: Path, threads: int, work: bool) -> dict:
    code = (
        "import json, sys; from benchmarks.web import python_child; "
        "print(json.dumps(python_child(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == '1')))"
    )
    spawned = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(bundle), repr(spawned), str(threads), "1" if work else "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"Python side failed: {stderr[-2000:]}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_mib": usage.ru_maxrss / 1024}


# ------------------------------------------------------------------------------------------------ the page


def _renderer_peak_mib() -> float:
    """The largest VmHWM among chromium renderer processes below this process (the page's)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    peak, todo = 0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            if b"--type=renderer" in cmdline:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak / 1024


PAGE_BENCH = """async ([texts, first]) => {
  const E = window.edgeEigenlora;
  for (let i = 0; i < 2; i++) await E.predict(texts, "sentiment");
  const one = [];
  for (const t of texts) { const s = performance.now(); await E.predict([t], "sentiment"); one.push(performance.now() - s); }
  const s = performance.now(); await E.predict(texts, "sentiment");
  const batch = (performance.now() - s) / texts.length;
  one.sort((a, b) => a - b);
  return { one: (one[7] + one[8]) / 2, batch, first: E.state.timings.firstResult / 1000 };
}"""


def run_page(browser_type, chromium: str, url: str, threads: int, init: dict, work: bool) -> dict:
    browser = browser_type.launch(executable_path=chromium, args=["--no-sandbox"])
    try:
        page = browser.new_page()
        if not work:
            page.goto(f"{url}?threads={threads}")
            page.wait_for_function("window.edgeEigenlora?.ready === true")
            time.sleep(0.5)
            return {
                "peak_rss_mib": _renderer_peak_mib(),
                "js_heap_mib": page.evaluate("performance.memory.usedJSHeapSize") / 2**20,
            }
        page.goto(f"{url}?bundle=bundle/&threads={threads}&autorun=1")
        page.wait_for_function(
            "window.edgeEigenlora?.state.timings.firstResult || !document.getElementById('error').hidden",
            timeout=300_000,
        )
        if not page.is_hidden("#error"):
            raise RuntimeError(page.inner_text("#error"))
        bench = page.evaluate(PAGE_BENCH, [_texts(), FIRST_TEXTS])
        texts, labels, names = _examples()
        train = page.evaluate(
            "o => window.edgeEigenlora.trainWith(o)",
            {
                "name": "bench",
                "texts": texts,
                "labels": labels,
                "labelNames": names,
                "init": init,
                "batches": _batches(len(texts)),
                "lr": LR,
                "store": False,
            },
        )
        heap = page.evaluate("performance.memory.usedJSHeapSize") / 2**20
        return {
            "first_result_s": bench["first"],
            "ms_per_text_1": bench["one"],
            "ms_per_text_16": bench["batch"],
            "step_ms": train["stepMs"],
            "losses": train["losses"],
            "peak_rss_mib": _renderer_peak_mib(),
            "js_heap_mib": heap,
        }
    finally:
        browser.close()


# ------------------------------------------------------------------------------------------------ report


def _summary(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def summarize(rounds: list[dict]) -> dict:
    out = {}
    for side in ("page", "python"):
        rows = [r[side] for r in rounds]
        base = [r[f"{side}_baseline"]["peak_rss_mib"] for r in rounds]
        out[side] = {
            "first_result_s": _summary([r["first_result_s"] for r in rows]),
            "ms_per_text_1": _summary([r["ms_per_text_1"] for r in rows]),
            "ms_per_text_16": _summary([r["ms_per_text_16"] for r in rows]),
            "train_step_ms": _summary([float(np.median(r["step_ms"][1:])) for r in rows]),
            "peak_rss_mib": _summary([r["peak_rss_mib"] for r in rows]),
            "above_baseline_mib": _summary([r["peak_rss_mib"] - b for r, b in zip(rows, base, strict=True)]),
            "baseline_mib": _summary(base),
        }
    out["page"]["js_heap_mib"] = _summary([r["page"]["js_heap_mib"] for r in rounds])
    diffs = [
        max(abs(a - b) for a, b in zip(r["page"]["losses"], r["python"]["losses"], strict=True))
        for r in rounds
    ]
    out["loss_max_abs_diff"] = max(diffs)
    return out


def report(result: dict) -> str:
    s, meta = result["summary"], result["meta"]

    def cell(side: str, key: str, fmt: str) -> str:
        v = s[side][key]
        return f"{v['median']:{fmt}} ({v['min']:{fmt}}-{v['max']:{fmt}})"

    rows = [
        ("time from page load / process start to the first result (s)", "first_result_s", ".2f"),
        ("inference, one text per call (ms per text)", "ms_per_text_1", ".1f"),
        ("inference, 16 texts per call (ms per text)", "ms_per_text_16", ".1f"),
        (f"train step, batch {BATCH} (ms)", "train_step_ms", ".0f"),
        ("peak memory, whole process (MiB)", "peak_rss_mib", ".0f"),
        ("peak memory above its baseline (MiB)", "above_baseline_mib", ".0f"),
    ]
    lines = [
        f"# The browser as a device: onnxruntime-web vs the Python device runtime ({meta['rounds']} rounds)",
        "",
        f"Bundle {meta['bundle_name']} (all-MiniLM-L6-v2, K=16, rank 8, int8 basis; {meta['bundle_mb']:.1f} MB used by the "
        f"page), {meta['threads']} thread(s) on both sides, {meta['machine']}. Median (min-max) over rounds; each round "
        "runs both sides in a random order, each in a fresh process (a fresh browser for the page).",
        "",
        f"| | page: onnxruntime-web {meta['onnxruntime_web']} (wasm, {meta['chromium']}) | Python: onnxruntime {meta['onnxruntime']} (CPU) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {label} | {cell('page', key, fmt)} | {cell('python', key, fmt)} |" for label, key, fmt in rows
    ]
    lines += [
        "",
        f"Baselines: the page loaded without a bundle {s['page']['baseline_mib']['median']:.0f} MiB (renderer process); "
        f"Python with the runtime imported {s['python']['baseline_mib']['median']:.0f} MiB. The page's JS heap after "
        f"training: {s['page']['js_heap_mib']['median']:.0f} MiB (WebAssembly memory is not in it, the renderer's RSS is). "
        f"The {STEPS} training losses of the two sides differ by at most {s['loss_max_abs_diff']:.1e} (same init and "
        "batches). The machine's 1-minute load average was "
        f"{meta['load_average_1min'][0]:.1f} at the start and {meta['load_average_1min'][1]:.1f} at the end of the run "
        "(other jobs share its cores): absolute times are slower than on an idle machine, for both sides alike.",
        "",
        "First result: the page fetches and sha256-checks every file it uses (WebCrypto), parses the tokenizer, creates the "
        "inference session and runs 4 texts; Python verifies the whole bundle, creates the session and runs the same 4 texts "
        "(process start, not interpreter start-up, for Python; navigation start for the page).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--bundle", type=Path, default=None, help="default: scripts/make_web_bundle.py's cached bundle"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import shutil

    from playwright.sync_api import sync_playwright

    from edge_eigenlora.runtime import DeviceRuntime
    from edge_eigenlora.runtime.serve import BundleServer
    from edge_eigenlora.runtime.trainer import init_params

    bundle = args.bundle or Path(
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make_web_bundle.py")],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is missing: bash scripts/setup_browser.sh")
    rt = DeviceRuntime(bundle, verify=False)
    _, _, names = _examples()
    init = {k: v.tolist() for k, v in init_params(rt, len(names), SEED).items()}
    server = BundleServer(bundle, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rounds = []
    load_start = os.getloadavg()[0]
    with sync_playwright() as p:
        for number in range(args.rounds):
            jobs = {
                "page_baseline": lambda: run_page(
                    p.chromium, chromium, server.url, args.threads, init, False
                ),
                "python_baseline": lambda: run_python(bundle, args.threads, False),
                "page": lambda: run_page(p.chromium, chromium, server.url, args.threads, init, True),
                "python": lambda: run_python(bundle, args.threads, True),
            }
            order = list(jobs)
            random.Random(number).shuffle(order)
            row = {name: jobs[name]() for name in order}
            rounds.append(row)
            print(
                f"round {number + 1}/{args.rounds} ({', '.join(order)}): first result page {row['page']['first_result_s']:.2f} s "
                f"/ python {row['python']['first_result_s']:.2f} s; step page {np.median(row['page']['step_ms'][1:]):.0f} ms "
                f"/ python {np.median(row['python']['step_ms'][1:]):.0f} ms",
                flush=True,
            )
    server.shutdown()
    import importlib.metadata as md

    manifest = rt.manifest
    used = [f for g in manifest.graphs for f in (g.file, *g.external_data)] + [
        t.file for t in manifest.tasks.values()
    ]
    used += [f for f in manifest.tokenizer.files if f.endswith(("tokenizer.json", "tokenizer_config.json"))]
    meta = {
        "rounds": args.rounds,
        "threads": args.threads,
        "bundle_name": bundle.name,
        "bundle_mb": sum((bundle / f).stat().st_size for f in set(used)) / 1e6,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "load_average_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "onnxruntime": md.version("onnxruntime"),
        "onnxruntime_web": json.loads(
            (ROOT / "web" / "node_modules" / "onnxruntime-web" / "package.json").read_text()
        )["version"],
        "chromium": subprocess.run([chromium, "--version"], capture_output=True, text=True)
        .stdout.split(" built")[0]
        .strip(),
    }
    result = {"meta": meta, "summary": summarize(rounds), "rounds": rounds}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "web.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report(result)
    (args.out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
