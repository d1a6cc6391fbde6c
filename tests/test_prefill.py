"""Tests of yarnref.prefill: chunked prefill, and the Qwen2.5-1M pipeline (DCA + vertical-slash)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import yarnref
from yarnref import prefill, sparse
from yarnref.softmax_attention import attention
from yarnref.dca import dca_attention, dca_config, dca_position_ids, qwen_attention_scale
from yarnref.errors import ConfigError, InputError
from yarnref.rope import apply_rope, base_inv_freq, rope_cos_sin

from conftest import backend_settings

# ----------------------------------------------------------------------------- helpers


def qkv(rng, b=1, hq=4, hk=2, tq=96, tk=96, d=16):
    return rng.standard_normal((b, hq, tq, d)), rng.standard_normal((b, hk, tk, d)), rng.standard_normal((b, hk, tk, d))


def masked_softmax(logits, v, mask):
    """Softmax of logits (b, hq, tq, tk) over mask, times v (b, hk, tk, dv) with GQA."""
    group = logits.shape[1] // v.shape[1]
    vr = np.repeat(v, group, axis=1)
    logits = np.where(mask, logits, -np.inf)
    m = logits.max(-1, keepdims=True)
    w = np.exp(logits - m)
    return np.einsum("bhij,bhjd->bhid", w, vr) / w.sum(-1, keepdims=True), (np.log(w.sum(-1)) + m[..., 0])


def plain_logits(q, k, scale=None):
    group = q.shape[1] // k.shape[1]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return scale * np.einsum("bhid,bhjd->bhij", q, np.repeat(k, group, axis=1))


def causal(tq, tk):
    return np.arange(tk)[None, :] <= (np.arange(tq) + tk - tq)[:, None]


def rotate(x, inv_freq, positions):
    cos, sin = rope_cos_sin(inv_freq, positions)
    return apply_rope(x, cos, sin)


def dca_logits(q, k, inv_freq, chunk_size, local_size, scale):
    """DCA logits (b, hq, tq, tk) straight from the position rules: the part by chunk distance (the rules in yarnref.dca's module docstring)."""
    tq, tk = q.shape[2], k.shape[2]
    off = tk - tq
    L = chunk_size - local_size
    ids = dca_position_ids(tk, chunk_size, local_size)
    k_rot = rotate(k, inv_freq, ids.key)
    by_part = [plain_logits(rotate(q, inv_freq, pos[off:]), k_rot, scale) for pos in (ids.intra, ids.successive, ids.inter)]
    distance = (np.arange(off, tk) // L)[:, None] - (np.arange(tk) // L)[None, :]
    return np.where(distance == 0, by_part[0], np.where(distance == 1, by_part[1], by_part[2]))


def plan_mask(plan, batch, heads, tq, tk):
    """The union over a plan's segments and parts of the kernels' key sets, in absolute key coordinates."""
    off = tk - tq
    mask = np.zeros((batch, heads, tq, tk), dtype=bool)
    for seg in plan:
        rows = slice(seg.begin - off, seg.end - off)
        for part in seg.parts.values():
            a, z = part.keys
            mask[:, :, rows, a:z] = sparse.vertical_slash_mask(
                seg.end - seg.begin, z - a, part.vertical_idx, part.slash_idx, "kernel", part.causal
            )
    return mask


C, LOCAL = 80, 16  # chunk_len L = 64
L = C - LOCAL
INV_FREQ = 1.0 / 10000 ** (np.arange(0, 16, 2) / 16)


def make_config(table, threshold=100, **extra):
    return {
        "dual_chunk_attention_config": {
            "chunk_size": C,
            "local_size": LOCAL,
            "sparse_attention_threshold": threshold,
            "sparse_attention_config": table,
            **extra,
        }
    }


def table_for(budgets, layers=1):
    """A sparse_attention_config: one layer entry (JSON-style string head ids) per layer."""
    return [{str(h): ["vertical_and_slash", v, s, 0.95] for h, (v, s) in enumerate(budgets)} for _ in range(layers)]


BUDGETS = [(31, 50), (40, 60), (30, 100), (200, 120)]


# ----------------------------------------------------------------------------- chunked prefill


@given(st.integers(1, 90), st.integers(0, 40), st.integers(1, 100), st.sampled_from([(2, 2), (4, 2), (4, 1)]))
def test_chunked_dense_equals_whole(q_len, extra, chunk, heads):
    rng = np.random.default_rng(q_len * 100 + extra)
    q, k, v = qkv(rng, hq=heads[0], hk=heads[1], tq=q_len, tk=q_len + extra, d=8)
    out, lse = prefill.chunked_prefill(q, k, v, chunk, return_lse=True)
    ref, ref_lse = attention(q, k, v, return_lse=True)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["kernel", "exact"])
@pytest.mark.parametrize("q_len,kv_len,chunk", [(200, 200, 70), (150, 230, 64), (130, 130, 130)])
def test_chunked_sparse_is_a_masked_softmax_over_each_chunks_pattern(mode, q_len, kv_len, chunk):
    rng = np.random.default_rng(q_len + chunk)
    q, k, v = qkv(rng, tq=q_len, tk=kv_len)
    budgets = dict(vertical_size=np.array([31, 35, 40, 30]), slash_size=60, last_q=16, mode=mode)
    out, lse = prefill.chunked_prefill(q, k, v, chunk, 0.3, sparse=budgets, return_lse=True)
    off = kv_len - q_len
    mask = np.zeros((1, 4, q_len, kv_len), dtype=bool)
    for start in range(0, q_len, chunk):
        stop = min(start + chunk, q_len)
        end = stop + off
        V, S = sparse.vertical_slash_indices(q[:, :, start:stop], k[:, :, :end], budgets["vertical_size"], 60, 16, scale=0.3)
        mask[:, :, start:stop, :end] = sparse.vertical_slash_mask(stop - start, end, V, S, mode)
    ref, ref_lse = masked_softmax(plain_logits(q, k, 0.3), v, mask)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12, atol=1e-12)
    if chunk >= q_len:  # one chunk: the plain vertical-slash attention
        V, S = sparse.vertical_slash_indices(q, k, budgets["vertical_size"], 60, 16, scale=0.3)
        np.testing.assert_allclose(out, sparse.vertical_slash_attention(q, k, v, V, S, mode, 0.3), rtol=1e-13, atol=1e-13)


