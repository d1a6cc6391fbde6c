"""Array helpers shared by the CuPy backend's modules: dtypes, validation, rounding.

Every function takes the array module ``xp`` as its first argument: ``cupy``
normally, ``numpy`` in the test-only shim (``CupyBackend(_xp=numpy)``), so the
same lines run in both.  Only operations that CuPy and NumPy share with the
same meaning are used here.

Conventions
-----------
* *Compute dtype*: float64 when an input is float64, otherwise float32
  (float16 inputs are computed in float32, as GPU attention kernels do).
  Outputs keep the dtype the spec gives them (q's dtype for attention
  outputs); log-sum-exps are returned in the compute dtype.
* Scalars mixed with arrays are NumPy scalars of the array's own dtype
  (``_scalar``), so the result dtype is the array's under every promotion
  rule (NumPy's NEP 50, CuPy's, legacy value-based casting).
* bfloat16 arrays are CuPy's own ``bfloat16`` dtype (CuPy 14 carries the
  ``ml_dtypes.bfloat16`` NumPy dtype natively; a torch bfloat16 tensor crosses
  by DLPack as one).  They are computed in float32 like float16.  The
  *rounding* of float32/float64 values to bfloat16 precision (RoPE tables'
  ``precision="bfloat16"``) is still done on the float32 bit pattern with
  integer operations, exactly as :mod:`yarnref.precision` does, so it needs
  no bfloat16 support from the array library.
"""

from __future__ import annotations

import numpy as np

from yarnref.errors import InputError

#: The float dtypes the backend takes, by name (bfloat16 is ``ml_dtypes.bfloat16``, CuPy's bfloat16).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def dtype_name(dtype) -> str:
    return np.dtype(dtype).name


def check_float(name: str, a) -> None:
    """Raise InputError unless ``a`` is a float16/bfloat16/float32/float64 array."""
    if dtype_name(a.dtype) not in FLOAT_DTYPES:
        raise InputError(name, f"dtype {a.dtype}", "a float16, bfloat16, float32 or float64 array")


def is_half(a) -> bool:
    """True for the 16-bit float dtypes (float16, bfloat16), which the fused kernels take."""
    return dtype_name(a.dtype) in ("float16", "bfloat16")


#: Per float dtype: the unsigned integer of its width and its exponent mask (all ones: inf or NaN).
_EXPONENT_BITS = {
    "float16": (np.uint16, 0x7C00),
    "bfloat16": (np.uint16, 0x7F80),
    "float32": (np.uint32, 0x7F800000),
    "float64": (np.uint64, 0x7FF0000000000000),
}
_MAGNITUDE_KERNELS: dict[str, object] = {}


def _magnitude_kernel(cupy, uint_name: str):
    """A CuPy ReductionKernel: the largest ``bits & ~sign`` (the bit pattern of max |x|) along the last axis."""
    if uint_name not in _MAGNITUDE_KERNELS:
        _MAGNITUDE_KERNELS[uint_name] = cupy.ReductionKernel(
            f"{uint_name} x, {uint_name} magnitude", f"{uint_name} y", "x & magnitude", "(a > b ? a : b)", "y = a", "0",
            f"yarnref_max_magnitude_{uint_name}",
        )
    return _MAGNITUDE_KERNELS[uint_name]


def _rows(bits):
    """``bits`` as rows to reduce along the last axis: long rows of a contiguous array (every block busy)."""
    if bits.ndim == 0:
        return bits.reshape(1)
    if bits.flags.c_contiguous and bits.size % 2048 == 0:
        return bits.reshape(-1, 2048)
    return bits


def max_abs_bits(xp, a):
    """A 0-d unsigned array on ``a``'s device: the bit pattern of ``max |a|`` in ``a``'s own float format.

    For IEEE floats without the sign bit, the order of the bit patterns as
    unsigned integers is the order of the magnitudes, with every NaN above
    ``inf``; so one integer max over ``bits & ~sign`` finds ``max |a|``, or a
    NaN if there is one, in any float dtype (bfloat16 included) without
    float arithmetic from the array library.  0 (the pattern of +0) for an
    empty array.  Reduces rows first, then the rows' maxima: CuPy runs a
    reduction to one scalar in a single thread block (33 ms for 8M elements).
    """
    uint = _EXPONENT_BITS[dtype_name(a.dtype)][0]
    magnitude = uint(np.iinfo(uint).max >> 1)  # every bit but the sign
    if a.size == 0:
        return xp.zeros((), dtype=uint)
    bits = a.view(uint)
    if xp is np:
        return np.asarray((bits & magnitude).max(), dtype=uint)
    per_row = _magnitude_kernel(xp, np.dtype(uint).name)(_rows(bits), magnitude, axis=-1)
    return per_row.max()


#: One pass over a contiguous float array's bit patterns: each block's largest ``bits & magnitude``, then
#: one ``atomicMax`` into ``out[slot]`` (zero-extended to 64 bits).  One launch per array, where the
#: reduction kernels above take two and CuPy's own launch costs dominate at 8K tokens.
_MAGNITUDE_SOURCE = r"""
template <typename T>
__global__ void yarnref_max_magnitude(const T* __restrict__ x, long long n, T magnitude,
                                      unsigned long long* out, int slot) {
    unsigned long long best = 0;
    long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        unsigned long long m = (unsigned long long)(x[i] & magnitude);
        best = m > best ? m : best;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        unsigned long long other = __shfl_down_sync(0xffffffffu, best, offset);
        best = other > best ? other : best;
    }
    __shared__ unsigned long long warp_best[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_best[warp] = best;
    __syncthreads();
    if (warp == 0) {
        best = lane < (int)(blockDim.x >> 5) ? warp_best[lane] : 0ull;
        for (int offset = 16; offset > 0; offset >>= 1) {
            unsigned long long other = __shfl_down_sync(0xffffffffu, best, offset);
            best = other > best ? other : best;
        }
        if (lane == 0) atomicMax(out + slot, best);
    }
}
"""
_CTYPES = {"uint16": "unsigned short", "uint32": "unsigned int", "uint64": "unsigned long long"}
#: Blocks of 256 threads per launch: enough to fill a GPU (8 per SM on a 132-SM H100/H200); the loop strides the rest.
_MAGNITUDE_BLOCKS = 1024
_MAGNITUDE_FUNCTIONS: dict[tuple, object] = {}


