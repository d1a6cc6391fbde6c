"""Every backend's vertical-slash sparse attention (estimation, conversion, masks, attention), A-shape and tri-shape agree with the spec.

Index conversions and masks are integer/boolean: they must be identical.  The
estimated index sets are compared as top-k sets of the estimation scores: two
implementations may order near-equal scores differently, so an index may differ
only where its score ties the k-th best within the precision's noise.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from yarnref.softmax_attention import attention
from yarnref.errors import InputError
from yarnref.testing import assert_close, dtype_name, to_float64

from conftest import as_inputs, backend_dtypes, backend_settings


def spec(name: str):
    """The spec function; a missing one fails the test (it is part of the oracle surface)."""
    return getattr(importlib.import_module("yarnref.sparse"), name)


def op(backend, name: str):
    """The backend's operation; every backend implements every operation, so a missing one fails."""
    return getattr(backend, name)


def to_int(x) -> np.ndarray:
    return np.asarray(to_float64(x)).astype(np.int64)


@st.composite
def qkv_shapes(draw, causal: bool = True, max_len: int = 150):
    kv_len = draw(st.integers(1, max_len), label="kv_len")
    q_len = draw(st.integers(1, kv_len) if causal else st.integers(1, max_len), label="q_len")
    kv_heads = draw(st.integers(1, 2), label="kv_heads")
    group = draw(st.sampled_from([1, 2, 3]), label="group")
    head_dim = draw(st.sampled_from([16, 32]), label="head_dim")
    batch = draw(st.integers(1, 2), label="batch")
    v_dim = draw(st.sampled_from([head_dim, 8]), label="v_dim")
    return (batch, kv_heads * group, q_len, head_dim), (batch, kv_heads, kv_len, head_dim), (batch, kv_heads, kv_len, v_dim)


@st.composite
def index_lists(draw, batch: int, heads: int, q_len: int, kv_len: int, causal: bool):
    """Random vertical/slash lists in any order, with duplicates and -1 padding (per-head budgets)."""
    reach = kv_len if causal else kv_len + q_len  # the distances that can occur
    n_v = draw(st.integers(0, 12), label="n_vertical")
    n_s = draw(st.integers(0, 12), label="n_slash")
    rng = np.random.default_rng(draw(st.integers(0, 2**16), label="index_seed"))
    vertical = rng.integers(0, kv_len, (batch, heads, n_v))
    slash = rng.integers(0, reach, (batch, heads, n_s))
    if draw(st.booleans(), label="force_delta_0") and n_s:
        slash[..., 0] = 0  # MInference and vLLM always keep the main diagonal
    for idx in (vertical, slash):
        if idx.shape[-1]:
            pad = rng.integers(0, idx.shape[-1] + 1, (batch, heads))  # entries past `keep` become -1 padding
            idx[np.arange(idx.shape[-1]) >= (idx.shape[-1] - pad)[..., None]] = -1
    return vertical, slash


# ----------------------------------------------------------------------------- estimation


def estimation_scores(q, k, last_q, scale, force_verticals, force_slashes):
    """The estimation's vertical and slash scores, written independently of the spec (row by row)."""
    batch, q_heads, q_len, d = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    m = min(last_q, q_len)
    group = q_heads // kv_heads
    vertical = np.zeros((batch, q_heads, kv_len))
    slash = np.zeros((batch, q_heads, kv_len))
    for r in range(m):
        pos = kv_len - m + r  # the query's absolute position
        kk = np.repeat(k[:, :, : pos + 1], group, axis=1)  # causal keys, per query head
        logits = scale * np.einsum("bhd,bhjd->bhj", q[:, :, q_len - m + r], kk)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        vertical[..., : pos + 1] += p
        slash[..., : pos + 1] += p[..., ::-1]  # distance delta = pos - j
    vertical[..., :force_verticals] = np.inf
    slash[..., :force_slashes] = np.inf
    return vertical, slash


def assert_padded_and_sorted(idx, ascending: bool, what: str):
    """Valid entries first (strictly ascending or descending), then -1 padding."""
    idx = to_int(idx)
    valid = idx >= 0
    assert np.all(np.diff(valid.astype(int), axis=-1) <= 0), f"{what}: padding before a valid entry"
    step = np.diff(idx, axis=-1)[valid[..., 1:]]  # consecutive valid pairs
    assert np.all(step > 0 if ascending else step < 0), f"{what}: not strictly {'ascending' if ascending else 'descending'}"


