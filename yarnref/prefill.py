r"""Chunked prefill, and the Qwen2.5-1M prefill pipeline (DCA + vertical-slash sparse attention).

Papers: Yang et al., "Qwen2.5-1M Technical Report", arXiv:2501.15383
(sections on length extrapolation with DCA and on sparse attention with
chunked prefill), built on An et al., "Training-Free Long-Context Scaling of
Large Language Models" (ChunkLlama, DCA), arXiv:2402.17463, section 3, and
Jiang et al., "MInference 1.0", arXiv:2407.02490, section 3.  What is
reproduced is what vLLM's ``DualChunkFlashAttentionImpl`` runs
(``_dual_chunk_flash_attn_prefill_func``), the only public implementation;
the technical report itself gives no pseudocode.

Chunked prefill
---------------
A prompt of ``T`` tokens is processed ``chunk_size`` queries at a time; chunk
``[a, b)`` attends to the keys ``[0, b)`` (causal, bottom-right).  Dense
attention gives exactly the whole-prompt result (each query's softmax runs over
the same keys); with vertical-slash sparsity every chunk estimates its own
pattern from its own last ``last_q`` queries, so the result depends on the
chunking.

The Qwen2.5-1M pipeline (:func:`qwen_prefill`; vLLM's ``DualChunkFlashAttention`` backend)
-----------------------------------------------------------------------------------------------
With ``L = chunk_size - local_size`` (the DCA chunk length) and ``C =
chunk_size``:

1. **Gate.**  Sparse only if ``sparse_attention_enabled`` and the sequence's
   length ``T > sparse_attention_threshold``; otherwise dense DCA
   (:func:`yarnref.dca.dca_attention`).
2. **Segments.**  The queries (optionally split into prefill chunks of
   ``prefill_chunk_size``) are cut at multiples of ``L``: a segment
   ``[begin, end)`` lies in the DCA chunk starting at ``cs``; its keys are
   intra ``[cs, end)``, successive ``[cs - L, cs)`` (if ``cs >= L``) and inter
   ``[0, cs - L)`` (if ``cs >= 2L``).
3. **Joint estimation** from the segment's last ``lq = min(end - begin,
   last_q)`` queries against all keys ``[0, end)``, with the *unclamped*
   positions: ``r(i) = i mod L`` for intra keys, ``r(i) + L`` for successive
   keys, ``r(i) + C`` for inter keys (keys at ``r(j)``).  One softmax over
   ``[0, end)``, 30 sink columns and 100 local diagonals forced, per-head
   budgets ``(v_h, s_h)`` from ``sparse_attention_config[layer]``, with vLLM's
   special case **v = 30 -> 130**.  The estimation is
   :func:`yarnref.vertical_slash_indices`, which keeps MInference's minimum
   budgets (30 verticals, 50 slashes); vLLM keeps ``min(end, v_h)`` and
   ``min(end, s_h)`` without minimums.  They differ only for table budgets
   below those minimums, which no shipped config has (the smallest are
   ``v = 30``, run as 130, and ``s = 100``); below 100 slashes vLLM's choice
   among the forced diagonals is ``torch.topk``'s tie order anyway.
4. **Split** the whole-row indices into the three parts, each in its own key
   coordinates: intra verticals ``c >= cs`` -> ``c - cs``, slashes ``delta <=
   end - 1 - cs`` kept; successive verticals in ``[cs - L, cs)`` -> ``c - (cs -
   L)``, slashes ``delta >= begin - cs`` -> ``delta - (begin - cs)``; inter
   verticals ``< cs - L`` kept, slashes ``delta >= begin - cs + L`` ->
   ``delta - L - (begin - cs)``.  (The non-causal parts place the query block
   right after their keys, so these shifts keep every diagonal on the same
   absolute keys.)  A part left with no vertical, or (successive, inter) no
   slash, gets vLLM's fallback ``arange(0, n, max(1, n/5))`` as torch computes
   it for int32: ``ceil(n / max(1, n/5))`` entries spaced ``int(max(1, n/5))``.
5. **Three sparse attentions** (kernel semantics) with the *clamped* DCA query
   positions (intra ``r(i)``, successive ``min(r(i) + L, C)``, inter
   ``min(2L - 1, C)``), causal for intra and "queries after the keys" for the
   other two, merged by their log-sum-exps.

Temperature: with ``original_max_position_embeddings = O > 0`` vLLM multiplies
the keys and the softmax scale by ``s = max(1, 0.1 ln(T / O) + 1)``, so every
logit (estimation included) is scaled by ``s^2``; ``T`` is the full length
(the prompt length during chunked prefill).

Conventions
-----------
* Layout ``(batch, heads, seq, head_dim)``, GQA (query head ``h`` reads kv
  head ``h // group``).  ``q_len <= kv_len``: the queries are the last
  ``q_len`` positions (chunked prefill continuing a cache).
* :func:`chunked_prefill` takes **rotated** q and k; :func:`qwen_prefill`
  takes **un-rotated** ones (DCA rotates each query to several positions).
* Backends.  This module is orchestration only: every array operation goes
  through the current backend (:func:`yarnref.get_backend`), so with
  ``yarnref.set_backend("torch")`` the same walk runs torch operations.  The
  split of each segment's index sets between its DCA parts (the fallbacks
  included) is the backend operation :func:`split_sparse_parts`: the GPU
  backends keep the sets on the device, so the device never waits for the
  host's bookkeeping between a segment's estimation and its attention.
  Position ids are made in NumPy; segment outputs are joined by the backend
  (``backend.concatenate``).  With the NumPy backend everything is float64
  and the output has q's dtype.
* Python loops run over prefill chunks and DCA segments only; heads and tokens
  are vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .softmax_attention import check_qkv
from .checks import check_array_like, check_index_groups
from .checks import check_bool as _check_bool
from .checks import check_int as _check_int
from .checks import check_scale as _check_scale
from .config import SPARSE_PATTERN, SparseHeadBudgets, _as_dca_config, sparse_attention_config_for  # noqa: F401
from .errors import ConfigError, InputError
from .progress import progress_iter

__all__ = [
    "SPARSE_PATTERN",
    "SparseHeadBudgets",
    "SparsePart",
    "IndexRange",
    "PartRanges",
    "part_runs",
    "QwenSparseSegment",
    "chunked_prefill",
    "qwen_prefill",
    "qwen_sparse_plan",
    "sparse_attention_config_for",
    "sorted_rows_disorder",
    "sparse_part_ranges",
    "split_layout",
    "split_sparse_parts",
    "unsorted_rows_error",
    "vllm_fallback_indices",
]

#: The only pattern Qwen2.5-1M's per-head tables use (and the only one vLLM accepts).
#: Forced sink columns and local diagonals of the estimation (MInference and vLLM).
_FORCE_VERTICALS, _FORCE_SLASHES = 30, 100

# ----------------------------------------------------------------------------- backend plumbing


def _backend():
    from .backend import get_backend

    return get_backend()


def _op(name: str):
    """The current backend's ``name`` operation (the spec function itself on the NumPy backend)."""
    return getattr(_backend(), name)


