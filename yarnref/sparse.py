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
* Causal masks are aligned bottom-right, as in :mod:`yarnref.softmax_attention`: with
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
  from bf16 logits, so near-ties can resolve differently there).  Attention
  touches only the keys a pattern keeps: each block of query rows gathers its
  own key list (kernel mode: the listed blocks and columns; exact mode: the
  verticals and the columns its rows' diagonals hit; A-shape: sinks and
  window) and takes the softmax over it, so memory is ``O(rows x block)``
  per step and no ``q_len x kv_len`` matrix is built.
* Rows with no key get output 0 and lse ``-inf`` (flash-attention's sparse
  kernel returns lse ``+inf`` for such rows).
"""

from __future__ import annotations


import numpy as np

from .softmax_attention import check_qkv
from .checks import check_bool as _check_bool
from .checks import check_allocation, check_array_like, check_int32_indices, check_logits_fit, check_same_dtype
from .checks import check_int as _check_int
from .checks import check_scale as _check_scale
from .checks import check_budget as _budget
from .checks import check_lengths as _check_lengths
from .checks import check_option
from .checks import check_streaming_sizes as _check_streaming
from .errors import InputError
from .progress import progress_iter
from .sparse_lockstep import conversion_capacity, convert_lockstep

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
#: Query rows that share one key list in the A-shape and tri-shape attentions.
STREAMING_BLOCK_ROWS = 64


# ----------------------------------------------------------------------------- argument checks


def _check_float_arrays(**arrays) -> None:
    for name, a in arrays.items():
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(name, f"dtype {a.dtype}", "a floating-point array")
        if not np.all(np.isfinite(a)):
            raise InputError(name, "non-finite values", "finite values")


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


def _check_kernel_blocks(block_size_m: int, block_size_n: int) -> None:
    if block_size_n < block_size_m:
        # The kernels' "no vertical left" marker, end_m + BN + off, would fall inside a range grown by BM
        # steps, and their loop would never end.
        raise InputError("block_size_n", block_size_n, f"at least block_size_m = {block_size_m} (the kernels use 64 x 64)")


def _check_list_allocation(q_len: int, vertical, slash, block_size_m: int, block_size_n: int) -> None:
    batch, heads, width_v = vertical.shape
    col_cap, blk_cap = conversion_capacity(width_v, slash.shape[-1], block_size_m, block_size_n)
    n_rows = -(-q_len // block_size_m)
    check_allocation("q_len", q_len, batch * heads * n_rows * (2 * col_cap + 2 * blk_cap + 8), 8, "index lists")


def _check_conversion(q_len, kv_len, vertical_idx, slash_idx, block_size_m, block_size_n, causal):
    """The conversion's arguments, validated: ``(q_len, kv_len, vertical, slash, bm, bn, causal)``, indices int64."""
    causal = _check_bool("causal", causal)
    q_len, kv_len = _check_lengths(q_len, kv_len, causal)
    block_size_m = _check_int("block_size_m", block_size_m, 1)
    block_size_n = _check_int("block_size_n", block_size_n, 1)
    _check_kernel_blocks(block_size_m, block_size_n)
    check_int32_indices(kv_len, block_size_m, block_size_n)
    vertical, slash = _check_indices(vertical_idx, slash_idx, kv_len)
    _check_list_allocation(q_len, vertical, slash, block_size_m, block_size_n)
    return q_len, kv_len, vertical, slash, block_size_m, block_size_n, causal


