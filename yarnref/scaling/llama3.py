r"""The Llama 3.1 frequency schedule (``rope_type: "llama3"``).

Source: Meta, "The Llama 3 Herd of Models", arXiv:2407.21783 (the schedule is
not written as an equation in the paper; it is defined by Meta's reference code,
``apply_scaling`` in ``llama_models/llama3/reference_impl/model.py``, and
reproduced by transformers' ``_compute_llama3_parameters``, vLLM's
``Llama3RotaryEmbedding`` and llama.cpp's converter).  It is NTK-by-parts (YaRN
Def. 2, arXiv:2309.00071) with the ramp written in wavelengths and no
attention factor.

Equations (notation: ``s = factor``, ``L = original_max_position_embeddings``,
``lf = low_freq_factor``, ``hf = high_freq_factor``,
:math:`\theta_i = b^{-2i/r}`, :math:`\lambda_i = 2\pi/\theta_i`):

.. math::

   \lambda_{hi} = L / hf, \qquad \lambda_{lo} = L / lf,

   \theta'_i = \begin{cases}
      \theta_i & \lambda_i < \lambda_{hi} \quad\text{(fast pairs: kept)}\\
      \theta_i / s & \lambda_i > \lambda_{lo} \quad\text{(slow pairs: interpolated)}\\
      (1 - \kappa_i)\,\theta_i / s + \kappa_i\,\theta_i & \text{otherwise,}\quad
      \kappa_i = \dfrac{L/\lambda_i - lf}{hf - lf}
   \end{cases}

and :math:`m_{att} = 1`.  :math:`\kappa` is 1 at :math:`\lambda_{hi}` and 0 at
:math:`\lambda_{lo}`, so the schedule is continuous and the choice of ``<``
versus ``<=`` at the boundaries does not change any value.  Llama 3.1 uses
``s = 8, lf = 1, hf = 4, L = 8192``; Llama 3.2 ``s = 32``.

Conventions
-----------
* ``lf == hf`` (Llama 4 Scout: both 1.0): the middle band is empty except at
  the single wavelength :math:`\lambda = L/lf`; transformers computes
  :math:`\kappa` with a zero denominator and masks the result away, vLLM sets
  :math:`\kappa = 0`.  We follow vLLM (:math:`\kappa = 0`): the same values
  with no NaN and no floating-point warning.  Meta's ``apply_scaling`` and
  llama.cpp's converter assert ``lf != hf`` instead.
* ``hf < lf`` is computed exactly as transformers does (slow rule first, then
  the middle band, which is then empty), not repaired.
* llama.cpp stores the per-pair *divisors* :math:`\theta_i/\theta'_i` as the
  ``rope_freqs`` tensor: :func:`llama3_freq_divisors`.
* float64; ``inv_freq`` has shape ``(r/2,)``.
"""

from __future__ import annotations

import math

import numpy as np

from ..rope import base_inv_freq
from .linear import _real

__all__ = ["llama3_frequencies", "llama3_freq_divisors"]


def llama3_frequencies(
    rotary_dim: int,
    base: float,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
) -> tuple[np.ndarray, float]:
    """Llama 3 inverse frequencies, shape ``(r/2,)``, and ``m_att = 1.0``."""
    s = _real("factor", factor, minimum=0.0, strict=True)
    lf = _real("low_freq_factor", low_freq_factor, minimum=0.0, strict=True)
    hf = _real("high_freq_factor", high_freq_factor, minimum=0.0, strict=True)
    L = _real("original_max_position_embeddings", original_max_position_embeddings, minimum=0.0, strict=True)
    theta = base_inv_freq(rotary_dim, base)  # (r/2,)
    low_freq_wavelen = L / lf  # lambda_lo: slower than this -> interpolate
    high_freq_wavelen = L / hf  # lambda_hi: faster than this -> keep
    wavelen = 2 * math.pi / theta  # (r/2,) lambda_i

    # Slow pairs divided by s, everything else kept (for now).
    inv_freq = np.where(wavelen > low_freq_wavelen, theta / s, theta)
    # The middle band: neither faster than lambda_hi nor slower than lambda_lo.
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    kappa = np.zeros_like(theta)
    if hf != lf:  # lf == hf: the band is (at most) one wavelength; kappa = 0 there (vLLM)
        kappa[is_medium] = (L / wavelen[is_medium] - lf) / (hf - lf)
    smoothed = (1 - kappa) * inv_freq / s + kappa * inv_freq
    return np.where(is_medium, smoothed, inv_freq), 1.0


def llama3_freq_divisors(
    rotary_dim: int,
    base: float,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
) -> np.ndarray:
    r"""Per-pair divisors :math:`\theta_i / \theta'_i` (1, ``s``, or in between), shape ``(r/2,)``.

    This is what llama.cpp's converter writes as the ``rope_freqs`` tensor and
    ggml divides each pair's frequency by.
    """
    inv_freq, _ = llama3_frequencies(rotary_dim, base, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
    return base_inv_freq(rotary_dim, base) / inv_freq