def _concatenate(arrays: list, axis: int):
    """The backend's arrays joined along ``axis``, by the backend (:meth:`yarnref.Backend.concatenate`)."""
    return arrays[0] if len(arrays) == 1 else _backend().concatenate(arrays, axis)


def _spec_float64(*arrays):
    """NumPy inputs are computed in float64 (the spec); other libraries' arrays are left to their backend."""
    return tuple(a.astype(np.float64, copy=False) if isinstance(a, np.ndarray) else a for a in arrays)


def _restore_dtype(x, like):
    return x.astype(like.dtype, copy=False) if isinstance(x, np.ndarray) and isinstance(like, np.ndarray) else x


# ----------------------------------------------------------------------------- argument checks


def _check_prefill_shapes(q, k, v):
    dims = check_qkv(q, k, v)
    if dims[3] > dims[4]:
        raise InputError("q", f"q_len={dims[3]}", f"at most kv_len = {dims[4]} (the queries are the last q_len positions)")
    return dims


_SPARSE_KEYS = ("vertical_size", "slash_size", "last_q", "mode")


def _check_sparse(sparse):
    if sparse is None:
        return None
    if not isinstance(sparse, Mapping):
        raise InputError("sparse", sparse, "None or a dict(vertical_size=..., slash_size=..., last_q=64, mode='kernel')")
    unknown = sorted(set(sparse) - set(_SPARSE_KEYS))
    missing = [key for key in ("vertical_size", "slash_size") if key not in sparse]
    if unknown or missing:
        raise InputError("sparse", dict(sparse), f"a dict with keys vertical_size and slash_size (required), last_q and mode (optional); unknown {unknown}, missing {missing}")
    mode = sparse.get("mode", "kernel")
    if not isinstance(mode, str) or mode not in ("exact", "kernel"):
        raise InputError("sparse['mode']", mode, "'exact' or 'kernel'")
    return dict(vertical_size=sparse["vertical_size"], slash_size=sparse["slash_size"],
                last_q=_check_int("sparse['last_q']", sparse.get("last_q", 64), 1), mode=mode)


# ----------------------------------------------------------------------------- chunked prefill


def chunked_prefill(q, k, v, chunk_size, scale=None, *, sparse=None, return_lse=False):
    """Prefill ``chunk_size`` queries at a time against the keys so far (causal, bottom-right).

    ``q`` ``(batch, q_heads, q_len, head_dim)``, ``k`` ``(batch, kv_heads,
    kv_len, head_dim)``, ``v`` ``(batch, kv_heads, kv_len, v_dim)``, **rotated**,
    ``q_len <= kv_len``.  Chunk ``[a, b)`` of the queries attends to keys
    ``[0, b + kv_len - q_len)``.

    ``sparse=None``: dense :func:`yarnref.attention` per chunk (equal to the
    whole prefill).  ``sparse=dict(vertical_size, slash_size, last_q=64,
    mode="kernel")``: each chunk estimates its vertical-slash pattern from its
    own last ``min(last_q, chunk)`` queries (:func:`yarnref.vertical_slash_indices`,
    budgets an int or per-head ``(q_heads,)``) and runs
    :func:`yarnref.vertical_slash_attention` over it.

    Returns ``out`` ``(batch, q_heads, q_len, v_dim)`` and with ``return_lse``
    the lse ``(batch, q_heads, q_len)``.
    """
    batch, q_heads, kv_heads, q_len, kv_len, head_dim = _check_prefill_shapes(q, k, v)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    sparse = _check_sparse(sparse)
    return_lse = _check_bool("return_lse", return_lse)
    if scale is not None:
        scale = _check_scale(scale, head_dim)
    offset = kv_len - q_len
    outputs, lses = [], []
    for start in progress_iter(range(0, q_len, chunk_size), "chunked_prefill"):
        stop = min(start + chunk_size, q_len)
        end = stop + offset  # keys [0, end)
        q_chunk, k_seen, v_seen = q[:, :, start:stop], k[:, :, :end], v[:, :, :end]
        if sparse is None:
            out, lse = _op("attention")(q_chunk, k_seen, v_seen, causal=True, scale=scale, return_lse=True)
        else:
            vertical_idx, slash_idx = _op("vertical_slash_indices")(
                q_chunk, k_seen, sparse["vertical_size"], sparse["slash_size"], sparse["last_q"], scale=scale
            )
            out, lse = _op("vertical_slash_attention")(
                q_chunk, k_seen, v_seen, vertical_idx, slash_idx, sparse["mode"], scale, True, causal=True
            )
        outputs.append(out)
        lses.append(lse)
    out, lse = _concatenate(outputs, 2), _concatenate(lses, 2)
    return (out, lse) if return_lse else out