def _merge_row_block(start_m: int, verts: list, slashes: list, q_len: int, kv_len: int, bm: int, bn: int, causal: bool, clamp: bool):
    """One thread of vLLM's ``convert_vertical_slash_indexes`` kernel: the lists of row block ``[start_m, start_m + bm)``.

    ``verts``: one head's key columns, ascending; ``slashes``: its distances,
    descending (padding removed).  Returns ``(block_starts, columns)``.  The
    comments name the kernel's steps (``csrc/attention/vertical_slash_index.cu``;
    its ``context_size`` is ``q_len``).
    """
    end_m = start_m + bm
    off = kv_len - q_len if causal else kv_len  # the row block's rows sit at positions start_m + off ..
    blocks, columns = [], []

    def save_blocks(range_start: int, range_end: int) -> None:
        # for (idx = range_start; idx < range_end; idx += BLOCK_SIZE_N) if (idx < kv_seqlen) block_offset[block_count++] = idx;
        stop = min(range_end, kv_len) if clamp else range_end  # MInference's converter has no kv_len test
        blocks.extend(range(range_start, stop, bn))

    far = end_m + bn + off  # the value a vertical takes when none is left: past every range of this block
    # int v_idx = vertical_indexes[v++]; int s_idx = slash_indexes[s++];
    v, v_idx = (1, verts[0]) if verts else (0, far)
    s, s_idx = (1, slashes[0]) if slashes else (0, end_m + off + 1)
    # while (s_idx >= end_m + off && s < NNZ_S) s_idx = slash_indexes[s++];  (diagonals that miss every row)
    while s_idx >= end_m + off and s < len(slashes):
        s_idx = slashes[s]
        s += 1
    if s_idx > end_m + off:
        # No diagonal reaches the block: an empty range just past its last row (past every key if non-causal).
        range_start, range_end = (end_m + off, end_m + off + bn) if causal else (kv_len, kv_len + bn)
    else:
        # Diagonal delta covers columns [start_m + off - delta, end_m + off - delta) for the block's rows;
        # s_idx = max(end_m + off - s_idx, BLOCK_SIZE_M); range = [s_idx - BLOCK_SIZE_M, s_idx).
        e = max(end_m + off - s_idx, bm)
        range_start, range_end = e - bm, e
    while True:
        if v_idx < range_end:
            # if (v_idx < range_end) { if (v_idx < range_start) column_index[column_count++] = v_idx; v_idx = next; }
            if v_idx < range_start:  # left of the range: a column of its own (inside it: covered)
                columns.append(v_idx)
            if v < len(verts):
                v_idx = verts[v]
                v += 1
            else:
                v_idx = far
            continue
        # The vertical lies past the range: bring in the next diagonal (non-causal: only while delta >= start_m).
        if s < len(slashes) and (causal or slashes[s] >= start_m):
            e = max(end_m + off - slashes[s], bm)  # s_idx = max(end_m + off - slash_indexes[s++], BLOCK_SIZE_M)
            s += 1
            if e > range_end + bm:  # if (s_idx > range_end + BLOCK_SIZE_M): a gap, emit and start anew
                save_blocks(range_start, range_end)
                range_start, range_end = e - bm, e
            elif e > range_end:  # else if (s_idx > range_end): touching, grow by one whole row block
                range_end += bm
            continue
        # No diagonal left.  if (v == NNZ_V || (v_idx > range_start && causal)): emit and stop.  When causal
        # this always holds (v_idx >= range_end > range_start): the verticals right of the range are dropped.
        if causal or v == len(verts):
            if not causal and v == len(verts) and v_idx < kv_len:  # the last vertical, if it is a key
                columns.append(v_idx)
            save_blocks(range_start, range_end)
            return blocks, columns
        # Non-causal with verticals left: emit the range, then an empty one past every key, so that each
        # remaining vertical lies left of it and becomes a column.  (The kernel then re-tests the previous
        # diagonal's end against the new range; it is at most kv_len + BM <= its end, so nothing happens.)
        save_blocks(range_start, range_end)
        range_start, range_end = kv_len, kv_len + bn


