r"""Softmax attention on the GPU, blocked over queries (spec: :mod:`yarnref.softmax_attention`).

Paper: Vaswani et al., arXiv:1706.03762, Eq. (1),
:math:`\mathrm{softmax}(QK^\top / \sqrt{d_k})V`, with the row log-sum-exp
:math:`\ell = \log\sum_j e^{s_j}` that lets parts over disjoint key sets be
merged exactly (FlashAttention, arXiv:2205.14135, section 3.1):
:math:`o = \sum_p e^{\ell_p - \ell} o_p`, :math:`\ell = \log\sum_p e^{\ell_p}`.

:func:`softmax_attend` is the one kernel-shaped core every attention in this
backend uses (dense, DCA parts, sparse gathers): two batched matmuls (cuBLAS
``gemmStridedBatched`` under CuPy), a 0/-inf bias for masks, and an in-place
softmax, over whatever key set the caller gathered.

Conventions (the spec's)
-----------
* Layout ``(batch, heads, seq, head_dim)``; GQA: query head ``h`` reads kv
  head ``h // (q_heads // kv_heads)``.  Query heads are grouped under their kv
  head and folded into the matmul's row dimension, so k and v are never
  repeated.
* Causal masks aligned bottom-right: query ``i`` sees keys
  ``j <= i + kv_len - q_len``.  A query with no visible key gets output 0 and
  lse ``-inf``.
* Computed in float64 for float64 inputs, else in float32 (no TF32: CuPy's
  default).  Output in q's dtype; lse in the compute dtype.  Memory per query
  block is ``O(block_size * kv_len)`` per head.
* float16 and bfloat16 on a GPU go to a fused kernel (:func:`fused_attention`):
  yarnref's Triton dense kernel (``dense_attention_triton`` of
  :mod:`yarnref_torch.triton_sparse`, launched on the CuPy arrays, see
  :mod:`.kernels`) where torch and Triton are installed and it has that mode,
  else the NVRTC kernel of :mod:`.flash` where it applies.  Both keep float32
  logits, softmax state and accumulators and round the probabilities to the
  input's type for ``P V``, as production kernels compute.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from ._arrays import compute_dtype, is_half, scalar, where_scalar, written
from .flash import flash_attention, fusable


def _triton_dense(xp, q, k, v, causal: bool):
    """The Triton modules if their dense kernel takes this call, else None."""
    triton = kernels.triton_kernels(xp)
    if not kernels.has_dense_triton(triton) or not is_half(q) or not (q.dtype == k.dtype == v.dtype):
        return None
    d, tq, tk = q.shape[-1], q.shape[2], k.shape[2]
    if v.shape[-1] != d or not 16 <= d <= 256 or d & (d - 1) or tq == 0 or tk == 0 or (causal and tq > tk):
        return None  # (rows that see no key, and the other corners, stay with the paths tested on them)
    return triton


def takes_fused(xp, q, k, v, causal: bool = True) -> bool:
    """True if :func:`fused_attention` would compute this call (so callers may hand it q's 16-bit dtype)."""
    return _triton_dense(xp, q, k, v, causal) is not None or fusable(xp, q, k, v)


def fused_attention(xp, q, k, v, scale: float, causal: bool, out=None, lse=None):
    """``(out, lse)`` of dense attention from a fused kernel, or None if none takes the call.

    Triton's dense kernel first (the one source the torch backend runs too),
    then the NVRTC kernel; ``YARNREF_CUPY_KERNELS=nvrtc`` skips Triton.
    ``out`` in q's dtype, ``lse`` float32.  ``out``/``lse``: views to write
    into (``(b, hq, tq, d)`` of q's dtype, ``(b, hq, tq)`` float32), or None
    for new arrays; the Triton kernel writes through their strides.
    """
    triton = _triton_dense(xp, q, k, v, causal)
    if triton is not None:
        direct = _dense_direct(xp, triton, q, k, v, scale, causal, out, lse)
        if direct is not None:
            return direct
        torch = triton["torch"]
        with kernels.on_cupy_stream(xp, torch):
            o, l = triton["sparse"].dense_attention_triton(
                kernels.to_torch(torch, q), kernels.to_torch(torch, k), kernels.to_torch(torch, v),
                causal=causal, scale=scale, return_lse=True,
            )
            return written(kernels.to_cupy(xp, o), out), written(kernels.to_cupy(xp, l), lse)
    if fusable(xp, q, k, v):
        o, l = flash_attention(xp, q, k, v, scale, causal)
        return written(o, out), written(l, lse)
    return None


#: Whether the Triton dense kernel takes CuPy arrays directly (None: not tried yet in this process).
_DIRECT: dict[str, bool] = {}


def _dense_direct(xp, triton, q, k, v, scale: float, causal: bool, out, lse):
    """The Triton dense kernel launched on the CuPy arrays themselves, or None.

    The torch backend's launch (:func:`yarnref_torch.triton_sparse.launch_dense`:
    one kernel, one launch configuration) with CuPy's arrays as
    :class:`.kernels.DevicePointer` and CuPy allocating the outputs: no
    DLPack hand-over of five arrays and no torch tensor per call, which at 8K
    tokens is a fifth of a call's time on the host (``profile_cupy_host.py``).
    The key/value tiles go through TMA descriptors on sm_90+ when the layout
    allows, as in the torch backend.  None where that module has no such
    launch, or if the first direct launch in this process was refused (the
    DLPack route serves from then on).
    """
    sparse = triton["sparse"]
    launch = getattr(sparse, "launch_dense", None)
    if launch is None or _DIRECT.get("ok") is False:
        return None
    b, hq, tq, d = q.shape
    hk, tk = k.shape[1], k.shape[2]
    out = xp.empty(q.shape, dtype=q.dtype) if out is None else out
    lse = xp.empty((b, hq, tq), dtype=np.float32) if lse is None else lse
    elements = lambda a: tuple(st // a.itemsize for st in a.strides)  # noqa: E731 - CuPy strides are bytes, Triton's elements
    block_n = sparse.dense_block_n(d)
    major = int(xp.cuda.Device().compute_capability) // 10
    tma = major >= 9 and all(sparse.tma_layout_ok(a.data.ptr, a.shape, elements(a), a.itemsize, block_n) for a in (k, v))
    ptr = kernels.DevicePointer
    args = ((ptr(q), ptr(k), ptr(v), ptr(out), ptr(lse)), tuple(elements(a) for a in (q, k, v, out, lse)), (b, hq, hk, tq, tk, d))
    with kernels.on_cupy_stream(xp, triton["torch"]):
        if "ok" in _DIRECT:
            launch(*args, causal=causal, scale=scale, tma=tma)
            return out, lse
        try:  # the first launch: Triton's handling of non-torch pointers (and descriptors over them) is checked once
            launch(*args, causal=causal, scale=scale, tma=tma)
        except Exception:  # noqa: BLE001 - whatever Triton refuses, the DLPack route serves
            _DIRECT["ok"] = False
            return None
        _DIRECT["ok"] = True
        return out, lse


def softmax_attend(xp, q, k, v, bias=None):
    """Softmax attention of pre-scaled queries over one gathered key set.

    ``q``: ``(..., G, M, D)``, already multiplied by the softmax scale (G query
    heads share each kv head); ``k``: ``(..., N, D)``; ``v``: ``(..., N, Dv)``;
    ``bias``: 0 / ``-inf``, broadcastable to ``(..., G, M, N)``, or None.  All
    in one float dtype.  Returns ``out`` ``(..., G, M, Dv)`` and ``lse``
    ``(..., G, M)``; rows whose keys are all masked get 0 and ``-inf``.
    """
    *lead, g, m, d = q.shape
    n, dv = k.shape[-2], v.shape[-1]
    dtype = q.dtype
    if n == 0:
        return xp.zeros((*lead, g, m, dv), dtype=dtype), xp.full((*lead, g, m), scalar(-np.inf, dtype), dtype=dtype)
    rows = q.reshape(*lead, g * m, d)  # (..., G*M, D)
    logits = xp.matmul(rows, xp.swapaxes(k, -1, -2)).reshape(*lead, g, m, n)  # (..., G, M, N)
    if bias is not None:
        logits += bias
    row_max = logits.max(axis=-1, keepdims=True)  # (..., G, M, 1)
    safe_max = where_scalar(xp, xp.isfinite(row_max), row_max, 0.0)
    logits -= safe_max
    xp.exp(logits, out=logits)  # the unnormalised weights; exp(-inf) = 0
    denom = logits.sum(axis=-1, keepdims=True)  # (..., G, M, 1)
    out = xp.matmul(logits.reshape(*lead, g * m, n), v).reshape(*lead, g, m, dv)  # (..., G, M, Dv)
    has_key = denom > 0
    safe_denom = where_scalar(xp, has_key, denom, 1.0)
    out /= safe_denom
    lse = where_scalar(xp, has_key, xp.log(safe_denom) + safe_max, -np.inf)[..., 0]  # (..., G, M)
    return out, lse


def causal_bias(xp, query_pos, key_pos, dtype):
    """0 where ``key_pos <= query_pos`` else ``-inf``; shape ``(len(query_pos), len(key_pos))``."""
    visible = key_pos[None, :] <= query_pos[:, None]
    return xp.where(visible, scalar(0.0, dtype), scalar(-np.inf, dtype))


def attention(xp, q, k, v, causal: bool, scale: float, block_size: int, slopes=None, out=None, lse=None):
    """Blocked attention; arguments validated by the caller.  Returns ``(out, lse)``.

    ``out``/``lse``: views the result is written into (q's dtype, and the
    compute dtype: float32 for 16-bit inputs), or None for new arrays.

    float16/bfloat16 calls a fused kernel takes (:func:`fused_attention`) run
    there; the rest as two cuBLAS matmuls per block of ``block_size`` queries.
    ``slopes``: None, or ALiBi slopes ``(q_heads,)``, added to the bias of the
    blocked path as ``-m_h |p_q - p_k|`` (the fused kernel takes no slopes).
    """
    if slopes is None:
        fused = fused_attention(xp, q, k, v, scale, causal, out, lse)
        if fused is not None:
            return fused
    out_view, lse_view = out, lse
    b, hq, tq, d = q.shape
    hk, tk, dv = k.shape[1], k.shape[2], v.shape[-1]
    group = hq // hk
    cdt = compute_dtype(q, k, v)
    qg = q.reshape(b, hk, group, tq, d)  # (b, hk, g, tq, d): query heads under the kv head they read
    kc = k.astype(cdt, copy=False)  # (b, hk, tk, d)
    vc = v.astype(cdt, copy=False)  # (b, hk, tk, dv)
    out = xp.empty((b, hk, group, tq, dv), dtype=q.dtype)
    lse = xp.empty((b, hk, group, tq), dtype=cdt)
    offset = tk - tq  # bottom-right alignment: query i sits at key position i + offset
    if slopes is not None:
        slopes = slopes.astype(cdt).reshape(hk, group, 1, 1)  # (hk, g, 1, 1): query head h = kv head * g + i
    for start in range(0, tq, block_size):
        stop = min(start + block_size, tq)
        n_keys = tk
        bias = None
        if causal:
            n_keys = max(0, min(tk, stop + offset))  # keys past the block's last query are never visible
            if start + offset + 1 < n_keys:  # the first row sees fewer keys than the last: mask
                bias = causal_bias(xp, xp.arange(start + offset, stop + offset), xp.arange(n_keys), cdt)
        if slopes is not None and n_keys > 0:  # ALiBi: -m_h |p_q - p_k|, (hk, g, blk, n_keys)
            distance = xp.abs(xp.arange(start + offset, stop + offset)[:, None] - xp.arange(n_keys)[None, :]).astype(cdt)
            bias = -slopes * distance if bias is None else bias - slopes * distance
        qb = qg[:, :, :, start:stop].astype(cdt) * scalar(scale, cdt)  # (b, hk, g, blk, d)
        o, l = softmax_attend(xp, qb, kc[:, :, :n_keys], vc[:, :, :n_keys], bias)
        out[:, :, :, start:stop] = o
        lse[:, :, :, start:stop] = l
    return written(out.reshape(b, hq, tq, dv), out_view), written(lse.reshape(b, hq, tq), lse_view)


def merge_attention(xp, outputs, lses):
    """LSE-merge of parts over disjoint key sets; shapes validated by the caller.  Returns ``(out, lse)``."""
    cdt = compute_dtype(*outputs, *lses)
    stacked = xp.stack([l.astype(cdt, copy=False) for l in lses])  # (parts, ..., q_len)
    m = stacked.max(axis=0)
    safe_m = where_scalar(xp, xp.isfinite(m), m, 0.0)
    w = xp.exp(stacked - safe_m)  # exp(-inf) = 0 for empty parts
    total = w.sum(axis=0)
    nonempty = total > 0
    safe_total = where_scalar(xp, nonempty, total, 1.0)
    acc = xp.zeros(outputs[0].shape, dtype=cdt)
    for wi, o in zip(w, outputs):  # a loop over the parts (a handful), not over tokens
        acc += wi[..., None] * o.astype(cdt, copy=False)
    acc /= safe_total[..., None]
    lse = where_scalar(xp, nonempty, xp.log(safe_total) + safe_m, -np.inf)
    return acc.astype(outputs[0].dtype, copy=False), lse
