"""Backend selection and plumbing: the registry, scoped selection, the interface, and the torch backend's array rules."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import yarnref
from yarnref.backend import ARRAY_METHODS, OPERATIONS, Backend, NumpyBackend, spec_function
from yarnref.errors import BackendError, BackendWarning, DeviceMismatchError, InputError

REPO = Path(__file__).resolve().parent.parent

@pytest.fixture
def restore_default_backend():
    yield
    yarnref.set_backend("numpy")


def _torch_backend_class():
    pytest.importorskip("torch")
    return yarnref.backend._backend_class("torch")


def _run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- selection


def test_set_backend_sets_the_process_default(restore_default_backend):
    pytest.importorskip("torch")
    assert yarnref.get_backend().name == "numpy"
    backend = yarnref.set_backend("torch", device="cpu")
    assert yarnref.get_backend() is backend and backend.describe() == "torch-cpu"
    seen = []
    thread = threading.Thread(target=lambda: seen.append(yarnref.get_backend().name))
    thread.start()
    thread.join()
    assert seen == ["torch"]  # the default is process-wide
    yarnref.set_backend("numpy")
    assert yarnref.get_backend().name == "numpy"


def test_use_backend_is_scoped_and_nests():
    pytest.importorskip("torch")
    with yarnref.use_backend("torch", device="cpu") as outer:
        assert yarnref.get_backend() is outer
        with yarnref.use_backend("numpy") as inner:
            assert yarnref.get_backend() is inner
        assert yarnref.get_backend() is outer
    assert yarnref.get_backend().name == "numpy"


def test_use_backend_restores_after_an_exception():
    pytest.importorskip("torch")
    with pytest.raises(ZeroDivisionError):
        with yarnref.use_backend("torch", device="cpu"):
            1 / 0
    assert yarnref.get_backend().name == "numpy"


def test_use_backend_is_isolated_between_threads():
    pytest.importorskip("torch")
    barrier = threading.Barrier(2, timeout=30)

    def inside_torch():
        with yarnref.use_backend("torch", device="cpu"):
            barrier.wait()  # both threads are inside their blocks now
            name = yarnref.get_backend().name
            barrier.wait()
            return name

    def plain():
        barrier.wait()
        name = yarnref.get_backend().name
        barrier.wait()
        return name

    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.submit(inside_torch), pool.submit(plain)
        assert a.result() == "torch"
        assert b.result() == "numpy"


def test_use_backend_is_isolated_between_asyncio_tasks():
    pytest.importorskip("torch")

    async def main():
        entered, checked = asyncio.Event(), asyncio.Event()

        async def in_torch():
            with yarnref.use_backend("torch", device="cpu"):
                entered.set()
                await checked.wait()  # stay inside while the other task looks
                return yarnref.get_backend().name

        async def outside():
            await entered.wait()
            name = yarnref.get_backend().name
            checked.set()
            return name

        return await asyncio.gather(in_torch(), outside())

    assert asyncio.run(main()) == ["torch", "numpy"]


def test_importing_yarnref_imports_neither_torch_nor_cupy():
    result = _run_python(
        "import sys, yarnref, yarnref.testing\n"
        "yarnref.registered_backends()\n"
        "print(sorted(m for m in ('torch', 'cupy', 'triton') if m in sys.modules))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_unknown_backend_names_the_known_ones():
    # In a subprocess with a timeout: the error message lists the usable backends, which takes the
    # registry's lock again, and a non-reentrant lock there would hang the whole test run.
    code = (
        "import yarnref\n"
        "try:\n"
        "    yarnref.set_backend('no-such-backend')\n"
        "except yarnref.BackendError as e:\n"
        "    print(e)\n"
    )
    try:
        result = _run_python(code, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("set_backend deadlocks on an unknown name (the registry lock re-entered through available_backends())")
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "no-such-backend" in message and "numpy" in message and "torch" in message and "cupy" in message


def test_a_backend_that_cannot_run_here_says_how_to_get_it():
    if "cupy" in yarnref.available_backends():
        pytest.skip("cupy works here")
    with pytest.raises(BackendError) as info:
        yarnref.set_backend("cupy")
    message = str(info.value)
    assert "cupy" in message.lower() and "pip install" in message and "numpy" in message  # the hint and what works here


def test_bad_backend_arguments():
    with pytest.raises(BackendError):
        yarnref.set_backend(42)
    with pytest.raises(BackendError, match="options"):
        yarnref.set_backend(NumpyBackend(), device="cpu")


def test_the_torch_backend_is_found_in_a_source_checkout_without_metadata():
    """No installed distribution, no entry points: the name still resolves to backends/yarnref_torch."""
    pytest.importorskip("torch")
    code = (
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"  # as if yarnref_torch were not installed at all
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'yarnref_torch':\n"
        "            raise ModuleNotFoundError('hidden', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import yarnref.backend as b\n"
        "b._entry_points = lambda: {}\n"
        "cls = b._backend_class('torch')\n"
        "print(cls.__name__, sys.modules[cls.__module__].__file__)\n"
        "import yarnref; yarnref.set_backend('torch', device='cpu'); print(yarnref.get_backend().describe())\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    name, path, described = result.stdout.split()
    assert name == "TorchBackend"
    assert Path(path).resolve() == REPO / "backends" / "yarnref_torch" / "__init__.py"
    assert described == "torch-cpu"


# ----------------------------------------------------------------------------- the interface


def _signature_of(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _same_defaults(a, b) -> bool:
    return all(x[0] == y[0] and x[1] == y[1] and (x[2] is y[2] or x[2] == y[2]) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("name", yarnref.registered_backends())
def test_every_usable_backend_implements_the_whole_interface(name):
    """Each operation of OPERATIONS, with the spec's parameter names, kinds, order and defaults."""
    if name not in yarnref.available_backends():
        pytest.skip(f"backend {name!r} is not usable here")
    cls = yarnref.backend._backend_class(name)
    assert issubclass(cls, Backend)
    for op in OPERATIONS:
        impl = getattr(cls, op, None)
        assert callable(impl), f"{name} lacks {op}"
        want, got = _signature_of(spec_function(op)), _signature_of(impl)
        assert _same_defaults(want, got), f"{name}.{op}{got} differs from the spec {want}"
    for method in (*ARRAY_METHODS, "describe", "is_available"):
        assert callable(getattr(cls, method))
    for method in ARRAY_METHODS:
        assert getattr(cls, method) is not getattr(Backend, method), f"{name} keeps the placeholder {method}"


