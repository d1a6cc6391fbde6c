"""Backends: the interface, the registry, and the selection of the current one.

yarnref's NumPy code is the specification.  A *backend* is an object that
implements the same heavy operations (cos/sin tables, the rotation,
attention, DCA, vertical-slash estimation, index conversion, sparse attention,
the split of a segment's index sets between its DCA parts)
for another array library: ``torch`` (CPU and CUDA) and ``cupy`` (CUDA) ship
with yarnref in the top-level ``backends/`` folder.  Small things (frequency
vectors of r/2 numbers, config parsing) stay in the spec and are shared.

The interface
-------------
:data:`OPERATIONS` names every operation and the spec function that defines
it.  A backend subclasses :class:`Backend` and defines a method of that name
with the same parameters as the spec function; :class:`Backend` checks this
when the subclass is created, so an incomplete backend fails at import, not
at the first call.  Arrays in = arrays out: a GPU backend moves NumPy inputs
to its device once and returns its own arrays, keeps dtypes, and raises
:class:`~yarnref.errors.DeviceMismatchError` instead of moving or casting
silently.

Finding backends
----------------
Backends register under the entry-point group ``yarnref.backends`` (name ->
``module:Class``); a third-party package adds one the same way.  The built-in
``torch`` and ``cupy`` backends are also found by name in a plain source
checkout (no installed metadata), which is how they run on a GPU machine
where nothing is installed.  Nothing is imported until a backend is selected:
``import yarnref`` imports NumPy only.

Selecting one
-------------
``set_backend(name, **options)`` sets the process-wide default;
``with use_backend(name, **options):`` overrides it in the current context
(a :class:`contextvars.ContextVar`, so threads and asyncio tasks do not see
each other's choice); ``get_backend()`` returns the one in force.
``available_backends()`` lists the usable ones (a working device, not merely
an importable module).
"""

from __future__ import annotations

import collections.abc
import contextlib
import contextvars
import functools
import importlib
import importlib.util
import inspect
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .checks import check_host_array, check_same_dtype
from .checks import foreign_array_type as _foreign_array_type  # noqa: F401  (its former home)
from .errors import BackendError, BackendWarning, UnknownBackendError

