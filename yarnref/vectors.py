r"""Golden vectors: a model's RoPE numbers in one ``.npz`` file any language can read.

A golden-vector file pins what the spec computes for one model config:
the inverse frequencies and attention factor of
:func:`yarnref.config.rope_frequencies`, the cos/sin tables at chosen
positions (large ones included, where float32 stacks lose precision), and
seeded random queries and keys with their rotations in both pairings.  Another
implementation (an inference engine, a kernel, a port to C++/Rust/Go) loads
the file, feeds the same inputs to its own code and compares.

Equations (RoFormer, arXiv:2104.09864, Eq. 13-15; the scaling methods change
only :math:`\theta'` and :math:`m_{att}`, see :mod:`yarnref.scaling`):

.. math::
   \mathrm{cos}[n, i] = m_{att} \cos(p_n \theta'_i), \qquad
   \mathrm{sin}[n, i] = m_{att} \sin(p_n \theta'_i)

   x'_a = x_a \mathrm{cos} - x_b \mathrm{sin}, \qquad
   x'_b = x_b \mathrm{cos} + x_a \mathrm{sin}

with the plane ``(a, b) = (i, i + r/2)`` for ``"half"`` and ``(2i, 2i + 1)``
for ``"interleaved"``; features ``r .. head_dim - 1`` pass through unchanged.

File layout (NumPy ``.npz``, no pickled objects; ``np.load(path)`` works
without ``allow_pickle``):

=====================  ==========================  =====================================================
array                  shape, dtype                meaning
=====================  ==========================  =====================================================
``inv_freq``           ``(r/2,)`` float64          :math:`\theta'_i`
``attention_factor``   ``()`` float64              :math:`m_{att}` (already inside cos and sin)
``positions``          ``(n,)`` int64              the positions :math:`p_n`
``cos``, ``sin``       ``(n, r/2)`` float64        the tables above
``q``, ``k``           ``(batch, heads, n, D)``    seeded standard-normal inputs, float64 (``D`` =
                       float64                     ``head_dim``; the rope sub-head for MLA models)
``q_rot_half``, ...    ``(batch, heads, n, D)``    ``q``/``k`` rotated with pairing ``"half"`` and
                       float64                     ``"interleaved"``: ``q_rot_half``, ``k_rot_half``,
                                                   ``q_rot_interleaved``, ``k_rot_interleaved``
``meta_json``          ``()`` unicode              provenance, as a JSON document (for NumPy readers)
``meta_json_utf8``     ``(bytes,)`` uint8          the same JSON as UTF-8 bytes (for readers without
                                                   NumPy unicode support, e.g. cnpy, ndarray-npy)
=====================  ==========================  =====================================================

Optional arrays, written when they apply (:func:`make_vectors`):

=================================  ======================  ==================================================
array                              shape, dtype            meaning
=================================  ======================  ==================================================
``q_rot_interleaved_in_half_out``  like ``q``              the rotation in the pairing the model uses in the
``k_rot_interleaved_in_half_out``                          chosen stack (``meta["pairing"]``,
                                                           :func:`model_pairing`) when it is neither of the two
                                                           above: transformers' DeepSeek-V3
``inv_freq_float32``               ``(r/2,)`` float32      the stack's float32 :math:`\theta'` (not llama.cpp)
``cos_float32``, ``sin_float32``   ``(n, r/2)`` float32    the stack's float32 tables (:func:`stack_tables`)
``cos_bfloat16``, ``sin_...``      ``(n, r/2)`` float32    those cast to the model's dtype (``bfloat16`` or
                                                           ``float16``), values exact in it
``dca_key``, ``dca_intra``,        ``(n,)`` int64          a DCA model's position ids of the token at
``dca_successive``, ``dca_inter``                          ``positions[n]`` (:func:`dca_ids_at`), and the two
                                                           ``dca_*_critical`` ids of the sparse estimation
=================================  ======================  ==================================================

Token ``n`` of ``q[b, h]`` sits at ``positions[n]``.  The metadata holds the
yarnref, NumPy and Python versions, the creation time (UTC, ISO 8601), the
config (as given), the parsed RoPE fields and their warnings, the options
passed to :func:`~yarnref.config.rope_frequencies`, the seed and shapes, and
these conventions as text.

Recipe for another project (Python shown; any language with an ``.npz``
reader does the same)::

    import numpy as np, json
    f = np.load("qwen.npz")
    meta = json.loads(str(f["meta_json"]))
    inv_freq, m = my_rope_frequencies(meta["config"])           # your code
    cos, sin = my_cos_sin(inv_freq, f["positions"], m)           # your code
    yarnref.vectors.check_vectors("qwen.npz", inv_freq=inv_freq, cos=cos, sin=sin,
                                  q_rot_half=my_rope(f["q"], cos, sin), dtype="float32")

:func:`check_vectors` compares with :func:`yarnref.testing.assert_close`, whose
tolerances grow with the precision (``dtype``) and the largest position.

Conventions
-----------
* Pairings ``"half"`` (GPT-NeoX, Llama in transformers) and ``"interleaved"``
  (GPT-J, Meta, DeepSeek in vLLM/ggml); the sign is counter-clockwise by
  ``+p theta``.
* A position is a non-negative integer; cos/sin are computed in float64 from
  ``positions * inv_freq`` and multiplied by the attention factor.
* Default positions: :data:`DEFAULT_POSITIONS` below the model's context length
  (:func:`context_length`), plus the boundaries ``original - 1``,
  ``original`` and ``context - 1``.  Positions given explicitly are used as
  given.
* Everything is float64; inputs are ``numpy.random.default_rng(seed)``
  standard normals, ``q`` drawn before ``k``.
"""

