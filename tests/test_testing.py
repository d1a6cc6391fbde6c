"""yarnref.testing: the tolerance table is neither too tight nor vacuous, and the comparison helpers report well."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from yarnref.softmax_attention import attention
from yarnref.errors import InputError
from yarnref.precision import UNIT_ROUNDOFF, round_to
from yarnref.rope import apply_rope, base_inv_freq, rope_cos_sin
from yarnref.testing import OPS, assert_close, assert_error_within, dtype_name, max_error, to_float64, tolerance

bases = st.sampled_from([10000.0, 500000.0, 1e6, 1e7])
rotary_dims = st.sampled_from([8, 32, 64, 128])


# ----------------------------------------------------------------------------- the table


def test_table_cells_follow_the_documented_formulas():
    u32, u16, ubf = UNIT_ROUNDOFF["float32"], UNIT_ROUNDOFF["float16"], UNIT_ROUNDOFF["bfloat16"]
    assert tolerance("float32", op="rope") == pytest.approx((16 * u32, 16 * u32))
    assert tolerance("bfloat16", op="rope") == pytest.approx((2 * ubf, 2 * ubf))
    assert tolerance("float16", op="attention") == pytest.approx((4 * u16, 4 * u16))
    assert tolerance("float64", op="dca") == (1e-11, 1e-11)
    assert tolerance("float32", op="sparse") == (2e-5, 2e-5)
    # the position term: 5 u p for rope angles formed by one product of float32 frequencies (tighter with r and
    # b: e^-t (t + 5), t = 2 ln b / r), times the value scale; 4 x 2 u p for attention-type ops
    assert tolerance("float32", max_position=1e6, op="rope")[1] == pytest.approx(16 * u32 + 5 * u32 * 1e6)
    assert tolerance("float32", max_position=1e6, op="rope", value_scale=4.0)[1] == pytest.approx(
        4 * (16 * u32 + 5 * u32 * 1e6))
    t = 2 * np.log(1e4) / 128
    assert tolerance("float32", max_position=1e6, rotary_dim=128, base=1e4)[1] == pytest.approx(
        16 * u32 + np.exp(-t) * (t + 5) * u32 * 1e6)
    assert tolerance("float32", max_position=1e6, op="attention")[1] == pytest.approx(2e-5 + 8 * u32 * 1e6)
    # ggml's recurrence: (r / (e ln b) + 3) u p
    ggml = (128 / (np.e * np.log(1e4)) + 3) * u32 * 1e5
    assert tolerance("float32", max_position=1e5, angles="ggml", rotary_dim=128, base=1e4)[1] == pytest.approx(
        16 * u32 + ggml)
    assert tolerance("float32", max_position=1e5, op="attention", angles="ggml", rotary_dim=128, base=1e4)[1] == (
        pytest.approx(2e-5 + 4 * ggml))
    # half-precision tables: the angles are float32 unless told otherwise
    assert tolerance("bfloat16", max_position=1000)[1] == pytest.approx(2 * ubf + 5 * u32 * 1000)
    assert tolerance("bfloat16", max_position=1000, angle_dtype="bfloat16")[1] == pytest.approx(2 * ubf + 5 * ubf * 1000)


@given(st.sampled_from([op for op in OPS if op != "frequencies"]), st.floats(0, 1e7), st.floats(0, 1e7))
def test_tolerances_grow_with_position_and_with_lower_precision(op, p1, p2):
    lo, hi = sorted((p1, p2))
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        assert tolerance(dtype, max_position=lo, op=op)[1] <= tolerance(dtype, max_position=hi, op=op)[1]
    for coarse, fine in (("float32", "float64"), ("float16", "float32"), ("bfloat16", "float16")):
        r_c, a_c = tolerance(coarse, max_position=hi, op=op)
        r_f, a_f = tolerance(fine, max_position=hi, op=op)
        assert r_c >= r_f and a_c >= a_f


def test_tolerance_rejects_bad_arguments():
    with pytest.raises(InputError, match="op"):
        tolerance("float32", op="softmax")
    with pytest.raises(InputError, match="dtype"):
        tolerance("int32")
    with pytest.raises(InputError, match="max_position"):
        tolerance("float32", max_position=-1)
    with pytest.raises(InputError, match="max_position"):
        tolerance("float32", max_position=float("inf"))
    with pytest.raises(InputError, match="angles"):
        tolerance("float32", angles="recurrence")
    with pytest.raises(InputError, match="rotary_dim"):
        tolerance("float32", angles="ggml", base=1e4)
    with pytest.raises(InputError, match="value_scale"):
        tolerance("float32", value_scale=-1.0)


def test_dtype_names_from_every_library():
    torch = pytest.importorskip("torch")
    assert dtype_name(np.float32) == dtype_name(np.dtype("float32")) == dtype_name(torch.float32) == "float32"
    assert dtype_name(torch.bfloat16) == "bfloat16"
    assert dtype_name(torch.half) == "float16"
    assert dtype_name("float64") == "float64"


# ----------------------------------------------------------------------------- the position term is needed and enough


@given(bases, rotary_dims, st.integers(0, 10**6), st.floats(1.0, 1.5))
def test_float32_tables_are_within_the_position_tolerance_of_the_float64_spec(base, r, start, factor):
    """What transformers computes (float32 angles, cos, sin) vs the exact tables."""
    inv = base_inv_freq(r, base)
    positions = start + np.arange(17)
    exact = rope_cos_sin(inv, positions, factor)
    for out_precision, dtype in (("float32", "float32"), ("bfloat16", "bfloat16"), ("float16", "float16")):
        fast = rope_cos_sin(inv, positions, factor, precision="float32", out_precision=out_precision)
        for got, want in zip(fast, exact):
            assert_close(got, want, dtype=dtype, op="rope", max_position=positions.max(), err_msg=f"out_precision={out_precision}")


def test_without_the_position_term_float32_tables_fail_at_a_million():
    """The table is not vacuous: at position ~1e6 the float32 angle error is far above 16 ulp."""
    inv = base_inv_freq(128, 500000.0)
    positions = 1_000_000 + np.arange(64)
    exact_cos, _ = rope_cos_sin(inv, positions)
    fast_cos, _ = rope_cos_sin(inv, positions, precision="float32")
    with pytest.raises(AssertionError, match="max abs error"):
        assert_close(fast_cos, exact_cos, dtype="float32", op="rope")
    assert_close(fast_cos, exact_cos, dtype="float32", op="rope", max_position=positions.max())
    # and the error really is of the order of the bound, not far below: these angles come from float64
    # frequencies rounded once (error <= 2 u p), the bound allows a stack's float32 frequencies (5 u p) and a
    # pair norm of sqrt(2) max|cos|: a sixteenth of it at least
    assert max_error(fast_cos, exact_cos) > tolerance("float32", max_position=positions.max(), value_scale=np.sqrt(2))[1] / 16


@given(bases, st.integers(0, 10**6), st.integers(1, 3))
def test_attention_over_float32_angles_is_within_the_attention_position_tolerance(base, start, seed):
    rng = np.random.default_rng(seed)
    head_dim, n = 64, 24
    inv = base_inv_freq(head_dim, base)
    positions = start + np.arange(n)
    q, k, v = (rng.standard_normal((1, 2, n, head_dim)) for _ in range(3))

    def rope_attention(precision):
        cos, sin = rope_cos_sin(inv, positions, precision=precision)
        return attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, return_lse=True)

    (out32, lse32), (out64, lse64) = rope_attention("float32"), rope_attention("float64")
    assert_close(out32, out64, dtype="float32", op="attention", max_position=positions.max())
    assert_close(lse32, lse64, dtype="float32", op="attention", max_position=positions.max())


# ----------------------------------------------------------------------------- assert_close


def test_assert_close_reports_the_worst_entry():
    expected = np.zeros((3, 4))
    expected[0, 0] = 2**-0.5  # value scale sqrt(2) max|expected| = 1
    actual = expected.copy()
    actual[2, 1] = 1e-3
    assert_close(actual, expected, dtype="bfloat16", op="rope")  # 1e-3 < 2 u_bf16
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, dtype="float32", op="rope", err_msg="my check")
    message = str(info.value)
    assert "my check" in message and "1 of 12 entries differ" in message and "(2, 1)" in message and "0.001" in message


def test_assert_close_demands_the_same_non_finite_entries():
    lse = np.array([-np.inf, 1.0, np.nan])
    assert_close(lse.copy(), lse, dtype="float32", op="attention")
    with pytest.raises(AssertionError, match="non-finite mismatch at \\(0,\\)"):
        assert_close(np.array([0.0, 1.0, np.nan]), lse, dtype="float32", op="attention")
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(np.array([np.inf, 1.0, np.nan]), lse, dtype="float32", op="attention")
    with pytest.raises(AssertionError, match="shape mismatch"):
        assert_close(np.zeros(3), np.zeros(4), dtype="float32")


def test_explicit_tolerances_override_the_table():
    assert_close(np.array([1.1]), np.array([1.0]), dtype="float32", atol=0.2)
    with pytest.raises(AssertionError):
        assert_close(np.array([1.1]), np.array([1.0]), dtype="float32", rtol=0.0, atol=0.01)


def test_torch_and_bfloat16_inputs_convert_exactly():
    torch = pytest.importorskip("torch")
    x = torch.randn(5, 7, dtype=torch.float32).to(torch.bfloat16)
    got = to_float64(x)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, x.float().numpy().astype(np.float64))
    assert_close(x, got)  # dtype taken from the tensor: bfloat16
    assert_close([1.0, 2.0], np.array([1.0, 2.0]), dtype="float64")


# ----------------------------------------------------------------------------- the half-precision rule


def _bf16(x):
    return round_to(x, "bfloat16")


def _naive_bf16_dot(a, b):
    """A dot product accumulated in bfloat16, every step rounded: what a careless kernel does."""
    acc = np.zeros(a.shape[:-1])
    for i in range(a.shape[-1]):
        acc = _bf16(acc + _bf16(a[..., i] * b[..., i]))
    return acc


@given(st.integers(0, 2**16), st.integers(8, 256))
def test_float32_accumulation_is_within_the_naive_bfloat16_error(seed, n):
    rng = np.random.default_rng(seed)
    a, b = _bf16(rng.standard_normal((32, n))), _bf16(rng.standard_normal((32, n)))
    spec = np.sum(a * b, axis=-1)
    fast = _bf16(np.sum(a * b, axis=-1).astype(np.float32))  # float32 accumulation, one rounding at the end
    assert_error_within(fast, spec, _naive_bf16_dot(a, b), factor=2.0, atol=1e-12)


def test_the_rule_fails_for_a_result_worse_than_naive():
    rng = np.random.default_rng(0)
    a, b = _bf16(rng.standard_normal((32, 64))), _bf16(rng.standard_normal((32, 64)))
    spec = np.sum(a * b, axis=-1)
    broken = spec + 0.5  # a real bug, far beyond what bfloat16 costs
    with pytest.raises(AssertionError, match="naive"):
        assert_error_within(broken, spec, _naive_bf16_dot(a, b), factor=2.0)
    with pytest.raises(InputError, match="factor"):
        assert_error_within(spec, spec, spec, factor=0.5)
