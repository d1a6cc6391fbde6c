"""Argument checks shared by the spec modules and the backends: the one place that bounds sizes.

Each check returns the value as a plain Python number (or a NumPy array), or
raises :class:`~yarnref.errors.InputError` naming the parameter, the value and
what is allowed.  Booleans are not integers here (``True`` is not a size), and
NumPy scalars are accepted wherever Python numbers are.

Limits (docs/limits.md explains each):

* :data:`MAX_LENGTH`: every length, size and count is at most ``2**53``, the
  largest range in which float64 holds every integer exactly (positions are
  turned into float64 angles), and far below int64's overflow.
* :data:`MAX_POSITION`: positions (integer or real) lie in ``[-2**53, 2**53]``.
* :data:`MAX_HEAD_DIM`: a head dim is at most 65536.
* :func:`check_allocation`: an array the spec is about to build may take at
  most this machine's physical memory; a request beyond it is refused before
  any allocation, with the size it would have taken.
* :func:`check_logits_fit`: attention refuses inputs whose logits could
  overflow float64 (``max|q| * max|k| * head_dim * scale > 1e300``), instead of
  returning NaN.
* :data:`MAX_SEGMENTS`: DCA walks its queries one chunk at a time in Python;
  at most ``2**22`` chunks per call.
"""

from __future__ import annotations

import collections.abc
import math
import os

import numpy as np

from .errors import DeviceMismatchError, InputError

__all__ = [
    "MAX_LENGTH",
    "MAX_POSITION",
    "MAX_HEAD_DIM",
    "MAX_SEGMENTS",
    "LOGIT_LIMIT",
    "is_int",
    "is_real",
    "finite_float",
    "check_int",
    "shown",
    "check_bool",
    "check_option",
    "check_positive_real",
    "check_scale",
    "default_scale",
    "check_head_dim",
    "check_positions",
    "check_position_range",
    "check_allocation",
    "memory_limit",
    "foreign_array_type",
    "check_host_array",
    "check_host_arrays",
    "check_array_like",
    "check_index_groups",
    "check_logits_fit",
    "start_logits_check",
    "PendingLogitsCheck",
    "check_same_dtype",
    "check_fits_dtype",
    "check_int32_indices",
    "check_lengths",
    "check_budget",
    "check_streaming_sizes",
    "check_dca_sizes",
    "check_rope_shapes",
    "INT32_MAX",
]

#: Lengths, sizes and counts: at most 2**53 (every integer up to it is exact in float64).
MAX_LENGTH = 2**53
#: Positions: |p| <= 2**53, for the same reason.
MAX_POSITION = 2**53
#: The largest head dim (as in :mod:`yarnref.config`).
MAX_HEAD_DIM = 65536
#: DCA segments per call (one Python step each).
MAX_SEGMENTS = 2**22
#: The largest value of the int32 index lists the sparse kernels take.
INT32_MAX = 2**31 - 1
#: The bound on attention logits (float64 overflows at 1.8e308; exp() of differences stays exact below it).
LOGIT_LIMIT = 1e300


def is_int(x) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_real(x) -> bool:
    """A real number (Python or NumPy int/float), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def check_int(name: str, value, minimum: int = 1, maximum: int = MAX_LENGTH) -> int:
    """``value`` as an int if it is an integer in ``[minimum, maximum]`` (default maximum 2**53)."""
    if not is_int(value) or not minimum <= value <= maximum:
        raise InputError(name, _short(value), f"an integer in [{minimum}, {_power(maximum)}]")
    return int(value)


def _power(n: int) -> str:
    """``2**53`` for powers of two above 2**20, else the number."""
    if n > 2**20 and n & (n - 1) == 0:
        return f"2**{n.bit_length() - 1}"
    return str(n)


def _short(value):
    """The value to show in an error: huge ints and long strings abbreviated, arrays by shape and dtype."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    return value


def shown(value):
    """How an error shows a value of the wrong kind: strings, numbers and None by value, arrays by shape, else the type."""
    if value is None or isinstance(value, (str, bool, int, float, np.generic, np.ndarray)):
        return _short(value)
    return type(value).__name__


def check_option(name: str, value, allowed) -> str:
    """``value`` if it is one of the strings in ``allowed`` (arrays and other unhashables are refused cleanly)."""
    if not isinstance(value, str) or value not in allowed:
        raise InputError(name, _short(value), f"one of {tuple(allowed)}")
    return value


def check_head_dim(name: str, value) -> int:
    """A head dim (or rotary dim): an integer in ``[1, 65536]``."""
    return check_int(name, value, 1, MAX_HEAD_DIM)