__all__ = [
    "OPERATIONS",
    "ARRAY_METHODS",
    "Backend",
    "NumpyBackend",
    "set_backend",
    "use_backend",
    "get_backend",
    "available_backends",
    "gpu_backends",
    "registered_backends",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "yarnref.backends"

#: operation name -> "module:function" of the spec function that defines it.
OPERATIONS: dict[str, str] = {
    "rope_cos_sin": "yarnref.rope:rope_cos_sin",
    "apply_rope": "yarnref.rope:apply_rope",
    "attention": "yarnref.softmax_attention:attention",
    "merge_attention": "yarnref.softmax_attention:merge_attention",
    "dca_attention": "yarnref.dca:dca_attention",
    "vertical_slash_indices": "yarnref.sparse:vertical_slash_indices",
    "convert_vertical_slash_indexes": "yarnref.sparse:convert_vertical_slash_indexes",
    "vertical_slash_mask": "yarnref.sparse:vertical_slash_mask",
    "vertical_slash_attention": "yarnref.sparse:vertical_slash_attention",
    "a_shape_attention": "yarnref.sparse:a_shape_attention",
    "tri_shape_attention": "yarnref.sparse:tri_shape_attention",
    "split_sparse_parts": "yarnref.prefill:split_sparse_parts",
}

#: Methods every backend implements besides the operations: they move and join its arrays.
ARRAY_METHODS = ("asarray", "to_numpy", "concatenate")

#: Built-in backends: name -> (module, class, folder under backends/ in a source checkout).
_BUILTIN: dict[str, tuple[str, str]] = {
    "torch": ("yarnref_torch", "TorchBackend"),
    "cupy": ("yarnref_cupy", "CupyBackend"),
}

_INSTALL_HINTS = {
    "torch": "pip install -e '.[torch]' in a yarnref checkout (or pip install torch)",
    "cupy": (
        "pip install -e '.[cupy]' (CUDA 12) or -e '.[cupy-cuda13]' in a yarnref checkout, "
        "on a machine with an NVIDIA GPU"
    ),
}


def spec_function(operation: str):
    """The spec (NumPy) function that defines ``operation``."""
    module, _, attr = OPERATIONS[operation].partition(":")
    return getattr(importlib.import_module(module), attr)


def _parameters(fn) -> list[tuple[str, Any, Any]]:
    """``(name, kind, default)`` of each parameter but ``self``."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _same_default(a, b) -> bool:
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # an array default, say: not comparable, so not the same
        return False


def _describe_parameters(params) -> str:
    return "(" + ", ".join(
        name + ("" if default is inspect.Parameter.empty else f"={default!r}") + ("" if kind is inspect.Parameter.POSITIONAL_OR_KEYWORD else f" [{kind.description}]")
        for name, kind, default in params
    ) + ")"


def _interface_mismatch(op: str, impl) -> str | None:
    """How ``impl`` differs from the spec function of ``op`` (names, order, kinds, defaults), or None."""
    want, got = _parameters(spec_function(op)), _parameters(impl)
    same = len(want) == len(got) and all(
        w[0] == g[0] and w[1] == g[1] and _same_default(w[2], g[2]) for w, g in zip(want, got)
    )
    return None if same else f"{op}{_describe_parameters(got)} (spec: {_describe_parameters(want)})"


def _host_arrays_only(spec_fn):
    """Wrap a spec function so that another library's arrays are refused, not silently converted.

    ``np.asarray`` would happily copy a torch CPU tensor to NumPy and return a
    NumPy array; arrays in = arrays out forbids that.  The spec functions
    themselves stay plain NumPy; this check lives at the backend boundary.
    An iterator (a generator of parts, for ``merge_attention``) is read into
    a list first, so its items are checked too.
    """
    signature = inspect.signature(spec_fn)

    @functools.wraps(spec_fn)
    def checked(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:  # a missing or unknown argument: the spec's own message, as a TypeError
            raise TypeError(f"{spec_fn.__name__}(): {error}") from None
        for param, value in bound.arguments.items():
            if isinstance(value, collections.abc.Iterator) and not isinstance(value, np.ndarray):
                value = bound.arguments[param] = list(value)
            check_host_array(param, value)
        return spec_fn(*bound.args, **bound.kwargs)

    return checked


class Backend:
    """Base class of every backend.

    Subclasses set :attr:`name` and define one method per entry of
    :data:`OPERATIONS`, with the spec function's parameters (names, order,
    kinds and defaults).  They also implement the array methods of
    :data:`ARRAY_METHODS` (:meth:`asarray`, :meth:`to_numpy`,
    :meth:`concatenate`), and may override :meth:`is_available` and
    :meth:`describe`.  Both are checked when the subclass is created.
    """

    #: The registry name ("numpy", "torch", "cupy", ...).
    name: str = ""

    def __init_subclass__(cls, *, is_spec: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        if is_spec:  # the NumPy backend: every operation is the spec function itself
            for op in OPERATIONS:
                setattr(cls, op, staticmethod(_host_arrays_only(spec_function(op))))
        missing, mismatched = [], []
        for op in OPERATIONS:
            impl = getattr(cls, op, None)
            if impl is None:
                missing.append(op)
                continue
            difference = _interface_mismatch(op, impl)
            if difference:
                mismatched.append(difference)
        missing += [m for m in ARRAY_METHODS if getattr(cls, m, None) is getattr(Backend, m)]  # still the placeholder
        if missing or mismatched:
            raise TypeError(
                f"backend {cls.__name__} does not implement the interface: missing {missing}, "
                f"parameters differ for {mismatched}"
            )

    @classmethod
    def is_available(cls) -> bool:
        """True if this backend can run here (its library imports and its device works)."""
        return True

    @classmethod
    def has_gpu(cls) -> bool:
        """True if this backend can run on a GPU here (False for the NumPy spec)."""
        return False

    def asarray(self, x):
        """``x`` as this backend's array, on its device, with its dtype kept."""
        raise NotImplementedError

    def to_numpy(self, x) -> np.ndarray:
        """A NumPy copy of a backend array (for tests and reports, never on hot paths)."""
        raise NotImplementedError

    def concatenate(self, arrays, axis=0):
        """This backend's arrays joined along ``axis`` (what backend-agnostic code such as the prefill uses)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short label such as ``numpy`` or ``torch-cuda``."""
        return self.name

    def __repr__(self) -> str:
        return f"<yarnref backend {self.describe()}>"


class NumpyBackend(Backend, is_spec=True):
    """The spec itself: every operation is the readable NumPy function."""

    name = "numpy"

    def asarray(self, x):
        return np.asarray(x)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def concatenate(self, arrays, axis=0):
        arrays = list(arrays)
        for i, a in enumerate(arrays):
            check_host_array(f"arrays[{i}]", a)
        arrays = [np.asarray(a) for a in arrays]
        check_same_dtype(**{f"arrays[{i}]": a for i, a in enumerate(arrays)})
        return np.concatenate(arrays, axis=axis)


# ----------------------------------------------------------------------------- registry


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def registered_backends() -> list[str]:
    """Every backend name yarnref knows (usable or not), built-in ones first."""
    names = ["numpy", *_BUILTIN]
    names += sorted(n for n in _entry_points() if n not in names)
    return names