from __future__ import annotations

import datetime as _datetime
import json
import math
import platform
import zipfile
from collections.abc import Mapping
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from .config import RopeConfig, parse_rope_config, rope_frequencies
from .checks import check_array_like, check_int, is_int
from .errors import InputError
from .rope import apply_rope, rope_cos_sin

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DEFAULT_POSITIONS",
    "VECTOR_PAIRINGS",
    "ARRAY_NAMES",
    "TABLE_PRECISIONS",
    "DCA_ID_NAMES",
    "model_pairing",
    "stack_tables",
    "dca_ids_at",
    "context_length",
    "default_positions",
    "make_vectors",
    "write_vectors",
    "read_vectors",
    "check_vectors",
]

FORMAT = "yarnref-golden-vectors"
FORMAT_VERSION = 1

#: Positions written by default (those below the model's context length are kept).
DEFAULT_POSITIONS = (0, 1, 2, 127, 4095, 4096, 32767, 131071, 1_000_000)

#: The pairings whose rotations are stored.
VECTOR_PAIRINGS = ("half", "interleaved")

#: The arrays of a golden-vector file (besides the metadata), in file order.
ARRAY_NAMES = (
    "inv_freq",
    "attention_factor",
    "positions",
    "cos",
    "sin",
    "q",
    "k",
    "q_rot_half",
    "k_rot_half",
    "q_rot_interleaved",
    "k_rot_interleaved",
)

#: ``table_precision`` values of :func:`make_vectors`: the activation dtype of the stack's model (None: no stack tables).
TABLE_PRECISIONS = ("float32", "bfloat16", "float16")

#: The DCA position-id arrays written for a DCA model (``dca_<name>``), the fields of :class:`yarnref.dca.DCAPositionIds`.
DCA_ID_NAMES = ("key", "intra", "successive", "inter", "successive_critical", "inter_critical")

# Model types whose q/k planes are interleaved (x[2i], x[2i+1]) in the checkpoint's layout, in every stack:
# GPT-J (rotate_every_two), GLM (rotate_half on 0::2 / 1::2), Llama 4 and DeepSeek-V2 (complex multiply).
_INTERLEAVED_MODEL_TYPES = ("gptj", "glm", "glm4", "chatglm", "llama4", "llama4_text", "deepseek_v2")