# ----------------------------------------------------------------------------- the per-head sparse table


# ----------------------------------------------------------------------------- index bookkeeping (NumPy)


def vllm_fallback_indices(n: int) -> np.ndarray:
    """vLLM's indices for a DCA part that got none: ``torch.arange(0, n, max(1, n / 5), dtype=torch.int32)``.

    torch sizes that arange with the float step, ``ceil(n / max(1, n/5))``
    entries, but steps by the step truncated to an integer: ``[0, s, 2s, ...]``
    with ``s = int(max(1, n/5))`` (so 5 entries for ``n >= 5``, e.g. ``n = 7``
    gives ``[0, 1, 2, 3, 4]``; checked against torch for every ``n < 20000``).
    """
    n = _check_int("n", n, 1)
    step = max(1, n / 5)
    return np.arange(math.ceil(n / step), dtype=np.int64) * int(step)


def _compact(idx: np.ndarray, keep: np.ndarray, shift: int, fallback_len: int | None) -> np.ndarray:
    """Per (batch, head) row: the kept entries plus ``shift``, first and in order, then ``-1``.

    Rows that keep nothing get :func:`vllm_fallback_indices` of
    ``fallback_len`` (if given).  ``idx``, ``keep``: ``(batch, heads, n)``.
    Returns ``(batch, heads, width)`` int64, ``width = max(1, most kept, the
    fallback's length where a row needs it)``.  This is the definition of the
    split; the pipeline runs :func:`_kept_range`, which gives the same array
    for sorted rows and a range of values.
    """
    slot = np.cumsum(keep, axis=-1) - 1  # each kept entry goes to slot (kept entries before it)
    kept = np.nonzero(keep)

    def fill(out):
        out[kept[:-1] + (slot[kept],)] = idx[kept] + shift

    return _pad_rows(idx.shape[:-1], keep.sum(-1), fill, fallback_len)


def _pad_rows(lead: tuple, counts: np.ndarray, fill, fallback_len: int | None) -> np.ndarray:
    """The ``(*lead, width)`` int64 result of :func:`_compact`: ``-1`` everywhere, ``fill(out)`` writes each row's
    ``counts`` entries, then rows with none get the fallback of ``fallback_len``."""
    fallback = vllm_fallback_indices(fallback_len) if fallback_len is not None else np.zeros(0, np.int64)
    empty = counts == 0
    width = max(int(counts.max(initial=0)), 1)
    if fallback.size and empty.any():  # width fits the fallback only when some row needs it
        width = max(width, fallback.size)
    out = np.full(tuple(lead) + (width,), -1, np.int64)
    fill(out)
    if fallback.size and empty.any():
        out[empty, : fallback.size] = fallback
    return out


def sorted_rows_disorder(idx, descending: bool):
    """``(batch, heads)`` booleans (any array library): rows of a ``-1``-padded index list that are not sorted
    ascending (or ``descending``) with all their padding at the end, the order :func:`split_sparse_parts` needs."""
    earlier, later = idx[..., :-1], idx[..., 1:]
    if descending:  # an entry above the one before it (padding before an entry is one too)
        disorder = (later > earlier) & (later >= 0)
    else:  # an entry below the one before it, or after padding
        disorder = (later >= 0) & ((later < earlier) | (earlier < 0))
    return disorder.any(-1)


def part_runs(vertical, slash, ranges: dict) -> list:
    """The runs a GPU backend's :func:`split_sparse_parts` gathers (any array library): for each part of
    ``ranges`` (:func:`sparse_part_ranges`) and each of its lists, ``(part, "vertical" | "slash", idx,
    IndexRange, first, count)``, where ``first`` and ``count`` ``(batch, heads)`` say where each row's entries
    ``low <= x <= high`` start and how many there are.  ``vertical`` ascending and ``slash`` descending per row,
    ``-1``-padded at the end.  Every part's ``low`` is at least 0, so the padding is never inside a range nor
    above one: the valid entries below ``low`` come first in an ascending row, those above ``high`` in a
    descending one."""
    if tuple(slash.shape[:2]) != tuple(vertical.shape[:2]):
        raise InputError("slashes", f"(batch, heads) = {tuple(slash.shape[:2])}", f"{tuple(vertical.shape[:2])} like verticals")
    runs = []
    for idx, which, descending in ((vertical, "vertical", False), (slash, "slash", True)):
        n_valid = (idx >= 0).sum(-1)  # (batch, heads), shared by the parts
        for name, r in ranges.items():
            kept = r.vertical if which == "vertical" else r.slash
            at_least = idx >= kept.low
            inside = at_least & (idx <= kept.high) if kept.high is not None else at_least
            if not descending:
                first = n_valid - at_least.sum(-1)
            elif kept.high is not None:
                first = (idx > kept.high).sum(-1)
            else:
                first = n_valid * 0
            runs.append((name, which, idx, kept, first, inside.sum(-1)))
    return runs


def unsorted_rows_error(name: str, descending: bool) -> InputError:
    order = "descending" if descending else "ascending"
    return InputError(name, "rows out of order", f"rows sorted {order} with the -1 padding at the end, "
                      "as vertical_slash_indices returns them")


