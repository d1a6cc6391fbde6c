"""Arrays in, arrays out: turning the caller's arrays into tensors on the backend's device, and checking them.

The torch backend follows yarnref's rule for every backend: arrays in =
arrays out, nothing moved or cast silently.

* A NumPy array (or a Python list, range or scalar) is copied to the
  backend's device once, with its dtype kept (an ``ml_dtypes.bfloat16`` array
  becomes a ``torch.bfloat16`` tensor).
* A tensor already on the backend's device is used as is (no copy).
* A tensor on another device raises :class:`~yarnref.errors.DeviceMismatchError`
  naming the parameter and both devices.  yarnref never moves it for you:
  a hidden host/device copy of a 1M-token KV cache is exactly the kind of
  cost a user must see.
* A CuPy array crosses by DLPack (``torch.from_dlpack``, no copy), with the
  same device check.  CuPy is never imported for this: the array's type is
  recognised by its module name.

Conventions
-----------
* Floating dtypes kept: float64, float32, float16, bfloat16.
* Compute dtype: float64 inputs are computed in float64; float32, float16 and
  bfloat16 inputs in float32 (:func:`compute_dtype`), and results are returned
  in the input dtype.
"""

from __future__ import annotations

import numpy as np
import torch

from yarnref.errors import DeviceMismatchError, InputError

__all__ = [
    "FLOAT_DTYPES",
    "ArrayConverter",
    "normalize_device",
    "compute_dtype",
    "torch_dtype",
    "is_cupy_array",
    "check_float",
    "check_all_finite",
    "tensor_to_numpy",
]

#: The floating dtypes the backend accepts and keeps.
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

_PRECISION_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a yarnref precision name (``"float32"`` -> ``torch.float32``)."""
    return _PRECISION_DTYPES[precision]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in: float64 for float64 inputs, float32 for the rest."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize_device(device) -> torch.device:
    """``None`` -> ``cuda`` if available else ``cpu``; ``"cuda"`` -> ``cuda:<current>``."""
    from yarnref.errors import BackendError

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError("device", device, "None, 'cpu', 'cuda' or 'cuda:<index>'") from exc
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise InputError("device", device, "None, 'cpu', 'cuda' or 'cuda:<index>'")
    if not torch.cuda.is_available():
        raise BackendError(f"device={device!r}: torch cannot use CUDA here (torch.cuda.is_available() is False)")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if not 0 <= index < torch.cuda.device_count():
        raise InputError("device", device, f"a CUDA device index below {torch.cuda.device_count()}")
    return torch.device("cuda", index)


def is_cupy_array(x) -> bool:
    """True for a ``cupy.ndarray``, checked without importing CuPy."""
    cls = type(x)
    return cls.__module__.split(".", 1)[0] == "cupy" and cls.__name__ == "ndarray"


def _numpy_to_tensor(a: np.ndarray, param: str) -> torch.Tensor:
    if a.dtype.name == "bfloat16":  # ml_dtypes.bfloat16: same bits as torch.bfloat16
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    if a.dtype.kind not in "biuf":
        raise InputError(param, f"an array of dtype {a.dtype}", "a boolean, integer or floating-point array")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))  # same values, native byte order (torch needs it)
    if any(s < 0 for s in a.strides) or not a.flags.aligned or not a.flags.writeable:
        a = np.array(a)  # torch cannot wrap these (read-only, negative strides, unaligned): copy once
    return torch.from_numpy(a)


class ArrayConverter:
    """Turns the caller's arrays into tensors on one device (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device

    def tensor(self, x, param: str) -> torch.Tensor:
        """``x`` as a tensor on this device, dtype kept; raises DeviceMismatchError for a tensor elsewhere."""
        if isinstance(x, torch.Tensor):
            t = x
        elif is_cupy_array(x):
            t = torch.from_dlpack(x)  # zero-copy
        else:
            a = np.asarray(x)
            if a.dtype == object:
                raise InputError(param, f"{type(x).__name__} holding objects", "an array of numbers")
            return _numpy_to_tensor(a, param).to(self.device)  # the one copy of a NumPy input
        if t.device != self.device:
            origin = "a CuPy array" if is_cupy_array(x) else "a tensor"
            raise DeviceMismatchError(
                f"{param} is {origin} on {t.device}, but this torch backend runs on {self.device}; "
                f"yarnref never moves arrays between devices silently: move it yourself "
                f"(e.g. {param}.to('{self.device}')) or use a backend on {t.device}"
            )
        return t


def tensor_to_numpy(x) -> np.ndarray:
    """A NumPy copy of a tensor, dtype kept.

    bfloat16 has no NumPy dtype: the result is an ``ml_dtypes.bfloat16`` array
    when ml_dtypes is installed, else float32 (an exact widening: every
    bfloat16 value is a float32 value).
    """
    if not isinstance(x, torch.Tensor):
        if is_cupy_array(x):
            return x.get()
        return np.asarray(x)
    x = x.detach()
    if x.dtype == torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError:
            return x.to("cpu", torch.float32).numpy()
        return x.cpu().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.cpu().numpy()


def check_float(param: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` if it has one of :data:`FLOAT_DTYPES`, else InputError naming ``param``."""
    if t.dtype not in FLOAT_DTYPES:
        raise InputError(param, f"dtype {t.dtype}", "float64, float32, float16 or bfloat16")
    return t


def check_all_finite(tensors: dict[str, torch.Tensor], what: str = "finite values") -> None:
    """InputError naming the first tensor with a NaN or an infinity; one host sync for all of them.

    A sum is non-finite whenever one of its terms is (an infinity stays
    infinite or meets the opposite one and gives NaN; NaN stays NaN), so one
    float32/float64 sum per tensor screens all of them in a single read pass;
    only if a sum is non-finite (a real NaN/inf, or an overflow of the sum)
    is that tensor checked element by element.
    """
    floats = {name: t for name, t in tensors.items() if t.is_floating_point() and t.numel()}
    if not floats:
        return
    sums = torch.stack([t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32).to(torch.float64) for t in floats.values()])
    screened = torch.isfinite(sums).tolist()  # the one sync
    for (name, t), ok in zip(floats.items(), screened):
        if not ok and not bool(torch.isfinite(t).all()):
            raise InputError(name, "non-finite values", what)