_CONVENTIONS = [
    "theta'_i = inv_freq[i], i = 0 .. r/2-1 (r = rotary_dim); m = attention_factor",
    "cos[n, i] = m * cos(positions[n] * inv_freq[i]); sin[n, i] = m * sin(positions[n] * inv_freq[i]); float64",
    "rotation of plane (a, b): a' = a*cos - b*sin, b' = b*cos + a*sin (counter-clockwise by +p*theta)",
    "pairing 'half' (GPT-NeoX / Llama in transformers): plane i = (x[i], x[i + r/2])",
    "pairing 'interleaved' (GPT-J / Meta / DeepSeek in vLLM and ggml): plane i = (x[2i], x[2i+1])",
    "features r .. head_dim-1 pass through unchanged (partial rotary)",
    "q, k: shape (batch, heads, n_positions, head_dim); token n sits at positions[n]",
    "q, k = numpy.random.default_rng(seed).standard_normal(shape), q drawn first",
    "inv_freq and attention_factor are yarnref.rope_frequencies(config, seq_len, **frequency_options) "
    "(transformers v5 semantics unless frequency_options say otherwise), computed in float64",
    "meta['pairing'] is the pairing the model uses in meta['stack'] (yarnref.vectors.model_pairing); when it is "
    "neither 'half' nor 'interleaved' (transformers' DeepSeek-V3: 'interleaved_in_half_out') its rotations are "
    "stored too, as q_rot_<pairing> and k_rot_<pairing>",
    "stack tables (optional): cos_float32, sin_float32 are the stack's float32 tables (its float32 inv_freq, "
    "float32 angles and cos/sin; ggml's recurrence for llama.cpp); cos_<dtype>, sin_<dtype> are those cast to the "
    "activation dtype; all stored as float32 arrays whose values are exact in their precision",
    "DCA models (optional): dca_key, dca_intra, dca_successive, dca_inter, dca_successive_critical, "
    "dca_inter_critical are yarnref.dca_position_ids(...) of the token at positions[n] (int64, (n,))",
]

_ARRAY_DOC = {
    "inv_freq": "(r/2,) float64: the scaled inverse frequencies theta'",
    "attention_factor": "() float64: the factor multiplied into cos and sin",
    "positions": "(n,) int64",
    "cos": "(n, r/2) float64, attention factor included",
    "sin": "(n, r/2) float64, attention factor included",
    "q": "(batch, heads, n, head_dim) float64 seeded standard normal",
    "k": "(batch, heads, n, head_dim) float64 seeded standard normal",
    "q_rot_half": "q rotated, pairing 'half'",
    "k_rot_half": "k rotated, pairing 'half'",
    "q_rot_interleaved": "q rotated, pairing 'interleaved'",
    "k_rot_interleaved": "k rotated, pairing 'interleaved'",
}


def context_length(config: Mapping | RopeConfig) -> int | None:
    """The longest context a stack runs the config at (``None`` if unknown): positions stay below it.

    ``max_position_embeddings``, the size of vLLM's cos/sin cache for the
    default, Llama 3, LongRoPE and dynamic types (a position beyond it cannot
    be indexed there).  For YaRN, vLLM's ``YaRNScalingRotaryEmbedding`` builds
    its cache to ``original_max_position_embeddings * factor``, and Qwen2.5's
    YaRN configs keep ``max_position_embeddings = 32768`` while ``factor = 4``
    over ``original = 32768`` reaches 131072: the larger of the two.  Without
    ``max_position_embeddings``, YaRN's ``factor * original`` if known.
    """
    rc = parse_rope_config(config)
    lengths = []
    if rc.max_position_embeddings is not None:
        lengths.append(rc.max_position_embeddings)
    if rc.rope_type == "yarn" and rc.factor is not None and rc.original_max_position_embeddings is not None:
        lengths.append(int(round(rc.factor * rc.original_max_position_embeddings)))
    return max(lengths) if lengths else None


def default_positions(config: Mapping | RopeConfig) -> np.ndarray:
    """The default positions for ``config``, sorted, int64 (see the module's Conventions)."""
    rc = parse_rope_config(config)
    limit = context_length(rc)
    chosen = set(DEFAULT_POSITIONS)
    if limit is not None:
        chosen = {p for p in chosen if p < limit}
        chosen.add(limit - 1)
        original = rc.original_max_position_embeddings
        if original is not None and original < limit:
            chosen.update({original - 1, original})
    return np.array(sorted(chosen), dtype=np.int64)


def _check_positions(positions) -> np.ndarray:
    p = check_array_like("positions", positions, "a non-empty 1-D sequence of integers >= 0")
    if p.ndim != 1 or p.size == 0 or p.size > MAX_VECTOR_ELEMENTS:
        raise InputError("positions", f"an array of shape {p.shape}", "a non-empty 1-D sequence of integers >= 0")
    if p.dtype == bool or not np.issubdtype(p.dtype, np.integer):
        if not (np.issubdtype(p.dtype, np.floating) and np.all(np.isfinite(p)) and np.all(p == np.round(p))):
            raise InputError("positions", f"values of dtype {p.dtype}", "integers >= 0")
    if np.any(p < 0) or np.any(p > 2**53):
        raise InputError("positions", f"values in [{p.min()}, {p.max()}]", "integers in [0, 2**53]")
    return p.astype(np.int64)


