r"""The vertical-slash estimation's softmax sums as Triton kernels (CUDA): two reads of the logits.

Paper: Jiang et al., "MInference 1.0", arXiv:2407.02490, section 3.2 (the
last-``m``-query estimation, as Qwen2.5-1M runs it, arXiv:2501.15383), with
the online softmax of Milakov & Gimelshein, arXiv:1805.02867:

.. math::
   p_{rj} = \frac{e^{s(x_{rj} - M_r)}}{Z_r}, \quad
   M_r = \max_{j \le p_r} x_{rj}, \quad
   Z_r = \sum_{j \le p_r} e^{s(x_{rj} - M_r)}, \\
   \mathrm{vertical}_j = \sum_r p_{rj}, \qquad
   \mathrm{slash}_\delta = \sum_r p_{r,\, p_r - \delta}

with ``x`` the unscaled logits, ``s`` the softmax scale (> 0) and ``p_r = kv_len - m + r``
row ``r``'s position.  The torch path (:func:`yarnref_torch.sparse._head_scores`)
masks, takes the maximum, subtracts, exponentiates, sums and makes two
matrix-vector products: it reads the ``(m, kv_len + m)`` float32 buffer (256
MiB per head at 1M keys) six times and writes it twice.  Here, after the same matmul into the
same skewed buffer:

1. :func:`_row_stats`: one program per span of keys computes, per row, the
   maximum and the sum of exponentials over its keys with the online softmax
   (a maximum and sum per tile, rescaled as the maximum grows), and writes one
   partial ``(max, sum)`` per row; :func:`_combine_stats` (one program per
   head) merges the partials into ``M_r`` and ``1 / Z_r``.
2. :func:`_scores`: one program per tile of ``BLOCK_N`` keys forms ``p`` on
   the fly and writes both sums: the slash sums (reversed) as column sums of
   the buffer's first ``kv_len`` columns, the vertical sums as column sums of
   its diagonal view.  The two views of one tile overlap in memory except for
   ``m - 1`` columns, so the second read is served mostly by the L2 cache.

Several query heads of one KV head may share the buffer and so one matmul
(the keys read once for all of them): their rows stacked, ``n * m`` rows in
the same skewed layout; a program's second grid index is its head.

Masked cells are never read: validity is computed from the indices (the keys
after a row's position, the buffer's cells that row never writes), so the
buffer needs no ``-inf`` fills and may hold anything there.

Conventions
-----------
The buffer layout of :func:`yarnref_torch.sparse._head_scores`: ``logits``
``(m, kv_len + m)`` float32, contiguous; row ``r`` holds key ``j`` at column
``j + m - 1 - r``, so key ``j`` of every row sits at offset ``(m - 1) + r
(kv_len + m - 1) + j`` (the diagonal view) and distance ``delta`` at column
``kv_len - 1 - delta``.  With ``n`` heads stacked (:func:`yarnref_torch.sparse._group_scores`):
``(n m, kv_len + n m)``, head ``h``'s row ``r`` is row ``i = h m + r``, key
``j`` at offset ``(n m - 1) + i (kv_len + n m - 1) + j``; the kernels read
both sums through that formula (distance ``delta`` of row ``r`` is key
``p_r - delta``).  Outputs: float32 rows of ``kv_len``, unit stride.  The
exponential is Triton's float32 one (a few float32 ulps from torch's) and the
sums run in another order than torch's, so the scores agree with the torch
path to float32 rounding (relative ~1e-6; up to ~1e-5 for probabilities
near float32's underflow, whose exponent's rounding dominates), not bit for
bit.
"""

from __future__ import annotations

import torch

try:  # optional: the torch path serves wherever Triton is missing
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["MAX_ROWS", "estimate_scores"]

#: Most query rows one launch takes (the estimation uses 64; the row tile is the next power of two).
MAX_ROWS = 256
#: Logits one program holds per tile: ``BLOCK_M * BLOCK_N`` float32 numbers.
TILE_ELEMENTS = 8192
#: Programs the statistics pass aims at (each one's span of keys is a whole number of tiles).
STATS_PROGRAMS = 1024


