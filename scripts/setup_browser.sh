#!/usr/bin/env bash
# What the browser test and benchmark need besides .venv: the page's npm modules, Debian's chromium (installed
# with apt when missing; never a browser download) and playwright from the project's `web` extra, pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_web.sh
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "setup_browser: chromium is missing; install it: sudo apt-get install -y chromium" >&2
    exit 1
  fi
fi
if ! .venv/bin/python -c "import playwright" 2>/dev/null; then
  .venv/bin/pip install -q -c requirements/constraints.txt -e ".[web]"
fi
