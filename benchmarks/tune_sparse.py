"""Launch-parameter sweep of the Triton vertical-slash kernel (tile width, warps, pipeline stages).

Runs the 128K ``realistic`` and ``uniform`` cases of bench_sparse.py (32 heads,
head_dim 128, bf16) for every variant, checks each output on a slice of rows
against the float64 reference, and prints one line per variant plus the
dense cuDNN time for scale.  Used to pick the defaults in
``backends/yarnref_torch/triton_sparse.py``; not part of run_all.sh.
"""

from __future__ import annotations

import itertools
import math

import torch

from bench_sparse import BF16_TOL, BM, BN, HEAD_DIM, HEADS, N_SLASH, N_VERT, check_sparse, kept_pairs, load_triton_sparse, make_indices
from common import main_wrapper, time_fn


def run(rec):
    device = rec.device
    ts = load_triton_sparse()
    n = 2048 if rec.args.quick else 131072
    heads, d = (2, 64) if rec.args.quick else (HEADS, HEAD_DIM)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
    g = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g) for _ in range(3))
    scale = 1 / math.sqrt(d)
    variants = list(itertools.product([64, 128], [64, 128], [4], [2, 3]))
    if rec.args.quick:
        variants = variants[:2]
    for pattern in ("realistic", "local"):
        V, S = make_indices(n, heads, N_VERT, N_SLASH, pattern, seed=n + len(pattern), device=device)
        lists = ts.convert_vertical_slash_indexes_triton(n, n, V, S, BM, BN)
        kept, tiles = kept_pairs(lists, heads, n, n)
        case = f"{n // 1024}K {pattern}"
        for range_tile, col_tile, warps, stages in variants:
            impl = f"range={range_tile} col={col_tile} warps={warps} stages={stages}"
            with rec.guard(case, impl):
                def call():
                    return ts.sparse_attention_triton(
                        q, k, v, *lists, scale, BM, BN, range_tile=range_tile, col_tile=col_tile, num_warps=warps, num_stages=stages
                    )

                out = call()
                err = check_sparse(out, q, k, v, lists, scale)
                del out
                t = time_fn(call, device, budget_s=1.5)
                rec.add(case, impl, timing=t, flops=4.0 * d * kept, err=err, ok=err["rel_l2"] <= BF16_TOL,
                        tflops_tiles=4.0 * d * BM * BN * tiles / (t["ms"] * 1e-3) / 1e12)
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def dense():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

        with rec.guard("dense", "sdpa cudnn"):
            rec.add("dense", "sdpa cudnn", timing=time_fn(dense, device, budget_s=1.5))


if __name__ == "__main__":
    main_wrapper("tune_sparse", run)
