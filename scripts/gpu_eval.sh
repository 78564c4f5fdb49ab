#!/usr/bin/env bash
# The whole GPU evaluation in one command (docs/gpu.md): unpack the carried parts (CIFAR-10 and the
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
# MLflow's telemetry starts threads that send to the internet, which no GPU machine reaches: off.
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
PARTS=${GPU_EVAL_PARTS:-.gpu_eval/parts}  # where the carried parts are
smoke=0; preflight=0; out_dir=${OUT:-}; previous=
for arg in "$@"; do
  [ "$arg" = --smoke ] && smoke=1
  [ "$arg" = --preflight ] && preflight=1
  [ "$previous" = --out ] && out_dir=$arg
  case "$arg" in --out=*) out_dir=${arg#--out=};; esac
  previous=$arg
done
out_dir=${out_dir:-gpu_eval_out}  # gpu_eval.py's own default
# A failure before scripts/gpu_eval.py starts (it writes its own log and summary) goes into the output folder
# too: on the GPU machine that folder is all a call returns, so an error printed only to the terminal of a
# call that ends there is lost with everything else. gpu_eval.log gets the message, summary.json the same
# shape as a run's (details.complete false, the failed step "setup").
fail() {
  echo "$1" >&2
  mkdir -p "$out_dir" && printf '%s\n' "$1" >> "$out_dir/gpu_eval.log"
  "$PY" -c 'import json, sys
folder, message = sys.argv[1], sys.argv[2]
with open(folder + "/summary.json", "w") as f:
    f.write(json.dumps({"details": {"complete": False, "steps": {"setup": {"status": "failed", "error": message}}}},
                       indent=1) + "\n")' "$out_dir" "$1" || true
  exit 2
}
if [ "$preflight" = 1 ]; then  # the first call: the wheels from part-1 alone (they come first in the parts)
  if [ -f "$PARTS/manifest.json" ]; then
    if ! said=$("$PY" scripts/gpu_parts.py wheels --parts "$PARTS" --into .gpu_eval 2>&1); then fail "$said"; fi
    echo "$said"
  fi
elif [ -f "$PARTS/manifest.json" ] && [ "$smoke" = 0 ]; then
  if ! said=$("$PY" scripts/gpu_parts.py unpack --parts "$PARTS" --into .gpu_eval 2>&1); then fail "$said"; fi
  echo "$said"
elif [ "$smoke" = 0 ] && [ ! -d .gpu_eval/data/cifar-10-batches-py ] && [ -z "${CIFAR10_ROOT:-}" ]; then
  fail "error: no parts in $PARTS and no CIFAR-10 in .gpu_eval/data: run scripts/prepare_gpu_eval.sh here and carry the parts (docs/gpu.md)"
fi
# What the image itself has, before any carried wheel shadows it (a carried wheel that the image rejects shows here).
"$PY" - <<'PYEOF' || true
import importlib.metadata as md
found = []
for name in ("torch", "numpy", "protobuf", "typing-extensions", "pydantic"):
    try:
        found.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        found.append(f"{name} -")
print("image: " + ", ".join(found))
PYEOF
# Installed by an earlier call on this (still warm) machine? Then use that.
if [ -d /tmp/gpu_eval_site ]; then export PYTHONPATH=/tmp/gpu_eval_site${PYTHONPATH:+:$PYTHONPATH}; fi
if ! "$PY" -c "import hydra, omegaconf, optuna, mlflow, sqlalchemy, alembic" 2>/dev/null; then
  if compgen -G ".gpu_eval/wheels/*.whl" >/dev/null; then
    started=$(date +%s)
    if ! said=$("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target /tmp/gpu_eval_site .gpu_eval/wheels/*.whl 2>&1); then
      fail "error: installing the carried wheels failed: $said"
    fi
    case ":${PYTHONPATH:-}:" in *:/tmp/gpu_eval_site:*) ;; *) export PYTHONPATH=/tmp/gpu_eval_site${PYTHONPATH:+:$PYTHONPATH};; esac
    echo "installed $(ls .gpu_eval/wheels/*.whl | wc -l) wheels into /tmp/gpu_eval_site in $(( $(date +%s) - started )) s"
  else
    fail "error: $PY lacks hydra/omegaconf/optuna/mlflow/sqlalchemy/alembic and .gpu_eval/wheels has no wheels: run scripts/prepare_gpu_eval.sh here and carry the parts"
  fi
fi
exec "$PY" scripts/gpu_eval.py "$@"
