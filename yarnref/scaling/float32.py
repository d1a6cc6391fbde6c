r"""The inverse frequencies as the stacks compute them in float32, operation by operation.

The scaling modules compute in float64.  transformers and vLLM compute the same
formulas in float32 torch arithmetic, and a float32 table is only explained by
the float32 frequencies the stack really held: rounding the float64 result to
float32 is not the same number (the power, the reciprocal and each step of
the YaRN / Llama 3 blends round on their own).  This module repeats the
stack's float32 operations, in the stack's order, in NumPy float32.

Equations: those of the method modules (RoFormer Eq. 15, arXiv:2104.09864;
YaRN arXiv:2309.00071; Llama 3 arXiv:2407.21783; LongRoPE arXiv:2402.13753);
here only the rounding changes.

What torch does with the operands (torch 2.x, read from transformers 5.24's
``modeling_rope_utils.py`` and vLLM 0.33's ``rotary_embedding`` classes):

* A Python number meeting a float32 tensor is rounded to float32 first
  (``base ** t``, ``t / factor``, ``t - low``, comparisons with ``wavelen``);
  arithmetic between Python numbers (``high - low``, ``L / lf``) is float64.
* ``x / t`` with a Python number ``x`` is ``t.reciprocal() * x``
  (``Tensor.__rtruediv__``): two roundings, e.g. ``2 * math.pi / inv_freq``.
* The exponents are ``float32(arange(0, r, 2)) / float32(r)``.
* ``base ** e`` is float32 ``pow``.  yarnref returns the correctly rounded
  power (computed in float64 and rounded once), which is what torch's scalar
  CPU path (libm) gives.  torch's vectorised CPU path (SLEEF, <= 1 ulp) and
  CUDA's ``powf`` (<= 2 ulp) are not correctly rounded: on a few percent of
  pairs they differ by one ulp, and that ulp is all that separates their
  ``inv_freq`` from this one (the test suite checks this by feeding both
  sides torch's own powers).

One stack operation is not an ``inv_freq``: vLLM's linear scaling keeps the
base frequencies and divides the *positions* in float32 (``t / factor``); to
reproduce its tables use the base ``inv_freq`` (``rope_type`` default) and
``yarnref.precision.round_to(positions / factor, "float32")`` as positions.
``rope_frequencies(..., stack="vllm", precision="float32")`` returns
transformers' ``inv_freq / factor`` for linear configs.

Conventions: every function returns a float32 array of shape ``(r/2,)``
(``(head_dim/2,)`` for proportional RoPE); the attention factor is not
computed here (it is a Python float in every stack, see the method modules).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "f32_exponents",
    "f32_pow",
    "f32_base_inv_freq",
    "f32_linear",
    "f32_yarn",
    "f32_llama3",
    "f32_longrope",
    "f32_proportional",
    "f32_ntk_vllm_fixed",
]

F32 = np.float32


def f32_exponents(rotary_dim: int, denominator: int | None = None, count: int | None = None) -> np.ndarray:
    """``float32(arange(0, 2 * count, 2)) / float32(denominator)``, shape ``(count,)`` (default ``r/2``, ``r``)."""
    denominator = rotary_dim if denominator is None else denominator
    count = rotary_dim // 2 if count is None else count
    return np.arange(0, 2 * count, 2, dtype=np.int64).astype(F32) / F32(denominator)  # (count,)


def f32_pow(base, exponents: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 ``float32(base) ** exponents`` (libm's ``powf``; see the module docstring)."""
    b = np.float64(F32(base))
    return (b ** exponents.astype(np.float64)).astype(F32)


def _rdiv(numerator, t: np.ndarray) -> np.ndarray:
    """torch's ``numerator / t`` for a Python number: ``t.reciprocal() * float32(numerator)``."""
    return (F32(1.0) / t) * F32(numerator)


def f32_base_inv_freq(rotary_dim: int, base: float) -> np.ndarray:
    r""":math:`\theta_i = 1 / b^{2i/r}` in float32: ``1.0 / (base ** (arange(0, r, 2).float() / r))``."""
    return _rdiv(1.0, f32_pow(base, f32_exponents(rotary_dim)))


def f32_linear(rotary_dim: int, base: float, factor: float) -> np.ndarray:
    """transformers' linear scaling: ``inv_freq /= factor`` in float32."""
    return f32_base_inv_freq(rotary_dim, base) / F32(factor)


