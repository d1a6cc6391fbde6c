#!/usr/bin/env bash
# Copy MInference's Triton vertical-slash kernel (one file, MIT licence) into .peers/ at the repository root,
# where benchmarks/bench_sparse.py finds it (it is a peer in the benchmark, never part of this project:
# .peers/ is ignored by git).  Usage: benchmarks/carry_minference.sh [MINFERENCE_GIT_DIR_OR_CHECKOUT]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${1:-${MINFERENCE_REPO:-/work/.mirror/microsoft+MInference/repo}}"
file="minference/ops/pit_sparse_flash_attention_v2.py"
dest="$root/.peers/pit_sparse_flash_attention_v2.py"
mkdir -p "$root/.peers"
if [ -f "$src/$file" ]; then  # a checkout
  cp "$src/$file" "$dest"
  rev="$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)"
elif git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then  # a git directory without a work tree
  git -C "$src" show "HEAD:$file" > "$dest"
  rev="$(git -C "$src" rev-parse HEAD)"
else
  echo "carry_minference.sh: no MInference checkout or git directory at $src" >&2
  exit 1
fi
printf 'microsoft/MInference %s %s (MIT licence)\n' "$rev" "$file" > "$root/.peers/PROVENANCE"
echo "copied $file (MInference $rev) to $dest"
