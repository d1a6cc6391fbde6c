"""From a parsed config to its frequencies: :func:`rope_frequencies`, the stacks' options, one function per rope type.

:mod:`yarnref.config` reads a config.json into a validated
:class:`~yarnref.config.RopeConfig`; this module computes what that config
means, next to the scaling methods it calls (one module per method in
:mod:`yarnref.scaling`).  :data:`ROPE_FREQUENCY_FUNCTIONS` maps each rope type
to the function that computes it in float64 and its float32 twin (what the
stacks compute operation by operation, :mod:`yarnref.scaling.float32`), the
way transformers' ``ROPE_INIT_FUNCTIONS`` does; :func:`stack_options` lists
what ``stack="vllm"``, ``"llama.cpp"`` or ``"yarn_authors"`` stand for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral
from typing import Any

import numpy as np

from ..checks import check_bool, check_option
from ..config import MAX_LENGTH, STACKS, VLLM_ONLY_TYPES, RopeConfig, _finite_float, parse_rope_config
from ..errors import ConfigError, InputError
from ..rope import base_inv_freq
from . import float32 as f32
from .linear import linear_frequencies
from .llama3 import llama3_frequencies
from .longrope import MSCALE_RULES as LONGROPE_MSCALE_RULES
from .longrope import SWITCHES, longrope_frequencies, uses_long_factors
from .ntk import dynamic_ntk_base, dynamic_ntk_frequencies, ntk_frequencies, vllm_dynamic_ntk_frequencies
from .proportional import proportional_frequencies
from .yarn import CLAMPS, EPSILON_RULES, MSCALE_RULES, RAMPS, correction_range, dynamic_yarn_frequencies, yarn_frequencies

__all__ = ["ROPE_FREQUENCY_FUNCTIONS", "rope_frequencies", "stack_options"]


_STACK_DEFAULTS = {
    "transformers": dict(
        ramp="index", clamp="rotary_dim", truncate=None, epsilon_rule="transformers",
        mscale_rule="transformers", longrope_switch="current_length", dynamic_ntk="transformers",
        longrope_mscale_rule="transformers",
    ),
    "vllm": dict(
        ramp="index", clamp="rotary_dim", truncate=None, epsilon_rule="transformers",
        mscale_rule="transformers", longrope_switch="static", dynamic_ntk="vllm",
        longrope_mscale_rule="max_position",
    ),
    "llama.cpp": dict(
        ramp="index", clamp="rotary_dim", truncate=True, epsilon_rule="ggml",
        mscale_rule="llama.cpp", longrope_switch="static", dynamic_ntk=None,
        longrope_mscale_rule="max_position",
    ),
    "yarn_authors": dict(
        ramp="index", clamp="rotary_dim", truncate=True, epsilon_rule="transformers",
        mscale_rule="yarn_authors", longrope_switch=None, dynamic_ntk="transformers",
        longrope_mscale_rule=None,
    ),
}
_OPTION_VALUES = {
    "ramp": RAMPS,
    "clamp": CLAMPS,
    "epsilon_rule": EPSILON_RULES,
    "mscale_rule": MSCALE_RULES,
    "longrope_switch": SWITCHES,
    "longrope_mscale_rule": LONGROPE_MSCALE_RULES,
    "dynamic_ntk": ("transformers", "vllm"),
    "correction_length": ("original_max_position_embeddings", "max_position_embeddings"),
}


def stack_options(stack: str = "transformers", config: Mapping | RopeConfig | None = None) -> dict[str, Any]:
    """The option values ``stack`` stands for (``None`` where it has no such method).

    With a ``config`` of an MLA model (DeepSeek-style, ``qk_rope_head_dim``
    present): ``stack="vllm"`` picks ``mscale_rule="vllm_deepseek"`` and
    ``truncate=True`` (vLLM 0.33 routes these to
    ``DeepseekScalingRotaryEmbedding``, which receives neither
    ``attention_factor`` nor ``truncate`` and always floors/ceils);
    ``stack="llama.cpp"`` picks ``mscale_rule="llama.cpp_deepseek2"`` (net
    magnitude 1, llama.cpp's DEEPSEEK2 architecture).
    """
    check_option("stack", stack, STACKS)
    options = dict(_STACK_DEFAULTS[stack])
    if config is not None and stack in ("vllm", "llama.cpp") and parse_rope_config(config).is_mla:
        if stack == "vllm":
            options.update(mscale_rule="vllm_deepseek", truncate=True)
        else:
            options["mscale_rule"] = "llama.cpp_deepseek2"
    return options


def rope_frequencies(
    config: Mapping | RopeConfig,
    seq_len: int | None = None,
    *,
    stack: str = "transformers",
    ramp: str | None = None,
    clamp: str | None = None,
    truncate: bool | None = None,
    epsilon_rule: str | None = None,
    correction_length: str = "original_max_position_embeddings",
    mscale_rule: str | None = None,
    extrapolation_factor: float = 1.0,
    dynamic_yarn: bool = False,
    dynamic_ntk: str | None = None,
    longrope_switch: str | None = None,
    max_model_len: int | None = None,
    longrope_mscale_rule: str | None = None,
    precision: str = "float64",
    layer_type: str | None = None,
) -> tuple[np.ndarray, float]:
    """``(inv_freq, attention_factor)`` for a model config: float64 ``(rotary_dim/2,)`` and a Python float.

    The default is what transformers v5.23 computes (in float64 instead of its
    float32).  ``seq_len`` is the current sequence length, ``max(position_ids)
    + 1``; it matters for ``"dynamic"`` (``None``: ``max_position_embeddings``),
    for ``"longrope"`` (long factors iff ``seq_len > original``) and with
    ``dynamic_yarn``; the other types ignore it.

    Options (keyword-only).  ``stack`` sets several at once; an option given
    explicitly overrides the stack's value (:func:`stack_options` lists them):

    ========================  ==================================  ===========================================
    option                    ``stack="transformers"``            other values
    ========================  ==================================  ===========================================
    ``stack``                 transformers v5                     ``"vllm"`` (0.33), ``"llama.cpp"`` (ggml),
                                                                  ``"yarn_authors"`` (jquesnelle/yarn)
    ``ramp``                  ``"index"``                         ``"paper"`` (YaRN Def. 2)
    ``clamp``                 ``"rotary_dim"`` ([0, r-1])         ``"half"`` ([0, r/2-1], buggy ports)
    ``truncate``              from the config (default true)      ``True``/``False`` override (ggml: True)
    ``epsilon_rule``          ``"transformers"`` (hi += 0.001)    ``"ggml"`` (max(0.001, hi - lo))
    ``correction_length``     ``"original_max_position_embeddings"``  ``"max_position_embeddings"``
                                                                  (transformers < 4.45, #33783)
    ``mscale_rule``           ``"transformers"``                  ``"vllm_deepseek"``, ``"yarn_authors"``,
                                                                  ``"llama.cpp"``, ``"llama.cpp_deepseek2"``
    ``extrapolation_factor``  1.0                                 the YaRN authors' / ggml ``ext_factor``
    ``dynamic_yarn``          False                               True: YaRN with s = max(1, seq_len / L)
    ``dynamic_ntk``           ``"transformers"`` (pure in         ``"vllm"`` (static, at load)
                              seq_len)
    ``longrope_switch``       ``"current_length"``                ``"static"`` (needs ``max_model_len``)
    ``max_model_len``         None                                vLLM ``--max-model-len`` / llama.cpp
                                                                  ``n_ctx / n_seq_max``
    ``longrope_mscale_rule``  ``"transformers"`` (``attention_    ``"max_position"``: ``sqrt(1 + ln(max/L) /
                              factor`` > ``factor`` > max/L)      ln L)`` always (vLLM, llama.cpp)
    ``precision``             ``"float64"``                       ``"float32"``: the stack's float32 inv_freq
    ========================  ==================================  ===========================================

    Stack values: ``"vllm"``: static LongRoPE switch (pass ``max_model_len``),
    LongRoPE factor from ``max_position_embeddings`` (``short_mscale`` /
    ``long_mscale`` honoured), static dynamic NTK, and for MLA configs the
    DeepSeek mscale rule with truncation always on.
    ``"llama.cpp"``: always truncate, the ggml epsilon, llama.cpp's mscale
    rule (net magnitude 1 for MLA configs), LongRoPE factor from
    ``max_position_embeddings``, static LongRoPE switch; it has no dynamic
    NTK.  ``"yarn_authors"``:
    always truncate, ``m = g(s) * attention_factor``; no Llama 3 or LongRoPE.
    transformers' stateful dynamic cache is
    :class:`yarnref.scaling.DynamicNTKCache`.

    ``precision="float32"`` returns, as a float32 array, the ``inv_freq`` the
    chosen stack computes in float32 torch arithmetic, operation by operation
    (:mod:`yarnref.scaling.float32`), not a rounding of the float64 result;
    ``rope_cos_sin(inv_freq, positions, m, precision="float32",
    out_precision="bfloat16")`` then gives that stack's tables.  Not for
    ``stack="llama.cpp"`` (ggml forms angles by a recurrence, not from an
    ``inv_freq`` vector: :func:`yarnref.ggml.ggml_cos_sin`) nor ``ramp="paper"``
    (no stack computes it).

    ``layer_type``: for per-layer-type RoPE (Gemma 3's full-attention and
    sliding-window layers, :func:`rope_layer_types`), which layers' RoPE;
    default ``"full_attention"``.

    Raises :class:`~yarnref.errors.ConfigError` for a bad config and
    :class:`~yarnref.errors.InputError` for a bad option or ``seq_len``.
    """
    if precision not in ("float64", "float32"):
        raise InputError("precision", precision, "'float64' (the spec) or 'float32' (what the stack computes)")
    rc = parse_rope_config(config, layer_type)
    opts = stack_options(stack, rc)
    given = dict(ramp=ramp, clamp=clamp, truncate=truncate, epsilon_rule=epsilon_rule, mscale_rule=mscale_rule,
                 dynamic_ntk=dynamic_ntk, longrope_switch=longrope_switch, longrope_mscale_rule=longrope_mscale_rule)
    opts.update({k: v for k, v in given.items() if v is not None})
    opts["correction_length"] = correction_length
    for name, allowed in _OPTION_VALUES.items():
        if opts[name] is not None:
            check_option(name, opts[name], allowed)
    if opts["truncate"] is not None and not isinstance(opts["truncate"], bool):
        raise InputError("truncate", opts["truncate"], "None (from the config), True or False")
    if _finite_float(extrapolation_factor) is None or not 0.0 <= float(extrapolation_factor) <= 1.0:
        raise InputError("extrapolation_factor", extrapolation_factor,
                         "a number in [0, 1] (the weight of the extrapolated frequencies; 1 is YaRN)")
    for name, value in (("seq_len", seq_len), ("max_model_len", max_model_len)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or not 1 <= value <= MAX_LENGTH):
            shown = value if not (isinstance(value, int) and value > 10**30) else f"an integer of {len(str(value))} digits"
            raise InputError(name, shown, "None or an integer in [1, 2**53] (seq_len: max(position_ids) + 1)")

    dynamic_yarn = check_bool("dynamic_yarn", dynamic_yarn)
    _check_method_options(rc, stack, opts, seq_len, dynamic_yarn, max_model_len)
    if precision == "float32":
        if stack == "llama.cpp":
            raise InputError("precision", precision, "'float64' with stack='llama.cpp' (ggml's float32 angles: "
                             "yarnref.ggml.ggml_cos_sin)")
        if opts["ramp"] == "paper":
            raise InputError("precision", precision, "'float64' with ramp='paper' (no stack computes it in float32)")

    try:
        # Overflow or invalid arithmetic means the config's values do not fit float64: an error, not a NaN.
        with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
            compute, compute_float32 = ROPE_FREQUENCY_FUNCTIONS[rc.rope_type]
            inv_freq, attention = compute(rc, seq_len, opts, float(extrapolation_factor), dynamic_yarn, max_model_len)
            if precision == "float32":
                inv_freq = compute_float32(rc, seq_len, opts, float(extrapolation_factor), dynamic_yarn, max_model_len)
    except (OverflowError, ZeroDivisionError, FloatingPointError) as error:
        raise ConfigError("rope_theta", rc.base, "values whose frequencies fit in float64",
                          context=f"{rc.rope_type} with factor={rc.factor}: {error}") from error
    except InputError as error:  # options were checked above, so this comes from the config's values
        raise ConfigError(error.param, error.value, error.allowed, context=f"rope_type {rc.rope_type!r}") from error

    inv_freq = np.asarray(inv_freq, dtype=np.float32 if precision == "float32" else np.float64)
    attention = float(attention)
    positive = inv_freq >= 0 if rc.rope_type == "proportional" else inv_freq > 0  # proportional: 0 = not rotated
    if not (np.all(np.isfinite(inv_freq)) and np.all(positive)):
        raise ConfigError("rope_theta", rc.base, "values whose inverse frequencies are finite and positive in float64",
                          context=f"rope_type {rc.rope_type!r}, factor={rc.factor}, rotary_dim={rc.rotary_dim}")
    if not (math.isfinite(attention) and attention > 0):
        raise ConfigError("attention_factor", attention, "a finite positive attention factor",
                          context=f"rope_type {rc.rope_type!r}, factor={rc.factor}")
    return inv_freq, attention


def _check_method_options(rc: RopeConfig, stack, opts, seq_len, dynamic_yarn, max_model_len) -> None:
    """InputError for an option that cannot apply to this config's method."""
    def unsupported(what: str):
        return InputError("stack", stack, f"a stack that implements {what} (rope_type {rc.rope_type!r})")

    if rc.rope_type == "dynamic" and opts["dynamic_ntk"] is None:
        raise unsupported("dynamic NTK")
    if rc.rope_type == "dynamic" and rc.params.get("alpha") is not None and opts["dynamic_ntk"] != "vllm":
        raise InputError("stack", stack, "'vllm' (dynamic NTK with alpha is vLLM's DynamicNTKAlphaRotaryEmbedding)")
    if rc.rope_type in VLLM_ONLY_TYPES and stack != "vllm":
        raise InputError("stack", stack, f"'vllm' (rope_type {rc.rope_type!r} is implemented by vLLM only)")
    if rc.rope_type == "proportional" and stack != "transformers":
        raise InputError("stack", stack, "'transformers' (rope_type 'proportional' as transformers 5.24 computes it)")
    if rc.rope_type == "llama3" and stack == "yarn_authors":
        raise unsupported("the Llama 3 schedule")
    if rc.rope_type == "longrope":
        if opts["longrope_switch"] is None:
            raise unsupported("LongRoPE")
        if opts["longrope_switch"] == "static" and max_model_len is None:
            raise InputError("max_model_len", None, "a positive integer: the static LongRoPE switch decides from it")
    if dynamic_yarn and rc.rope_type != "yarn":
        raise InputError("dynamic_yarn", True, f"False for rope_type {rc.rope_type!r} (it applies to 'yarn')")
    if dynamic_yarn and seq_len is None:
        raise InputError("seq_len", None, "a positive integer with dynamic_yarn=True")
    old_length = opts["correction_length"] == "max_position_embeddings"
    if rc.rope_type == "yarn" and old_length and rc.max_position_embeddings is None:
        raise InputError("correction_length", "max_position_embeddings", "a config with max_position_embeddings")


# ----------------------------------------------------------------------------------------------
# one function per rope type: the documented extension point (as transformers' ROPE_INIT_FUNCTIONS)
#
# Each takes ``(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len)`` with the
# options already checked, and returns ``(inv_freq, attention_factor)`` (float64); its float32 twin
# returns the stack's float32 ``inv_freq`` operation by operation.


def _default(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    return base_inv_freq(rc.rotary_dim, rc.base), 1.0


def _linear(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    return linear_frequencies(rc.rotary_dim, rc.base, rc.factor)


def _dynamic(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    r, b, p = rc.rotary_dim, rc.base, rc.params
    if p.get("alpha") is not None:  # vLLM (Hunyuan): static NTK-aware base b * alpha^(r/(r-2))
        return ntk_frequencies(r, b, float(p["alpha"]))
    if opts["dynamic_ntk"] == "vllm":
        return vllm_dynamic_ntk_frequencies(r, b, rc.factor, rc.max_position_embeddings, p.get("max_trained_positions"))
    return dynamic_ntk_frequencies(r, b, rc.factor, rc.max_position_embeddings, seq_len)


def _ntk(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    mixed_b = rc.params.get("mixed_b")
    return ntk_frequencies(rc.rotary_dim, rc.base, rc.factor, variant="vllm_fixed" if mixed_b is None else "vllm_mixed",
                           mixed_b=mixed_b)


def _proportional(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    return proportional_frequencies(rc.head_dim, rc.base, rc.partial_rotary_factor, rc.factor or 1.0)


def _yarn_length_and_truncate(rc, opts) -> tuple[int, bool]:
    """YaRN's correction-range length (the original context by default) and whether to floor/ceil it."""
    if opts["correction_length"] == "max_position_embeddings":
        length = rc.max_position_embeddings
    else:
        length = rc.original_max_position_embeddings
    truncate = opts["truncate"] if opts["truncate"] is not None else bool(rc.params.get("truncate", True))
    return length, truncate


def _yarn(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    r, b, p = rc.rotary_dim, rc.base, rc.params
    length, truncate = _yarn_length_and_truncate(rc, opts)
    yarn_options = dict(
        beta_fast=p.get("beta_fast") or 32,  # transformers: `get(...) or 32`
        beta_slow=p.get("beta_slow") or 1,
        truncate=truncate,
        clamp=opts["clamp"],
        ramp=opts["ramp"],
        epsilon_rule=opts["epsilon_rule"],
        extrapolation_factor=extrapolation_factor,
        # vLLM's DeepSeek class never sees attention_factor; it reads its own key attn_factor
        attention_factor=p.get("attn_factor") if opts["mscale_rule"] == "vllm_deepseek" else p.get("attention_factor"),
        mscale=p.get("mscale"),
        mscale_all_dim=p.get("mscale_all_dim"),
        mscale_rule=opts["mscale_rule"],
    )
    if dynamic_yarn:
        return dynamic_yarn_frequencies(r, b, length, seq_len, **yarn_options)
    return yarn_frequencies(r, b, rc.factor, length, **yarn_options)


def _llama3(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    p = rc.params
    return llama3_frequencies(rc.rotary_dim, rc.base, rc.factor, p["low_freq_factor"], p["high_freq_factor"],
                              rc.original_max_position_embeddings)


def _longrope(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    p = rc.params
    attention_factor = p.get("attention_factor")
    if opts["longrope_mscale_rule"] == "max_position":  # vLLM's short_mscale / long_mscale overrides
        use_long = uses_long_factors(seq_len, rc.original_max_position_embeddings, switch=opts["longrope_switch"],
                                     max_model_len=max_model_len)
        attention_factor = p.get("long_mscale" if use_long else "short_mscale")
    return longrope_frequencies(
        rc.rotary_dim, rc.base, p["short_factor"], p["long_factor"], rc.original_max_position_embeddings,
        factor=p.get("factor"), max_position_embeddings=rc.max_position_embeddings,
        attention_factor=attention_factor, seq_len=seq_len,
        switch=opts["longrope_switch"], max_model_len=max_model_len, mscale_rule=opts["longrope_mscale_rule"],
    )


def _default_f32(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    return f32.f32_base_inv_freq(rc.rotary_dim, rc.base)


def _linear_f32(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    return f32.f32_linear(rc.rotary_dim, rc.base, rc.factor)


def _ntk_f32(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    return f32.f32_ntk_vllm_fixed(rc.rotary_dim, rc.base, rc.factor, rc.params.get("mixed_b"))


def _proportional_f32(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    return f32.f32_proportional(rc.head_dim, rc.base, rc.partial_rotary_factor, rc.factor or 1.0)


def _dynamic_f32(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    r, b, p = rc.rotary_dim, rc.base, rc.params
    if p.get("alpha") is not None:
        return f32.f32_base_inv_freq(r, b * float(p["alpha"]) ** (r / (r - 2)))
    if opts["dynamic_ntk"] == "vllm":
        current = rc.max_position_embeddings
        trained = p.get("max_trained_positions") or current
        new_base = b * ((rc.factor * current / trained) - (rc.factor - 1)) ** (r / (r - 2))
    else:
        new_base = dynamic_ntk_base(b, rc.factor, r, rc.max_position_embeddings, seq_len)
    return f32.f32_base_inv_freq(r, new_base)


def _yarn_f32(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    r, b, p = rc.rotary_dim, rc.base, rc.params
    length, truncate = _yarn_length_and_truncate(rc, opts)
    factor = max(1.0, seq_len / length) if dynamic_yarn else rc.factor
    lo, hi = correction_range(r, b, length, p.get("beta_fast") or 32, p.get("beta_slow") or 1, truncate, opts["clamp"])
    if truncate:  # transformers keeps floor/ceil as Python ints; the float32 results are the same
        lo, hi = int(lo), int(hi)
    return f32.f32_yarn(r, b, factor, lo, hi, epsilon_rule=opts["epsilon_rule"], extrapolation_factor=extrapolation_factor)


def _llama3_f32(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    p = rc.params
    return f32.f32_llama3(rc.rotary_dim, rc.base, rc.factor, p["low_freq_factor"], p["high_freq_factor"],
                          rc.original_max_position_embeddings)


def _longrope_f32(rc, seq_len, opts, extrapolation_factor, dynamic_yarn, max_model_len):
    use_long = uses_long_factors(seq_len, rc.original_max_position_embeddings, switch=opts["longrope_switch"],
                                 max_model_len=max_model_len)
    return f32.f32_longrope(rc.rotary_dim, rc.base, rc.params["long_factor" if use_long else "short_factor"])


#: ``rope_type -> (float64 function, float32 function)``: how :func:`rope_frequencies` computes each
#: canonical type of :data:`yarnref.config.ROPE_TYPES` (the parser's aliases are resolved before).
ROPE_FREQUENCY_FUNCTIONS = {
    "default": (_default, _default_f32),
    "linear": (_linear, _linear_f32),
    "dynamic": (_dynamic, _dynamic_f32),
    "ntk": (_ntk, _ntk_f32),
    "proportional": (_proportional, _proportional_f32),
    "yarn": (_yarn, _yarn_f32),
    "llama3": (_llama3, _llama3_f32),
    "longrope": (_longrope, _longrope_f32),
}
