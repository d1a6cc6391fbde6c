#!/usr/bin/env bash
# The Triton kernels on a CUDA machine: their tests (in three processes, so that Triton's compilations
# run in parallel), then benchmarks/tune_sparse.py.  Writes into OUT_DIR: tests_*.txt, tune_sparse.json
# and tune_sparse.md.  Usage: benchmarks/check_triton_kernels.sh OUT_DIR [TUNE_BUDGET_SECONDS]
# (MInference's kernel is compared where benchmarks/carry_minference.sh has put it into .peers/.)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
budget="${2:-150}"
py="${PYTHON:-python3}"
export PYTHONPATH="$root:$root/backends${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
"$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
t0=$(date +%s)
i=0
for group in "dense" "paired or pair_schedule or head_dims" "not dense and not paired and not pair_schedule and not head_dims"; do
  i=$((i + 1))
  timeout 170 "$py" -m pytest tests/test_triton_sparse.py -q -p no:cacheprovider -k "$group" > "$out/tests_$i.txt" 2>&1 &
done
wait
for f in "$out"/tests_*.txt; do echo "== $f: $(tail -n 1 "$f")"; done
echo "== tests took $(( $(date +%s) - t0 )) s"
cd "$root/benchmarks"
timeout $((budget + 60)) "$py" tune_sparse.py --out "$out" --budget "$budget" ${TUNE_EXTRA:-} > "$out/tune_sparse.log" 2>&1
echo "== tune_sparse exit $? after $(( $(date +%s) - t0 )) s"
"$py" - "$out/tune_sparse.json" > "$out/tune_sparse.md" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
c = doc.get("ceilings", {})
print(f"ceilings: GEMM {c.get('gemm_tflops', 0):.0f} TFLOP/s, copy {c.get('copy_tbps', 0):.2f} TB/s, L2 read {c.get('l2_read_tbps', 0):.2f} TB/s\n")
print("| case | implementation | status | ms | TFLOP/s (% GEMM) | L2 TB/s (% of L2) | speedups | check |")
print("|---|---|---|---|---|---|---|---|")
for r in doc["rows"]:
    tf = f"{r['tflops']:.0f} ({r['pct_gemm']:.0f}%)" if "tflops" in r else ""
    l2 = f"{r['l2_tbps_tiles']:.2f} ({r.get('pct_l2', 0):.0f}%)" if "l2_tbps_tiles" in r else ""
    sp = "; ".join(f"{v:.2f}x vs {k}" for k, v in r.get("speedup_vs", {}).items())
    ms = f"{r['ms']:.3f}" if "ms" in r else ""
    print(f"| {r['case']} | {r['impl']} | {r['status']} | {ms} | {tf} | {l2} | {sp} | {r.get('check', '')} {r.get('reason', '') or r.get('note', '') or ''} |")
for n in doc.get("notes", []):
    print(f"\n- {n}")
PY
cat "$out/tune_sparse.md"
