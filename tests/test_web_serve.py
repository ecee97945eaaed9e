"""`edge-eigenlora-device serve`: the page and exactly the bundle's listed files on 127.0.0.1, nothing else (no
path traversal, encoded or not; no unlisted or symlinked file), and the page's contract names equal bundle.py's."""

import http.client
import re
import shutil
import threading
from pathlib import Path

import pytest

from edge_eigenlora import bundle
from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.runtime.__main__ import main
from edge_eigenlora.runtime.serve import BundleServer

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "android_demo" / "core" / "src" / "test" / "resources" / "golden"


@pytest.fixture
def served(tmp_path):
    src = shutil.copytree(GOLDEN / "bundle", tmp_path / "b")
    server = BundleServer(src, 0, require_vendor=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, src
    server.shutdown()
    server.server_close()


def _get(server, path, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.request(method, path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body


def test_serves_the_page_and_every_listed_bundle_file_byte_for_byte(served):
    server, src = served
    status, headers, body = _get(server, "/")
    assert status == 200 and b'<script type="module" src="src/app.js">' in body
    assert (
        headers["Content-Type"].startswith("text/html")
        and headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    )
    status, headers, body = _get(server, "/src/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert _get(server, "/bundle/manifest.json")[2] == (src / "manifest.json").read_bytes()
    for rel in bundle.read_manifest(src).files:
        status, _, body = _get(server, f"/bundle/{rel}?x=1")
        assert status == 200 and body == (src / rel).read_bytes(), rel
    status, headers, body = _get(server, "/bundle/tokenizer/vocab.txt", "HEAD")
    assert (
        status == 200
        and body == b""
        and int(headers["Content-Length"]) == (src / "tokenizer/vocab.txt").stat().st_size
    )


@pytest.mark.parametrize(
    "path",
    [
        "/bundle/../../../../etc/passwd",
        "/bundle/%2e%2e/%2e%2e/etc/passwd",
        "/bundle/tasks/..%2f..%2fmanifest.json",
        "/src/../../pyproject.toml",
        "/../pyproject.toml",
        "//etc/passwd",
        "/bundle/notes.txt",
        "/bundle/link",
        "/bundle/.manifest.lock",
        "/node_modules/onnxruntime-web/package.json",
        "/bundle/",
        "/src/",
    ],
)
def test_nothing_outside_the_table_is_served(served, path):
    server, src = served
    (src / "notes.txt").write_text("private")
    (src / "link").symlink_to("/etc/hostname")
    status, _, body = _get(server, path)
    assert status == 404 and b"private" not in body and b"root:" not in body


def test_a_task_added_while_serving_is_served_and_a_listed_file_replaced_by_a_symlink_is_not(served):
    server, src = served
    task = bundle.load_bundle_task(src, "topic")
    task.name = "fresh"
    bundle.add_task_object(src, task)
    status, _, body = _get(server, "/bundle/tasks/fresh.safetensors")
    assert status == 200 and body == (src / "tasks" / "fresh.safetensors").read_bytes()
    (src / "tasks" / "topic.safetensors").unlink()
    (src / "tasks" / "topic.safetensors").symlink_to("/etc/hostname")
    assert _get(server, "/bundle/tasks/topic.safetensors")[0] == 404


def test_only_get_and_head(served):
    server, _ = served
    assert _get(server, "/", "POST")[0] == 501
    assert _get(server, "/bundle/manifest.json", "PUT")[0] == 501


def test_serve_refuses_a_folder_that_is_not_a_bundle_and_a_bad_port(tmp_path, capsys):
    with pytest.raises(EdgeEigenLoraError, match=r"manifest.json does not exist .* is not a bundle"):
        BundleServer(tmp_path, 0, require_vendor=False)
    assert main(["serve", str(tmp_path)]) == 2
    assert "is not a bundle" in capsys.readouterr().err
    assert main(["serve", str(GOLDEN / "bundle"), "--port", "70000"]) == 2
    assert "--port must be between 0 and 65535" in capsys.readouterr().err


def test_the_page_spells_the_contract_names_as_bundle_py_does():
    js = (ROOT / "web" / "src" / "contract.js").read_text()
    consts = dict(re.findall(r'export const ([A-Z_]+) = "([^"]*)";', js))
    for name in (
        "FORMAT",
        "MANIFEST",
        "SHARED",
        "PER_ROW",
        "TRAIN_STEP",
        "INPUT_IDS",
        "ATTENTION_MASK",
        "LABELS",
        "COEFFICIENTS",
        "HEAD_WEIGHT",
        "HEAD_BIAS",
        "LOGITS",
        "LOSS",
        "GRAD_PREFIX",
    ):
        assert consts[name] == getattr(bundle, name), name
    from edge_eigenlora import task

    assert consts["TASK_FORMAT"] == task.TASK_FORMAT and consts["TASK_FORMAT_VERSION"] == str(
        task.TASK_FORMAT_VERSION
    )
    assert re.search(r"READABLE_VERSIONS = \[1, 2\]", js) and bundle.FORMAT_VERSION == 2
    assert bundle.TASK_NAME.pattern in js
