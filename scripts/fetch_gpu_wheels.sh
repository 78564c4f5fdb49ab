#!/usr/bin/env bash
# Download (here, where PyPI is reachable) the pure-Python wheels train.py needs that the GPU image lacks,
# into .whl/ (ignored by git, ~0.5 MB); carry .whl with the GPU call and gpu_check.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl hydra-core==1.4.0rc3 omegaconf==2.4.1rc1
ls -l .whl