#: The most numbers one golden q or k array may hold (golden vectors are test fixtures: 128 MiB of float64).
MAX_VECTOR_ELEMENTS = 2**24


def _check_count(name: str, value) -> int:
    return check_int(name, value, 1, MAX_VECTOR_ELEMENTS)


def _jsonable(obj):
    """A JSON-plain copy (mappings to dicts with str keys, sequences to lists); InputError if not representable."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, Integral):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        if not math.isfinite(float(obj)):
            raise InputError("config", obj, "finite numbers only (the config is stored as JSON)")
        return float(obj)
    raise InputError("config", type(obj).__name__, "JSON-representable values (numbers, strings, lists, mappings)")


def model_pairing(config: Mapping | RopeConfig, stack: str = "transformers") -> str:
    """The pairing (one of :data:`yarnref.rope.PAIRINGS`) the model's q and k are rotated with in ``stack``.

    On the layout of the model's own checkpoint (the Hugging Face weights):

    * DeepSeek-V3 (``model_type`` ``"deepseek_v3"``, or an MLA config carrying
      ``rope_interleave``): transformers' ``apply_rotary_pos_emb_interleave``
      reads interleaved pairs and writes half-split ones,
      ``"interleaved_in_half_out"`` (with ``rope_interleave`` false,
      ``"half"``); vLLM (``is_neox_style=False``) and llama.cpp (GGML rope
      mode NORMAL) rotate interleaved pairs and write them in place,
      ``"interleaved"``.
    * Other MLA (DeepSeek-style, ``qk_rope_head_dim``) configs, GPT-J, GLM,
      Llama 4 and DeepSeek-V2: ``"interleaved"`` in every stack.
    * Everything else (Llama, Mistral, Qwen, Phi-3, gpt-oss, ...):
      ``"half"``.  llama.cpp rotates Llama-family models in its interleaved
      mode, but its GGUF converter permutes the q/k rows to match, so on the
      checkpoint's layout the pairing is half-split.
    """
    from .checks import check_option
    from .config import STACKS

    check_option("stack", stack, STACKS)
    rc = parse_rope_config(config)
    source = rc.source if isinstance(rc.source, Mapping) else {}
    deepseek_v3 = rc.model_type == "deepseek_v3" or (rc.is_mla and "rope_interleave" in source)
    if deepseek_v3:
        if stack == "transformers":
            return "interleaved_in_half_out" if source.get("rope_interleave", True) else "half"
        return "interleaved"
    if rc.is_mla or rc.model_type in _INTERLEAVED_MODEL_TYPES:
        return "interleaved"
    return "half"


def stack_tables(
    config: Mapping | RopeConfig,
    positions,
    *,
    table_precision: str = "bfloat16",
    seq_len: int | None = None,
    **frequency_options,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The cos/sin tables the chosen stack computes, in float32 and in the activation dtype; ``(arrays, notes)``.

    ``frequency_options`` are those of :func:`yarnref.config.rope_frequencies`
    (``stack=...``, ``max_model_len=...``, ...).  For every stack but
    llama.cpp: the stack's float32 ``inv_freq``
    (``rope_frequencies(..., precision="float32")``), then
    ``rope_cos_sin(inv_freq32, positions, m, precision="float32",
    out_precision=...)``: ``inv_freq_float32``, ``cos_float32``,
    ``sin_float32`` and, for ``table_precision`` ``"bfloat16"`` or
    ``"float16"``, ``cos_<dtype>``/``sin_<dtype>`` (transformers casts its
    tables to the activation dtype; vLLM casts its float32 cache to the model
    dtype).  For ``stack="llama.cpp"``: ggml's float32 tables
    (:func:`yarnref.ggml.llama_cpp_cos_sin`, ``n_ctx = max_model_len``); ggml
    rotates in float32, so there is no lower-precision table, and ``notes``
    says so.  Every array is float32, ``(n, r/2)`` (``(r/2,)`` for
    ``inv_freq_float32``); a bfloat16 or float16 table holds values exact in
    that precision.
    """
    from .precision import check_precision

    if table_precision not in TABLE_PRECISIONS:
        raise InputError("table_precision", table_precision, f"one of {TABLE_PRECISIONS}")
    check_precision(table_precision, "table_precision")
    rc = parse_rope_config(config)
    pos = _check_positions(positions)
    stack = frequency_options.get("stack", "transformers")
    notes: dict[str, Any] = {"stack": stack, "table_precision": table_precision}
    arrays: dict[str, np.ndarray] = {}
    if stack == "llama.cpp":
        from .ggml import llama_cpp_cos_sin

        cos32, sin32 = llama_cpp_cos_sin(rc, pos, n_ctx=frequency_options.get("max_model_len"))
        arrays["cos_float32"], arrays["sin_float32"] = cos32.astype(np.float32), sin32.astype(np.float32)
        notes["computed_by"] = "yarnref.ggml.llama_cpp_cos_sin (ggml's float32 recurrence)"
        if table_precision != "float32":
            notes["no_lower_precision_table"] = (
                f"llama.cpp rotates in float32 (ggml_rope_ext): it has no {table_precision} cos/sin table")
        return arrays, notes
    inv32, m = rope_frequencies(rc, seq_len, **{**frequency_options, "precision": "float32"})
    arrays["inv_freq_float32"] = np.asarray(inv32, dtype=np.float32)
    cos32, sin32 = rope_cos_sin(inv32, pos, m, precision="float32")  # (n, r/2) float32
    arrays["cos_float32"], arrays["sin_float32"] = cos32, sin32
    notes["computed_by"] = ("yarnref.rope_frequencies(..., precision='float32') and yarnref.rope_cos_sin(inv_freq32, "
                            "positions, attention_factor, precision='float32', out_precision=...)")
    if table_precision != "float32":
        cos_low, sin_low = rope_cos_sin(inv32, pos, m, precision="float32", out_precision=table_precision)
        arrays[f"cos_{table_precision}"], arrays[f"sin_{table_precision}"] = cos_low, sin_low
    return arrays, notes


