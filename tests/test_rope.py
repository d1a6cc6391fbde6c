"""Properties of the RoPE core (yarnref.rope) and the precision emulation (yarnref.precision)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import yarnref
from yarnref.errors import InputError
from yarnref.precision import round_to
from yarnref.rope import (
    apply_rope,
    base_inv_freq,
    half_to_interleaved,
    interleaved_to_half,
    rope_angles,
    rope_cos_sin,
    rotary_dim,
)

head_dims = st.sampled_from([8, 16, 32, 64, 80, 128])
partials = st.sampled_from([1.0, 0.5, 0.25])
bases = st.sampled_from([10000.0, 500000.0, 1e6, 1e7])


def test_base_inv_freq_matches_the_roformer_formula():
    inv = base_inv_freq(8, 10000.0)
    expected = np.array([1.0, 10000.0 ** (-2 / 8), 10000.0 ** (-4 / 8), 10000.0 ** (-6 / 8)])
    np.testing.assert_allclose(inv, expected, rtol=1e-15)
    assert inv.dtype == np.float64


def test_rotary_dim_and_its_errors():
    assert rotary_dim(128) == 128
    assert rotary_dim(80, 0.5) == 40
    assert rotary_dim(128, 0.25) == 32
    with pytest.raises(InputError, match="rotary_dim"):
        rotary_dim(10, 0.5)  # 5 is odd
    with pytest.raises(InputError, match="partial_rotary_factor"):
        rotary_dim(128, 1.5)
    with pytest.raises(InputError, match="head_dim"):
        rotary_dim(0)


@given(head_dims, partials, bases, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(-1000, 1000))
def test_scores_depend_only_on_the_relative_position(head_dim, partial, base, m, n, shift):
    """RoFormer Eq. (16): <R_m q, R_n k> = <R_{m+t} q, R_{n+t} k>."""
    r = rotary_dim(head_dim, partial)
    inv = base_inv_freq(r, base)
    rng = np.random.default_rng(head_dim + m)
    q = rng.standard_normal((1, 1, 1, head_dim))
    k = rng.standard_normal((1, 1, 1, head_dim))
    t = max(shift, -min(m, n))

    def score(pm, pn):
        cq, sq = rope_cos_sin(inv, [pm])
        ck, sk = rope_cos_sin(inv, [pn])
        return float(np.sum(apply_rope(q, cq, sq) * apply_rope(k, ck, sk)))

    # float64 angles at position ~1e6 carry ~1e-10 absolute error
    assert score(m, n) == pytest.approx(score(m + t, n + t), rel=1e-8, abs=1e-8)


@given(head_dims, partials, st.sampled_from(["half", "interleaved", "interleaved_in_half_out"]))
def test_rotation_preserves_norms_and_passes_the_tail(head_dim, partial, pairing):
    r = rotary_dim(head_dim, partial)
    rng = np.random.default_rng(head_dim)
    x = rng.standard_normal((2, 3, 5, head_dim))
    cos, sin = rope_cos_sin(base_inv_freq(r, 10000.0), np.arange(5) * 977)
    y = apply_rope(x, cos, sin, pairing=pairing)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-13)
    np.testing.assert_array_equal(y[..., r:], x[..., r:])


@given(head_dims, partials, st.integers(0, 10**6))
def test_the_pairings_are_a_permutation_of_each_other(head_dim, partial, position):
    """interleaved(x) == P^-1 half(P x), with P moving 2i -> i and 2i+1 -> i + r/2."""
    r = rotary_dim(head_dim, partial)
    x = np.random.default_rng(position).standard_normal((1, 2, 3, head_dim))
    cos, sin = rope_cos_sin(base_inv_freq(r, 10000.0), position + np.arange(3))
    via_half = half_to_interleaved(apply_rope(interleaved_to_half(x, r), cos, sin, "half"), r)
    np.testing.assert_allclose(apply_rope(x, cos, sin, "interleaved"), via_half, rtol=0, atol=1e-12)
    # transformers' DeepSeek-V3 reads interleaved pairs and writes half-split order
    np.testing.assert_allclose(apply_rope(x, cos, sin, "interleaved_in_half_out"), interleaved_to_half(via_half, r), atol=1e-12)


def test_rotation_of_a_single_pair_by_hand():
    x = np.array([1.0, 0.0, 0.0, 1.0]).reshape(1, 1, 1, 4)  # half pairing: planes (x0, x2), (x1, x3)
    inv = np.array([1.0, 0.5])
    cos, sin = rope_cos_sin(inv, [math.pi / 2])
    y = apply_rope(x, cos, sin, "half").ravel()
    # plane 0 (1, 0) by 90 degrees -> (0, 1); plane 1 (0, 1) by 45 degrees -> (-sin 45, cos 45)
    np.testing.assert_allclose(y, [0.0, -math.sqrt(0.5), 1.0, math.sqrt(0.5)], atol=1e-15)


def test_attention_factor_multiplies_cos_and_sin():
    inv = base_inv_freq(16, 10000.0)
    c1, s1 = rope_cos_sin(inv, np.arange(7))
    c2, s2 = rope_cos_sin(inv, np.arange(7), attention_factor=1.25)
    np.testing.assert_allclose(c2, 1.25 * c1, rtol=1e-15)
    np.testing.assert_allclose(s2, 1.25 * s1, rtol=1e-15)


def test_per_sequence_positions():
    inv = base_inv_freq(8, 10000.0)
    pos = np.array([[0, 1, 2], [10, 11, 12]])
    cos, sin = rope_cos_sin(inv, pos)  # (2, 3, 4)
    x = np.random.default_rng(1).standard_normal((2, 3, 3, 8))
    y = apply_rope(x, cos, sin)
    for b in range(2):
        cb, sb = rope_cos_sin(inv, pos[b])
        np.testing.assert_allclose(y[b : b + 1], apply_rope(x[b : b + 1], cb, sb), atol=1e-15)


@given(st.sampled_from(["half", "interleaved", "interleaved_in_half_out"]), st.booleans(), st.integers(0, 10**6), st.integers(1, 9))
def test_a_one_row_table_rotates_every_position_alike(pairing, batched, shift, seq):
    """A ``seq = 1`` table broadcasts: the same result as that row repeated for every position."""
    inv = base_inv_freq(16, 10000.0)
    cos, sin = rope_cos_sin(inv, [shift])  # (1, r/2)
    x = np.random.default_rng(shift).standard_normal((2, 3, seq, 20))
    if batched:
        cos, sin = np.stack([cos, 2 * cos]), np.stack([sin, 2 * sin])  # (batch, 1, r/2), a row per sequence
    repeated = [np.repeat(t, seq, axis=-2) for t in (cos, sin)]
    np.testing.assert_array_equal(apply_rope(x, cos, sin, pairing), apply_rope(x, *repeated, pairing))


def test_float32_angles_match_a_float32_computation():
    inv = base_inv_freq(128, 500000.0)
    pos = np.array([0, 1, 4095, 131071, 1_000_000])
    got = rope_angles(inv, pos, precision="float32")
    expected = pos.astype(np.float32)[:, None] * inv.astype(np.float32)  # float32 product, as torch does
    np.testing.assert_array_equal(got, expected.astype(np.float64))
    # at position 1e6 the fastest pair's float32 angle is off by up to half an ulp of 1e6
    assert abs(got[-1, 0] - 1e6) <= 2.0**-5


def test_bfloat16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(10000) * np.logspace(-30, 30, 10000)
    x = np.concatenate([x, [0.0, -0.0, 1.0, 1.00390625, 1.01171875, 65504.0, 3.0e38, np.inf, -np.inf]])
    ours = round_to(x, "bfloat16")
    theirs = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16).to(torch.float64).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(round_to(np.array([np.nan]), "bfloat16")).all()


def test_cos_sin_as_transformers_computes_them():
    """float32 angles, float32 cos/sin times the attention factor, cast to bfloat16 (LlamaRotaryEmbedding.forward)."""
    torch = pytest.importorskip("torch")
    inv = base_inv_freq(64, 10000.0)
    pos = np.arange(0, 70000, 7)
    factor = 0.1 * math.log(8.0) + 1.0
    cos, sin = rope_cos_sin(inv, pos, factor, precision="float32", out_precision="bfloat16")
    inv_t = torch.from_numpy(inv).float()
    freqs = torch.from_numpy(pos).float()[:, None] * inv_t[None, :]
    cos_t = (freqs.cos() * factor).to(torch.bfloat16).double().numpy()
    sin_t = (freqs.sin() * factor).to(torch.bfloat16).double().numpy()
    # torch's float32 cos may differ from NumPy's by an ulp before the bf16 cast; compare at bf16 resolution
    np.testing.assert_allclose(cos, cos_t, atol=2.0**-7)
    np.testing.assert_allclose(sin, sin_t, atol=2.0**-7)
    assert np.mean(cos == cos_t) > 0.99


def test_bad_inputs_name_the_parameter():
    inv = base_inv_freq(8, 10000.0)
    cos, sin = rope_cos_sin(inv, np.arange(3))
    x = np.zeros((1, 1, 3, 8))
    with pytest.raises(InputError, match="pairing"):
        apply_rope(x, cos, sin, pairing="neox")
    with pytest.raises(InputError, match="cos"):
        apply_rope(np.zeros((1, 1, 4, 8)), cos, sin)
    with pytest.raises(InputError, match="cos"):
        apply_rope(np.zeros((1, 1, 3, 6)), cos, sin)  # rotary dim 8 > head_dim 6
    with pytest.raises(InputError, match="sin"):
        apply_rope(x, cos, sin[:, :2])
    with pytest.raises(InputError, match="x"):
        apply_rope(np.zeros((1, 1, 3, 8), dtype=np.int64), cos, sin)
    with pytest.raises(InputError, match="positions"):
        rope_cos_sin(inv, [0, np.nan])
    with pytest.raises(InputError, match="attention_factor"):
        rope_cos_sin(inv, [0], attention_factor=0)
    with pytest.raises(InputError, match="precision"):
        rope_cos_sin(inv, [0], precision="float8")
    with pytest.raises(InputError, match="base"):
        base_inv_freq(8, 1.0)
    with pytest.raises(InputError, match="rotary_dim"):
        base_inv_freq(7, 10000.0)


def test_public_names_dispatch_to_the_spec():
    inv = yarnref.base_inv_freq(8, 10000.0)
    c, s = yarnref.rope_cos_sin(inv, np.arange(4))
    c2, s2 = rope_cos_sin(inv, np.arange(4))
    np.testing.assert_array_equal(c, c2)
    assert yarnref.get_backend().name == "numpy"
