"""The vertical-slash index conversion on the GPU: one row block per program against row blocks as vector lanes.

``convert_vertical_slash_indexes_triton`` turns each head's verticals and
slashes into the block and column lists of every 64-row block (MInference,
arXiv:2407.02490, section 3; vLLM's ``vertical_slash_index.cu``).  Each row
block is a sequential merge, one dependent load per step, so its time is
memory latency, not bandwidth.  Two kernels compute the same lists:

* ``serial`` (``rows_per_program=1``): one single-warp program per
  (row block, head), scalar loads;
* ``lanes R, W warps`` (``rows_per_program=R``, ``num_warps=W``): one
  program per R row blocks of a head, each row block a lane of Triton
  vectors, so one step advances R merges at once (and the leading slashes
  that reach no row are skipped by binary search); R in 16, 32, 64 and W in
  1, 2, 4 at the default ``steps_per_check``, then the fastest (R, W) at the
  other ``steps_per_check`` values;
* ``default (chosen by the grid)``: ``rows_per_program=None``, what the
  backend runs (``conversion_rows``: lanes only where the serial grid does not
  fit the GPU at once).

Shapes: one chunk of chunked prefill, 32768 queries at the end of a 128K or a
1M key sequence (causal, bottom-right), and the smaller conversions of the
1M-token layer (4224, 8448 and 16896 queries, the lists of one chunk of row
blocks), B=1, 28 heads (Qwen2.5-7B), 64 x 64
blocks, at two of Qwen2.5-7B-Instruct-1M's per-head budgets (1000 verticals /
6096 slashes, 9192 / 14288), index sets drawn as ``bench_sparse.py``'s
``realistic`` pattern.  Every call is timed in full (sorting the indices,
allocating the -1-filled lists, the kernel); the row ``sort + allocation``
times the part that is not the kernel.  Every lanes result is checked equal
to the serial result (``torch.equal`` on all four tensors: the counts, and the
lists, which are -1 past the counts in both); ``speedup_vs_serial`` is the
serial time over the lanes time.

``python benchmarks/bench_conversion.py --out DIR`` (CUDA);
``--quick`` runs tiny sizes on CPU through Triton's interpreter when
``TRITON_INTERPRET=1`` is set (a check of the script, not a measurement).
"""

from __future__ import annotations

import torch

from bench_sparse import load_triton_sparse, make_indices
from common import MissingOperation, main_wrapper, sync, time_fn

HEADS, Q_LEN, BM, BN = 28, 32768, 64, 64
KV_LENS = (131072, 1048576)
BUDGETS = ((1000, 6096), (9192, 14288))  # (verticals, slashes) per head
#: The query rows of one list chunk in the 1M-token layer (``yarnref_torch.sparse.LIST_BYTES`` at its joined
#: widths: 66 row blocks), and twice and four times that.
LAYER_Q_LENS = (4224, 8448, 16896)
ROWS = (16, 32, 64)
WARPS = (1, 2, 4)


