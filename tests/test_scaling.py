"""Properties of the scaling modules, and YaRN values computed by hand in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from yarnref.errors import InputError
from yarnref.rope import base_inv_freq
from yarnref.scaling import (
    DynamicNTKCache,
    correction_dim,
    correction_range,
    deepseek_softmax_scale,
    dynamic_ntk_frequencies,
    dynamic_yarn_frequencies,
    get_mscale,
    interpolate_positions,
    linear_frequencies,
    linear_ramp,
    llama3_freq_divisors,
    llama3_frequencies,
    longrope_attention_factor,
    longrope_frequencies,
    ntk_aware_base,
    ntk_frequencies,
    paper_ramp,
    uses_long_factors,
    vllm_dynamic_ntk_frequencies,
    yarn_attention_factor,
    yarn_frequencies,
)

rotary_dims = st.sampled_from([4, 8, 16, 32, 48, 64, 96, 128, 256])
bases = st.one_of(st.sampled_from([10000.0, 500000.0, 1e6, 1e7, 150000.0]), st.floats(2.0, 1e8))
factors = st.floats(1.0, 128.0)
lengths = st.sampled_from([256, 2048, 4096, 8192, 32768, 262144])


def assert_decreasing_positive(inv_freq):
    assert inv_freq.dtype == np.float64
    assert np.all(np.isfinite(inv_freq)) and np.all(inv_freq > 0)
    assert np.all(np.diff(inv_freq) < 0), "inverse frequencies must decrease with the pair index"


# ---------------------------------------------------------------------------------------------
# Every method is plain RoPE at factor 1.


@given(rotary_dims, bases, lengths, st.floats(0.5, 4.0), st.floats(1.0, 64.0), st.booleans())
def test_every_method_is_rope_at_factor_one(r, b, L, lf, beta_fast, truncate):
    rope = base_inv_freq(r, b)
    assert np.array_equal(linear_frequencies(r, b, 1.0)[0], rope)
    assert linear_frequencies(r, b, 1.0)[1] == 1.0
    np.testing.assert_allclose(ntk_frequencies(r, b, 1.0)[0], rope, rtol=1e-13)
    np.testing.assert_allclose(ntk_frequencies(r, b, 1.0, variant="vllm_fixed")[0], rope, rtol=1e-13)
    np.testing.assert_allclose(ntk_frequencies(r, b, 1.0, variant="vllm_mixed", mixed_b=1.5)[0], rope, rtol=1e-13)
    np.testing.assert_allclose(dynamic_ntk_frequencies(r, b, 1.0, L, 4 * L)[0], ntk_frequencies(r, b, 4.0)[0], rtol=1e-12)
    np.testing.assert_allclose(dynamic_ntk_frequencies(r, b, 1.0, L, None)[0], rope, rtol=1e-13)
    for ramp in ("index", "paper"):
        f, m = yarn_frequencies(r, b, 1.0, L, beta_fast=beta_fast, truncate=truncate, ramp=ramp)
        np.testing.assert_allclose(f, rope, rtol=4e-16, atol=0)  # theta (1 - e) + theta e: one rounding
        assert m == 1.0
    f, m = llama3_frequencies(r, b, 1.0, lf, lf * 4, L)
    np.testing.assert_allclose(f, rope, rtol=4e-16, atol=0)  # (1 - k) theta + k theta: one rounding
    assert m == 1.0
    ones = np.ones(r // 2)
    f, m = longrope_frequencies(r, b, ones, ones, L, factor=1.0, seq_len=2 * L)
    np.testing.assert_array_equal(f, rope)
    assert m == 1.0


# ---------------------------------------------------------------------------------------------
# Linear / PI


@given(rotary_dims, bases, factors, st.lists(st.integers(0, 10**6), min_size=1, max_size=20))
def test_linear_equals_positions_over_s(r, b, s, positions):
    f, m = linear_frequencies(r, b, s)
    assert m == 1.0
    assert_decreasing_positive(f)
    angles_freq = np.asarray(positions, dtype=np.float64)[:, None] * f
    angles_pos = interpolate_positions(positions, s)[:, None] * base_inv_freq(r, b)
    np.testing.assert_allclose(angles_freq, angles_pos, rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------------------------
# NTK


@given(rotary_dims.filter(lambda r: r >= 4), bases, factors)
def test_ntk_aware_keeps_first_pair_and_interpolates_last(r, b, s):
    f, m = ntk_frequencies(r, b, s)
    theta = base_inv_freq(r, b)
    assert m == 1.0
    assert_decreasing_positive(f)
    assert f[0] == 1.0
    np.testing.assert_allclose(f[-1], theta[-1] / s, rtol=1e-12)
    assert ntk_aware_base(b, s, r) == b * s ** (r / (r - 2))


@given(rotary_dims, bases, factors)
def test_vllm_fixed_ntk_scales_every_pair(r, b, s):
    f, _ = ntk_frequencies(r, b, s, variant="vllm_fixed")
    theta = base_inv_freq(r, b)
    np.testing.assert_allclose(f / theta, s ** (-(2 * np.arange(r // 2) + 2) / r), rtol=1e-12)
    np.testing.assert_allclose(f[-1], theta[-1] / s, rtol=1e-12)


def test_ntk_bad_variant_and_dims():
    with pytest.raises(InputError, match="variant"):
        ntk_frequencies(64, 1e4, 2.0, variant="nope")
    with pytest.raises(InputError, match="rotary_dim"):
        ntk_frequencies(2, 1e4, 2.0)
    with pytest.raises(InputError, match="mixed_b"):
        ntk_frequencies(64, 1e4, 2.0, variant="vllm_mixed")


@given(rotary_dims, bases, factors, lengths, st.integers(1, 10**6))
def test_dynamic_ntk_is_rope_up_to_the_trained_length(r, b, s, L, seq_len):
    f, m = dynamic_ntk_frequencies(r, b, s, L, seq_len)
    assert m == 1.0
    assert_decreasing_positive(f)
    if seq_len <= L:
        np.testing.assert_array_equal(f, base_inv_freq(r, b))
    else:  # the NTK ratio is s * ell / L - (s - 1)
        alpha = s * seq_len / L - (s - 1)
        np.testing.assert_allclose(f, ntk_frequencies(r, b, alpha)[0], rtol=1e-12)


def test_dynamic_ntk_cache_depends_on_history():
    r, b, s, L = 128, 10000.0, 2.0, 4096
    cache = DynamicNTKCache(r, b, s, L)
    at_init, _ = cache.update(100)
    np.testing.assert_array_equal(at_init, base_inv_freq(r, b))
    grown, _ = cache.update(16384)
    np.testing.assert_array_equal(grown, dynamic_ntk_frequencies(r, b, s, L, 16384)[0])
    after, _ = cache.update(9000)  # below the cached length, above L: unchanged
    np.testing.assert_array_equal(after, grown)
    fresh, _ = dynamic_ntk_frequencies(r, b, s, L, 9000)
    assert not np.array_equal(after, fresh), "the history must matter"
    reset, _ = cache.update(1000)  # below L after growing: reset
    np.testing.assert_array_equal(reset, base_inv_freq(r, b))
    assert cache.max_seq_len_cached == L
    # The YaRN authors' grow-only cache never goes back.
    grow_only = DynamicNTKCache(r, b, s, L, reset=False)
    grow_only.update(16384)
    np.testing.assert_array_equal(grow_only.update(1000)[0], grown)


def test_vllm_dynamic_is_static():
    r, b = 128, 10000.0
    np.testing.assert_array_equal(vllm_dynamic_ntk_frequencies(r, b, 4.0, 32768)[0], base_inv_freq(r, b))
    f, _ = vllm_dynamic_ntk_frequencies(r, b, 4.0, 32768, max_trained_positions=8192)
    np.testing.assert_allclose(f, dynamic_ntk_frequencies(r, b, 4.0, 8192, 32768)[0], rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# YaRN


@given(rotary_dims, bases, st.floats(1.01, 128.0), lengths, st.floats(1.0, 128.0), st.floats(0.25, 4.0), st.booleans())
def test_yarn_keeps_fast_pairs_and_interpolates_slow_pairs(r, b, s, L, beta_fast, beta_slow, truncate):
    beta_slow = min(beta_slow, beta_fast)
    f, m = yarn_frequencies(r, b, s, L, beta_fast=beta_fast, beta_slow=beta_slow, truncate=truncate)
    theta = base_inv_freq(r, b)
    lo, hi = correction_range(r, b, L, beta_fast, beta_slow, truncate)
    pair = np.arange(r // 2)
    if hi < lo:
        # Only when cd(beta_fast) > r - 1 (a tiny base for the length): lo is not clamped from above, the
        # ramp inverts, and every pair is interpolated, as in transformers, vLLM and the YaRN authors' code.
        np.testing.assert_array_equal(f, theta / s)
    else:
        keep, interp = pair <= lo, pair >= max(hi, lo + 0.001)
        np.testing.assert_array_equal(f[keep], theta[keep])
        np.testing.assert_array_equal(f[interp], theta[interp] / s)
    assert np.all(f <= theta * (1 + 1e-15)) and np.all(f >= theta / s * (1 - 1e-15))
    assert_decreasing_positive(f)
    assert m == 0.1 * math.log(s) + 1.0


@given(rotary_dims, bases, lengths, st.floats(1.0, 64.0), st.floats(0.25, 1.0))
def test_correction_range_definition(r, b, L, beta_fast, beta_slow):
    raw_lo, raw_hi = correction_dim(beta_fast, r, b, L), correction_dim(beta_slow, r, b, L)
    # cd(rho) is the pair index that turns rho times over L tokens: L / lambda = rho there.
    for rho, d in ((beta_fast, raw_lo), (beta_slow, raw_hi)):
        np.testing.assert_allclose(L / (2 * math.pi * b ** (2 * d / r)), rho, rtol=1e-9)
    lo, hi = correction_range(r, b, L, beta_fast, beta_slow, truncate=True)
    assert lo == max(math.floor(raw_lo), 0) and hi == min(math.ceil(raw_hi), r - 1)
    lo, hi = correction_range(r, b, L, beta_fast, beta_slow, truncate=False, clamp="half")
    assert lo == max(raw_lo, 0) and hi == min(raw_hi, r // 2 - 1)


def test_clamp_matters_when_hi_exceeds_the_last_pair():
    # L > 2 pi b: the raw hi exceeds r/2 - 1 (keras-hub#2981).
    r, b, L = 64, 10000.0, 131072
    hi = correction_range(r, b, L)[1]
    assert hi == math.ceil(64 * math.log(131072 / (2 * math.pi)) / (2 * math.log(10000.0))) == 35 > r // 2 - 1
    assert correction_range(r, b, L, clamp="half")[1] == r // 2 - 1
    f_full, _ = yarn_frequencies(r, b, 8.0, L)
    f_half, _ = yarn_frequencies(r, b, 8.0, L, clamp="half")
    assert not np.allclose(f_full, f_half)


def test_linear_ramp_singularity_rules():
    np.testing.assert_array_equal(linear_ramp(3, 3, 6), [0, 0, 0, 0, 1, 1])  # (i - 3) / 0.001
    assert linear_ramp(3, 3, 6)[3] == 0.0
    np.testing.assert_array_equal(linear_ramp(3, 3, 6, epsilon_rule="ggml"), [0, 0, 0, 0, 1, 1])
    # hi < lo: transformers inverts the ramp, ggml makes a step at lo.
    inverted = linear_ramp(4, 2, 6)
    np.testing.assert_array_equal(inverted, [1, 1, 1, 0.5, 0, 0])
    np.testing.assert_array_equal(linear_ramp(4, 2, 6, epsilon_rule="ggml"), [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(linear_ramp(0, 4, 6), [0, 0.25, 0.5, 0.75, 1, 1])
    with pytest.raises(InputError, match="epsilon_rule"):
        linear_ramp(0, 1, 4, epsilon_rule="x")


@given(rotary_dims, bases, st.floats(1.5, 64.0), lengths)
def test_paper_ramp_is_linear_in_rotations(r, b, s, L):
    theta = base_inv_freq(r, b)
    rotations = L * theta / (2 * math.pi)
    gamma = paper_ramp(r, b, L, alpha=1.0, beta=32.0)
    np.testing.assert_allclose(gamma, np.clip((rotations - 1) / 31, 0, 1), rtol=1e-12)
    f, _ = yarn_frequencies(r, b, s, L, ramp="paper")
    np.testing.assert_allclose(f, (1 - gamma) * theta / s + gamma * theta, rtol=1e-14)
    np.testing.assert_array_equal(f[rotations > 32], theta[rotations > 32])
    np.testing.assert_array_equal(f[rotations < 1], theta[rotations < 1] / s)


def test_extrapolation_factor_zero_is_linear_interpolation():
    f, _ = yarn_frequencies(128, 10000.0, 8.0, 4096, extrapolation_factor=0.0)
    np.testing.assert_array_equal(f, base_inv_freq(128, 10000.0) / 8.0)


def test_yarn_attention_factor_precedence():
    s = 40.0
    g = lambda mu: 0.1 * mu * math.log(s) + 1.0  # noqa: E731
    assert yarn_attention_factor(s) == g(1)
    assert yarn_attention_factor(s, attention_factor=1.25) == 1.25  # verbatim, no log
    assert yarn_attention_factor(s, attention_factor=1.25, mscale=1.0, mscale_all_dim=0.5) == 1.25
    assert yarn_attention_factor(s, mscale=1.0, mscale_all_dim=1.0) == 1.0  # DeepSeek-V3
    assert yarn_attention_factor(s, mscale=0.707, mscale_all_dim=0.707) == 1.0  # DeepSeek-V2
    assert yarn_attention_factor(s, mscale=1.0, mscale_all_dim=0.5) == g(1.0) / g(0.5)
    assert yarn_attention_factor(s, mscale=2.0) == g(1)  # a lone mscale is ignored by transformers
    assert yarn_attention_factor(s, mscale=2.0, mscale_all_dim=0) == g(1)
    # Other stacks
    assert yarn_attention_factor(s, mscale=2.0, rule="vllm_deepseek") == g(2.0)
    assert yarn_attention_factor(s, rule="vllm_deepseek") == g(1.0)
    assert yarn_attention_factor(s, attention_factor=0.5, rule="yarn_authors") == g(1) * 0.5
    assert yarn_attention_factor(s, mscale=0.5, mscale_all_dim=0.5, rule="llama.cpp") == g(1) / g(0.5)
    assert yarn_attention_factor(1.0, mscale=1.0, mscale_all_dim=2.0) == 1.0
    assert get_mscale(0.5) == 1.0 and get_mscale(1.0) == 1.0
    with pytest.raises(InputError, match="rule"):
        yarn_attention_factor(s, rule="nope")


def test_deepseek_softmax_scale():
    s = 40.0
    g = 0.1 * 1.0 * math.log(s) + 1.0
    assert deepseek_softmax_scale(192, s, 1.0) == 192 ** (-0.5) * g * g
    assert deepseek_softmax_scale(192, s, None) == 192 ** (-0.5)
    assert deepseek_softmax_scale(192, 1.0, 1.0) == 192 ** (-0.5)


def test_dynamic_yarn():
    r, b, L = 128, 10000.0, 4096
    f, m = dynamic_yarn_frequencies(r, b, L, 2000)
    np.testing.assert_allclose(f, base_inv_freq(r, b), rtol=4e-16, atol=0)  # s = 1: the blend rounds once
    assert m == 1.0
    f, m = dynamic_yarn_frequencies(r, b, L, 8 * L)
    g, n = yarn_frequencies(r, b, 8.0, L)
    np.testing.assert_array_equal(f, g)
    assert m == n == 0.1 * math.log(8.0) + 1.0
    with pytest.raises(InputError, match="factor"):
        dynamic_yarn_frequencies(r, b, L, 8 * L, factor=2.0)


def test_yarn_hand_computed_values_yarn_llama_2_7b_128k():
    """yarn-llama-2-7b-128k: r = 128, b = 10000, s = 32, L = 4096, beta = (32, 1), written out by hand."""
    r, b, s, L = 128, 10000.0, 32.0, 4096
    # Correction dims: cd(rho) = r * ln(L / (2 pi rho)) / (2 ln b)
    cd_fast = 128 * math.log(4096 / (32 * 2 * math.pi)) / (2 * math.log(10000.0))  # 20.94...
    cd_slow = 128 * math.log(4096 / (1 * 2 * math.pi)) / (2 * math.log(10000.0))  # 45.03...
    assert 20.9 < cd_fast < 21.0 and 45.0 < cd_slow < 45.1
    lo, hi = 20, 46  # floor, ceil; inside [0, 127]
    assert correction_range(r, b, L, 32, 1) == (lo, hi)
    assert correction_dim(32, r, b, L) == cd_fast and correction_dim(1, r, b, L) == cd_slow

    f, m = yarn_frequencies(r, b, s, L)
    # Attention factor: 0.1 ln 32 + 1
    assert m == 0.1 * math.log(32.0) + 1.0
    assert abs(m - 1.3465735902799727) < 1e-16

    def theta(i):
        return 1.0 / 10000.0 ** (2 * i / 128)

    # Pairs 0 .. 20 keep theta_i (extrapolation weight 1).
    assert f[0] == 1.0
    assert f[10] == theta(10) == 1.0 / 10000.0 ** (20 / 128)
    assert f[20] == theta(20)
    # Pairs 46 .. 63 are interpolated by exactly 32.
    assert f[46] == theta(46) / 32.0
    assert f[63] == theta(63) / 32.0
    # In between the ramp (i - 20) / (46 - 20) is the interpolation weight.
    for i in (21, 33, 45):
        ramp = (i - 20) / 26
        expected = (theta(i) / 32.0) * (1.0 - (1.0 - ramp)) + theta(i) * (1.0 - ramp)
        assert f[i] == expected, i
    assert abs(f[33] - (theta(33) / 32 * 0.5 + theta(33) * 0.5)) < 1e-18


# ---------------------------------------------------------------------------------------------
# Llama 3


@given(rotary_dims, st.sampled_from([10000.0, 500000.0, 1e6]), st.floats(1.0, 64.0), st.floats(0.5, 4.0),
       st.floats(1.0, 8.0), st.sampled_from([2048, 4096, 8192]))
def test_llama3_schedule(r, b, s, lf, ratio, L):
    hf = lf * ratio
    f, m = llama3_frequencies(r, b, s, lf, hf, L)
    theta = base_inv_freq(r, b)
    wavelen = 2 * math.pi / theta
    assert m == 1.0
    fast, slow = wavelen < L / hf, wavelen > L / lf
    np.testing.assert_array_equal(f[fast], theta[fast])
    np.testing.assert_array_equal(f[slow], theta[slow] / s)
    assert np.all(f <= theta * (1 + 1e-15)) and np.all(f >= theta / s * (1 - 1e-15))
    assert np.all(np.diff(f) < 0) if s > 1 else True
    # continuity: the smooth formula evaluated at the band edges gives the outer values
    for edge, value in ((L / hf, 1.0), (L / lf, 1.0 / s)):
        if hf != lf:
            kappa = (L / edge - lf) / (hf - lf)
            # kappa's own rounding: an ulp of L / edge (~ hf) divided by the band width hf - lf.
            rounding = 4 * 2.0**-52 * hf / (hf - lf)
            assert math.isclose((1 - kappa) / s + kappa, value, rel_tol=1e-12, abs_tol=rounding)
    np.testing.assert_allclose(llama3_freq_divisors(r, b, s, lf, hf, L), theta / f, rtol=0)


def test_llama3_equal_factors_no_nan(recwarn):
    # Llama 4 Scout style: low == high == 1.
    r, b, s, L = 128, 500000.0, 16.0, 8192
    f, _ = llama3_frequencies(r, b, s, 1.0, 1.0, L)
    theta = base_inv_freq(r, b)
    wavelen = 2 * math.pi / theta
    assert np.all(np.isfinite(f))
    np.testing.assert_array_equal(f, np.where(wavelen > L, theta / s, theta))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_llama3_band_edge_exact_wavelength():
    # A pair whose wavelength is exactly L / lf: in the band when lf == hf; kappa = 0 (vLLM) -> theta / s.
    b = 2 * math.pi  # theta_0 = 1, wavelen_0 = 2 pi
    L = 2 * math.pi
    f, _ = llama3_frequencies(4, b, 4.0, 1.0, 1.0, L)
    assert np.all(np.isfinite(f))
    assert f[0] == 1.0 / 4.0


# ---------------------------------------------------------------------------------------------
# LongRoPE


@given(st.sampled_from([32, 64, 96, 128]), bases, st.data())
def test_longrope_switch_and_attention_factor(r, b, data):
    L = data.draw(st.sampled_from([2048, 4096, 8192]))
    short = np.asarray(data.draw(st.lists(st.floats(1.0, 4.0), min_size=r // 2, max_size=r // 2)))
    long = np.asarray(data.draw(st.lists(st.floats(1.0, 80.0), min_size=r // 2, max_size=r // 2)))
    max_pos = L * data.draw(st.sampled_from([1, 2, 32]))
    theta = base_inv_freq(r, b)
    for seq_len, use_long in ((None, False), (L, False), (L + 1, True)):
        f, m = longrope_frequencies(r, b, short, long, L, max_position_embeddings=max_pos, seq_len=seq_len)
        np.testing.assert_array_equal(f, theta / (long if use_long else short))
        s = max_pos / L
        assert m == (1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(L)))
    # Static switch: decided by max_model_len alone.
    f, _ = longrope_frequencies(r, b, short, long, L, factor=2.0, seq_len=10, switch="static", max_model_len=L + 1)
    np.testing.assert_array_equal(f, theta / long)
    f, _ = longrope_frequencies(r, b, short, long, L, factor=2.0, seq_len=10 * L, switch="static", max_model_len=L)
    np.testing.assert_array_equal(f, theta / short)
    # An explicit attention factor wins.
    assert longrope_attention_factor(32.0, L, attention_factor=1.5) == 1.5


def test_longrope_bad_inputs():
    with pytest.raises(InputError, match="short_factor"):
        longrope_frequencies(8, 1e4, [1.0] * 3, [1.0] * 4, 4096, factor=2.0)
    with pytest.raises(InputError, match="max_model_len"):
        uses_long_factors(10, 4096, switch="static")
    with pytest.raises(InputError, match="switch"):
        uses_long_factors(10, 4096, switch="sometimes")
    with pytest.raises(InputError, match="factor"):
        longrope_attention_factor(None, 4096)
