"""ALiBi (arXiv:2108.12409): slopes, bias, and attention with linear biases on every backend.

Independent references: the slopes and biases of transformers' BLOOM
(``build_alibi_tensor``, which follows the paper's code), a dense softmax
written here in a few lines of NumPy, and properties of the method itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import yarnref
from yarnref.alibi import alibi_bias, alibi_slopes
from yarnref.softmax_attention import attention
from yarnref.errors import InputError
from yarnref.testing import assert_close, to_float64

backend_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=20)


def bloom_slopes(num_heads: int) -> np.ndarray:
    """The slopes BLOOM uses: its bias at key position 1 (it adds ``m_h * p_k``)."""
    torch = pytest.importorskip("torch")
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    bias = bloom.build_alibi_tensor(torch.ones(1, 2), num_heads, torch.float32)  # (heads, 1, 2) = m_h * [0, 1]
    return bias[:, 0, 1].double().numpy()


def test_slopes_of_eight_heads_are_the_papers():
    """Section 3: for 8 heads, 1/2, 1/4, ..., 1/256."""
    np.testing.assert_array_equal(alibi_slopes(8), 0.5 ** np.arange(1, 9))


@pytest.mark.parametrize("num_heads", [1, 2, 3, 5, 6, 7, 12, 16, 20, 24, 32, 40, 48, 71, 96, 112])
def test_slopes_match_bloom(num_heads):
    """BLOOM's build_alibi_tensor (float32): the paper's code's rule for every head count."""
    np.testing.assert_allclose(alibi_slopes(num_heads), bloom_slopes(num_heads), rtol=1e-6)


@given(st.integers(1, 300))
def test_slopes_are_a_decreasing_set_in_zero_one(num_heads):
    m = alibi_slopes(num_heads)
    assert m.shape == (num_heads,) and m.dtype == np.float64
    assert np.all((m > 0) & (m < 1)) and len(np.unique(m)) == num_heads
    closest = 2 ** int(np.floor(np.log2(num_heads)))
    np.testing.assert_array_equal(m[:closest], alibi_slopes(closest))  # the power-of-two head start is kept


@given(st.integers(1, 8), st.integers(1, 20), st.integers(0, 20))
def test_bias_is_minus_slope_times_distance_bottom_right(heads, q_len, extra):
    kv_len = q_len + extra
    m = alibi_slopes(heads)
    bias = alibi_bias(m, q_len, kv_len)
    assert bias.shape == (heads, q_len, kv_len)
    last = bias[:, -1, :]  # the last query sits at the last key position
    np.testing.assert_allclose(last, -m[:, None] * (kv_len - 1 - np.arange(kv_len))[None])
    assert np.all(bias[:, np.arange(q_len), np.arange(q_len) + extra] == 0)  # each query's own position


@given(st.integers(1, 12), st.integers(1, 12))
def test_bias_differs_from_blooms_by_a_constant_per_causal_row(q_len, heads):
    """BLOOM adds +m p_k; on visible (causal) keys the two differ by m p_q: same softmax."""
    m = alibi_slopes(heads)
    ours = alibi_bias(m, q_len, q_len)
    bloom = m[:, None, None] * np.arange(q_len)[None, None, :]
    visible = np.tril(np.ones((q_len, q_len), dtype=bool))
    diff = np.where(visible, bloom - ours, np.nan)  # (heads, q, k)
    want = m[:, None, None] * np.arange(q_len)[None, :, None]
    np.testing.assert_allclose(diff[:, visible], np.broadcast_to(want, diff.shape)[:, visible])


