r"""Vertical-slash sparse attention on the GPU, in Triton: the index conversion and the sparse kernel.

Paper: Jiang et al., "MInference 1.0: Accelerating Pre-filling for Long-Context
LLMs via Dynamic Sparse Attention", arXiv:2407.02490, section 3 (the
"Vertical-Slash" pattern, Algorithm 3 and Appendix C.4.2 for the kernel), as
vLLM, SGLang and Qwen2.5-1M run it (arXiv:2501.15383).

A head keeps, for every query, a set of *vertical* key columns ``V`` (absolute
key indices, the same for all queries) and a set of *slash* diagonals ``S``
(distances ``delta = i - j``).  The CUDA kernels do not evaluate that mask
token by token.  The index conversion (``convert_vertical_slash_indexes`` in
MInference and vLLM) turns ``(V, S)`` into, per query row block of
``block_size_m`` rows,

* ``block_offset[:block_count]``: start columns ``o`` of key ranges
  ``[o, o + block_size_n)``; each slash ``delta`` is widened to the columns it
  touches for the whole row block, ``[m1 + off - delta - BM, m1 + off - delta)``
  (``m1`` the row block's end, ``off = kv_len - q_len``), and overlapping or
  adjacent ranges are merged, growing in steps of ``BM``.  The starts are
  *arbitrary* columns, not multiples of 64;
* ``column_index[:column_count]``: the verticals that no range covers.

The sparse kernel then computes, for every query row ``i`` of row block ``r``
(see the spec ``yarnref.sparse``):

.. math::
   K_i = \Big(\bigcup_{b < \mathrm{bc}_r} [o_{r,b},\, o_{r,b} + B_N)
          \;\cup\; \{c_{r,t} : t < \mathrm{cc}_r\}\Big)
          \cap \{\, j : 0 \le j < T_k,\; j \le i + T_k - T_q \,\}

   o_i = \sum_{j \in K_i} \mathrm{softmax}_j(\text{scale}\cdot q_i\cdot k_j)\, v_j,
   \qquad \mathrm{lse}_i = \log \sum_{j \in K_i} e^{\text{scale}\cdot q_i\cdot k_j}

with one online softmax (Milakov & Gimelshein, arXiv:1805.02867; FlashAttention,
arXiv:2205.14135, Algorithm 1) over first the ranges, then the columns, in
``block_size_n``-wide tiles.  The bounds and causal test is applied to every
column tile and to every range tile that needs it: a range tile is tested
unless it lies inside ``[0, T_k)`` and wholly at or below the block's first
query position, where the test cannot remove a key.  So the result is the
spec's ``vertical_slash_mask(..., mode="kernel")`` whatever the index contents
and order (vLLM's FA-based kernel masks only the last two tiles and
MInference's Triton kernel skips the causal test on columns; they agree with
this only when ``delta = 0`` is among the slashes, which MInference and vLLM
always force).

The work is proportional to the kept keys: each program reads its ``block_count``
ranges and ``column_count`` gathered columns, never the ``T_q x T_k`` grid.

Conventions
-----------
* Layout ``(batch, heads, seq, head_dim)``; q ``(B, Hq, Tq, D)``, k and v
  ``(B, Hk, Tk, D)``; GQA: query head ``h`` reads kv head ``h // (Hq // Hk)``
  (no repeated k/v is materialised).  fp16 or bf16; ``D`` up to 256 (80, 96
  and other head dims are padded to the next power of two inside the kernel,
  the extra dims masked; TMA is used for power-of-two ``D`` only).
* Causal masks are aligned bottom-right: query ``i`` is at position
  ``i + Tk - Tq`` and sees keys ``j <= i + Tk - Tq``.  With ``causal=False``
  only ``0 <= j < Tk`` is tested.
* Index tensors are int32: ``block_count``/``column_count`` ``(B, Hq, R)``,
  ``block_offset`` ``(B, Hq, R, NS)``, ``column_index`` ``(B, Hq, R, NV)``,
  ``R = ceil(Tq / block_size_m)``; only the first ``count`` entries of a row
  are read.  The kernel sums over the listed entries: a key listed twice
  (two overlapping ranges, or a column inside a range) is counted twice, as in
  the CUDA kernels.  The conversion never produces such duplicates.
* Softmax in fp32 with ``exp2``; the output in the input dtype; ``lse``
  ``(B, Hq, Tq)`` fp32, natural log.  A row with no key gets output 0 and lse
  ``-inf``.
* Without a GPU, ``TRITON_INTERPRET=1`` (set before this module is imported)
  runs the same kernels on CPU tensors with NumPy; that is how the tests run
  on CI-class machines.

Performance (H100 80GB HBM3, torch 2.11, triton 3.6, 2026-11-22; 32 heads,
head_dim 128, bf16, 1000 verticals + 6096 slashes; docs/benchmarks.md): each
64x64 tile brings 32 KB of K and V from L2 for 64 queries (64 flop per byte),
so the kernel is bound by L2 bandwidth, not by the tensor cores.  It moves
6.8 TB/s of tile data (100% of the L2 read rate measured in the same run),
414-437 TFLOP/s on the kept pairs (60-64% of the measured bf16 GEMM) whatever
the density: at 128K, 76 ms at 22% density, 206 ms at 64% and 323 ms at 98%,
against 247 ms for SDPA's default (cuDNN) backend and 439 ms for its flash
backend on the dense causal problem.  The conversion takes 9.5 ms at 128K.
What got it there (``benchmarks/tune_sparse.py``, 128K, 64% density): range
tiles read through Hopper tensor descriptors (TMA) instead of pointer loads,
261 -> 216 ms; the bounds/causal mask applied only to tiles that cross the
diagonal or the sequence ends, -> 209 ms; 3 pipeline stages with TMA (2
without).  Earlier sweeps: two ranges per 128-wide tile built with
``tl.where`` lose the contiguity of each half (335-390 ms); 128-column gather
tiles 340-410 ms; 8 warps about 2x slower.

Two row blocks per program (``paired=True``)
--------------------------------------------
A 64-row program brings each K/V tile from L2 for 64 queries; two
neighbouring row blocks list mostly the same tiles (a slash's range moves by
64 columns per row block, so a contiguous run of ranges is shared but for one
tile at each end), so one program per pair ``(2p, 2p+1)`` reads each common
tile once for 128 queries, half the L2 traffic per flop on those tiles.  The
key sets stay exactly the converted lists of each 64-row block: a prepass
(:func:`pair_schedule`) marks which entries of ``2p``'s list ``2p+1`` holds
too (binary search; it needs strictly ascending lists, as the conversion
writes them, and shares nothing otherwise) and lists ``2p+1``'s other
entries; the kernel walks ``2p``'s list (using each tile for ``2p+1`` too
where marked), then ``2p+1``'s own entries, ranges then columns, one online
softmax per row block.  A schedule in memory rather than a two-pointer merge
inside the loop keeps every tile address a function of the loop counter, so
Triton's software pipeline (TMA loads issued stages ahead) still applies.
Scattered slashes are not shared (each such key serves only 64 queries,
whatever the program shape), so the gain is largest where ranges are long.

How a tile is multiplied (``pair_dot``):
``"split"`` keeps two 64-row halves with their own m, l and accumulators; a
tile only one block lists costs that block's dots only.  ``"joint"`` runs one
128-row dot (fuller tensor-core tiles, as cuDNN's 128-row kernels) and masks
the rows of a block that does not list the tile to ``-inf``, so a one-sided
tile costs a full 128-row dot.  With the benchmark's ``realistic`` pattern
most range tiles are one-sided (the scattered slashes) and ``split`` should
win; with ``local`` ranges almost all are shared and ``joint`` may.  Both are
kept as launch options and ``benchmarks/tune_sparse.py`` measures them
against the one-block kernel; the default stays one row block per program
until that measurement says otherwise.

The conversion: one row block per program, or row blocks as lanes
-----------------------------------------------------------------
Each row block's lists come from a sequential merge of the head's sorted
verticals and slashes, one dependent load per step: latency, not bandwidth,
sets its time.  ``_convert_vs_kernel`` runs one merge per single-warp
program.  ``_convert_vs_lanes_kernel`` gives each program ``ROWS``
consecutive row blocks of one head as the lanes of its vectors (one lane per
thread, as MInference's CUDA converter runs one thread per row block): each
lane keeps its own merge state, every step is a masked gather and store for
all lanes, so the latency of a step is paid once per ``ROWS`` row blocks; the
slashes that reach no row of a block are skipped by a per-lane binary search.
Both write the same lists bit for bit (``rows_per_program`` chooses;
``benchmarks/bench_conversion.py`` times them).

Dense mode
----------
:func:`dense_attention_triton` is the same online softmax over one
contiguous key range per 128-row block (``[0, causal_end)`` when causal), the
tiles wholly below the diagonal unmasked; it serves the CuPy backend
(through DLPack) and the tests, with the sparse kernel's conventions.
"""

from __future__ import annotations

import math
import os

import torch

from yarnref.errors import BackendError, DeviceMismatchError, InputError

try:  # triton is optional: the torch backend works without it, only these kernels need it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = [
    "sparse_attention_triton",
    "dense_attention_triton",
    "pair_schedule",
    "convert_vertical_slash_indexes_triton",
    "triton_available",
    "interpreter_active",
]

_LOG2_E = 1.4426950408889634
_BLOCK_SIZES = (16, 32, 64, 128)
#: Largest kv_len the int32 lists and positions can hold: a range may end ``block_size_m + block_size_n``
#: columns past the last key, and the converter's "no vertical left" marker is int32's maximum.
MAX_KV_LEN = 2**31 - 1 - 2 * max(_BLOCK_SIZES)


def _check_list_lengths(q_len: int, kv_len: int) -> None:
    """Refuse lengths whose columns or positions int32 cannot hold (the lists and the kernels are int32)."""
    for name, value in (("q_len", q_len), ("kv_len", kv_len)):
        if value > MAX_KV_LEN:
            raise InputError(name, value, f"at most {MAX_KV_LEN}: the kernels' block and column lists are int32")