def test_chunked_sparse_full_budget_is_dense():
    rng = np.random.default_rng(1)
    q, k, v = qkv(rng, tq=150, tk=150)
    out = prefill.chunked_prefill(q, k, v, 40, sparse=dict(vertical_size=150, slash_size=150))
    np.testing.assert_allclose(out, attention(q, k, v), rtol=1e-12, atol=1e-12)


def test_chunked_prefill_runs_on_each_backend(backend):
    rng = np.random.default_rng(2)
    q, k, v = qkv(rng, tq=50, tk=70)
    with yarnref.use_backend(backend):
        out, lse = prefill.chunked_prefill(*(backend.asarray(a) for a in (q, k, v)), 16, return_lse=True)
    ref, ref_lse = attention(q, k, v, return_lse=True)
    np.testing.assert_allclose(backend.to_numpy(out), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(backend.to_numpy(lse), ref_lse, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- the per-head table


def test_sparse_config_table():
    cfg = make_config(table_for(BUDGETS, layers=2))
    budgets = prefill.sparse_attention_config_for(cfg, 1)
    assert budgets.vertical_size.tolist() == [31, 40, 130, 200]  # vLLM: 30 -> 130
    assert budgets.config_vertical_size.tolist() == [31, 40, 30, 200]
    assert budgets.slash_size.tolist() == [50, 60, 100, 120]
    assert budgets.score.tolist() == [0.95] * 4
    tp = prefill.sparse_attention_config_for(dca_config(cfg), 0, heads=(2, 4))
    assert tp.vertical_size.tolist() == [130, 200] and tp.slash_size.tolist() == [100, 120]
    # Integer head ids, and a dict keyed by layer, are read too.
    as_ints = [{h: ["vertical_and_slash", v, s, 1.0] for h, (v, s) in enumerate(BUDGETS)}]
    assert prefill.sparse_attention_config_for(make_config(as_ints), 0).slash_size.tolist() == [50, 60, 100, 120]
    by_layer = {"0": table_for(BUDGETS)[0]}
    assert prefill.sparse_attention_config_for(make_config(by_layer), 0).vertical_size.tolist() == [31, 40, 130, 200]


def test_fallback_indices_match_torch():
    torch = pytest.importorskip("torch")
    for n in list(range(1, 3000)) + [253952, 262143, 1_000_003]:
        want = torch.arange(0, n, max(1, n / 5), dtype=torch.int32).numpy()
        assert np.array_equal(prefill.vllm_fallback_indices(n), want), n


def test_fallback_indices_examples():
    assert prefill.vllm_fallback_indices(7).tolist() == [0, 1, 2, 3, 4]
    assert prefill.vllm_fallback_indices(64).tolist() == [0, 12, 24, 36, 48]
    assert prefill.vllm_fallback_indices(3).tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------- the Qwen2.5-1M pipeline


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    return qkv(rng, tq=256, tk=256)


def test_below_threshold_is_dense_dca(data):
    q, k, v = data
    cfg = make_config(table_for(BUDGETS), threshold=256)  # kv_len == threshold: not above it
    out, lse = prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, return_lse=True)
    ref, ref_lse = dca_attention(q, k, v, INV_FREQ, C, LOCAL, return_lse=True)
    assert np.array_equal(out, ref) and np.array_equal(lse, ref_lse)
    # Sparse disabled: dense whatever the length.
    off = make_config(table_for(BUDGETS), threshold=10, sparse_attention_enabled=False)
    assert np.array_equal(prefill.qwen_prefill(q, k, v, INV_FREQ, off), ref)


@pytest.mark.parametrize("temperature_from", [None, 64])
@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_full_budgets_are_dense_dca(data, pairing, temperature_from):
    q, k, v = data
    extra = {"original_max_position_embeddings": temperature_from} if temperature_from else {}
    cfg = make_config(table_for([(256, 256)] * 4), **extra)
    out, lse = prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, pairing=pairing, return_lse=True)
    kwargs = {"temperature": "qwen", "original_max_position_embeddings": temperature_from} if temperature_from else {}
    ref, ref_lse = dca_attention(q, k, v, INV_FREQ, C, LOCAL, pairing=pairing, return_lse=True, **kwargs)
    np.testing.assert_allclose(out, ref, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("q_len,prefill_chunk", [(256, None), (256, 100), (256, 37), (190, None), (190, 50)])
def test_sparse_is_a_masked_softmax_with_dca_positions(q_len, prefill_chunk):
    rng = np.random.default_rng(4 + q_len)
    q, k, v = qkv(rng, tq=q_len, tk=256)
    cfg = make_config(table_for(BUDGETS), original_max_position_embeddings=100)
    out, lse = prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, 0.2, prefill_chunk_size=prefill_chunk, return_lse=True)
    plan = prefill.qwen_sparse_plan(q, k, INV_FREQ, cfg, 0.2, prefill_chunk_size=prefill_chunk)
    # Segments: cut at multiples of L inside each prefill chunk.
    bounds = sorted({256 - q_len, 256} | {b for b in range(0, 256, L) if b > 256 - q_len}
                    | ({256 - q_len + c for c in range(0, q_len, prefill_chunk)} if prefill_chunk else set()))
    assert [(s.begin, s.end) for s in plan] == list(zip(bounds[:-1], bounds[1:]))
    s = qwen_attention_scale(256, 100)
    mask = plan_mask(plan, 1, 4, q_len, 256) & causal(q_len, 256)
    assert not np.array_equal(mask, causal(q_len, 256))  # really sparse
    ref, ref_lse = masked_softmax(dca_logits(q, k, INV_FREQ, C, LOCAL, 0.2 * s * s), v, mask)
    np.testing.assert_allclose(out, ref, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-11, atol=1e-11)