@pytest.mark.parametrize("name", yarnref.registered_backends())
def test_every_usable_backend_concatenates_its_own_arrays(name):
    if name not in yarnref.available_backends():
        pytest.skip(f"backend {name!r} is not usable here")
    backend = yarnref.backend._backend_class(name)()
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((1, 2, n, 4)) for n in (3, 1, 5)]
    joined = backend.concatenate([backend.asarray(p) for p in parts], 2)
    assert type(joined) is type(backend.asarray(parts[0]))
    np.testing.assert_array_equal(backend.to_numpy(joined), np.concatenate(parts, axis=2))
    with pytest.raises(InputError) as error:  # no silent promotion
        backend.concatenate([backend.asarray(parts[0]), backend.asarray(parts[1].astype(np.float32))], 2)
    assert error.value.param == "arrays[1]"


def test_an_incomplete_backend_fails_at_class_creation():
    with pytest.raises(TypeError, match="does not implement the interface"):

        class Broken(Backend):  # noqa: F841 - the class statement is the test
            name = "broken"

            def apply_rope(self, x, cos, sin, mode="half"):  # wrong parameter name
                return x


def _complete_backend_namespace() -> dict:
    """The methods of a backend that satisfies the interface: the spec's operations and array methods."""
    namespace = {"name": "fake"}
    for op in OPERATIONS:
        namespace[op] = staticmethod(spec_function(op))
    namespace.update(asarray=lambda self, x: np.asarray(x), to_numpy=lambda self, x: np.asarray(x),
                     concatenate=lambda self, arrays, axis=0: np.concatenate(arrays, axis))
    return namespace


def test_a_complete_backend_is_accepted():
    assert issubclass(type("Complete", (Backend,), _complete_backend_namespace()), Backend)


