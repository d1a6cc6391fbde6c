r"""Ring attention: a sequence spread over ``P`` devices, simulated exactly.

Paper: Liu, Zaharia, Abbeel, "Ring Attention with Blockwise Transformers for
Near-Infinite Context", arXiv:2310.01889, section 3 and Algorithm 1.  The
load-balanced causal layouts: striped (Brandon et al., "Striped Attention",
arXiv:2311.09431) and zig-zag (the layout of Llama 3's context parallelism,
arXiv:2407.21783 section 3.3.2, of ring-flash-attn, and of torch's
``context_parallel`` head-tail load balancer).

Each of the ``P`` devices keeps one *shard* of the queries for the whole
computation.  The keys and values are sharded the same way and travel around
a ring: at step ``t = 0 .. P-1`` device ``r`` holds the K/V shard
``s = (r - t) mod P`` (it received it from device ``r - 1`` and passes it on
to ``r + 1``).  With that shard it computes the *partial* attention of its
queries over those keys and their log-sum-exp

.. math::
   o_i^{(t)} = \sum_{j \in K_s} \frac{e^{s_{ij}}}{\sum_{j' \in K_s} e^{s_{ij'}}} v_j,
   \qquad \ell_i^{(t)} = \log \sum_{j \in K_s} e^{s_{ij}}

and folds it into a running result with the log-sum-exp merge
(:func:`yarnref.softmax_attention.merge_attention`; the blockwise rule of the paper's
Algorithm 1):

.. math::
   \ell_i \leftarrow \log\!\big(e^{\ell_i} + e^{\ell_i^{(t)}}\big), \qquad
   o_i \leftarrow e^{\ell_i^{\mathrm{old}} - \ell_i}\, o_i + e^{\ell_i^{(t)} - \ell_i}\, o_i^{(t)}

After ``P`` steps every query has met every key once, so the result *is*
softmax attention over the whole sequence (to float64 rounding), whatever the
layout.

Layouts (``layout=``), for a padded length ``T`` and ``n = T / P`` tokens per device:

* ``"contiguous"``: device ``r`` holds positions ``[r n, (r+1) n)``.  With a
  causal mask device ``r`` has work at ``r + 1`` of the ``P`` steps (``r``
  full blocks and half of the diagonal one), so the last device does
  ``(2P - 1) / P`` times the mean work, and every step but the first lasts
  a full block somewhere (:func:`ring_schedule` shows it).
* ``"zigzag"``: the sequence is cut into ``2P`` blocks; device ``r`` holds
  blocks ``r`` and ``2P - 1 - r``, an early and a late one, so every device
  does the same causal work.
* ``"striped"``: device ``r`` holds positions ``r, r + P, r + 2P, ...``;
  at each step the devices' causal work differs by at most one diagonal
  (``n`` scores), so the imbalance is ``1 + O(1/n)``.

Each shard is a list of :class:`Run` s (arithmetic progressions of
positions: one for contiguous and striped, two for zig-zag).  The causal mask
between a query run and a key run of the same stride is, in local indices,
"query ``i`` sees key ``j <= i + c``" for one offset ``c``
(:func:`pair_blocks`), so every partial attention is at most two calls of the
ordinary :func:`yarnref.softmax_attention.attention`: a bottom-right causal one and a
full one.  That is also how a device runs it with flash attention.

The same ring carries Dual Chunk Attention (:func:`ring_dca_attention`: each
device rotates its queries to their DCA query positions and its keys to their
DCA key positions once; the parts are the key runs cut at chunk borders) and
vertical-slash sparse attention (:func:`ring_vertical_slash_attention`: the
column and diagonal lists restricted to each (query run, key run) pair,
:func:`pair_vertical_slash`, for the exact key sets; for the kernels' key
sets, the block/column lists converted once per query run and restricted to
each key run, :func:`run_kernel_lists` and :func:`restrict_kernel_lists`).

Conventions
-----------
* Layout ``(batch, heads, seq, head_dim)``; GQA as in :mod:`yarnref.softmax_attention`.
* Padding: a length that ``P`` (``2P`` for zig-zag) does not divide is padded
  at the end with zero tokens up to the next multiple.  Under a causal mask
  no real query sees a position after itself, so the padding changes nothing
  and is cut from the output.  Without a causal mask it would be seen, so
  ``causal=False`` needs a length the layout divides (else
  :class:`~yarnref.errors.InputError`).
* Step ``t``: device ``r`` holds K/V shard ``(r - t) mod P``.
* Precision: float64 throughout, as the spec's attention; output in q's dtype,
  lse float64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .softmax_attention import attention, check_qkv, merge_attention
from .checks import (
    check_allocation,
    check_array_like,
    check_bool,
    check_int,
    check_logits_fit,
    check_option,
    check_positive_real,
    check_same_dtype,
    check_scale,
)
from .dca import DCA_PAIRINGS, dca_position_ids, dca_temperature
from .errors import InputError
from .rope import apply_rope, rope_cos_sin
from .sparse import VS_MODES, _gathered_attention, _kernel_key_lists, convert_vertical_slash_indexes, vertical_slash_attention

__all__ = [
    "RING_LAYOUTS",
    "Run",
    "PairBlock",
    "RingSchedule",
    "check_layout",
    "padded_length",
    "shard_runs",
    "shard_positions",
    "shard",
    "unshard",
    "ring_source",
    "pair_blocks",
    "step_blocks",
    "pair_vertical_slash",
    "check_kernel_layout",
    "run_kernel_lists",
    "restrict_kernel_lists",
    "chunk_pieces",
    "run_range",
    "ring_schedule",
    "ring_attention",
    "ring_dca_attention",
    "ring_vertical_slash_attention",
]

RING_LAYOUTS = ("contiguous", "zigzag", "striped")


# ----------------------------------------------------------------------------- layouts


class Run(NamedTuple):
    """Positions ``start + stride * i`` for ``i = 0 .. count-1``: one piece of a shard."""

    start: int
    stride: int
    count: int

    def positions(self) -> np.ndarray:
        return self.start + self.stride * np.arange(self.count, dtype=np.int64)


#: Most devices a ring is simulated on (the schedule is ``P x P`` steps of shard bookkeeping).
MAX_WORLD_SIZE = 1024


def check_layout(layout) -> str:
    """``layout`` if it is one of :data:`RING_LAYOUTS`."""
    return check_option("layout", layout, RING_LAYOUTS)


def check_world_size(world_size) -> int:
    """``world_size`` as an int in ``[1, MAX_WORLD_SIZE]``."""
    return check_int("world_size", world_size, 1, MAX_WORLD_SIZE)


def _blocks_per_device(layout: str) -> int:
    return 2 if layout == "zigzag" else 1


def padded_length(seq_len, world_size, layout) -> int:
    """``seq_len`` rounded up to a multiple of ``world_size`` (``2 * world_size`` for zig-zag)."""
    seq_len = check_int("seq_len", seq_len)
    world_size = check_world_size(world_size)
    multiple = world_size * _blocks_per_device(check_layout(layout))
    return -(-seq_len // multiple) * multiple


def shard_runs(seq_len, world_size, layout) -> list[list[Run]]:
    """The runs of positions each device holds: ``runs[r]`` is device ``r``'s list (over the padded length).

    A device's local rows are its runs' positions in order: contiguous and
    striped one run of ``n`` positions, zig-zag two runs of ``n/2``.
    """
    world_size = check_world_size(world_size)
    total = padded_length(seq_len, world_size, layout)
    check_allocation("seq_len", seq_len, total, what="positions of the padded sequence")
    n = total // world_size  # tokens per device
    if layout == "contiguous":
        return [[Run(r * n, 1, n)] for r in range(world_size)]
    if layout == "striped":
        return [[Run(r, world_size, n)] for r in range(world_size)]
    half = n // 2  # zig-zag: blocks r and 2P - 1 - r of length n / 2
    return [[Run(r * half, 1, half), Run((2 * world_size - 1 - r) * half, 1, half)] for r in range(world_size)]


def shard_positions(seq_len, world_size, layout) -> list[np.ndarray]:
    """Each device's positions in local row order (int64); positions ``>= seq_len`` are padding."""
    return [np.concatenate([run.positions() for run in runs]) for runs in shard_runs(seq_len, world_size, layout)]