def vllm_estimate(q, k, scale, begin, end, budgets, last_q=64):
    """vLLM's estimation for one segment (batch 0), built the way vLLM builds it: three key blocks side by side."""
    cs = (begin // L) * L
    off = k.shape[2] - q.shape[2]
    lq = min(end - begin, last_q)
    ids = dca_position_ids(k.shape[2], C, LOCAL)
    rows = np.arange(end - lq, end)
    q_rows = q[:, :, rows - off]
    k_rot = rotate(k[:, :, :end], INV_FREQ, ids.key[:end])
    logits = np.concatenate(
        [
            plain_logits(rotate(q_rows, INV_FREQ, ids.inter_critical[rows]), k_rot[:, :, : max(cs - L, 0)], scale),
            plain_logits(rotate(q_rows, INV_FREQ, ids.successive_critical[rows]), k_rot[:, :, max(cs - L, 0) : cs], scale),
            plain_logits(rotate(q_rows, INV_FREQ, ids.intra[rows]), k_rot[:, :, cs:end], scale),
        ],
        axis=-1,
    )[0]  # (heads, lq, end)
    logits = np.where(np.arange(end)[None, :] <= rows[:, None], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    result = []
    for h in range(p.shape[0]):
        vert = p[h].sum(0)
        vert[:30] = np.inf
        diag = np.zeros(end)
        for r, i in enumerate(rows):
            diag[: i + 1] += p[h, r, i::-1]  # diag[delta] += p[r, i - delta]
        diag[:100] = np.inf
        n_v = min(end, max(budgets.vertical_size[h], 30))
        n_s = min(end, max(budgets.slash_size[h], 50))
        top_v = sorted(sorted(range(end), key=lambda j: (-vert[j], j))[:n_v])
        top_s = sorted(sorted(range(end), key=lambda d: (-diag[d], d))[:n_s], reverse=True)
        result.append((top_v, top_s))
    return result


def vllm_split(top_v, top_s, begin, end):
    """vLLM's split of one head's whole-row indices, in its own t = end - 1 - delta coordinates, with fallbacks."""
    cs = (begin // L) * L
    qlen = end - begin
    t = [end - 1 - d for d in top_s]

    def fallback(n):
        step = max(1, n / 5)
        return [i * int(step) for i in range(math.ceil(n / step))]

    parts = {"intra": ([c - cs for c in top_v if c >= cs] or fallback(end - cs), [end - 1 - x for x in t if x >= cs])}
    if cs - L >= 0:
        parts["successive"] = (
            [c - (cs - L) for c in top_v if cs - L <= c < cs] or fallback(L),
            [cs + qlen - 1 - x for x in t if cs - L <= x < cs + qlen] or fallback(L),
        )
    if cs - 2 * L >= 0:
        parts["inter"] = (
            [c for c in top_v if c < cs - L] or fallback(cs - L),
            [cs - L + qlen - 1 - x for x in t if x < cs - L + qlen] or fallback(cs - L),
        )
    return parts


@pytest.mark.parametrize("prefill_chunk", [None, 100])
def test_plan_matches_vllm_estimation_and_split(prefill_chunk):
    rng = np.random.default_rng(5)
    q, k, _ = qkv(rng, tq=256, tk=256)
    cfg = make_config(table_for(BUDGETS), sparse_attention_last_q=16)
    plan = prefill.qwen_sparse_plan(q, k, INV_FREQ, cfg, 0.25, prefill_chunk_size=prefill_chunk)
    budgets = prefill.sparse_attention_config_for(cfg, 0)
    fallbacks = {"vertical": 0, "slash": 0}
    for seg in plan:
        expected = vllm_estimate(q, k, 0.25, seg.begin, seg.end, budgets, last_q=16)
        for h, (top_v, top_s) in enumerate(expected):
            assert seg.vertical_idx[0, h][seg.vertical_idx[0, h] >= 0].tolist() == top_v
            assert seg.slash_idx[0, h][seg.slash_idx[0, h] >= 0].tolist() == top_s
            split = vllm_split(top_v, top_s, seg.begin, seg.end)
            assert set(split) == set(seg.parts)
            for name, (want_v, want_s) in split.items():
                part = seg.parts[name]
                got_v = part.vertical_idx[0, h][part.vertical_idx[0, h] >= 0]
                got_s = part.slash_idx[0, h][part.slash_idx[0, h] >= 0]
                assert sorted(got_v.tolist()) == sorted(want_v) and sorted(got_s.tolist()) == sorted(want_s), (seg, name, h)
                cs = seg.chunk_start
                key_count = {"intra": seg.end - cs, "successive": L, "inter": cs - L}[name]
                fb = prefill.vllm_fallback_indices(key_count).tolist()
                fallbacks["vertical"] += not any(
                    lo <= c < hi for c in top_v for lo, hi in [part.keys]
                ) and got_v.tolist() == fb
                fallbacks["slash"] += name != "intra" and got_s.tolist() == fb
    # v = 31 leaves one of intra/successive without a vertical; s = 50 (only distances < 50) leaves inter without a slash.
    assert fallbacks["vertical"] > 0 and fallbacks["slash"] > 0


def test_vertical_budget_30_is_130(data):
    q, k, _ = data
    cfg = make_config(table_for([(30, 50)] * 4))
    plan = prefill.qwen_sparse_plan(q, k, INV_FREQ, cfg)
    for seg in plan:
        assert np.all((seg.vertical_idx >= 0).sum(-1) == min(seg.end, 130))


def test_tensor_parallel_head_slices(data):
    q, k, v = data
    cfg = make_config(table_for(BUDGETS))
    whole = prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, prefill_chunk_size=100)
    halves = [
        prefill.qwen_prefill(q[:, 2 * r : 2 * r + 2], k[:, r : r + 1], v[:, r : r + 1], INV_FREQ, cfg, heads=(2 * r, 2 * r + 2), prefill_chunk_size=100)
        for r in range(2)
    ]
    np.testing.assert_allclose(np.concatenate(halves, axis=1), whole, rtol=1e-13, atol=1e-13)


def test_gqa_equals_repeated_kv(data):
    q, k, v = data
    cfg = make_config(table_for(BUDGETS))
    got = prefill.qwen_prefill(q, k, v, INV_FREQ, cfg)
    want = prefill.qwen_prefill(q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1), INV_FREQ, cfg)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_output_dtype_and_short_prompts():
    rng = np.random.default_rng(6)
    q, k, v = (a.astype(np.float32) for a in qkv(rng, tq=140, tk=140))
    cfg = make_config(table_for(BUDGETS), threshold=1)
    out = prefill.qwen_prefill(q, k, v, INV_FREQ, cfg)
    assert out.dtype == np.float32
    for n in (1, 2, 5):  # tiny prompts (vllm-project/vllm#19084), above a threshold of 1 when n > 1
        out = prefill.qwen_prefill(q[:, :, :n], k[:, :, :n], v[:, :, :n], INV_FREQ, cfg)
        ref = dca_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n], INV_FREQ, C, LOCAL)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- bad input


