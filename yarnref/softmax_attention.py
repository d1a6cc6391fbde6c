r"""Softmax attention: the reference every other method is measured against.

Paper: Vaswani et al., "Attention Is All You Need", arXiv:1706.03762, Eq. (1):

.. math::  \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d_k}}\right) V

and the log-sum-exp of each row, which flash attention returns and which lets
partial results over disjoint key sets be merged exactly (Dao et al.,
FlashAttention, arXiv:2205.14135, section 3.1; Milakov & Gimelshein,
arXiv:1805.02867):

.. math::
   \ell_p = \log \sum_{j \in K_p} e^{s_j}, \qquad
   o = \sum_p e^{\ell_p - \ell}\, o_p, \qquad \ell = \log \sum_p e^{\ell_p}

(:func:`merge_attention`).  This merge is how Dual Chunk Attention and the
sparse kernels combine their parts.

Conventions
-----------
* Layout ``(batch, heads, seq, head_dim)``, as torch SDPA.
* GQA: k and v may have fewer heads; query head ``h`` reads kv head
  ``h // (q_heads // kv_heads)`` (transformers' ``repeat_kv``).
* Causal masks are aligned bottom-right: with ``q_len <= kv_len`` the queries
  are the *last* ``q_len`` positions, so query ``i`` sees keys
  ``j <= i + kv_len - q_len``.  Prefill, chunked prefill and decode are then
  the same call.  (flash-attn >= 2.1 and SDPA with ``is_causal`` on a
  ``q_len != kv_len`` call differ: SDPA aligns top-left.  yarnref follows
  flash-attn.)  A query with no visible key gets output 0 and lse ``-inf``.
* ``scale`` defaults to ``1/sqrt(head_dim)``; logits are ``scale * q.k``.
* The log-sum-exp is natural-log, over the scaled logits, shape
  ``(batch, heads, q_len)``.
* ``alibi_slopes`` adds ALiBi's :math:`-m_h |p_q - p_k|` to the scaled
  logits (Press et al., arXiv:2108.12409; see :mod:`yarnref.alibi`).
* Precision: computed in float64 and returned in the dtype of ``q`` (the lse
  stays float64).  Queries are processed ``block_size`` at a time, so memory
  is ``O(block_size * kv_len)`` per head, not ``O(q_len * kv_len)``.
"""

from __future__ import annotations

from collections.abc import Iterable


import numpy as np

from .alibi import check_alibi_slopes
from .checks import check_array_like, check_bool, check_fits_dtype, check_int, check_logits_fit, check_same_dtype
from .checks import check_scale as _check_scale
from .checks import default_scale
from .errors import InputError
from .progress import progress_iter

__all__ = ["attention", "merge_attention", "repeat_kv", "check_qkv", "default_scale"]

#: Queries per block in the blocked float64 reference.
DEFAULT_BLOCK_SIZE = 512


def check_qkv(q, k, v, *, same_len: bool = False):
    """Validate the shapes of q, k, v; return ``(batch, q_heads, kv_heads, q_len, kv_len, head_dim)``.

    Works on any array type with ``.shape`` and ``.ndim`` (NumPy, torch, CuPy),
    so the backends share it.
    """
    for name, a in (("q", q), ("k", k), ("v", v)):
        if getattr(a, "ndim", None) != 4:
            raise InputError(name, f"shape {tuple(getattr(a, 'shape', ()))}", "a 4-D array (batch, heads, seq, head_dim)")
    b, hq, tq, d = q.shape
    bk, hk, tk, dk = k.shape
    if bk != b or dk != d:
        raise InputError("k", f"shape {tuple(k.shape)}", f"batch {b} and head_dim {d} like q {tuple(q.shape)}")
    if tuple(v.shape[:3]) != (bk, hk, tk):
        raise InputError("v", f"shape {tuple(v.shape)}", f"(batch, kv_heads, kv_len) = {(bk, hk, tk)} like k")
    if hk < 1 or hq % hk:
        raise InputError("k", f"{hk} heads", f"a divisor of the {hq} query heads (GQA)")
    if tq < 1 or tk < 1:
        raise InputError("q", f"q_len={tq}, kv_len={tk}", "at least one query and one key")
    if d < 1 or v.shape[-1] < 1:
        raise InputError("q", f"head_dim={d}, v_dim={v.shape[-1]}", "a head_dim and v_dim of at least 1")
    if same_len and tq != tk:
        raise InputError("k", f"kv_len={tk}", f"kv_len == q_len == {tq}")
    return b, hq, hk, tq, tk, d


