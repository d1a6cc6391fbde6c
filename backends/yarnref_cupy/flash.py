"""The fused float16/bfloat16 attention kernel of the CuPy backend (``flash_attention.cu``), and when it applies.

One CUDA kernel, compiled by NVRTC through CuPy's RawModule, computes softmax
attention with an online softmax over 64-key tiles, never forming the
``(q_len, kv_len)`` logits: dense (causal or not) or over the vertical-slash
kernel lists of the index conversion.  Its conventions are the spec's
(bottom-right causal alignment, GQA by ``h // group``, empty rows give 0 and
lse ``-inf``; a key listed twice counts twice), and it computes as the fused
kernels of production stacks do: float16 inputs, float32 logits, softmax
state and accumulators, the probabilities rounded to the input's 16-bit
type for the ``P V`` product, output in the input dtype, lse in float32.
float16 and bfloat16 (CuPy's own ``bfloat16`` dtype, the ``ml_dtypes`` one)
are the same kernel with the other ``mma``/``cvt`` variant.

It runs when :func:`fusable` says so (a real CUDA device, float16 or
bfloat16 q/k/v, ``head_dim`` one of :data:`HEAD_DIMS` for both k and v, rows
with a unit last stride and 16-byte aligned, and for lists 64 x 64 blocks);
everything else takes the blocked cuBLAS path of :mod:`.attention`.  Where
torch and Triton are installed, yarnref's Triton kernels are preferred
(:mod:`.kernels`); this kernel is the fused path of a CuPy-only install, and
``YARNREF_CUPY_KERNELS=nvrtc`` forces it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["fusable", "flash_attention", "HEAD_DIMS"]

#: head_dim values the kernel is compiled for (each a multiple of 16, the mma k-step).
HEAD_DIMS = (32, 64, 80, 96, 128, 256)
#: The 16-bit dtypes it takes, by name: float16, and bfloat16 (CuPy's ``ml_dtypes.bfloat16``).
DTYPES = ("float16", "bfloat16")
#: Query rows per block of the list (vertical-slash) kernel, and keys per tile: the conversion's 64 x 64.
BLOCK_M = BLOCK_N = 64
#: Warps per block (16 query rows each) for dense attention: 128-row blocks, so every K/V tile
#: brought into shared memory serves 128 queries (64-row blocks, 4 warps, for short queries and lists).
DENSE_WARPS = 8
_MAX_GRID_Y = 65535
_MODULES: dict[tuple, object] = {}


def _name(head_dim: int, bf16: bool, warps: int) -> str:
    return f"yarnref_flash_fwd<{head_dim}, {'true' if bf16 else 'false'}, {warps}>"


def _kernel(cupy, head_dim: int, bf16: bool, warps: int):
    """The kernel for ``head_dim`` and the dtype on the current device.

    Each instantiation is compiled on first use only (NVRTC takes seconds for
    the large head dims; CuPy caches the binary on disk) and once per process.
    """
    key = (cupy.cuda.Device().id, head_dim, bf16, warps)
    if key not in _MODULES:
        source = Path(__file__).with_name("flash_attention.cu").read_text()
        name = _name(head_dim, bf16, warps)
        module = cupy.RawModule(code=source, options=("--std=c++14",), name_expressions=(name,))
        _MODULES[key] = (module, module.get_function(name))  # the module is kept alive with its function
    return _MODULES[key][1]


def _rows_ok(x) -> bool:
    """Last axis contiguous, rows (and the base) 16-byte aligned: the kernel copies 8 elements (16 bytes) at a time."""
    item = x.itemsize
    return x.strides[-1] == item and x.data.ptr % 16 == 0 and all(s % 16 == 0 for s in x.strides[:-1])


def fusable(xp, q, k, v, lists: bool = False, block_size_m: int = BLOCK_M, block_size_n: int = BLOCK_N) -> bool:
    """True if :func:`flash_attention` can compute this call (see the module docstring)."""
    if getattr(xp, "__name__", "") != "cupy":
        return False
    if not (q.dtype == k.dtype == v.dtype) or np.dtype(q.dtype).name not in DTYPES:
        return False
    d = q.shape[-1]
    if d not in HEAD_DIMS or k.shape[-1] != d or v.shape[-1] != d:
        return False
    if lists and (block_size_m, block_size_n) != (BLOCK_M, BLOCK_N):
        return False
    if q.shape[0] * q.shape[1] > _MAX_GRID_Y or q.shape[2] == 0:
        return False
    return all(_rows_ok(x) for x in (q, k, v))


def flash_attention(xp, q, k, v, scale: float, causal: bool, lists=None):
    """``(out, lse)`` of softmax attention, fused; ``lists``: the conversion's four arrays, or None for dense.

    ``q`` ``(B, Hq, Tq, D)``, ``k``/``v`` ``(B, Hk, Tk, D)`` float16 or bfloat16
    (checked by :func:`fusable`); ``scale`` multiplies the logits.  ``out``
    ``(B, Hq, Tq, D)`` in q's dtype, ``lse`` float32 ``(B, Hq, Tq)``.
    """
    cupy = xp
    b, hq, tq, d = q.shape
    hk, tk = k.shape[1], k.shape[2]
    out = cupy.empty((b, hq, tq, d), dtype=q.dtype)
    lse = cupy.empty((b, hq, tq), dtype=np.float32)
    warps = DENSE_WARPS if lists is None and tq > BLOCK_M else 4
    n_rows = -(-tq // (16 * warps))
    if lists is None:
        dummy = cupy.zeros(1, dtype=np.int32)
        bc = bo = cc = ci = dummy
        blk_cap = col_cap = 0
    else:
        bc, bo, cc, ci = (cupy.ascontiguousarray(a.astype(np.int32, copy=False)) for a in lists)
        blk_cap, col_cap = bo.shape[-1], ci.shape[-1]
    item = q.itemsize
    strides = [s // item for x in (q, k, v) for s in x.strides[:3]]
    smem = 2 * 2 * BLOCK_N * (d + 8) * 2 + 2 * BLOCK_N * 4  # two stages of K and V tiles, and their key indices
    kernel = _kernel(cupy, d, np.dtype(q.dtype).name == "bfloat16", warps)
    if smem > 48 * 1024 and kernel.max_dynamic_shared_size_bytes < smem:
        kernel.max_dynamic_shared_size_bytes = smem  # opt in above the 48 KB default
    raw = [x.view(np.uint16) for x in (q, k, v, out)]  # the kernel reads raw 16-bit words (u16)
    kernel(
        (n_rows, b * hq),
        (32 * warps,),
        (
            *raw, lse,
            *(np.int64(s) for s in strides),
            np.int32(hq), np.int32(hq // hk), np.int32(tq), np.int32(tk),
            np.float32(scale * 1.4426950408889634), np.int32(bool(causal)),
            np.int32(lists is not None), bc, bo, np.int32(blk_cap), cc, ci, np.int32(col_cap),
        ),
        shared_mem=smem,
    )
    return out, lse
