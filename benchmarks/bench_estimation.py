"""The vertical-slash estimation with and without its Triton softmax sums (torch backend, CUDA).

Qwen2.5-7B-Instruct-1M geometry (28 query heads, 4 KV heads, head_dim 128,
bf16), the last 64 queries, budgets of 1000 verticals and 6096 slashes (the
shipped table's most common pair), at 256K and 1M keys.  For each length:

* ``vertical_slash_indices`` of one KV head's group (7 query heads, as the
  pipeline calls it with rotated keys), with the torch operations after the
  logits matmul (``FUSED_ESTIMATION = False``) and with the Triton passes of
  ``yarnref_torch.estimate_triton``; the two index sets are compared
  (recall of the torch path's indices, over every head: at least 0.999, the
  rest are near-ties of float32 sums in another order);
* one head's score stage alone (the matmul into the skewed buffer and the
  sums: ``_head_scores`` with torch operations, ``_group_scores`` with the
  Triton sums), the matmul alone, and one KV group's seven heads with as many
  heads per matmul as ``vertical_slash_indices`` stacks (all seven at 256K,
  one at 1M under ``ESTIMATE_BYTES``), per head; with the bytes each moves at
  least and the achieved rate against the copy ceiling measured in the same
  run.

Bytes counted per head (``B = 4 * m * (kv_len + m)``, the float32 buffer;
``K = 2 * kv_len * head_dim``, the keys): the matmul reads ``K`` and writes
``B`` (stacking ``n`` heads: ``K / n`` per head); the fused sums read ``B``
twice (the second view mostly from L2) and write ``8 * kv_len``; the torch operations read ``B`` six times and write it
twice after the matmul (max; scaled subtraction and exponential, each a read
and a write; sum; two products).
Not part of run_all.sh: ``python benchmarks/bench_estimation.py --out DIR``
(``--quick``: small sizes on whatever device is there, a check of the script).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from common import MissingOperation, main_wrapper, time_fn

HEADS, KV_HEADS, HEAD_DIM, LAST_Q = 28, 4, 128, 64
VERTICAL, SLASH = 1000, 6096


def _recall(got, want) -> float:
    """The share of ``want``'s indices (over all heads, padding excluded) that ``got`` also holds."""
    hit = total = 0
    for b, h in np.ndindex(*want.shape[:2]):
        w = set(want[b, h][want[b, h] >= 0].tolist())
        g = set(got[b, h][got[b, h] >= 0].tolist())
        hit += len(w & g)
        total += len(w)
    return hit / max(total, 1)


