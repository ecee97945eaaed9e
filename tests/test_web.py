"""The browser as a device: the web page (web/) in headless Debian chromium, driven by playwright, against the
Python device runtime on the same real MiniLM bundle (scripts/make_web_bundle.py; ~3 min to export once).

Asserted: token ids equal on the goldens' tricky texts; logits within 1e-4 for a task, after a swap (same
session) and with a different task per row; 20 train steps whose losses equal the Python device trainer's within
1e-4 from the same init and batches; a task trained through the page's UI downloads as a file that Python loads
and that gives the page's logits; the task survives a reload (IndexedDB); bad input is refused with a visible
message and nothing stored; a tampered graph is refused. Screenshots go to out/test-artefacts/.
"""

import csv
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_eigenlora import bundle
from edge_eigenlora.runtime.serve import BundleServer
from edge_eigenlora.runtime.session import DeviceRuntime, RuntimeOptions
from edge_eigenlora.runtime.trainer import DeviceTrainConfig, GradientTrainer, init_params
from edge_eigenlora.task import load_task

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "android_demo" / "core" / "src" / "test" / "resources" / "golden"
ARTEFACTS = ROOT / "out" / "test-artefacts"
TOL = 1e-4
TRAIN = [(r["text"], r["label"]) for r in csv.DictReader((ROOT / "web" / "examples" / "reviews.csv").open())]
UNSEEN = [
    "What a lovely, heartwarming film.",
    "Tedious, clumsy and far too long.",
    "I enjoyed it a lot.",
    "Awful.",
]


def _csv(rows):
    return "text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows)


@pytest.fixture(scope="module")
def web_bundle():
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_web_bundle import web_bundle as build

    return build()


def _serve(folder):
    server = BundleServer(folder, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server(web_bundle):
    server = _serve(web_bundle)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright: install the web extra (make test-browser)"
    )
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup_browser.sh installs it)")
    with playwright.sync_playwright() as p:
        # No sandbox: CI runs as root, where chromium's sandbox refuses to start.
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, server):
    page = browser.new_page(viewport={"width": 960, "height": 1400})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}?bundle=bundle/&threads=1")
    page.wait_for_function("window.edgeEigenlora?.ready === true")
    page.click("#open")
    page.wait_for_function("!document.getElementById('run').disabled", timeout=120_000)
    yield page
    assert not errors, errors


@pytest.fixture(scope="module")
def runtime(web_bundle):
    return DeviceRuntime(web_bundle, options=RuntimeOptions(threads=1), on_long="silent")


def _visible_error(page):
    page.wait_for_function("!document.getElementById('error').hidden", timeout=60_000)
    return page.inner_text("#error")


def test_token_ids_equal_python_on_the_goldens_tricky_texts(page, runtime):
    cases = [
        c
        for c in json.loads((GOLDEN / "tokenizer_cases.json").read_text())["cases"]
        if c["max_length"] == 128
    ]
    texts = [c["text"] for c in cases]
    ids = page.evaluate("t => window.edgeEigenlora.tokenize(t)", texts)
    python = [e.ids for e in runtime.tokenizer.encode_batch(texts)]
    assert ids == python == [c["ids"] for c in cases]