def shard(x, world_size, layout, axis: int = 2) -> list[np.ndarray]:
    """Split ``x`` along ``axis`` (the sequence) into the ``world_size`` device shards of ``layout``.

    The sequence is padded at the end with zeros to :func:`padded_length`.
    Returns a list of ``P`` arrays, each with ``padded_length / P`` rows on ``axis``.
    """
    x = np.asarray(x)
    seq_len = x.shape[axis]
    total = padded_length(seq_len, world_size, layout)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, total - seq_len)
    padded = np.pad(x, pad)
    return [np.take(padded, positions, axis=axis) for positions in shard_positions(seq_len, world_size, layout)]


def unshard(shards, seq_len, layout, axis: int = 2) -> np.ndarray:
    """Put the device shards of :func:`shard` back in sequence order and cut the padding: length ``seq_len``."""
    shards = [np.asarray(s) for s in shards]
    positions = shard_positions(seq_len, len(shards), layout)
    for r, (s, p) in enumerate(zip(shards, positions)):
        if s.ndim <= axis or s.shape[axis] != p.size:
            raise InputError(f"shards[{r}]", f"shape {s.shape}", f"{p.size} rows on axis {axis} (layout {layout!r}, {len(shards)} devices)")
    order = np.argsort(np.concatenate(positions))
    whole = np.take(np.concatenate(shards, axis=axis), order, axis=axis)
    return np.take(whole, np.arange(check_int("seq_len", seq_len)), axis=axis)


def ring_source(device: int, step: int, world_size: int) -> int:
    """The K/V shard device ``device`` holds at ring step ``step``: ``(device - step) mod world_size``."""
    return (device - step) % world_size


