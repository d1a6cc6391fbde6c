"""The softmax attention reference (yarnref.softmax_attention): blocking, GQA, causal alignment, lse, merge, errors.

Every check compares with a one-shot softmax written here (the whole logit
matrix at once, masks built from explicit index comparisons), or with an
algebraic identity (GQA == repeated k/v, merge == union softmax).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from yarnref.softmax_attention import attention, check_qkv, default_scale, merge_attention, repeat_kv
from yarnref.errors import InputError


def make_qkv(seed, batch=1, q_heads=2, kv_heads=1, q_len=5, kv_len=5, head_dim=4, v_dim=None, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, q_heads, q_len, head_dim)).astype(dtype)
    k = rng.standard_normal((batch, kv_heads, kv_len, head_dim)).astype(dtype)
    v = rng.standard_normal((batch, kv_heads, kv_len, v_dim or head_dim)).astype(dtype)
    return q, k, v


def naive_attention(q, k, v, causal=True, scale=None):
    """One-shot softmax over the whole logit matrix; query t sits at absolute position t + kv_len - q_len."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    q_heads, q_len, head_dim = q.shape[1], q.shape[2], q.shape[3]
    kv_heads, kv_len = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(head_dim) if scale is None else scale
    group = q_heads // kv_heads
    k_full, v_full = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    logits = scale * np.einsum("bhqd,bhkd->bhqk", q, k_full)
    out = np.zeros(q.shape[:3] + (v.shape[-1],))
    lse = np.full(q.shape[:3], -np.inf)
    for t in range(q_len):
        visible = [j for j in range(kv_len) if not causal or j <= t + kv_len - q_len]
        if not visible:
            continue
        row = logits[:, :, t, visible]  # (batch, heads, n_visible)
        m = row.max(axis=-1, keepdims=True)
        w = np.exp(row - m)
        out[:, :, t] = np.einsum("bhk,bhkd->bhd", w / w.sum(-1, keepdims=True), v_full[:, :, visible])
        lse[:, :, t] = np.log(w.sum(-1)) + m[..., 0]
    return out, lse


@st.composite
def shapes(draw, allow_more_queries=False):
    kv_len = draw(st.integers(1, 24))
    q_len = draw(st.integers(1, kv_len + (5 if allow_more_queries else 0)))
    kv_heads = draw(st.integers(1, 3))
    return dict(
        seed=draw(st.integers(0, 2**32 - 1)),
        batch=draw(st.integers(1, 2)),
        kv_heads=kv_heads,
        q_heads=kv_heads * draw(st.integers(1, 3)),
        q_len=q_len,
        kv_len=kv_len,
        head_dim=draw(st.integers(1, 6)),
        v_dim=draw(st.integers(1, 5)),
    )


def assert_close(actual, expected, tol=1e-12):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), rtol=tol, atol=tol)


@given(s=shapes(), causal=st.booleans(), block_size=st.integers(1, 30), scale=st.sampled_from([None, 0.3, 2.0]))
def test_blocked_equals_one_shot(s, causal, block_size, scale):
    q, k, v = make_qkv(**s)
    out, lse = attention(q, k, v, causal=causal, scale=scale, return_lse=True, block_size=block_size)
    want_out, want_lse = naive_attention(q, k, v, causal=causal, scale=scale)
    assert out.shape == want_out.shape and lse.shape == q.shape[:3]
    assert_close(out, want_out)
    assert_close(lse, want_lse)
    one_block = attention(q, k, v, causal=causal, scale=scale, block_size=s["q_len"])
    assert_close(out, one_block, 1e-14)


@given(s=shapes(), causal=st.booleans())
def test_gqa_equals_repeated_kv(s, causal):
    q, k, v = make_qkv(**s)
    group = s["q_heads"] // s["kv_heads"]
    grouped, lse_g = attention(q, k, v, causal=causal, return_lse=True)
    repeated, lse_r = attention(q, repeat_kv(k, group), repeat_kv(v, group), causal=causal, return_lse=True)
    assert_close(grouped, repeated, 1e-14)
    assert_close(lse_g, lse_r, 1e-14)
    # head h reads kv head h // group: perturbing one key of kv head 0 changes the lse of exactly
    # the first `group` query heads (key 0 is visible to every query, causal or not).
    k2 = k.copy()
    k2[:, 0, 0] += 1.0
    _, lse2 = attention(q, k2, v, causal=causal, return_lse=True)
    changed = np.abs(lse2 - lse_g).max(axis=(0, 2)) > 0
    assert changed[:group].all() and not changed[group:].any()


