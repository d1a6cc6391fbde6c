r"""Ring attention across processes with ``torch.distributed`` (spec: :mod:`yarnref.ring`).

Paper: Liu, Zaharia, Abbeel, "Ring Attention with Blockwise Transformers for
Near-Infinite Context", arXiv:2310.01889, Algorithm 1.  One process per device
(launched with ``torchrun``, or ``torch.multiprocessing``), NCCL on GPUs and
gloo on CPUs.  Each rank holds its shard of q, k and v (:func:`shard_tensor`,
by layout), and returns its shard of the output and of the lse.

At ring step ``t`` rank ``r`` computes its queries against the K/V shard
``(r - t) mod P`` while the same shard is already on its way to rank
``r + 1`` and the next one is arriving from rank ``r - 1``: the sends and
receives of step ``t + 1`` are posted (``dist.batch_isend_irecv``) *before*
the attention of step ``t``, so on NCCL (its own stream) they overlap the
compute.  Each partial result is folded into a running one with the
log-sum-exp merge, in float32 (float64 for float64 inputs):

.. math::
   \ell \leftarrow \log(e^{\ell} + e^{\ell^{(t)}}), \qquad
   o \leftarrow e^{\ell^{\mathrm{old}} - \ell} o + e^{\ell^{(t)} - \ell} o^{(t)}

The attention calls are those of the spec's :func:`yarnref.ring.step_blocks`
(a bottom-right causal block and a full block at most, per pair of runs, the
full ones fused into rectangles), run
by the torch backend's :func:`~yarnref_torch.attention.attention_tensors` with
the lse: on CUDA, cuDNN or flash attention; on CPU, the blocked path.

Also here: DCA on the ring (:func:`ring_dca_attention`: keys rotated once to
their DCA key positions by their owner, queries to their three DCA query
positions) and vertical-slash attention on the ring
(:func:`ring_vertical_slash_attention`): in the kernels' key sets, the lists
converted once per query run on the device and restricted to each key run
there, fed to the Triton sparse kernel on CUDA; in the exact key sets, the
global lists restricted to each block by :func:`yarnref.ring.pair_vertical_slash`.

Conventions
-----------
Those of :mod:`yarnref.ring`: layouts ``"contiguous"``, ``"zigzag"``,
``"striped"``; a length the layout does not divide is padded at the end
(:func:`shard_tensor`), which changes nothing under a causal mask; the
non-causal call needs a length the layout divides.  Every rank passes
tensors of one shape (its shard) on its own device.  The output has q's
dtype; the lse is float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from yarnref.checks import check_bool, check_int, check_int32_indices, check_option, check_positive_real, check_same_dtype
from yarnref.softmax_attention import check_qkv, default_scale
from yarnref.dca import DCA_PAIRINGS, dca_position_ids, dca_temperature
from yarnref.errors import InputError
from yarnref.ring import Run, check_kernel_layout, check_layout, chunk_pieces, pair_blocks, pair_vertical_slash, padded_length, run_range, shard_positions, shard_runs, step_blocks

from ._arrays import ArrayConverter, check_float, compute_dtype
from .attention import attention_tensors
from .rope import rotate
from yarnref.sparse import VS_MODES
from .sparse import _convert, _indices, _kernel_rows, _rows_per_step, _triton_can_run, _triton_module, _weighted_attention
from .sparse import vertical_slash_attention as _vertical_slash_attention

__all__ = ["shard_tensor", "unshard_tensors", "ring_attention", "ring_dca_attention", "ring_vertical_slash_attention"]


# ----------------------------------------------------------------------------- sharding


def shard_tensor(x: torch.Tensor, world_size: int, rank: int, layout: str, dim: int = 2) -> torch.Tensor:
    """Rank ``rank``'s shard of ``x`` along ``dim`` (the sequence), padded at the end with zeros as the spec's :func:`yarnref.ring.shard`."""
    layout = check_layout(layout)
    seq_len = x.shape[dim]
    total = padded_length(seq_len, world_size, layout)
    if not 0 <= rank < world_size:
        raise InputError("rank", rank, f"an integer in [0, {world_size})")
    if total > seq_len:
        pad_shape = list(x.shape)
        pad_shape[dim] = total - seq_len
        x = torch.cat([x, x.new_zeros(pad_shape)], dim=dim)
    index = torch.from_numpy(shard_positions(seq_len, world_size, layout)[rank]).to(x.device)
    return x.index_select(dim, index)


def unshard_tensors(shards, seq_len: int, layout: str, dim: int = 2) -> torch.Tensor:
    """The shards of every rank (in rank order) put back in sequence order, padding cut: length ``seq_len``."""
    positions = np.concatenate(shard_positions(seq_len, len(shards), check_layout(layout)))
    order = torch.from_numpy(np.argsort(positions)[:seq_len]).to(shards[0].device)
    return torch.cat(list(shards), dim=dim).index_select(dim, order)


# ----------------------------------------------------------------------------- the ring


class _Ring:
    """The process group's ring: who sends to whom, and the posted exchange of one step."""

    def __init__(self, group):
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        to_global = (lambda r: dist.get_global_rank(group, r)) if group is not None else (lambda r: r)
        self.next = to_global((self.rank + 1) % self.world_size)
        self.prev = to_global((self.rank - 1) % self.world_size)

    def post(self, tensors):
        """Send ``tensors`` to the next rank and receive the previous rank's into fresh buffers; returns (buffers, requests)."""
        received = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t, self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, b, self.prev, self.group) for b in received]
        return received, dist.batch_isend_irecv(ops)

    def run(self, tensors, step_attention, overlap: bool = True):
        """Pass ``tensors`` (this rank's K/V) around the ring; call ``step_attention(source, tensors)`` with each shard.

        With ``overlap`` the exchange of the next step is posted before this
        step's compute and waited for after it; without, it is posted and
        waited for first (communication and compute in series: a baseline
        that measures how much of the communication the overlap hides).
        """
        for t in range(self.world_size):
            pending = self.post(tensors) if t < self.world_size - 1 else None
            if pending is not None and not overlap:
                for request in pending[1]:
                    request.wait()
                pending = (pending[0], [])
            step_attention((self.rank - t) % self.world_size, tensors)
            if pending is not None:
                buffers, requests = pending
                for request in requests:
                    request.wait()
                tensors = buffers