def repeat_kv(x, n_rep: int):
    """``(batch, kv_heads, seq, d) -> (batch, kv_heads * n_rep, seq, d)``: each kv head repeated n_rep times."""
    if n_rep == 1:
        return x
    return np.repeat(x, n_rep, axis=1)


def attention(
    q,
    k,
    v,
    causal: bool = True,
    scale: float | None = None,
    return_lse: bool = False,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    alibi_slopes=None,
):
    """Softmax attention of Eq. (1), blocked over queries.

    ``q``: ``(batch, q_heads, q_len, head_dim)``; ``k``: ``(batch, kv_heads,
    kv_len, head_dim)``; ``v``: ``(batch, kv_heads, kv_len, v_dim)``.
    Returns ``out`` of shape ``(batch, q_heads, q_len, v_dim)`` in q's dtype, and
    with ``return_lse`` also ``lse`` ``(batch, q_heads, q_len)`` (float64).

    ``alibi_slopes``: None, or one slope per query head ``(q_heads,)``
    (:func:`yarnref.alibi_slopes`); each scaled logit then gets the ALiBi bias
    :math:`-m_h |p_q - p_k|` of :func:`yarnref.alibi.alibi_bias`
    (arXiv:2108.12409).
    """
    allowed = "a 4-D floating-point array (batch, heads, seq, head_dim)"
    q, k, v = (check_array_like(name, a, allowed) for name, a in (("q", q), ("k", k), ("v", v)))
    b, hq, hk, tq, tk, d = check_qkv(q, k, v)
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not np.issubdtype(a.dtype, np.floating):  # an integer q would truncate the output to its dtype
            raise InputError(name, f"dtype {a.dtype}", "a floating-point array")
    check_same_dtype(q=q, k=k, v=v)
    check_bool("causal", causal)
    check_bool("return_lse", return_lse)
    scale = _check_scale(scale, d)
    block_size = check_int("block_size", block_size, 1)
    check_logits_fit(q, k, scale, v=v)  # the logits and the weighted sums fit float64: no NaN from finite inputs
    group = hq // hk
    slopes = None
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes)
        check_alibi_slopes(slopes.shape, hq)
        if slopes.dtype.kind not in "fiu" or not np.all(np.isfinite(slopes)):
            raise InputError("alibi_slopes", "non-finite or non-real values", "finite real slopes")
        slopes = slopes.astype(np.float64).reshape(hk, group, 1, 1)  # (hk, g, 1, 1): query head h = kv head * g + i
    # (b, hk, group, tq, d): query heads grouped under the kv head they read.
    qg = q.astype(np.float64).reshape(b, hk, group, tq, d)
    kf = k.astype(np.float64)[:, :, None]  # (b, hk, 1, tk, d)
    vf = v.astype(np.float64)[:, :, None]  # (b, hk, 1, tk, dv)
    out = np.zeros((b, hk, group, tq, v.shape[-1]), dtype=np.float64)
    lse = np.full((b, hk, group, tq), -np.inf, dtype=np.float64)
    key_pos = np.arange(tk)
    for start in progress_iter(range(0, tq, block_size), "attention"):
        stop = min(start + block_size, tq)
        # Causal: no query of this block sees a key past the block's last query position.
        kv_stop = min(tk, stop + tk - tq) if causal else tk
        if kv_stop <= 0:
            continue  # queries before the first key: out 0, lse -inf (as initialised)
        logits = qg[..., start:stop, :] @ np.swapaxes(kf[..., :kv_stop, :], -1, -2)  # (b, hk, g, blk, kv_stop)
        logits *= scale
        if slopes is not None:  # ALiBi: -m_h |p_q - p_k|, queries at positions start + tk - tq, ...
            query_pos = np.arange(start, stop) + (tk - tq)
            logits -= slopes * np.abs(query_pos[:, None] - key_pos[None, :kv_stop])  # (hk, g, blk, kv_stop)
        if causal:
            last_key = np.arange(start, stop) + (tk - tq)  # bottom-right alignment
            logits[..., key_pos[None, :kv_stop] > last_key[:, None]] = -np.inf
        row_max = logits.max(axis=-1, keepdims=True)  # (b, hk, g, blk, 1)
        safe_max = np.where(np.isfinite(row_max), row_max, 0.0)
        weights = np.exp(np.subtract(logits, safe_max, out=logits), out=logits)  # in place: one buffer per block
        denom = weights.sum(axis=-1, keepdims=True)
        has_key = denom > 0
        out[..., start:stop, :] = np.where(has_key, (weights @ vf[..., :kv_stop, :]) / np.where(has_key, denom, 1.0), 0.0)
        with np.errstate(divide="ignore"):
            lse[..., start:stop] = np.where(has_key, np.log(np.where(has_key, denom, 1.0)) + safe_max, -np.inf)[..., 0]
    out = out.reshape(b, hq, tq, v.shape[-1]).astype(q.dtype, copy=False)
    lse = lse.reshape(b, hq, tq)
    return (out, lse) if return_lse else out


