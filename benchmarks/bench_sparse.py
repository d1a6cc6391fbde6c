"""Vertical-slash sparse attention (MInference, arXiv:2407.02490): ours (Triton) against dense and FlexAttention.

Per length (128K first: the headline), B=1, 32 heads, head_dim 128, bf16,
1000 verticals and 6096 slashes per head:

* ``yarnref triton sparse``: ``sparse_attention_triton`` on lists from
  ``convert_vertical_slash_indexes_triton`` (the conversion timed separately);
* ``yarnref vertical_slash_attention``: the public torch-backend call
  (validation + conversion + kernel), and ``vertical_slash_indices`` (the
  last-64-query estimation) when the backend has them;
* ``sdpa flash (dense causal)`` and ``sdpa cudnn (dense causal)``: one dense
  causal call at the same length, the cost sparse attention must beat;
* ``flex sparse (same mask)``: FlexAttention with a BlockMask of the same key
  set (128x128 tiles from the lists, the exact per-element mask in
  ``mask_mod``), compiled; its mask-building time is reported too;
* ``minference triton (same lists)``: MInference's own Triton kernel
  (``_triton_mixed_sparse_attention`` of
  ``minference/ops/pit_sparse_flash_attention_v2.py``, MIT) fed our lists.
  Its file is not part of this project: pass ``--minference-kernel FILE``
  (or set ``YARNREF_MINFERENCE_KERNEL``; default ``.peers/`` at the
  repository root, where ``benchmarks/carry_minference.sh`` copies it); the
  row reads ``missing`` without it.  Its calling convention, read from the
  file: q, k, v ``(B, H, N, D)`` with as many kv heads as query heads (k and
  v are repeated for GQA here), ``N`` a multiple of 64, the same four int32
  lists as ours (contiguous, ``(B, H, ceil(N / 64), cap)``; MInference's CUDA
  converter writes the same lists as ours), 64 x 64 blocks, ``seqlens``
  ``(B,)`` int32.  It tests causality on the ranges only (``col <= row``,
  q_len = kv_len), not on the columns, and pre-scales q in bf16; with the
  distances 0..99 always kept, its key sets equal ours;
* ``yarnref triton sparse (2 blocks/program)`` (128K only): the same kernel
  with two row blocks per program sharing K/V tiles (``paired=True``).

Index patterns (slash distances 0..99 and verticals 0..29 always kept, as
MInference forces them; the rest drawn per head):

* ``realistic``: 90% of the other slashes near the diagonal (distance 100 +
  an exponential of mean 2048), 10% uniform; verticals uniform;
* ``uniform`` (128K only): every other slash uniform, the worst case for the
  kernel's 64-wide ranges;
* ``local`` (128K only): all other slashes near the diagonal.

What the kernel computes is each slash widened to a 64-column range per
64-row block (as the vLLM/MInference kernels do), so the printed ``density`` (kept
query-key pairs / causal pairs) is what sets the cost.  ``tflops_kept`` counts
4*D flops per kept pair; ``tflops_tiles`` counts the 64x64 tiles the kernel
multiplies (its hardware utilisation); ``l2_tbps_tiles`` the K and V bytes of
those tiles moved from L2 into shared memory per second, against the L2 read
ceiling measured in the same run (``pct_l2``): with 64 query rows per tile that
traffic, not the tensor cores, bounds the kernel.  Every implementation's output is
checked on a slice of rows against a float64 reference.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import sys
import time
import types
from pathlib import Path

import torch

from common import (
    ROOT,
    MissingOperation,
    backend_op,
    compare,
    merge_checks,
    dense_reference_rows,
    flops_causal,
    main_wrapper,
    time_fn,
    use_yarnref_backend,
)

HEADS, HEAD_DIM, N_VERT, N_SLASH = 32, 128, 1000, 6096
BM = BN = 64


def load_triton_sparse():
    """The Triton module from the source tree (MissingOperation if triton cannot run here)."""
    try:
        import triton  # noqa: F401  (only to know whether it is there)
    except ImportError as exc:
        raise MissingOperation("triton is not installed") from exc
    path = ROOT / "backends" / "yarnref_torch" / "triton_sparse.py"
    spec = importlib.util.spec_from_file_location("_bench_triton_sparse", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: Where benchmarks/carry_minference.sh puts MInference's kernel file.
MINFERENCE_DEFAULT = ROOT / ".peers" / "pit_sparse_flash_attention_v2.py"
MINFERENCE_FILE: str | None = None  # set from --minference-kernel in __main__
_minference = {}


def load_minference_kernel():
    """MInference's ``_triton_mixed_sparse_attention`` from its file, imported by path (MissingOperation if absent).

    The file imports its CUDA converter relatively (``from ..cuda import ...``):
    it is loaded as a module of a stand-in package whose ``cuda`` module has a
    converter that refuses to run (the benchmark feeds the kernel our lists).
    """
    if "fn" in _minference:
        return _minference["fn"]
    path = MINFERENCE_FILE or os.environ.get("YARNREF_MINFERENCE_KERNEL") or str(MINFERENCE_DEFAULT)
    if not Path(path).is_file():
        raise MissingOperation(f"MInference's kernel file is not here ({path}): benchmarks/carry_minference.sh copies it")
    pkg = "_yarnref_peer_minference"
    if pkg not in sys.modules:
        root, ops, cuda = (types.ModuleType(name) for name in (pkg, f"{pkg}.ops", f"{pkg}.cuda"))
        root.__path__, ops.__path__ = [], []

        def convert_vertical_slash_indexes(*args, **kwargs):
            raise MissingOperation("MInference's CUDA converter is not loaded; the benchmark gives its kernel our lists")

        cuda.convert_vertical_slash_indexes = convert_vertical_slash_indexes
        sys.modules.update({pkg: root, f"{pkg}.ops": ops, f"{pkg}.cuda": cuda})
    spec = importlib.util.spec_from_file_location(f"{pkg}.ops.pit_sparse_flash_attention_v2", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    fn = getattr(mod, "_triton_mixed_sparse_attention", None)
    if fn is None:
        raise MissingOperation(f"{path} has no _triton_mixed_sparse_attention")
    _minference["fn"] = fn
    return fn


def run_minference(rec, case, q, k, v, lists, kept, scale, budget_per_impl):
    """MInference's Triton kernel on our lists, checked like ours."""
    impl = "minference triton (same lists)"
    with rec.guard(case, impl):
        if rec.device.type != "cuda":
            raise MissingOperation("needs CUDA")
        fn = load_minference_kernel()
        n, d = q.shape[2], q.shape[-1]
        if n % BM or d not in (16, 32, 64, 128):
            raise MissingOperation(f"its kernel takes seq lengths that are multiples of {BM} and head_dim 16..128")
        group = q.shape[1] // k.shape[1]
        kk, vv = (x.repeat_interleave(group, dim=1) if group > 1 else x for x in (k, v))
        seqlens = torch.full((q.shape[0],), n, dtype=torch.int32, device=q.device)
        lists = [t.contiguous() for t in lists]

        def call():
            return fn(q, kk, vv, seqlens, *lists, scale, BM, BN)

        out = call()
        err = check_sparse(out, q, k, v, lists, scale)
        del out
        t = time_fn(call, rec.device, budget_s=budget_per_impl)
        rec.add(case, impl, timing=t, flops=4.0 * q.shape[-1] * kept, err=err, ok=err["ok"],
                note="MInference's own Triton kernel, file carried at run time")