#: Gathered columns per step of the sparse kernel.
DEFAULT_COL_TILE = 64
#: Largest head_dim of the kernels (others up to it are padded to a power of two inside the kernel).
MAX_HEAD_DIM = 256
#: Ways a two-row-block program multiplies a K/V tile (``pair_dot``); see ``sparse_attention_triton``.
PAIR_DOTS = ("split", "joint")
#: Row blocks per program of the index conversion (``rows_per_program``): 1 is the serial kernel, the
#: others the lanes kernel (see ``convert_vertical_slash_indexes_triton``).
CONVERSION_ROWS = (1, 8, 16, 32, 64, 128)
#: The lanes kernel's ``rows_per_program`` when the conversion chooses: 32 lanes in one warp.  On an H200
#: (2026-11-28, ``benchmarks/bench_conversion.py``; 32768 queries, 28 heads) it converts 2.3-3.1x faster than
#: the serial kernel (1.05 against 3.24 ms at 128K keys and 1000 / 6096 budgets, 4.29 against 10.74 ms at 1M
#: keys and 9192 / 14288); 16 or 64 lanes, and more warps, were slower.
DEFAULT_CONVERSION_ROWS = 32
#: One-warp programs an SM holds at once (Hopper: 32 resident blocks).  Lanes shorten no walk: a lanes
#: program takes as long as the longest walk of its row blocks, and more per step than a serial one.  They
#: pay where the serial grid needs several waves of programs; where it fits the GPU at once (the 1M-token
#: layer converts 66 row blocks of 28 heads at a time), the serial kernel is faster (its conversions took
#: 548-760 ms of the layer against 647-917 ms with lanes, same day).
RESIDENT_PROGRAMS_PER_SM = 32
#: Block starts a lane of the lanes kernel writes per loop step (a longer range takes more steps).
CONVERSION_BLOCKS_PER_STEP = 4
#: Merge steps of the lanes kernel between two tests of its loop condition (``steps_per_check``).
CONVERSION_STEPS = (1, 2, 4)
#: 4: 0-8% faster than 2 in the same run, 1 was 4-16% slower.
DEFAULT_CONVERSION_STEPS = 4


