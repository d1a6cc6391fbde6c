r"""Vertical-slash sparse attention, A-shape and tri-shape on torch (spec: :mod:`yarnref.sparse`).

Paper: Jiang et al., "MInference 1.0: Accelerating Pre-filling for
Long-Context LLMs via Dynamic Sparse Attention", arXiv:2407.02490, section 3,
as Qwen2.5-1M runs it (arXiv:2501.15383).

* Estimation (MInference section 3.2):
  :math:`\hat A = \mathrm{softmax}(\mathrm{scale}\cdot Q_{[-m:]}K^\top + M_{\mathrm{causal}})`;
  vertical scores are column sums of :math:`\hat A`, slash scores its sums
  along each distance :math:`\delta = p_r - j`; the first ``force_verticals``
  columns and the ``force_slashes`` smallest distances are forced; each head
  keeps its top ``min(kv_len, max(budget, 30 | 50))``.  On CUDA with
  float16/bfloat16 inputs and Triton, the softmax and both sums after the
  logits matmul are two Triton passes over the logits
  (:mod:`.estimate_triton`); elsewhere torch operations.
* Conversion: vLLM's ``convert_vertical_slash_indexes`` merge (ranges of
  ``block_size_m`` columns per slash, merged and grown; uncovered verticals as
  columns; readable form in the spec).  On CUDA with Triton, its Triton port
  (``triton_sparse.convert_vertical_slash_indexes_triton``: one row block per
  program, or row blocks as vector lanes where the grid is larger than the
  GPU holds at once), in a long call converting the next chunk's lists on a
  side stream beside the kernel (:data:`CONVERT_AHEAD`); elsewhere the
  vectorised form shared with the spec,
  :func:`yarnref.sparse_lockstep.convert_lockstep`, run on torch tensors.
* Attention over a key set :math:`K_i`:
  :math:`o_i = \sum_{j\in K_i} w_{ij} e^{s_{ij}} v_j / \sum_{j\in K_i} w_{ij} e^{s_{ij}}`,
  with ``w`` the number of times the kernel lists key ``j`` (1 for the exact
  mask).  On CUDA, float16/bfloat16, ``mode="kernel"``: the Triton kernel of
  ``triton_sparse.sparse_attention_triton``, whose work is proportional to
  the kept keys.  Elsewhere (CPU, float32/float64, ``mode="exact"``, shapes the
  kernel refuses): a vectorised blocked path, ``O(rows * kv_len)`` memory per
  step, that builds each row block's mask from the index lists.
* A-shape (sinks + window, token-exact) and tri-shape (the last ``n_last``
  queries dense): each query block gathers only its sink keys and its window,
  so the cost is linear in the sequence length; the dense rows of the
  tri-shape are ordinary causal attention (fused on CUDA).

Conventions
-----------
Those of :mod:`yarnref.sparse`: ``(batch, heads, seq, head_dim)``, GQA, index
arrays per *query* head ``(batch, q_heads, n)``; ``-1`` padding; verticals
ascending, slashes (distances) descending, inputs sorted here; causal
bottom-right, ``causal=False`` puts the queries right after the keys; a row
with no key gets 0 and lse ``-inf``.  Ties in the top-k go to the lower index
(a stable sort), as in the spec.  Indices are int64 tensors (the converted
lists int32, as the kernels take them) on the backend's device.  Outputs in
q's dtype; the lse is float64 for float64 inputs, float32 otherwise; half
types are computed in float32.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from yarnref.softmax_attention import check_qkv
from yarnref.checks import (
    check_allocation,
    check_int32_indices,
    check_bool,
    check_budget,
    check_int,
    check_lengths,
    check_option,
    check_same_dtype,
    check_scale,
    check_streaming_sizes,
)
from yarnref.errors import InputError
from yarnref.sparse import MIN_SLASH_SIZE, MIN_VERTICAL_SIZE, VS_MODES
from yarnref.sparse_lockstep import convert_lockstep

from ._arrays import ArrayConverter, check_all_finite, check_float, compute_dtype, tensor_to_numpy
from .attention import attention_tensors

__all__ = [
    "vertical_slash_indices",
    "convert_vertical_slash_indexes",
    "vertical_slash_mask",
    "vertical_slash_attention",
    "a_shape_attention",
    "tri_shape_attention",
]

#: Logits held at once by the blocked paths: ``batch * heads * rows * keys`` numbers (64 MiB in float32
#: on the CPU, 512 MiB on a GPU, where fewer, larger blocks keep the device busy).
BLOCK_ELEMENTS = {"cpu": 1 << 24, "cuda": 1 << 27}


def _budget_for(device: torch.device) -> int:
    return BLOCK_ELEMENTS.get(device.type, BLOCK_ELEMENTS["cpu"])
_BIG = torch.iinfo(torch.int64).max


# ----------------------------------------------------------------------------- inputs


def _qk_tensors(conv: ArrayConverter, **arrays) -> list[torch.Tensor]:
    tensors = {name: check_float(name, conv.tensor(a, name)) for name, a in arrays.items()}
    check_same_dtype(**tensors)
    check_all_finite(tensors)
    return list(tensors.values())


def _index_tensor(conv: ArrayConverter, name: str, idx, low: int, high: int | None):
    """``(t, bad)``: ``idx`` as a ``(batch, heads, n)`` int64 tensor and the mask of its entries that are neither
    ``-1`` nor in ``[low, high)`` (read back by :func:`_indices`, once for both lists)."""
    t = conv.tensor(idx, name)
    if t.ndim != 3 or t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise InputError(name, f"array of shape {tuple(t.shape)} and dtype {t.dtype}", "a (batch, heads, n) integer array")
    t = t.to(torch.int64)
    bad = (t != -1) & (t < low)
    if high is not None:
        bad |= (t != -1) & (t >= high)
    return t, bad


def _indices(conv, vertical_idx, slash_idx, kv_len: int, batch_heads=None):
    """The vertical and slash index tensors, their entries checked with one read-back for both."""
    vertical, bad_vertical = _index_tensor(conv, "vertical_idx", vertical_idx, 0, kv_len)
    slash, bad_slash = _index_tensor(conv, "slash_idx", slash_idx, 0, None)
    found = torch.stack([bad_vertical.any(), bad_slash.any()]).tolist()
    for name, t, bad, allowed, is_bad in (("vertical_idx", vertical, bad_vertical, f"entries >= 0, < {kv_len}", found[0]),
                                          ("slash_idx", slash, bad_slash, "entries >= 0", found[1])):
        if is_bad:
            raise InputError(name, f"an entry {int(t[bad][0])}", f"{allowed}, or -1 for padding")
    if vertical.shape[:2] != slash.shape[:2]:
        raise InputError("slash_idx", f"shape {tuple(slash.shape)}", f"(batch, heads) = {tuple(vertical.shape[:2])} like vertical_idx")
    if batch_heads is not None and tuple(vertical.shape[:2]) != tuple(batch_heads):
        raise InputError("vertical_idx", f"shape {tuple(vertical.shape)}", f"(batch, q_heads, n) with (batch, q_heads) = {tuple(batch_heads)}")
    return vertical, slash


def _host_budget(value):
    """A budget as the spec's validator takes it: an int, or a host array (a tensor is read back: it is metadata)."""
    if isinstance(value, torch.Tensor):
        return tensor_to_numpy(value)
    return value


