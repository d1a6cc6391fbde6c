#!/usr/bin/env bash
# Independent one-GPU jobs side by side on a machine of several GPUs (each job sees one GPU through
# CUDA_VISIBLE_DEVICES), then one tarball of their logs and results.
# Usage (repository root): scripts/gpu_parallel.sh OUT_DIR STAGE
#   early: GPU 0 the CuPy host profile and the CuPy-vs-torch table; GPUs 1-2 the CuPy/Triton
#          agreement suites; GPU 3 the 1M-token suite, then the remaining CuPy tests.
#   cupydca: GPU 0 the CuPy host profile and the table (CUPY_BUDGET seconds); GPUs 1-2 the agreement suites.
#   layer: GPU 0 the Qwen layer benchmark (LAYER_LENGTHS; needs .patterns, carried).
#   cupy: GPU 0 the CuPy table, nothing else running.
#   final: GPU 0 the CuPy table (nothing else on its GPU), GPU 1 the Qwen layer at 1M.
#   probe: GPU 0 the estimation and DCA profiles, then the 1M-token suite; GPUs 1-2 the sparse 1M layer with
#          the default memory bounds and with each raised (needs .patterns, carried); GPU 3 the torch
#          sparse, prefill and DCA agreement suites.
#   verify: GPU 0 the estimation and DCA profiles; GPU 1 the Qwen layer (LAYER_LENGTHS, default 1M; needs
#          .patterns); GPU 2 the torch sparse, prefill and layer suites; GPU 3 the 1M-token suite.
#   tables: GPU 0 the Qwen layer at 1M, GPU 1 at 128K-512K (needs .patterns); GPU 2 the estimation and DCA
#          profiles; GPU 3 the torch sparse, prefill, layer, RoPE and DCA suites.
#   phases: GPU 0 the Qwen layer at 1M (dense, synthetic, smollm2), GPU 1 at 128K-512K, each with its time
#          split by phase (needs .patterns); GPU 2 the DCA and estimation profiles; GPU 3 the torch merge,
#          attention, sparse, prefill, layer, RoPE and DCA suites, the split of index sets on both GPU
#          backends, then the 1M-token suite.
#   kernels: GPUs 0-1 as phases; GPU 2 the conversion and estimation benchmarks and the estimation profile;
#          GPU 3 the suites of the Triton estimation and conversion, the sparse call, the prefill and the
#          layer, then the index-set split on both GPU backends (the 1M-token suite among them).
set -uo pipefail
out=${1:?usage: scripts/gpu_parallel.sh OUT_DIR STAGE}; stage=${2:?stage}
R=/tmp/yarnref-results/$stage; mkdir -p "$R" "$out"
export PYTHONPATH="$PWD:$PWD/backends${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 YARNREF_HYPOTHESIS_PROFILE=quick
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$R/device.txt" 2>&1
PYT="python3 -m pytest -q -p no:cacheprovider -rfE --tb=short"
job() {  # job GPU NAME SECONDS COMMAND...: runs in the background, logs to $R/NAME.log
  local gpu=$1 name=$2 secs=$3; shift 3
  ( start=$(date +%s); CUDA_VISIBLE_DEVICES=$gpu timeout "$secs" bash -c "$*" > "$R/$name.log" 2>&1
    echo "[$name] rc=$? after $(( $(date +%s) - start )) s" | tee -a "$R/$name.log" ) &
}
case "$stage" in
  early)
    job 0 cupy_bench 440 "cd benchmarks && python3 profile_cupy_host.py --out $R --cprofile && python3 bench_cupy.py --out $R --budget 250"
    job 1 tests_sparse 440 "$PYT tests/test_agree_sparse.py tests/test_triton_sparse.py -k 'cupy or triton or bad_values or non_finite'"
    job 2 tests_dense 440 "$PYT tests/test_agree_attention.py tests/test_agree_dca.py tests/test_cupy_kernels.py tests/test_cupy_flash.py -k 'cupy or triton or bad_values or non_finite'"
    job 3 long_and_rest 440 "bash scripts/gpu_long_context.sh $R -s; $PYT tests --ignore=tests/test_agree_sparse.py --ignore=tests/test_triton_sparse.py --ignore=tests/test_agree_attention.py --ignore=tests/test_agree_dca.py --ignore=tests/test_cupy_kernels.py --ignore=tests/test_cupy_flash.py --ignore=tests/test_long_context.py --ignore=tests/test_ring_distributed.py -k 'cupy or triton'"
    ;;
  cupydca)
    job 0 cupy_bench 300 "cd benchmarks && python3 profile_cupy_host.py --out $R && python3 bench_cupy.py --out $R --budget ${CUPY_BUDGET:-90}"
    job 1 tests_dense 300 "$PYT tests/test_agree_attention.py tests/test_agree_dca.py tests/test_cupy_kernels.py tests/test_cupy_flash.py -k 'cupy or bad_values or non_finite or triton'"
    job 2 tests_sparse 300 "$PYT tests/test_agree_sparse.py tests/test_triton_sparse.py tests/test_alibi.py -k 'cupy or triton or bad_values or non_finite'"
    ;;
  layer)
    job 0 qwen_layer 540 "cd benchmarks && python3 bench_qwen_layer.py --out $R --lengths ${LAYER_LENGTHS:-1048576} --patterns $PWD/.patterns --budget ${LAYER_BUDGET:-480}"
    ;;
  cupy)  # the CuPy table alone on the machine
    job 0 cupy_bench 280 "cd benchmarks && python3 bench_cupy.py --out $R --budget ${CUPY_BUDGET:-230}"
    ;;
  final)  # after a ring run: the CuPy table alone on its GPU, the layer at 1M beside it
    job 0 cupy_bench 280 "cd benchmarks && python3 bench_cupy.py --out $R --budget ${CUPY_BUDGET:-230}"
    job 1 qwen_layer 280 "cd benchmarks && python3 bench_qwen_layer.py --out $R --lengths ${LAYER_LENGTHS:-1048576} --patterns $PWD/.patterns --budget ${LAYER_BUDGET:-250}"
    ;;
  probe)
    L="cd benchmarks && python3 bench_qwen_layer.py --lengths 1048576 --patterns $PWD/.patterns --variants synthetic --budget 200"
    job 0 profiles 540 "(cd benchmarks && python3 profile_estimation.py --out $R && python3 profile_dca.py --out $R); bash scripts/gpu_long_context.sh $R -s"
    job 1 bounds_a 540 "($L --out $R/default) && ($L --out $R/list1024 --list-mib 1024)"
    job 2 bounds_b 540 "($L --out $R/row2048 --row-mib 2048) && ($L --out $R/merge1024 --merge-mib 1024)"
    job 3 tests_torch 540 "$PYT tests/test_agree_sparse.py tests/test_triton_sparse.py tests/test_prefill.py tests/test_agree_dca.py tests/test_agree_attention.py -k 'not cupy'"
    ;;
  verify)  # after a change to the sparse pipeline: its profiles, the 1M layer, the GPU suites of the pipeline
    job 0 profiles 540 "cd benchmarks && python3 profile_estimation.py --out $R && python3 profile_dca.py --out $R"
    job 1 qwen_layer 540 "cd benchmarks && python3 bench_qwen_layer.py --out $R --lengths ${LAYER_LENGTHS:-1048576} --patterns $PWD/.patterns --budget ${LAYER_BUDGET:-480}"
    job 2 tests_torch 540 "$PYT tests/test_agree_sparse.py tests/test_triton_sparse.py tests/test_prefill.py tests/test_qwen_layer.py -k 'not cupy'"
    job 3 long_context 540 "bash scripts/gpu_long_context.sh $R -s"
    ;;
  tables)  # the Qwen layer tables for the docs (1M on its own GPU), the profiles, the GPU suites of the pipeline
    Q="cd benchmarks && python3 bench_qwen_layer.py --patterns $PWD/.patterns --budget 500"
    job 0 layer_1m 560 "$Q --out $R/layer_1m --lengths 1048576"
    job 1 layer_short 560 "$Q --out $R/layer_short --lengths 131072,262144,524288"
    job 2 profiles 560 "cd benchmarks && python3 profile_estimation.py --out $R && python3 profile_dca.py --out $R"
    job 3 tests_torch 560 "$PYT tests/test_agree_sparse.py tests/test_triton_sparse.py tests/test_prefill.py tests/test_qwen_layer.py tests/test_agree_rope.py tests/test_agree_dca.py -k 'not cupy'"
    ;;
  phases)  # the layer with its time split by phase (1M on its own GPU), the profiles, the GPU suites
    Q="cd benchmarks && python3 bench_qwen_layer.py --patterns $PWD/.patterns --budget 500"
    job 0 layer_1m 560 "$Q --out $R/layer_1m --lengths 1048576 --variants dense,synthetic,smollm2"
    job 1 layer_short 560 "$Q --out $R/layer_short --lengths 131072,262144,524288"
    job 2 profiles 560 "cd benchmarks && python3 profile_dca.py --out $R && python3 profile_estimation.py --out $R"
    job 3 tests_torch 560 "$PYT tests/test_triton_merge.py tests/test_agree_attention.py tests/test_agree_sparse.py tests/test_triton_sparse.py tests/test_prefill.py tests/test_qwen_layer.py tests/test_agree_rope.py tests/test_agree_dca.py tests/test_rope.py tests/test_qwen_patterns.py -k 'not cupy'; $PYT tests/test_prefill.py tests/test_cupy_numpy_shim.py -k split; bash scripts/gpu_long_context.sh $R -s"
    ;;
  kernels)  # the layer at 1M and 128K-512K with the phase split; the conversion and estimation kernels timed
    # against the paths they replace; the GPU suites of what changed, then the 1M-token suite
    Q="cd benchmarks && python3 bench_qwen_layer.py --patterns $PWD/.patterns --budget 500"
    job 0 layer_1m 560 "$Q --out $R/layer_1m --lengths 1048576 --variants dense,synthetic,smollm2"
    job 1 layer_short 560 "$Q --out $R/layer_short --lengths 131072,262144,524288"
    job 2 kernels 560 "cd benchmarks && python3 bench_conversion.py --out $R && python3 bench_estimation.py --out $R && python3 profile_estimation.py --out $R"
    job 3 tests_torch 560 "$PYT tests/test_triton_estimate.py tests/test_triton_sparse.py tests/test_long_context.py tests/test_qwen_layer.py -k 'not cupy'; $PYT tests/test_prefill.py tests/test_cupy_numpy_shim.py -k 'split or qwen'"
    ;;
  *) echo "stage: early, cupydca, layer, cupy, final, probe, verify, tables, phases or kernels" >&2; exit 2 ;;
esac
wait
grep -h "^\[.*\] rc=" "$R"/*.log
for f in "$R"/*.log; do echo "== $f"; tail -n 3 "$f"; done
tar czf "$out/results_$stage.tgz" -C /tmp/yarnref-results "$stage"