# ----------------------------------------------------------------------------- one (query run, key run) pair


class PairBlock(NamedTuple):
    """Query rows ``rows`` of a query run attend key rows ``keys`` of a key run.

    ``causal``: bottom-right aligned (row ``i`` of the block sees the block's
    keys up to ``i + len(keys) - len(rows)``), as :func:`yarnref.softmax_attention.attention`;
    else every key of the block.
    """

    rows: tuple[int, int]
    keys: tuple[int, int]
    causal: bool


def pair_blocks(query_run: Run, key_run: Run, causal: bool = True) -> list[PairBlock]:
    """The attention calls (at most two) that compute a query run against a key run of the same stride.

    With ``qa + s i >= ka + s j  <=>  j <= i + c``, ``c = floor((qa - ka) / s)``,
    query ``i`` sees keys ``[0, min(nk, i + c + 1))``: rows with ``i + c < 0``
    see none, rows with ``i + c >= nk - 1`` see all (a full block), the rows in
    between see ``j <= i + c`` (a bottom-right causal block).
    """
    if query_run.stride != key_run.stride:
        raise InputError("key_run", key_run, f"a run of stride {query_run.stride} like the query run")
    nq, nk = query_run.count, key_run.count
    if nq == 0 or nk == 0:
        return []
    if not causal:
        return [PairBlock((0, nq), (0, nk), False)]
    c = (query_run.start - key_run.start) // query_run.stride
    first = min(max(0, -c), nq)  # first row with a visible key
    full = min(max(first, nk - 1 - c), nq)  # first row that sees every key
    blocks = []
    if full > first:
        blocks.append(PairBlock((first, full), (0, full + c), True))
    if nq > full:
        blocks.append(PairBlock((full, nq), (0, nk), False))
    return blocks


def step_blocks(query_runs: list[Run], key_runs: list[Run], causal: bool = True) -> list[PairBlock]:
    """The attention calls of one ring step, in shard-local rows and keys: :func:`pair_blocks` of every pair of runs, fused.

    Rows and keys index the shards (the runs laid end to end).  Full blocks
    that together form a rectangle are fused into one call: with zig-zag, the
    late query block against both key blocks (or both query blocks against
    the early key block) is one call of ``n/2 x n`` (``n x n/2``) instead of
    two, as torch's context parallelism runs it.
    """
    q_first = _run_rows(query_runs)
    k_first = _run_rows(key_runs)
    causal_blocks, full = [], []
    for q_run, q0 in zip(query_runs, q_first):
        for k_run, k0 in zip(key_runs, k_first):
            for block in pair_blocks(q_run, k_run, causal):
                local = PairBlock((q0 + block.rows[0], q0 + block.rows[1]), (k0 + block.keys[0], k0 + block.keys[1]), block.causal)
                (causal_blocks if block.causal else full).append(local)
    for axis in (1, 0):  # fuse along the keys (same rows), then along the rows (same keys)
        full.sort(key=lambda b: (b[1 - axis], b[axis]))
        fused = []
        for block in full:
            last = fused[-1] if fused else None
            if last is not None and last[1 - axis] == block[1 - axis] and last[axis][1] == block[axis][0]:
                span = (last[axis][0], block[axis][1])
                fused[-1] = PairBlock(span, last.keys, False) if axis == 0 else PairBlock(last.rows, span, False)
            else:
                fused.append(block)
        full = fused
    return causal_blocks + full


def _block_scores(block: PairBlock) -> int:
    """Unmasked (query, key) pairs of a block."""
    q = block.rows[1] - block.rows[0]
    k = block.keys[1] - block.keys[0]
    if not block.causal:
        return q * k
    return q * (k - q) + q * (q + 1) // 2  # row i sees k - q + i + 1 keys


def pair_vertical_slash(vertical_idx, slash_idx, query_run: Run, key_run: Run, block: PairBlock):
    """The vertical-slash lists of one :class:`PairBlock`, in the block's local indices.

    ``vertical_idx`` (global key columns) and ``slash_idx`` (global distances
    ``i - j``), each ``(batch, heads, n)`` with ``-1`` padding.  Returns the
    lists :func:`yarnref.sparse.vertical_slash_attention` (``causal=block.causal``)
    needs for the block's queries and keys: the columns in the block's keys,
    and the distances that occur between them, re-indexed.  With ``qa - ka =
    s c + rho``, a global distance is ``s d + rho`` for the local distance
    ``d`` of a causal block (the row of local index ``i`` is at local position
    ``i + c``), and ``s (d - nk + i0 + c) + rho`` for a full block over rows
    from ``i0`` (row ``i`` at local position ``nk + i - i0``).
    """
    vertical = np.asarray(vertical_idx, dtype=np.int64)
    slash = np.asarray(slash_idx, dtype=np.int64)
    s = query_run.stride
    c, rho = divmod(query_run.start - key_run.start, s)
    k0, k1 = block.keys
    # Verticals: global column g is local key (g - ka) / s - k0 when it lies on the key run's block.
    local_v = vertical - key_run.start
    on_run = (vertical >= 0) & (local_v % s == 0)
    local_v = local_v // s - k0
    keep_v = on_run & (local_v >= 0) & (local_v < k1 - k0)
    # Slashes: global distance delta = s * (local distance + shift) + rho.
    shift = 0 if block.causal else c + block.rows[0] - (k1 - k0)
    local_s = slash - rho
    keep_s = (slash >= 0) & (local_s % s == 0)
    local_s = local_s // s - shift
    keep_s &= local_s >= 0
    return _pack(np.where(keep_v, local_v, -1)), _pack(np.where(keep_s, local_s, -1))


