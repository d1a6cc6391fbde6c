"""One Qwen2.5-7B-Instruct-1M decoder layer through the Qwen2.5-1M prefill, 128K to 1M tokens: time and peak memory.

The layer is ``qwen_layer.QwenLayer`` (random bf16 weights; hidden 3584, 28
query / 4 KV heads of 128, MLP 18944, q/k/v biases, RMSNorm 1e-6, RoPE theta
1e7) with attention by :func:`yarnref.qwen_prefill` on the torch backend:
DCA (chunk 262144, local 8192), the temperature of the prompt length (O =
262144), and, in the ``dca+sparse`` variant, vertical-slash attention per DCA
segment above the 32768-key gate with the budgets of one real layer of the
model's table (the layer of median total budget).  Variants per length:

* ``dense dca`` / ``dca+sparse``: the attention (dense DCA is the baseline
  the report's 3-7x time-to-first-token is measured against);
* ``chunked 32K`` / ``unchunked``: chunked prefill through the whole layer
  (32768 tokens at a time, K/V cache kept, each chunk's queries against every
  key so far) or the whole prompt at once (where memory allows: an
  out-of-memory is recorded as such).

Per variant: the layer's time (one call; the kernels were compiled by a
warm-up at 64K first); ``layer_peak_gib``, the peak of
``torch.cuda.max_memory_allocated`` above what is allocated when the layer
starts (its weights, the hidden states of the prompt and the K/V cache,
reported beside it), and ``mlp_peak_gib``, the MLP's own peak above its input
(the largest over chunks), against the report's 71 GB -> 2.3 GB for one MLP
at 1M tokens.  ``ttft_ratio`` on the ``dca+sparse`` rows is dense DCA's
time over ours with the same chunking (and ``vs_dense_unchunked``).

Check: the attention outputs of the last row block of the first, middle and
last DCA segment of the run against a float64 reference
(``QwenLayer.attention_reference``: dense DCA in float64, or the run's own
index sets attended in float64).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from common import compare, main_wrapper, merge_checks, sync

import qwen_patterns as qp
from qwen_layer import QwenLayer, load_sparse_table, qwen25_7b_1m, tiny_geometry, tiny_sparse_table, replace

LENGTHS = (131072, 262144, 524288, 1048576)
CHUNK = 32768
GIB = 2**30


def median_budget_layer(table) -> int:
    vertical, slash = qp.head_budgets(table)
    total = (vertical + slash).sum(axis=1)
    return int(np.argsort(total, kind="stable")[len(total) // 2])


def picked_segments(layer: QwenLayer, n: int, chunk):
    """First, middle and last DCA segment of the run that the row check can use (multiple of 64 rows, at least 64)."""
    usable = [(b, e) for b, e in layer.segments(n, chunk) if (e - b) % 64 == 0 and e - b >= 64]
    if not usable:
        return []
    return sorted({usable[0], usable[len(usable) // 2], usable[-1]})


def check_run(layer: QwenLayer, segments, n: int, sparse: bool) -> dict:
    kept = layer.kept
    errs = []
    for i, (begin, end) in enumerate(segments):
        q_rows = kept["q"][:, :, 64 * i : 64 * (i + 1)]
        ref = layer.attention_reference(q_rows, kept["k"][:, :, :end], kept["v"][:, :, :end], n, sparse, begin)
        errs.append(compare(kept["attention"][:, :, 64 * i : 64 * (i + 1)], ref,
                            max_position=layer.g.dca["chunk_size"]))
        del ref
    return merge_checks(*errs)


def run_variant(rec, layer: QwenLayer, n: int, sparse: bool, chunk, dtype, label: str):
    device = rec.device
    name = f"{'dca+sparse' if sparse else 'dense dca'} {'chunked ' + _k(chunk) if chunk else 'unchunked'}"
    case = f"{label} {name}"
    with rec.guard(case, "qwen layer"):
        segments = picked_segments(layer, n, chunk)
        rows = [r for _, e in segments for r in range(e - 64, e)]
        g = torch.Generator(device=device).manual_seed(n)
        x = torch.randn((n, layer.g.hidden), generator=g, device=device, dtype=dtype)
        memory = {} if device.type == "cuda" else None
        sync(device)
        t0 = time.perf_counter()
        layer.forward(x, chunk=chunk, sparse=sparse, memory=memory, keep_rows=rows)
        sync(device)
        ms = (time.perf_counter() - t0) * 1e3
        del x
        err = check_run(layer, segments, n, sparse)
        layer.kept = None
        extra = {}
        if memory:
            extra = {"layer_peak_gib": memory["layer_peak"] / GIB, "mlp_peak_gib": memory["mlp_peak"] / GIB,
                     "kv_cache_gib": memory["kv_cache"] / GIB, "weights_gib": layer.weight_bytes() / GIB,
                     "hidden_gib": n * layer.g.hidden * torch.finfo(dtype).bits / 8 / GIB}
        mlp_naive = n if chunk is None else min(chunk, n)
        rec.add(case, "qwen layer", timing={"ms": ms, "first_ms": None, "timer": "one call", "reps": 1}, err=err,
                ok=err["ok"], variant=name, length=n, sparse=sparse, chunk=chunk,
                mlp_two_buffers_gib=2 * mlp_naive * layer.g.intermediate * torch.finfo(dtype).bits / 8 / GIB,
                note=("peak above weights+hidden+K/V: layer {:.2f} GiB, MLP {:.2f} GiB".format(
                    extra["layer_peak_gib"], extra["mlp_peak_gib"]) if extra else None), **extra)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _k(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 else str(n)


def add_ratios(rec, label: str):
    rows = {r["variant"]: r for r in rec.rows if r["case"].startswith(label + " ") and "ms" in r and r.get("check") == "pass"}
    for name, r in rows.items():
        if not name.startswith("dca+sparse"):
            continue
        chunking = name.split(" ", 1)[1]
        dense = rows.get(f"dense dca {chunking}")
        if dense:
            r["ttft_ratio"] = dense["ms"] / r["ms"]
            r.setdefault("speedup_vs", {})[f"dense dca {chunking}"] = dense["ms"] / r["ms"]
        unchunked = rows.get("dense dca unchunked")
        if unchunked:
            r["vs_dense_unchunked"] = unchunked["ms"] / r["ms"]
            r.setdefault("speedup_vs", {})["dense dca unchunked"] = unchunked["ms"] / r["ms"]


def run(rec):
    device = rec.device
    quick = rec.args.quick
    budget = rec.args.budget or (60 if quick else 290)
    if quick:
        g = tiny_geometry()
        geometry = replace(g, dca={**g.dca, "sparse_attention_last_q": 64})
        table, lengths, chunk, dtype = tiny_sparse_table(), (512,), 128, torch.float32
        warm = None
    else:
        geometry, table, lengths, chunk, dtype = qwen25_7b_1m(), load_sparse_table(), LENGTHS, CHUNK, torch.bfloat16
        warm = 65536
    layer_index = median_budget_layer(table) if not quick else 0
    layer = QwenLayer(geometry, dtype=dtype, device=device, seed=0, sparse_table=table, layer=layer_index)
    rec.note(f"layer {layer_index} of the budget table (median total budget); weights {layer.weight_bytes() / GIB:.2f} GiB; "
             f"DCA {geometry.dca}; prefill chunk {chunk}")
    if warm is not None:
        t0 = time.perf_counter()
        for sparse in (False, True):
            x = torch.randn((warm, geometry.hidden), device=device, dtype=dtype)
            layer.forward(x, chunk=chunk, sparse=sparse)
            del x
        sync(device)
        rec.note(f"warm-up at {warm} tokens (kernel compilation): {time.perf_counter() - t0:.1f} s")
    for n in lengths:
        label = _k(n)
        for sparse, this_chunk in ((True, chunk), (False, chunk), (True, None), (False, None)):
            if rec.elapsed() > 0.9 * budget:
                rec.note(f"time budget ({budget:.0f} s) spent: skipped {label} {'sparse' if sparse else 'dense'} "
                         f"{'chunked' if this_chunk else 'unchunked'}")
                continue
            run_variant(rec, layer, n, sparse, this_chunk, dtype, label)
        add_ratios(rec, label)


if __name__ == "__main__":
    main_wrapper("qwen_layer", run)
