"""The split of a segment's index sets between its DCA parts, on the backend's device.

See :func:`yarnref.prefill.split_sparse_parts` (the spec: two binary
searches per row on the host) and :func:`yarnref.prefill.sparse_part_ranges`
(which entries each part keeps).  Here every row is handled at once: in a
row sorted ascending, the entries ``low <= x <= high`` start after the
``count(x < low)`` smaller ones, and in a row sorted descending after the
``count(x > high)`` larger ones; each part's list is one gather of its run.
The only read-back is one small tensor of run lengths (the widths of the
results), so the index sets never visit the host: the Qwen2.5-1M pipeline
estimates, splits and attends without the device waiting for the host's
bookkeeping.
"""

from __future__ import annotations

import torch

from yarnref.checks import check_index_groups
from yarnref.errors import InputError
from yarnref.prefill import SparsePart, part_runs, sorted_rows_disorder, sparse_part_ranges, split_layout

from ._arrays import ArrayConverter

__all__ = ["split_sparse_parts"]


def _index_groups(conv: ArrayConverter, name: str, groups) -> list[torch.Tensor]:
    tensors = []
    for i, g in enumerate(check_index_groups(name, groups)):
        t = conv.tensor(g, f"{name}[{i}]")
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise InputError(f"{name}[{i}]", f"array of dtype {t.dtype}", "a (batch, heads, n) integer array")
        tensors.append(t.to(torch.int64))
    return tensors


def _pad_join(groups: list[torch.Tensor]) -> torch.Tensor:
    """``(batch, heads_i, n_i)`` tensors joined along the heads, ``-1``-padded to the widest."""
    if len(groups) == 1:
        return groups[0]
    width = max(g.shape[-1] for g in groups)
    return torch.cat([torch.nn.functional.pad(g, (0, width - g.shape[-1]), value=-1) for g in groups], dim=1)


def _gather_run(idx, first, count, width: int, shift: int, fallback) -> torch.Tensor:
    """``(batch, heads, width)``: each row's run plus ``shift``, ``-1`` after it; rows with an empty run get
    ``fallback`` (if not None)."""
    if idx.shape[-1] == 0:  # nothing to gather from: every run is empty
        idx = torch.full(idx.shape[:2] + (1,), -1, dtype=torch.int64, device=idx.device)
    slots = torch.arange(width, device=idx.device)
    position = (first[..., None] + slots).clamp_(max=idx.shape[-1] - 1)  # (batch, heads, width)
    out = torch.where(slots < count[..., None], idx.gather(-1, position) + shift, -1)
    if fallback is not None:
        padded = torch.full((width,), -1, dtype=torch.int64, device=idx.device)
        padded[: fallback.numel()] = fallback
        out = torch.where((count == 0)[..., None], padded, out)
    return out


def split_sparse_parts(conv: ArrayConverter, verticals, slashes, begin, end, chunk_start, chunk_len):
    """:func:`yarnref.prefill.split_sparse_parts` on the device: int64 tensors, one small read-back."""
    ranges = sparse_part_ranges(begin, end, chunk_start, chunk_len)
    vertical = _pad_join(_index_groups(conv, "verticals", verticals))
    slash = _pad_join(_index_groups(conv, "slashes", slashes))
    lists = part_runs(vertical, slash, ranges)  # (part, which, idx, range, first, count)
    counts = torch.stack([count for *_, count in lists])  # (lists, batch, heads)
    flags = torch.stack([sorted_rows_disorder(vertical, False).any(), sorted_rows_disorder(slash, True).any()])
    summary = torch.cat([counts.amax(dim=(1, 2)), counts.amin(dim=(1, 2)), flags.to(torch.int64)]).tolist()  # the one read-back
    out = {}
    for (name, which, idx, kept, first, count), (width, fallback) in zip(lists, split_layout(summary, [l[3] for l in lists])):
        if fallback is not None:  # vLLM's [0, s, 2s, ...] made on the device: no host array is copied
            fallback = torch.arange(fallback[0], dtype=torch.int64, device=idx.device) * fallback[1]
        out[name, which] = _gather_run(idx, first, count, width, kept.shift, fallback)
    parts = {name: SparsePart(r.keys, r.causal, out[name, "vertical"], out[name, "slash"]) for name, r in ranges.items()}
    return vertical, slash, parts
