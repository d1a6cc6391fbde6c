r"""RoPE on the GPU: cos/sin tables and the rotation (spec: :mod:`yarnref.rope`).

Paper: Su et al., "RoFormer: Enhanced Transformer with Rotary Position
Embedding", arXiv:2104.09864, Eq. (13)-(15): plane ``i`` at position ``m`` is
rotated by :math:`m\theta_i`, :math:`a' = a\cos - b\sin`, :math:`b' = b\cos + a\sin`.

Conventions (the spec's; see :mod:`yarnref.rope` for the full block)
-----------
* Pairings ``"half"`` (plane i = ``(x[i], x[i + r/2])``), ``"interleaved"``
  (``(x[2i], x[2i+1])``) and ``"interleaved_in_half_out"`` (reads interleaved
  pairs, writes them half-split).  Features past ``r = 2 * cos.shape[-1]``
  pass through.
* Tables: ``precision="float64"`` computes in float64; ``"float32"`` computes
  natively in float32 on the device (float32 angles ``p * theta``, float32
  ``cos``/``sin``, as transformers and vLLM do on a GPU: CUDA's ``cosf`` is
  within 2 ulp of the correctly rounded value the spec uses);
  ``"float16"``/``"bfloat16"`` are emulated in float64 with a rounding after
  every step, exactly like the spec.  ``out_precision`` then rounds the
  stored values.  The tables have ``inv_freq``'s float dtype (else float64).
* The rotation is computed in float64 for float64 ``x`` and in float32
  otherwise, and written in ``x``'s dtype.  For float32, float16 and
  bfloat16 ``x`` it is yarnref's Triton kernel
  (:mod:`yarnref_torch.rope_triton`, one read and one write of ``x``) where
  torch and Triton are installed (:mod:`.kernels`), else CuPy array code.
"""

from __future__ import annotations

import numpy as np

from yarnref.precision import round_to as spec_round_to

from . import kernels
from ._arrays import dtype_name, round_to, scalar, written


def cos_sin(xp, inv_freq, positions, attention_factor: float, precision: str, out_precision: str, out_dtype):
    """cos and sin tables of shape ``positions.shape + (r/2,)``.

    ``inv_freq``: float64 device array ``(r/2,)``; ``positions``: float64
    device array.  The arithmetic and rounding order is the spec's
    (:func:`yarnref.rope.rope_cos_sin`).
    """
    if precision == "float32":  # native float32 on the device
        work = np.float32
        f = inv_freq.astype(work)
        p = positions.astype(work)
        angles = p[..., None] * f  # (..., r/2), one float32 rounding
        m = scalar(attention_factor, work)
        cos = xp.cos(angles) * m
        sin = xp.sin(angles) * m
    else:  # float64, or float16/bfloat16 emulated in float64 with the spec's roundings
        work = np.float64
        f = round_to(xp, inv_freq, precision)
        p = round_to(xp, positions, precision)
        angles = round_to(xp, p[..., None] * f, precision)  # (..., r/2)
        # a host scalar (the spec's round_to gives bfloat16 0-d input back as shape (1,))
        m = scalar(float(np.ravel(spec_round_to(float(attention_factor), precision))[0]), work)
        cos = round_to(xp, round_to(xp, xp.cos(angles), precision) * m, precision)
        sin = round_to(xp, round_to(xp, xp.sin(angles), precision) * m, precision)
    cos = round_to(xp, cos, out_precision).astype(out_dtype, copy=False)
    sin = round_to(xp, sin, out_precision).astype(out_dtype, copy=False)
    return cos, sin


def apply_rope(xp, x, cos, sin, rotary_dim: int, pairing: str, out=None):
    """Rotate the first ``rotary_dim`` features of ``x`` (already validated); pass the rest.

    ``x``: ``(batch, heads, seq, head_dim)``; ``cos``/``sin``: ``(seq, r/2)``
    or ``(batch, seq, r/2)``.  ``out``: an array of x's shape and dtype to
    write into (a view too), or None for a new one.
    """
    triton = kernels.triton_kernels(xp)
    if triton is not None and x.ndim == 4 and x.size and dtype_name(x.dtype) in ("float32", "float16", "bfloat16"):
        rotated = _rotate_direct(xp, triton, x, cos, sin, pairing, out)
        if rotated is not None:
            return rotated
        torch = triton["torch"]
        with kernels.on_cupy_stream(xp, torch):  # (batch, heads, seq, head_dim) in, a new one of x's dtype out
            t = triton["rope"].rotate_triton(kernels.to_torch(torch, x), kernels.to_torch(torch, cos), kernels.to_torch(torch, sin), pairing)
            return written(kernels.to_cupy(xp, t), out)
    return written(_rotate_arrays(xp, x, cos, sin, rotary_dim, pairing), out)