def split_layout(summary: list, kept: list) -> list:
    """What the one read-back of a backend's :func:`split_sparse_parts` decides.

    ``summary``: the longest run of each of the ``P`` kept lists (``kept``,
    their :class:`IndexRange`), then the shortest run of each, then whether
    the verticals and whether the slashes have rows out of order
    (:func:`sorted_rows_disorder`).  Raises the error of unsorted rows;
    returns, per list, ``(width, fallback)``: the list's width, and where some
    row keeps nothing and the part has a fallback, ``(length, spacing)`` of
    vLLM's fallback ``[0, spacing, 2 spacing, ...]`` (else None), so that a
    GPU backend makes it on its device.
    """
    n = len(kept)
    longest, shortest, flags = summary[:n], summary[n : 2 * n], summary[2 * n :]
    for name, unsorted, descending in (("verticals", flags[0], False), ("slashes", flags[1], True)):
        if unsorted:
            raise unsorted_rows_error(name, descending)
    layout = []
    for r, most, least in zip(kept, longest, shortest):
        fallback = None
        if r.fallback_len is not None and least == 0:  # some row keeps nothing
            values = vllm_fallback_indices(r.fallback_len)
            fallback = (values.size, int(values[1]) if values.size > 1 else 0)
        layout.append((max(int(most), 1, fallback[0] if fallback else 1), fallback))
    return layout


def _valid_counts(idx: np.ndarray) -> np.ndarray:
    """``(batch, heads)``: the entries of each row before its ``-1`` padding."""
    return (idx >= 0).sum(-1)


def _kept_range(idx: np.ndarray, valid: np.ndarray, low: int, high: int | None, shift: int,
                fallback_len: int | None, descending: bool) -> np.ndarray:
    """:func:`_compact` of ``keep = (low <= idx) & (idx <= high)`` (``high=None``: no upper bound) for rows
    sorted ascending (or ``descending``) with the ``-1`` padding at the end, the order every backend's
    ``vertical_slash_indices`` returns; ``valid``: :func:`_valid_counts`.

    In a sorted row a range of values is one run, found by two binary
    searches; only that run is copied (a 1M-token segment's split, 28 heads
    with 19532 verticals and 24528 slashes, takes 5 ms on the development
    CPU this way, 13 ms with masks over whole rows).  The GPU backends split
    on the device instead (``split_sparse_parts``).
    """
    lead = idx.shape[:-1]
    rows = idx.reshape(int(np.prod(lead)), idx.shape[-1])
    n_valid = valid.reshape(-1)
    first = np.zeros(len(rows), np.int64)
    counts = np.zeros(len(rows), np.int64)
    for r in range(len(rows)):  # a loop over batch * heads rows: two binary searches each
        ascending = rows[r, : n_valid[r]][::-1] if descending else rows[r, : n_valid[r]]
        a = np.searchsorted(ascending, low, "left")
        b = ascending.size if high is None else np.searchsorted(ascending, high, "right")
        counts[r] = max(b - a, 0)
        first[r] = n_valid[r] - b if descending else a

    def fill(out):
        flat = out.reshape(-1, out.shape[-1])
        for r in np.flatnonzero(counts):
            np.add(rows[r, first[r] : first[r] + counts[r]], shift, out=flat[r, : counts[r]])

    return _pad_rows(lead, counts.reshape(lead), fill, fallback_len)


class SparsePart(NamedTuple):
    """One DCA part of a segment's sparse attention, in the part's own key coordinates."""

    #: ``(start, stop)``: the part's keys, absolute positions.
    keys: tuple[int, int]
    #: True for intra (bottom-right causal), False for successive/inter (queries after the keys).
    causal: bool
    #: ``(batch, q_heads, n)`` int64 columns relative to ``keys[0]``, ``-1``-padded (the backend's array;
    #: NumPy from :func:`qwen_sparse_plan`).
    vertical_idx: np.ndarray
    #: ``(batch, q_heads, n)`` int64 distances in the part's convention, ``-1``-padded (as ``vertical_idx``).
    slash_idx: np.ndarray


class QwenSparseSegment(NamedTuple):
    """The sparse plan of one DCA segment: queries ``[begin, end)`` in the chunk starting at ``chunk_start``."""

    begin: int
    end: int
    chunk_start: int
    #: ``(batch, q_heads, n)`` the estimated key columns over ``[0, end)``, ascending, ``-1``-padded.
    vertical_idx: np.ndarray
    #: ``(batch, q_heads, n)`` the estimated distances (from queries in ``[begin, end)``), descending, ``-1``-padded.
    slash_idx: np.ndarray
    #: ``"intra"``, and ``"successive"`` / ``"inter"`` where they exist.
    parts: dict


class IndexRange(NamedTuple):
    """The entries one DCA part keeps of a whole-row index list, and how they move into the part's coordinates."""

    #: Entries ``low <= x <= high`` are kept (``high=None``: no upper bound).
    low: int
    high: int | None
    #: Added to every kept entry.
    shift: int
    #: A row that keeps nothing gets :func:`vllm_fallback_indices` of this length (None: stays empty).
    fallback_len: int | None


class PartRanges(NamedTuple):
    """One DCA part of a segment: its keys and the ranges its vertical and slash lists keep."""

    keys: tuple[int, int]
    causal: bool
    vertical: IndexRange
    slash: IndexRange