def dca_ids_at(config: Mapping | RopeConfig, positions) -> dict[str, np.ndarray]:
    """``{name: ids}`` for :data:`DCA_ID_NAMES`: :func:`yarnref.dca_position_ids` of each token in ``positions``.

    ``ids[n]`` is the DCA position id of the token at ``positions[n]`` in a
    sequence that reaches it (``dca_position_ids(seq_len, chunk_size,
    local_size)[name][positions[n]]`` for any ``seq_len > positions[n]``).
    Every id depends on the position only through ``p mod L`` (``L =
    chunk_size - local_size``; ``inter`` is one constant), so the ids of at
    most ``L`` tokens are computed however large the positions.
    """
    from .dca import dca_config, dca_position_ids

    rc = parse_rope_config(config)
    if rc.dual_chunk_attention is None:
        raise InputError("config", "a config without dual_chunk_attention_config", "a DCA model's config")
    d = dca_config(dict(rc.dual_chunk_attention))
    pos = _check_positions(positions)
    span = int(min(int(pos.max()) + 1, d.chunk_len))
    ids = dca_position_ids(span, d.chunk_size, d.local_size)  # each (span,)
    at = pos % d.chunk_len if span == d.chunk_len else pos
    return {name: np.asarray(getattr(ids, name)[at], dtype=np.int64) for name in DCA_ID_NAMES}


