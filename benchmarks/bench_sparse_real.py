"""Vertical-slash sparse attention at Qwen2.5-7B-Instruct-1M's real per-head budgets, 128K to 1M tokens.

One call = one Qwen layer: 28 query heads, 4 KV heads, head_dim 128, bf16,
each head with its own budget from the model's ``sparse_attention_config``
(``benchmarks/data/``; a vertical budget of 30 runs as 130) and its own index
sets (``-1``-padded to the widest head, as yarnref's spec pads them), from
``qwen_patterns.py``: ``synthetic`` (bench_sparse's ``realistic``
generator) and ``smollm2`` (SmolLM2's exported sets scaled to the length;
``missing`` without ``--patterns DIR``).  Three representative layers are
timed: the smallest, the median and the largest total budget.

Rows per length ``N``:

* ``yarnref vertical_slash_attention (api)``: the public torch-backend call
  (validation, conversion per chunk of row blocks of at most ``LIST_BYTES``
  of lists, Triton kernel) on that layer's index sets; its peak memory above
  q, k, v and the indices (``peak_gib``), the whole lists' size had they
  been built at once (``whole_lists_gib``) and the bound per chunk;
* ``yarnref vertical_slash_indices (estimate)``: the last-64-query
  estimation with the per-head budgets, and ``yarnref convert (chunked)``:
  the conversion alone; ``overhead_share`` = (estimation + conversion) /
  (estimation + api call), the goal being at most 10% at 1M;
* ``sdpa cudnn (dense causal)`` and ``sdpa flash (dense causal)``: one
  dense causal call (K/V expanded to 28 heads), what sparse must beat;
* ``flex sparse (same mask)`` at 128K for the median layer (bench_sparse's
  BlockMask of the same key set);
* ``density <source> <N>``: the per-head density distribution after
  conversion over sampled layers (``qwen_patterns.density_report``).

Every timed output is checked on sampled rows (first, middle and last row
block) against a float64 reference: for the sparse call, attention over the
keys that the lists of those row blocks give; for dense, yarnref's attention.
Calls longer than a second are timed once after the checked call (which is
the warm-up), calls over 5 s by the checked call itself; shorter ones with
``time_fn``.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch

from common import (
    MissingOperation,
    compare,
    dense_reference_rows,
    flops_causal,
    main_wrapper,
    merge_checks,
    sync,
    time_fn,
    use_yarnref_backend,
)

import qwen_patterns as qp
from qwen_layer import tiny_sparse_table

HEADS, KV_HEADS, HEAD_DIM = 28, 4, 128
BM = BN = 64
LENGTHS = (131072, 262144, 524288, 1048576)
#: Layers whose densities are reported (every fourth: 196 of the 784 heads).
DENSITY_LAYERS = tuple(range(0, 28, 4))
#: Set from the command line before main_wrapper parses the common options.
OPTIONS = {"patterns": None}


def _pop_option(name: str):
    """Remove ``--name VALUE`` from sys.argv (the shared parser does not know it) and return VALUE."""
    flag = f"--{name}"
    if flag in sys.argv:
        i = sys.argv.index(flag)
        value = sys.argv[i + 1]
        del sys.argv[i : i + 2]
        return value
    return None


def representative_layers(vertical: np.ndarray, slash: np.ndarray) -> list[int]:
    """The layers with the smallest, median and largest total budget (vertical + slash over heads)."""
    total = (vertical + slash).sum(axis=1)
    order = np.argsort(total, kind="stable")
    return sorted({int(order[0]), int(order[len(order) // 2]), int(order[-1])})


def list_chunk_rows(heads: int, n_vertical: int, n_slash: int) -> int:
    """Query rows per chunk of the torch backend's lists (``LIST_BYTES`` of int32 lists per chunk)."""
    from yarnref_torch.sparse import LIST_BYTES

    per_row_block = 4 * heads * (max(n_slash, 1) * -(-BM // BN) + max(n_vertical, 1) + 2)
    return max(1, LIST_BYTES // per_row_block) * BM


def whole_list_bytes(heads: int, n: int, n_vertical: int, n_slash: int) -> int:
    return 4 * heads * -(-n // BM) * (n_slash * -(-BM // BN) + n_vertical + 2)


def convert_chunked(be, V, S, n: int):
    """The conversion as the api runs it for a causal call: per chunk of row blocks, each chunk's lists dropped."""
    step = list_chunk_rows(V.shape[1], V.shape[-1], S.shape[-1])
    last = None
    for start in range(0, n, step):
        stop = min(start + step, n)
        last = be.convert_vertical_slash_indexes(stop - start, stop, torch.where(V < stop, V, -1), S, BM, BN, True)
    return last


def check_rows(n: int) -> list[int]:
    blocks = sorted({0, (n // BM) // 2, (n - 1) // BM})
    return [r for b in blocks for r in range(b * BM, min((b + 1) * BM, n))]


def sparse_reference(q, k, v, V, S, rows, heads, scale, be):
    """float64 attention of ``heads`` on ``rows`` over the keys of the kernel's lists of those rows' row blocks."""
    from bench_sparse import coverage_rows

    group = q.shape[1] // k.shape[1]
    out = torch.empty((1, len(heads), len(rows), v.shape[-1]), dtype=torch.float64, device=q.device)
    blocks = sorted({r // BM for r in rows})
    for b in blocks:
        start, stop = b * BM, min((b + 1) * BM, q.shape[2])
        lists = be.convert_vertical_slash_indexes(stop - start, stop, torch.where(V < stop, V, -1), S, BM, BN, True)
        sel = [i for i, r in enumerate(rows) if start <= r < stop]
        for j, h in enumerate(heads):
            weight = coverage_rows(lists, h, stop - start, stop)[0].to(torch.float64)  # (stop,) this block's key counts
            pos = torch.as_tensor([rows[i] for i in sel], device=q.device)
            w = weight[None, :].expand(len(sel), -1).masked_fill(torch.arange(stop, device=q.device)[None, :] > pos[:, None], 0.0)
            qs = q[0, h, pos].to(torch.float64)
            kf, vf = k[0, h // group, :stop].to(torch.float64), v[0, h // group, :stop].to(torch.float64)
            s = (scale * qs @ kf.T).masked_fill(w == 0, -math.inf)
            p = w * torch.exp(s - s.max(-1, keepdim=True).values)
            out[0, j, sel] = (p @ vf) / p.sum(-1, keepdim=True)
    return out


def _timed(fn, device, first_s: float, budget_s: float) -> dict:
    """The (already made, checked) first call itself if it took over 5 s (its warm-up share is under 1%);
    one more call if it took over a second; else ``time_fn``."""
    if first_s > 5.0:
        return {"ms": first_s * 1e3, "first_ms": first_s * 1e3, "reps": 1, "timer": "the checked call (over 5 s)"}
    if first_s > 1.0:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        ms = (time.perf_counter() - t0) * 1e3
        return {"ms": ms, "first_ms": first_s * 1e3, "reps": 1, "timer": "one call after the checked one"}
    return time_fn(fn, device, budget_s=budget_s)


def _first(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def run_dense(rec, case, q, k, v, scale, per_impl):
    """One dense causal call per SDPA backend; returns {impl: ms}."""
    device = rec.device
    group = q.shape[1] // k.shape[1]
    times = {}
    for name, impl in (("cudnn", "sdpa cudnn (dense causal)"), ("flash", "sdpa flash (dense causal)")):
        with rec.guard(case, impl):
            if device.type != "cuda":
                raise MissingOperation("needs CUDA")
            from torch.nn.attention import SDPBackend, sdpa_kernel

            which = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]
            ke, ve = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)

            def dense():
                with sdpa_kernel([which]):
                    return torch.nn.functional.scaled_dot_product_attention(q, ke, ve, is_causal=True, scale=scale)

            out, first = _first(dense, device)
            rows = check_rows(q.shape[2])
            err = compare(out[:, :2, rows], dense_reference_rows(q[:, :2], ke[:, :2], ve[:, :2], rows, scale))
            del out
            t = _timed(dense, device, first, per_impl)
            del ke, ve
            rec.add(case, impl, timing=t, flops=flops_causal(1, q.shape[1], q.shape[2], q.shape[2], q.shape[-1]),
                    err=err, ok=err["ok"])
            times[impl] = t["ms"]
    return times


def run_sparse(rec, case, be, q, k, v, V, S, vb, sb, density, scale, per_impl, dense_ms, estimate: bool):
    device, n = rec.device, q.shape[2]
    heads = q.shape[1]
    est_ms = conv_ms = None
    if estimate:
        with rec.guard(case, "yarnref vertical_slash_indices (estimate)"):
            fn = lambda: be.vertical_slash_indices(q, k, vb, sb, 64)  # noqa: E731
            (vi, si), first = _first(fn, device)
            ok = tuple(vi.shape[:2]) == (1, heads) and bool((vi[..., :30] == torch.arange(30, device=device)).all())
            del vi, si
            t = _timed(fn, device, first, per_impl / 2)
            est_ms = t["ms"]
            rec.add(case, "yarnref vertical_slash_indices (estimate)", timing=t, ok=ok, note="last 64 queries, per-head top-k")
    with rec.guard(case, "yarnref convert (chunked)"):
        fn = lambda: convert_chunked(be, V, S, n)  # noqa: E731
        _, first = _first(fn, device)
        t = _timed(fn, device, first, per_impl / 2)
        conv_ms = t["ms"]
        rec.add(case, "yarnref convert (chunked)", timing=t, rows_per_chunk=list_chunk_rows(heads, V.shape[-1], S.shape[-1]))
    with rec.guard(case, "yarnref vertical_slash_attention (api)"):
        fn = lambda: be.vertical_slash_attention(q, k, v, V, S, "kernel", scale)  # noqa: E731
        if device.type == "cuda":
            sync(device)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        out, first = _first(fn, device)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else None
        rows = check_rows(n)
        check_heads = sorted({0, heads // 2, heads - 1})
        err = compare(out[:, check_heads][:, :, rows], sparse_reference(q, k, v, V, S, rows, check_heads, scale, be))
        del out
        t = _timed(fn, device, first, per_impl)
        kept = float(density.sum()) * n * (n + 1) / 2
        extra = {}
        if est_ms is not None and conv_ms is not None:
            extra["overhead_share"] = (est_ms + conv_ms) / (est_ms + t["ms"])
        row = rec.add(case, "yarnref vertical_slash_attention (api)", timing=t, flops=4.0 * q.shape[-1] * kept, err=err,
                      ok=err["ok"], density=float(density.mean()), peak_gib=peak,
                      whole_lists_gib=whole_list_bytes(heads, n, V.shape[-1], S.shape[-1]) / 2**30,
                      list_chunk_rows=list_chunk_rows(heads, V.shape[-1], S.shape[-1]),
                      note="validation + chunked conversion + kernel", **extra)
        for impl, ms in dense_ms.items():
            row.setdefault("speedup_vs", {})[impl] = ms / t["ms"]
        if est_ms is not None:
            row.setdefault("speedup_vs", {})
            for impl, ms in dense_ms.items():  # the pipeline's cost: estimation + api call
                row[f"speedup_with_estimate_vs_{impl.split()[1]}"] = ms / (t["ms"] + est_ms)


def run(rec):
    device = rec.device
    quick = rec.args.quick
    budget = rec.args.budget or (30 if quick else 230)
    patterns_dir = OPTIONS["patterns"]
    if quick:
        heads, kv_heads, d, lengths, per_impl = 4, 2, 64, (512,), 0.05
        table = tiny_sparse_table(heads=4, layers=3)
        density_layers = None
    else:
        heads, kv_heads, d, lengths, per_impl = HEADS, KV_HEADS, HEAD_DIM, LENGTHS, 1.0
        table = None
        density_layers = DENSITY_LAYERS
    vertical, slash = qp.head_budgets(table)
    layers = representative_layers(vertical, slash)
    dist = qp.budget_distribution(table)
    rec.note("budgets (vertical/slash: heads): " + ", ".join(f"{b['vertical']}/{b['slash']}: {b['heads']}" for b in dist["budgets"][:8])
             + f"; {dist['heads']} heads in all; timed layers {layers}")
    patterns = qp.find_patterns(patterns_dir)
    sources = ["synthetic"] + (["smollm2"] if patterns else [])
    if not patterns:
        rec.missing("all lengths", "smollm2 patterns", f"no smollm2_*.npz in {patterns_dir} (run yarnref patterns --npz)")

    # Densities first (their own share of the budget), then the timings, FlexAttention last.
    report = qp.density_report(lengths, patterns_dir, layers=density_layers, device=str(device),
                               budget_s=0.15 * budget, table=table, log=rec.note)
    for key, r in report["sources"].items():
        if r["status"] != "ok":
            rec.add(f"density {key}", "per-head density after conversion", status=r["status"], reason=r["reason"])
            continue
        rec.add(f"density {key}", "per-head density after conversion",
                note=f"{r['heads']} heads: min {r['min']:.3f}, q1 {r['q1']:.3f}, median {r['median']:.3f}, q3 {r['q3']:.3f}, "
                     f"max {r['max']:.3f}, mean {r['mean']:.3f}, work-weighted {r['work_weighted_mean']:.3f}",
                **{k: r[k] for k in ("min", "q1", "median", "q3", "max", "mean", "work_weighted_mean", "heads")})

    scale = 1.0 / math.sqrt(d)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
    flex_case = None
    with use_yarnref_backend("torch", device) as be:
        for n in lengths:
            if rec.elapsed() > 0.85 * budget:
                rec.note(f"time budget ({budget:.0f} s) spent: skipped {n}")
                continue
            label = f"{n // 1024}K" if n >= 1024 else str(n)
            g = torch.Generator(device=device).manual_seed(n)
            q = torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g)
            k = torch.randn((1, kv_heads, n, d), device=device, dtype=dtype, generator=g)
            v = torch.randn((1, kv_heads, n, d), device=device, dtype=dtype, generator=g)
            dense_ms = run_dense(rec, f"{label} dense", q, k, v, scale, per_impl)
            for layer in layers:
                for source in sources:
                    case = f"{label} L{layer} {source}"
                    if rec.elapsed() > 0.9 * budget:
                        rec.note(f"time budget spent: skipped {case}")
                        continue
                    with rec.guard(case, "index sets"):
                        V, S, info = qp.pattern_sets(source, n, layer, vertical[layer], slash[layer], patterns, vertical.shape[0])
                        density = qp.kernel_density(V, S, n, device=str(device), max_elements=1 << 27)
                        V, S = torch.as_tensor(V, device=device), torch.as_tensor(S, device=device)
                        if info.get("filled_uniform"):
                            rec.note(f"{case}: {info['filled_uniform']} indices filled uniformly (narrow scaled support)")
                        run_sparse(rec, case, be, q, k, v, V, S, vertical[layer], slash[layer], density, scale, per_impl,
                                   dense_ms, estimate=source == "synthetic")
                        if flex_case is None and n == lengths[0] and layer == layers[len(layers) // 2] and source == "synthetic":
                            flex_case = (case, V.cpu(), S.cpu(), density)
            del q, k, v
    if flex_case is not None and device.type == "cuda" and rec.elapsed() < 0.8 * budget:
        run_flex_peer(rec, flex_case, lengths[0], heads, kv_heads, d, dtype, scale, per_impl)


def run_flex_peer(rec, flex_case, n, heads, kv_heads, d, dtype, scale, per_impl):
    """FlexAttention with a BlockMask of the same key set (bench_sparse's peer), K/V expanded to the query heads."""
    case, V, S, density = flex_case
    device = rec.device
    with rec.guard(case, "flex sparse (same mask)"):
        from bench_sparse import run_flex

        g = torch.Generator(device=device).manual_seed(n)
        q = torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g)
        k = torch.randn((1, kv_heads, n, d), device=device, dtype=dtype, generator=g)
        v = torch.randn((1, kv_heads, n, d), device=device, dtype=dtype, generator=g)
        group = heads // kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        with use_yarnref_backend("torch", device) as be:
            lists = be.convert_vertical_slash_indexes(n, n, V.to(device), S.to(device), BM, BN, True)
        kept = float(density.sum()) * n * (n + 1) / 2
        run_flex(rec, case, q, k, v, lists, heads, n, kept, scale, per_impl)
        api = next((r for r in rec.rows if r["case"] == case and r["impl"] == "yarnref vertical_slash_attention (api)" and "ms" in r), None)
        flex = next((r for r in rec.rows if r["case"] == case and r["impl"] == "flex sparse (same mask)" and "ms" in r), None)
        if api and flex:
            api.setdefault("speedup_vs", {})["flex sparse (same mask)"] = flex["ms"] / api["ms"]


if __name__ == "__main__":
    OPTIONS["patterns"] = _pop_option("patterns")
    main_wrapper("sparse_real", run)
