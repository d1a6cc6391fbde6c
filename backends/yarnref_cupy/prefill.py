"""The split of a segment's index sets between its DCA parts, on the CuPy backend's device.

The same method as the torch backend's (see
:func:`yarnref.prefill.split_sparse_parts` for the spec): in a row sorted
ascending the entries ``low <= x <= high`` start after the ``count(x <
low)`` smaller ones, in a row sorted descending after the ``count(x >
high)`` larger ones, and each part's list is one gather of its run.  One
small read-back (the run lengths, which give the widths); the index sets
stay on the device.  ``xp`` is CuPy, or NumPy in the test shim.
"""

from __future__ import annotations

from yarnref.checks import check_index_groups
from yarnref.errors import InputError
from yarnref.prefill import SparsePart, part_runs, sorted_rows_disorder, sparse_part_ranges, split_layout

__all__ = ["split_sparse_parts"]


def _index_groups(xp, device, name: str, groups) -> list:
    arrays = []
    for i, g in enumerate(check_index_groups(name, groups)):
        a = device.asarray(g, f"{name}[{i}]")
        if a.dtype.kind not in "iu":
            raise InputError(f"{name}[{i}]", f"array of dtype {a.dtype}", "a (batch, heads, n) integer array")
        arrays.append(a.astype(xp.int64, copy=False))
    return arrays


def _pad_join(xp, groups: list):
    """``(batch, heads_i, n_i)`` arrays joined along the heads, ``-1``-padded to the widest."""
    if len(groups) == 1:
        return groups[0]
    width = max(g.shape[-1] for g in groups)
    return xp.concatenate([xp.pad(g, ((0, 0), (0, 0), (0, width - g.shape[-1])), constant_values=-1) for g in groups], axis=1)


def _gather_run(xp, idx, first, count, width: int, shift: int, fallback):
    if idx.shape[-1] == 0:  # nothing to gather from: every run is empty
        idx = xp.full(idx.shape[:2] + (1,), -1, dtype=xp.int64)
    slots = xp.arange(width)
    position = xp.minimum(first[..., None] + slots, idx.shape[-1] - 1)  # (batch, heads, width)
    out = xp.where(slots < count[..., None], xp.take_along_axis(idx, position, axis=-1) + shift, -1)
    if fallback is not None:
        padded = xp.full((width,), -1, dtype=xp.int64)
        padded[: fallback.size] = fallback
        out = xp.where((count == 0)[..., None], padded, out)
    return out.astype(xp.int64, copy=False)


def split_sparse_parts(xp, device, verticals, slashes, begin, end, chunk_start, chunk_len):
    """:func:`yarnref.prefill.split_sparse_parts` on the device: int64 arrays, one small read-back."""
    ranges = sparse_part_ranges(begin, end, chunk_start, chunk_len)
    vertical = _pad_join(xp, _index_groups(xp, device, "verticals", verticals))
    slash = _pad_join(xp, _index_groups(xp, device, "slashes", slashes))
    lists = part_runs(vertical, slash, ranges)  # (part, which, idx, range, first, count)
    counts = xp.stack([count for *_, count in lists])  # (lists, batch, heads)
    flags = xp.stack([sorted_rows_disorder(vertical, False).any(), sorted_rows_disorder(slash, True).any()])
    summary = device.to_numpy(xp.concatenate([counts.max(axis=(1, 2)), counts.min(axis=(1, 2)), flags.astype(xp.int64)])).tolist()  # the one read-back
    out = {}
    for (name, which, idx, kept, first, count), (width, fallback) in zip(lists, split_layout(summary, [l[3] for l in lists])):
        if fallback is not None:  # vLLM's [0, s, 2s, ...] made on the device
            fallback = xp.arange(fallback[0], dtype=xp.int64) * fallback[1]
        out[name, which] = _gather_run(xp, idx, first, count, width, kept.shift, fallback)
    parts = {name: SparsePart(r.keys, r.causal, out[name, "vertical"], out[name, "slash"]) for name, r in ranges.items()}
    return vertical, slash, parts