def bad_entry(value, head="1"):
    table = table_for(BUDGETS)
    table[0][head] = value
    return make_config(table)


@pytest.mark.parametrize(
    "config,key",
    [
        (bad_entry(["vertical_and_slash", 0, 50, 1.0]), "sparse_attention_config[0][1][1]"),
        (bad_entry(["vertical_and_slash", 40, -3, 1.0]), "sparse_attention_config[0][1][2]"),
        (bad_entry(["vertical_and_slash", 40.5, 50, 1.0]), "sparse_attention_config[0][1][1]"),
        (bad_entry(["stream_llm", 40, 50, 1.0]), "sparse_attention_config[0][1][0]"),
        (bad_entry(["vertical_and_slash", 40, 50]), "sparse_attention_config[0][1]"),
        (bad_entry(["vertical_and_slash", 40, 50, "high"]), "sparse_attention_config[0][1][3]"),
        (bad_entry(["vertical_and_slash", 40, 50, 1.0], head="x"), "sparse_attention_config[0] key"),
        (make_config([{str(h): ["vertical_and_slash", 40, 50, 1.0] for h in (0, 1, 3, 4)}]), "sparse_attention_config[0]"),
        ({"dual_chunk_attention_config": {"chunk_size": C, "local_size": LOCAL, "sparse_attention_enabled": True}}, "sparse_attention_config"),
        (make_config(table_for(BUDGETS), sparse_attention_last_q=0), "dual_chunk_attention_config.sparse_attention_last_q"),
    ],
)
def test_bad_sparse_config(data, config, key):
    q, k, v = data
    with pytest.raises(ConfigError) as err:
        prefill.qwen_prefill(q, k, v, INV_FREQ, config)
    assert err.value.key == key


