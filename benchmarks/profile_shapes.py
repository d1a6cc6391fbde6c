"""What a new shape costs the torch backend's GPU kernels, and the two forms of a causal chunk's attention (CUDA).

Chunked prefill calls attention with a new ``(q_len, kv_len)`` at every
chunk, and the sparse path with new list widths at every DCA segment (each
segment keeps its own number of verticals and slashes per part).  This
profile measures, on the device:

* **Triton kernels** (the sparse kernel and the index conversion): the first
  and the second call for a sequence of shapes whose lengths and list widths
  change the way chunked prefill changes them, and how many compiled variants
  each kernel holds after the sequence.  Triton compiles one variant per
  pattern of its integer arguments (whether each is 1 or divisible by 16);
  the kernels exempt the lengths and list strides from it (``_SIZES``,
  ``_LIST_STRIDES`` in ``triton_sparse.py``).  With ``--before FILE`` (a copy
  of an earlier ``triton_sparse.py``) the same sequence runs on that module's
  kernels too, for a before/after comparison in one run.
* **cuDNN**: first against second call at a new shape (its execution plan is
  built once per shape).
* **A causal chunk with the lse** (``q_len < kv_len``, bottom-right): one
  flash call against two cuDNN calls (the keys before the queries' square,
  non-causal, and the square, causal) merged by log-sum-exp
  (``yarnref_torch.attention.SPLIT_CAUSAL_CUDNN``), each checked against a
  float64 reference on 64 sampled rows.

Not part of run_all.sh: ``python benchmarks/profile_shapes.py --out DIR [--before FILE]``.
"""

from __future__ import annotations

import importlib.util
import math
import time

import torch

from common import MissingOperation, compare, dense_reference_rows, flops_causal, main_wrapper, sync, time_fn
from bench_sparse_real import _pop_option

HEADS, KV_HEADS, HEAD_DIM = 28, 4, 128
#: (q_len, kv_len, verticals, slashes): chunk-like shapes; widths differ in their divisibility by 16.
SHAPES = [
    (8192, 65536, 1000, 6096),
    (8192, 65536, 1001, 6097),
    (8192, 65536 + 64, 1003, 6090),
    (8192, 73728, 1008, 6101),
    (4096, 65536, 1016, 6112),
    (8192 + 64, 98304, 997, 6095),
]
OPTIONS = {"before": None}


def _variants(fn) -> int | None:
    """Compiled variants a Triton JIT function holds (all devices)."""
    caches = getattr(fn, "device_caches", None)
    if caches:
        return sum(len(entry[0]) for entry in caches.values())
    cache = getattr(fn, "cache", None)
    if cache:
        return sum(len(c) for c in cache.values())
    return None


def _indices(tq, tk, nv, ns, gen, device):
    """Random sorted vertical columns and slash distances, ``(1, HEADS, n)`` int64 each."""
    v = torch.stack([torch.randperm(tk, generator=gen)[:nv].sort().values for _ in range(HEADS)])[None]
    s = torch.stack([torch.randperm(tk, generator=gen)[:ns].sort(descending=True).values for _ in range(HEADS)])[None]
    return v.to(device), s.to(device)