def merge_attention(outputs, lses):
    """Merge attention results over disjoint key sets into the attention over their union.

    ``outputs``: a sequence of ``(..., q_len, v_dim)`` arrays; ``lses``: the
    matching ``(..., q_len)`` log-sum-exps.  A part with lse ``-inf`` (no keys)
    contributes nothing.  Returns ``(out, lse)``; out in the first output's
    dtype, lse float64.  Computed in float64.
    """
    for name, parts in (("outputs", outputs), ("lses", lses)):
        if isinstance(parts, (str, bytes, np.ndarray)) or not isinstance(parts, Iterable):
            raise InputError(name, _describe_parts(parts), "a sequence of arrays (one per part)")
    outputs, lses = list(outputs), list(lses)
    if not outputs or len(outputs) != len(lses):
        raise InputError("outputs", f"{len(outputs)} outputs and {len(lses)} lses", "a non-empty, equal number of each")
    outputs = [check_array_like(f"outputs[{i}]", o, "a real array (..., q_len, v_dim)") for i, o in enumerate(outputs)]
    lses = [check_array_like(f"lses[{i}]", l, "a real array (..., q_len)") for i, l in enumerate(lses)]
    for name, parts in (("outputs", outputs), ("lses", lses)):
        for i, a in enumerate(parts):
            if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise InputError(f"{name}[{i}]", f"dtype {a.dtype}", "a real array")
    os_ = [o.astype(np.float64) for o in outputs]
    ls = [l.astype(np.float64) for l in lses]
    for i, (o, l) in enumerate(zip(os_, ls)):
        if o.ndim < 1 or o.shape != os_[0].shape or l.shape != o.shape[:-1]:
            raise InputError(f"outputs[{i}]", f"shape {o.shape} with lse {l.shape}", f"output {os_[0].shape} and lse {os_[0].shape[:-1]}")
        if not np.all(np.isfinite(o)):
            raise InputError(f"outputs[{i}]", "non-finite values", "finite values")
        if np.any(np.isnan(l) | (l == np.inf)):
            raise InputError(f"lses[{i}]", "NaN or +inf values", "finite log-sum-exps, or -inf for a part with no keys")
    stacked = np.stack(ls)  # (parts, ..., q_len)
    m = stacked.max(axis=0)
    safe_m = np.where(np.isfinite(m), m, 0.0)
    w = np.exp(stacked - safe_m)  # exp(-inf) = 0 for empty parts
    total = w.sum(axis=0)
    nonempty = total > 0
    # Each weight is <= 1 and total >= 1 where a part is nonempty, so the sum stays within sum|o|.
    with np.errstate(over="ignore"):
        out = sum(wi[..., None] * o for wi, o in zip(w, os_)) / np.where(nonempty, total, 1.0)[..., None]
    if not np.all(np.isfinite(out)):
        raise InputError("outputs", "values whose weighted sum overflows float64", "outputs with sum of |values| <= 1e300")
    with np.errstate(divide="ignore"):
        lse = np.where(nonempty, np.log(np.where(nonempty, total, 1.0)) + safe_m, -np.inf)
    dtype = outputs[0].dtype if np.issubdtype(outputs[0].dtype, np.floating) else np.dtype(np.float64)
    return check_fits_dtype("outputs", out, dtype), lse


def _describe_parts(parts) -> str:
    return f"array of shape {parts.shape}" if isinstance(parts, np.ndarray) else type(parts).__name__
