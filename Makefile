# Each target creates the environment when it is missing, then does its job.
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env demo test test-all lint format bench clean

$(VENV)/.ready: pyproject.toml requirements/constraints.txt requirements/data-packages.txt scripts/setup_env.sh
	bash scripts/setup_env.sh

env: $(VENV)/.ready

demo: $(VENV)/.ready
	$(VENV)/bin/edge-eigenlora demo

lint: $(VENV)/.ready
	$(VENV)/bin/ruff check edge_eigenlora tests benchmarks scripts
	$(VENV)/bin/ruff format --check edge_eigenlora tests benchmarks scripts

format: $(VENV)/.ready
	$(VENV)/bin/ruff format edge_eigenlora tests benchmarks scripts
	$(VENV)/bin/ruff check --fix edge_eigenlora tests benchmarks scripts

test: lint
	$(PY) -m pytest -q

test-all: lint
	$(PY) -m pytest -q -m ""

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
