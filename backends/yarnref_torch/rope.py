r"""RoPE on torch: cos/sin tables and the rotation (spec: :mod:`yarnref.rope`).

Paper: Su et al., "RoFormer: Enhanced Transformer with Rotary Position
Embedding", arXiv:2104.09864, Eq. (13)-(15): plane ``i`` of position ``m`` is
rotated by :math:`m\theta_i`,
:math:`(a, b) \mapsto (a\cos m\theta_i - b\sin m\theta_i,\; b\cos m\theta_i + a\sin m\theta_i)`.

Conventions
-----------
Those of :mod:`yarnref.rope`: pairings ``"half"``, ``"interleaved"`` and
``"interleaved_in_half_out"``; partial rotary (only the first
``r = 2 * cos.shape[-1]`` features rotate); ``x`` is ``(batch, heads, seq,
head_dim)``; cos/sin are ``(seq, r/2)`` or ``(batch, seq, r/2)``, or with a
seq extent of 1 (broadcast over the tokens).

Precision.  :func:`rope_cos_sin` computes natively in ``precision``: with
``"float32"`` the positions and the frequencies are float32 tensors and
``p * theta``, ``cos`` and ``sin`` are float32 operations, which is what
transformers' ``position_ids.float() @ inv_freq.float()`` does; with
``"bfloat16"``/``"float16"`` each operation is rounded to that dtype.
``out_precision`` is a real cast.  The tables have ``inv_freq``'s floating
dtype (float64 for an integer ``inv_freq``), like the spec.  The only
differences from the spec are in how cos/sin of an already rounded angle are
evaluated (the spec evaluates them in float64 and rounds; torch's float32
``cos`` is within an ulp or two), never in the angle itself.

:func:`apply_rope` computes in float64 for a float64 ``x`` and in float32
otherwise (the tables are read in that dtype), and returns ``x``'s dtype.  On
CUDA (float32/float16/bfloat16) the rotation is one Triton kernel
(:mod:`yarnref_torch.rope_triton`) when Triton is installed.
"""

from __future__ import annotations

import torch

from yarnref.checks import check_option, check_position_range, check_positive_real, check_rope_shapes
from yarnref.errors import InputError
from yarnref.precision import check_precision
from yarnref.rope import PAIRINGS

from ._arrays import ArrayConverter, check_float, compute_dtype, torch_dtype

__all__ = ["rope_cos_sin", "apply_rope", "rotate"]


