"""The bundle the web page opens: the Android goldens' recipe (real all-MiniLM-L6-v2, K=16, rank 8, int8 basis,
tasks "sentiment" and "topic", train-step graph) plus the per-row graph, without .ort files.

    python scripts/make_web_bundle.py        # build (or verify) the cached bundle and print its path

Cached outside git (EDGE_EIGENLORA_WEB_BUNDLE, default ~/.cache/edge-eigenlora/web/bundle-minilm-k16-r8); ~3 min
to export on 2 cores the first time. Same seeds as the goldens, so their tokenizer and packing cases apply to it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_android_goldens import build_bundle  # noqa: E402

from edge_eigenlora.bundle import PER_ROW, SHARED  # noqa: E402

__all__ = ["DEFAULT_WEB_BUNDLE", "web_bundle"]

DEFAULT_WEB_BUNDLE = Path.home() / ".cache" / "edge-eigenlora" / "web" / "bundle-minilm-k16-r8"


def web_bundle(path: Path | None = None) -> Path:
    """The cached web bundle: verified when present, else exported."""
    path = path or Path(os.environ.get("EDGE_EIGENLORA_WEB_BUNDLE", DEFAULT_WEB_BUNDLE))
    return build_bundle(path, variants=(SHARED, PER_ROW), ort_format=False)


if __name__ == "__main__":
    print(web_bundle())