def sparse_part_ranges(begin: int, end: int, chunk_start: int, chunk_len: int) -> dict:
    """Step 4 of the pipeline as numbers: for the segment of queries ``[begin, end)`` in the DCA chunk starting at
    ``chunk_start`` (a multiple of ``chunk_len = L``, ``chunk_start <= begin < end <= chunk_start + L``), each
    part's keys and the ranges of the whole-row indices it keeps (see the module docstring, step 4).

    Returns ``{"intra": PartRanges, "successive": ... (if chunk_start >= L), "inter": ... (if chunk_start >= 2L)}``.
    """
    L = _check_int("chunk_len", chunk_len, 1)
    cs = _check_int("chunk_start", chunk_start, 0)
    if cs % L:
        raise InputError("chunk_start", cs, f"a multiple of chunk_len = {L}")
    begin = _check_int("begin", begin, cs, cs + L - 1)
    end = _check_int("end", end, begin + 1, cs + L)
    ranges = {  # delta = 0 is always among the intra slashes
        "intra": PartRanges((cs, end), True, IndexRange(cs, None, -cs, end - cs), IndexRange(0, end - 1 - cs, 0, None)),
    }
    if cs >= L:
        ranges["successive"] = PartRanges(
            (cs - L, cs), False,
            IndexRange(cs - L, cs - 1, -(cs - L), L),
            IndexRange(begin - cs, end - 1 - cs + L, -(begin - cs), L),
        )
    if cs >= 2 * L:
        ranges["inter"] = PartRanges(
            (0, cs - L), False,
            IndexRange(0, cs - L - 1, 0, cs - L),
            IndexRange(begin - cs + L, None, -(L + begin - cs), cs - L),
        )
    return ranges


def _index_groups(name: str, groups) -> list:
    """The estimation's per-head-group index arrays as NumPy int64 arrays, checked (one batch, 3-D, integers)."""
    arrays = [check_array_like(f"{name}[{i}]", g, "a (batch, heads, n) integer array") for i, g in enumerate(check_index_groups(name, groups))]
    for i, a in enumerate(arrays):
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"{name}[{i}]", f"array of dtype {a.dtype}", "a (batch, heads, n) integer array")
    return [a.astype(np.int64, copy=False) for a in arrays]


def split_sparse_parts(verticals, slashes, begin: int, end: int, chunk_start: int, chunk_len: int):
    """Step 4 of the pipeline: a segment's estimated index sets joined over head groups, then split into its DCA parts.

    ``verticals``, ``slashes``: lists of ``(batch, heads_i, n_i)`` integer
    arrays, the estimation's results for consecutive groups of query heads
    (one array when one call estimated every head); each row sorted,
    verticals ascending, slashes descending, ``-1`` padding at the end, as
    :func:`yarnref.vertical_slash_indices` returns them.  ``begin``, ``end``,
    ``chunk_start``, ``chunk_len``: the segment, as in
    :func:`sparse_part_ranges`.

    Returns ``(vertical, slash, parts)``: the joined whole-row sets
    ``(batch, heads, n)`` int64, ``-1``-padded to the widest group, and
    ``{name: SparsePart}`` with each part's entries in its own coordinates
    (:func:`sparse_part_ranges`), kept in order, ``-1``-padded to the part's
    widest row; a row that keeps nothing gets vLLM's fallback.
    """
    ranges = sparse_part_ranges(begin, end, chunk_start, chunk_len)
    vertical = _pad_join(_index_groups("verticals", verticals))
    slash = _pad_join(_index_groups("slashes", slashes))
    if slash.shape[:2] != vertical.shape[:2]:
        raise InputError("slashes", f"(batch, heads) = {slash.shape[:2]}", f"{vertical.shape[:2]} like verticals")
    for name, idx, descending in (("verticals", vertical, False), ("slashes", slash, True)):
        if sorted_rows_disorder(idx, descending).any():
            raise unsorted_rows_error(name, descending)
    n_v, n_s = _valid_counts(vertical), _valid_counts(slash)
    parts = {
        name: SparsePart(r.keys, r.causal,
                         _kept_range(vertical, n_v, *r.vertical, descending=False),
                         _kept_range(slash, n_s, *r.slash, descending=True))
        for name, r in ranges.items()
    }
    return vertical, slash, parts


# ----------------------------------------------------------------------------- the Qwen2.5-1M pipeline


#: ``budget_clamp`` values of :func:`qwen_prefill` / :func:`qwen_sparse_plan`.
BUDGET_CLAMPS = ("per_segment", "vllm_in_place")


class _QwenSetup(NamedTuple):
    cfg: object
    budgets: SparseHeadBudgets | None
    sparse: bool  # the gate
    scale: float  # softmax scale times the temperature s^2
    query_ids: object  # DCAPositionIds of the queries' positions kv_len - q_len .. kv_len - 1 (sparse path only)
    segments: list  # DCASegment, over all prefill chunks
    chunk_of: list  # the prefill chunk (one vLLM forward call) each segment belongs to
    seq_len: int  # the request's length the temperature is computed from


