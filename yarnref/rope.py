r"""Rotary position embedding (RoPE): frequencies, cos/sin tables, the rotation.

Paper: Su, Lu, Pan, Murtadha, Wen, Liu, "RoFormer: Enhanced Transformer with
Rotary Position Embedding", arXiv:2104.09864.

Equations (RoFormer section 3.2):

* Eq. (15): the base frequencies of the ``r/2`` rotation planes,
  :math:`\theta_i = b^{-2i/r}`, ``i = 0 .. r/2 - 1`` (``b`` = ``rope_theta``,
  10000 in the paper; ``r`` = the rotary dimension).
* Eq. (13)-(14): position ``m`` rotates plane ``i`` by the angle
  :math:`m\theta_i`:

  .. math::
     \begin{pmatrix} x'_a \\ x'_b \end{pmatrix} =
     \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\
                     \sin m\theta_i &  \cos m\theta_i \end{pmatrix}
     \begin{pmatrix} x_a \\ x_b \end{pmatrix}

* Eq. (16): :math:`\langle R_m q, R_n k\rangle = \langle q, R_{n-m} k\rangle`,
  so a score depends on the positions only through ``m - n``.

Every scaling method in yarnref (PI, NTK, YaRN, Llama 3, LongRoPE) changes
only the frequency vector :math:`\theta'` and an *attention factor* ``m_att``
multiplied into cos and sin; this module applies whatever it is given.

Conventions
-----------
* Pairing. ``"half"`` (GPT-NeoX, Llama in Hugging Face transformers, vLLM
  ``is_neox_style=True``): plane ``i`` is the pair ``(x[i], x[i + r/2])``.
  ``"interleaved"`` (GPT-J, Meta's complex form, DeepSeek in vLLM/ggml): plane
  ``i`` is ``(x[2i], x[2i+1])``.  ``"interleaved_in_half_out"`` is what
  transformers' DeepSeek-V3 ``apply_rotary_pos_emb_interleave`` does: it reads
  interleaved pairs and writes them back in half-split order (the attention
  scores are the same; the per-tensor outputs are a permutation).
* Sign: counter-clockwise by ``+m theta`` (``a' = a cos - b sin``,
  ``b' = b cos + a sin``), as in every stack.
* Partial rotary: only the first ``r`` of ``head_dim`` features rotate; the rest
  pass through.  The exponent in Eq. (15) uses ``r``, not ``head_dim``.
* A position is a real number (integers in practice; PI makes them fractional).
* Shapes: ``x`` is ``(batch, heads, seq, head_dim)`` (the torch SDPA layout);
  cos/sin are ``(seq, r/2)``, or ``(batch, seq, r/2)`` for per-sequence
  positions; a seq extent of 1 broadcasts (one rotation for every token).
* Precision: float64 by default.  ``precision="float32"`` reproduces what
  transformers and vLLM compute (float32 frequencies, float32 ``p * theta``,
  float32 cos/sin); ``out_precision="bfloat16"`` (or ``"float16"``) adds the
  cast to the activation dtype.  The tables keep ``inv_freq``'s dtype
  (float64 normally) and hold the rounded values, so the difference from the
  exact table can be measured.
"""

from __future__ import annotations

import math

import numpy as np

from .checks import check_rope_shapes as _check_rope_shapes
from .checks import MAX_HEAD_DIM, check_array_like, check_positive_real, finite_float, is_int, check_fits_dtype, check_option, check_positions
from .errors import InputError
from .precision import check_precision, round_to

__all__ = [
    "PAIRINGS",
    "rotary_dim",
    "base_inv_freq",
    "rope_angles",
    "rope_cos_sin",
    "apply_rope",
    "interleaved_to_half",
    "half_to_interleaved",
]

PAIRINGS = ("half", "interleaved", "interleaved_in_half_out")


def rotary_dim(head_dim: int, partial_rotary_factor: float = 1.0) -> int:
    """The number of rotated features, ``int(head_dim * partial_rotary_factor)``.

    This is how transformers and vLLM compute it.  The result must be even and
    positive (an odd rotary dim has no pairing).
    """
    if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)) or not 1 <= head_dim <= MAX_HEAD_DIM:
        raise InputError("head_dim", head_dim, f"an integer in [1, {MAX_HEAD_DIM}]")
    factor = finite_float(partial_rotary_factor)
    if factor is None or not 0.0 < factor <= 1.0:
        raise InputError("partial_rotary_factor", partial_rotary_factor, "a number in (0, 1]")
    r = int(head_dim * factor)
    if r < 2 or r % 2:
        raise InputError(
            "rotary_dim",
            r,
            f"an even number >= 2 (head_dim={head_dim} * partial_rotary_factor={partial_rotary_factor})",
        )
    return r


