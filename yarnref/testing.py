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
* :func:`assert_error_within`: the rule for half precision (DESIGN.md): the
  fast result's error against the float64 spec is at most ``factor`` times the
  error of a *naive* implementation in the same precision.  Elementwise bounds
  for bfloat16 are either loose enough to hide a real bug or tight enough to
  flake; comparing with what the precision itself costs is neither.

The tolerance table
-------------------
``u`` is the unit roundoff of the dtype (half an ulp at 1):
float64 :math:`2^{-53}`, float32 :math:`2^{-24} \approx 6.0\times10^{-8}`,
float16 :math:`2^{-11} \approx 4.9\times10^{-4}`, bfloat16
:math:`2^{-8} \approx 3.9\times10^{-3}`.  Values are assumed to be of unit
scale (cos/sin tables, and q/k/v with entries of order 1, as from a normal
distribution or a layer norm); scale ``atol`` yourself for other magnitudes.

=====================  ====================  ====================  =====================  =====================
op                     float64               float32               float16                bfloat16
=====================  ====================  ====================  =====================  =====================
``"rope"``             16u, 16u              16u, 16u              2u, 2u                 2u, 2u
``"attention"`` etc.   1e-11, 1e-11          2e-5, 2e-5            4u, 4u                 4u, 4u
=====================  ====================  ====================  =====================  =====================

``"frequencies"`` (inverse frequency vectors, e.g. from a port of
:func:`yarnref.rope_frequencies`) is relative only (``atol = 0``: the slowest
pairs are ~1e-7, below any useful absolute bound): ``rtol = 16u`` in float64
and ``256u`` (1.5e-5) otherwise, which covers ``base ** (-2i/r)`` evaluated in
float32 (relative error up to about ``(1 + ln base) u``) and the YaRN / Llama 3
blends, whose float32 weights transformers rounds before the factor ``s``
amplifies them.

(each cell is ``rtol, atol``; ``"attention"``, ``"merge"``, ``"dca"`` and
``"sparse"`` share a row), plus a position term added to ``atol``:

* ``"rope"`` (cos/sin tables and rotated vectors).  A few roundings of
  values of order 1: 16u covers any order of operations in float32/float64.
  For float16/bfloat16 *outputs* the arithmetic is float32 in every stack and
  only the final cast rounds (2u: the cast and the float32 noise under it).
* Attention-type ops sum ``kv_len`` products: float32 logits are off by
  about ``sqrt(head_dim) u |q||k| scale``, ~1e-6 for head_dim 128, and the
  output and lse inherit that; 2e-5 leaves room for long rows.  float64 is
  bounded by 1e-11 for any length a test can afford.  Half precision: the
  fused kernels round the probabilities to the input dtype before ``P V``
  and round the output; 4u bounds that for unit-scale v.  For half types,
  prefer :func:`assert_error_within`.
* **Position.**  An angle :math:`p\theta` computed in a precision with unit
  roundoff :math:`u_a` (the frequency rounded, then the product) is off by
  up to :math:`2u_a p\theta \le 2u_a p` (frequencies are at most 1): in
  float32 that is ``ulp(p)`` -- 0.0625 rad at ``p = 1e6`` -- and it moves
  cos/sin by as much.  So ``atol`` grows by :math:`2u_a \cdot
  \text{max\_position}` for ``"rope"`` and by four times that for attention-type
  ops (a logit of unit-scale vectors moves by about twice the angle error,
  and an output by about twice the logit error).  ``u_a`` is the angle
  precision: ``angle_dtype`` if given, else the dtype itself for
  float64/float32, and float32 for float16/bfloat16 (every stack computes
  angles in float32 and casts the tables).  Pass ``max_position=0`` (the
  default) when the reference computed its angles in the same precision as
  the implementation under test (``precision="float32"`` in
  :func:`yarnref.rope_cos_sin`): the angles are then the same numbers.

Example, in another project's test::

    from yarnref.testing import assert_close
    cos_ref, sin_ref = yarnref.rope_cos_sin(inv_freq, positions, m)   # float64 spec
    assert_close(my_cos, cos_ref, op="rope", max_position=positions.max())
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .precision import UNIT_ROUNDOFF

__all__ = [
    "OPS",
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


def tolerance(dtype, *, max_position=0, op: str = "rope", angle_dtype=None) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing a ``dtype`` result of ``op`` with the float64 spec; see the module docstring.

    ``max_position``: the largest position whose angle the implementation
    under test computed in ``angle_dtype`` while the reference computed it in
    float64 (0: the angles are the same).  ``op``: one of :data:`OPS`.
    """
    name = dtype_name(dtype)
    if not isinstance(op, str) or op not in OPS:
        raise InputError("op", op, f"one of {OPS}")
    if isinstance(max_position, bool) or not np.isscalar(max_position) or not np.isfinite(max_position) or max_position < 0:
        raise InputError("max_position", max_position, "a finite number >= 0")
    u = UNIT_ROUNDOFF[name]
    if op == "frequencies":  # inverse frequency vectors: relative only, they span many decades
        if max_position:
            raise InputError("max_position", max_position, "0 for op='frequencies' (no angles are involved)")
        return float(16 * u if name == "float64" else 256 * u), 0.0
    if op == "rope":
        rtol = atol = (16 * u) if name in ("float64", "float32") else (2 * u)
    else:
        rtol, atol = _ATTENTION_ROW.get(name, (4 * u, 4 * u))
    if angle_dtype is None:
        angle_name = name if name in ("float64", "float32") else "float32"
    else:
        angle_name = dtype_name(angle_dtype)
    angle_error = 2 * UNIT_ROUNDOFF[angle_name] * float(max_position)  # |fl(fl(theta) p) - theta p| <= 2 u p
    atol += angle_error if op == "rope" else 4 * angle_error
    return float(rtol), float(atol)


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


def assert_close(actual, expected, *, dtype=None, max_position=0, op: str = "rope", rtol=None, atol=None, angle_dtype=None, err_msg: str = "") -> None:
    """Assert ``|actual - expected| <= atol + rtol |expected|`` elementwise, in float64.

    ``rtol``/``atol`` default to :func:`tolerance` of ``dtype`` (default:
    ``actual``'s dtype; pass it explicitly for integer or object inputs),
    ``max_position``, ``op`` and ``angle_dtype``.  Non-finite entries must
    match exactly.  Raises AssertionError with the largest absolute and
    relative errors, their indices and the values there.
    """
    if rtol is None or atol is None:
        table_rtol, table_atol = tolerance(
            _array_dtype(actual) if dtype is None else dtype, max_position=max_position, op=op, angle_dtype=angle_dtype
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
