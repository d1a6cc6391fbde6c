r"""YaRN: NTK-by-parts interpolation plus an attention temperature; dynamic YaRN; DeepSeek's mscale.

Paper: Peng, Quesnelle, Fan, Shippole, "YaRN: Efficient Context Window
Extension of Large Language Models", arXiv:2309.00071 (v2, ICLR 2024).
Reference code: github.com/jquesnelle/yarn (``scaled_rope/``).

Equations (section 3, notation: ``s`` the scale factor, ``L`` the original
context length, ``r`` the rotary dimension, ``b`` the base,
:math:`\theta_d = b^{-2d/r}` and wavelength :math:`\lambda_d = 2\pi/\theta_d`):

* Eq. (17): pair ``d`` completes :math:`r(d) = L / \lambda_d` rotations over
  the original context.
* Def. 2 / Eq. (18)-(20), "NTK-by-parts": with a ramp

  .. math::  \gamma(\rho) = \begin{cases} 0 & \rho < \alpha \\ 1 & \rho > \beta \\
             \frac{\rho - \alpha}{\beta - \alpha} & \text{otherwise} \end{cases}

  the new frequencies blend interpolation and extrapolation per pair,

  .. math::  \theta'_d = \left(1 - \gamma(r(d))\right) \frac{\theta_d}{s} + \gamma(r(d))\,\theta_d ,

  with :math:`\alpha = 1, \beta = 32` for Llama.  Pairs turning more than
  ``beta`` times in ``L`` are kept (extrapolated); pairs turning less than
  ``alpha`` times are interpolated by exactly ``s``.
* Eq. (21)-(22), the temperature: attention logits are divided by ``t`` with
  :math:`\sqrt{1/t} = 0.1 \ln s + 1`.  Implementations multiply cos and sin by
  :math:`m_{att} = 0.1 \ln s + 1` (both q and k are rotated, so the logits get
  :math:`m_{att}^2 = 1/t`).  Eq. (25): ``s = 8`` gives 1.208.
* Section 3.3 (dynamic scaling): :math:`s = \max(1, \ell / L)` for the current
  length :math:`\ell`.

What the code does (and what transformers v5, vLLM and llama.cpp copied): the
ramp is not linear in :math:`r(d)` but linear in the **pair index** between
two "correction dimensions".  Solving :math:`L/\lambda_d = \rho` for the
pair index ``d`` gives

.. math::  \mathrm{cd}(\rho) = \frac{r \,\ln\!\big(L / (2\pi\rho)\big)}{2 \ln b},

``lo = floor(cd(beta_fast))``, ``hi = ceil(cd(beta_slow))``, clamped to
``[0, r - 1]`` (``r - 1`` although pair indices end at ``r/2 - 1``); the interpolation weight of pair ``i`` is
``clip((i - lo) / (hi - lo), 0, 1)`` (``hi += 0.001`` if ``lo == hi``), and
``beta_fast = 32``, ``beta_slow = 1`` play the roles of ``beta`` and
``alpha``.  Since ``cd`` is a logarithm of ``rho``, this ramp is linear in
``log r(d)``, not in ``r(d)``.

Conventions
-----------
* Defaults follow transformers v5 (``_compute_yarn_parameters``).  Named
  options give the others:

  ============================  ==========================  =========================================
  option                        default (transformers)      alternatives
  ============================  ==========================  =========================================
  ``ramp``                      ``"index"`` (the code)      ``"paper"``: Def. 2, linear in r(d)
  ``truncate``                  ``True`` (floor/ceil)       ``False``: gpt-oss; ggml cannot do this
  ``clamp``                     ``"rotary_dim"``: [0, r-1]  ``"half"``: [0, r/2-1] (buggy ports:
                                                            keras-hub#2981, minimind#602)
  ``epsilon_rule``              ``"transformers"``:         ``"ggml"``: denominator
                                ``hi += 0.001`` if lo == hi ``max(0.001, hi - lo)``
  ``extrapolation_factor``      1.0                         the YaRN authors' / ggml ``ext_factor``
  ``mscale_rule``               ``"transformers"``          ``"vllm_deepseek"``, ``"yarn_authors"``,
                                                            ``"llama.cpp"``
  ============================  ==========================  =========================================

* A "pair" is one rotation plane, ``i = 0 .. r/2 - 1`` (fastest first).
* The blend is applied to the inverse frequencies (ggml blends the angles,
  which is the same mathematics).
* Everything is float64 (transformers computes the ramp and the frequencies in
  float32); ``inv_freq`` has shape ``(r/2,)``; the attention factor is a
  Python float computed with the same operations, in the same order, as
  transformers, so it matches it to the last bit.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np

from ..errors import InputError
from ..rope import base_inv_freq
from .linear import _real

__all__ = [
    "CLAMPS",
    "RAMPS",
    "EPSILON_RULES",
    "MSCALE_RULES",
    "correction_dim",
    "correction_range",
    "linear_ramp",
    "paper_ramp",
    "get_mscale",
    "yarn_attention_factor",
    "deepseek_softmax_scale",
    "yarn_frequencies",
    "dynamic_yarn_frequencies",
]

CLAMPS = ("rotary_dim", "half")
RAMPS = ("index", "paper")
EPSILON_RULES = ("transformers", "ggml")
MSCALE_RULES = ("transformers", "vllm_deepseek", "yarn_authors", "llama.cpp", "llama.cpp_deepseek2")


def _even_dim(rotary_dim) -> int:
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, Integral) or rotary_dim < 2 or rotary_dim % 2:
        raise InputError("rotary_dim", rotary_dim, "an even integer >= 2")
    return int(rotary_dim)


def _length(name: str, value) -> float:
    return _real(name, value, minimum=0.0, strict=True)


def correction_dim(num_rotations: float, rotary_dim: int, base: float, original_max_position_embeddings: float) -> float:
    r"""The (fractional) pair index whose pair turns ``num_rotations`` times in ``L`` tokens.

    Solving :math:`L / \lambda_i = \rho` with :math:`\lambda_i = 2\pi b^{2i/r}`
    for ``i`` gives :math:`\mathrm{cd}(\rho) = r \ln(L / (2\pi\rho)) / (2 \ln b)`.
    The result is in *pair* units (it is compared with ``i = 0 .. r/2 - 1``),
    although every stack clamps it to ``r - 1`` as if it were a feature index.
    It is negative when ``L < 2 pi rho`` (no pair turns that often).
    """
    r = _even_dim(rotary_dim)
    rho = _real("num_rotations", num_rotations, minimum=0.0, strict=True)
    b = _real("base", base, minimum=1.0, strict=True)
    L = _length("original_max_position_embeddings", original_max_position_embeddings)
    # Same expression, same order, as transformers' find_correction_dim.
    return (r * math.log(L / (rho * 2 * math.pi))) / (2 * math.log(b))


def correction_range(
    rotary_dim: int,
    base: float,
    original_max_position_embeddings: float,
    beta_fast: float = 32,
    beta_slow: float = 1,
    truncate: bool = True,
    clamp: str = "rotary_dim",
) -> tuple[float, float]:
    """``(lo, hi)``: the ramp runs from pair ``lo`` (kept) to pair ``hi`` (fully interpolated).

    ``lo = cd(beta_fast)``, ``hi = cd(beta_slow)``; with ``truncate`` they are
    floored / ceiled; then ``lo >= 0`` and ``hi <= r - 1`` (``clamp="rotary_dim"``,
    transformers, vLLM, ggml and the YaRN authors) or ``hi <= r/2 - 1``
    (``clamp="half"``, ports that reasoned in pairs; the two differ whenever
    ``L > 2 pi b`` makes the raw ``hi`` exceed ``r/2 - 1``).

    ``beta_fast < beta_slow`` gives ``hi < lo`` and an inverted ramp; it is
    computed, not repaired (config parsing rejects it).
    """
    if not isinstance(clamp, str) or clamp not in CLAMPS:
        raise InputError("clamp", clamp, f"one of {CLAMPS}")
    if not isinstance(truncate, (bool, np.bool_)):
        raise InputError("truncate", truncate, "True or False")
    r = _even_dim(rotary_dim)
    lo = correction_dim(beta_fast, r, base, original_max_position_embeddings)
    hi = correction_dim(beta_slow, r, base, original_max_position_embeddings)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    upper = r - 1 if clamp == "rotary_dim" else r // 2 - 1
    return float(max(lo, 0)), float(min(hi, upper))


def linear_ramp(lo: float, hi: float, n_pairs: int, *, epsilon_rule: str = "transformers") -> np.ndarray:
    r"""Interpolation weight of each pair, ``clip((i - lo) / (hi - lo), 0, 1)``, shape ``(n_pairs,)``.

    0 keeps the pair's frequency, 1 divides it by ``s``.  The singular case:

    * ``"transformers"`` (also vLLM and the YaRN authors): if ``lo == hi`` use
      ``hi + 0.001``; ``hi < lo`` gives an inverted ramp;
    * ``"ggml"``: denominator ``max(0.001, hi - lo)``, so ``hi <= lo`` becomes a
      step at ``lo``.
    """
    if not isinstance(epsilon_rule, str) or epsilon_rule not in EPSILON_RULES:
        raise InputError("epsilon_rule", epsilon_rule, f"one of {EPSILON_RULES}")
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, Integral) or n_pairs < 1:
        raise InputError("n_pairs", n_pairs, "a positive integer")
    lo = _real("lo", lo)
    hi = _real("hi", hi)
    if epsilon_rule == "transformers":
        if lo == hi:
            hi += 0.001  # prevent the singularity
        denominator = hi - lo
    else:
        denominator = max(0.001, hi - lo)
    pair = np.arange(n_pairs, dtype=np.float64)  # i = 0 .. n-1
    return np.clip((pair - lo) / denominator, 0.0, 1.0)


def paper_ramp(
    rotary_dim: int,
    base: float,
    original_max_position_embeddings: float,
    alpha: float = 1.0,
    beta: float = 32.0,
) -> np.ndarray:
    r"""Def. 2's :math:`\gamma(r(d))`, the **extrapolation** weight of each pair, shape ``(r/2,)``.

    :math:`r(d) = L / \lambda_d = L\,\theta_d / (2\pi)`;
    :math:`\gamma = 0` below ``alpha``, 1 above ``beta``, linear in between.
    ``alpha == beta`` makes it a step (1 where ``r(d) > beta``).  Note the
    direction: 1 here means *keep*, the opposite of :func:`linear_ramp`.
    """
    lo = _real("alpha", alpha, minimum=0.0)
    hi = _real("beta", beta, minimum=0.0)
    if hi < lo:
        raise InputError("beta", beta, f"a number >= alpha = {alpha}")
    L = _length("original_max_position_embeddings", original_max_position_embeddings)
    theta = base_inv_freq(_even_dim(rotary_dim), base)  # (r/2,)
    rotations = L * theta / (2 * math.pi)  # Eq. (17): r(d) = L / lambda_d
    if hi == lo:
        return (rotations > hi).astype(np.float64)
    return np.clip((rotations - lo) / (hi - lo), 0.0, 1.0)


def get_mscale(scale: float, mscale: float = 1.0) -> float:
    r""":math:`g(s, \mu) = 0.1\,\mu \ln s + 1` for ``s > 1``, else 1 (Eq. 22 with DeepSeek's multiplier ``mu``)."""
    s = _real("scale", scale)
    mu = _real("mscale", mscale)
    if s <= 1:
        return 1.0
    return 0.1 * mu * math.log(s) + 1.0


def yarn_attention_factor(
    factor: float,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    *,
    rule: str = "transformers",
) -> float:
    r"""The factor ``m_att`` multiplied into cos and sin.

    ``rule="transformers"`` (v5, and vLLM's generic YaRN after vllm#48623):

    1. an explicit ``attention_factor`` is used verbatim (no log applied);
    2. else, if ``mscale`` and ``mscale_all_dim`` are both truthy (non-zero,
       non-None): :math:`g(s, \mathrm{mscale}) / g(s, \mathrm{mscale\_all\_dim})`
       (DeepSeek; 1.0 when they are equal, as in DeepSeek-V3);
    3. else :math:`g(s, 1) = 0.1 \ln s + 1` (the paper).  A lone ``mscale`` is
       silently ignored by transformers.

    Other rules:

    * ``"vllm_deepseek"``: vLLM's ``DeepseekScalingRotaryEmbedding`` (vLLM
      0.33, ``rotary_embedding/deepseek_scaling_rope.py``):
      :math:`g(s, \mathrm{mscale}) / g(s, \mathrm{mscale\_all\_dim})` with
      defaults ``mscale = 1``, ``mscale_all_dim = 0`` (so a missing
      ``mscale_all_dim`` gives :math:`g(s, \mathrm{mscale})`, not 1), times
      vLLM's own ``attn_factor`` (default 1).  ``get_rope`` passes that class
      only ``extrapolation_factor, attn_factor, beta_fast, beta_slow, mscale,
      mscale_all_dim`` from the RoPE parameters: a config's
      ``attention_factor`` never reaches it.  Here the ``attention_factor``
      argument stands for vLLM's ``attn_factor``;
      :func:`yarnref.rope_frequencies` passes it the config's ``attn_factor``
      key, not ``attention_factor``.
    * ``"llama.cpp_deepseek2"``: llama.cpp's DEEPSEEK2 architecture (DeepSeek
      V2/V3, Kimi K2 and other MLA models): it passes ggml an ``attn_factor``
      that cancels ggml's internal :math:`g(s, 1)`, so the net magnitude of
      cos and sin is exactly 1, and folds the YaRN temperature into the
      softmax scale instead (``src/llama-model.cpp``, ``LLM_ARCH_DEEPSEEK2``).
    * ``"yarn_authors"``: ``LlamaYaRNScaledRotaryEmbedding``:
      :math:`g(s) \cdot` ``attention_factor`` (their ``attn_factor``, default 1
      — it multiplies, it does not replace).
    * ``"llama.cpp"``: after llama.cpp PR #17945/#18006 the net magnitude is
      :math:`g(s,1)/g(s,\mathrm{mscale\_all\_dim})` when ``mscale_all_dim`` is set
      (the GGUF stores only ``0.1 * mscale_all_dim`` as ``rope_yarn_log_mul``;
      ``mscale`` is assumed to be 1), else :math:`g(s,1)`.  We take an explicit
      ``attention_factor`` verbatim, as transformers does (an assumption about
      how converters write it).
    """
    if not isinstance(rule, str) or rule not in MSCALE_RULES:
        raise InputError("rule", rule, f"one of {MSCALE_RULES}")
    s = _real("factor", factor)
    attention_factor = _real("attention_factor", attention_factor, minimum=0.0, strict=True, allow_none=True)
    mscale = _real("mscale", mscale, allow_none=True)
    mscale_all_dim = _real("mscale_all_dim", mscale_all_dim, allow_none=True)
    if rule == "transformers":
        if attention_factor is not None:
            return attention_factor
        if mscale and mscale_all_dim:
            return float(get_mscale(s, mscale) / get_mscale(s, mscale_all_dim))
        return get_mscale(s)
    if rule == "vllm_deepseek":
        numerator = get_mscale(s, 1.0 if mscale is None else mscale)
        denominator = get_mscale(s, 0.0 if mscale_all_dim is None else mscale_all_dim)
        return float(numerator / denominator * (1.0 if attention_factor is None else attention_factor))
    if rule == "yarn_authors":
        return get_mscale(s) * (1.0 if attention_factor is None else attention_factor)
    if rule == "llama.cpp_deepseek2":
        return 1.0
    # "llama.cpp"
    if attention_factor is not None:
        return attention_factor
    if mscale_all_dim:
        return float(get_mscale(s, 1.0) / get_mscale(s, mscale_all_dim))
    return get_mscale(s)


def deepseek_softmax_scale(qk_head_dim: int, factor: float, mscale_all_dim: float | None = None) -> float:
    r"""DeepSeek MLA's softmax scale: :math:`d_{qk}^{-1/2} \cdot g(s, \mathrm{mscale\_all\_dim})^2`.

    ``qk_head_dim = qk_nope_head_dim + qk_rope_head_dim`` (192 for DeepSeek-V3).
    transformers (``yarn_apply_mscale`` in
    ``models/deepseek_v3/modeling_deepseek_v3.py``, 5.24) applies it on top of
    the cos/sin factor whenever the rope type is not default and
    ``mscale_all_dim`` is truthy.  vLLM (``models/deepseek_v2.py``) applies it
    only when it has renamed the rope type to ``"deepseek_yarn"``: in 0.33 that
    rename is skipped (type ``"deepseek_llama_scaling"``) for a config whose
    ``attention_factor`` is 1.0, and in later sources it is decided by the
    ``apply_yarn_scaling`` key (default true); with ``"deepseek_llama_scaling"``
    vLLM's scale is plain :math:`d_{qk}^{-1/2}`, i.e. this function with
    ``mscale_all_dim=None``.  Net effect: the rope
    dims' logits get :math:`g(s, \mathrm{mscale})^2`, the no-position dims'
    logits :math:`g(s, \mathrm{mscale\_all\_dim})^2` — hence "all_dim".
    """
    if isinstance(qk_head_dim, bool) or not isinstance(qk_head_dim, Integral) or qk_head_dim < 1:
        raise InputError("qk_head_dim", qk_head_dim, "a positive integer (qk_nope_head_dim + qk_rope_head_dim)")
    scaling = qk_head_dim ** (-0.5)
    mscale_all_dim = _real("mscale_all_dim", mscale_all_dim, allow_none=True)
    if mscale_all_dim:
        m = get_mscale(factor, mscale_all_dim)
        scaling = scaling * m * m
    return scaling


def yarn_frequencies(
    rotary_dim: int,
    base: float,
    factor: float,
    original_max_position_embeddings: int,
    *,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
    clamp: str = "rotary_dim",
    ramp: str = "index",
    epsilon_rule: str = "transformers",
    extrapolation_factor: float = 1.0,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    mscale_rule: str = "transformers",
) -> tuple[np.ndarray, float]:
    r"""YaRN inverse frequencies, shape ``(r/2,)``, and the attention factor ``m_att``.

    .. math::  \theta'_i = \frac{\theta_i}{s}\,(1 - e_i) + \theta_i\, e_i

    with the extrapolation weight ``e_i = (1 - ramp_i) * extrapolation_factor``
    for ``ramp="index"`` (the code: :func:`correction_range` then
    :func:`linear_ramp`), or ``e_i = gamma(r(i)) * extrapolation_factor`` with
    ``alpha = beta_slow``, ``beta = beta_fast`` for ``ramp="paper"`` (Def. 2;
    ``truncate``, ``clamp`` and ``epsilon_rule`` do not apply there).
    Pairs ``i <= lo`` keep :math:`\theta_i` exactly, pairs ``i >= hi`` get
    exactly :math:`\theta_i / s`.  The attention factor is
    :func:`yarn_attention_factor` with ``rule=mscale_rule``.
    """
    if not isinstance(ramp, str) or ramp not in RAMPS:
        raise InputError("ramp", ramp, f"one of {RAMPS}")
    r = _even_dim(rotary_dim)
    s = _real("factor", factor, minimum=0.0, strict=True)
    ext = _real("extrapolation_factor", extrapolation_factor)
    theta = base_inv_freq(r, base)  # (r/2,) extrapolation: theta_i unchanged
    theta_interp = theta / s  # (r/2,) interpolation: PI
    if ramp == "index":
        lo, hi = correction_range(r, base, original_max_position_embeddings, beta_fast, beta_slow, truncate, clamp)
        extrapolation = (1.0 - linear_ramp(lo, hi, r // 2, epsilon_rule=epsilon_rule)) * ext  # (r/2,)
    else:
        extrapolation = paper_ramp(r, base, original_max_position_embeddings, alpha=beta_slow, beta=beta_fast) * ext
    inv_freq = theta_interp * (1.0 - extrapolation) + theta * extrapolation
    m = yarn_attention_factor(s, attention_factor, mscale, mscale_all_dim, rule=mscale_rule)
    return inv_freq, m


def dynamic_yarn_frequencies(
    rotary_dim: int,
    base: float,
    original_max_position_embeddings: int,
    seq_len: int,
    **yarn_options,
) -> tuple[np.ndarray, float]:
    r"""Dynamic YaRN (section 3.3): YaRN with :math:`s = \max(1, \ell / L)` for the current length ``seq_len``.

    Both the frequencies and the attention factor follow ``s``; at
    ``seq_len <= L`` this is plain RoPE with ``m_att = 1``.  Not in
    transformers or vLLM; the YaRN authors' ``LlamaDynamicYaRNScaledRotaryEmbedding``
    recomputes it whenever a longer sequence arrives and never shrinks (a
    history-dependent cache like :class:`yarnref.scaling.ntk.DynamicNTKCache`;
    this function is the pure version).  ``yarn_options`` are those of
    :func:`yarn_frequencies` except ``factor``.
    """
    if "factor" in yarn_options:
        raise InputError("factor", yarn_options["factor"], "not given: dynamic YaRN derives s from seq_len")
    if isinstance(seq_len, bool) or not isinstance(seq_len, Integral) or seq_len < 1:
        raise InputError("seq_len", seq_len, "a positive integer")
    L = _length("original_max_position_embeddings", original_max_position_embeddings)
    s = max(1.0, seq_len / L)
    return yarn_frequencies(rotary_dim, base, s, original_max_position_embeddings, **yarn_options)