class _Accumulator:
    """The running (out, lse) of a rank's queries, merged in float32 (float64 for float64 inputs)."""

    def __init__(self, q: torch.Tensor, v_dim: int):
        b, h, n, _ = q.shape
        self.dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        self.out = torch.zeros((b, h, n, v_dim), dtype=self.dtype, device=q.device)
        self.lse = torch.full((b, h, n), -math.inf, dtype=self.dtype, device=q.device)

    def add(self, rows: tuple[int, int], out: torch.Tensor, lse: torch.Tensor) -> None:
        """Merge a partial result of rows ``[r0, r1)`` into the running one."""
        r0, r1 = rows
        old = self.lse[:, :, r0:r1]
        lse = lse.to(self.dtype)
        new = torch.logaddexp(old, lse)  # (b, h, rows)
        safe = torch.where(torch.isfinite(new), new, torch.zeros_like(new))
        acc = self.out[:, :, r0:r1]
        # Two passes over the float32 rows, none over a float32 copy of ``out``: addcmul_ reads the
        # partial output in its own dtype and widens it on the fly.
        acc.mul_(torch.exp(old - safe)[..., None]).addcmul_(out, torch.exp(lse - safe)[..., None])
        self.lse[:, :, r0:r1] = new


def _run_rows(runs):
    return list(np.cumsum([0] + [run.count for run in runs])[:-1])


