r"""Which fused kernels the CuPy backend runs: yarnref's Triton kernels on CuPy arrays, or its NVRTC kernel.

One kernel source serves both GPU backends.  The torch backend's Triton
kernels (:mod:`yarnref_torch.rope_triton`: the RoPE rotation;
:mod:`yarnref_torch.triton_sparse`: the vertical-slash index conversion, the
sparse attention kernel over its lists and, where it has it, the dense mode
``dense_attention_triton``) are the fastest kernels yarnref has (on an H100 the
sparse kernel runs at the L2 read ceiling, docs/benchmarks.md), and they take
any strided fp16/bf16 tensor.  Writing a second, CUDA C++ copy of each for
CuPy would give two kernels that drift apart and a slower one to maintain;
so where torch and Triton import and see the GPU, the CuPy backend launches
those same kernels on its own arrays:

* zero-copy both ways through DLPack (``torch.from_dlpack(cupy_array)``,
  results back with ``cupy.from_dlpack``): no device moves, no casts;
* on CuPy's *current* stream: the launch runs inside
  ``torch.cuda.ExternalStream(cupy.cuda.get_current_stream().ptr)`` (CuPy's
  null stream is torch's default stream, the legacy null stream), so the
  kernels are ordered with the caller's CuPy work and nothing synchronises.
  Triton's CUDA driver asks torch for the device and the current stream,
  which is why this path needs torch installed.  When torch's current stream
  already is CuPy's (the default case: both on the legacy null stream)
  nothing is switched, and torch's handle on any other CuPy stream is made
  once per stream, so the switch costs a few microseconds, not tens;
* where yarnref launches a Triton kernel itself (the RoPE rotation), the
  CuPy arrays go to it as :class:`DevicePointer` objects, without DLPack.

Without torch or Triton (a CuPy-only install), the fused path is the NVRTC
kernel of :mod:`.flash` (``flash_attention.cu``: dense and vertical-slash
lists, float16 and bfloat16, head dims 32, 64, 80, 96, 128, 256), and the
rest runs as CuPy array code.

The switch
----------
``YARNREF_CUPY_KERNELS`` (read at every call) or, for code, :func:`use_kernels`:

* ``auto`` (default): Triton where it can run, else NVRTC;
* ``triton``: the same (a request, not a requirement: where Triton cannot run
  the NVRTC kernel still serves);
* ``nvrtc``: never Triton; the NVRTC kernel and CuPy array code only
  (what a CuPy-only install runs; the tests force it to check that path on a
  machine that has Triton).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from yarnref.errors import InputError

__all__ = ["ENV", "MODES", "kernel_mode", "use_kernels", "triton_kernels", "on_cupy_stream", "DevicePointer", "to_torch", "to_cupy"]

#: The environment variable that chooses the kernels.
ENV = "YARNREF_CUPY_KERNELS"
#: Its values.
MODES = ("auto", "triton", "nvrtc")

# Set by use_kernels(): a ContextVar, so threads and async tasks keep their own choice (as use_backend does).
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("yarnref_cupy_kernels", default=None)
_TORCH_KERNELS: dict[str, object] = {}


def kernel_mode() -> str:
    """The kernels asked for: :func:`use_kernels`' value if one is active, else ``$YARNREF_CUPY_KERNELS`` (default ``auto``)."""
    chosen = _override.get()
    if chosen is not None:
        return chosen
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise InputError(ENV, mode, f"one of {MODES} (the environment variable choosing the CuPy backend's kernels)")
    return mode


@contextlib.contextmanager
def use_kernels(mode: str):
    """``with use_kernels("nvrtc"):`` runs the CuPy backend with those kernels inside the block (see the module docstring)."""
    if mode not in MODES:
        raise InputError("mode", mode, f"one of {MODES}")
    token = _override.set(mode)
    try:
        yield
    finally:
        _override.reset(token)


