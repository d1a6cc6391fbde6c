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
* CuPy has no bfloat16 dtype: rounding to bfloat16 is done on the float32 bit
  pattern with integer operations, exactly as :mod:`yarnref.precision` does.
"""

from __future__ import annotations

import numpy as np

from yarnref.errors import InputError

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def check_float(name: str, a) -> None:
    """Raise InputError unless ``a`` is a float16/float32/float64 array."""
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise InputError(name, f"dtype {a.dtype}", "a float16, float32 or float64 array")


def compute_dtype(*arrays) -> np.dtype:
    """float64 if any of ``arrays`` is float64, else float32."""
    if any(np.dtype(a.dtype) == np.float64 for a in arrays):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def scalar(value, dtype):
    """``value`` as a NumPy scalar of ``dtype`` (so that it never promotes an array)."""
    return np.dtype(dtype).type(value)


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
