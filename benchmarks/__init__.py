"""Benchmarks: accuracy (benchmarks.accuracy), controls and report; results under benchmarks/results/."""

import json
import os
from pathlib import Path
from typing import Any

# Where every benchmark keeps what it builds (banks, bundles, run logs, peers' models): large and regenerable,
# so outside the checkout. EDGE_EIGENLORA_CACHE moves it (a bigger disk, a shared cache for shard workers).
CACHE_ROOT = Path(os.environ.get("EDGE_EIGENLORA_CACHE", Path.home() / ".cache" / "edge-eigenlora"))


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Appends one JSON line in a single O_APPEND write, so shard workers sharing a run log cannot interleave
    parts of their lines; a line cut short by a kill is skipped when the log is read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)