def _pack(idx: np.ndarray) -> np.ndarray:
    """Move each row's valid entries (``>= 0``) first, cut to the widest row (at least one column of ``-1``)."""
    order = np.argsort(idx < 0, axis=-1, kind="stable")
    packed = np.take_along_axis(idx, order, axis=-1)
    width = max(1, int((idx >= 0).sum(-1).max(initial=0)))
    return packed[..., :width]


# ----------------------------------------------------------------------------- the schedule


class RingSchedule(NamedTuple):
    """Who computes what at each ring step (:func:`ring_schedule`).

    ``key_shard[t, r]``: the K/V shard device ``r`` holds at step ``t``;
    ``scores[t, r]``: the unmasked (query, key) pairs of real tokens it
    computes then; ``positions[r]``: the positions device ``r`` holds (its
    queries, and the keys it sends into the ring at step 0; padding included,
    marked by ``>= seq_len``).
    """

    layout: str
    world_size: int
    seq_len: int
    key_shard: np.ndarray
    scores: np.ndarray
    positions: list

    @property
    def work(self) -> np.ndarray:
        """Each device's total unmasked scores, ``(world_size,)``."""
        return self.scores.sum(axis=0)

    @property
    def imbalance(self) -> float:
        """The busiest device's work over the mean: 1.0 is perfect balance.

        A ring step lasts as long as its busiest device, so the ring's time
        is ``sum_t max_r scores[t, r]``; :attr:`step_imbalance` is that over the
        ideal ``total / P``.
        """
        return float(self.work.max() / self.work.mean())

    @property
    def step_imbalance(self) -> float:
        """``sum_t max_r scores[t, r]`` over ``sum / P``: how much longer the ring runs than perfectly balanced work."""
        return float(self.scores.max(axis=1).sum() / (self.scores.sum() / self.world_size))


def ring_schedule(seq_len, world_size, layout="contiguous", causal=True) -> RingSchedule:
    """The per-device, per-step work of ring attention: which K/V shard, how many unmasked scores.

    Only real tokens count (the padding of uneven lengths is excluded).
    """
    seq_len = check_int("seq_len", seq_len)
    world_size = check_world_size(world_size)
    layout = check_layout(layout)
    causal = check_bool("causal", causal)
    positions = shard_positions(seq_len, world_size, layout)
    key_shard = np.array([[ring_source(r, t, world_size) for r in range(world_size)] for t in range(world_size)])
    scores = np.zeros((world_size, world_size), dtype=np.int64)
    for t in range(world_size):
        for r in range(world_size):
            qp = positions[r][positions[r] < seq_len]
            kp = np.sort(positions[key_shard[t, r]][positions[key_shard[t, r]] < seq_len])
            # Keys at or before each query position (every key without the causal mask).
            scores[t, r] = np.searchsorted(kp, qp, side="right").sum() if causal else qp.size * kp.size
    return RingSchedule(layout, world_size, seq_len, key_shard, scores, positions)


# ----------------------------------------------------------------------------- the ring


def _check_ring(q, k, v, world_size, layout, causal):
    allowed = "a 4-D floating-point array (batch, heads, seq, head_dim)"
    q, k, v = (check_array_like(name, a, allowed) for name, a in (("q", q), ("k", k), ("v", v)))
    _, _, _, q_len, kv_len, head_dim = check_qkv(q, k, v, same_len=True)
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(name, f"dtype {a.dtype}", "a floating-point array")
    check_same_dtype(q=q, k=k, v=v)
    world_size = check_world_size(world_size)
    layout = check_layout(layout)
    causal = check_bool("causal", causal)
    if not causal and padded_length(q_len, world_size, layout) != q_len:
        multiple = world_size * _blocks_per_device(layout)
        raise InputError("q", f"seq_len={q_len}", f"a multiple of {multiple} when causal=False (padding keys would be seen)")
    return q, k, v, q_len, head_dim, world_size, layout, causal


def _run_rows(runs: list[Run]) -> list[int]:
    """The first local row of each run of a shard."""
    return list(np.cumsum([0] + [run.count for run in runs])[:-1])


