"""Every backend's attention and LSE merge agree with the float64 spec (yarnref.softmax_attention)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from yarnref.softmax_attention import attention, merge_attention
from yarnref.errors import InputError
from yarnref.precision import round_to
from yarnref.testing import assert_close, assert_error_within, dtype_name, to_float64

from conftest import as_inputs, backend_dtypes, backend_settings


@st.composite
def attention_problems(draw, dtypes):
    """Shapes with GQA, lengths off every block size, q_len above, at and below kv_len."""
    batch = draw(st.integers(1, 2), label="batch")
    kv_heads = draw(st.integers(1, 3), label="kv_heads")
    group = draw(st.sampled_from([1, 2, 4]), label="group")
    q_len = draw(st.integers(1, 70), label="q_len")
    kv_len = draw(st.one_of(st.just(q_len), st.integers(1, 90)), label="kv_len")
    head_dim = draw(st.sampled_from([8, 16, 40, 64]), label="head_dim")
    v_dim = draw(st.sampled_from([head_dim, 8]), label="v_dim")
    return {
        "shapes": ((batch, kv_heads * group, q_len, head_dim), (batch, kv_heads, kv_len, head_dim), (batch, kv_heads, kv_len, v_dim)),
        "causal": draw(st.booleans(), label="causal"),
        "scale": draw(st.sampled_from([None, 0.05, 0.3]), label="scale"),
        "block_size": draw(st.sampled_from([1, 7, 16, 512]), label="block_size"),
        "dtype": draw(st.sampled_from(dtypes), label="dtype"),
        "seed": draw(st.integers(0, 2**16), label="seed"),
    }


@backend_settings
@given(data=st.data())
def test_attention_agrees_with_the_spec(backend, data):
    p = data.draw(attention_problems(backend_dtypes(backend)))
    rng = np.random.default_rng(p["seed"])
    (q, q64), (k, k64), (v, v64) = (as_inputs(backend, rng.standard_normal(s), p["dtype"]) for s in p["shapes"])
    kwargs = {"causal": p["causal"], "scale": p["scale"], "return_lse": True, "block_size": p["block_size"]}
    out, lse = backend.attention(q, k, v, **kwargs)
    want_out, want_lse = attention(q64, k64, v64, **kwargs)
    assert dtype_name(out.dtype) == p["dtype"]
    assert tuple(out.shape) == want_out.shape and tuple(lse.shape) == want_lse.shape
    assert_close(out, want_out, dtype=p["dtype"], op="attention", err_msg="out")
    assert_close(lse, want_lse, dtype=p["dtype"], op="attention", err_msg="lse")  # -inf rows must match exactly
    only_out = backend.attention(q, k, v, causal=p["causal"], scale=p["scale"], block_size=p["block_size"])
    assert_close(only_out, want_out, dtype=p["dtype"], op="attention", err_msg="out without lse")


@backend_settings
@given(st.integers(1, 40), st.integers(0, 30), st.integers(0, 2**16))
def test_queries_before_every_key_get_zero_and_minus_infinity(backend, kv_len, extra, seed):
    """Causal, q_len > kv_len: the first q_len - kv_len queries see nothing."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, 2, kv_len + extra, 16))
    k, v = rng.standard_normal((2, 1, 2, kv_len, 16))
    out, lse = backend.attention(q, k, v, causal=True, return_lse=True)
    out, lse = to_float64(out), to_float64(lse)
    assert np.all(out[:, :, :extra] == 0) and np.all(lse[:, :, :extra] == -np.inf)
    assert np.all(np.isfinite(lse[:, :, extra:]))


@backend_settings
@given(data=st.data())
def test_merge_agrees_with_the_spec_and_with_the_union(backend, data):
    dtype = data.draw(st.sampled_from(backend_dtypes(backend)), label="dtype")
    kv_len = data.draw(st.integers(2, 60), label="kv_len")
    cuts = sorted(data.draw(st.lists(st.integers(0, kv_len), min_size=1, max_size=3), label="cuts"))
    bounds = [0, *cuts, kv_len]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    q = rng.standard_normal((2, 4, 5, 16))
    k, v = rng.standard_normal((2, 2, 2, kv_len, 16))
    outputs, lses = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            o, l = attention(q, k[:, :, lo:hi], v[:, :, lo:hi], causal=False, return_lse=True)
        else:  # an empty part: output 0, lse -inf
            o, l = np.zeros((2, 4, 5, 16)), np.full((2, 4, 5), -np.inf)
        outputs.append(o)
        lses.append(l)
    backend_outputs = [as_inputs(backend, o, dtype)[0] for o in outputs]
    spec_outputs = [as_inputs(backend, o, dtype)[1] for o in outputs]
    out, lse = backend.merge_attention(backend_outputs, lses)
    want_out, want_lse = merge_attention(spec_outputs, lses)
    assert dtype_name(out.dtype) == dtype
    assert_close(out, want_out, dtype=dtype, op="merge")
    assert_close(lse, want_lse, dtype=dtype, op="merge")
    union_out, union_lse = attention(q, k, v, causal=False, return_lse=True)
    assert_close(lse, union_lse, dtype=dtype, op="merge", err_msg="merged lse vs the union's")


