r"""The RoPE rotation as one Triton kernel (CUDA): one read and one write of ``x``.

Paper: Su et al., RoFormer, arXiv:2104.09864, Eq. (13)-(14): plane ``i`` of
position ``m`` turns by :math:`m\theta_i`,
:math:`(a, b) \mapsto (a\cos - b\sin,\; b\cos + a\sin)`.

The eager torch rotation (:func:`yarnref_torch.rope.rotate`) makes about ten
passes over ``x`` (casts, slices, products, concatenations) and runs at about
0.2 TB/s on an H100; the rotation is memory-bound, so one pass is the whole
game.  The layout follows the fast peers (FlashInfer's ``pos_enc.cuh``): one
program per token, which loads that token's cos/sin row once and walks the
heads in tiles of ``BLOCK_H``, computing in float32 and storing in ``x``'s
dtype; the features past the rotary dimension are copied through.

Conventions
-----------
Those of :mod:`yarnref.rope`: ``x`` ``(batch, heads, seq, head_dim)`` with any
strides; cos/sin float32, ``(seq, r/2)``, ``(1 | batch, seq, r/2)`` or with a
seq extent of 1 (broadcast over the tokens, as DCA's inter-chunk query
position is); pairings ``"half"``, ``"interleaved"``,
``"interleaved_in_half_out"``.  The result is a new contiguous tensor of
``x``'s dtype (float32, float16 or bfloat16).
"""

from __future__ import annotations

import torch

try:  # optional: the eager rotation serves wherever Triton is missing
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["available", "rotate_triton"]

_PAIRING_CODE = {"half": 0, "interleaved": 1, "interleaved_in_half_out": 2}


def available(x: torch.Tensor) -> bool:
    """True if the kernel can rotate ``x``: a CUDA tensor of float32/float16/bfloat16 and Triton installed."""
    return triton is not None and x.is_cuda and x.dtype in (torch.float32, torch.float16, torch.bfloat16)


if triton is not None:

    # The lengths and the strides that follow them change from call to call (every DCA segment and prefill
    # chunk has its own): not specialised on, so one compiled variant serves them all (sx_d, the unit
    # stride of the features, keeps its specialisation).
    @triton.jit(do_not_specialize=("heads", "seq", "sx_b", "sx_h", "sx_s", "sc_b", "sc_s", "so_b", "so_h", "so_s"))
    def _rope_kernel(
        x_ptr, cos_ptr, sin_ptr, out_ptr,
        heads, seq,
        sx_b, sx_h, sx_s, sx_d,
        sc_b, sc_s,
        so_b, so_h, so_s,
        HALF: tl.constexpr, BLOCK_HALF: tl.constexpr,
        TAIL: tl.constexpr, BLOCK_TAIL: tl.constexpr,
        PAIRING: tl.constexpr, BLOCK_H: tl.constexpr,
    ):
        # Offsets in 64 bits: at 1M tokens a head starts 2**27 elements into x, and
        # h * sx_h passes 2**31 from the 17th head on (int32 products wrap silently).
        token = tl.program_id(0).to(tl.int64)  # b * seq + s
        b = token // seq
        s = token % seq
        i = tl.arange(0, BLOCK_HALF)
        i_ok = i < HALF
        c = tl.load(cos_ptr + b * sc_b + s * sc_s + i, mask=i_ok, other=0.0).to(tl.float32)  # cos(m theta_i)
        sn = tl.load(sin_ptr + b * sc_b + s * sc_s + i, mask=i_ok, other=0.0).to(tl.float32)  # sin(m theta_i)
        if PAIRING == 0:  # plane i = (x[i], x[i + r/2])
            in_a = i
            in_b = i + HALF
        else:  # plane i = (x[2i], x[2i + 1])
            in_a = 2 * i
            in_b = 2 * i + 1
        if PAIRING == 1:  # written back interleaved
            out_a = 2 * i
            out_b = 2 * i + 1
        else:  # written half-split
            out_a = i
            out_b = i + HALF
        t = tl.arange(0, BLOCK_TAIL)
        t_ok = t < TAIL
        for h0 in range(0, heads, BLOCK_H):
            h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)
            h_ok = h < heads
            src = x_ptr + b * sx_b + h[:, None] * sx_h + s * sx_s  # (BLOCK_H, 1) row starts
            dst = out_ptr + b * so_b + h[:, None] * so_h + s * so_s
            ok = h_ok[:, None] & i_ok[None, :]
            xa = tl.load(src + in_a[None, :] * sx_d, mask=ok, other=0.0).to(tl.float32)
            xb = tl.load(src + in_b[None, :] * sx_d, mask=ok, other=0.0).to(tl.float32)
            ya = xa * c[None, :] - xb * sn[None, :]  # a' = a cos - b sin
            yb = xb * c[None, :] + xa * sn[None, :]  # b' = b cos + a sin
            tl.store(dst + out_a[None, :], ya.to(out_ptr.dtype.element_ty), mask=ok)
            tl.store(dst + out_b[None, :], yb.to(out_ptr.dtype.element_ty), mask=ok)
            if TAIL > 0:  # the features past the rotary dimension pass through
                tail_ok = h_ok[:, None] & t_ok[None, :]
                rest = tl.load(src + (2 * HALF + t)[None, :] * sx_d, mask=tail_ok, other=0.0)
                tl.store(dst + (2 * HALF + t)[None, :], rest, mask=tail_ok)


def rotate_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` features of ``x`` (see the module docstring); no validation here.

    ``out``: where to write (x's shape and dtype, any strides with a unit last one, e.g. a slice of a
    larger buffer), instead of a new tensor.
    """
    batch, heads, seq, head_dim = x.shape
    half = cos.shape[-1]
    # cos/sin as (batch or 1, seq or 1, r/2) float32 with a unit last stride; broadcast extents get stride 0.
    cos3 = cos.reshape((1,) * (3 - cos.ndim) + tuple(cos.shape)) if cos.ndim < 3 else cos.reshape(cos.shape[0], cos.shape[-2], half)
    sin3 = sin.reshape(cos3.shape)
    cos3, sin3 = cos3.to(torch.float32).contiguous(), sin3.to(torch.float32).contiguous()
    sc_b = 0 if cos3.shape[0] == 1 else cos3.stride(0)
    sc_s = 0 if cos3.shape[1] == 1 else cos3.stride(1)
    if out is None:
        out = torch.empty((batch, heads, seq, head_dim), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    tail = head_dim - 2 * half
    block_h = min(triton.next_power_of_2(heads), max(1, 4096 // triton.next_power_of_2(head_dim)))
    _rope_kernel[(batch * seq,)](
        x, cos3, sin3, out,
        heads, seq,
        *x.stride(),
        sc_b, sc_s,
        out.stride(0), out.stride(1), out.stride(2),
        HALF=half, BLOCK_HALF=triton.next_power_of_2(half),
        TAIL=tail, BLOCK_TAIL=triton.next_power_of_2(max(tail, 1)),
        PAIRING=_PAIRING_CODE[pairing], BLOCK_H=block_h,
        num_warps=4,
    )
    return out
