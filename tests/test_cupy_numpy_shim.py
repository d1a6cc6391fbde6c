"""The CuPy backend checked against the spec, with NumPy standing in for CuPy.

``CupyBackend(_xp=numpy)`` (test-only) runs every array code path of the
backend with ``xp = numpy``: the same lines that run with ``xp = cupy`` on a
GPU.  Each test runs in two modes: ``shim`` (everywhere) and ``cupy`` (only
where CuPy and a CUDA device work; skipped elsewhere), so on a GPU machine
the same assertions check the real backend.

What the shim cannot check (only the ``cupy`` mode does): CuPy's own
kernels and dtype rules, cuBLAS, the DLPack exchange with torch, device
checks, and the CUDA kernel of ``convert_vertical_slash_indexes`` (whose
source is, however, compiled and run on the CPU here when a C++ compiler is
available: see ``test_vs_kernel_source_on_cpu``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import yarnref
from yarnref.backend import OPERATIONS, spec_function
from yarnref.errors import DeviceMismatchError, InputError

# The spec modules by import path (the package attribute ``yarnref.attention`` is the dispatching function).
spec_attention = importlib.import_module("yarnref.softmax_attention")
spec_dca = importlib.import_module("yarnref.dca")
spec_rope = importlib.import_module("yarnref.rope")
spec_sparse = importlib.import_module("yarnref.sparse")

#: ``YARNREF_CUPY_TEST_MODES=cupy`` runs only the real-GPU mode (e.g. on the GPU machine).
MODES = tuple(os.environ.get("YARNREF_CUPY_TEST_MODES", "shim,cupy").split(","))


def _cupy_class():
    return yarnref.backend._backend_class("cupy")


@pytest.fixture(scope="module", params=MODES)
def cb(request):
    """The CuPy backend in each mode: NumPy shim, or the real one where a GPU works."""
    cls = _cupy_class()
    if request.param == "shim":
        return cls(_xp=np)
    if not cls.is_available():
        pytest.skip("the cupy mode needs CuPy and a working CUDA device")
    return cls()


def _host(cb, x):
    return np.asarray(cb.to_numpy(x), dtype=np.float64)


def _is_shim(cb) -> bool:
    return cb.xp is np


# Tolerances against the float64 spec, by the backend's compute dtype.
TOL = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=2e-4, atol=2e-5), np.float16: dict(rtol=2e-2, atol=5e-3)}


def _close(actual, expected, dtype, what=""):
    tol = TOL[np.dtype(dtype).type]
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = np.isfinite(expected)
    assert np.array_equal(np.isfinite(actual), finite), f"{what}: non-finite entries differ"
    assert np.array_equal(actual[~finite], expected[~finite]), f"{what}: infinities differ"
    np.testing.assert_allclose(actual[finite], expected[finite], err_msg=what, **tol)


# ----------------------------------------------------------------------------- the interface

def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def test_every_operation_has_the_spec_signature():
    cls = _cupy_class()
    for op in OPERATIONS:
        assert _params(getattr(cls, op)) == _params(spec_function(op)), op


def test_importing_the_package_does_not_import_cupy():
    code = (
        "import sys, yarnref; cls = yarnref.backend._backend_class('cupy'); "
        "assert 'cupy' not in sys.modules, 'import'; "
        "b = cls(_xp=__import__('numpy')); assert 'cupy' not in sys.modules, 'shim'; print(b.describe())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cupy"


def test_is_available_is_false_without_cupy_or_device():
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert _cupy_class().is_available() is False
    else:
        assert isinstance(_cupy_class().is_available(), bool)


def test_shim_converts_host_data_and_refuses_torch(cb):
    if not _is_shim(cb):
        pytest.skip("shim behaviour")
    a = cb.asarray([1.0, 2.0])
    assert isinstance(a, np.ndarray) and a.dtype == np.float64
    torch = pytest.importorskip("torch")
    with pytest.raises(DeviceMismatchError):
        cb.attention(torch.zeros(1, 1, 2, 4), np.zeros((1, 1, 2, 4)), np.zeros((1, 1, 2, 4)))


# ----------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("precision", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("out_precision", [None, "float32", "bfloat16", "float16"])
@pytest.mark.parametrize("freq_dtype", [np.float64, np.float32])
def test_rope_cos_sin_matches_spec(cb, precision, out_precision, freq_dtype):
    inv_freq = spec_rope.base_inv_freq(16, 10000.0).astype(freq_dtype)
    positions = np.array([0, 1, 7, 100, 4095, 65537, 1_000_003])
    if precision == "float16":  # float16 positions stop at 65504 (the spec's cast would overflow)
        positions = positions[positions < 65504]
    factor = 1.1
    want_cos, want_sin = spec_rope.rope_cos_sin(inv_freq, positions, factor, precision=precision, out_precision=out_precision)
    cos, sin = cb.rope_cos_sin(inv_freq, positions, factor, precision=precision, out_precision=out_precision)
    assert cos.dtype == want_cos.dtype and sin.dtype == want_sin.dtype
    assert cos.shape == (positions.size, 8)
    got_cos, got_sin = _host(cb, cos), _host(cb, sin)
    if precision == "float32":
        # native float32 cos/sin: within a few float32 ulps of the correctly rounded spec,
        # plus one ulp of the storage precision when it is rounded again.
        out = out_precision or "float32"
        ulp = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}[out]
        tol = 3 * 2.0**-23 * factor + ulp * factor
        np.testing.assert_allclose(got_cos, want_cos, rtol=0, atol=tol)
        np.testing.assert_allclose(got_sin, want_sin, rtol=0, atol=tol)
    elif _is_shim(cb):  # the same arithmetic in the same order: bit-identical
        assert np.array_equal(got_cos, want_cos) and np.array_equal(got_sin, want_sin)
    else:  # the device's float64 cos/sin may differ from NumPy's by an ulp before rounding
        out = out_precision or precision
        ulp = {"float64": 2.0**-50, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}[out]
        np.testing.assert_allclose(got_cos, want_cos, rtol=0, atol=2 * ulp * factor)
        np.testing.assert_allclose(got_sin, want_sin, rtol=0, atol=2 * ulp * factor)


def test_rope_cos_sin_accepts_ranges_lists_and_2d_positions(cb):
    inv_freq = spec_rope.base_inv_freq(8, 500.0)
    for positions in (range(5), [0, 3, 2], np.arange(6).reshape(2, 3), np.array([0.5, 1.25])):
        want, _ = spec_rope.rope_cos_sin(inv_freq, positions)
        got, _ = cb.rope_cos_sin(inv_freq, positions)
        _close(_host(cb, got), want, np.float64, str(positions))


def _round_to(cb, x, precision):
    from yarnref_cupy._arrays import round_to

    return round_to(cb.xp, cb.asarray(x), precision)


def test_bfloat16_rounding_matches_spec_bits(cb):
    from yarnref.precision import round_to as spec_round

    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            rng.standard_normal(2000) * 10.0 ** rng.integers(-30, 30, 2000),
            [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.0e38, -3.0e38, 1e-40],
        ]
    )
    if not _is_shim(cb):  # CuPy's casts flush float32 subnormals (< 1.2e-38) to zero; NumPy keeps them
        x = x[~((np.abs(x) < 1.2e-38) & (x != 0))]
    for precision in ("bfloat16", "float16", "float32"):
        if precision == "float16":  # in float16's range (a cast of 1e30 overflows, with a warning)
            x = x[~(np.abs(x) > 6e4)]
        got = _host(cb, _round_to(cb, x, precision))
        want = spec_round(x, precision)
        assert np.array_equal(got, want, equal_nan=True), precision


@pytest.mark.parametrize("pairing", spec_rope.PAIRINGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("batched_table", [False, True])
def test_apply_rope_matches_spec(cb, pairing, dtype, batched_table, rng):
    batch, heads, seq, head_dim, r = 2, 3, 5, 12, 8  # partial rotary: 4 features pass through
    x = rng.standard_normal((batch, heads, seq, head_dim)).astype(dtype)
    inv_freq = spec_rope.base_inv_freq(r, 10000.0)
    positions = rng.integers(0, 5000, (batch, seq)) if batched_table else np.arange(seq) + 11
    cos, sin = spec_rope.rope_cos_sin(inv_freq, positions, 1.3)
    want = spec_rope.apply_rope(x, cos, sin, pairing)
    got = cb.apply_rope(x, cos, sin, pairing)
    assert got.dtype == dtype and got.shape == x.shape
    _close(_host(cb, got), want, dtype)
    assert np.array_equal(_host(cb, got)[..., r:], x[..., r:].astype(np.float64))  # pass-through is exact


def test_apply_rope_rejects_bad_input(cb):
    x = np.zeros((1, 1, 4, 8))
    cos = np.ones((4, 4))
    with pytest.raises(InputError, match="pairing"):
        cb.apply_rope(x, cos, cos, "gptj")
    with pytest.raises(InputError, match="cos"):
        cb.apply_rope(x, np.ones((3, 4)), np.ones((3, 4)))
    with pytest.raises(InputError, match="x"):
        cb.apply_rope(np.zeros((1, 1, 4, 8), dtype=np.int64), cos, cos)


# ----------------------------------------------------------------------------- attention


def _qkv(rng, batch, q_heads, kv_heads, q_len, kv_len, head_dim, v_dim, dtype):
    q = rng.standard_normal((batch, q_heads, q_len, head_dim)).astype(dtype)
    k = rng.standard_normal((batch, kv_heads, kv_len, head_dim)).astype(dtype)
    v = rng.standard_normal((batch, kv_heads, kv_len, v_dim)).astype(dtype)
    return q, k, v


@settings(max_examples=30)
@given(
    batch=st.integers(1, 2),
    kv_heads=st.integers(1, 2),
    group=st.integers(1, 3),
    q_len=st.integers(1, 13),
    kv_len=st.integers(1, 13),
    block_size=st.integers(1, 6),
    causal=st.booleans(),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**16),
)
def test_attention_matches_spec(cb, batch, kv_heads, group, q_len, kv_len, block_size, causal, dtype, seed):
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, batch, kv_heads * group, kv_heads, q_len, kv_len, 4, 3, dtype)
    want, want_lse = spec_attention.attention(q, k, v, causal=causal, return_lse=True)
    out, lse = cb.attention(q, k, v, causal, None, True, block_size=block_size)
    assert out.dtype == dtype and out.shape == want.shape and lse.shape == want_lse.shape
    _close(_host(cb, out), want, dtype, "out")
    _close(_host(cb, lse), want_lse, dtype, "lse")
    plain = cb.attention(q, k, v, causal=causal, block_size=block_size)
    _close(_host(cb, plain), want, dtype, "out without lse")


def test_attention_float16_and_scale(cb, rng):
    q, k, v = _qkv(rng, 1, 4, 2, 9, 17, 8, 8, np.float16)
    want, want_lse = spec_attention.attention(q, k, v, scale=0.2, return_lse=True)
    out, lse = cb.attention(q, k, v, scale=0.2, return_lse=True, block_size=4)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    _close(_host(cb, out), want, np.float16)
    _close(_host(cb, lse), want_lse, np.float32)


def test_attention_empty_rows_are_zero_with_minus_inf_lse(cb, rng):
    q, k, v = _qkv(rng, 1, 2, 1, 6, 3, 4, 4, np.float64)  # causal with q_len > kv_len: 3 rows see nothing
    out, lse = cb.attention(q, k, v, return_lse=True, block_size=2)
    out, lse = _host(cb, out), _host(cb, lse)
    assert np.all(out[:, :, :3] == 0) and np.all(lse[:, :, :3] == -np.inf)
    assert np.all(np.isfinite(lse[:, :, 3:]))


def test_attention_rejects_bad_input(cb, rng):
    q, k, v = _qkv(rng, 1, 3, 2, 4, 4, 4, 4, np.float64)
    with pytest.raises(InputError, match="k"):
        cb.attention(q, k, v)  # 3 query heads over 2 kv heads
    q, k, v = _qkv(rng, 1, 2, 1, 4, 4, 4, 4, np.float64)
    for kwargs, name in ((dict(scale=-1.0), "scale"), (dict(block_size=0), "block_size"), (dict(causal=1), "causal")):
        with pytest.raises(InputError, match=name):
            cb.attention(q, k, v, **kwargs)
    with pytest.raises(InputError, match="q"):
        cb.attention(q.astype(np.int32), k, v)


@settings(max_examples=20)
@given(parts=st.integers(1, 4), q_len=st.integers(1, 6), seed=st.integers(0, 2**16), dtype=st.sampled_from([np.float64, np.float32]))
def test_merge_attention_equals_attention_over_the_union(cb, parts, q_len, seed, dtype):
    rng = np.random.default_rng(seed)
    kv_len = 12
    q, k, v = _qkv(rng, 2, 4, 2, q_len, kv_len, 4, 5, dtype)
    cuts = np.sort(rng.choice(np.arange(1, kv_len), parts - 1, replace=False)) if parts > 1 else np.array([], dtype=int)
    bounds = [0, *cuts.tolist(), kv_len]
    outputs, lses = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        o, l = cb.attention(q, k[:, :, a:b], v[:, :, a:b], causal=False, return_lse=True)
        outputs.append(o)
        lses.append(l)
    # an empty part (lse -inf) contributes nothing
    shape = _host(cb, outputs[0]).shape
    outputs.append(cb.asarray(np.full(shape, 7.0, dtype=dtype)))
    lses.append(cb.asarray(np.full(shape[:-1], -np.inf, dtype=dtype)))
    out, lse = cb.merge_attention(outputs, lses)
    want, want_lse = spec_attention.attention(q, k, v, causal=False, return_lse=True)
    assert out.dtype == dtype
    _close(_host(cb, out), want, dtype)
    _close(_host(cb, lse), want_lse, dtype)


def test_merge_attention_rejects_mismatched_parts(cb):
    with pytest.raises(InputError, match="outputs"):
        cb.merge_attention([np.zeros((1, 2, 3))], [])
    with pytest.raises(InputError, match="outputs"):
        cb.merge_attention([np.zeros((1, 2, 3)), np.zeros((1, 2, 4))], [np.zeros((1, 2)), np.zeros((1, 2))])


# ----------------------------------------------------------------------------- DCA


def _dca_case(rng, batch, q_heads, kv_heads, q_len, kv_len, head_dim, dtype):
    q, k, v = _qkv(rng, batch, q_heads, kv_heads, q_len, kv_len, head_dim, head_dim, dtype)
    return q, k, v


@settings(max_examples=25)
@given(
    chunk_size=st.integers(3, 12),
    local_frac=st.floats(0.05, 0.9),
    kv_len=st.integers(1, 40),
    q_frac=st.floats(0.0, 1.0),
    group=st.integers(1, 2),
    pairing=st.sampled_from(spec_dca.DCA_PAIRINGS),
    partial=st.booleans(),
    pi_factor=st.sampled_from([1.0, 2.0]),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**16),
)
def test_dca_attention_matches_spec(cb, chunk_size, local_frac, kv_len, q_frac, group, pairing, partial, pi_factor, dtype, seed):
    rng = np.random.default_rng(seed)
    local_size = min(chunk_size - 1, max(1, int(round(local_frac * chunk_size))))
    q_len = max(1, int(round(q_frac * kv_len)))
    head_dim = 8
    q, k, v = _dca_case(rng, 1, 2 * group, 2, q_len, kv_len, head_dim, dtype)
    inv_freq = spec_rope.base_inv_freq(4 if partial else 8, 100.0)
    kwargs = dict(pairing=pairing, pi_factor=pi_factor, attention_factor=1.05, return_lse=True)
    want, want_lse = spec_dca.dca_attention(q, k, v, inv_freq, chunk_size, local_size, **kwargs)
    out, lse = cb.dca_attention(q, k, v, inv_freq, chunk_size, local_size, **kwargs)
    assert out.dtype == dtype and out.shape == want.shape
    _close(_host(cb, out), want, dtype, "out")
    _close(_host(cb, lse), want_lse, dtype, "lse")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature="chunkllama", max_position_embeddings=10, seq_len=50),
        dict(temperature="chunkllama", max_position_embeddings=64),
        dict(temperature="qwen", original_max_position_embeddings=8),
        dict(temperature="qwen", original_max_position_embeddings=8, seq_len=60),
        dict(temperature="qwen", original_max_position_embeddings=5, seq_len=40, key_write_lengths="grow"),
        dict(form="merge", scale=0.3),
    ],
)
def test_dca_attention_temperatures_match_spec(cb, kwargs, rng):
    kv_len, q_len = 37, 15
    q, k, v = _dca_case(rng, 2, 4, 2, q_len, kv_len, 8, np.float64)
    inv_freq = spec_rope.base_inv_freq(8, 50.0)
    kwargs = dict(kwargs)
    if kwargs.get("key_write_lengths") == "grow":  # a decode-like cache: key j written at length max(j + 1, 30)
        kwargs["key_write_lengths"] = np.maximum(np.arange(1, kv_len + 1), 30)
    want, want_lse = spec_dca.dca_attention(q, k, v, inv_freq, 9, 3, return_lse=True, **kwargs)
    out, lse = cb.dca_attention(q, k, v, inv_freq, 9, 3, return_lse=True, **kwargs)
    _close(_host(cb, out), want, np.float64, "out")
    _close(_host(cb, lse), want_lse, np.float64, "lse")


def test_dca_attention_is_causal_rope_attention_up_to_chunk_size_plus_one(cb, rng):
    chunk_size, local_size = 10, 3
    n = chunk_size + 1
    q, k, v = _dca_case(rng, 1, 2, 1, n, n, 8, np.float64)
    inv_freq = spec_rope.base_inv_freq(8, 100.0)
    cos, sin = spec_rope.rope_cos_sin(inv_freq, np.arange(n))
    want = spec_attention.attention(spec_rope.apply_rope(q, cos, sin), spec_rope.apply_rope(k, cos, sin), v)
    got = cb.dca_attention(q, k, v, inv_freq, chunk_size, local_size)
    _close(_host(cb, got), want, np.float64)


def test_dca_attention_rejects_bad_input(cb, rng):
    q, k, v = _dca_case(rng, 1, 2, 1, 5, 4, 8, np.float64)
    inv_freq = spec_rope.base_inv_freq(8, 100.0)
    with pytest.raises(InputError, match="q"):
        cb.dca_attention(q, k, v, inv_freq, 4, 1)  # q_len > kv_len
    q = q[:, :, :3]
    cases = [
        ((inv_freq, 4, 4), {}, "local_size"),
        ((np.ones(5), 4, 1), {}, "inv_freq"),
        ((inv_freq, 4, 1), dict(pairing="interleaved_in_half_out"), "pairing"),
        ((inv_freq, 4, 1), dict(form="blocks"), "form"),
        ((inv_freq, 4, 1), dict(temperature="yarn"), "temperature"),
        ((inv_freq, 4, 1), dict(temperature="qwen"), "original_max_position_embeddings"),
        ((inv_freq, 4, 1), dict(max_position_embeddings=8), "max_position_embeddings"),
        ((inv_freq, 4, 1), dict(pi_factor=0.0), "pi_factor"),
    ]
    for args, kwargs, name in cases:
        with pytest.raises(InputError, match=name):
            cb.dca_attention(q, k, v, *args, **kwargs)


# ----------------------------------------------------------------------------- the real device only


def test_device_arrays_and_dlpack(cb):
    if _is_shim(cb):
        pytest.skip("needs the real cupy backend")
    import cupy

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    a = cb.asarray(x)
    assert isinstance(a, cupy.ndarray) and a.dtype == np.float32 and a.device.id == cb.device
    assert cb.asarray(a) is a
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float32, device=f"cuda:{cb.device}")
    c = cb.asarray(t)
    assert isinstance(c, cupy.ndarray) and c.data.ptr == t.data_ptr()  # zero copy
    with pytest.raises(DeviceMismatchError):
        cb.asarray(torch.zeros(3))
    tb = t.to(torch.bfloat16)
    try:
        b = cb.asarray(tb)  # CuPy >= 14: its own bfloat16 dtype (ml_dtypes), zero copy
    except DeviceMismatchError as exc:  # an older CuPy: refused, never cast
        assert "bfloat16" in str(exc)
    else:
        assert b.dtype.name == "bfloat16" and b.data.ptr == tb.data_ptr()
    rng = np.random.default_rng(0)
    q = torch.from_numpy(rng.standard_normal((1, 2, 5, 4))).to(f"cuda:{cb.device}")
    out = cb.attention(q, q, q)
    assert isinstance(out, cupy.ndarray) and out.dtype == np.float64
    _close(cb.to_numpy(out), spec_attention.attention(q.cpu().numpy(), q.cpu().numpy(), q.cpu().numpy()), np.float64)


# ----------------------------------------------------------------------------- vertical-slash and streaming


def _random_indices(rng, batch, heads, kv_len, reach, n_vertical, n_slash, pad=True, shuffle=True):
    """Random vertical columns in [0, kv_len) and distances in [0, reach), -1-padded per head, in any order."""
    vertical = np.full((batch, heads, n_vertical), -1, dtype=np.int64)
    slash = np.full((batch, heads, n_slash), -1, dtype=np.int64)
    for b in range(batch):
        for h in range(heads):
            nv = int(rng.integers(0 if pad else n_vertical, n_vertical + 1))
            ns = int(rng.integers(0 if pad else n_slash, n_slash + 1))
            vertical[b, h, :nv] = rng.choice(kv_len, min(nv, kv_len), replace=False).tolist() + [0] * max(0, nv - kv_len)
            slash[b, h, :ns] = rng.choice(reach, min(ns, reach), replace=False).tolist() + [0] * max(0, ns - reach)
            if shuffle:
                rng.shuffle(vertical[b, h])
                rng.shuffle(slash[b, h])
    return vertical, slash


@settings(max_examples=25)
@given(
    q_len=st.integers(1, 90),
    extra=st.integers(0, 40),
    kv_heads=st.integers(1, 2),
    group=st.integers(1, 2),
    last_q=st.integers(1, 70),
    per_head=st.booleans(),
    forces=st.tuples(st.integers(0, 40), st.integers(0, 120)),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**16),
)
def test_vertical_slash_indices_match_spec(cb, q_len, extra, kv_heads, group, last_q, per_head, forces, dtype, seed):
    rng = np.random.default_rng(seed)
    kv_len = q_len + extra
    q, k, _ = _qkv(rng, 2, kv_heads * group, kv_heads, q_len, kv_len, 8, 8, dtype)
    q *= 3  # sharper softmaxes: distinct scores
    heads = kv_heads * group
    vertical_size = rng.integers(1, 60, heads) if per_head else 31
    slash_size = rng.integers(1, 80, heads) if per_head else 55
    kwargs = dict(force_verticals=forces[0], force_slashes=forces[1])
    want_v, want_s = spec_sparse.vertical_slash_indices(q, k, vertical_size, slash_size, last_q, **kwargs)
    got_v, got_s = cb.vertical_slash_indices(q, k, vertical_size, slash_size, last_q, **kwargs)
    assert got_v.dtype == np.int64 and got_s.dtype == np.int64
    assert np.array_equal(cb.to_numpy(got_v), want_v)
    assert np.array_equal(cb.to_numpy(got_s), want_s)


def test_vertical_slash_indices_reject_bad_input(cb, rng):
    q, k, _ = _qkv(rng, 1, 2, 1, 8, 8, 4, 4, np.float64)
    with pytest.raises(InputError, match="vertical_size"):
        cb.vertical_slash_indices(q, k, 0, 10)
    with pytest.raises(InputError, match="slash_size"):
        cb.vertical_slash_indices(q, k, 10, np.array([1, 2, 3]))
    with pytest.raises(InputError, match="last_q"):
        cb.vertical_slash_indices(q, k, 10, 10, 0)
    bad = q.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="q"):
        cb.vertical_slash_indices(bad, k, 10, 10)


def _conversion_case(draw_or_rng, q_len, extra, causal, bm, bn, n_vertical, n_slash, heads=2, batch=2):
    rng = draw_or_rng
    kv_len = q_len + extra
    reach = (kv_len if causal else kv_len + q_len) + 3
    vertical, slash = _random_indices(rng, batch, heads, kv_len, reach, n_vertical, n_slash)
    return kv_len, vertical, slash


def _conversion_or_error(fn, *args, **kwargs):
    """The result, or for a refusal (block_size_n < block_size_m) the parameter it names; any other error fails."""
    try:
        return fn(*args, **kwargs)
    except InputError as error:
        return f"InputError naming {error.param}"


@settings(max_examples=40)
@given(
    q_len=st.integers(1, 200),
    extra=st.integers(0, 70),
    causal=st.booleans(),
    sizes=st.sampled_from([(64, 64), (16, 16), (8, 8), (16, 32), (32, 16), (4, 8), (8, 4)]),
    n_vertical=st.integers(0, 12),
    n_slash=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_convert_vertical_slash_indexes_matches_spec(cb, q_len, extra, causal, sizes, n_vertical, n_slash, seed):
    rng = np.random.default_rng(seed)
    bm, bn = sizes
    kv_len, vertical, slash = _conversion_case(rng, q_len, extra, causal, bm, bn, n_vertical, n_slash)
    want = _conversion_or_error(spec_sparse.convert_vertical_slash_indexes, q_len, kv_len, vertical, slash, bm, bn, causal)
    got = _conversion_or_error(cb.convert_vertical_slash_indexes, q_len, kv_len, vertical, slash, bm, bn, causal)
    if isinstance(want, str):
        assert got == want
        return
    assert not isinstance(got, str), got
    for name, g, w in zip(("block_count", "block_offset", "column_count", "column_index"), got, want):
        g = cb.to_numpy(g)
        assert g.dtype == np.int32 and g.shape == w.shape, name
        assert np.array_equal(g, w), name


def test_conversion_by_hand(cb):
    """q = kv = 256, 64 x 64 blocks: slashes {0, 100} and verticals {3, 130} (worked out on paper)."""
    vertical = np.array([[[3, 130]]])
    slash = np.array([[[100, 0]]])
    block_count, block_offset, column_count, column_index = (
        cb.to_numpy(a) for a in cb.convert_vertical_slash_indexes(256, 256, vertical, slash)
    )
    # Row block 0 (rows 0..63): delta 100 reaches no row; delta 0 -> range [0, 64): block 0; vertical 3 covered.
    assert block_count[0, 0, 0] == 1 and block_offset[0, 0, 0, 0] == 0 and column_count[0, 0, 0] == 0
    # Row block 2 (rows 128..191): delta 100 -> e = 92, range [28, 92); delta 0 -> e = 192 > 92 + 64: new range
    # [128, 192).  Vertical 3 < 28 is a column; 130 lies inside [128, 192).
    assert block_count[0, 0, 2] == 2 and block_offset[0, 0, 2, :2].tolist() == [28, 128]
    assert column_count[0, 0, 2] == 1 and column_index[0, 0, 2, 0] == 3


def _compile_kernel_on_cpu(tmp_path_factory):
    import ctypes
    import shutil

    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler to run the CUDA kernel's source on the CPU")
    source = yarnref.backend._backend_class("cupy").__module__  # make sure the package is loaded
    package_dir = sys.modules[source.split(".")[0]].__path__[0]
    directory = tmp_path_factory.mktemp("vs_kernel")
    harness = directory / "harness.cpp"
    harness.write_text(
        "#define YARNREF_HOST_TEST\n"
        f'#include "{package_dir}/vertical_slash_index.cu"\n'
        'extern "C" void run_lanes(yr_i64 lanes, const int* a0, const int* a1, const int* a2, const int* a3,\n'
        "    yr_i64 a4, yr_i64 a5, yr_i64 a6, yr_i64 a7, yr_i64 a8, yr_i64 a9, yr_i64 a10, yr_i64 a11, int a12,\n"
        "    int* a13, int* a14, yr_i64 a15, int* a16, int* a17, yr_i64 a18, int* a19) {\n"
        "  for (yr_i64 tid = 0; tid < lanes; ++tid)\n"
        "    yr_convert_lane(tid, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19);\n"
        "}\n"
    )
    library = directory / "harness.so"
    done = subprocess.run(
        [compiler, "-O1", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(library), str(harness)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return ctypes.CDLL(str(library))


@pytest.fixture(scope="module")
def cpu_kernel(tmp_path_factory):
    return _compile_kernel_on_cpu(tmp_path_factory)


def _run_cpu_kernel(lib, q_len, kv_len, vertical, slash, bm, bn, causal):
    import ctypes

    from yarnref_cupy import sparse as cupy_sparse

    call = cupy_sparse.kernel_call(np, q_len, kv_len, vertical, slash, bm, bn, causal)
    c_args = []
    for a in call.args:
        if isinstance(a, np.ndarray):
            c_args.append(a.ctypes.data_as(ctypes.c_void_p))
        elif isinstance(a, np.int64):
            c_args.append(ctypes.c_longlong(int(a)))
        else:
            c_args.append(ctypes.c_int(int(a)))
    lib.run_lanes(ctypes.c_longlong(call.lanes), *c_args)
    return cupy_sparse.kernel_results(call, call.flags)


@settings(max_examples=150)
@given(
    q_len=st.integers(1, 300),
    extra=st.integers(0, 100),
    causal=st.booleans(),
    sizes=st.sampled_from([(64, 64), (16, 16), (8, 8), (16, 32), (4, 8), (1, 1), (3, 5), (5, 64)]),
    n_vertical=st.integers(0, 20),
    n_slash=st.integers(0, 20),
    seed=st.integers(0, 2**16),
)
def test_vs_kernel_source_on_cpu(cpu_kernel, q_len, extra, causal, sizes, n_vertical, n_slash, seed):
    """The CUDA kernel's own source, compiled as C++ and run lane by lane, equals the spec's conversion."""
    rng = np.random.default_rng(seed)
    bm, bn = sizes
    kv_len, vertical, slash = _conversion_case(rng, q_len, extra, causal, bm, bn, n_vertical, n_slash)
    want = _conversion_or_error(spec_sparse.convert_vertical_slash_indexes, q_len, kv_len, vertical, slash, bm, bn, causal)
    got = _conversion_or_error(_run_cpu_kernel, cpu_kernel, q_len, kv_len, vertical, slash, bm, bn, causal)
    if isinstance(want, str):
        assert got == want
        return
    assert not isinstance(got, str), got
    for name, g, w in zip(("block_count", "block_offset", "column_count", "column_index"), got, want):
        assert g.dtype == np.int32 and g.shape == w.shape, name
        assert np.array_equal(g, w), name


def test_vs_kernel_source_handles_huge_distances(cpu_kernel):
    vertical = np.array([[[0, 5, 40]]])
    slash = np.array([[[2**40, 10**12, 7, 0]]])  # distances past every row are capped before the int32 cast
    want = spec_sparse.convert_vertical_slash_indexes(100, 120, vertical, slash, 16, 16, True)
    got = _run_cpu_kernel(cpu_kernel, 100, 120, vertical, slash, 16, 16, True)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


@settings(max_examples=25)
@given(
    q_len=st.integers(1, 70),
    extra=st.integers(0, 30),
    causal=st.booleans(),
    mode=st.sampled_from(spec_sparse.VS_MODES),
    sizes=st.sampled_from([(16, 16), (8, 8), (8, 16), (4, 4), (16, 8)]),
    n_vertical=st.integers(0, 8),
    n_slash=st.integers(0, 8),
    seed=st.integers(0, 2**16),
)
def test_vertical_slash_mask_matches_spec(cb, q_len, extra, causal, mode, sizes, n_vertical, n_slash, seed):
    rng = np.random.default_rng(seed)
    bm, bn = sizes
    kv_len, vertical, slash = _conversion_case(rng, q_len, extra, causal, bm, bn, n_vertical, n_slash)
    kwargs = dict(block_size_m=bm, block_size_n=bn)
    want = _conversion_or_error(spec_sparse.vertical_slash_mask, q_len, kv_len, vertical, slash, mode, causal, **kwargs)
    got = _conversion_or_error(cb.vertical_slash_mask, q_len, kv_len, vertical, slash, mode, causal, **kwargs)
    if isinstance(want, str):
        assert got == want
        return
    got = cb.to_numpy(got)
    assert got.dtype == bool and np.array_equal(got, want)


@settings(max_examples=25)
@given(
    q_len=st.integers(1, 60),
    extra=st.integers(0, 30),
    causal=st.booleans(),
    mode=st.sampled_from(spec_sparse.VS_MODES),
    sizes=st.sampled_from([(16, 16), (8, 8), (8, 16), (4, 4), (16, 8)]),
    kv_heads=st.integers(1, 2),
    group=st.integers(1, 2),
    n_vertical=st.integers(0, 8),
    n_slash=st.integers(0, 8),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**16),
)
def test_vertical_slash_attention_matches_spec(cb, q_len, extra, causal, mode, sizes, kv_heads, group, n_vertical, n_slash, dtype, seed):
    rng = np.random.default_rng(seed)
    bm, bn = sizes
    heads = kv_heads * group
    kv_len, vertical, slash = _conversion_case(rng, q_len, extra, causal, bm, bn, n_vertical, n_slash, heads=heads)
    if rng.random() < 0.3 and vertical.shape[-1]:  # repeated entries: counted once (exact) / as listed (kernel)
        vertical[..., -1] = vertical[..., 0]
    q, k, v = _qkv(rng, 2, heads, kv_heads, q_len, kv_len, 4, 3, dtype)
    kwargs = dict(causal=causal, block_size_m=bm, block_size_n=bn)
    want = _conversion_or_error(spec_sparse.vertical_slash_attention, q, k, v, vertical, slash, mode, None, True, **kwargs)
    got = _conversion_or_error(cb.vertical_slash_attention, q, k, v, vertical, slash, mode, None, True, **kwargs)
    if isinstance(want, str):
        assert got == want
        return
    assert got[0].dtype == dtype
    _close(_host(cb, got[0]), want[0], dtype, "out")
    _close(_host(cb, got[1]), want[1], dtype, "lse")


def test_vertical_slash_attention_with_every_diagonal_is_dense(cb, rng):
    q_len = kv_len = 37
    q, k, v = _qkv(rng, 1, 2, 1, q_len, kv_len, 8, 8, np.float64)
    vertical = np.full((1, 2, 1), -1)
    slash = np.broadcast_to(np.arange(kv_len), (1, 2, kv_len))
    want = spec_attention.attention(q, k, v)
    for mode in spec_sparse.VS_MODES:
        got = cb.vertical_slash_attention(q, k, v, vertical, slash, mode, block_size_m=8, block_size_n=8)
        _close(_host(cb, got), want, np.float64, mode)


def test_vertical_slash_rejects_bad_input(cb, rng):
    q, k, v = _qkv(rng, 1, 2, 1, 8, 8, 4, 4, np.float64)
    vertical, slash = np.zeros((1, 2, 1), int), np.zeros((1, 2, 1), int)
    with pytest.raises(InputError, match="mode"):
        cb.vertical_slash_attention(q, k, v, vertical, slash, mode="dense")
    with pytest.raises(InputError, match="vertical_idx"):
        cb.vertical_slash_attention(q, k, v, vertical + 8, slash)  # a column past kv_len
    with pytest.raises(InputError, match="slash_idx"):
        cb.vertical_slash_attention(q, k, v, vertical, slash - 2)
    with pytest.raises(InputError, match="vertical_idx"):
        cb.vertical_slash_attention(q, k, v, np.zeros((1, 3, 1), int), np.zeros((1, 3, 1), int))  # 3 heads, q has 2
    with pytest.raises(InputError, match="q_len"):
        cb.convert_vertical_slash_indexes(9, 8, vertical, slash)
    with pytest.raises(InputError, match="block_size_n"):
        cb.vertical_slash_mask(8, 8, vertical, slash, block_size_n=0)


@settings(max_examples=25)
@given(
    q_len=st.integers(1, 50),
    extra=st.integers(0, 30),
    n_init=st.integers(0, 12),
    n_local=st.integers(1, 20),
    n_last=st.one_of(st.none(), st.integers(0, 60)),
    kv_heads=st.integers(1, 2),
    group=st.integers(1, 2),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**16),
)
def test_streaming_attention_matches_spec(cb, q_len, extra, n_init, n_local, n_last, kv_heads, group, dtype, seed):
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, 2, kv_heads * group, kv_heads, q_len, q_len + extra, 4, 3, dtype)
    if n_last is None:
        want = spec_sparse.a_shape_attention(q, k, v, n_init, n_local, None, True)
        got = cb.a_shape_attention(q, k, v, n_init, n_local, None, True)
    else:
        want = spec_sparse.tri_shape_attention(q, k, v, n_init, n_local, n_last, None, True)
        got = cb.tri_shape_attention(q, k, v, n_init, n_local, n_last, None, True)
    assert got[0].dtype == dtype
    _close(_host(cb, got[0]), want[0], dtype, "out")
    _close(_host(cb, got[1]), want[1], dtype, "lse")


def test_streaming_attention_rejects_bad_input(cb, rng):
    q, k, v = _qkv(rng, 1, 2, 1, 8, 8, 4, 4, np.float64)
    with pytest.raises(InputError, match="n_local"):
        cb.a_shape_attention(q, k, v, 4, 0)
    with pytest.raises(InputError, match="n_last"):
        cb.tri_shape_attention(q, k, v, 4, 4, -1)
    with pytest.raises(InputError, match="q"):
        cb.a_shape_attention(q, k[:, :, :5], v[:, :, :5])  # q_len > kv_len


@given(seed=st.integers(0, 2**16), chunk=st.integers(0, 3), L=st.integers(1, 30), groups=st.integers(1, 3))
@settings(max_examples=20, deadline=None)
def test_split_sparse_parts_matches_spec(cb, seed, chunk, L, groups):
    """``split_sparse_parts`` (the index sets split on the device, one read-back) equals the spec exactly."""
    from yarnref.prefill import split_sparse_parts

    rng = np.random.default_rng(seed)
    cs = chunk * L
    begin = int(rng.integers(cs, cs + L))
    end = int(rng.integers(begin + 1, cs + L + 1))

    def group(heads, descending):
        idx = np.full((1, heads, int(rng.integers(0, 10))), -1, np.int64)
        for h in range(heads):
            values = np.sort(rng.choice(end, size=min(int(rng.integers(0, idx.shape[-1] + 1)), end), replace=False))
            idx[0, h, : values.size] = values[::-1] if descending else values
        return idx

    heads = rng.integers(1, 4, size=groups)
    verticals, slashes = [group(h, False) for h in heads], [group(h, True) for h in heads]
    want_v, want_s, want = split_sparse_parts(verticals, slashes, begin, end, cs, L)
    got_v, got_s, got = cb.split_sparse_parts([cb.asarray(v) for v in verticals], [cb.asarray(s) for s in slashes], begin, end, cs, L)
    assert list(got) == list(want)
    pairs = [(got_v, want_v), (got_s, want_s)] + [(got[n].vertical_idx, want[n].vertical_idx) for n in want] + [
        (got[n].slash_idx, want[n].slash_idx) for n in want]
    for g, w in pairs:
        host = cb.to_numpy(g)
        assert host.dtype == np.int64
        np.testing.assert_array_equal(host, w)
