r"""Softmax attention and the LSE merge on torch (spec: :mod:`yarnref.softmax_attention`).

Paper: Vaswani et al., arXiv:1706.03762, Eq. (1),
:math:`\mathrm{softmax}(QK^\top s)V`, with the natural-log log-sum-exp of each
row :math:`\ell_i = \log\sum_j e^{s\,q_i\cdot k_j}` (Dao et al.,
FlashAttention, arXiv:2205.14135, section 3.1), and the merge of results over
disjoint key sets :math:`o = \sum_p e^{\ell_p-\ell} o_p`,
:math:`\ell = \log\sum_p e^{\ell_p}` (Milakov & Gimelshein, arXiv:1805.02867).

Two paths compute the same function:

* **Fused** (CUDA, float16/bfloat16/float32): torch's own kernels.  Without
  the lse, ``F.scaled_dot_product_attention`` (``is_causal`` when
  ``q_len == kv_len``, ``torch.nn.attention.bias.causal_lower_right`` when
  not; ``enable_gqa``).  With the lse: cuDNN's
  ``aten._scaled_dot_product_cudnn_attention`` for non-causal and square
  causal calls (its ``is_causal`` is top-left aligned; GQA native; on an H100
  with torch 2.11, 644 TF/s at 32K tokens against flash's 351), and for a
  causal call with ``q_len < kv_len`` two of them, the keys before the
  queries' square (non-causal) and the square (causal), merged by
  log-sum-exp (:data:`SPLIT_CAUSAL_CUDNN`); the flash
  kernel ``aten._scaled_dot_product_flash_attention`` otherwise
  (float16/bfloat16; its ``is_causal`` is bottom-right aligned, as
  flash-attn's; GQA native); the memory-efficient kernel
  ``aten._efficient_attention_forward`` with ``custom_mask_type=2``
  (bottom-right causal; float32 too; k/v expanded to the query heads for
  GQA).  The kernel is picked with ``torch.backends.cuda.can_use_*``, so no
  path ever falls back to a materialised ``(q_len, kv_len)`` mask.
* **Blocked** (CPU, float64, and whatever the fused kernels refuse): queries
  ``block_size`` at a time, vectorised over batch, heads and keys, memory
  ``O(block_size * kv_len)`` per head.  Keys past a block's causal limit are
  not even multiplied.

Conventions
-----------
Those of :mod:`yarnref.softmax_attention`: layout ``(batch, heads, seq, head_dim)``;
GQA query head ``h`` reads kv head ``h // (q_heads // kv_heads)``; causal
bottom-right (the queries are the last ``q_len`` of ``kv_len`` positions); a
query with no visible key (``q_len > kv_len``, causal) gets output 0 and lse
``-inf``.  q, k and v must share one dtype.  The output has q's dtype; the lse
is float64 for float64 inputs and float32 otherwise (the dtype the kernels
produce it in; the spec's is always float64).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from yarnref.alibi import check_alibi_slopes
from yarnref.checks import LOGIT_LIMIT, start_logits_check
from yarnref.checks import check_bool, check_same_dtype, check_scale
from yarnref.softmax_attention import DEFAULT_BLOCK_SIZE, check_qkv
from yarnref.errors import InputError

from ._arrays import ArrayConverter, check_float, compute_dtype

__all__ = ["attention", "merge_attention", "attention_tensors", "merge_tensors", "check_block_size", "check_bool"]

_HALF = (torch.float16, torch.bfloat16)
#: Bottom-right causal calls with ``q_len < kv_len`` and the lse go to cuDNN as two calls (the keys
#: before the queries' square, non-causal; the square, causal) merged by log-sum-exp, instead of one
#: flash call (see ``_fused``).  A module switch so that benchmarks can time both forms.
SPLIT_CAUSAL_CUDNN = True


def check_block_size(block_size, param: str = "block_size") -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
        raise InputError(param, block_size, "a positive integer")
    return int(block_size)


# ----------------------------------------------------------------------------- blocked path


def _blocked(q, k, v, causal: bool, scale: float, block_size: int, slopes=None):
    """Blocked softmax attention; returns ``(out in q.dtype, lse in the compute dtype)``.

    Handles every case, including rows with no visible key.  ``slopes``: None,
    or the ALiBi slopes ``(q_heads,)`` (bias ``-m_h |p_q - p_k|`` on the scaled logits).
    """
    b, hq, tq, d = q.shape
    hk, tk, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = hq // hk
    cdt = compute_dtype(q.dtype)
    qg = q.reshape(b, hk, g, tq, d)  # (b, hk, g, tq, d): query heads grouped under their kv head
    kc = k.to(cdt)[:, :, None]  # (b, hk, 1, tk, d)
    vc = v.to(cdt)[:, :, None]  # (b, hk, 1, tk, dv)
    out = torch.zeros((b, hk, g, tq, dv), dtype=cdt, device=q.device)
    lse = torch.full((b, hk, g, tq), -math.inf, dtype=cdt, device=q.device)
    offset = tk - tq  # bottom-right alignment: query i sees keys j <= i + offset
    if slopes is not None:
        slopes = slopes.to(cdt).reshape(hk, g, 1, 1)  # (hk, g, 1, 1): query head h = kv head * g + i
    for start in range(0, tq, block_size):
        stop = min(start + block_size, tq)
        kv_stop = min(tk, stop + offset) if causal else tk  # keys any row of the block can see
        if kv_stop <= 0:
            continue  # every row of this block has no key: out 0, lse -inf
        logits = (qg[..., start:stop, :].to(cdt) @ kc[..., :kv_stop, :].transpose(-1, -2)) * scale  # (b, hk, g, blk, kv)
        if slopes is not None:  # ALiBi
            query_pos = torch.arange(start + offset, stop + offset, device=q.device)
            distance = (query_pos[:, None] - torch.arange(kv_stop, device=q.device)[None, :]).abs().to(cdt)  # (blk, kv)
            logits = logits - slopes * distance
        if causal and start + offset + 1 < kv_stop:  # the block crosses the diagonal
            last_key = torch.arange(start, stop, device=q.device) + offset  # (blk,)
            visible = torch.arange(kv_stop, device=q.device)[None, :] <= last_key[:, None]  # (blk, kv)
            logits = logits.masked_fill(~visible, -math.inf)
        row_max = logits.amax(dim=-1, keepdim=True)  # (b, hk, g, blk, 1)
        safe_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        weights = torch.exp(logits - safe_max)
        denom = weights.sum(dim=-1, keepdim=True)
        has_key = denom > 0
        safe_denom = torch.where(has_key, denom, torch.ones_like(denom))
        out[..., start:stop, :] = torch.where(has_key, (weights @ vc[..., :kv_stop, :]) / safe_denom, 0.0)
        lse[..., start:stop] = torch.where(has_key, torch.log(safe_denom) + safe_max, -math.inf)[..., 0]
    return out.reshape(b, hq, tq, dv).to(q.dtype), lse.reshape(b, hq, tq)


# ----------------------------------------------------------------------------- fused CUDA path


def _sdpa_params(q, k, v, enable_gqa: bool):
    from torch.backends.cuda import SDPAParams

    try:
        return SDPAParams(q, k, v, None, 0.0, False, enable_gqa)
    except TypeError:  # torch < 2.5: no enable_gqa argument
        return SDPAParams(q, k, v, None, 0.0, False)


def _can_flash(q, k, v) -> bool:
    from torch.backends.cuda import can_use_flash_attention

    gqa = q.shape[1] != k.shape[1]
    return q.dtype in _HALF and k.shape[-1] == v.shape[-1] and can_use_flash_attention(_sdpa_params(q, k, v, gqa))


def _can_cudnn(q, k, v) -> bool:
    from torch.backends.cuda import can_use_cudnn_attention

    gqa = q.shape[1] != k.shape[1]
    return q.dtype in _HALF and k.shape[-1] == v.shape[-1] and can_use_cudnn_attention(_sdpa_params(q, k, v, gqa))


def _can_efficient(q, k, v) -> bool:
    from torch.backends.cuda import can_use_efficient_attention

    # The kernel needs equal head counts (GQA is expanded before the call); its other conditions (dtype,
    # head dims, alignment, device) do not depend on the head count, so one head of each is checked.
    return q.dtype in (*_HALF, torch.float32) and can_use_efficient_attention(_sdpa_params(q[:, :1], k[:, :1], v[:, :1], False))


def _pad_head_dim(x: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    pad = (-x.shape[-1]) % multiple
    return x if pad == 0 else F.pad(x, (0, pad))  # zero features: q.k and the kept v columns unchanged


def _fused(q, k, v, causal: bool, scale: float, return_lse: bool):
    """torch's fused kernels, for ``q_len <= kv_len`` when causal; ``None`` if none applies."""
    tq, tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    dv = v.shape[-1]
    if not return_lse:
        if _can_flash(q, k, v) or (not gqa and _can_efficient(q, k, v)):
            from torch.nn.attention.bias import causal_lower_right

            mask = causal_lower_right(tq, tk) if causal and tq != tk else None
            kwargs = {"enable_gqa": True} if gqa else {}
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and tq == tk, scale=scale, **kwargs), None
        if gqa and _can_efficient(q, k, v):
            return _fused(q, *_expand_kv(q, k, v), causal, scale, False)
        return None
    if _can_cudnn(q, k, v):
        # cuDNN's is_causal is top-left aligned, so one call serves the square causal case and the
        # non-causal one; on H100 it runs at about twice flash's rate (measured: 644 vs 351 TF/s).
        if not causal or tq == tk:
            res = _cudnn(q, k, v, causal, scale)
            if res is not None:
                return res
        elif SPLIT_CAUSAL_CUDNN:
            # Bottom-right causal with tq < tk (a prefill chunk after earlier keys): the keys before the
            # queries' own square, [0, tk - tq), are visible to every row (a non-causal call); the square
            # [tk - tq, tk) is causal from the top left; the LSE merge of the two is the causal result.
            split = tk - tq
            before = _cudnn(q, k[:, :, :split], v[:, :, :split], False, scale)
            square = _cudnn(q, k[:, :, split:], v[:, :, split:], True, scale) if before is not None else None
            if square is not None:
                return merge_tensors([before[0], square[0]], [before[1], square[1]])
    if _can_flash(q, k, v):
        qp, kp, vp = _pad_head_dim(q), _pad_head_dim(k), _pad_head_dim(v)
        # flash's is_causal is bottom-right aligned for q_len != kv_len (as in torch.nn.attention.bias)
        res = torch.ops.aten._scaled_dot_product_flash_attention(qp, kp, vp, 0.0, is_causal=causal, return_debug_mask=False, scale=scale)
        return res[0][..., :dv], res[1]  # out (b, hq, tq, dv); lse (b, hq, tq), float32, natural log
    if _can_efficient(q, k, v):
        if gqa:
            k, v = _expand_kv(q, k, v)
        res = torch.ops.aten._efficient_attention_forward(
            q.transpose(1, 2),  # (b, tq, h, d): this kernel's layout
            k.transpose(1, 2),
            v.transpose(1, 2),
            bias=None,
            cu_seqlens_q=None,
            cu_seqlens_k=None,
            max_seqlen_q=None,
            max_seqlen_k=None,
            dropout_p=0.0,
            custom_mask_type=2 if causal else 0,  # 2 = causal from the bottom right
            compute_log_sumexp=True,
            scale=scale,
        )
        return res[0].transpose(1, 2), res[1][..., :tq]  # the lse is padded to a multiple of 32 rows
    return None