def test_bad_input(data):
    q, k, v = data
    cfg = make_config(table_for(BUDGETS))
    cases = [
        (lambda: prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, layer=1), "layer"),
        (lambda: prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, layer=-1), "layer"),
        (lambda: prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, heads=(2, 1)), "heads"),
        (lambda: prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, heads=(0, 2)), "q"),
        (lambda: prefill.qwen_prefill(q[:, :2], k[:, :1], v[:, :1], INV_FREQ, cfg), "q"),
        (lambda: prefill.qwen_prefill(q, k[:, :, :100], v[:, :, :100], INV_FREQ, cfg), "q"),
        (lambda: prefill.qwen_prefill(q, k, v[:, :, :100], INV_FREQ, cfg), "v"),
        (lambda: prefill.qwen_prefill(q, k, v, INV_FREQ[None], cfg), "inv_freq"),
        (lambda: prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, prefill_chunk_size=0), "prefill_chunk_size"),
        (lambda: prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, pairing="gptj"), "pairing"),
        (lambda: prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, scale=0.0), "scale"),
        (lambda: prefill.qwen_prefill(q, k, v, INV_FREQ, [1, 2]), "dca"),
        (lambda: prefill.chunked_prefill(q, k, v, 0), "chunk_size"),
        (lambda: prefill.chunked_prefill(q, k, v, 10, sparse={"vertical_size": 30}), "sparse"),
        (lambda: prefill.chunked_prefill(q, k, v, 10, sparse={"vertical_size": 30, "slash_size": 50, "lastq": 3}), "sparse"),
        (lambda: prefill.chunked_prefill(q, k, v, 10, sparse={"vertical_size": 30, "slash_size": 50, "last_q": 0}), "sparse['last_q']"),
        (lambda: prefill.chunked_prefill(q, k, v, 10, sparse={"vertical_size": 0, "slash_size": 50}), "vertical_size"),
        (lambda: prefill.chunked_prefill(q, k, v, 10, sparse={"vertical_size": 30, "slash_size": 50, "mode": "fast"}), "sparse['mode']"),
        (lambda: prefill.chunked_prefill(q, k[:, :, :50], v[:, :, :50], 10), "q"),
        (lambda: prefill.vllm_fallback_indices(0), "n"),
    ]
    for call, param in cases:
        with pytest.raises(InputError) as err:
            call()
        assert err.value.param == param, (param, err.value)


@pytest.mark.parametrize("rotated_keys", [False, True])
def test_qwen_prefill_runs_on_each_backend(backend, rotated_keys):
    """Each backend computes the spec's pipeline, from un-rotated keys or from keys rotated once."""
    rng = np.random.default_rng(7)
    q, k, v = qkv(rng, tq=200, tk=200)
    cfg = make_config(table_for(BUDGETS))
    want, want_lse = prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, prefill_chunk_size=90, return_lse=True)
    keys = dca_rotated(k) if rotated_keys else k
    with yarnref.use_backend(backend):
        got, got_lse = prefill.qwen_prefill(
            *(backend.asarray(a) for a in (q, keys, v)), INV_FREQ, cfg, prefill_chunk_size=90, return_lse=True,
            rotated_keys=rotated_keys,
        )
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(backend.to_numpy(got_lse), want_lse, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- vLLM's in-place budget clamp


def test_vllm_in_place_budget_clamp_carries_the_first_segments_clamp():
    """vLLM writes min(budget, K) back into per-call budget tensors: later segments of the call inherit it."""
    rng = np.random.default_rng(11)
    tq = 200
    q, k, v = qkv(rng, tq=tq, tk=tq)
    big = [(150, 160), (40, 60), (30, 100), (200, 120)]  # budgets above the first segment's 64 keys
    cfg = make_config(table_for(big), sparse_attention_last_q=16)
    budgets = prefill.sparse_attention_config_for(cfg, 0)
    for chunk in (None, 100):
        plan = prefill.qwen_sparse_plan(q, k, INV_FREQ, cfg, 0.25, prefill_chunk_size=chunk, budget_clamp="vllm_in_place")
        # the reference: vLLM's estimation with the budgets clamped in place, reset at every call (prefill chunk)
        starts = list(range(0, tq, chunk or tq))
        current, call = None, None
        for seg in plan:
            this_call = max(i for i, s in enumerate(starts) if s <= seg.begin)
            if this_call != call:
                current, call = budgets, this_call
            current = current._replace(vertical_size=np.minimum(current.vertical_size, seg.end),
                                       slash_size=np.minimum(current.slash_size, seg.end))
            for h, (top_v, top_s) in enumerate(vllm_estimate(q, k, 0.25, seg.begin, seg.end, current, last_q=16)):
                assert seg.vertical_idx[0, h][seg.vertical_idx[0, h] >= 0].tolist() == top_v
                assert seg.slash_idx[0, h][seg.slash_idx[0, h] >= 0].tolist() == top_s
    # it matters here: the first segment (64 keys) clamps head 0's 150 verticals for the 200-key segment
    per_segment = prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, 0.25)
    in_place = prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, 0.25, budget_clamp="vllm_in_place")
    assert not np.allclose(per_segment, in_place)
    plan_default = prefill.qwen_sparse_plan(q, k, INV_FREQ, cfg, 0.25)
    assert (plan_default[-1].vertical_idx[0, 0] >= 0).sum() == 150
    with pytest.raises(InputError, match="budget_clamp"):
        prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, 0.25, budget_clamp="in_place")


def test_vllm_in_place_budget_clamp_is_inert_when_every_segment_has_enough_keys():
    rng = np.random.default_rng(12)
    q, k, v = qkv(rng, tq=200, tk=200)
    # every budget (no 30, which vLLM runs as 130) is at most the 64 keys of the shortest segment
    cfg = make_config(table_for([(31, 50), (40, 60), (35, 60), (45, 55)]), sparse_attention_last_q=16)
    np.testing.assert_array_equal(prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, 0.25),
                                  prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, 0.25, budget_clamp="vllm_in_place"))


