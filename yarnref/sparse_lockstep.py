r"""The vertical-slash index conversion, vectorised: every row block of every head steps together.

:func:`yarnref.sparse.convert_vertical_slash_indexes` is the readable form:
one row block of one head at a time, the sequential merge of vLLM's
``convert_vertical_slash_indexes`` kernel (MInference, arXiv:2407.02490,
section 3; ``csrc/attention/vertical_slash_index.cu``).  A Python loop over
``batch * heads * ceil(q_len / BM)`` row blocks, each a loop over its
verticals and slashes, is too slow for real lengths, so the spec's attention
and the torch backend run this form instead, and the tests hold it equal to
the readable one, list for list.

The idea: the CUDA kernel runs one thread per (batch, head, row block)
*lane*; here every lane is one entry of a vector, and one loop step advances
every lane by one step of the merge (consume a vertical, consume a slash, or
finish).  A lane consumes each of its verticals and slashes once, so the loop
runs at most ``n_vertical + n_slash + 4`` times, whatever the number of lanes.
The leading slashes that reach no row of a block (``delta >= m1 + off``) are
skipped in one batched binary search instead of one step each.

The code is written once for any array namespace: ``xp`` is ``numpy``,
``cupy`` or ``torch``, and the few operations whose spelling differs
between NumPy and torch go through :class:`_Ops`.

Conventions: those of :mod:`yarnref.sparse` (``-1`` padding, any input
order, sorted here; distances ``delta = position(i) - j``; causal bottom-right,
``causal=False`` puts the queries right after the keys).  Inputs are already
validated int64 arrays; outputs are int32 arrays of the input's namespace and
device.
"""

from __future__ import annotations

__all__ = ["conversion_capacity", "sort_indices", "convert_lockstep"]

_INT64_MAX = 2**63 - 1


class _Ops:
    """The operations whose names differ between NumPy-like namespaces (NumPy, CuPy) and torch."""

    def __init__(self, xp, like):
        self.xp = xp
        self.is_torch = getattr(xp, "__name__", "") == "torch"
        self.int64 = xp.int64
        self.bool = xp.bool if self.is_torch else xp.bool_
        self.device = like.device if self.is_torch else None

    def full(self, shape, value, dtype=None):
        dtype = self.int64 if dtype is None else dtype
        if self.is_torch:
            return self.xp.full(shape, value, dtype=dtype, device=self.device)
        return self.xp.full(shape, value, dtype=dtype)

    def arange(self, n: int):
        if self.is_torch:
            return self.xp.arange(n, dtype=self.int64, device=self.device)
        return self.xp.arange(n, dtype=self.int64)

    def repeat(self, a, repeats):
        """Each entry ``repeats`` times (an int, or one count per entry), in order."""
        return self.xp.repeat_interleave(a, repeats) if self.is_torch else self.xp.repeat(a, repeats)

    def tile(self, a, n: int):
        """The whole of ``a``, ``n`` times over."""
        return a.repeat(n) if self.is_torch else self.xp.tile(a, n)

    def nonzero(self, mask):
        """The indices where a 1-D mask is true."""
        return self.xp.nonzero(mask)[:, 0] if self.is_torch else self.xp.flatnonzero(mask)

    def cumsum(self, a):
        return self.xp.cumsum(a, 0) if self.is_torch else self.xp.cumsum(a)

    def concat(self, arrays, axis: int):
        return self.xp.cat(arrays, dim=axis) if self.is_torch else self.xp.concatenate(arrays, axis=axis)

    def sort(self, a, descending: bool = False):
        """``a`` sorted along its last axis."""
        if self.is_torch:
            return self.xp.sort(a, dim=-1, descending=descending).values
        return -self.xp.sort(-a, axis=-1) if descending else self.xp.sort(a, axis=-1)

    def clip(self, a, low=None, high=None):
        """``a`` clipped to ``[low, high]`` (Python ints)."""
        if self.is_torch:
            return self.xp.clamp(a, min=low, max=high)
        if low is not None:
            a = self.xp.maximum(a, low)
        return a if high is None else self.xp.minimum(a, high)

    def searchsorted_right(self, sorted_1d, values):
        """For each value, how many entries of the ascending 1-D ``sorted_1d`` are ``<= value``."""
        if self.is_torch:
            return self.xp.searchsorted(sorted_1d, values, right=True)
        return self.xp.searchsorted(sorted_1d, values, side="right")

    def int32(self, a):
        return a.to(self.xp.int32) if self.is_torch else a.astype(self.xp.int32)


