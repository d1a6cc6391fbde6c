"""Tests of yarnref.sparse: vertical-slash estimation, the kernels' index conversion, masks, attention, A-shape."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yarnref import sparse, sparse_lockstep
from yarnref.softmax_attention import attention
from yarnref.errors import InputError

# ----------------------------------------------------------------------------- helpers


def masked_softmax(q, k, v, mask, scale=None):
    """Direct dense reference: softmax over mask (broadcastable to (b, hq, tq, tk)); empty rows -> 0, -inf."""
    b, hq, tq, d = q.shape
    group = hq // k.shape[1]
    kr, vr = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scale = 1 / np.sqrt(d) if scale is None else scale
    logits = scale * np.einsum("bhid,bhjd->bhij", q, kr)
    mask = np.broadcast_to(mask, logits.shape)
    logits = np.where(mask, logits, -np.inf)
    m = logits.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    w = np.exp(logits - m)
    den = w.sum(-1, keepdims=True)
    has = den > 0
    out = np.where(has, np.einsum("bhij,bhjd->bhid", w, vr) / np.where(has, den, 1), 0.0)
    with np.errstate(divide="ignore"):
        lse = np.where(has, np.log(np.where(has, den, 1)) + m, -np.inf)[..., 0]
    return out, lse


def causal_mask(q_len, kv_len):
    return np.arange(kv_len)[None, :] <= (np.arange(q_len) + kv_len - q_len)[:, None]


def unpack(converted, b=0, h=0):
    """The converted lists of one (batch, head) as [(blocks, columns)] per row block."""
    bc, bo, cc, ci = converted
    return [(bo[b, h, r, : bc[b, h, r]].tolist(), ci[b, h, r, : cc[b, h, r]].tolist()) for r in range(bc.shape[-1])]


def kernel_mask_from_lists(q_len, kv_len, converted, bm, bn, causal):
    """Rebuild the kernel's key sets from the converted lists, block by block (each listed block's keys and each listed column, for every row of its row block)."""
    bc, bo, cc, ci = converted
    batch, heads, n_rows = bc.shape
    mask = np.zeros((batch, heads, q_len, kv_len), dtype=bool)
    for b in range(batch):
        for h in range(heads):
            for r in range(n_rows):
                rows = slice(r * bm, min((r + 1) * bm, q_len))
                for o in bo[b, h, r, : bc[b, h, r]]:
                    mask[b, h, rows, o : min(o + bn, kv_len)] = True
                for c in ci[b, h, r, : cc[b, h, r]]:
                    mask[b, h, rows, c] = True
    if causal:
        mask &= causal_mask(q_len, kv_len)
    return mask


def exact_mask_loops(q_len, kv_len, verts, slashes, causal):
    off = kv_len - q_len if causal else kv_len
    mask = np.zeros((q_len, kv_len), dtype=bool)
    for i in range(q_len):
        for j in range(kv_len):
            if j <= i + off and (j in verts or (i + off - j) in slashes):
                mask[i, j] = True
    return mask


@st.composite
def index_case(draw, causal=None, forced=False):
    """A random (q_len, kv_len, verticals, slashes, bm, bn, causal) case, per-head lists of different sizes."""
    causal = draw(st.booleans()) if causal is None else causal
    kv_len = draw(st.integers(1, 300))
    q_len = draw(st.integers(1, kv_len)) if causal else draw(st.integers(1, 200))
    bm = draw(st.sampled_from([16, 32, 64]))
    bn = bm if draw(st.integers(0, 4)) else draw(st.sampled_from([b for b in (16, 32, 64, 128) if b >= bm]))
    heads = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    max_delta = kv_len + q_len + 10
    v_lists, s_lists = [], []
    for _ in range(heads):
        nv = int(rng.integers(0, min(kv_len, 40) + 1))
        ns = int(rng.integers(0, min(max_delta, 40) + 1))
        v_lists.append(np.sort(rng.choice(kv_len, nv, replace=False)))
        s = rng.choice(max_delta, ns, replace=False)
        if forced:
            s = np.union1d(s, np.arange(min(100, max_delta)))
        s_lists.append(-np.sort(-s))
    width_v = max(1, max(len(x) for x in v_lists))
    width_s = max(1, max(len(x) for x in s_lists))
    V = np.full((1, heads, width_v), -1, np.int64)
    S = np.full((1, heads, width_s), -1, np.int64)
    for h in range(heads):
        V[0, h, : len(v_lists[h])] = v_lists[h]
        S[0, h, : len(s_lists[h])] = s_lists[h]
    return q_len, kv_len, V, S, v_lists, s_lists, bm, bn, causal


# ----------------------------------------------------------------------------- conversion, by hand


def test_convert_causal_by_hand():
    # q = kv = 256, blocks 64, V = {3, 100, 200}, S = {130, 5, 0}; worked out by hand from the algorithm:
    # row block 0 (rows 0..63): 130 skipped; slash 5 -> e = max(64-5, 64) = 64 -> [0, 64); vertical 3 covered;
    #   100 pulls slash 0 (e = 64, inside); no slash left -> emit [0, 64).
    # row block 1: 130 skipped; 5 -> [59, 123); 3 is a column; 100 covered; 200 pulls 0 -> e = 128 -> grows to
    #   [59, 187); no slash left -> emit blocks 59, 123 (200 dropped: right of the diagonal).
    # row block 2: 130 -> e = max(62, 64) -> [0, 64); 100 pulls 5 -> e = 187 > 64 + 64: emit [0, 64), new
    #   [123, 187); 100 is a column; 200 pulls 0 -> e = 192 -> grows to [123, 251): 200 covered; emit 123, 187.
    # row block 3: 130 -> [62, 126); 3 column; 100 covered; 200 pulls 5 -> e = 251: emit [62, 126), new
    #   [187, 251): 200 covered; 0 -> e = 256 -> [187, 315): emit 187, 251 (block 251 cut at kv = 256).
    V, S = np.array([[[200, 3, 100]]]), np.array([[[0, 130, 5]]])  # unsorted on purpose: sorted inside
    converted = sparse.convert_vertical_slash_indexes(256, 256, V, S)
    assert [a.dtype for a in converted] == [np.int32] * 4
    assert unpack(converted) == [([0], []), ([59, 123], [3]), ([0, 123, 187], [100]), ([62, 187, 251], [3])]
    # Entries past the counts are -1.
    assert converted[1][0, 0, 0, 1:].tolist() == [-1, -1]


def test_convert_non_causal_by_hand():
    # q = 128 queries right after kv = 256 keys (row i at position 256 + i); V = {10, 250}, S = {300, 100, 20}.
    # row block 0 (end 64, off 256): 300 -> e = max(20, 64) = 64 -> [0, 64): 10 covered; 250 pulls 100
    #   (100 >= m0 = 0) -> e = 220: emit [0, 64), new [156, 220); 250 pulls 20 -> e = 300: emit 156, new
    #   [236, 300): 250 covered; slashes done -> emit 236 (cut at 256).
    # row block 1 (end 128): 300 -> e = 84 -> [20, 84): 10 is a column; 250 pulls 100 (>= 64) -> e = 284:
    #   emit 20, new [220, 284): 250 covered; next slash 20 < m0 = 64 is not taken -> emit 220.
    V, S = np.array([[[10, 250]]]), np.array([[[300, 100, 20]]])
    converted = sparse.convert_vertical_slash_indexes(128, 256, V, S, causal=False)
    assert unpack(converted) == [([0, 156, 236], []), ([20, 220], [10])]


def test_convert_q_shorter_than_kv_by_hand():
    # Causal, q = 100, kv = 256: off = 156, two row blocks (the second is partial). V = {0, 150}, S = {200, 0}.
    # row block 0 (end 64, end + off = 220): 200 -> e = 64 -> [0, 64): 0 covered; 150 pulls 0 -> e = 220:
    #   emit [0, 64), new [156, 220): 150 is a column; emit 156.
    # row block 1 (end 128, end + off = 284): 200 -> e = 84 -> [20, 84): 0 is a column; 150 pulls 0 -> e = 284:
    #   emit 20, new [220, 284): 150 is a column; emit 220 (cut at 256).
    V, S = np.array([[[0, 150]]]), np.array([[[200, 0]]])
    converted = sparse.convert_vertical_slash_indexes(100, 256, V, S)
    assert unpack(converted) == [([0, 156], [150]), ([20, 220], [0, 150])]


def test_convert_non_causal_verticals_after_the_slashes():
    # Non-causal, the slashes run out with verticals left: those < kv_len all become columns.
    V, S = np.array([[[1, 70, 90, 120]]]), np.array([[[128]]])  # kv = 128, q = 64: slash 128 -> e = 64 -> [0, 64)
    converted = sparse.convert_vertical_slash_indexes(64, 128, V, S, causal=False)
    assert unpack(converted) == [([0], [70, 90, 120])]


def test_convert_per_head_padding_matches_each_head_alone():
    V = np.array([[[5, 40, 90], [7, -1, -1]]])
    S = np.array([[[0, 3, -1, -1], [100, 50, 9, 0]]])
    both = sparse.convert_vertical_slash_indexes(128, 128, V, S, 32, 32)
    for h, (v, s) in enumerate([([5, 40, 90], [3, 0]), ([7], [100, 50, 9, 0])]):
        alone = sparse.convert_vertical_slash_indexes(128, 128, np.array([[v]]), np.array([[s]]), 32, 32)
        assert unpack(both, 0, h) == unpack(alone)


@given(index_case(), st.sampled_from(["numpy", "torch"]), st.booleans())
def test_lockstep_matches_the_readable_merge(case, namespace, clamp):
    """The vectorised conversion (every row block in lockstep, NumPy or torch) gives the readable merge's lists."""
    q_len, kv_len, V, S, v_lists, s_lists, bm, bn, causal = case
    clamp = clamp or not causal  # MInference's unclamped converter is causal only
    rng = np.random.default_rng(q_len * 1000 + kv_len)
    shuffled_v = rng.permuted(V, axis=-1)  # any order is accepted
    shuffled_s = rng.permuted(S, axis=-1)
    if clamp:
        want = sparse.convert_vertical_slash_indexes(q_len, kv_len, shuffled_v, shuffled_s, bm, bn, causal)
    else:
        want = sparse.minference_convert_vertical_slash_indexes(q_len, kv_len, shuffled_v, shuffled_s, bm, bn)
    n_rows = -(-q_len // bm)
    assert want[0].shape == (1, V.shape[1], n_rows)
    assert want[1].shape[-1] == max(S.shape[-1], 1) * -(-bm // bn)
    if namespace == "numpy":
        got = sparse_lockstep.convert_lockstep(np, q_len, kv_len, shuffled_v, shuffled_s, bm, bn, causal, clamp=clamp)
    else:
        torch = pytest.importorskip("torch")
        tensors = (torch.from_numpy(a) for a in (shuffled_v, shuffled_s))
        got = [t.numpy() for t in sparse_lockstep.convert_lockstep(torch, q_len, kv_len, *tensors, bm, bn, causal, clamp=clamp)]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == np.int32
        assert np.array_equal(g, w)  # the padding (-1 past the counts) too


@given(index_case(forced=True))
def test_kernel_mask_is_the_converted_lists_and_contains_the_exact_mask(case):
    q_len, kv_len, V, S, v_lists, s_lists, bm, bn, causal = case
    converted = sparse.convert_vertical_slash_indexes(q_len, kv_len, V, S, bm, bn, causal)
    kernel = sparse.vertical_slash_mask(q_len, kv_len, V, S, "kernel", causal, block_size_m=bm, block_size_n=bn)
    assert np.array_equal(kernel, kernel_mask_from_lists(q_len, kv_len, converted, bm, bn, causal))
    exact = sparse.vertical_slash_mask(q_len, kv_len, V, S, "exact", causal)
    assert not np.any(exact & ~kernel)  # with delta = 0..99 forced, the kernel keeps every exact key
    if causal:
        assert not np.any(kernel & ~causal_mask(q_len, kv_len))


@given(index_case(causal=False))
def test_non_causal_kernel_always_contains_exact(case):
    q_len, kv_len, V, S, _, _, bm, bn, _ = case
    kernel = sparse.vertical_slash_mask(q_len, kv_len, V, S, "kernel", False, block_size_m=bm, block_size_n=bn)
    exact = sparse.vertical_slash_mask(q_len, kv_len, V, S, "exact", False)
    assert not np.any(exact & ~kernel)


def test_causal_kernel_drops_verticals_without_the_zero_diagonal():
    # No delta = 0: the last range ends at 64, so the causal vertical 100 is dropped for rows 64..127.
    V, S = np.array([[[100]]]), np.array([[[64]]])
    exact = sparse.vertical_slash_mask(128, 128, V, S, "exact")
    kernel = sparse.vertical_slash_mask(128, 128, V, S, "kernel")
    assert exact[0, 0, 127, 100] and not kernel[0, 0, 127, 100]


def test_exact_mask_matches_definition():
    rng = np.random.default_rng(1)
    for causal, (q_len, kv_len) in [(True, (40, 40)), (True, (17, 50)), (False, (20, 30))]:
        verts = sorted(rng.choice(kv_len, 6, replace=False).tolist())
        slashes = sorted(rng.choice(kv_len + q_len, 8, replace=False).tolist(), reverse=True)
        V = np.array([[verts + [-1]]])
        S = np.array([[slashes]])
        got = sparse.vertical_slash_mask(q_len, kv_len, V, S, "exact", causal)[0, 0]
        assert np.array_equal(got, exact_mask_loops(q_len, kv_len, verts, slashes, causal))


# ----------------------------------------------------------------------------- attention


def qkv(rng, b=1, hq=4, hk=2, tq=96, tk=96, d=8):
    return rng.standard_normal((b, hq, tq, d)), rng.standard_normal((b, hk, tk, d)), rng.standard_normal((b, hk, tk, d))


@pytest.mark.parametrize("mode", ["exact", "kernel"])
def test_full_budget_is_dense_causal_attention(mode):
    rng = np.random.default_rng(2)
    q, k, v = qkv(rng, tq=70, tk=150)
    all_columns = np.broadcast_to(np.arange(150), (1, 4, 150))
    one_slash = np.zeros((1, 4, 1), np.int64)
    all_slashes = np.broadcast_to(np.arange(150)[::-1], (1, 4, 150))
    one_vertical = np.zeros((1, 4, 1), np.int64)
    ref, ref_lse = attention(q, k, v, causal=True, return_lse=True)
    for V, S in [(all_columns, one_slash), (one_vertical, all_slashes)]:
        out, lse = sparse.vertical_slash_attention(q, k, v, V, S, mode, return_lse=True, block_size_m=32, block_size_n=32)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(lse, ref_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal,tq,tk", [(True, 96, 96), (True, 50, 130), (False, 70, 90)])
@pytest.mark.parametrize("mode", ["exact", "kernel"])
def test_attention_is_masked_softmax(mode, causal, tq, tk):
    rng = np.random.default_rng(3)
    q, k, v = qkv(rng, tq=tq, tk=tk)
    V = np.stack([rng.choice(tk, 5, replace=False) for _ in range(4)])[None]
    S = np.stack([np.r_[rng.choice(tk, 4, replace=False), 0] for _ in range(4)])[None]
    V[0, 1, 3:] = -1  # per-head padding
    mask = sparse.vertical_slash_mask(tq, tk, V, S, mode, causal, block_size_m=32, block_size_n=32)
    out, lse = sparse.vertical_slash_attention(q, k, v, V, S, mode, 0.3, True, causal=causal, block_size_m=32, block_size_n=32)
    ref, ref_lse = masked_softmax(q, k, v, mask, 0.3)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12, atol=1e-12)


def test_attention_processes_query_blocks(monkeypatch):
    rng = np.random.default_rng(4)
    q, k, v = qkv(rng, tq=200, tk=200)
    V, S = sparse.vertical_slash_indices(q, k, 31, 60)
    whole = sparse.vertical_slash_attention(q, k, v, V, S)
    monkeypatch.setattr(sparse, "BLOCK_ELEMENTS", 1)  # one row block of 64 at a time
    np.testing.assert_allclose(sparse.vertical_slash_attention(q, k, v, V, S), whole, rtol=1e-13, atol=1e-13)


def test_rows_without_keys_get_zero_and_minus_inf():
    rng = np.random.default_rng(5)
    q, k, v = qkv(rng, tq=8, tk=16, hq=2, hk=2)
    V = np.array([[[15], [15]]])  # visible only to the last query
    S = np.array([[[50], [50]]])  # no pair that far apart
    out, lse = sparse.vertical_slash_attention(q, k, v, V, S, "exact", return_lse=True)
    assert np.all(out[:, :, :-1] == 0) and np.all(lse[:, :, :-1] == -np.inf)
    assert np.all(np.isfinite(lse[:, :, -1]))


def test_output_keeps_q_dtype():
    rng = np.random.default_rng(6)
    q, k, v = (a.astype(np.float32) for a in qkv(rng, tq=32, tk=32))
    V, S = sparse.vertical_slash_indices(q, k, 30, 50)
    out, lse = sparse.vertical_slash_attention(q, k, v, V, S, return_lse=True)
    assert out.dtype == np.float32 and lse.dtype == np.float64


# ----------------------------------------------------------------------------- estimation


def naive_estimate(q, k, n_v, n_s, last_q, scale, fv=30, fs=100):
    """One head, loops: MInference's scores and top-k (ties to the lower index)."""
    tq, tk = q.shape[0], k.shape[0]
    m = min(last_q, tq)
    vert, diag = np.zeros(tk), np.zeros(tk)
    for r in range(m):
        pos = tk - m + r
        logits = np.array([scale * q[tq - m + r] @ k[j] if j <= pos else -np.inf for j in range(tk)])
        p = np.exp(logits - logits.max())
        p /= p.sum()
        for j in range(pos + 1):
            vert[j] += p[j]
            diag[pos - j] += p[j]
    vert[:fv] = np.inf
    diag[:fs] = np.inf
    top_v = sorted(sorted(range(tk), key=lambda j: (-vert[j], j))[:n_v])
    top_s = sorted(sorted(range(tk), key=lambda d: (-diag[d], d))[:n_s], reverse=True)
    return top_v, top_s


@pytest.mark.parametrize("tq,tk", [(120, 120), (40, 150), (10, 10), (25, 25), (70, 70), (200, 200)])
def test_estimate_matches_loops(tq, tk):
    rng = np.random.default_rng(tq * 7 + tk)
    q, k, _ = qkv(rng, b=1, hq=2, hk=1, tq=tq, tk=tk, d=8)
    q *= 2.0
    budgets_v, budgets_s = np.array([33, 45]), np.array([110, 60])
    V, S = sparse.vertical_slash_indices(q, k, budgets_v, budgets_s, 32, scale=0.5)
    for h in range(2):
        n_v = min(tk, max(budgets_v[h], 30))
        n_s = min(tk, max(budgets_s[h], 50))
        top_v, top_s = naive_estimate(q[0, h], k[0, 0], n_v, n_s, 32, 0.5)
        assert V[0, h][V[0, h] >= 0].tolist() == top_v
        assert S[0, h][S[0, h] >= 0].tolist() == top_s


@given(
    st.integers(1, 140),
    st.integers(0, 60),
    st.integers(1, 80),
    st.sampled_from([(1, 1), (2, 1), (4, 2)]),
    st.integers(1, 3),
)
def test_estimate_shapes_orders_and_forced_sets(kv_len, q_short, last_q, heads, batch):
    hq, hk = heads
    q_len = max(1, kv_len - q_short)
    rng = np.random.default_rng(kv_len * 131 + q_len)
    q, k, _ = qkv(rng, b=batch, hq=hq, hk=hk, tq=q_len, tk=kv_len, d=8)
    v_budget = rng.integers(1, 70, size=hq)
    s_budget = rng.integers(1, 160, size=hq)
    V, S = sparse.vertical_slash_indices(q, k, v_budget, s_budget, last_q)
    n_v = np.minimum(kv_len, np.maximum(v_budget, 30))
    n_s = np.minimum(kv_len, np.maximum(s_budget, 50))
    assert V.dtype == S.dtype == np.int64
    assert V.shape == (batch, hq, n_v.max()) and S.shape == (batch, hq, n_s.max())
    for b in range(batch):
        for h in range(hq):
            v_row, s_row = V[b, h], S[b, h]
            assert np.all(v_row[: n_v[h]] >= 0) and np.all(v_row[n_v[h] :] == -1)
            assert np.all(s_row[: n_s[h]] >= 0) and np.all(s_row[n_s[h] :] == -1)
            assert np.all(np.diff(v_row[: n_v[h]]) > 0) and np.all(np.diff(s_row[: n_s[h]]) < 0)
            assert v_row.max() < kv_len and s_row.max() < kv_len
            # Forced: the first 30 columns, and the nearest min(n_s, 100) distances (ties to the smaller one).
            assert set(range(min(30, kv_len))) <= set(v_row.tolist())
            assert set(range(min(n_s[h], 100))) <= set(s_row.tolist())


def test_estimate_gqa_equals_repeated_kv():
    rng = np.random.default_rng(7)
    q, k, _ = qkv(rng, hq=4, hk=2, tq=150, tk=150)
    got = sparse.vertical_slash_indices(q, k, 40, 120)
    want = sparse.vertical_slash_indices(q, np.repeat(k, 2, axis=1), 40, 120)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_estimate_finds_planted_column_and_diagonal():
    rng = np.random.default_rng(8)
    n, d = 300, 16
    q = rng.standard_normal((1, 1, n, d))
    k = rng.standard_normal((1, 1, n, d))
    u = rng.standard_normal(d)
    k_col = k.copy()
    k_col[0, 0, 177] = 3 * (q[0, 0, -64:].mean(0) + u)  # column 177 lines up with the last queries
    q_col = q + u
    V, _ = sparse.vertical_slash_indices(q_col, k_col, 31, 50)
    assert 177 in V[0, 0] and len(V[0, 0]) == 31  # 30 forced + the planted one
    delta = 150  # key j mirrors query j + 150: a strong diagonal at distance 150
    k_diag = k.copy()
    k_diag[0, 0, : n - delta] = 2.0 * q[0, 0, delta:]
    _, S = sparse.vertical_slash_indices(q, k_diag, 30, 101)
    assert delta in S[0, 0] and len(S[0, 0]) == 101  # 100 forced + the planted one
    _, S_without = sparse.vertical_slash_indices(q, k, 30, 101)
    assert delta not in S_without[0, 0]


def test_estimate_short_sequences():
    rng = np.random.default_rng(9)
    for n in (1, 5, 29, 64, 99):  # < last_q, < 30, < 100
        q, k, _ = qkv(rng, hq=2, hk=2, tq=n, tk=n)
        V, S = sparse.vertical_slash_indices(q, k, 100, 500)
        assert V[0, 0].tolist() == list(range(n))
        assert S[0, 0].tolist() == list(range(n))[::-1]


def test_estimate_last_q_is_the_last_queries():
    rng = np.random.default_rng(10)
    q, k, _ = qkv(rng, hq=2, hk=2, tq=130, tk=130)
    got = sparse.vertical_slash_indices(q, k, 35, 60, last_q=16)
    # The earlier queries do not matter; only the last 16 rows are used.
    q2 = q.copy()
    q2[:, :, :114] = rng.standard_normal(q2[:, :, :114].shape)
    want = sparse.vertical_slash_indices(q2, k, 35, 60, last_q=16)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    # A query suffix (q_len < kv_len) is read bottom-right.
    suffix = sparse.vertical_slash_indices(q[:, :, -16:], k, 35, 60, last_q=16)
    assert all(np.array_equal(a, b) for a, b in zip(got, suffix))


# ----------------------------------------------------------------------------- recall


def test_recall():
    rng = np.random.default_rng(11)
    q, k, v = qkv(rng, tq=100, tk=100)
    full = np.ones((100, 100), bool)
    assert np.array_equal(sparse.attention_recall(q, k, full), np.ones((1, 4, 100)))
    V, S = sparse.vertical_slash_indices(q, k, 30, 50)
    for mode in ("exact", "kernel"):
        mask = sparse.vertical_slash_mask(100, 100, V, S, mode)
        recall = sparse.attention_recall(q, k, mask)
        assert np.all((0 <= recall) & (recall <= 1))
        _, lse_sparse = sparse.vertical_slash_attention(q, k, v, V, S, mode, return_lse=True)
        _, lse_dense = attention(q, k, v, return_lse=True)
        np.testing.assert_allclose(recall, np.exp(lse_sparse - lse_dense), rtol=1e-12)
    exact = sparse.attention_recall(q, k, sparse.vertical_slash_mask(100, 100, V, S, "exact"))
    kernel = sparse.attention_recall(q, k, sparse.vertical_slash_mask(100, 100, V, S, "kernel"))
    assert np.all(kernel >= exact)
    assert np.all(sparse.attention_recall(q, k, np.zeros((100, 100), bool)) == 0)


# ----------------------------------------------------------------------------- A-shape and tri-shape


def a_shape_loops(q_len, kv_len, n_init, n_local, n_last=0):
    mask = np.zeros((q_len, kv_len), bool)
    for i in range(q_len):
        for j in range(kv_len):
            D = i - j + kv_len - q_len
            if D < 0:
                continue
            if D < n_local or j < n_init or i >= q_len - n_last:
                mask[i, j] = True
    return mask


@pytest.mark.parametrize("q_len,kv_len,n_init,n_local,n_last", [(60, 60, 4, 10, 5), (30, 80, 8, 16, 0), (50, 50, 0, 1, 50), (20, 20, 30, 100, 3)])
def test_streaming_masks_and_attention(q_len, kv_len, n_init, n_local, n_last):
    assert np.array_equal(sparse.a_shape_mask(q_len, kv_len, n_init, n_local), a_shape_loops(q_len, kv_len, n_init, n_local))
    tri = sparse.tri_shape_mask(q_len, kv_len, n_init, n_local, n_last)
    assert np.array_equal(tri, a_shape_loops(q_len, kv_len, n_init, n_local, n_last))
    rng = np.random.default_rng(12)
    q, k, v = qkv(rng, tq=q_len, tk=kv_len)
    out, lse = sparse.tri_shape_attention(q, k, v, n_init, n_local, n_last, return_lse=True)
    ref, ref_lse = masked_softmax(q, k, v, tri)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12, atol=1e-12)
    out = sparse.a_shape_attention(q, k, v, n_init, n_local)
    np.testing.assert_allclose(out, masked_softmax(q, k, v, sparse.a_shape_mask(q_len, kv_len, n_init, n_local))[0], rtol=1e-12, atol=1e-12)


def test_streaming_large_window_is_dense():
    rng = np.random.default_rng(13)
    q, k, v = qkv(rng, tq=40, tk=40)
    np.testing.assert_allclose(sparse.a_shape_attention(q, k, v, 0, 40), attention(q, k, v), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sparse.tri_shape_attention(q, k, v, 0, 1, 40), attention(q, k, v), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- bad input


def test_bad_input():
    rng = np.random.default_rng(14)
    q, k, v = qkv(rng, tq=32, tk=32)
    V, S = np.zeros((1, 4, 1), np.int64), np.zeros((1, 4, 1), np.int64)
    cases = [
        (lambda: sparse.vertical_slash_indices(q, k, 0, 50), "vertical_size"),
        (lambda: sparse.vertical_slash_indices(q, k, 30, np.array([50, 50])), "slash_size"),
        (lambda: sparse.vertical_slash_indices(q, k, 30, 50, last_q=0), "last_q"),
        (lambda: sparse.vertical_slash_indices(q, k[:, :, :10], 30, 50), "q"),
        (lambda: sparse.vertical_slash_indices(q, rng.standard_normal((1, 3, 32, 8)), 30, 50), "k"),
        (lambda: sparse.vertical_slash_indices(q, k, 30, 50, scale=-1.0), "scale"),
        (lambda: sparse.vertical_slash_indices(q, k, 30.0, 50), "vertical_size"),
        (lambda: sparse.convert_vertical_slash_indexes(32, 32, np.array([[[32]]]), np.array([[[0]]])), "vertical_idx"),
        (lambda: sparse.convert_vertical_slash_indexes(32, 32, np.array([[[0]]]), np.array([[[-2]]])), "slash_idx"),
        (lambda: sparse.convert_vertical_slash_indexes(32, 32, np.array([[[0.0]]]), np.array([[[0]]])), "vertical_idx"),
        (lambda: sparse.convert_vertical_slash_indexes(32, 32, np.array([[0]]), np.array([[[0]]])), "vertical_idx"),
        (lambda: sparse.convert_vertical_slash_indexes(32, 32, np.zeros((1, 2, 1), int), np.zeros((1, 3, 1), int)), "slash_idx"),
        (lambda: sparse.convert_vertical_slash_indexes(40, 32, V, S), "q_len"),
        (lambda: sparse.convert_vertical_slash_indexes(32, 32, V, S, 0), "block_size_m"),
        (lambda: sparse.convert_vertical_slash_indexes(32, 32, V, S, 64, 32), "block_size_n"),
        (lambda: sparse.vertical_slash_mask(32, 32, V, S, "dense"), "mode"),
        (lambda: sparse.vertical_slash_attention(q, k, v, V[:, :2], S[:, :2]), "vertical_idx"),
        (lambda: sparse.vertical_slash_attention(q, k, v, V, S, causal=1), "causal"),
        (lambda: sparse.attention_recall(q, k, np.ones((3, 32), bool)), "mask"),
        (lambda: sparse.attention_recall(q, k, np.ones((32, 32))), "mask"),
        (lambda: sparse.a_shape_mask(32, 32, -1, 10), "n_init"),
        (lambda: sparse.tri_shape_mask(32, 32, 1, 0), "n_local"),
    ]
    for call, param in cases:
        with pytest.raises(InputError) as err:
            call()
        assert err.value.param == param, (param, err.value)


# ----------------------------------------------------------------------------- backends


@pytest.mark.parametrize("operation", ["vertical_slash_indices", "convert_vertical_slash_indexes", "vertical_slash_attention"])
def test_backend_matches_spec(backend, operation):
    rng = np.random.default_rng(15)
    q, k, v = qkv(rng, tq=150, tk=150, d=16)
    V, S = sparse.vertical_slash_indices(q, k, np.array([31, 40, 90, 35]), 60)
    fn = getattr(backend, operation)
    if operation == "vertical_slash_indices":
        got = fn(backend.asarray(q), backend.asarray(k), np.array([31, 40, 90, 35]), 60)
        want = (V, S)
    elif operation == "convert_vertical_slash_indexes":
        got = fn(150, 150, backend.asarray(V), backend.asarray(S))
        want = sparse.convert_vertical_slash_indexes(150, 150, V, S)
    else:
        got = fn(*(backend.asarray(a) for a in (q, k, v, V, S)), "kernel", None, True)
        want = sparse.vertical_slash_attention(q, k, v, V, S, "kernel", None, True)
        for g, w in zip(got, want):
            np.testing.assert_allclose(backend.to_numpy(g), w, rtol=1e-10, atol=1e-10)
        return
    if operation == "convert_vertical_slash_indexes":  # compare the listed entries only
        for b in range(1):
            for h in range(4):
                assert unpack(tuple(backend.to_numpy(a) for a in got), b, h) == unpack(want, b, h)
    else:
        for g, w in zip(got, want):
            assert np.array_equal(backend.to_numpy(g), w)


# ----------------------------------------------------------------------------- MInference's unclamped converter


@settings(max_examples=40)
@given(st.integers(1, 300), st.integers(0, 100), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_minference_converter_differs_only_past_kv_len_in_the_last_row_block(q_len, extra, nv, ns, seed):
    rng = np.random.default_rng(seed)
    kv_len, causal = q_len + extra, True
    V = rng.integers(0, kv_len, (1, 2, nv))
    S = rng.integers(0, kv_len, (1, 2, ns))
    ours = sparse.convert_vertical_slash_indexes(q_len, kv_len, V, S)
    theirs = sparse.minference_convert_vertical_slash_indexes(q_len, kv_len, V, S)
    # columns are the same everywhere; blocks differ at most in the last row block, by starts >= kv_len
    np.testing.assert_array_equal(ours[2], theirs[2])
    np.testing.assert_array_equal(ours[3], theirs[3])
    np.testing.assert_array_equal(ours[0][..., :-1], theirs[0][..., :-1])
    np.testing.assert_array_equal(ours[1][..., :-1, :], theirs[1][..., :-1, :])
    for b, h in np.ndindex(1, 2):
        mine = ours[1][b, h, -1, : ours[0][b, h, -1]]
        extra_blocks = theirs[1][b, h, -1, : theirs[0][b, h, -1]]
        assert set(mine) <= set(extra_blocks) and all(x >= kv_len for x in set(extra_blocks) - set(mine))
    # and the kernels read the same keys (they bound keys by kv_len)
    rows = slice(0, q_len)
    np.testing.assert_array_equal(sparse._kernel_rows(rows, q_len, kv_len, ours, causal, 64, 64),
                                  sparse._kernel_rows(rows, q_len, kv_len, theirs, causal, 64, 64))


def test_minference_converter_lists_do_differ():
    rng = np.random.default_rng(0)
    differs = 0
    for _ in range(40):
        q_len = int(rng.integers(1, 300))
        kv_len = q_len + int(rng.integers(0, 100))
        V, S = rng.integers(0, kv_len, (1, 2, 5)), rng.integers(0, kv_len, (1, 2, 5))
        a = sparse.convert_vertical_slash_indexes(q_len, kv_len, V, S)
        b = sparse.minference_convert_vertical_slash_indexes(q_len, kv_len, V, S)
        differs += not all(np.array_equal(x, y) for x, y in zip(a, b))
    assert differs > 0