def _qwen_setup(q, k, v, inv_freq, dca, scale, layer, heads, prefill_chunk_size, pairing, seq_len=None):
    from .dca import DCA_PAIRINGS, dca_position_ids, dca_segments, qwen_attention_scale

    cfg = _as_dca_config(dca)
    batch, q_heads, kv_heads, q_len, kv_len, head_dim = _check_prefill_shapes(q, k, v)
    scale = _check_scale(scale, head_dim)
    if not isinstance(pairing, str) or pairing not in DCA_PAIRINGS:
        raise InputError("pairing", pairing, f"one of {DCA_PAIRINGS}")
    if isinstance(inv_freq, (np.ndarray, list, tuple)):
        freqs = np.asarray(inv_freq)
    else:  # an array of the backend's library
        freqs = np.asarray(_backend().to_numpy(inv_freq))
    if freqs.ndim != 1 or freqs.size == 0 or 2 * freqs.size > head_dim or not np.issubdtype(freqs.dtype, np.floating) or not np.all(np.isfinite(freqs)):
        raise InputError("inv_freq", f"array of shape {freqs.shape} and dtype {freqs.dtype}", f"a 1-D float array of r/2 finite frequencies, 1 <= r/2 <= head_dim/2 = {head_dim // 2}")
    if prefill_chunk_size is not None:
        prefill_chunk_size = _check_int("prefill_chunk_size", prefill_chunk_size, 1)
    budgets = None
    if cfg.sparse_attention_enabled:
        budgets = sparse_attention_config_for(cfg, layer, heads)
        if budgets.vertical_size.size != q_heads:
            shown = "all heads of the layer" if heads is None else f"heads={tuple(heads)}"
            raise InputError("q", f"{q_heads} heads", f"{budgets.vertical_size.size} heads ({shown} of sparse_attention_config[{layer}])")
    sparse = bool(cfg.sparse_attention_enabled and kv_len > cfg.sparse_attention_threshold)
    seq_len = kv_len if seq_len is None else _check_int("seq_len", seq_len, kv_len)  # the request's full prompt length
    temperature = qwen_attention_scale(int(seq_len), cfg.original_max_position_embeddings) if cfg.original_max_position_embeddings else 1.0
    offset = kv_len - q_len
    chunk = prefill_chunk_size or q_len
    segments, chunk_of = [], []
    for index, start in enumerate(range(0, q_len, chunk)):  # prefill chunks [start, stop) of the queries
        stop = min(start + chunk, q_len)
        these = dca_segments(stop + offset, stop - start, cfg.chunk_size, cfg.local_size)
        segments += these
        chunk_of += [index] * len(these)
    query_ids = dca_position_ids(kv_len, cfg.chunk_size, cfg.local_size, start=offset) if sparse else None
    return _QwenSetup(cfg, budgets, sparse, scale * temperature**2, query_ids, segments, chunk_of, int(seq_len))


def _shift_tables(inv_freq, blocks) -> dict:
    """cos/sin ``(1, r/2)`` of each block's constant ``shift``: one row, which the backend's ``apply_rope``
    broadcasts over every key of the block (:func:`yarnref.rope.apply_rope`); made once per segment."""
    rope_cos_sin = _op("rope_cos_sin")
    return {shift: rope_cos_sin(inv_freq, np.array([shift], dtype=np.int64))
            for start, stop, shift in blocks if stop > start and shift != 0}


def _shifted_keys(k_rot, pairing, blocks, tables):
    """The estimation's keys made from keys already at ``r(j)``: ``concat`` over ``blocks`` ``(start, stop,
    shift)`` of ``k_rot[:, :, start:stop]`` rotated by the constant ``shift`` (a view where ``shift == 0``).

    RoPE rotations compose, :math:`R(a) R(b) = R(a + b)` (RoFormer Eq. (13)-(15)), so this is each key
    at ``r(j) + shift``; in a low-precision dtype the key is rounded twice (once when it was rotated to
    ``r(j)``, once here), in float64 it equals the direct rotation to the float64 rounding.  One
    ``apply_rope`` call per block, with the one-row table of :func:`_shift_tables`: no cos/sin table
    over the keys exists, and the backend launches one rotation per block.
    """
    apply_rope = _op("apply_rope")
    pieces = []
    for start, stop, shift in blocks:
        if stop <= start:
            continue
        if shift == 0:
            pieces.append(k_rot[:, :, start:stop])
        else:
            pieces.append(apply_rope(k_rot[:, :, start:stop], *tables[shift], pairing))
    return _concatenate(pieces, 2)


def _key_ids(cfg, n: int) -> np.ndarray:
    """The DCA key positions ``r(j) = j mod L`` of keys ``0 .. n-1``."""
    from .dca import dca_position_ids

    return dca_position_ids(n, cfg.chunk_size, cfg.local_size).key