if triton is not None:

    @triton.jit(do_not_specialize=("m", "kv_len", "span", "n_parts", "base", "row_stride"))
    def _row_stats(X, PMAX, PSUM, m, kv_len, span, n_parts, base, row_stride, scale,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Per row of head ``h``, the max and the sum of ``exp(scale * (x - max))`` over keys ``[t * span, (t + 1) * span)``.

        Element (head ``h``, row ``r``, key ``j``) lies at ``base + (h * m + r) * row_stride + j``.  Writes
        ``PMAX[h, t, r]`` and ``PSUM[h, t, r]`` (``(heads, n_parts, BLOCK_M)``; ``-inf`` and 0 where the
        row has no key in the span, and for padding rows ``r >= m``).
        """
        t = tl.program_id(0)
        h = tl.program_id(1)
        r = tl.arange(0, BLOCK_M)
        last = kv_len - m + r  # row r's own position: its keys are 0 .. last
        row_base = base + (h * m + r).to(tl.int64) * row_stride  # offset of key 0 of each row (the diagonal view)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        start = t * span
        for j0 in range(start, start + span, BLOCK_N):  # a loop over the span's tiles
            j = j0 + tl.arange(0, BLOCK_N)
            valid = (r[:, None] < m) & (j[None, :] <= last[:, None])  # (BLOCK_M, BLOCK_N)
            x = tl.load(X + row_base[:, None] + j[None, :], mask=valid, other=float("-inf"))
            m_new = tl.maximum(m_i, tl.max(x, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key so far
            l_i = l_i * tl.exp(scale * (m_i - m_safe)) + tl.sum(tl.exp(scale * (x - m_safe[:, None])), 1)
            m_i = m_new
        out = (h * n_parts + t) * BLOCK_M + r
        tl.store(PMAX + out, m_i)
        tl.store(PSUM + out, l_i)

    @triton.jit(do_not_specialize=("m", "n_parts"))
    def _combine_stats(PMAX, PSUM, ROW_MAX, INV_Z, m, n_parts, scale, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr):
        """Head ``h``'s ``M_r`` and ``1 / Z_r`` (``(heads, BLOCK_M)``) from its ``(n_parts, BLOCK_M)`` partials
        (one program per head; every row has key 0)."""
        h = tl.program_id(0)
        r = tl.arange(0, BLOCK_M)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        first = h * n_parts * BLOCK_M
        for t0 in range(0, n_parts, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            ok = t[:, None] < n_parts
            at = first + t[:, None] * BLOCK_M + r[None, :]
            pmax = tl.load(PMAX + at, mask=ok, other=float("-inf"))  # (BLOCK_T, BLOCK_M)
            psum = tl.load(PSUM + at, mask=ok, other=0.0)
            m_new = tl.maximum(m_i, tl.max(pmax, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp(scale * (m_i - m_safe)) + tl.sum(psum * tl.exp(scale * (pmax - m_safe[None, :])), 0)
            m_i = m_new
        row = r < m
        tl.store(ROW_MAX + h * BLOCK_M + r, tl.where(row, m_i, 0.0))
        tl.store(INV_Z + h * BLOCK_M + r, tl.where(row, 1.0 / tl.where(row, l_i, 1.0), 0.0))  # padding rows weigh 0

    @triton.jit(do_not_specialize=("m", "kv_len", "base", "row_stride", "stride_v", "stride_s"))
    def _scores(X, ROW_MAX, INV_Z, VERTICAL, SLASH_REVERSED, m, kv_len, base, row_stride, stride_v, stride_s, scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Both column sums of head ``h``'s ``p`` for keys (and reversed distances) ``[t * BLOCK_N, (t + 1) * BLOCK_N)``."""
        t = tl.program_id(0)
        h = tl.program_id(1)
        r = tl.arange(0, BLOCK_M)
        c = t * BLOCK_N + tl.arange(0, BLOCK_N)
        row = r < m
        row_max = tl.load(ROW_MAX + h * BLOCK_M + r)
        inv_z = tl.load(INV_Z + h * BLOCK_M + r)
        row_base = base + (h * m + r).to(tl.int64) * row_stride
        in_range = row[:, None] & (c[None, :] < kv_len)
        # Slash (reversed): column c is distance kv_len - 1 - c, i.e. key j = c + r - (m - 1) of row r, if j >= 0.
        # (One head alone: row r's cells c of the buffer, written where c >= m - 1 - r.)
        key = c[None, :] + (r - (m - 1))[:, None]
        x = tl.load(X + row_base[:, None] + key, mask=in_range & (key >= 0), other=float("-inf"))
        p = tl.exp(scale * (x - row_max[:, None])) * inv_z[:, None]
        tl.store(SLASH_REVERSED + h.to(tl.int64) * stride_s + c, tl.sum(p, 0), mask=c < kv_len)
        # Vertical: key j = c of row r, a key of that row where j <= p_r = kv_len - m + r.
        visible = in_range & (c[None, :] <= (kv_len - m + r)[:, None])
        x = tl.load(X + row_base[:, None] + c[None, :], mask=visible, other=float("-inf"))
        p = tl.exp(scale * (x - row_max[:, None])) * inv_z[:, None]
        tl.store(VERTICAL + h.to(tl.int64) * stride_v + c, tl.sum(p, 0), mask=c < kv_len)


def _tiles(m: int) -> tuple[int, int]:
    """``(BLOCK_M, BLOCK_N)``: the row tile (a power of two >= ``m``) and the key tile of :data:`TILE_ELEMENTS`."""
    block_m = max(16, triton.next_power_of_2(m))
    return block_m, max(16, TILE_ELEMENTS // block_m)


def estimate_scores(logits: torch.Tensor, scale: float, vertical_out: torch.Tensor, slash_reversed_out: torch.Tensor,
                    heads: int = 1) -> None:
    """Write the vertical sums and reversed slash sums of ``heads`` heads from their filled logits buffer.

    ``logits`` ``(heads * m, kv_len + heads * m)`` float32, contiguous: the
    heads' rows stacked (head ``h``'s row ``r`` is row ``i = h * m + r``) in
    one skewed layout, row ``i`` holding key ``j`` at column ``j + heads * m -
    1 - i`` (one matmul of the stacked queries writes it; for one head this
    is :func:`yarnref_torch.sparse._head_scores`'s buffer).  Only the cells
    that matmul writes are read.  ``vertical_out`` and ``slash_reversed_out``
    ``(heads, kv_len)`` (or ``(kv_len,)`` for one head) float32 with unit
    last stride, on the same device.  Three launches: the row statistics,
    their combination, the scores.
    """
    rows, width = logits.shape
    m = rows // heads
    kv_len = width - rows
    vertical_out = vertical_out.reshape(heads, kv_len) if vertical_out.ndim == 1 else vertical_out
    slash_reversed_out = slash_reversed_out.reshape(heads, kv_len) if slash_reversed_out.ndim == 1 else slash_reversed_out
    if (not logits.is_contiguous() or rows != heads * m or vertical_out.shape != (heads, kv_len)
            or slash_reversed_out.shape != (heads, kv_len) or vertical_out.stride(-1) != 1 or slash_reversed_out.stride(-1) != 1):
        raise ValueError("estimate_scores needs a contiguous (heads * m, kv_len + heads * m) buffer and "
                         "(heads, kv_len) outputs with unit last stride")
    block_m, block_n = _tiles(m)
    tiles = triton.cdiv(kv_len, block_n)
    span = triton.cdiv(tiles, STATS_PROGRAMS) * block_n  # keys per statistics program, whole tiles
    n_parts = triton.cdiv(kv_len, span)
    base, row_stride = rows - 1, width - 1  # the diagonal view: element (i, j) at base + i * row_stride + j
    dev = logits.device
    pmax = torch.empty((heads, n_parts, block_m), dtype=torch.float32, device=dev)
    psum = torch.empty((heads, n_parts, block_m), dtype=torch.float32, device=dev)
    row_max = torch.empty((heads, block_m), dtype=torch.float32, device=dev)
    inv_z = torch.empty((heads, block_m), dtype=torch.float32, device=dev)
    scale = float(scale)
    _row_stats[(n_parts, heads)](logits, pmax, psum, m, kv_len, span, n_parts, base, row_stride, scale,
                                 BLOCK_M=block_m, BLOCK_N=block_n)
    _combine_stats[(heads,)](pmax, psum, row_max, inv_z, m, n_parts, scale, BLOCK_M=block_m, BLOCK_T=max(16, 4096 // block_m))
    _scores[(tiles, heads)](logits, row_max, inv_z, vertical_out, slash_reversed_out, m, kv_len, base, row_stride,
                            vertical_out.stride(0), slash_reversed_out.stride(0), scale, BLOCK_M=block_m, BLOCK_N=block_n)
