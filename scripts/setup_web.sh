#!/usr/bin/env bash
# Installs the web page's npm dependencies (onnxruntime-web, @huggingface/tokenizers) from web/package-lock.json.
# ONNXRUNTIME_NODE_INSTALL=skip and --ignore-scripts: no install script may reach a host other than the registry
# (the page needs none of them). Safe to re-run; node 18+ is required (Debian's nodejs package).
set -euo pipefail
cd "$(dirname "$0")/../web"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup_web: node and npm are needed (apt-get install -y nodejs npm)" >&2
  exit 1
fi
ONNXRUNTIME_NODE_INSTALL=skip npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
touch node_modules/.ready
