"""The CuPy backend's fused kernels against the float64 spec, on both paths, in float16 and bfloat16.

Two paths serve the CuPy backend (``backends/yarnref_cupy/kernels.py``):
yarnref's Triton kernels launched on CuPy arrays (where torch and Triton are
installed) and the NVRTC kernel ``flash_attention.cu`` (a CuPy-only install;
``YARNREF_CUPY_KERNELS=nvrtc`` or ``use_kernels("nvrtc")`` forces it).  The
tests here run each path on purpose, for every head dim the NVRTC kernel is
compiled for, and check that results computed on a non-default CuPy stream
are right (the Triton launches must land on CuPy's current stream).

The switch tests run everywhere; everything else skips without CuPy and a
CUDA device.  bfloat16 inputs are CuPy's own ``bfloat16`` arrays
(``ml_dtypes.bfloat16``), compared after rounding the spec's inputs the same way.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import yarnref
from yarnref.errors import InputError
from yarnref.testing import assert_close

from conftest import cupy_takes_bfloat16

DTYPES = ("float16", "bfloat16")


def _package():
    return importlib.import_module(yarnref.backend._backend_class("cupy").__module__.rsplit(".", 1)[0])


@pytest.fixture(scope="module")
def kernels():
    return importlib.import_module(_package().__name__ + ".kernels")


@pytest.fixture(scope="module")
def cb():
    cls = yarnref.backend._backend_class("cupy")
    if not cls.is_available():
        pytest.skip("needs CuPy and a working CUDA device")
    return cls()


@pytest.fixture(scope="module")
def flash(cb):
    return importlib.import_module(_package().__name__ + ".flash")


def _inputs(cb, rng, shape, dtype: str, scale: float = 1.0):
    """(the device array in ``dtype``, its float64 NumPy copy)."""
    x = rng.standard_normal(shape) * scale
    if dtype == "bfloat16":
        if not cupy_takes_bfloat16():
            pytest.skip("this CuPy has no bfloat16 (CuPy >= 14 with ml_dtypes)")
        import ml_dtypes

        rounded = x.astype(np.float32).astype(ml_dtypes.bfloat16)
    else:
        rounded = x.astype(dtype)
    return cb.asarray(rounded), rounded.astype(np.float64)


def _need_triton(kernels, cb):
    found = kernels.triton_kernels(cb.xp)
    if found is None:
        pytest.skip("the Triton path needs torch (with CUDA) and Triton beside CuPy")
    return found


# ----------------------------------------------------------------------------- the switch (runs everywhere)


def test_the_kernel_switch_reads_the_environment_and_use_kernels(kernels, monkeypatch):
    monkeypatch.delenv(kernels.ENV, raising=False)
    assert kernels.kernel_mode() == "auto"
    monkeypatch.setenv(kernels.ENV, " NVRTC ")
    assert kernels.kernel_mode() == "nvrtc"
    with kernels.use_kernels("triton"):
        assert kernels.kernel_mode() == "triton"
        with kernels.use_kernels("nvrtc"):
            assert kernels.kernel_mode() == "nvrtc"
        assert kernels.kernel_mode() == "triton"
    assert kernels.kernel_mode() == "nvrtc"
    monkeypatch.setenv(kernels.ENV, "cutlass")
    with pytest.raises(InputError, match=kernels.ENV):
        kernels.kernel_mode()
    with pytest.raises(InputError, match="mode"):
        with kernels.use_kernels("fast"):
            pass


def test_nvrtc_mode_and_numpy_never_take_the_triton_path(kernels, monkeypatch):
    monkeypatch.setenv(kernels.ENV, "nvrtc")
    assert kernels.triton_kernels(_cupy_module_or_none()) is None
    monkeypatch.setenv(kernels.ENV, "auto")
    assert kernels.triton_kernels(np) is None  # the NumPy shim


def _cupy_module_or_none():
    try:
        import cupy

        return cupy
    except ImportError:
        return np


def test_device_pointers_are_typed_triton_arguments(kernels, monkeypatch):
    """A CuPy array wrapped as DevicePointer is a pointer argument of its dtype to Triton (no torch tensor needed)."""
    pytest.importorskip("triton")
    if os.environ.get("YARNREF_TRITON_INTERPRETER_READY") == "1":  # Triton was imported for its CPU interpreter
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    from triton.runtime.jit import mangle_type

    class FakeArray:  # the two attributes DevicePointer reads from a CuPy array
        def __init__(self, dtype):
            self.data = type("Memory", (), {"ptr": 1 << 20})()
            self.dtype = np.dtype(dtype)

    for dtype, want in ((np.float16, "*fp16"), (np.float32, "*fp32"), (np.int32, "*i32")):
        pointer = kernels.DevicePointer(FakeArray(dtype))
        assert pointer.data_ptr() == 1 << 20
        assert mangle_type(pointer) == want


def _nonfinite_cases(xp, asarray, dtypes):
    """(array, expected) pairs: finite, inf, -inf and NaN at one place, in contiguous and strided arrays."""
    arrays = importlib.import_module(_package().__name__ + "._arrays")
    for dtype in dtypes:
        for bad in (None, np.inf, -np.inf, np.nan):
            x = np.linspace(-60000, 60000, 2 * 3 * 40).reshape(2, 3, 40)  # large but finite in float16
            if bad is not None:
                x[1, 2, 34] = bad
            a = asarray(x, dtype)
            yield arrays, a, bad is not None
            yield arrays, a[:, ::2, 1::3], bad is not None  # a strided view that holds [1, 2, 34]
            yield arrays, a[:, :2], False  # a view without it


def _nonfinite(arrays, xp, a) -> bool:
    """The backend's finite check of one array: its largest magnitude's bit pattern, read back."""
    bits = arrays.magnitude_bits(xp, [a])
    return arrays.is_nonfinite_magnitude(int((bits if xp is np else bits.get())[0]), a.dtype)


def test_nonfinite_check_reads_the_exponent_bits_numpy():
    for arrays, a, want in _nonfinite_cases(np, lambda x, dt: x.astype(dt), ("float16", "float32", "float64")):
        assert _nonfinite(arrays, np, a) == want


def test_nonfinite_check_reads_the_exponent_bits_on_the_device(cb):
    def asarray(x, dtype):
        return cb.asarray(x.astype(_np_dtype(dtype)))

    for arrays, a, want in _nonfinite_cases(cb.xp, asarray, DTYPES + ("float32", "float64")):
        assert _nonfinite(arrays, cb.xp, a) == want, (a.dtype, want)


def _max_abs_cases(dtypes):
    """(x float64, dtype name, max|x| in that dtype or NaN): signs, subnormals, inf, NaN, zeros, empty."""
    for dtype in dtypes:
        tiny = 2.0 ** -20 if dtype in ("float16", "bfloat16") else 1e-310 if dtype == "float64" else 1e-40
        for bad in (None, np.inf, -np.inf, np.nan):
            x = np.linspace(-3.5, 2.25, 2 * 3 * 4096).reshape(2, 3, 4096)  # 24576 = 12 rows of 2048
            x[0, 1, 7] = -1000.0  # the largest magnitude is negative
            x[1, 0, 0] = tiny
            want = 1000.0
            if bad is not None:
                x[1, 2, 34] = bad
                want = abs(bad)
            yield x, dtype, want
        yield np.zeros((3, 5)), dtype, 0.0
        yield -np.full((2, 3), tiny), dtype, tiny
        yield np.zeros((0, 4)), dtype, 0.0


def _check_max_abs(arrays, xp, asarray, dtypes):
    for x, dtype, want in _max_abs_cases(dtypes):
        views = [x, x[:, ::2]] if x.ndim == 3 else [x]  # contiguous, and strided (a different max)
        got = arrays.start_max_abs(xp, [asarray(x, dtype)[:, ::2] if i else asarray(x, dtype) for i in range(len(views))])()
        for value, view in zip(got, views):
            rounded = view.astype(_np_dtype(dtype)).astype(np.float64)  # the values as the dtype holds them
            expected = float(np.max(np.abs(rounded))) if rounded.size else 0.0
            assert (np.isnan(value) and np.isnan(expected)) or value == expected, (dtype, value, expected)
        assert (np.isnan(got[0]) and np.isnan(want)) or got[0] == float(np.asarray(want).astype(_np_dtype(dtype)))
        bits = arrays.magnitude_bits(xp, [asarray(x, dtype)])
        bits = bits if xp is np else bits.get()
        assert arrays.is_nonfinite_magnitude(int(bits[0]), _np_dtype(dtype)) == (not np.isfinite(want))


def test_max_abs_reads_the_magnitude_bits_numpy():
    """The bit-pattern max of |x| is max|x| exactly, NaN when one is there, in every float dtype."""
    arrays = importlib.import_module(_package().__name__ + "._arrays")
    _check_max_abs(arrays, np, lambda x, dt: x.astype(dt), ("float16", "float32", "float64"))


def test_max_abs_reads_the_magnitude_bits_on_the_device(cb):
    arrays = importlib.import_module(_package().__name__ + "._arrays")
    _check_max_abs(arrays, cb.xp, lambda x, dt: cb.asarray(x.astype(_np_dtype(dt))), DTYPES + ("float32", "float64"))


def _np_dtype(name: str):
    if name == "bfloat16":
        if not cupy_takes_bfloat16():
            pytest.skip("this CuPy has no bfloat16 (CuPy >= 14 with ml_dtypes)")
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


# ----------------------------------------------------------------------------- the NVRTC kernel's source (runs where a C++ compiler is)

#: CUDA's device-side names, stubbed so that a host C++ compiler can check the kernel source's syntax and templates.
_CUDA_STUBS = """
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__
#define __align__(x)
#define __shared__
struct Dim3 { int x, y, z; };
static Dim3 threadIdx, blockIdx;
inline void __syncthreads() {}
inline float __int_as_float(int) { return 0.f; }
inline float exp2f(float x) { return x; }
inline float log2f(float x) { return x; }
inline float fmaxf(float a, float b) { return a > b ? a : b; }
inline float __shfl_xor_sync(unsigned, float v, int) { return v; }
inline unsigned long __cvta_generic_to_shared(const void*) { return 0; }
template <typename T> T min(T a, T b) { return a < b ? a : b; }
template <typename T> T max(T a, T b) { return a > b ? a : b; }
"""


def test_flash_kernel_source_instantiates_every_head_dim_dtype_and_block(tmp_path):
    """Every instantiation flash.py may ask NVRTC for (head dims x float16/bfloat16 x 4/8 warps) type-checks as C++.

    The inline PTX is not checked here (a host compiler cannot); the GPU tests run it.
    """
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler to check the kernel source")
    flash = importlib.import_module(_package().__name__ + ".flash")
    source = Path(flash.__file__).with_name("flash_attention.cu")
    params = "const u16*, const u16*, const u16*, u16*, float*, " + "long long, " * 9 + (
        "int, int, int, int, float, int, int, const int*, const int*, int, const int*, const int*, int"
    )
    lines = [_CUDA_STUBS, f'#include "{source}"']
    for d in flash.HEAD_DIMS:
        for bf16 in ("false", "true"):
            for warps in (4, flash.DENSE_WARPS):
                lines.append(f"template void yarnref_flash_fwd<{d}, {bf16}, {warps}>({params});")
    harness = tmp_path / "flash_check.cpp"
    harness.write_text("\n".join(lines) + "\n")
    result = subprocess.run([compiler, "-std=c++14", "-fsyntax-only", str(harness)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_estimation_kernel_source_instantiates_float_and_double(tmp_path):
    """The fused vertical-slash estimation kernels type-check as C++ for both compute dtypes."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler to check the kernel source")
    sparse = importlib.import_module(_package().__name__ + ".sparse")
    source = Path(sparse.__file__).with_name("vertical_slash_estimate.cu")
    lines = ["#include <cmath>", "using std::exp;", _CUDA_STUBS, "inline float expf(float x) { return std::exp(x); }",
             f'#include "{source}"']
    for t in ("float", "double"):
        lines.append(f"template void yarnref_vs_row_stats<{t}>(const {t}*, {t}*, {t}*, long long, int, {t});")
        lines.append(
            f"template void yarnref_vs_scores<{t}>(const {t}*, const {t}*, const {t}*, {t}*, {t}*, long long, long long, int, {t});"
        )
    harness = tmp_path / "estimate_check.cpp"
    harness.write_text("\n".join(lines) + "\n")
    result = subprocess.run([compiler, "-std=c++14", "-fsyntax-only", str(harness)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m, kv_len", [(1, 1), (7, 300), (64, 5000)])
def test_estimation_kernels_equal_the_array_form(cb, dtype, m, kv_len):
    """The fused column/diagonal sums equal the array form (the same equations on NumPy) to rounding."""
    sparse = importlib.import_module(_package().__name__ + ".sparse")
    rng = np.random.default_rng(m * 1000 + kv_len)
    logits = rng.standard_normal((2, 3, m, kv_len)) * 4.0
    logits[0, 1, :, : kv_len // 2] += 30.0  # a peaked head: large logits, many exp() underflows
    got_v, got_s = sparse.estimation_scores(cb.xp, cb.asarray(logits.astype(dtype)), 0.3)
    want_v, want_s = sparse.estimation_scores(np, logits, 0.3)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(cb.to_numpy(got_v), want_v, rtol=rtol, atol=rtol * m)
    np.testing.assert_allclose(cb.to_numpy(got_s), want_s, rtol=rtol, atol=rtol * m)
    # Every row is a probability distribution: the column sums add up to m.
    np.testing.assert_allclose(cb.to_numpy(got_v).sum(axis=-1), m, rtol=10 * rtol)


def test_packed_sort_key_orders_best_first_with_ties_to_the_lower_index():
    """float32 scores sorted through the packed uint64 key: the spec's stable order (descending, lower index on ties)."""
    sparse = importlib.import_module(_package().__name__ + ".sparse")
    rng = np.random.default_rng(5)
    score = rng.integers(0, 6, size=(3, 4, 500)).astype(np.float32) / np.float32(7)  # many ties
    score[..., 3] = np.inf
    score[0, 0, :] = 0.0
    got = sparse._best_first(np, score)
    want = np.argsort(-score, axis=-1, kind="stable")
    np.testing.assert_array_equal(got, want)
    # The top-k lists: the spec's rule (the counts[h] best, ties to the lower index), sorted, -1-padded.
    counts = np.array([0, 3, 77, 500])
    for descending in (False, True):
        top = sparse._top_indices(np, score, counts, descending)
        assert top.shape == (3, 4, 500)
        for b in range(3):
            for h in range(4):
                chosen = np.sort(want[b, h, : counts[h]])
                chosen = chosen[::-1] if descending else chosen
                np.testing.assert_array_equal(top[b, h, : counts[h]], chosen)
                assert (top[b, h, counts[h] :] == -1).all()


# ----------------------------------------------------------------------------- the NVRTC kernel, forced


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [32, 64, 80, 96, 128, 256])
def test_nvrtc_dense_attention_every_head_dim(cb, flash, kernels, dtype, head_dim):
    assert head_dim in flash.HEAD_DIMS
    rng = np.random.default_rng(head_dim)
    q, q64 = _inputs(cb, rng, (1, 4, 150, head_dim), dtype)  # 150: not a multiple of the 64-row blocks
    k, k64 = _inputs(cb, rng, (1, 2, 230, head_dim), dtype)  # GQA 2, decode-like: queries are the last rows
    v, v64 = _inputs(cb, rng, (1, 2, 230, head_dim), dtype)
    assert flash.fusable(cb.xp, q, k, v)
    with kernels.use_kernels("nvrtc"):
        out, lse = cb.attention(q, k, v, causal=True, return_lse=True)
        out_nc = cb.attention(q, k, v, causal=False)
    assert out.dtype.name == dtype and lse.dtype == np.float32
    want, want_lse = yarnref.attention(q64, k64, v64, causal=True, return_lse=True)
    assert_close(out, want, dtype=dtype, op="attention")
    assert_close(lse, want_lse, dtype=dtype, op="attention")
    assert_close(out_nc, yarnref.attention(q64, k64, v64, causal=False), dtype=dtype, op="attention")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [80, 128])
def test_nvrtc_vertical_slash_lists(cb, flash, kernels, dtype, head_dim):
    rng = np.random.default_rng(3 + head_dim)
    n, heads = 333, 4
    q, q64 = _inputs(cb, rng, (1, heads, n, head_dim), dtype)
    k, k64 = _inputs(cb, rng, (1, 2, n, head_dim), dtype)
    v, v64 = _inputs(cb, rng, (1, 2, n, head_dim), dtype)
    vertical = np.stack([np.sort(rng.choice(n, 20, replace=False)) for _ in range(heads)])[None]
    slash = np.stack([rng.choice(n, 12, replace=False) for _ in range(heads)])[None]
    assert flash.fusable(cb.xp, q, k, v, lists=True)
    with kernels.use_kernels("nvrtc"):
        out, lse = cb.vertical_slash_attention(q, k, v, vertical, slash, "kernel", None, True)
    want, want_lse = yarnref.vertical_slash_attention(q64, k64, v64, vertical, slash, "kernel", None, True)
    assert out.dtype.name == dtype
    assert_close(out, want, dtype=dtype, op="sparse")
    assert_close(lse, want_lse, dtype=dtype, op="sparse")


# ----------------------------------------------------------------------------- both paths


@pytest.mark.parametrize("mode", ["nvrtc", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_each_path_agrees_with_the_spec(cb, kernels, mode, dtype):
    """RoPE, dense attention, DCA and kernel-mode vertical-slash on the path asked for."""
    if mode == "triton":
        _need_triton(kernels, cb)
    rng = np.random.default_rng(17)
    n, d = 300, 128
    q, q64 = _inputs(cb, rng, (1, 8, n, d), dtype)
    k, k64 = _inputs(cb, rng, (1, 2, n, d), dtype)
    v, v64 = _inputs(cb, rng, (1, 2, n, d), dtype)
    inv_freq = 10000.0 ** (-np.arange(0, d, 2) / d)
    cos, sin = yarnref.rope_cos_sin(inv_freq, np.arange(n))
    vertical, slash = cb.vertical_slash_indices(q, k, 40, 60)
    vertical_h, slash_h = cb.to_numpy(vertical), cb.to_numpy(slash)
    with kernels.use_kernels(mode):
        rotated = cb.apply_rope(q, cos, sin, "half")
        out, lse = cb.attention(q, k, v, causal=True, return_lse=True)
        dca = cb.dca_attention(q, k, v, inv_freq, 128, 32)
        vs, vs_lse = cb.vertical_slash_attention(q, k, v, vertical, slash, "kernel", None, True)
    assert rotated.dtype.name == dtype and out.dtype.name == dtype and dca.dtype.name == dtype and vs.dtype.name == dtype
    assert_close(rotated, yarnref.apply_rope(q64, cos, sin, "half"), dtype=dtype, op="rope")
    want, want_lse = yarnref.attention(q64, k64, v64, causal=True, return_lse=True)
    assert_close(out, want, dtype=dtype, op="attention")
    assert_close(lse, want_lse, dtype=dtype, op="attention")
    # The rotated q and k are rounded to the input dtype before attention (as vLLM rotates in the model dtype).
    tol = {"float16": 4e-3, "bfloat16": 3.2e-2}[dtype]  # twice the table's bound, as test_cupy_flash for float16
    assert_close(dca, yarnref.dca_attention(q64, k64, v64, inv_freq, 128, 32), dtype=dtype, op="dca", rtol=tol, atol=tol)
    want_vs, want_vs_lse = yarnref.vertical_slash_attention(q64, k64, v64, vertical_h, slash_h, "kernel", None, True)
    assert_close(vs, want_vs, dtype=dtype, op="sparse")
    assert_close(vs_lse, want_vs_lse, dtype=dtype, op="sparse")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pairing", ["half", "interleaved", "interleaved_in_half_out"])
def test_direct_triton_rope_equals_the_dlpack_route(cb, kernels, dtype, pairing):
    """The RoPE kernel launched on CuPy arrays directly writes the same bits as through torch tensors (strided x, batched tables)."""
    triton = _need_triton(kernels, cb)
    rope = importlib.import_module(_package().__name__ + ".rope")
    rng = np.random.default_rng(3)
    x, _ = _inputs(cb, rng, (2, 6, 77, 2 * 96), dtype)
    x = x[:, 1:5, :, ::2]  # (2, 4, 77, 96): strided heads and features
    cos, sin = yarnref.rope_cos_sin(10000.0 ** (-np.arange(0, 80, 2) / 80), np.arange(2 * 77).reshape(2, 77))  # (2, 77, 40)
    cos, sin = cb.asarray(cos), cb.asarray(sin)
    got = rope._rotate_direct(cb.xp, triton, x, cos, sin, pairing)
    assert got is not None, "Triton refused the CuPy arrays"
    torch = triton["torch"]
    with kernels.on_cupy_stream(cb.xp, torch):
        want = kernels.to_cupy(cb.xp, triton["rope"].rotate_triton(*(kernels.to_torch(torch, a) for a in (x, cos, sin)), pairing))
    np.testing.assert_array_equal(cb.to_numpy(got.view(cb.xp.uint16)), cb.to_numpy(want.view(cb.xp.uint16)))


@pytest.mark.parametrize("dtype", ("float16", "bfloat16", "float32"))
@pytest.mark.parametrize("n_parts", [2, 3])
def test_fused_dca_merge_equals_the_general_merge(cb, dtype, n_parts):
    """The one-pass LSE merge writes into strided slices what merge_attention computes (empty parts included)."""
    dca = importlib.import_module(_package().__name__ + ".dca")
    attention = importlib.import_module(_package().__name__ + ".attention")
    xp = cb.xp
    rng = np.random.default_rng(n_parts)
    shape = (2, 3, 50, 64)
    outputs = [_inputs(cb, rng, shape, dtype)[0] for _ in range(n_parts)]
    lses = [cb.asarray((rng.standard_normal(shape[:3]) * 3).astype(np.float32)) for _ in range(n_parts)]
    lses[0][:, :, :5] = -np.inf  # rows where one part is empty
    for l in lses:
        l[:, :, 5:8] = -np.inf  # rows where every part is empty: output 0, lse -inf
    out = xp.full((2, 3, 90, 64), 7, dtype=outputs[0].dtype)
    lse = xp.full((2, 3, 90), 7, dtype=np.float32)
    dca.merge_into(xp, outputs, lses, out[:, :, 20:70], lse[:, :, 20:70])
    assert dca._MERGE_OK.get((outputs[0].dtype.name, out.dtype.name)) is True, "the fused merge did not compile for " + dtype
    want_o, want_l = attention.merge_attention(xp, outputs, lses)
    got_o, got_l = cb.to_numpy(out.astype(np.float32)), cb.to_numpy(lse)
    np.testing.assert_allclose(got_o[:, :, 20:70], cb.to_numpy(want_o.astype(np.float32)), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(got_l[:, :, 20:70], cb.to_numpy(want_l), rtol=1e-6, atol=1e-6)
    assert (got_o[:, :, 25:28] == 0).all() and np.isneginf(got_l[:, :, 25:28]).all()
    assert (got_o[:, :, :20] == 7).all() and (got_l[:, :, 70:] == 7).all()  # nothing outside the slices


@pytest.mark.parametrize("mode", ["nvrtc", "triton"])
def test_results_on_a_non_default_stream_are_right(cb, kernels, mode):
    """Inputs written on a fresh CuPy stream and used there at once: the kernels must run on that stream."""
    if mode == "triton":
        _need_triton(kernels, cb)
    cupy = cb.xp
    rng = np.random.default_rng(23)
    n, d = 2048, 128
    q0, q64 = _inputs(cb, rng, (1, 8, n, d), "float16")
    k0, k64 = _inputs(cb, rng, (1, 2, n, d), "float16")
    v0, v64 = _inputs(cb, rng, (1, 2, n, d), "float16")
    inv_freq = 10000.0 ** (-np.arange(0, d, 2) / d)
    cos, sin = yarnref.rope_cos_sin(inv_freq, np.arange(n))
    vertical = np.broadcast_to(np.arange(0, n, 37)[None, None], (1, 8, len(range(0, n, 37)))).copy()
    slash = np.broadcast_to(np.arange(0, 300, 3)[None, None], (1, 8, 100)).copy()
    stream = cupy.cuda.Stream(non_blocking=True)
    cupy.cuda.Device().synchronize()
    with kernels.use_kernels(mode), stream:
        # Fresh buffers filled by a (slow) chain of kernels on this stream, then consumed at once.
        q, k, v = cupy.zeros_like(q0), cupy.zeros_like(k0), cupy.zeros_like(v0)
        for _ in range(20):
            q += q0 * np.float16(0.05)
            k += k0 * np.float16(0.05)
            v += v0 * np.float16(0.05)
        out = cb.attention(q, k, v, causal=True)
        rotated = cb.apply_rope(q, cos, sin)
        vs = cb.vertical_slash_attention(q, k, v, vertical, slash, "kernel")
        results = [x.copy() for x in (q, k, v, out, rotated, vs)]
    stream.synchronize()
    q, k, v, out, rotated, vs = results
    q64, k64, v64 = (cb.to_numpy(x).astype(np.float64) for x in (q, k, v))  # what the kernels should have read
    assert_close(out, yarnref.attention(q64, k64, v64, causal=True), dtype="float16", op="attention")
    assert_close(rotated, yarnref.apply_rope(q64, cos, sin), dtype="float16", op="rope")
    assert_close(vs, yarnref.vertical_slash_attention(q64, k64, v64, vertical, slash, "kernel"), dtype="float16", op="sparse")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pi_factor, factor", [(1.0, 1.0), (2.5, 1.1)])
def test_the_fused_dca_table_equals_the_array_form_bit_for_bit(cb, dtype, pi_factor, factor):
    """DCA's one-kernel cos/sin table computes the float64 operations of ``cos_sin`` in the same order."""
    cupy = cb.xp
    dca = importlib.import_module(_package().__name__ + ".dca")
    rope = importlib.import_module(_package().__name__ + ".rope")
    inv_freq = cupy.asarray(1.0 / (1e6 ** (np.arange(0, 128, 2, dtype=np.float64) / 128)))
    n = 3001
    cos, sin = dca.position_table(cupy, inv_freq, n, pi_factor, factor, np.dtype(dtype))
    positions = cupy.arange(n, dtype=np.float64) / pi_factor
    want_cos, want_sin = rope.cos_sin(cupy, inv_freq, positions, factor, "float64", "float64", np.float64)
    assert cos.dtype == np.dtype(dtype) and cos.shape == (n, 64)
    np.testing.assert_array_equal(cupy.asnumpy(cos), cupy.asnumpy(want_cos.astype(dtype)))
    np.testing.assert_array_equal(cupy.asnumpy(sin), cupy.asnumpy(want_sin.astype(dtype)))
