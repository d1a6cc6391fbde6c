#!/usr/bin/env bash
# Every benchmark in one command: benchmarks/run_all.sh OUTDIR [--quick]
# Writes OUTDIR/{ceilings,sparse,attention,rope,cupy}.json, OUTDIR/results.json and OUTDIR/results.md.
# On the H100 it finishes in about 6 minutes (each benchmark has a time budget and a hard timeout).
set -u
out=${1:?usage: benchmarks/run_all.sh OUTDIR [--quick]}
shift
here="$(cd "$(dirname "$0")" && pwd)"
py=${PYTHON:-python3}
exec "$py" "$here/run_all.py" --out "$out" "$@"
