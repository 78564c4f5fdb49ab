# `make demo`, `make train` and `make test` each create .venv and install what they need first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup demo train test bench gpu-check-smoke clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The main job in miniature: a budget-gated Optuna sweep of model=tiny on the CPU (conf/experiment/demo.yaml).
demo: setup
	$(PY) train.py -m experiment=demo $(ARGS)

train: setup
	$(PY) train.py $(ARGS)

test: setup
	$(PY) -m pytest

gpu-check-smoke: setup
	PYTHON=$(PY) scripts/gpu_check.sh --smoke

clean:
	rm -rf outputs multirun mlruns mlflow.db .pytest_cache gpu_check_out

# Benchmarks (README "Performance"): prints a table, writes bench_results/latest.json. ARGS=--gpu on a GPU.
bench: setup
	$(PY) -m benchmarks $(ARGS)