def dense_reference(q, k, v, slopes, causal):
    """Softmax(s q k^T + bias) v with a materialised mask, float64, no blocking; bias from BLOOM's form on causal rows."""
    b, hq, tq, d = q.shape
    hk, tk = k.shape[1], k.shape[2]
    k = np.repeat(k, hq // hk, axis=1)
    v = np.repeat(v, hq // hk, axis=1)
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(d)
    query_pos = np.arange(tq) + tk - tq
    distance = query_pos[:, None] - np.arange(tk)[None, :]
    logits = logits - slopes[None, :, None, None] * np.abs(distance)[None, None]
    if causal:
        logits = np.where(distance >= 0, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ v


@given(
    st.integers(1, 3),
    st.sampled_from([1, 2, 3]),
    st.integers(1, 24),
    st.integers(0, 24),
    st.booleans(),
    st.integers(0, 2**16),
)
@settings(max_examples=25)
def test_spec_matches_a_dense_reference(kv_heads, group, q_len, extra, causal, seed):
    rng = np.random.default_rng(seed)
    hq, kv_len = kv_heads * group, q_len + extra
    q = rng.standard_normal((2, hq, q_len, 8))
    k, v = rng.standard_normal((2, 2, kv_heads, kv_len, 8))
    slopes = alibi_slopes(hq) * 4  # strong biases, so a wrong distance shows
    out = attention(q, k, v, causal=causal, alibi_slopes=slopes, block_size=5)
    np.testing.assert_allclose(out, dense_reference(q, k, v, slopes, causal), rtol=1e-10, atol=1e-12)


def test_attention_matches_bloom_attention():
    """BLOOM's own attention path: softmax(baddbmm(alibi, q, k^T, alpha=1/sqrt(d)) + causal mask) v."""
    torch = pytest.importorskip("torch")
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    rng = np.random.default_rng(7)
    heads, t, d = 6, 19, 16
    q, k, v = rng.standard_normal((3, 1, heads, t, d))
    alibi = bloom.build_alibi_tensor(torch.ones(1, t), heads, torch.float64)  # (heads, 1, t)
    logits = torch.baddbmm(alibi, torch.from_numpy(q[0]), torch.from_numpy(k[0]).transpose(1, 2), beta=1.0, alpha=d**-0.5)
    logits = logits.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -torch.inf)
    want = (torch.softmax(logits, dim=-1) @ torch.from_numpy(v[0])).numpy()
    out = attention(q, k, v, causal=True, alibi_slopes=alibi_slopes(heads))
    np.testing.assert_allclose(out[0], want, rtol=1e-10, atol=1e-12)


@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**16))
@settings(max_examples=20)
def test_prefill_tail_equals_the_last_rows(q_len, prefix, seed):
    """Bottom-right alignment: the last q_len queries against all keys are the last rows of the full call."""
    rng = np.random.default_rng(seed)
    kv_len = q_len + prefix
    q = rng.standard_normal((1, 4, kv_len, 8))
    k, v = rng.standard_normal((2, 1, 2, kv_len, 8))
    m = alibi_slopes(4)
    full, full_lse = attention(q, k, v, alibi_slopes=m, return_lse=True)
    tail, tail_lse = attention(q[:, :, -q_len:], k, v, alibi_slopes=m, return_lse=True)
    np.testing.assert_allclose(tail, full[:, :, -q_len:], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(tail_lse, full_lse[:, :, -q_len:], rtol=1e-12, atol=1e-13)


def test_zero_slopes_are_plain_attention(rng):
    q, k, v = rng.standard_normal((3, 1, 4, 11, 8))
    for causal in (True, False):
        a = attention(q, k, v, causal=causal, return_lse=True)
        b = attention(q, k, v, causal=causal, return_lse=True, alibi_slopes=np.zeros(4))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_bad_slopes_are_refused(rng):
    q, k, v = rng.standard_normal((3, 1, 4, 6, 8))
    for bad in (np.ones(3), np.ones((1, 4)), np.array([0.5, np.nan, 0.1, 0.2])):
        with pytest.raises(InputError, match="alibi_slopes"):
            attention(q, k, v, alibi_slopes=bad)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="num_heads"):
            alibi_slopes(bad)
    with pytest.raises(InputError, match="slopes"):
        alibi_bias(np.ones((2, 2)), 3, 3)


def test_dispatched_attention_takes_slopes():
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((3, 1, 2, 5, 4))
    m = alibi_slopes(2)
    np.testing.assert_array_equal(yarnref.attention(q, k, v, alibi_slopes=m), attention(q, k, v, alibi_slopes=m))


# ----------------------------------------------------------------------------- every backend


@backend_settings
@given(data=st.data())
def test_backends_agree_with_the_spec(backend, data):
    kv_heads = data.draw(st.integers(1, 3), label="kv_heads")
    group = data.draw(st.sampled_from([1, 2, 4]), label="group")
    q_len = data.draw(st.integers(1, 40), label="q_len")
    kv_len = data.draw(st.one_of(st.just(q_len), st.integers(1, 50)), label="kv_len")
    causal = data.draw(st.booleans(), label="causal")
    block_size = data.draw(st.sampled_from([1, 7, 512]), label="block_size")
    dtype = data.draw(st.sampled_from(["float64", "float32", "float16"]), label="dtype")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    hq = kv_heads * group
    q = rng.standard_normal((2, hq, q_len, 16)).astype(dtype)
    k, v = rng.standard_normal((2, 2, kv_heads, kv_len, 16)).astype(dtype)
    slopes = alibi_slopes(hq)
    out, lse = backend.attention(q, k, v, causal=causal, return_lse=True, block_size=block_size, alibi_slopes=slopes)
    want, want_lse = attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), causal=causal, return_lse=True, alibi_slopes=slopes)
    assert_close(out, want, dtype=dtype, op="attention", err_msg="out")
    assert_close(lse, want_lse, dtype=dtype, op="attention", err_msg="lse")


def test_backends_refuse_bad_slopes(backend):
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((3, 1, 4, 6, 8))
    with pytest.raises(InputError, match="alibi_slopes"):
        backend.attention(q, k, v, alibi_slopes=np.ones(2))


@pytest.mark.parametrize("causal", [True, False])
def test_cupy_backend_with_numpy_standing_in(causal):
    """The CuPy backend's array code, run with NumPy as its xp (see tests/test_cupy_numpy_shim.py)."""
    cb = yarnref.backend._backend_class("cupy")(_xp=np)
    rng = np.random.default_rng(11)
    q = rng.standard_normal((1, 6, 13, 8)).astype(np.float32)
    k, v = rng.standard_normal((2, 1, 2, 21, 8)).astype(np.float32)
    m = alibi_slopes(6)
    out, lse = cb.attention(q, k, v, causal=causal, return_lse=True, block_size=4, alibi_slopes=m)
    want, want_lse = attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), causal=causal, return_lse=True, alibi_slopes=m)
    np.testing.assert_allclose(to_float64(out), want, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(to_float64(lse), want_lse, rtol=2e-4, atol=2e-5)
