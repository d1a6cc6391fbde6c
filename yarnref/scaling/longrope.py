r"""LongRoPE: searched per-pair rescale factors (Phi-3 "su" / ``rope_type: "longrope"``).

Paper: Ding, Zhang, Zhang, Xu, Shang, Xu, Yang, Yang, "LongRoPE: Extending LLM
Context Window Beyond 2 Million Tokens", arXiv:2402.13753 (ICML 2024).  Used by
Phi-3 / Phi-3.5 / Phi-4-mini (Phi-3 Technical Report, arXiv:2404.14219).

Equations:

* LongRoPE Eq. (2)-(3): a non-uniform interpolation, one rescale factor
  :math:`\lambda_i \ge 1` per pair, found by evolutionary search:

  .. math::  \theta'_i = \theta_i / f_i , \qquad \theta_i = b^{-2i/r},

  with ``f = long_factor`` for long sequences and ``f = short_factor`` for
  short ones (the "short" factors re-tune the model for the original window
  after the long fine-tune; section 3.3 of the paper).
* The attention factor (the Phi-3 implementation's choice, following YaRN's
  idea of a temperature; not an equation of the LongRoPE paper):

  .. math::  m_{att} = \sqrt{1 + \frac{\ln s}{\ln L}} \quad (s > 1), \qquad m_{att} = 1 \quad (s \le 1),

  with ``s = factor`` (or, when the config has none, ``max_position_embeddings
  / L``) and ``L = original_max_position_embeddings``.  An explicit
  ``attention_factor`` wins.  transformers uses the **same** ``m_att`` for the
  short and the long factors.

Conventions
-----------
* Which list is used is a *policy*, and the stacks differ (``switch``):

  * ``"current_length"`` (default; transformers): long iff the current
    ``seq_len = max(position_ids) + 1`` exceeds ``L``; ``seq_len=None``
    (initialisation) means short.  Phi-3's ``prepare_inputs_for_generation``
    drops the KV cache once when generation crosses ``L``, so earlier keys get
    re-rotated with the long factors.
  * ``"static"`` (vLLM; llama.cpp): decided once, long iff ``max_model_len > L``
    (vLLM's ``--max-model-len``; llama.cpp's ``n_ctx / n_seq_max``,
    llama.cpp#8995), for every position of every request.
* Each list must have ``r/2`` entries (``r`` the rotary dim, not the head dim:
  apache/tvm#18102).
* float64; ``inv_freq`` has shape ``(r/2,)``.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np

from ..errors import InputError
from ..rope import base_inv_freq
from .linear import _real

__all__ = ["SWITCHES", "MSCALE_RULES", "longrope_attention_factor", "uses_long_factors", "longrope_frequencies"]

SWITCHES = ("current_length", "static")
#: ``rule`` values of :func:`longrope_attention_factor`.
MSCALE_RULES = ("transformers", "max_position")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise InputError(name, value, "a positive integer")
    return int(value)


def longrope_attention_factor(
    factor: float | None,
    original_max_position_embeddings: int,
    attention_factor: float | None = None,
    max_position_embeddings: int | None = None,
    *,
    rule: str = "transformers",
) -> float:
    r""":math:`\sqrt{1 + \ln s / \ln L}` (1 if ``s <= 1``); an explicit ``attention_factor`` wins.

    ``rule="transformers"``: ``factor=None`` uses ``s = max_position_embeddings
    / L`` (Phi-3's configs carry no ``factor``).

    ``rule="max_position"``: vLLM 0.33 (``Phi3LongRoPEScaledRotaryEmbedding``)
    and llama.cpp's converter (``rope.scaling.attn_factor``) always take ``s =
    max_position_embeddings / L`` and ignore ``factor`` and
    ``attention_factor``; here ``attention_factor`` stands for vLLM's
    ``short_mscale`` / ``long_mscale`` override (pass the one of the list in
    use; :func:`yarnref.rope_frequencies` does).
    """
    if rule not in MSCALE_RULES:
        raise InputError("rule", rule, f"one of {MSCALE_RULES}")
    attention_factor = _real("attention_factor", attention_factor, minimum=0.0, strict=True, allow_none=True)
    L = _positive_int("original_max_position_embeddings", original_max_position_embeddings)
    if rule == "max_position":
        if max_position_embeddings is None:
            raise InputError("max_position_embeddings", None, "a positive integer (rule='max_position')")
        factor = None
    if factor is None:
        if max_position_embeddings is None:
            raise InputError("factor", None, "a number, or max_position_embeddings to derive it from")
        factor = _positive_int("max_position_embeddings", max_position_embeddings) / L
    s = _real("factor", factor, minimum=0.0, strict=True)
    if attention_factor is not None:
        return attention_factor
    if s <= 1.0:
        return 1.0
    if L == 1:  # ln L = 0
        raise InputError("original_max_position_embeddings", L, "an integer > 1 (the attention factor divides by ln L)")
    # Same expression, same order, as transformers' _compute_longrope_parameters.
    return math.sqrt(1 + math.log(s) / math.log(L))


def uses_long_factors(
    seq_len: int | None,
    original_max_position_embeddings: int,
    *,
    switch: str = "current_length",
    max_model_len: int | None = None,
) -> bool:
    """Whether the long factors apply, under the ``switch`` policy (see the module docstring)."""
    if not isinstance(switch, str) or switch not in SWITCHES:
        raise InputError("switch", switch, f"one of {SWITCHES}")
    L = _positive_int("original_max_position_embeddings", original_max_position_embeddings)
    if switch == "static":
        if max_model_len is None:
            raise InputError("max_model_len", None, "a positive integer with switch='static' (vLLM's --max-model-len)")
        return _positive_int("max_model_len", max_model_len) > L
    if seq_len is None:
        return False
    return _positive_int("seq_len", seq_len) > L


def _factor_list(name: str, values, n_pairs: int) -> np.ndarray:
    try:
        f = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(name, values, f"a list of {n_pairs} positive numbers") from None
    if f.shape != (n_pairs,) or not np.all(np.isfinite(f)) or not np.all(f > 0):
        raise InputError(name, f"array of shape {f.shape}", f"{n_pairs} finite positive numbers (rotary_dim / 2)")
    return f


def longrope_frequencies(
    rotary_dim: int,
    base: float,
    short_factor,
    long_factor,
    original_max_position_embeddings: int,
    *,
    factor: float | None = None,
    max_position_embeddings: int | None = None,
    attention_factor: float | None = None,
    seq_len: int | None = None,
    switch: str = "current_length",
    max_model_len: int | None = None,
    mscale_rule: str = "transformers",
) -> tuple[np.ndarray, float]:
    r"""LongRoPE inverse frequencies :math:`\theta_i / f_i`, shape ``(r/2,)``, and ``m_att``.

    ``f`` is ``long_factor`` if :func:`uses_long_factors` says so, else
    ``short_factor``; ``m_att`` is :func:`longrope_attention_factor` with
    ``rule=mscale_rule`` (the same for both lists unless an override is
    given).
    """
    theta = base_inv_freq(rotary_dim, base)  # (r/2,)
    short = _factor_list("short_factor", short_factor, theta.size)
    long = _factor_list("long_factor", long_factor, theta.size)
    m = longrope_attention_factor(factor, original_max_position_embeddings, attention_factor, max_position_embeddings,
                                  rule=mscale_rule)
    use_long = uses_long_factors(seq_len, original_max_position_embeddings, switch=switch, max_model_len=max_model_len)
    return theta / (long if use_long else short), m
