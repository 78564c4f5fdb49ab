#!/usr/bin/env bash
# The whole GPU evaluation in one command (README "On a GPU"): unpack the carried parts (CIFAR-10 and the
# wheels of Hydra, OmegaConf, Optuna, MLflow, SQLAlchemy, Alembic and what they import), install the wheels
# into /tmp/gpu_eval_site when those packages are missing, then scripts/gpu_eval.py: throughput, the family
# sweep, the best architecture and the paper's final model trained for the same time, the summary.
#   scripts/gpu_eval.sh                # on the GPU machine, after the parts arrived; writes under $OUT
#   scripts/gpu_eval.sh --preflight    # first call, part-1 here: install the wheels, check them and a CUDA-graph capture
#   scripts/gpu_eval.sh --smoke        # the same path on a CPU with tiny settings (make gpu-smoke)
# Before, here: scripts/prepare_gpu_eval.sh makes the parts and prints the calls that carry them.
# Extra arguments go to scripts/gpu_eval.py (--budget SECONDS, --out DIR, --results DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export GPU_EVAL_STARTED=${GPU_EVAL_STARTED:-$(date +%s)}
export PYTHONUNBUFFERED=1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
PARTS=${GPU_EVAL_PARTS:-.gpu_eval/parts}  # where the carried parts are
smoke=0; preflight=0
for arg in "$@"; do
  [ "$arg" = --smoke ] && smoke=1
  [ "$arg" = --preflight ] && preflight=1
done
if [ "$preflight" = 1 ]; then  # the first call: the wheels from part-1 alone (they come first in the parts)
  if [ -f "$PARTS/manifest.json" ]; then "$PY" scripts/gpu_parts.py wheels --parts "$PARTS" --into .gpu_eval; fi
elif [ -f "$PARTS/manifest.json" ] && [ "$smoke" = 0 ]; then
  "$PY" scripts/gpu_parts.py unpack --parts "$PARTS" --into .gpu_eval
elif [ "$smoke" = 0 ] && [ ! -d .gpu_eval/data/cifar-10-batches-py ] && [ -z "${CIFAR10_ROOT:-}" ]; then
  echo "error: no parts in $PARTS and no CIFAR-10 in .gpu_eval/data: run scripts/prepare_gpu_eval.sh here and carry the parts (README \"On a GPU\")" >&2
  exit 2
fi
# Installed by an earlier call on this (still warm) machine? Then use that.
if [ -d /tmp/gpu_eval_site ]; then export PYTHONPATH=/tmp/gpu_eval_site${PYTHONPATH:+:$PYTHONPATH}; fi
if ! "$PY" -c "import hydra, omegaconf, optuna, mlflow, sqlalchemy, alembic" 2>/dev/null; then
  if compgen -G ".gpu_eval/wheels/*.whl" >/dev/null; then
    started=$(date +%s)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_eval_site \
      .gpu_eval/wheels/*.whl
    case ":${PYTHONPATH:-}:" in *:/tmp/gpu_eval_site:*) ;; *) export PYTHONPATH=/tmp/gpu_eval_site${PYTHONPATH:+:$PYTHONPATH};; esac
    echo "installed $(ls .gpu_eval/wheels/*.whl | wc -l) wheels into /tmp/gpu_eval_site in $(( $(date +%s) - started )) s"
  else
    echo "error: $PY lacks hydra/omegaconf/optuna/mlflow/sqlalchemy/alembic and .gpu_eval/wheels has no wheels: run scripts/prepare_gpu_eval.sh here and carry the parts" >&2
    exit 2
  fi
fi
exec "$PY" scripts/gpu_eval.py "$@"
