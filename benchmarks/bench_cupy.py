"""The CuPy backend against the torch backend, one size each, float16 (CuPy has no bfloat16).

* ``attention``: B=1, 32 heads, 8192 tokens, head_dim 128, causal;
* ``vertical_slash_attention`` (``mode="kernel"``): B=1, 8 heads, 32768
  tokens, head_dim 128, 1000 verticals and 6096 slashes per head
  (the ``realistic`` pattern of bench_sparse.py).

Both backends get the same torch CUDA tensors (the CuPy backend takes them by
DLPack, without a copy).  CuPy may run on its own stream, so both are timed
with a device-wide synchronisation around each call and the host clock.
Outputs are checked on a slice of rows against float64 references.
"""

from __future__ import annotations

import math
import time

import torch

from bench_sparse import BM, BN, check_sparse, kept_pairs, load_triton_sparse, make_indices
from common import MissingOperation, backend_op, compare, dense_reference_rows, flops_causal, main_wrapper, use_yarnref_backend



def time_host(fn, budget_s: float, min_reps: int = 3, max_reps: int = 50) -> dict:
    """Median milliseconds with torch.cuda.synchronize() (device-wide) around each call."""

    def once():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    first = once()  # warm-up (kernel compilation)
    one = once()
    reps = int(min(max_reps, max(min_reps, budget_s * 1e3 / max(one, 1e-3))))
    times = sorted([one] + [once() for _ in range(reps - 1)])
    return {"ms": times[len(times) // 2], "first_ms": first, "reps": reps, "timer": "host+sync"}


def to_torch(x):
    return x if isinstance(x, torch.Tensor) else torch.from_dlpack(x)


def run(rec):
    device = rec.device
    if device.type != "cuda":
        rec.missing("(all)", "cupy backend", "needs CUDA")
        return
    quick = rec.args.quick
    budget = 0.2 if quick else 1.5
    dtype = torch.float16

    n, heads, d = (1024, 4, 64) if quick else (8192, 32, 128)
    case = f"attention {n} tok x {heads} heads x {d}"
    g = torch.Generator(device=device).manual_seed(7)
    q, k, v = (torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g) for _ in range(3))
    scale = 1 / math.sqrt(d)
    rows = list(range(n - 64, n))
    ref = dense_reference_rows(q[:, :2], k[:, :2], v[:, :2], rows, scale)
    for name in ("cupy", "torch"):
        impl = f"yarnref attention ({name})"
        with rec.guard(case, impl):
            with use_yarnref_backend(name, device) as be:
                fn = backend_op(be, "attention")
                out = to_torch(fn(q, k, v, causal=True))
                err = compare(out[:, :2, rows], ref)
                t = time_host(lambda: fn(q, k, v, causal=True), budget)
                rec.add(case, impl, timing=t, flops=flops_causal(1, heads, n, n, d), err=err, ok=err["ok"])
    rec.add_ratios(case, "yarnref attention (cupy)", peers=["yarnref attention (torch)"])

    n, heads, d = (1024, 2, 64) if quick else (32768, 8, 128)
    case = f"vertical_slash {n} tok x {heads} heads x {d}"
    g = torch.Generator(device=device).manual_seed(8)
    q, k, v = (torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g) for _ in range(3))
    V, S = make_indices(n, heads, 1000, 6096, "realistic", seed=n, device=device)
    try:
        ts = load_triton_sparse()
        lists = ts.convert_vertical_slash_indexes_triton(n, n, V, S, BM, BN)
        kept, _ = kept_pairs(lists, heads, n, n)
    except MissingOperation as exc:
        rec.missing(case, "(reference)", str(exc))
        return
    for name in ("cupy", "torch"):
        impl = f"yarnref vertical_slash_attention ({name})"
        with rec.guard(case, impl):
            with use_yarnref_backend(name, device) as be:
                fn = backend_op(be, "vertical_slash_attention")
                out = to_torch(fn(q, k, v, V, S, mode="kernel"))
                err = check_sparse(out, q, k, v, lists, scale, heads=(0, heads - 1))
                t = time_host(lambda: fn(q, k, v, V, S, mode="kernel"), budget)
                rec.add(case, impl, timing=t, flops=4.0 * d * kept, err=err, ok=err["ok"])
    rec.add_ratios(case, "yarnref vertical_slash_attention (cupy)", peers=["yarnref vertical_slash_attention (torch)"])


if __name__ == "__main__":
    main_wrapper("cupy", run)
