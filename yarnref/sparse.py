r"""Vertical-slash sparse attention (MInference) and the A-shape / tri-shape streaming masks.

Paper: Jiang, Li, Zhang, Wu, Luo, Ahn, Han, Abdi, Li, Lin, Yang, Qiu,
"MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic
Sparse Attention", NeurIPS 2024, arXiv:2407.02490, section 3 (the A-shape,
Vertical-Slash and Block-Sparse head patterns, and the online approximation
of the Vertical-Slash pattern).  As Qwen2.5-1M runs it: arXiv:2501.15383 and
vLLM's ``DualChunkFlashAttention`` backend (see :mod:`yarnref.prefill`).

A *vertical-slash* head keeps, for every query ``i``, a set ``V`` of key
columns (the same for all queries: "vertical lines") and a set ``S`` of
diagonals, stored as distances ``delta = i - j`` ("slash lines").  The sets are
estimated online from the last queries (MInference section 3.2):

.. math::
   \hat A = \mathrm{softmax}\big(\mathrm{scale}\cdot Q_{[-m:]} K^\top + M_{\mathrm{causal}}\big)
   \in \mathbb{R}^{m \times T_k}

   V = \mathrm{argtopk}_{n_v}\Big(\sum_r \hat A_{r,j}\Big), \qquad
   S = \mathrm{argtopk}_{n_s}\Big(\sum_r \hat A_{r,\,p_r - \delta}\Big)

with ``m = min(last_q, q_len)`` estimation queries at positions ``p_r``, the
first ``force_verticals`` columns (attention sinks) and the ``force_slashes``
nearest diagonals (the local window) forced in, and budgets
``n_v = min(T_k, max(vertical_size, 30))``, ``n_s = min(T_k, max(slash_size,
50))`` (MInference's ``vertical_and_slash_kernel`` in ``minference/modules/minference_forward.py``).
The attention is then a softmax restricted to the selected keys:

.. math::
   o_i = \sum_{j \in K_i} \frac{e^{s_{ij}}}{\sum_{j' \in K_i} e^{s_{ij'}}} v_j, \qquad
   s_{ij} = \mathrm{scale}\cdot q_i \cdot k_j, \qquad
   \ell_i = \log \sum_{j \in K_i} e^{s_{ij}}

Which ``K_i``?  Two answers, both offered (``mode=``):

* ``"exact"``, the pattern's definition: ``j in V`` or ``i - j in S``, and
  ``j`` causal.
* ``"kernel"``, what the CUDA/Triton kernels of MInference, vLLM and SGLang
  compute.  :func:`convert_vertical_slash_indexes` turns ``(V, S)`` into, per
  row block of ``block_size_m`` queries, a list of key *ranges* (each slash
  widened to the ``block_size_m`` columns it touches for the whole row block,
  merged and grown in steps of ``block_size_m``) and a list of the verticals no
  range covers.  Every row of the block then sees all of it.  This key set
  contains the exact one (when ``delta = 0`` is among the slashes, as the
  forced diagonals guarantee) and is usually several times larger.  Compare a
  kernel's output with ``"kernel"``; use ``"exact"`` to study the pattern.

Also here: :func:`attention_recall` (the share of the dense attention mass a
mask keeps, the score of MInference's offline pattern search), and the
A-shape (StreamingLLM-like sinks + window) and tri-shape masks of MInference
(``minference/ops/streaming_kernel.py``).

Conventions
-----------
* Layout ``(batch, heads, seq, head_dim)``; GQA: k and v may have fewer heads,
  query head ``h`` reads kv head ``h // (q_heads // kv_heads)``.  Index arrays
  are per *query* head: ``(batch, q_heads, n)``.
* Causal masks are aligned bottom-right, as in :mod:`yarnref.attention`: with
  ``q_len <= kv_len`` query row ``i`` is at position ``i + kv_len - q_len`` and
  sees keys ``j <= i + kv_len - q_len``.  ``causal=False`` is the kernels'
  other convention: the query block sits right *after* all the keys (row ``i``
  at position ``kv_len + i``, every key visible), which is how DCA's
  successive and inter parts call them.  A distance is always
  ``position(i) - j``.
* ``vertical_idx`` holds key columns, sorted **ascending**; ``slash_idx``
  holds distances, sorted **descending** (the order the conversion needs; the
  functions here sort their inputs themselves, so any order is accepted).
  ``-1`` is padding: with per-head budgets each head's valid entries come
  first and the rest of its row is ``-1``.  Every function here ignores ``-1``.
* Ties in the top-k are broken towards the lower index: the lower column for
  verticals, the smaller distance for slashes (so with fewer slashes than
  forced diagonals the nearest ones are kept).  Real implementations use
  ``torch.topk``, whose tie order is unspecified: when index sets differ only
  at ties, compare masks by :func:`attention_recall`.
* Precision: float64 throughout; outputs in q's dtype, lse float64.  The
  estimation softmax is float64 too (MInference and vLLM take it in float32
  from bf16 logits, so near-ties can resolve differently there).  Attention is
  computed a group of query blocks at a time; no ``q_len x kv_len`` matrix is
  built for the whole sequence.
* Rows with no key get output 0 and lse ``-inf`` (flash-attention's sparse
  kernel returns lse ``+inf`` for such rows).
"""

from __future__ import annotations


import numpy as np

from .attention import check_qkv
from .checks import check_bool as _check_bool
from .checks import check_allocation, check_array_like, check_int32_indices, check_logits_fit, check_same_dtype
from .checks import check_int as _check_int
from .checks import check_scale as _check_scale
from .checks import is_int as _is_int
from .errors import InputError
from .progress import progress_iter

