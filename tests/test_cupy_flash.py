"""The CuPy backend's fused float16 attention kernel (``backends/yarnref_cupy/flash_attention.cu``) against the spec.

GPU only: every test skips where the CuPy backend cannot run.  The kernel
serves dense attention, the vertical-slash kernel lists and DCA's parts; each
is compared with the float64 spec on float16-rounded inputs.  The kernel
rounds the probabilities to float16 before ``P V`` (as production kernels
do), so the bound is :func:`yarnref.testing.assert_close`'s float16 row.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import yarnref
from yarnref.testing import assert_close


@pytest.fixture(scope="module")
def cb():
    cls = yarnref.backend._backend_class("cupy")
    if not cls.is_available():
        pytest.skip("needs CuPy and a working CUDA device")
    return cls()


@pytest.fixture(scope="module")
def flash(cb):
    return importlib.import_module(type(cb).__module__.rsplit(".", 1)[0] + ".flash")


def _half(cb, rng, shape, scale=1.0):
    """(the float16 CuPy array, its float64 NumPy copy)."""
    x = (rng.standard_normal(shape) * scale).astype(np.float16)
    return cb.xp.asarray(x), x.astype(np.float64)


@pytest.mark.parametrize(
    "head_dim, q_len, kv_len, causal, group",
    [
        (128, 200, 200, True, 1),
        (64, 130, 300, True, 2),  # decode-like: queries are the last rows of a longer key sequence
        (32, 65, 65, False, 4),
        (128, 1, 700, True, 1),
        (64, 150, 90, False, 1),  # more queries than keys, not causal
        (64, 100, 40, True, 1),  # more queries than keys, causal: the first 60 rows see no key
    ],
)
def test_dense_attention_agrees_with_the_spec(cb, flash, head_dim, q_len, kv_len, causal, group):
    rng = np.random.default_rng(head_dim + q_len + kv_len)
    kv_heads = 2
    q, q64 = _half(cb, rng, (2, kv_heads * group, q_len, head_dim))
    k, k64 = _half(cb, rng, (2, kv_heads, kv_len, head_dim))
    v, v64 = _half(cb, rng, (2, kv_heads, kv_len, head_dim))
    assert flash.fusable(cb.xp, q, k, v)
    out, lse = cb.attention(q, k, v, causal=causal, return_lse=True)
    want_out, want_lse = yarnref.attention(q64, k64, v64, causal=causal, return_lse=True)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    assert_close(out, want_out, dtype="float16", op="attention")
    assert_close(lse, want_lse, dtype="float16", op="attention")


def test_strided_inputs_and_other_head_dims(cb, flash):
    """A (batch, seq, heads, dim) buffer viewed as (batch, heads, seq, dim) is read in place; head_dim 48 falls back."""
    rng = np.random.default_rng(5)
    buf, buf64 = _half(cb, rng, (1, 120, 4, 64))
    q, q64 = buf.transpose(0, 2, 1, 3), buf64.transpose(0, 2, 1, 3)
    assert flash.fusable(cb.xp, q, q, q)
    assert_close(cb.attention(q, q, q), yarnref.attention(q64, q64, q64), dtype="float16", op="attention")
    odd, odd64 = _half(cb, rng, (1, 2, 70, 48))
    assert not flash.fusable(cb.xp, odd, odd, odd)
    assert_close(cb.attention(odd, odd, odd), yarnref.attention(odd64, odd64, odd64), dtype="float16", op="attention")


@pytest.mark.parametrize("causal", [True, False])
def test_vertical_slash_lists_agree_with_the_spec(cb, flash, causal):
    rng = np.random.default_rng(7 + causal)
    q_len, kv_len, heads, d = 300, 300 if causal else 260, 4, 64
    q, q64 = _half(cb, rng, (1, heads, q_len, d))
    k, k64 = _half(cb, rng, (1, 2, kv_len, d))
    v, v64 = _half(cb, rng, (1, 2, kv_len, d))
    vertical = np.stack([np.sort(rng.choice(kv_len, 12, replace=False)) for _ in range(heads)])[None]
    slash = np.stack([rng.choice(q_len, 9, replace=False) for _ in range(heads)])[None]
    slash[0, 1, :] = -1  # a head with no slash at all (padding)
    slash[0, 1, 0] = 150
    assert flash.fusable(cb.xp, q, k, v, lists=True)
    out, lse = cb.vertical_slash_attention(q, k, v, vertical, slash, "kernel", None, True, causal=causal)
    want_out, want_lse = yarnref.vertical_slash_attention(q64, k64, v64, vertical, slash, "kernel", None, True, causal=causal)
    assert_close(out, want_out, dtype="float16", op="sparse")
    assert_close(lse, want_lse, dtype="float16", op="sparse")


def test_dca_parts_run_fused_and_agree(cb, flash):
    rng = np.random.default_rng(11)
    n, d = 400, 64
    q, q64 = _half(cb, rng, (1, 4, n, d))
    k, k64 = _half(cb, rng, (1, 2, n, d))
    v, v64 = _half(cb, rng, (1, 2, n, d))
    inv_freq = 10000.0 ** (-np.arange(0, d, 2) / d)
    assert flash.fusable(cb.xp, q, k, v)
    out = cb.dca_attention(q, k, v, inv_freq, 128, 32)
    want = yarnref.dca_attention(q64, k64, v64, inv_freq, 128, 32)
    # The rotated q and k are rounded to float16 before attention (as vLLM rotates in the model dtype).
    assert_close(out, want, dtype="float16", op="dca", rtol=4e-3, atol=4e-3)