def _ring(world_size, step_attention):
    """The ring loop shared by every kind of attention.

    ``step_attention(r, s)`` returns the list of partial ``(out, lse)`` of
    device ``r``'s queries (full local length, lse ``-inf`` where a row saw no
    key) against K/V shard ``s``.  Returns each device's merged ``(out, lse)``.
    """
    results = [None] * world_size
    for t in range(world_size):
        for r in range(world_size):  # in a real ring these run at once, one per device
            parts = step_attention(r, ring_source(r, t, world_size))
            if results[r] is not None:
                parts = [results[r], *parts]
            if parts:
                results[r] = merge_attention([o for o, _ in parts], [l for _, l in parts])
    return results  # never None: at step 0 every device holds its own shard, and each row sees itself


def _place(rows: tuple[int, int], n: int, out, lse):
    """A partial result of rows ``[r0, r1)`` widened to ``n`` rows (other rows: out 0, lse ``-inf``)."""
    b, h, _, dv = out.shape
    full_out = np.zeros((b, h, n, dv), dtype=np.float64)
    full_lse = np.full((b, h, n), -np.inf)
    full_out[:, :, rows[0] : rows[1]] = out
    full_lse[:, :, rows[0] : rows[1]] = lse
    return full_out, full_lse


def _finish(results, q, seq_len, layout, return_lse):
    out = unshard([o for o, _ in results], seq_len, layout).astype(q.dtype, copy=False)
    if not return_lse:
        return out
    return out, unshard([l[..., None] for _, l in results], seq_len, layout)[..., 0]


def ring_attention(q, k, v, world_size, layout="contiguous", causal=True, scale=None, return_lse=False):
    """Softmax attention computed as ``world_size`` devices in a ring would: the sharded, stepwise, LSE-merged form.

    ``q``, ``k``, ``v``: ``(batch, heads, seq, head_dim)`` (GQA allowed; one
    length for all three, the sequence being sharded).  ``layout``:
    ``"contiguous"``, ``"zigzag"`` or ``"striped"``.  Equal to
    :func:`yarnref.softmax_attention.attention` (``q_len == kv_len``) to float64
    rounding.  Returns ``out`` in q's dtype, and with ``return_lse`` the
    float64 lse ``(batch, heads, seq)``.
    """
    q, k, v, seq_len, head_dim, world_size, layout, causal = _check_ring(q, k, v, world_size, layout, causal)
    scale = check_scale(scale, head_dim)
    return_lse = check_bool("return_lse", return_lse)
    check_logits_fit(q, k, scale, v=v)
    runs = shard_runs(seq_len, world_size, layout)
    qs, ks, vs = (shard(x.astype(np.float64), world_size, layout) for x in (q, k, v))  # each P x (b, h, n, d)

    def step_attention(r, s):
        parts = []
        n = qs[r].shape[2]
        for block in step_blocks(runs[r], runs[s], causal):
            (r0, r1), keys = block.rows, slice(*block.keys)
            o, l = attention(qs[r][:, :, r0:r1], ks[s][:, :, keys], vs[s][:, :, keys], block.causal, scale, return_lse=True)
            parts.append(_place(block.rows, n, o, l))
        return parts

    return _finish(_ring(world_size, step_attention), q, seq_len, layout, return_lse)


# ----------------------------------------------------------------------------- DCA on the ring


def chunk_pieces(run: Run, chunk_len: int) -> list[tuple[int, Run, int]]:
    """Split a run at the chunk borders (multiples of ``chunk_len``): ``(first local row, sub-run, chunk index)`` per piece."""
    positions = run.positions()
    chunk = positions // chunk_len
    borders = np.flatnonzero(np.diff(chunk)) + 1
    starts = [0, *borders.tolist()]
    stops = [*borders.tolist(), run.count]
    return [(a, Run(int(positions[a]), run.stride, b - a), int(chunk[a])) for a, b in zip(starts, stops)]


