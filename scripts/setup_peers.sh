#!/usr/bin/env bash
# Installs the decoder-LM peers that benchmarks/lm.py (benchmarks/lm_peers.py) measures against (issue 12):
#   onnxruntime-genai 0.18.0 into .venv (a wheel; it needs onnxruntime>=1.31, so the pinned 1.32.0 stays);
#   a venv for its model builder and llama.cpp's converters, ~/.cache/edge-eigenlora/peers/builder-venv
#   (transformers 5.23.0 + sentencepiece over .venv);
#   llama-cpp-python 0.3.36 into .venv, built from its sdist (CPU only, at most 2 compile jobs), and the
#   sdist's vendored llama.cpp converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/, gguf-py) unpacked
#   under ~/.cache/edge-eigenlora/peers/llama.cpp-0.3.36.
# The built wheel is cached under ~/.cache/edge-eigenlora/wheels/llama-cpp-python-<version>-<cpu key>/ (keyed by
# a hash of the CPU's flags, in case the build picks CPU-specific kernels): a second set-up installs it in
# seconds. Its build's wall time is written next to it, in build_seconds.txt. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PIP="$VENV/bin/pip"
PY="$VENV/bin/python"
[ -x "$PY" ] || bash scripts/setup_env.sh
LLAMA_VERSION=0.3.36
CACHE="${EDGE_EIGENLORA_CACHE:-$HOME/.cache/edge-eigenlora}"
CPU_KEY=$( (grep -m1 '^flags' /proc/cpuinfo || uname -m) | sha256sum | cut -c1-12)
WHEELS="$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-$CPU_KEY"
SRC="$CACHE/peers/src"
CONVERTERS="$CACHE/peers/llama.cpp-$LLAMA_VERSION"
mkdir -p "$WHEELS" "$SRC"

# onnxruntime-genai and the peers' small pure-Python dependencies, under the project's pins
# (requirements/constraints.txt keeps onnxruntime==1.32.0 and torch==2.13.0).
"$PIP" install -q -c requirements/constraints.txt onnxruntime-genai==0.18.0 diskcache==5.6.3 jinja2==3.1.6 \
  gguf==0.19.0 "typing-extensions>=4.5.0"

# onnxruntime-genai 0.18's model builder (python -m onnxruntime_genai.models.builder) imports classes that only
# transformers 5.x has, and the project pins 4.57.6; llama.cpp's convert_hf_to_gguf.py imports sentencepiece
# even for a tokenizer.json model. So the builder and the converters run in their own venv: transformers 5.23.0 and
# the huggingface_hub / tokenizers it needs, over the project's .venv (a .pth file gives torch, peft, onnx,
# onnxruntime-genai). Nothing else uses it; the project's .venv keeps transformers 4.57.6.
BUILDER="$CACHE/peers/builder-venv"
if [ ! -f "$BUILDER/.ready" ]; then
  rm -rf "$BUILDER"
  "$PY" -m venv "$BUILDER"
  "$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
    >"$("$BUILDER/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_project_venv.pth"
  "$BUILDER/bin/pip" install -q transformers==5.23.0 huggingface_hub==2.4.0 tokenizers==0.23.3 sentencepiece==0.2.1
  touch "$BUILDER/.ready"
fi

SDIST="$SRC/llama_cpp_python-$LLAMA_VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  "$PIP" download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$SRC"
fi
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "setup_peers: building llama-cpp-python $LLAMA_VERSION from source (CPU only, 2 jobs; ~10-20 min on 2 cores)" >&2
  start=$(date +%s)
  CMAKE_ARGS="-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF -DGGML_BLAS=OFF \
-DGGML_RPC=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=2 MAKEFLAGS=-j2 \
    "$PIP" wheel -q --no-deps -w "$WHEELS" "$SDIST"
  echo $(($(date +%s) - start)) >"$WHEELS/build_seconds.txt"
  echo "setup_peers: built in $(cat "$WHEELS/build_seconds.txt") s" >&2
fi
"$PIP" install -q --no-deps "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl

# The converters ship only in the sdist (vendor/llama.cpp); unpack them once.
if [ ! -f "$CONVERTERS/conversion/__init__.py" ]; then
  tmp=$(mktemp -d)
  tar xzf "$SDIST" -C "$tmp" "llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" \
    "llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp/convert_lora_to_gguf.py" \
    "llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp/gguf-py" "llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp/conversion"
  rm -rf "$CONVERTERS"
  mv "$tmp/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp" "$CONVERTERS"
  rm -rf "$tmp"
fi

"$PY" - <<'EOF'
import importlib.metadata as md
import onnxruntime, onnxruntime_genai, llama_cpp, transformers  # noqa: F401
assert onnxruntime.__version__ == "1.32.0", onnxruntime.__version__
assert transformers.__version__ == "4.57.6", transformers.__version__
print("setup_peers: onnxruntime", onnxruntime.__version__, "onnxruntime-genai", md.version("onnxruntime-genai"),
      "llama-cpp-python", llama_cpp.__version__)
EOF
touch "$VENV/.peers-ready"
