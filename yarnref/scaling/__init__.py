"""The RoPE scaling family, one module per method, each a pure function of its parameters.

Every ``*_frequencies`` function returns ``(inv_freq, attention_factor)``:
``inv_freq`` the float64 inverse frequencies of the ``rotary_dim / 2``
rotation planes, ``attention_factor`` the Python float multiplied into cos and
sin.  At ``factor = 1`` every method gives back plain RoPE
(:func:`yarnref.rope.base_inv_freq`, attention factor 1).

=================  ======================================  ====================
module             method                                  paper
=================  ======================================  ====================
:mod:`.linear`     Position Interpolation                  arXiv:2306.15595
:mod:`.ntk`        NTK-aware, dynamic NTK                  arXiv:2309.00071 §3
:mod:`.yarn`       YaRN, dynamic YaRN, DeepSeek mscale     arXiv:2309.00071
:mod:`.llama3`     Llama 3.1 schedule                      arXiv:2407.21783
:mod:`.longrope`   LongRoPE (Phi-3 "su")                   arXiv:2402.13753
:mod:`.proportional` proportional RoPE (Gemma 4)           transformers 5.24
:mod:`.float32`    all of them as the stacks round them    (float32 emulation)
=================  ======================================  ====================

A model's config.json goes through :func:`yarnref.config.rope_frequencies`,
which picks the method and its parameters.
"""

from __future__ import annotations

from .linear import interpolate_positions, linear_frequencies
from .llama3 import llama3_freq_divisors, llama3_frequencies
from .longrope import longrope_attention_factor, longrope_frequencies, uses_long_factors
from .proportional import proportional_frequencies
from .ntk import (
    DynamicNTKCache,
    dynamic_ntk_base,
    dynamic_ntk_frequencies,
    ntk_aware_base,
    ntk_frequencies,
    vllm_dynamic_ntk_frequencies,
)
from .yarn import (
    correction_dim,
    correction_range,
    deepseek_softmax_scale,
    dynamic_yarn_frequencies,
    get_mscale,
    linear_ramp,
    paper_ramp,
    yarn_attention_factor,
    yarn_frequencies,
)

__all__ = [
    "DynamicNTKCache",
    "correction_dim",
    "correction_range",
    "deepseek_softmax_scale",
    "dynamic_ntk_base",
    "dynamic_ntk_frequencies",
    "dynamic_yarn_frequencies",
    "get_mscale",
    "interpolate_positions",
    "linear_frequencies",
    "linear_ramp",
    "llama3_freq_divisors",
    "llama3_frequencies",
    "longrope_attention_factor",
    "longrope_frequencies",
    "ntk_aware_base",
    "ntk_frequencies",
    "paper_ramp",
    "proportional_frequencies",
    "uses_long_factors",
    "vllm_dynamic_ntk_frequencies",
    "yarn_attention_factor",
    "yarn_frequencies",
]