# ----------------------------------------------------------------------------- estimation


#: Bytes of keys the estimation casts to its compute dtype at once, and of scores it sorts at once.  The
#: keys of one KV head are cast once for all its query heads when they fit (1M keys of 128 in float32:
#: 512 MiB); longer ones are cast a chunk at a time for each query head.  Half-precision keys on CUDA are
#: not cast at all (the product is formed by a half-precision matmul with a float32 result).  Besides
#: these, one head's ``(last_q, kv_len + last_q)`` float32 logits (256 MiB at 1M keys) and the call's
#: ``(batch, q_heads, kv_len)`` float32 scores (two of them, and the slash scores' flipped copy) are held.
#: On the Triton path (:func:`_fused_scores_available`) the logits of as many query heads of one KV head
#: as fit in these bytes share one buffer (:func:`_fused_heads`; one head's at least).
ESTIMATE_BYTES = 1 << 29


def _top_indices(score: torch.Tensor, counts: np.ndarray, descending: bool, width: int | None = None) -> torch.Tensor:
    """The ``counts[h]`` best entries of ``score[:, h]`` (ties: the lower index), sorted, ``-1``-padded to ``width``."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices  # best first; stable: lower index first on ties
    width = int(counts.max()) if width is None else width
    top = order[..., :width]
    keep = torch.arange(width, device=score.device)[None, :] < torch.as_tensor(counts, device=score.device)[:, None]  # (heads, width)
    top = torch.where(keep, top, -1)
    if descending:
        return torch.sort(top, dim=-1, descending=True).values
    top = torch.sort(torch.where(top < 0, _BIG, top), dim=-1).values
    return torch.where(top == _BIG, -1, top)


def _half_matmul(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the logits are a half-precision matmul with a float32 result (CUDA, float16/bfloat16): every
    product of two half values is exact in float32 and the sums are float32, as in the cast path."""
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and hasattr(torch.ops.aten.mm, "dtype")


#: Whether torch's half-precision matmul with a float32 result writes into a strided view (True), or its
#: result is copied there (False); None until the first call on CUDA finds out.
HALF_MM_INTO_VIEW = None