def _check_inputs(q, k, v, group):
    conv = ArrayConverter(q.device if isinstance(q, torch.Tensor) else None)
    q, k, v = (check_float(n, conv.tensor(a, n)) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    check_same_dtype(q=q, k=k, v=v)
    dims = check_qkv(q, k, v, same_len=True)
    if not dist.is_initialized():
        raise InputError("group", group, "an initialised torch.distributed process group (dist.init_process_group first)")
    return conv, q, k, v, dims


def ring_attention(q, k, v, layout="zigzag", causal=True, scale=None, return_lse=False, *, group=None, overlap=True):
    """Ring attention of this rank's query shard over every rank's K/V; see :func:`yarnref.ring.ring_attention`.

    ``q``, ``k``, ``v``: this rank's shards ``(batch, heads, n, head_dim)``
    (:func:`shard_tensor`), the same ``n`` on every rank.  Returns this rank's
    shard of the output (q's dtype) and, with ``return_lse``, of the lse.
    ``overlap=False`` waits for each step's K/V before computing (for
    measurement: the difference in time is the communication hidden).
    """
    _, q, k, v, (_, _, _, n, _, head_dim) = _check_inputs(q, k, v, group)
    layout = check_layout(layout)
    causal = check_bool("causal", causal)
    return_lse = check_bool("return_lse", return_lse)
    scale = check_positive_real("scale", default_scale(head_dim) if scale is None else scale)
    ring = _Ring(group)
    runs = shard_runs(n * ring.world_size, ring.world_size, layout)
    acc = _Accumulator(q, v.shape[-1])

    def step_attention(source, kv):
        ks, vs = kv
        for block in step_blocks(runs[ring.rank], runs[source], causal):  # at most a causal and a full call per run pair, fused
            (r0, r1), keys = block.rows, slice(*block.keys)
            out, lse = attention_tensors(q[:, :, r0:r1], ks[:, :, keys], vs[:, :, keys], block.causal, scale, True)
            acc.add(block.rows, out, lse)

    ring.run([k.contiguous(), v.contiguous()], step_attention, check_bool("overlap", overlap))
    out = acc.out.to(q.dtype)
    return (out, acc.lse) if return_lse else out


# ----------------------------------------------------------------------------- DCA


def _tables(inv_freq: torch.Tensor, positions: np.ndarray, pi_factor: float, factor: float, dtype, device):
    """cos and sin ``(n, r/2)`` of ``positions / pi_factor`` times ``factor``: angles in float64, returned in ``dtype``."""
    p = torch.from_numpy(positions.astype(np.float64)).to(device) / pi_factor
    angles = p[:, None] * inv_freq.to(device, torch.float64)
    return (torch.cos(angles) * factor).to(dtype), (torch.sin(angles) * factor).to(dtype)


def ring_dca_attention(
    q,
    k,
    v,
    inv_freq,
    chunk_size,
    local_size,
    layout="zigzag",
    scale=None,
    *,
    pairing="half",
    attention_factor=1.0,
    pi_factor=1.0,
    temperature="none",
    max_position_embeddings=None,
    original_max_position_embeddings=None,
    seq_len=None,
    return_lse=False,
    group=None,
):
    """Dual Chunk Attention (prefill) on the ring; see :func:`yarnref.ring.ring_dca_attention`.

    ``q``, ``k`` (un-rotated), ``v``: this rank's shards.  ``seq_len``: the
    real (unpadded) length, used by the temperature modes; default the padded
    length ``n * world_size``.  The keys travel rotated (in the attention
    dtype: q's on CUDA half types, else the compute dtype).
    """
    _, q, k, v, (_, _, _, n, _, head_dim) = _check_inputs(q, k, v, group)
    layout = check_layout(layout)
    scale = check_positive_real("scale", default_scale(head_dim) if scale is None else scale)
    if pairing not in DCA_PAIRINGS:
        raise InputError("pairing", pairing, f"one of {DCA_PAIRINGS}")
    attention_factor = check_positive_real("attention_factor", attention_factor)
    pi_factor = check_positive_real("pi_factor", pi_factor)
    return_lse = check_bool("return_lse", return_lse)
    freqs = torch.as_tensor(np.asarray(inv_freq, dtype=np.float64) if not isinstance(inv_freq, torch.Tensor) else inv_freq)
    if freqs.ndim != 1 or freqs.numel() == 0 or 2 * freqs.numel() > head_dim:
        raise InputError("inv_freq", f"shape {tuple(freqs.shape)}", f"a 1-D array of r/2 frequencies, 1 <= r/2 <= head_dim/2 = {head_dim // 2}")
    ring = _Ring(group)
    total = n * ring.world_size
    real = total if seq_len is None else int(seq_len)
    if not total - ring.world_size * 2 < real <= total:
        raise InputError("seq_len", seq_len, f"the unpadded length of the {ring.world_size} shards of {n} (at most {total})")
    factors = dca_temperature(
        temperature, real, max_position_embeddings=max_position_embeddings, original_max_position_embeddings=original_max_position_embeddings
    )
    ids = dca_position_ids(total, chunk_size, local_size)
    chunk_len = chunk_size - local_size
    runs = shard_runs(total, ring.world_size, layout)
    mine = shard_positions(total, ring.world_size, layout)[ring.rank]  # this rank's positions (n,)
    cdt = compute_dtype(q.dtype)
    work = q.dtype if (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)) else cdt
    table = attention_factor * factors.table

    def rotated(x, at, factor):
        cos, sin = _tables(freqs, at, pi_factor, table, cdt, x.device)
        return (rotate(x.to(cdt), cos, sin, pairing) * factor).to(work)

    key_factor = np.concatenate([factors.key, np.ones(total - real)])[mine]  # padding keys are never seen
    k_rot = rotated(k, ids.key[mine], torch.from_numpy(key_factor).to(k.device, cdt)[:, None])
    # Queries carry the scale (and the query temperature), so the attention calls use scale 1.
    q_parts = {part: rotated(q, getattr(ids, part)[mine], scale * factors.query) for part in ("intra", "successive", "inter")}
    acc = _Accumulator(q, v.shape[-1])

    def step_attention(source, kv):
        ks, vs = kv
        for q_run, q0 in zip(runs[ring.rank], _run_rows(runs[ring.rank])):
            for first, piece, chunk in chunk_pieces(q_run, chunk_len):
                cs = chunk * chunk_len
                ranges = {"intra": (cs, cs + chunk_len), "successive": (cs - chunk_len, cs), "inter": (0, cs - chunk_len)}
                for part, (low, high) in ranges.items():
                    for k_run, k0 in zip(runs[source], _run_rows(runs[source])):
                        a, b = run_range(k_run, max(low, 0), high)
                        if b <= a:
                            continue
                        sub = Run(k_run.start + a * k_run.stride, k_run.stride, b - a)
                        for block in pair_blocks(piece, sub, True):
                            rows = (q0 + first + block.rows[0], q0 + first + block.rows[1])
                            keys = slice(k0 + a + block.keys[0], k0 + a + block.keys[1])
                            qp = q_parts[part][:, :, rows[0] : rows[1]]
                            out, lse = attention_tensors(qp, ks[:, :, keys], vs[:, :, keys], block.causal, 1.0, True)
                            acc.add(rows, out, lse)

    ring.run([k_rot.contiguous(), v.to(work).contiguous()], step_attention)
    out = acc.out.to(q.dtype)
    return (out, acc.lse) if return_lse else out