def _walk_sparse(setup: _QwenSetup, q, k, inv_freq, pairing, budget_clamp="per_segment", rotated_keys=False):
    """Yield ``(QwenSparseSegment, rotate_queries)`` per DCA segment (steps 3 and 4 of the pipeline).

    ``rotate_queries(positions)`` rotates the segment's queries to their
    entries of ``positions`` (one id per query, as ``setup.query_ids``)
    through the backend.  ``budget_clamp`` and
    ``rotated_keys``: see :func:`qwen_prefill`.  With ``rotated_keys`` the
    estimation runs one KV head (and its query heads) per call of the
    backend's ``vertical_slash_indices``, in ascending order, so that its keys
    (made by :func:`_shifted_keys`) exist for one KV head at a time; every
    head's scores are its own, so the indices are those of one call over all
    heads.
    """
    rope_cos_sin, apply_rope = _op("rope_cos_sin"), _op("apply_rope")
    vertical_slash_indices, split = _op("vertical_slash_indices"), _op("split_sparse_parts")
    cfg, qids = setup.cfg, setup.query_ids
    L, C = cfg.chunk_len, cfg.chunk_size
    kv_len, q_len = k.shape[2], q.shape[2]
    offset = kv_len - q_len
    last_q = cfg.sparse_attention_last_q

    def rotate(x, positions):
        cos, sin = rope_cos_sin(inv_freq, positions)
        return apply_rope(x, cos, sin, pairing)

    vertical_budget, slash_budget, call = setup.budgets.vertical_size, setup.budgets.slash_size, None
    for seg, chunk_index in progress_iter(list(zip(setup.segments, setup.chunk_of)), "qwen_prefill"):
        begin, end, cs = seg.begin, seg.end, seg.intra[0]
        lq = min(end - begin, last_q)
        if budget_clamp == "vllm_in_place":  # vLLM: min(budget, K) written back into tensors made once per call
            if chunk_index != call:
                vertical_budget, slash_budget, call = setup.budgets.vertical_size, setup.budgets.slash_size, chunk_index
            vertical_budget, slash_budget = np.minimum(vertical_budget, end), np.minimum(slash_budget, end)
        # Estimation (step 3).  The three blocks use queries at r(i) (intra keys), r(i) + L (successive
        # keys) and r(i) + C (inter keys), keys at r(j).  RoPE scores depend only on the difference of the
        # two positions (RoFormer Eq. 16), so one product does it: queries at r(i) + L, keys at r(j) + L
        # (intra), r(j) (successive) and r(j) + L - C (inter).
        q_est = rotate(q[:, :, end - offset - lq : end - offset], qids.successive_critical[end - offset - lq : end - offset])
        if rotated_keys:  # keys at r(j) already: rotated by the block's shift, one KV head per call
            blocks = [(0, max(cs - L, 0), L - C), (max(cs - L, 0), cs, 0), (cs, end, L)]
            tables = _shift_tables(inv_freq, blocks)
            kv_groups = [(h, h + 1) for h in range(k.shape[1])]
        else:
            kv_groups = [(0, k.shape[1])]
        group = q.shape[1] // k.shape[1]
        found = []
        for kv0, kv1 in kv_groups:  # a loop over KV heads (rotated keys) or one call
            h0, h1 = kv0 * group, kv1 * group
            if rotated_keys:
                k_est = _shifted_keys(k[:, kv0:kv1], pairing, blocks, tables)
            else:
                j = np.arange(end)
                key_shift = np.where(j >= cs, L, np.where(j >= cs - L, 0, L - C))
                k_est = rotate(k[:, :, :end], _key_ids(cfg, end) + key_shift)
            vertical, slash = vertical_slash_indices(
                q_est[:, h0:h1], k_est, vertical_budget[h0:h1], slash_budget[h0:h1], lq,
                scale=setup.scale, force_verticals=_FORCE_VERTICALS, force_slashes=_FORCE_SLASHES,
            )
            del k_est
            found.append((vertical, slash))
        tables = None
        vertical, slash, parts = split([v for v, _ in found], [s for _, s in found], begin, end, cs, L)
        plan = QwenSparseSegment(begin, end, cs, vertical, slash, parts)
        rows = q[:, :, begin - offset : end - offset]
        yield plan, (lambda positions, rows=rows, a=begin - offset, b=end - offset: rotate(rows, positions[a:b]))