def interpreter_active() -> bool:
    """True if Triton's CPU interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_available(device: torch.device | str | None = None) -> bool:
    """True if the kernels can run on ``device`` (CUDA with Triton, or CPU under the interpreter)."""
    if triton is None:
        return False
    device = torch.device("cuda" if device is None and torch.cuda.is_available() else (device or "cpu"))
    if device.type == "cuda":
        return torch.cuda.is_available()
    return interpreter_active()


# ----------------------------------------------------------------------------- kernels

#: Integer arguments the kernels do not specialise on.  Triton compiles one variant per pattern of its
#: integer arguments (whether each is 1 and whether it is divisible by 16); lengths, list widths and the
#: list strides derived from them change from call to call (every prefill chunk and DCA segment has
#: its own key count and its own kept-list widths), and each new pattern cost a compilation of seconds
#: inside the call.  Only these are exempt: the q/k/v strides keep their specialisation (it enables
#: vectorised loads), and they are multiples of 16 for every head_dim the kernels serve.
_SIZES = ("q_len", "kv_len")
_LIST_STRIDES = ("stride_lb", "stride_lh", "stride_lm", "stride_cb", "stride_ch", "stride_cr",
                 "stride_bob", "stride_boh", "stride_bor", "stride_bos", "stride_cib", "stride_cih", "stride_cir", "stride_cis")

if triton is not None:

    @triton.jit
    def _softmax_step(s, v, m_i, l_i, acc):
        """One online-softmax step: ``s`` (BLOCK_M, BLOCK_N) fp32 base-2 logits (-inf where hidden), ``v`` (BLOCK_N, D)."""
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key so far
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return m_new, l_i, acc

    @triton.jit
    def _gather_kv(
        k_base, v_base, cols, key_ok, stride_kn, stride_kd, stride_vn, stride_vd, offs_d,
        D_REAL: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):
        """K^T ``(HEAD_DIM, N)`` and V ``(N, HEAD_DIM)`` of the keys ``cols`` (0 where ``key_ok`` is False or past ``D_REAL``)."""
        cols64 = cols.to(tl.int64)
        k_mask = key_ok[None, :]
        v_mask = key_ok[:, None]
        if D_REAL != HEAD_DIM:  # head_dim padded to a power of two: the extra dims read as 0
            k_mask = k_mask & (offs_d < D_REAL)[:, None]
            v_mask = v_mask & (offs_d < D_REAL)[None, :]
        k = tl.load(k_base + cols64[None, :] * stride_kn + offs_d[:, None] * stride_kd, mask=k_mask, other=0.0)
        v = tl.load(v_base + cols64[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=v_mask, other=0.0)
        return k, v

    @triton.jit
    def _attend_tile(
        q, k_base, v_base, cols, key_ok, q_pos, m_i, l_i, acc, qk_scale,
        stride_kn, stride_kd, stride_vn, stride_vd,
        CAUSAL: tl.constexpr, offs_d, D_REAL: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):
        """One online-softmax step over the keys ``cols`` (BLOCK_N of them; ``key_ok`` marks real ones)."""
        k, v = _gather_kv(k_base, v_base, cols, key_ok, stride_kn, stride_kd, stride_vn, stride_vd, offs_d, D_REAL, HEAD_DIM)
        s = tl.dot(q, k) * qk_scale  # (BLOCK_M, BLOCK_N) fp32, base-2 logits
        visible = key_ok[None, :]
        if CAUSAL:
            visible = visible & (cols[None, :] <= q_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        return _softmax_step(s, v, m_i, l_i, acc)

    @triton.jit
    def _attend_range(
        q, k_base, v_base, k_desc, v_desc, b32, hk32, start, q_pos, q_first, kv_len, m_i, l_i, acc, qk_scale,
        stride_kn, stride_kd, stride_vn, stride_vd,
        CAUSAL: tl.constexpr, USE_TMA: tl.constexpr, MASK_ALL: tl.constexpr,
        BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr,
    ):
        """One online-softmax step over the contiguous keys ``[start, start + BLOCK_N)``.

        With ``USE_TMA`` the tiles come through tensor descriptors (Hopper TMA;
        keys outside ``[0, kv_len)`` read as 0).  The bounds and causal test is
        applied only to tiles that need it (``MASK_ALL`` applies it to every
        tile; same result, kept for measurement).
        """
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        cols = start + offs_n
        if USE_TMA:
            k = k_desc.load([b32, hk32, start, 0]).reshape(BLOCK_N, HEAD_DIM)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            v = v_desc.load([b32, hk32, start, 0]).reshape(BLOCK_N, HEAD_DIM)
        else:
            key_ok = (cols >= 0) & (cols < kv_len)
            k, v = _gather_kv(k_base, v_base, cols, key_ok, stride_kn, stride_kd, stride_vn, stride_vd, offs_d, D_REAL, HEAD_DIM)
            s = tl.dot(q, k) * qk_scale
        inside = (start >= 0) & (start + BLOCK_N <= kv_len)
        if CAUSAL:
            inside = inside & (start + BLOCK_N - 1 <= q_first)  # every key visible to every row
        if MASK_ALL or not inside:
            visible = ((cols >= 0) & (cols < kv_len))[None, :]
            if CAUSAL:
                visible = visible & (cols[None, :] <= q_pos[:, None])
            s = tl.where(visible, s, float("-inf"))
        return _softmax_step(s, v, m_i, l_i, acc)

    @triton.jit(do_not_specialize=_SIZES + _LIST_STRIDES + ("n_rows",))
    def _vs_sparse_fwd_kernel(
        Q, K, V, Out, Lse,
        BlockCount, BlockOffset, ColumnCount, ColumnIndex,
        KDesc, VDesc,  # tensor descriptors of K and V (USE_TMA), else unused
        qk_scale,  # scale * log2(e): logits in base 2
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_ob, stride_oh, stride_om, stride_od,
        stride_lb, stride_lh, stride_lm,
        stride_cb, stride_ch, stride_cr,  # block_count and column_count (same shape)
        stride_bob, stride_boh, stride_bor, stride_bos,
        stride_cib, stride_cih, stride_cir, stride_cis,
        n_heads, group, q_len, kv_len, n_rows,
        CAUSAL: tl.constexpr,
        RETURN_LSE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        RANGE_TILE: tl.constexpr,
        COL_TILE: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        D_REAL: tl.constexpr,
        USE_TMA: tl.constexpr,
        MASK_ALL: tl.constexpr,
    ):
        # Heavy row blocks (late rows see more keys) are launched first.
        row = n_rows - 1 - tl.program_id(0)
        bh = tl.program_id(1)
        b32 = bh // n_heads
        hk32 = (bh % n_heads) // group
        b = b32.to(tl.int64)
        h = (bh % n_heads).to(tl.int64)
        hk = h // group

        offs_m = row * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows of this row block
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < q_len
        q_pos = offs_m + (kv_len - q_len)  # bottom-right aligned position of each query (< 2**31: checked by the caller)
        q_first = row * BLOCK_M + (kv_len - q_len)  # the block's first (smallest) query position
        rows64 = offs_m.to(tl.int64)  # row * stride can pass 2**31 in a strided view (e.g. (B, T, H, D) transposed)

        q_ptrs = Q + b * stride_qb + h * stride_qh + rows64[:, None] * stride_qm + offs_d[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d < D_REAL)[None, :], other=0.0)
        k_base = K + b * stride_kb + hk * stride_kh
        v_base = V + b * stride_vb + hk * stride_vh

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (base-2 logits)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        row64 = row.to(tl.int64)
        count_off = b * stride_cb + h * stride_ch + row64 * stride_cr
        n_blocks = tl.load(BlockCount + count_off)
        n_cols = tl.load(ColumnCount + count_off)
        bo_base = BlockOffset + b * stride_bob + h * stride_boh + row64 * stride_bor
        ci_base = ColumnIndex + b * stride_cib + h * stride_cih + row64 * stride_cir

        # Part 1: the key ranges [start, start + BLOCK_N), arbitrary starts.  Each start is read
        # as a scalar, so the compiler knows the tile is BLOCK_N consecutive keys.
        if RANGE_TILE == BLOCK_N:
            for t in range(0, n_blocks):
                start = tl.load(bo_base + t * stride_bos)
                m_i, l_i, acc = _attend_range(
                    q, k_base, v_base, KDesc, VDesc, b32, hk32, start, q_pos, q_first, kv_len, m_i, l_i, acc, qk_scale,
                    stride_kn, stride_kd, stride_vn, stride_vd, CAUSAL, USE_TMA, MASK_ALL, BLOCK_N, HEAD_DIM, D_REAL,
                )
        else:  # two list entries per 2 * BLOCK_N-wide tile; the second may be absent
            offs_r = tl.arange(0, RANGE_TILE)
            for t in range(0, n_blocks, 2):
                start = tl.load(bo_base + t * stride_bos)
                start2 = tl.load(bo_base + tl.minimum(t + 1, n_blocks - 1) * stride_bos)
                first_half = offs_r < BLOCK_N
                cols = tl.where(first_half, start + offs_r, start2 + offs_r - BLOCK_N)
                listed = t + offs_r // BLOCK_N < n_blocks
                key_ok = listed & (cols >= 0) & (cols < kv_len)
                m_i, l_i, acc = _attend_tile(
                    q, k_base, v_base, cols, key_ok, q_pos, m_i, l_i, acc, qk_scale,
                    stride_kn, stride_kd, stride_vn, stride_vd, CAUSAL, offs_d, D_REAL, HEAD_DIM,
                )
        # Part 2: the gathered columns, COL_TILE at a time (one online softmax over both parts).
        offs_c = tl.arange(0, COL_TILE)
        for c0 in range(0, n_cols, COL_TILE):
            listed = c0 + offs_c < n_cols
            cols = tl.load(ci_base + (c0 + offs_c) * stride_cis, mask=listed, other=-1)
            key_ok = listed & (cols >= 0) & (cols < kv_len)
            m_i, l_i, acc = _attend_tile(
                q, k_base, v_base, cols, key_ok, q_pos, m_i, l_i, acc, qk_scale,
                stride_kn, stride_kd, stride_vn, stride_vd, CAUSAL, offs_d, D_REAL, HEAD_DIM,
            )

        has_key = l_i > 0.0
        out = acc / tl.where(has_key, l_i, 1.0)[:, None]
        o_ptrs = Out + b * stride_ob + h * stride_oh + rows64[:, None] * stride_om + offs_d[None, :] * stride_od
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_d < D_REAL)[None, :])
        if RETURN_LSE:
            lse = tl.where(has_key, (m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
            tl.store(Lse + b * stride_lb + h * stride_lh + rows64 * stride_lm, lse, mask=row_ok)

    # ------------------------------------------------------------------ two row blocks per program

    @triton.jit
    def _gather_rows(base, cols, key_ok, stride_n, stride_d, offs_d, D_REAL: tl.constexpr, HEAD_DIM: tl.constexpr):
        """Rows ``cols`` of a ``(keys, D)`` matrix as ``(N, HEAD_DIM)`` (0 where ``key_ok`` is False or past ``D_REAL``)."""
        mask = key_ok[:, None]
        if D_REAL != HEAD_DIM:
            mask = mask & (offs_d < D_REAL)[None, :]
        return tl.load(base + cols.to(tl.int64)[:, None] * stride_n + offs_d[None, :] * stride_d, mask=mask, other=0.0)

    @triton.jit
    def _load_range(
        k_base, v_base, k_desc, v_desc, b32, hk32, start, kv_len,
        stride_kn, stride_kd, stride_vn, stride_vd,
        USE_TMA: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr,
    ):
        """K and V ``(BLOCK_N, HEAD_DIM)`` of the keys ``[start, start + BLOCK_N)``; keys outside ``[0, kv_len)`` read as 0."""
        if USE_TMA:
            k = k_desc.load([b32, hk32, start, 0]).reshape(BLOCK_N, HEAD_DIM)
            v = v_desc.load([b32, hk32, start, 0]).reshape(BLOCK_N, HEAD_DIM)
        else:
            offs_d = tl.arange(0, HEAD_DIM)
            cols = start + tl.arange(0, BLOCK_N)
            key_ok = (cols >= 0) & (cols < kv_len)
            k = _gather_rows(k_base, cols, key_ok, stride_kn, stride_kd, offs_d, D_REAL, HEAD_DIM)
            v = _gather_rows(v_base, cols, key_ok, stride_vn, stride_vd, offs_d, D_REAL, HEAD_DIM)
        return k, v

    @triton.jit
    def _range_half(
        q, k, v, start, q_pos, q_first, kv_len, m_i, l_i, acc, qk_scale,
        CAUSAL: tl.constexpr, MASK_ALL: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One row block's online-softmax step over the loaded range tile ``[start, start + BLOCK_N)``."""
        s = tl.dot(q, tl.trans(k)) * qk_scale
        inside = (start >= 0) & (start + BLOCK_N <= kv_len)
        if CAUSAL:
            inside = inside & (start + BLOCK_N - 1 <= q_first)
        if MASK_ALL or not inside:
            cols = start + tl.arange(0, BLOCK_N)
            visible = ((cols >= 0) & (cols < kv_len))[None, :]
            if CAUSAL:
                visible = visible & (cols[None, :] <= q_pos[:, None])
            s = tl.where(visible, s, float("-inf"))
        return _softmax_step(s, v, m_i, l_i, acc)

    @triton.jit
    def _cols_half(q, kt, v, cols, key_ok, q_pos, m_i, l_i, acc, qk_scale, CAUSAL: tl.constexpr):
        """One row block's online-softmax step over gathered keys (``kt`` = K^T; ``key_ok`` says which count for it)."""
        s = tl.dot(q, kt) * qk_scale
        visible = key_ok[None, :]
        if CAUSAL:
            visible = visible & (cols[None, :] <= q_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        return _softmax_step(s, v, m_i, l_i, acc)

    @triton.jit
    def _finish_rows(acc, m_i, l_i, Out, Lse, b, h, offs_m, q_len, offs_d,
                     stride_ob, stride_oh, stride_om, stride_od, stride_lb, stride_lh, stride_lm,
                     RETURN_LSE: tl.constexpr, D_REAL: tl.constexpr):
        """Normalise and store the rows ``offs_m`` (rows with no key: 0 and lse -inf)."""
        row_ok = offs_m < q_len
        rows64 = offs_m.to(tl.int64)
        has_key = l_i > 0.0
        out = acc / tl.where(has_key, l_i, 1.0)[:, None]
        o_ptrs = Out + b * stride_ob + h * stride_oh + rows64[:, None] * stride_om + offs_d[None, :] * stride_od
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_d < D_REAL)[None, :])
        if RETURN_LSE:
            lse = tl.where(has_key, (m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
            tl.store(Lse + b * stride_lb + h * stride_lh + rows64 * stride_lm, lse, mask=row_ok)

    @triton.jit
    def _lower_bound(base, stride, n, x, valid, n_search):
        """Per lane: the number of entries of the ascending list ``base[:n]`` below ``x`` (binary search)."""
        lo = tl.zeros(x.shape, dtype=tl.int32)
        hi = lo + n
        for _ in range(0, n_search):
            active = lo < hi
            mid = (lo + hi) // 2
            val = tl.load(base + mid * stride, mask=valid & active, other=0)
            right = active & (val < x)
            lo = tl.where(right, mid + 1, lo)
            hi = tl.where(active & (val >= x), mid, hi)
        return lo

    @triton.jit(do_not_specialize=("stride_cb", "stride_ch", "stride_cr", "stride_lb", "stride_lh", "stride_lr", "stride_ls", "n_rows", "n_pairs", "cap", "n_search"))
    def _pair_schedule_kernel(
        Count, List, Shared, BOnly, BOnlyCount,
        stride_cb, stride_ch, stride_cr,
        stride_lb, stride_lh, stride_lr, stride_ls,
        n_heads, n_rows, n_pairs, cap, n_search,
        W: tl.constexpr,
    ):
        # One program per (pair of row blocks, batch * head): which entries of row block 2p's
        # list row block 2p+1 lists too (Shared), and 2p+1's other entries (BOnly).
        pair = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // n_heads).to(tl.int64)
        h = (bh % n_heads).to(tl.int64)
        row_a = (2 * pair).to(tl.int64)
        has_b = 2 * pair + 1 < n_rows
        count = Count + b * stride_cb + h * stride_ch
        na = tl.minimum(tl.maximum(tl.load(count + row_a * stride_cr), 0), cap)
        nb = tl.minimum(tl.maximum(tl.load(count + (row_a + 1) * stride_cr, mask=has_b, other=0), 0), cap)
        a_base = List + b * stride_lb + h * stride_lh + row_a * stride_lr
        b_base = a_base + stride_lr
        sp = bh.to(tl.int64) * n_pairs + pair
        out_shared = Shared + sp * cap
        out_b = BOnly + sp * cap
        offs = tl.arange(0, W)

        # Sharing is decided by binary search, which needs both lists strictly ascending (as the
        # conversion writes them); otherwise nothing is shared and every entry of 2p+1 is its own.
        bad = tl.zeros([], dtype=tl.int32)
        for i0 in range(0, na, W):
            i = i0 + offs
            m = i + 1 < na
            x = tl.load(a_base + i * stride_ls, mask=m, other=0)
            y = tl.load(a_base + (i + 1) * stride_ls, mask=m, other=1)
            bad += tl.sum((m & (x >= y)).to(tl.int32), 0)
        for j0 in range(0, nb, W):
            j = j0 + offs
            m = j + 1 < nb
            x = tl.load(b_base + j * stride_ls, mask=m, other=0)
            y = tl.load(b_base + (j + 1) * stride_ls, mask=m, other=1)
            bad += tl.sum((m & (x >= y)).to(tl.int32), 0)

        n_only = tl.zeros([], dtype=tl.int32)
        if bad == 0:
            for i0 in range(0, na, W):
                i = i0 + offs
                valid = i < na
                x = tl.load(a_base + i * stride_ls, mask=valid, other=0)
                pos = _lower_bound(b_base, stride_ls, nb, x, valid, n_search)
                found = valid & (pos < nb)
                y = tl.load(b_base + pos * stride_ls, mask=found, other=0)
                tl.store(out_shared + i, (found & (y == x)).to(tl.int8), mask=valid)
            for j0 in range(0, nb, W):
                j = j0 + offs
                valid = j < nb
                y = tl.load(b_base + j * stride_ls, mask=valid, other=0)
                pos = _lower_bound(a_base, stride_ls, na, y, valid, n_search)
                found = valid & (pos < na)
                x = tl.load(a_base + pos * stride_ls, mask=found, other=0)
                only = valid & ~(found & (x == y))
                dest = n_only + tl.cumsum(only.to(tl.int32), 0) - 1
                tl.store(out_b + dest, y, mask=only)
                n_only += tl.sum(only.to(tl.int32), 0)
        else:
            for i0 in range(0, na, W):
                i = i0 + offs
                tl.store(out_shared + i, tl.zeros([W], dtype=tl.int8), mask=i < na)
            for j0 in range(0, nb, W):
                j = j0 + offs
                valid = j < nb
                tl.store(out_b + j, tl.load(b_base + j * stride_ls, mask=valid, other=0), mask=valid)
            n_only = nb
        tl.store(BOnlyCount + sp, n_only)

    @triton.jit(do_not_specialize=_SIZES + _LIST_STRIDES + ("n_pairs", "blk_cap", "col_cap"))
    def _vs_sparse_pair_kernel(
        Q, K, V, Out, Lse,
        BlockCount, BlockOffset, ColumnCount, ColumnIndex,
        BlkShared, BlkBOnly, BlkBOnlyCount, ColShared, ColBOnly, ColBOnlyCount,
        KDesc, VDesc,
        qk_scale,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_ob, stride_oh, stride_om, stride_od,
        stride_lb, stride_lh, stride_lm,
        stride_cb, stride_ch, stride_cr,
        stride_bob, stride_boh, stride_bor, stride_bos,
        stride_cib, stride_cih, stride_cir, stride_cis,
        n_heads, group, q_len, kv_len, n_pairs, blk_cap, col_cap,
        CAUSAL: tl.constexpr,
        RETURN_LSE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        COL_TILE: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        D_REAL: tl.constexpr,
        USE_TMA: tl.constexpr,
        MASK_ALL: tl.constexpr,
        JOINT: tl.constexpr,
    ):
        # Row blocks a = 2p and b = 2p + 1; heavy pairs first.
        pair = n_pairs - 1 - tl.program_id(0)
        bh = tl.program_id(1)
        b32 = bh // n_heads
        hk32 = (bh % n_heads) // group
        b = b32.to(tl.int64)
        h = (bh % n_heads).to(tl.int64)
        hk = h // group
        off = kv_len - q_len
        row_a = 2 * pair
        offs_d = tl.arange(0, HEAD_DIM)
        k_base = K + b * stride_kb + hk * stride_kh
        v_base = V + b * stride_vb + hk * stride_vh
        q_base = Q + b * stride_qb + h * stride_qh
        d_ok = (offs_d < D_REAL)[None, :]

        row64 = row_a.to(tl.int64)
        count_off = b * stride_cb + h * stride_ch + row64 * stride_cr
        n_blocks = tl.minimum(tl.load(BlockCount + count_off), blk_cap)  # a's list; clamped to the capacity
        n_cols = tl.minimum(tl.load(ColumnCount + count_off), col_cap)
        bo_base = BlockOffset + b * stride_bob + h * stride_boh + row64 * stride_bor
        ci_base = ColumnIndex + b * stride_cib + h * stride_cih + row64 * stride_cir
        sp = bh.to(tl.int64) * n_pairs + pair
        blk_shared = BlkShared + sp * blk_cap
        blk_bonly = BlkBOnly + sp * blk_cap
        n_blk_bonly = tl.load(BlkBOnlyCount + sp)
        col_shared = ColShared + sp * col_cap
        col_bonly = ColBOnly + sp * col_cap
        n_col_bonly = tl.load(ColBOnlyCount + sp)
        offs_c = tl.arange(0, COL_TILE)

        if JOINT:
            # One 2*BLOCK_M-row dot per tile; the rows of a half that does not list the tile are masked.
            offs_m = row_a * BLOCK_M + tl.arange(0, 2 * BLOCK_M)
            in_b = tl.arange(0, 2 * BLOCK_M) >= BLOCK_M
            q_pos = offs_m + off
            q_first = row_a * BLOCK_M + off
            q = tl.load(q_base + offs_m.to(tl.int64)[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                        mask=(offs_m < q_len)[:, None] & d_ok, other=0.0)
            m_i = tl.full([2 * BLOCK_M], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([2 * BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([2 * BLOCK_M, HEAD_DIM], dtype=tl.float32)
            for t in range(0, n_blocks):  # a's ranges, shared with b where b lists them too
                start = tl.load(bo_base + t * stride_bos)
                shared = tl.load(blk_shared + t) != 0
                k, v = _load_range(k_base, v_base, KDesc, VDesc, b32, hk32, start, kv_len,
                                   stride_kn, stride_kd, stride_vn, stride_vd, USE_TMA, BLOCK_N, HEAD_DIM, D_REAL)
                s = tl.dot(q, tl.trans(k)) * qk_scale
                inside = shared & (start >= 0) & (start + BLOCK_N <= kv_len)
                if CAUSAL:
                    inside = inside & (start + BLOCK_N - 1 <= q_first)
                if MASK_ALL or not inside:
                    cols = start + tl.arange(0, BLOCK_N)
                    visible = ((cols >= 0) & (cols < kv_len))[None, :] & ((~in_b) | shared)[:, None]
                    if CAUSAL:
                        visible = visible & (cols[None, :] <= q_pos[:, None])
                    s = tl.where(visible, s, float("-inf"))
                m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
            for t in range(0, n_blk_bonly):  # b's other ranges
                start = tl.load(blk_bonly + t)
                k, v = _load_range(k_base, v_base, KDesc, VDesc, b32, hk32, start, kv_len,
                                   stride_kn, stride_kd, stride_vn, stride_vd, USE_TMA, BLOCK_N, HEAD_DIM, D_REAL)
                s = tl.dot(q, tl.trans(k)) * qk_scale
                cols = start + tl.arange(0, BLOCK_N)
                visible = ((cols >= 0) & (cols < kv_len))[None, :] & in_b[:, None]
                if CAUSAL:
                    visible = visible & (cols[None, :] <= q_pos[:, None])
                s = tl.where(visible, s, float("-inf"))
                m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
            for c0 in range(0, n_cols, COL_TILE):  # a's columns, shared with b where b lists them too
                listed = c0 + offs_c < n_cols
                cols = tl.load(ci_base + (c0 + offs_c) * stride_cis, mask=listed, other=-1)
                shared = tl.load(col_shared + c0 + offs_c, mask=listed, other=0) != 0
                key_ok = listed & (cols >= 0) & (cols < kv_len)
                kt, v = _gather_kv(k_base, v_base, cols, key_ok, stride_kn, stride_kd, stride_vn, stride_vd, offs_d, D_REAL, HEAD_DIM)
                s = tl.dot(q, kt) * qk_scale
                visible = key_ok[None, :] & ((~in_b)[:, None] | shared[None, :])
                if CAUSAL:
                    visible = visible & (cols[None, :] <= q_pos[:, None])
                s = tl.where(visible, s, float("-inf"))
                m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
            for c0 in range(0, n_col_bonly, COL_TILE):  # b's other columns
                listed = c0 + offs_c < n_col_bonly
                cols = tl.load(col_bonly + c0 + offs_c, mask=listed, other=-1)
                key_ok = listed & (cols >= 0) & (cols < kv_len)
                kt, v = _gather_kv(k_base, v_base, cols, key_ok, stride_kn, stride_kd, stride_vn, stride_vd, offs_d, D_REAL, HEAD_DIM)
                s = tl.dot(q, kt) * qk_scale
                visible = key_ok[None, :] & in_b[:, None]
                if CAUSAL:
                    visible = visible & (cols[None, :] <= q_pos[:, None])
                s = tl.where(visible, s, float("-inf"))
                m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
            _finish_rows(acc, m_i, l_i, Out, Lse, b, h, offs_m, q_len, offs_d,
                         stride_ob, stride_oh, stride_om, stride_od, stride_lb, stride_lh, stride_lm, RETURN_LSE, D_REAL)
        else:
            # Two BLOCK_M-row halves with their own accumulators: a tile costs b's dots only if b lists it.
            offs_a = row_a * BLOCK_M + tl.arange(0, BLOCK_M)
            offs_b = offs_a + BLOCK_M
            pos_a = offs_a + off
            pos_b = offs_b + off
            first_a = row_a * BLOCK_M + off
            first_b = first_a + BLOCK_M
            qa = tl.load(q_base + offs_a.to(tl.int64)[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                         mask=(offs_a < q_len)[:, None] & d_ok, other=0.0)
            qb = tl.load(q_base + offs_b.to(tl.int64)[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                         mask=(offs_b < q_len)[:, None] & d_ok, other=0.0)
            m_a = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            l_a = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc_a = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
            m_b = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            l_b = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc_b = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
            for t in range(0, n_blocks):
                start = tl.load(bo_base + t * stride_bos)
                shared = tl.load(blk_shared + t) != 0
                k, v = _load_range(k_base, v_base, KDesc, VDesc, b32, hk32, start, kv_len,
                                   stride_kn, stride_kd, stride_vn, stride_vd, USE_TMA, BLOCK_N, HEAD_DIM, D_REAL)
                m_a, l_a, acc_a = _range_half(qa, k, v, start, pos_a, first_a, kv_len, m_a, l_a, acc_a, qk_scale,
                                              CAUSAL, MASK_ALL, BLOCK_N)
                if shared:
                    m_b, l_b, acc_b = _range_half(qb, k, v, start, pos_b, first_b, kv_len, m_b, l_b, acc_b, qk_scale,
                                                  CAUSAL, MASK_ALL, BLOCK_N)
            for t in range(0, n_blk_bonly):
                start = tl.load(blk_bonly + t)
                k, v = _load_range(k_base, v_base, KDesc, VDesc, b32, hk32, start, kv_len,
                                   stride_kn, stride_kd, stride_vn, stride_vd, USE_TMA, BLOCK_N, HEAD_DIM, D_REAL)
                m_b, l_b, acc_b = _range_half(qb, k, v, start, pos_b, first_b, kv_len, m_b, l_b, acc_b, qk_scale,
                                              CAUSAL, MASK_ALL, BLOCK_N)
            for c0 in range(0, n_cols, COL_TILE):
                listed = c0 + offs_c < n_cols
                cols = tl.load(ci_base + (c0 + offs_c) * stride_cis, mask=listed, other=-1)
                shared = tl.load(col_shared + c0 + offs_c, mask=listed, other=0) != 0
                key_ok = listed & (cols >= 0) & (cols < kv_len)
                kt, v = _gather_kv(k_base, v_base, cols, key_ok, stride_kn, stride_kd, stride_vn, stride_vd, offs_d, D_REAL, HEAD_DIM)
                m_a, l_a, acc_a = _cols_half(qa, kt, v, cols, key_ok, pos_a, m_a, l_a, acc_a, qk_scale, CAUSAL)
                if tl.max(shared.to(tl.int32), 0) > 0:
                    m_b, l_b, acc_b = _cols_half(qb, kt, v, cols, key_ok & shared, pos_b, m_b, l_b, acc_b, qk_scale, CAUSAL)
            for c0 in range(0, n_col_bonly, COL_TILE):
                listed = c0 + offs_c < n_col_bonly
                cols = tl.load(col_bonly + c0 + offs_c, mask=listed, other=-1)
                key_ok = listed & (cols >= 0) & (cols < kv_len)
                kt, v = _gather_kv(k_base, v_base, cols, key_ok, stride_kn, stride_kd, stride_vn, stride_vd, offs_d, D_REAL, HEAD_DIM)
                m_b, l_b, acc_b = _cols_half(qb, kt, v, cols, key_ok, pos_b, m_b, l_b, acc_b, qk_scale, CAUSAL)
            _finish_rows(acc_a, m_a, l_a, Out, Lse, b, h, offs_a, q_len, offs_d,
                         stride_ob, stride_oh, stride_om, stride_od, stride_lb, stride_lh, stride_lm, RETURN_LSE, D_REAL)
            _finish_rows(acc_b, m_b, l_b, Out, Lse, b, h, offs_b, q_len, offs_d,
                         stride_ob, stride_oh, stride_om, stride_od, stride_lb, stride_lh, stride_lm, RETURN_LSE, D_REAL)

    # ------------------------------------------------------------------ dense attention

    @triton.jit(do_not_specialize=_SIZES + ("stride_lb", "stride_lh", "stride_lm", "n_blocks"))
    def _dense_fwd_kernel(
        Q, K, V, Out, Lse, KDesc, VDesc,
        qk_scale,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_ob, stride_oh, stride_om, stride_od,
        stride_lb, stride_lh, stride_lm,
        n_heads, group, q_len, kv_len, n_blocks,
        CAUSAL: tl.constexpr,
        RETURN_LSE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        D_REAL: tl.constexpr,
        USE_TMA: tl.constexpr,
    ):
        if CAUSAL:
            blk = n_blocks - 1 - tl.program_id(0)  # heavy row blocks first
        else:
            blk = tl.program_id(0)
        bh = tl.program_id(1)
        b32 = bh // n_heads
        hk32 = (bh % n_heads) // group
        b = b32.to(tl.int64)
        h = (bh % n_heads).to(tl.int64)
        hk = h // group
        off = kv_len - q_len
        offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q_pos = offs_m + off
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m.to(tl.int64)[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                    mask=(offs_m < q_len)[:, None] & (offs_d < D_REAL)[None, :], other=0.0)
        k_base = K + b * stride_kb + hk * stride_kh
        v_base = V + b * stride_vb + hk * stride_vh
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        # Keys [0, full) are visible to every row of the block (no mask); [full, end) are tested.
        full_tiles = (kv_len // BLOCK_N) * BLOCK_N
        if CAUSAL:
            q_first = blk * BLOCK_M + off
            q_last = tl.minimum(blk * BLOCK_M + BLOCK_M, q_len) - 1 + off
            end = tl.maximum(tl.minimum(kv_len, q_last + 1), 0)
            full = tl.minimum((tl.maximum(q_first + 1, 0) // BLOCK_N) * BLOCK_N, full_tiles)
        else:
            end = kv_len
            full = full_tiles
        for start in range(0, full, BLOCK_N):
            k, v = _load_range(k_base, v_base, KDesc, VDesc, b32, hk32, start, kv_len,
                               stride_kn, stride_kd, stride_vn, stride_vd, USE_TMA, BLOCK_N, HEAD_DIM, D_REAL)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
        for start in range(full, end, BLOCK_N):
            k, v = _load_range(k_base, v_base, KDesc, VDesc, b32, hk32, start, kv_len,
                               stride_kn, stride_kd, stride_vn, stride_vd, USE_TMA, BLOCK_N, HEAD_DIM, D_REAL)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            cols = start + tl.arange(0, BLOCK_N)
            visible = (cols < kv_len)[None, :]
            if CAUSAL:
                visible = visible & (cols[None, :] <= q_pos[:, None])
            s = tl.where(visible, s, float("-inf"))
            m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
        _finish_rows(acc, m_i, l_i, Out, Lse, b, h, offs_m, q_len, offs_d,
                     stride_ob, stride_oh, stride_om, stride_od, stride_lb, stride_lh, stride_lm, RETURN_LSE, D_REAL)

    @triton.jit
    def _save_range(BlockOffset, n_saved, range_start, range_end, kv_len, capacity, BLOCK_N: tl.constexpr):
        """Write the block starts range_start, range_start + BLOCK_N, ... < min(range_end, kv_len)."""
        stop = tl.minimum(range_end, kv_len)
        for start in range(range_start, stop, BLOCK_N):
            tl.store(BlockOffset + n_saved, start, mask=n_saved < capacity)
            n_saved += 1
        return n_saved

    @triton.jit(do_not_specialize=_SIZES + ("n_rows", "nv_cap", "ns_cap", "col_cap", "blk_cap"))
    def _convert_vs_kernel(
        Vert, Slash, VertCount, SlashCount,
        BlockCount, BlockOffset, ColumnCount, ColumnIndex,
        q_len, kv_len, n_rows, nv_cap, ns_cap, col_cap, blk_cap,
        CAUSAL: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # One program per (row block, batch * head): the sequential merge of
        # vLLM csrc/attention/vertical_slash_index.cu semantics, as in yarnref.sparse.convert_vertical_slash_indexes.
        row = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        start_m = row * BLOCK_M
        end_m = start_m + BLOCK_M
        if CAUSAL:
            off = kv_len - q_len
        else:
            off = kv_len
        vert = Vert + bh * nv_cap
        slash = Slash + bh * ns_cap
        nv = tl.load(VertCount + bh)
        ns = tl.load(SlashCount + bh)
        blk_out = BlockOffset + (bh * n_rows + row) * blk_cap
        col_out = ColumnIndex + (bh * n_rows + row) * col_cap

        # "No vertical left": beyond every range (vLLM uses end_m + BLOCK_N + off,
        # which gives the same lists whenever BLOCK_N >= BLOCK_M).
        far = tl.full([], 2147483647, dtype=tl.int32)  # int32 max: past every range, as kv_len + 2 * 128 < 2**31
        v_idx = tl.load(vert, mask=nv > 0, other=far).to(tl.int32)
        v = tl.minimum(nv, 1)
        # Skip the slashes that cannot reach this row block (delta >= end_m + off).
        s_idx = tl.load(slash, mask=ns > 0, other=end_m + off + 1).to(tl.int32)
        s = tl.minimum(ns, 1)
        while (s_idx >= end_m + off) & (s < ns):
            s_idx = tl.load(slash + s).to(tl.int32)
            s += 1
        has_slash = s_idx <= end_m + off
        e = tl.maximum(end_m + off - s_idx, BLOCK_M)  # end column of the slash's range
        if CAUSAL:  # no slash reaches the block: a first range just past the diagonal
            range_start = tl.where(has_slash, e - BLOCK_M, end_m + off)
            range_end = tl.where(has_slash, e, end_m + off + BLOCK_N)
        else:  # ... or past every key
            range_start = tl.where(has_slash, e - BLOCK_M, kv_len)
            range_end = tl.where(has_slash, e, kv_len + BLOCK_N)

        n_blk = tl.zeros([], dtype=tl.int32)
        n_col = tl.zeros([], dtype=tl.int32)
        done = tl.full([], 0, dtype=tl.int32)
        while done == 0:
            if v_idx < range_end:
                if v_idx < range_start:  # a vertical no range covers: a column
                    tl.store(col_out + n_col, v_idx, mask=n_col < col_cap)
                    n_col += 1
                if v < nv:
                    v_idx = tl.load(vert + v).to(tl.int32)
                    v += 1
                else:
                    v_idx = far
            else:
                take = s < ns
                if not CAUSAL:
                    take = take & (tl.load(slash + s, mask=take, other=-1) >= start_m)
                if take:
                    e = tl.maximum(end_m + off - tl.load(slash + s).to(tl.int32), BLOCK_M)
                    s += 1
                    if e > range_end + BLOCK_M:  # a gap: emit the range, start a new one
                        n_blk = _save_range(blk_out, n_blk, range_start, range_end, kv_len, blk_cap, BLOCK_N)
                        range_start = e - BLOCK_M
                        range_end = e
                    elif e > range_end:  # touching: grow by one row block
                        range_end += BLOCK_M
                else:
                    finish = v == nv
                    if CAUSAL:
                        finish = finish | (v_idx > range_start)
                    if finish:
                        if not CAUSAL:  # non-causal: the last vertical still counts
                            if (v == nv) & (v_idx < kv_len):
                                tl.store(col_out + n_col, v_idx, mask=n_col < col_cap)
                                n_col += 1
                        n_blk = _save_range(blk_out, n_blk, range_start, range_end, kv_len, blk_cap, BLOCK_N)
                        done = 1
                    else:  # slashes exhausted, verticals left
                        if CAUSAL:
                            range_start = end_m + off
                            range_end = end_m + off + BLOCK_N
                        else:
                            n_blk = _save_range(blk_out, n_blk, range_start, range_end, kv_len, blk_cap, BLOCK_N)
                            range_start = kv_len
                            range_end = kv_len + BLOCK_N
                        # (the vLLM loop stops advancing slashes here; `take` stays False)
        out = bh * n_rows + row
        tl.store(BlockCount + out, tl.minimum(n_blk, blk_cap))
        tl.store(ColumnCount + out, tl.minimum(n_col, col_cap))

    @triton.jit
    def _count_not_below(base, n, x, valid, n_search):
        """Per lane: the number of entries of the descending list ``base[:n]`` that are ``>= x`` (binary search)."""
        lo = tl.zeros(x.shape, dtype=tl.int32)
        hi = lo + n
        for _ in range(0, n_search):
            active = lo < hi
            mid = (lo + hi) // 2
            val = tl.load(base + mid, mask=valid & active, other=0)
            lo = tl.where(active & (val >= x), mid + 1, lo)
            hi = tl.where(active & (val < x), mid, hi)
        return lo

    @triton.jit
    def _emit_blocks(blk_out, n_blk, start, stop, capacity, BLOCK_N: tl.constexpr, EMIT: tl.constexpr):
        """Per lane: write up to EMIT block starts start, start + BLOCK_N, ... < stop; the new count and start."""
        # EMIT one-dimensional stores rather than one (ROWS, EMIT) store: the lanes' vectors keep their
        # layout (one lane per thread), with no shuffle through shared memory in every step.
        for k in tl.static_range(EMIT):
            tl.store(blk_out + n_blk + k, start + k * BLOCK_N, mask=(start + k * BLOCK_N < stop) & (n_blk + k < capacity))
        n_new = tl.minimum(tl.maximum((stop - start + BLOCK_N - 1) // BLOCK_N, 0), EMIT)
        return n_blk + n_new, start + n_new * BLOCK_N

    @triton.jit(do_not_specialize=_SIZES + ("n_rows", "nv_cap", "ns_cap", "col_cap", "blk_cap", "n_search"))
    def _convert_vs_lanes_kernel(
        Vert, Slash, VertCount, SlashCount,
        BlockCount, BlockOffset, ColumnCount, ColumnIndex,
        q_len, kv_len, n_rows, nv_cap, ns_cap, col_cap, blk_cap, n_search,
        CAUSAL: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        ROWS: tl.constexpr,
        EMIT: tl.constexpr,
        STEPS: tl.constexpr,
    ):
        # One program per (ROWS consecutive row blocks, batch * head); each row block is one lane of
        # the vectors below and runs _convert_vs_kernel's merge with its own state.  A loop step
        # advances every live lane by one step of that merge (masked gathers and stores).
        bh = tl.program_id(1).to(tl.int64)
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,) int32
        in_range = row < n_rows
        start_m = row * BLOCK_M
        end_m = start_m + BLOCK_M
        if CAUSAL:
            off = kv_len - q_len
        else:
            off = kv_len
        vert = Vert + bh * nv_cap
        slash = Slash + bh * ns_cap
        nv = tl.load(VertCount + bh)
        ns = tl.load(SlashCount + bh)
        out = bh * n_rows + row.to(tl.int64)  # (ROWS,)
        blk_out = BlockOffset + out * blk_cap
        col_out = ColumnIndex + out * col_cap
        zero = tl.zeros([ROWS], dtype=tl.int32)

        far = tl.full([], 2147483647, dtype=tl.int32)  # "no vertical left", as in _convert_vs_kernel
        v_idx = zero + tl.load(vert, mask=nv > 0, other=far).to(tl.int32)
        v = zero + tl.minimum(nv, 1)
        # Skip the slashes that cannot reach the lane's row block (delta >= end_m + off): the serial
        # kernel's loop stops at the first slash below the bound, or at the last slash.
        reach = end_m + off
        any_slash = in_range & (zero + ns > 0)
        n_skip = _count_not_below(slash, ns, reach, any_slash, n_search)
        first = tl.minimum(n_skip, ns - 1)
        s_idx = tl.load(slash + first, mask=any_slash, other=0).to(tl.int32)
        s_idx = tl.where(any_slash, s_idx, reach + 1)
        s = tl.where(any_slash, first + 1, zero)
        has_slash = s_idx <= reach
        e = tl.maximum(reach - s_idx, BLOCK_M)
        if CAUSAL:
            range_start = tl.where(has_slash, e - BLOCK_M, reach)
            range_end = tl.where(has_slash, e, reach + BLOCK_N)
        else:
            range_start = tl.where(has_slash, e - BLOCK_M, kv_len)
            range_end = tl.where(has_slash, e, kv_len + BLOCK_N)

        n_blk = zero
        n_col = zero
        done = tl.where(in_range, 0, 1)
        pend = zero  # blocks of a saved range still to write: [pend, pend_stop) in BLOCK_N steps
        pend_stop = zero
        live = tl.sum((done == 0).to(tl.int32), 0)
        while live > 0:
            # STEPS merge steps per test of the loop condition (a reduction over the lanes on the
            # critical path of every step otherwise); a step of a lane that is done changes nothing.
            for _ in tl.static_range(STEPS):
                # One merge step for the lanes with nothing left to write.
                step = (done == 0) & (pend >= pend_stop)
                vstep = step & (v_idx < range_end)
                col = vstep & (v_idx < range_start)  # a vertical no range covers: a column
                tl.store(col_out + n_col, v_idx, mask=col & (n_col < col_cap))
                n_col += col.to(tl.int32)
                more_v = vstep & (v < nv)
                v_next = tl.load(vert + v, mask=more_v, other=far).to(tl.int32)
                v_idx = tl.where(vstep, v_next, v_idx)
                v += more_v.to(tl.int32)

                sstep = step & ~vstep  # (v_idx was not changed on these lanes)
                take = sstep & (s < ns)
                s_val = tl.load(slash + s, mask=take, other=-1).to(tl.int32)
                if not CAUSAL:
                    take = take & (s_val >= start_m)
                e = tl.maximum(reach - s_val, BLOCK_M)
                s += take.to(tl.int32)
                gap = take & (e > range_end + BLOCK_M)  # emit the range, start a new one
                grow = take & (e > range_end) & ~gap  # touching: grow by one row block
                rest = sstep & ~take
                finish = v == nv
                if CAUSAL:
                    finish = finish | (v_idx > range_start)
                fin = rest & finish
                if not CAUSAL:  # non-causal: the last vertical still counts
                    last = fin & (v == nv) & (v_idx < kv_len)
                    tl.store(col_out + n_col, v_idx, mask=last & (n_col < col_cap))
                    n_col += last.to(tl.int32)
                restart = rest & ~finish  # slashes exhausted, verticals left
                if CAUSAL:
                    save = gap | fin
                    new_start = tl.where(gap, e - BLOCK_M, reach)
                    new_end = tl.where(gap, e, reach + BLOCK_N)
                else:
                    save = gap | fin | restart
                    new_start = tl.where(gap, e - BLOCK_M, kv_len)
                    new_end = tl.where(gap, e, kv_len + BLOCK_N)
                pend = tl.where(save, range_start, pend)
                pend_stop = tl.where(save, tl.minimum(range_end, kv_len), pend_stop)
                moved = gap | restart
                range_start = tl.where(moved, new_start, range_start)
                range_end = tl.where(moved, new_end, range_end) + tl.where(grow, BLOCK_M, 0)
                done = tl.where(fin, 1, done)

                # Write up to EMIT blocks of every lane's pending range (a saved range of up to EMIT
                # blocks is written in the step that saved it).
                writing = pend < pend_stop
                n_blk, pend = _emit_blocks(blk_out, n_blk, pend, tl.where(writing, pend_stop, pend), blk_cap, BLOCK_N, EMIT)
            live = tl.sum(((done == 0) | (pend < pend_stop)).to(tl.int32), 0)
        tl.store(BlockCount + out, tl.minimum(n_blk, blk_cap), mask=in_range)
        tl.store(ColumnCount + out, tl.minimum(n_col, col_cap), mask=in_range)


# ----------------------------------------------------------------------------- checks


def _require_triton(device: torch.device):
    if triton is None:
        raise BackendError("the Triton kernels need the `triton` package (pip install triton)")
    if device.type == "cuda":
        return
    if device.type == "cpu" and interpreter_active():
        return
    raise InputError(
        "q", f"a tensor on {device}", "CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before import)"
    )


def _check_block_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in _BLOCK_SIZES:
        raise InputError(name, value, f"one of {_BLOCK_SIZES}")
    return value


def _tma_possible(k, v, block_n: int) -> bool:
    """True if k and v can be read through TMA tensor descriptors (sm_90+, contiguous rows, 16-byte alignment)."""
    if k.device.type != "cuda" or interpreter_active():
        return False
    if torch.cuda.get_device_capability(k.device)[0] < 9:
        return False
    return all(tma_layout_ok(x.data_ptr(), x.shape, x.stride(), x.element_size(), block_n) for x in (k, v))


def tma_layout_ok(address: int, shape, strides, itemsize: int, block_n: int) -> bool:
    """True if an array at ``address`` with ``shape`` and element ``strides`` can be a TMA tensor descriptor's base.

    Rows contiguous (last stride 1), the base and every other stride 16-byte
    aligned, and a ``(block_n, d)`` box with ``d`` (the unpadded head_dim) a
    power of two in [16, 256].  The GPU's own requirement (sm_90+) is the
    caller's; the CuPy backend asks the same of its arrays.
    """
    if strides[-1] != 1 or address % 16 or any((st * itemsize) % 16 for st in strides[:-1]):
        return False
    d = shape[-1]
    return 16 <= d <= 256 and not d & (d - 1) and block_n <= 256


def _check_index(name: str, t, shape: tuple, device: torch.device, last_dim_free: bool = False):
    if not isinstance(t, torch.Tensor):
        raise InputError(name, type(t).__name__, "a torch.Tensor of int32")
    if t.dtype != torch.int32:
        raise InputError(name, f"dtype {t.dtype}", "torch.int32")
    if t.device != device:
        raise DeviceMismatchError(f"{name} is on {t.device} but q is on {device}; move it yourself")
    ok = t.ndim == len(shape) + (1 if last_dim_free else 0) and tuple(t.shape[: len(shape)]) == shape
    if not ok:
        want = f"{shape}" + (" + (capacity,)" if last_dim_free else "")
        raise InputError(name, f"shape {tuple(t.shape)}", f"shape {want}")


def _check_qkv(q, k, v):
    from yarnref.softmax_attention import check_qkv

    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise InputError(name, type(x).__name__, "a torch.Tensor")
    b, hq, hk, tq, tk, d = check_qkv(q, k, v)
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise InputError("q", f"dtype {q.dtype}", "torch.float16 or torch.bfloat16")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise InputError(name, f"dtype {x.dtype}", f"the dtype of q ({q.dtype})")
        if x.device != q.device:
            raise DeviceMismatchError(f"{name} is on {x.device} but q is on {q.device}; move it yourself")
    if v.shape[-1] != d:
        raise InputError("v", f"head_dim {v.shape[-1]}", f"head_dim {d} like q and k")
    if d > MAX_HEAD_DIM:
        raise InputError("q", f"head_dim {d}", f"at most {MAX_HEAD_DIM}")
    return b, hq, hk, tq, tk, d


def _padded_dim(d: int) -> int:
    """The kernels' head_dim: ``d`` rounded up to a power of two (at least 16); the extra dims are masked."""
    return max(16, 1 << (d - 1).bit_length())


def _check_launch(name: str, value, allowed: tuple):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value not in allowed):
        raise InputError(name, value, f"None or one of {allowed}")
    return value


# ----------------------------------------------------------------------------- public API


def sparse_attention_triton(
    q,
    k,
    v,
    block_count,
    block_offset,
    column_count,
    column_index,
    scale=None,
    block_size_m: int = 64,
    block_size_n: int = 64,
    return_lse: bool = False,
    *,
    causal: bool = True,
    range_tile: int | None = None,
    col_tile: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    tma: bool | None = None,
    mask_all_tiles: bool = False,
    paired: bool = False,
    pair_dot: str = "split",
):
    """Vertical-slash sparse attention over the (block, column) lists of the index conversion.

    ``q`` ``(B, Hq, Tq, D)``, ``k``/``v`` ``(B, Hk, Tk, D)`` fp16/bf16, ``D``
    up to 256 (padded to a power of two inside the kernel);
    ``block_count``/``column_count`` ``(B, Hq, R)`` int32,
    ``block_offset`` ``(B, Hq, R, NS)`` int32 (start columns of
    ``block_size_n``-wide ranges), ``column_index`` ``(B, Hq, R, NV)`` int32,
    with ``R = ceil(Tq / block_size_m)``.  ``scale`` defaults to
    ``1/sqrt(D)``.  Returns ``out`` ``(B, Hq, Tq, D)`` in q's dtype, and with
    ``return_lse`` also ``lse`` ``(B, Hq, Tq)`` float32 (natural log, ``-inf``
    for rows with no key).  See the module docstring for the exact key set.
    ``num_warps``/``num_stages`` override the launch tuning.  ``tma``: read
    the key ranges through Hopper tensor descriptors (TMA); ``None`` uses them
    on sm_90+ GPUs when the k/v layout allows (last stride 1, 16-byte aligned
    rows, ``D`` a power of two).  ``mask_all_tiles`` applies the bounds/causal
    test to every range tile instead of only those that cross the diagonal or
    the sequence ends (the same result; for measurement).

    ``paired=True`` runs one program per *two* row blocks ``2p`` and ``2p+1``
    (see :func:`pair_schedule`): each K/V tile that both lists hold is read
    once for both; the key sets are unchanged.  ``pair_dot`` says how a tile
    is multiplied: ``"split"`` (two ``block_size_m``-row dots with their own
    softmax state; a tile only one block lists costs that block's dots only)
    or ``"joint"`` (one ``2 * block_size_m``-row dot, the rows of a block that
    does not list the tile masked to ``-inf``: fuller tensor-core tiles, but a
    one-sided tile costs the full dot).  Counts past a list's capacity are
    clamped to it in this mode.
    """
    b, hq, hk, tq, tk, d = _check_qkv(q, k, v)
    bm = _check_block_size("block_size_m", block_size_m)
    bn = _check_block_size("block_size_n", block_size_n)
    if not isinstance(causal, bool):
        raise InputError("causal", causal, "True or False")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise InputError("scale", scale, "None or a finite number > 0")
    _check_list_lengths(tq, tk)
    n_rows = -(-tq // bm)
    _check_index("block_count", block_count, (b, hq, n_rows), q.device)
    _check_index("column_count", column_count, (b, hq, n_rows), q.device)
    _check_index("block_offset", block_offset, (b, hq, n_rows), q.device, last_dim_free=True)
    _check_index("column_index", column_index, (b, hq, n_rows), q.device, last_dim_free=True)
    if block_count.stride() != column_count.stride():
        raise InputError("column_count", f"strides {column_count.stride()}", f"the strides of block_count {block_count.stride()}")
    if not isinstance(paired, bool):
        raise InputError("paired", paired, "True or False")
    if pair_dot not in PAIR_DOTS:
        raise InputError("pair_dot", pair_dot, f"one of {PAIR_DOTS}")
    range_tile = bn if range_tile is None else range_tile
    col_tile = max(DEFAULT_COL_TILE, 16) if col_tile is None else col_tile
    if range_tile not in (bn, 2 * bn) or (paired and range_tile != bn):
        raise InputError("range_tile", range_tile, f"block_size_n = {bn}" + ("" if paired else " or twice that"))
    if isinstance(col_tile, bool) or not isinstance(col_tile, int) or col_tile not in (16, 32, 64, 128, 256):
        raise InputError("col_tile", col_tile, "one of 16, 32, 64, 128, 256")
    if tma is not None and not isinstance(tma, bool):
        raise InputError("tma", tma, "True, False or None")
    if not isinstance(mask_all_tiles, bool):
        raise InputError("mask_all_tiles", mask_all_tiles, "True or False")
    _check_launch("num_warps", num_warps, (1, 2, 4, 8, 16))
    _check_launch("num_stages", num_stages, (1, 2, 3, 4, 5, 6))
    _require_triton(q.device)
    can_tma = _tma_possible(k, v, bn) and range_tile == bn
    if tma is None:
        tma = can_tma
    elif tma and not can_tma:
        why = "range_tile must equal block_size_n" if range_tile != bn else "k and v must be CUDA tensors on an sm_90+ GPU with last stride 1, 16-byte aligned rows and a power-of-two head_dim"
        raise InputError("tma", True, f"False here: {why}")
    k_desc, v_desc = _descriptors(k, v, bn, d) if tma else (k, v)  # (not read without TMA)

    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((b, hq, tq), dtype=torch.float32, device=q.device) if return_lse else out.new_empty((1, 1, 1), dtype=torch.float32)
    lse_strides = lse.stride() if return_lse else (0, 0, 0)
    if num_stages is None:
        num_stages = 3 if tma else 2  # tuned on H100 (benchmarks/tune_sparse.py)
    common = dict(
        CAUSAL=causal, RETURN_LSE=bool(return_lse), BLOCK_M=bm, BLOCK_N=bn, COL_TILE=col_tile,
        HEAD_DIM=_padded_dim(d), D_REAL=d, USE_TMA=tma, MASK_ALL=mask_all_tiles, num_stages=num_stages,
    )
    if paired:
        sched = pair_schedule(block_count, block_offset, column_count, column_index)
        n_pairs = -(-n_rows // 2)
        _vs_sparse_pair_kernel[(n_pairs, b * hq)](
            q, k, v, out, lse,
            block_count, block_offset, column_count, column_index,
            *sched,
            k_desc, v_desc,
            float(scale) * _LOG2_E,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse_strides,
            *block_count.stride(), *block_offset.stride(), *column_index.stride(),
            hq, hq // hk, tq, tk, n_pairs, block_offset.shape[-1], column_index.shape[-1],
            JOINT=pair_dot == "joint",
            num_warps=8 if num_warps is None else num_warps,
            **common,
        )
        return (out, lse) if return_lse else out
    _vs_sparse_fwd_kernel[(n_rows, b * hq)](
        q, k, v, out, lse,
        block_count, block_offset, column_count, column_index,
        k_desc, v_desc,
        float(scale) * _LOG2_E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse_strides,
        *block_count.stride(), *block_offset.stride(), *column_index.stride(),
        hq, hq // hk, tq, tk, n_rows,
        RANGE_TILE=range_tile,
        num_warps=(4 if bm <= 64 else 8) if num_warps is None else num_warps,
        **common,
    )
    return (out, lse) if return_lse else out


def _descriptors(k, v, block_n: int, d: int, layout=None):
    """TMA tensor descriptors of k and v with ``(1, 1, block_n, d)`` boxes.

    ``layout``: ``((k_shape, k_strides), (v_shape, v_strides))`` in elements,
    for bases that are not torch tensors (a CuPy array's
    :class:`~yarnref_cupy.kernels.DevicePointer`); None reads them from the tensors.
    """
    from triton.tools.tensor_descriptor import TensorDescriptor

    if layout is None:
        layout = ((k.shape, k.stride()), (v.shape, v.stride()))
    box = [1, 1, block_n, d]
    return tuple(TensorDescriptor(base, list(shape), list(strides), box) for base, (shape, strides) in zip((k, v), layout))


def pair_schedule(block_count, block_offset, column_count, column_index):
    """What the two-row-block kernel reads besides the lists: per pair of row blocks ``(2p, 2p+1)``.

    For each list (ranges, then columns) returns three int tensors over
    ``(B * H, P)`` pairs, ``P = ceil(R / 2)``:

    * ``shared`` ``(B*H, P, cap)`` int8: entry ``i`` of row block ``2p``'s list
      is in row block ``2p+1``'s list too (the tile is read once for both);
      0 past the count;
    * ``b_only`` ``(B*H, P, cap)`` int32: the other entries of ``2p+1``'s list,
      in list order; ``b_only_count`` ``(B*H, P)`` int32 how many.

    So every entry of either list is used exactly once by its own row block:
    ``2p``'s entries in order (by ``2p+1`` too where ``shared``), then the
    entries only ``2p+1`` lists.  Shared entries are found by binary search
    (``O((n_a + n_b) log cap)`` per pair), which needs both lists strictly
    ascending, as the conversion writes them; a pair whose lists are not
    (any contents are allowed) shares nothing, which is still exact.
    """
    device = block_count.device
    b, h, n_rows = block_count.shape
    n_pairs = -(-n_rows // 2)
    out = []
    for count, lists in ((block_count, block_offset), (column_count, column_index)):
        cap = lists.shape[-1]
        shared = torch.zeros((b * h, n_pairs, cap), dtype=torch.int8, device=device)  # 0 past the counts too
        b_only = torch.empty((b * h, n_pairs, cap), dtype=torch.int32, device=device)
        b_only_count = torch.empty((b * h, n_pairs), dtype=torch.int32, device=device)
        _pair_schedule_kernel[(n_pairs, b * h)](
            count, lists, shared, b_only, b_only_count,
            *count.stride(), *lists.stride(),
            h, n_rows, n_pairs, cap, cap.bit_length() + 1,
            W=64,
            num_warps=2,
        )
        out += [shared, b_only, b_only_count]
    return tuple(out)


def dense_attention_triton(q, k, v, *, causal: bool = True, scale: float | None = None, return_lse: bool = False,
                           block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                           tma: bool | None = None):
    r"""Dense softmax attention with the sparse kernel's machinery: 128-row blocks over a contiguous key range.

    .. math::
       o_i = \sum_{j \le i + T_k - T_q} \mathrm{softmax}_j(\text{scale}\cdot q_i\cdot k_j)\, v_j

    (FlashAttention, arXiv:2205.14135, Algorithm 1, forward only; the sum over
    all ``j < T_k`` with ``causal=False``).  ``q`` ``(B, Hq, Sq, D)``, ``k``/``v``
    ``(B, Hkv, Skv, D)`` torch CUDA tensors (or CPU under ``TRITON_INTERPRET=1``),
    fp16 or bf16, ``D`` up to 256 (64, 80, 96, 128, 256 are the tested ones;
    others are padded to a power of two inside the kernel), GQA by
    ``h // (Hq // Hkv)``; causal masks aligned bottom-right as in
    :func:`yarnref.attention`.  Returns ``out`` ``(B, Hq, Sq, D)`` in the input
    dtype and, with ``return_lse``, ``lse`` ``(B, Hq, Sq)`` float32 (natural
    log; rows with no key, when ``Sq > Skv``, get 0 and ``-inf``).

    Each program takes 128 query rows; a causal program reads keys
    ``[0, causal_end)`` and masks only the tiles that cross the diagonal or
    the sequence end.  ``block_n``/``num_warps``/``num_stages``/``tma`` are
    launch tuning (``None``: defaults chosen by head_dim).
    """
    b, hq, hk, tq, tk, d = _check_qkv(q, k, v)
    if not isinstance(causal, bool):
        raise InputError("causal", causal, "True or False")
    if not isinstance(return_lse, bool):
        raise InputError("return_lse", return_lse, "True or False")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise InputError("scale", scale, "None or a finite number > 0")
    _check_list_lengths(tq, tk)
    block_n = _check_launch("block_n", block_n, (16, 32, 64, 128)) or dense_block_n(d)
    _check_launch("num_warps", num_warps, (1, 2, 4, 8, 16))
    _check_launch("num_stages", num_stages, (1, 2, 3, 4, 5, 6))
    if tma is not None and not isinstance(tma, bool):
        raise InputError("tma", tma, "True, False or None")
    _require_triton(q.device)
    can_tma = _tma_possible(k, v, block_n)
    if tma is None:
        tma = can_tma
    elif tma and not can_tma:
        raise InputError("tma", True, "False here: k and v must be CUDA tensors on an sm_90+ GPU with last stride 1, "
                                      "16-byte aligned rows and a power-of-two head_dim")
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((b, hq, tq), dtype=torch.float32, device=q.device) if return_lse else out.new_empty((1, 1, 1), dtype=torch.float32)
    launch_dense(
        (q, k, v, out, lse), (q.stride(), k.stride(), v.stride(), out.stride(), lse.stride() if return_lse else None),
        (b, hq, hk, tq, tk, d), causal=causal, scale=scale, tma=tma, block_n=block_n, num_warps=num_warps, num_stages=num_stages,
    )
    return (out, lse) if return_lse else out


def dense_block_n(d: int) -> int:
    """The dense kernel's default key tile for head_dim ``d``."""
    # 128-key tiles up to head_dim 128: 16.3 ms against 17.6 ms with 64-key tiles at 32K, d=128, bf16 on
    # one H200 (benchmarks/tune_sparse.py, 2026-11-28; 541 against 500 TFLOP/s); d=256 keeps 64 (shared memory).
    return 128 if _padded_dim(d) <= 128 else 64


def launch_dense(arrays, strides, dims, *, causal: bool, scale: float, tma: bool, block_n: int | None = None,
                 num_warps: int | None = None, num_stages: int | None = None) -> None:
    """Enqueue the dense kernel on checked arguments: the one launch both GPU backends make.

    ``arrays``: ``(q, k, v, out, lse)``, torch tensors or anything Triton
    takes as a pointer (the CuPy backend passes its arrays'
    :class:`~yarnref_cupy.kernels.DevicePointer`); ``strides``: their element
    strides, the lse's None when no lse is written (``lse`` is then a
    placeholder); ``dims``: ``(b, hq, hk, tq, tk, d)``.  ``out`` and ``lse``
    may be strided views: the kernel writes through their strides.  Runs on
    torch's current stream (the CuPy backend makes it CuPy's first).
    """
    q, k, v, out, lse = arrays
    q_st, k_st, v_st, o_st, l_st = strides
    b, hq, hk, tq, tk, d = dims
    dp = _padded_dim(d)
    block_n = dense_block_n(d) if block_n is None else block_n
    kv_shape = (b, hk, tk, d)
    k_desc, v_desc = _descriptors(k, v, block_n, d, ((kv_shape, k_st), (kv_shape, v_st))) if tma else (k, v)
    block_m = 128
    n_blocks = -(-tq // block_m)
    _dense_fwd_kernel[(n_blocks, b * hq)](
        q, k, v, out, lse, k_desc, v_desc,
        float(scale) * _LOG2_E,
        *q_st, *k_st, *v_st, *o_st,
        *(l_st if l_st is not None else (0, 0, 0)),
        hq, hq // hk, tq, tk, n_blocks,
        CAUSAL=causal, RETURN_LSE=l_st is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        HEAD_DIM=dp, D_REAL=d, USE_TMA=tma,
        num_warps=8 if num_warps is None else num_warps,
        num_stages=(3 if dp <= 128 else 2) if num_stages is None else num_stages,
    )


def _sorted_with_counts(idx, name: str, descending: bool):
    """Sort each (batch, head) list (-1 / negative = padding, kept at the end) and count the valid entries."""
    if not isinstance(idx, torch.Tensor) or idx.ndim != 3:
        raise InputError(name, f"{type(idx).__name__} of shape {tuple(getattr(idx, 'shape', ()))}", "a (batch, heads, n) integer torch.Tensor")
    if idx.dtype not in (torch.int32, torch.int64):
        raise InputError(name, f"dtype {idx.dtype}", "torch.int32 or torch.int64")
    valid = idx >= 0
    counts = valid.sum(-1, dtype=torch.int32)  # (B, H)
    if descending:  # slashes: padding (negative) already sorts last
        ordered = torch.sort(idx, dim=-1, descending=True).values
    else:  # verticals: move padding past every valid index before sorting ascending
        big = torch.iinfo(idx.dtype).max
        ordered = torch.sort(torch.where(valid, idx, big), dim=-1).values
        ordered = torch.where(ordered == big, -1, ordered)
    return ordered.to(torch.int32).contiguous(), counts.contiguous()


def conversion_rows(row_blocks: int, device: torch.device) -> int:
    """The conversion's ``rows_per_program`` for ``row_blocks`` (row blocks times batch times heads): the
    lanes kernel (:data:`DEFAULT_CONVERSION_ROWS`) where the serial kernel's one-warp programs would not all
    fit on the GPU at once (:data:`RESIDENT_PROGRAMS_PER_SM` per SM), else the serial kernel (1).  Off CUDA
    (the interpreter), the lanes kernel."""
    if device.type != "cuda":
        return DEFAULT_CONVERSION_ROWS
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_CONVERSION_ROWS if row_blocks > sms * RESIDENT_PROGRAMS_PER_SM else 1


def convert_vertical_slash_indexes_triton(
    q_len: int,
    kv_len: int,
    vertical_idx,
    slash_idx,
    block_size_m: int = 64,
    block_size_n: int = 64,
    causal: bool = True,
    *,
    rows_per_program: int | None = None,
    num_warps: int | None = None,
    steps_per_check: int | None = None,
):
    """Vertical and slash indices -> ``(block_count, block_offset, column_count, column_index)``, on the GPU.

    ``vertical_idx`` ``(B, H, NV)``: key columns; ``slash_idx`` ``(B, H, NS)``:
    distances ``i - j``; int32 or int64; negative entries (``-1``) are padding
    for heads with smaller budgets.  Both are sorted here (verticals
    ascending, slashes descending, padding last), as the conversion requires.
    Returns int32 tensors ``(B, H, R)``, ``(B, H, R, NS')``, ``(B, H, R)``,
    ``(B, H, R, NV')`` with ``R = ceil(q_len / block_size_m)``,
    ``NS' = max(NS, 1)`` and ``NV' = max(NV, 1)``; entries past the counts
    are ``-1``.  ``block_size_n >= block_size_m`` is required, as in the spec.

    Every row block runs the sequential merge of the spec
    ``yarnref.sparse.convert_vertical_slash_indexes`` (vLLM's
    ``convert_vertical_slash_indexes`` kernel): a walk over the ascending
    verticals and the descending slashes, one dependent load per step.  Such
    a walk is bound by memory latency, not by bandwidth or arithmetic.  Two
    kernels run it, with the same lists bit for bit:

    * ``rows_per_program=1``: one program per (row block, batch * head), one
      warp walking one row block with scalar loads;
    * ``rows_per_program=ROWS`` (a power of two, 8 to 128): one program per
      ``ROWS`` consecutive row blocks of one (batch * head).  Each row block
      is a *lane*: one entry of Triton vectors of length ``ROWS`` holding its
      own merge state (vertical and slash pointers, the current range, the
      counts, the blocks of a saved range still to write).  A loop step
      advances every lane that is not done by one step of its merge with
      masked vector gathers and stores, so one warp instruction moves 32 row
      blocks, as MInference's CUDA converter (one thread per row block) does,
      and the latency of a step is paid once for all of them.  The leading
      slashes that reach no row of a block are skipped by a per-lane binary
      search (log steps) instead of one step each; a saved range writes up to
      ``CONVERSION_BLOCKS_PER_STEP`` block starts per step.

    ``rows_per_program=None`` chooses by the grid (:func:`conversion_rows`).
    ``num_warps`` (None, or one of 1, 2, 4, 8) is the launch's warp count;
    None takes 1 for the serial kernel and ``max(1, ROWS // 32)`` for the
    lanes kernel.  ``steps_per_check`` (None, or one of
    :data:`CONVERSION_STEPS`; lanes kernel only) is the number of merge steps
    between two tests of "is any lane still running", a reduction over the
    lanes that every step would otherwise wait for; None takes
    :data:`DEFAULT_CONVERSION_STEPS`.  The launch options change the speed,
    never the lists.
    """
    for name, value in (("q_len", q_len), ("kv_len", kv_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(name, value, "a positive integer")
    bm = _check_block_size("block_size_m", block_size_m)
    bn = _check_block_size("block_size_n", block_size_n)
    if bn < bm:
        # As the spec: vLLM's end-of-verticals marker end_m + BN + off would lie inside a range
        # grown in BM steps, and its loop would never end.
        raise InputError("block_size_n", bn, f"at least block_size_m = {bm} (the kernels use 64 x 64)")
    if not isinstance(causal, bool):
        raise InputError("causal", causal, "True or False")
    rows = rows_per_program
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows not in CONVERSION_ROWS):
        raise InputError("rows_per_program", rows_per_program, f"None or one of {CONVERSION_ROWS}")
    _check_launch("num_warps", num_warps, (1, 2, 4, 8))
    steps = DEFAULT_CONVERSION_STEPS if _check_launch("steps_per_check", steps_per_check, CONVERSION_STEPS) is None else steps_per_check
    _check_list_lengths(q_len, kv_len)
    verts, nv_count = _sorted_with_counts(vertical_idx, "vertical_idx", descending=False)
    slashes, ns_count = _sorted_with_counts(slash_idx, "slash_idx", descending=True)
    if tuple(verts.shape[:2]) != tuple(slashes.shape[:2]):
        raise InputError("slash_idx", f"shape {tuple(slash_idx.shape)}", f"(batch, heads) = {tuple(vertical_idx.shape[:2])} like vertical_idx")
    if slash_idx.device != vertical_idx.device:
        raise DeviceMismatchError(f"slash_idx is on {slash_idx.device} but vertical_idx is on {vertical_idx.device}")
    device = verts.device
    if triton is None:
        raise BackendError("the Triton kernels need the `triton` package (pip install triton)")
    if not (device.type == "cuda" or (device.type == "cpu" and interpreter_active())):
        raise InputError("vertical_idx", f"a tensor on {device}", "CUDA tensors (or CPU tensors with TRITON_INTERPRET=1)")
    b, h, nv = verts.shape
    ns = slashes.shape[-1]
    n_rows = triton.cdiv(q_len, bm)
    blk_cap = max(ns, 1) * triton.cdiv(bm, bn)
    col_cap = max(nv, 1)
    # Pad the lists so that a 0-length budget still has one readable slot.
    if nv == 0:
        verts = torch.zeros((b, h, 1), dtype=torch.int32, device=device)
    if ns == 0:
        slashes = torch.zeros((b, h, 1), dtype=torch.int32, device=device)
    block_count = torch.empty((b, h, n_rows), dtype=torch.int32, device=device)
    column_count = torch.empty((b, h, n_rows), dtype=torch.int32, device=device)
    block_offset = torch.full((b, h, n_rows, blk_cap), -1, dtype=torch.int32, device=device)
    column_index = torch.full((b, h, n_rows, col_cap), -1, dtype=torch.int32, device=device)
    if rows is None:
        rows = conversion_rows(n_rows * b * h, device)
    if rows == 1:
        _convert_vs_kernel[(n_rows, b * h)](
            verts, slashes, nv_count, ns_count,
            block_count, block_offset, column_count, column_index,
            q_len, kv_len, n_rows, verts.shape[-1], slashes.shape[-1], col_cap, blk_cap,
            CAUSAL=causal,
            BLOCK_M=bm,
            BLOCK_N=bn,
            num_warps=1 if num_warps is None else num_warps,
        )
    else:
        n_search = slashes.shape[-1].bit_length()  # binary-search steps over a list of up to that many slashes
        _convert_vs_lanes_kernel[(triton.cdiv(n_rows, rows), b * h)](
            verts, slashes, nv_count, ns_count,
            block_count, block_offset, column_count, column_index,
            q_len, kv_len, n_rows, verts.shape[-1], slashes.shape[-1], col_cap, blk_cap, n_search,
            CAUSAL=causal,
            BLOCK_M=bm,
            BLOCK_N=bn,
            ROWS=rows,
            EMIT=CONVERSION_BLOCKS_PER_STEP,
            STEPS=steps,
            num_warps=max(1, rows // 32) if num_warps is None else num_warps,
        )
    return block_count, block_offset, column_count, column_index