def base_inv_freq(rotary_dim: int, base: float) -> np.ndarray:
    r"""Eq. (15): :math:`\theta_i = 1 / b^{2i/r}`, shape ``(r/2,)``, float64.

    Computed as ``1 / base ** (2i / r)``, the same expression transformers
    evaluates (in float32 there).
    """
    if not is_int(rotary_dim) or not 2 <= rotary_dim <= MAX_HEAD_DIM or rotary_dim % 2:
        raise InputError("rotary_dim", rotary_dim, f"an even integer in [2, {MAX_HEAD_DIM}]")
    b = finite_float(base)
    if b is None or not b > 1.0:
        raise InputError("base", base, "a finite number > 1 (rope_theta)")
    exponents = np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim  # (r/2,) = 2i/r
    return 1.0 / (b**exponents)


def _as_positions(positions) -> np.ndarray:
    return check_positions("positions", positions)


def _as_inv_freq(inv_freq) -> np.ndarray:
    f = check_array_like("inv_freq", inv_freq, "a non-empty 1-D array of r/2 frequencies")
    if f.dtype == bool or not (np.issubdtype(f.dtype, np.integer) or np.issubdtype(f.dtype, np.floating)):
        raise InputError("inv_freq", f"array of dtype {f.dtype}", "a real 1-D array of r/2 frequencies")
    f = f.astype(np.float64)
    if f.ndim != 1 or f.size == 0:
        raise InputError("inv_freq", f"shape {f.shape}", "a non-empty 1-D array of r/2 frequencies")
    if not np.all(np.isfinite(f)):
        raise InputError("inv_freq", "non-finite values", "finite frequencies")
    return f


def rope_angles(inv_freq, positions, *, precision: str = "float64") -> np.ndarray:
    """The rotation angles ``p * theta_i``, shape ``positions.shape + (r/2,)``.

    With ``precision="float32"`` the frequencies, the positions and the product
    are each rounded to float32, which is what ``position_ids.float() @
    inv_freq.float()`` does in transformers.  An angle at position 1e6 is then
    off by up to half a float32 ulp of 1e6, 0.03 rad.
    """
    check_precision(precision)
    f = _as_inv_freq(inv_freq)
    p = _as_positions(positions)
    with np.errstate(over="ignore", invalid="ignore"):
        if precision == "float64":
            angles = p[..., None] * f  # (..., r/2)
        else:
            angles = round_to(round_to(p, precision)[..., None] * round_to(f, precision), precision)
    if not np.all(np.isfinite(angles)):
        raise InputError(
            "inv_freq", f"frequencies up to {float(np.abs(f).max()):.3g} at positions up to {float(np.abs(p).max()):.3g}",
            f"frequencies whose angles positions * inv_freq are finite in {precision}",
        )
    return angles


def rope_cos_sin(
    inv_freq,
    positions,
    attention_factor: float = 1.0,
    *,
    precision: str = "float64",
    out_precision: str | None = None,
):
    """cos and sin tables, each of shape ``positions.shape + (r/2,)``, times ``attention_factor``.

    ``attention_factor`` is YaRN's / LongRoPE's magnitude ``m_att``; since it
    multiplies both q and k, logits of the rotary features scale by its square.

    ``precision`` is the precision the angles and cos/sin are computed in (see
    :func:`rope_angles`); ``out_precision`` (default: ``precision``) is the one
    the tables are stored in, e.g. ``"bfloat16"`` for transformers' cast to the
    activation dtype.  The tables have ``inv_freq``'s dtype (float64 for the
    float64 frequencies :func:`yarnref.rope_frequencies` returns); their values
    are the rounded ones whatever that dtype is.
    """
    check_precision(precision)
    out_precision = precision if out_precision is None else check_precision(out_precision, "out_precision")
    check_positive_real("attention_factor", attention_factor)
    angles = rope_angles(inv_freq, positions, precision=precision)  # (..., r/2)
    out_dtype = _table_dtype(inv_freq)
    with np.errstate(over="ignore"):
        m = round_to(float(attention_factor), precision)
        cos = round_to(round_to(round_to(np.cos(angles), precision) * m, precision), out_precision)
        sin = round_to(round_to(round_to(np.sin(angles), precision) * m, precision), out_precision)
        cos, sin = cos.astype(out_dtype, copy=False), sin.astype(out_dtype, copy=False)
    if not (np.all(np.isfinite(cos)) and np.all(np.isfinite(sin))):
        raise InputError("attention_factor", attention_factor,
                         f"a factor whose tables fit in {precision}, {out_precision} and {out_dtype}")
    return cos, sin


def _table_dtype(inv_freq) -> np.dtype:
    """The dtype of the cos/sin tables: ``inv_freq``'s if it is a float array, else float64."""
    dtype = getattr(inv_freq, "dtype", None)
    if dtype is not None and np.issubdtype(dtype, np.floating):
        return np.dtype(dtype)
    return np.dtype(np.float64)


