#!/usr/bin/env bash
# Installs the Debian packages that ship real labelled text for edge_eigenlora.datasets:
# fortunes (English topics) + language packs (language-ID and non-English topic tasks) and
# wordnet-base (semantic-category tasks). Idempotent: returns at once when all are installed.
# Skips with a warning (exit 0) when apt-get is missing or we are not root; the affected tasks then
# raise TaskSourceMissing with the install command.
set -uo pipefail

PACKAGES=(fortunes fortunes-min fortunes-de fortunes-it fortunes-es fortunes-br fortunes-ru
          fortunes-pl fortunes-cs fortunes-eo fortunes-ga fortunes-bg wordnet-base)

installed() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'; }

missing=()
if command -v dpkg >/dev/null 2>&1; then
  for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
else
  missing=("${PACKAGES[@]}")
fi
[ ${#missing[@]} -eq 0 ] && exit 0

warn() { echo "install_system_data: WARNING: $*; some dataset tasks will be unavailable" >&2; }
if ! command -v apt-get >/dev/null 2>&1; then
  warn "no apt-get; install by hand: ${missing[*]}"; exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
    warn "not root; run: sudo apt-get install -y ${missing[*]}"; exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive

# Keep only the packages apt knows (language packs vary by release); update the index once if needed.
available() {
  local out=()
  for p in "${missing[@]}"; do
    apt-cache show "$p" >/dev/null 2>&1 && out+=("$p")
  done
  echo "${out[@]:-}"
}
to_install=$(available)
if [ "$to_install" != "${missing[*]}" ]; then
  "${SUDO[@]}" apt-get update -q >/dev/null 2>&1 || warn "apt-get update failed"
  to_install=$(available)
fi
for p in "${missing[@]}"; do
  case " $to_install " in *" $p "*) ;; *) warn "package $p not available from apt";; esac
done
[ -z "$to_install" ] && exit 0
# shellcheck disable=SC2086
if ! log=$("${SUDO[@]}" apt-get install -y -q --no-install-recommends $to_install 2>&1); then
  echo "$log" | tail -20 >&2
  warn "apt-get install failed for: $to_install"
fi
exit 0