def _convert_readable(q_len, kv_len, vertical, slash, bm, bn, causal, clamp):
    """The sequential merge, one head and one row block at a time, into the kernels' padded int32 arrays."""
    batch, heads, width_v = vertical.shape
    col_cap, blk_cap = conversion_capacity(width_v, slash.shape[-1], bm, bn)
    n_rows = -(-q_len // bm)
    block_count = np.zeros((batch, heads, n_rows), dtype=np.int32)
    block_offset = np.full((batch, heads, n_rows, blk_cap), -1, dtype=np.int32)
    column_count = np.zeros((batch, heads, n_rows), dtype=np.int32)
    column_index = np.full((batch, heads, n_rows, col_cap), -1, dtype=np.int32)
    for b in range(batch):
        for h in range(heads):
            verts = sorted(int(c) for c in vertical[b, h] if c >= 0)  # the kernel needs them ascending ...
            slashes = sorted((int(d) for d in slash[b, h] if d >= 0), reverse=True)  # ... and these descending
            for r in range(n_rows):
                blocks, columns = _merge_row_block(r * bm, verts, slashes, q_len, kv_len, bm, bn, causal, clamp)
                block_count[b, h, r], column_count[b, h, r] = len(blocks), len(columns)
                block_offset[b, h, r, : len(blocks)] = blocks
                column_index[b, h, r, : len(columns)] = columns
    return block_count, block_offset, column_count, column_index


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

    This is the readable form, a loop over heads and row blocks (each step of
    ``_merge_row_block`` carries the kernel line it follows).  The vectorised
    form, :func:`yarnref.sparse_lockstep.convert_lockstep`, gives the same
    lists (tested) and is what :func:`vertical_slash_mask` and
    :func:`vertical_slash_attention` use here, and the torch backend on the CPU.

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
    q_len, kv_len, vertical, slash, bm, bn, causal = _check_conversion(q_len, kv_len, vertical_idx, slash_idx, block_size_m, block_size_n, causal)
    return _convert_readable(q_len, kv_len, vertical, slash, bm, bn, causal, clamp=True)


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
    q_len, kv_len, vertical, slash, bm, bn, _ = _check_conversion(q_len, kv_len, vertical_idx, slash_idx, block_size_m, block_size_n, True)
    return _convert_readable(q_len, kv_len, vertical, slash, bm, bn, True, clamp=False)


def _convert_fast(q_len, kv_len, vertical, slash, bm, bn, causal):
    """The same lists as :func:`convert_vertical_slash_indexes`, from :mod:`yarnref.sparse_lockstep` (validated inputs)."""
    return convert_lockstep(np, q_len, kv_len, vertical, slash, bm, bn, causal)


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
    mode = check_option("mode", mode, VS_MODES)
    causal = _check_bool("causal", causal)
    q_len, kv_len = _check_lengths(q_len, kv_len, causal)
    block_size_m = _check_int("block_size_m", block_size_m, 1)
    block_size_n = _check_int("block_size_n", block_size_n, 1)
    vertical, slash = _check_indices(vertical_idx, slash_idx, kv_len)
    check_allocation("kv_len", kv_len, vertical.shape[0] * vertical.shape[1] * q_len * kv_len, 9, "(batch, heads, q_len, kv_len) mask")
    if mode == "exact":
        return _exact_rows(slice(0, q_len), q_len, kv_len, vertical, slash, causal)
    _check_kernel_blocks(block_size_m, block_size_n)
    check_int32_indices(kv_len, block_size_m, block_size_n)
    _check_list_allocation(q_len, vertical, slash, block_size_m, block_size_n)
    converted = _convert_fast(q_len, kv_len, vertical, slash, block_size_m, block_size_n, causal)
    return _kernel_rows(slice(0, q_len), q_len, kv_len, converted, causal, block_size_m, block_size_n) > 0


# ----------------------------------------------------------------------------- attention over a key set


def _rows_per_step(batch: int, heads: int, kv_len: int, multiple: int) -> int:
    rows = max(1, BLOCK_ELEMENTS // (batch * heads * kv_len))
    return max(multiple, rows // multiple * multiple)


def _gathered_attention(q, k, v, scale: float, block_rows: int, key_lists):
    """Softmax attention where each block of ``block_rows`` query rows reads only its own list of keys.

    ``key_lists(r0, r1, rows)`` describes row blocks ``r0 .. r1 - 1``
    (``rows``: ``(r1 - r0, block_rows)``, the query rows, ``>= q_len`` for the
    padding of the last block, which is never kept): it returns
    ``keys``, int ``(batch | 1, q_heads | 1, r1 - r0, K)`` key indices, and
    ``keep``, bool, broadcastable to ``(batch, q_heads, r1 - r0, block_rows,
    K)``: whether that row counts that entry (entries past a block's list are
    never kept).  A key listed twice counts twice.  Only the listed keys are
    read: the work and the memory grow with the kept keys (about
    :data:`BLOCK_ELEMENTS` logits at once), never with ``q_len * kv_len``.
    Returns ``out`` (q's dtype) and ``lse`` (float64); a row with no key gets 0
    and ``-inf``.
    """
    batch, q_heads, kv_heads, q_len, kv_len, head_dim = check_qkv(q, k, v)
    check_logits_fit(q, k, scale, v=v)
    v_dim = v.shape[-1]
    n_blocks = -(-q_len // block_rows)
    padded = np.zeros((batch, q_heads, n_blocks * block_rows, head_dim), dtype=np.float64)  # whole row blocks
    padded[:, :, :q_len] = q
    q_blocks = padded.reshape(batch, q_heads, n_blocks, block_rows, head_dim)
    keys64, values64 = k.astype(np.float64), v.astype(np.float64)
    b = np.arange(batch)[:, None, None, None]
    kv_head = (np.arange(q_heads) // (q_heads // kv_heads))[None, :, None, None]  # the kv head each query head reads
    row_index = np.arange(n_blocks * block_rows).reshape(n_blocks, block_rows)
    out = np.zeros((batch, q_heads, n_blocks, block_rows, v_dim), dtype=np.float64)
    lse = np.full((batch, q_heads, n_blocks, block_rows), -np.inf, dtype=np.float64)
    step = max(1, _rows_per_step(batch, q_heads, kv_len, block_rows) // block_rows)  # row blocks per step
    for r0 in progress_iter(range(0, n_blocks, step), "sparse attention"):
        r1 = min(r0 + step, n_blocks)
        keys, keep = key_lists(r0, r1, row_index[r0:r1])
        if keys.shape[-1] == 0:
            continue  # no key listed for these rows: 0 and -inf
        safe = np.clip(keys, 0, kv_len - 1)  # unlisted entries may hold anything; they are not kept
        k_listed = keys64[b, kv_head, safe]  # (batch, q_heads, blocks, K, head_dim)
        v_listed = values64[b, kv_head, safe]  # (batch, q_heads, blocks, K, v_dim)
        logits = scale * (q_blocks[:, :, r0:r1] @ np.swapaxes(k_listed, -1, -2))  # (batch, q_heads, blocks, rows, K)
        logits = np.where(keep, logits, -np.inf)
        row_max = logits.max(axis=-1, keepdims=True)
        safe_max = np.where(np.isfinite(row_max), row_max, 0.0)
        numer = np.exp(logits - safe_max)  # 0 where not kept
        denom = numer.sum(axis=-1, keepdims=True)
        has_key = denom > 0
        safe_denom = np.where(has_key, denom, 1.0)
        out[:, :, r0:r1] = np.where(has_key, (numer @ v_listed) / safe_denom, 0.0)
        lse[:, :, r0:r1] = np.where(has_key, np.log(safe_denom) + safe_max, -np.inf)[..., 0]
    out = out.reshape(batch, q_heads, n_blocks * block_rows, v_dim)[:, :, :q_len].astype(q.dtype, copy=False)
    return out, lse.reshape(batch, q_heads, n_blocks * block_rows)[:, :, :q_len]


def _kernel_key_lists(converted, q_len: int, kv_len: int, causal: bool, bn: int):
    """``key_lists`` of the kernel's key sets: each row block's listed blocks (``bn`` keys each), then its columns.

    A row keeps a listed key when it is a key (``j < kv_len``) and, when
    causal, ``j <= position``; a key listed twice counts twice, as in the kernels.
    """
    block_count, block_offset, column_count, column_index = converted
    off = kv_len - q_len

    def key_lists(r0, r1, rows):
        counts, n_cols = block_count[:, :, r0:r1], column_count[:, :, r0:r1]
        nb, nc = int(counts.max(initial=0)), int(n_cols.max(initial=0))
        block_keys = block_offset[:, :, r0:r1, :nb].astype(np.int64)[..., None] + np.arange(bn)  # (batch, heads, blocks, nb, bn)
        block_listed = np.broadcast_to((np.arange(nb) < counts[..., None])[..., None], block_keys.shape)
        shape = block_keys.shape[:3]
        keys = np.concatenate([block_keys.reshape(*shape, nb * bn), column_index[:, :, r0:r1, :nc].astype(np.int64)], axis=-1)
        listed = np.concatenate([block_listed.reshape(*shape, nb * bn), np.arange(nc) < n_cols[..., None]], axis=-1)
        keep = (listed & (keys < kv_len))[:, :, :, None, :] & (rows < q_len)[..., None]  # (batch, heads, blocks, rows, K)
        if causal:
            keep &= keys[:, :, :, None, :] <= (rows + off)[..., None]
        return keys, keep

    return key_lists


def _exact_key_lists(vertical, slash, q_len: int, kv_len: int, causal: bool):
    """``key_lists`` of the exact key sets: per row block, the verticals and the columns its rows' diagonals hit.

    Each candidate key is listed once; a row keeps key ``j`` when ``j`` is a
    vertical or ``position - j`` a slash, and ``0 <= position - j``.
    """
    batch, heads, _ = vertical.shape
    off = kv_len - q_len if causal else kv_len
    b, h = np.arange(batch)[:, None, None], np.arange(heads)[None, :, None]
    is_vertical = np.zeros((batch, heads, kv_len + 1), dtype=bool)  # a spare slot at the end for -1 padding
    is_vertical[b, h, np.where(vertical < 0, kv_len, vertical)] = True
    is_vertical[..., kv_len] = False
    reach = q_len + off  # distances 0 .. reach - 1 can occur
    is_slash = np.zeros((batch, heads, reach + 1), dtype=bool)
    is_slash[b, h, np.where((slash < 0) | (slash >= reach), reach, slash)] = True
    is_slash[..., reach] = False
    valid_slash = (slash >= 0)[:, :, None, :]  # (batch, heads, 1, n_slash)

    def key_lists(r0, r1, rows):
        n_blocks = rows.shape[0]
        position = rows + off
        last = np.minimum(position[:, -1], off + q_len - 1)  # the last query's position in each block
        # Diagonal delta hits columns [first - delta, last - delta] in a block: mark them with a difference array.
        lo = np.clip(position[:, 0, None] - slash[:, :, None, :], 0, kv_len)  # (batch, heads, blocks, n_slash)
        hi = np.clip(last[:, None] + 1 - slash[:, :, None, :], 0, kv_len)
        cover = np.zeros((batch, heads, n_blocks, kv_len + 1), dtype=np.int64)
        bb, hh, rr, ss = np.nonzero(np.broadcast_to(valid_slash, lo.shape) & (lo < hi))
        np.add.at(cover, (bb, hh, rr, lo[bb, hh, rr, ss]), 1)
        np.add.at(cover, (bb, hh, rr, hi[bb, hh, rr, ss]), -1)
        candidate = (np.cumsum(cover, axis=-1)[..., :kv_len] > 0) | is_vertical[:, :, None, :kv_len]
        if causal:
            candidate &= np.arange(kv_len) <= last[:, None]
        # The candidates of each block, in column order, padded to the largest count.
        count = candidate.sum(axis=-1)
        keys = np.zeros((batch, heads, n_blocks, int(count.max(initial=0))), dtype=np.int64)
        bb, hh, rr, jj = np.nonzero(candidate)
        keys[bb, hh, rr, (np.cumsum(candidate, axis=-1) - 1)[bb, hh, rr, jj]] = jj
        listed = np.arange(keys.shape[-1]) < count[..., None]
        delta = position[..., None] - keys[:, :, :, None, :]  # (batch, heads, blocks, rows, K)
        visible = (delta >= 0) & (rows < q_len)[..., None]
        on_slash = is_slash[b[..., None, None], h[..., None, None], np.where(visible, np.minimum(delta, reach), reach)]
        keep = listed[:, :, :, None, :] & visible & (is_vertical[b[..., None], h[..., None], keys][:, :, :, None, :] | on_slash)
        return keys, keep

    return key_lists


def _streaming_key_lists(q_len: int, kv_len: int, n_init: int, n_local: int, n_last: int):
    """``key_lists`` of the A-shape (``n_last = 0``) and tri-shape: each row block's sinks and window.

    A block reads the sinks ``[0, n_init)`` and the keys from its first row's
    window start to its last row's position, or every causal key if a row of
    it is among the last ``n_last`` (tri-shape); each row keeps what
    :func:`_streaming_rows` says.
    """
    off = kv_len - q_len
    n_sinks = min(n_init, kv_len)

    def key_lists(r0, r1, rows):
        first, last = rows[:, 0] + off, np.minimum(rows[:, -1], q_len - 1) + off  # (blocks,) positions
        dense = np.minimum(rows[:, -1], q_len - 1) >= q_len - n_last  # the block holds a tri-shape dense row
        lo = np.where(dense, n_sinks, np.clip(first - n_local + 1, n_sinks, None))  # the sinks are listed apart
        hi = np.maximum(last + 1, lo)
        width = n_sinks + int((hi - lo).max())
        column = np.arange(width)
        keys = np.where(column < n_sinks, column, lo[:, None] + column - n_sinks)  # (blocks, K)
        listed = (column < n_sinks) | (keys < hi[:, None])
        distance = (rows + off)[..., None] - keys[:, None, :]  # (blocks, rows, K)
        a_shape = (distance >= 0) & ((distance < n_local) | (keys[:, None, :] < n_init))
        dense_row = (rows >= q_len - n_last)[..., None] & (distance >= 0)
        keep = listed[:, None, :] & (rows < q_len)[..., None] & (a_shape | dense_row)
        return keys[None, None], keep[None, None]

    return key_lists


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
    ``return_lse`` the float64 lse ``(batch, q_heads, q_len)``.  Each row block
    of ``block_size_m`` queries reads only the keys its list names.
    """
    causal = _check_bool("causal", causal)
    q, k, v, (batch, q_heads, _, q_len, kv_len, head_dim) = _check_attention_inputs(q, k, v, causal)
    mode = check_option("mode", mode, VS_MODES)
    scale = _check_scale(scale, head_dim)
    return_lse = _check_bool("return_lse", return_lse)
    block_size_m = _check_int("block_size_m", block_size_m, 1)
    block_size_n = _check_int("block_size_n", block_size_n, 1)
    vertical, slash = _check_indices(vertical_idx, slash_idx, kv_len, (batch, q_heads))
    if mode == "exact":
        key_lists = _exact_key_lists(vertical, slash, q_len, kv_len, causal)
    else:
        _check_kernel_blocks(block_size_m, block_size_n)
        check_int32_indices(kv_len, block_size_m, block_size_n)
        _check_list_allocation(q_len, vertical, slash, block_size_m, block_size_n)
        converted = _convert_fast(q_len, kv_len, vertical, slash, block_size_m, block_size_n, causal)
        key_lists = _kernel_key_lists(converted, q_len, kv_len, causal, block_size_n)
    out, lse = _gathered_attention(q, k, v, scale, block_size_m, key_lists)
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
    key_lists = _streaming_key_lists(q_len, kv_len, n_init, n_local, n_last)
    out, lse = _gathered_attention(q, k, v, scale, STREAMING_BLOCK_ROWS, key_lists)
    return (out, lse) if return_lse else out


def a_shape_attention(q, k, v, n_init=128, n_local=3968, scale=None, return_lse=False):
    """Attention over :func:`a_shape_mask` (causal, bottom-right, GQA), blocked over queries.

    Returns ``out`` in q's dtype, and with ``return_lse`` the float64 lse.
    """
    return _streaming_attention(q, k, v, n_init, n_local, 0, scale, return_lse)


def tri_shape_attention(q, k, v, n_init=128, n_local=3968, n_last=100, scale=None, return_lse=False):
    """Attention over :func:`tri_shape_mask` (causal, bottom-right, GQA), blocked over queries."""
    return _streaming_attention(q, k, v, n_init, n_local, n_last, scale, return_lse)
