# `make train` and `make test` each create .venv and install what they need first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup train test bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

train: setup
	$(PY) train.py $(ARGS)

test: setup
	$(PY) -m pytest

clean:
	rm -rf outputs multirun mlruns mlflow.db .pytest_cache

# Benchmarks (README "Performance"): prints a table, writes bench_results/latest.json. ARGS=--gpu on a GPU.
bench: setup
	$(PY) -m benchmarks $(ARGS)
