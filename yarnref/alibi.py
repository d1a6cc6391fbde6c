r"""ALiBi: attention with linear biases, the other road to length generalisation.

Paper: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear
Biases Enables Input Length Extrapolation", arXiv:2108.12409.

ALiBi adds no position embedding to q or k.  Instead every logit gets a
penalty proportional to the query-key distance, with one slope per head
(section 3 of the paper):

.. math::
   \mathrm{softmax}\!\left(s\, q_i K^\top + m_h \cdot [-(i-1), \dots, -2, -1, 0]\right)

The slopes are a geometric sequence.  For ``n`` heads, ``n`` a power of two,

.. math::  m_h = 2^{-8h/n}, \qquad h = 1, \dots, n

(``n = 8``: 1/2, 1/4, ..., 1/256).  For other head counts the paper's code
(``get_slopes`` in ofirpress/attention_with_linear_biases) and BLOOM
(transformers' ``build_alibi_tensor``) take the ``c = 2^{\lfloor \log_2 n
\rfloor}`` slopes of ``c`` heads, then every other slope of ``2c`` heads
(``2^{-4h/c}`` for odd ``h``) until there are ``n``; :func:`alibi_slopes`
follows that rule.

Conventions
-----------
* A position is the index in the key sequence; queries are aligned
  bottom-right, as everywhere in yarnref: query ``i`` of ``q_len`` sits at
  position ``i + kv_len - q_len``.
* The bias is :math:`-m_h\,|p_q - p_k|`, added to the *scaled* logits
  :math:`s\,q\cdot k` (BLOOM's ``baddbmm``, flash-attn's ``alibi_slopes``).
  On causally visible keys this is the paper's :math:`-m_h (p_q - p_k)`;
  without a causal mask the absolute distance is used, as flash-attn does.
* BLOOM adds :math:`+m_h\,p_k` instead.  On causal rows the two differ by a
  constant per row, so the softmax and the attention output are the same; the
  log-sum-exp differs by :math:`m_h\,p_q`.  yarnref's lse is that of the
  distance form.
* Slopes are per *query* head (with GQA, the query heads sharing a kv head
  keep their own slopes), float64, shape ``(q_heads,)``.
"""

from __future__ import annotations

import math

import numpy as np

from .checks import LOGIT_LIMIT, check_allocation, check_array_like, check_int
from .errors import InputError

#: Most heads :func:`alibi_slopes` builds (far beyond any model; the slopes are a Python list first).
MAX_HEADS = 2**20

__all__ = ["alibi_slopes", "alibi_bias", "check_alibi_slopes"]


def _power_of_two_slopes(n: int) -> list[float]:
    """``m_h = 2^{-8h/n}`` for ``h = 1..n`` (``n`` a power of two)."""
    start = 2.0 ** (-8.0 / n)
    return [start ** h for h in range(1, n + 1)]


def alibi_slopes(num_heads: int) -> np.ndarray:
    """The ALiBi slope of every head, float64 ``(num_heads,)``.

    ``num_heads`` a power of two: :math:`m_h = 2^{-8h/n}`.  Otherwise the
    closest lower power of two ``c`` gives the first ``c`` slopes and the odd
    members of the ``2c`` sequence fill the rest (the paper's code, BLOOM).
    """
    n = check_int("num_heads", num_heads, minimum=1, maximum=MAX_HEADS)
    closest = 2 ** int(math.floor(math.log2(n)))
    slopes = _power_of_two_slopes(closest)
    if closest < n:
        slopes += _power_of_two_slopes(2 * closest)[0::2][: n - closest]
    return np.asarray(slopes, dtype=np.float64)


def check_alibi_slopes(shape, q_heads: int) -> None:
    """Raise :class:`~yarnref.errors.InputError` unless ``shape`` is ``(q_heads,)``.

    Takes the shape only, so every backend checks its own array type with it.
    """
    if tuple(shape) != (q_heads,):
        raise InputError("alibi_slopes", f"shape {tuple(shape)}", f"one slope per query head, shape ({q_heads},)")


def alibi_bias(slopes, q_len: int, kv_len: int) -> np.ndarray:
    """The ALiBi bias :math:`-m_h |p_q - p_k|`, float64 ``(heads, q_len, kv_len)``.

    Queries aligned bottom-right (query ``i`` at position ``i + kv_len -
    q_len``).  No causal mask is applied: combine with one (or call
    ``yarnref.attention(..., alibi_slopes=slopes)``).
    """
    allowed = "a non-empty 1-D array of finite real slopes, one per head"
    m = check_array_like("slopes", slopes, allowed)
    if m.ndim != 1 or m.size == 0 or m.dtype.kind not in "fiu":
        raise InputError("slopes", f"array of shape {m.shape} and dtype {m.dtype}", allowed)
    m = m.astype(np.float64)
    if not np.all(np.isfinite(m)):
        raise InputError("slopes", "non-finite values", allowed)
    q_len = check_int("q_len", q_len, minimum=1)
    kv_len = check_int("kv_len", kv_len, minimum=1)
    check_allocation("kv_len", kv_len, m.size * q_len * kv_len, what="(heads, q_len, kv_len) bias")
    if float(np.abs(m).max()) * max(q_len, kv_len) > LOGIT_LIMIT:  # the largest |bias|, finite in float64
        raise InputError("slopes", f"max |slope| {float(np.abs(m).max()):.3g}", f"|slope| x max(q_len, kv_len) <= {LOGIT_LIMIT:g}")
    query_pos = np.arange(q_len) + (kv_len - q_len)  # (q_len,): bottom-right aligned
    distance = np.abs(query_pos[:, None] - np.arange(kv_len)[None, :])  # (q_len, kv_len)
    return -m[:, None, None] * distance[None]  # (heads, q_len, kv_len)
