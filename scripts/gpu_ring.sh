#!/usr/bin/env bash
# Ring attention on a machine of several GPUs: the NCCL tests, then the benchmark on every GPU.
# Usage (from the repository root): scripts/gpu_ring.sh OUT_DIR [bench_ring.py args...]
# Writes OUT_DIR/pytest.log, OUT_DIR/ring/{ring.json,ring.md,log}.
set -uo pipefail
out=${1:?usage: scripts/gpu_ring.sh OUT_DIR [bench_ring.py args...]}; shift
mkdir -p "$out/ring"
export PYTHONPATH="$PWD:$PWD/backends${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
gpus=$(nvidia-smi -L | wc -l)
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvidia-smi topo -m; } > "$out/device.txt" 2>&1
timeout "${RING_TEST_TIMEOUT:-300}" python3 -m pytest -p no:cacheprovider -q -rs tests/test_ring_distributed.py tests/test_ring.py tests/test_triton_sparse.py -k ring 2>&1 | tee "$out/pytest.log"
echo "pytest exit status: ${PIPESTATUS[0]}" | tee -a "$out/pytest.log"
torchrun --nproc-per-node "$gpus" --master-addr 127.0.0.1 --master-port 29533 benchmarks/bench_ring.py --out "$out/ring" "$@" 2>&1 | tee "$out/ring/log"
echo "bench exit status: ${PIPESTATUS[0]}" | tee -a "$out/ring/log"