@given(s=shapes())
def test_causal_alignment_is_bottom_right(s):
    # The queries are the last q_len of kv_len positions: a suffix of the full prefill's rows.
    q_full, k, v = make_qkv(**{**s, "q_len": s["kv_len"]})
    full, full_lse = attention(q_full, k, v, causal=True, return_lse=True)
    m = s["q_len"]
    part, part_lse = attention(q_full[:, :, -m:], k, v, causal=True, return_lse=True)
    assert_close(part, full[:, :, -m:])
    assert_close(part_lse, full_lse[:, :, -m:])
    # A decode step (one query) sees every key: causal == non-causal.
    assert_close(attention(q_full[:, :, -1:], k, v, causal=True), attention(q_full[:, :, -1:], k, v, causal=False))


def test_causal_alignment_hand_example():
    # 2 queries over 3 keys with logits all equal: query 0 (position 1) averages v[0:2], query 1 averages v[0:3].
    q = np.zeros((1, 1, 2, 2))
    k = np.zeros((1, 1, 3, 2))
    v = np.arange(3.0).reshape(1, 1, 3, 1)
    out, lse = attention(q, k, v, causal=True, return_lse=True)
    assert_close(out[0, 0, :, 0], [0.5, 1.0])
    assert_close(lse[0, 0], [math.log(2), math.log(3)])


@given(s=shapes(), causal=st.booleans())
def test_lse_is_log_sum_exp_of_the_logits(s, causal):
    q, k, v = make_qkv(**s)
    out, lse = attention(q, k, v, causal=causal, return_lse=True)
    group = s["q_heads"] // s["kv_heads"]
    logits = np.einsum("bhqd,bhkd->bhqk", q, np.repeat(k, group, axis=1)) / math.sqrt(s["head_dim"])
    if causal:
        t = np.arange(s["q_len"])[:, None] + s["kv_len"] - s["q_len"]
        logits = np.where(np.arange(s["kv_len"])[None, :] <= t, logits, -np.inf)
    # exp(lse) * out == sum_j exp(logit_j) v_j  (the unnormalised output)
    unnormalised = np.exp(logits) @ np.repeat(v, group, axis=1)
    assert_close(np.exp(lse), np.exp(logits).sum(-1))
    assert_close(np.exp(lse)[..., None] * out, unnormalised, 1e-11)


@given(s=shapes(), n_parts=st.integers(1, 4), data=st.data())
def test_merge_equals_union_softmax(s, n_parts, data):
    q, k, v = make_qkv(**s)
    # A random partition of the keys (not contiguous) into n_parts sets, some maybe empty.
    labels = np.array(data.draw(st.lists(st.integers(0, n_parts - 1), min_size=s["kv_len"], max_size=s["kv_len"])))
    outputs, lses = [], []
    for p in range(n_parts):
        keys = np.flatnonzero(labels == p)
        if keys.size == 0:  # an empty part: output 0, lse -inf (what a kernel returns for no keys)
            outputs.append(np.zeros(q.shape[:3] + (v.shape[-1],)))
            lses.append(np.full(q.shape[:3], -np.inf))
            continue
        o, l = attention(q, k[:, :, keys], v[:, :, keys], causal=False, return_lse=True)
        outputs.append(o)
        lses.append(l)
    merged, merged_lse = merge_attention(outputs, lses)
    union, union_lse = attention(q, k, v, causal=False, return_lse=True)
    assert_close(merged, union)
    assert_close(merged_lse, union_lse)
    # order does not matter
    again, again_lse = merge_attention(outputs[::-1], lses[::-1])
    assert_close(again, merged)
    assert_close(again_lse, merged_lse)


def test_merge_of_a_causal_split():
    # Keys [0, 4) without a mask plus keys [4, 9) with the causal mask == causal attention over all 9.
    q, k, v = make_qkv(3, q_heads=2, kv_heads=2, q_len=5, kv_len=9)
    a = attention(q, k[:, :, :4], v[:, :, :4], causal=False, return_lse=True)
    b = attention(q, k[:, :, 4:], v[:, :, 4:], causal=True, return_lse=True)
    merged, lse = merge_attention([a[0], b[0]], [a[1], b[1]])
    want, want_lse = attention(q, k, v, causal=True, return_lse=True)
    assert_close(merged, want)
    assert_close(lse, want_lse)


