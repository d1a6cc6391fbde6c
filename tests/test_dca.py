"""Dual Chunk Attention (yarnref.dca): position ids, the distance matrix, attention, temperature, config.

The strongest check is against a brute-force DCA written here from the
distance matrix alone: by RoPE's relativity (RoFormer Eq. 16)
``<R(a) q, R(b) k> = <R(a - b) q, k>``, so the logit of a pair is the query
rotated by the pair's effective distance against the un-rotated key.  The
matrix itself is pinned by a hand-worked example.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yarnref.softmax_attention import attention
from yarnref.dca import (
    DCAConfig,
    chunkllama_mscale,
    dca_attention,
    dca_config,
    dca_position_ids,
    dca_relative_positions,
    dca_segments,
    dca_temperature,
    qwen_attention_scale,
)
from yarnref.errors import ConfigError, InputError
from yarnref.rope import apply_rope, base_inv_freq, rope_cos_sin

# ----------------------------------------------------------------------------- helpers


def make_qkv(seed, batch=1, q_heads=2, kv_heads=1, q_len=5, kv_len=5, head_dim=8, v_dim=None, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, q_heads, q_len, head_dim)).astype(dtype)
    k = rng.standard_normal((batch, kv_heads, kv_len, head_dim)).astype(dtype)
    v = rng.standard_normal((batch, kv_heads, kv_len, v_dim or head_dim)).astype(dtype)
    return q, k, v


def rope_causal_attention(q, k, v, inv_freq, scale=None, pairing="half", attention_factor=1.0):
    """Plain RoPE attention: rotate at the true positions 0..kv_len-1, then causal softmax attention."""
    kv_len, q_len = k.shape[2], q.shape[2]
    k_cos, k_sin = rope_cos_sin(inv_freq, np.arange(kv_len), attention_factor)
    q_cos, q_sin = rope_cos_sin(inv_freq, np.arange(kv_len - q_len, kv_len), attention_factor)
    q_rot = apply_rope(q.astype(np.float64), q_cos, q_sin, pairing)
    k_rot = apply_rope(k.astype(np.float64), k_cos, k_sin, pairing)
    return attention(q_rot, k_rot, v.astype(np.float64), causal=True, scale=scale, return_lse=True)


def brute_force_dca(q, k, v, inv_freq, chunk_size, local_size, scale=None, pairing="half", attention_factor=1.0, pi_factor=1.0, logit_factor=None):
    """DCA from the effective-distance matrix: logit[i, j] = <R(M[i, j]) q_i, k_j> * scale * logit_factor[i, j]."""
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(head_dim) if scale is None else scale
    rel = dca_relative_positions(kv_len, chunk_size, local_size)[kv_len - q_len :]  # (q_len, kv_len)
    k_full = np.repeat(k.astype(np.float64), q_heads // kv_heads, axis=1)
    v_full = np.repeat(v.astype(np.float64), q_heads // kv_heads, axis=1)
    zero_cos, zero_sin = rope_cos_sin(inv_freq, np.zeros(kv_len), attention_factor)  # R(0) * m: scales the rotary part
    k0 = apply_rope(k_full, zero_cos, zero_sin, pairing)
    logits = np.full((batch, q_heads, q_len, kv_len), -np.inf)
    for delta in np.unique(rel[rel >= 0]):
        cos, sin = rope_cos_sin(inv_freq, np.full(q_len, delta / pi_factor), attention_factor)
        q_delta = apply_rope(q.astype(np.float64), cos, sin, pairing)
        logits = np.where(rel == delta, q_delta @ np.swapaxes(k0, -1, -2), logits)
    logits = logits * scale * (1.0 if logit_factor is None else logit_factor)
    row_max = logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits - row_max)
    denom = weights.sum(axis=-1, keepdims=True)
    return (weights @ v_full) / denom, (np.log(denom) + row_max)[..., 0]


def assert_close(actual, expected, tol=1e-12):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), rtol=tol, atol=tol)


@st.composite
def dca_case(draw, short=False):
    """Sizes for a DCA call: chunk sizes, lengths, heads, rotary width, pairing."""
    chunk_size = draw(st.integers(3 if short else 2, 10))
    if short:  # N <= chunk_size + 1 with chunk_len > local_size: DCA must be plain RoPE
        local_size = draw(st.integers(1, (chunk_size - 1) // 2))
        kv_len = draw(st.integers(1, chunk_size + 1))
    else:
        local_size = draw(st.integers(1, chunk_size - 1))
        kv_len = draw(st.integers(1, 3 * chunk_size + 3))
    q_len = draw(st.integers(1, kv_len))
    kv_heads = draw(st.integers(1, 2))
    head_dim = 2 * draw(st.integers(1, 4))
    return dict(
        seed=draw(st.integers(0, 2**32 - 1)),
        chunk_size=chunk_size,
        local_size=local_size,
        kv_len=kv_len,
        q_len=q_len,
        batch=draw(st.integers(1, 2)),
        kv_heads=kv_heads,
        q_heads=kv_heads * draw(st.integers(1, 3)),
        head_dim=head_dim,
        half_rotary=draw(st.integers(1, head_dim // 2)),
        pairing=draw(st.sampled_from(["half", "interleaved"])),
        base=draw(st.sampled_from([10.0, 10000.0])),
    )


def unpack(case):
    q, k, v = make_qkv(case["seed"], case["batch"], case["q_heads"], case["kv_heads"], case["q_len"], case["kv_len"], case["head_dim"])
    inv_freq = base_inv_freq(2 * case["half_rotary"], case["base"])
    return q, k, v, inv_freq


# ----------------------------------------------------------------------------- position ids and distances


def _lower(rows):
    """Rows of a lower triangle, padded with -1 (masked) to a square matrix."""
    n = len(rows)
    return np.array([row + [-1] * (n - len(row)) for row in rows], dtype=np.int64)


# chunk_size C = 8, local_size 2, so chunk_len L = 6: chunks [0,6) [6,12) [12,18) [18,20).
# Keys sit at j mod 6.  Queries: intra r(i); successive min(r(i) + 6, 8) = 6, 7, 8, 8, 8, 8 for
# r = 0..5; inter min(11, 8) = 8.  Worked by hand, row by row.
HAND_TABLE_C8_LOCAL2_N20 = _lower([
    [0],
    [1, 0],
    [2, 1, 0],
    [3, 2, 1, 0],
    [4, 3, 2, 1, 0],
    [5, 4, 3, 2, 1, 0],
    [6, 5, 4, 3, 2, 1, 0],                      # i=6, r=0: succ 6 - r(j); intra
    [7, 6, 5, 4, 3, 2, 1, 0],                   # i=7, r=1: succ 7 - r(j)
    [8, 7, 6, 5, 4, 3, 2, 1, 0],                # i=8, r=2: succ 8 - r(j) (still exact: r <= local)
    [8, 7, 6, 5, 4, 3, 3, 2, 1, 0],             # i=9, r=3: succ clamped at 8
    [8, 7, 6, 5, 4, 3, 4, 3, 2, 1, 0],
    [8, 7, 6, 5, 4, 3, 5, 4, 3, 2, 1, 0],
    [8, 7, 6, 5, 4, 3, 6, 5, 4, 3, 2, 1, 0],   # i=12: inter 8 - r(j) on chunk 0, succ 6 - r(j) on chunk 1
    [8, 7, 6, 5, 4, 3, 7, 6, 5, 4, 3, 2, 1, 0],
    [8, 7, 6, 5, 4, 3, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    [8, 7, 6, 5, 4, 3, 8, 7, 6, 5, 4, 3, 3, 2, 1, 0],
    [8, 7, 6, 5, 4, 3, 8, 7, 6, 5, 4, 3, 4, 3, 2, 1, 0],
    [8, 7, 6, 5, 4, 3, 8, 7, 6, 5, 4, 3, 5, 4, 3, 2, 1, 0],
    [8, 7, 6, 5, 4, 3, 8, 7, 6, 5, 4, 3, 6, 5, 4, 3, 2, 1, 0],     # i=18: inter on chunks 0-1, succ on 2
    [8, 7, 6, 5, 4, 3, 8, 7, 6, 5, 4, 3, 7, 6, 5, 4, 3, 2, 1, 0],  # i=19: the short last chunk
])


def test_hand_worked_relative_positions():
    rel = dca_relative_positions(20, 8, 2)
    assert rel.dtype == np.int64 and rel.shape == (20, 20)
    np.testing.assert_array_equal(rel, HAND_TABLE_C8_LOCAL2_N20)
    i, j = np.indices(rel.shape)
    seen = rel[j <= i]
    assert seen.max() == 8  # the largest distance is chunk_size
    assert seen.min() >= 0
    same_chunk = (i // 6 == j // 6) & (j <= i)
    np.testing.assert_array_equal(rel[same_chunk], (i - j)[same_chunk])


def test_hand_worked_position_ids():
    ids = dca_position_ids(20, 8, 2)
    r = [0, 1, 2, 3, 4, 5] * 3 + [0, 1]
    np.testing.assert_array_equal(ids.key, r)
    np.testing.assert_array_equal(ids.intra, r)
    np.testing.assert_array_equal(ids.successive, [6, 7, 8, 8, 8, 8] * 3 + [6, 7])
    np.testing.assert_array_equal(ids.inter, [8] * 20)
    np.testing.assert_array_equal(ids.successive_critical, [6, 7, 8, 9, 10, 11] * 3 + [6, 7])
    np.testing.assert_array_equal(ids.inter_critical, [8, 9, 10, 11, 12, 13] * 3 + [8, 9])
    for a in ids:
        assert a.dtype == np.int64 and a.shape == (20,)


def test_inter_position_when_chunks_are_short():
    # chunk_len 3 <= local 5: the inter position is 2L - 1 = 5, not chunk_size.
    ids = dca_position_ids(10, 8, 5)
    np.testing.assert_array_equal(ids.inter, [5] * 10)
    np.testing.assert_array_equal(ids.successive, [3, 4, 5] * 3 + [3])


@given(seq_len=st.integers(1, 40), chunk_size=st.integers(2, 12), data=st.data())
def test_relative_positions_properties(seq_len, chunk_size, data):
    local_size = data.draw(st.integers(1, chunk_size - 1))
    chunk_len = chunk_size - local_size
    rel = dca_relative_positions(seq_len, chunk_size, local_size)
    i, j = np.indices(rel.shape)
    causal = j <= i
    assert np.all(rel[~causal] == -1)
    assert np.all((rel[causal] >= 0) & (rel[causal] <= chunk_size))
    assert np.all(rel[causal] <= (i - j)[causal])  # DCA never overstates a distance ...
    assert np.all(rel[j < i] >= 1)  # ... and never puts two tokens at the same place
    assert np.all(np.diag(rel) == 0)
    same = (i // chunk_len == j // chunk_len) & causal
    np.testing.assert_array_equal(rel[same], (i - j)[same])
    # Inter: the distance depends on the key only.
    inter = (i // chunk_len - j // chunk_len) >= 2
    for col in range(seq_len):
        assert len(set(rel[inter[:, col], col])) <= 1


@given(chunk_size=st.integers(3, 14), data=st.data())
def test_relative_positions_exact_up_to_chunk_size_plus_one(chunk_size, data):
    local_size = data.draw(st.integers(1, (chunk_size - 1) // 2))  # chunk_len > local_size
    n = chunk_size + 1
    rel = dca_relative_positions(n, chunk_size, local_size)
    i, j = np.indices(rel.shape)
    np.testing.assert_array_equal(rel, np.where(j <= i, i - j, -1))
    # One more token and the successive position clamps: the last query sees a shorter distance.
    rel = dca_relative_positions(n + 1, chunk_size, local_size)
    assert rel[n, 0] == chunk_size < n


def test_segments_walk_like_vllm():
    # notes section 2.4: L = 6, new queries [10, 20).
    segs = dca_segments(20, 10, 8, 2)
    assert [(s.begin, s.end, s.intra, s.successive, s.inter) for s in segs] == [
        (10, 12, (6, 12), (0, 6), (0, 0)),
        (12, 18, (12, 18), (6, 12), (0, 6)),
        (18, 20, (18, 20), (12, 18), (0, 12)),
    ]
    assert [(s.begin, s.end) for s in dca_segments(5, 5, 8, 2)] == [(0, 5)]
    assert dca_segments(5, 5, 8, 2)[0].successive == (0, 0)


# ----------------------------------------------------------------------------- attention


@given(case=dca_case(), form=st.sampled_from(["union", "merge"]), attention_factor=st.sampled_from([1.0, 1.3]), pi_factor=st.sampled_from([1.0, 2.5]))
def test_matches_brute_force_from_distance_matrix(case, form, attention_factor, pi_factor):
    q, k, v, inv_freq = unpack(case)
    out, lse = dca_attention(
        q, k, v, inv_freq, case["chunk_size"], case["local_size"], pairing=case["pairing"],
        attention_factor=attention_factor, pi_factor=pi_factor, form=form, return_lse=True,
    )
    want_out, want_lse = brute_force_dca(
        q, k, v, inv_freq, case["chunk_size"], case["local_size"], pairing=case["pairing"],
        attention_factor=attention_factor, pi_factor=pi_factor,
    )
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == q.shape[:3] and lse.dtype == np.float64
    assert_close(out, want_out, 1e-11)
    assert_close(lse, want_lse, 1e-11)


@given(case=dca_case(short=True), form=st.sampled_from(["union", "merge"]))
def test_equals_rope_attention_up_to_chunk_size_plus_one(case, form):
    q, k, v, inv_freq = unpack(case)
    out, lse = dca_attention(q, k, v, inv_freq, case["chunk_size"], case["local_size"], pairing=case["pairing"], form=form, return_lse=True)
    want_out, want_lse = rope_causal_attention(q, k, v, inv_freq, pairing=case["pairing"])
    assert_close(out, want_out, 1e-11)
    assert_close(lse, want_lse, 1e-11)


def test_differs_from_rope_attention_beyond_chunk_size_plus_one():
    chunk_size, local_size = 8, 2
    q, k, v = make_qkv(1, q_len=chunk_size + 2, kv_len=chunk_size + 2)
    inv_freq = base_inv_freq(8, 10.0)
    out = dca_attention(q, k, v, inv_freq, chunk_size, local_size)
    want, _ = rope_causal_attention(q, k, v, inv_freq)
    assert_close(out[:, :, :-1], want[:, :, :-1])
    assert np.abs(out[:, :, -1] - want[:, :, -1]).max() > 1e-6  # the last query's successive position clamps


@given(case=dca_case())
def test_union_equals_merge(case):
    q, k, v, inv_freq = unpack(case)
    args = (q, k, v, inv_freq, case["chunk_size"], case["local_size"])
    o1, l1 = dca_attention(*args, pairing=case["pairing"], form="union", return_lse=True)
    o2, l2 = dca_attention(*args, pairing=case["pairing"], form="merge", return_lse=True)
    assert_close(o1, o2)
    assert_close(l1, l2)


def test_union_form_blocks_do_not_change_the_result(monkeypatch):
    import yarnref.dca as dca

    q, k, v = make_qkv(3, q_heads=4, kv_heads=2, q_len=23, kv_len=23)
    inv_freq = base_inv_freq(8, 100.0)
    whole = dca_attention(q, k, v, inv_freq, 8, 3, return_lse=True)
    monkeypatch.setattr(dca, "BLOCK_ELEMENTS", 1)  # one query per block
    tiny = dca_attention(q, k, v, inv_freq, 8, 3, return_lse=True)
    assert_close(whole[0], tiny[0])
    assert_close(whole[1], tiny[1])


@pytest.mark.parametrize("cuts", [[5, 11, 12, 19], [1, 2, 3], [6, 12, 18], [7, 13], [19]])
@pytest.mark.parametrize("form", ["union", "merge"])
def test_chunked_prefill_equals_prefill(cuts, form):
    chunk_size, local_size, n = 8, 2, 20  # L = 6: cuts at 5, 7, 11, 13, 19 are not chunk starts
    q, k, v = make_qkv(7, q_heads=4, kv_heads=2, q_len=n, kv_len=n)
    inv_freq = base_inv_freq(8, 10.0)
    full_out, full_lse = dca_attention(q, k, v, inv_freq, chunk_size, local_size, return_lse=True)
    bounds = [0, *cuts, n]
    for begin, end in zip(bounds[:-1], bounds[1:]):
        out, lse = dca_attention(q[:, :, begin:end], k[:, :, :end], v[:, :, :end], inv_freq, chunk_size, local_size, form=form, return_lse=True)
        assert_close(out, full_out[:, :, begin:end])
        assert_close(lse, full_lse[:, :, begin:end])


@given(case=dca_case(), data=st.data())
def test_chunked_prefill_equals_prefill_random_cuts(case, data):
    case = {**case, "q_len": case["kv_len"]}
    q, k, v, inv_freq = unpack(case)
    n = case["kv_len"]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, n - 1)), max_size=4)) - {n})
    full = dca_attention(q, k, v, inv_freq, case["chunk_size"], case["local_size"], pairing=case["pairing"])
    bounds = [0, *cuts, n]
    for begin, end in zip(bounds[:-1], bounds[1:]):
        part = dca_attention(q[:, :, begin:end], k[:, :, :end], v[:, :, :end], inv_freq, case["chunk_size"], case["local_size"], pairing=case["pairing"])
        assert_close(part, full[:, :, begin:end])


@pytest.mark.parametrize("form", ["union", "merge"])
@pytest.mark.parametrize("kv_len", [1, 2, 6, 7, 12, 13, 18, 19, 25])  # kv_len - 1 in {L-1, L, 2L} = {5, 6, 12} included
def test_decode_equals_last_prefill_row(kv_len, form):
    chunk_size, local_size = 8, 2  # L = 6
    q, k, v = make_qkv(11, q_heads=2, kv_heads=1, q_len=kv_len, kv_len=kv_len)
    inv_freq = base_inv_freq(8, 10.0)
    prefill, prefill_lse = dca_attention(q, k, v, inv_freq, chunk_size, local_size, return_lse=True)
    step, step_lse = dca_attention(q[:, :, -1:], k, v, inv_freq, chunk_size, local_size, form=form, return_lse=True)
    assert_close(step, prefill[:, :, -1:])
    assert_close(step_lse, prefill_lse[:, :, -1:])


@given(case=dca_case())
def test_gqa_equals_repeated_kv(case):
    q, k, v, inv_freq = unpack(case)
    group = case["q_heads"] // case["kv_heads"]
    args = (inv_freq, case["chunk_size"], case["local_size"])
    grouped = dca_attention(q, k, v, *args, pairing=case["pairing"])
    repeated = dca_attention(q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1), *args, pairing=case["pairing"])
    assert_close(grouped, repeated)


def test_one_token_prompt():
    q, k, v = make_qkv(5, q_len=1, kv_len=1)
    inv_freq = base_inv_freq(8, 10000.0)
    for form in ("union", "merge"):
        out, lse = dca_attention(q, k, v, inv_freq, 8, 2, form=form, return_lse=True)
        assert_close(out, np.repeat(v, 2, axis=1))  # the only key gets all the weight
        # position 0 is no rotation: lse = scale * q . k
        assert_close(lse, (q @ np.swapaxes(k, -1, -2))[..., 0] / math.sqrt(8))


@pytest.mark.parametrize("chunk_size, local_size, n", [(8, 2, 6), (8, 2, 4), (8, 5, 3), (10, 7, 2)])
def test_prompt_within_one_chunk_is_rope_attention(chunk_size, local_size, n):
    # n <= L: only the intra part exists, whatever local_size is.
    assert all(s.successive == s.inter == (0, 0) for s in dca_segments(n, n, chunk_size, local_size))
    q, k, v = make_qkv(2, q_len=n, kv_len=n)
    inv_freq = base_inv_freq(8, 10.0)
    out = dca_attention(q, k, v, inv_freq, chunk_size, local_size)
    assert_close(out, rope_causal_attention(q, k, v, inv_freq)[0])


@pytest.mark.parametrize("n", [7, 9, 12])  # L < n <= 2L with L = 6: intra and successive only
def test_no_inter_part(n):
    assert all(s.inter == (0, 0) for s in dca_segments(n, n, 8, 2))
    q, k, v = make_qkv(4, q_heads=3, kv_heads=1, q_len=n, kv_len=n)
    inv_freq = base_inv_freq(6, 10.0)
    for form in ("union", "merge"):
        assert_close(dca_attention(q, k, v, inv_freq, 8, 2, form=form), brute_force_dca(q, k, v, inv_freq, 8, 2)[0])


@pytest.mark.parametrize("n", [13, 15, 17, 19, 23])  # L = 6: a last chunk of 1 to 5 tokens
def test_short_last_chunk(n):
    segs = dca_segments(n, n, 8, 2)
    assert segs[-1].end - segs[-1].begin == n % 6 and len(segs) == n // 6 + 1
    q, k, v = make_qkv(6, q_len=n, kv_len=n)
    inv_freq = base_inv_freq(8, 10.0)
    for form in ("union", "merge"):
        assert_close(dca_attention(q, k, v, inv_freq, 8, 2, form=form), brute_force_dca(q, k, v, inv_freq, 8, 2)[0])


def test_float32_inputs_keep_their_dtype():
    q, k, v = make_qkv(8, q_len=9, kv_len=14, dtype=np.float32)
    inv_freq = base_inv_freq(8, 10.0)
    out, lse = dca_attention(q, k, v, inv_freq, 8, 2, return_lse=True)
    assert out.dtype == np.float32 and lse.dtype == np.float64
    want, _ = brute_force_dca(q, k, v, inv_freq, 8, 2)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- temperature


def _setup(seed=12, n=20, q_len=None, rotary=8):
    q, k, v = make_qkv(seed, q_heads=2, kv_heads=1, q_len=q_len or n, kv_len=n)
    return q, k, v, base_inv_freq(rotary, 10.0)


def test_temperature_none_and_explicit_scale():
    q, k, v, inv_freq = _setup()
    default = dca_attention(q, k, v, inv_freq, 8, 2, temperature="none")
    assert_close(default, dca_attention(q, k, v, inv_freq, 8, 2, 1 / math.sqrt(8)))
    # logits are linear in q and in scale
    assert_close(dca_attention(2.0 * q, k, v, inv_freq, 8, 2, 0.1), dca_attention(q, k, v, inv_freq, 8, 2, 0.2))
    assert np.abs(default - dca_attention(q, k, v, inv_freq, 8, 2, 0.5)).max() > 1e-3


def test_qwen_attention_scale_values():
    assert qwen_attention_scale(262144, 262144) == 1.0
    assert qwen_attention_scale(1000, 262144) == 1.0  # clipped at 1 below the original length
    s = qwen_attention_scale(1010000, 262144)
    assert s == pytest.approx(1 + 0.1 * math.log(1010000 / 262144)) and s == pytest.approx(1.13488, abs=1e-5)
    assert s * s == pytest.approx(1.2880, abs=1e-4)  # the Qwen2.5-1M logit factor at 1M tokens
    np.testing.assert_allclose(qwen_attention_scale(np.array([4, 8, 40]), 8), [1.0, 1.0, 1 + 0.1 * math.log(5)])


@pytest.mark.parametrize("seq_len", [None, 20, 64])
@pytest.mark.parametrize("form", ["union", "merge"])
def test_qwen_temperature_is_s_squared_on_logits(seq_len, form):
    q, k, v, inv_freq = _setup()
    original = 4
    length = 20 if seq_len is None else seq_len
    s = 0.1 * math.log(length / original) + 1  # > 1 here
    got = dca_attention(q, k, v, inv_freq, 8, 2, temperature="qwen", original_max_position_embeddings=original, seq_len=seq_len, form=form)
    want = dca_attention(q, k, v, inv_freq, 8, 2, scale=s * s / math.sqrt(8))
    assert_close(got, want)
    # below the original length the factor is 1
    off = dca_attention(q, k, v, inv_freq, 8, 2, temperature="qwen", original_max_position_embeddings=64, form=form)
    assert_close(off, dca_attention(q, k, v, inv_freq, 8, 2))


@pytest.mark.parametrize("form", ["union", "merge"])
def test_qwen_decode_uses_write_time_factors(form):
    # A 15-token prompt, then decode steps writing keys 15..19: key j was written at length
    # 15 (prompt) or j + 1 (decode); the query at length 20 uses s(20).
    n, prompt, original = 20, 15, 4
    q, k, v, inv_freq = _setup(seed=13, n=n, q_len=1)
    write = np.array([prompt] * prompt + list(range(prompt + 1, n + 1)))
    s = lambda length: max(1.0, 0.1 * math.log(length / original) + 1)  # noqa: E731
    factor = np.array([[s(n) * s(w) for w in write]])  # (q_len = 1, kv_len)
    got, lse = dca_attention(
        q, k, v, inv_freq, 8, 2, temperature="qwen", original_max_position_embeddings=original,
        key_write_lengths=write, form=form, return_lse=True,
    )
    want, want_lse = brute_force_dca(q, k, v, inv_freq, 8, 2, logit_factor=factor)
    assert_close(got, want)
    assert_close(lse, want_lse)
    # The default (every key at seq_len) is a different answer here.
    default = dca_attention(q, k, v, inv_freq, 8, 2, temperature="qwen", original_max_position_embeddings=original, form=form)
    assert np.abs(default - got).max() > 1e-6


def test_qwen_chunked_prefill_with_the_full_prompt_length():
    # Each prefill chunk of a 20-token prompt uses s(20) for its queries and keys, like the whole prefill.
    q, k, v, inv_freq = _setup(seed=14)
    kw = dict(temperature="qwen", original_max_position_embeddings=4, seq_len=20)
    full = dca_attention(q, k, v, inv_freq, 8, 2, **kw)
    part = dca_attention(q[:, :, 9:14], k[:, :, :14], v[:, :, :14], inv_freq, 8, 2, **kw)
    assert_close(part, full[:, :, 9:14])


@pytest.mark.parametrize("seq_len, max_pos", [(20, 4), (64, 8), (20, 20), (20, 32)])
def test_chunkllama_temperature_squares_on_logits(seq_len, max_pos):
    q, k, v, inv_freq = _setup()  # full rotary: the table factor reaches every feature
    ratio = seq_len / max_pos
    m = 0.05 * math.log(ratio) + 1 if ratio > 1 else 1.0
    assert chunkllama_mscale(seq_len, max_pos) == pytest.approx(m)
    got = dca_attention(q, k, v, inv_freq, 8, 2, temperature="chunkllama", max_position_embeddings=max_pos, seq_len=seq_len)
    assert_close(got, dca_attention(q, k, v, inv_freq, 8, 2, scale=m * m / math.sqrt(8)))


def test_chunkllama_temperature_is_a_table_factor_with_partial_rotary():
    q, k, v, inv_freq = _setup(rotary=4)  # half the features rotate; only they are scaled
    m = chunkllama_mscale(40, 4)
    got = dca_attention(q, k, v, inv_freq, 8, 2, temperature="chunkllama", max_position_embeddings=4, seq_len=40)
    assert_close(got, dca_attention(q, k, v, inv_freq, 8, 2, attention_factor=m))
    assert_close(got, brute_force_dca(q, k, v, inv_freq, 8, 2, attention_factor=m)[0])


def test_dca_temperature_factors():
    t = dca_temperature("none", 5)
    assert (t.table, t.query) == (1.0, 1.0) and np.all(t.key == 1.0) and t.key.shape == (5,)
    t = dca_temperature("qwen", 3, original_max_position_embeddings=2, key_write_lengths=np.array([5, 5, 6]), seq_len=6)
    assert t.query == pytest.approx(1 + 0.1 * math.log(3))
    np.testing.assert_allclose(t.key, [1 + 0.1 * math.log(2.5)] * 2 + [1 + 0.1 * math.log(3)])


# ----------------------------------------------------------------------------- config

QWEN25_7B_INSTRUCT_1M = {
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 3584,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1010000,
    "rope_theta": 10000000.0,
    "rope_scaling": None,
    "dual_chunk_attention_config": {
        "chunk_size": 262144,
        "local_size": 8192,
        "original_max_position_embeddings": 262144,
    },
}


def test_dca_config_qwen25_1m():
    cfg = dca_config(QWEN25_7B_INSTRUCT_1M)
    assert cfg == DCAConfig(262144, 8192, 262144)
    assert cfg.chunk_len == 253952
    assert cfg.temperature == "qwen"
    assert (cfg.sparse_attention_config, cfg.sparse_attention_enabled) == (None, False)
    assert (cfg.sparse_attention_threshold, cfg.sparse_attention_last_q) == (32768, 64)
    assert cfg.attention_kwargs() == {
        "chunk_size": 262144,
        "local_size": 8192,
        "temperature": "qwen",
        "original_max_position_embeddings": 262144,
    }
    assert dca_config(QWEN25_7B_INSTRUCT_1M["dual_chunk_attention_config"]) == cfg  # a bare dict


def test_dca_config_optional_keys():
    cfg = dca_config({"chunk_size": 16, "local_size": 4})
    assert cfg.original_max_position_embeddings is None and cfg.temperature == "none"
    assert "original_max_position_embeddings" not in cfg.attention_kwargs()
    assert dca_config({"chunk_size": 16, "local_size": 4, "original_max_position_embeddings": 0}).temperature == "none"
    layers = [{"0": ["vertical_and_slash", 1000, 6096, 0.9]}]
    cfg = dca_config({"chunk_size": 16, "local_size": 4, "sparse_attention_config": layers, "sparse_attention_threshold": 1024, "sparse_attention_last_q": 32})
    assert cfg.sparse_attention_config is layers and cfg.sparse_attention_enabled  # vLLM: enabled when a config is given
    assert (cfg.sparse_attention_threshold, cfg.sparse_attention_last_q) == (1024, 32)
    cfg = dca_config({"chunk_size": 16, "local_size": 4, "sparse_attention_config": layers, "sparse_attention_enabled": False})
    assert not cfg.sparse_attention_enabled


@pytest.mark.parametrize(
    "config, key",
    [
        ({"local_size": 4}, "chunk_size"),
        ({"chunk_size": 16}, "local_size"),
        ({"chunk_size": 16, "local_size": 16}, "local_size"),
        ({"chunk_size": 16, "local_size": 20}, "local_size"),
        ({"chunk_size": 0, "local_size": 4}, "chunk_size"),
        ({"chunk_size": -16, "local_size": 4}, "chunk_size"),
        ({"chunk_size": 16, "local_size": 0}, "local_size"),
        ({"chunk_size": 16, "local_size": -2}, "local_size"),
        ({"chunk_size": 16.0, "local_size": 4}, "chunk_size"),
        ({"chunk_size": 16, "local_size": 4.5}, "local_size"),
        ({"chunk_size": "16", "local_size": 4}, "chunk_size"),
        ({"chunk_size": True, "local_size": 4}, "chunk_size"),
        ({"chunk_size": None, "local_size": 4}, "chunk_size"),
        ({"chunk_size": 16, "local_size": 4, "original_max_position_embeddings": -1}, "original_max_position_embeddings"),
        ({"chunk_size": 16, "local_size": 4, "original_max_position_embeddings": 8.0}, "original_max_position_embeddings"),
        ({"chunk_size": 16, "local_size": 4, "sparse_attention_enabled": "yes"}, "sparse_attention_enabled"),
        ({"chunk_size": 16, "local_size": 4, "sparse_attention_threshold": 0}, "sparse_attention_threshold"),
        ({"chunk_size": 16, "local_size": 4, "sparse_attention_last_q": 64.0}, "sparse_attention_last_q"),
        ({"chunk_size": 16, "local_size": 4, "sparse_attention_config": "file.json"}, "sparse_attention_config"),
        ({"dual_chunk_attention_config": None}, "dual_chunk_attention_config"),
        ({"dual_chunk_attention_config": [16, 4]}, "dual_chunk_attention_config"),
        ({"dual_chunk_attention_config": {"chunk_size": 16}}, "dual_chunk_attention_config.local_size"),
        ({"dual_chunk_attention_config": {"chunk_size": 8, "local_size": 8}}, "dual_chunk_attention_config.local_size"),
        ({"rope_theta": 1e7}, "chunk_size"),
    ],
)
def test_dca_config_rejects(config, key):
    with pytest.raises(ConfigError) as info:
        dca_config(config)
    assert info.value.key == key
    assert key.split(".")[-1] in str(info.value)


def test_dca_config_rejects_non_mapping():
    with pytest.raises(ConfigError) as info:
        dca_config([("chunk_size", 16)])
    assert info.value.key == "config"


# ----------------------------------------------------------------------------- bad arguments


def _call(**overrides):
    q, k, v = make_qkv(0, q_len=4, kv_len=6)
    kwargs = dict(q=q, k=k, v=v, inv_freq=base_inv_freq(8, 10.0), chunk_size=8, local_size=2)
    kwargs.update(overrides)
    return dca_attention(**kwargs)


@pytest.mark.parametrize(
    "overrides, param",
    [
        (dict(local_size=8), "local_size"),
        (dict(local_size=9), "local_size"),
        (dict(local_size=0), "local_size"),
        (dict(local_size=-1), "local_size"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(chunk_size=-8), "chunk_size"),
        (dict(chunk_size=8.0), "chunk_size"),
        (dict(local_size=True), "local_size"),
        (dict(q=np.zeros((1, 2, 7, 8))), "q"),  # q_len 7 > kv_len 6
        (dict(q=np.zeros((1, 2, 4, 8), dtype=np.int64)), "q"),
        (dict(q=np.zeros((2, 4, 8))), "q"),
        (dict(k=np.zeros((1, 3, 6, 8)), v=np.zeros((1, 3, 6, 8))), "k"),  # 2 query heads, 3 kv heads
        (dict(inv_freq=base_inv_freq(10, 10.0)), "inv_freq"),  # 5 frequencies > head_dim / 2
        (dict(inv_freq=np.zeros((2, 2))), "inv_freq"),
        (dict(inv_freq=np.array([], dtype=np.float64)), "inv_freq"),
        (dict(inv_freq=np.array([1.0, np.nan])), "inv_freq"),
        (dict(scale=0.0), "scale"),
        (dict(scale=-1.0), "scale"),
        (dict(scale=float("inf")), "scale"),
        (dict(pairing="neox"), "pairing"),
        (dict(pairing="interleaved_in_half_out"), "pairing"),
        (dict(temperature="yarn"), "temperature"),
        (dict(temperature=None), "temperature"),
        (dict(form="both"), "form"),
        (dict(attention_factor=0.0), "attention_factor"),
        (dict(pi_factor=-2.0), "pi_factor"),
        (dict(pi_factor=float("nan")), "pi_factor"),
        (dict(return_lse="yes"), "return_lse"),
        (dict(temperature="chunkllama"), "max_position_embeddings"),
        (dict(temperature="chunkllama", max_position_embeddings=0), "max_position_embeddings"),
        (dict(temperature="qwen"), "original_max_position_embeddings"),
        (dict(temperature="qwen", original_max_position_embeddings=4.0), "original_max_position_embeddings"),
        (dict(temperature="qwen", original_max_position_embeddings=4, seq_len=5), "seq_len"),  # < kv_len 6
        (dict(temperature="qwen", original_max_position_embeddings=4, seq_len=6.0), "seq_len"),
        (dict(temperature="qwen", original_max_position_embeddings=4, key_write_lengths=np.full(5, 6)), "key_write_lengths"),
        (dict(temperature="qwen", original_max_position_embeddings=4, key_write_lengths=np.full(6, 6.0)), "key_write_lengths"),
        (dict(temperature="qwen", original_max_position_embeddings=4, key_write_lengths=np.array([6, 6, 6, 6, 6, 5])), "key_write_lengths"),
        (dict(key_write_lengths=np.full(6, 6)), "key_write_lengths"),  # only "chunkllama" and "qwen" use it
        (dict(seq_len=6), "seq_len"),
        (dict(max_position_embeddings=4), "max_position_embeddings"),
        (dict(original_max_position_embeddings=4), "original_max_position_embeddings"),
        (dict(temperature="chunkllama", max_position_embeddings=4, original_max_position_embeddings=4), "original_max_position_embeddings"),
    ],
)
def test_bad_arguments_raise_input_error(overrides, param):
    with pytest.raises(InputError) as info:
        _call(**overrides)
    assert info.value.param == param
    assert param in str(info.value)


@pytest.mark.parametrize(
    "args, param",
    [((0, 8, 2), "seq_len"), ((5, 8, 8), "local_size"), ((5, 1, 1), "chunk_size"), ((5, 8, 0), "local_size"), ((5.0, 8, 2), "seq_len")],
)
def test_position_functions_reject_bad_sizes(args, param):
    for fn in (dca_position_ids, dca_relative_positions):
        with pytest.raises(InputError) as info:
            fn(*args)
        assert info.value.param == param


def test_segments_reject_q_len_above_kv_len():
    with pytest.raises(InputError) as info:
        dca_segments(4, 5, 8, 2)
    assert info.value.param == "q_len"


@settings(max_examples=15)
@given(case=dca_case(), form=st.sampled_from(["union", "merge"]))
def test_no_runtime_warnings(case, form):
    import warnings

    q, k, v, inv_freq = unpack(case)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dca_attention(q, k, v, inv_freq, case["chunk_size"], case["local_size"], pairing=case["pairing"], form=form, return_lse=True)


@settings(max_examples=15)
@given(st.integers(1, 3), st.integers(2, 6), st.sampled_from(["half", "interleaved"]), st.integers(0, 2**31 - 1))
def test_chunkllama_decode_keys_keep_their_write_time_factor(q_len, max_pos, pairing, seed):
    """ChunkLlama's decode: key j rotated and cached with mscale(w_j), the query with mscale(seq_len).

    Within chunk_size - local_size + 1 tokens DCA is plain RoPE attention, so the reference is attention
    over keys rotated one by one with their own tables.
    """
    rng = np.random.default_rng(seed)
    chunk, local, head_dim, kv_len = 64, 16, 8, 40
    inv_freq = base_inv_freq(head_dim, 100.0)
    q = rng.standard_normal((1, 2, q_len, head_dim))
    k, v = rng.standard_normal((2, 1, 1, kv_len, head_dim))
    write = np.maximum(np.arange(1, kv_len + 1), rng.integers(1, kv_len + 1, kv_len))  # >= j + 1
    write[-q_len:] = kv_len  # the keys of this step are written now
    got = dca_attention(q, k, v, inv_freq, chunk, local, pairing=pairing, temperature="chunkllama",
                        max_position_embeddings=max_pos, key_write_lengths=write)
    positions = np.arange(kv_len)
    k_rot = np.empty_like(k)
    for j in range(kv_len):
        cos, sin = rope_cos_sin(inv_freq, positions[j:j + 1], chunkllama_mscale(int(write[j]), max_pos))
        k_rot[:, :, j:j + 1] = apply_rope(k[:, :, j:j + 1], cos, sin, pairing)
    cos, sin = rope_cos_sin(inv_freq, positions[-q_len:], chunkllama_mscale(kv_len, max_pos))
    want = attention(apply_rope(q, cos, sin, pairing), k_rot, v, causal=True)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # every key written at the current length: the single-factor prefill rule
    same = dca_attention(q, k, v, inv_freq, chunk, local, pairing=pairing, temperature="chunkllama",
                         max_position_embeddings=max_pos, key_write_lengths=np.full(kv_len, kv_len))
    np.testing.assert_allclose(same, dca_attention(q, k, v, inv_freq, chunk, local, pairing=pairing,
                                                   temperature="chunkllama", max_position_embeddings=max_pos),
                               rtol=1e-14, atol=1e-14)
    if np.any(write < kv_len) and chunkllama_mscale(int(write.min()), max_pos) != chunkllama_mscale(kv_len, max_pos):
        assert not np.allclose(got, same, rtol=1e-9, atol=1e-9)


def test_chunkllama_write_lengths_need_full_rotary():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((3, 1, 1, 6, 8))
    with pytest.raises(InputError, match="key_write_lengths"):
        dca_attention(q, k, v, base_inv_freq(4, 100.0), 8, 2, temperature="chunkllama", max_position_embeddings=2,
                      key_write_lengths=np.full(6, 6))


@given(seq_len=st.integers(1, 300), chunk_size=st.integers(2, 40), data=st.data())
def test_position_ids_from_a_start_are_the_tail_of_all_of_them(seq_len, chunk_size, data):
    """``start`` gives the ids of tokens ``start ..`` (a prefill chunk's queries), equal to the tail of all tokens' ids."""
    local_size = data.draw(st.integers(1, chunk_size - 1), label="local_size")
    start = data.draw(st.integers(0, seq_len - 1), label="start")
    whole = dca_position_ids(seq_len, chunk_size, local_size)
    tail = dca_position_ids(seq_len, chunk_size, local_size, start=start)
    for name in whole._fields:
        got, want = getattr(tail, name), getattr(whole, name)[start:]
        assert got.dtype == np.int64 and np.array_equal(got, want), name


@pytest.mark.parametrize("start", [-1, 10, 11, 2.5, True])
def test_position_ids_refuse_a_start_outside_the_sequence(start):
    with pytest.raises(InputError, match="start"):
        dca_position_ids(10, 8, 2, start=start)
