"""Shared test fixtures: the backend fixture over every usable backend, Hypothesis profiles, and the agreement tests' helpers.

Backend ids: ``numpy`` (the spec), ``torch-cpu``, ``torch-cuda``, ``cupy``.
GPU ids are skipped, not failed, where no CUDA device works.  Select a subset
with ``YARNREF_TEST_BACKENDS=numpy,torch-cpu``.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import yarnref

settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", parent=settings.get_profile("default"), max_examples=25, derandomize=True)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=300)
# A short pass (e.g. one backend's tests on a GPU machine with a time limit).
settings.register_profile("quick", parent=settings.get_profile("default"), max_examples=8, derandomize=True)
settings.load_profile(os.environ.get("YARNREF_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))

BACKEND_IDS = ("numpy", "torch-cpu", "torch-cuda", "cupy")


def _import_triton_for_the_interpreter() -> None:
    """Without CUDA, import Triton once with ``TRITON_INTERPRET=1`` so that its CPU interpreter can run later.

    Triton decides at its first import whether ``@triton.jit`` functions can be
    interpreted; the Triton kernel tests (tests/test_triton_sparse.py) switch
    the interpreter on only while they run.  Doing the import here, before any
    test module imports Triton, lets those tests run in a whole-suite run too.
    The variable is restored right away, so nothing else sees it.
    """
    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    try:
        import torch

        if torch.cuda.is_available():
            return
    except ImportError:
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401

        os.environ["YARNREF_TRITON_INTERPRETER_READY"] = "1"  # read by tests/test_triton_sparse.py
    except Exception:  # a broken install: the Triton tests skip on their own
        pass
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


_import_triton_for_the_interpreter()


def _torch_cuda_ok() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


#: Whether the backends' Triton kernel files can run in this process (tests/test_triton_sparse.py,
#: tests/test_triton_merge.py): Triton installed, and CUDA, or the CPU interpreter prepared above.
HAVE_TRITON = importlib.util.find_spec("triton") is not None and sys.modules.get("triton", True) is not None
TRITON_INTERPRETED = not _torch_cuda_ok() and os.environ.get("YARNREF_TRITON_INTERPRETER_READY") == "1"
_triton_files: dict = {}


def load_triton_file(path, interpret: bool):
    """A Triton kernel file of the backends, loaded once under a private name; with ``interpret`` its kernels
    are decorated for the CPU interpreter (the caller switches ``TRITON_INTERPRET`` on while it runs them)."""
    key = (str(path), interpret)
    if key not in _triton_files:
        name = f"_yarnref_{os.path.splitext(os.path.basename(path))[0]}_{'interp' if interpret else 'compiled'}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _triton_files[key] = module
    return _triton_files[key]


def runnable_triton_file(path, monkeypatch):
    """A Triton kernel file ready to run its kernels here: compiled on CUDA, else under the CPU interpreter
    (switched on for the test through ``monkeypatch``); ``pytest.skip`` where neither can run."""
    import torch

    if not HAVE_TRITON:
        pytest.skip("triton is not installed")
    cuda = torch.cuda.is_available()
    if not cuda:
        if not TRITON_INTERPRETED:
            pytest.skip("no CUDA, and triton was imported before the interpreter could be switched on")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return load_triton_file(path, interpret=not cuda)


def make_backend(backend_id: str):
    """The backend for a test id, or ``pytest.skip`` if it cannot run here."""
    wanted = os.environ.get("YARNREF_TEST_BACKENDS")
    if wanted and backend_id not in wanted.split(","):
        pytest.skip(f"{backend_id} not in YARNREF_TEST_BACKENDS={wanted}")
    if backend_id == "numpy":
        return yarnref.backend.NumpyBackend()
    if backend_id.startswith("torch"):
        pytest.importorskip("torch")
        device = backend_id.split("-", 1)[1]
        if device == "cuda" and not _torch_cuda_ok():
            pytest.skip("no CUDA device for torch")
        if "torch" not in yarnref.available_backends():
            pytest.skip("the torch backend is not usable here")
        return yarnref.backend._backend_class("torch")(device=device)
    if backend_id == "cupy":
        if "cupy" not in yarnref.available_backends():
            pytest.skip("the cupy backend needs CuPy and a working CUDA device")
        return yarnref.backend._backend_class("cupy")()
    raise ValueError(backend_id)


@pytest.fixture(params=BACKEND_IDS)
def backend(request):
    """Each usable backend in turn (the spec included)."""
    return make_backend(request.param)


@pytest.fixture(params=[b for b in BACKEND_IDS if b != "numpy"])
def accel_backend(request):
    """Each usable non-spec backend in turn."""
    return make_backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


# ----------------------------------------------------------------------------- helpers of the agreement tests

#: Hypothesis settings for tests that take the (function-scoped) ``backend`` fixture.
backend_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


_CUPY_BFLOAT16: list[bool] = []


def cupy_takes_bfloat16() -> bool:
    """True if CuPy carries ``ml_dtypes.bfloat16`` arrays on the device (CuPy 14 does)."""
    if not _CUPY_BFLOAT16:
        try:
            import cupy
            import ml_dtypes

            a = cupy.asarray(np.ones(4, dtype=ml_dtypes.bfloat16))
            _CUPY_BFLOAT16.append(a.dtype == ml_dtypes.bfloat16 and float((a + a).astype(np.float32).sum()) == 8.0)
        except Exception:  # noqa: BLE001 - no CuPy, no ml_dtypes, an older CuPy, no device
            _CUPY_BFLOAT16.append(False)
    return _CUPY_BFLOAT16[0]


def backend_dtypes(backend) -> list[str]:
    """The floating dtypes a backend takes: NumPy has no bfloat16; CuPy has it from version 14 (``ml_dtypes``)."""
    if backend.name == "torch" or (backend.name == "cupy" and cupy_takes_bfloat16()):
        return ["float64", "float32", "float16", "bfloat16"]
    return ["float64", "float32", "float16"]


def as_inputs(backend, array: np.ndarray, dtype: str):
    """``array`` rounded to ``dtype``: (what the backend gets, the float64 copy the spec gets)."""
    if dtype == "bfloat16" and backend.name == "cupy":  # CuPy's bfloat16 is ml_dtypes'
        import ml_dtypes

        rounded = np.asarray(array, dtype=np.float32).astype(ml_dtypes.bfloat16)
        return backend.asarray(rounded), rounded.astype(np.float64)
    if dtype == "bfloat16":
        import torch

        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(torch.bfloat16)
        return t.to(backend.device), t.to(torch.float64).numpy()
    rounded = array.astype(dtype)
    return rounded, rounded.astype(np.float64)
