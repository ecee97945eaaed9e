#!/usr/bin/env bash
# Installs what the Android demo's JVM core needs to compile and test here (idempotent):
#   - kotlinc (+ kotlin-stdlib, kotlin-test) from the npm package `kotlin-compiler`, pinned, into .tools/kotlin/
#   - JUnit 4 + Hamcrest from Debian (`junit4`), and a JDK (OpenJDK 17) if none is present.
# Network is used only here; scripts/android_core_test.sh runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
KOTLIN_VERSION="${KOTLIN_VERSION:-2.4.20}"
TOOLS="${EDGE_TOOLS_DIR:-$PWD/.tools}"
PREFIX="$TOOLS/kotlin"

if [ ! -x "$PREFIX/node_modules/kotlin-compiler/bin/kotlinc" ] \
   || [ "$(cat "$PREFIX/.version" 2>/dev/null)" != "$KOTLIN_VERSION" ]; then
  command -v npm >/dev/null || { echo "npm is required (apt-get install -y npm)" >&2; exit 1; }
  mkdir -p "$PREFIX"
  [ -f "$PREFIX/package.json" ] || echo '{"name":"edge-eigenlora-tools","private":true}' > "$PREFIX/package.json"
  npm install --prefix "$PREFIX" --no-audit --no-fund --save-exact "kotlin-compiler@$KOTLIN_VERSION" >&2
  chmod +x "$PREFIX"/node_modules/kotlin-compiler/bin/* 2>/dev/null || true
  echo "$KOTLIN_VERSION" > "$PREFIX/.version"
fi

need=()
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
[ -f /usr/share/java/junit4.jar ] || need+=(junit4)
[ -f /usr/share/java/hamcrest-core.jar ] || [ -f /usr/share/java/hamcrest.jar ] || need+=(libhamcrest-java)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
touch "$PREFIX/.ready" # make's stamp: written only when every tool is in place
echo "kotlinc: $PREFIX/node_modules/kotlin-compiler/bin/kotlinc ($KOTLIN_VERSION); junit: /usr/share/java/junit4.jar"