def make_vectors(
    config: Mapping | RopeConfig,
    *,
    positions=None,
    seed: int = 0,
    batch: int = 1,
    heads: int = 2,
    seq_len: int | None = None,
    table_precision: str | None = None,
    **frequency_options,
) -> dict[str, Any]:
    """The golden vectors of ``config`` as a dict: the arrays of :data:`ARRAY_NAMES` plus ``"meta"`` (a dict).

    Besides those arrays: the rotations in the pairing the model uses in the
    chosen stack (:func:`model_pairing`) when it is not one of
    :data:`VECTOR_PAIRINGS` (``q_rot_interleaved_in_half_out``, ...);
    with ``table_precision`` (one of :data:`TABLE_PRECISIONS`), the stack's
    float32 and activation-dtype tables (:func:`stack_tables`); for a DCA
    model, the DCA position ids of the positions (:func:`dca_ids_at`,
    ``dca_key``, ``dca_intra``, ...).

    ``positions``: integers >= 0 (default :func:`default_positions`);
    ``seed``: the NumPy ``default_rng`` seed of ``q`` and ``k``; ``batch``,
    ``heads``: their leading dims.  ``seq_len`` and ``frequency_options``
    (``stack=...``, ``truncate=...``, ...) go to
    :func:`yarnref.config.rope_frequencies`.

    LongRoPE: the file holds only what a stack computes for the positions
    stored.  With ``seq_len=None`` and transformers' switch, ``seq_len`` is
    ``max(positions) + 1``, the length of a forward over those positions, as
    transformers decides it (vLLM and llama.cpp decide from ``max_model_len``
    and must be given it); a ``seq_len`` whose (short) factors do not cover
    the largest position, which no stack would compute, is an InputError.
    Which list was used is recorded in ``meta["longrope"]``.
    """
    rc = parse_rope_config(config)
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise InputError("seed", seed, "an integer >= 0")
    batch = _check_count("batch", batch)
    heads = _check_count("heads", heads)
    pos = default_positions(rc) if positions is None else _check_positions(positions)
    elements = batch * heads * pos.size * rc.head_dim
    if elements > MAX_VECTOR_ELEMENTS:
        raise InputError(
            "heads", heads,
            f"batch x heads x positions x head_dim <= 2**24 numbers per array (here {batch} x {heads} x {pos.size} x "
            f"{rc.head_dim} = {elements}); golden vectors are small fixtures",
        )
    longrope = None
    if rc.rope_type == "longrope":
        seq_len, longrope = _longrope_switch(rc, pos, seq_len, frequency_options)
    inv_freq, m = rope_frequencies(rc, seq_len, **frequency_options)
    cos, sin = rope_cos_sin(inv_freq, pos, m)  # (n, r/2) each
    rng = np.random.default_rng(int(seed))
    shape = (batch, heads, pos.size, rc.head_dim)
    q = rng.standard_normal(shape)
    k = rng.standard_normal(shape)
    arrays: dict[str, Any] = {
        "inv_freq": np.asarray(inv_freq, dtype=np.float64),
        "attention_factor": np.asarray(m, dtype=np.float64),
        "positions": pos,
        "cos": cos,
        "sin": sin,
        "q": q,
        "k": k,
    }
    stack = frequency_options.get("stack", "transformers")
    pairing_used = model_pairing(rc, stack)
    pairings = list(VECTOR_PAIRINGS) + ([pairing_used] if pairing_used not in VECTOR_PAIRINGS else [])
    for pairing in pairings:
        arrays[f"q_rot_{pairing}"] = apply_rope(q, cos, sin, pairing)
        arrays[f"k_rot_{pairing}"] = apply_rope(k, cos, sin, pairing)
    tables = None
    if table_precision is not None:
        table_arrays, tables = stack_tables(rc, pos, table_precision=table_precision, seq_len=seq_len,
                                            **frequency_options)
        tables["arrays"] = list(table_arrays)
        arrays.update(table_arrays)
    dca = None
    if rc.dual_chunk_attention is not None:
        from .dca import dca_config

        d = dca_config(dict(rc.dual_chunk_attention))
        arrays.update({f"dca_{name}": ids for name, ids in dca_ids_at(rc, pos).items()})
        dca = {"chunk_size": d.chunk_size, "local_size": d.local_size, "chunk_len": d.chunk_len,
               "arrays": [f"dca_{name}" for name in DCA_ID_NAMES]}

    from . import __version__  # late: yarnref/__init__ may import this module

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "yarnref_version": __version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "created": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": _jsonable(rc.source),
        "rope": {
            "rope_type": rc.rope_type,
            "head_dim": rc.head_dim,
            "rotary_dim": rc.rotary_dim,
            "base": rc.base,
            "partial_rotary_factor": rc.partial_rotary_factor,
            "factor": rc.factor,
            "max_position_embeddings": rc.max_position_embeddings,
            "original_max_position_embeddings": rc.original_max_position_embeddings,
            "warnings": list(rc.warnings),
        },
        "seq_len": seq_len,
        "longrope": longrope,
        "frequency_options": _jsonable(frequency_options),
        "seed": int(seed),
        "batch": batch,
        "heads": heads,
        "pairings": pairings,
        "stack": stack,
        "pairing": pairing_used,
        "stack_tables": tables,
        "dca": dca,
        "arrays": {name: _ARRAY_DOC.get(name) or _extra_doc(name) for name in arrays},
        "conventions": list(_CONVENTIONS),
    }
    arrays["meta"] = meta
    return arrays