# ----------------------------------------------------------------------------- vertical-slash


#: What a query run's lists hold past each row's count: every row is then sorted and searchable.
_PAST_COUNT = torch.iinfo(torch.int32).max


def _run_lists(vertical, slash, a: int, b: int, bm: int, bn: int):
    """The kernel lists of the query run ``[a, b)`` (spec: :func:`yarnref.ring.run_kernel_lists`), on the lists' device.

    The conversion of ``(b - a, b)``: Triton on CUDA, the backend's lockstep
    converter elsewhere.  The block and column lists are cut to the widest
    row's count (one read-back per run, before the ring), so that restricting
    them at every step moves only what is listed, and their entries past each
    row's count are set to :data:`_PAST_COUNT`, so that every row is ascending
    and :func:`_count_below` is a binary search.
    """
    vertical = torch.where(vertical < b, vertical, -1)  # verticals right of the run: seen by none of its rows
    block_count, block_offset, column_count, column_index = _convert(b - a, b, vertical, slash, bm, bn, True)

    def cut(entries, count):
        width = max(1, int(count.max()))
        listed = torch.arange(width, device=entries.device) < count[..., None]
        return torch.where(listed, entries[..., :width], _PAST_COUNT).contiguous()

    return block_count, cut(block_offset, block_count), column_count, cut(column_index, column_count)


def _count_below(entries, bound: int):
    """Per row, how many entries of an ascending list (:func:`_run_lists`) are below ``bound``: where a segment starts or stops."""
    bounds = torch.full(entries.shape[:-1] + (1,), bound, dtype=entries.dtype, device=entries.device)
    return torch.searchsorted(entries, bounds)[..., 0]