def test_logits_equal_python_for_a_task_a_swap_and_a_task_per_row(page, runtime):
    cases = json.loads((GOLDEN / "tokenizer_cases.json").read_text())["cases"]
    texts = UNSEEN + [c["text"] for c in cases[:12]]
    for task in ("sentiment", "topic", "sentiment"):  # swaps between runs, one session
        web = np.array(page.evaluate("([t, n]) => window.edgeEigenlora.predict(t, n)", [texts, task]))
        python = runtime.run(texts, task=task)
        assert web.shape == python.shape
        assert np.max(np.abs(web - python)) <= TOL, task
    assert page.evaluate("window.edgeEigenlora.state.engine.sessions.size") == 1
    names = ["sentiment", "topic"] * (len(texts) // 2)
    web_rows = page.evaluate("([t, n]) => window.edgeEigenlora.predictRows(t, n)", [texts, names])
    python_rows = runtime.run_rows(texts, tasks=names)
    for i, (w, p) in enumerate(zip(web_rows, python_rows, strict=True)):
        assert len(w) == len(p) == len(runtime.task(names[i]).labels)
        assert np.max(np.abs(np.array(w) - p)) <= TOL, i


def test_twenty_train_steps_equal_the_python_device_trainer(page, runtime):
    texts, names = [t for t, _ in TRAIN], [label for _, label in TRAIN]
    label_names = sorted(set(names))
    labels = [label_names.index(n) for n in names]
    config = DeviceTrainConfig(
        batch_size=8, max_steps=20, eval_every=1, validation_fraction=0.0, lr=5e-3, seed=3
    )
    trainer = GradientTrainer(runtime, "parity", (texts, labels), label_names, config=config)
    batches = [trainer._micro_indices(i).tolist() for i in range(20)]  # the trainer's own shuffle
    init = init_params(
        runtime, len(label_names), config.seed
    )  # the trainer's own init (what fit() starts from)
    outcome = trainer.fit()
    python_losses = [h["train_loss"] for h in outcome.history]
    assert outcome.steps == 20 and len(python_losses) == 20 and outcome.rollbacks == 0
    web = page.evaluate(
        "o => window.edgeEigenlora.trainWith(o)",
        {
            "name": "parity",
            "texts": texts,
            "labels": labels,
            "labelNames": label_names,
            "init": {k: v.tolist() for k, v in init.items()},
            "batches": batches,
            "lr": config.lr,
            "store": False,
        },
    )
    diff = np.abs(np.array(web["losses"]) - np.array(python_losses))
    assert len(web["losses"]) == 20 and diff.max() <= TOL, (web["losses"], python_losses)
    assert python_losses[-1] < python_losses[0]  # it learned something, on both sides


def test_a_task_trained_in_the_page_downloads_loads_in_python_and_survives_a_reload(page, runtime, tmp_path):
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.fill("#train-name", "web-sentiment")
    page.fill("#csv", _csv(TRAIN))
    page.fill("#steps", "24")
    page.fill("#texts", "\n".join(UNSEEN))
    page.click("#train")
    page.wait_for_function(
        "!document.getElementById('download').hidden || !document.getElementById('error').hidden",
        timeout=300_000,
    )
    assert page.is_hidden("#error"), page.inner_text("#error")
    page.wait_for_function("document.querySelectorAll('#results tbody tr').length === 4")
    page.screenshot(path=str(ARTEFACTS / "web_trained_task.png"), full_page=True)
    assert "negative" in page.inner_text("#results") and "positive" in page.inner_text("#results")
    with page.expect_download() as info:
        page.click("#download")
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.name == "web-sentiment.safetensors"
    task = load_task(path, expected_basis=runtime.basis_fingerprint)
    assert (
        task.name == "web-sentiment"
        and task.labels == ["negative", "positive"]
        and task.info["source"] == "web"
    )
    web = np.array(page.evaluate("t => window.edgeEigenlora.predict(t, 'web-sentiment')", UNSEEN))
    python = runtime.run(UNSEEN, task=task)
    assert np.max(np.abs(web - python)) <= TOL
    assert list(python.argmax(-1)) == [1, 0, 1, 0]  # it learned the task (hand-written texts it never saw)
    # The CLI loads the file unchanged: add it to a copy of the bundle's task list through the public API.
    copy = _linked_copy(Path(runtime.root), tmp_path / "b")
    bundle.add_task(copy, path)
    assert bundle.verify_bundle(copy).tasks["web-sentiment"].labels == ("negative", "positive")
    page.reload()
    page.wait_for_function("window.edgeEigenlora?.ready === true")
    page.click("#open")
    page.wait_for_function("!document.getElementById('run').disabled", timeout=120_000)
    assert page.evaluate("window.edgeEigenlora.state.tasks.get('web-sentiment').source") == "browser"


def _stored(page):
    return page.evaluate(
        """() => new Promise((ok) => { const r = indexedDB.open('edge-eigenlora', 1);
        r.onsuccess = () => { const q = r.result.transaction('tasks').objectStore('tasks').count();
        q.onsuccess = () => ok(q.result); }; })"""
    )


@pytest.mark.parametrize(
    "name,csv,message",
    [
        (
            "web-sentiment",
            _csv(TRAIN[:4]),
            r'task "web-sentiment" already exists in this browser; choose another name',
        ),
        ("sentiment", _csv(TRAIN[:4]), r'task "sentiment" already exists in the bundle; choose another name'),
        ("new-a", "text,category\na,b\nc,d\n", r"the header must name columns 'text' and 'label'"),
        ("new-b", _csv(TRAIN[:3]), r'all examples have the same label \("positive"\)'),
        ("../evil", _csv(TRAIN[:4]), r"is not allowed"),
    ],
)
def test_bad_training_input_is_shown_and_nothing_is_stored(page, name, csv, message):
    import re

    before = _stored(page)
    page.fill("#train-name", name)
    page.fill("#csv", csv)
    page.click("#train")
    assert re.search(message, _visible_error(page))
    assert _stored(page) == before


def test_a_url_that_is_not_a_bundle_is_refused_visibly(page):
    page.fill("#bundle-url", "src/")
    page.click("#open")
    assert "is not a bundle" in _visible_error(page) and "HTTP 404" in page.inner_text("#error")
    assert page.evaluate("window.edgeEigenlora.state.engine") is None


def _linked_copy(src, dst):
    """A copy of the bundle whose big files are hard links (never written through: replaced files are new)."""
    shutil.copytree(src, dst, copy_function=os.link)
    for rel in ("manifest.json", *[f"tasks/{p.name}" for p in (src / "tasks").iterdir()]):
        (dst / rel).unlink()
        shutil.copyfile(src / rel, dst / rel)
    return dst


def test_a_tampered_graph_is_refused_with_a_visible_message(browser, web_bundle, tmp_path):
    copy = _linked_copy(Path(web_bundle), tmp_path / "tampered")
    graph = copy / bundle.graph_file(bundle.SHARED)
    data = bytearray(graph.read_bytes())
    graph.unlink()  # a new file: the cached bundle's (hard-linked) graph stays intact
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    server = _serve(copy)
    try:
        page = browser.new_page()
        page.goto(f"{server.url}?bundle=bundle/&threads=1")
        page.wait_for_function("window.edgeEigenlora?.ready === true")
        page.click("#open")
        message = _visible_error(page)
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTEFACTS / "web_tampered_graph.png"), full_page=True)
        assert f"bundle file {graph.name}: sha256 mismatch" in message and "Nothing was loaded" in message
        assert page.evaluate("window.edgeEigenlora.state.engine") is None
        assert page.is_disabled("#run") and page.is_disabled("#train")
        page.close()
    finally:
        server.shutdown()
        server.server_close()