def conversion_capacity(n_vertical: int, n_slash: int, block_size_m: int, block_size_n: int) -> tuple[int, int]:
    """Widths of ``column_index`` and ``block_offset``: one column per vertical; every slash yields at most ``ceil(BM / BN)`` blocks."""
    return max(n_vertical, 1), max(n_slash, 1) * -(-block_size_m // block_size_n)


def sort_indices(xp, vertical, slash):
    """Verticals ascending and slashes descending, each with its ``-1`` padding last; the valid counts.

    ``vertical``, ``slash``: int64 ``(batch, heads, n)``.  Returns
    ``(verts, n_verts, slashes, n_slashes)``, the counts ``(batch, heads)``.
    """
    ops = _Ops(xp, vertical)
    verts = ops.sort(xp.where(vertical < 0, _INT64_MAX, vertical))  # padding moved past every column ...
    verts = xp.where(verts == _INT64_MAX, -1, verts)  # ... and back to -1
    slashes = ops.sort(slash, descending=True)  # -1 (padding) is below every distance
    return verts, (vertical >= 0).sum(-1), slashes, (slash >= 0).sum(-1)


def _append(ops, table, count, where, values) -> None:
    """``table[lane, count[lane]] = values[lane]; count[lane] += 1`` for the lanes in ``where``."""
    lanes = ops.nonzero(where)
    if lanes.shape[0]:
        if bool((count[lanes] >= table.shape[1]).any()):
            raise AssertionError("vertical-slash conversion overflowed its column buffer")  # impossible: one per vertical
        table[lanes, count[lanes]] = values[lanes]
        count[lanes] += 1


def _save_blocks(ops, table, count, where, range_start, range_end, kv_len: int, bn: int, clamp: bool) -> None:
    """Emit the block starts ``range_start, range_start + BN, ... < min(range_end, kv_len)`` for the lanes in ``where``.

    A range starting at or after ``kv_len`` emits nothing.  ``clamp=False``
    (MInference's converter): ``... < range_end``, whatever ``kv_len``.
    """
    limit = kv_len if clamp else _INT64_MAX
    lanes = ops.nonzero(where & (range_start < limit))
    if not lanes.shape[0]:
        return
    start = range_start[lanes]
    n_blocks = -(-(ops.clip(range_end[lanes], high=limit) - start) // bn)  # (lanes,) ceil
    lane = ops.repeat(lanes, n_blocks)  # one entry per emitted block
    k = ops.arange(lane.shape[0]) - ops.repeat(ops.cumsum(n_blocks) - n_blocks, n_blocks)  # 0, 1, .. within each lane
    slot = count[lane] + k
    if slot.shape[0] and bool((slot >= table.shape[1]).any()):
        raise AssertionError("vertical-slash conversion overflowed its block buffer")  # impossible: see the capacity
    table[lane, slot] = ops.repeat(start, n_blocks) + k * bn
    count[lanes] += n_blocks


def convert_lockstep(xp, q_len: int, kv_len: int, vertical, slash, block_size_m: int, block_size_n: int, causal: bool, *, clamp: bool = True):
    """:func:`yarnref.sparse.convert_vertical_slash_indexes` on validated arrays, every lane in lockstep.

    ``xp``: the namespace of ``vertical`` and ``slash`` (``numpy``, ``cupy``
    or ``torch``), int64 ``(batch, heads, n)`` arrays, any order, ``-1``
    padding; lengths and block sizes already checked (``block_size_n >=
    block_size_m``).  ``clamp=False`` is MInference's converter (block starts
    up to the range's end even past ``kv_len``).  Returns ``(block_count,
    block_offset, column_count, column_index)``, int32, shapes as the spec's.
    """
    ops = _Ops(xp, vertical)
    bm, bn = block_size_m, block_size_n
    verts, n_verts, slashes, n_slashes = sort_indices(xp, vertical, slash)
    batch, heads, width_v = verts.shape
    width_s = slashes.shape[-1]
    col_cap, blk_cap = conversion_capacity(width_v, width_s, bm, bn)
    n_rows = -(-q_len // bm)

    # One lane per (batch * head, row block).
    pairs = batch * heads
    lane_pair = ops.repeat(ops.arange(pairs), n_rows)  # (lanes,) the (batch, head) pair of each lane
    start_m = ops.tile(ops.arange(n_rows), pairs) * bm  # (lanes,) the row block's first row
    end_m = start_m + bm
    off = kv_len - q_len if causal else kv_len
    # A trailing zero column, so that reading "the next entry" past the last one stays in bounds.
    spare = ops.full((pairs, 1), 0)
    vert_tab = ops.concat([verts.reshape(pairs, width_v), spare], axis=1)
    slash_tab = ops.concat([slashes.reshape(pairs, width_s), spare], axis=1)
    nv = n_verts.reshape(pairs)[lane_pair]  # (lanes,) valid verticals of the lane's head
    ns = n_slashes.reshape(pairs)[lane_pair]

    far = end_m + bn + off  # "no vertical left": past every range
    v_idx = xp.where(nv > 0, vert_tab[lane_pair, 0], far)  # the lane's current vertical ...
    v = ops.clip(nv, high=1)  # ... and how many it has read

    # Skip the leading slashes that reach no row of the block (delta >= end_m + off).  With the slashes
    # descending these are the first `reach` of the head's list: count them with one binary search over
    # all pairs' lists laid end to end (list p shifted by p * stride so that the lists stay apart).
    beyond = n_rows * bm + off + 1  # every distance at or past this reaches no row block at all
    if width_s:
        negated = xp.where(slashes >= 0, -ops.clip(slashes, high=beyond), 1).reshape(pairs, width_s)  # ascending, padding last
        stride = beyond + 2
        shift = ops.arange(pairs) * stride
        keys = (negated + shift[:, None]).reshape(-1)
        found = ops.searchsorted_right(keys, -(end_m + off) + shift[lane_pair])
        reach = xp.minimum(found - lane_pair * width_s, ns)
    else:
        reach = ns * 0
    s = xp.where(ns > 0, xp.minimum(reach + 1, ns), 0)  # slashes read, the current one included
    s_idx = xp.where(ns > 0, slash_tab[lane_pair, ops.clip(s - 1, low=0)], end_m + off + 1)
    has_slash = s_idx <= end_m + off
    e = ops.clip(end_m + off - s_idx, low=bm)
    if causal:
        range_start = xp.where(has_slash, e - bm, end_m + off)
        range_end = xp.where(has_slash, e, end_m + off + bn)
    else:
        range_start = xp.where(has_slash, e - bm, kv_len)
        range_end = xp.where(has_slash, e, kv_len + bn)

    lanes = lane_pair.shape[0]
    column_index = ops.full((lanes, col_cap), -1)
    block_offset = ops.full((lanes, blk_cap), -1)
    column_count = ops.full((lanes,), 0)
    block_count = ops.full((lanes,), 0)
    slashes_done = ops.full((lanes,), False, dtype=ops.bool)
    active = ops.full((lanes,), True, dtype=ops.bool)

    # Each step a lane consumes a vertical or a slash, or finishes: at most width_v + width_s + 3 steps.
    for _ in range(width_v + width_s + 4):
        if not bool(active.any()):
            break
        on_vertical = active & (v_idx < range_end)
        on_slash = active & ~on_vertical
        # A vertical inside the current range's span: a column if below its start, else covered.
        _append(ops, column_index, column_count, on_vertical & (v_idx < range_start), v_idx)
        more = on_vertical & (v < nv)
        v_idx = xp.where(more, vert_tab[lane_pair, v], xp.where(on_vertical, far, v_idx))
        v = v + more
        # A vertical past the range: take the next slash, if any is left.
        next_delta = slash_tab[lane_pair, s]
        take = on_slash & (s < ns)
        if not causal:
            take = take & (next_delta >= start_m)
        e = ops.clip(end_m + off - next_delta, low=bm)
        out_of_slashes = on_slash & ~take
        finish = out_of_slashes & ((v == nv) | (causal & (v_idx > range_start)))
        if not causal:  # the last vertical, if it is a key, still becomes a column
            _append(ops, column_index, column_count, finish & (v == nv) & (v_idx < kv_len), v_idx)
        _save_blocks(ops, block_offset, block_count, finish, range_start, range_end, kv_len, bn, clamp)
        active = active & ~finish
        restart = out_of_slashes & ~finish  # slashes exhausted with verticals left (reachable only when non-causal)
        if causal:
            range_start = xp.where(restart, end_m + off, range_start)
            range_end = xp.where(restart, end_m + off + bn, range_end)
        else:
            _save_blocks(ops, block_offset, block_count, restart, range_start, range_end, kv_len, bn, clamp)
            range_start = xp.where(restart, kv_len, range_start)
            range_end = xp.where(restart, kv_len + bn, range_end)
        slashes_done = slashes_done | restart
        grow_from = take & ~slashes_done
        gap = grow_from & (e > range_end + bm)
        touch = grow_from & ~gap & (e > range_end)
        _save_blocks(ops, block_offset, block_count, gap, range_start, range_end, kv_len, bn, clamp)
        range_start = xp.where(gap, e - bm, range_start)
        range_end = xp.where(gap, e, xp.where(touch, range_end + bm, range_end))
        s = s + take
    if bool(active.any()):
        raise AssertionError("vertical-slash conversion did not terminate")  # impossible: see the step bound

    shape = (batch, heads, n_rows)
    return (
        ops.int32(block_count.reshape(shape)),
        ops.int32(block_offset.reshape(shape + (blk_cap,))),
        ops.int32(column_count.reshape(shape)),
        ops.int32(column_index.reshape(shape + (col_cap,))),
    )
