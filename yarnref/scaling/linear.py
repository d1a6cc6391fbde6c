r"""Linear scaling: Position Interpolation (PI).

Paper: Chen, Wong, Chen, Tian, "Extending Context Window of Large Language
Models via Positional Interpolation", arXiv:2306.15595 (2023).  The same trick
was published concurrently by kaiokendev ("SuperHOT", 2k -> 8k).

Equations (PI section 2.2):

* Eq. (4): a model pre-trained on ``L`` positions is run on ``L' > L``
  positions by *interpolating* the positions instead of extrapolating them,

  .. math::  f'(\mathbf{x}, m) = f\left(\mathbf{x}, \frac{m L}{L'}\right),

  so with the scale :math:`s = L'/L` position ``m`` is rotated as if it were
  position ``m / s``.
* Since a RoPE angle is :math:`m\,\theta_i` (RoFormer Eq. 15,
  :math:`\theta_i = b^{-2i/r}`), dividing the position by ``s`` is the same as
  dividing every frequency by ``s``:

  .. math::  \theta'_i = \theta_i / s, \qquad m_{att} = 1.

Conventions
-----------
* ``factor`` is ``s`` (``rope_scaling.factor`` in a Hugging Face config).
* transformers (``_compute_linear_scaling_rope_parameters``) divides the
  *inverse frequencies*; the YaRN authors' ``LlamaLinearScaledRotaryEmbedding``
  and vLLM divide the *positions* (``t / s``).  Same mathematics, different
  float rounding: :func:`linear_frequencies` follows transformers (the
  default), :func:`interpolate_positions` gives the positions form.
* Everything is float64; ``inv_freq`` has shape ``(rotary_dim/2,)``.
* No attention factor (``m_att = 1``).
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from ..errors import InputError
from ..rope import base_inv_freq

__all__ = ["linear_frequencies", "interpolate_positions"]


def _real(name: str, value, *, minimum: float | None = None, strict: bool = False, allow_none: bool = False):
    """``float(value)`` if it is a finite real number (not a bool) above ``minimum``, else InputError.

    ``strict=True`` demands ``value > minimum``, otherwise ``value >= minimum``.
    Shared by the scaling modules to check their scalar parameters.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise InputError(name, value, "a finite real number" + (f" {'>' if strict else '>='} {minimum}" if minimum is not None else ""))
    value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise InputError(name, value, f"a number {'>' if strict else '>='} {minimum}")
    return value


def linear_frequencies(rotary_dim: int, base: float, factor: float) -> tuple[np.ndarray, float]:
    r"""PI frequencies :math:`\theta'_i = \theta_i / s`, shape ``(rotary_dim/2,)``, and ``m_att = 1.0``.

    ``factor`` (``s``) may be any positive number here; ``s > 1`` stretches
    the context (the usual case).  Model configs with ``factor < 1`` are
    rejected by :func:`yarnref.config.parse_rope_config`.
    """
    s = _real("factor", factor, minimum=0.0, strict=True)
    inv_freq = base_inv_freq(rotary_dim, base)  # (r/2,)  theta_i = b^(-2i/r)
    return inv_freq / s, 1.0


def interpolate_positions(positions, factor: float) -> np.ndarray:
    """PI in its positions form (Eq. 4): ``positions / factor`` as float64.

    This is what the YaRN authors' code and vLLM compute (``t / s``) before
    multiplying by the unscaled frequencies.
    """
    s = _real("factor", factor, minimum=0.0, strict=True)
    p = np.asarray(positions)
    if p.dtype == bool or not (np.issubdtype(p.dtype, np.integer) or np.issubdtype(p.dtype, np.floating)):
        raise InputError("positions", f"array of dtype {p.dtype}", "an integer or real array")
    return p.astype(np.float64) / s
