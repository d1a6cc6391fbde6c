"""The CuPy backend against the torch backend: every operation, bfloat16 and float16, 8K, 32K and 128K tokens.

Operations (B = 1, 32 query heads, 8 KV heads where GQA applies, head_dim 128):

* ``attention``: dense causal attention;
* ``dca_attention``: Dual Chunk Attention, chunk_size 8192, local_size 1024
  (un-rotated q and k, theta 1e6);
* ``vertical_slash_attention``: ``mode="kernel"``, 1000 verticals and 6096
  slashes per head (the ``realistic`` pattern of bench_sparse.py), index
  conversion included;
* ``apply_rope``: q (32 heads) rotated with float32 ``(seq, 64)`` tables;
* ``vertical_slash_indices``: the estimation from the last 64 queries, budgets
  1000 / 6096.

Three implementations per case, on the same inputs (torch CUDA tensors; the
CuPy backend gets CuPy views of the same memory through DLPack, made once):
``cupy`` (the default kernels: yarnref's Triton kernels launched on CuPy
arrays where torch and Triton are installed), ``cupy nvrtc``
(``YARNREF_CUPY_KERNELS=nvrtc``: the NVRTC kernel and CuPy array code, what a
CuPy-only install runs) and ``torch``.  Each cupy row carries
``speedup_vs_torch`` = torch ms / cupy ms (the goal: at least 0.8).

Timing: :func:`common.time_fn` (CUDA events on torch's current stream, or
``triton.testing.do_bench`` below 2 ms).  CuPy's default stream is the legacy
null stream, torch's default stream too, so the events bracket the CuPy work.
Every timed output is checked against a float64 reference on a slice of rows
and heads (yarnref's spec or the torch backend in float64), with yarnref's
tolerance table; the estimation is checked by the overlap of its index sets
with the float64 torch-backend estimation (near-ties may swap a few).
Per-row time budgets and a total budget (``--budget``, default 200 s): rows
past it are recorded ``missing``; lengths run shortest first.
"""

from __future__ import annotations

import importlib
import math
import time
from pathlib import Path

import numpy as np
import torch

from bench_sparse import check_rows, check_sparse, load_triton_sparse, make_indices
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

OPERATIONS = ("attention", "dca_attention", "vertical_slash_attention", "apply_rope", "vertical_slash_indices")
IMPLS = ("torch", "cupy", "cupy nvrtc")
CHUNK, LOCAL = 8192, 1024
N_VERT, N_SLASH = 1000, 6096
THETA = 1e6


def _cupy_kernels(be):
    """The CuPy backend's kernel switch module (``yarnref_cupy.kernels``)."""
    return importlib.import_module(type(be).__module__.rsplit(".", 1)[0] + ".kernels")


def _free_cupy():
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except ImportError:
        pass


def _as_torch(x):
    return x if isinstance(x, torch.Tensor) else torch.from_dlpack(x)


