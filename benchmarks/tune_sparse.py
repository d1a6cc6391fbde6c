"""Launch-form sweep of the Triton kernels: one vs two row blocks per program, and the dense mode against SDPA.

Two parts, each timed output checked on sampled rows against a float64
reference (``check_sparse`` / ``check_dense`` of bench_sparse.py):

1. **Sparse, 128K** (B=1, 32 heads, head_dim 128, bf16, 1000 verticals and
   6096 slashes, the ``realistic`` and ``local`` patterns of bench_sparse.py):
   the one-row-block kernel (today's default) against the two-row-block
   kernel (``paired=True``) with ``pair_dot`` ``split`` (two 64-row dots per
   shared tile) and ``joint`` (one 128-row dot, the other half masked), at 4
   and 8 warps.  Reported per variant: TFLOP/s on the kept pairs and its % of
   the GEMM ceiling; the K/V tile bytes it moves from L2 per second and their
   % of the L2 read ceiling (each variant's own count of tile loads: a tile
   shared by a pair is loaded once); the pair schedule's time and the share
   of range tiles the two blocks of a pair hold in common.
2. **Dense, causal** (B=1, 32 heads, bf16): ``dense_attention_triton``
   against SDPA's cuDNN and flash backends at 8K, 32K and 128K with head_dim
   128, and at 32K with head_dim 64, 96 and 256; at 32K / 128 two other
   launch forms of ours (key tile 128, 4 pipeline stages).

The ceilings (copy, GEMM, L2 read) are measured at the start of the run.
``YARNREF_TUNE_LEGACY=1`` adds the earlier sweep of the one-block kernel
(TMA or pointer loads, mask on every tile or on the edges, 2 or 3 stages, and
the 128 x 128 lists probe).  MInference's own Triton kernel runs on the same
lists where its file is there (see bench_sparse.py).  ``python
benchmarks/tune_sparse.py --out DIR [--budget SECONDS]`` (about 3 minutes on
one H100/H200; past the budget the remaining dense cases are skipped, and a
SIGTERM still writes what was measured); ``--quick`` runs tiny sizes anywhere.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import sys

import torch

from bench_sparse import (
    BM, BN, HEAD_DIM, HEADS, N_SLASH, N_VERT, check_dense, check_sparse, kept_pairs, load_triton_sparse, make_indices,
    run_minference,
)
from common import MissingOperation, flops_causal, main_wrapper, measure_l2_read, time_fn

#: (label, launch keyword arguments) of the sparse kernel compared at 128K.
SPARSE_VARIANTS = [
    ("1 block/program (default)", dict()),
    ("2 blocks/program split, 8 warps", dict(paired=True, pair_dot="split", num_warps=8)),
    ("2 blocks/program split, 4 warps", dict(paired=True, pair_dot="split", num_warps=4)),
    ("2 blocks/program joint, 8 warps", dict(paired=True, pair_dot="joint", num_warps=8)),
]


def _tile_loads(ts, lists, paired: bool, col_tile: int = 64) -> tuple[float, float]:
    """(K/V tile loads of one call, share of the first blocks' range tiles that the second block holds too)."""
    bc, _, cc, _ = lists
    if not paired:
        return float(bc.sum()) + float(((cc + col_tile - 1) // col_tile).sum()), 0.0
    blk_shared, _, blk_only, _, _, col_only = ts.pair_schedule(*lists)
    first_bc, first_cc = bc[..., 0::2], cc[..., 0::2]
    loads = (float(first_bc.sum()) + float(blk_only.sum())
             + float(((first_cc + col_tile - 1) // col_tile).sum()) + float(((col_only + col_tile - 1) // col_tile).sum()))
    return loads, float(blk_shared.sum(dtype=torch.int64)) / max(float(first_bc.sum()), 1.0)


def sparse_part(rec, ts, quick: bool):
    device = rec.device
    n = 2048 if quick else 131072
    heads, d = (2, 64) if quick else (HEADS, HEAD_DIM)
    n_vert, n_slash = (40, 120) if quick else (N_VERT, N_SLASH)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
    g = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g) for _ in range(3))
    scale = 1 / math.sqrt(d)
    tile_bytes = 2 * BN * d * q.element_size()  # K and V of one 64-key tile
    variants = SPARSE_VARIANTS[:2] if quick else SPARSE_VARIANTS
    for pattern in ("realistic", "local"):
        V, S = make_indices(n, heads, n_vert, n_slash, pattern, seed=n + len(pattern), device=device)
        lists = ts.convert_vertical_slash_indexes_triton(n, n, V, S, BM, BN)
        kept, _ = kept_pairs(lists, heads, n, n)
        case = f"{n // 1024}K {pattern}"
        density = kept / (flops_causal(1, heads, n, n, d) / (4.0 * d))
        rec.note(f"{case}: density {100 * density:.1f}% of causal, mean range tiles per row block "
                 f"{float(lists[0].float().mean()):.0f}, mean columns {float(lists[2].float().mean()):.0f}")
        with rec.guard(case, "pair schedule (prepass of 2 blocks/program)"):
            t = time_fn(lambda: ts.pair_schedule(*lists), device, budget_s=0.5)
            loads, shared = _tile_loads(ts, lists, True)
            rec.add(case, "pair schedule (prepass of 2 blocks/program)", timing=t, shared_range_tiles=shared,
                    note=f"{100 * shared:.0f}% of the first blocks' range tiles shared")
        for label, kwargs in variants:
            with rec.guard(case, label):
                def call(kwargs=kwargs):
                    return ts.sparse_attention_triton(q, k, v, *lists, scale, BM, BN, **kwargs)

                out = call()
                err = check_sparse(out, q, k, v, lists, scale)
                del out
                t = time_fn(call, device, budget_s=1.0)
                loads, _ = _tile_loads(ts, lists, kwargs.get("paired", False))
                l2 = tile_bytes * loads / (t["ms"] * 1e-3) / 1e12
                extra = {"pct_l2": 100 * l2 / rec.ceilings["l2_read_tbps"]} if "l2_read_tbps" in rec.ceilings else {}
                rec.add(case, label, timing=t, flops=4.0 * d * kept, err=err, ok=err["ok"], density=density,
                        l2_tbps_tiles=l2, tile_loads=loads, **extra)
        run_minference(rec, case, q, k, v, lists, kept, scale, 1.0)
        ours = [r for r in rec.rows if r["case"] == case and "ms" in r and r["impl"] in dict(SPARSE_VARIANTS)]
        for r in ours:  # speedup_vs: the other's time / this one's (> 1: this one is faster)
            for other in rec.rows:
                if other["case"] == case and "ms" in other and other is not r and (
                        other["impl"] == SPARSE_VARIANTS[0][0] or other["impl"].startswith("minference")):
                    r.setdefault("speedup_vs", {})[other["impl"]] = other["ms"] / r["ms"]
        if quick:
            break


def dense_part(rec, ts, quick: bool):
    device = rec.device
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float16
    heads = 2 if quick else HEADS
    plan = [(256, 64)] if quick else [(8192, 128), (32768, 128), (131072, 128), (32768, 64), (32768, 96), (32768, 256)]
    for n, d in plan:
        if rec.args.budget and rec.elapsed() > rec.args.budget:
            rec.note(f"time budget ({rec.args.budget:.0f} s) spent: dense {n} d={d} skipped")
            continue
        g = torch.Generator(device=device).manual_seed(n + d)
        q, k, v = (torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g) for _ in range(3))
        scale = 1 / math.sqrt(d)
        flops = flops_causal(1, heads, n, n, d)
        case = f"dense {n // 1024}K d={d}" if n >= 1024 else f"dense {n} d={d}"
        forms = [("yarnref dense triton", dict())]
        if (n, d) == (32768, 128):
            forms += [("yarnref dense triton, key tile 128", dict(block_n=128)),
                      ("yarnref dense triton, 4 stages", dict(num_stages=4))]
        for label, kwargs in forms:
            with rec.guard(case, label):
                def ours(kwargs=kwargs):
                    return ts.dense_attention_triton(q, k, v, causal=True, scale=scale, **kwargs)

                out = ours()
                err = check_dense(out, q, k, v, scale)
                del out
                rec.add(case, label, timing=time_fn(ours, device, budget_s=1.0), flops=flops, err=err, ok=err["ok"])
        for name in ("cudnn", "flash"):
            impl = f"sdpa {name} (dense causal)"
            with rec.guard(case, impl):
                if not cuda:
                    raise MissingOperation("needs CUDA")
                from torch.nn.attention import SDPBackend, sdpa_kernel

                which = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]

                def dense(which=which):
                    with sdpa_kernel([which]):
                        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

                out = dense()
                err = check_dense(out, q, k, v, scale)
                del out
                rec.add(case, impl, timing=time_fn(dense, device, budget_s=1.0), flops=flops, err=err, ok=err["ok"])
        rec.add_ratios(case, "yarnref dense triton")
        del q, k, v


def legacy_part(rec, ts):
    """The earlier sweep of the one-block kernel (TMA, edge masks, stages) and the 128 x 128 lists probe."""
    device = rec.device
    n, heads, d = 131072, HEADS, HEAD_DIM
    g = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.randn((1, heads, n, d), device=device, dtype=torch.bfloat16, generator=g) for _ in range(3))
    scale = 1 / math.sqrt(d)
    V, S = make_indices(n, heads, N_VERT, N_SLASH, "realistic", seed=n + len("realistic"), device=device)
    lists = ts.convert_vertical_slash_indexes_triton(n, n, V, S, BM, BN)
    kept, tiles = kept_pairs(lists, heads, n, n)
    case = "128K realistic (legacy sweep)"
    for tma, mask_all, stages in itertools.product([False, True], [True, False], [2, 3]):
        impl = f"tma={int(tma)} mask={'all' if mask_all else 'edge'} stages={stages}"
        with rec.guard(case, impl):
            def call():
                return ts.sparse_attention_triton(q, k, v, *lists, scale, BM, BN, num_warps=4, num_stages=stages,
                                                  tma=tma, mask_all_tiles=mask_all)

            out = call()
            err = check_sparse(out, q, k, v, lists, scale)
            del out
            t = time_fn(call, device, budget_s=1.5)
            rec.add(case, impl, timing=t, flops=4.0 * d * kept, err=err, ok=err["ok"],
                    tflops_tiles=4.0 * d * BM * BN * tiles / (t["ms"] * 1e-3) / 1e12,
                    l2_tbps_tiles=2 * BN * d * q.element_size() * tiles / (t["ms"] * 1e-3) / 1e12)
    lists128 = ts.convert_vertical_slash_indexes_triton(n, n, V, S, 128, 128)
    tiles128 = float(lists128[0].sum()) + float(((lists128[2] + 127) // 128).sum())
    for stages in (2, 3):
        impl = f"128x128 lists, 8 warps, stages={stages}"
        with rec.guard(case, impl):
            def call128():
                return ts.sparse_attention_triton(q, k, v, *lists128, scale, 128, 128, num_warps=8, num_stages=stages,
                                                  col_tile=128)

            call128()
            t = time_fn(call128, device, budget_s=1.5)
            rec.add(case, impl, timing=t, tflops_tiles=4.0 * d * 128 * 128 * tiles128 / (t["ms"] * 1e-3) / 1e12,
                    l2_tbps_tiles=2 * 128 * d * q.element_size() * tiles128 / (t["ms"] * 1e-3) / 1e12)
    for mb in (8, 24, 40):
        with rec.guard("L2 read", f"{mb} MB buffer"):
            rec.add("L2 read", f"{mb} MB buffer", tbps=measure_l2_read(device, mbytes=mb)["l2_read_tbps"])


def run(rec):
    ts = load_triton_sparse()
    quick = rec.args.quick
    if rec.device.type == "cpu" and not ts.interpreter_active():
        raise MissingOperation("no CUDA and TRITON_INTERPRET is not set")
    sparse_part(rec, ts, quick)
    dense_part(rec, ts, quick)
    if rec.device.type == "cuda" and not quick and os.environ.get("YARNREF_TUNE_LEGACY") == "1":
        legacy_part(rec, ts)


if __name__ == "__main__":
    # A `timeout` sends SIGTERM: leave through SystemExit so that what was measured is still written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    main_wrapper("tune_sparse", run)