def assert_valid_top_k(got, want, score, tol, what):
    """``got`` and ``want`` are the same top-k sets of ``score``, up to entries tied with the k-th best within ``tol``."""
    got, want = to_int(got), to_int(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs the spec's {want.shape}"
    for b, h in np.ndindex(*got.shape[:2]):
        g, w = got[b, h], want[b, h]
        assert np.array_equal(g < 0, w < 0), f"{what}[{b}, {h}]: padding differs: {g} vs {w}"
        g_set, w_set = set(g[g >= 0].tolist()), set(w[w >= 0].tolist())
        assert len(g_set) == (g >= 0).sum(), f"{what}[{b}, {h}] repeats an index: {g}"
        if g_set == w_set:
            continue
        kth = score[b, h, sorted(w_set)].min()  # the k-th best score
        for j in g_set ^ w_set:
            s = score[b, h, j]
            assert s == kth or abs(s - kth) <= tol, f"{what}[{b}, {h}]: index {j} (score {s}) differs, k-th score {kth}"


@backend_settings
@given(data=st.data())
def test_estimated_indices_agree_with_the_spec(backend, data):
    want_fn, fn = spec("vertical_slash_indices"), op(backend, "vertical_slash_indices")
    q_shape, k_shape, _ = data.draw(qkv_shapes(max_len=120))
    dtype = data.draw(st.sampled_from(backend_dtypes(backend)), label="dtype")
    heads = q_shape[1]
    per_head = data.draw(st.booleans(), label="per_head_budgets")
    budget = st.lists(st.integers(1, 80), min_size=heads, max_size=heads).map(np.array) if per_head else st.integers(1, 80)
    vertical_size, slash_size = data.draw(budget, label="vertical_size"), data.draw(budget, label="slash_size")
    last_q = data.draw(st.integers(1, 70), label="last_q")
    force_v, force_s = data.draw(st.integers(0, 40), label="force_verticals"), data.draw(st.integers(0, 120), label="force_slashes")
    scale = data.draw(st.sampled_from([None, 0.5]), label="scale")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    (q, q64), (k, k64) = as_inputs(backend, rng.standard_normal(q_shape) * 2, dtype), as_inputs(backend, rng.standard_normal(k_shape) * 2, dtype)
    kwargs = {"scale": scale, "force_verticals": force_v, "force_slashes": force_s}
    got_v, got_s = fn(q, k, vertical_size, slash_size, last_q, **kwargs)
    want_v, want_s = want_fn(q64, k64, vertical_size, slash_size, last_q, **kwargs)
    assert_padded_and_sorted(got_v, ascending=True, what="vertical_idx")
    assert_padded_and_sorted(got_s, ascending=False, what="slash_idx")
    v_score, s_score = estimation_scores(q64, k64, last_q, scale or 1 / np.sqrt(q_shape[-1]), force_v, force_s)
    tol = 1e-9 if dtype == "float64" else 1e-4  # float32 arithmetic on the same inputs
    assert_valid_top_k(got_v, want_v, v_score, tol, "vertical_idx")
    assert_valid_top_k(got_s, want_s, s_score, tol, "slash_idx")


@backend_settings
@given(data=st.data())
def test_torch_estimation_in_key_chunks_equals_one_shot(backend, data):
    """The torch estimation bounds its memory from a byte budget (keys cast a chunk at a time, scores sorted a run of
    heads at a time); forced tiny budgets (one key and one head per step, or a few) give the one-shot result bit for bit."""
    if backend.name != "torch":
        pytest.skip("the torch backend's memory budget")
    torch_sparse = importlib.import_module("yarnref_torch.sparse")
    fn = op(backend, "vertical_slash_indices")
    q_shape, k_shape, _ = data.draw(qkv_shapes(max_len=160))
    dtype = data.draw(st.sampled_from(backend_dtypes(backend)), label="dtype")
    heads = q_shape[1]
    budgets = st.lists(st.integers(1, 90), min_size=heads, max_size=heads).map(np.array)
    vertical_size, slash_size = data.draw(budgets, label="vertical_size"), data.draw(budgets, label="slash_size")
    last_q = data.draw(st.integers(1, 70), label="last_q")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    (q, _), (k, _) = as_inputs(backend, rng.standard_normal(q_shape) * 2, dtype), as_inputs(backend, rng.standard_normal(k_shape) * 2, dtype)
    saved = torch_sparse.ESTIMATE_BYTES
    try:
        torch_sparse.ESTIMATE_BYTES = 1 << 40  # every key and head at once
        whole = fn(q, k, vertical_size, slash_size, last_q)
        torch_sparse.ESTIMATE_BYTES = data.draw(st.sampled_from([1, 2000, 40000]), label="estimate_bytes")
        grouped = fn(q, k, vertical_size, slash_size, last_q)
    finally:
        torch_sparse.ESTIMATE_BYTES = saved
    for got, want in zip(grouped, whole):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(to_int(got), to_int(want))


# ----------------------------------------------------------------------------- conversion and masks


@st.composite
def conversion_problems(draw):
    causal = draw(st.booleans(), label="causal")
    kv_len = draw(st.integers(1, 300), label="kv_len")
    q_len = draw(st.integers(1, kv_len) if causal else st.integers(1, 300), label="q_len")
    batch, heads = draw(st.integers(1, 2), label="batch"), draw(st.integers(1, 3), label="heads")
    vertical, slash = draw(index_lists(batch, heads, q_len, kv_len, causal))
    block_size_m = draw(st.sampled_from([16, 32, 64]), label="block_size_m")
    block_size_n = block_size_m * draw(st.sampled_from([1, 2]), label="bn/bm")
    return q_len, kv_len, vertical, slash, block_size_m, block_size_n, causal


@backend_settings
@given(conversion_problems())
def test_index_conversion_is_identical_to_the_spec(backend, problem):
    want_fn, fn = spec("convert_vertical_slash_indexes"), op(backend, "convert_vertical_slash_indexes")
    got = fn(*problem)
    want = want_fn(*problem)
    for name, g, w in zip(("block_count", "block_offset", "column_count", "column_index"), got, want):
        assert str(g.dtype).endswith("int32"), f"{name}: dtype {g.dtype}, the kernels take int32"
        np.testing.assert_array_equal(to_int(g), w, err_msg=name)


@backend_settings
@given(conversion_problems(), st.sampled_from(["exact", "kernel"]))
def test_masks_are_identical_to_the_spec(backend, problem, mode):
    want_fn, fn = spec("vertical_slash_mask"), op(backend, "vertical_slash_mask")
    q_len, kv_len, vertical, slash, bm, bn, causal = problem
    got = fn(q_len, kv_len, vertical, slash, mode, causal, block_size_m=bm, block_size_n=bn)
    want = want_fn(q_len, kv_len, vertical, slash, mode, causal, block_size_m=bm, block_size_n=bn)
    np.testing.assert_array_equal(to_float64(got).astype(bool), want)


@backend_settings
@given(conversion_problems())
def test_the_kernel_mask_contains_the_exact_one_when_the_diagonal_is_kept(backend, problem):
    fn = op(backend, "vertical_slash_mask")
    q_len, kv_len, vertical, slash, bm, bn, causal = problem
    if not causal:
        return  # the containment is a property of the causal kernels (see yarnref.sparse.vertical_slash_mask)
    slash = np.concatenate([slash, np.zeros(slash.shape[:2] + (1,), dtype=slash.dtype)], axis=-1)  # delta = 0
    exact = to_float64(fn(q_len, kv_len, vertical, slash, "exact", True, block_size_m=bm, block_size_n=bn)).astype(bool)
    kernel = to_float64(fn(q_len, kv_len, vertical, slash, "kernel", True, block_size_m=bm, block_size_n=bn)).astype(bool)
    assert not np.any(exact & ~kernel)


# ----------------------------------------------------------------------------- sparse attention


@backend_settings
@given(data=st.data())
def test_vertical_slash_attention_agrees_with_the_spec(backend, data):
    want_fn, fn = spec("vertical_slash_attention"), op(backend, "vertical_slash_attention")
    causal = data.draw(st.booleans(), label="causal")
    q_shape, k_shape, v_shape = data.draw(qkv_shapes(causal=causal, max_len=140))
    batch, heads, q_len, _ = q_shape
    kv_len = k_shape[2]
    vertical, slash = data.draw(index_lists(batch, heads, q_len, kv_len, causal))
    mode = data.draw(st.sampled_from(["kernel", "exact"]), label="mode")
    dtype = data.draw(st.sampled_from(backend_dtypes(backend)), label="dtype")
    bm = data.draw(st.sampled_from([16, 64]), label="block_size_m")
    scale = data.draw(st.sampled_from([None, 0.3]), label="scale")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    (q, q64), (k, k64), (v, v64) = (as_inputs(backend, rng.standard_normal(s), dtype) for s in (q_shape, k_shape, v_shape))
    kwargs = {"causal": causal, "block_size_m": bm, "block_size_n": bm}
    out, lse = fn(q, k, v, vertical, slash, mode, scale, True, **kwargs)
    want_out, want_lse = want_fn(q64, k64, v64, vertical, slash, mode, scale, True, **kwargs)
    assert dtype_name(out.dtype) == dtype
    assert_close(out, want_out, dtype=dtype, op="sparse", err_msg=f"out, mode={mode}")
    assert_close(lse, want_lse, dtype=dtype, op="sparse", err_msg=f"lse, mode={mode}")  # rows with no key: -inf


@backend_settings
@given(st.integers(1, 100), st.integers(0, 40), st.sampled_from(["exact", "kernel"]), st.integers(0, 2**16))
def test_a_full_budget_is_dense_causal_attention(backend, q_len, extra, mode, seed):
    fn = op(backend, "vertical_slash_attention")
    kv_len = q_len + extra
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, 2, q_len, 16))
    k, v = rng.standard_normal((2, 1, 1, kv_len, 16))
    vertical = np.full((1, 2, 1), -1)
    slash = np.broadcast_to(np.arange(kv_len)[::-1], (1, 2, kv_len))  # every distance
    got = fn(q, k, v, vertical, slash, mode)
    assert_close(got, attention(q, k, v, causal=True), dtype="float64", op="sparse")


