#!/usr/bin/env bash
# One-GPU check, about 8 minutes (budget 450 s of work plus start-up): throughput of model=final
# (fp32 vs bf16+channels_last vs +torch.compile), then as many epochs of recipe=fast as fit.
#   CIFAR10_ROOT=.gpudata scripts/gpu_check.sh            # on the GPU machine; writes $OUT/gpu_check.{log,json}
#   CIFAR10_ROOT=../shared/cifar10 scripts/gpu_check.sh --smoke   # the same path on a CPU, tiny settings
# The GPU image has PyTorch but not Hydra/OmegaConf: carry the wheels scripts/fetch_gpu_wheels.sh puts
# in .whl/ and they are installed into /tmp/gpu_check_site here (real MLflow and Optuna, no stand-ins).
# Extra arguments go to scripts/gpu_check.py (--budget, --max-epochs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_check_site .whl/*.whl
    export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "error: $PY lacks hydra-core/omegaconf and .whl/ has no wheels: run scripts/fetch_gpu_wheels.sh here and carry .whl" >&2
    exit 2
  fi
fi
export PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py "$@"
