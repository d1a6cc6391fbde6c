#!/usr/bin/env bash
# The GPU runs behind docs/benchmarks.md's H200 tables of 2026-11-28, in two consecutive calls on one
# machine (SmolLM2's GGUF travels in two parts, scripts/model_transfer.sh; benchmarks/carry_minference.sh
# puts MInference's kernel into .peers/ beforehand):
#   call 1, carrying .model/part1 .whl .peers:  scripts/gpu_prefill_results.sh one OUT_DIR
#   call 2, carrying .model/part2:              scripts/gpu_prefill_results.sh two OUT_DIR
# One: the DCA profile, the CuPy tests and benchmark, the vertical-slash benchmark with its peers.
# Two: SmolLM2's exported index sets at 32K and 64K, then the Qwen2.5-7B-Instruct-1M benchmarks
# (real budgets, real and synthetic patterns, the full decoder layer) at 128K-1M.
# Later calls (no model needed; SmolLM2's exported sets, smollm2_*.npz, carried in .patterns/):
#   scripts/gpu_prefill_results.sh shapes OUT_DIR   what a new shape costs (profile_shapes.py, with
#       --before .probe/triton_sparse_before.py where that copy is carried), the DCA profile, the CuPy
#       tests, the CuPy table at 8K, the decoder layer at 256K (warm and first calls)
#   scripts/gpu_prefill_results.sh layer OUT_DIR    the DCA profile, the GPU agreement tests of attention, DCA
#       and the kernels, then the decoder layer at 1M, 128K and 512K (as far as its budget goes)
#   scripts/gpu_prefill_results.sh cupy OUT_DIR     the GPU tests of the CuPy backend, the Triton kernels and the
#       sparse agreement suite, then the whole CuPy table (8K-128K)
#   scripts/gpu_prefill_results.sh cupy8k OUT_DIR   the CuPy input checks' tests and the CuPy table at 8K and 32K
# Everything lands in OUT_DIR/results_<stage>.tgz (one file: the device returns at most eight).
set -uo pipefail
stage=${1:?usage: scripts/gpu_prefill_results.sh one|two|shapes|layer|cupy|cupy8k OUT_DIR}; out=${2:?OUT_DIR}
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
  shapes)
    before=(); [ -f .probe/triton_sparse_before.py ] && before=(--before "$PWD/.probe/triton_sparse_before.py")
    (cd benchmarks && timeout 150 python3 profile_shapes.py --out "$R" "${before[@]}" > "$R/profile_shapes.log" 2>&1)
    say "profile_shapes rc=$?"
    (cd benchmarks && timeout 60 python3 profile_dca.py --out "$R" > "$R/profile_dca.log" 2>&1); say "profile_dca rc=$?"
    [ -f .probe/cupy_indices_profile.py ] && { timeout 60 python3 .probe/cupy_indices_profile.py > "$R/cupy_indices_profile.log" 2>&1; say "cupy indices profile rc=$?"; }
    YARNREF_HYPOTHESIS_PROFILE=quick timeout 200 python3 -m pytest -q -p no:cacheprovider -k "cupy or bad_values" tests/ -rfE --tb=short \
      > "$R/pytest_cupy.log" 2>&1; say "pytest cupy rc=$?"; tail -n 4 "$R/pytest_cupy.log"
    (cd benchmarks && timeout 70 python3 bench_cupy.py --out "$R" --budget 45 > "$R/bench_cupy.log" 2>&1); say "bench_cupy rc=$?"
    (cd benchmarks && timeout 150 python3 bench_qwen_layer.py --out "$R" --lengths 262144 --patterns "$OLDPWD/.patterns" \
      --budget 140 > "$R/qwen_layer.log" 2>&1); say "qwen_layer 256K rc=$?"
    ;;
  layer)
    (cd benchmarks && timeout 60 python3 profile_dca.py --out "$R" > "$R/profile_dca.log" 2>&1); say "profile_dca rc=$?"
    YARNREF_HYPOTHESIS_PROFILE=quick timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_agree_dca.py \
      tests/test_agree_attention.py tests/test_triton_sparse.py tests/test_cupy_kernels.py -rfE --tb=short \
      > "$R/pytest_gpu.log" 2>&1; say "pytest rc=$?"; tail -n 4 "$R/pytest_gpu.log"
    (cd benchmarks && timeout 370 python3 bench_qwen_layer.py --out "$R" --lengths 1048576,131072,524288 \
      --patterns "$OLDPWD/.patterns" --budget 350 > "$R/qwen_layer.log" 2>&1); say "qwen_layer rc=$?"
    ;;
  cupy)
    YARNREF_HYPOTHESIS_PROFILE=quick timeout 300 python3 -m pytest -q -p no:cacheprovider tests/ \
      -k "cupy or triton or agree_sparse or agree_attention or bad_values" -rfE --tb=short > "$R/pytest_gpu.log" 2>&1
    say "pytest rc=$?"; tail -n 4 "$R/pytest_gpu.log"
    (cd benchmarks && timeout 230 python3 bench_cupy.py --out "$R" --budget 200 > "$R/bench_cupy.log" 2>&1); say "bench_cupy rc=$?"
    ;;
  cupy8k)
    YARNREF_HYPOTHESIS_PROFILE=quick timeout 120 python3 -m pytest -q -p no:cacheprovider ${CUPY_TESTS:-tests/test_cupy_kernels.py \
      tests/test_agree_dca.py tests/test_agree_sparse.py} -k "cupy or bad_values or non_finite" -rfE --tb=short \
      > "$R/pytest_gpu.log" 2>&1; say "pytest rc=$?"; tail -n 4 "$R/pytest_gpu.log"
    (cd benchmarks && timeout 80 python3 bench_cupy.py --out "$R" --budget ${CUPY_BUDGET:-50} > "$R/bench_cupy.log" 2>&1); say "bench_cupy rc=$?"
    ;;
  *) echo "stage: one, two, shapes, layer, cupy or cupy8k" >&2; exit 2 ;;
esac
tar czf "$out/results_$stage.tgz" -C /tmp/yarnref-results "$stage"; say "packed $out/results_$stage.tgz"