def _import_sibling(package: str, module: str):
    """``package.module`` from the installed packages, else from the folder beside this package (a source checkout)."""
    try:
        return importlib.import_module(f"{package}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != package:
            raise
    folder = Path(__file__).resolve().parent.parent / package
    spec = importlib.util.spec_from_file_location(package, folder / "__init__.py", submodule_search_locations=[str(folder)])
    if spec is None:
        raise ModuleNotFoundError(package)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[package] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(package, None)
        raise
    return importlib.import_module(f"{package}.{module}")


def _load_torch_kernels():
    """``{"torch", "rope", "sparse"}`` modules, or an empty dict if torch, Triton or a CUDA device for torch is missing."""
    if "state" in _TORCH_KERNELS:
        return _TORCH_KERNELS
    _TORCH_KERNELS["state"] = "tried"
    try:
        import torch
        import triton  # noqa: F401 - only its presence is tested here

        if not torch.cuda.is_available():
            return _TORCH_KERNELS
        rope = _import_sibling("yarnref_torch", "rope_triton")
        sparse = _import_sibling("yarnref_torch", "triton_sparse")
    except Exception:  # noqa: BLE001 - no torch, no Triton, a broken install: the NVRTC path serves
        return _TORCH_KERNELS
    _TORCH_KERNELS.update(torch=torch, rope=rope, sparse=sparse, state="ok")
    return _TORCH_KERNELS


def triton_kernels(xp):
    """The Triton modules (a dict with ``torch``, ``rope``, ``sparse``) if this call may use them, else None.

    None in the NumPy shim, with ``YARNREF_CUPY_KERNELS=nvrtc``, and where
    torch/Triton/torch's CUDA are missing.
    """
    if getattr(xp, "__name__", "") != "cupy" or kernel_mode() == "nvrtc":
        return None
    kernels = _load_torch_kernels()
    return kernels if kernels.get("state") == "ok" else None


def has_dense_triton(kernels) -> bool:
    """True if the sparse Triton module has its dense mode (``dense_attention_triton``)."""
    return kernels is not None and hasattr(kernels["sparse"], "dense_attention_triton")


#: torch stream objects for CuPy streams, by (device, stream pointer): made once, not per call.
_STREAMS: dict[tuple[int, int], object] = {}


def _torch_stream(torch, device: int, ptr: int):
    """torch's handle on the CUDA stream ``ptr`` of ``device`` (cached; an ExternalStream owns nothing)."""
    key = (device, ptr)
    stream = _STREAMS.get(key)
    if stream is None:
        if len(_STREAMS) >= 64:  # streams come and go; keep the table small
            _STREAMS.clear()
        # ptr 0: CuPy's null stream, the legacy default stream, which is torch's default stream too.
        stream = torch.cuda.default_stream(device) if ptr == 0 else torch.cuda.ExternalStream(ptr, device=device)
        _STREAMS[key] = stream
    return stream


@contextlib.contextmanager
def on_cupy_stream(cupy, torch):
    """Make torch's current stream (and device) CuPy's current ones inside the block.

    The common case costs two lookups: when torch's current device and stream
    already are CuPy's (CuPy's null stream and torch's default stream, the
    legacy default stream, on the same device), nothing is switched.
    Otherwise the device is switched and torch's handle on CuPy's stream
    (made once per stream) is made current for the block.
    """
    device = cupy.cuda.runtime.getDevice()
    ptr = cupy.cuda.get_current_stream().ptr
    if torch.cuda.current_device() == device and torch.cuda.current_stream(device).cuda_stream == ptr:
        yield
        return
    with torch.cuda.device(device), torch.cuda.stream(_torch_stream(torch, device, ptr)):
        yield


class DevicePointer:
    """A CuPy array as a Triton kernel argument: its device address (``data_ptr()``) and ``dtype``.

    Triton takes any object with ``data_ptr()`` and a ``dtype`` whose name it
    knows (``float16``, ``bfloat16``, ``float32``, ...: NumPy's names are
    Triton's), so a CuPy array reaches a Triton kernel without a DLPack
    round trip.  The array must outlive the launch's enqueueing (the caller
    holds it).
    """

    __slots__ = ("_ptr", "dtype")

    def __init__(self, a):
        self._ptr = a.data.ptr
        self.dtype = a.dtype

    def data_ptr(self) -> int:
        return self._ptr


def to_torch(torch, a):
    """A CuPy array as a torch tensor on the same memory (DLPack; call inside :func:`on_cupy_stream`)."""
    return torch.from_dlpack(a)


def to_cupy(cupy, t):
    """A torch CUDA tensor as a CuPy array on the same memory (DLPack; call inside :func:`on_cupy_stream`)."""
    return cupy.from_dlpack(t)