def test_merge_of_only_empty_parts_is_zero_with_minus_infinity(backend):
    empty_out, empty_lse = np.zeros((1, 2, 3, 4)), np.full((1, 2, 3), -np.inf)
    out, lse = backend.merge_attention([empty_out, empty_out], [empty_lse, empty_lse])
    assert np.all(to_float64(out) == 0) and np.all(to_float64(lse) == -np.inf)


def _naive_attention(q, k, v, precision):
    """Eager attention as transformers runs it in a low precision: every intermediate rounded.

    ``q @ k^T`` rounded, times the scale rounded, softmax computed in float32 and
    rounded to ``precision`` before ``@ v``, the output rounded (causal, q_len = kv_len).
    """
    scale = 1.0 / np.sqrt(q.shape[-1])
    logits = round_to(round_to(q @ np.swapaxes(k, -1, -2), precision) * scale, precision)
    n = q.shape[-2]
    logits = np.where(np.tri(n, dtype=bool), logits, -np.inf)
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = round_to(round_to(weights / weights.sum(axis=-1, keepdims=True), "float32"), precision)
    return round_to(probs @ v, precision)


@backend_settings
@given(data=st.data(), n=st.integers(1, 80), head_dim=st.sampled_from([16, 64]), seed=st.integers(0, 2**16))
def test_half_precision_error_is_within_twice_a_naive_implementations(backend, data, n, head_dim, seed):
    """The half-precision rule (yarnref.testing.assert_error_within): error vs the float64 spec <= 2x a naive same-precision one."""
    dtype = data.draw(st.sampled_from([d for d in backend_dtypes(backend) if d in ("bfloat16", "float16")]), label="dtype")
    rng = np.random.default_rng(seed)
    (q, q64), (k, k64), (v, v64) = (as_inputs(backend, rng.standard_normal((1, 2, n, head_dim)) * 2, dtype) for _ in range(3))
    fast = backend.attention(q, k, v, causal=True)
    spec = attention(q64, k64, v64, causal=True)
    naive = _naive_attention(q64, k64, v64, dtype)
    assert_error_within(fast, spec, naive, factor=2.0, atol=1e-6)


@pytest.mark.parametrize("head_dim", [32, 64, 80, 96, 128, 256])
def test_half_precision_attention_at_every_model_head_dim(backend, head_dim):
    """The head dims of real models (80: Phi-2, 96: Phi-3, 256: Gemma) in each 16-bit dtype, GQA, q_len < kv_len.

    On the GPU backends these are the fused kernels' shapes (130 query rows:
    two row blocks and a partial one); each is held to the half-precision rule.
    """
    rng = np.random.default_rng(head_dim)
    for dtype in [d for d in backend_dtypes(backend) if d in ("bfloat16", "float16")]:
        (q, q64), (k, k64), (v, v64) = (
            as_inputs(backend, rng.standard_normal(shape), dtype)
            for shape in ((1, 4, 130, head_dim), (1, 2, 150, head_dim), (1, 2, 150, head_dim))
        )
        out, lse = backend.attention(q, k, v, causal=True, return_lse=True)
        want_out, want_lse = attention(q64, k64, v64, causal=True, return_lse=True)
        assert dtype_name(out.dtype) == dtype
        assert_close(out, want_out, dtype=dtype, op="attention", err_msg=f"out, {dtype}, head_dim {head_dim}")
        assert_close(lse, want_lse, dtype=dtype, op="attention", err_msg=f"lse, {dtype}, head_dim {head_dim}")


def test_bad_attention_inputs_raise_input_errors(backend):
    q = np.zeros((1, 4, 5, 8))
    with pytest.raises(InputError, match="k"):
        backend.attention(q, np.zeros((1, 3, 5, 8)), np.zeros((1, 3, 5, 8)))  # 3 kv heads do not divide 4
    with pytest.raises(InputError, match="scale"):
        backend.attention(q, q, q, scale=-1.0)
    with pytest.raises(InputError, match="block_size"):
        backend.attention(q, q, q, block_size=0)
    with pytest.raises(InputError, match="q"):
        backend.attention(np.zeros((4, 5, 8)), q, q)
    with pytest.raises(InputError, match="outputs"):
        backend.merge_attention([np.zeros((1, 2, 3, 4))], [])
