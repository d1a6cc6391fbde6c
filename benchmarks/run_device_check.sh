#!/usr/bin/env bash
# Device check of the Triton kernels: the CUDA test run, then the sparse benchmark.  Usage: benchmarks/run_device_check.sh OUTDIR
set -u
out=${1:-bench-out}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"
python3 -c "import pytest, hypothesis" 2>/dev/null && timeout 240 python3 -m pytest -q -x tests/test_triton_sparse.py -p no:cacheprovider 2>&1 | tail -15