def rope_cos_sin(conv: ArrayConverter, inv_freq, positions, attention_factor=1.0, *, precision="float64", out_precision=None):
    """cos and sin tables ``positions.shape + (r/2,)`` times ``attention_factor``; see :func:`yarnref.rope.rope_cos_sin`."""
    check_precision(precision)
    out_precision = precision if out_precision is None else check_precision(out_precision, "out_precision")
    m = check_positive_real("attention_factor", attention_factor)
    f = conv.tensor(inv_freq, "inv_freq")
    if f.dtype == torch.bool or f.is_complex():
        raise InputError("inv_freq", f"dtype {f.dtype}", "a real array of frequencies")
    if f.ndim != 1 or f.numel() == 0:
        raise InputError("inv_freq", f"shape {tuple(f.shape)}", "a non-empty 1-D array of r/2 frequencies")
    p = conv.tensor(positions, "positions")
    if p.dtype == torch.bool or p.is_complex():
        raise InputError("positions", f"array of dtype {p.dtype}", "an integer or real array")
    out_dtype = f.dtype if f.is_floating_point() else torch.float64

    work = torch_dtype(precision)
    # Each step is one operation in `work`, rounded once, as the spec's round_to chain.
    p64 = p.to(torch.float64)
    p_w = p64.to(work)  # positions as the stack holds them (int -> float64 -> work, like the spec)
    f_w = f.to(torch.float64).to(work)
    angles = p_w[..., None] * f_w  # (..., r/2) = p * theta_i, in `work`
    m_w = torch.full((), m, dtype=torch.float64, device=conv.device).to(work)  # made on the device: no host copy
    cos = torch.cos(angles) * m_w
    sin = torch.sin(angles) * m_w
    out = torch_dtype(out_precision)
    cos, sin = cos.to(out).to(out_dtype), sin.to(out).to(out_dtype)
    # The checks that read values, read back together (one synchronisation, after the work is queued;
    # nothing is returned before they pass): finite frequencies and positions, the positions' range,
    # finite tables.
    no_positions = p.numel() == 0
    flags = torch.stack([
        torch.isfinite(f).all().to(torch.float64),
        torch.isfinite(p64).all().to(torch.float64) if not no_positions else torch.ones((), dtype=torch.float64, device=p.device),
        p64.abs().amax() if not no_positions else torch.zeros((), dtype=torch.float64, device=p.device),
        (torch.isfinite(cos).all() & torch.isfinite(sin).all()).to(torch.float64),
    ])
    finite_freqs, finite_positions, largest_position, finite_tables = flags.tolist()
    if not finite_freqs:
        raise InputError("inv_freq", "non-finite values", "finite frequencies")
    if not finite_positions:
        raise InputError("positions", "non-finite values", "finite positions")
    check_position_range("positions", largest_position)
    if not finite_tables:  # huge frequencies or factor: refused
        raise InputError("inv_freq", "frequencies or attention_factor whose tables overflow",
                         f"values whose angles and tables are finite in {precision} and {out_precision}")
    return cos, sin


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """The rotation of :func:`apply_rope` on tensors already checked; no validation.

    ``cos``/``sin`` are ``(seq, r/2)`` or ``(batch, 1, seq, r/2)`` (or anything
    broadcasting against ``x[..., :r/2]``), in the compute dtype.  ``out``: a
    tensor of x's shape and dtype (a slice of a larger buffer, unit last
    stride) to write the result into; it is returned.
    """
    from . import rope_triton

    if rope_triton.available(x):  # CUDA: one fused pass over x
        return rope_triton.rotate_triton(x, cos, sin, pairing, out=out)
    if out is not None:
        out.copy_(rotate(x, cos, sin, pairing))
        return out
    r = 2 * cos.shape[-1]
    half = r // 2
    cdt = compute_dtype(x.dtype)
    rot = x[..., :r].to(cdt)
    if pairing == "half":
        a, b = rot[..., :half], rot[..., half:]  # plane i = (x[i], x[i + r/2])
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]  # plane i = (x[2i], x[2i + 1])
    a_new = a * cos - b * sin  # a' = a cos(m theta) - b sin(m theta)
    b_new = b * cos + a * sin  # b' = b cos(m theta) + a sin(m theta)
    if pairing == "interleaved":
        out = torch.stack([a_new, b_new], dim=-1).reshape(rot.shape)  # (..., r/2, 2) -> (..., r)
    else:  # "half", and "interleaved_in_half_out" (reads interleaved, writes half-split)
        out = torch.cat([a_new, b_new], dim=-1)
    if r == x.shape[-1]:
        return out.to(x.dtype)
    return torch.cat([out.to(x.dtype), x[..., r:]], dim=-1)  # the tail passes through untouched


def apply_rope(conv: ArrayConverter, x, cos, sin, pairing="half"):
    """Rotate the first ``2 * cos.shape[-1]`` features of ``x``; see :func:`yarnref.rope.apply_rope`."""
    check_option("pairing", pairing, PAIRINGS)
    x = check_float("x", conv.tensor(x, "x"))
    cos = conv.tensor(cos, "cos")
    sin = conv.tensor(sin, "sin")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dtype == torch.bool or t.is_complex():
            raise InputError(name, f"dtype {t.dtype}", "a real array")
    check_rope_shapes(x, cos, sin)
    cdt = compute_dtype(x.dtype)
    cos, sin = cos.to(cdt), sin.to(cdt)
    if cos.ndim == 3:  # (batch, seq, r/2) -> (batch, 1, seq, r/2): shared by the heads
        cos, sin = cos[:, None], sin[:, None]
    return rotate(x, cos, sin, pairing)
