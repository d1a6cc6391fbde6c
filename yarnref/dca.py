r"""Dual Chunk Attention (DCA): chunked position ids, their distance matrix, and the attention.

Paper: An, Huang, Zhang, Gong, Qiu, Zhou, Kong, "Training-Free Long-Context
Scaling of Large Language Models", ICML 2024, arXiv:2402.17463 (ChunkLlama),
section 3.  As run in Qwen2.5-1M: Yang et al., "Qwen2.5-1M Technical Report",
arXiv:2501.15383, through vLLM's ``DualChunkRotaryEmbedding`` and
``DualChunkFlashAttention`` backend.

A pretrained RoPE model has seen relative distances up to its training length
only.  DCA never lets a query see a larger one: the sequence is cut into chunks
of ``s`` tokens, every key gets its position inside its chunk, and the query
takes one of three positions depending on how far back the key's chunk is.

Names.  The paper writes ``s`` (chunk size), ``c`` (pretraining length) and
``w`` (local window, ``w = c - s``).  The code of ChunkLlama and vLLM and the
Qwen2.5-1M ``config.json`` use other names, and so does yarnref:

* ``chunk_size`` (``C``): the largest position a query may take, the paper's
  ``c - 1``;
* ``local_size``: ``C - L``, the paper's ``w - 1``;
* ``chunk_len = chunk_size - local_size`` (``L``): the length of a chunk, the
  paper's ``s``.

ChunkLlama sets ``C`` to 3/4 of the pretraining length and ``local_size`` to
1/8 of it (so ``C`` plays the role of ``c - 1`` with some margin); Qwen2.5-7B
and 14B-Instruct-1M use ``C = 262144`` and ``local_size = 8192``, so ``L =
253952``.

Equations (paper section 3.2; ``r(p) = p mod L``, ``b(p) = floor(p / L)``):

* Eqs. (2)-(7), position ids.  Keys: :math:`P_k(j) = r(j)`.  Queries, by part:

  .. math::
     P_q^{\mathrm{intra}}(i) = r(i), \qquad
     P_q^{\mathrm{succ}}(i) = \min(r(i) + L,\ C), \qquad
     P_q^{\mathrm{inter}} = \min(2L - 1,\ C)

  These are the paper's ``[s, s+1, .., s+w-1, c-1, .., c-1]`` and ``c - 1``.
  For the inter position yarnref follows the implementations (ChunkLlama and
  vLLM read the successive table at ``L - 1``); it equals the paper's ``C``
  whenever ``L > local_size``, which holds in every published config.
* Eq. (8), which part a pair uses, by the chunk distance ``b(i) - b(j)``: 0 is
  intra, 1 successive, 2 or more inter.  The effective distance is
  :math:`M[i][j] = P_q^{\mathrm{part}}(i) - P_k(j)`, which lies in ``[0, C]``
  (:func:`dca_relative_positions`).  Intra distances are exact (``i - j``).
* Eq. (9): one softmax over all keys ``j <= i`` of the logits
  :math:`\langle R(P_q^{\mathrm{part}}(i))\, q_i,\ R(P_k(j))\, k_j\rangle \cdot \mathrm{scale}`.
  Implementations run the three parts as separate flash-attention calls and
  merge them by their log-sum-exps (paper Appendix A.2, Algorithm 1); that is
  the same softmax (``form="merge"``, checked against ``form="union"``).

Up to ``C + 1`` tokens (and with ``L > local_size``, true of every real
config) every effective distance is the true one, so DCA is plain RoPE
attention there.

Temperature (``temperature=``): the paper uses none (``"none"``, the default).
``"chunkllama"`` is ChunkLlama's Llama code, which multiplies the q and k
cos/sin tables by ``0.05 ln(seq_len / max_position_embeddings) + 1`` (1 when
the ratio is at most 1), so the logits of the rotated features scale by its
square.  In decode ChunkLlama rotates each key once, when it is written, and
caches it: key ``j`` keeps the factor of its write length ``w_j`` while the
query gets the current one (``key_write_lengths``, as for ``"qwen"``), so a
logit's rotary part scales by ``mscale(L_q) mscale(w_j)``.  ``"qwen"`` is vLLM's Qwen2.5-1M rule:
:math:`s(n) = \max(1,\ 0.1 \ln(n / O) + 1)` with ``O =
original_max_position_embeddings``; every key is stored multiplied (all its
features) by ``s`` of the sequence length when it was written, and the query by
``s`` of the request's length, so a logit is scaled by ``s(L_q) s(L_{k_j})``:
``s^2`` in prefill, and in decode each prompt key keeps its prompt-time factor.

Conventions
-----------
* Layout ``(batch, heads, seq, head_dim)``; GQA as in
  :mod:`yarnref.softmax_attention` (query head ``h`` reads kv head ``h // group``).
* ``q`` and ``k`` are **un-rotated**: DCA rotates them itself, because a query
  is rotated to several positions.  Rotation: :func:`yarnref.rope.apply_rope`
  with ``pairing`` ``"half"`` (vLLM ``is_neox_style``, Qwen2, Llama in
  transformers) or ``"interleaved"``; with ``r = 2 len(inv_freq) < head_dim``
  only the first ``r`` features rotate.  ``attention_factor`` (and the
  ChunkLlama temperature) multiply cos and sin, as in :mod:`yarnref.rope`.
* A position is the absolute token index ``p >= 0``; ``pi_factor`` divides
  every position table (Position Interpolation composed with DCA, as ChunkLlama
  runs Together-32k).  The position ids themselves stay integers.
* ``q_len <= kv_len``: the queries are the **last** ``q_len`` of the
  ``kv_len`` positions, so prefill, chunked prefill (starting anywhere, not
  only at a multiple of ``L``) and decode (``q_len == 1``) are one call.
* ``scale`` defaults to ``1/sqrt(head_dim)``; lse is the natural-log
  log-sum-exp of the final (temperature-scaled) logits.
* Precision: float64 throughout; the output has q's dtype, the lse is float64.
  Queries are processed in blocks, so memory is ``O(block * kv_len)`` per
  head, never ``O(q_len * kv_len)``.  (32768 tokens, 8 heads, head_dim 128:
  about 2.5 CPU-minutes on one core and 0.6 GiB beyond the inputs.)

Shared with the backends: :func:`dca_segments` (the walk over chunks) and
:func:`dca_temperature` (the validated temperature factors).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .softmax_attention import attention, check_qkv, default_scale, merge_attention
from .checks import MAX_SEGMENTS, check_allocation, check_array_like, check_logits_fit, check_option, check_same_dtype
from .checks import check_bool
from .checks import check_dca_sizes as _check_sizes
from .checks import check_int as _check_positive_int
from .checks import check_positive_real as _check_positive_real
from .checks import is_int as _is_int
from .errors import InputError
from .progress import progress_iter
from .config import DCAConfig, dca_config  # read with the rest of a config.json
from .rope import apply_rope, rope_cos_sin

__all__ = [
    "DCA_FORMS",
    "DCA_PAIRINGS",
    "DCA_TEMPERATURES",
    "DCAConfig",
    "DCAPositionIds",
    "DCASegment",
    "DCATemperature",
    "DCAOptions",
    "dca_options",
    "chunkllama_mscale",
    "dca_attention",
    "dca_config",
    "dca_position_ids",
    "dca_relative_positions",
    "dca_segments",
    "dca_temperature",
    "qwen_attention_scale",
]

DCA_FORMS = ("union", "merge")
DCA_PAIRINGS = ("half", "interleaved")
DCA_TEMPERATURES = ("none", "chunkllama", "qwen")

#: Logits held at once by the blocked union form: ``batch * heads * block * kv_len``
#: float64 numbers (64 MiB).  32 queries per block at 8 heads and 32768 keys.
BLOCK_ELEMENTS = 1 << 23
#: Keys rotated at once.
ROTATE_BLOCK = 4096


# ----------------------------------------------------------------------------- argument checks


class DCAOptions(NamedTuple):
    """The scalar options of :func:`dca_attention`, validated: see :func:`dca_options`."""

    scale: float
    attention_factor: float
    pi_factor: float
    return_lse: bool


def dca_options(head_dim: int, scale, pairing, attention_factor, pi_factor, form, return_lse) -> DCAOptions:
    """The non-array options of :func:`dca_attention`, validated and normalised, in the order they are checked.

    The spec and every backend call this one function, so a bad option gets
    the same error whichever backend runs: ``scale`` (``None``:
    ``1/sqrt(head_dim)``), ``attention_factor`` and ``pi_factor`` finite
    numbers > 0, ``pairing`` one of :data:`DCA_PAIRINGS`, ``form`` one of
    :data:`DCA_FORMS`, ``return_lse`` a bool.
    """
    scale = _check_positive_real("scale", default_scale(head_dim) if scale is None else scale)
    check_option("pairing", pairing, DCA_PAIRINGS)
    attention_factor = _check_positive_real("attention_factor", attention_factor)
    pi_factor = _check_positive_real("pi_factor", pi_factor)
    check_option("form", form, DCA_FORMS)
    return DCAOptions(scale, attention_factor, pi_factor, check_bool("return_lse", return_lse))


# ----------------------------------------------------------------------------- position ids


class DCAPositionIds(NamedTuple):
    """The DCA position of every token ``p = 0 .. seq_len-1``; each an int64 array of shape ``(seq_len,)``.

    ``L = chunk_size - local_size``, ``C = chunk_size``.
    """

    #: Keys: ``p mod L``.
    key: np.ndarray
    #: Queries against keys of their own chunk: ``p mod L``.
    intra: np.ndarray
    #: Queries against keys of the previous chunk: ``min(p mod L + L, C)``.
    successive: np.ndarray
    #: Queries against keys two or more chunks back: ``min(2L - 1, C)``, one constant.
    inter: np.ndarray
    #: ``p mod L + L``, not clamped: vLLM uses it only to *estimate* sparse patterns.
    successive_critical: np.ndarray
    #: ``p mod L + C``, not clamped: vLLM uses it only to *estimate* sparse patterns.
    inter_critical: np.ndarray


def dca_position_ids(seq_len, chunk_size, local_size, start=0) -> DCAPositionIds:
    """The key and query position ids of Eqs. (2)-(7) for tokens ``start .. seq_len-1``.

    These are vLLM's five query variants plus the key position
    (``DualChunkRotaryEmbedding``); the two ``*_critical`` ones are used only
    by the vertical-slash estimation of Qwen2.5-1M.  Entry ``n`` of each
    array belongs to token ``start + n``; a token's ids depend on its own
    position only, so ``start`` gives the ids of a prefill chunk's queries
    without those of every earlier token (at 1M tokens the six arrays of all
    positions take 48 MiB and tens of milliseconds to build).
    """
    seq_len = _check_positive_int("seq_len", seq_len)
    chunk_len = _check_sizes(chunk_size, local_size)
    start = _check_positive_int("start", start, 0, seq_len - 1)  # a token of the sequence
    n = seq_len - start
    check_allocation("seq_len", seq_len, 6 * n, 8, "six int64 position arrays")
    in_chunk = np.arange(start, seq_len, dtype=np.int64) % chunk_len  # r(p)
    return DCAPositionIds(
        key=in_chunk,
        intra=in_chunk.copy(),
        successive=np.minimum(in_chunk + chunk_len, chunk_size),
        inter=np.full(n, min(2 * chunk_len - 1, chunk_size), dtype=np.int64),
        successive_critical=in_chunk + chunk_len,
        inter_critical=in_chunk + chunk_size,
    )


def dca_relative_positions(seq_len, chunk_size, local_size) -> np.ndarray:
    """Eq. (8): the ``(seq_len, seq_len)`` int64 matrix of effective distances, ``-1`` where ``j > i``.

    Entry ``[i, j]`` is ``P_q^part(i) - P_k(j)`` with the part chosen by the
    chunk distance ``i // L - j // L`` (0 intra, 1 successive, >= 2 inter).
    Every entry with ``j <= i`` lies in ``[0, chunk_size]``; the intra ones are
    ``i - j``.  This is ``O(seq_len^2)``: meant for small cases and plots.
    """
    seq_len = _check_positive_int("seq_len", seq_len)
    _check_sizes(chunk_size, local_size)
    check_allocation("seq_len", seq_len, 4 * seq_len * seq_len, 8, "(seq_len, seq_len) int64 matrices")
    ids = dca_position_ids(seq_len, chunk_size, local_size)
    chunk_len = chunk_size - local_size
    i = np.arange(seq_len)[:, None]  # (seq, 1) query index
    j = np.arange(seq_len)[None, :]  # (1, seq) key index
    chunk_distance = i // chunk_len - j // chunk_len  # (seq, seq)
    query_pos = np.where(
        chunk_distance == 0,
        ids.intra[:, None],
        np.where(chunk_distance == 1, ids.successive[:, None], ids.inter[:, None]),
    )
    return np.where(j <= i, query_pos - ids.key[None, :], -1).astype(np.int64)


class DCASegment(NamedTuple):
    """Queries ``[begin, end)`` (absolute positions) that lie in one chunk, and their three key ranges.

    Each range is ``(start, stop)`` of absolute key positions; an empty part
    has ``start == stop``.  The intra range ends at ``end``: query ``i`` sees
    its own chunk's keys up to ``i`` (causal inside the part).
    """

    begin: int
    end: int
    intra: tuple[int, int]
    successive: tuple[int, int]
    inter: tuple[int, int]


def dca_segments(kv_len, q_len, chunk_size, local_size) -> list[DCASegment]:
    """How vLLM walks the last ``q_len`` of ``kv_len`` positions: split at multiples of ``L``.

    For a segment starting in the chunk that begins at ``cs``: intra keys
    ``[cs, end)``, successive keys ``[cs - L, cs)``, inter keys ``[0, cs - L)``
    (vLLM's ``_dual_chunk_flash_attn_prefill_func``; ChunkLlama's prefill is the case ``q_len == kv_len``).
    """
    kv_len = _check_positive_int("kv_len", kv_len)
    q_len = _check_positive_int("q_len", q_len)
    if q_len > kv_len:
        raise InputError("q_len", q_len, f"at most kv_len = {kv_len}")
    chunk_len = _check_sizes(chunk_size, local_size)
    begin = kv_len - q_len
    n_segments = (kv_len - 1) // chunk_len - begin // chunk_len + 1  # chunks the queries touch
    if n_segments > MAX_SEGMENTS:
        raise InputError("q_len", q_len, f"at most {MAX_SEGMENTS} chunks of chunk_len = {chunk_len} "
                         f"(here {n_segments}); use a larger chunk_size - local_size")
    segments = []
    while begin < kv_len:
        chunk_start = (begin // chunk_len) * chunk_len
        end = min(chunk_start + chunk_len, kv_len)
        previous = max(chunk_start - chunk_len, 0)
        segments.append(DCASegment(begin, end, (chunk_start, end), (previous, chunk_start), (0, previous)))
        begin = end
    return segments


# ----------------------------------------------------------------------------- temperature


def chunkllama_mscale(seq_len, max_position_embeddings) -> float:
    """ChunkLlama's table factor ``0.05 ln(seq_len / max_position_embeddings) + 1``, 1 if the ratio is <= 1.

    It multiplies the q and k cos/sin tables, so rotary logits scale by its
    square (ChunkLlama ``get_mscale``; its authors note the paper's results
    did not use it).
    """
    seq_len = _check_positive_int("seq_len", seq_len)
    max_position_embeddings = _check_positive_int("max_position_embeddings", max_position_embeddings)
    ratio = seq_len / max_position_embeddings
    return 1.0 if ratio <= 1 else 0.05 * math.log(ratio) + 1.0


def qwen_attention_scale(length, original_max_position_embeddings):
    """vLLM's Qwen2.5-1M DCA factor ``s(n) = max(1, 0.1 ln(n / O) + 1)``, for a length or an int array of lengths.

    Queries and keys are each multiplied by it, so a logit scales by
    ``s(L_q) * s(L_k)``: ``s^2``, YaRN's ``(0.1 ln s + 1)^2``, when both share
    one length.  Returns a float for a scalar, a float64 array for an array.
    """
    original = _check_positive_int("original_max_position_embeddings", original_max_position_embeddings)
    n = np.asarray(length)
    if n.dtype == bool or not np.issubdtype(n.dtype, np.integer) or np.any(n < 1):
        raise InputError("length", length, "an integer (or integer array) >= 1")
    s = np.maximum(1.0, 0.1 * np.log(n.astype(np.float64) / original) + 1.0)
    return float(s) if s.ndim == 0 else s


#: Which temperature modes use each optional parameter of :func:`dca_temperature`.
_TEMPERATURE_PARAMETERS = {
    "seq_len": ("chunkllama", "qwen"),
    "key_write_lengths": ("chunkllama", "qwen"),
    "max_position_embeddings": ("chunkllama",),
    "original_max_position_embeddings": ("qwen",),
}


class DCATemperature(NamedTuple):
    """The three multipliers a temperature mode puts on DCA's logits.

    ``table``: into the q and k cos/sin tables (ChunkLlama); ``query``: onto
    every rotated query; ``key``: ``(kv_len,)``, onto each rotated key (vLLM
    stores keys pre-multiplied by their write-time factor; for ChunkLlama with
    ``key_write_lengths``, ``mscale(w_j) / mscale(seq_len)``, which turns the
    shared table factor into key ``j``'s own: exact for full-head rotary, the
    only case ChunkLlama runs).
    """

    table: float
    query: float
    key: np.ndarray


def dca_logit_factor(attention_factor: float, factors: DCATemperature) -> float:
    """The multiplier of ``max|q| max|k| head_dim scale`` that bounds DCA's logits (for the logits check).

    A rotated element is at most ``sqrt(2) max|x|`` times the table factor
    (``attention_factor`` times the temperature's table factor), on both q and
    k; the query factor multiplies the scale and each key its write-time
    factor (the largest one bounds them).
    """
    key_factor = float(np.max(factors.key)) if np.size(factors.key) else 1.0
    table = attention_factor * factors.table
    return 2.0 * table * table * factors.query * key_factor


def dca_temperature(
    temperature,
    kv_len,
    *,
    seq_len=None,
    key_write_lengths=None,
    max_position_embeddings=None,
    original_max_position_embeddings=None,
) -> DCATemperature:
    """Validate a temperature mode and its parameters; return its :class:`DCATemperature` factors.

    ``seq_len`` (default ``kv_len``, at least ``kv_len``) is the request's
    length: its full prompt length during chunked prefill.
    ``key_write_lengths[j]`` is the sequence length when key ``j`` was
    written (at least ``j + 1``; it may exceed ``seq_len`` for a prefix cached
    by a longer request).  A parameter given to a mode that does not use it is
    an error, so that it cannot be ignored silently.  Backends call this too.
    """
    if not isinstance(temperature, str) or temperature not in DCA_TEMPERATURES:
        raise InputError("temperature", temperature, f"one of {DCA_TEMPERATURES}")
    kv_len = _check_positive_int("kv_len", kv_len)
    given = {
        "seq_len": seq_len,
        "key_write_lengths": key_write_lengths,
        "max_position_embeddings": max_position_embeddings,
        "original_max_position_embeddings": original_max_position_embeddings,
    }
    for name, value in given.items():
        if value is not None and temperature not in _TEMPERATURE_PARAMETERS[name]:
            users = " or ".join(repr(t) for t in _TEMPERATURE_PARAMETERS[name])
            shown = "an array" if name == "key_write_lengths" else value
            raise InputError(name, shown, f"None with temperature={temperature!r} (only temperature {users} uses it)")
    ones = np.ones(kv_len, dtype=np.float64)
    if temperature == "none":
        return DCATemperature(1.0, 1.0, ones)
    if seq_len is None:
        seq_len = kv_len
    if not _is_int(seq_len) or seq_len < kv_len:
        raise InputError("seq_len", seq_len, f"an integer >= kv_len = {kv_len} (the request's full length)")
    if key_write_lengths is None:
        write = np.full(kv_len, seq_len, dtype=np.int64)
    else:
        write = np.asarray(key_write_lengths)
        if write.shape != (kv_len,) or write.dtype == bool or not np.issubdtype(write.dtype, np.integer):
            raise InputError("key_write_lengths", f"array of shape {write.shape} and dtype {write.dtype}", f"an integer array of shape (kv_len,) = ({kv_len},)")
        bad = np.flatnonzero(write < np.arange(1, kv_len + 1))
        if bad.size:
            j = int(bad[0])
            raise InputError("key_write_lengths", f"[{j}] = {int(write[j])}", f"key j written at a sequence length >= j + 1 = {j + 1}")
    if temperature == "chunkllama":
        if max_position_embeddings is None:
            raise InputError("max_position_embeddings", None, "a positive integer (required by temperature='chunkllama')")
        table = chunkllama_mscale(seq_len, max_position_embeddings)
        if key_write_lengths is None:
            return DCATemperature(table, 1.0, ones)
        ratio = np.maximum(1.0, write / max_position_embeddings)  # (kv_len,) w_j / max_pos, at least 1
        key = (0.05 * np.log(ratio) + 1.0) / table  # mscale(w_j) / mscale(seq_len)
        return DCATemperature(table, 1.0, key)
    if original_max_position_embeddings is None:
        raise InputError("original_max_position_embeddings", None, "a positive integer (required by temperature='qwen')")
    original_max_position_embeddings = _check_positive_int("original_max_position_embeddings", original_max_position_embeddings)
    query = qwen_attention_scale(int(seq_len), original_max_position_embeddings)
    return DCATemperature(1.0, query, qwen_attention_scale(write, original_max_position_embeddings))


# ----------------------------------------------------------------------------- attention


def _rotate(x, inv_freq, positions, table_factor, pairing):
    """``x`` (float64, ``(batch, heads, n, head_dim)``) rotated to ``positions`` (``(n,)``, real)."""
    cos, sin = rope_cos_sin(inv_freq, positions, table_factor)  # (n, r/2) each
    return apply_rope(x, cos, sin, pairing)


def _block_size(rows_per_query: int, kv_len: int) -> int:
    return max(1, BLOCK_ELEMENTS // (rows_per_query * kv_len))


def dca_attention(
    q,
    k,
    v,
    inv_freq,
    chunk_size,
    local_size,
    scale=None,
    *,
    pairing="half",
    attention_factor=1.0,
    temperature="none",
    max_position_embeddings=None,
    original_max_position_embeddings=None,
    seq_len=None,
    key_write_lengths=None,
    pi_factor=1.0,
    form="union",
    return_lse=False,
):
    """Dual Chunk Attention of Eq. (9) on un-rotated ``q`` and ``k``.

    ``q``: ``(batch, q_heads, q_len, head_dim)``; ``k``: ``(batch, kv_heads,
    kv_len, head_dim)``; ``v``: ``(batch, kv_heads, kv_len, v_dim)``, with
    ``q_len <= kv_len`` (queries are the last ``q_len`` positions).
    ``inv_freq``: the ``r/2`` rotary frequencies (``r <= head_dim``).
    ``chunk_size``, ``local_size``: see the module docstring (``L =
    chunk_size - local_size``).

    Options: ``scale`` (default ``1/sqrt(head_dim)``); ``pairing`` ``"half"``
    or ``"interleaved"``; ``attention_factor`` multiplies cos and sin;
    ``pi_factor`` divides every position; ``temperature`` ``"none"`` (the
    paper), ``"chunkllama"`` (needs ``max_position_embeddings``; full-head
    rotary when ``key_write_lengths`` is given) or ``"qwen"`` (needs
    ``original_max_position_embeddings``); for both, ``key_write_lengths``,
    shape ``(kv_len,)``, gives the sequence length when each key was written
    (default ``seq_len`` for every key), with ``seq_len`` the request's length
    (default ``kv_len``); ``form`` ``"union"`` (one softmax over the union of
    the three parts, blocked over queries) or ``"merge"`` (the three parts as
    separate :func:`~yarnref.softmax_attention.attention` calls per DCA segment,
    combined with :func:`~yarnref.softmax_attention.merge_attention`, as vLLM runs it).

    Returns ``out`` ``(batch, q_heads, q_len, v_dim)`` in q's dtype, and with
    ``return_lse`` also ``lse`` ``(batch, q_heads, q_len)`` in float64.
    """
    allowed = "a 4-D floating-point array (batch, heads, seq, head_dim)"
    q, k, v = (check_array_like(name, a, allowed) for name, a in (("q", q), ("k", k), ("v", v)))
    batch, q_heads, kv_heads, q_len, kv_len, head_dim = check_qkv(q, k, v)
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(name, f"dtype {a.dtype}", "a floating-point array")
    check_same_dtype(q=q, k=k, v=v)
    if q_len > kv_len:
        raise InputError("q", f"q_len={q_len}", f"at most kv_len = {kv_len} (the queries are the last q_len of the kv_len positions)")
    _check_sizes(chunk_size, local_size)
    freqs = check_array_like("inv_freq", inv_freq, "a 1-D float array of r/2 finite frequencies")
    if freqs.ndim != 1 or freqs.size == 0 or 2 * freqs.size > head_dim or not np.issubdtype(freqs.dtype, np.floating) or not np.all(np.isfinite(freqs)):
        raise InputError("inv_freq", f"array of shape {freqs.shape} and dtype {freqs.dtype}", f"a 1-D float array of r/2 finite frequencies, 1 <= r/2 <= head_dim/2 = {head_dim // 2}")
    freqs = freqs.astype(np.float64)
    scale, attention_factor, pi_factor, return_lse = dca_options(head_dim, scale, pairing, attention_factor, pi_factor, form, return_lse)
    factors = dca_temperature(
        temperature,
        kv_len,
        seq_len=seq_len,
        key_write_lengths=key_write_lengths,
        max_position_embeddings=max_position_embeddings,
        original_max_position_embeddings=original_max_position_embeddings,
    )
    if temperature == "chunkllama" and key_write_lengths is not None and 2 * freqs.size != head_dim:
        raise InputError("key_write_lengths", "an array", f"None with temperature='chunkllama' and partial rotary "
                         f"(r = {2 * freqs.size} < head_dim = {head_dim}): ChunkLlama rotates whole heads")

    check_logits_fit(q, k, scale, factor=dca_logit_factor(attention_factor, factors), v=v)  # before computing them
    ids = dca_position_ids(kv_len, chunk_size, local_size)
    table_factor = attention_factor * factors.table
    # Keys are rotated once, at p mod L, and carry their write-time factor (vLLM caches them so).
    # Rotated a slice at a time, so the rotation's temporaries stay small.
    k_rot = np.empty(k.shape, dtype=np.float64)
    for start in range(0, kv_len, ROTATE_BLOCK):
        keys = slice(start, min(start + ROTATE_BLOCK, kv_len))
        k_rot[:, :, keys] = _rotate(k[:, :, keys].astype(np.float64), freqs, ids.key[keys] / pi_factor, table_factor, pairing)
    k_rot *= factors.key[:, None]  # (kv_len, 1) broadcast over (batch, kv_heads, kv_len, head_dim)
    v64 = v.astype(np.float64, copy=False)
    offset = kv_len - q_len  # absolute position of query row 0

    def rotated_queries(part_positions, begin, end):
        """Queries at absolute positions [begin, end), rotated to part_positions[begin:end], times scale."""
        rows = q[:, :, begin - offset : end - offset].astype(np.float64)
        return _rotate(rows, freqs, part_positions[begin:end] / pi_factor, table_factor, pairing) * (scale * factors.query)

    segments = dca_segments(kv_len, q_len, chunk_size, local_size)
    query_positions = {"intra": ids.intra, "successive": ids.successive, "inter": ids.inter}
    run = _union_form if form == "union" else _merge_form
    out, lse = run(rotated_queries, query_positions, k_rot, v64, segments, offset, q_heads)
    out = out.astype(q.dtype, copy=False)
    return (out, lse) if return_lse else out


def _union_form(rotated_queries, query_positions, k_rot, v, segments, offset, q_heads):
    """Eq. (9) directly: per block of queries, the logits of all keys ``<= i`` side by side, one softmax."""
    batch, kv_heads, kv_len, _ = k_rot.shape
    group = q_heads // kv_heads
    q_len = kv_len - offset
    out = np.empty((batch, kv_heads, group, q_len, v.shape[-1]), dtype=np.float64)
    lse = np.empty((batch, kv_heads, group, q_len), dtype=np.float64)
    keys_t = np.swapaxes(k_rot, -1, -2)  # (batch, kv_heads, head_dim, kv_len)
    block = _block_size(batch * q_heads, kv_len)
    # One buffer for every block's logits, reused: fresh multi-MiB arrays per block cost more
    # (page faults) than the arithmetic on them.
    buffer = np.empty(batch * q_heads * min(block, q_len) * kv_len, dtype=np.float64)
    blocks = [(seg, begin) for seg in segments for begin in range(seg.begin, seg.end, block)]
    for seg, begin in progress_iter(blocks, "dca_attention"):
        end = min(begin + block, seg.end)
        n = end - begin
        # Row i of the block sees keys [0, i]; the block's logits cover [0, end), laid out in key
        # order: inter [0, cs - L), successive [cs - L, cs), intra [cs, end).
        logits = buffer[: batch * q_heads * n * end].reshape(batch, kv_heads, group, n, end)
        rows_by_kv_head = logits.reshape(batch, kv_heads, group * n, end)  # the same memory: a GQA group's rows stacked
        for part, (start, stop) in (("inter", seg.inter), ("successive", seg.successive), ("intra", (seg.intra[0], end))):
            if stop > start:
                qp = rotated_queries(query_positions[part], begin, end)  # (batch, q_heads, n, head_dim)
                qp = qp.reshape(batch, kv_heads, group * n, -1)  # query heads h = kv * group + g, rows stacked
                np.matmul(qp, keys_t[..., start:stop], out=rows_by_kv_head[..., start:stop])
        intra = logits[..., seg.intra[0] : end]  # a view: the causal mask is written in place
        intra[..., np.arange(seg.intra[0], end)[None, :] > np.arange(begin, end)[:, None]] = -np.inf
        row_max = logits.max(axis=-1, keepdims=True)  # finite: every query sees its own key
        logits -= row_max
        np.exp(logits, out=logits)  # the softmax numerators
        denom = logits.sum(axis=-1, keepdims=True)  # (batch, kv_heads, group, n, 1)
        weighted = (rows_by_kv_head @ v[:, :, :end]).reshape(batch, kv_heads, group, n, -1)
        rows = slice(begin - offset, end - offset)
        out[..., rows, :] = weighted / denom
        lse[..., rows] = (np.log(denom) + row_max)[..., 0]
    return out.reshape(batch, q_heads, q_len, -1), lse.reshape(batch, q_heads, q_len)


def _merge_form(rotated_queries, query_positions, k_rot, v, segments, offset, q_heads):
    """The implementations' form: per DCA segment, one attention call per part, LSE-merged."""
    batch, kv_heads, kv_len, _ = k_rot.shape
    q_len = kv_len - offset
    out = np.empty((batch, q_heads, q_len, v.shape[-1]), dtype=np.float64)
    lse = np.empty((batch, q_heads, q_len), dtype=np.float64)
    for seg in progress_iter(segments, "dca_attention"):
        outputs, lses = [], []
        for part, (start, stop), causal in (
            ("intra", seg.intra, True),  # bottom-right causal: query i sees [cs, i]
            ("successive", seg.successive, False),
            ("inter", seg.inter, False),
        ):
            if stop > start:
                qp = rotated_queries(query_positions[part], seg.begin, seg.end)
                # rotated_queries already applied the scale (and the query temperature): scale=1 here.
                o, l = attention(
                    qp, k_rot[:, :, start:stop], v[:, :, start:stop], causal=causal, scale=1.0,
                    return_lse=True, block_size=_block_size(batch * q_heads, stop - start),
                )
                outputs.append(o)
                lses.append(l)
        rows = slice(seg.begin - offset, seg.end - offset)
        out[:, :, rows], lse[:, :, rows] = merge_attention(outputs, lses)
    return out, lse
