r"""Dual Chunk Attention on the GPU (spec: :mod:`yarnref.dca`).

Paper: An et al., "Training-Free Long-Context Scaling of Large Language
Models", arXiv:2402.17463, section 3: keys at :math:`P_k(j) = j \bmod L`;
queries at :math:`P_q^{\mathrm{intra}} = i \bmod L`,
:math:`P_q^{\mathrm{succ}} = \min(i \bmod L + L, C)`,
:math:`P_q^{\mathrm{inter}} = \min(2L - 1, C)` (Eqs. 2-7), the part chosen by
the chunk distance (Eq. 8), one softmax over all keys ``j <= i`` (Eq. 9),
computed as three attentions merged by their log-sum-exps (Appendix A.2,
Algorithm 1), which is how vLLM runs it for Qwen2.5-1M (arXiv:2501.15383).

How it runs here: keys are rotated once; the queries are walked by DCA
segment (:func:`yarnref.dca.dca_segments`: the queries of one chunk), and for
each segment the three parts are blocked attentions over contiguous key
ranges (intra ``[cs, end)`` bottom-right causal, successive ``[cs - L, cs)``
and inter ``[0, cs - L)`` unmasked) with their lse, merged.  Nothing of size
``q_len * kv_len`` is ever held: memory is ``O(block * kv_len)``.  The Python
loops run over segments and query blocks, never over heads or tokens.

Conventions: the spec's (:mod:`yarnref.dca`).  ``form`` selects how the spec
computes; on the GPU both forms are the same merged computation (they are
equal up to rounding, which the spec's tests check).  Tables are computed in
float64 and applied in the compute dtype (float64 for float64 inputs, else
float32); the temperature factors come from :func:`yarnref.dca.dca_temperature`.
For float16/bfloat16 inputs a fused kernel takes
(:func:`.attention.takes_fused`: yarnref's Triton dense kernel where torch and
Triton are installed, else the NVRTC kernel), the rotated q and k are rounded
to the input dtype and each part runs in that kernel with its lse, as vLLM
rotates in the model dtype and runs its parts in FlashAttention; the parts are
merged by :func:`.attention.merge_attention`, the same LSE merge the torch
backend composes around SDPA.  The rotations themselves are yarnref's Triton
RoPE kernel on the float32 copies where Triton runs (:mod:`.rope`).
"""

from __future__ import annotations

import importlib

import numpy as np

from ._arrays import compute_dtype, scalar
from .attention import attention, merge_attention, takes_fused
from .rope import apply_rope, cos_sin

spec = importlib.import_module("yarnref.dca")

#: Logits held at once by one part's attention block: ``batch * q_heads * block * keys`` numbers.
BLOCK_ELEMENTS = 1 << 26


def _block_size(rows_per_query: int, n_keys: int) -> int:
    return max(1, BLOCK_ELEMENTS // (rows_per_query * max(1, n_keys)))


def rotate(xp, x, inv_freq, positions, table_factor: float, pairing: str):
    """``x`` (compute dtype) rotated to ``positions`` (float64 device array, ``(n,)``); float64 tables."""
    cos, sin = cos_sin(xp, inv_freq, positions, table_factor, "float64", "float64", np.float64)  # (n, r/2)
    return apply_rope(xp, x, cos, sin, 2 * inv_freq.shape[0], pairing)


def dca_attention(
    xp, q, k, v, inv_freq, chunk_size: int, chunk_len: int, scale: float, pairing: str,
    table_factor: float, query_factor: float, key_factor, pi_factor: float, segments,
):
    """DCA over validated device arrays.  ``key_factor``: ``(kv_len,)`` device array, or None for all ones.  Returns ``(out, lse)``."""
    batch, q_heads, q_len, _ = q.shape
    kv_len = k.shape[2]
    cdt = compute_dtype(q, k, v)
    offset = kv_len - q_len  # absolute position of query row 0
    key_positions = (xp.arange(kv_len, dtype=np.int64) % chunk_len).astype(np.float64) / scalar(pi_factor, np.float64)
    # Keys are rotated once, at p mod L, and carry their write-time factor (vLLM caches them so).
    # The dtype the rotated q/k go to attention in: q's 16-bit dtype where a fused kernel takes the
    # call (vLLM rotates in the model dtype too), else the compute dtype.
    work = q.dtype if takes_fused(xp, q, k, v, causal=False) else cdt
    k_rot = rotate(xp, k.astype(cdt), inv_freq, key_positions, table_factor, pairing)  # (b, hk, kv_len, d)
    if key_factor is not None:  # the Qwen temperature's write-time factors
        k_rot *= key_factor.astype(cdt)[:, None]
    k_rot = k_rot.astype(work, copy=False)
    vc = v.astype(work, copy=False)
    logit_scale = scale * query_factor
    inter_position = float(min(2 * chunk_len - 1, chunk_size))

    out = xp.empty((batch, q_heads, q_len, v.shape[-1]), dtype=q.dtype)
    lse = xp.empty((batch, q_heads, q_len), dtype=cdt)
    for seg in segments:
        rows = slice(seg.begin - offset, seg.end - offset)
        q_seg = q[:, :, rows].astype(cdt)  # (b, hq, n, d), un-rotated
        absolute = xp.arange(seg.begin, seg.end, dtype=np.int64)
        in_chunk = absolute % chunk_len  # r(p)
        positions = {
            "intra": in_chunk.astype(np.float64),
            "successive": xp.minimum(in_chunk + chunk_len, chunk_size).astype(np.float64),
            "inter": xp.full(seg.end - seg.begin, inter_position, dtype=np.float64),
        }
        outputs, lses = [], []
        for part, (start, stop), causal in (
            ("intra", seg.intra, True),  # bottom-right causal: query i sees [cs, i]
            ("successive", seg.successive, False),
            ("inter", seg.inter, False),
        ):
            if stop <= start:
                continue
            qp = rotate(xp, q_seg, inv_freq, positions[part] / scalar(pi_factor, np.float64), table_factor, pairing).astype(work, copy=False)
            o, l = attention(
                xp, qp, k_rot[:, :, start:stop], vc[:, :, start:stop], causal, logit_scale,
                _block_size(batch * q_heads, stop - start),
            )
            outputs.append(o)
            lses.append(l)
        if len(outputs) == 1:
            o, l = outputs[0], lses[0]
        else:
            o, l = merge_attention(xp, outputs, lses)
        out[:, :, rows] = o
        lse[:, :, rows] = l
    return out, lse