def _restrict_lists(converted, ka: int, kb: int, bm: int, bn: int):
    """A query run's kernel lists (:func:`_run_lists`) restricted to the key run ``[ka, kb)``, in its local indices; spec: :func:`yarnref.ring.restrict_kernel_lists`.

    Vectorised over (batch, head, row block), no loop and no read-back: the
    converter writes block starts and columns strictly ascending, so the
    blocks wholly inside the key run are one segment of each row's list (those
    starting at or after ``ka`` and ending by ``kb``), shifted by ``-ka``; the
    columns inside it are another.  A block straddling an edge lies just
    before the block segment (the left edge) or just after it (the right
    edge); its keys inside the run become columns.  With ``BN == BM`` the
    listed blocks are disjoint (ranges are separated by more than ``BM``
    columns and tiled exactly by ``BM``-wide blocks), so at most one block
    straddles each edge; with ``BN > BM`` blocks of neighbouring ranges can
    overlap, and the number of candidates per edge is read from the lists.
    Multiplicities are kept.  Returns int32 ``(block_count, block_offset,
    column_count, column_index)``, entries past the counts ``-1``; the blocks
    ascend, the columns need not (the run's columns, then the straddling
    blocks' ones): ``sparse_attention_triton``'s one-row-block kernel takes
    any order (its two-row-block form, ``paired=True``, needs ascending lists
    and is not used here).
    """
    block_count, block_offset, column_count, column_index = converted  # int32, ascending in each row
    dev = block_count.device
    width_b = block_offset.shape[-1]
    slot_b = torch.arange(width_b, device=dev)
    first = _count_below(block_offset, ka)  # (batch, heads, rows): blocks starting before ka
    whole_end = _count_below(block_offset, kb - bn + 1)  # blocks ending by kb
    n_whole = (whole_end - first).clamp(min=0)
    picked = torch.gather(block_offset, -1, (first[..., None] + slot_b).clamp(max=width_b - 1))
    new_offset = torch.where(slot_b < n_whole[..., None], picked - ka, -1)

    # Straddling blocks: the J listed blocks before the segment and the J after it.
    if bn == bm:
        reach = 1
    else:
        listed = slot_b < block_count[..., None]
        starts_before = listed & (block_offset < ka) & (block_offset + bn > ka)
        ends_after = listed & (block_offset < kb) & (block_offset + bn > kb)
        reach = max(1, int(starts_before.sum(-1).max()), int(ends_after.sum(-1).max()))
    near = torch.arange(reach, device=dev)
    candidates = torch.cat([first[..., None] - reach + near, torch.maximum(first, whole_end)[..., None] + near], dim=-1)  # (b, h, r, 2J)
    listed = (candidates >= 0) & (candidates < block_count[..., None])
    o = torch.gather(block_offset, -1, candidates.clamp(0, width_b - 1)).to(torch.int64)
    lo, hi = o.clamp(min=ka), (o + bn).clamp(max=kb)
    straddle = listed & (lo < hi) & ~((lo == o) & (hi == o + bn))
    cols = lo[..., None] + torch.arange(bn, device=dev)  # (b, h, r, 2J, bn)
    cols_ok = straddle[..., None] & (cols < hi[..., None])
    cols, cols_ok = cols.flatten(-2), cols_ok.flatten(-2)

    # Columns inside the key run: one segment of the ascending column list.
    columns = column_index
    width_c = columns.shape[-1]
    slot_c = torch.arange(width_c, device=dev)
    c_first = _count_below(columns, ka)
    c_n = _count_below(columns, kb) - c_first
    kept = torch.gather(columns, -1, (c_first[..., None] + slot_c).clamp(max=width_c - 1)).to(torch.int64)
    kept_ok = slot_c < c_n[..., None]

    # Both kinds of columns, the valid ones moved to the front (a scatter at their running count).
    every, ok = torch.cat([kept, cols], dim=-1), torch.cat([kept_ok, cols_ok], dim=-1)
    where = torch.where(ok, torch.cumsum(ok, dim=-1) - 1, every.shape[-1])  # the invalid ones to a spare slot
    new_columns = torch.full(every.shape[:-1] + (every.shape[-1] + 1,), -1, dtype=torch.int64, device=dev)
    new_columns.scatter_(-1, where, torch.where(ok, every - ka, -1))
    i32 = lambda t: t.to(torch.int32).contiguous()  # noqa: E731
    return i32(n_whole), i32(new_offset), i32(ok.sum(-1)), i32(new_columns[..., :-1])