def _half_mm_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``out = a @ b`` for half-precision ``a``, ``b`` and a float32 ``out`` view (rows strided)."""
    global HALF_MM_INTO_VIEW
    if HALF_MM_INTO_VIEW is not False:
        try:
            torch.mm(a, b, out_dtype=out.dtype, out=out)
            HALF_MM_INTO_VIEW = True
            return
        except RuntimeError:  # this torch refuses a strided output for the mixed-dtype matmul
            HALF_MM_INTO_VIEW = False
    out.copy_(torch.mm(a, b, out_dtype=out.dtype))


def _unwritten_cells(m: int, device) -> torch.Tensor:
    """``(m, m - 1)`` bool: the cells of the skewed layout's first ``m - 1`` columns that row ``r`` never
    writes (columns before ``m - 1 - r``), the same for every head of a call."""
    column = torch.arange(m - 1, device=device)
    return column[None, :] < (m - 1 - torch.arange(m, device=device))[:, None]


#: Whether CUDA half-precision estimations use the Triton kernels of :mod:`.estimate_triton` after the
#: logits matmul (True), or the torch operations everywhere (False; for comparisons and benchmarks).
FUSED_ESTIMATION = True


def _fused_scores_available(q: torch.Tensor, m: int):
    """The module :mod:`.estimate_triton` if the estimation's softmax sums run there, else None.

    The one place that chooses: CUDA float16/bfloat16 inputs whose logits
    come from the half-precision matmul (:func:`_half_matmul`), Triton
    importable, at most ``estimate_triton.MAX_ROWS`` rows, and
    :data:`FUSED_ESTIMATION` on.  Everything else (CPU, float32/float64, no
    Triton) takes the torch operations of :func:`_head_scores`.
    """
    if not FUSED_ESTIMATION or not _half_matmul(q, q):
        return None
    try:
        from . import estimate_triton
    except ImportError:
        return None
    if estimate_triton.triton is None or m > estimate_triton.MAX_ROWS:
        return None
    return estimate_triton


def _head_scores(q_rows, keys, keys_cast, scale: float, logits, unwritten, key_step: int, vertical_out, slash_reversed_out):
    """Column and diagonal sums of one head's softmax, written into ``vertical_out`` and ``slash_reversed_out``.

    ``q_rows`` ``(m, d)``: the head's last ``m`` queries; ``keys`` ``(kv_len,
    d)`` its KV head's keys (``keys_cast``: the same in the compute dtype, or
    None to cast ``key_step`` keys at a time).  ``logits`` ``(m, kv_len + m)``
    is the work buffer, in the compute dtype; ``unwritten`` the mask of
    :func:`_unwritten_cells`.

    Layout: row ``r`` (query position ``p_r = kv_len - m + r``) holds key
    ``j`` at column ``j + m - 1 - r``.  Then key ``j`` of every row lies on
    one diagonal (the view of row stride ``kv_len + m - 1`` the matmul writes
    into), and distance ``delta = p_r - j`` on column ``kv_len - 1 - delta``
    of every row; keys after ``p_r`` land in columns ``>= kv_len``, the cells
    before ``m - 1 - r`` are never written, and both are set to ``-inf``.  So
    the vertical scores are the weighted sum of the diagonal view's rows and
    the slash scores (reversed) of the buffer's first ``kv_len`` columns, each
    one matrix-vector product with the weights ``1 / sum_r``: the softmax is
    never stored.
    """
    m, width = logits.shape
    kv_len = width - m
    on_diagonals = logits.as_strided((m, kv_len), (width - 1, 1), logits.storage_offset() + m - 1)  # [r, j]
    if keys_cast is None and _half_matmul(q_rows, keys):
        _half_mm_into(q_rows, keys.T, on_diagonals)
    else:
        q_rows = q_rows.to(logits.dtype)
        for j0 in range(0, kv_len, key_step):  # a loop over key chunks (one when the KV head's keys are cast)
            j1 = min(j0 + key_step, kv_len)
            chunk = keys_cast[j0:j1] if keys_cast is not None else keys[j0:j1].to(logits.dtype)
            torch.mm(q_rows, chunk.T, out=on_diagonals[:, j0:j1])
    logits[:, kv_len:] = -math.inf  # keys after each row's own position
    logits[:, : m - 1].masked_fill_(unwritten, -math.inf)  # keys before position 0
    row_max = logits.amax(dim=-1, keepdim=True)  # (m, 1) of the unscaled logits; finite: every row sees key 0
    torch.add(row_max * -scale, logits, alpha=scale, out=logits)  # scale * (logit - max)
    logits.exp_()
    weights = logits.sum(dim=-1).reciprocal_()[None, :]  # (1, m): 1 / the softmax's denominators
    torch.mm(weights, on_diagonals, out=vertical_out[None, :])  # (1, kv_len): sum_r p[r, j]
    torch.mm(weights, logits[:, :kv_len], out=slash_reversed_out[None, :])  # (1, kv_len): column kv_len - 1 - delta


def _fused_heads(group: int, m: int, kv_len: int) -> int:
    """Query heads of one KV head whose stacked ``(n * m, kv_len + n * m)`` float32 buffer fits
    :data:`ESTIMATE_BYTES` (at least 1).  At 64 rows: 7 heads up to 299,145 keys, 2 up to 1,048,448, so one
    at 1M keys (its buffer alone is 256 MiB)."""
    n = group
    while n > 1 and 4 * n * m * (kv_len + n * m) > ESTIMATE_BYTES:
        n -= 1
    return n


def _group_scores(q_rows, keys, scale: float, flat, fused, vertical_out, slash_reversed_out):
    """The scores of ``n`` query heads of one KV head by one matmul and the Triton passes of ``fused``.

    ``q_rows`` ``(n, m, d)``: the heads' last ``m`` queries; ``keys``
    ``(kv_len, d)``; ``flat`` a float32 work buffer of at least ``n m (kv_len
    + n m)`` numbers; ``vertical_out`` and ``slash_reversed_out`` ``(n,
    kv_len)``.  The heads' rows are stacked (``i = h m + r``) into one skewed
    buffer of ``n m`` rows (the layout of :func:`_head_scores` with ``n m``
    rows), so one matmul writes every head's logits and reads the keys once;
    row ``i`` holds key ``j`` at column ``j + n m - 1 - i``, and
    :func:`estimate_triton.estimate_scores` reads each head's rows and
    only the cells the matmul wrote (the masks come from indices: no fills).
    """
    n, m, d = q_rows.shape
    kv_len = keys.shape[0]
    rows, width = n * m, kv_len + n * m
    logits = flat[: rows * width].view(rows, width)
    on_diagonals = logits.as_strided((rows, kv_len), (width - 1, 1), logits.storage_offset() + rows - 1)  # [i, j]
    stacked = q_rows.reshape(rows, d)
    if _half_matmul(stacked, keys):
        _half_mm_into(stacked, keys.T, on_diagonals)
    else:  # float32 inputs (the kernels' tests on the CPU interpreter)
        torch.mm(stacked.to(logits.dtype), keys.to(logits.dtype).T, out=on_diagonals)
    fused.estimate_scores(logits, scale, vertical_out, slash_reversed_out, heads=n)


def vertical_slash_indices(conv, q, k, vertical_size, slash_size, last_q=64, *, scale=None, force_verticals=30, force_slashes=100):
    """Each head's vertical columns and slash distances from its last queries; see :func:`yarnref.sparse.vertical_slash_indices`.

    One head at a time (:func:`_head_scores`), its keys cast once per KV head
    where they fit :data:`ESTIMATE_BYTES`; every head's scores, and so its
    indices, do not depend on the other heads or on the key chunking.
    Where :func:`_fused_scores_available` says so, the heads of a KV head
    whose stacked buffer fits :data:`ESTIMATE_BYTES` share one matmul and the
    sums after it run as Triton kernels (:func:`_group_scores`; the same
    scores to float32 rounding, so the same index sets up to near-ties).
    """
    q, k = _qk_tensors(conv, q=q, k=k)
    batch, q_heads, kv_heads, q_len, kv_len, head_dim = check_qkv(q, k, k)
    if q_len > kv_len:
        raise InputError("q", f"q_len={q_len}", f"at most kv_len = {kv_len} (the queries are the last q_len positions)")
    n_vertical = np.minimum(kv_len, np.maximum(check_budget("vertical_size", _host_budget(vertical_size), q_heads), MIN_VERTICAL_SIZE))
    n_slash = np.minimum(kv_len, np.maximum(check_budget("slash_size", _host_budget(slash_size), q_heads), MIN_SLASH_SIZE))
    last_q = check_int("last_q", last_q, 1)
    force_verticals = check_int("force_verticals", force_verticals, 0)
    force_slashes = check_int("force_slashes", force_slashes, 0)
    scale = check_scale(scale, head_dim)

    m = min(last_q, q_len)
    group = q_heads // kv_heads
    cdt = compute_dtype(q.dtype)
    itemsize = torch.finfo(cdt).bits // 8
    key_step = max(1, ESTIMATE_BYTES // (head_dim * itemsize))
    fused = _fused_scores_available(q, m)
    vertical_score = torch.empty((batch, q_heads, kv_len), dtype=cdt, device=q.device)
    slash_score = torch.empty((batch, q_heads, kv_len), dtype=cdt, device=q.device)  # distances reversed, then flipped
    if fused is not None:  # several query heads of a KV head per matmul and per launch, as their buffer fits
        n = _fused_heads(group, m, kv_len)
        flat = torch.empty((n * m * (kv_len + n * m),), dtype=torch.float32, device=q.device)
        for b in range(batch):
            for kv in range(kv_heads):
                for h0 in range(kv * group, (kv + 1) * group, n):  # a loop over runs of the KV head's query heads
                    h1 = min(h0 + n, (kv + 1) * group)
                    _group_scores(q[b, h0:h1, q_len - m :], k[b, kv], scale, flat, fused,
                                  vertical_score[b, h0:h1], slash_score[b, h0:h1])
        del flat
    else:
        logits = torch.empty((m, kv_len + m), dtype=cdt, device=q.device)  # one head's, reused
        unwritten = _unwritten_cells(m, q.device)
        for b in range(batch):
            for kv in range(kv_heads):
                keys = k[b, kv]  # (kv_len, d)
                keys_cast = None
                if not _half_matmul(q, k) and kv_len <= key_step:
                    keys_cast = keys.to(cdt)  # once for the KV head's query heads (no copy when already cdt)
                for h in range(kv * group, (kv + 1) * group):  # a loop over the KV head's query heads
                    _head_scores(q[b, h, q_len - m :], keys, keys_cast, scale, logits, unwritten, key_step,
                                 vertical_score[b, h], slash_score[b, h])
                del keys_cast
        del logits
    slash_score = slash_score.flip(-1)  # (batch, q_heads, kv_len), distance 0 first
    vertical_score[..., :force_verticals] = math.inf
    slash_score[..., :force_slashes] = math.inf
    width_v, width_s = int(n_vertical.max()), int(n_slash.max())
    # Sorted a run of heads at a time: the sort's values, indices and work space, about 24 bytes per score.
    per_sort = max(1, ESTIMATE_BYTES // (24 * batch * kv_len))
    vertical = torch.empty((batch, q_heads, width_v), dtype=torch.int64, device=q.device)
    slash = torch.empty((batch, q_heads, width_s), dtype=torch.int64, device=q.device)
    for h0 in range(0, q_heads, per_sort):
        h1 = min(h0 + per_sort, q_heads)
        vertical[:, h0:h1] = _top_indices(vertical_score[:, h0:h1], n_vertical[h0:h1], False, width_v)
        slash[:, h0:h1] = _top_indices(slash_score[:, h0:h1], n_slash[h0:h1], True, width_s)
    return vertical, slash


# ----------------------------------------------------------------------------- index conversion


def _triton_module(device: torch.device):
    """``triton_sparse`` if its kernels can run on ``device`` (CUDA with Triton), else None."""
    if device.type != "cuda":
        return None
    try:
        from . import triton_sparse
    except ImportError:
        return None
    return triton_sparse if triton_sparse.triton_available(device) else None


_TRITON_BLOCK_SIZES = (16, 32, 64, 128)


def _convert(q_len, kv_len, vertical, slash, bm, bn, causal):
    triton = _triton_module(vertical.device)
    if triton is not None and bm in _TRITON_BLOCK_SIZES and bn in _TRITON_BLOCK_SIZES:
        return triton.convert_vertical_slash_indexes_triton(q_len, kv_len, vertical, slash, bm, bn, causal)
    return convert_lockstep(torch, q_len, kv_len, vertical, slash, bm, bn, causal)


def _check_conversion_args(q_len, kv_len, block_size_m, block_size_n, causal):
    causal = check_bool("causal", causal)
    q_len, kv_len = check_lengths(q_len, kv_len, causal)
    block_size_m = check_int("block_size_m", block_size_m, 1)
    block_size_n = check_int("block_size_n", block_size_n, 1)
    return q_len, kv_len, block_size_m, block_size_n, causal


def convert_vertical_slash_indexes(conv, q_len, kv_len, vertical_idx, slash_idx, block_size_m=64, block_size_n=64, causal=True):
    """The block/column lists of the sparse kernels; see :func:`yarnref.sparse.convert_vertical_slash_indexes`."""
    q_len, kv_len, bm, bn, causal = _check_conversion_args(q_len, kv_len, block_size_m, block_size_n, causal)
    if bn < bm:
        raise InputError("block_size_n", bn, f"at least block_size_m = {bm} (the kernels use 64 x 64)")
    check_int32_indices(kv_len, bm, bn)
    vertical, slash = _indices(conv, vertical_idx, slash_idx, kv_len)
    return _convert(q_len, kv_len, vertical, slash, bm, bn, causal)


# ----------------------------------------------------------------------------- masks


def _exact_rows(start: int, stop: int, q_len: int, kv_len: int, vertical, slash, causal: bool) -> torch.Tensor:
    """The exact vertical-slash mask of query rows ``[start, stop)``: ``(batch, heads, n, kv_len)`` bool."""
    batch, heads, _ = vertical.shape
    dev = vertical.device
    off = kv_len - q_len if causal else kv_len
    position = torch.arange(start, stop, device=dev) + off  # (n,)
    # Membership tables with one spare "absent" slot at the end, where -1 and out-of-reach entries land.
    is_vertical = torch.zeros((batch, heads, kv_len + 1), dtype=torch.bool, device=dev)
    is_vertical.scatter_(-1, torch.where(vertical < 0, kv_len, vertical), True)
    reach = stop - 1 + off + 1  # distances 0 .. reach-1 can occur in these rows
    is_slash = torch.zeros((batch, heads, reach + 1), dtype=torch.bool, device=dev)
    is_slash.scatter_(-1, torch.where((slash < 0) | (slash >= reach), reach, slash), True)
    is_slash[..., reach] = False
    delta = position[:, None] - torch.arange(kv_len, device=dev)[None, :]  # (n, kv_len): each pair's distance
    visible = delta >= 0  # causal (always true when non-causal: the queries follow every key)
    on_slash = is_slash[:, :, torch.where(visible, delta, reach)]  # (batch, heads, n, kv_len)
    return (is_vertical[:, :, None, :kv_len] | on_slash) & visible


def _kernel_rows(start: int, stop: int, q_len: int, kv_len: int, converted, causal: bool, bm: int, bn: int) -> torch.Tensor:
    """How many times the kernel counts each key for rows ``[start, stop)`` (``start`` on a row-block boundary)."""
    block_count, block_offset, column_count, column_index = converted
    dev = block_count.device
    first, last = start // bm, -(-stop // bm)
    offsets = block_offset[:, :, first:last].to(torch.int64)
    listed = torch.arange(offsets.shape[-1], device=dev) < block_count[:, :, first:last, None]  # (batch, heads, blocks, width)
    # Difference array over the columns: +1 where a listed block starts, -1 where it stops; cumsum = coverage.
    cover = torch.zeros(tuple(offsets.shape[:3]) + (kv_len + 1,), dtype=torch.int64, device=dev)
    weight = listed.to(torch.int64)
    cover.scatter_add_(-1, torch.where(listed, offsets.clamp(min=0, max=kv_len), kv_len), weight)
    cover.scatter_add_(-1, torch.where(listed, (offsets + bn).clamp(min=0, max=kv_len), kv_len), -weight)
    cover = torch.cumsum(cover, dim=-1)
    columns = column_index[:, :, first:last].to(torch.int64)
    listed = torch.arange(columns.shape[-1], device=dev) < column_count[:, :, first:last, None]
    cover.scatter_add_(-1, torch.where(listed, columns.clamp(min=0), kv_len), listed.to(torch.int64))
    cover = cover[..., :kv_len]
    row = torch.arange(start, stop, device=dev)
    per_row = cover[:, :, torch.div(row, bm, rounding_mode="floor") - first]  # (batch, heads, n, kv_len)
    if causal:
        visible = torch.arange(kv_len, device=dev)[None, :] <= (row + kv_len - q_len)[:, None]
        per_row = torch.where(visible, per_row, 0)
    return per_row


def _check_mask_memory(vertical: torch.Tensor, q_len: int, kv_len: int) -> None:
    """Refuse, before allocating, a whole mask that cannot fit where it would live (host or device memory).

    The mask is ``batch * heads * q_len * kv_len`` bools, and building it takes
    a ``(q_len, kv_len)`` grid of int64 distances too.
    """
    nbytes = q_len * kv_len * (vertical.shape[0] * vertical.shape[1] + 8)
    if vertical.device.type != "cuda":
        check_allocation("kv_len", kv_len, nbytes, itemsize=1, what="(batch, heads, q_len, kv_len) mask")
        return
    limit = torch.cuda.get_device_properties(vertical.device).total_memory
    if nbytes > limit:
        raise InputError(
            "kv_len", kv_len,
            f"a size whose (batch, heads, q_len, kv_len) mask fits on {vertical.device} "
            f"({nbytes / 2**30:.1f} GiB asked, {limit / 2**30:.1f} GiB there)",
        )


def vertical_slash_mask(conv, q_len, kv_len, vertical_idx, slash_idx, mode="exact", causal=True, *, block_size_m=64, block_size_n=64):
    """Every query's key set, bool ``(batch, heads, q_len, kv_len)``; see :func:`yarnref.sparse.vertical_slash_mask`."""
    mode = check_option("mode", mode, VS_MODES)
    q_len, kv_len, bm, bn, causal = _check_conversion_args(q_len, kv_len, block_size_m, block_size_n, causal)
    vertical, slash = _indices(conv, vertical_idx, slash_idx, kv_len)
    _check_mask_memory(vertical, q_len, kv_len)
    if mode == "exact":
        return _exact_rows(0, q_len, q_len, kv_len, vertical, slash, causal)
    if bn < bm:
        raise InputError("block_size_n", bn, f"at least block_size_m = {bm} (the kernels use 64 x 64)")
    converted = _convert(q_len, kv_len, vertical, slash, bm, bn, causal)
    return _kernel_rows(0, q_len, q_len, kv_len, converted, causal, bm, bn) > 0


