r"""ggml's RoPE angles (llama.cpp): a float32 recurrence over the pairs, and what llama.cpp passes it.

ggml does not hold an ``inv_freq`` vector.  ``ggml_rope_ext`` (ggml-org/ggml
``src/ggml-cpu/ops.cpp``, ``ggml_rope_cache_init`` and ``rope_yarn``, read at
HEAD d99724f, 2026-08-21; the CUDA, Metal and Vulkan kernels compute
``theta_base * powf(theta_scale, i0/2)`` instead) builds each row's angles by
repeated float32 multiplication:

.. math::

   \vartheta_0 = p, \qquad \vartheta_{i+1} = \mathrm{fl}(\vartheta_i \cdot t), \qquad
   t = \mathrm{powf}(b, -2/r)

so pair ``i`` of position ``p`` carries ``i`` roundings on top of ``t``'s own
(``t^i`` amplifies ``t``'s relative error ``i`` times): at ``p = 127000`` and
``r = 128`` the angle of the fastest pairs is off by up to 0.02 rad, against
0.008 rad for one float32 product ``fl(p * fl(theta_i))``.  Then, per pair
(RoFormer Eq. 15, arXiv:2104.09864; YaRN arXiv:2309.00071 Eq. 17-22 with
ggml's ramp):

* ``theta_extrap = theta_i / freq_factors[i]`` (llama3's and LongRoPE's
  per-pair divisors, the GGUF ``rope_freqs`` tensor; 1 without it);
* ``theta_interp = freq_scale * theta_extrap`` (``freq_scale = 1 / s``);
* with ``ext_factor != 0`` (YaRN): ``mix = (1 - clip((i - lo) / max(0.001,
  hi - lo), 0, 1)) * ext_factor``, ``theta = theta_interp (1 - mix) +
  theta_extrap mix``, and the magnitude ``mscale = attn_factor * (1 + 0.1
  logf(1 / freq_scale))``; else ``theta = theta_interp``, ``mscale =
  attn_factor``;
* ``cos = cosf(theta) * mscale``, ``sin = sinf(theta) * mscale``.

Every step is a float32 operation, reproduced here with NumPy float32
(``cosf``/``sinf``/``logf``/``powf`` as correctly rounded float32 values, which
glibc's are to within an ulp).  A compiler may contract the YaRN blend into
a fused multiply-add; that changes blended pairs by at most an ulp.

Conventions: ``positions`` any integer array; results are float32 arrays of
shape ``positions.shape + (n_dims/2,)``; ``n_dims`` is the rotary dim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .errors import InputError

__all__ = ["ggml_theta_scale", "ggml_corr_dims", "ggml_angles", "ggml_cos_sin", "llama_cpp_rope_parameters",
           "llama_cpp_cos_sin"]

F32 = np.float32


def _cr(fn, x) -> np.ndarray:
    """A correctly rounded float32 libm function: ``fn`` in float64, rounded once."""
    return fn(np.asarray(x, dtype=F32).astype(np.float64)).astype(F32)


def _n_dims(n_dims) -> int:
    if isinstance(n_dims, bool) or not isinstance(n_dims, (int, np.integer)) or n_dims < 2 or n_dims % 2:
        raise InputError("n_dims", n_dims, "an even integer >= 2 (the rotary dim)")
    return int(n_dims)


def ggml_theta_scale(n_dims: int, freq_base: float) -> np.float32:
    """``powf(freq_base, -2.0f / n_dims)``: the ratio of consecutive pairs' angles."""
    n = _n_dims(n_dims)
    exponent = F32(-2.0) / F32(n)
    return F32(np.float64(F32(freq_base)) ** np.float64(exponent))


def ggml_corr_dims(n_dims: int, n_ctx_orig: int, freq_base: float, beta_fast: float = 32.0,
                   beta_slow: float = 1.0) -> tuple[np.float32, np.float32]:
    """``ggml_rope_yarn_corr_dims``: floor / ceil of the correction dims in float32, clamped to ``[0, n_dims - 1]``.

    ``cd(beta) = n_dims * logf(n_ctx_orig / (beta * 2 * (float) M_PI)) / (2 * logf(freq_base))``;
    ggml always floors and ceils (it cannot represent ``truncate: false``).
    """
    n = _n_dims(n_dims)

    def cd(beta):
        ratio = F32(n_ctx_orig) / (F32(beta) * F32(2) * F32(math.pi))
        return F32(n) * _cr(np.log, ratio) / (F32(2) * _cr(np.log, F32(freq_base)))

    start, end = np.floor(cd(beta_fast)), np.ceil(cd(beta_slow))
    return F32(max(F32(0), start)), F32(min(F32(n - 1), end))