def _pad_join(parts: list) -> np.ndarray:
    """Per-head index arrays ``(batch, heads_i, n_i)`` joined along the heads, ``-1``-padded to the widest."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.shape[-1] for p in parts)
    joined = np.full((parts[0].shape[0], sum(p.shape[1] for p in parts), width), -1, dtype=np.int64)
    h = 0
    for p in parts:  # a loop over the head groups, in order
        joined[:, h : h + p.shape[1], : p.shape[-1]] = p
        h += p.shape[1]
    return joined


def _check_budget_clamp(budget_clamp):
    if budget_clamp not in BUDGET_CLAMPS:
        raise InputError("budget_clamp", budget_clamp, f"one of {BUDGET_CLAMPS}")
    return budget_clamp


def qwen_sparse_plan(q, k, inv_freq, dca, scale=None, *, layer=0, heads=None, prefill_chunk_size=None, pairing="half",
                     budget_clamp="per_segment", seq_len=None, rotated_keys=False):
    """The index sets :func:`qwen_prefill`'s sparse path uses, one :class:`QwenSparseSegment` per DCA segment.

    Same arguments as :func:`qwen_prefill` (``v`` is not needed); the
    threshold gate is *not* applied, but ``sparse_attention_config`` must be
    present and enabled.  Each segment holds the whole-row estimate
    (``vertical_idx`` over keys ``[0, end)``, ``slash_idx`` as distances) and
    its ``parts`` in their own coordinates, fallbacks included: compare an
    implementation's indices with these (by recall where they differ only at
    top-k ties).
    """
    budget_clamp = _check_budget_clamp(budget_clamp)
    rotated_keys = _check_bool("rotated_keys", rotated_keys)
    setup = _qwen_setup(q, k, k, inv_freq, dca, scale, layer, heads, prefill_chunk_size, pairing, seq_len)
    if setup.budgets is None:
        raise ConfigError("sparse_attention_enabled", False, "true, with a sparse_attention_config, for a sparse plan")
    q, k = _spec_float64(q, k)
    to_numpy = _backend().to_numpy
    return [plan._replace(vertical_idx=to_numpy(plan.vertical_idx), slash_idx=to_numpy(plan.slash_idx),
                          parts={name: part._replace(vertical_idx=to_numpy(part.vertical_idx), slash_idx=to_numpy(part.slash_idx))
                                 for name, part in plan.parts.items()})
            for plan, _ in _walk_sparse(setup, q, k, inv_freq, pairing, budget_clamp, rotated_keys)]


def qwen_prefill(q, k, v, inv_freq, dca, scale=None, *, layer=0, heads=None, prefill_chunk_size=None, pairing="half",
                 return_lse=False, budget_clamp="per_segment", seq_len=None, rotated_keys=False):
    """The Qwen2.5-1M prefill of one attention layer: DCA, vertical-slash sparse above the threshold.

    ``q`` ``(batch, q_heads, q_len, head_dim)``, ``k`` ``(batch, kv_heads,
    kv_len, head_dim)``, ``v`` ``(batch, kv_heads, kv_len, v_dim)``,
    **un-rotated**, ``q_len <= kv_len`` (queries are the last positions; the
    sequence length is ``kv_len``).  ``inv_freq``: the ``r/2`` rotary
    frequencies (Qwen2.5-1M: plain RoPE with theta 1e7; DCA ignores
    ``rope_scaling``).  ``dca``: a :class:`yarnref.dca.DCAConfig` or a config
    dict.  ``scale`` defaults to ``1/sqrt(head_dim)``.

    ``layer``: which entry of ``sparse_attention_config``; ``heads``:
    ``(start, stop)``, the global heads ``q`` holds (tensor parallelism), or
    ``None`` for all of the layer's heads.  ``prefill_chunk_size``: vLLM's
    chunked prefill (``max_num_batched_tokens``); every chunk, and every DCA
    segment in it, estimates its own pattern.  ``pairing``: ``"half"`` (Qwen2,
    vLLM ``is_neox_style``) or ``"interleaved"``.

    ``budget_clamp``: ``"per_segment"`` (default) clamps each head's budgets
    to the segment's ``K = end`` keys afresh for every DCA segment.
    ``"vllm_in_place"`` is what vLLM's dual-chunk backend (the
    ``DualChunkFlashAttention`` prefill, before v0.11) does: it writes
    ``min(budget, K)`` back into the per-head budget tensors, which are made
    once per forward call (one prefill chunk), so every later segment of the
    same call inherits the smallest ``K`` seen so far.  It matters only when a
    call has a segment with fewer keys than some head's budget followed by a
    longer one: with small chunk sizes (output differences of 0.07 to 0.63);
    at Qwen2.5-1M's shipped sizes (segments of 253952 keys, budgets of a few
    thousand) it is inert.

    ``seq_len``: the request's full prompt length, from which the
    temperature is computed (default ``kv_len``).  A caller that runs the
    prompt through a layer in chunks, with a growing K/V cache, passes the
    prompt length here and the keys so far as ``k`` and ``v``; the gate
    below still looks at the keys of the call (``kv_len``), as vLLM decides
    per forward call.

    ``rotated_keys``: ``k`` holds the keys already rotated to their DCA key
    positions ``r(j) = j mod L`` (``dca_position_ids(kv_len, ...).key``, with
    ``pairing``), as a K/V cache written once per token holds them (a key's
    DCA position depends on its own index only; vLLM's cache holds keys this
    way).  The sparse path then attends over ``k`` itself instead of rotating
    a copy of every key, and makes the estimation's keys (``r(j) + L``,
    ``r(j)``, ``r(j) + L - C`` by block) by rotating these by the block's
    shift, one KV head at a time: the same keys up to one more rounding in a
    low-precision dtype (float64: equal to its rounding), and the same index
    sets wherever the estimation's scores are not within that rounding of a
    tie.  Only the sparse path takes rotated keys: below the gate it is a
    :class:`~yarnref.errors.InputError` (dense DCA rotates un-rotated keys
    itself).

    Below the gate (sparse disabled, or ``kv_len <=
    sparse_attention_threshold``) this is :func:`yarnref.dca.dca_attention`
    (dense DCA with the config's temperature).  Above it, the pipeline of the
    module docstring; :func:`qwen_sparse_plan` returns the index sets it uses.

    Returns ``out`` ``(batch, q_heads, q_len, v_dim)`` in q's dtype, and with
    ``return_lse`` the lse ``(batch, q_heads, q_len)``.
    """
    return_lse = _check_bool("return_lse", return_lse)
    budget_clamp = _check_budget_clamp(budget_clamp)
    rotated_keys = _check_bool("rotated_keys", rotated_keys)
    setup = _qwen_setup(q, k, v, inv_freq, dca, scale, layer, heads, prefill_chunk_size, pairing, seq_len)
    if not setup.sparse and rotated_keys:
        raise InputError("rotated_keys", True, f"False when the call runs dense DCA (sparse attention disabled, or kv_len = "
                         f"{k.shape[2]} <= sparse_attention_threshold = {setup.cfg.sparse_attention_threshold}): "
                         "dca_attention takes un-rotated keys")
    if not setup.sparse:
        kwargs = setup.cfg.attention_kwargs()
        if kwargs["temperature"] == "qwen":
            kwargs["seq_len"] = setup.seq_len
        return _op("dca_attention")(
            q, k, v, inv_freq, scale=_check_scale(scale, q.shape[-1]), pairing=pairing, return_lse=return_lse, **kwargs,
        )
    like = q
    q, k, v = _spec_float64(q, k, v)
    backend = _backend()
    rope_cos_sin, apply_rope = _op("rope_cos_sin"), _op("apply_rope")
    sparse_attention, merge = _op("vertical_slash_attention"), _op("merge_attention")
    ids = setup.query_ids
    if rotated_keys:
        k_rot = k
    else:
        cos, sin = rope_cos_sin(inv_freq, _key_ids(setup.cfg, k.shape[2]))
        k_rot = apply_rope(k, cos, sin, pairing)  # every key at r(j), once
        del cos, sin
    query_positions = {"intra": ids.intra, "successive": ids.successive, "inter": ids.inter}
    outputs, lses = [], []
    for plan, rotate_queries in _walk_sparse(setup, q, k, inv_freq, pairing, budget_clamp, rotated_keys):
        part_outputs, part_lses = [], []
        for name, part in plan.parts.items():
            start, stop = part.keys
            out, lse = sparse_attention(
                rotate_queries(query_positions[name]), k_rot[:, :, start:stop], v[:, :, start:stop],
                backend.asarray(part.vertical_idx), backend.asarray(part.slash_idx), "kernel", setup.scale, True,
                causal=part.causal,
            )
            part_outputs.append(out)
            part_lses.append(lse)
        if len(part_outputs) > 1:
            out, lse = merge(part_outputs, part_lses)
        outputs.append(out)
        lses.append(lse)
    out = _restore_dtype(_concatenate(outputs, 2), like)
    lse = _concatenate(lses, 2)
    return (out, lse) if return_lse else out