def _extra_doc(name: str) -> str:
    """The metadata's description of an optional array (see the module's Conventions)."""
    if name.startswith(("q_rot_", "k_rot_")):
        return f"{name[0]} rotated, pairing {name[6:]!r} (the pairing the model uses in this stack)"
    if name == "inv_freq_float32":
        return "(r/2,) float32: the stack's float32 inverse frequencies"
    if name.startswith(("cos_", "sin_")):
        return f"(n, r/2) float32: the stack's {name[4:]} table (values exact in {name[4:]}), attention factor included"
    if name.startswith("dca_"):
        return f"(n,) int64: yarnref.dca_position_ids(...).{name[4:]} of the token at positions[n]"
    return ""


def _longrope_switch(rc: RopeConfig, pos: np.ndarray, seq_len, frequency_options) -> tuple[int | None, dict]:
    """``(seq_len, provenance)`` for LongRoPE: decide the list the way the chosen stack does for ``pos``."""
    from .config import stack_options
    from .scaling import uses_long_factors

    original = rc.original_max_position_embeddings
    switch = frequency_options.get("longrope_switch") or stack_options(frequency_options.get("stack", "transformers"))[
        "longrope_switch"]
    top = int(pos.max())
    if switch == "current_length":
        decided = "transformers: long iff max(position_ids) + 1 > original_max_position_embeddings"
        if seq_len is None:
            seq_len = top + 1
            decided += f" (seq_len = max(positions) + 1 = {seq_len})"
        elif seq_len <= top:
            raise InputError("seq_len", seq_len, f"None or > max(positions) = {top}: a forward over these positions "
                             "has seq_len = max(position_ids) + 1")
        long = uses_long_factors(seq_len, original)
    else:
        max_model_len = frequency_options.get("max_model_len")
        long = uses_long_factors(None, original, switch="static", max_model_len=max_model_len)
        decided = f"static (vLLM, llama.cpp): long iff max_model_len = {max_model_len} > original_max_position_embeddings"
        if max_model_len is not None and top >= max_model_len:
            raise InputError("positions", f"max {top}", f"positions < max_model_len = {max_model_len}")
    if not long and top >= original:
        raise InputError("seq_len", seq_len, f"a length that selects the long factors: position {top} >= "
                         f"original_max_position_embeddings = {original} is only ever rotated with them")
    return seq_len, {"uses_long_factors": bool(long), "decided_by": decided}


def write_vectors(
    path,
    config: Mapping | RopeConfig,
    *,
    positions=None,
    seed: int = 0,
    batch: int = 1,
    heads: int = 2,
    seq_len: int | None = None,
    **frequency_options,
) -> dict[str, Any]:
    """Write the golden vectors of ``config`` to ``path`` (an ``.npz``) and return them (as :func:`make_vectors`).

    ``read_vectors(path)`` gives back the same arrays and metadata.  NumPy adds
    ``.npz`` to a path without it; the returned metadata records nothing about
    the path.
    """
    vectors = make_vectors(
        config, positions=positions, seed=seed, batch=batch, heads=heads, seq_len=seq_len, **frequency_options
    )
    text = json.dumps(vectors["meta"], sort_keys=True, allow_nan=False)
    payload = {name: value for name, value in vectors.items() if name != "meta"}  # ARRAY_NAMES and the optional ones
    payload["meta_json"] = np.array(text)  # () unicode
    payload["meta_json_utf8"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)  # (bytes,) uint8
    np.savez(Path(path), **payload)
    return vectors


