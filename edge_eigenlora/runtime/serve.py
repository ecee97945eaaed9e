"""Serve the web page (web/) and one bundle on 127.0.0.1 with the standard library: `edge-eigenlora-device serve`.

Only known files are served, looked up by exact URL path in a table (never joined from the request): the page's
own files, the two vendored npm modules it imports, and the bundle's manifest plus the files the manifest lists.
So `..`, encoded or not, a symlink or an unlisted file in the bundle folder can never be reached. The page checks
every file's sha256 itself (WebCrypto); the server only refuses a folder whose manifest does not parse.
"""

from __future__ import annotations

import http.server
import os
import shutil
import sys
import threading
import urllib.parse
from pathlib import Path

from edge_eigenlora import bundle as contract
from edge_eigenlora.errors import EdgeEigenLoraError

__all__ = ["BUNDLE_PREFIX", "BundleServer", "default_web_root", "page_routes", "serve"]

BUNDLE_PREFIX = "/bundle/"
# The npm files the page's import map names: onnxruntime-web's WebAssembly build and the tokenizer library.
VENDOR = {
    "/vendor/onnxruntime-web/": (
        "onnxruntime-web/dist",
        ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
    ),
    "/vendor/tokenizers/": ("@huggingface/tokenizers/dist", ("tokenizers.min.mjs",)),
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
}


def default_web_root() -> Path:
    """The checkout's web/ folder (the page ships with the source tree, next to the package)."""
    return Path(__file__).resolve().parents[2] / "web"


def page_routes(web: Path, *, require_vendor: bool = True) -> dict[str, Path]:
    """URL path -> file for the page: index.html, style.css, src/*.js and the vendored modules."""
    index = web / "index.html"
    if not index.is_file():
        raise EdgeEigenLoraError(
            f"{index} is missing: the web page ships in the source tree's web/ folder; give --web DIR."
        )
    routes = {"/": index, "/index.html": index, "/style.css": web / "style.css"}
    routes.update({f"/src/{p.name}": p for p in sorted((web / "src").glob("*.js"))})
    for prefix, (folder, names) in VENDOR.items():
        for name in names:
            path = web / "node_modules" / folder / name
            if path.is_file():
                routes[prefix + name] = path
            elif require_vendor:
                raise EdgeEigenLoraError(
                    f"{path} is missing: the page's npm dependencies are not installed. Run `make web-setup` "
                    "(scripts/setup_web.sh: npm ci in web/)."
                )
    return routes


class BundleServer(http.server.ThreadingHTTPServer):
    """An HTTP server for the page and one bundle; bundle routes follow the manifest as it changes on disk."""

    daemon_threads = True

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        port: int = 8765,
        *,
        web: Path | None = None,
        require_vendor: bool = True,
    ) -> None:
        self.bundle = Path(bundle)
        contract.read_manifest(self.bundle)  # refuse a folder that is not a bundle before listening
        self.pages = page_routes(web or default_web_root(), require_vendor=require_vendor)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._bundle_routes: dict[str, Path] = {}
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def bundle_routes(self) -> dict[str, Path]:
        """manifest.json and every file it lists (checked to stay inside the folder), re-read when it changes."""
        path = self.bundle / contract.MANIFEST
        st = path.stat()
        with self._lock:
            if self._stamp != (st.st_mtime_ns, st.st_size):
                manifest = contract.read_manifest(self.bundle)
                routes = {BUNDLE_PREFIX + contract.MANIFEST: path}
                for rel in manifest.files:
                    try:
                        routes[BUNDLE_PREFIX + rel] = contract.inside_bundle(self.bundle, rel, str(path))
                    except EdgeEigenLoraError:
                        continue  # a listed path that leaves the folder is never served
                self._bundle_routes, self._stamp = routes, (st.st_mtime_ns, st.st_size)
            return self._bundle_routes

    def lookup(self, raw_path: str) -> Path | None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(raw_path).path)
        if path in self.pages:
            return self.pages[path]
        if path.startswith(BUNDLE_PREFIX):
            try:
                return self.bundle_routes().get(path)
            except (OSError, EdgeEigenLoraError):
                return None
        return None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: BundleServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._send(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(body=False)

    def _send(self, body: bool) -> None:
        path = self.server.lookup(self.path)
        if path is None or path.is_symlink() or not path.is_file():
            self.send_error(404, "not a file of this page or of the bundle's manifest")
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # Cross-origin isolation lets onnxruntime-web use WebAssembly threads (SharedArrayBuffer).
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.end_headers()
        if body:
            with open(path, "rb") as fh:
                try:
                    shutil.copyfileobj(fh, self.wfile)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the page went away mid-download

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        if os.environ.get("EDGE_EIGENLORA_SERVE_LOG"):
            super().log_message(format, *args)


def serve(bundle: str | os.PathLike[str], port: int = 8765, web: Path | None = None) -> int:
    """Serve until interrupted; prints the page's URL."""
    server = BundleServer(bundle, port, web=web)
    print(
        f"serving {bundle} at {server.url}?bundle=bundle/ (127.0.0.1 only; Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
