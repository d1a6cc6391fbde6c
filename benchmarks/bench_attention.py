"""Dense causal attention and Dual Chunk Attention on the torch backend against torch's own kernels.

* ``attention`` (B=1, 32 heads, head_dim 128, bf16, causal; 8K, 16K, 32K):
  ``yarnref`` torch backend ``attention`` against SDPA with the flash (FA2),
  cuDNN and default backends and FlexAttention (compiled, causal BlockMask).
  TFLOP/s count the causal half: ``2 * S^2 * H * D``.
* ``dca`` (same geometry, chunk_size 32768, local_size 4096; 32K, 64K, 128K):
  ``yarnref`` torch backend ``dca_attention`` (un-rotated q and k, RoPE theta
  1e6) against ONE dense causal SDPA call at the same length, its FLOP floor
  (DCA re-indexes positions but attends the same causal pairs).  Target:
  about one dense call + 10%.

Checks: attention rows against a float64 dense reference; DCA rows (a middle
and the last block of 64 queries, 2 heads) against the NumPy spec
``yarnref.dca.dca_attention`` on the truncated sequence (causal, so rows
``< a + 64`` see only the first ``a + 64`` keys).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from common import (
    MissingOperation,
    backend_op,
    compare,
    dense_reference_rows,
    flops_causal,
    main_wrapper,
    time_fn,
    use_yarnref_backend,
)

HEADS, HEAD_DIM = 32, 128


def rows_to_check(n: int):
    mid = (n // 2) // 64 * 64
    return list(range(mid, mid + 64)) + list(range(n - 64, n))


def sdpa(q, k, v, which, scale):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": [SDPBackend.FLASH_ATTENTION],
        "cudnn": [SDPBackend.CUDNN_ATTENTION],
        "default": None,
    }[which]
    if backends is None:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    with sdpa_kernel(backends):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def dense_peers(rec, case, q, k, v, scale, budget, flops, with_flex=True):
    device = rec.device
    for which in ("flash", "cudnn", "default"):
        impl = f"sdpa {which}"
        with rec.guard(case, impl):
            if device.type != "cuda" and which != "default":
                raise MissingOperation("needs CUDA")
            out = sdpa(q, k, v, which, scale)
            err = compare(out[:, :2, rows_to_check(q.shape[2])], dense_reference_rows(q[:, :2], k[:, :2], v[:, :2], rows_to_check(q.shape[2]), scale))
            del out
            t = time_fn(lambda: sdpa(q, k, v, which, scale), device, budget_s=budget)
            rec.add(case, impl, timing=t, flops=flops, err=err, ok=err["ok"])
    if with_flex:
        with rec.guard(case, "flex causal (compiled)"):
            if device.type != "cuda":
                raise MissingOperation("needs CUDA")
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            n = q.shape[2]
            block_mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, n, n, device=device)
            flex = torch.compile(flex_attention, dynamic=False)
            out = flex(q, k, v, block_mask=block_mask, scale=scale)
            rows = rows_to_check(n)
            err = compare(out[:, :2, rows], dense_reference_rows(q[:, :2], k[:, :2], v[:, :2], rows, scale))
            del out
            t = time_fn(lambda: flex(q, k, v, block_mask=block_mask, scale=scale), device, budget_s=budget)
            rec.add(case, "flex causal (compiled)", timing=t, flops=flops, err=err, ok=err["ok"])


def bench_attention(rec, lengths, heads, d, budget):
    device = rec.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for n in lengths:
        case = f"attention {n // 1024}K" if n >= 1024 else f"attention {n}"
        g = torch.Generator(device=device).manual_seed(n)
        q, k, v = (torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g) for _ in range(3))
        scale = 1 / math.sqrt(d)
        flops = flops_causal(1, heads, n, n, d)
        with rec.guard(case, "yarnref attention (torch)"):
            with use_yarnref_backend("torch", device) as be:
                fn = backend_op(be, "attention")
                out = fn(q, k, v, causal=True)
                rows = rows_to_check(n)
                err = compare(out[:, :2, rows], dense_reference_rows(q[:, :2], k[:, :2], v[:, :2], rows, scale))
                del out
                t = time_fn(lambda: fn(q, k, v, causal=True), device, budget_s=budget)
                rec.add(case, "yarnref attention (torch)", timing=t, flops=flops, err=err, ok=err["ok"])
        dense_peers(rec, case, q, k, v, scale, budget, flops)
        rec.add_ratios(case, "yarnref attention (torch)")


def dca_reference_rows(q, k, v, inv_freq, chunk, local, rows):
    """The NumPy spec on heads 0-1 for 64-row slices ``rows`` (each slice [a, a+64) uses keys [0, a+64))."""
    from yarnref.dca import dca_attention as spec_dca

    outs = []
    for a in sorted({r // 64 * 64 for r in rows}):
        stop = min(a + 64, q.shape[2])
        qs = q[:, :2, a:stop].double().cpu().numpy()
        ks = k[:, :2, :stop].double().cpu().numpy()
        vs = v[:, :2, :stop].double().cpu().numpy()
        outs.append(torch.from_numpy(np.asarray(spec_dca(qs, ks, vs, inv_freq, chunk, local))))
    return torch.cat(outs, dim=2)


def bench_dca(rec, lengths, heads, d, chunk, local, budget):
    device = rec.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    inv_freq = 1.0 / (1e6 ** (np.arange(0, d, 2, dtype=np.float64) / d))
    for n in lengths:
        case = f"dca {n // 1024}K (chunk {chunk}, local {local})" if n >= 1024 else f"dca {n}"
        g = torch.Generator(device=device).manual_seed(n + 1)
        q, k, v = (torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g) for _ in range(3))
        scale = 1 / math.sqrt(d)
        flops = flops_causal(1, heads, n, n, d)
        with rec.guard(case, "yarnref dca_attention (torch)"):
            with use_yarnref_backend("torch", device) as be:
                fn = backend_op(be, "dca_attention")
                freqs = torch.as_tensor(inv_freq, device=device)
                out = fn(q, k, v, freqs, chunk, local)
                rows = rows_to_check(n)
                err = compare(out[:, :2, rows].cpu(), dca_reference_rows(q, k, v, inv_freq, chunk, local, rows))
                del out
                t = time_fn(lambda: fn(q, k, v, freqs, chunk, local), device, budget_s=budget)
                rec.add(case, "yarnref dca_attention (torch)", timing=t, flops=flops, err=err, ok=err["ok"],
                        note="flops: the causal pairs, as one dense call")
        dense_peers(rec, case, q, k, v, scale, budget, flops, with_flex=False)
        rec.add_ratios(case, "yarnref dca_attention (torch)")
        for r in rec.rows:
            if r["case"] == case and r["impl"] == "yarnref dca_attention (torch)" and "speedup_vs" in r:
                fastest = min(r["speedup_vs"].values())  # the fastest dense call's time / DCA's
                r["dca_over_fastest_dense"] = 1.0 / fastest


def run(rec):
    quick = rec.args.quick
    budget = rec.args.budget or (20 if quick else 110)
    if quick:
        bench_attention(rec, [256], 2, 64, 0.05)
        bench_dca(rec, [384], 2, 64, 128, 32, 0.05)
        return
    bench_attention(rec, [8192, 16384, 32768], HEADS, HEAD_DIM, 1.5)
    lengths = [32768, 65536, 131072]
    for n in lengths:
        if rec.elapsed() > budget:
            rec.note(f"time budget ({budget:.0f} s) spent: DCA {n} skipped")
            continue
        bench_dca(rec, [n], HEADS, HEAD_DIM, 32768, 4096, 3.0)


if __name__ == "__main__":
    main_wrapper("attention", run)
