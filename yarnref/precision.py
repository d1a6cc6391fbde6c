"""Rounding to the precisions real stacks compute in, without leaving NumPy.

The spec computes in float64.  Real stacks do not: transformers computes RoPE
angles in float32 and casts cos/sin to the activation dtype (bfloat16 or
float16); vLLM builds a float32 cos/sin cache and casts it to the model dtype.
To explain the numbers those stacks produce, yarnref can round an array to a
lower precision and keep the result as a float64 array whose values are exactly
representable in that precision.

NumPy has float16 and float32 but no bfloat16.  bfloat16 is the top 16 bits of
an IEEE float32 (1 sign bit, 8 exponent bits, 7 mantissa bits); rounding to it
is round-to-nearest-even on the low 16 bits, which is what torch's
``tensor.to(torch.bfloat16)`` does.  :func:`round_to` implements that with
integer arithmetic on the float32 bit pattern.

Conventions: ``precision`` is one of ``"float64"``, ``"float32"``,
``"float16"``, ``"bfloat16"``; results are float64 arrays.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

PRECISIONS = ("float64", "float32", "float16", "bfloat16")

#: Unit roundoff (half an ulp at 1.0) of each precision.
UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}


def check_precision(precision: str, param: str = "precision") -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise InputError."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(param, precision, f"one of {PRECISIONS}")
    return precision


def _round_float32_to_bfloat16(x32: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even); NaN stays NaN."""
    bits = np.ascontiguousarray(x32, dtype=np.float32).view(np.uint32).astype(np.uint64)
    lsb = (bits >> 16) & 1  # the last bit kept, for ties-to-even
    rounded = ((bits + 0x7FFF + lsb) >> 16) << 16
    out = (rounded & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x32), np.float32(np.nan), out)


def round_to(x, precision: str) -> np.ndarray:
    """Round ``x`` to ``precision`` and return it as float64.

    ``round_to(x, "float64")`` is ``np.asarray(x, float64)``.  For
    ``"bfloat16"`` the value is first rounded to float32 (as a float32 tensor
    would be) and then to bfloat16.
    """
    check_precision(precision)
    x = np.asarray(x, dtype=np.float64)
    if precision == "float64":
        return x
    if precision == "float32":
        return x.astype(np.float32).astype(np.float64)
    if precision == "float16":
        return x.astype(np.float16).astype(np.float64)
    return _round_float32_to_bfloat16(x.astype(np.float32)).astype(np.float64)