def _cudnn(q, k, v, causal: bool, scale: float):
    """cuDNN's fused attention with the lse (``is_causal`` top-left aligned); ``None`` if its planner refuses."""
    try:
        res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)
    except RuntimeError:  # a configuration cuDNN's planner refuses after all: flash serves it
        return None
    return res[0], res[1].reshape(q.shape[0], q.shape[1], q.shape[2])  # the lse comes as (b, hq, tq, 1)


def _expand_kv(q, k, v):
    g = q.shape[1] // k.shape[1]
    return k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # (b, hq, tk, d): kv head h // g


# ----------------------------------------------------------------------------- dispatch


def attention_tensors(q, k, v, causal: bool, scale: float, return_lse: bool, block_size: int = DEFAULT_BLOCK_SIZE):
    """Attention on checked tensors (shared by DCA and sparse): ``(out, lse or None)``.

    The lse is float64 for float64 inputs, float32 otherwise.
    """
    b, hq, tq, _ = q.shape
    tk = k.shape[2]
    cdt = compute_dtype(q.dtype)
    if q.is_cuda and q.dtype != torch.float64:
        if causal and tq > tk:  # the first tq - tk queries see no key: out 0, lse -inf; the rest is square
            out, lse = attention_tensors(q[:, :, tq - tk :], k, v, True, scale, return_lse, block_size)
            full = torch.zeros((b, hq, tq, v.shape[-1]), dtype=q.dtype, device=q.device)
            full[:, :, tq - tk :] = out
            if lse is not None:
                full_lse = torch.full((b, hq, tq), -math.inf, dtype=cdt, device=q.device)
                full_lse[:, :, tq - tk :] = lse
                lse = full_lse
            return full, lse
        fused = _fused(q, k, v, causal, scale, return_lse)
        if fused is not None:
            out, lse = fused
            return out, (lse.to(cdt) if lse is not None else None)
    out, lse = _blocked(q, k, v, causal, scale, block_size)
    return out, (lse if return_lse else None)


