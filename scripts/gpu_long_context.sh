#!/usr/bin/env bash
# The 1M-token GPU tests and the Triton/agreement suites on the GPU machine.
# Usage (repository root): scripts/gpu_long_context.sh OUT_DIR
set -uo pipefail
out=${1:?usage: scripts/gpu_long_context.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD:$PWD/backends${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
python3 -m pytest -p no:cacheprovider -rs --durations=15 tests/test_long_context.py "$@" 2>&1 | tee "$out/long_context.log"
echo "pytest exit status: ${PIPESTATUS[0]}" | tee -a "$out/long_context.log"