def _import_builtin_from_checkout(module: str):
    """Import a built-in backend package from ``<checkout>/backends/<module>`` (no install needed)."""
    package_dir = Path(__file__).resolve().parent.parent / "backends" / module
    init = package_dir / "__init__.py"
    if not init.is_file():
        return None
    spec = importlib.util.spec_from_file_location(module, init, submodule_search_locations=[str(package_dir)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(module, None)
        raise
    return mod


def _load_builtin(name: str) -> type:
    """A built-in backend's class: the installed package, else the one in this source checkout."""
    module, attr = _BUILTIN[name]
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            mod = _import_builtin_from_checkout(module)
    if mod is None:
        raise BackendError(f"backend {name!r} is not installed; {_INSTALL_HINTS[name]}")
    return getattr(mod, attr)


def _load_entry_point(name: str, entry_point) -> type:
    """The class an entry point names.  A built-in name whose entry point does not import falls back to the checkout.

    A stale ``yarnref.egg-info`` in a source tree (left by an earlier
    ``pip install -e .``) declares ``torch = yarnref_torch:TorchBackend``
    although nothing installs ``yarnref_torch`` any more; the built-in
    backend in ``backends/`` is then still found, with a warning.
    """
    try:
        return entry_point.load()
    except ImportError as exc:
        if name not in _BUILTIN:
            raise
        warnings.warn(
            f"the entry point of backend {name!r} ({entry_point.value}) does not import ({exc}); "
            f"using the built-in {name!r} backend instead (stale installed metadata? reinstall yarnref or remove its .egg-info)",
            BackendWarning,
            stacklevel=2,
        )
        return _load_builtin(name)


_class_cache: dict[str, type] = {}
_class_lock = threading.RLock()  # re-entered when an error message lists the usable backends


def _backend_class(name: str) -> type:
    with _class_lock:
        if name in _class_cache:
            return _class_cache[name]
        if name == "numpy":
            cls = NumpyBackend
        else:
            eps = _entry_points()
            if name in eps:
                cls = _load_entry_point(name, eps[name])
            elif name in _BUILTIN:
                cls = _load_builtin(name)
            else:
                raise UnknownBackendError(
                    f"unknown backend {name!r}; known backends: {registered_backends()}, "
                    f"usable here: {available_backends()}"
                )
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise BackendError(f"backend {name!r} resolves to {cls!r}, which is not a yarnref.backend.Backend subclass")
        _class_cache[name] = cls
        return cls


def _usable(name: str) -> bool:
    try:
        return bool(_backend_class(name).is_available())
    except Exception:  # an optional library that is missing or broken makes the backend unusable, not yarnref
        return False


def available_backends() -> list[str]:
    """The names of the backends that can run here: importable and with a working device."""
    return [n for n in registered_backends() if _usable(n)]


def gpu_backends() -> list[str]:
    """The usable backends that can run on a GPU here: ``"torch"`` where torch sees a CUDA device, ``"cupy"``.

    A GPU cell of a lesson or an example guards itself with
    ``if "torch" in yarnref.gpu_backends():``.
    """
    names = []
    for name in available_backends():
        try:
            if _backend_class(name).has_gpu():
                names.append(name)
        except Exception:  # a broken optional library: no GPU through it
            continue
    return names


def _make_backend(backend, options: dict) -> Backend:
    if isinstance(backend, Backend):
        if options:
            raise BackendError(f"options {sorted(options)} given with a backend instance; pass a name instead")
        return backend
    if not isinstance(backend, str):
        raise UnknownBackendError(
            f"backend={backend!r} is not allowed; expected a name such as {registered_backends()} or a Backend"
        )
    cls = _backend_class(backend)
    if not cls.is_available():
        raise BackendError(_unavailable_message(backend, cls))
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        parameters = None
    if parameters is not None and not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(options) - set(parameters))
        if unknown:
            allowed = sorted(parameters) or "no options"
            raise BackendError(f"backend {backend!r} takes no option {unknown}; its options: {allowed}")
    return cls(**options)


def _unavailable_message(name: str, cls) -> str:
    """Why a registered backend cannot run: its library is missing, or its device is."""
    library = getattr(cls, "library", None) or {"torch": "torch", "cupy": "cupy"}.get(name)
    missing = library is not None and importlib.util.find_spec(library) is None
    hint = _INSTALL_HINTS.get(name, "")
    if missing:
        return (f"backend {name!r} cannot run here: its library {library!r} is not installed"
                + (f"; to install it: {hint}" if hint else "") + f". Usable here: {available_backends()}")
    return (f"backend {name!r} is installed but cannot run here (no working device?); "
            f"usable here: {available_backends()}")


_default_backend: Backend = NumpyBackend()
_current: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("yarnref_backend", default=None)


def set_backend(backend: str | Backend, **options) -> Backend:
    """Set the process-wide default backend and return it.

    ``backend`` is a name (``"numpy"``, ``"torch"``, ``"cupy"`` or one
    registered by a plugin) or a :class:`Backend` instance; ``options`` go to
    the backend's constructor, e.g. ``set_backend("torch", device="cpu")``.
    A ``use_backend`` block in force in the current context still wins.
    """
    global _default_backend
    _default_backend = _make_backend(backend, options)
    return _default_backend


@contextlib.contextmanager
def use_backend(backend: str | Backend, **options) -> Iterator[Backend]:
    """Use ``backend`` inside the ``with`` block, in this thread or task only."""
    token = _current.set(_make_backend(backend, options))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def get_backend() -> Backend:
    """The backend in force: the innermost ``use_backend``, else the ``set_backend`` default (numpy)."""
    return _current.get() or _default_backend
