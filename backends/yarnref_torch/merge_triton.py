r"""The LSE merge of attention over disjoint key sets as one Triton kernel (CUDA): one read of each part.

Paper: the merge of partial softmaxes (Milakov & Gimelshein, "Online
normalizer calculation for softmax", arXiv:1805.02867; FlashAttention,
arXiv:2205.14135, Algorithm 1; DCA's merge of its three parts, An et al.,
arXiv:2402.17463, Appendix A.2).  Parts ``k`` with outputs :math:`o_k` and
log-sum-exps :math:`\ell_k` over disjoint key sets give the attention over
their union:

.. math::
   m = \max_k \ell_k, \quad w_k = e^{\ell_k - m}, \quad
   o = \frac{\sum_k w_k\, o_k}{\sum_k w_k}, \quad
   \ell = m + \log \sum_k w_k

(``m`` replaced by 0 where every part is empty, ``-inf``; such a row gets
``o = 0`` and ``\ell = -\infty``), which is :func:`yarnref_torch.attention.merge_tensors`.

The eager form makes about five float32 passes per part (cast, product, sum,
division, cast back) and about fifteen launches; DCA merges two or three parts
per segment and the Qwen pipeline's sparse path does so for every prefill
chunk, so the merge is memory- and launch-bound.  This kernel reads each
part's rows once and writes the result once: one program per ``BLOCK_T`` rows
of one (batch, head), computing in float32.

Conventions
-----------
Two to four parts; outputs ``(batch, heads, seq, d)`` float16 or bfloat16, all
of one shape and dtype, any strides with a unit last one; lses ``(batch,
heads, seq)`` float32, any strides.  Returns a new contiguous output of that
dtype and a float32 lse.  The exponential and logarithm are Triton's float32
ones (within a few float32 ulps of torch's), far below the outputs' half
precision.
"""

from __future__ import annotations

import torch

try:  # optional: the eager merge serves wherever Triton is missing
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["available", "merge_triton"]

#: Parts one launch merges (the DCA merge has three, the causal split two).
MAX_PARTS = 4
#: Largest head dimension a program holds at once.
MAX_HEAD_DIM = 256


def available(outputs, lses) -> bool:
    """True if :func:`merge_triton` takes these parts (CUDA half-precision outputs of one shape, float32
    lses of the rows' shape, 2 to :data:`MAX_PARTS` parts, head dim up to :data:`MAX_HEAD_DIM`)."""
    if triton is None or not 2 <= len(outputs) <= MAX_PARTS or len(lses) != len(outputs):
        return False
    first = outputs[0]
    if not first.is_cuda or first.dtype not in (torch.float16, torch.bfloat16) or first.ndim != 4:
        return False
    if not 0 < first.shape[-1] <= MAX_HEAD_DIM:
        return False
    for o, lse in zip(outputs, lses):
        if o.shape != first.shape or o.dtype != first.dtype or o.device != first.device or o.stride(-1) != 1:
            return False
        if lse.dtype != torch.float32 or lse.shape != first.shape[:-1] or lse.device != first.device:
            return False
    return True