# ----------------------------------------------------------------------------- attention over a key set


def _rows_per_step(batch: int, heads: int, keys: int, multiple: int, device: torch.device) -> int:
    rows = max(1, _budget_for(device) // (batch * heads * max(keys, 1)))
    return max(multiple, rows // multiple * multiple)


def _weighted_block(q_rows, keys_t, values, scale: float, weight):
    """Softmax where each row counts key ``j`` ``weight[..., j]`` times (0: masked); ``(out, lse)`` in the compute dtype.

    ``q_rows`` ``(batch, kv_heads, group, n, d)``; ``keys_t`` ``(batch,
    kv_heads, 1, d, keys)``; ``values`` ``(batch, kv_heads, 1, keys, dv)``;
    ``weight`` broadcastable to ``(batch, kv_heads, group, n, keys)``.
    """
    logits = (q_rows @ keys_t) * scale  # (batch, kv_heads, group, n, keys)
    logits = logits.masked_fill(weight <= 0, -math.inf)
    row_max = logits.amax(dim=-1, keepdim=True)
    safe_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    numer = torch.exp(logits - safe_max)
    if weight.dtype != torch.bool:
        numer = numer * weight.to(numer.dtype)  # a key the kernel lists twice counts twice
    denom = numer.sum(dim=-1, keepdim=True)
    has_key = denom > 0
    safe_denom = torch.where(has_key, denom, torch.ones_like(denom))
    out = torch.where(has_key, (numer @ values) / safe_denom, 0.0)
    lse = torch.where(has_key, torch.log(safe_denom) + safe_max, -math.inf)[..., 0]
    return out, lse


def _weighted_attention(q, k, v, scale: float, key_weights, step: int):
    """Attention with per-row key weights ``key_weights(start, stop)`` (``(batch, q_heads, n, kv_len)``), blocked over rows."""
    batch, q_heads, kv_heads, q_len, kv_len, head_dim = check_qkv(q, k, v)
    group = q_heads // kv_heads
    cdt = compute_dtype(q.dtype)
    qg = q.reshape(batch, kv_heads, group, q_len, head_dim)  # query heads under their kv head
    keys_t = k.to(cdt).transpose(-1, -2)[:, :, None]  # (batch, kv_heads, 1, head_dim, kv_len)
    values = v.to(cdt)[:, :, None]  # (batch, kv_heads, 1, kv_len, v_dim)
    out = torch.empty((batch, kv_heads, group, q_len, v.shape[-1]), dtype=cdt, device=q.device)
    lse = torch.empty((batch, kv_heads, group, q_len), dtype=cdt, device=q.device)
    for start in range(0, q_len, step):  # a loop over query blocks
        stop = min(start + step, q_len)
        weight = key_weights(start, stop).reshape(batch, kv_heads, group, stop - start, kv_len)
        out[..., start:stop, :], lse[..., start:stop] = _weighted_block(qg[..., start:stop, :].to(cdt), keys_t, values, scale, weight)
    return out.reshape(batch, q_heads, q_len, -1).to(q.dtype), lse.reshape(batch, q_heads, q_len)


def _sparse_inputs(conv, q, k, v, causal):
    q, k, v = _qk_tensors(conv, q=q, k=k, v=v)
    dims = check_qkv(q, k, v)
    if causal and dims[3] > dims[4]:
        raise InputError("q", f"q_len={dims[3]}", f"at most kv_len = {dims[4]} when causal (the queries are the last q_len positions)")
    return q, k, v, dims


def _triton_can_run(triton, q, v, bm: int, bn: int) -> bool:
    d = q.shape[-1]
    return (
        triton is not None
        and q.dtype in (torch.float16, torch.bfloat16)
        and v.shape[-1] == d
        and d <= triton.MAX_HEAD_DIM  # other head dims are padded to a power of two inside the kernel
        and bm in _TRITON_BLOCK_SIZES
        and bn in _TRITON_BLOCK_SIZES
    )


def vertical_slash_attention(
    conv, q, k, v, vertical_idx, slash_idx, mode="kernel", scale=None, return_lse=False, *, causal=True, block_size_m=64, block_size_n=64
):
    """Attention restricted to each query's vertical-slash key set; see :func:`yarnref.sparse.vertical_slash_attention`."""
    causal = check_bool("causal", causal)
    q, k, v, (batch, q_heads, _, q_len, kv_len, head_dim) = _sparse_inputs(conv, q, k, v, causal)
    mode = check_option("mode", mode, VS_MODES)
    scale = check_scale(scale, head_dim)
    return_lse = check_bool("return_lse", return_lse)
    bm = check_int("block_size_m", block_size_m, 1)
    bn = check_int("block_size_n", block_size_n, 1)
    vertical, slash = _indices(conv, vertical_idx, slash_idx, kv_len, (batch, q_heads))
    if mode == "exact":
        weights = lambda start, stop: _exact_rows(start, stop, q_len, kv_len, vertical, slash, causal)  # noqa: E731
        out, lse = _weighted_attention(q, k, v, scale, weights, _rows_per_step(batch, q_heads, kv_len, bm, q.device))
        return (out, lse) if return_lse else out
    if bn < bm:
        raise InputError("block_size_n", bn, f"at least block_size_m = {bm} (the kernels use 64 x 64)")
    step = _list_chunk_rows(batch, q_heads, vertical.shape[-1], slash.shape[-1], bm, bn)
    if step >= q_len:
        out, lse = _kernel_mode_rows(q, k, v, vertical, slash, scale, causal, bm, bn)
        return (out, lse) if return_lse else out
    # Long: the lists are converted and consumed one chunk of row blocks at a time; a row block's key
    # set depends on its own rows only (a key j is on slash delta for row r where j = p_r - delta), so
    # each chunk is the same problem over fewer rows and the output is the one-shot result.  Causal:
    # rows [start, stop) are the last queries of the first kv_len - q_len + stop keys (the lists differ
    # only by ranges wholly above the diagonal).  Queries after the keys (causal=False): row r sits at
    # p_r = kv_len + r, the chunk's row r - start at kv_len + r - start, so its distances are delta -
    # start (a delta below start reaches no key of these rows: -1).
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse_parts = []
    chunks = [(start, min(start + step, q_len)) for start in range(0, q_len, step)]

    def convert(start, stop):
        keys = kv_len - q_len + stop if causal else kv_len
        chunk_slash = slash if causal else torch.where(slash >= start, slash - start, -1)
        return _convert(stop - start, keys, vertical, chunk_slash, bm, bn, causal)

    ahead = CONVERT_AHEAD and _triton_can_run(_triton_module(q.device), q, v, bm, bn) and q.is_cuda
    for (start, stop), converted in zip(chunks, (_converted_ahead if ahead else _converted_in_turn)(chunks, convert)):
        keys = kv_len - q_len + stop if causal else kv_len
        part_out, part_lse = _kernel_mode_rows(q[:, :, start:stop], k[:, :, :keys], v[:, :, :keys], vertical, None,
                                               scale, causal, bm, bn, converted)
        out[:, :, start:stop] = part_out
        lse_parts.append(part_lse)
    return (out, torch.cat(lse_parts, dim=-1)) if return_lse else out


#: Whether a long call converts the next chunk's lists on a side stream while the kernel consumes the
#: current chunk's (CUDA with the Triton kernel).  The conversion is a walk bound by memory latency that
#: occupies few of the GPU's resources, so it runs beside the attention kernel instead of before it; the
#: lists and the outputs are the same as converting in turn.
CONVERT_AHEAD = True


def _converted_in_turn(chunks, convert):
    for chunk in chunks:
        yield convert(*chunk)


def _converted_ahead(chunks, convert):
    """``convert(*chunk)`` of each chunk, the next chunk's made on a side stream while the caller's work on
    the current one (queued on the current stream after this yields) runs.

    The side stream waits for the current stream's work so far (the index sets), the current stream waits
    for each conversion before its lists are used, and the lists, made on the side stream, are recorded on
    the current stream, so the allocator does not hand their memory out before the kernel that reads them
    has run.  Two chunks' lists exist at once (2 x ``LIST_BYTES`` at most).
    """
    main = torch.cuda.current_stream()
    side = torch.cuda.Stream(device=main.device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        upcoming = convert(*chunks[0])
    for i in range(len(chunks)):
        main.wait_stream(side)
        current = upcoming
        for t in current:
            t.record_stream(main)
        if i + 1 < len(chunks):
            with torch.cuda.stream(side):
                upcoming = convert(*chunks[i + 1])
        yield current


#: Bytes that the block and column lists of one chunk of row blocks may take.  At 1M tokens, 28 heads and
#: budgets of 1000 verticals / 6096 slashes the whole lists take 12.1 GiB (more than q, k and v together);
#: calls convert and consume them per chunk of row blocks instead (causal or not), two chunks' at once
#: where the next one is converted beside the kernel (:data:`CONVERT_AHEAD`).  On CUDA the Triton kernel's pair schedule adds at most 5/8 of the lists again (an int8 and an
#: int32 entry per pair of row blocks).  256 MiB: at Qwen2.5-7B's 28 heads and the largest budgets
#: (19532 + 24528 entries per row block) about 54 row blocks (3456 rows) per chunk.
LIST_BYTES = 1 << 28


def _list_chunk_rows(batch: int, heads: int, n_vertical: int, n_slash: int, bm: int, bn: int) -> int:
    """Query rows per chunk (a multiple of ``bm``) whose int32 lists fit in :data:`LIST_BYTES`."""
    per_row_block = 4 * batch * heads * (max(n_slash, 1) * -(-bm // bn) + max(n_vertical, 1) + 2)
    return max(1, LIST_BYTES // per_row_block) * bm


def _kernel_mode_rows(q, k, v, vertical, slash, scale, causal, bm, bn, converted=None):
    """``(out, lse)`` of the kernel-mode key sets of the whole ``q`` (the lists built here, or given as
    ``converted``, then consumed)."""
    batch, q_heads, _, q_len, kv_len, _ = check_qkv(q, k, v)
    if converted is None:
        converted = _convert(q_len, kv_len, vertical, slash, bm, bn, causal)
    triton = _triton_module(q.device)
    if _triton_can_run(triton, q, v, bm, bn):
        return triton.sparse_attention_triton(q, k, v, *converted, scale, bm, bn, True, causal=causal)
    weights = lambda start, stop: _kernel_rows(start, stop, q_len, kv_len, converted, causal, bm, bn)  # noqa: E731
    return _weighted_attention(q, k, v, scale, weights, _rows_per_step(batch, q_heads, kv_len, bm, q.device))


# ----------------------------------------------------------------------------- A-shape and tri-shape


def _a_shape_rows(q, k, v, rows: tuple[int, int], n_init: int, n_local: int, scale: float):
    """A-shape attention of query rows ``[rows)``: each block reads its sinks and its window only.

    Returns ``(out, lse)`` for those rows, in the compute dtype.
    """
    batch, q_heads, kv_heads, q_len, kv_len, head_dim = check_qkv(q, k, v)
    group = q_heads // kv_heads
    cdt = compute_dtype(q.dtype)
    dev = q.device
    off = kv_len - q_len
    first, last = rows
    n_sinks = min(n_init, kv_len)
    # A block of s rows reads at most c + s keys (c = n_sinks + n_local): the largest s with
    # s (c + s) <= the element budget.
    budget, c = _budget_for(dev) // (batch * q_heads), n_sinks + n_local
    step = max(1, int((math.sqrt(c * c + 4 * budget) - c) // 2))
    qg = q.reshape(batch, kv_heads, group, q_len, head_dim)  # query heads under their kv head
    out = torch.empty((batch, kv_heads, group, last - first, v.shape[-1]), dtype=cdt, device=dev)
    lse = torch.empty((batch, kv_heads, group, last - first), dtype=cdt, device=dev)
    for start in range(first, last, step):  # a loop over query blocks
        stop = min(start + step, last)
        window_lo = max(0, start + off - n_local + 1)  # the first key any row's window reaches
        window_hi = stop + off  # one past the last row's own position
        lo = min(max(window_lo, n_sinks), window_hi)  # sinks are read separately: no key twice
        key_pos = torch.cat([torch.arange(min(n_sinks, window_hi), device=dev), torch.arange(lo, window_hi, device=dev)])  # (keys,)
        keys = torch.cat([k[:, :, : min(n_sinks, window_hi)], k[:, :, lo:window_hi]], dim=2).to(cdt)
        vals = torch.cat([v[:, :, : min(n_sinks, window_hi)], v[:, :, lo:window_hi]], dim=2).to(cdt)
        distance = (torch.arange(start, stop, device=dev) + off)[:, None] - key_pos[None, :]  # (n, keys): D = position(i) - j
        visible = (distance >= 0) & ((distance < n_local) | (key_pos[None, :] < n_init))
        o, l = _weighted_block(
            qg[..., start:stop, :].to(cdt), keys.transpose(-1, -2)[:, :, None], vals[:, :, None], scale, visible
        )
        out[..., start - first : stop - first, :], lse[..., start - first : stop - first] = o, l
    return out.reshape(batch, q_heads, last - first, -1), lse.reshape(batch, q_heads, last - first)


def _streaming(conv, q, k, v, n_init, n_local, n_last, scale, return_lse):
    q, k, v, (batch, q_heads, _, q_len, kv_len, head_dim) = _sparse_inputs(conv, q, k, v, True)
    _, _, n_init, n_local, n_last = check_streaming_sizes(q_len, kv_len, n_init, n_local, n_last)
    scale = check_scale(scale, head_dim)
    return_lse = check_bool("return_lse", return_lse)
    cdt = compute_dtype(q.dtype)
    dense_from = max(0, q_len - (n_last or 0))  # tri-shape: rows >= dense_from see every causal key
    out = torch.empty((batch, q_heads, q_len, v.shape[-1]), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, q_heads, q_len), dtype=cdt, device=q.device)
    if dense_from > 0:
        o, l = _a_shape_rows(q, k, v, (0, dense_from), n_init, n_local, scale)
        out[:, :, :dense_from], lse[:, :, :dense_from] = o.to(q.dtype), l
    if dense_from < q_len:  # the last rows are the last queries: bottom-right causal attention over all keys
        o, l = attention_tensors(q[:, :, dense_from:], k, v, True, scale, True)
        out[:, :, dense_from:], lse[:, :, dense_from:] = o, l.to(cdt)
    return (out, lse) if return_lse else out


def a_shape_attention(conv, q, k, v, n_init=128, n_local=3968, scale=None, return_lse=False):
    """Attention over the A-shape mask; see :func:`yarnref.sparse.a_shape_attention`."""
    return _streaming(conv, q, k, v, n_init, n_local, None, scale, return_lse)


def tri_shape_attention(conv, q, k, v, n_init=128, n_local=3968, n_last=100, scale=None, return_lse=False):
    """Attention over the tri-shape mask; see :func:`yarnref.sparse.tri_shape_attention`."""
    return _streaming(conv, q, k, v, n_init, n_local, n_last, scale, return_lse)
