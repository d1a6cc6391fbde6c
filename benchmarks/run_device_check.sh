#!/usr/bin/env bash
# The Triton kernel tests on the GPU machine (compiled, bf16 included): benchmarks/run_device_check.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"
timeout 300 python3 -m pytest -q tests/test_triton_sparse.py -p no:cacheprovider 2>&1 | tail -15