@backend_settings
@given(data=st.data())
def test_a_shape_and_tri_shape_agree_with_the_spec(backend, data):
    q_shape, k_shape, v_shape = data.draw(qkv_shapes(max_len=160))
    dtype = data.draw(st.sampled_from(backend_dtypes(backend)), label="dtype")
    n_init, n_local = data.draw(st.integers(0, 20), label="n_init"), data.draw(st.integers(1, 50), label="n_local")
    n_last = data.draw(st.integers(0, 40), label="n_last")
    scale = data.draw(st.sampled_from([None, 0.3]), label="scale")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    (q, q64), (k, k64), (v, v64) = (as_inputs(backend, rng.standard_normal(s), dtype) for s in (q_shape, k_shape, v_shape))
    for name, args in (("a_shape_attention", (n_init, n_local)), ("tri_shape_attention", (n_init, n_local, n_last))):
        want_fn, fn = spec(name), op(backend, name)
        out, lse = fn(q, k, v, *args, scale=scale, return_lse=True)
        want_out, want_lse = want_fn(q64, k64, v64, *args, scale=scale, return_lse=True)
        assert dtype_name(out.dtype) == dtype
        assert_close(out, want_out, dtype=dtype, op="sparse", err_msg=f"{name} out")
        assert_close(lse, want_lse, dtype=dtype, op="sparse", err_msg=f"{name} lse")