def f32_yarn(rotary_dim: int, base: float, factor: float, lo: float, hi: float, *,
             epsilon_rule: str = "transformers", extrapolation_factor: float = 1.0) -> np.ndarray:
    """YaRN in float32 (transformers ``_compute_yarn_parameters``, vLLM ``YaRNScalingRotaryEmbedding``).

    ``lo``, ``hi`` are the correction range (Python floats, computed in
    float64 by every stack: :func:`yarnref.scaling.correction_range`).
    transformers: ``1 - ramp`` is the extrapolation weight; vLLM multiplies it
    by ``extrapolation_factor`` (1.0, exact).
    """
    pos_freqs = f32_pow(base, f32_exponents(rotary_dim))  # (r/2,) b^(2i/r)
    extrapolation = _rdiv(1.0, pos_freqs)
    interpolation = _rdiv(1.0, F32(factor) * pos_freqs)
    if epsilon_rule == "transformers":
        if lo == hi:
            hi += 0.001
        denominator = hi - lo  # Python float64
    else:
        denominator = max(0.001, hi - lo)
    ramp = np.clip((np.arange(rotary_dim // 2, dtype=F32) - F32(lo)) / F32(denominator), F32(0), F32(1))
    weight = (F32(1) - ramp) * F32(extrapolation_factor)  # (r/2,) extrapolation weight
    return interpolation * (F32(1) - weight) + extrapolation * weight


def f32_llama3(rotary_dim: int, base: float, factor: float, low_freq_factor: float, high_freq_factor: float,
               original_max_position_embeddings: int, *, stack: str = "transformers") -> np.ndarray:
    """The Llama 3 schedule in float32 (transformers ``_compute_llama3_parameters``; vLLM ``Llama3RotaryEmbedding``).

    Both compute ``wavelen = 2 * math.pi / inv_freq`` and ``smooth = (L /
    wavelen - lf) / (hf - lf)`` with the same roundings; vLLM sets ``smooth =
    0`` when ``lf == hf`` (transformers divides by zero there and masks the
    result away; the values are the same).
    """
    inv_freq = f32_base_inv_freq(rotary_dim, base)
    L, lf, hf, s = original_max_position_embeddings, low_freq_factor, high_freq_factor, F32(factor)
    low_wavelen, high_wavelen = F32(L / lf), F32(L / hf)  # Python float64, then float32 in the comparison
    wavelen = _rdiv(2 * math.pi, inv_freq)
    llama = np.where(wavelen > low_wavelen, inv_freq / s, inv_freq)
    with np.errstate(divide="ignore", invalid="ignore"):
        if hf != lf:
            smooth = (_rdiv(L, wavelen) - F32(lf)) / F32(hf - lf)
        else:
            smooth = np.zeros_like(inv_freq)
        smoothed = ((F32(1) - smooth) * llama) / s + smooth * llama
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, llama).astype(F32)


def f32_longrope(rotary_dim: int, base: float, factors) -> np.ndarray:
    """LongRoPE in float32: ``1.0 / (float32(factors) * base ** exponents)``."""
    return _rdiv(1.0, np.asarray(factors, dtype=np.float64).astype(F32) * f32_pow(base, f32_exponents(rotary_dim)))


def f32_proportional(head_dim: int, base: float, partial_rotary_factor: float, factor: float = 1.0) -> np.ndarray:
    """transformers' ``"proportional"`` RoPE in float32, shape ``(head_dim/2,)``.

    ``n = int(partial_rotary_factor * head_dim // 2)`` pairs get ``b^(-2i/head_dim)``
    (the exponent's denominator is the head dim), the other ``head_dim/2 - n``
    get frequency 0; then everything is divided by ``factor``.
    """
    n = int(partial_rotary_factor * head_dim // 2)
    rotated = _rdiv(1.0, f32_pow(base, f32_exponents(head_dim, head_dim, n)))
    inv_freq = np.concatenate([rotated, np.zeros(head_dim // 2 - n, dtype=F32)])
    return inv_freq / F32(factor)


def f32_ntk_vllm_fixed(rotary_dim: int, base: float, factor: float, mixed_b: float | None = None) -> np.ndarray:
    """vLLM's ``NTKScalingRotaryEmbedding`` in float32.

    vLLM 0.33 ``ntk_scaling_rope.py``: ``base * factor`` (Python float64), the
    base frequencies of that base in float32, then ``inv_freq / factor ** (2 /
    r)`` (the divisor a Python float64, rounded to float32); with ``mixed_b``:
    ``inv_freq / exp(a * (arange(1, r/2 + 1) ** mixed_b))`` in float32, ``a =
    log(factor) / (r/2) ** mixed_b`` (float64).
    """
    if mixed_b is None:
        return f32_base_inv_freq(rotary_dim, base * factor) / F32(factor ** (2.0 / rotary_dim))
    inv_freq = f32_base_inv_freq(rotary_dim, base)
    a = math.log(factor) / (rotary_dim / 2) ** mixed_b
    lambda_1 = np.exp(F32(a) * (np.arange(1, rotary_dim // 2 + 1, dtype=F32) ** F32(mixed_b)))
    return inv_freq / lambda_1.astype(F32)