__all__ = [
    "MIN_VERTICAL_SIZE",
    "MIN_SLASH_SIZE",
    "VS_MODES",
    "vertical_slash_indices",
    "convert_vertical_slash_indexes",
    "minference_convert_vertical_slash_indexes",
    "vertical_slash_mask",
    "vertical_slash_attention",
    "attention_recall",
    "a_shape_mask",
    "tri_shape_mask",
    "a_shape_attention",
    "tri_shape_attention",
]

#: MInference's smallest budgets: ``n_v = max(vertical_size, 30)``, ``n_s = max(slash_size, 50)``.
MIN_VERTICAL_SIZE = 30
MIN_SLASH_SIZE = 50

VS_MODES = ("exact", "kernel")

#: Logits held at once by the blocked attentions: ``batch * heads * rows * kv_len`` float64 numbers (32 MiB).
BLOCK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------- argument checks


def _check_mode(mode) -> str:
    if not isinstance(mode, str) or mode not in VS_MODES:
        raise InputError("mode", mode, f"one of {VS_MODES}")
    return mode


def _check_float_arrays(**arrays) -> None:
    for name, a in arrays.items():
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(name, f"dtype {a.dtype}", "a floating-point array")
        if not np.all(np.isfinite(a)):
            raise InputError(name, "non-finite values", "finite values")


def _check_lengths(q_len, kv_len, causal: bool) -> tuple[int, int]:
    q_len = _check_int("q_len", q_len, 1)
    kv_len = _check_int("kv_len", kv_len, 1)
    if causal and q_len > kv_len:
        raise InputError("q_len", q_len, f"at most kv_len = {kv_len} when causal (the queries are the last q_len positions)")
    return q_len, kv_len


def _budget(name: str, value, heads: int) -> np.ndarray:
    """An int or a ``(heads,)`` int array, each >= 1, as an int64 ``(heads,)`` array."""
    if _is_int(value):
        return np.full(heads, _check_int(name, value, 1), dtype=np.int64)
    a = np.asarray(value)
    if a.shape != (heads,) or a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise InputError(name, f"array of shape {a.shape} and dtype {a.dtype}", f"an integer, or an integer array of shape (heads,) = ({heads},)")
    if np.any(a < 1) or np.any(a > 2**53):
        raise InputError(name, a.tolist(), "entries in [1, 2**53]")
    return a.astype(np.int64)


def _index_array(name: str, idx, low: int, high: int | None) -> np.ndarray:
    """A ``(batch, heads, n)`` integer array whose entries are ``-1`` or in ``[low, high)``; as int64."""
    a = np.asarray(idx)
    if a.ndim != 3 or a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise InputError(name, f"array of shape {a.shape} and dtype {a.dtype}", "a (batch, heads, n) integer array")
    a = a.astype(np.int64)
    bad = (a != -1) & ((a < low) | ((a >= high) if high is not None else False))
    if np.any(bad):
        value = int(a[bad][0])
        upper = f", < {high}" if high is not None else ""
        raise InputError(name, f"an entry {value}", f"entries >= {low}{upper}, or -1 for padding")
    return a


def _check_indices(vertical_idx, slash_idx, kv_len: int, batch_heads: tuple[int, int] | None = None):
    vertical = _index_array("vertical_idx", vertical_idx, 0, kv_len)
    slash = _index_array("slash_idx", slash_idx, 0, None)
    if vertical.shape[:2] != slash.shape[:2]:
        raise InputError("slash_idx", f"shape {slash.shape}", f"(batch, heads) = {vertical.shape[:2]} like vertical_idx")
    if batch_heads is not None and vertical.shape[:2] != batch_heads:
        raise InputError("vertical_idx", f"shape {vertical.shape}", f"(batch, q_heads, n) with (batch, q_heads) = {batch_heads}")
    return vertical, slash


def _sorted_with_counts(vertical: np.ndarray, slash: np.ndarray):
    """Verticals ascending and slashes descending, each with its ``-1`` padding moved to the end; valid counts."""
    big = np.iinfo(np.int64).max
    v_sorted = np.sort(np.where(vertical < 0, big, vertical), axis=-1)
    v_sorted = np.where(v_sorted == big, -1, v_sorted)
    s_sorted = -np.sort(-slash, axis=-1)  # descending; -1 (padding) is below every distance
    return v_sorted, (vertical >= 0).sum(-1), s_sorted, (slash >= 0).sum(-1)


# ----------------------------------------------------------------------------- online estimation


def _top_indices(score: np.ndarray, counts: np.ndarray, descending: bool) -> np.ndarray:
    """The ``counts[h]`` best entries of ``score[..., h, :]`` (ties: lower index), sorted, ``-1``-padded.

    ``score``: ``(batch, heads, n)``; ``counts``: ``(heads,)``.  Returns
    ``(batch, heads, max(counts))`` int64, ascending (``descending=False``) or
    descending, padding last.
    """
    order = np.argsort(-score, axis=-1, kind="stable")  # best first; a stable sort keeps lower indices first on ties
    width = int(counts.max())
    top = order[..., :width]
    keep = np.arange(width)[None, :] < counts[:, None]  # (heads, width)
    top = np.where(keep, top, -1)
    if descending:
        return -np.sort(-top, axis=-1)
    big = np.iinfo(np.int64).max
    top = np.sort(np.where(top < 0, big, top), axis=-1)
    return np.where(top == big, -1, top)