def _sort_and_allocate(ts, q_len, vert, slash):
    """The host-side part of a conversion call without its kernel: both sorts and the four output tensors."""
    verts, _ = ts._sorted_with_counts(vert, "vertical_idx", descending=False)
    slashes, _ = ts._sorted_with_counts(slash, "slash_idx", descending=True)
    b, h, nv = verts.shape
    n_rows = -(-q_len // BM)
    out = (torch.empty((b, h, n_rows), dtype=torch.int32, device=verts.device),
           torch.empty((b, h, n_rows), dtype=torch.int32, device=verts.device),
           torch.full((b, h, n_rows, max(slashes.shape[-1], 1)), -1, dtype=torch.int32, device=verts.device),
           torch.full((b, h, n_rows, max(nv, 1)), -1, dtype=torch.int32, device=verts.device))
    return out


def run_case(rec, ts, q_len, kv_len, n_vert, n_slash, heads, per_impl, sweep):
    device = rec.device
    case = f"q{q_len} kv{kv_len} v{n_vert} s{n_slash}"
    vert, slash = make_indices(kv_len, heads, n_vert, n_slash, "realistic", seed=kv_len + n_slash, device=device)

    def convert(rows, warps=None, steps=None):
        return ts.convert_vertical_slash_indexes_triton(q_len, kv_len, vert, slash, BM, BN, True,
                                                        rows_per_program=rows, num_warps=warps, steps_per_check=steps)

    with rec.guard(case, "sort + allocation (no kernel)"):
        rec.add(case, "sort + allocation (no kernel)", timing=time_fn(lambda: _sort_and_allocate(ts, q_len, vert, slash), device, per_impl))
    serial = None
    with rec.guard(case, "serial"):
        serial = convert(1)
        sync(device)
        base = rec.add(case, "serial", timing=time_fn(lambda: convert(1), device, per_impl), rows_per_program=1, num_warps=1,
                       mean_blocks=float(serial[0].float().mean()), mean_columns=float(serial[2].float().mean()))
    if serial is None:
        return
    def lanes(rows, warps, steps):
        impl = f"lanes {rows}, {warps} warps" + ("" if steps is None else f", {steps} steps/check")
        with rec.guard(case, impl):
            result = convert(rows, warps, steps)
            same = all(torch.equal(a, b) for a, b in zip(serial, result))
            del result
            timing = time_fn(lambda: convert(rows, warps, steps), device, per_impl)
            return rec.add(case, impl, timing=timing, ok=same, rows_per_program=rows, num_warps=warps,
                           steps_per_check=ts.DEFAULT_CONVERSION_STEPS if steps is None else steps,
                           speedup_vs_serial=base["ms"] / timing["ms"])

    best = None
    for rows, warps in sweep:  # at the default steps_per_check
        row = lanes(rows, warps, None)
        if row is not None and row.get("check") == "pass" and (best is None or row["ms"] < best["ms"]):
            best = row
    if best is not None:  # the best launch at the other steps_per_check
        rows, warps, done = best["rows_per_program"], best["num_warps"], best["steps_per_check"]
        for steps in ts.CONVERSION_STEPS:
            if steps != done:
                row = lanes(rows, warps, steps)
                if row is not None and row.get("check") == "pass" and row["ms"] < best["ms"]:
                    best = row
    if best is not None:
        rec.note(f"{case}: best {best['impl']} {best['ms']:.3f} ms, serial {base['ms']:.3f} ms "
                 f"({best['speedup_vs_serial']:.2f}x)")
    with rec.guard(case, "default (chosen by the grid)"):  # what the backend runs: rows_per_program=None
        chosen = ts.conversion_rows(-(-q_len // BM) * heads, device)
        result = convert(None)
        same = all(torch.equal(a, b) for a, b in zip(serial, result))
        timing = time_fn(lambda: convert(None), device, per_impl)
        rec.add(case, "default (chosen by the grid)", timing=timing, ok=same, rows_per_program=chosen,
                speedup_vs_serial=base["ms"] / timing["ms"])


def run(rec):
    quick = rec.args.quick
    try:
        ts = load_triton_sparse()
    except MissingOperation as exc:
        rec.missing("(all)", "conversion", str(exc))
        return
    if rec.device.type == "cpu" and not ts.interpreter_active():
        rec.missing("(all)", "conversion", "no CUDA and TRITON_INTERPRET is not set")
        return
    if quick:  # the interpreter (slow): one tiny shape, two launch variants
        plan, sweep = [(100, 160, 10, 104)], ((8, 1),)
        heads, per_impl = 1, 0.01
    else:
        plan = [(Q_LEN, kv, nv, ns) for kv in KV_LENS for nv, ns in BUDGETS] + [
            (q, KV_LENS[-1], *BUDGETS[-1]) for q in LAYER_Q_LENS]
        sweep = [(r, w) for r in ROWS for w in WARPS]
        heads, per_impl = HEADS, 1.0
    budget = rec.args.budget or (60 if quick else 300)
    for q_len, kv_len, n_vert, n_slash in plan:
        if rec.elapsed() > budget:
            rec.note(f"time budget ({budget:.0f} s) spent: skipped q{q_len} kv{kv_len} v{n_vert} s{n_slash}")
            continue
        run_case(rec, ts, q_len, kv_len, n_vert, n_slash, heads, per_impl, sweep)
        if rec.device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main_wrapper("conversion", run)