if triton is not None:

    @triton.jit
    def _part(O, L, b, h, t, d, row_ok, d_ok, so_b, so_h, so_t, sl_b, sl_h, sl_t):
        """One part's lse ``(BLOCK_T,)`` and output rows ``(BLOCK_T, BLOCK_D)`` in float32."""
        lse = tl.load(L + b * sl_b + h * sl_h + t * sl_t, mask=row_ok, other=float("-inf"))
        o = tl.load(O + b * so_b + h * so_h + t[:, None] * so_t + d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                    other=0.0)
        return lse, o.to(tl.float32)

    # The sizes and strides change from call to call: not specialised on, one compiled variant per
    # (parts, head dim) serves them all.
    @triton.jit(do_not_specialize=(
        "rows", "heads",
        "s0_b", "s0_h", "s0_t", "s1_b", "s1_h", "s1_t", "s2_b", "s2_h", "s2_t", "s3_b", "s3_h", "s3_t",
        "l0_b", "l0_h", "l0_t", "l1_b", "l1_h", "l1_t", "l2_b", "l2_h", "l2_t", "l3_b", "l3_h", "l3_t",
        "so_b", "so_h", "so_t", "sl_b", "sl_h", "sl_t",
    ))
    def _merge_kernel(
        O0, O1, O2, O3, L0, L1, L2, L3, Out, LseOut,
        rows, heads,
        s0_b, s0_h, s0_t, s1_b, s1_h, s1_t, s2_b, s2_h, s2_t, s3_b, s3_h, s3_t,
        l0_b, l0_h, l0_t, l1_b, l1_h, l1_t, l2_b, l2_h, l2_t, l3_b, l3_h, l3_t,
        so_b, so_h, so_t, sl_b, sl_h, sl_t,
        PARTS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    ):
        # 64-bit offsets: at 1M rows and 28 heads a part holds 2**32 elements.
        bh = tl.program_id(1).to(tl.int64)
        b = bh // heads
        h = bh % heads
        t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
        d = tl.arange(0, BLOCK_D)
        row_ok = t < rows
        d_ok = d < D
        l0, o0 = _part(O0, L0, b, h, t, d, row_ok, d_ok, s0_b, s0_h, s0_t, l0_b, l0_h, l0_t)
        l1, o1 = _part(O1, L1, b, h, t, d, row_ok, d_ok, s1_b, s1_h, s1_t, l1_b, l1_h, l1_t)
        m = tl.maximum(l0, l1)
        if PARTS > 2:
            l2, o2 = _part(O2, L2, b, h, t, d, row_ok, d_ok, s2_b, s2_h, s2_t, l2_b, l2_h, l2_t)
            m = tl.maximum(m, l2)
        if PARTS > 3:
            l3, o3 = _part(O3, L3, b, h, t, d, row_ok, d_ok, s3_b, s3_h, s3_t, l3_b, l3_h, l3_t)
            m = tl.maximum(m, l3)
        m = tl.where(m == float("-inf"), 0.0, m)  # every part empty: exp(-inf - 0) = 0 below
        w0 = tl.exp(l0 - m)
        w1 = tl.exp(l1 - m)
        total = w0 + w1
        acc = w0[:, None] * o0 + w1[:, None] * o1
        if PARTS > 2:
            w2 = tl.exp(l2 - m)
            total += w2
            acc += w2[:, None] * o2
        if PARTS > 3:
            w3 = tl.exp(l3 - m)
            total += w3
            acc += w3[:, None] * o3
        nonempty = total > 0
        safe_total = tl.where(nonempty, total, 1.0)
        out = acc / safe_total[:, None]
        tl.store(Out + b * so_b + h * so_h + t[:, None] * so_t + d[None, :], out.to(Out.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
        lse = tl.where(nonempty, tl.log(safe_total) + m, float("-inf"))
        tl.store(LseOut + b * sl_b + h * sl_h + t * sl_t, lse, mask=row_ok)


def merge_triton(outputs, lses):
    """``(out, lse)`` of the parts (see the module docstring); the parts must pass :func:`available`."""
    first = outputs[0]
    batch, heads, rows, d = first.shape
    out = torch.empty((batch, heads, rows, d), dtype=first.dtype, device=first.device)
    lse = torch.empty((batch, heads, rows), dtype=torch.float32, device=first.device)
    if out.numel() == 0:
        lse.fill_(float("-inf"))
        return out, lse
    parts = len(outputs)
    o = list(outputs) + [first] * (MAX_PARTS - parts)  # unused slots: never read (PARTS is a constant)
    ls = list(lses) + [lses[0]] * (MAX_PARTS - parts)
    o_strides = [s for x in o for s in x.stride()[:3]]
    l_strides = [s for x in ls for s in x.stride()]
    block_d = triton.next_power_of_2(d)
    block_t = max(16, min(64, 8192 // block_d))
    _merge_kernel[(triton.cdiv(rows, block_t), batch * heads)](
        *o, *ls, out, lse,
        rows, heads,
        *o_strides, *l_strides,
        *out.stride()[:3], *lse.stride(),
        PARTS=parts, D=d, BLOCK_D=block_d, BLOCK_T=block_t,
        num_warps=4,
    )
    return out, lse