def test_parts_where_no_head_needs_the_fallback_keep_their_own_width():
    """A part where every head has indices, fewer than the fallback's length, once crashed the compaction."""
    table = [{str(h): ["vertical_and_slash", v, s, 0.9] for h, (v, s) in enumerate([(150, 160), (40, 60)])}]
    cfg = make_config(table, sparse_attention_last_q=16)
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((3, 1, 2, 200, 16))
    inv = 1.0 / 10000 ** (np.arange(0, 16, 2) / 16)
    out = prefill.qwen_prefill(q, k, v, inv, cfg)
    assert out.shape == (1, 2, 200, 16) and np.all(np.isfinite(out))
    for seg in prefill.qwen_sparse_plan(q, k, inv, cfg):
        for part in seg.parts.values():
            assert np.all((part.vertical_idx >= 0).sum(-1) >= 1)  # every head keeps at least one vertical


def test_sparse_plan_when_no_part_needs_the_fallback():
    """A part whose rows all keep fewer indices than vLLM's fallback has (5), none of them empty, is fine.

    (The fallback row was once written into rows narrower than itself even when no row used it.)
    """
    rng = np.random.default_rng(4)
    d, T = 64, 1536
    q, k = rng.standard_normal((1, 2, T, d)), rng.standard_normal((1, 1, T, d))
    layer = {"0": ["vertical_and_slash", 100, 200, 0.9], "1": ["vertical_and_slash", 30, 50, 0.9]}
    config = {"dual_chunk_attention_config": {"chunk_size": 512, "local_size": 16, "original_max_position_embeddings": 0,
                                              "sparse_attention_threshold": 256, "sparse_attention_config": [layer]}}
    inv_freq = yarnref.base_inv_freq(d, 1e7)
    plan = yarnref.qwen_sparse_plan(q, k, inv_freq, config)
    widths = [part.vertical_idx.shape[-1] for segment in plan for part in segment.parts.values()]
    assert min(widths) < 5, "the configuration exercises a part narrower than the fallback"
    for segment in plan:
        for name, part in segment.parts.items():
            assert np.all(part.vertical_idx < part.keys[1] - part.keys[0]), name


# ----------------------------------------------------------------------------- keys rotated once (a rotated K/V cache)


def dca_rotated(k, pairing="half"):
    """Every key at its DCA key position r(j) = j mod L, as a cache written once per token holds it."""
    cos, sin = rope_cos_sin(INV_FREQ, dca_position_ids(k.shape[2], C, LOCAL).key)
    return apply_rope(k, cos, sin, pairing)


@given(seed=st.integers(0, 2**16), q_len=st.sampled_from([256, 190, 100]), prefill_chunk=st.sampled_from([None, 37, 100]),
       pairing=st.sampled_from(["half", "interleaved"]), kv_heads=st.sampled_from([1, 2, 4]))
def test_rotated_keys_equal_unrotated(seed, q_len, prefill_chunk, pairing, kv_heads):
    """``rotated_keys=True`` on keys rotated once: the same plans and, to float64 rounding, the same outputs."""
    rng = np.random.default_rng(seed)
    q, k, v = qkv(rng, hk=kv_heads, tq=q_len, tk=256)
    cfg = make_config(table_for(BUDGETS), original_max_position_embeddings=100)
    kw = dict(prefill_chunk_size=prefill_chunk, pairing=pairing)
    k_rot = dca_rotated(k, pairing)
    out, lse = prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, 0.2, return_lse=True, **kw)
    got, got_lse = prefill.qwen_prefill(q, k_rot, v, INV_FREQ, cfg, 0.2, return_lse=True, rotated_keys=True, **kw)
    np.testing.assert_allclose(got, out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_lse, lse, rtol=0, atol=1e-12)
    for a, b in zip(prefill.qwen_sparse_plan(q, k, INV_FREQ, cfg, 0.2, **kw),
                    prefill.qwen_sparse_plan(q, k_rot, INV_FREQ, cfg, 0.2, rotated_keys=True, **kw)):
        assert np.array_equal(a.vertical_idx, b.vertical_idx) and np.array_equal(a.slash_idx, b.slash_idx)
        for name in a.parts:
            assert all(np.array_equal(x, y) for x, y in zip(a.parts[name], b.parts[name]))


def test_rotated_keys_plan_matches_vllm_estimation():
    """The estimation from rotated keys is vLLM's (three key blocks of one rotated cache, three query rotations)."""
    rng = np.random.default_rng(5)
    q, k, _ = qkv(rng, tq=256, tk=256)
    cfg = make_config(table_for(BUDGETS), sparse_attention_last_q=16)
    budgets = prefill.sparse_attention_config_for(cfg, 0)
    for seg in prefill.qwen_sparse_plan(q, dca_rotated(k), INV_FREQ, cfg, 0.25, prefill_chunk_size=100, rotated_keys=True):
        for h, (top_v, top_s) in enumerate(vllm_estimate(q, k, 0.25, seg.begin, seg.end, budgets, last_q=16)):
            assert seg.vertical_idx[0, h][seg.vertical_idx[0, h] >= 0].tolist() == top_v
            assert seg.slash_idx[0, h][seg.slash_idx[0, h] >= 0].tolist() == top_s