def ring_vertical_slash_attention(
    q, k, v, vertical_idx, slash_idx, layout="zigzag", scale=None, return_lse=False, *, mode="kernel", block_size_m=64, block_size_n=64, group=None
):
    """Vertical-slash attention on the ring; see :func:`yarnref.ring.ring_vertical_slash_attention`.

    ``vertical_idx``, ``slash_idx``: the global lists ``(batch, q_heads, n)``
    (NumPy or tensors; the same on every rank).

    ``mode="kernel"`` (default): each rank converts the lists of its query
    runs once, on its device, before the ring (:func:`_run_lists`); at every
    step each (query run, key run) pair restricts them to the key run on the
    device (:func:`_restrict_lists`) and runs the sparse kernel on them: the
    Triton kernel on CUDA (``sparse_attention_triton`` with the lse, causal on
    the diagonal pair only), the backend's weighted kernel-mode path on CPU.
    Contiguous and zig-zag layouts whose runs start on row blocks only
    (:func:`yarnref.ring.check_kernel_layout`).  ``mode="exact"``: the exact
    key sets, the lists restricted per block on the host (every layout).
    """
    conv, q, k, v, (batch, q_heads, _, n, _, head_dim) = _check_inputs(q, k, v, group)
    layout = check_layout(layout)
    return_lse = check_bool("return_lse", return_lse)
    mode = check_option("mode", mode, VS_MODES)
    bm = check_int("block_size_m", block_size_m, 1)
    bn = check_int("block_size_n", block_size_n, bm)
    scale = check_positive_real("scale", default_scale(head_dim) if scale is None else scale)
    ring = _Ring(group)
    total = n * ring.world_size
    acc = _Accumulator(q, v.shape[-1])
    if mode == "exact":
        as_numpy = lambda x: x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)  # noqa: E731
        vertical, slash = as_numpy(vertical_idx), as_numpy(slash_idx)
        runs = shard_runs(total, ring.world_size, layout)

        def step_attention(source, kv):
            ks, vs = kv
            for q_run, q0 in zip(runs[ring.rank], _run_rows(runs[ring.rank])):
                for k_run, k0 in zip(runs[source], _run_rows(runs[source])):
                    for block in pair_blocks(q_run, k_run, True):
                        v_local, s_local = pair_vertical_slash(vertical, slash, q_run, k_run, block)
                        rows = (q0 + block.rows[0], q0 + block.rows[1])
                        keys = slice(k0 + block.keys[0], k0 + block.keys[1])
                        out, lse = _vertical_slash_attention(
                            conv, q[:, :, rows[0] : rows[1]], ks[:, :, keys], vs[:, :, keys], v_local, s_local,
                            mode="exact", scale=scale, return_lse=True, causal=block.causal,
                        )
                        acc.add(rows, out, lse)

    else:
        runs = check_kernel_layout(total, ring.world_size, layout, bm)
        check_int32_indices(total, bm, bn)  # the int32 lists
        vertical, slash = _indices(conv, vertical_idx, slash_idx, total, (batch, q_heads))
        mine = runs[ring.rank]
        lists = [_run_lists(vertical, slash, run.start, run.start + run.count, bm, bn) for run in mine]
        triton = _triton_module(q.device)
        use_triton = _triton_can_run(triton, q, v, bm, bn)

        def step_attention(source, kv):
            ks, vs = kv
            for q_run, q0, run_lists in zip(mine, _run_rows(mine), lists):
                for k_run, k0 in zip(runs[source], _run_rows(runs[source])):
                    if k_run.start > q_run.start:
                        continue  # a later key run: no row of the query run sees it
                    diagonal = k_run.start == q_run.start
                    local = _restrict_lists(run_lists, k_run.start, k_run.start + k_run.count, bm, bn)
                    rows = (q0, q0 + q_run.count)
                    q_rows, k_keys, v_keys = q[:, :, rows[0] : rows[1]], ks[:, :, k0 : k0 + k_run.count], vs[:, :, k0 : k0 + k_run.count]
                    if use_triton:
                        out, lse = triton.sparse_attention_triton(q_rows, k_keys, v_keys, *local, scale, bm, bn, True, causal=diagonal)
                    else:
                        weights = lambda a, b, local=local, diagonal=diagonal: _kernel_rows(a, b, q_run.count, k_run.count, local, diagonal, bm, bn)  # noqa: E731
                        step = _rows_per_step(batch, q_heads, k_run.count, bm, q.device)
                        out, lse = _weighted_attention(q_rows, k_keys, v_keys, scale, weights, step)
                    acc.add(rows, out, lse)

    ring.run([k.contiguous(), v.contiguous()], step_attention)
    out = acc.out.to(q.dtype)
    return (out, acc.lse) if return_lse else out