def apply_rope(x, cos, sin, pairing: str = "half"):
    """Rotate the first ``rotary_dim = 2 * cos.shape[-1]`` features of ``x``; pass the rest.

    ``x``: ``(batch, heads, seq, head_dim)``; ``cos``, ``sin``: ``(seq, r/2)``
    or ``(batch, seq, r/2)``, as returned by :func:`rope_cos_sin` (already
    multiplied by the attention factor); a table of one row (``seq = 1``)
    rotates every position by the same angles (NumPy broadcasting).  The rotation is computed in float64
    and returned in ``x``'s dtype.
    """
    check_option("pairing", pairing, PAIRINGS)
    x = check_array_like("x", x, "a floating-point array (batch, heads, seq, head_dim)")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError("x", f"dtype {x.dtype}", "a floating-point array")
    if not np.all(np.isfinite(x)):
        raise InputError("x", "non-finite values", "finite values")
    cos, sin = (_as_table(name, t) for name, t in (("cos", cos), ("sin", sin)))
    r = _check_rope_shapes(x, cos, sin)
    half = r // 2
    if cos.ndim == 3:  # (batch, seq, r/2) -> (batch, 1, seq, r/2): shared by the heads
        cos, sin = cos[:, None], sin[:, None]
    xf = x.astype(np.float64)
    rot, rest = xf[..., :r], xf[..., r:]
    if pairing == "half":
        a, b = rot[..., :half], rot[..., half:]  # plane i = (x[i], x[i + r/2])
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]  # plane i = (x[2i], x[2i + 1])
    with np.errstate(over="ignore", invalid="ignore"):
        a_new = a * cos - b * sin
        b_new = b * cos + a * sin
    if not (np.all(np.isfinite(a_new)) and np.all(np.isfinite(b_new))):
        raise InputError("cos", f"tables up to {max(np.abs(cos).max(), np.abs(sin).max()):.3g}",
                         "tables whose rotation of x stays finite in float64")
    if pairing == "interleaved":
        out = np.stack([a_new, b_new], axis=-1).reshape(rot.shape)  # (..., r/2, 2) -> (..., r)
    else:  # "half", and "interleaved_in_half_out" (reads interleaved, writes half-split)
        out = np.concatenate([a_new, b_new], axis=-1)
    return check_fits_dtype("x", np.concatenate([out, rest], axis=-1), x.dtype)


def _as_table(name: str, table) -> np.ndarray:
    """A cos or sin table as float64, finite."""
    t = check_array_like(name, table, "a real array (seq, r/2) or (batch, seq, r/2)")
    if t.dtype == bool or not (np.issubdtype(t.dtype, np.integer) or np.issubdtype(t.dtype, np.floating)):
        raise InputError(name, f"array of dtype {t.dtype}", "a real array (seq, r/2) or (batch, seq, r/2)")
    t = t.astype(np.float64)
    if not np.all(np.isfinite(t)):
        raise InputError(name, "non-finite values", "finite values")
    return t


def interleaved_to_half(x, rotary_dim: int):
    """Permute the first ``rotary_dim`` features from interleaved to half-split order.

    Element ``2i`` moves to ``i`` and ``2i+1`` to ``i + r/2``.  With this
    permutation P, interleaved RoPE of x equals ``P^-1 half(P x)``; it is the
    permutation transformers' Llama converter applies to the rows of Wq and Wk.
    """
    x = check_array_like("x", x, "an array whose last dimension holds the features")
    r = _check_rotary_dim_for(x, rotary_dim)
    return np.concatenate([x[..., 0:r:2], x[..., 1:r:2], x[..., r:]], axis=-1)


def half_to_interleaved(x, rotary_dim: int):
    """The inverse of :func:`interleaved_to_half`."""
    x = check_array_like("x", x, "an array whose last dimension holds the features")
    r = _check_rotary_dim_for(x, rotary_dim)
    rot = x[..., :r]
    out = np.stack([rot[..., : r // 2], rot[..., r // 2 :]], axis=-1).reshape(rot.shape)  # (..., r/2, 2) -> (..., r)
    return np.concatenate([out, x[..., r:]], axis=-1)


def _check_rotary_dim_for(x: np.ndarray, rotary_dim) -> int:
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, (int, np.integer)) or rotary_dim < 2 or rotary_dim % 2:
        raise InputError("rotary_dim", rotary_dim, "an even integer >= 2")
    if x.ndim < 1 or rotary_dim > x.shape[-1]:
        raise InputError("rotary_dim", rotary_dim, f"at most the last dimension of x, shape {x.shape}")
    return int(rotary_dim)