def test_bad_sparse_inputs_raise_input_errors(backend):
    spec("vertical_slash_attention")
    q = np.zeros((1, 2, 8, 16))
    with pytest.raises(InputError, match="vertical_idx"):
        op(backend, "convert_vertical_slash_indexes")(8, 8, np.array([[[8]]]), np.array([[[0]]]))  # column 8 of 8
    with pytest.raises(InputError, match="slash_idx"):
        op(backend, "convert_vertical_slash_indexes")(8, 8, np.array([[[0]]]), np.array([[[-2]]]))
    with pytest.raises(InputError, match="block_size_n"):
        op(backend, "convert_vertical_slash_indexes")(8, 8, np.array([[[0]]]), np.array([[[0]]]), 64, 32)
    with pytest.raises(InputError, match="mode"):
        op(backend, "vertical_slash_attention")(q, q, q, np.zeros((1, 2, 1), int), np.zeros((1, 2, 1), int), mode="dense")
    with pytest.raises(InputError, match="vertical_size"):
        op(backend, "vertical_slash_indices")(q, q, 0, 10)
    with pytest.raises(InputError, match="n_local"):
        op(backend, "a_shape_attention")(q, q, q, 4, 0)
    with pytest.raises(InputError, match="q_len"):
        op(backend, "vertical_slash_mask")(9, 8, np.zeros((1, 1, 1), int), np.zeros((1, 1, 1), int))


