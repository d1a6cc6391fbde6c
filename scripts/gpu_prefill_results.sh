#!/usr/bin/env bash
# The GPU runs behind docs/benchmarks.md's H200 tables of 2026-11-28, in two consecutive calls on one
# machine (SmolLM2's GGUF travels in two parts, scripts/model_transfer.sh; benchmarks/carry_minference.sh
# puts MInference's kernel into .peers/ beforehand):
#   call 1, carrying .model/part1 .whl .peers:  scripts/gpu_prefill_results.sh one OUT_DIR
#   call 2, carrying .model/part2:              scripts/gpu_prefill_results.sh two OUT_DIR
# One: the DCA profile, the CuPy tests and benchmark, the vertical-slash benchmark with its peers.
# Two: SmolLM2's exported index sets at 32K and 64K, then the Qwen2.5-7B-Instruct-1M benchmarks
# (real budgets, real and synthetic patterns, the full decoder layer) at 128K-1M.
# Everything lands in OUT_DIR/results_<stage>.tgz (one file: the device returns at most eight).
set -uo pipefail
stage=${1:?usage: scripts/gpu_prefill_results.sh one|two OUT_DIR}; out=${2:?OUT_DIR}
R=/tmp/yarnref-results/$stage; mkdir -p "$R" "$out"
export PYTHONPATH=$PWD:$PWD/backends PYTHONUNBUFFERED=1
DEST=${DEST:-/root/yarnref-model}
t0=$(date +%s); say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
case "$stage" in
  one)
    bash scripts/model_transfer.sh receive1 > "$R/receive1.log" 2>&1; say "receive1 rc=$?"
    (cd benchmarks && timeout 60 python3 profile_dca.py --out "$R" > "$R/profile_dca.log" 2>&1); say "profile_dca rc=$?"
    YARNREF_HYPOTHESIS_PROFILE=quick timeout 125 python3 -m pytest -q -p no:cacheprovider -k cupy tests/ -rfE --tb=short \
      > "$R/pytest_cupy.log" 2>&1; say "pytest cupy rc=$?"; tail -n 4 "$R/pytest_cupy.log"
    (cd benchmarks && timeout 150 python3 bench_cupy.py --out "$R" --budget 120 > "$R/bench_cupy.log" 2>&1); say "bench_cupy rc=$?"
    timeout 200 python3 benchmarks/run_all.py --out "$R/sparse" --only sparse --deadline 180 > "$R/run_all_sparse.log" 2>&1
    say "run_all sparse rc=$?"
    ;;
  two)
    bash scripts/model_transfer.sh receive2 > "$R/receive2.log" 2>&1; say "receive2 rc=$?"
    export PYTHONPATH=$PYTHONPATH:$DEST/site YARNREF_GGUF=$DEST/SmolLM2-135M-Instruct.Q4_1.gguf
    mkdir -p "$R/patterns"
    for n in 32768 65536; do
      timeout 90 python3 -m yarnref patterns --model smollm2-135m --text kjv --length $n --method yarn --factor 8 \
        --layers 0,4,8,12,16,20,24,29 --recall-queries 4096 --no-progress \
        --npz "$R/patterns/smollm2_$n.npz" --out "$R/patterns/smollm2_$n.json" > "$R/patterns/log_$n.txt" 2>&1
      say "patterns $n rc=$?"
    done
    timeout 380 python3 benchmarks/run_all.py --out "$R/qwen" --only sparse_real,qwen_layer --patterns "$R/patterns" \
      --deadline 360 > "$R/run_all_qwen.log" 2>&1; say "run_all qwen rc=$?"
    ;;
  *) echo "stage: one or two" >&2; exit 2 ;;
esac
tar czf "$out/results_$stage.tgz" -C /tmp/yarnref-results "$stage"; say "packed $out/results_$stage.tgz"
