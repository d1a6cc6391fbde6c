"""A model's config.json (Hugging Face key names) to a validated RoPE spec, and its frequencies.

:func:`parse_rope_config` reads the keys transformers v5 reads, the way it
reads them, and returns a frozen :class:`RopeConfig`; :func:`rope_frequencies`
turns a config into ``(inv_freq, attention_factor)`` with the scaling modules
of :mod:`yarnref.scaling`.

What is read (transformers v5.23 ``RotaryEmbeddingConfigMixin`` and
``modeling_rope_utils``):

* the RoPE parameters from ``rope_scaling`` (the old name; it wins when both are
  given, as in transformers) or ``rope_parameters`` (v5); the type from
  ``rope_type``, else the legacy ``type``, else ``"default"``; ``"su"`` is
  LongRoPE (Phi-3), and for ``model_type == "phi3"`` so is ``"yarn"``;
* ``rope_theta`` inside the parameters (v5), else at the top level
  (``rotary_emb_base`` for GPT-NeoX), else transformers' default 10000; the same
  for ``partial_rotary_factor`` (``rotary_pct`` for GPT-NeoX, whose default is
  0.25; 1 otherwise);
* the head dim: ``qk_rope_head_dim`` for DeepSeek-style MLA models (the rotary
  sub-head; ``partial_rotary_factor`` does not apply to it), else ``head_dim``,
  else ``hidden_size // num_attention_heads``; ``rotary_dim =
  int(head_dim * partial_rotary_factor)``;
* ``original_max_position_embeddings`` (yarn, longrope, llama3): the top-level
  value if present (transformers' Phi-3 rule, applied to every model), else
  the one inside the parameters, else ``max_position_embeddings`` — silently in
  transformers, with a warning here;
* ``dual_chunk_attention_config`` is kept raw (:mod:`yarnref.dca` parses it).

Bad configs raise :class:`~yarnref.errors.ConfigError` naming the key (dotted for
nested keys, e.g. ``rope_scaling.factor``), the value and what is allowed.
Where transformers only logs a warning about something that makes the numbers
meaningless (``factor < 1``, wrong list lengths, ``beta_fast < beta_slow``,
odd rotary dims) yarnref refuses; where a config is usable but real stacks read
it differently, or it looks wrong, the fact is recorded in
``RopeConfig.warnings`` and nothing is repaired.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, NamedTuple

import numpy as np

from .checks import foreign_array_type, shown
from .checks import is_int as _is_int
from .errors import ConfigError, InputError
from .scaling.yarn import correction_dim, correction_range

__all__ = [
    "ROPE_TYPES",
    "ROPE_TYPE_ALIASES",
    "STACKS",
    "RopeConfig",
    "parse_rope_config",
    "rope_layer_types",
    "rope_frequencies",
    "stack_options",
    "ROPE_FREQUENCY_FUNCTIONS",
    "DCAConfig",
    "dca_config",
    "SPARSE_PATTERN",
    "SparseHeadBudgets",
    "sparse_attention_config_for",
]

#: The canonical rope types: transformers' names, then vLLM's ``"ntk"`` (fixed / mixed NTK, vLLM only).
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional", "ntk")
#: Rope types only vLLM implements (``stack="vllm"``); dynamic NTK with ``alpha`` (Hunyuan) is one too.
VLLM_ONLY_TYPES = ("ntk",)
#: Other names accepted for them.
ROPE_TYPE_ALIASES = {"su": "longrope", "mrope": "default"}
#: ``stack`` values of :func:`rope_frequencies`.
STACKS = ("transformers", "vllm", "llama.cpp", "yarn_authors")

DEFAULT_ROPE_THETA = 10000.0  # transformers' RotaryEmbeddingConfigMixin.default_theta

# Keys transformers reads for each type (validate_rope's required + optional keys).
_COMMON_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
_TYPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor", "alpha", "max_trained_positions"},
    "ntk": {"factor", "mixed_b"},
    "proportional": {"factor"},
    "yarn": {
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
    },
    "longrope": {"short_factor", "long_factor", "original_max_position_embeddings", "attention_factor", "factor"},
    "llama3": {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"},
}
_NEEDS_ORIGINAL = ("yarn", "longrope", "llama3")
_NEEDS_FACTOR = ("linear", "yarn", "llama3", "ntk")


@dataclass(frozen=True)
class RopeConfig:
    """A validated RoPE spec read from a config.json-shaped mapping.

    Fields:

    * ``rope_type``: one of :data:`ROPE_TYPES`.
    * ``head_dim``: the head dim RoPE is applied within (``qk_rope_head_dim``
      for MLA models); ``rotary_dim``: the rotated features,
      ``int(head_dim * partial_rotary_factor)``, even; ``base``: ``rope_theta``.
    * ``max_position_embeddings``, ``original_max_position_embeddings``: as
      resolved (``None`` where absent and not needed).
    * ``factor``: the scale ``s`` (``None`` for ``"default"``; for LongRoPE
      without a ``factor`` key, transformers' ``max_position_embeddings /
      original_max_position_embeddings``).
    * ``params``: the normalized RoPE parameters (read-only mapping): canonical
      ``rope_type``, ``rope_theta``, ``partial_rotary_factor`` and
      ``original_max_position_embeddings`` filled in as transformers does,
      every other given key as given.
    * ``warnings``: what real stacks read differently, or what looks wrong.
    * ``dual_chunk_attention``: the raw ``dual_chunk_attention_config`` or None.
    * ``source``: a plain copy of the mapping given.
    * ``model_type``; ``qk_nope_head_dim`` (MLA models, else None): with
      ``rotary_dim`` it gives DeepSeek's softmax head dim for
      :func:`yarnref.scaling.deepseek_softmax_scale`.
    * ``layer_types``: the layer types with their own RoPE, for configs with
      per-layer-type RoPE (Gemma 3: ``("full_attention",
      "sliding_attention")``), else ``()``; ``layer_type``: the one this spec
      describes (None for a single RoPE).
    """

    rope_type: str
    head_dim: int
    rotary_dim: int
    base: float
    partial_rotary_factor: float
    max_position_embeddings: int | None
    original_max_position_embeddings: int | None
    factor: float | None
    params: Mapping[str, Any]
    warnings: tuple[str, ...]
    dual_chunk_attention: Mapping[str, Any] | None
    source: Mapping[str, Any]
    model_type: str | None = None
    qk_nope_head_dim: int | None = None
    layer_type: str | None = None
    layer_types: tuple[str, ...] = ()

    @property
    def is_mla(self) -> bool:
        """True for DeepSeek-style configs (``qk_rope_head_dim`` present)."""
        return self.qk_nope_head_dim is not None


# ----------------------------------------------------------------------------------------------
# Small checks.  Each returns the cleaned value or raises ConfigError naming the key.


MAX_LENGTH = 2**53  # lengths are exact in float64 up to here
MAX_HEAD_DIM = 65536


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _finite_float(value) -> float | None:
    """``float(value)`` for a finite real number (not a bool), else None (huge ints included)."""
    if not _is_number(value):
        return None
    try:
        value = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return value if math.isfinite(value) else None


def _number(key: str, value, what: str, *, above=None, at_least=None, at_most=None) -> float:
    """``float(value)`` if it is a finite number within the bounds, else ConfigError(key, value, what)."""
    number = _finite_float(value)
    if (
        number is None
        or (above is not None and number <= above)
        or (at_least is not None and number < at_least)
        or (at_most is not None and number > at_most)
    ):
        raise ConfigError(key, value, what)
    return number


def _positive_int(key: str, value, what: str = "", maximum: int = MAX_LENGTH) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not 1 <= value <= maximum:
        raise ConfigError(key, value, what or f"a positive integer <= {maximum}")
    return int(value)


def _plain(obj, depth: int = 0, key: str = "config"):
    """A plain copy: mappings to dicts, lists/tuples to lists (so the source cannot change under us).

    Arrays are refused where JSON would hold a number or a list: comparing them is ambiguous.
    """
    if depth > 100:
        raise ConfigError("config", "a structure nested more than 100 levels deep", "a config.json-shaped mapping")
    if isinstance(obj, Mapping):
        return {k: _plain(v, depth + 1, k if depth == 0 else f"{key}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1, f"{key}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray) or foreign_array_type(obj) is not None:  # NumPy scalars are numbers: kept
        raise ConfigError(key, shown(obj), "a JSON value (a number, string, boolean, null, list or mapping), not an array")
    return obj


def _factor_list(key: str, values, n_pairs: int) -> list[float]:
    what = f"a list of {n_pairs} finite positive numbers (rotary_dim / 2)"
    if not isinstance(values, (list, tuple)):
        raise ConfigError(key, values, what)
    if len(values) != n_pairs:
        raise ConfigError(key, f"a list of length {len(values)}", what)
    cleaned = [_finite_float(v) for v in values]
    for v, c in zip(values, cleaned):
        if c is None or c <= 0:
            raise ConfigError(key, v, what)
    return cleaned


# ----------------------------------------------------------------------------------------------
# parse_rope_config


def _rope_parameters(cfg: Mapping, notes: list[str]) -> tuple[str, dict]:
    """``(key, mapping)``: which of rope_scaling / rope_parameters holds the RoPE parameters."""
    for key in ("rope_scaling", "rope_parameters"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(key, value, "a mapping of RoPE parameters, or null")
    scaling, parameters = cfg.get("rope_scaling"), cfg.get("rope_parameters")
    if scaling:  # transformers: rope_parameters = rope_scaling or rope_parameters
        if parameters and dict(parameters) != dict(scaling):
            notes.append(
                "both rope_scaling and rope_parameters are given and differ; transformers uses rope_scaling "
                "(as here) and ignores rope_parameters"
            )
        key, raw = "rope_scaling", dict(scaling)
    elif parameters:
        key, raw = "rope_parameters", dict(parameters)
    else:
        key, raw = ("rope_parameters" if "rope_parameters" in cfg else "rope_scaling"), {}
    for name, value in raw.items():
        if isinstance(value, Mapping):
            raise ConfigError(
                f"{key}.{name}",
                value,
                "a flat mapping of RoPE parameters (per-layer-type rope_parameters, as in Gemma 3, are not supported)",
            )
    return key, raw


def _rope_type(key: str, raw: Mapping, model_type, notes: list[str]) -> str:
    allowed = f"one of {ROPE_TYPES} (or the aliases {sorted(ROPE_TYPE_ALIASES)})"
    given = raw.get("rope_type")
    legacy = raw.get("type")
    if given is None:
        given = "default" if legacy is None else legacy
        type_key = f"{key}.type" if legacy is not None else f"{key}.rope_type"
    else:
        type_key = f"{key}.rope_type"
        if legacy is not None and legacy != given:
            notes.append(f"{key} has rope_type={given!r} and type={legacy!r}; transformers uses rope_type (as here)")
    if not isinstance(given, str):
        raise ConfigError(type_key, given, allowed)
    rope_type = ROPE_TYPE_ALIASES.get(given, given)
    if given == "su" and raw.get("original_max_position_embeddings") is None:
        notes.append(
            f"legacy {key}.type 'su': transformers 5.23's Phi3Config renames it to 'longrope' only after "
            "standardize_rope_params, so the top-level original_max_position_embeddings is not copied in and "
            "validate_rope raises KeyError; with type 'longrope' (or the key inside the parameters) it loads"
        )
    if given == "mrope":
        notes.append(
            "rope_type 'mrope' (Qwen2-VL multimodal RoPE) has default frequencies; its 3-D position ids "
            "(mrope_section) are not modelled by yarnref"
        )
    if model_type == "phi3" and rope_type == "yarn":
        notes.append("model_type 'phi3' with rope_type 'yarn': transformers' Phi3Config reads 'longrope' (as here)")
        rope_type = "longrope"
    if rope_type not in ROPE_TYPES:
        raise ConfigError(type_key, given, allowed)
    return rope_type


def _dims(cfg: Mapping, key: str, raw: Mapping, notes: list[str]) -> tuple[int, int, float, int | None]:
    """``(head_dim, rotary_dim, partial_rotary_factor, qk_nope_head_dim)``."""
    prf_key, prf = f"{key}.partial_rotary_factor", raw.get("partial_rotary_factor")
    if prf is None:
        for name in ("partial_rotary_factor", "rotary_pct"):
            if cfg.get(name) is not None:
                prf_key, prf = name, cfg[name]
                break
        else:
            if cfg.get("model_type") == "gpt_neox" and cfg.get("qk_rope_head_dim") is None:
                prf_key, prf = "rotary_pct", 0.25
                notes.append("gpt_neox without rotary_pct: transformers' GPTNeoXConfig defaults it to 0.25 (as here)")
    elif cfg.get("partial_rotary_factor") is not None and cfg["partial_rotary_factor"] != prf:
        notes.append(
            f"partial_rotary_factor differs: {prf} in {key}, {cfg['partial_rotary_factor']} at the top level; "
            "transformers uses the one in the RoPE parameters (as here)"
        )
    prf = 1.0 if prf is None else _number(prf_key, prf, "a number in (0, 1]", above=0.0, at_most=1.0)

    if cfg.get("qk_rope_head_dim") is not None:  # DeepSeek-style MLA: RoPE lives on its own sub-head
        rotary = _positive_int("qk_rope_head_dim", cfg["qk_rope_head_dim"], maximum=MAX_HEAD_DIM)
        nope = cfg.get("qk_nope_head_dim")
        nope = 0 if nope is None else nope
        if isinstance(nope, bool) or not isinstance(nope, Integral) or not 0 <= nope <= MAX_HEAD_DIM:
            raise ConfigError("qk_nope_head_dim", nope, f"an integer in [0, {MAX_HEAD_DIM}]")
        if rotary % 2:
            raise ConfigError("qk_rope_head_dim", rotary, "an even integer (the rotary dim of MLA models)")
        if prf != 1.0:
            notes.append(
                f"partial_rotary_factor={prf} is ignored for the MLA rope sub-head (qk_rope_head_dim={rotary} is the "
                "rotary dim); applying it there is a known bug (vllm#41185)"
            )
        return rotary, rotary, 1.0, int(nope)

    head_dim = cfg.get("head_dim")
    if head_dim is None:
        hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
        if hidden is None or heads is None:
            raise ConfigError("head_dim", None, "a positive integer, or hidden_size and num_attention_heads")
        hidden = _positive_int("hidden_size", hidden)
        heads = _positive_int("num_attention_heads", heads)
        if hidden % heads:
            notes.append(
                f"hidden_size={hidden} is not a multiple of num_attention_heads={heads}; transformers uses "
                f"head_dim = hidden_size // num_attention_heads = {hidden // heads}"
            )
        head_dim = hidden // heads
        if not 1 <= head_dim <= MAX_HEAD_DIM:
            raise ConfigError("hidden_size", hidden, f"num_attention_heads={heads} x a head_dim in [1, {MAX_HEAD_DIM}]")
    head_dim = _positive_int("head_dim", head_dim, maximum=MAX_HEAD_DIM)
    rotary = int(head_dim * prf)
    if rotary < 2 or rotary % 2:
        bad_key = "head_dim" if prf == 1.0 else prf_key
        raise ConfigError(
            bad_key,
            head_dim if prf == 1.0 else prf,
            "a value making rotary_dim = int(head_dim * partial_rotary_factor) even and >= 2",
            context=f"head_dim={head_dim}, partial_rotary_factor={prf} give rotary_dim={rotary}",
        )
    return head_dim, rotary, prf, None


def _base(cfg: Mapping, key: str, raw: Mapping, notes: list[str]) -> float:
    top_name = "rope_theta" if cfg.get("rope_theta") is not None else "rotary_emb_base"  # GPT-NeoX's old name
    inner, top = raw.get("rope_theta"), cfg.get(top_name)
    if inner is not None:
        if top is not None and top != inner:
            notes.append(f"rope_theta differs: {inner} in {key}, {top} at the top level; transformers uses {inner}")
        name, value = f"{key}.rope_theta", inner
    elif top is not None:
        name, value = top_name, top
    else:
        notes.append(f"rope_theta is missing: using transformers' default {DEFAULT_ROPE_THETA} (some models differ)")
        name, value = "rope_theta", DEFAULT_ROPE_THETA
    return _number(name, value, "a finite number > 1 (the RoPE base)", above=1.0)


def _original(cfg: Mapping, key: str, raw: Mapping, rope_type: str, max_pos, notes: list[str]) -> int | None:
    top, inner = cfg.get("original_max_position_embeddings"), raw.get("original_max_position_embeddings")
    needed = rope_type in _NEEDS_ORIGINAL
    if top is not None:
        value = _positive_int("original_max_position_embeddings", top)
        if needed and inner is not None and inner != top:
            notes.append(
                f"original_max_position_embeddings differs: {top} at the top level, {inner} in {key}; "
                "transformers uses the top-level value (as here)"
            )
        elif inner is not None:
            _positive_int(f"{key}.original_max_position_embeddings", inner)
        return value
    if inner is not None:
        return _positive_int(f"{key}.original_max_position_embeddings", inner)
    if not needed:
        return None
    if max_pos is None:
        raise ConfigError(
            f"{key}.original_max_position_embeddings",
            None,
            f"a positive integer (required for rope_type {rope_type!r}), or max_position_embeddings",
        )
    notes.append(
        f"rope_type {rope_type!r} without original_max_position_embeddings: transformers silently uses "
        f"max_position_embeddings={max_pos} as the original length (as here); if the model was extended from a "
        "shorter length this is wrong (transformers#33783)"
    )
    return max_pos


def rope_layer_types(config: Mapping) -> tuple[str, ...]:
    """The layer types that have their own RoPE in ``config`` (sorted), or ``()`` if all layers share one.

    transformers 5.24 reads per-layer-type RoPE from

    * v5 configs: ``rope_parameters`` (or ``rope_scaling``) mapping each layer
      type to its parameters, e.g. ``{"full_attention": {...},
      "sliding_attention": {...}}``;
    * Gemma 3's v4 configs (``model_type`` ``gemma3`` / ``gemma3_text``):
      ``rope_scaling`` and ``rope_theta`` (default 1e6) for the full-attention
      layers, default RoPE at ``rope_local_base_freq`` (default 1e4) for the
      sliding-window layers (``Gemma3TextConfig.convert_rope_params_to_dict``).
    """
    if not isinstance(config, Mapping):
        return ()
    for key in ("rope_scaling", "rope_parameters"):
        value = config.get(key)
        if isinstance(value, Mapping) and value and any(isinstance(v, Mapping) for v in value.values()):
            return tuple(sorted(str(k) for k, v in value.items() if isinstance(v, Mapping)))
    if str(config.get("model_type", "")).startswith("gemma3"):
        return ("full_attention", "sliding_attention")
    return ()


_GEMMA3_THETA = {"full_attention": 1_000_000.0, "sliding_attention": 10_000.0}  # Gemma3TextConfig.default_theta


def _layer_config(cfg: dict, layer_type: str, layer_types: tuple[str, ...], notes: list[str]) -> dict:
    """A flat config (one RoPE) for ``layer_type`` of a per-layer-type config."""
    flat = {k: v for k, v in cfg.items() if k not in ("rope_scaling", "rope_parameters", "rope_local_base_freq")}
    nested = None
    for key in ("rope_scaling", "rope_parameters"):
        value = cfg.get(key)
        if isinstance(value, Mapping) and any(isinstance(v, Mapping) for v in value.values()):
            nested = (key, value)
            break
    if nested is not None:
        key, value = nested
        params = dict(value[layer_type])
        if str(cfg.get("model_type", "")).startswith("gemma3"):
            params.setdefault("rope_theta", cfg.get("rope_theta") if layer_type == "full_attention"
                              and cfg.get("rope_theta") is not None else _GEMMA3_THETA.get(layer_type))
    else:  # Gemma 3, v4 layout
        if layer_type == "full_attention":
            params = dict(cfg.get("rope_scaling") or {"rope_type": "default"})
            params.setdefault("rope_theta", cfg.get("rope_theta") or _GEMMA3_THETA["full_attention"])
        else:
            params = {"rope_type": "default",
                      "rope_theta": cfg.get("rope_local_base_freq") or _GEMMA3_THETA["sliding_attention"]}
    flat.pop("rope_theta", None)
    flat["rope_parameters"] = params
    others = [t for t in layer_types if t != layer_type]
    if others:
        notes.append(
            f"per-layer-type RoPE: layer types {list(layer_types)} each have their own RoPE (transformers reads them "
            f"separately); this is {layer_type!r} ({params.get('rope_type', params.get('type', 'default'))} at base "
            f"{params.get('rope_theta')}); pass layer_type={others[0]!r} for the other" + ("s" if len(others) > 1 else "")
        )
    return flat


def parse_rope_config(config: Mapping | RopeConfig, layer_type: str | None = None) -> RopeConfig:
    """Validate a config.json-shaped mapping and return its :class:`RopeConfig`.

    ``layer_type``: for configs with per-layer-type RoPE
    (:func:`rope_layer_types`, e.g. Gemma 3), which layers' RoPE to read
    (default ``"full_attention"``, with a warning naming the others); must be
    None for other configs.  A :class:`RopeConfig` is returned unchanged.  Raises
    :class:`~yarnref.errors.ConfigError` for unknown rope types, missing
    required keys, ``factor < 1`` or not a number, odd or zero rotary dims,
    factor lists of the wrong length, ``beta_fast < beta_slow``, non-positive
    lengths and values of the wrong type.
    """
    if isinstance(config, RopeConfig):
        if layer_type is not None and layer_type != config.layer_type:
            raise InputError("layer_type", layer_type, f"{config.layer_type!r} (the RopeConfig given was parsed for it)")
        return config
    if not isinstance(config, Mapping):
        raise ConfigError("config", shown(config), "a mapping shaped like a Hugging Face config.json")
    cfg = _plain(config)
    notes: list[str] = []
    layer_types = rope_layer_types(cfg)
    source = cfg
    if layer_types:
        if layer_type is None:
            layer_type = "full_attention" if "full_attention" in layer_types else layer_types[0]
        if layer_type not in layer_types:
            raise InputError("layer_type", layer_type, f"one of {list(layer_types)}")
        cfg = _layer_config(cfg, layer_type, layer_types, notes)
        nested_key = next((k for k in ("rope_scaling", "rope_parameters") if isinstance(source.get(k), Mapping)
                           and any(isinstance(v, Mapping) for v in source[k].values())), None)
        try:
            return _parse_flat(cfg, notes, source, layer_type, layer_types)
        except ConfigError as error:  # name the key as it is in the config given
            if nested_key is None or not error.key.startswith("rope_parameters"):
                raise
            key = nested_key + "." + layer_type + error.key[len("rope_parameters"):]
            raise ConfigError(key, error.value, error.allowed, context=getattr(error, "context", None)) from error
    elif layer_type is not None:
        raise InputError("layer_type", layer_type, "None (this config has one RoPE for every layer)")
    return _parse_flat(cfg, notes, source, None, ())


def _parse_flat(cfg: dict, notes: list[str], source: dict, layer_type, layer_types) -> RopeConfig:
    """parse_rope_config for a config with one RoPE (per-layer-type configs are flattened first)."""
    model_type = cfg.get("model_type")
    model_type = model_type if isinstance(model_type, str) else None

    key, raw = _rope_parameters(cfg, notes)
    rope_type = _rope_type(key, raw, model_type, notes)
    base = _base(cfg, key, raw, notes)
    head_dim, rotary, prf, qk_nope = _dims(cfg, key, raw, notes)
    if rope_type == "proportional":  # pairs span the whole head; the tail pairs get frequency 0
        if head_dim % 2:
            raise ConfigError("head_dim", head_dim, "an even integer (proportional RoPE pairs the whole head)")
        rotary = head_dim
    max_pos = cfg.get("max_position_embeddings")
    max_pos = None if max_pos is None else _positive_int("max_position_embeddings", max_pos)
    original = _original(cfg, key, raw, rope_type, max_pos, notes)

    params: dict[str, Any] = {k: v for k, v in raw.items() if k != "type"}
    params.update(rope_type=rope_type, rope_theta=base, partial_rotary_factor=prf)
    if original is not None and rope_type in _NEEDS_ORIGINAL:
        params["original_max_position_embeddings"] = original

    factor = _check_type_parameters(rope_type, key, params, rotary, max_pos, original, model_type, notes)
    if factor is not None and not factor * (original or max_pos or 1) <= MAX_LENGTH:
        raise ConfigError(f"{key}.factor", params.get("factor", factor),
                          f"a factor with factor x original length ({original or max_pos or 1}) <= 2**53 tokens")

    unknown = set(raw) - _COMMON_KEYS - _TYPE_KEYS[rope_type] - {"mrope_section"}
    if unknown:
        ignored = sorted(map(str, unknown))
        notes.append(f"keys in {key} that transformers ignores for rope_type {rope_type!r}: {ignored}")

    dca = cfg.get("dual_chunk_attention_config")
    if dca is not None and not isinstance(dca, Mapping):
        raise ConfigError("dual_chunk_attention_config", dca, "a mapping, or null")
    if dca is not None and rope_type != "default":
        notes.append(
            f"dual_chunk_attention_config is set together with rope_type {rope_type!r}: vLLM then uses "
            "DualChunkRotaryEmbedding with the plain base and ignores the rope scaling"
        )

    return RopeConfig(
        rope_type=rope_type,
        head_dim=head_dim,
        rotary_dim=rotary,
        base=base,
        partial_rotary_factor=prf,
        max_position_embeddings=max_pos,
        original_max_position_embeddings=original,
        factor=factor,
        params=types.MappingProxyType(params),
        warnings=tuple(notes),
        dual_chunk_attention=None if dca is None else types.MappingProxyType(dca),
        source=types.MappingProxyType(source),
        model_type=model_type,
        qk_nope_head_dim=qk_nope,
        layer_type=layer_type if layer_types else None,
        layer_types=layer_types,
    )


def _check_type_parameters(rope_type, key, params, rotary, max_pos, original, model_type, notes) -> float | None:
    """Check the parameters of one rope type; return the scale factor (None for default)."""
    if rope_type == "default":
        if params.get("factor") is not None:
            notes.append(f"{key}.factor={params['factor']!r} is ignored: rope_type is 'default'")
        return None

    factor = params.get("factor")
    if rope_type in _NEEDS_FACTOR or factor is not None:
        if factor is None:
            raise ConfigError(f"{key}.factor", None, f"a number >= 1 (required for rope_type {rope_type!r})")
        factor = _number(f"{key}.factor", factor, "a finite number >= 1", at_least=1.0)

    if rope_type == "dynamic":
        alpha = params.get("alpha")
        if alpha is not None:
            _number(f"{key}.alpha", alpha, "a finite number > 0 (vLLM's dynamic NTK alpha)", above=0.0)
            notes.append("dynamic with alpha (Hunyuan): only vLLM implements it (DynamicNTKAlphaRotaryEmbedding, "
                         "a static base b * alpha^(r/(r-2))); use stack='vllm'")
        elif factor is None:
            raise ConfigError(f"{key}.factor", None, "a number >= 1 (required for rope_type 'dynamic' without alpha)")
        if max_pos is None:
            raise ConfigError("max_position_embeddings", None, "a positive integer (dynamic NTK scales relative to it)")
        if rotary < 4:
            raise ConfigError(f"{key}.rope_type", "dynamic", f"not 'dynamic' for rotary_dim={rotary} (NTK needs r > 2)")
        if params.get("max_trained_positions") is not None:
            _positive_int(f"{key}.max_trained_positions", params["max_trained_positions"])

    elif rope_type == "yarn":
        _check_yarn(key, params, factor, rotary, max_pos, original, model_type, notes)

    elif rope_type == "ntk":
        if rotary < 4:
            raise ConfigError(f"{key}.rope_type", "ntk", f"not 'ntk' for rotary_dim={rotary} (NTK needs r > 2)")
        if params.get("mixed_b") is not None:
            _number(f"{key}.mixed_b", params["mixed_b"], "a finite number > 0 (vLLM's mixed NTK exponent)", above=0.0)
        notes.append("rope_type 'ntk' (fixed or mixed NTK, kexue.fm/archives/9706): only vLLM implements it "
                     "(NTKScalingRotaryEmbedding); use stack='vllm'")

    elif rope_type == "llama3":
        what = "a finite number > 0 (required for llama3)"
        low = _number(f"{key}.low_freq_factor", params.get("low_freq_factor"), what, above=0.0)
        high = _number(f"{key}.high_freq_factor", params.get("high_freq_factor"), what, above=0.0)
        if high < low:
            notes.append(
                f"llama3 high_freq_factor={high} < low_freq_factor={low}: the smooth band is empty; computed as "
                "transformers does (slow pairs / factor, the rest kept)"
            )
        elif high == low:
            notes.append(
                f"llama3 low_freq_factor == high_freq_factor == {low} (as in Llama 4): no smooth band; transformers "
                "divides by zero there and masks it, vLLM uses 0 (as here); Meta's apply_scaling and llama.cpp's "
                "converter reject it"
            )
        if max_pos is not None and original >= max_pos:
            notes.append(
                f"llama3 original_max_position_embeddings={original} >= max_position_embeddings={max_pos} "
                "(transformers warns about this)"
            )

    elif rope_type == "longrope":
        n = rotary // 2
        params["short_factor"] = _factor_list(f"{key}.short_factor", params.get("short_factor"), n)
        params["long_factor"] = _factor_list(f"{key}.long_factor", params.get("long_factor"), n)
        if params.get("attention_factor") is not None:
            _number(f"{key}.attention_factor", params["attention_factor"], "a finite number > 0, or null", above=0.0)
        if factor is None:
            if max_pos is None:
                raise ConfigError(f"{key}.factor", None, "a number >= 1, or max_position_embeddings to derive it from")
            factor = max_pos / original  # transformers' implicit factor (Phi-3 configs have none)
    return factor


def _check_yarn(key, params, factor, rotary, max_pos, original, model_type, notes) -> None:
    betas = {}
    for name, default in (("beta_fast", 32.0), ("beta_slow", 1.0)):
        value = params.get(name)
        betas[name] = default if value is None else _number(f"{key}.{name}", value, "a finite number > 0", above=0.0)
    if betas["beta_fast"] < betas["beta_slow"]:
        raise ConfigError(f"{key}.beta_fast", betas["beta_fast"], f"a number >= beta_slow = {betas['beta_slow']}")
    for name, beta in betas.items():  # extreme but finite betas (1e308, 1e-308) put the ramp outside float64
        try:
            dim = correction_dim(beta, rotary, params["rope_theta"], original)
        except (ValueError, OverflowError, ZeroDivisionError):
            dim = math.nan
        if not math.isfinite(dim):
            raise ConfigError(f"{key}.{name}", params.get(name, beta),
                              "a number > 0 whose YaRN correction dim r ln(L / (2 pi beta)) / (2 ln base) is finite")
    if params.get("attention_factor") is not None:
        _number(f"{key}.attention_factor", params["attention_factor"], "a finite number > 0, or null", above=0.0)
    mscales = {}
    for name in ("mscale", "mscale_all_dim"):
        value = params.get(name)
        if value is not None:
            _number(f"{key}.{name}", value, "a finite number >= 0, or null", at_least=0.0)
        mscales[name] = value
        if value is not None and factor is not None and factor > 0:
            g = 0.1 * float(value) * math.log(factor) + 1.0  # DeepSeek's g(s, mscale)
            if not math.isfinite(g):
                raise ConfigError(f"{key}.{name}", value, f"a number whose 0.1 * {name} * ln(factor) + 1 is finite")
    if "truncate" in params:
        truncate = params["truncate"]
        if truncate is None:
            notes.append(f"{key}.truncate is null: transformers and vLLM read it as false (no floor/ceil), as here")
        elif not isinstance(truncate, bool):
            raise ConfigError(f"{key}.truncate", truncate, "true or false")
        elif not truncate:
            notes.append(
                "yarn truncate=false (gpt-oss): llama.cpp/ggml always floors/ceils the correction range and cannot "
                "represent this; transformers and vLLM (after vllm#28244) honour it"
            )

    if max_pos is not None:
        implicit = max_pos / original
        if implicit != factor and implicit != 1:
            notes.append(
                f"yarn factor={factor} differs from max_position_embeddings / original_max_position_embeddings = "
                f"{max_pos}/{original} = {implicit}; transformers uses the explicit factor (as here) and warns"
            )
    ms, msa = mscales["mscale"], mscales["mscale_all_dim"]
    if bool(ms) != bool(msa) and (ms is not None or msa is not None):
        notes.append(
            f"yarn mscale={ms}, mscale_all_dim={msa}: transformers (and vLLM's generic YaRN) use 0.1 ln(s) + 1 and "
            "ignore a lone mscale (as here); vLLM's DeepSeek class uses g(s, mscale) / g(s, mscale_all_dim or 0)"
        )
    if model_type == "mistral" and params.get("beta_fast") is None and params.get("beta_slow") is None:
        notes.append(
            "Yarn-Mistral checkpoints were trained with beta_fast=128, beta_slow=2 (jquesnelle/yarn "
            "scaled_rope/modeling_mistral_yarn.py defaults); this config omits them, so transformers uses 32/1"
        )
    truncate = bool(params.get("truncate", True))  # transformers: `if truncate:`, so null means no truncation
    lo, hi = correction_range(rotary, params["rope_theta"], original, betas["beta_fast"], betas["beta_slow"], truncate)
    if hi < lo:
        notes.append(
            f"the YaRN correction range inverts: lo = {lo} (not clamped from above) > hi = {hi} (clamped to "
            f"rotary_dim - 1), so every pair is interpolated by the factor although every pair turns more than "
            f"beta_fast times in {original} tokens; transformers, vLLM and the YaRN authors' code all do this"
        )
    raw_hi = correction_dim(betas["beta_slow"], rotary, params["rope_theta"], original)
    if math.ceil(raw_hi) > rotary // 2 - 1:
        notes.append(
            f"the YaRN correction range's hi = ceil({raw_hi:.3f}) exceeds the last pair index {rotary // 2 - 1}: "
            "ports that clamp hi to r/2 - 1 instead of r - 1 compute different frequencies (keras-hub#2981)"
        )


# ----------------------------------------------------------------------------------------------
# Dual Chunk Attention and the sparse table: the other parts of a Qwen2.5-1M config.json

@dataclass(frozen=True)
class DCAConfig:
    """A model's ``dual_chunk_attention_config``, validated.

    ``original_max_position_embeddings``: 0 or None means no temperature (as in
    vLLM); a positive value selects ``temperature="qwen"``.  The sparse keys are
    kept as given (``sparse_attention_enabled`` defaults, as in vLLM, to whether
    a ``sparse_attention_config`` is present).
    """

    chunk_size: int
    local_size: int
    original_max_position_embeddings: int | None = None
    sparse_attention_config: Any = field(default=None, hash=False, compare=True)
    sparse_attention_enabled: bool = False
    sparse_attention_threshold: int = 32768
    sparse_attention_last_q: int = 64

    def __post_init__(self):
        """Validate at construction, as :func:`dca_config` does for a config dict."""
        def integer(key, minimum, value):
            if not _is_int(value) or not minimum <= value <= 2**53:
                raise ConfigError(key, value, f"an integer in [{minimum}, 2**53]")

        integer("chunk_size", 2, self.chunk_size)
        integer("local_size", 1, self.local_size)
        if self.local_size >= self.chunk_size:
            raise ConfigError("local_size", self.local_size, f"an integer < chunk_size = {self.chunk_size}")
        if self.original_max_position_embeddings is not None:
            integer("original_max_position_embeddings", 0, self.original_max_position_embeddings)
        sparse = self.sparse_attention_config
        if sparse is not None and not isinstance(sparse, (list, tuple, Mapping)):
            raise ConfigError("sparse_attention_config", shown(sparse),
                              "None, or a per-layer list of {head: [type, vertical, slash, score]}")
        if not isinstance(self.sparse_attention_enabled, (bool, np.bool_)):
            raise ConfigError("sparse_attention_enabled", self.sparse_attention_enabled, "True or False")
        integer("sparse_attention_threshold", 1, self.sparse_attention_threshold)
        integer("sparse_attention_last_q", 1, self.sparse_attention_last_q)

    @property
    def chunk_len(self) -> int:
        """``L = chunk_size - local_size``, the length of a chunk (the paper's ``s``)."""
        return self.chunk_size - self.local_size

    @property
    def temperature(self) -> str:
        """``"qwen"`` if ``original_max_position_embeddings`` is positive, else ``"none"``."""
        return "qwen" if self.original_max_position_embeddings else "none"

    def attention_kwargs(self) -> dict:
        """Keyword arguments for :func:`dca_attention` (chunk sizes and temperature)."""
        kwargs = {"chunk_size": self.chunk_size, "local_size": self.local_size, "temperature": self.temperature}
        if self.temperature == "qwen":
            kwargs["original_max_position_embeddings"] = self.original_max_position_embeddings
        return kwargs


def _check_sparse_table_fits(model: Mapping, table, key: str) -> None:
    """A per-layer sparse table must have one entry per layer and per attention head of the model."""
    layers, heads = model.get("num_hidden_layers"), model.get("num_attention_heads")
    if _is_int(layers) and len(table) != layers:
        raise ConfigError(key, f"a table of {len(table)} layers", f"one entry per layer (num_hidden_layers = {layers})")
    if _is_int(heads):
        for index, entry in enumerate(table):
            if isinstance(entry, Mapping) and len(entry) != heads:
                raise ConfigError(f"{key}[{index}]", f"a layer with {len(entry)} heads",
                                  f"one entry per attention head (num_attention_heads = {heads})")


def dca_config(config: Mapping) -> DCAConfig:
    """Read ``config["dual_chunk_attention_config"]`` (a Qwen2.5-1M ``config.json`` dict) or a bare dict of its keys.

    Raises :class:`~yarnref.errors.ConfigError` naming the key for a missing
    ``chunk_size``/``local_size``, a non-integer or non-positive size,
    ``local_size >= chunk_size``, and any key of the wrong type.
    """
    if not isinstance(config, Mapping):
        raise ConfigError("config", shown(config), "a mapping (a config.json dict)")
    prefix = ""
    if "dual_chunk_attention_config" in config:
        dca = config["dual_chunk_attention_config"]
        prefix = "dual_chunk_attention_config."
        if not isinstance(dca, Mapping):
            raise ConfigError("dual_chunk_attention_config", dca, "a mapping with chunk_size and local_size")
    else:
        dca = config

    def integer(key, minimum, default=None, required=False):
        if key not in dca:
            if required:
                raise ConfigError(prefix + key, "<missing>", f"an integer >= {minimum}")
            return default
        value = dca[key]
        if not _is_int(value) or value < minimum:
            raise ConfigError(prefix + key, value, f"an integer >= {minimum}")
        return int(value)

    chunk_size = integer("chunk_size", 2, required=True)
    local_size = integer("local_size", 1, required=True)
    if local_size >= chunk_size:
        raise ConfigError(prefix + "local_size", local_size, f"an integer < chunk_size = {chunk_size}")
    original = dca.get("original_max_position_embeddings")
    if original is not None and (not _is_int(original) or original < 0):
        raise ConfigError(prefix + "original_max_position_embeddings", original, "None or an integer >= 0 (0: no temperature)")
    sparse = dca.get("sparse_attention_config")
    if sparse is not None and not isinstance(sparse, (list, tuple, Mapping)):
        raise ConfigError(prefix + "sparse_attention_config", sparse, "None, or a per-layer list of {head: [type, vertical, slash, score]}")
    if prefix and isinstance(sparse, (list, tuple)):
        _check_sparse_table_fits(config, sparse, prefix + "sparse_attention_config")
    enabled = dca.get("sparse_attention_enabled", sparse is not None)
    if not isinstance(enabled, (bool, np.bool_)):
        raise ConfigError(prefix + "sparse_attention_enabled", enabled, "true or false")
    return DCAConfig(
        chunk_size=chunk_size,
        local_size=local_size,
        original_max_position_embeddings=None if original is None else int(original),
        sparse_attention_config=sparse,
        sparse_attention_enabled=bool(enabled),
        sparse_attention_threshold=integer("sparse_attention_threshold", 1, 32768),
        sparse_attention_last_q=integer("sparse_attention_last_q", 1, 64),
    )


#: The only pattern vLLM's DCA backend runs from a ``sparse_attention_config``.
SPARSE_PATTERN = "vertical_and_slash"

#: vLLM's special case: a vertical budget of 30 is run as 130.
_VERTICAL_30_AS = 130


class SparseHeadBudgets(NamedTuple):
    """One layer's per-head vertical-slash budgets, for a range of (global) heads."""

    #: ``(heads,)`` int64: the vertical budget as vLLM runs it (a table value of 30 becomes 130).
    vertical_size: np.ndarray
    #: ``(heads,)`` int64: the slash budget.
    slash_size: np.ndarray
    #: ``(heads,)`` float64: the table's fourth field (the offline search's score; unused at run time).
    score: np.ndarray
    #: ``(heads,)`` int64: the vertical budget as written in the table.
    config_vertical_size: np.ndarray


def _as_dca_config(config):
    from .dca import DCAConfig, dca_config

    if isinstance(config, DCAConfig):
        return config
    if isinstance(config, Mapping):
        return dca_config(config)
    raise InputError("dca", shown(config), "a yarnref.dca.DCAConfig or a config dict (config.json or its dual_chunk_attention_config)")


def _head_id(key, where: str) -> int:
    if _is_int(key) and key >= 0:
        return int(key)
    if isinstance(key, str) and key.isdecimal():
        return int(key)
    raise ConfigError(where, key, "head ids that are non-negative integers (or their decimal strings)")


def sparse_attention_config_for(config, layer, heads=None) -> SparseHeadBudgets:
    """Parse and validate one layer of a ``sparse_attention_config`` table.

    ``config``: a :class:`yarnref.dca.DCAConfig`, or a config dict (a
    Qwen2.5-1M ``config.json`` with ``dual_chunk_attention_config``, or that
    dict itself) carrying ``sparse_attention_config``: a list over layers of
    ``{head_id: [pattern, vertical_size, slash_size, score]}`` (head ids as
    JSON strings or ints), as in ``sparse_attention_config.json`` of the
    Qwen2.5-1M repositories and MInference's configs.

    ``heads``: ``None`` for every head of the layer (ids must be ``0 .. H-1``),
    or ``(start, stop)`` for the heads of one tensor-parallel rank (vLLM gives
    rank ``r`` the heads ``[r H_local, (r + 1) H_local)``).

    Raises :class:`~yarnref.errors.ConfigError` for a missing table, a pattern
    other than ``"vertical_and_slash"``, a budget that is not an integer >= 1,
    a missing head; :class:`~yarnref.errors.InputError` for a bad ``layer`` or
    ``heads``.  (A loop over the table's heads parses the JSON; nothing is
    computed per head.)
    """
    cfg = _as_dca_config(config)
    table = cfg.sparse_attention_config
    name = "sparse_attention_config"
    if table is None:
        raise ConfigError(name, None, "a per-layer list of {head: [pattern, vertical_size, slash_size, score]} (sparse attention needs it)")
    if not _is_int(layer) or layer < 0:
        raise InputError("layer", layer, "an integer >= 0")
    layer = int(layer)
    if isinstance(table, Mapping):
        by_layer = {_head_id(key, f"{name} layer key"): value for key, value in table.items()}
        if layer not in by_layer:
            raise InputError("layer", layer, f"one of the table's layers {sorted(by_layer)}")
        entry = by_layer[layer]
    else:
        if layer >= len(table):
            raise InputError("layer", layer, f"an integer in [0, {len(table)}) (the table has {len(table)} layers)")
        entry = table[layer]
    where = f"{name}[{layer}]"
    if not isinstance(entry, Mapping) or not entry:
        raise ConfigError(where, entry, "a non-empty mapping {head_id: [pattern, vertical_size, slash_size, score]}")
    by_head = {}
    for key, value in entry.items():
        head = _head_id(key, f"{where} key")
        if head in by_head:
            raise ConfigError(f"{where}[{key!r}]", value, f"one entry per head (head {head} is listed twice)")
        by_head[head] = value
    if heads is None:
        start, stop = 0, len(by_head)
    else:
        if not isinstance(heads, (tuple, list)) or len(heads) != 2 or not all(_is_int(h) for h in heads) or not 0 <= heads[0] < heads[1]:
            raise InputError("heads", heads, "None or (start, stop) with 0 <= start < stop")
        start, stop = int(heads[0]), int(heads[1])
    missing = [h for h in range(start, stop) if h not in by_head]
    if missing:
        raise ConfigError(where, f"no entry for head {missing[0]}", f"entries for the heads [{start}, {stop})")
    vertical, slash, score = [], [], []
    for head in range(start, stop):
        item = by_head[head]
        at = f"{where}[{head}]"
        if not isinstance(item, (list, tuple)) or len(item) != 4:
            raise ConfigError(at, item, "[pattern, vertical_size, slash_size, score]")
        pattern, v_size, s_size, head_score = item
        if pattern != SPARSE_PATTERN:
            raise ConfigError(at + "[0]", pattern, f"{SPARSE_PATTERN!r} (the only pattern vLLM's DCA backend runs)")
        for position, size in ((1, v_size), (2, s_size)):
            if not _is_int(size) or size < 1:
                raise ConfigError(f"{at}[{position}]", size, "an integer budget >= 1")
        if not isinstance(head_score, (int, float, np.integer, np.floating)) or isinstance(head_score, (bool, np.bool_)) or not math.isfinite(head_score):
            raise ConfigError(at + "[3]", head_score, "a finite number (the search score)")
        vertical.append(int(v_size))
        slash.append(int(s_size))
        score.append(float(head_score))
    config_vertical = np.asarray(vertical, dtype=np.int64)
    return SparseHeadBudgets(
        vertical_size=np.where(config_vertical == 30, _VERTICAL_30_AS, config_vertical),
        slash_size=np.asarray(slash, dtype=np.int64),
        score=np.asarray(score, dtype=np.float64),
        config_vertical_size=config_vertical,
    )


# The computation lives next to the scaling methods (yarnref.scaling.frequencies); imported here
# last, since it reads this module's parser, so that ``yarnref.config.rope_frequencies`` stays.
from .scaling.frequencies import ROPE_FREQUENCY_FUNCTIONS, rope_frequencies, stack_options  # noqa: E402