def test_rotated_keys_option_is_read():
    """The option changes what k means: un-rotated keys passed as rotated give another result; dense refuses it."""
    rng = np.random.default_rng(6)
    q, k, v = qkv(rng, tq=256, tk=256)
    cfg = make_config(table_for(BUDGETS))
    out = prefill.qwen_prefill(q, k, v, INV_FREQ, cfg)
    assert np.abs(prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, rotated_keys=True) - out).max() > 1e-3
    with pytest.raises(InputError, match="rotated_keys"):
        prefill.qwen_prefill(q, dca_rotated(k), v, INV_FREQ, make_config(table_for(BUDGETS), threshold=256), rotated_keys=True)
    with pytest.raises(InputError, match="rotated_keys"):
        prefill.qwen_prefill(q, k, v, INV_FREQ, cfg, rotated_keys="yes")


def test_shifted_keys_equal_a_rotation_by_a_full_table():
    """The estimation's keys (one-row shift tables, broadcast by apply_rope) equal each block rotated with
    its shift repeated for every key, bit for bit, and keep the unshifted block as it is."""
    rng = np.random.default_rng(8)
    k_rot = rng.standard_normal((1, 2, 90, 16))
    inv = base_inv_freq(16, 10000.0)
    blocks = [(0, 30, -7), (30, 60, 0), (60, 90, 25)]
    got = prefill._shifted_keys(k_rot, "half", blocks, prefill._shift_tables(inv, blocks))
    want = np.concatenate([k_rot[:, :, a:b] if s == 0 else apply_rope(k_rot[:, :, a:b], *rope_cos_sin(inv, np.full(b - a, s)))
                           for a, b, s in blocks], axis=2)
    np.testing.assert_array_equal(got, want)


@given(seed=st.integers(0, 2**16), shape=st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 40)),
       sorted_rows=st.booleans(), shift=st.integers(-5, 5), fallback_len=st.one_of(st.none(), st.integers(1, 30)))
