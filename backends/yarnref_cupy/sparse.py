r"""Vertical-slash sparse attention, A-shape and tri-shape on the GPU (spec: :mod:`yarnref.sparse`).

Paper: Jiang et al., "MInference 1.0", arXiv:2407.02490, section 3: a head
keeps key columns ``V`` and diagonals ``S`` (distances ``delta = i - j``),
estimated from the last queries,

.. math::
   V = \mathrm{argtopk}_{n_v}\Big(\sum_r \hat A_{r,j}\Big), \qquad
   S = \mathrm{argtopk}_{n_s}\Big(\sum_r \hat A_{r,\,p_r - \delta}\Big),

and attends with a softmax over the kept keys only,
:math:`o_i = \sum_{j \in K_i} \mathrm{softmax}_j(s_{ij})\, v_j`.

How it runs here
----------------
* Estimation (:func:`vertical_slash_indices`): the last ``m <= 64`` queries
  against all keys (``m * kv_len`` per head) in the compute dtype, float64
  for float64 inputs and float32 otherwise, as the torch backend (the top-k
  then differs from the spec's only on near-ties within float32 rounding),
  column and diagonal sums (on the GPU two fused kernels,
  ``vertical_slash_estimate.cu``, that read the logits three times and write
  nothing of their size), a sort best first with ties to the lower index, as
  the spec (float32 scores as one packed uint64 key per entry).
* Conversion (:func:`convert`): the CUDA kernel ``vertical_slash_index.cu``,
  one thread per (batch, head, row block), run through CuPy's RawModule.  In
  the NumPy shim the vectorised conversion shared with the spec runs instead; the kernel source is
  tested on the CPU (compiled as C++) against the spec.
* Kernel-mode attention on float16/bfloat16 where torch and Triton are
  installed (:mod:`.kernels`): yarnref's Triton conversion and sparse kernel
  (:mod:`yarnref_torch.triton_sparse`, the torch backend's) launched on the
  CuPy arrays through DLPack, on CuPy's current stream; otherwise the
  conversion kernel above and the NVRTC attention kernel of :mod:`.flash`
  where it applies.
* Attention otherwise (:func:`vs_attention`, :func:`streaming_attention`): per group of
  row blocks, the kept keys are *gathered* (kernel mode: the listed blocks,
  ``block_size_n`` keys each, and the listed columns; exact mode: per row the
  verticals and the diagonals' keys) and fed to the one softmax core
  (:func:`.attention.softmax_attend`).  The cost grows with the kept keys,
  never with ``q_len * kv_len``.  A key listed twice is counted twice (the
  kernels do, and so does the spec); A-shape gathers the sink and window
  slices per query block.

Conventions: the spec's (:mod:`yarnref.sparse`), including ``-1`` padding,
bottom-right causal alignment, the non-causal "queries after every key"
convention, and empty rows (0, lse ``-inf``).  Attention is computed in
float64 for float64 inputs, else float32; lse in the compute dtype.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from yarnref.errors import InputError
from yarnref.sparse_lockstep import conversion_capacity, convert_lockstep, sort_indices

from . import kernels
from ._arrays import compute_dtype, is_half, scalar
from .attention import attention as dense_attention
from .attention import softmax_attend
from .flash import flash_attention, fusable

spec = importlib.import_module("yarnref.sparse")

#: Numbers held at once by one gathered attention step (keys, values and logits together).
STEP_ELEMENTS = 1 << 26
#: Numbers held at once by one step of the estimation (float64 probabilities of the last queries).
ESTIMATE_ELEMENTS = 1 << 25
_INT32_MAX = 2**31 - 1


# ----------------------------------------------------------------------------- index arrays on the device


def _index_array(name: str, a):
    """``a`` (device) as int64 ``(batch, heads, n)``; InputError for another shape or dtype."""
    if a.ndim != 3 or a.dtype.kind not in "iu":
        raise InputError(name, f"array of shape {a.shape} and dtype {a.dtype}", "a (batch, heads, n) integer array")
    return a.astype(np.int64, copy=False)


def _out_of_range(a, low: int, high: int | None):
    """Device bool array: entries of ``a`` that are neither ``-1`` nor in ``[low, high)``."""
    bad = (a != -1) & (a < low)
    if high is not None:
        bad |= (a != -1) & (a >= high)
    return bad


def _raise_out_of_range(name: str, a, bad, low: int, high: int | None):
    value = int(a[bad][0])
    upper = f", < {high}" if high is not None else ""
    raise InputError(name, f"an entry {value}", f"entries >= {low}{upper}, or -1 for padding")


def check_index_array(xp, name: str, a, low: int, high: int | None):
    """``a`` (device) as int64 ``(batch, heads, n)``, entries ``-1`` or in ``[low, high)`` (the spec's check)."""
    a = _index_array(name, a)
    bad = _out_of_range(a, low, high)
    if a.size and bool(bad.any()):
        _raise_out_of_range(name, a, bad, low, high)
    return a


def check_indices(xp, vertical, slash, kv_len: int, batch_heads=None):
    """Both index arrays checked (the spec's rules), with one read back from the device for the two range checks."""
    vertical = _index_array("vertical_idx", vertical)
    slash = _index_array("slash_idx", slash)
    bad_v = _out_of_range(vertical, 0, kv_len)
    bad_s = _out_of_range(slash, 0, None)
    flags = xp.stack([bad_v.any(), bad_s.any()])
    any_v, any_s = (bool(f) for f in (flags.get() if hasattr(flags, "get") else flags))
    if any_v:
        _raise_out_of_range("vertical_idx", vertical, bad_v, 0, kv_len)
    if any_s:
        _raise_out_of_range("slash_idx", slash, bad_s, 0, None)
    if vertical.shape[:2] != slash.shape[:2]:
        raise InputError("slash_idx", f"shape {slash.shape}", f"(batch, heads) = {vertical.shape[:2]} like vertical_idx")
    if batch_heads is not None and vertical.shape[:2] != batch_heads:
        raise InputError("vertical_idx", f"shape {vertical.shape}", f"(batch, q_heads, n) with (batch, q_heads) = {batch_heads}")
    return vertical, slash


def _argsort_stable(xp, a):
    if xp is np:
        return np.argsort(a, axis=-1, kind="stable")
    return xp.argsort(a, axis=-1)  # CuPy's sort is always stable (thrust)


# ----------------------------------------------------------------------------- estimation


def _sort_rows_packed(xp, keys, key_bits: int):
    """``keys`` (..., n) of non-negative integers ``< 2**key_bits``, each row sorted ascending, as int64.

    The row number is packed above the key (``row << key_bits | key``) and the
    whole array sorted once as one flat uint64 vector: a single radix sort on
    the GPU, where sorting along the last axis of a 2-D+ array compares
    (row, value) pairs.  None if row and key do not fit 64 bits together.
    """
    *lead, n = keys.shape
    n_rows = int(np.prod(lead, dtype=np.int64)) if lead else 1
    row_bits = max(1, int(n_rows - 1).bit_length())
    if row_bits + key_bits > 64 or keys.size == 0:
        return None
    row = xp.arange(n_rows, dtype=np.uint64)[:, None] << np.uint64(key_bits)  # (rows, 1)
    packed = (row | keys.reshape(n_rows, n).astype(np.uint64)).ravel()
    low = np.uint64((1 << key_bits) - 1)
    return (xp.sort(packed) & low).astype(np.int64).reshape(keys.shape)


def _best_first(xp, score):
    """Indices sorting ``score`` (..., n) best first, ties to the lower index (the spec's stable order).

    float32 scores (all ``>= +0`` here: sums of probabilities, or ``+inf``
    where forced) are sorted as one packed integer key per entry,
    ``(~bits(score)) << b | index`` with ``b`` the bits of an index: for
    non-negative floats the bit pattern orders like the value, so ascending
    keys are descending scores with the lower index first on ties, and a
    radix sort of keys (:func:`_sort_rows_packed`) replaces an argsort that
    carries an index payload.  float64 scores take the stable argsort.
    """
    n = score.shape[-1]
    index_bits = max(1, int(n - 1).bit_length())
    if score.dtype == np.float32 and n:
        bits = xp.ascontiguousarray(score).view(np.uint32).astype(np.uint64)
        keys = ((np.uint64(0xFFFFFFFF) - bits) << np.uint64(index_bits)) | xp.arange(n, dtype=np.uint64)
        order = _sort_rows_packed(xp, keys, 32 + index_bits)
        if order is not None:
            return order & np.int64((1 << index_bits) - 1)
    return _argsort_stable(xp, -score)


def _sort_indices_ascending(xp, top, index_bits: int):
    """Rows of ``top`` (entries ``-1`` or ``< 2**index_bits``) sorted ascending with ``-1`` last."""
    big = (1 << index_bits)  # stands for -1 while sorting
    shifted = xp.where(top < 0, big, top)
    out = _sort_rows_packed(xp, shifted, index_bits + 1)
    if out is None:
        out = xp.sort(shifted, axis=-1)
    return xp.where(out == big, -1, out)


_TOPK_KERNELS: dict = {}


def _topk_kernels(cupy):
    """The three element-wise kernels of :func:`_top_indices_fused` (compiled once per process by CuPy)."""
    if not _TOPK_KERNELS:
        ek = cupy.ElementwiseKernel
        # Entry i = (row r, index j) of a contiguous (rows, n) float32 score: key r | ~bits(score) | j, the
        # first ``forced`` indices of a row scored +inf (the spec forces them: they rank first).
        _TOPK_KERNELS["score_keys"] = ek(
            "raw float32 score, int64 n, int32 index_bits, int64 forced", "uint64 key",
            """
            long long j = i % n;
            unsigned long long r = (unsigned long long)(i / n);
            unsigned int bits = j < forced ? 0x7F800000u : __float_as_uint(score[i]);
            key = (r << (32 + index_bits)) | ((unsigned long long)(0xFFFFFFFFu - bits) << index_bits)
                  | (unsigned long long)j;
            """,
            "yarnref_vs_score_keys",
        )
        # Entry i = (row r, rank t < width): the rank-t index of row r when t < count[head of r], else "none"
        # (2**index_bits, sorting last); descending lists store 2**index_bits - 1 - index, so that one
        # ascending sort serves both.  Keyed by the row above index_bits + 1 bits.
        _TOPK_KERNELS["rank_keys"] = ek(
            "raw uint64 ordered, raw int64 count, int64 n, int64 width, int64 heads, int32 index_bits, bool descending",
            "uint64 key",
            """
            long long r = i / width, t = i % width;
            unsigned long long low = (1ull << index_bits) - 1ull;
            unsigned long long value = 1ull << index_bits;
            if (t < count[r % heads]) {
                unsigned long long index = ordered[r * n + t] & low;
                value = descending ? low - index : index;
            }
            key = ((unsigned long long)r << (index_bits + 1)) | value;
            """,
            "yarnref_vs_rank_keys",
        )
        _TOPK_KERNELS["unpack"] = ek(
            "uint64 key, int32 index_bits, bool descending", "int64 index",
            """
            unsigned long long value = key & ((1ull << (index_bits + 1)) - 1ull);
            unsigned long long low = (1ull << index_bits) - 1ull;
            index = value > low ? -1 : (long long)(descending ? low - value : value);
            """,
            "yarnref_vs_unpack",
        )
    return _TOPK_KERNELS


def _top_indices_fused(cupy, score, counts, descending: bool, forced: int):
    """:func:`_top_indices` for a float32 CuPy score in three element-wise kernels and two radix sorts.

    The same packed keys as :func:`_best_first` and :func:`_sort_indices_ascending`
    (so the same order, ties to the lower index), without the dozens of
    separate array operations whose launches dominated the call at 8K keys.
    None if a row number and a key do not fit 64 bits together.
    """
    *lead, n = score.shape
    heads = lead[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    index_bits = max(1, int(n - 1).bit_length())
    if max(1, int(rows - 1).bit_length()) + 32 + index_bits > 64 or n == 0:
        return None
    kernels_ = _topk_kernels(cupy)
    keys = kernels_["score_keys"](cupy.ascontiguousarray(score), np.int64(n), np.int32(index_bits), np.int64(forced),
                                  size=rows * n)
    ordered = cupy.sort(keys)  # (rows * n,) one radix sort: rows in order, best first within each
    width = int(counts.max())
    count = cupy.asarray(np.asarray(counts, dtype=np.int64))  # (heads,)
    ranked = kernels_["rank_keys"](ordered, count, np.int64(n), np.int64(width), np.int64(heads), np.int32(index_bits),
                                   bool(descending), size=rows * width)
    return kernels_["unpack"](cupy.sort(ranked), np.int32(index_bits), bool(descending)).reshape(*lead, width)


def _top_indices(xp, score, counts, descending: bool, forced: int = 0):
    """The ``counts[h]`` best entries of ``score[..., h, :]`` (ties: lower index), sorted, ``-1``-padded.

    The first ``forced`` entries of every row rank first (scored ``+inf``; ``score``, a temporary of the
    caller, may be overwritten).
    """
    if xp is not np and score.dtype == np.float32:
        fused = _top_indices_fused(xp, score, counts, descending, forced)
        if fused is not None:
            return fused
    if forced:
        score[..., :forced] = np.inf  # the caller's own temporary
    order = _best_first(xp, score)  # best first; lower index first on ties
    width = int(counts.max())
    top = order[..., :width]
    keep = xp.arange(width)[None, :] < xp.asarray(counts)[:, None]  # (heads, width)
    top = xp.where(keep, top, -1)
    index_bits = max(1, int(score.shape[-1] - 1).bit_length())
    if descending:  # largest first, -1 last: the ascending sort of (2**b - 1 - index)
        flipped = xp.where(top < 0, -1, (1 << index_bits) - 1 - top)
        flipped = _sort_indices_ascending(xp, flipped, index_bits)
        return xp.where(flipped < 0, -1, (1 << index_bits) - 1 - flipped)
    return _sort_indices_ascending(xp, top, index_bits)


_ESTIMATE_KERNELS: dict[tuple, object] = {}


def _estimate_kernels(cupy, dtype):
    """The fused estimation kernels of ``vertical_slash_estimate.cu`` for ``dtype`` (float32 or float64), per device."""
    ctype = "float" if dtype == np.float32 else "double"
    key = (cupy.cuda.Device().id, ctype)
    if key not in _ESTIMATE_KERNELS:
        names = (f"yarnref_vs_row_stats<{ctype}>", f"yarnref_vs_scores<{ctype}>")
        source = Path(__file__).with_name("vertical_slash_estimate.cu").read_text()
        module = cupy.RawModule(code=source, options=("-std=c++14",), name_expressions=names)
        _ESTIMATE_KERNELS[key] = tuple(module.get_function(n) for n in names)
    return _ESTIMATE_KERNELS[key]


#: Threads per block of the estimation kernels (``YARNREF_VS_THREADS`` in the source).
_ESTIMATE_THREADS = 256


def estimation_scores(xp, logits, scale: float):
    """Column and diagonal sums of the last queries' causal softmax.

    ``logits``: ``(batch, heads, m, kv_len)`` unscaled ``q k^T`` of the last
    ``m`` queries (positions ``kv_len - m + r``), float32 or float64,
    contiguous.  Returns ``vertical``, ``slash``: ``(batch, heads, kv_len)``
    with ``vertical[j] = sum_r A[r, j]`` and ``slash[d] = sum_r A[r, p_r - d]``.

    On the GPU the two kernels of ``vertical_slash_estimate.cu`` (three reads
    of the logits, nothing of their size written); in the NumPy shim the
    array form, the same equations.
    """
    batch, heads, m, kv_len = logits.shape
    cdt = logits.dtype
    if xp is not np:
        row_stats, scores = _estimate_kernels(xp, cdt)
        logits = xp.ascontiguousarray(logits)
        n_rows = batch * heads * m
        row_max = xp.empty(n_rows, dtype=cdt)
        row_sum = xp.empty(n_rows, dtype=cdt)
        vertical = xp.empty((batch, heads, kv_len), dtype=cdt)
        slash = xp.empty((batch, heads, kv_len), dtype=cdt)
        t = _ESTIMATE_THREADS
        row_stats((n_rows,), (t,), (logits, row_max, row_sum, np.int64(kv_len), np.int32(m), scalar(scale, cdt)))
        total = batch * heads * kv_len
        scores(
            (-(-total // t),), (t,),
            (logits, row_max, row_sum, vertical, slash, np.int64(batch * heads), np.int64(kv_len), np.int32(m), scalar(scale, cdt)),
        )
        return vertical, slash
    position = xp.arange(kv_len - m, kv_len)  # (m,) the estimation queries' positions
    column = xp.arange(kv_len)
    visible = column[None, :] <= position[:, None]  # (m, kv_len): causal among the last m
    source = position[:, None] - column[None, :]  # (m, kv_len): column on diagonal delta of row r
    on_grid = source >= 0
    rows = xp.arange(m)[:, None]
    cols = xp.where(on_grid, source, 0)
    probs = logits * scalar(scale, cdt)
    probs += xp.where(visible, scalar(0.0, cdt), scalar(-np.inf, cdt))
    probs -= probs.max(axis=-1, keepdims=True)  # every row sees its own key: the max is finite
    xp.exp(probs, out=probs)
    probs /= probs.sum(axis=-1, keepdims=True)  # (batch, heads, m, kv_len)
    vertical = probs.sum(axis=-2)  # column sums
    slash = xp.where(on_grid, probs[:, :, rows, cols], scalar(0.0, cdt)).sum(axis=-2)  # diagonal sums
    return vertical, slash


def vertical_slash_indices(xp, q, k, n_vertical, n_slash, last_q: int, scale: float, force_verticals: int, force_slashes: int):
    """The spec's estimation on validated device arrays; ``n_vertical``/``n_slash``: host int64 ``(q_heads,)``."""
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    m = min(last_q, q_len)
    cdt = compute_dtype(q, k)
    vertical_score = xp.empty((batch, q_heads, kv_len), dtype=cdt)
    slash_score = xp.empty((batch, q_heads, kv_len), dtype=cdt)
    # Groups of kv heads small enough for the memory budget (one group for any ordinary size).
    per_kv_head = batch * group * m * kv_len
    step = max(1, ESTIMATE_ELEMENTS // max(1, per_kv_head))
    for h0 in range(0, kv_heads, step):
        h1 = min(h0 + step, kv_heads)
        n_kv = h1 - h0
        q_last = q[:, h0 * group : h1 * group, q_len - m :].astype(cdt)
        q_last = q_last.reshape(batch, n_kv, group * m, head_dim)  # query heads under their kv head
        keys_t = xp.swapaxes(k[:, h0:h1].astype(cdt), -1, -2)  # (batch, n_kv, head_dim, kv_len)
        logits = xp.matmul(q_last, keys_t).reshape(batch, n_kv * group, m, kv_len)  # unscaled
        heads = slice(h0 * group, h1 * group)
        vertical_score[:, heads], slash_score[:, heads] = estimation_scores(xp, logits, scale)
    return (
        _top_indices(xp, vertical_score, n_vertical, descending=False, forced=force_verticals),
        _top_indices(xp, slash_score, n_slash, descending=True, forced=force_slashes),
    )


# ----------------------------------------------------------------------------- conversion

_KERNELS: dict[int, object] = {}


def _kernel(cupy, device_id: int):
    """The conversion kernel, compiled once per process (CuPy caches the binary on disk) and loaded per device."""
    if device_id not in _KERNELS:
        source = (Path(__file__).with_name("vertical_slash_index.cu")).read_text()
        module = cupy.RawModule(code=source)
        _KERNELS[device_id] = module.get_function("yarnref_convert_vertical_slash")
    return _KERNELS[device_id]


def check_block_sizes(bm: int, bn: int) -> None:
    """The spec refuses ``block_size_n < block_size_m`` for the conversion (the kernels' loop would not end)."""
    if bn < bm:
        raise InputError("block_size_n", bn, f"at least block_size_m = {bm} (the kernels use 64 x 64)")


class KernelCall(NamedTuple):
    """The conversion kernel's arguments, in its parameter order, and where its results land."""

    args: tuple
    lanes: int
    shape: tuple  # (batch, heads, n_rows)
    outputs: tuple  # (block_count, block_offset, column_count, column_index) as flat buffers
    flags: object


def kernel_call(xp, q_len: int, kv_len: int, vertical, slash, bm: int, bn: int, causal: bool) -> KernelCall:
    """Sort, count, cap and cast the indices to the kernel's int32 layout, and allocate its outputs.

    Shared by the GPU launch and the CPU test of the kernel source.
    """
    verts, n_verts, slashes, n_slashes = sort_indices(xp, vertical, slash)
    batch, heads, width_v = verts.shape
    width_s = slashes.shape[-1]
    col_cap, blk_cap = conversion_capacity(width_v, width_s, bm, bn)
    n_rows = -(-q_len // bm)
    off = kv_len - q_len if causal else kv_len
    # Every distance >= the largest row end + off reaches no row block; cap them there so they fit int32.
    beyond_all = n_rows * bm + off + 1
    if beyond_all + bm + bn > _INT32_MAX:
        raise InputError("kv_len", kv_len, f"lengths whose block arithmetic fits int32 (q_len + kv_len + 2 * block sizes < {_INT32_MAX})")
    pairs = batch * heads
    lanes = pairs * n_rows
    outputs = (
        xp.zeros(lanes, dtype=np.int32),  # block_count
        xp.full((lanes, blk_cap), -1, dtype=np.int32),  # block_offset
        xp.zeros(lanes, dtype=np.int32),  # column_count
        xp.full((lanes, col_cap), -1, dtype=np.int32),  # column_index
    )
    flags = xp.zeros(2, dtype=np.int32)
    args = (
        xp.ascontiguousarray(verts.reshape(pairs, width_v).astype(np.int32)),
        xp.ascontiguousarray(n_verts.reshape(pairs).astype(np.int32)),
        xp.ascontiguousarray(xp.minimum(slashes, beyond_all).reshape(pairs, width_s).astype(np.int32)),
        xp.ascontiguousarray(n_slashes.reshape(pairs).astype(np.int32)),
        np.int64(pairs), np.int64(n_rows), np.int64(width_v), np.int64(width_s),
        np.int64(q_len), np.int64(kv_len), np.int64(bm), np.int64(bn), np.int32(bool(causal)),
        outputs[0], outputs[1], np.int64(blk_cap), outputs[2], outputs[3], np.int64(col_cap), flags,
    )
    return KernelCall(args, lanes, (batch, heads, n_rows), outputs, flags)


def kernel_results(call: KernelCall, flags_host):
    """The conversion's four arrays after the kernel ran; the spec's AssertionErrors for its impossible states."""
    overflow, runaway = (int(f) for f in flags_host)
    if runaway:
        raise AssertionError("vertical-slash conversion did not terminate")  # as the spec, e.g. some block_size_m > block_size_n
    if overflow:
        raise AssertionError("vertical-slash conversion overflowed its block or column buffer")  # impossible, as in the spec
    block_count, block_offset, column_count, column_index = call.outputs
    return (
        block_count.reshape(call.shape),
        block_offset.reshape(call.shape + (block_offset.shape[-1],)),
        column_count.reshape(call.shape),
        column_index.reshape(call.shape + (column_index.shape[-1],)),
    )


def convert(xp, device, q_len: int, kv_len: int, vertical, slash, bm: int, bn: int, causal: bool):
    """The block/column lists of validated int64 index arrays: ``(block_count, block_offset, column_count, column_index)``.

    The CUDA kernel on the GPU; in the NumPy shim, the vectorised conversion
    shared with the spec, :func:`yarnref.sparse_lockstep.convert_lockstep`
    (the kernel source is tested separately against the spec, on the CPU).
    """
    check_block_sizes(bm, bn)
    if device.is_shim:
        return convert_lockstep(xp, q_len, kv_len, vertical, slash, bm, bn, causal)
    call = kernel_call(xp, q_len, kv_len, vertical, slash, bm, bn, causal)
    if call.lanes:
        threads = 128
        _kernel(device.cupy, device.id)(((call.lanes + threads - 1) // threads,), (threads,), call.args)
    return kernel_results(call, call.flags.get())


def kernel_key_lists(xp, converted, kv_len: int, bn: int):
    """Per row block, the keys the kernel reads: ``keys`` int64 and ``valid`` bool, ``(batch, heads, R, K)``.

    ``K = max blocks * bn + max columns``; a block's keys are ``o .. o + bn - 1``
    (valid while ``< kv_len``), then the listed columns.  A key listed twice
    appears twice.
    """
    block_count, block_offset, column_count, column_index = converted
    nb = int(block_count.max()) if block_count.size else 0
    nc = int(column_count.max()) if column_count.size else 0
    block_keys = block_offset[..., :nb].astype(np.int64)[..., None] + xp.arange(bn)  # (B, H, R, nb, bn)
    block_valid = (xp.arange(nb) < block_count[..., None])[..., None] & (block_keys < kv_len)
    shape = block_keys.shape[:3]
    column_keys = column_index[..., :nc].astype(np.int64)  # (B, H, R, nc)
    column_valid = xp.arange(nc) < column_count[..., None]
    keys = xp.concatenate([block_keys.reshape(*shape, nb * bn), column_keys], axis=-1)
    valid = xp.concatenate([block_valid.reshape(*shape, nb * bn), column_valid], axis=-1)
    return keys, valid


# ----------------------------------------------------------------------------- masks


def exact_mask(xp, q_len: int, kv_len: int, vertical, slash, causal: bool):
    """The exact vertical-slash mask, bool ``(batch, heads, q_len, kv_len)`` (the spec's ``_exact_rows``)."""
    batch, heads, _ = vertical.shape
    off = kv_len - q_len if causal else kv_len
    position = xp.arange(q_len) + off
    b = xp.arange(batch)[:, None, None]
    h = xp.arange(heads)[None, :, None]
    is_vertical = xp.zeros((batch, heads, kv_len + 1), dtype=bool)
    is_vertical[b, h, xp.where(vertical < 0, kv_len, vertical)] = True  # padding lands on the spare slot
    reach = q_len + off  # distances 0 .. reach-1 can occur
    is_slash = xp.zeros((batch, heads, reach + 1), dtype=bool)
    is_slash[b, h, xp.where((slash < 0) | (slash >= reach), reach, slash)] = True
    is_slash[..., reach] = False
    delta = position[:, None] - xp.arange(kv_len)[None, :]  # (q_len, kv_len)
    visible = delta >= 0
    on_slash = is_slash[:, :, xp.where(visible, delta, reach)]  # (batch, heads, q_len, kv_len)
    return (is_vertical[:, :, None, :kv_len] | on_slash) & visible


def kernel_mask(xp, q_len: int, kv_len: int, converted, causal: bool, bm: int, bn: int):
    """The keys the kernel reads, bool ``(batch, heads, q_len, kv_len)``, cut to ``j < kv_len`` and causal."""
    keys, valid = kernel_key_lists(xp, converted, kv_len, bn)
    batch, heads, n_rows, _ = keys.shape
    cover = xp.zeros((batch, heads, n_rows, kv_len + 1), dtype=bool)
    b = xp.arange(batch)[:, None, None, None]
    h = xp.arange(heads)[None, :, None, None]
    r = xp.arange(n_rows)[None, None, :, None]
    cover[b, h, r, xp.where(valid, keys, kv_len)] = True  # invalid entries land on the spare slot
    row = xp.arange(q_len)
    per_row = cover[:, :, row // bm, :kv_len]  # (batch, heads, q_len, kv_len)
    if causal:
        per_row &= xp.arange(kv_len)[None, :] <= (row + kv_len - q_len)[:, None]
    return per_row


# ----------------------------------------------------------------------------- attention over gathered keys


def _gather_attend(xp, q_rows, k, v, keys, valid, query_pos, causal: bool):
    """Attention of query groups over their own gathered key lists.

    ``q_rows``: ``(B, Hq, n, M, D)`` (scaled, compute dtype); ``k``, ``v``:
    ``(B, Hk, kv_len, *)`` (compute dtype); ``keys``/``valid``: ``(B, Hq, n, K)``;
    ``query_pos``: ``(n, M)`` absolute positions (for the causal cut).
    Returns ``out`` ``(B, Hq, n, M, Dv)`` and ``lse`` ``(B, Hq, n, M)``.
    """
    batch, q_heads, n, m, _ = q_rows.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    b = xp.arange(batch)[:, None, None, None]
    h = (xp.arange(q_heads) // group)[None, :, None, None]  # the kv head each query head reads
    rows = (b * kv_heads + h) * kv_len + xp.where(valid, keys, 0)  # (B, Hq, n, K): rows of k viewed as (B*Hk*kv_len, D)
    k_sel = xp.take(k.reshape(-1, k.shape[-1]), rows, axis=0)  # (B, Hq, n, K, D): one row gather
    v_sel = xp.take(v.reshape(-1, v.shape[-1]), rows, axis=0)  # (B, Hq, n, K, Dv)
    ok = valid[:, :, :, None, None, :]  # (B, Hq, n, 1, 1, K)
    if causal:
        ok = ok & (keys[:, :, :, None, None, :] <= query_pos[None, None, :, None, :, None])  # (B, Hq, n, 1, M, K)
    dtype = q_rows.dtype
    bias = xp.where(ok, scalar(0.0, dtype), scalar(-np.inf, dtype))
    out, lse = softmax_attend(xp, q_rows[:, :, :, None], k_sel, v_sel, bias)  # G = 1
    return out[:, :, :, 0], lse[:, :, :, 0]


def _step(per_unit: int) -> int:
    return max(1, STEP_ELEMENTS // max(1, per_unit))


_TRITON_BLOCK_SIZES = (16, 32, 64, 128)


def _triton_sparse(xp, q, k, v, bm: int, bn: int):
    """The Triton modules if their conversion and sparse kernel take this call, else None."""
    triton = kernels.triton_kernels(xp)
    d = q.shape[-1]
    ok = (
        triton is not None
        and is_half(q)
        and q.dtype == k.dtype == v.dtype
        and v.shape[-1] == d
        and 16 <= d <= 256
        and d & (d - 1) == 0
        and bm in _TRITON_BLOCK_SIZES
        and bn in _TRITON_BLOCK_SIZES
        and bn >= bm
        and q.shape[2] > 0
        and k.shape[2] > 0
    )
    return triton if ok else None


#: Bytes the Triton path's block and column lists may take at once (as the torch backend); causal
#: calls convert and consume them per chunk of row blocks beyond that.
LIST_BYTES = 1 << 30


def _triton_vs_attention(xp, triton, q, k, v, vertical, slash, scale: float, causal: bool, bm: int, bn: int):
    """Kernel-mode vertical-slash attention with the torch backend's Triton conversion and kernel, on the CuPy arrays.

    Causal calls are cut into chunks of whole row blocks whose lists fit
    :data:`LIST_BYTES`; rows ``[a, b)`` see only keys ``< kv_len - q_len + b``,
    so each chunk is converted against those keys alone (the spec's lists of
    those rows are the same).
    """
    batch, q_heads, q_len, _ = q.shape
    kv_len = k.shape[2]
    off = kv_len - q_len if causal else kv_len
    # Distances past every row's reach select nothing; capped so that the int32 lists hold them.
    slash = xp.minimum(slash, q_len + off + 1)
    per_row_block = 4 * batch * q_heads * (max(slash.shape[-1], 1) * -(-bm // bn) + max(vertical.shape[-1], 1) + 2)
    step = max(1, LIST_BYTES // per_row_block) * bm if causal else q_len
    torch = triton["torch"]
    ts = triton["sparse"]
    with kernels.on_cupy_stream(xp, torch):
        tq, tk, tv = (kernels.to_torch(torch, x) for x in (q, k, v))
        tvert, tslash = kernels.to_torch(torch, vertical), kernels.to_torch(torch, slash)
        if step >= q_len:  # the whole call at once
            lists = ts.convert_vertical_slash_indexes_triton(q_len, kv_len, tvert, tslash, bm, bn, causal)
            o, l = ts.sparse_attention_triton(tq, tk, tv, *lists, scale, bm, bn, True, causal=causal)
            return kernels.to_cupy(xp, o), kernels.to_cupy(xp, l)
        out = xp.empty(q.shape, dtype=q.dtype)
        lse = xp.empty(q.shape[:3], dtype=np.float32)
        tout, tlse = kernels.to_torch(torch, out), kernels.to_torch(torch, lse)
        for start in range(0, q_len, step):  # one chunk up to 128K tokens at ordinary budgets
            stop = min(start + step, q_len)
            keys = kv_len - q_len + stop if causal else kv_len
            lists = ts.convert_vertical_slash_indexes_triton(stop - start, keys, tvert, tslash, bm, bn, causal)
            o, l = ts.sparse_attention_triton(
                tq[:, :, start:stop], tk[:, :, :keys], tv[:, :, :keys], *lists, scale, bm, bn, True, causal=causal
            )
            tout[:, :, start:stop] = o
            tlse[:, :, start:stop] = l
    return out, lse


def vs_attention(xp, device, q, k, v, vertical, slash, mode: str, scale: float, causal: bool, bm: int, bn: int):
    """Vertical-slash attention over validated device arrays.  Returns ``(out, lse)``."""
    batch, q_heads, q_len, head_dim = q.shape
    kv_len, v_dim = k.shape[2], v.shape[-1]
    cdt = compute_dtype(q, k, v)
    if mode == "kernel":  # the fused kernels first: they read q, k, v as they are
        triton = _triton_sparse(xp, q, k, v, bm, bn)
        if triton is not None:
            return _triton_vs_attention(xp, triton, q, k, v, vertical, slash, scale, causal, bm, bn)
        converted = convert(xp, device, q_len, kv_len, vertical, slash, bm, bn, causal)
        if fusable(xp, q, k, v, lists=True, block_size_m=bm, block_size_n=bn):
            return flash_attention(xp, q, k, v, scale, causal, converted)
    kc = xp.ascontiguousarray(k.astype(cdt, copy=False))  # contiguous: gathered as rows of (B*Hk*kv_len, D)
    vc = xp.ascontiguousarray(v.astype(cdt, copy=False))
    off = kv_len - q_len if causal else kv_len
    out = xp.empty((batch, q_heads, q_len, v_dim), dtype=q.dtype)
    lse = xp.empty((batch, q_heads, q_len), dtype=cdt)
    if mode == "kernel":
        keys, valid = kernel_key_lists(xp, converted, kv_len, bn)  # (B, Hq, R, K)
        n_rows, n_keys = keys.shape[2], keys.shape[3]
        step = _step(batch * q_heads * n_keys * (head_dim + v_dim + bm))
        for r0 in range(0, n_rows, step):
            r1 = min(r0 + step, n_rows)
            first, last = r0 * bm, min(r1 * bm, q_len)
            rows = xp.zeros((batch, q_heads, (r1 - r0) * bm, head_dim), dtype=cdt)  # padded to whole row blocks
            rows[:, :, : last - first] = q[:, :, first:last]
            rows *= scalar(scale, cdt)
            rows = rows.reshape(batch, q_heads, r1 - r0, bm, head_dim)
            query_pos = (xp.arange(r0 * bm, r1 * bm) + off).reshape(r1 - r0, bm)
            o, l = _gather_attend(xp, rows, kc, vc, keys[:, :, r0:r1], valid[:, :, r0:r1], query_pos, causal)
            out[:, :, first:last] = o.reshape(batch, q_heads, -1, v_dim)[:, :, : last - first]
            lse[:, :, first:last] = l.reshape(batch, q_heads, -1)[:, :, : last - first]
        return out, lse
    # mode == "exact": per row, the verticals and the keys on the kept diagonals, each key once.
    verts, _, slashes, _ = sort_indices(xp, vertical, slash)
    v_ok = verts >= 0
    v_ok[..., 1:] &= verts[..., 1:] != verts[..., :-1]  # a repeated vertical counts once
    s_ok = slashes >= 0
    s_ok[..., 1:] &= slashes[..., 1:] != slashes[..., :-1]
    bi = xp.arange(batch)[:, None, None]
    hi = xp.arange(q_heads)[None, :, None]
    is_vertical = xp.zeros((batch, q_heads, kv_len + 1), dtype=bool)
    is_vertical[bi, hi, xp.where(v_ok, verts, kv_len)] = True
    is_vertical[..., kv_len] = False
    nv, ns = verts.shape[-1], slashes.shape[-1]
    step = _step(batch * q_heads * (nv + ns) * (head_dim + v_dim + 2))
    for i0 in range(0, q_len, step):
        i1 = min(i0 + step, q_len)
        n = i1 - i0
        position = xp.arange(i0, i1) + off  # (n,)
        slash_keys = position[None, None, :, None] - slashes[:, :, None, :]  # (B, Hq, n, ns)
        in_range = (slash_keys >= 0) & (slash_keys < kv_len)
        on_vertical = is_vertical[bi[..., None], hi[..., None], xp.where(in_range, slash_keys, kv_len)]
        keys = xp.concatenate([xp.broadcast_to(verts[:, :, None, :], (batch, q_heads, n, nv)), slash_keys], axis=-1)
        valid = xp.concatenate(
            [
                xp.broadcast_to(v_ok[:, :, None, :], (batch, q_heads, n, nv)),
                s_ok[:, :, None, :] & in_range & ~on_vertical,
            ],
            axis=-1,
        )  # (B, Hq, n, nv + ns)
        rows = (q[:, :, i0:i1].astype(cdt) * scalar(scale, cdt))[:, :, :, None, :]  # (B, Hq, n, 1, D)
        o, l = _gather_attend(xp, rows, kc, vc, keys, valid, position[:, None], True)
        out[:, :, i0:i1] = o[:, :, :, 0]
        lse[:, :, i0:i1] = l[:, :, :, 0]
    return out, lse


def streaming_attention(xp, q, k, v, n_init: int, n_local: int, n_last: int, scale: float):
    """A-shape (``n_last = 0``) or tri-shape attention over validated device arrays.  Returns ``(out, lse)``.

    Rows ``[q_len - n_last, q_len)`` are dense causal attention; the others
    see, per query block, the sink slice ``[0, n_init)`` where ``D >= n_local``
    and the window slice around the block where ``0 <= D < n_local``
    (``D = position(i) - j``): disjoint conditions, so each key counts once.
    """
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len, v_dim = k.shape[1], k.shape[2], v.shape[-1]
    group = q_heads // kv_heads
    cdt = compute_dtype(q, k, v)
    kc, vc = k.astype(cdt, copy=False), v.astype(cdt, copy=False)
    off = kv_len - q_len
    out = xp.empty((batch, q_heads, q_len, v_dim), dtype=q.dtype)
    lse = xp.empty((batch, q_heads, q_len), dtype=cdt)
    dense_from = max(0, q_len - n_last)
    if dense_from < q_len:  # tri-shape: the last n_last queries are the last ones of the keys
        o, l = dense_attention(xp, q[:, :, dense_from:], kc, vc, True, scale, max(1, _step(batch * q_heads * kv_len)))
        out[:, :, dense_from:] = o
        lse[:, :, dense_from:] = l
    n_sink = min(n_init, kv_len)
    block = max(1, min(4096, _step(batch * q_heads * (n_sink + n_local) * 2)))
    qg = q.reshape(batch, kv_heads, group, q_len, head_dim)  # query heads under their kv head
    for start in range(0, dense_from, block):
        stop = min(start + block, dense_from)
        first_pos, last_pos = start + off, stop - 1 + off
        w0, w1 = max(0, first_pos - n_local + 1), max(0, min(kv_len, last_pos + 1))
        keys = xp.concatenate([xp.arange(n_sink), xp.arange(w0, w1)])  # (N,) absolute key positions
        is_sink = xp.arange(keys.shape[0]) < n_sink
        position = xp.arange(start, stop) + off  # (n,)
        distance = position[:, None] - keys[None, :]  # (n, N)
        visible = xp.where(is_sink[None, :], distance >= n_local, (distance >= 0) & (distance < n_local))
        bias = xp.where(visible, scalar(0.0, cdt), scalar(-np.inf, cdt))
        k_sel = xp.concatenate([kc[:, :, :n_sink], kc[:, :, w0:w1]], axis=2)  # (B, Hk, N, D)
        v_sel = xp.concatenate([vc[:, :, :n_sink], vc[:, :, w0:w1]], axis=2)
        rows = qg[:, :, :, start:stop].astype(cdt) * scalar(scale, cdt)  # (B, Hk, g, n, D)
        o, l = softmax_attend(xp, rows, k_sel, v_sel, bias)
        out[:, :, start:stop] = o.reshape(batch, q_heads, stop - start, v_dim)
        lse[:, :, start:stop] = l.reshape(batch, q_heads, stop - start)
    return out, lse
