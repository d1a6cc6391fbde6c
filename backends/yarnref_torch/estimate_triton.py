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
matrix-vector products: about six passes over the ``(m, kv_len + m)`` float32
buffer (256 MiB per head at 1M keys).  Here, after the same matmul into the
same skewed buffer:

1. :func:`_row_stats`: one program per span of keys computes, per row, the
   maximum and the sum of exponentials over its keys with the online softmax
   (a maximum and sum per tile, rescaled as the maximum grows), and writes one
   partial ``(max, sum)`` per row; :func:`_combine_stats` (one program) merges
   the partials into ``M_r`` and ``1 / Z_r``.
2. :func:`_scores`: one program per tile of ``BLOCK_N`` keys forms ``p`` on
   the fly and writes both sums: the slash sums (reversed) as column sums of
   the buffer's first ``kv_len`` columns, the vertical sums as column sums of
   its diagonal view.  The two views of one tile overlap in memory except for
   ``m - 1`` columns, so the second read is served mostly by the L2 cache.

Masked cells are never read: validity is computed from the indices (the keys
after a row's position, the buffer's cells that row never writes), so the
buffer needs no ``-inf`` fills and may hold anything there.

Conventions
-----------
The buffer layout of :func:`yarnref_torch.sparse._head_scores`: ``logits``
``(m, kv_len + m)`` float32, contiguous; row ``r`` holds key ``j`` at column
``j + m - 1 - r``, so key ``j`` of every row sits at offset ``(m - 1) + r
(kv_len + m - 1) + j`` (the diagonal view) and distance ``delta`` at column
``kv_len - 1 - delta``.  Outputs: float32 rows of ``kv_len``, unit stride.  The
exponential is Triton's float32 one (a few float32 ulps from torch's) and the
sums run in another order than torch's, so the scores agree with the torch
path to float32 rounding (relative ~1e-6), not bit for bit.
"""

from __future__ import annotations

import torch

try:  # optional: the torch path serves wherever Triton is missing
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["available", "MAX_ROWS", "estimate_scores"]

#: Most query rows one launch takes (the estimation uses 64; the row tile is the next power of two).
MAX_ROWS = 256
#: Logits one program holds per tile: ``BLOCK_M * BLOCK_N`` float32 numbers.
TILE_ELEMENTS = 8192
#: Programs the statistics pass aims at (each one's span of keys is a whole number of tiles).
STATS_PROGRAMS = 1024


def available(logits: torch.Tensor) -> bool:
    """True if :func:`estimate_scores` runs on this buffer: Triton, a CUDA float32 contiguous ``(m, kv_len + m)``
    buffer with ``m <= MAX_ROWS``."""
    return (
        triton is not None
        and logits.is_cuda
        and logits.dtype == torch.float32
        and logits.ndim == 2
        and logits.is_contiguous()
        and 1 <= logits.shape[0] <= MAX_ROWS
        and logits.shape[1] > logits.shape[0]
    )


if triton is not None:

    @triton.jit(do_not_specialize=("m", "kv_len", "span"))
    def _row_stats(X, PMAX, PSUM, m, kv_len, span, scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Per row, the max and the sum of ``exp(scale * (x - max))`` over keys ``[t * span, (t + 1) * span)``.

        Writes ``PMAX[t, r]`` and ``PSUM[t, r]`` (``(programs, BLOCK_M)``; ``-inf`` and 0 where the row has
        no key in the span, and for padding rows ``r >= m``).
        """
        t = tl.program_id(0)
        r = tl.arange(0, BLOCK_M)
        last = kv_len - m + r  # row r's own position: its keys are 0 .. last
        row_base = (m - 1) + r.to(tl.int64) * (kv_len + m - 1)  # offset of key 0 of row r (the diagonal view)
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
        tl.store(PMAX + t * BLOCK_M + r, m_i)
        tl.store(PSUM + t * BLOCK_M + r, l_i)

    @triton.jit(do_not_specialize=("m", "n_parts"))
    def _combine_stats(PMAX, PSUM, ROW_MAX, INV_Z, m, n_parts, scale, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr):
        """``M_r`` and ``1 / Z_r`` from the ``(n_parts, BLOCK_M)`` partials (one program; every row has key 0)."""
        r = tl.arange(0, BLOCK_M)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        for t0 in range(0, n_parts, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            ok = t[:, None] < n_parts
            pmax = tl.load(PMAX + t[:, None] * BLOCK_M + r[None, :], mask=ok, other=float("-inf"))  # (BLOCK_T, BLOCK_M)
            psum = tl.load(PSUM + t[:, None] * BLOCK_M + r[None, :], mask=ok, other=0.0)
            m_new = tl.maximum(m_i, tl.max(pmax, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp(scale * (m_i - m_safe)) + tl.sum(psum * tl.exp(scale * (pmax - m_safe[None, :])), 0)
            m_i = m_new
        row = r < m
        tl.store(ROW_MAX + r, m_i, mask=row)
        tl.store(INV_Z + r, 1.0 / tl.where(row, l_i, 1.0), mask=row)

    @triton.jit(do_not_specialize=("m", "kv_len"))
    def _scores(X, ROW_MAX, INV_Z, VERTICAL, SLASH_REVERSED, m, kv_len, scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Both column sums of ``p`` for keys (and columns) ``[t * BLOCK_N, (t + 1) * BLOCK_N)``."""
        t = tl.program_id(0)
        r = tl.arange(0, BLOCK_M)
        c = t * BLOCK_N + tl.arange(0, BLOCK_N)
        row = r < m
        row_max = tl.load(ROW_MAX + r, mask=row, other=0.0)
        inv_z = tl.load(INV_Z + r, mask=row, other=0.0)  # padding rows weigh 0
        r64 = r.to(tl.int64)
        # Slash (reversed): cell (r, c) of the buffer, written where c >= m - 1 - r; c < kv_len holds a key <= p_r.
        written = row[:, None] & (c[None, :] >= (m - 1 - r)[:, None]) & (c[None, :] < kv_len)
        x = tl.load(X + r64[:, None] * (kv_len + m) + c[None, :], mask=written, other=float("-inf"))
        p = tl.exp(scale * (x - row_max[:, None])) * inv_z[:, None]
        tl.store(SLASH_REVERSED + c, tl.sum(p, 0), mask=c < kv_len)
        # Vertical: key j = c of row r in the diagonal view, a key of that row where j <= p_r.
        visible = row[:, None] & (c[None, :] <= (kv_len - m + r)[:, None])
        x = tl.load(X + (m - 1) + r64[:, None] * (kv_len + m - 1) + c[None, :], mask=visible, other=float("-inf"))
        p = tl.exp(scale * (x - row_max[:, None])) * inv_z[:, None]
        tl.store(VERTICAL + c, tl.sum(p, 0), mask=c < kv_len)


def _tiles(m: int) -> tuple[int, int]:
    """``(BLOCK_M, BLOCK_N)``: the row tile (a power of two >= ``m``) and the key tile of :data:`TILE_ELEMENTS`."""
    block_m = max(16, triton.next_power_of_2(m))
    return block_m, max(16, TILE_ELEMENTS // block_m)


def estimate_scores(logits: torch.Tensor, scale: float, vertical_out: torch.Tensor, slash_reversed_out: torch.Tensor) -> None:
    """Write one head's vertical sums and reversed slash sums from its filled logits buffer.

    ``logits`` ``(m, kv_len + m)`` float32 in the skewed layout (only the
    cells the matmul writes are read); ``vertical_out`` and
    ``slash_reversed_out`` ``(kv_len,)`` float32 with unit stride, on the
    same device.  Three launches: the row statistics, their combination,
    the scores.
    """
    m, width = logits.shape
    kv_len = width - m
    if not logits.is_contiguous() or vertical_out.stride(-1) != 1 or slash_reversed_out.stride(-1) != 1:
        raise ValueError("estimate_scores needs a contiguous buffer and unit-stride outputs")
    block_m, block_n = _tiles(m)
    tiles = triton.cdiv(kv_len, block_n)
    span = triton.cdiv(tiles, STATS_PROGRAMS) * block_n  # keys per statistics program, whole tiles
    n_parts = triton.cdiv(kv_len, span)
    dev = logits.device
    pmax = torch.empty((n_parts, block_m), dtype=torch.float32, device=dev)
    psum = torch.empty((n_parts, block_m), dtype=torch.float32, device=dev)
    row_max = torch.empty((m,), dtype=torch.float32, device=dev)
    inv_z = torch.empty((m,), dtype=torch.float32, device=dev)
    scale = float(scale)
    _row_stats[(n_parts,)](logits, pmax, psum, m, kv_len, span, scale, BLOCK_M=block_m, BLOCK_N=block_n)
    _combine_stats[(1,)](pmax, psum, row_max, inv_z, m, n_parts, scale, BLOCK_M=block_m, BLOCK_T=max(16, 4096 // block_m))
    _scores[(tiles,)](logits, row_max, inv_z, vertical_out, slash_reversed_out, m, kv_len, scale,
                      BLOCK_M=block_m, BLOCK_N=block_n)
