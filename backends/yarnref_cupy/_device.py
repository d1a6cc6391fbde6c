"""Arrays in, arrays out: the CuPy backend's device, and turning the caller's arrays into CuPy arrays.

The rule every yarnref backend follows: nothing is moved between devices or
cast to another dtype behind the caller's back.

* A NumPy array (or a Python list, range or scalar) is copied to the
  backend's device once, with its dtype kept.
* A CuPy array on the backend's device is used as is; on another device it
  raises :class:`~yarnref.errors.DeviceMismatchError`.
* A torch CUDA tensor on the backend's device crosses by DLPack
  (``cupy.from_dlpack``, no copy; torch is never imported for this, the
  tensor is recognised by its module name); a bfloat16 tensor becomes a
  CuPy ``bfloat16`` array (CuPy 14 carries ``ml_dtypes.bfloat16``; an older
  CuPy cannot take it and the error says so).  A torch CPU tensor raises
  DeviceMismatchError (it is never moved silently).
* Results are CuPy arrays on the backend's device.

CuPy is imported lazily (by :class:`Device` and :func:`cuda_is_usable`), so
importing the backend package works without CuPy.  ``Device(None, xp=numpy)``
is the test-only shim: NumPy stands in for CuPy and "the device" is the host.
"""

from __future__ import annotations

import contextlib

import numpy as np

from yarnref.errors import DeviceMismatchError, InputError


def cuda_is_usable() -> bool:
    """True if CuPy imports, sees a CUDA device, and a tiny computation on it succeeds."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        probe = cupy.arange(4, dtype=cupy.float32) + 1  # allocation and a kernel
        return float(probe.sum()) == 10.0
    except Exception:  # no CuPy, no driver, no device, a broken install: all mean "not usable"
        return False


def _is_torch_tensor(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "__dlpack__") and hasattr(x, "device")


class Device:
    """The CUDA device a backend computes on, and the conversions onto it."""

    def __init__(self, device=None, *, xp=None):
        if xp is not None:  # test-only shim: NumPy stands in for CuPy
            self.xp, self.cupy, self.id = xp, None, None
            return
        import cupy

        self.xp = self.cupy = cupy
        count = cupy.cuda.runtime.getDeviceCount()
        if device is None:
            device = cupy.cuda.Device().id  # the current device
        if isinstance(device, bool) or not isinstance(device, (int, np.integer)) or not 0 <= device < count:
            raise InputError("device", device, f"None or a CUDA device id in [0, {count})")
        self.id = int(device)

    @property
    def is_shim(self) -> bool:
        return self.cupy is None

    def context(self):
        """A ``with`` block that makes this device current (nothing in the shim)."""
        return contextlib.nullcontext() if self.is_shim else self.cupy.cuda.Device(self.id)

    def label(self) -> str:
        return "numpy-shim" if self.is_shim else f"cuda:{self.id}"

    def asarray(self, x, name: str = "x"):
        """``x`` as an array on this device, dtype kept; see the module docstring for the rules."""
        if self.is_shim:
            if _is_torch_tensor(x):
                raise DeviceMismatchError(f"{name}: a torch tensor given to the NumPy shim of the cupy backend")
            return np.asarray(x)
        cupy = self.cupy
        if isinstance(x, cupy.ndarray):
            if x.device.id != self.id:
                raise DeviceMismatchError(
                    f"{name} is a CuPy array on cuda:{x.device.id}, but this cupy backend runs on cuda:{self.id}; "
                    f"move it yourself (with cupy.cuda.Device({self.id}): cupy.asarray(...)) or use CupyBackend(device={x.device.id})"
                )
            return x
        if _is_torch_tensor(x):
            return self._from_torch(x, name)
        if hasattr(x, "__cuda_array_interface__"):  # numba, JAX, ...: zero-copy views of device memory
            with self.context():
                a = cupy.asarray(x)
            if a.device.id != self.id:
                raise DeviceMismatchError(f"{name} lives on cuda:{a.device.id}, but this cupy backend runs on cuda:{self.id}")
            return a
        host = np.asarray(x)
        if host.dtype == object:
            raise InputError(name, type(x).__name__, "an array (NumPy, CuPy, a torch CUDA tensor) or a nested list of numbers")
        with self.context():
            return cupy.asarray(host)  # one host-to-device copy, same dtype

    def _from_torch(self, x, name: str):
        device = x.device
        if device.type != "cuda":
            raise DeviceMismatchError(
                f"{name} is a torch tensor on {device}; the cupy backend runs on cuda:{self.id} and never moves data "
                f"silently: pass {name}.to('cuda:{self.id}') or a NumPy array"
            )
        if device.index != self.id:
            raise DeviceMismatchError(
                f"{name} is a torch tensor on cuda:{device.index}, but this cupy backend runs on cuda:{self.id}; "
                f"use CupyBackend(device={device.index}) or move the tensor yourself"
            )
        if getattr(x, "requires_grad", False):
            x = x.detach()  # the same memory; the backend does not differentiate anyway
        with self.context():
            try:
                return self.cupy.from_dlpack(x)  # zero-copy, ordered on the current streams
            except Exception as exc:  # noqa: BLE001 - e.g. bfloat16 on a CuPy older than 14
                if str(x.dtype) != "torch.bfloat16":
                    raise
                raise DeviceMismatchError(
                    f"{name} is a torch.bfloat16 tensor, which this CuPy ({self.cupy.__version__}) cannot take by DLPack "
                    f"({type(exc).__name__}: {exc}); CuPy >= 14 carries bfloat16, and yarnref never casts silently: "
                    f"upgrade CuPy, pass {name}.float(), or use the torch backend"
                ) from exc

    def to_numpy(self, x) -> np.ndarray:
        """A NumPy copy of a device array."""
        if self.is_shim:
            return np.asarray(x)
        return self.cupy.asnumpy(x)

    def to_host_small(self, x, name: str) -> np.ndarray:
        """A small parameter array (lengths, budgets) on the host, for validation; device arrays are copied."""
        if not self.is_shim and (isinstance(x, self.cupy.ndarray) or _is_torch_tensor(x)):
            return self.cupy.asnumpy(self.asarray(x, name))
        return np.asarray(x)