def test_compact_keeps_each_rows_entries_in_order(seed, shape, sorted_rows, shift, fallback_len):
    """``_compact`` (the split of a segment's indices into DCA parts) equals the row-by-row definition: the kept
    entries plus ``shift`` in their order, ``-1`` after them, the vLLM fallback in rows that keep nothing; for
    sorted rows and a range of values (one run per row, the pipeline's case) and for any mask."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(-1, 60, size=shape)
    if sorted_rows:
        idx = np.sort(idx, axis=-1)
        lo, hi = sorted(rng.integers(-1, 61, size=2))
        keep = (idx >= lo) & (idx < hi)
    else:
        keep = rng.random(shape) < rng.random()
    got = prefill._compact(idx, keep, shift, fallback_len)
    rows = [list(idx[r][keep[r]] + shift) for r in np.ndindex(*shape[:2])]
    fallback = list(prefill.vllm_fallback_indices(fallback_len)) if fallback_len is not None else []
    rows = [row if row or not fallback else fallback for row in rows]
    width = max(1, max(len(row) for row in rows))
    want = np.array([row + [-1] * (width - len(row)) for row in rows], dtype=np.int64).reshape(shape[:2] + (width,))
    assert got.dtype == np.int64 and np.array_equal(got, want)


@given(seed=st.integers(0, 2**16), shape=st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 40)),
       descending=st.booleans(), bounds=st.tuples(st.integers(-2, 62), st.one_of(st.none(), st.integers(-2, 62))),
       shift=st.integers(-5, 5), fallback_len=st.one_of(st.none(), st.integers(1, 30)))
def test_kept_range_equals_the_masked_compaction(seed, shape, descending, bounds, shift, fallback_len):
    """The pipeline's split (two binary searches per sorted row, ``_kept_range``) equals ``_compact`` of the mask
    ``low <= idx <= high`` bit for bit, for rows sorted either way with any amount of ``-1`` padding."""
    rng = np.random.default_rng(seed)
    idx = np.full(shape, -1, np.int64)
    for row in np.ndindex(*shape[:2]):  # each row: a sorted run of entries, then its padding
        n = rng.integers(0, shape[-1] + 1)
        values = np.sort(rng.integers(0, 60, size=n))
        idx[row][:n] = values[::-1] if descending else values
    low, high = bounds
    keep = (idx >= 0) & (idx >= low) & (True if high is None else idx <= high)
    valid = prefill._valid_counts(idx)
    got = prefill._kept_range(idx, valid, low, high, shift, fallback_len, descending)
    np.testing.assert_array_equal(got, prefill._compact(idx, keep, shift, fallback_len))



@st.composite
def estimated_groups(draw):
    """Per-head-group index sets as an estimation returns them (rows sorted, -1 padding at the end, each group its
    own width) and a segment: ``(verticals, slashes, begin, end, chunk_start, chunk_len)``."""
    L = draw(st.integers(1, 40), label="chunk_len")
    cs = L * draw(st.integers(0, 3), label="chunk")
    begin = draw(st.integers(cs, cs + L - 1), label="begin")
    end = draw(st.integers(begin + 1, cs + L), label="end")
    rng = np.random.default_rng(draw(st.integers(0, 2**16), label="seed"))
    batch = draw(st.integers(1, 2), label="batch")

    def group(heads, high, descending):
        width = rng.integers(0, 12)
        idx = np.full((batch, heads, width), -1, np.int64)
        for row in np.ndindex(batch, heads):
            n = rng.integers(0, width + 1)
            values = np.sort(rng.choice(high, size=min(n, high), replace=False))
            idx[row][: values.size] = values[::-1] if descending else values
        return idx

    heads = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3), label="heads per group")
    verticals = [group(h, end, False) for h in heads]
    slashes = [group(h, end, True) for h in heads]
    return verticals, slashes, begin, end, cs, L


def _split_by_masks(verticals, slashes, begin, end, cs, L):
    """Step 4 of the module docstring written out with masks over whole rows (``_compact`` of each part's mask)."""
    width_v = max(v.shape[-1] for v in verticals)
    width_s = max(s.shape[-1] for s in slashes)
    vertical = np.concatenate([np.pad(v, ((0, 0), (0, 0), (0, width_v - v.shape[-1])), constant_values=-1) for v in verticals], 1)
    slash = np.concatenate([np.pad(s, ((0, 0), (0, 0), (0, width_s - s.shape[-1])), constant_values=-1) for s in slashes], 1)
    V, S = vertical, slash
    parts = {"intra": ((cs, end), True, prefill._compact(V, V >= cs, -cs, end - cs),
                       prefill._compact(S, (S >= 0) & (S <= end - 1 - cs), 0, None))}
    if cs >= L:
        parts["successive"] = ((cs - L, cs), False, prefill._compact(V, (V >= cs - L) & (V < cs), -(cs - L), L),
                               prefill._compact(S, (S >= begin - cs) & (S <= end - 1 - cs + L), -(begin - cs), L))
    if cs >= 2 * L:
        parts["inter"] = ((0, cs - L), False, prefill._compact(V, (V >= 0) & (V < cs - L), 0, cs - L),
                          prefill._compact(S, S >= begin - cs + L, -(L + begin - cs), cs - L))
    return vertical, slash, parts


@given(case=estimated_groups())
def test_split_sparse_parts_follows_step_4(case):
    """The spec's split (binary searches per sorted row) equals step 4 written with masks, bit for bit: the
    joined whole rows, each part's keys, causality and lists (fallbacks included)."""
    vertical, slash, parts = prefill.split_sparse_parts(*case)
    want_v, want_s, want_parts = _split_by_masks(*case)
    np.testing.assert_array_equal(vertical, want_v)
    np.testing.assert_array_equal(slash, want_s)
    assert list(parts) == list(want_parts)
    for name, (keys, causal, v, s) in want_parts.items():
        assert (parts[name].keys, parts[name].causal) == (keys, causal)
        np.testing.assert_array_equal(parts[name].vertical_idx, v)
        np.testing.assert_array_equal(parts[name].slash_idx, s)


@given(case=estimated_groups())
@settings(backend_settings, max_examples=25, deadline=None)
def test_every_backend_splits_like_the_spec(case, backend):
    """Each backend's ``split_sparse_parts`` (the GPU backends: on the device, one small read-back) returns the
    spec's arrays exactly, as int64 arrays of that backend."""
    verticals, slashes, *segment = case
    want_v, want_s, want_parts = prefill.split_sparse_parts(verticals, slashes, *segment)
    vertical, slash, parts = backend.split_sparse_parts([backend.asarray(v) for v in verticals],
                                                        [backend.asarray(s) for s in slashes], *segment)
    for got, want in [(vertical, want_v), (slash, want_s)] + [
            (parts[n].vertical_idx, p.vertical_idx) for n, p in want_parts.items()] + [
            (parts[n].slash_idx, p.slash_idx) for n, p in want_parts.items()]:
        host = backend.to_numpy(got)
        assert host.dtype == np.int64
        np.testing.assert_array_equal(host, want)
    assert [(n, p.keys, p.causal) for n, p in parts.items()] == [(n, p.keys, p.causal) for n, p in want_parts.items()]


def test_split_sparse_parts_bad_input(backend):
    """A segment outside its DCA chunk, an empty or ragged group list, a float array: InputError naming it."""
    v, s = backend.asarray(np.array([[[0, 3, -1]]])), backend.asarray(np.array([[[2, 0, -1]]]))
    split = backend.split_sparse_parts
    for args, name in [((5, 9, 3, 4), "chunk_start"), ((3, 9, 4, 4), "begin"), ((4, 9, 4, 4), "end"),
                       ((4, 6, 4, 0), "chunk_len"), ((4, 4, 4, 4), "end")]:
        with pytest.raises(InputError, match=name):
            split([v], [s], *args)
    with pytest.raises(InputError, match="verticals"):
        split([], [s], 0, 4, 0, 4)
    with pytest.raises(InputError, match=r"slashes\[1\]"):
        split([v, v], [s, backend.asarray(np.zeros((2, 1, 3), np.int64))], 0, 4, 0, 4)
    with pytest.raises(InputError, match=r"verticals\[0\]"):
        split([backend.asarray(np.zeros((1, 1, 3)))], [s], 0, 4, 0, 4)
    with pytest.raises(InputError, match=r"verticals\[0\]"):
        split([backend.asarray(np.zeros((1, 3), np.int64))], [s], 0, 4, 0, 4)
    with pytest.raises(InputError, match=r"verticals\[0\]"):
        split([backend.asarray(np.zeros((1, 0, 3), np.int64))], [s], 0, 4, 0, 4)
    with pytest.raises(InputError, match="verticals.*sorted ascending"):  # out of order
        split([backend.asarray(np.array([[[3, 0, -1]]]))], [s], 0, 4, 0, 4)
    with pytest.raises(InputError, match="verticals.*sorted ascending"):  # padding before an entry
        split([backend.asarray(np.array([[[0, -1, 2]]]))], [s], 0, 4, 0, 4)
    with pytest.raises(InputError, match="slashes.*sorted descending"):
        split([v], [backend.asarray(np.array([[[0, 2, -1]]]))], 0, 4, 0, 4)