def vertical_slash_indices(q, k, vertical_size, slash_size, last_q=64, *, scale=None, force_verticals=30, force_slashes=100):
    """Estimate each head's vertical columns and slash distances from its last queries (MInference section 3.2).

    ``q``: ``(batch, q_heads, q_len, head_dim)`` and ``k``: ``(batch,
    kv_heads, kv_len, head_dim)``, both **rotated**, ``q_len <= kv_len`` (the
    queries are the last ``q_len`` positions; GQA allowed).  The last
    ``m = min(last_q, q_len)`` queries score all keys, ``scale * q.k`` (default
    ``1/sqrt(head_dim)``), causal among themselves, softmax in float64; column
    sums give the vertical scores and diagonal sums the slash scores.  The
    first ``force_verticals`` columns and the ``force_slashes`` smallest
    distances get score ``+inf``.

    ``vertical_size``, ``slash_size``: an int, or an int array ``(q_heads,)``
    of per-head budgets; head ``h`` keeps ``min(kv_len, max(vertical_size[h],
    30))`` columns and ``min(kv_len, max(slash_size[h], 50))`` distances.

    Returns ``(vertical_idx, slash_idx)``, int64 arrays ``(batch, q_heads,
    n_vertical)`` (key columns, ascending) and ``(batch, q_heads, n_slash)``
    (distances ``delta = i - j``, descending), ``n_*`` the largest per-head
    budget; a head with a smaller budget has its valid entries first and
    ``-1`` after them.  Ties go to the lower column / the smaller distance.
    """
    q, k = _qk_arrays(q, k)
    batch, q_heads, kv_heads, q_len, kv_len, head_dim = check_qkv(q, k, k)
    _check_float_arrays(q=q, k=k)
    check_same_dtype(q=q, k=k)
    if q_len > kv_len:
        raise InputError("q", f"q_len={q_len}", f"at most kv_len = {kv_len} (the queries are the last q_len positions)")
    n_vertical = np.minimum(kv_len, np.maximum(_budget("vertical_size", vertical_size, q_heads), MIN_VERTICAL_SIZE))
    n_slash = np.minimum(kv_len, np.maximum(_budget("slash_size", slash_size, q_heads), MIN_SLASH_SIZE))
    last_q = _check_int("last_q", last_q, 1)
    force_verticals = _check_int("force_verticals", force_verticals, 0)
    force_slashes = _check_int("force_slashes", force_slashes, 0)
    scale = _check_scale(scale, head_dim)
    check_logits_fit(q, k, scale)

    m = min(last_q, q_len)
    group = q_heads // kv_heads
    q_last = q[:, :, q_len - m :].astype(np.float64).reshape(batch, kv_heads, group, m, head_dim)  # heads under their kv head
    keys_t = np.swapaxes(k.astype(np.float64), -1, -2)[:, :, None]  # (batch, kv_heads, 1, head_dim, kv_len)
    logits = scale * (q_last @ keys_t)  # (batch, kv_heads, group, m, kv_len)
    position = np.arange(kv_len - m, kv_len)  # (m,) the estimation queries' positions
    column = np.arange(kv_len)
    logits = np.where(column[None, :] <= position[:, None], logits, -np.inf)  # causal among the last m
    logits -= logits.max(axis=-1, keepdims=True)  # every row sees its own key: the max is finite
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    probs = probs.reshape(batch, q_heads, m, kv_len)

    vertical_score = probs.sum(axis=-2)  # (batch, q_heads, kv_len): column sums
    vertical_score[..., :force_verticals] = np.inf
    # Slash score of distance delta: sum over rows r of probs[r, position[r] - delta] (0 where that is < 0).
    source = position[:, None] - column[None, :]  # (m, kv_len): column on diagonal delta of row r
    on_grid = source >= 0
    rows = np.arange(m)[:, None]
    slash_score = np.where(on_grid, probs[:, :, rows, np.where(on_grid, source, 0)], 0.0).sum(axis=-2)  # (batch, q_heads, kv_len)
    slash_score[..., :force_slashes] = np.inf

    vertical_idx = _top_indices(vertical_score, n_vertical, descending=False)
    slash_idx = _top_indices(slash_score, n_slash, descending=True)
    return vertical_idx, slash_idx


# ----------------------------------------------------------------------------- index conversion