def _rotate_arrays(xp, x, cos, sin, rotary_dim: int, pairing: str):
    """The rotation as CuPy array arithmetic (float64 inputs, the NumPy shim, no Triton)."""
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    r, half = rotary_dim, rotary_dim // 2
    cos = cos.astype(cdt, copy=False)
    sin = sin.astype(cdt, copy=False)
    if cos.ndim == 3:  # (batch, seq, r/2) -> (batch, 1, seq, r/2): shared by the heads
        cos, sin = cos[:, None], sin[:, None]
    rot = x[..., :r].astype(cdt)
    if pairing == "half":
        a, b = rot[..., :half], rot[..., half:]  # plane i = (x[i], x[i + r/2])
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]  # plane i = (x[2i], x[2i + 1])
    a_new = a * cos - b * sin
    b_new = b * cos + a * sin
    out = xp.empty_like(x)
    if pairing == "interleaved":
        out[..., 0:r:2] = a_new
        out[..., 1:r:2] = b_new
    else:  # "half", and "interleaved_in_half_out" (reads interleaved, writes half-split)
        out[..., :half] = a_new
        out[..., half:r] = b_new
    out[..., r:] = x[..., r:]
    return out


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


#: Whether the Triton RoPE kernel takes CuPy arrays directly (None: not tried yet in this process).
_DIRECT: dict[str, bool] = {}


def _rotate_direct(xp, triton, x, cos, sin, pairing: str, out=None):
    """The Triton RoPE kernel launched on the CuPy arrays themselves (:class:`.kernels.DevicePointer`), or None.

    The same kernel and launch configuration as
    :func:`yarnref_torch.rope_triton.rotate_triton`, with CuPy allocating the
    output and the float32 tables: no DLPack conversion per argument and no
    torch tensor, which at 8K tokens is most of a call's time.  None where
    that module has no such kernel, or if the first direct launch in this
    process was refused (then the DLPack route serves from there on).
    """
    rope_mod = triton["rope"]
    kernel, codes = getattr(rope_mod, "_rope_kernel", None), getattr(rope_mod, "_PAIRING_CODE", None)
    if kernel is None or codes is None or pairing not in codes or _DIRECT.get("ok") is False:
        return None
    batch, heads, seq, head_dim = x.shape
    half = cos.shape[-1]
    # cos/sin as float32 and contiguous, read as (batch or 1, seq or 1, r/2); broadcast extents get stride 0.
    # (No reshape: a contiguous (seq, r/2), (batch, seq, r/2) or (batch, 1, seq, r/2) table already
    # has that layout, and each CuPy view costs microseconds on a call this short.)
    tables = []
    for table in (cos, sin if sin.shape == cos.shape else sin.reshape(cos.shape)):
        if table.dtype != np.float32:
            table = table.astype(np.float32)
        if not table.flags.c_contiguous:
            table = xp.ascontiguousarray(table)
        tables.append(table)
    cos3, sin3 = tables
    n_batch = cos.shape[0] if cos.ndim >= 3 else 1
    sc_b = 0 if n_batch == 1 else cos3.size // n_batch
    sc_s = 0 if cos.shape[-2] == 1 else half
    if out is None:
        out = xp.empty((batch, heads, seq, head_dim), dtype=x.dtype)
    elif out.strides[-1] != out.itemsize:  # the kernel writes the features with stride 1
        return None
    item = x.itemsize
    x_strides = tuple(st // item for st in x.strides)  # CuPy strides are in bytes, Triton's in elements
    out_strides = tuple(st // item for st in out.strides)
    tail = head_dim - 2 * half
    block_h = min(_next_power_of_2(heads), max(1, 4096 // _next_power_of_2(head_dim)))
    ptr = kernels.DevicePointer
    args = (ptr(x), ptr(cos3), ptr(sin3), ptr(out), heads, seq, *x_strides, sc_b, sc_s, *out_strides[:3])
    meta = dict(
        HALF=half, BLOCK_HALF=_next_power_of_2(half), TAIL=tail, BLOCK_TAIL=_next_power_of_2(max(tail, 1)),
        PAIRING=codes[pairing], BLOCK_H=block_h, num_warps=4,
    )
    with kernels.on_cupy_stream(xp, triton["torch"]):
        if "ok" in _DIRECT:
            kernel[(batch * seq,)](*args, **meta)
            return out
        try:  # the first launch: Triton's argument handling for non-torch pointers is checked once
            kernel[(batch * seq,)](*args, **meta)
        except Exception:  # noqa: BLE001 - whatever Triton refuses, the DLPack route serves
            _DIRECT["ok"] = False
            return None
        _DIRECT["ok"] = True
        return out
