"""Every backend's RoPE (cos/sin tables, rotation) agrees with the float64 spec, within yarnref.testing's table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from yarnref.errors import InputError
from yarnref.precision import PRECISIONS, UNIT_ROUNDOFF
from yarnref.rope import apply_rope, base_inv_freq, rope_cos_sin, rotary_dim
from yarnref.testing import assert_close, dtype_name, to_float64

from conftest import as_inputs, backend_dtypes, backend_settings


head_dims = st.sampled_from([8, 12, 16, 24, 64, 80, 128])
partials = st.sampled_from([1.0, 0.5, 0.25])
bases = st.sampled_from([10000.0, 500000.0, 1e6, 1e7])
pairings = st.sampled_from(["half", "interleaved", "interleaved_in_half_out"])


def _rotary(head_dim, partial):
    """``rotary_dim(head_dim, partial)``, or None where that product is odd or below 2 (refused, naming rotary_dim)."""
    try:
        return rotary_dim(head_dim, partial)
    except InputError as error:
        if error.param != "rotary_dim":  # any other refusal (or any other exception) is a failure
            raise
        return None


def coarser(a: str, b: str) -> str:
    return a if UNIT_ROUNDOFF[a] >= UNIT_ROUNDOFF[b] else b


@backend_settings
@given(data=st.data())
def test_cos_sin_tables_agree_with_the_spec(backend, data):
    r = data.draw(st.sampled_from([2, 8, 32, 64, 128]), label="rotary_dim")
    inv = base_inv_freq(r, data.draw(bases, label="base"))
    if data.draw(st.booleans(), label="scaled"):  # a scaling method's per-pair factors (PI, YaRN, ...)
        inv = inv / np.asarray(data.draw(st.lists(st.floats(1.0, 64.0), min_size=r // 2, max_size=r // 2), label="factors"))
    precision = data.draw(st.sampled_from(PRECISIONS), label="precision")
    out_precision = data.draw(st.sampled_from([None, *PRECISIONS]), label="out_precision")
    top = 60000 if "float16" in (precision, out_precision) else 10**6  # float16 positions overflow at 65504
    start = data.draw(st.integers(0, top - 64), label="start")
    n = data.draw(st.integers(1, 40), label="n")
    positions = start + np.arange(n)
    if data.draw(st.booleans(), label="per_sequence"):
        positions = np.stack([positions, positions[::-1]])  # (batch, seq)
    if data.draw(st.booleans(), label="fractional"):
        positions = positions / data.draw(st.sampled_from([2.0, 4.0, 8.0]), label="pi_factor")
    factor = data.draw(st.sampled_from([1.0, 1.0 + 0.1 * np.log(8.0), 1.3]), label="attention_factor")

    want = rope_cos_sin(inv, positions, factor, precision=precision, out_precision=out_precision)
    got = backend.rope_cos_sin(inv, positions, factor, precision=precision, out_precision=out_precision)
    table_precision = coarser(precision, out_precision or precision)
    for name, g, w in zip(("cos", "sin"), got, want):
        assert tuple(g.shape) == w.shape == (*positions.shape, r // 2)
        assert dtype_name(g.dtype) == "float64"  # the tables keep inv_freq's dtype
        # Both sides round the same angles; they may differ in how cos/sin of that angle is evaluated.
        assert_close(g, w, dtype=table_precision, op="rope", err_msg=f"{name}, precision={precision}, out={out_precision}")


@backend_settings
@given(data=st.data())
def test_apply_rope_agrees_with_the_spec(backend, data):
    head_dim = data.draw(head_dims, label="head_dim")
    r = _rotary(head_dim, data.draw(partials, label="partial"))
    if r is None:
        r = head_dim
    dtype = data.draw(st.sampled_from(backend_dtypes(backend)), label="dtype")
    pairing = data.draw(pairings, label="pairing")
    batch, heads, seq = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 37))
    start = data.draw(st.integers(0, 10**6), label="start")
    inv = base_inv_freq(r, data.draw(bases))
    if data.draw(st.booleans(), label="per_sequence"):
        positions = start + np.arange(batch * seq).reshape(batch, seq)  # cos/sin (batch, seq, r/2)
    else:
        positions = start + np.arange(seq)
    cos, sin = rope_cos_sin(inv, positions)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x_backend, x_spec = as_inputs(backend, rng.standard_normal((batch, heads, seq, head_dim)), dtype)

    got = backend.apply_rope(x_backend, cos, sin, pairing)
    want = apply_rope(x_spec, cos, sin, pairing)
    assert dtype_name(got.dtype) == dtype
    assert_close(got, want, dtype=dtype, op="rope", err_msg=f"pairing={pairing}, rotary_dim={r}/{head_dim}")
    np.testing.assert_array_equal(to_float64(got)[..., r:], x_spec[..., r:])  # the tail passes through exactly


@backend_settings
@given(data=st.data())
def test_a_one_row_table_agrees_with_the_spec(backend, data):
    """cos/sin of one row (``(1, r/2)``, or ``(batch, 1, r/2)``) rotate every position alike on every backend."""
    dtype = data.draw(st.sampled_from(backend_dtypes(backend)), label="dtype")
    pairing = data.draw(pairings, label="pairing")
    batch, seq = data.draw(st.integers(1, 2), label="batch"), data.draw(st.integers(1, 37), label="seq")
    inv = base_inv_freq(16, 10000.0)
    shifts = np.asarray(data.draw(st.lists(st.integers(-10**6, 10**6), min_size=batch, max_size=batch), label="shifts"))
    if data.draw(st.booleans(), label="per_sequence"):
        cos, sin = rope_cos_sin(inv, shifts[:, None])  # (batch, 1, r/2)
    else:
        cos, sin = rope_cos_sin(inv, shifts[:1])  # (1, r/2)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x_backend, x_spec = as_inputs(backend, rng.standard_normal((batch, 3, seq, 24)), dtype)
    got = backend.apply_rope(x_backend, cos, sin, pairing)
    want = apply_rope(x_spec, cos, sin, pairing)
    assert tuple(got.shape) == want.shape == (batch, 3, seq, 24)
    assert_close(got, want, dtype=dtype, op="rope", err_msg=f"pairing={pairing}, table {cos.shape}")


@backend_settings
@given(st.sampled_from(["float32", "bfloat16", "float16"]), pairings, st.integers(0, 10**4))
def test_the_backends_own_low_precision_tables_feed_its_rotation(backend, out_precision, pairing, start):
    """Tables made on the backend (a float32 computation cast to bf16/fp16, as transformers does) used as they are."""
    inv = base_inv_freq(16, 10000.0)
    positions = start + np.arange(9)
    cos, sin = backend.rope_cos_sin(inv, positions, precision="float32", out_precision=out_precision)
    spec_cos, spec_sin = rope_cos_sin(inv, positions, precision="float32", out_precision=out_precision)
    x = np.random.default_rng(start).standard_normal((1, 2, 9, 20)).astype(np.float32)
    got = backend.apply_rope(x, cos, sin, pairing)
    want = apply_rope(x.astype(np.float64), spec_cos, spec_sin, pairing)
    # the tables may differ by an ulp of out_precision; the rotation multiplies that by |x| <~ 4
    tol = 4 * 2 * UNIT_ROUNDOFF[out_precision] + 16 * UNIT_ROUNDOFF["float32"]
    assert_close(got, want, rtol=tol, atol=tol, err_msg=f"out_precision={out_precision}")


def test_bad_rope_inputs_raise_input_errors(backend):
    from yarnref.errors import InputError

    inv = base_inv_freq(8, 10000.0)
    with pytest.raises(InputError, match="pairing"):
        backend.apply_rope(np.zeros((1, 1, 3, 8)), *rope_cos_sin(inv, range(3)), "neox")
    with pytest.raises(InputError, match="cos"):
        backend.apply_rope(np.zeros((1, 1, 4, 8)), *rope_cos_sin(inv, range(3)))
    with pytest.raises(InputError, match="attention_factor"):
        backend.rope_cos_sin(inv, range(3), 0.0)
    with pytest.raises(InputError, match="positions"):
        backend.rope_cos_sin(inv, [0.0, np.inf])
    with pytest.raises(InputError, match="precision"):
        backend.rope_cos_sin(inv, range(3), precision="float8")