# ----------------------------------------------------------------------------- index patterns


def make_indices(n: int, heads: int, n_vert: int, n_slash: int, pattern: str, seed: int, device):
    """(vertical_idx, slash_idx), each (1, heads, budget) int32, unsorted, drawn per head without repeats."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n_vert, n_slash = min(n_vert, n), min(n_slash, n)
    forced_v, forced_s = min(30, n_vert), min(100, n_slash)
    verts, slashes = [], []
    dist = torch.arange(forced_s, n, dtype=torch.float64)
    if pattern == "uniform":
        weights = torch.ones_like(dist)
    else:
        near = torch.exp(-(dist - forced_s) / 2048.0)
        near /= near.sum()
        uniform = torch.full_like(dist, 1.0 / dist.numel())
        weights = near if pattern == "local" else 0.9 * near + 0.1 * uniform
    for _ in range(heads):
        v_other = torch.randperm(n - forced_v, generator=g)[: n_vert - forced_v] + forced_v
        verts.append(torch.cat([torch.arange(forced_v), v_other]))
        s_other = torch.multinomial(weights, n_slash - forced_s, replacement=False, generator=g) + forced_s
        slashes.append(torch.cat([torch.arange(forced_s), s_other]))
    v = torch.stack(verts)[None].to(torch.int32).to(device)
    s = torch.stack(slashes)[None].to(torch.int32).to(device)
    return v, s


def coverage_rows(lists, head: int, tq: int, tk: int, rows=None):
    """(R or len(rows), tk) int32: how many listed blocks/columns cover each key, per row block of ``head``."""
    bc, bo, cc, ci = (t[0, head] for t in lists)
    n_rows = bc.shape[0]
    sel = torch.arange(n_rows, device=bc.device) if rows is None else torch.as_tensor(rows, device=bc.device)
    bc, bo, cc, ci = bc[sel], bo[sel], cc[sel], ci[sel]
    r = sel.numel()
    diff = torch.zeros((r, tk + 1), dtype=torch.int32, device=bc.device)
    valid = torch.arange(bo.shape[-1], device=bc.device)[None, :] < bc[:, None]
    starts = bo.clamp(0, tk).long()
    stops = (bo.long() + BN).clamp(0, tk)
    ones = valid.to(torch.int32)
    diff.scatter_add_(1, torch.where(valid, starts, tk), ones)
    diff.scatter_add_(1, torch.where(valid, stops, tk), -ones)
    cover = diff.cumsum(1, dtype=torch.int32)[:, :tk]
    cvalid = (torch.arange(ci.shape[-1], device=bc.device)[None, :] < cc[:, None]) & (ci >= 0) & (ci < tk)
    cols = torch.where(cvalid, ci.long(), tk)
    extra = torch.zeros((r, tk + 1), dtype=torch.int32, device=bc.device)
    extra.scatter_add_(1, cols, cvalid.to(torch.int32))
    return cover + extra[:, :tk]


def kept_pairs(lists, heads: int, tq: int, tk: int) -> tuple[float, float]:
    """(query-key pairs the kernel keeps, after the causal test; 64x64 tiles it multiplies), summed over heads."""
    kept = 0.0
    off = tk - tq
    for h in range(heads):
        cover = coverage_rows(lists, h, tq, tk) > 0  # (R, tk)
        prefix = cover.to(torch.int32).cumsum(1, dtype=torch.int32)  # covered keys <= j
        pos = torch.arange(tq, device=cover.device) + off
        kept += float(prefix[torch.arange(tq, device=cover.device) // BM, pos.clamp(max=tk - 1)].sum())
    bc, _, cc, _ = lists
    tiles = float(bc.sum()) + float(((cc + BN - 1) // BN).sum())
    return kept, tiles


def sparse_reference_rows(q, k, v, lists, head: int, rows, scale: float):
    """float64 attention of ``head`` for query rows ``rows`` over the keys the lists give (counted with multiplicity)."""
    tq, tk = q.shape[2], k.shape[2]
    rows = torch.as_tensor(rows, device=q.device)
    group = q.shape[1] // k.shape[1]
    weights = coverage_rows(lists, head, tq, tk, rows // BM).to(torch.float64)  # (r, tk)
    pos = rows + (tk - tq)
    weights = weights.masked_fill(torch.arange(tk, device=q.device)[None, :] > pos[:, None], 0.0)
    qs = q[0, head, rows].to(torch.float64)
    kf, vf = k[0, head // group].to(torch.float64), v[0, head // group].to(torch.float64)
    s = scale * qs @ kf.T
    s = s.masked_fill(weights == 0, float("-inf"))
    m = s.max(-1, keepdim=True).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = weights * torch.exp(s - m)
    denom = p.sum(-1, keepdim=True)
    return torch.where(denom > 0, (p @ vf) / denom.clamp_min(1e-300), torch.zeros_like(p @ vf))


def check_rows(tq: int):
    """Query rows checked: the first, a middle and the last row block, plus the last row."""
    blocks = sorted({0, (tq // BM) // 2, (tq - 1) // BM})
    rows = [r for b in blocks for r in range(b * BM, min((b + 1) * BM, tq))]
    return rows


def check_sparse(out, q, k, v, lists, scale, heads=(0, 17)) -> dict:
    tq = q.shape[2]
    rows = check_rows(tq)
    errs = []
    for h in heads:
        if h >= q.shape[1]:
            continue
        ref = sparse_reference_rows(q, k, v, lists, h, rows, scale)
        errs.append(compare(out[0, h, rows], ref))
    return merge_checks(*errs)


def check_dense(out, q, k, v, scale) -> dict:
    rows = check_rows(q.shape[2])
    ref = dense_reference_rows(q[:, :2], k[:, :2], v[:, :2], rows, scale)
    return compare(out[:, :2, rows], ref)




# ----------------------------------------------------------------------------- FlexAttention peer


def flex_block_mask(lists, heads: int, tq: int, tk: int, device):
    """A BlockMask (128x128 tiles) of exactly the kernel's key set.

    ``mask_mod`` reads a bit table ``(H, R, ceil(tk / 32))`` int32 (bit ``j % 32``
    of word ``j // 32`` says whether row block ``R`` lists key ``j``): a byte
    table would pass 2**31 elements at 128K and overflow the generated kernel's
    int32 indexing.
    """
    from torch.nn.attention.flex_attention import BlockMask

    tile = 128
    n_rows = -(-tq // BM)
    nq, nk = -(-tq // tile), -(-tk // tile)
    words = -(-tk // 32)
    bits = torch.empty((heads, n_rows, words), dtype=torch.int32, device=device)
    any_tile = torch.empty((heads, nq, nk), dtype=torch.bool, device=device)
    all_tile = torch.empty_like(any_tile)
    shifts = torch.arange(32, device=device, dtype=torch.int64)
    for h in range(heads):
        cov = coverage_rows(lists, h, tq, tk) > 0  # (R, tk)
        padded = torch.nn.functional.pad(cov, (0, nk * tile - tk, 0, nq * (tile // BM) - n_rows))
        tiles = padded.view(nq, tile // BM, nk, tile)
        any_tile[h] = tiles.any(dim=3).any(dim=1)
        all_tile[h] = tiles.all(dim=3).all(dim=1)
        packed = torch.nn.functional.pad(cov, (0, words * 32 - tk)).view(n_rows, words, 32).to(torch.int64)
        bits[h] = (packed << shifts).sum(-1).to(torch.int32)  # wraps to the int32 bit pattern
    off = tk - tq
    qt, kt = torch.arange(nq, device=device), torch.arange(nk, device=device)
    below = (kt[None, :] * tile + tile - 1) <= (qt[:, None] * tile + off)  # every key of the tile visible to every row
    causal_any = (kt[None, :] * tile) <= (qt[:, None] * tile + tile - 1 + off)
    inside = (qt[:, None] * tile + tile <= tq) & (kt[None, :] * tile + tile <= tk)
    full = all_tile & (below & inside)[None]
    partial = any_tile & causal_any[None] & ~full

    def to_indices(sel):
        counts = sel.sum(-1, dtype=torch.int32)  # (H, nq)
        order = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)  # selected first, ascending
        return counts[None].contiguous(), order[None].contiguous()

    kv_num, kv_idx = to_indices(partial)
    full_num, full_idx = to_indices(full)

    def mask_mod(b, h, q_idx, kv_idx):
        word = bits[h, q_idx // BM, kv_idx // 32]
        return (kv_idx <= q_idx + off) & (((word >> (kv_idx % 32)) & 1) > 0)

    kwargs = dict(BLOCK_SIZE=tile, mask_mod=mask_mod, seq_lengths=(tq, tk))
    if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters:
        kwargs["compute_q_blocks"] = False  # forward only
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, **kwargs), bits


_compiled_flex = None


def flex_fn():
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


# ----------------------------------------------------------------------------- the benchmark


def run_flex(rec, case, q, k, v, lists, heads, n, kept, scale, budget_per_impl):
    device = rec.device
    d = q.shape[-1]
    with rec.guard(case, "flex sparse (same mask)"):
        if device.type != "cuda":
            raise MissingOperation("FlexAttention needs CUDA here")
        t0 = time.perf_counter()
        block_mask, bits = flex_block_mask(lists, heads, n, n, device)
        torch.cuda.synchronize()
        build_s = time.perf_counter() - t0
        flex = flex_fn()
        out = flex(q, k, v, block_mask=block_mask, scale=scale)
        err = check_sparse(out, q, k, v, lists, scale)
        del out
        t = time_fn(lambda: flex(q, k, v, block_mask=block_mask, scale=scale), device, budget_s=budget_per_impl)
        rec.add(case, "flex sparse (same mask)", timing=t, flops=4.0 * d * kept, err=err, ok=err["ok"],
                mask_build_s=build_s, note="first call includes torch.compile: see first_ms")
    rec.add_ratios(case, "yarnref triton sparse")


def run_length(rec, ts, n: int, patterns, heads: int, n_vert: int, n_slash: int, with_flex: bool, budget_per_impl: float,
               d: int = HEAD_DIM, flex_only: bool = False):
    device = rec.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
    g = torch.Generator(device=device).manual_seed(n)
    q = torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g)
    k = torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g)
    v = torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g)
    scale = 1.0 / math.sqrt(d)
    label = f"{n // 1024}K" if n >= 1024 else str(n)
    dense_flops = flops_causal(1, heads, n, n, d)

    for pattern in patterns:
        case = f"{label} {pattern}"
        V, S = make_indices(n, heads, n_vert, n_slash, pattern, seed=n + len(pattern), device=device)
        lists = None
        if flex_only:
            with rec.guard(case, "flex sparse (same mask)"):
                if ts is None:
                    raise MissingOperation("the lists come from the Triton conversion, and triton cannot run here")
                lists = ts.convert_vertical_slash_indexes_triton(n, n, V, S, BM, BN)
        else:
            with rec.guard(case, "yarnref convert (triton)"):
                if ts is None:
                    raise MissingOperation("triton cannot run here")
                lists = ts.convert_vertical_slash_indexes_triton(n, n, V, S, BM, BN)
                t = time_fn(lambda: ts.convert_vertical_slash_indexes_triton(n, n, V, S, BM, BN), device, budget_s=budget_per_impl / 2)
                rec.add(case, "yarnref convert (triton)", timing=t)
        if lists is None:
            continue
        kept, tiles = kept_pairs(lists, heads, n, n)
        density = kept / (dense_flops / (4.0 * d))
        if flex_only:
            run_flex(rec, case, q, k, v, lists, heads, n, kept, scale, budget_per_impl)
            continue
        rec.note(f"{case}: kept pairs {kept:.3e}, density {100 * density:.1f}% of causal, "
                 f"mean blocks/row-block {float(lists[0].float().mean()):.0f}, mean columns {float(lists[2].float().mean()):.0f}")
        with rec.guard(case, "yarnref triton sparse"):
            out = torch.full_like(q, float("nan"))
            out = ts.sparse_attention_triton(q, k, v, *lists, scale, BM, BN)
            err = check_sparse(out, q, k, v, lists, scale)
            t = time_fn(lambda: ts.sparse_attention_triton(q, k, v, *lists, scale, BM, BN), device, budget_s=budget_per_impl)
            l2_tbps = 2 * BN * d * q.element_size() * tiles / (t["ms"] * 1e-3) / 1e12  # K and V of every tile, from L2
            extra = {"pct_l2": 100 * l2_tbps / rec.ceilings["l2_read_tbps"]} if "l2_read_tbps" in rec.ceilings else {}
            rec.add(case, "yarnref triton sparse", timing=t, flops=4.0 * d * kept, err=err, ok=err["ok"],
                    density=density, tflops_tiles=4.0 * d * BM * BN * tiles / (t["ms"] * 1e-3) / 1e12,
                    l2_tbps_tiles=l2_tbps, **extra)
            del out
        if n >= 131072 or rec.args.quick:
            impl = "yarnref triton sparse (2 blocks/program)"
            with rec.guard(case, impl):
                def paired():
                    return ts.sparse_attention_triton(q, k, v, *lists, scale, BM, BN, paired=True)

                out = paired()
                err = check_sparse(out, q, k, v, lists, scale)
                del out
                t = time_fn(paired, device, budget_s=budget_per_impl)
                rec.add(case, impl, timing=t, flops=4.0 * d * kept, err=err, ok=err["ok"], density=density,
                        note="includes the pair schedule")
        run_minference(rec, case, q, k, v, lists, kept, scale, budget_per_impl)
        if pattern == patterns[0]:
            with rec.guard(case, "yarnref vertical_slash_attention (api)"):
                with use_yarnref_backend("torch", device) as be:
                    fn = backend_op(be, "vertical_slash_attention")
                    out = fn(q, k, v, V, S, mode="kernel")
                    err = check_sparse(out, q, k, v, lists, scale)
                    t = time_fn(lambda: fn(q, k, v, V, S, mode="kernel"), device, budget_s=budget_per_impl)
                    rec.add(case, "yarnref vertical_slash_attention (api)", timing=t, flops=4.0 * d * kept, err=err,
                            ok=err["ok"], note="validation + conversion + kernel")
                    del out
            with rec.guard(case, "yarnref vertical_slash_indices (estimate)"):
                with use_yarnref_backend("torch", device) as be:
                    fn = backend_op(be, "vertical_slash_indices")
                    vi, si = fn(q, k, n_vert, n_slash)
                    ok = tuple(vi.shape[:2]) == (1, heads) and bool((vi[..., :30] >= 0).all())
                    t = time_fn(lambda: fn(q, k, n_vert, n_slash), device, budget_s=budget_per_impl / 2)
                    rec.add(case, "yarnref vertical_slash_indices (estimate)", timing=t, ok=ok, note="last 64 queries, top-k")
            for backend_name, impl in (("flash", "sdpa flash (dense causal)"), ("cudnn", "sdpa cudnn (dense causal)")):
                with rec.guard(case, impl):
                    from torch.nn.attention import SDPBackend, sdpa_kernel

                    which = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend_name]
                    if device.type != "cuda":
                        raise MissingOperation("needs CUDA")

                    def dense():
                        with sdpa_kernel([which]):
                            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

                    out = dense()
                    err = check_dense(out, q, k, v, scale)
                    del out
                    t = time_fn(dense, device, budget_s=budget_per_impl)
                    rec.add(case, impl, timing=t, flops=dense_flops, err=err, ok=err["ok"])
        rec.add_ratios(case, "yarnref triton sparse")
        paired_row = next((r for r in rec.rows if r["case"] == case and "ms" in r
                           and r["impl"] == "yarnref triton sparse (2 blocks/program)"), None)
        for r in rec.rows if paired_row is not None else ():
            if r["case"] == case and "ms" in r and r["impl"] in ("yarnref triton sparse", "minference triton (same lists)"):
                paired_row.setdefault("speedup_vs", {})[r["impl"]] = r["ms"] / paired_row["ms"]
        # The dense calls do not depend on the pattern: compare the other patterns with them too.
        first = f"{label} {patterns[0]}"
        ours = next((r for r in rec.rows if r["case"] == case and r["impl"] == "yarnref triton sparse" and "ms" in r), None)
        if ours is not None and case != first:
            for r in rec.rows:
                if r["case"] == first and r["impl"].startswith("sdpa") and "ms" in r:
                    ours.setdefault("speedup_vs", {})[r["impl"]] = r["ms"] / ours["ms"]


def run(rec):
    device = rec.device
    quick = rec.args.quick
    ts = None
    try:
        ts = load_triton_sparse()
        if device.type == "cpu" and not ts.interpreter_active():
            rec.note("no CUDA and TRITON_INTERPRET is not set: the Triton rows are skipped")
            ts = None
    except MissingOperation as exc:
        rec.note(str(exc))
    budget = rec.args.budget or (20 if quick else 200)
    heads, n_vert, n_slash = HEADS, N_VERT, N_SLASH
    if quick:
        heads, n_vert, n_slash = 2, 40, 120
        plan = [(320, ["realistic", "uniform"], False)]
    else:
        plan = [(131072, ["realistic", "uniform", "local"], True), (65536, ["realistic"], True), (32768, ["realistic"], True)]
    per_impl, d = (0.1, 64) if quick else (3.0, HEAD_DIM)
    for n, patterns, _ in plan:
        if rec.elapsed() > budget:
            rec.note(f"time budget ({budget:.0f} s) spent: skipped {n}")
            continue
        run_length(rec, ts, n, patterns, heads, n_vert, n_slash, False, per_impl, d)
    # FlexAttention last: a failure inside a compiled kernel can leave the CUDA context unusable.
    for n, patterns, with_flex in plan:
        if with_flex and rec.elapsed() < budget:
            run_length(rec, ts, n, patterns[:1], heads, n_vert, n_slash, True, per_impl, d, flex_only=True)


def _take_minference_arg():
    """Read ``--minference-kernel FILE`` off the command line (the other options are common.parse_args')."""
    global MINFERENCE_FILE
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--minference-kernel", default=None)
    known, rest = p.parse_known_args(sys.argv[1:])
    MINFERENCE_FILE = known.minference_kernel
    sys.argv = sys.argv[:1] + rest


if __name__ == "__main__":
    _take_minference_arg()
    main_wrapper("sparse", run)