def run(rec):
    import yarnref

    with yarnref.use_backend("torch"):  # loads yarnref_torch (installed, or from this source checkout)
        import yarnref_torch.sparse as ts

    device = rec.device
    lengths = [4096, 20000] if rec.args.quick else [262144, 1048576]
    group = HEADS // KV_HEADS
    scale = 1 / math.sqrt(HEAD_DIM)
    g = torch.Generator(device=device).manual_seed(0)
    copy_tbps = rec.ceilings.get("copy_tbps")
    rec.note(f"copy ceiling {copy_tbps:.2f} TB/s (read + write)" if copy_tbps else "no copy ceiling")
    for kv_len in lengths:
        case = f"{kv_len // 1024}K keys, m={LAST_Q}"
        q = torch.randn((1, group, LAST_Q, HEAD_DIM), device=device, dtype=torch.bfloat16, generator=g)
        k = torch.randn((1, 1, kv_len, HEAD_DIM), device=device, dtype=torch.bfloat16, generator=g)
        k[:, :, :4] += 3 * q[0, :, -1].mean(0)  # attention sinks, as real models have
        fused = ts._fused_scores_available(q, LAST_Q)
        with yarnref.use_backend("torch"):
            be = yarnref.get_backend()
            sets = {}
            for name, flag in (("torch ops", False), ("triton sums", True)):
                impl = f"vertical_slash_indices, 1 KV group ({name})"
                if flag and fused is None:
                    rec.missing(case, impl, "the Triton sums need CUDA, Triton and half-precision inputs")
                    continue
                ts.FUSED_ESTIMATION = flag
                try:
                    call = lambda: be.vertical_slash_indices(q, k, VERTICAL, SLASH, LAST_Q)  # noqa: E731
                    with rec.guard(case, impl):
                        v, s = call()
                        sets[name] = (v.cpu().numpy(), s.cpu().numpy())
                        rec.add(case, impl, timing=time_fn(call, device, budget_s=2.0))
                finally:
                    ts.FUSED_ESTIMATION = True
            if len(sets) == 2:
                (v0, s0), (v1, s1) = sets["torch ops"], sets["triton sums"]
                recall_v, recall_s = _recall(v1, v0), _recall(s1, s0)
                ok = min(recall_v, recall_s) >= 0.999
                rec.add(case, "index sets: triton sums vs torch ops", ok=ok, recall_vertical=recall_v, recall_slash=recall_s)

        # One head's score stage, and one KV group's (heads stacked per matmul as vertical_slash_indices does).
        m = LAST_Q
        logits = torch.empty((m, kv_len + m), dtype=torch.float32, device=device)
        unwritten = ts._unwritten_cells(m, device)
        v_out = torch.empty((group, kv_len), dtype=torch.float32, device=device)
        s_out = torch.empty((group, kv_len), dtype=torch.float32, device=device)
        q_rows, keys = q[0, :, -m:], k[0, 0]  # (group, m, d), (kv_len, d)
        key_step = max(1, ts.ESTIMATE_BYTES // (HEAD_DIM * 4))
        buffer_bytes = 4 * m * (kv_len + m)
        key_bytes = 2 * kv_len * HEAD_DIM
        on_diagonals = logits.as_strided((m, kv_len), (kv_len + m - 1, 1), m - 1)
        n = ts._fused_heads(group, m, kv_len)
        flat = torch.empty((n * m * (kv_len + n * m),), dtype=torch.float32, device=device) if fused else None
        stages = [
            ("logits matmul alone, 1 head", key_bytes + buffer_bytes, False,
             lambda: ts._half_mm_into(q_rows[0], keys.T, on_diagonals)),
            ("head scores, torch ops, 1 head", key_bytes + 9 * buffer_bytes, False,
             lambda: ts._head_scores(q_rows[0], keys, None, scale, logits, unwritten, key_step, v_out[0], s_out[0])),
            ("head scores, triton sums, 1 head", key_bytes + 3 * buffer_bytes + 8 * kv_len, True,
             lambda: ts._group_scores(q_rows[:1], keys, scale, flat, fused, v_out[:1], s_out[:1])),
            # n heads per matmul: the keys read once per run of n heads; reported per head.
            (f"group scores, triton sums, {n} heads per matmul (per head)", key_bytes / n + 3 * buffer_bytes + 8 * kv_len, True,
             lambda: [ts._group_scores(q_rows[h0:h0 + n], keys, scale, flat, fused, v_out[h0:h0 + n], s_out[h0:h0 + n])
                      for h0 in range(0, group, n)]),
        ]
        for impl, nbytes, needs_fused, fn in stages:
            if needs_fused and fused is None:
                rec.missing(case, impl, "the Triton sums need CUDA, Triton and half-precision inputs")
                continue
            with rec.guard(case, impl):
                if not ts._half_matmul(q_rows, keys) and "matmul alone" in impl:
                    raise MissingOperation("the half-precision matmul into the buffer is CUDA-only")
                timing = time_fn(fn, device, budget_s=1.0)
                if "per head" in impl:
                    timing = dict(timing, ms=timing["ms"] / group, ms_group=timing["ms"])
                rec.add(case, impl, timing=timing, nbytes=nbytes if copy_tbps else None, bytes_per_head=nbytes)
        del flat
        del logits, q, k
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main_wrapper("bench_estimation", run)