def test_non_finite_inputs_are_rejected_and_large_finite_ones_are_not(backend):
    """NaN/inf in q, k or v is an InputError naming it; finite values whose float32 sum overflows pass."""
    fn = op(backend, "vertical_slash_attention")
    idx = np.zeros((1, 2, 1), int)
    for name, bad in (("k", np.nan), ("v", np.inf), ("q", -np.inf)):
        arrays = {n: np.zeros((1, 2, 8, 16)) for n in "qkv"}
        arrays[name][0, 1, 3, 2] = bad
        with pytest.raises(InputError) as exc:
            fn(arrays["q"], arrays["k"], arrays["v"], idx, idx)
        assert exc.value.param == name
    q, q64 = as_inputs(backend, np.zeros((1, 2, 8, 16)), "float32")
    big, big64 = as_inputs(backend, np.full((1, 2, 8, 16), 1e37), "float32")  # 256 of them overflow a float32 sum
    assert_close(fn(q, big, big, idx, idx), spec("vertical_slash_attention")(q64, big64, big64, idx, idx), dtype="float32", op="sparse")


@pytest.mark.gpu
def test_cuda_sparse_attention_runs_the_kernel_and_agrees(backend):
    """torch-cuda, bf16, mode="kernel": the Triton path, checked against the spec at 2K tokens."""
    torch = pytest.importorskip("torch")
    if backend.name != "torch" or backend.device.type != "cuda":
        pytest.skip("a torch-cuda test")
    want_fn, fn = spec("vertical_slash_attention"), op(backend, "vertical_slash_attention")
    rng = np.random.default_rng(0)
    n = 2048
    (q, q64), (k, k64), (v, v64) = (as_inputs(backend, rng.standard_normal((1, 4, n, 64)), "bfloat16") for _ in range(3))
    vertical, slash = op(backend, "vertical_slash_indices")(q, k, 100, 200)
    out, lse = fn(q, k, v, vertical, slash, "kernel", None, True)
    want_out, want_lse = want_fn(q64, k64, v64, to_int(vertical), to_int(slash), "kernel", None, True)
    assert_close(out, want_out, dtype="bfloat16", op="sparse")
    assert_close(lse, want_lse, dtype="bfloat16", op="sparse")


@pytest.mark.parametrize(
    "q_len, kv_len, n_init, n_local, n_last",
    [(2, 2, 2, 1, 1), (3, 7, 10, 1, 0), (5, 5, 0, 20, 9), (1, 40, 3, 2, 1), (9, 9, 4, 3, 0)],
)
def test_streaming_edge_cases_agree_with_the_spec(backend, q_len, kv_len, n_init, n_local, n_last):
    """Sinks reaching past the window, windows longer than the sequence, n_last beyond q_len."""
    rng = np.random.default_rng(q_len * 100 + kv_len)
    q = rng.standard_normal((1, 2, q_len, 16))
    k, v = rng.standard_normal((2, 1, 1, kv_len, 16))
    for name, args in (("a_shape_attention", (n_init, n_local)), ("tri_shape_attention", (n_init, n_local, n_last))):
        out, lse = op(backend, name)(q, k, v, *args, return_lse=True)
        want_out, want_lse = spec(name)(q, k, v, *args, return_lse=True)
        assert_close(out, want_out, dtype="float64", op="sparse", err_msg=name)
        assert_close(lse, want_lse, dtype="float64", op="sparse", err_msg=name)
