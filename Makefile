# `make demo`, `make train` and `make test` each create .venv and install what they need first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup demo train test bench gpu-smoke gpu-eval-parts clean
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

# The GPU evaluation (docs/gpu.md): its whole path on the CPU with tiny settings (~2 minutes), and the
# parts a GPU call carries (CIFAR-10 + wheels, ~3 minutes).
gpu-smoke: setup
	PYTHON=$(PY) scripts/gpu_eval.sh --smoke --out gpu_eval_out/smoke

gpu-eval-parts: setup
	PYTHON=$(PY) scripts/prepare_gpu_eval.sh

clean:
	rm -rf outputs multirun mlruns mlflow.db .pytest_cache gpu_eval_out

# Benchmarks (README "Performance"): prints a table, writes bench_results/latest.json. ARGS=--gpu on a GPU.
bench: setup
	$(PY) -m benchmarks $(ARGS)