def run_range(run: Run, low: int, high: int) -> tuple[int, int]:
    """The local rows ``[a, b)`` of a run whose positions lie in ``[low, high)`` (``a == b`` if none)."""
    a = -(-(low - run.start) // run.stride)
    b = -(-(high - run.start) // run.stride)
    return min(max(a, 0), run.count), min(max(b, 0), run.count)


def ring_dca_attention(
    q,
    k,
    v,
    inv_freq,
    chunk_size,
    local_size,
    world_size,
    layout="zigzag",
    scale=None,
    *,
    pairing="half",
    attention_factor=1.0,
    pi_factor=1.0,
    temperature="none",
    max_position_embeddings=None,
    original_max_position_embeddings=None,
    return_lse=False,
):
    """Dual Chunk Attention (:func:`yarnref.dca.dca_attention`, prefill) on a ring of ``world_size`` devices.

    Each device rotates its own keys once to their DCA key positions
    (``p mod L``) before they enter the ring, and its queries to their three
    DCA query positions (intra, successive, inter; :func:`yarnref.dca.dca_position_ids`).
    At each step a query piece (the part of a query run inside one chunk)
    meets the key run cut into the same chunk (intra, causal), the previous
    chunk (successive) and the ones before (inter), each through
    :func:`pair_blocks`.  Equal to ``dca_attention(q, k, v, inv_freq,
    chunk_size, local_size, ...)`` with the same options, to float64
    rounding.  ``q``, ``k`` un-rotated, one length; returns ``out`` (and the
    float64 lse).
    """
    q, k, v, seq_len, head_dim, world_size, layout, _ = _check_ring(q, k, v, world_size, layout, True)
    freqs = check_array_like("inv_freq", inv_freq, "a 1-D float array of r/2 finite frequencies")
    if freqs.ndim != 1 or freqs.size == 0 or 2 * freqs.size > head_dim or not np.issubdtype(freqs.dtype, np.floating) or not np.all(np.isfinite(freqs)):
        raise InputError("inv_freq", f"array of shape {freqs.shape} and dtype {freqs.dtype}", f"a 1-D float array of r/2 finite frequencies, 1 <= r/2 <= head_dim/2 = {head_dim // 2}")
    freqs = freqs.astype(np.float64)
    scale = check_scale(scale, head_dim)
    check_option("pairing", pairing, DCA_PAIRINGS)
    attention_factor = check_positive_real("attention_factor", attention_factor)
    pi_factor = check_positive_real("pi_factor", pi_factor)
    return_lse = check_bool("return_lse", return_lse)
    factors = dca_temperature(
        temperature, seq_len, max_position_embeddings=max_position_embeddings, original_max_position_embeddings=original_max_position_embeddings
    )
    key_factor = float(np.max(factors.key)) if np.size(factors.key) else 1.0
    check_logits_fit(q, k, scale, factor=2.0 * (attention_factor * factors.table) ** 2 * factors.query * key_factor, v=v)
    total = padded_length(seq_len, world_size, layout)
    ids = dca_position_ids(total, chunk_size, local_size)  # checks the sizes; covers the padding too
    chunk_len = chunk_size - local_size
    key_factor = np.concatenate([factors.key, np.ones(total - seq_len)])  # padding keys are never seen
    table = attention_factor * factors.table
    runs = shard_runs(seq_len, world_size, layout)
    positions = shard_positions(seq_len, world_size, layout)
    qs, ks, vs = (shard(x.astype(np.float64), world_size, layout) for x in (q, k, v))

    def rotate(x, at):
        cos, sin = rope_cos_sin(freqs, at / pi_factor, table)  # (n, r/2)
        return apply_rope(x, cos, sin, pairing)

    # Before the ring: every device rotates its keys (they travel rotated) and its queries, per part.
    ks = [rotate(kr, ids.key[p]) * key_factor[p][:, None] for kr, p in zip(ks, positions)]
    q_parts = [
        {part: rotate(qr, getattr(ids, part)[p]) * (scale * factors.query) for part in ("intra", "successive", "inter")}
        for qr, p in zip(qs, positions)
    ]

    def step_attention(r, s):
        parts = []
        n = qs[r].shape[2]
        for q_run, q0 in zip(runs[r], _run_rows(runs[r])):
            for first, piece, chunk in chunk_pieces(q_run, chunk_len):
                cs = chunk * chunk_len  # the piece's chunk starts here
                ranges = {"intra": (cs, cs + chunk_len), "successive": (cs - chunk_len, cs), "inter": (0, cs - chunk_len)}
                for part, (low, high) in ranges.items():
                    for k_run, k0 in zip(runs[s], _run_rows(runs[s])):
                        a, b = run_range(k_run, max(low, 0), high)
                        if b <= a:
                            continue
                        sub = Run(k_run.start + a * k_run.stride, k_run.stride, b - a)
                        for block in pair_blocks(piece, sub, True):
                            rows = (q0 + first + block.rows[0], q0 + first + block.rows[1])
                            keys = slice(k0 + a + block.keys[0], k0 + a + block.keys[1])
                            qp = q_parts[r][part][:, :, rows[0] : rows[1]]
                            o, l = attention(qp, ks[s][:, :, keys], vs[s][:, :, keys], block.causal, 1.0, return_lse=True)
                            parts.append(_place(rows, n, o, l))
        return parts

    return _finish(_ring(world_size, step_attention), q, seq_len, layout, return_lse)


# ----------------------------------------------------------------------------- vertical-slash on the ring


def _check_list(name, idx, batch_heads, seq_len) -> np.ndarray:
    """A ``(batch, q_heads, n)`` integer index list with entries in ``[0, seq_len)`` or ``-1``."""
    a = check_array_like(name, idx, "a (batch, q_heads, n) integer array")
    if a.ndim != 3 or tuple(a.shape[:2]) != tuple(batch_heads) or a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise InputError(name, f"array of shape {a.shape} and dtype {a.dtype}", f"a (batch, q_heads, n) integer array with (batch, q_heads) = {tuple(batch_heads)}")
    bad = (a != -1) & ((a < 0) | (a >= seq_len))
    if np.any(bad):
        raise InputError(name, f"an entry {int(a[bad][0])}", f"entries in [0, {seq_len}) or -1 for padding")
    return a.astype(np.int64)


def check_kernel_layout(seq_len, world_size, layout, block_size_m=64) -> list[list[Run]]:
    """The shard runs of ``layout`` if every run starts at a multiple of ``block_size_m``, else :class:`~yarnref.errors.InputError`.

    Kernel-mode vertical-slash attention on the ring (:func:`ring_vertical_slash_attention`)
    needs each run of queries to consist of whole single-device row blocks:
    runs of consecutive positions (not striped, for ``P > 1``) whose starts
    are multiples of ``block_size_m``.  Contiguous: ``padded_length / P`` a
    multiple of ``block_size_m``; zig-zag: ``padded_length / 2P`` one.
    """
    runs = shard_runs(seq_len, world_size, layout)
    flat = [run for device in runs for run in device]
    if any(run.stride != 1 for run in flat):
        raise InputError("layout", layout, f"'contiguous' or 'zigzag' for mode='kernel' with {world_size} devices (striped runs are not whole row blocks)")
    if any(run.start % block_size_m for run in flat):
        multiple = world_size * _blocks_per_device(layout) * block_size_m
        raise InputError(
            "q", f"seq_len={seq_len}",
            f"a length whose {layout} shard runs start at multiples of block_size_m={block_size_m} for mode='kernel' "
            f"(a multiple of {multiple}, or a few tokens less: the padding fills it)",
        )
    return runs


def run_kernel_lists(vertical_idx, slash_idx, query_run: Run, block_size_m=64, block_size_n=64):
    """The kernel's block/column lists of a query run ``[a, b)``: :func:`yarnref.sparse.convert_vertical_slash_indexes` ``(b - a, b, ...)``.

    Rows ``[a, b)`` of the causal problem are the last ``b - a`` queries of
    the keys ``[0, b)``, so with ``a`` a multiple of ``block_size_m`` the
    conversion of that smaller problem lists, for each row block, what the
    single-device conversion of the whole sequence lists for the same rows
    (blocks starting at ``b`` or later aside: no row of the run sees them).
    Verticals at ``b`` or later are dropped first (no row of the run sees
    them, and they leave the merge unchanged: the kernels' end-of-verticals
    marker lies past every range too).  Global key indices.
    """
    a, b = query_run.start, query_run.start + query_run.count
    vertical = np.where(np.asarray(vertical_idx) < b, vertical_idx, -1)
    return convert_vertical_slash_indexes(b - a, b, vertical, slash_idx, block_size_m, block_size_n, causal=True)


def restrict_kernel_lists(converted, key_run: Run, block_size_n=64):
    """A query run's kernel lists (:func:`run_kernel_lists`) restricted to the keys of one key run, in its local indices.

    For every row block: a listed block ``[o, o + BN)`` inside the key run
    ``[ka, kb)`` stays a block at ``o - ka``; a block straddling an edge of the
    key run gives its keys inside the run as columns; a listed column inside
    the run stays a column at ``c - ka``.  Every listed key inside the run is
    therefore listed exactly as often as before (the kernels count a key
    listed twice twice), and the key sets over all key runs put together are
    the query run's.  Returns the four int32 arrays, ``-1`` past the counts.
    """
    block_count, block_offset, column_count, column_index = converted
    ka, kb = key_run.start, key_run.start + key_run.count
    lists = {}
    for index in np.ndindex(*block_count.shape):  # (batch, head, row block)
        blocks, columns = [], []
        for o in block_offset[index][: block_count[index]].tolist():
            lo, hi = max(o, ka), min(o + block_size_n, kb)
            if (lo, hi) == (o, o + block_size_n):
                blocks.append(o - ka)  # inside the key run
            elif lo < hi:
                columns.extend(range(lo - ka, hi - ka))  # straddles an edge: its part inside, as columns
        columns += [c - ka for c in column_index[index][: column_count[index]].tolist() if ka <= c < kb]
        lists[index] = blocks, columns
    width_b = max([len(b) for b, _ in lists.values()] + [1])
    width_c = max([len(c) for _, c in lists.values()] + [1])
    out_count, out_offset = np.zeros(block_count.shape, np.int32), np.full(block_count.shape + (width_b,), -1, np.int32)
    out_ccount, out_columns = np.zeros(block_count.shape, np.int32), np.full(block_count.shape + (width_c,), -1, np.int32)
    for index, (blocks, columns) in lists.items():
        out_count[index], out_ccount[index] = len(blocks), len(columns)
        out_offset[index][: len(blocks)] = blocks
        out_columns[index][: len(columns)] = columns
    return out_count, out_offset, out_ccount, out_columns


def ring_vertical_slash_attention(
    q, k, v, vertical_idx, slash_idx, world_size, layout="zigzag", scale=None, return_lse=False, *, mode="kernel", block_size_m=64, block_size_n=64
):
    """Vertical-slash sparse attention on a ring of ``world_size`` devices, in both key-set modes.

    ``vertical_idx`` (global key columns) and ``slash_idx`` (global
    distances), ``(batch, q_heads, n)`` with ``-1`` padding, as
    :func:`yarnref.sparse.vertical_slash_indices` returns them (estimated on
    the whole sequence: the last queries' scores need every key, so a real
    ring estimates them first, on the device holding the last queries, and
    broadcasts the lists).  Equal to ``vertical_slash_attention(q, k, v,
    vertical_idx, slash_idx, mode=mode)`` (causal) to float64 rounding.

    ``mode="exact"``: each partial attention uses the lists restricted to its
    (query run, key run) block (:func:`pair_vertical_slash`); every layout.

    ``mode="kernel"`` (default, as :func:`yarnref.sparse.vertical_slash_attention`):
    the kernels' key sets, which are defined per single-device row block of
    ``block_size_m`` queries.  A shard run that starts at a multiple of
    ``block_size_m`` consists of whole row blocks (:func:`check_kernel_layout`:
    contiguous and zig-zag with suitable lengths; striped and other lengths
    are refused), and its rows ``[a, b)`` are the last queries of keys
    ``[0, b)``, so converting that problem once per query run gives exactly
    the single-device lists of those row blocks (:func:`run_kernel_lists`).
    Each (query run, key run) block then uses those lists restricted to the
    key run (:func:`restrict_kernel_lists`: blocks inside kept, straddling
    blocks as their inside columns, columns inside kept, every multiplicity
    kept), bottom-right causal on the diagonal block (the key run is the query
    run) and unmasked for a key run before the query run.  Every listed key
    thus lands in exactly one block with its count and its causal test, which
    is why the merged result is the single-device one.
    """
    q, k, v, seq_len, head_dim, world_size, layout, _ = _check_ring(q, k, v, world_size, layout, True)
    scale = check_scale(scale, head_dim)
    return_lse = check_bool("return_lse", return_lse)
    mode = check_option("mode", mode, VS_MODES)
    block_size_m = check_int("block_size_m", block_size_m, 1)
    block_size_n = check_int("block_size_n", block_size_n, block_size_m)
    check_logits_fit(q, k, scale, v=v)
    vertical_idx = _check_list("vertical_idx", vertical_idx, q.shape[:2], seq_len)
    slash_idx = _check_list("slash_idx", slash_idx, q.shape[:2], seq_len)
    if mode == "kernel":
        runs = check_kernel_layout(seq_len, world_size, layout, block_size_m)
    else:
        runs = shard_runs(seq_len, world_size, layout)
    qs, ks, vs = (shard(x.astype(np.float64), world_size, layout) for x in (q, k, v))

    def exact_step(r, s):
        parts = []
        n = qs[r].shape[2]
        for q_run, q0 in zip(runs[r], _run_rows(runs[r])):
            for k_run, k0 in zip(runs[s], _run_rows(runs[s])):
                for block in pair_blocks(q_run, k_run, True):
                    vertical, slash = pair_vertical_slash(vertical_idx, slash_idx, q_run, k_run, block)
                    rows = (q0 + block.rows[0], q0 + block.rows[1])
                    keys = slice(k0 + block.keys[0], k0 + block.keys[1])
                    o, l = vertical_slash_attention(
                        qs[r][:, :, rows[0] : rows[1]], ks[s][:, :, keys], vs[s][:, :, keys], vertical, slash,
                        mode="exact", scale=scale, return_lse=True, causal=block.causal,
                    )
                    parts.append(_place(rows, n, o, l))
        return parts

    # Kernel mode: each device converts the lists of its query runs once, before the ring.
    run_lists = {}
    if mode == "kernel":
        run_lists = {
            (r, i): run_kernel_lists(vertical_idx, slash_idx, q_run, block_size_m, block_size_n)
            for r in range(world_size) for i, q_run in enumerate(runs[r])
        }

    def kernel_step(r, s):
        parts = []
        n = qs[r].shape[2]
        for i, (q_run, q0) in enumerate(zip(runs[r], _run_rows(runs[r]))):
            for k_run, k0 in zip(runs[s], _run_rows(runs[s])):
                if k_run.start > q_run.start:
                    continue  # a later key run: no row of the query run sees it
                diagonal = k_run.start == q_run.start
                lists = restrict_kernel_lists(run_lists[r, i], k_run, block_size_n)
                rows = slice(q0, q0 + q_run.count)
                keys = slice(k0, k0 + k_run.count)
                key_lists = _kernel_key_lists(lists, q_run.count, k_run.count, diagonal, block_size_n)
                o, l = _gathered_attention(qs[r][:, :, rows], ks[s][:, :, keys], vs[s][:, :, keys], scale, block_size_m, key_lists)
                parts.append(_place((rows.start, rows.stop), n, o, l))
        return parts

    step_attention = kernel_step if mode == "kernel" else exact_step
    return _finish(_ring(world_size, step_attention), q, seq_len, layout, return_lse)