def _wrong_default(q, k, v, causal=False, scale=None, return_lse=False, *, block_size=512, alibi_slopes=None):
    return q


def _wrong_kind(q, k, v, causal=True, scale=None, return_lse=False, block_size=512, alibi_slopes=None):
    return q  # block_size and alibi_slopes positional: the spec makes them keyword-only


@pytest.mark.parametrize(
    "change,message",
    [
        ({"attention": staticmethod(_wrong_default)}, "causal=False"),
        ({"attention": staticmethod(_wrong_kind)}, "keyword-only"),
        ({"concatenate": Backend.concatenate}, "concatenate"),  # the placeholder is not an implementation
    ],
    ids=["default", "kind", "array-method"],
)
def test_a_backend_with_a_wrong_default_kind_or_method_fails_at_class_creation(change, message):
    with pytest.raises(TypeError, match="does not implement the interface") as error:
        type("Wrong", (Backend,), {**_complete_backend_namespace(), **change})
    assert message in str(error.value)


def test_a_builtin_entry_point_that_does_not_import_falls_back_to_the_checkout(monkeypatch):
    """A stale yarnref.egg-info names yarnref_cupy:CupyBackend, which is not importable: the checkout's backend is used."""

    class StaleEntryPoint:
        name, value = "cupy", "yarnref_cupy:CupyBackend"

        def load(self):
            raise ModuleNotFoundError("No module named 'yarnref_cupy'", name="yarnref_cupy")

    monkeypatch.setattr(yarnref.backend, "_entry_points", lambda: {"cupy": StaleEntryPoint()})
    monkeypatch.setattr(yarnref.backend, "_class_cache", {})
    with pytest.warns(BackendWarning, match="entry point of backend 'cupy'"):
        cls = yarnref.backend._backend_class("cupy")
    assert cls.__name__ == "CupyBackend" and issubclass(cls, Backend)
    assert Path(sys.modules[cls.__module__].__file__).resolve().is_relative_to(REPO / "backends" / "yarnref_cupy")


def test_a_third_party_entry_point_that_does_not_import_is_an_error(monkeypatch):
    class Broken:
        name, value = "elsewhere", "elsewhere_pkg:Backend"

        def load(self):
            raise ModuleNotFoundError("No module named 'elsewhere_pkg'", name="elsewhere_pkg")

    monkeypatch.setattr(yarnref.backend, "_entry_points", lambda: {"elsewhere": Broken()})
    monkeypatch.setattr(yarnref.backend, "_class_cache", {})
    with pytest.raises(ModuleNotFoundError):
        yarnref.backend._backend_class("elsewhere")
    assert "elsewhere" not in yarnref.available_backends()


# ----------------------------------------------------------------------------- the torch backend's array rules


def test_numpy_in_tensor_out_with_dtypes_kept():
    torch = pytest.importorskip("torch")
    backend = _torch_backend_class()(device="cpu")
    rng = np.random.default_rng(0)
    inv = yarnref.base_inv_freq(8, 10000.0)
    for np_dtype in (np.float64, np.float32, np.float16):
        x = rng.standard_normal((1, 2, 5, 12)).astype(np_dtype)
        cos, sin = backend.rope_cos_sin(inv, np.arange(5))
        y = backend.apply_rope(x, cos, sin)
        assert isinstance(y, torch.Tensor) and y.device.type == "cpu"
        assert y.dtype == torch.from_numpy(x).dtype
        out = backend.attention(x, x, x)
        assert out.dtype == y.dtype
        assert backend.to_numpy(out).dtype == np_dtype
    xb = torch.randn(1, 2, 5, 12).to(torch.bfloat16)
    assert backend.attention(xb, xb, xb).dtype == torch.bfloat16
    assert backend.apply_rope(xb, cos, sin).dtype == torch.bfloat16
    out, lse = backend.attention(xb, xb, xb, return_lse=True)
    assert lse.dtype == torch.float32  # float32 lse for non-float64 inputs


def test_cos_sin_tables_keep_the_frequencies_dtype():
    torch = pytest.importorskip("torch")
    backend = _torch_backend_class()(device="cpu")
    inv = yarnref.base_inv_freq(8, 10000.0)
    assert backend.rope_cos_sin(inv, range(3))[0].dtype == torch.float64
    assert backend.rope_cos_sin(inv.astype(np.float32), range(3), precision="float32")[0].dtype == torch.float32
    assert backend.rope_cos_sin(torch.from_numpy(inv).to(torch.bfloat16), range(3))[1].dtype == torch.bfloat16


