r"""Proportional RoPE (transformers' ``rope_type: "proportional"``, Gemma 4).

Source: transformers 5.24 ``modeling_rope_utils._compute_proportional_rope_parameters``
(no paper; RoFormer's Eq. 15, arXiv:2104.09864, with a different exponent).

Equations (``D`` = head_dim, ``rho`` = ``partial_rotary_factor``, ``s`` =
``factor``, default 1):

.. math::

   n = \lfloor \rho D / 2 \rfloor, \qquad
   \theta'_i = \begin{cases} b^{-2i/D} / s & i < n \\ 0 & n \le i < D/2 \end{cases},
   \qquad m_{att} = 1.

Unlike partial rotary elsewhere (exponent over ``r = rho D``, the last ``D -
r`` features passed through), the exponent's denominator is the *head* dim
and the pairs span the whole head (half-split over ``D``): the first ``n``
pairs rotate with the frequencies a full-head RoPE would give them, the
other pairs have frequency 0 (cos 1, sin 0: the identity).

Conventions: float64; ``inv_freq`` has shape ``(D/2,)``; a config with this
type has ``rotary_dim = head_dim`` in :class:`yarnref.config.RopeConfig`.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .linear import _real

__all__ = ["proportional_frequencies"]


def proportional_frequencies(head_dim: int, base: float, partial_rotary_factor: float = 1.0,
                             factor: float = 1.0) -> tuple[np.ndarray, float]:
    """``(inv_freq (head_dim/2,), 1.0)``: ``b^(-2i/head_dim) / factor`` for the first ``n`` pairs, then zeros."""
    if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)) or head_dim < 2 or head_dim % 2:
        raise InputError("head_dim", head_dim, "an even integer >= 2")
    b = _real("base", base, minimum=1.0, strict=True)
    rho = _real("partial_rotary_factor", partial_rotary_factor, minimum=0.0, strict=True)
    s = _real("factor", factor, minimum=0.0, strict=True)
    n = int(rho * head_dim // 2)  # rotated pairs, as transformers computes it
    exponents = np.arange(0, 2 * n, 2, dtype=np.float64) / head_dim  # (n,) = 2i / D
    inv_freq = np.concatenate([1.0 / b**exponents, np.zeros(head_dim // 2 - n)])  # (D/2,)
    return inv_freq / s, 1.0
