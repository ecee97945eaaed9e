"""Benchmarks: accuracy (benchmarks.accuracy), controls and report; results under benchmarks/results/."""

import os
from pathlib import Path

# Where every benchmark keeps what it builds (banks, bundles, run logs, peers' models): large and regenerable,
# so outside the checkout. EDGE_EIGENLORA_CACHE moves it (a bigger disk, a shared cache for shard workers).
CACHE_ROOT = Path(os.environ.get("EDGE_EIGENLORA_CACHE", Path.home() / ".cache" / "edge-eigenlora"))