def ggml_angles(positions, n_dims: int, freq_base: float, *, freq_scale: float = 1.0, ext_factor: float = 0.0,
                corr_dims=(0.0, 0.0), freq_factors=None) -> np.ndarray:
    """The angles ggml rotates by, float32, shape ``positions.shape + (n_dims/2,)`` (see the module docstring)."""
    n = _n_dims(n_dims)
    p = np.asarray(positions)
    if not np.issubdtype(p.dtype, np.integer):
        raise InputError("positions", f"array of dtype {p.dtype}", "an integer array (ggml's positions are int32)")
    ff = np.ones(n // 2, dtype=F32) if freq_factors is None else np.asarray(freq_factors, dtype=np.float64).astype(F32)
    if ff.shape != (n // 2,):
        raise InputError("freq_factors", f"shape {ff.shape}", f"None or ({n // 2},)")
    scale, fs, ext = ggml_theta_scale(n, freq_base), F32(freq_scale), F32(ext_factor)
    lo, hi = F32(corr_dims[0]), F32(corr_dims[1])
    out = np.empty(p.shape + (n // 2,), dtype=F32)
    theta = p.astype(F32)  # theta_base = (float) p
    for i in range(n // 2):  # the recurrence: one float32 product per pair
        extrap = theta / ff[i]
        interp = fs * extrap
        if ext != 0:
            y = (F32(i) - lo) / max(F32(0.001), hi - lo)
            mix = (F32(1) - min(F32(1), max(F32(0), y))) * ext
            interp = interp * (F32(1) - mix) + extrap * mix
        out[..., i] = interp
        theta = theta * scale
    return out


def ggml_cos_sin(positions, n_dims: int, freq_base: float, *, freq_scale: float = 1.0, ext_factor: float = 0.0,
                 attn_factor: float = 1.0, n_ctx_orig: int = 0, beta_fast: float = 32.0, beta_slow: float = 1.0,
                 freq_factors=None) -> tuple[np.ndarray, np.ndarray]:
    """ggml's float32 cos and sin tables (times its ``mscale``), each ``positions.shape + (n_dims/2,)``.

    The arguments are those of ``ggml_rope_ext``; the correction dims come
    from :func:`ggml_corr_dims` when ``ext_factor != 0``.
    """
    n = _n_dims(n_dims)
    corr = ggml_corr_dims(n, n_ctx_orig, freq_base, beta_fast, beta_slow) if ext_factor else (0.0, 0.0)
    theta = ggml_angles(positions, n, freq_base, freq_scale=freq_scale, ext_factor=ext_factor, corr_dims=corr,
                        freq_factors=freq_factors)
    mscale = F32(attn_factor)
    if ext_factor:
        mscale = mscale * (F32(1) + F32(0.1) * _cr(np.log, F32(1) / F32(freq_scale)))
    return _cr(np.cos, theta) * mscale, _cr(np.sin, theta) * mscale


def llama_cpp_rope_parameters(config, *, n_ctx: int | None = None) -> dict:
    """What llama.cpp passes ``ggml_rope_ext`` for a Hugging Face config (after its GGUF converter).

    Returns ``n_dims, freq_base, freq_scale, ext_factor, attn_factor,
    n_ctx_orig, beta_fast, beta_slow, freq_factors``.  The rules (llama.cpp
    ``src/llama-context.cpp``, ``src/llama-model.cpp``,
    ``convert_hf_to_gguf.py``, after PR #17945/#18006):

    * linear: ``freq_scale = 1/s``; YaRN: also ``ext_factor = 1`` and
      ``attn_factor = m / (1 + 0.1 ln s)`` (cancelling ggml's internal
      magnitude, so the net is :func:`yarnref.scaling.yarn_attention_factor`
      with ``rule="llama.cpp"``), except DeepSeek-2-type (MLA) models, where
      llama.cpp makes the net magnitude exactly 1 and folds the rest into the
      softmax scale;
    * llama3: ``freq_factors`` = :func:`yarnref.scaling.llama3_freq_divisors`
      (the ``rope_freqs`` tensor);
    * LongRoPE: ``freq_factors`` = the long list iff ``n_ctx > original``
      (llama.cpp#8995), ``attn_factor = sqrt(1 + ln(max/orig) / ln orig)``
      (the converter's ``rope.scaling.attn_factor``; ``factor`` and
      ``attention_factor`` are not read).
    """
    from .config import parse_rope_config, rope_frequencies
    from .scaling import llama3_freq_divisors

    rc = parse_rope_config(config)
    p = rc.params
    out = dict(n_dims=rc.rotary_dim, freq_base=rc.base, freq_scale=1.0, ext_factor=0.0, attn_factor=1.0,
               n_ctx_orig=rc.original_max_position_embeddings or rc.max_position_embeddings or 0,
               beta_fast=float(p.get("beta_fast") or 32), beta_slow=float(p.get("beta_slow") or 1), freq_factors=None)
    if rc.rope_type == "linear":
        out["freq_scale"] = 1.0 / rc.factor
    elif rc.rope_type == "yarn":
        _, m = rope_frequencies(rc, stack="llama.cpp")
        out.update(freq_scale=1.0 / rc.factor, ext_factor=1.0, attn_factor=m / (1.0 + 0.1 * math.log(rc.factor)))
    elif rc.rope_type == "llama3":
        out["freq_factors"] = llama3_freq_divisors(rc.rotary_dim, rc.base, rc.factor, p["low_freq_factor"],
                                                   p["high_freq_factor"], rc.original_max_position_embeddings)
    elif rc.rope_type == "longrope":
        if n_ctx is None:
            raise InputError("n_ctx", None, "a positive integer: llama.cpp picks LongRoPE's list from n_ctx / n_seq_max")
        _, m = rope_frequencies(rc, stack="llama.cpp", max_model_len=n_ctx)
        long = n_ctx > rc.original_max_position_embeddings
        out.update(freq_factors=p["long_factor"] if long else p["short_factor"], attn_factor=m)
    elif rc.rope_type != "default":
        raise InputError("config", f"rope_type {rc.rope_type!r}", "a rope type llama.cpp implements "
                         "(default, linear, yarn, llama3, longrope)")
    return out


def llama_cpp_cos_sin(config, positions, *, n_ctx: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's float32 cos/sin tables for a config: :func:`ggml_cos_sin` of :func:`llama_cpp_rope_parameters`."""
    if not isinstance(config, Mapping) and not hasattr(config, "rope_type"):
        raise InputError("config", type(config).__name__, "a config.json-shaped mapping or a RopeConfig")
    return ggml_cos_sin(positions, **llama_cpp_rope_parameters(config, n_ctx=n_ctx))