def test_merge_with_only_empty_parts():
    shape = (1, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, lse = merge_attention([np.zeros(shape + (4,))] * 2, [np.full(shape, -np.inf)] * 2)
    assert np.all(out == 0) and np.all(lse == -np.inf)


def test_merge_keeps_the_first_outputs_dtype():
    o = np.ones((1, 1, 2, 3), dtype=np.float32)
    out, lse = merge_attention([o, o], [np.zeros((1, 1, 2)), np.zeros((1, 1, 2))])
    assert out.dtype == np.float32 and lse.dtype == np.float64
    assert_close(lse, np.full((1, 1, 2), math.log(2)))


@pytest.mark.parametrize("block_size", [1, 2, 512])
def test_rows_with_no_keys(block_size):
    # q_len > kv_len with the bottom-right mask: the first q_len - kv_len queries see no key.
    q, k, v = make_qkv(9, q_len=6, kv_len=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from exp/log of empty rows
        out, lse = attention(q, k, v, causal=True, return_lse=True, block_size=block_size)
    assert np.all(out[:, :, :2] == 0) and np.all(lse[:, :, :2] == -np.inf)
    assert np.all(np.isfinite(lse[:, :, 2:]))
    want_out, want_lse = naive_attention(q, k, v, causal=True)
    assert_close(out, want_out)
    assert_close(lse, want_lse)


def test_dtype_and_default_scale():
    q, k, v = make_qkv(4, q_len=3, kv_len=3, head_dim=16, dtype=np.float32)
    out, lse = attention(q, k, v, return_lse=True)
    assert out.dtype == np.float32 and lse.dtype == np.float64
    assert default_scale(16) == 0.25
    assert_close(out, attention(q, k, v, scale=0.25), 0)
    assert_close(out, naive_attention(q, k, v)[0], 1e-6)


def test_check_qkv_returns_the_sizes():
    q, k, v = make_qkv(0, batch=2, q_heads=6, kv_heads=2, q_len=3, kv_len=7, head_dim=5, v_dim=4)
    assert check_qkv(q, k, v) == (2, 6, 2, 3, 7, 5)


@pytest.mark.parametrize(
    "q_shape, k_shape, v_shape, param",
    [
        ((2, 3, 4), (1, 1, 3, 4), (1, 1, 3, 4), "q"),
        ((1, 2, 3, 4), (1, 1, 3), (1, 1, 3, 4), "k"),
        ((1, 2, 3, 4), (1, 1, 3, 4), (1, 3, 4), "v"),
        ((1, 2, 3, 4), (2, 1, 3, 4), (2, 1, 3, 4), "k"),  # batch differs
        ((1, 2, 3, 4), (1, 1, 3, 5), (1, 1, 3, 4), "k"),  # head_dim differs
        ((1, 2, 3, 4), (1, 1, 3, 4), (1, 1, 2, 4), "v"),  # kv_len differs
        ((1, 2, 3, 4), (1, 2, 3, 4), (1, 1, 3, 4), "v"),  # kv heads differ
        ((1, 3, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4), "k"),  # 2 kv heads do not divide 3
        ((1, 2, 0, 4), (1, 1, 3, 4), (1, 1, 3, 4), "q"),  # no query
        ((1, 2, 3, 4), (1, 1, 0, 4), (1, 1, 0, 4), "q"),  # no key
    ],
)
def test_bad_shapes_raise_input_error(q_shape, k_shape, v_shape, param):
    with pytest.raises(InputError) as info:
        attention(np.zeros(q_shape), np.zeros(k_shape), np.zeros(v_shape))
    assert info.value.param == param


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(scale=0.0), "scale"),
        (dict(scale=-1.0), "scale"),
        (dict(scale=float("nan")), "scale"),
        (dict(scale=True), "scale"),
        (dict(scale="0.5"), "scale"),
        (dict(causal="yes"), "causal"),
        (dict(causal=1), "causal"),
        (dict(block_size=0), "block_size"),
        (dict(block_size=2.0), "block_size"),
    ],
)
def test_bad_options_raise_input_error(kwargs, param):
    q, k, v = make_qkv(0)
    with pytest.raises(InputError) as info:
        attention(q, k, v, **kwargs)
    assert info.value.param == param


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_integer_arrays_raise_input_error(name):
    # The output takes q's dtype: an integer q would silently truncate it.
    arrays = dict(zip("qkv", make_qkv(0)))
    arrays[name] = arrays[name].astype(np.int64)
    with pytest.raises(InputError) as info:
        attention(arrays["q"], arrays["k"], arrays["v"])
    assert info.value.param == name


def test_merge_rejects_bad_inputs():
    o, l = np.zeros((1, 1, 2, 3)), np.zeros((1, 1, 2))
    with pytest.raises(InputError) as info:
        merge_attention([], [])
    assert info.value.param == "outputs"
    with pytest.raises(InputError) as info:
        merge_attention([o, o], [l])
    assert info.value.param == "outputs"
    with pytest.raises(InputError) as info:
        merge_attention([o, np.zeros((1, 1, 3, 3))], [l, np.zeros((1, 1, 3))])
    assert info.value.param == "outputs[1]"
    with pytest.raises(InputError) as info:
        merge_attention([o], [np.zeros((1, 1, 3))])
    assert info.value.param == "outputs[0]"