def _conversion_capacity(n_vertical: int, n_slash: int, block_size_m: int, block_size_n: int) -> tuple[int, int]:
    """Widths of ``column_index`` and ``block_offset``: every slash yields at most ``ceil(BM / BN)`` blocks."""
    return max(n_vertical, 1), max(n_slash, 1) * -(-block_size_m // block_size_n)


def _append(table: np.ndarray, count: np.ndarray, where: np.ndarray, values: np.ndarray) -> None:
    """``table[lane, count[lane]] = values[lane]; count[lane] += 1`` for the lanes in ``where``."""
    lanes = np.flatnonzero(where)
    if lanes.size:
        if np.any(count[lanes] >= table.shape[1]):
            raise AssertionError("vertical-slash conversion overflowed its column buffer")  # impossible: one per vertical
        table[lanes, count[lanes]] = values[lanes]
        count[lanes] += 1


def _save_blocks(table, count, where, range_start, range_end, kv_len: int, block_size_n: int, clamp: bool = True) -> None:
    """Emit the block starts ``range_start, range_start + BN, ... < min(range_end, kv_len)`` for the lanes in ``where``.

    A range starting at or after ``kv_len`` emits nothing.  ``clamp=False``
    (MInference's CUDA converter): ``... < range_end``, whatever ``kv_len``.
    """
    limit = kv_len if clamp else np.iinfo(np.int64).max
    lanes = np.flatnonzero(where & (range_start < limit))
    if not lanes.size:
        return
    start = range_start[lanes]
    n_blocks = -(-(np.minimum(range_end[lanes], limit) - start) // block_size_n)  # (lanes,) ceil
    lane = np.repeat(lanes, n_blocks)
    k = np.arange(n_blocks.sum()) - np.repeat(np.cumsum(n_blocks) - n_blocks, n_blocks)  # 0.. within each lane
    slot = count[lane] + k
    if slot.size and slot.max() >= table.shape[1]:
        raise AssertionError("vertical-slash conversion overflowed its block buffer")  # impossible: see capacity
    table[lane, slot] = np.repeat(start, n_blocks) + k * block_size_n
    count[lanes] += n_blocks


def convert_vertical_slash_indexes(q_len, kv_len, vertical_idx, slash_idx, block_size_m=64, block_size_n=64, causal=True):
    """Vertical and slash indices -> the block/column lists the sparse kernels consume (vLLM's ``convert_vertical_slash_indexes``).

    ``vertical_idx``: ``(batch, heads, n_vertical)`` key columns in
    ``[0, kv_len)``; ``slash_idx``: ``(batch, heads, n_slash)`` distances
    ``>= 0``; ``-1`` entries are padding (per-head budgets).  Inputs are
    **sorted here** (verticals ascending, slashes descending, padding last),
    which the algorithm requires (MInference fixed exactly this bug, #165);
    duplicates are kept, as the kernels keep them.

    For each row block ``[m0, m1)`` of ``block_size_m`` queries this runs
    vLLM's ``convert_vertical_slash_indexes`` (its ``_mergehead`` form, with the
    per-head valid counts) step by step:

    * ``off = kv_len - q_len`` if causal, else ``kv_len`` (the query block
      right after the keys).  Slash ``delta`` reaches columns
      ``[m0 + off - delta, m1 + off - delta)`` and becomes the range
      ``[e - BM, e)`` with ``e = max(m1 + off - delta, BM)``.
    * Skip the leading slashes with ``delta >= m1 + off`` (they touch no row of
      the block).  If none remains (``delta > m1 + off``), the first range is
      ``[m1 + off, m1 + off + BN)`` (causal) or ``[kv_len, kv_len + BN)``
      (beyond every key).
    * Walk the verticals (ascending) and the slashes (descending distance =
      ascending ``e``) together.  A vertical below the current range's end is a
      column if it is below its start, otherwise covered.  A vertical at or past
      the end pulls the next slash (non-causal: only while ``delta >= m0``): if
      its ``e`` is more than ``BM`` past the end, the range is emitted and a new
      one starts at ``[e - BM, e)``; if it is past the end by at most ``BM``,
      the range grows by ``BM`` (so it may overshoot by up to ``BM - 1``
      columns).
    * When the slashes run out: causal, emit the range and stop (verticals past
      it are dropped); non-causal, emit the range and keep every remaining
      vertical ``< kv_len`` as a column.
    * Emitting ``[a, b)`` lists the block starts ``a, a + BN, ... <
      min(b, kv_len)``; a range starting at or past ``kv_len`` lists nothing.

    A head with no vertical (no slash) behaves as if its list were empty: no
    vertical ever lies below a range, and no slash is ever taken.

    Returns int32 arrays ``block_count`` ``(batch, heads, R)``,
    ``block_offset`` ``(batch, heads, R, max(n_slash, 1) * ceil(BM / BN))``,
    ``column_count`` ``(batch, heads, R)`` and ``column_index`` ``(batch,
    heads, R, max(n_vertical, 1))``, with ``R = ceil(q_len / BM)``.  Block
    offsets are arbitrary column starts (not multiples of ``BN``); entries past
    a row's count are ``-1``.  With ``BM == BN`` (the kernels' 64 x 64) blocks
    and columns never overlap.  ``block_size_n < block_size_m`` is refused: the
    kernels' end-of-verticals marker ``end_m + BN + off`` then lies inside a
    range grown in ``BM`` steps and their loop never ends.
    """
    return _convert(q_len, kv_len, vertical_idx, slash_idx, block_size_m, block_size_n, causal, clamp=True)


def minference_convert_vertical_slash_indexes(q_len, kv_len, vertical_idx, slash_idx, block_size_m=64, block_size_n=64):
    """MInference's own CUDA converter: :func:`convert_vertical_slash_indexes` without the ``kv_len`` clamp.

    MInference's ``convert_vertical_slash_indexes`` (``csrc/vertical_slash_index.cu``,
    microsoft/MInference, 2024-2025) emits every block start ``range_start,
    range_start + BN, ... < range_end`` even past ``kv_len``; vLLM's port (and
    :func:`convert_vertical_slash_indexes`) stops at ``kv_len`` and emits
    nothing for a range starting there.  The ranges only reach past
    ``kv_len`` in the last, partial row block (``q_len`` not a multiple of
    ``BM``), so only there do the lists differ; the kernels bound keys by
    ``kv_len`` anyway, so the attention output is the same.  MInference's
    converter is causal only (vLLM added the non-causal form for DCA's
    parts), hence no ``causal`` argument.  Same outputs as
    :func:`convert_vertical_slash_indexes` (capacity included).
    """
    return _convert(q_len, kv_len, vertical_idx, slash_idx, block_size_m, block_size_n, True, clamp=False)


def _convert(q_len, kv_len, vertical_idx, slash_idx, block_size_m, block_size_n, causal, *, clamp: bool):
    causal = _check_bool("causal", causal)
    q_len, kv_len = _check_lengths(q_len, kv_len, causal)
    block_size_m = _check_int("block_size_m", block_size_m, 1)
    block_size_n = _check_int("block_size_n", block_size_n, 1)
    if block_size_n < block_size_m:
        # The kernels' "no vertical left" marker, end_m + BN + off, would fall inside a range grown by BM
        # steps, and their loop would never end.
        raise InputError("block_size_n", block_size_n, f"at least block_size_m = {block_size_m} (the kernels use 64 x 64)")
    check_int32_indices(kv_len, block_size_m, block_size_n)
    vertical, slash = _check_indices(vertical_idx, slash_idx, kv_len)
    verts, n_verts, slashes, n_slashes = _sorted_with_counts(vertical, slash)
    batch, heads, width_v = verts.shape
    width_s = slashes.shape[-1]
    col_cap, blk_cap = _conversion_capacity(width_v, width_s, block_size_m, block_size_n)
    n_rows = -(-q_len // block_size_m)
    check_allocation("q_len", q_len, batch * heads * n_rows * (2 * col_cap + 2 * blk_cap + 8), 8, "index lists")
    bm, bn = block_size_m, block_size_n

    # One lane per (batch * head, row block); every lane runs the same sequential merge in lockstep.
    pairs = batch * heads
    lane_pair = np.repeat(np.arange(pairs), n_rows)  # (lanes,)
    start_m = np.tile(np.arange(n_rows), pairs) * bm
    end_m = start_m + bm
    off = kv_len - q_len if causal else kv_len
    # A trailing zero column so that reading "the next entry" past the last one stays in bounds.
    vert_tab = np.concatenate([verts.reshape(pairs, width_v), np.zeros((pairs, 1), np.int64)], axis=1)
    slash_tab = np.concatenate([slashes.reshape(pairs, width_s), np.zeros((pairs, 1), np.int64)], axis=1)
    nv = n_verts.reshape(pairs)[lane_pair]
    ns = n_slashes.reshape(pairs)[lane_pair]

    far = end_m + bn + off  # "no vertical left": past every range
    v_idx = np.where(nv > 0, vert_tab[lane_pair, 0], far)
    v = np.minimum(nv, 1)
    s_idx = np.where(ns > 0, slash_tab[lane_pair, 0], end_m + off + 1)
    s = np.minimum(ns, 1)
    while True:  # skip the slashes that cannot reach the row block
        skip = (s_idx >= end_m + off) & (s < ns)
        if not skip.any():
            break
        s_idx = np.where(skip, slash_tab[lane_pair, s], s_idx)
        s = s + skip
    has_slash = s_idx <= end_m + off
    e = np.maximum(end_m + off - s_idx, bm)
    if causal:
        range_start = np.where(has_slash, e - bm, end_m + off)
        range_end = np.where(has_slash, e, end_m + off + bn)
    else:
        range_start = np.where(has_slash, e - bm, kv_len)
        range_end = np.where(has_slash, e, kv_len + bn)

    lanes = lane_pair.size
    column_index = np.full((lanes, col_cap), -1, dtype=np.int64)
    block_offset = np.full((lanes, blk_cap), -1, dtype=np.int64)
    column_count = np.zeros(lanes, dtype=np.int64)
    block_count = np.zeros(lanes, dtype=np.int64)
    slashes_done = np.zeros(lanes, dtype=bool)
    active = np.ones(lanes, dtype=bool)

    # Each step a lane consumes a vertical or a slash, or finishes: at most width_v + width_s + 3 steps.
    for _ in range(width_v + width_s + 4):
        if not active.any():
            break
        on_vertical = active & (v_idx < range_end)
        on_slash = active & ~on_vertical
        # A vertical inside the current range's span: a column if below its start, else covered.
        _append(column_index, column_count, on_vertical & (v_idx < range_start), v_idx)
        more = on_vertical & (v < nv)
        v_idx = np.where(more, vert_tab[lane_pair, v], np.where(on_vertical, far, v_idx))
        v = v + more
        # A vertical past the range: take the next slash, if any is left.
        next_delta = slash_tab[lane_pair, s]
        take = on_slash & (s < ns)
        if not causal:
            take &= next_delta >= start_m
        e = np.maximum(end_m + off - next_delta, bm)
        out_of_slashes = on_slash & ~take
        finish = out_of_slashes & ((v == nv) | (causal & (v_idx > range_start)))
        if not causal:  # the last vertical, if it is a key, still becomes a column
            _append(column_index, column_count, finish & (v == nv) & (v_idx < kv_len), v_idx)
        _save_blocks(block_offset, block_count, finish, range_start, range_end, kv_len, bn, clamp)
        active &= ~finish
        restart = out_of_slashes & ~finish  # slashes exhausted with verticals left (reachable only when non-causal)
        if causal:
            range_start = np.where(restart, end_m + off, range_start)
            range_end = np.where(restart, end_m + off + bn, range_end)
        else:
            _save_blocks(block_offset, block_count, restart, range_start, range_end, kv_len, bn, clamp)
            range_start = np.where(restart, kv_len, range_start)
            range_end = np.where(restart, kv_len + bn, range_end)
        slashes_done |= restart
        grow_from = take & ~slashes_done
        gap = grow_from & (e > range_end + bm)
        touch = grow_from & ~gap & (e > range_end)
        _save_blocks(block_offset, block_count, gap, range_start, range_end, kv_len, bn, clamp)
        range_start = np.where(gap, e - bm, range_start)
        range_end = np.where(gap, e, np.where(touch, range_end + bm, range_end))
        s = s + take
    if active.any():
        raise AssertionError("vertical-slash conversion did not terminate")  # impossible: see the step bound

    shape = (batch, heads, n_rows)
    return (
        block_count.reshape(shape).astype(np.int32),
        block_offset.reshape(shape + (blk_cap,)).astype(np.int32),
        column_count.reshape(shape).astype(np.int32),
        column_index.reshape(shape + (col_cap,)).astype(np.int32),
    )


# ----------------------------------------------------------------------------- masks


def _exact_rows(rows: slice, q_len: int, kv_len: int, vertical: np.ndarray, slash: np.ndarray, causal: bool) -> np.ndarray:
    """The exact vertical-slash mask of query rows ``rows``: ``(batch, heads, n_rows, kv_len)`` bool."""
    batch, heads, _ = vertical.shape
    off = kv_len - q_len if causal else kv_len
    position = np.arange(rows.start, rows.stop) + off  # (n_rows,)
    # Membership tables with one spare "absent" slot at the end, where -1 and out-of-reach entries land.
    is_vertical = np.zeros((batch, heads, kv_len + 1), dtype=bool)
    b, h, _ = np.indices(vertical.shape)
    is_vertical[b, h, np.where(vertical < 0, kv_len, vertical)] = True
    reach = int(position[-1]) + 1  # distances 0 .. reach-1 can occur in these rows
    is_slash = np.zeros((batch, heads, reach + 1), dtype=bool)
    b, h, _ = np.indices(slash.shape)
    is_slash[b, h, np.where((slash < 0) | (slash >= reach), reach, slash)] = True
    is_slash[..., reach] = False
    delta = position[:, None] - np.arange(kv_len)[None, :]  # (n_rows, kv_len): the distance of each pair
    visible = delta >= 0  # causal (always true when non-causal: the queries follow every key)
    on_slash = is_slash[:, :, np.where(visible, delta, reach)]  # (batch, heads, n_rows, kv_len)
    return (is_vertical[:, :, None, :kv_len] | on_slash) & visible


def _kernel_rows(rows: slice, q_len: int, kv_len: int, converted, causal: bool, block_size_m: int, block_size_n: int) -> np.ndarray:
    """How many times the kernel counts each key for query rows ``rows``: ``(batch, heads, n_rows, kv_len)`` int.

    ``rows`` starts on a row-block boundary.  A key is counted once per listed
    block that contains it plus once per listed column (with ``BM == BN`` the
    lists never overlap, so this is 0 or 1), then cut to ``j < kv_len`` and,
    when causal, ``j <= i + kv_len - q_len``.
    """
    block_count, block_offset, column_count, column_index = converted
    first, last = rows.start // block_size_m, -(-rows.stop // block_size_m)
    counts = block_count[:, :, first:last]
    offsets = block_offset[:, :, first:last].astype(np.int64)
    listed = np.arange(offsets.shape[-1]) < counts[..., None]  # (batch, heads, row blocks, width)
    b, h, r, _ = np.nonzero(listed)
    start = offsets[listed]
    # Difference array over the columns: +1 where a block starts, -1 where it stops; cumulative sum = coverage.
    cover = np.zeros(counts.shape + (kv_len + 1,), dtype=np.int64)
    np.add.at(cover, (b, h, r, np.minimum(start, kv_len)), 1)
    np.add.at(cover, (b, h, r, np.minimum(start + block_size_n, kv_len)), -1)
    cover = np.cumsum(cover, axis=-1)[..., :kv_len]
    columns = column_index[:, :, first:last].astype(np.int64)
    listed = np.arange(columns.shape[-1]) < column_count[:, :, first:last, None]
    b, h, r, _ = np.nonzero(listed)
    np.add.at(cover, (b, h, r, columns[listed]), 1)
    row = np.arange(rows.start, rows.stop)
    per_row = cover[:, :, row // block_size_m - first]  # (batch, heads, n_rows, kv_len)
    if causal:
        per_row = np.where(np.arange(kv_len)[None, :] <= (row + kv_len - q_len)[:, None], per_row, 0)
    return per_row


def vertical_slash_mask(q_len, kv_len, vertical_idx, slash_idx, mode="exact", causal=True, *, block_size_m=64, block_size_n=64):
    """The key set of every query: bool ``(batch, heads, q_len, kv_len)``.

    ``mode="exact"``: ``j`` in ``vertical_idx`` or ``position(i) - j`` in
    ``slash_idx``, and ``j <= position(i)`` (``position(i) = i + kv_len -
    q_len`` when causal, ``i + kv_len`` when not).  ``mode="kernel"``: the keys
    the sparse kernels read after :func:`convert_vertical_slash_indexes` (the
    row block's ranges and columns, cut to ``j < kv_len`` and causal).  The
    kernel mask contains the exact one when ``delta = 0`` is a slash (always, in
    MInference and vLLM); without it, causal verticals right of the last range
    are dropped.  Index conventions as in :func:`convert_vertical_slash_indexes`.
    This builds the whole matrix: meant for tests and plots.
    """
    mode = _check_mode(mode)
    causal = _check_bool("causal", causal)
    q_len, kv_len = _check_lengths(q_len, kv_len, causal)
    block_size_m = _check_int("block_size_m", block_size_m, 1)
    block_size_n = _check_int("block_size_n", block_size_n, 1)
    vertical, slash = _check_indices(vertical_idx, slash_idx, kv_len)
    check_allocation("kv_len", kv_len, vertical.shape[0] * vertical.shape[1] * q_len * kv_len, 9, "(batch, heads, q_len, kv_len) mask")
    if mode == "exact":
        return _exact_rows(slice(0, q_len), q_len, kv_len, vertical, slash, causal)
    converted = convert_vertical_slash_indexes(q_len, kv_len, vertical, slash, block_size_m, block_size_n, causal)
    return _kernel_rows(slice(0, q_len), q_len, kv_len, converted, causal, block_size_m, block_size_n) > 0


# ----------------------------------------------------------------------------- attention over a key set


def _rows_per_step(batch: int, heads: int, kv_len: int, multiple: int) -> int:
    rows = max(1, BLOCK_ELEMENTS // (batch * heads * kv_len))
    return max(multiple, rows // multiple * multiple)


def _weighted_attention(q, k, v, scale: float, key_weights, step: int):
    """Softmax attention where query row ``i`` counts key ``j`` ``w[i, j]`` times (0: masked), blocked over rows.

    ``key_weights(rows)`` returns the weights of those rows, broadcastable to
    ``(batch, q_heads, n_rows, kv_len)`` (bool or a non-negative int).
    Returns ``out`` (q's dtype) and ``lse`` (float64); a row with no key gets 0
    and ``-inf``.
    """
    batch, q_heads, kv_heads, q_len, kv_len, head_dim = check_qkv(q, k, v)
    check_logits_fit(q, k, scale, v=v)
    group = q_heads // kv_heads
    qg = q.astype(np.float64).reshape(batch, kv_heads, group, q_len, head_dim)  # query heads under their kv head
    keys_t = np.swapaxes(k.astype(np.float64), -1, -2)[:, :, None]  # (batch, kv_heads, 1, head_dim, kv_len)
    values = v.astype(np.float64)[:, :, None]  # (batch, kv_heads, 1, kv_len, v_dim)
    out = np.zeros((batch, kv_heads, group, q_len, v.shape[-1]), dtype=np.float64)
    lse = np.full((batch, kv_heads, group, q_len), -np.inf, dtype=np.float64)
    for start in progress_iter(range(0, q_len, step), "sparse attention"):
        rows = slice(start, min(start + step, q_len))
        n = rows.stop - rows.start
        weight = np.broadcast_to(key_weights(rows), (batch, q_heads, n, kv_len))
        weight = weight.reshape(batch, kv_heads, group, n, kv_len)
        logits = scale * (qg[..., rows, :] @ keys_t)  # (batch, kv_heads, group, n, kv_len)
        logits = np.where(weight > 0, logits, -np.inf)
        row_max = logits.max(axis=-1, keepdims=True)
        safe_max = np.where(np.isfinite(row_max), row_max, 0.0)
        numer = weight * np.exp(logits - safe_max)
        denom = numer.sum(axis=-1, keepdims=True)
        has_key = denom > 0
        safe_denom = np.where(has_key, denom, 1.0)
        out[..., rows, :] = np.where(has_key, (numer @ values) / safe_denom, 0.0)
        lse[..., rows] = np.where(has_key, np.log(safe_denom) + safe_max, -np.inf)[..., 0]
    out = out.reshape(batch, q_heads, q_len, v.shape[-1]).astype(q.dtype, copy=False)
    return out, lse.reshape(batch, q_heads, q_len)


def _qk_arrays(*arrays):
    allowed = "a 4-D floating-point array (batch, heads, seq, head_dim)"
    return tuple(check_array_like(name, a, allowed) for name, a in zip("qkv", arrays))


def _check_attention_inputs(q, k, v, causal: bool):
    q, k, v = _qk_arrays(q, k, v)
    dims = check_qkv(q, k, v)
    _check_float_arrays(q=q, k=k, v=v)
    check_same_dtype(q=q, k=k, v=v)
    if causal and dims[3] > dims[4]:
        raise InputError("q", f"q_len={dims[3]}", f"at most kv_len = {dims[4]} when causal (the queries are the last q_len positions)")
    return q, k, v, dims


def vertical_slash_attention(
    q, k, v, vertical_idx, slash_idx, mode="kernel", scale=None, return_lse=False, *, causal=True, block_size_m=64, block_size_n=64
):
    """Softmax attention restricted to each query's vertical-slash key set.

    ``q`` ``(batch, q_heads, q_len, head_dim)``, ``k`` ``(batch, kv_heads,
    kv_len, head_dim)``, ``v`` ``(batch, kv_heads, kv_len, v_dim)`` (GQA
    allowed); ``vertical_idx`` ``(batch, q_heads, n_vertical)`` and
    ``slash_idx`` ``(batch, q_heads, n_slash)`` as returned by
    :func:`vertical_slash_indices` (any order; ``-1`` padding).  ``mode``:
    ``"kernel"`` (default; what the MInference/vLLM/SGLang kernels compute,
    counting a key as often as the converted lists name it) or ``"exact"``
    (:func:`vertical_slash_mask`).  ``causal=False`` puts the queries right
    after all the keys (DCA's successive and inter parts).

    Returns ``out`` ``(batch, q_heads, q_len, v_dim)`` in q's dtype, and with
    ``return_lse`` the float64 lse ``(batch, q_heads, q_len)``.  Query blocks
    are processed a group at a time.
    """
    causal = _check_bool("causal", causal)
    q, k, v, (batch, q_heads, _, q_len, kv_len, head_dim) = _check_attention_inputs(q, k, v, causal)
    mode = _check_mode(mode)
    scale = _check_scale(scale, head_dim)
    return_lse = _check_bool("return_lse", return_lse)
    block_size_m = _check_int("block_size_m", block_size_m, 1)
    block_size_n = _check_int("block_size_n", block_size_n, 1)
    vertical, slash = _check_indices(vertical_idx, slash_idx, kv_len, (batch, q_heads))
    step = _rows_per_step(batch, q_heads, kv_len, block_size_m)
    if mode == "exact":
        weights = lambda rows: _exact_rows(rows, q_len, kv_len, vertical, slash, causal)  # noqa: E731
    else:
        converted = convert_vertical_slash_indexes(q_len, kv_len, vertical, slash, block_size_m, block_size_n, causal)
        weights = lambda rows: _kernel_rows(rows, q_len, kv_len, converted, causal, block_size_m, block_size_n)  # noqa: E731
    out, lse = _weighted_attention(q, k, v, scale, weights, step)
    return (out, lse) if return_lse else out


def attention_recall(q, k, mask, scale=None, *, causal=True):
    """The share of each query's dense attention mass that ``mask`` keeps: ``exp(lse_masked - lse_dense)``.

    ``q`` ``(batch, q_heads, q_len, head_dim)``, ``k`` ``(batch, kv_heads,
    kv_len, head_dim)`` (GQA allowed); ``mask`` bool, broadcastable to
    ``(batch, q_heads, q_len, kv_len)`` (e.g. ``(q_len, kv_len)``).  With
    ``causal`` both sums run over causal keys only (bottom-right), so a mask
    keeping every causal key has recall exactly 1.  Returns float64 ``(batch,
    q_heads, q_len)`` in ``[0, 1]``; this is the score MInference's offline
    search maximises, and the fourth field of Qwen2.5-1M's sparse configs fits
    it.
    """
    causal = _check_bool("causal", causal)
    q, k = _qk_arrays(q, k)
    batch, q_heads, kv_heads, q_len, kv_len, head_dim = check_qkv(q, k, k)
    _check_float_arrays(q=q, k=k)
    check_same_dtype(q=q, k=k)
    if causal and q_len > kv_len:
        raise InputError("q", f"q_len={q_len}", f"at most kv_len = {kv_len} when causal")
    scale = _check_scale(scale, head_dim)
    check_logits_fit(q, k, scale)
    mask = check_array_like("mask", mask, "a bool array broadcastable to (batch, q_heads, q_len, kv_len)")
    full = (batch, q_heads, q_len, kv_len)
    if mask.dtype != bool:
        raise InputError("mask", f"dtype {mask.dtype}", "a bool array")
    try:
        np.broadcast_shapes(mask.shape, full)
    except ValueError:
        raise InputError("mask", f"shape {mask.shape}", f"broadcastable to (batch, q_heads, q_len, kv_len) = {full}") from None
    group = q_heads // kv_heads
    qg = q.astype(np.float64).reshape(batch, kv_heads, group, q_len, head_dim)  # query heads under their kv head
    keys_t = np.swapaxes(k.astype(np.float64), -1, -2)[:, :, None]
    recall = np.empty((batch, kv_heads, group, q_len), dtype=np.float64)
    step = _rows_per_step(batch, q_heads, kv_len, 1)
    for start in progress_iter(range(0, q_len, step), "sparse attention"):
        rows = slice(start, min(start + step, q_len))
        n = rows.stop - rows.start
        keep = np.broadcast_to(mask, full)[:, :, rows].reshape(batch, kv_heads, group, n, kv_len)
        logits = scale * (qg[..., rows, :] @ keys_t)
        if causal:
            visible = np.arange(kv_len)[None, :] <= (np.arange(rows.start, rows.stop) + kv_len - q_len)[:, None]
            logits = np.where(visible, logits, -np.inf)
        numer = np.exp(logits - logits.max(axis=-1, keepdims=True))  # every row has a visible key
        # The same terms summed in the same order, some replaced by 0: the kept sum never exceeds the total.
        recall[..., rows] = np.where(keep, numer, 0.0).sum(axis=-1) / numer.sum(axis=-1)
    return recall.reshape(batch, q_heads, q_len)


# ----------------------------------------------------------------------------- A-shape and tri-shape


def _check_streaming(q_len, kv_len, n_init, n_local, n_last=None):
    q_len, kv_len = _check_lengths(q_len, kv_len, True)
    n_init = _check_int("n_init", n_init, 0)
    n_local = _check_int("n_local", n_local, 1)
    if n_last is not None:
        n_last = _check_int("n_last", n_last, 0)
    return q_len, kv_len, n_init, n_local, n_last


def _streaming_rows(rows: slice, q_len: int, kv_len: int, n_init: int, n_local: int, n_last: int) -> np.ndarray:
    """A-shape (``n_last = 0``) or tri-shape rows: ``(n_rows, kv_len)`` bool."""
    i = np.arange(rows.start, rows.stop)[:, None]
    j = np.arange(kv_len)[None, :]
    distance = i - j + (kv_len - q_len)  # D = position(i) - j
    a_shape = (distance >= 0) & ((distance < n_local) | (j < n_init))
    dense_row = i >= q_len - n_last  # tri-shape: the last n_last queries attend densely
    return a_shape | (dense_row & (distance >= 0))


def a_shape_mask(q_len, kv_len, n_init=128, n_local=3968):
    """MInference's A-shape (``streaming_forward``): bool ``(q_len, kv_len)``.

    With ``D = i - j + kv_len - q_len`` (the distance, bottom-right), key ``j``
    is visible to query ``i`` iff ``0 <= D < n_local`` (the local window) or
    ``j < n_init`` and ``D >= 0`` (the initial "sink" tokens).  Token-exact, no
    block rounding.
    """
    q_len, kv_len, n_init, n_local, _ = _check_streaming(q_len, kv_len, n_init, n_local)
    check_allocation("kv_len", kv_len, q_len * kv_len, 25, "(q_len, kv_len) mask and its int64 distances")
    return _streaming_rows(slice(0, q_len), q_len, kv_len, n_init, n_local, 0)


def tri_shape_mask(q_len, kv_len, n_init=128, n_local=3968, n_last=100):
    """The tri-shape: the A-shape, except the last ``n_last`` queries see every causal key. Bool ``(q_len, kv_len)``."""
    n_last = _check_int("n_last", n_last, 0)
    q_len, kv_len, n_init, n_local, n_last = _check_streaming(q_len, kv_len, n_init, n_local, n_last)
    check_allocation("kv_len", kv_len, q_len * kv_len, 25, "(q_len, kv_len) mask and its int64 distances")
    return _streaming_rows(slice(0, q_len), q_len, kv_len, n_init, n_local, n_last)


def _streaming_attention(q, k, v, n_init, n_local, n_last, scale, return_lse):
    q, k, v, (batch, q_heads, _, q_len, kv_len, head_dim) = _check_attention_inputs(q, k, v, True)
    _, _, n_init, n_local, n_last = _check_streaming(q_len, kv_len, n_init, n_local, n_last)
    scale = _check_scale(scale, head_dim)
    return_lse = _check_bool("return_lse", return_lse)
    step = _rows_per_step(batch, q_heads, kv_len, 1)
    weights = lambda rows: _streaming_rows(rows, q_len, kv_len, n_init, n_local, n_last)  # noqa: E731
    out, lse = _weighted_attention(q, k, v, scale, weights, step)
    return (out, lse) if return_lse else out


def a_shape_attention(q, k, v, n_init=128, n_local=3968, scale=None, return_lse=False):
    """Attention over :func:`a_shape_mask` (causal, bottom-right, GQA), blocked over queries.

    Returns ``out`` in q's dtype, and with ``return_lse`` the float64 lse.
    """
    return _streaming_attention(q, k, v, n_init, n_local, 0, scale, return_lse)


def tri_shape_attention(q, k, v, n_init=128, n_local=3968, n_last=100, scale=None, return_lse=False):
    """Attention over :func:`tri_shape_mask` (causal, bottom-right, GQA), blocked over queries."""
    return _streaming_attention(q, k, v, n_init, n_local, n_last, scale, return_lse)