def _timed(fn, device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3, out


def triton_shapes(rec, module, label: str):
    device = rec.device
    gen = torch.Generator().manual_seed(0)
    for tq, tk, nv, ns in SHAPES:
        case = f"{label} q{tq} kv{tk} v{nv} s{ns}"
        with rec.guard(case, "triton"):
            g = torch.Generator(device=device).manual_seed(tq + tk)
            q = torch.randn((1, HEADS, tq, HEAD_DIM), device=device, dtype=torch.bfloat16, generator=g)
            k, v = (torch.randn((1, KV_HEADS, tk, HEAD_DIM), device=device, dtype=torch.bfloat16, generator=g) for _ in range(2))
            vert, slash = _indices(tq, tk, nv, ns, gen, device)
            convert = lambda: module.convert_vertical_slash_indexes_triton(tq, tk, vert, slash, 64, 64, True)  # noqa: E731
            first_convert, lists = _timed(convert, device)
            second_convert, _ = _timed(convert, device)
            kernel = lambda: module.sparse_attention_triton(q, k, v, *lists, return_lse=True)  # noqa: E731
            first_kernel, _ = _timed(kernel, device)
            second_kernel, _ = _timed(kernel, device)
            rec.add(case, "convert", timing={"ms": second_convert, "first_ms": first_convert, "timer": "call 2 of 2", "reps": 1},
                    variants=_variants(module._convert_vs_kernel))
            rec.add(case, "sparse kernel", timing={"ms": second_kernel, "first_ms": first_kernel, "timer": "call 2 of 2", "reps": 1},
                    variants=_variants(module._vs_sparse_fwd_kernel))
            del q, k, v, lists
    rec.note(f"{label}: compiled variants after the sequence: convert {_variants(module._convert_vs_kernel)}, "
             f"sparse kernel {_variants(module._vs_sparse_fwd_kernel)}")


def cudnn_shapes(rec):
    device = rec.device
    scale = 1 / math.sqrt(HEAD_DIM)
    for tq, tk, causal in ((32768, 32768, True), (28672, 28672, True), (4096, 28672, False), (32768, 98304, False), (32768, 131072, False)):
        case = f"cudnn q{tq} kv{tk} {'causal' if causal else 'non-causal'}"
        with rec.guard(case, "cudnn first/second"):
            g = torch.Generator(device=device).manual_seed(tq + tk)
            q = torch.randn((1, HEADS, tq, HEAD_DIM), device=device, dtype=torch.bfloat16, generator=g)
            k, v = (torch.randn((1, KV_HEADS, tk, HEAD_DIM), device=device, dtype=torch.bfloat16, generator=g) for _ in range(2))
            call = lambda: torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)  # noqa: E731
            first, _ = _timed(call, device)
            second, _ = _timed(call, device)
            rec.add(case, "cudnn first/second", timing={"ms": second, "first_ms": first, "timer": "call 2 of 2", "reps": 1})


def causal_chunk_forms(rec):
    """One prefill chunk's causal attention with the lse: flash, against the split cuDNN form."""
    import yarnref_torch.attention as attn

    device = rec.device
    scale = 1 / math.sqrt(HEAD_DIM)
    for tq, tk in ((32768, 65536), (32768, 131072), (32768, 262144)):
        g = torch.Generator(device=device).manual_seed(tk)
        q = torch.randn((1, HEADS, tq, HEAD_DIM), device=device, dtype=torch.bfloat16, generator=g)
        k, v = (torch.randn((1, KV_HEADS, tk, HEAD_DIM), device=device, dtype=torch.bfloat16, generator=g) for _ in range(2))
        rows = torch.linspace(0, tq - 1, 64).round().long().unique().tolist()
        ref = dense_reference_rows(q, k, v, rows, scale)
        flops = flops_causal(1, HEADS, tq, tk, HEAD_DIM)
        case = f"causal chunk q{tq // 1024}K kv{tk // 1024}K"
        for split in (False, True):
            impl = "split cudnn + merge" if split else "flash"
            with rec.guard(case, impl):
                attn.SPLIT_CAUSAL_CUDNN = split
                call = lambda: attn.attention_tensors(q, k, v, True, scale, True)  # noqa: E731
                out, _ = call()
                err = compare(out[:, :, rows], ref)
                rec.add(case, impl, timing=time_fn(call, device, budget_s=2.0), flops=flops, err=err, ok=err["ok"])
        attn.SPLIT_CAUSAL_CUDNN = True
        del q, k, v


def run(rec):
    device = rec.device
    if device.type != "cuda":
        rec.note(str(MissingOperation("the profile needs CUDA")))
        return
    import yarnref_torch.triton_sparse as current

    triton_shapes(rec, current, "now")
    if OPTIONS["before"]:
        spec = importlib.util.spec_from_file_location("triton_sparse_before", OPTIONS["before"])
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)
        triton_shapes(rec, before, "before")
    cudnn_shapes(rec)
    causal_chunk_forms(rec)


if __name__ == "__main__":
    OPTIONS["before"] = _pop_option("before")
    main_wrapper("profile_shapes", run)
