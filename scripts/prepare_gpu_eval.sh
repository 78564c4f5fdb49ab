#!/usr/bin/env bash
# Run here (where PyPI is reachable) before a GPU call: downloads the wheels of scripts/gpu_eval_wheels.txt
# for the GPU machine (CPython 3.12, manylinux x86-64) into .gpu_eval/wheels, packs them with CIFAR-10
# (CIFAR10_ROOT, default ../shared/cifar10) into xz parts under .gpu_eval/parts (ignored by git), each small
# enough that it and the checkout's tracked and untracked (not ignored) files fit in one 64 MiB call, and
# prints the calls that carry them. Takes ~3 minutes (xz). docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
DATA=${CIFAR10_ROOT:-../shared/cifar10}
[ -d "$DATA/cifar-10-batches-py" ] || { echo "error: $DATA/cifar-10-batches-py not found: set CIFAR10_ROOT to the folder holding it" >&2; exit 2; }
mkdir -p .gpu_eval/wheels
rm -f .gpu_eval/wheels/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .gpu_eval/wheels -r scripts/gpu_eval_wheels.txt
echo "$(ls .gpu_eval/wheels/*.whl | wc -l) wheels, $(du -sm .gpu_eval/wheels | cut -f1) MB"
# What every call carries besides its part and the manifest: the working tree's tracked files (committed weights
# included) and its untracked files that git does not ignore (they travel with each call too, e.g. a results
# file not committed yet). Summed in Python: `xargs du -c | tail -1` gives only the last batch's total when xargs
# splits a long list, and a tracked file deleted from the tree would make du fail under pipefail.
carried=$("$PY" -c '
import os, subprocess
names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, check=True).stdout.split(b"\0")
print(sum(os.path.getsize(n) for n in set(names) if n and os.path.isfile(n)))')
part_mib=$("$PY" -c "print(round(min(59.0, 63.5 - $carried / 2**20 - 0.5), 1))")
echo "tracked and untracked (not ignored) files: $((carried / 1024)) KiB -> parts of at most $part_mib MiB"
"$PY" scripts/gpu_parts.py pack --data "$DATA" --wheels .gpu_eval/wheels --out .gpu_eval/parts --part-mib "$part_mib"
n=$(ls .gpu_eval/parts/part-* | wc -l)
echo
echo "Device calls (run tool; keep them back to back: a machine stays warm ~30 s after a call):"
for i in $(seq 1 "$n"); do
  if [ "$i" = 1 ] && [ "$n" -gt 1 ]; then  # part-1 holds the wheels: install and check them (and a CUDA-graph capture) now
    echo "  call $i: carry [\".gpu_eval/parts/manifest.json\", \".gpu_eval/parts/part-$i\"]  command: scripts/gpu_eval.sh --preflight  timeout_s: 180"
  elif [ "$i" -lt "$n" ]; then
    echo "  call $i: carry [\".gpu_eval/parts/manifest.json\", \".gpu_eval/parts/part-$i\"]  command: python3 scripts/gpu_parts.py check  timeout_s: 120"
  else
    echo "  call $i: carry [\".gpu_eval/parts/manifest.json\", \".gpu_eval/parts/part-$i\"]  command: scripts/gpu_eval.sh  timeout_s: 600"
  fi
done
echo "Then copy \$OUT's summary.json, summary.md and the .pt files into results/gpu_eval/ and commit them."