def dca_reference_rows(q, k, v, inv_freq, rows):
    """The NumPy spec for query heads 0-1 (they read kv head 0), on 64-row slices of ``rows``."""
    from yarnref.dca import dca_attention as spec_dca

    group = q.shape[1] // k.shape[1]
    outs = []
    for a in sorted({r // 64 * 64 for r in rows}):
        stop = min(a + 64, q.shape[2])
        qs = q[:, :2, a:stop].double().cpu().numpy()
        ks = k[:, : max(1, 2 // group), :stop].double().cpu().numpy()
        vs = v[:, : max(1, 2 // group), :stop].double().cpu().numpy()
        outs.append(torch.from_numpy(np.asarray(spec_dca(qs, ks, vs, inv_freq, CHUNK, LOCAL))))
    return torch.cat(outs, dim=2)


def rope_reference_rows(x, cos, sin, rows):
    """float64 spec rotation of heads 0-1 at ``rows`` with the given (float32) tables."""
    from yarnref import rope as spec

    xs = x[:, :2, rows].double().cpu().numpy()
    return torch.from_numpy(np.asarray(spec.apply_rope(xs, cos[rows].double().cpu().numpy(), sin[rows].double().cpu().numpy())))


def index_overlap(got, want) -> float:
    """The smallest fraction, over (batch, head), of ``want``'s valid indices that ``got`` also has."""
    got, want = _as_torch(got).cpu(), _as_torch(want).cpu()
    worst = 1.0
    for b in range(want.shape[0]):
        for h in range(want.shape[1]):
            w = set(want[b, h][want[b, h] >= 0].tolist())
            g = set(got[b, h][got[b, h] >= 0].tolist())
            if w:
                worst = min(worst, len(w & g) / len(w))
    return worst


class Case:
    """Inputs of one (length, dtype), shared by every operation and implementation."""

    def __init__(self, device, n: int, heads: int, kv_heads: int, d: int, dtype, seed: int):
        g = torch.Generator(device=device).manual_seed(seed)
        self.n, self.heads, self.kv_heads, self.d, self.dtype = n, heads, kv_heads, d, dtype
        self.q = torch.randn((1, heads, n, d), device=device, dtype=dtype, generator=g)
        self.k = torch.randn((1, kv_heads, n, d), device=device, dtype=dtype, generator=g)
        self.v = torch.randn((1, kv_heads, n, d), device=device, dtype=dtype, generator=g)
        self.scale = 1 / math.sqrt(d)
        self.inv_freq = 1.0 / (THETA ** (np.arange(0, d, 2, dtype=np.float64) / d))
        pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
        angles = pos * torch.as_tensor(self.inv_freq, dtype=torch.float32, device=device)[None, :]
        self.cos, self.sin = angles.cos(), angles.sin()  # float32 (seq, d/2), as transformers' tables
        self.vertical, self.slash = make_indices(n, heads, N_VERT, N_SLASH, "realistic", seed=n, device=device)
        self.rows = check_rows(n)
        self._cupy = None

    def arrays(self, backend_name: str):
        """The inputs as the backend takes them: torch tensors, or CuPy views of them (DLPack, no copy)."""
        names = ("q", "k", "v", "cos", "sin", "vertical", "slash")
        if backend_name == "torch":
            return {name: getattr(self, name) for name in names}
        if self._cupy is None:
            import cupy

            self._cupy = {name: cupy.from_dlpack(getattr(self, name)) for name in names}
        return self._cupy


def _call(be, op: str, a: dict, case: Case):
    """``() -> output`` for ``op`` on backend ``be`` with arrays ``a``."""
    fn = backend_op(be, op)
    if op == "attention":
        return lambda: fn(a["q"], a["k"], a["v"], causal=True)
    if op == "dca_attention":
        freqs = case.inv_freq if be.name == "cupy" else torch.as_tensor(case.inv_freq, device=case.q.device)
        return lambda: fn(a["q"], a["k"], a["v"], freqs, CHUNK, LOCAL)
    if op == "vertical_slash_attention":
        return lambda: fn(a["q"], a["k"], a["v"], a["vertical"], a["slash"], mode="kernel")
    if op == "apply_rope":
        return lambda: fn(a["q"], a["cos"], a["sin"])
    if op == "vertical_slash_indices":
        return lambda: fn(a["q"], a["k"], N_VERT, N_SLASH)
    raise ValueError(op)


def _reference(op: str, case: Case):
    """The float64 reference of ``op`` on the checked slice (computed once per case, shared by the implementations)."""
    q, k, v, rows = case.q, case.k, case.v, case.rows
    if op == "attention":
        return dense_reference_rows(q[:, :2], k[:, :1], v[:, :1], rows, case.scale)  # heads 0-1 read kv head 0
    if op == "dca_attention":
        return dca_reference_rows(q, k, v, case.inv_freq, rows)
    if op == "vertical_slash_attention":
        return load_triton_sparse().convert_vertical_slash_indexes_triton(case.n, case.n, case.vertical, case.slash, 64, 64)
    if op == "apply_rope":
        return rope_reference_rows(q, case.cos, case.sin, rows)
    if op == "vertical_slash_indices":  # the heads of kv head 0, estimated in float64 by the torch backend
        with use_yarnref_backend("torch", q.device) as tb:
            group = case.heads // case.kv_heads
            return tb.vertical_slash_indices(q[:, :group].double(), k[:, :1].double(), N_VERT, N_SLASH)
    raise ValueError(op)


def _check(op: str, out, case: Case, ref):
    rows = case.rows
    if op == "attention":
        return compare(_as_torch(out)[:, :2, rows], ref)
    if op == "dca_attention":
        return compare(_as_torch(out)[:, :2, rows].cpu(), ref, op="dca")
    if op == "vertical_slash_attention":  # ref: the conversion's lists; the float64 rows are computed from them
        return check_sparse(_as_torch(out), case.q, case.k, case.v, ref, case.scale, heads=(0, case.heads - 1))
    if op == "apply_rope":
        angles = {"op": "rope", "max_position": rows[-1], "angle_dtype": "float32"}
        return compare(_as_torch(out)[:, :2, rows].cpu(), ref, **angles)
    if op == "vertical_slash_indices":
        group = case.heads // case.kv_heads
        overlaps = [index_overlap(_as_torch(got)[:, :group], want) for got, want in zip(out, ref)]
        worst = min(overlaps)
        return {"max_abs": 1.0 - worst, "rel_l2": 1.0 - worst, "finite": True, "ok": worst >= 0.98, "overlap": overlaps}
    raise ValueError(op)


def _work(op: str, case: Case) -> dict:
    """flops or bytes of one call, for the TFLOP/s and TB/s columns."""
    n, h, d, item = case.n, case.heads, case.d, case.q.element_size()
    if op in ("attention", "dca_attention"):
        return {"flops": flops_causal(1, h, n, n, d)}
    if op == "apply_rope":
        return {"nbytes": 2.0 * case.q.numel() * item + 2.0 * case.cos.numel() * 4}
    if op == "vertical_slash_indices":
        return {"flops": 4.0 * h * 64 * n * d}
    return {}


def run_case(rec, case: Case, op: str, budget_s: float, deadline: float):
    label = {torch.bfloat16: "bf16", torch.float16: "fp16"}[case.dtype]
    name = f"{op} {label} {case.n // 1024}K" if case.n >= 1024 else f"{op} {label} {case.n}"
    device = case.q.device
    if rec.elapsed() > deadline:
        for impl in IMPLS:
            rec.missing(name, f"yarnref {op} ({impl})", f"total time budget ({deadline:.0f} s) spent")
        return
    try:
        ref = _reference(op, case)
    except MissingOperation as exc:
        rec.missing(name, "(reference)", str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - a benchmark must never take the run down
        rec.failed(name, "(reference)", exc)
        return
    for impl in IMPLS:
        label_impl = f"yarnref {op} ({impl})"
        if rec.elapsed() > deadline:
            rec.missing(name, label_impl, f"total time budget ({deadline:.0f} s) spent")
            continue
        backend_name = "torch" if impl == "torch" else "cupy"
        with rec.guard(name, label_impl):
            with use_yarnref_backend(backend_name, device) as be:
                call = _call(be, op, case.arrays(backend_name), case)
                kernels = _cupy_kernels(be) if impl == "cupy nvrtc" else None

                def fn():
                    if kernels is None:
                        return call()
                    with kernels.use_kernels("nvrtc"):
                        return call()

                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = fn()  # also the first call: compilation, autotuning
                torch.cuda.synchronize()
                first_ms = (time.perf_counter() - t0) * 1e3
                err = _check(op, out, case, ref)
                del out
                slow = first_ms > 300
                if slow:  # the first call may be compilation: time a second one to know
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    fn()
                    torch.cuda.synchronize()
                    slow = (time.perf_counter() - t0) * 1e3 > 300  # long calls: the median of 2 repetitions
                t = time_fn(fn, device, budget_s=0.0 if slow else budget_s, min_reps=2 if slow else 3)
                extra = {"overlap": err["overlap"]} if "overlap" in err else {}
                rec.add(name, label_impl, timing=t, err=err, ok=err["ok"], first_call_ms=first_ms, **_work(op, case), **extra)
        if backend_name == "cupy":
            _free_cupy()
    for ours in ("cupy", "cupy nvrtc"):
        rec.add_ratios(name, f"yarnref {op} ({ours})", peers=[f"yarnref {op} (torch)"])


def run(rec):
    device = rec.device
    if device.type != "cuda":
        rec.missing("(all)", "cupy backend", "needs CUDA")
        return
    try:
        import cupy  # noqa: F401
    except ImportError:
        rec.missing("(all)", "cupy backend", "CuPy is not installed")
        return
    quick = rec.args.quick
    deadline = rec.args.budget or (30 if quick else 200)
    lengths = (1024,) if quick else (8192, 32768, 131072)
    heads, kv_heads, d = (4, 2, 64) if quick else (32, 8, 128)
    per_row = 0.1 if quick else 0.4
    for n in lengths:  # shortest first: what the budget cuts is the longest
        for dtype in (torch.bfloat16, torch.float16):
            case = Case(device, n, heads, kv_heads, d, dtype, seed=n + (dtype == torch.float16))
            for op in OPERATIONS:
                run_case(rec, case, op, per_row, deadline)
            del case
            _free_cupy()
            torch.cuda.empty_cache()
    table = ratio_table(rec.rows)
    (Path(rec.args.out) / "cupy_table.md").write_text(table)
    print(table, flush=True)
    rec.note("speedup_vs_torch on the cupy rows = torch ms / cupy ms (goal >= 0.8); 'cupy' = default kernels, "
             "'cupy nvrtc' = YARNREF_CUPY_KERNELS=nvrtc")


def ratio_table(rows) -> str:
    """Markdown: per operation, dtype and length, the ms of each implementation and torch ms / cupy ms."""
    by = {(r["case"], r["impl"].rsplit("(", 1)[-1].rstrip(")")): r for r in rows}
    cases = list(dict.fromkeys(r["case"] for r in rows if r["impl"].startswith("yarnref")))
    lines = [
        "| operation | dtype | tokens | torch ms | cupy ms | cupy speed / torch | cupy nvrtc ms | nvrtc speed / torch | checks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(case, impl, key="ms"):
        r = by.get((case, impl))
        if r is None:
            return ""
        return f"{r[key]:.3f}" if key in r else r["status"]

    def ratio(case, impl):
        r, t = by.get((case, impl)), by.get((case, "torch"))
        return f"{t['ms'] / r['ms']:.2f}x" if r and t and "ms" in r and "ms" in t else ""

    for case in cases:
        op, dtype, length = case.rsplit(" ", 2)
        checks = "/".join(by[(case, i)].get("check", "-") for i in IMPLS if (case, i) in by)
        lines.append(f"| {op} | {dtype} | {length} | {cell(case, 'torch')} | {cell(case, 'cupy')} | {ratio(case, 'cupy')} "
                     f"| {cell(case, 'cupy nvrtc')} | {ratio(case, 'cupy nvrtc')} | {checks} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main_wrapper("cupy", run)