def logit_limit(dtype: torch.dtype) -> float:
    """The bound on |logits| for :func:`yarnref.checks.check_logits_fit` in this dtype's compute precision."""
    return LOGIT_LIMIT if compute_dtype(dtype) == torch.float64 else 1e37


def attention(conv: ArrayConverter, q, k, v, causal=True, scale=None, return_lse=False, *, block_size=DEFAULT_BLOCK_SIZE, alibi_slopes=None):
    """Softmax attention; see :func:`yarnref.softmax_attention.attention`.

    With ``alibi_slopes`` the blocked path runs (on every device): torch's
    fused kernels take no ALiBi slopes, and a materialised bias would cost
    ``O(q_len * kv_len)`` memory.
    """
    q, k, v = (check_float(n, conv.tensor(a, n)) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    check_same_dtype(q=q, k=k, v=v)
    _, _, _, _, _, d = check_qkv(q, k, v)
    causal = check_bool("causal", causal)
    return_lse = check_bool("return_lse", return_lse)
    scale = check_scale(scale, d)
    block_size = check_block_size(block_size)
    # Refused, not NaN: the reductions start here and are read back once the work is enqueued (one
    # synchronisation, after the device has its work); nothing is returned before the check has passed.
    pending = start_logits_check(q, k, scale, v=v, limit=logit_limit(q.dtype))
    if not q.is_cuda:  # on the host there is no device to keep busy: refuse before any work
        pending.finish()
    if alibi_slopes is not None:
        slopes = conv.tensor(alibi_slopes, "alibi_slopes")
        check_alibi_slopes(slopes.shape, q.shape[1])
        if slopes.dtype.is_complex or slopes.dtype == torch.bool or not bool(torch.isfinite(slopes).all()):
            raise InputError("alibi_slopes", "non-finite values", "finite real slopes")
        pending.finish()  # before the blocked path: it would compute on non-finite inputs for nothing
        out, lse = _blocked(q, k, v, causal, scale, block_size, slopes)
        return (out, lse) if return_lse else out
    out, lse = attention_tensors(q, k, v, causal, scale, return_lse, block_size)
    pending.finish()
    return (out, lse) if return_lse else out


#: Bytes of the compute-dtype accumulator of one step of :func:`merge_tensors`: rows are merged a block at
#: a time, so its temporaries (the accumulator, one part cast to the compute dtype, their product) stay near
#: three times this instead of three times a float32 copy of the whole output (1.3 GiB for 28 heads of
#: 128 over 32768 rows).  Every output element is its own computation, so the blocking changes no bit.
MERGE_BYTES = 1 << 26


def merge_tensors(outputs, lses):
    """The LSE merge on checked tensors: ``(out in outputs[0].dtype, lse)``.

    Computed (and the lse returned) in float64 if the outputs or any lse are
    float64, else in float32; in blocks of rows of :data:`MERGE_BYTES`.  On
    CUDA, half-precision parts of one shape with float32 lses are merged by
    one Triton kernel (:mod:`.merge_triton`: each part read once, no float32
    copies).
    """
    from . import merge_triton

    if merge_triton.available(outputs, lses):
        return merge_triton.merge_triton(outputs, lses)
    wide = outputs[0].dtype == torch.float64 or any(l.dtype == torch.float64 for l in lses)
    cdt = torch.float64 if wide else torch.float32
    first = outputs[0]
    q_len = first.shape[-2]
    per_row = max(1, first.numel() // max(q_len, 1)) * (8 if wide else 4)
    step = max(1, MERGE_BYTES // per_row)
    if step >= q_len:
        return _merge_rows(outputs, lses, cdt)
    out = torch.empty(first.shape, dtype=first.dtype, device=first.device)
    lse = torch.empty(torch.broadcast_shapes(*(l.shape for l in lses)), dtype=cdt, device=first.device)
    for a in range(0, q_len, step):  # a loop over row blocks: element-wise work, bounded temporaries
        b = min(a + step, q_len)
        out[..., a:b, :], lse[..., a:b] = _merge_rows([o[..., a:b, :] for o in outputs], [l[..., a:b] for l in lses], cdt)
    return out, lse


def _merge_rows(outputs, lses, cdt):
    """:func:`merge_tensors` of rows held at once, computed in ``cdt``."""
    stacked = torch.stack([l.to(cdt) for l in lses])  # (parts, ..., q_len)
    m = stacked.amax(dim=0)
    safe_m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(stacked - safe_m)  # exp(-inf) = 0: an empty part contributes nothing
    total = w.sum(dim=0)
    nonempty = total > 0
    safe_total = torch.where(nonempty, total, torch.ones_like(total))
    out = torch.zeros(outputs[0].shape, dtype=cdt, device=outputs[0].device)
    for wi, o in zip(w, outputs):  # a loop over the parts (a handful), not over heads or tokens
        out += wi[..., None] * o.to(cdt)
    out /= safe_total[..., None]
    lse = torch.where(nonempty, torch.log(safe_total) + safe_m, torch.full_like(safe_m, -math.inf))
    return out.to(outputs[0].dtype), lse


def merge_attention(conv: ArrayConverter, outputs, lses):
    """Merge attention over disjoint key sets; see :func:`yarnref.softmax_attention.merge_attention`."""
    outputs, lses = list(outputs), list(lses)
    if not outputs or len(outputs) != len(lses):
        raise InputError("outputs", f"{len(outputs)} outputs and {len(lses)} lses", "a non-empty, equal number of each")
    os_ = [check_float(f"outputs[{i}]", conv.tensor(o, f"outputs[{i}]")) for i, o in enumerate(outputs)]
    ls = [check_float(f"lses[{i}]", conv.tensor(l, f"lses[{i}]")) for i, l in enumerate(lses)]
    for i, (o, l) in enumerate(zip(os_, ls)):
        if o.shape != os_[0].shape or l.shape != o.shape[:-1]:
            raise InputError(
                f"outputs[{i}]",
                f"shape {tuple(o.shape)} with lse {tuple(l.shape)}",
                f"output {tuple(os_[0].shape)} and lse {tuple(os_[0].shape[:-1])}",
            )
    check_same_dtype(**{f"outputs[{i}]": o for i, o in enumerate(os_)})
    # -inf is an empty part; +inf and NaN have no meaning.  One read-back for all the parts.
    bad = torch.stack([(torch.isnan(l) | (l == math.inf)).any() for l in ls]).tolist()
    for i, is_bad in enumerate(bad):
        if is_bad:
            raise InputError(f"lses[{i}]", "NaN or +inf values", "finite log-sum-exps, or -inf for a part with no keys")
    return merge_tensors(os_, ls)
