"""yarnref: the reference implementation of how RoPE transformers reach long context.

The NumPy code in this package is the specification (float64 unless asked
otherwise).  The heavy operations dispatch to the current backend, so the same
calls run on a GPU after ``yarnref.set_backend("torch")`` or ``"cupy"``::

    import yarnref
    inv_freq, m = yarnref.rope_frequencies(yarnref.get_preset("llama-3.1-8b"))
    cos, sin = yarnref.rope_cos_sin(inv_freq, range(4096), m)
    q_rot = yarnref.apply_rope(q, cos, sin)            # q: (batch, heads, seq, head_dim)
    out = yarnref.attention(q_rot, k_rot, v, causal=True)

Importing yarnref imports NumPy only.
"""

from __future__ import annotations

import functools

from . import backend as _backend_module
from .backend import (
    OPERATIONS,
    Backend,
    available_backends,
    gpu_backends,
    get_backend,
    registered_backends,
    set_backend,
    use_backend,
)
from . import scaling
from .alibi import alibi_bias, alibi_slopes
from .config import RopeConfig, parse_rope_config, rope_frequencies
from .dca import DCAConfig, dca_config, dca_position_ids, dca_relative_positions, dca_segments
from .errors import BackendError, ConfigError, DeviceMismatchError, InputError, UnknownBackendError, YarnrefError
from .prefill import chunked_prefill, qwen_prefill, qwen_sparse_plan, sparse_attention_config_for
from .presets import DEFAULT_PRESET, PRESETS, get_preset, preset_names
from .ring import RING_LAYOUTS, ring_attention, ring_dca_attention, ring_schedule, ring_vertical_slash_attention
from .progress import show_progress
from .sparse import a_shape_mask, attention_recall, tri_shape_mask
from .rope import base_inv_freq, half_to_interleaved, interleaved_to_half, rope_angles, rotary_dim

__version__ = "0.1.0"


def _dispatcher(operation: str):
    spec = _backend_module.spec_function(operation)

    @functools.wraps(spec)
    def dispatch(*args, **kwargs):
        return getattr(get_backend(), operation)(*args, **kwargs)

    dispatch.__doc__ = (spec.__doc__ or "") + (
        f"\n\n    Runs on the current backend (:func:`yarnref.get_backend`); the NumPy spec is "
        f":func:`{spec.__module__}.{spec.__name__}`.\n"
    )
    return dispatch


for _op in OPERATIONS:
    globals()[_op] = _dispatcher(_op)
del _op

__all__ = [
    *OPERATIONS,
    "DCAConfig",
    "DEFAULT_PRESET",
    "dca_config",
    "dca_position_ids",
    "dca_relative_positions",
    "dca_segments",
    "a_shape_mask",
    "alibi_bias",
    "alibi_slopes",
    "attention_recall",
    "chunked_prefill",
    "qwen_prefill",
    "qwen_sparse_plan",
    "sparse_attention_config_for",
    "tri_shape_mask",
    "RING_LAYOUTS",
    "ring_attention",
    "ring_dca_attention",
    "ring_schedule",
    "ring_vertical_slash_attention",
    "PRESETS",
    "RopeConfig",
    "get_preset",
    "parse_rope_config",
    "preset_names",
    "rope_frequencies",
    "scaling",
    "Backend",
    "BackendError",
    "ConfigError",
    "DeviceMismatchError",
    "InputError",
    "UnknownBackendError",
    "YarnrefError",
    "available_backends",
    "gpu_backends",
    "base_inv_freq",
    "get_backend",
    "half_to_interleaved",
    "interleaved_to_half",
    "registered_backends",
    "rope_angles",
    "rotary_dim",
    "set_backend",
    "show_progress",
    "use_backend",
]
