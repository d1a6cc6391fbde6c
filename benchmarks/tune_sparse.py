"""Launch-parameter sweep of the Triton vertical-slash kernel, and the probes that explain its speed.

Runs the 128K ``realistic`` and ``local`` cases of bench_sparse.py (32 heads,
head_dim 128, bf16) for every variant, checks each output on a slice of rows
against the float64 reference, and prints one line per variant.  Variants:

* ``tma``: key ranges read through Hopper tensor descriptors, or pointer loads;
* ``mask``: the bounds/causal test on every range tile (``all``) or only on
  the tiles that cross the diagonal or the sequence ends (``edge``);
* ``stages``: software-pipeline depth.

Probes, in the same run:

* the L2 read bandwidth (buffers of 8, 24 and 40 MB read with L2-only loads):
  the ceiling of a kernel that moves each 64-key K/V tile from L2 into shared
  memory once per 64 queries;
* the same kernel on 128 x 128 lists (``convert_vertical_slash_indexes`` with
  block sizes 128, 8 warps): twice the queries per K/V tile, so half the L2
  traffic per flop.  These lists keep other keys (128-wide ranges), so only
  the per-tile rate is compared;
* dense causal SDPA with the default backend choice, cuDNN and flash, to name
  which one ``scaled_dot_product_attention`` picks here.

Used to pick the defaults in ``backends/yarnref_torch/triton_sparse.py``; not
part of run_all.sh.  ``python benchmarks/tune_sparse.py --out DIR``.
"""

from __future__ import annotations

import itertools
import math

import torch

from bench_sparse import BM, BN, HEAD_DIM, HEADS, N_SLASH, N_VERT, check_sparse, kept_pairs, load_triton_sparse, make_indices
from common import MissingOperation, main_wrapper, measure_l2_read, time_fn


def run(rec):
    device = rec.device
    ts = load_triton_sparse()
    quick = rec.args.quick
    n = 2048 if quick else 131072
    heads, d = (2, 64) if quick else (HEADS, HEAD_DIM)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
    g = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g) for _ in range(3))
    scale = 1 / math.sqrt(d)
    tma_choices = [False, True] if device.type == "cuda" else [False]
    variants = list(itertools.product(tma_choices, [True, False], [2, 3]))
    if quick:
        variants = variants[:2]
    for pattern in ("realistic", "local"):
        V, S = make_indices(n, heads, N_VERT, N_SLASH, pattern, seed=n + len(pattern), device=device)
        lists = ts.convert_vertical_slash_indexes_triton(n, n, V, S, BM, BN)
        kept, tiles = kept_pairs(lists, heads, n, n)
        case = f"{n // 1024}K {pattern}"
        rec.note(f"{case}: mean range tiles per row block {float(lists[0].float().mean()):.0f}, "
                 f"mean columns {float(lists[2].float().mean()):.0f}")
        for tma, mask_all, stages in variants:
            impl = f"tma={int(tma)} mask={'all' if mask_all else 'edge'} stages={stages}"
            with rec.guard(case, impl):
                def call():
                    return ts.sparse_attention_triton(q, k, v, *lists, scale, BM, BN, num_warps=4, num_stages=stages,
                                                      tma=tma, mask_all_tiles=mask_all)

                out = call()
                err = check_sparse(out, q, k, v, lists, scale)
                del out
                t = time_fn(call, device, budget_s=1.5)
                tile_bytes = 2 * BN * d * q.element_size()  # K and V of one tile
                rec.add(case, impl, timing=t, flops=4.0 * d * kept, err=err, ok=err["ok"],
                        tflops_tiles=4.0 * d * BM * BN * tiles / (t["ms"] * 1e-3) / 1e12,
                        l2_tbps_tiles=tile_bytes * tiles / (t["ms"] * 1e-3) / 1e12)
        if pattern == "realistic" and not quick:
            # 128 x 128 lists: the per-tile rate with twice the queries per K/V tile.
            lists128 = ts.convert_vertical_slash_indexes_triton(n, n, V, S, 128, 128)
            tiles128 = float(lists128[0].sum()) + float(((lists128[2] + 127) // 128).sum())
            for tma, stages in itertools.product(tma_choices, [2, 3]):
                impl = f"128x128 lists, 8 warps, tma={int(tma)} stages={stages}"
                with rec.guard(case, impl):
                    def call128():
                        return ts.sparse_attention_triton(q, k, v, *lists128, scale, 128, 128, num_warps=8,
                                                          num_stages=stages, tma=tma, col_tile=128)

                    call128()
                    t = time_fn(call128, device, budget_s=1.5)
                    rec.add(case, impl, timing=t, tflops_tiles=4.0 * d * 128 * 128 * tiles128 / (t["ms"] * 1e-3) / 1e12,
                            l2_tbps_tiles=2 * 128 * d * q.element_size() * tiles128 / (t["ms"] * 1e-3) / 1e12)
    if device.type == "cuda":
        for mb in (8, 24, 40):
            with rec.guard("L2 read", f"{mb} MB buffer"):
                r = measure_l2_read(device, mbytes=mb)
                rec.add("L2 read", f"{mb} MB buffer", tbps=r["l2_read_tbps"])
        from torch.nn.attention import SDPBackend, sdpa_kernel

        flops = 2.0 * heads * n * n * d  # causal: half of 4 * n^2 * d per head
        for name, which in (("default", None), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            def dense(which=which):
                if which is None:
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                with sdpa_kernel([which]):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

            with rec.guard("dense causal", f"sdpa {name}"):
                rec.add("dense causal", f"sdpa {name}", timing=time_fn(dense, device, budget_s=2.0), flops=flops)
        try:
            params = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, True, False)
            choice = torch._fused_sdp_choice(q, k, v, None, 0.0, True)
            rec.note(f"torch._fused_sdp_choice picks backend {choice} ({SDPBackend(choice).name}) for this call; "
                     f"cudnn usable: {torch.backends.cuda.can_use_cudnn_attention(params)}")
        except Exception as exc:  # private API: report, do not fail
            rec.note(f"could not query the SDPA choice: {type(exc).__name__}: {exc}")
    else:
        rec.note(str(MissingOperation("the L2 and dense probes need CUDA")))


if __name__ == "__main__":
    main_wrapper("tune_sparse", run)