def test_a_tensor_on_the_device_is_used_as_is():
    torch = pytest.importorskip("torch")
    backend = _torch_backend_class()(device="cpu")
    t = torch.zeros(3)
    assert backend.asarray(t) is t
    a = np.arange(4.0)
    moved = backend.asarray(a)
    assert isinstance(moved, torch.Tensor) and moved.dtype == torch.float64
    np.testing.assert_array_equal(backend.to_numpy(moved), a)


def test_a_tensor_on_another_device_is_an_error_not_a_copy():
    torch = pytest.importorskip("torch")
    backend = _torch_backend_class()(device="cpu")
    elsewhere = torch.empty((1, 2, 5, 8), device="meta")
    here = torch.zeros((1, 2, 5, 8))
    with pytest.raises(DeviceMismatchError) as info:
        backend.attention(here, elsewhere, here)
    message = str(info.value)
    assert "k " in message and "meta" in message and "cpu" in message
    with pytest.raises(DeviceMismatchError, match="x is a tensor on meta"):
        backend.apply_rope(elsewhere, np.ones((5, 4)), np.zeros((5, 4)))


def test_mixed_dtypes_are_an_error_not_a_cast():
    torch = pytest.importorskip("torch")
    backend = _torch_backend_class()(device="cpu")
    q = torch.zeros((1, 2, 5, 8), dtype=torch.float32)
    with pytest.raises(InputError, match="^v=.dtype torch.float64. is not allowed; expected the dtype of q"):
        backend.attention(q, q, q.double())
    with pytest.raises(InputError, match="x=.dtype torch.int64"):
        backend.apply_rope(torch.zeros((1, 1, 2, 4), dtype=torch.int64), np.ones((2, 2)), np.ones((2, 2)))


def test_bad_devices_are_refused():
    torch = pytest.importorskip("torch")
    cls = _torch_backend_class()
    with pytest.raises(InputError, match="device"):
        cls(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="CUDA"):
            cls(device="cuda")
    assert cls(device=None).describe() == ("torch-cuda" if torch.cuda.is_available() else "torch-cpu")


def test_ml_dtypes_bfloat16_numpy_arrays_become_bfloat16_tensors():
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    backend = _torch_backend_class()(device="cpu")
    a = np.array([1.0, 0.5, -3.25], dtype=ml_dtypes.bfloat16)
    t = backend.asarray(a)
    assert t.dtype == torch.bfloat16 and t.tolist() == [1.0, 0.5, -3.25]
    assert backend.to_numpy(t).dtype == a.dtype


@pytest.mark.gpu
def test_cuda_backend_refuses_cpu_tensors_and_moves_numpy_once():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    backend = _torch_backend_class()(device="cuda")
    q = np.random.default_rng(0).standard_normal((1, 2, 9, 16)).astype(np.float32)
    out = backend.attention(q, q, q)
    assert out.is_cuda and out.dtype == torch.float32
    with pytest.raises(DeviceMismatchError, match="cpu"):
        backend.attention(torch.from_numpy(q), out, out)


@pytest.mark.gpu
def test_cupy_arrays_cross_by_dlpack_without_a_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cupy = pytest.importorskip("cupy")
    backend = _torch_backend_class()(device="cuda")
    a = cupy.arange(6, dtype=cupy.float32)
    t = backend.asarray(a)
    assert t.data_ptr() == a.data.ptr and t.dtype == torch.float32


def test_gpu_backends_are_the_usable_ones_with_a_gpu():
    names = yarnref.gpu_backends()
    assert set(names) <= set(yarnref.available_backends()) and "numpy" not in names
    try:
        import torch
    except ImportError:
        assert "torch" not in names
    else:
        assert ("torch" in names) == ("torch" in yarnref.available_backends() and torch.cuda.is_available())
    assert ("cupy" in names) == ("cupy" in yarnref.available_backends())  # CuPy runs on a GPU or not at all
