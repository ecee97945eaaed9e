#!/usr/bin/env bash
# ARM64 (aarch64) Python for running the device runtime under qemu-user, on an x86-64 Linux host (idempotent).
#   - Debian qemu-user-static + debootstrap (apt, as root or with sudo)
#   - a minimal Debian bookworm arm64 root with python3.11 (debootstrap --foreign, .debs unpacked with dpkg-deb)
#   - the REAL aarch64 wheels of onnxruntime / numpy / safetensors / tokenizers (pip --platform manylinux_2_28_aarch64 and
#     the older manylinux tags: pip does not widen an explicit --platform itself)
#   - an ARM-looking proc/cpuinfo (onnxruntime's CPU detection crashes on the host's x86 one)
# Everything goes to $EDGE_ARM64_CACHE (default ~/.cache/edge-eigenlora/arm64), outside git. ~250 MB, ~2-5 min.
# Run:  qemu-aarch64-static -L $CACHE/rootfs $CACHE/rootfs/usr/bin/python3.11 script.py   (PYTHONPATH=$CACHE/site:repo)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${EDGE_ARM64_CACHE:-$HOME/.cache/edge-eigenlora/arm64}"
ROOTFS="$CACHE/rootfs"
SITE="$CACHE/site"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Same versions as the x86 device extra (pyproject.toml), so the two runs differ only by CPU architecture.
WHEELS=(onnxruntime==1.32.0 numpy==2.4.6 safetensors==0.8.0 tokenizers==0.22.2)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-user-static debootstrap >&2
fi

if [ ! -x "$ROOTFS/usr/bin/python3.11" ]; then
  rm -rf "$ROOTFS.tmp"
  mkdir -p "$CACHE"
  # --foreign: download and unpack only (no chroot, no binfmt needed); the .debs stay in var/cache/apt/archives.
  $SUDO debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 bookworm "$ROOTFS.tmp" "$MIRROR" >&2
  for deb in "$ROOTFS.tmp"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOTFS.tmp"; done
  rm -rf "$ROOTFS.tmp"/var/cache/apt/archives/*.deb
  [ -x "$ROOTFS.tmp/usr/bin/python3.11" ] || { echo "python3.11 missing from the arm64 root" >&2; exit 1; }
  rm -rf "$ROOTFS"; mv "$ROOTFS.tmp" "$ROOTFS"
fi

mkdir -p "$ROOTFS/proc"
cat > "$ROOTFS/proc/cpuinfo" <<'CPU'
processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0b
CPU revision	: 1

CPU

stamp="$(printf '%s\n' "${WHEELS[@]}")"
if [ "$(cat "$SITE/.wheels" 2>/dev/null)" != "$stamp" ]; then
  PY="${PYTHON:-.venv/bin/python}"
  [ -x "$PY" ] || PY=python3
  rm -rf "$SITE"
  "$PY" -m pip install --quiet --target "$SITE" --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --only-binary=:all: \
    --python-version 3.11 --implementation cp --no-warn-conflicts "${WHEELS[@]}" >&2
  printf '%s\n' "${WHEELS[@]}" > "$SITE/.wheels"
fi

# Smoke test: the aarch64 interpreter imports the aarch64 onnxruntime.
PYTHONPATH="$SITE" qemu-aarch64-static -L "$ROOTFS" "$ROOTFS/usr/bin/python3.11" -c \
  "import platform, numpy, onnxruntime; print('arm64 ready:', platform.machine(), 'onnxruntime', onnxruntime.__version__, 'numpy', numpy.__version__)"
echo "$CACHE"