def _magnitude_function(cupy, uint_name: str):
    key = (cupy.cuda.Device().id, uint_name)
    if key not in _MAGNITUDE_FUNCTIONS:
        name = f"yarnref_max_magnitude<{_CTYPES[uint_name]}>"
        module = cupy.RawModule(code=_MAGNITUDE_SOURCE, options=("-std=c++14",), name_expressions=(name,))
        _MAGNITUDE_FUNCTIONS[key] = module.get_function(name)
    return _MAGNITUDE_FUNCTIONS[key]


def magnitude_bits(xp, arrays):
    """``(len(arrays),)`` uint64 on the device: per float array, the bit pattern of ``max |a|`` (zero-extended).

    See :func:`max_abs_bits` for why an integer max finds it (NaN above
    ``inf``; 0 for an empty array).  Contiguous arrays take one launch each
    of ``_MAGNITUDE_SOURCE``; others (and the NumPy shim) :func:`max_abs_bits`.
    """
    out = xp.zeros(len(arrays), dtype=np.uint64)
    for slot, a in enumerate(arrays):
        if a.size == 0:
            continue
        uint = _EXPONENT_BITS[dtype_name(a.dtype)][0]
        if xp is np or not a.flags.c_contiguous:
            out[slot] = max_abs_bits(xp, a).astype(np.uint64)
            continue
        blocks = int(min(-(-a.size // 256), _MAGNITUDE_BLOCKS))
        _magnitude_function(xp, np.dtype(uint).name)(
            (blocks,), (256,),
            (a.view(uint), np.int64(a.size), uint(np.iinfo(uint).max >> 1), out, np.int32(slot)),
        )
    return out


def from_magnitude_bits(bits, dtype) -> float:
    """A zero-extended bit pattern of :func:`magnitude_bits` as the Python float it stands for in ``dtype``."""
    dtype = np.dtype(dtype)
    return float(np.array(bits, dtype=_EXPONENT_BITS[dtype.name][0]).view(dtype))


def is_nonfinite_magnitude(bits, dtype) -> bool:
    """True if a :func:`magnitude_bits` pattern says the array holds an inf or a NaN (exponent bits all ones)."""
    exponent = _EXPONENT_BITS[np.dtype(dtype).name][1]
    return int(bits) >= exponent


def start_max_abs(xp, arrays):
    """Launch :func:`magnitude_bits`; returns the reader of ``max |a|`` per array as Python floats (one transfer).

    The form :func:`yarnref.checks.start_logits_check` takes as ``max_abs``.
    """
    dtypes = [np.dtype(a.dtype) for a in arrays]
    packed = magnitude_bits(xp, arrays)

    def read():
        host = packed if xp is np else packed.get()
        return [from_magnitude_bits(b, dt) for b, dt in zip(host.tolist(), dtypes)]

    return read


def compute_dtype(*arrays) -> np.dtype:
    """float64 if any of ``arrays`` is float64, else float32."""
    if any(np.dtype(a.dtype) == np.float64 for a in arrays):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def scalar(value, dtype):
    """``value`` as a NumPy scalar of ``dtype`` (so that it never promotes an array)."""
    return np.dtype(dtype).type(value)


def written(result, view):
    """``result``, copied into ``view`` when the caller gave one (an output view to fill), else itself."""
    if view is None:
        return result
    view[...] = result
    return view


def where_scalar(xp, cond, a, value):
    """``where(cond, a, value)`` with ``value`` a scalar, keeping ``a``'s dtype."""
    return xp.where(cond, a, scalar(value, a.dtype))


def _round_float32_to_bfloat16(xp, x32):
    """Round a float32 array to the nearest bfloat16 (ties to even), as float32; NaN stays NaN."""
    bits = xp.ascontiguousarray(x32).view(xp.uint32).astype(xp.uint64)
    sixteen = np.uint64(16)
    lsb = (bits >> sixteen) & np.uint64(1)  # the last bit kept, for ties-to-even
    rounded = ((bits + np.uint64(0x7FFF) + lsb) >> sixteen) << sixteen
    out = (rounded & np.uint64(0xFFFFFFFF)).astype(xp.uint32).view(xp.float32)
    return xp.where(xp.isnan(x32), np.float32(np.nan), out.reshape(x32.shape))  # (ascontiguousarray makes 0-d 1-d)


def round_to(xp, x, precision: str):
    """Round ``x`` (float32 or float64) to ``precision``; the result keeps ``x``'s dtype.

    Mirrors :func:`yarnref.precision.round_to`: float16 is one cast, bfloat16
    goes through float32 first (as a float32 tensor cast to bfloat16 does).
    """
    if precision == "float64":
        return x
    dtype = x.dtype
    if precision == "float32":
        return x.astype(np.float32).astype(dtype, copy=False)
    if precision == "float16":
        return x.astype(np.float16).astype(dtype)
    return _round_float32_to_bfloat16(xp, x.astype(np.float32)).astype(dtype, copy=False)