def check_bool(name: str, value) -> bool:
    """``value`` if it is True or False (NumPy bools included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(name, value, "True or False")
    return bool(value)


def finite_float(value) -> float | None:
    """``float(value)`` for a finite real number (not a bool), else None (ints beyond float64's range included)."""
    if not is_real(value):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def check_positive_real(name: str, value) -> float:
    """``value`` as a float if it is a finite number > 0."""
    number = finite_float(value)
    if number is None or not number > 0:
        raise InputError(name, _short(value), "a finite number > 0")
    return number


def default_scale(head_dim: int) -> float:
    """``1 / sqrt(head_dim)``, the softmax scale of scaled dot-product attention."""
    return 1.0 / math.sqrt(head_dim)


def check_scale(scale, head_dim: int) -> float:
    """The softmax scale: ``1/sqrt(head_dim)`` for None, else a finite number > 0."""
    if scale is None:
        return default_scale(head_dim)
    number = finite_float(scale)
    if number is None or not number > 0:
        raise InputError("scale", _short(scale), "None or a finite number > 0")
    return number


# ----------------------------------------------------------------------------- positions


def check_position_range(name: str, largest: float) -> None:
    """Refuse positions whose largest absolute value (computed by the caller, on any device) exceeds 2**53."""
    if not largest <= MAX_POSITION:
        raise InputError(name, f"a position of magnitude {largest:.17g}", "positions in [-2**53, 2**53] (exact in float64)")


def check_positions(name: str, positions) -> np.ndarray:
    """Positions as a float64 array: integers or reals, finite, ``|p| <= 2**53``.

    Beyond ``2**53`` float64 no longer holds every integer, so a position
    would be rounded silently (uint64 and int64 extremes included); such
    positions are refused.
    """
    if isinstance(positions, (str, bytes, collections.abc.Mapping)) or positions is None:
        raise InputError(name, _short(positions), "an integer or real array of positions")
    check_host_array(name, positions)
    try:
        p = np.asarray(positions)
    except (ValueError, TypeError, OverflowError):
        raise InputError(name, "a value NumPy cannot read as an array", "an integer or real array of positions") from None
    if p.dtype == bool or not (np.issubdtype(p.dtype, np.integer) or np.issubdtype(p.dtype, np.floating)):
        raise InputError(name, f"array of dtype {p.dtype}", "an integer or real array")
    if np.issubdtype(p.dtype, np.integer):
        if p.size and (int(p.max()) > MAX_POSITION or int(p.min()) < -MAX_POSITION):
            worst = int(p.max()) if int(p.max()) > MAX_POSITION else int(p.min())
            raise InputError(name, f"a position {worst}", "positions in [-2**53, 2**53] (exact in float64)")
        return p.astype(np.float64)
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise InputError(name, "non-finite values", "finite positions")
    if p.size and float(np.abs(p).max()) > MAX_POSITION:
        raise InputError(name, f"a position {float(np.abs(p).max()):g}", "positions in [-2**53, 2**53] (exact in float64)")
    return p


# ----------------------------------------------------------------------------- memory


def memory_limit() -> int:
    """The most bytes one array may take: this machine's physical memory (2**40 where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 2**40


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def check_allocation(name: str, value, n_elements: int, itemsize: int = 8, what: str = "the result") -> None:
    """Refuse, before allocating, an array of ``n_elements`` items that would exceed physical memory.

    ``name``/``value`` are the parameter that sets the size and its value.
    """
    nbytes = int(n_elements) * int(itemsize)
    limit = memory_limit()
    if nbytes > limit:
        raise InputError(
            name, _short(value),
            f"a size whose {what} fits in memory ({_gib(nbytes)} asked, {_gib(limit)} on this machine)",
        )


# ----------------------------------------------------------------------------- arrays


def foreign_array_type(x) -> str | None:
    """The type name of ``x`` if it is another library's array (torch, CuPy, JAX, ...), else None."""
    if isinstance(x, (np.ndarray, np.generic)):
        return None
    if hasattr(x, "__dlpack__") or hasattr(x, "__cuda_array_interface__") or hasattr(x, "__array_namespace__"):
        return f"{type(x).__module__}.{type(x).__qualname__}"
    return None


def check_host_array(name: str, x) -> None:
    """Refuse another library's array (or a list or tuple holding one): nothing is moved to NumPy silently."""
    items = x if isinstance(x, (list, tuple)) else (x,)
    for item in items:
        foreign = foreign_array_type(item)
        if foreign is not None:
            raise DeviceMismatchError(
                f"{name}: the numpy backend takes NumPy arrays, got {foreign}; select the backend of "
                f"that library (yarnref.use_backend('torch') or 'cupy'), or convert it yourself"
            )


def check_host_arrays(**arrays) -> None:
    """:func:`check_host_array` for each keyword."""
    for name, x in arrays.items():
        check_host_array(name, x)


def check_array_like(name: str, x, allowed: str = "an array") -> np.ndarray:
    """``np.asarray(x)`` for NumPy arrays, numbers and nested lists; a clear error for anything else.

    Strings, mappings, None and sets are refused (NumPy would turn them into
    0-d object or string arrays), and so are other libraries' arrays.
    """
    check_host_array(name, x)
    if x is None or isinstance(x, (str, bytes, collections.abc.Mapping, collections.abc.Set)):
        raise InputError(name, _short(x), allowed)
    try:
        a = np.asarray(x)
    except (ValueError, TypeError, OverflowError):
        raise InputError(name, "a value NumPy cannot read as an array", allowed) from None
    if a.dtype == object or a.dtype.kind in "USV":
        raise InputError(name, f"array of dtype {a.dtype}", allowed)
    return a


def check_index_groups(name: str, groups) -> list:
    """A non-empty list or tuple of ``(batch, heads_i, n_i)`` arrays (any array library) sharing one batch, as a
    list; InputError naming ``name`` or the odd item otherwise.  The dtype is checked where the arrays are read."""
    if not isinstance(groups, (list, tuple)) or not groups:
        raise InputError(name, _short(groups), "a non-empty list of (batch, heads, n) integer arrays")
    batch = None
    for i, g in enumerate(groups):
        shape = tuple(getattr(g, "shape", ()))
        if len(shape) != 3 or shape[0] < 1 or shape[1] < 1:
            raise InputError(f"{name}[{i}]", f"shape {shape}", "a (batch, heads, n) integer array, batch and heads >= 1")
        if batch is not None and shape[0] != batch:
            raise InputError(f"{name}[{i}]", f"batch {shape[0]}", f"batch {batch} like {name}[0]")
        batch = shape[0]
    return list(groups)


def check_same_dtype(**arrays) -> None:
    """Arrays that must share one dtype (q, k and v): the first one's, else InputError naming the odd one."""
    items = list(arrays.items())
    first_name, first = items[0]
    for name, a in items[1:]:
        if a.dtype != first.dtype:
            raise InputError(name, f"dtype {a.dtype}", f"the dtype of {first_name}, {first.dtype}")


def _max_abs(a) -> float:
    """``max |a|`` as a Python float, for NumPy, torch and CuPy arrays alike (NaN if a NaN is there)."""
    return _read_back(_device_max_abs([a]))[0]


def _device_max_abs(arrays):
    """``max |a|`` of each array, as one vector on the arrays' device (a NumPy vector for NumPy arrays).

    NaN where an array holds a NaN, ``inf`` where it holds an infinity, 0 for
    an empty array.  On torch the maxima are ``torch.linalg.vector_norm(a,
    inf)``, which reduces ``|a|`` without writing it; on CuPy ``abs(a).max()``.
    Nothing is read back here: :func:`_read_back` does that, once for all.
    """
    first = arrays[0]
    if isinstance(first, np.ndarray):
        with np.errstate(over="ignore", invalid="ignore"):
            return np.array([float(np.max(np.abs(a))) if a.size else 0.0 for a in arrays])
    if callable(getattr(first, "numel", None)):  # torch
        import torch

        return torch.stack([
            torch.linalg.vector_norm(a, ord=math.inf).to(torch.float64) if a.numel()
            else torch.zeros((), dtype=torch.float64, device=a.device)
            for a in arrays
        ])
    xp = _array_module(first)  # CuPy
    return xp.stack([abs(a).max().astype(np.float64) if a.size else xp.zeros((), np.float64) for a in arrays])


def _array_module(a):
    import importlib

    return importlib.import_module(type(a).__module__.split(".")[0])


def _read_back(values) -> list[float]:
    """A vector of :func:`_device_max_abs` as Python floats: one transfer (one synchronisation) for all."""
    if isinstance(values, np.ndarray):
        return [float(x) for x in values]
    if callable(getattr(values, "tolist", None)) and callable(getattr(values, "numel", None)):  # torch
        return [float(x) for x in values.tolist()]
    return [float(x) for x in values.get()]  # CuPy


class PendingLogitsCheck:
    """:func:`check_logits_fit` started on the device and finished later (see :func:`start_logits_check`).

    ``read``: a function of no arguments that returns ``max |a|`` of each named array as Python floats.
    """

    def __init__(self, names, read, head_dim: int, kv_len: int, scale: float, factor: float, limit: float):
        self._names, self._read = names, read
        self._head_dim, self._kv_len = head_dim, kv_len
        self._scale, self._factor, self._limit = float(scale), float(factor), float(limit)
        self._passed = False

    def finish(self) -> None:
        """Read the maxima back (one synchronisation) and raise InputError if the inputs do not fit; once."""
        if self._passed:
            return
        bounds = dict(zip(self._names, self._read()))
        for name, m in bounds.items():
            if not math.isfinite(m):
                raise InputError(name, "non-finite values", "finite values")
        with np.errstate(all="ignore"):
            bound = bounds["q"] * bounds["k"] * self._head_dim * self._scale * self._factor
        if not bound <= self._limit:
            raise InputError(
                "q", f"max|q| = {bounds['q']:.3g} with max|k| = {bounds['k']:.3g}, scale = {self._scale:.3g}",
                f"inputs with max|q| * max|k| * head_dim * scale * factor <= {self._limit:g} "
                f"(here {bound:.3g}; factor = {self._factor:.3g}), so the logits fit the compute precision",
            )
        if "v" in bounds and not bounds["v"] * self._kv_len <= self._limit:
            raise InputError("v", f"max|v| = {bounds['v']:.3g}", f"values with max|v| * kv_len <= {self._limit:g}")
        self._passed = True


def start_logits_check(q, k, scale: float, factor: float = 1.0, v=None, *, limit: float = LOGIT_LIMIT,
                       finite=None, max_abs=None) -> PendingLogitsCheck:
    """The reductions of :func:`check_logits_fit`, launched but not read back.

    A GPU backend calls this around its work (before it, or right after its
    first large kernel so that these launches overlap that kernel's run) and
    :meth:`PendingLogitsCheck.finish` at the end, so the one read-back does
    not stall the device between the check and the work; bad inputs still
    raise before any result is returned.  ``finite``: further arrays, by name, that
    must hold finite values (read back with the same transfer).
    ``max_abs``: a backend's own form of the reductions, a function of the
    list of arrays that launches them and returns the reader (by default
    NumPy's, torch's ``vector_norm`` or CuPy's ``abs().max()``).
    """
    arrays = {"q": q, "k": k}
    if v is not None:
        arrays["v"] = v
    arrays.update(finite or {})
    names = list(arrays)
    if max_abs is None:
        maxima = _device_max_abs(list(arrays.values()))
        read = lambda: _read_back(maxima)  # noqa: E731
    else:
        read = max_abs(list(arrays.values()))
    return PendingLogitsCheck(names, read, q.shape[-1], k.shape[-2], scale, factor, limit)


def check_logits_fit(q, k, scale: float, factor: float = 1.0, v=None, *, limit: float = LOGIT_LIMIT) -> None:
    """Refuse attention inputs whose logits (or output sums) could overflow the compute precision.

    ``|scale * factor * q.k| <= max|q| * max|k| * head_dim * scale * factor``;
    yarnref requires that bound to be at most ``limit`` (:data:`LOGIT_LIMIT`,
    1e300, for float64; a backend computing in float32 passes 1e37), so the
    softmax is computed exactly instead of turning into NaN.  ``factor`` is
    any further multiplier of the logits (an attention factor squared).  With
    ``v``, ``max|v| * kv_len`` must also stay below ``limit`` (the weighted
    sum of the values).  Non-finite values are refused too.  Works on NumPy,
    torch and CuPy arrays (one reduction each, one read back for all).
    """
    start_logits_check(q, k, scale, factor, v, limit=limit).finish()


def check_fits_dtype(name: str, result: np.ndarray, dtype) -> np.ndarray:
    """``result`` (float64) cast to ``dtype``, or InputError if a finite value overflows there (float16)."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating) or dtype == np.float64:
        return result.astype(dtype, copy=False)
    with np.errstate(over="ignore"):
        out = result.astype(dtype)
    if not np.all(np.isfinite(out)) and np.all(np.isfinite(result)):
        limit = float(np.finfo(dtype).max)
        raise InputError(name, f"values whose result reaches {_max_abs(result):.3g}",
                         f"inputs whose result fits in {dtype} (|value| <= {limit:g})")
    return out


def check_int32_indices(kv_len: int, block_size_m: int, block_size_n: int) -> None:
    """Refuse a ``kv_len`` the int32 block/column lists cannot represent (no silent wrap-around).

    The converter's positions reach ``kv_len + block_size_m + block_size_n``; all must fit int32.
    """
    if kv_len + block_size_m + block_size_n > INT32_MAX:
        raise InputError(
            "kv_len", kv_len,
            f"kv_len + block_size_m + block_size_n <= 2**31 - 1 (here block sizes {block_size_m}, {block_size_n}): "
            "the index lists are int32, as the kernels take them",
        )


# ----------------------------------------------------------------------------- checks shared by a spec module and the backends


def check_lengths(q_len, kv_len, causal: bool) -> tuple[int, int]:
    """``q_len`` and ``kv_len`` (integers >= 1); when causal the queries are the last ``q_len`` of ``kv_len`` positions."""
    q_len = check_int("q_len", q_len, 1)
    kv_len = check_int("kv_len", kv_len, 1)
    if causal and q_len > kv_len:
        raise InputError("q_len", q_len, f"at most kv_len = {kv_len} when causal (the queries are the last q_len positions)")
    return q_len, kv_len


def check_budget(name: str, value, heads: int) -> np.ndarray:
    """A sparse budget: an int or a ``(heads,)`` int array, each in ``[1, 2**53]``, as an int64 ``(heads,)`` array."""
    if is_int(value):
        return np.full(heads, check_int(name, value, 1), dtype=np.int64)
    a = np.asarray(value)
    if a.shape != (heads,) or a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise InputError(name, f"array of shape {a.shape} and dtype {a.dtype}", f"an integer, or an integer array of shape (heads,) = ({heads},)")
    if np.any(a < 1) or np.any(a > 2**53):
        raise InputError(name, a.tolist(), "entries in [1, 2**53]")
    return a.astype(np.int64)


def check_streaming_sizes(q_len, kv_len, n_init, n_local, n_last=None):
    """The A-shape / tri-shape sizes: ``(q_len, kv_len, n_init, n_local, n_last)`` (causal lengths; ``n_last`` may be None)."""
    q_len, kv_len = check_lengths(q_len, kv_len, True)
    n_init = check_int("n_init", n_init, 0)
    n_local = check_int("n_local", n_local, 1)
    if n_last is not None:
        n_last = check_int("n_last", n_last, 0)
    return q_len, kv_len, n_init, n_local, n_last


def check_dca_sizes(chunk_size, local_size) -> int:
    """Validate the DCA sizes and return the chunk length ``L = chunk_size - local_size``."""
    chunk_size = check_int("chunk_size", chunk_size, 2)
    local_size = check_int("local_size", local_size, 1)
    if local_size >= chunk_size:
        raise InputError("local_size", local_size, f"an integer < chunk_size = {chunk_size} (chunk_len = chunk_size - local_size must be >= 1)")
    return chunk_size - local_size


def check_rope_shapes(x, cos, sin) -> int:
    """``x`` ``(..., seq, head_dim)`` against cos/sin tables ``(seq, r/2)`` or ``(batch, seq, r/2)``; returns ``rotary_dim = r``.

    A table with ``seq = 1`` (``(1, r/2)`` or ``(batch, 1, r/2)``) broadcasts: every position of ``x``
    is rotated by its one row of angles (a constant shift, as the Qwen pipeline's estimation keys use).
    """
    if x.ndim < 2:
        raise InputError("x", f"shape {x.shape}", "an array of shape (batch, heads, seq, head_dim)")
    if cos.shape != sin.shape:
        raise InputError("sin", f"shape {sin.shape}", f"the shape of cos, {cos.shape}")
    seq, head_dim = x.shape[-2], x.shape[-1]
    if cos.ndim not in (2, 3) or cos.shape[-2] not in (1, seq):
        raise InputError(
            "cos",
            f"shape {cos.shape}",
            f"(seq, rotary_dim/2) or (batch, seq, rotary_dim/2) with seq = {seq} (x has shape {x.shape}), "
            "or seq = 1 (one row of angles for every position)",
        )
    if cos.ndim == 3 and (x.ndim != 4 or cos.shape[0] not in (1, x.shape[0])):
        raise InputError("cos", f"shape {cos.shape}", f"a batch dimension of 1 or {x.shape[0]} matching x {x.shape}")
    r = 2 * cos.shape[-1]
    if r > head_dim:
        raise InputError("cos", f"shape {cos.shape}", f"rotary_dim/2 <= head_dim/2 = {head_dim // 2}")
    return r
