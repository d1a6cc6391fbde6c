r"""Tolerances and comparisons for testing an implementation against yarnref.

This module is the oracle's public test surface: yarnref's own backend tests
use it, and so can the tests of another project (an inference engine, a
kernel, a port) that checks its RoPE / attention / DCA / sparse outputs
against yarnref's float64 spec.  It imports NumPy only; torch and CuPy arrays
are recognised by their type's module and converted without importing
anything.

Three things:

* :func:`tolerance` ``(dtype, *, max_position=0, op="rope") -> (rtol, atol)``:
  the table below.
* :func:`assert_close`: converts both sides (NumPy, torch, CuPy, lists,
  ``ml_dtypes.bfloat16``) to float64 NumPy and compares them elementwise,
  ``|actual - expected| <= atol + rtol * |expected|``; non-finite entries must
  match exactly (``-inf`` lse of a query with no keys, say).  On failure the
  message gives the number of mismatches, the largest absolute and relative
  errors, where they are, and the values there.
* :func:`assert_error_within`: the rule for half precision (docs/oracle.md): the
  fast result's error against the float64 spec is at most ``factor`` times the
  error of a *naive* implementation in the same precision.  Elementwise bounds
  for bfloat16 are either loose enough to hide a real bug or tight enough to
  flake; comparing with what the precision itself costs is neither.

The tolerance table
-------------------
``u`` is the unit roundoff of the dtype (half an ulp at 1):
float64 :math:`2^{-53}`, float32 :math:`2^{-24} \approx 6.0\times10^{-8}`,
float16 :math:`2^{-11} \approx 4.9\times10^{-4}`, bfloat16
:math:`2^{-8} \approx 3.9\times10^{-3}`.

=====================  ====================  ====================  =====================  =====================
op                     float64               float32               float16                bfloat16
=====================  ====================  ====================  =====================  =====================
``"rope"``             16u, 16u S            16u, 16u S            2u, 2u S               2u, 2u S
``"attention"`` etc.   1e-11, 1e-11          2e-5, 2e-5            4u, 4u                 4u, 4u
=====================  ====================  ====================  =====================  =====================

(each cell is ``rtol, atol``; ``"attention"``, ``"merge"``, ``"dca"`` and
``"sparse"`` share a row), plus a position term added to ``atol``.

``"frequencies"`` (inverse frequency vectors, e.g. from a port of
:func:`yarnref.rope_frequencies`, or ``rope_frequencies(...,
precision="float32")`` against the float64 spec) is relative only (``atol =
0``: the slowest pairs are ~1e-7, below any useful absolute bound): ``rtol =
16u`` in float64 and ``256u`` (1.5e-5) otherwise, which covers ``base **
(-2i/r)`` evaluated in float32 (relative error up to about ``(1 + ln base) u``)
and the YaRN / Llama 3 blends, whose float32 weights the stacks round before
the factor ``s`` amplifies them (for Llama 3 with ``high_freq_factor`` close
to ``low_freq_factor`` the smoothing weight is divided by their difference:
pass a larger ``rtol``, about ``3u s ((3 + ln b) hf + lf) / (hf - lf)``).
Use it for frequencies, not ``op="rope"``.

**Value scale** ``S`` (``value_scale``).  RoPE's errors are proportional to
the magnitude of the rotated pair, ``m |(x_a, x_b)|``: cos/sin tables have
``S = m`` (the attention factor, up to 1.35 for YaRN x32), rotated q/k the
pair norm times ``m`` (above 4 for normal q entries).  :func:`assert_close`
takes ``S = sqrt(2) max |expected|`` for ``op="rope"`` (a pair's norm is at
most ``sqrt(2)`` times its larger entry), so no unit-scale assumption is
made; :func:`tolerance` takes it as an argument (default 1).

**Rounding term** (``"rope"``).  A few roundings of values of scale ``S``
(cos/sin, the product with ``m``, with ``x``, the sum): 16u covers any order
of operations in float32/float64.  For float16/bfloat16 *outputs* the
arithmetic is float32 in every stack and only the final cast rounds (2u).

**Position term**: ``S * dphi``, where ``dphi`` bounds the error of an angle
``p theta_i`` formed in precision ``u_a`` (``angle_dtype`` if given, else the
dtype itself for float64/float32, and float32 for float16/bfloat16: every
stack computes angles in float32 and casts the tables).  It depends on how
the angles are formed (``angles``):

* ``"product"`` (transformers, vLLM, yarnref's ``precision="float32"``:
  ``fl(p * theta_i)`` with ``theta_i`` itself computed in float32).  Write
  ``theta_i = e^{-t_i}``, ``t_i = 2 i ln(b) / r``.  The exponent ``2i/r`` is
  rounded (relative error ``u``), which ``b^{-x}`` turns into a relative
  error ``t_i u`` of ``theta_i``; the power, the reciprocal, a scale ``1/s``
  and a blend each add ``u theta_i`` and the product ``u p theta_i``: ``dphi_i
  <= u p e^{-t_i} (t_i + 5)``.  Pair 0 (``theta_0 = 1`` exactly) has only the
  product's ``u p``.  So ``dphi <= c u_a p`` with ``c = max(1, e^{-t_1} (t_1
  + 5))`` when ``rotary_dim`` and ``base`` are given (4.5 for ``r = 128``,
  ``b = 1e4``), else its supremum ``c = 5``.
* ``"ggml"`` (llama.cpp: :mod:`yarnref.ggml`, ``theta_{i+1} = fl(theta_i
  t)``, ``t = powf(b, -2/r)``).  Pair ``i`` carries ``i`` roundings of the
  recurrence and ``t``'s relative error ``(1 + 2 ln(b) / r) u`` raised to
  the ``i``-th power: ``dphi_i <= p u theta_i ((2i + 1) + 2 i ln(b) / r)``.
  With ``theta_i = e^{-x ln b}``, ``i = x r / 2``, the maximum over ``x`` of
  ``x r e^{-x ln b}`` is ``r / (e ln b)``, so ``dphi <= (r / (e ln b) + 3)
  u_a p`` (the 3: ``1/e`` and the ``1/s`` scale and blend, rounded up).
  Pass ``rotary_dim`` and ``base``.  At ``p = 127000``, ``r = 128``, ``b =
  1e4`` that is 0.06 rad; ggml's actual worst error there is 0.022 rad, and
  one float32 product's 0.008 rad.

For attention-type ops the position term is ``4 * 2 u_a p`` (``"product"``;
``"ggml"`` uses its ``dphi`` in place of ``2 u_a p``): a logit of unit-scale
vectors moves by about twice the angle error, an output by about twice the
logit error.  Pass ``max_position=0`` (the default) when the reference
computed its angles in the same precision and the same way as the
implementation under test: the angles are then the same numbers.

These bounds accept every correct stack (vLLM's float32 caches, ggml's
recurrence, transformers' bf16 tables, up to and beyond 128K positions) and
still reject an off-by-one position, the wrong pairing, a wrong attention
factor or a missing YaRN ramp: tests/test_oracle_tolerances.py runs both.

Example, in another project's test::

    from yarnref.testing import assert_close
    cos_ref, sin_ref = yarnref.rope_cos_sin(inv_freq, positions, m)   # float64 spec
    assert_close(my_cos, cos_ref, op="rope", max_position=positions.max())
    # llama.cpp-style angles:
    assert_close(my_q, q_ref, op="rope", max_position=positions.max(), angles="ggml", rotary_dim=128, base=1e4)
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError
from .precision import UNIT_ROUNDOFF

__all__ = [
    "OPS",
    "ANGLES",
    "angle_error_bound",
    "dtype_name",
    "to_float64",
    "tolerance",
    "assert_close",
    "max_error",
    "assert_error_within",
]

#: The ops of the tolerance table; "attention", "merge", "dca" and "sparse" share the attention row.
OPS = ("rope", "frequencies", "attention", "merge", "dca", "sparse")

_ATTENTION_ROW = {"float64": (1e-11, 1e-11), "float32": (2e-5, 2e-5)}


def dtype_name(dtype) -> str:
    """``"float64"``, ``"float32"``, ``"float16"`` or ``"bfloat16"`` for a NumPy, torch, CuPy or ml_dtypes dtype, or a name."""
    if isinstance(dtype, str):
        name = dtype
    elif isinstance(dtype, type) and issubclass(dtype, np.generic):  # np.float32, the scalar type
        name = np.dtype(dtype).name
    else:
        name = getattr(dtype, "name", None) or str(dtype)  # numpy / ml_dtypes dtypes have .name; torch's str is "torch.float32"
    name = name.removeprefix("torch.")
    if name in ("double", "float", "half"):
        name = {"double": "float64", "float": "float32", "half": "float16"}[name]
    if name not in UNIT_ROUNDOFF:
        raise InputError("dtype", dtype, f"one of {tuple(UNIT_ROUNDOFF)} (a floating dtype)")
    return name


def _array_dtype(x):
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return np.asarray(x).dtype
    return dtype


def to_float64(x) -> np.ndarray:
    """Any array (NumPy, torch on any device, CuPy, a list, ml_dtypes.bfloat16) as a float64 NumPy array.

    Every floating value converts exactly.  Nothing is imported: a torch
    tensor or CuPy array is recognised by its type's module.
    """
    root = type(x).__module__.split(".", 1)[0]
    if root == "torch":
        import torch  # already imported: x is a torch tensor

        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    if root == "cupy":
        x = x.get()
    return np.asarray(x).astype(np.float64)


#: ``angles`` values of :func:`tolerance`: how the implementation under test forms its angles.
ANGLES = ("product", "ggml")
#: ``dphi / (u_a p)`` for ``angles="product"`` without ``rotary_dim`` and ``base`` (module docstring).
PRODUCT_ANGLE_ULPS = 5.0


def angle_error_bound(max_position, angle_dtype="float32", *, angles: str = "product", rotary_dim=None, base=None) -> float:
    """``dphi``: the largest error of an angle ``p theta_i`` (``p <= max_position``) formed as ``angles`` says.

    See the module docstring for the derivation.  ``angles="ggml"`` needs
    ``rotary_dim`` and ``base``; ``"product"`` uses them for a tighter bound.
    """
    u = UNIT_ROUNDOFF[dtype_name(angle_dtype)]
    if angles not in ANGLES:
        raise InputError("angles", angles, f"one of {ANGLES}")
    if angles == "product" and (rotary_dim is None or base is None):
        return PRODUCT_ANGLE_ULPS * u * float(max_position)
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, (int, np.integer)) or rotary_dim < 2:
        raise InputError("rotary_dim", rotary_dim, f"an even integer >= 2 with angles={angles!r}")
    if isinstance(base, bool) or not np.isscalar(base) or not np.isfinite(base) or base <= 1:
        raise InputError("base", base, f"a finite number > 1 with angles={angles!r}")
    if angles == "product":
        t1 = 2 * math.log(base) / rotary_dim  # pair 1; pair 0 is exact up to the product
        return max(1.0, math.exp(-t1) * (t1 + 5.0)) * u * float(max_position)
    return (rotary_dim / (math.e * math.log(base)) + 3.0) * u * float(max_position)


def tolerance(dtype, *, max_position=0, op: str = "rope", angle_dtype=None, value_scale=1.0, angles: str = "product",
              rotary_dim=None, base=None) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing a ``dtype`` result of ``op`` with the float64 spec; see the module docstring.

    ``max_position``: the largest position whose angle the implementation
    under test computed in ``angle_dtype`` while the reference computed it in
    float64 (0: the angles are the same).  ``op``: one of :data:`OPS`.
    ``value_scale``: ``S``, the magnitude of the rotated pairs (``op="rope"``).
    ``angles``, ``rotary_dim``, ``base``: how the angles were formed
    (:data:`ANGLES`).
    """
    name = dtype_name(dtype)
    if not isinstance(op, str) or op not in OPS:
        raise InputError("op", op, f"one of {OPS}")
    if isinstance(max_position, bool) or not np.isscalar(max_position) or not np.isfinite(max_position) or max_position < 0:
        raise InputError("max_position", max_position, "a finite number >= 0")
    if isinstance(value_scale, bool) or not np.isscalar(value_scale) or not np.isfinite(value_scale) or value_scale < 0:
        raise InputError("value_scale", value_scale, "a finite number >= 0")
    u = UNIT_ROUNDOFF[name]
    if op == "frequencies":  # inverse frequency vectors: relative only, they span many decades
        if max_position:
            raise InputError("max_position", max_position, "0 for op='frequencies' (no angles are involved)")
        return float(16 * u if name == "float64" else 256 * u), 0.0
    if angle_dtype is None:
        angle_name = name if name in ("float64", "float32") else "float32"
    else:
        angle_name = dtype_name(angle_dtype)
    if op == "rope":
        rtol = (16 * u) if name in ("float64", "float32") else (2 * u)
        dphi = angle_error_bound(max_position, angle_name, angles=angles, rotary_dim=rotary_dim, base=base)
        return float(rtol), float(value_scale * (rtol + dphi))
    rtol, atol = _ATTENTION_ROW.get(name, (4 * u, 4 * u))
    if angles == "product":
        angle_error = 2 * UNIT_ROUNDOFF[angle_name] * float(max_position)  # |fl(fl(theta) p) - theta p| <= 2 u p
    else:
        angle_error = angle_error_bound(max_position, angle_name, angles=angles, rotary_dim=rotary_dim, base=base)
    return float(rtol), float(atol + 4 * angle_error)


