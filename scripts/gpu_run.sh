#!/usr/bin/env bash
# Run on the GPU machine from the repository root: the whole test suite (torch-cuda and cupy
# included) and the benchmarks.  Usage: scripts/gpu_run.sh OUT_DIR [tests|bench|all] [pytest args...]
# Nothing is installed from the network: test tools come as wheels in .whl/ if missing.
set -uo pipefail
out=${1:?usage: scripts/gpu_run.sh OUT_DIR [tests|bench|all]}; what=${2:-all}; shift 2 || shift $#
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! python3 -c "import pytest, hypothesis" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
python3 - <<'PY' | tee -a "$out/device.txt"
import torch, numpy, yarnref
print("torch", torch.__version__, "numpy", numpy.__version__, "backends usable:", yarnref.available_backends())
try:
    import cupy; print("cupy", cupy.__version__)
except Exception as e: print("cupy: not importable:", e)
try:
    import triton; print("triton", triton.__version__)
except Exception as e: print("triton: not importable:", e)
PY
rc=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  python3 -m pytest -p no:cacheprovider -rs "$@" 2>&1 | tee "$out/pytest.log"; rc=${PIPESTATUS[0]}
  echo "pytest exit status: $rc" | tee -a "$out/pytest.log"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  if [ -x benchmarks/run_all.sh ]; then bash benchmarks/run_all.sh "$out" 2>&1 | tee "$out/bench.log"; fi
fi
exit $rc