def read_vectors(path) -> dict[str, Any]:
    """Read a golden-vector file: the arrays of :data:`ARRAY_NAMES`, any optional ones, and ``"meta"`` (the provenance dict).

    Raises :class:`~yarnref.errors.InputError` if the file is not a yarnref
    golden-vector file (missing arrays, bad metadata, a newer format).
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)  # never a pickle: a file cannot run code here
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as error:
        raise InputError("path", str(path), f"a {FORMAT} .npz file ({type(error).__name__}: {error})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError("path", str(path), f"a {FORMAT} .npz file (this is a single .npy array)")
    with data:
        missing = [name for name in (*ARRAY_NAMES, "meta_json") if name not in data.files]
        if missing:
            raise InputError("path", str(path), f"a {FORMAT} .npz file (missing arrays: {missing})")
        try:
            names = [*ARRAY_NAMES, *(n for n in data.files if n not in ARRAY_NAMES and not n.startswith("meta_json"))]
            out: dict[str, Any] = {name: data[name] for name in names}
            meta_json = data["meta_json"]
        except (OSError, ValueError, EOFError, TypeError, KeyError, zipfile.BadZipFile) as error:
            raise InputError("path", str(path), f"a {FORMAT} .npz file ({type(error).__name__}: {error})") from None
    if meta_json.shape != () or meta_json.dtype.kind != "U":
        raise InputError("path", str(path), f"a {FORMAT} .npz file (meta_json is not a string)")
    try:
        meta = json.loads(str(meta_json))
    except (ValueError, RecursionError) as error:
        raise InputError("path", str(path), f"a {FORMAT} .npz file (meta_json is not JSON: {type(error).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError("path", str(path), f"a {FORMAT} .npz file (meta_json has no format {FORMAT!r})")
    version = meta.get("format_version", 0)
    if not is_int(version):
        raise InputError("path", str(path), f"a {FORMAT} .npz file (format_version {version!r} is not an integer)")
    if version > FORMAT_VERSION:
        raise InputError(
            "path", str(path), f"format_version <= {FORMAT_VERSION} (this file has {meta.get('format_version')}; upgrade yarnref)"
        )
    out["meta"] = meta
    return out


#: Arrays compared by check_vectors whose error grows with the position (angles).
_POSITIONAL = {"cos", "sin", "q_rot_half", "k_rot_half", "q_rot_interleaved", "k_rot_interleaved",
               "q_rot_interleaved_in_half_out", "k_rot_interleaved_in_half_out"}


def check_vectors(
    vectors,
    *,
    dtype=None,
    angle_dtype=None,
    inv_freq=None,
    attention_factor=None,
    cos=None,
    sin=None,
    q_rot_half=None,
    k_rot_half=None,
    q_rot_interleaved=None,
    k_rot_interleaved=None,
    q_rot_interleaved_in_half_out=None,
    k_rot_interleaved_in_half_out=None,
) -> list[str]:
    """Compare another implementation's arrays with a golden-vector file; return the names checked.

    ``vectors`` is a path or the dict of :func:`read_vectors`.  Each array
    given (NumPy, torch, CuPy, a list) is compared with the stored one by
    :func:`yarnref.testing.assert_close` (``op="frequencies"`` for
    ``inv_freq`` and ``attention_factor``, ``op="rope"`` for the rest) with ``dtype`` (the
    precision the other implementation computed in; default: the array's own
    dtype), ``angle_dtype`` (the precision of its angles, see
    :func:`yarnref.testing.tolerance`) and, for cos/sin and the rotations,
    ``max_position`` = the largest stored position.  Raises ``AssertionError``
    naming the array on a mismatch (shapes included),
    :class:`~yarnref.errors.InputError` if no array is given.
    """
    from .testing import assert_close  # late: keeps this module importable on its own

    stored = vectors if isinstance(vectors, Mapping) else read_vectors(vectors)
    given = {
        "inv_freq": inv_freq,
        "attention_factor": attention_factor,
        "cos": cos,
        "sin": sin,
        "q_rot_half": q_rot_half,
        "k_rot_half": k_rot_half,
        "q_rot_interleaved": q_rot_interleaved,
        "k_rot_interleaved": k_rot_interleaved,
        "q_rot_interleaved_in_half_out": q_rot_interleaved_in_half_out,
        "k_rot_interleaved_in_half_out": k_rot_interleaved_in_half_out,
    }
    given = {name: value for name, value in given.items() if value is not None}
    absent = [name for name in given if name not in stored]
    if absent:
        raise InputError(absent[0], "an array", f"one the file holds (its pairing is {stored['meta'].get('pairing')!r})")
    if not given:
        raise InputError("arrays", None, f"at least one of {list(_CHECKABLE)} to compare")
    max_position = int(np.max(stored["positions"]))
    for name, actual in given.items():
        if isinstance(actual, (int, float)):
            actual = np.asarray(actual, dtype=np.float64)
        assert_close(
            actual,
            stored[name],
            dtype=dtype,
            max_position=max_position if name in _POSITIONAL else 0,
            op="rope" if name in _POSITIONAL else "frequencies",
            angle_dtype=angle_dtype,
            err_msg=f"golden vector {name!r}",
        )
    return list(given)


_CHECKABLE = (
    "inv_freq",
    "attention_factor",
    "cos",
    "sin",
    "q_rot_half",
    "k_rot_half",
    "q_rot_interleaved",
    "k_rot_interleaved",
    "q_rot_interleaved_in_half_out",
    "k_rot_interleaved_in_half_out",
)