def _compare(actual, expected):
    """float64 copies, the mask of entries that differ in finiteness, and the finite errors."""
    a, e = to_float64(actual), to_float64(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: actual {a.shape}, expected {e.shape}")
    finite = np.isfinite(a) & np.isfinite(e)
    # Non-finite entries must be the same: equal infinities, or NaN on both sides.
    same_nonfinite = (a == e) | (np.isnan(a) & np.isnan(e))
    bad_nonfinite = ~finite & ~same_nonfinite
    err = np.where(finite, np.abs(np.where(finite, a, 0.0) - np.where(finite, e, 0.0)), 0.0)
    return a, e, finite, bad_nonfinite, err


def _where(flat_index: int, shape) -> tuple:
    return tuple(int(i) for i in np.unravel_index(flat_index, shape)) if shape else ()


def assert_close(actual, expected, *, dtype=None, max_position=0, op: str = "rope", rtol=None, atol=None, angle_dtype=None,
                 value_scale=None, angles: str = "product", rotary_dim=None, base=None, err_msg: str = "") -> None:
    """Assert ``|actual - expected| <= atol + rtol |expected|`` elementwise, in float64.

    ``rtol``/``atol`` default to :func:`tolerance` of ``dtype`` (default:
    ``actual``'s dtype; pass it explicitly for integer or object inputs),
    ``max_position``, ``op``, ``angle_dtype``, ``angles`` (with
    ``rotary_dim``, ``base``) and ``value_scale`` (default for ``op="rope"``:
    ``sqrt(2) * max |expected|``, the largest possible pair norm; 1 otherwise).
    Non-finite entries must match exactly.  Raises AssertionError with the
    largest absolute and relative errors, their indices and the values there.
    """
    if rtol is None or atol is None:
        if value_scale is None:
            value_scale = 1.0
            if op == "rope":
                e = to_float64(expected)
                finite = e[np.isfinite(e)]
                value_scale = math.sqrt(2) * float(np.abs(finite).max()) if finite.size else 0.0
        table_rtol, table_atol = tolerance(
            _array_dtype(actual) if dtype is None else dtype, max_position=max_position, op=op, angle_dtype=angle_dtype,
            value_scale=value_scale, angles=angles, rotary_dim=rotary_dim, base=base,
        )
        rtol = table_rtol if rtol is None else rtol
        atol = table_atol if atol is None else atol
    a, e, finite, bad_nonfinite, err = _compare(actual, expected)
    bound = atol + rtol * np.abs(np.where(finite, e, 0.0))
    bad = bad_nonfinite | (finite & (err > bound))
    if not bad.any():
        return
    lines = [err_msg] if err_msg else []
    lines.append(f"not close (op={op!r}, rtol={rtol:.3g}, atol={atol:.3g}): {int(bad.sum())} of {a.size} entries differ")
    if bad_nonfinite.any():
        i = int(np.flatnonzero(bad_nonfinite)[0])
        lines.append(f"  non-finite mismatch at {_where(i, a.shape)}: actual {a.flat[i]!r}, expected {e.flat[i]!r}")
    if finite.any():
        i = int(np.argmax(err))
        lines.append(f"  max abs error {err.flat[i]:.6g} at {_where(i, a.shape)}: actual {a.flat[i]!r}, expected {e.flat[i]!r}")
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(finite & (e != 0), err / np.abs(np.where(e != 0, e, 1.0)), 0.0)
        j = int(np.argmax(rel))
        lines.append(f"  max rel error {rel.flat[j]:.6g} at {_where(j, a.shape)}: actual {a.flat[j]!r}, expected {e.flat[j]!r}")
    raise AssertionError("\n".join(lines))


def max_error(actual, reference) -> float:
    """The largest ``|actual - reference|`` over the entries finite in both (0.0 if none).

    Entries that are non-finite on one side only count as ``inf``.
    """
    _, _, finite, bad_nonfinite, err = _compare(actual, reference)
    if bad_nonfinite.any():
        return float("inf")
    return float(err.max()) if finite.any() else 0.0


def assert_error_within(fast, spec, naive, *, factor: float = 2.0, atol: float = 0.0, err_msg: str = "") -> None:
    """Assert ``max_error(fast, spec) <= factor * max_error(naive, spec) + atol``.

    ``spec`` is the float64 reference; ``naive`` is a straightforward
    implementation in the same low precision as ``fast`` (say, the same
    formula evaluated in bfloat16 tensor arithmetic, or computed in float32 and
    rounded once to bfloat16).  ``atol`` guards the case where the naive error
    happens to be 0.
    """
    if not (np.isfinite(factor) and factor >= 1):
        raise InputError("factor", factor, "a finite number >= 1")
    e_fast, e_naive = max_error(fast, spec), max_error(naive, spec)
    if e_fast <= factor * e_naive + atol:
        return
    prefix = f"{err_msg}\n" if err_msg else ""
    raise AssertionError(
        f"{prefix}the fast result's error against the spec, {e_fast:.6g}, exceeds {factor:g} x the naive "
        f"same-precision error {e_naive:.6g} (+ atol {atol:.3g})"
    )


# Golden vectors live in yarnref.vectors; they are part of the test surface too.
from .vectors import check_vectors, read_vectors, write_vectors  # noqa: E402

__all__ += ["check_vectors", "read_vectors", "write_vectors"]
