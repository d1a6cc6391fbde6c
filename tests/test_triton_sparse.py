"""Tests of the Triton vertical-slash kernels (``backends/yarnref_torch/triton_sparse.py``).

On a CUDA machine the kernels run compiled; elsewhere they run under Triton's
CPU interpreter (``TRITON_INTERPRET=1``, set by this module only while its
tests run).  Everything skips cleanly where torch or triton is missing.

References:
* the sparse kernel (one row block per program, and two per program sharing
  K/V tiles) against a direct masked softmax in float64 built from the
  same (block, column) lists, counting a key once per listing, and the two
  launch forms against each other;
* the dense mode against the spec ``yarnref.attention`` in float64;
* the conversion against the spec ``yarnref.sparse.convert_vertical_slash_indexes``,
  the readable sequential merge of vLLM's ``vertical_slash_index.cu``;
* the pipeline (conversion + kernel) against the spec's
  ``vertical_slash_attention(..., mode="kernel")``, and against
  dense causal attention when every diagonal is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import yarnref
import yarnref.sparse
from yarnref.errors import InputError

from conftest import HAVE_TRITON, TRITON_INTERPRETED, load_triton_file

torch = pytest.importorskip("torch")

MODULE_PATH = Path(__file__).resolve().parent.parent / "backends" / "yarnref_torch" / "triton_sparse.py"
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# Triton decorates its own library (tl.zeros, ...) when it is first imported, so
# the interpreter must be switched on before that import: tests/conftest.py
# imports it so, switches the interpreter off again, and says so in the
# environment; it is on only while this module's tests run (fixture `ts`).
INTERPRETED = TRITON_INTERPRETED and not CUDA

_module_cache: dict[str, object] = {}


def _load(interpret: bool):
    """triton_sparse.py under a private name (the kernels are decorated for the interpreter if asked)."""
    return load_triton_file(MODULE_PATH, interpret)


@pytest.fixture
def ts(monkeypatch):
    """The module, ready to run kernels here (CUDA, or the CPU interpreter), else skip."""
    if not HAVE_TRITON:
        pytest.skip("triton is not installed")
    if CUDA:
        return _load(interpret=False)
    if not INTERPRETED:
        pytest.skip("no CUDA, and triton was imported before the interpreter could be switched on")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    mod = _load(interpret=True)
    if "interp_ok" not in _module_cache:
        try:  # some triton/numpy pairs break the interpreter (scalar loop bounds): skip, do not fail
            one = torch.ones((1, 1, 1), dtype=torch.int32)
            x = torch.zeros((1, 1, 16, 16), dtype=torch.float16)
            mod.sparse_attention_triton(x, x, x, one, torch.zeros((1, 1, 1, 1), dtype=torch.int32), one * 0,
                                        torch.zeros((1, 1, 1, 1), dtype=torch.int32), None, 16, 16)
            _module_cache["interp_ok"] = True
        except Exception as exc:  # noqa: BLE001
            _module_cache["interp_ok"] = repr(exc)
    if _module_cache["interp_ok"] is not True:
        pytest.skip(f"the Triton interpreter does not work here: {_module_cache['interp_ok']}")
    return mod


def _dtypes():
    # The interpreter's bf16 tl.dot is wrong (triton 3.6-3.9 reinterpret the bits), so bf16 runs on CUDA only.
    return [torch.float16, torch.bfloat16] if CUDA else [torch.float16]


# ----------------------------------------------------------------------------- references


def key_weights(tq, tk, block_count, block_offset, column_count, column_index, bm, bn, causal=True):
    """(B, H, tq, tk) float64: how many times each key is listed for each query, after the bounds and causal test."""
    bc, bo, cc, ci = (np.asarray(a.cpu()) for a in (block_count, block_offset, column_count, column_index))
    b, h, n_rows = bc.shape
    w = np.zeros((b, h, tq, tk))
    for bi in range(b):
        for hi in range(h):
            for r in range(n_rows):
                rows = slice(r * bm, min((r + 1) * bm, tq))
                for o in bo[bi, hi, r, : bc[bi, hi, r]]:
                    for c in range(o, o + bn):
                        if 0 <= c < tk:
                            w[bi, hi, rows, c] += 1
                for c in ci[bi, hi, r, : cc[bi, hi, r]]:
                    if 0 <= c < tk:
                        w[bi, hi, rows, c] += 1
    if causal:
        visible = np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq)
        w *= visible
    return w


def weighted_attention(q, k, v, weights, scale):
    """float64 softmax attention where key j of query i has multiplicity weights[..., i, j]; empty rows -> 0, -inf."""
    qf, kf, vf = (np.asarray(a.float().cpu(), dtype=np.float64) for a in (q, k, v))
    group = qf.shape[1] // kf.shape[1]
    kf, vf = np.repeat(kf, group, axis=1), np.repeat(vf, group, axis=1)
    logits = scale * qf @ np.swapaxes(kf, -1, -2)
    logits = np.where(weights > 0, logits, -np.inf)
    m = logits.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = weights * np.exp(logits - m)
    denom = p.sum(-1, keepdims=True)
    has = denom > 0
    out = np.where(has, (p @ vf) / np.where(has, denom, 1.0), 0.0)
    with np.errstate(divide="ignore"):
        lse = np.where(has, np.log(np.where(has, denom, 1.0)) + m, -np.inf)[..., 0]
    return out, lse


def _rand_qkv(gen, b, hq, hk, tq, tk, d, dtype):
    q = torch.randn((b, hq, tq, d), generator=gen).to(dtype)
    k = torch.randn((b, hk, tk, d), generator=gen).to(dtype)
    v = torch.randn((b, hk, tk, d), generator=gen).to(dtype)
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


def _random_lists(rng, b, h, n_rows, tk, ns, nv, bn):
    """Arbitrary index contents: unaligned and out-of-range starts, negative and too-large columns, empty rows."""
    bc = rng.integers(0, ns + 1, size=(b, h, n_rows)).astype(np.int32)
    bo = rng.integers(-bn - 5, tk + 5, size=(b, h, n_rows, ns)).astype(np.int32)
    cc = rng.integers(0, nv + 1, size=(b, h, n_rows)).astype(np.int32)
    ci = rng.integers(-3, tk + 3, size=(b, h, n_rows, nv)).astype(np.int32)  # repeats allowed: counted twice
    bc[0, 0, 0] = 0  # one row block with no key at all
    cc[0, 0, 0] = 0
    return [torch.from_numpy(a).to(DEVICE) for a in (bc, bo, cc, ci)]


def _assert_matches(out, lse, ref_out, ref_lse, dtype):
    out64 = np.asarray(out.float().cpu(), dtype=np.float64)
    lse64 = np.asarray(lse.cpu(), dtype=np.float64)
    assert np.isfinite(out64).all()
    empty = ~np.isfinite(ref_lse)
    assert np.array_equal(np.isneginf(lse64), empty), "rows with no key must have lse -inf, and only those"
    assert (out64[empty] == 0).all(), "rows with no key must be 0"
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    err = np.abs(out64 - ref_out).max() if out64.size else 0.0
    assert err <= tol, f"max |out - ref| = {err}"
    denom = np.linalg.norm(ref_out)
    if denom > 0:
        assert np.linalg.norm(out64 - ref_out) / denom <= tol
    fin = ~empty
    assert np.allclose(lse64[fin], ref_lse[fin], rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- the sparse kernel

SHAPES = [
    # (batch, q_heads, kv_heads, q_len, kv_len, head_dim, bm, bn)
    (1, 2, 2, 64, 64, 64, 64, 64),
    (1, 2, 1, 100, 100, 64, 64, 64),  # q_len not a multiple of 64, GQA
    (2, 4, 2, 70, 200, 64, 64, 64),  # q_len < kv_len (chunked prefill), batch 2
    (1, 2, 2, 40, 40, 128, 32, 16),  # other tile sizes, head_dim 128
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", _dtypes(), ids=str)
def test_sparse_matches_masked_softmax(ts, shape, dtype):
    b, hq, hk, tq, tk, d, bm, bn = shape
    gen = torch.Generator().manual_seed(sum(shape))
    rng = np.random.default_rng(sum(shape))
    q, k, v = _rand_qkv(gen, b, hq, hk, tq, tk, d, dtype)
    n_rows = -(-tq // bm)
    lists = _random_lists(rng, b, hq, n_rows, tk, ns=3, nv=2 * bn - 5, bn=bn)
    scale = 0.7 / np.sqrt(d)
    out, lse = ts.sparse_attention_triton(q, k, v, *lists, scale, bm, bn, return_lse=True)
    assert out.shape == q.shape and out.dtype == dtype and lse.dtype == torch.float32
    ref_out, ref_lse = weighted_attention(q, k, v, key_weights(tq, tk, *lists, bm, bn), scale)
    _assert_matches(out, lse, ref_out, ref_lse, dtype)
    # return_lse=False gives the same output
    out2 = ts.sparse_attention_triton(q, k, v, *lists, scale, bm, bn)
    assert torch.equal(out2, out)


@pytest.mark.parametrize("range_tile,col_tile", [(128, 128), (128, 32)])
def test_sparse_launch_variants(ts, range_tile, col_tile):
    """Two ranges per step (an odd count leaves the second half empty) and other column tiles: same result."""
    b, hq, hk, tq, tk, d = 1, 2, 1, 130, 190, 64
    gen = torch.Generator().manual_seed(range_tile + col_tile)
    q, k, v = _rand_qkv(gen, b, hq, hk, tq, tk, d, torch.float16)
    lists = _random_lists(np.random.default_rng(col_tile), b, hq, 3, tk, ns=5, nv=150, bn=64)
    out, lse = ts.sparse_attention_triton(q, k, v, *lists, None, return_lse=True, range_tile=range_tile, col_tile=col_tile)
    ref = weighted_attention(q, k, v, key_weights(tq, tk, *lists, 64, 64), 1 / np.sqrt(d))
    _assert_matches(out, lse, *ref, torch.float16)


@pytest.mark.parametrize("causal", [True, False])
def test_sparse_tile_paths_agree(ts, causal):
    """Range tiles inside the sequence and below the diagonal skip the mask; the result is the same as masking all.

    Few queries against many keys, so that most listed ranges lie wholly below
    the diagonal (the unmasked path) and some cross it or the sequence ends.
    On an sm_90+ GPU the TMA and pointer loads are compared too.
    """
    b, hq, hk, tq, tk, d = 1, 2, 1, 70, 600, 64
    dtype = _dtypes()[-1]
    gen = torch.Generator().manual_seed(11)
    q, k, v = _rand_qkv(gen, b, hq, hk, tq, tk, d, dtype)
    lists = _random_lists(np.random.default_rng(11), b, hq, 2, tk, ns=12, nv=40, bn=64)
    ref = weighted_attention(q, k, v, key_weights(tq, tk, *lists, 64, 64, causal=causal), 1 / np.sqrt(d))
    masked = ts.sparse_attention_triton(q, k, v, *lists, None, return_lse=True, causal=causal, mask_all_tiles=True, tma=False)
    edge = ts.sparse_attention_triton(q, k, v, *lists, None, return_lse=True, causal=causal, tma=False)
    _assert_matches(*edge, *ref, dtype)
    assert torch.equal(edge[0], masked[0]) and torch.equal(edge[1], masked[1])
    if ts._tma_possible(k, v, 64):
        for mask_all in (False, True):
            with_tma = ts.sparse_attention_triton(q, k, v, *lists, None, return_lse=True, causal=causal, tma=True, mask_all_tiles=mask_all)
            _assert_matches(*with_tma, *ref, dtype)
            assert torch.allclose(with_tma[0].float(), edge[0].float(), atol=1e-2, rtol=0)
    else:
        with pytest.raises(InputError) as exc:
            ts.sparse_attention_triton(q, k, v, *lists, None, tma=True)
        assert exc.value.param == "tma"


@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_ring_pair_lists_run_on_the_kernel(ts, layout):
    """The ring's per-pair lists (one query run's lists restricted to each key run) fed to the kernel, causal on the
    diagonal pair only, merged by lse: each query run's rows of single-device kernel-mode attention."""
    from yarnref.ring import check_kernel_layout
    from yarnref.softmax_attention import merge_attention
    from yarnref_torch.ring import _restrict_lists, _run_lists

    dtype, seq_len, world_size = torch.float16, 512, 2
    gen = torch.Generator().manual_seed(7)
    rng = np.random.default_rng(7)
    q, k, v = _rand_qkv(gen, 1, 2, 1, seq_len, seq_len, 64, dtype)
    vertical = torch.from_numpy(rng.integers(-1, seq_len, size=(1, 2, 20))).to(DEVICE)
    slash = torch.from_numpy(np.concatenate([np.zeros((1, 2, 1), int), rng.integers(-1, seq_len, size=(1, 2, 30))], -1)).to(DEVICE)
    f64 = [np.asarray(x.cpu(), dtype=np.float64) for x in (q, k, v)]
    ref_out, ref_lse = yarnref.sparse.vertical_slash_attention(*f64, vertical.cpu().numpy(), slash.cpu().numpy(), mode="kernel", return_lse=True)
    runs = [run for device in check_kernel_layout(seq_len, world_size, layout) for run in device]
    for q_run in runs:
        a, b = q_run.start, q_run.start + q_run.count
        lists = _run_lists(vertical, slash, a, b, 64, 64)
        outs, lses = [], []
        for k_run in runs:
            if k_run.start > a:
                continue
            ka, kb = k_run.start, k_run.start + k_run.count
            local = _restrict_lists(lists, ka, kb, 64, 64)
            o, l = ts.sparse_attention_triton(q[:, :, a:b], k[:, :, ka:kb], v[:, :, ka:kb], *local, None, 64, 64, True, causal=ka == a)
            outs.append(np.asarray(o.float().cpu(), dtype=np.float64))
            lses.append(np.asarray(l.cpu(), dtype=np.float64))
        out, lse = merge_attention(outs, lses)
        _assert_matches(torch.from_numpy(out), torch.from_numpy(lse), ref_out[:, :, a:b], ref_lse[:, :, a:b], dtype)


@pytest.mark.parametrize("dtype", _dtypes(), ids=str)
def test_sparse_non_causal(ts, dtype):
    b, hq, hk, tq, tk, d = 1, 2, 2, 50, 90, 64
    gen = torch.Generator().manual_seed(3)
    q, k, v = _rand_qkv(gen, b, hq, hk, tq, tk, d, dtype)
    lists = _random_lists(np.random.default_rng(3), b, hq, 1, tk, ns=2, nv=20, bn=64)
    out, lse = ts.sparse_attention_triton(q, k, v, *lists, None, return_lse=True, causal=False)
    ref = weighted_attention(q, k, v, key_weights(tq, tk, *lists, 64, 64, causal=False), 1 / np.sqrt(d))
    _assert_matches(out, lse, *ref, dtype)


@settings(max_examples=6, deadline=None)
@given(
    tq=st.integers(1, 80),
    extra=st.integers(0, 60),
    group=st.sampled_from([1, 2]),
    ns=st.integers(1, 3),
    nv=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_sparse_random_lists(tq, extra, group, ns, nv, seed):
    """Any index contents (Hypothesis): the kernel equals the masked softmax over the listed keys."""
    if not HAVE_TRITON:
        pytest.skip("triton is not installed")
    if not (CUDA or INTERPRETED):
        pytest.skip("no CUDA, and triton was imported before the interpreter could be switched on")
    with pytest.MonkeyPatch.context() as mp:
        if not CUDA:
            mp.setenv("TRITON_INTERPRET", "1")
        mod = _load(interpret=not CUDA)
        if not CUDA and _module_cache.get("interp_ok") not in (None, True):
            pytest.skip("the Triton interpreter does not work here")
        tk = tq + extra
        gen = torch.Generator().manual_seed(seed)
        q, k, v = _rand_qkv(gen, 1, 2 * group, 2, tq, tk, 64, torch.float16)
        n_rows = -(-tq // 64)
        lists = _random_lists(np.random.default_rng(seed), 1, 2 * group, n_rows, tk, ns, nv, 64)
        out, lse = mod.sparse_attention_triton(q, k, v, *lists, None, return_lse=True)
        ref = weighted_attention(q, k, v, key_weights(tq, tk, *lists, 64, 64), 1 / np.sqrt(64))
        _assert_matches(out, lse, *ref, torch.float16)


def test_sparse_rejects_bad_input():
    """Validation happens before any kernel runs, so this needs neither a GPU nor triton."""
    mod = _load(interpret=False)
    q = torch.zeros((1, 2, 64, 64), dtype=torch.float16)
    one = torch.ones((1, 2, 1), dtype=torch.int32)
    offs = torch.zeros((1, 2, 1, 1), dtype=torch.int32)
    good = (one, offs, one, offs)
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q.float(), q.float(), q.float(), *good, None)
    assert exc.value.param == "q"
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q, q, q, one.long(), offs, one, offs, None)
    assert exc.value.param == "block_count"
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q, q, q, one, offs, one, offs[..., 0], None)
    assert exc.value.param == "column_index"
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q, q, q, *good, None, block_size_m=48)
    assert exc.value.param == "block_size_m"
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q, q, q, *good, -1.0)
    assert exc.value.param == "scale"
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q, q, q, *good, None, range_tile=96)
    assert exc.value.param == "range_tile"
    big = torch.zeros((1, 2, 64, 264), dtype=torch.float16)
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(big, big, big, *good, None)
    assert exc.value.param == "q"
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q, q, q, *good, None, paired="yes")
    assert exc.value.param == "paired"
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q, q, q, *good, None, paired=True, pair_dot="both")
    assert exc.value.param == "pair_dot"
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q, q, q, *good, None, paired=True, range_tile=128)
    assert exc.value.param == "range_tile"
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q, q, q, *good, None, num_warps=3)
    assert exc.value.param == "num_warps"
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q, q, q, *good, None, tma="yes")
    assert exc.value.param == "tma"
    with pytest.raises(InputError) as exc:
        mod.sparse_attention_triton(q, q, q, *good, None, mask_all_tiles=1)
    assert exc.value.param == "mask_all_tiles"


# ----------------------------------------------------------------------------- the conversion


def _random_vs(rng, b, h, kv_len, nv, ns, pad=False, force=True):
    """Random vertical columns and slash distances per head (unsorted; -1 padding if ``pad``)."""
    V = np.full((b, h, nv), -1, dtype=np.int32)
    S = np.full((b, h, ns), -1, dtype=np.int32)
    for bi in range(b):
        for hi in range(h):
            kv_n = rng.integers(1, nv + 1) if pad else nv
            ks_n = rng.integers(1, ns + 1) if pad else ns
            V[bi, hi, :kv_n] = rng.choice(kv_len, size=kv_n, replace=False)
            dist = rng.choice(np.arange(2, kv_len), size=ks_n, replace=False)
            if force:  # MInference and vLLM always keep the nearest diagonals
                dist[: min(2, ks_n)] = [0, 1][: min(2, ks_n)]
            S[bi, hi, :ks_n] = dist
    return V, S


def _check_conversion(result, q_len, kv_len, V, S, bm, bn, causal):
    """The listed entries equal the spec's (the readable sequential merge), row block by row block."""
    want = yarnref.sparse.convert_vertical_slash_indexes(q_len, kv_len, V, S, bm, bn, causal)
    bc, bo, cc, ci = (np.asarray(t.cpu()) for t in result)
    w_bc, w_bo, w_cc, w_ci = want
    for bi, hi, r in np.ndindex(*w_bc.shape):
        assert list(bo[bi, hi, r, : bc[bi, hi, r]]) == list(w_bo[bi, hi, r, : w_bc[bi, hi, r]]), (bi, hi, r)
        assert list(ci[bi, hi, r, : cc[bi, hi, r]]) == list(w_ci[bi, hi, r, : w_cc[bi, hi, r]]), (bi, hi, r)


def test_conversion_hand_example(ts):
    """q = kv = 256, verticals {0, 5, 77}, slashes {0, 1, 40}: worked by hand."""
    V = torch.tensor([[[77, 0, 5]]], dtype=torch.int32, device=DEVICE)  # unsorted on purpose
    S = torch.tensor([[[1, 40, 0]]], dtype=torch.int32, device=DEVICE)
    bc, bo, cc, ci = ts.convert_vertical_slash_indexes_triton(256, 256, V, S)
    bc, bo, cc, ci = (t.cpu().tolist()[0][0] for t in (bc, bo, cc, ci))
    # row block 0: slash 40 gives range [0, 64) which covers 0 and 5; 1 and 0 add nothing
    # row block 1: slash 40 -> [24, 88); 0 and 5 are columns; slash 1 extends to [24, 152)
    assert bc == [1, 2, 2, 2] and cc == [0, 2, 3, 3]
    assert bo[0][:1] == [0] and bo[1][:2] == [24, 88] and bo[2][:2] == [88, 152] and bo[3][:2] == [152, 216]
    assert ci[1][:2] == [0, 5] and ci[2][:3] == [0, 5, 77]


@pytest.mark.parametrize(
    "q_len,kv_len,bm,bn,causal,pad",
    [
        (256, 256, 64, 64, True, False),
        (200, 200, 64, 64, True, True),  # not a multiple of 64, per-head budgets (-1 padding)
        (100, 300, 64, 64, True, False),  # q_len < kv_len
        (130, 130, 32, 64, True, False),  # block_size_m != block_size_n
        (96, 160, 32, 64, False, True),  # non-causal (DCA's "successive" part)
        (64, 64, 64, 64, False, False),
    ],
)
def test_conversion_matches_reference(ts, q_len, kv_len, bm, bn, causal, pad):
    rng = np.random.default_rng(q_len * 7 + kv_len)
    V, S = _random_vs(rng, 2, 3, kv_len, nv=12, ns=10, pad=pad, force=causal)
    result = ts.convert_vertical_slash_indexes_triton(
        q_len, kv_len, torch.from_numpy(V).to(DEVICE), torch.from_numpy(S).to(DEVICE), bm, bn, causal
    )
    n_rows = -(-q_len // bm)
    assert result[0].shape == (2, 3, n_rows) and result[0].dtype == torch.int32
    _check_conversion(result, q_len, kv_len, V, S, bm, bn, causal)


def test_full_budget_equals_dense_causal(ts):
    """Every diagonal kept: the pipeline is dense causal attention (yarnref.attention)."""
    b, hq, hk, tq, tk, d = 1, 2, 1, 100, 150, 64
    gen = torch.Generator().manual_seed(11)
    q, k, v = _rand_qkv(gen, b, hq, hk, tq, tk, d, torch.float16)
    V = torch.arange(0, 30, dtype=torch.int32, device=DEVICE).expand(b, hq, 30)
    S = torch.arange(0, tk, dtype=torch.int32, device=DEVICE).expand(b, hq, tk)
    lists = ts.convert_vertical_slash_indexes_triton(tq, tk, V, S)
    out, lse = ts.sparse_attention_triton(q, k, v, *lists, None, return_lse=True)
    ref_out, ref_lse = yarnref.attention(*(np.asarray(x.float().cpu(), np.float64) for x in (q, k, v)), causal=True, return_lse=True)
    _assert_matches(out, lse, ref_out, ref_lse, torch.float16)


# ----------------------------------------------------------------------------- against the spec


@pytest.mark.parametrize(
    "q_len,kv_len,bm,bn,causal,pad",
    [(256, 256, 64, 64, True, False), (150, 230, 64, 64, True, True), (100, 100, 32, 64, True, True), (90, 130, 64, 64, False, True)],
)
def test_conversion_matches_spec(ts, q_len, kv_len, bm, bn, causal, pad):
    spec_convert = yarnref.sparse.convert_vertical_slash_indexes
    rng = np.random.default_rng(q_len + kv_len)
    V, S = _random_vs(rng, 2, 3, kv_len, nv=10, ns=8, pad=pad, force=causal)
    mine = ts.convert_vertical_slash_indexes_triton(
        q_len, kv_len, torch.from_numpy(V).to(DEVICE), torch.from_numpy(S).to(DEVICE), bm, bn, causal
    )
    want = spec_convert(q_len, kv_len, V, S, bm, bn, causal)
    for m, w, name in zip(mine, want, ("block_count", "block_offset", "column_count", "column_index")):
        m, w = np.asarray(m.cpu()), np.asarray(w)
        assert m.shape == w.shape, name
        assert np.array_equal(m, w), name  # both pad with -1 past the counts


def test_conversion_rejects_bad_input(ts):
    V = torch.zeros((1, 1, 2), dtype=torch.int32, device=DEVICE)
    with pytest.raises(InputError) as exc:
        ts.convert_vertical_slash_indexes_triton(64, 64, V, V, 64, 32)
    assert exc.value.param == "block_size_n"
    with pytest.raises(InputError) as exc:
        ts.convert_vertical_slash_indexes_triton(64, 64, V.float(), V)
    assert exc.value.param == "vertical_idx"
    with pytest.raises(InputError) as exc:
        ts.convert_vertical_slash_indexes_triton(0, 64, V, V)
    assert exc.value.param == "q_len"


# ----------------------------------------------------------------------------- the conversion's lanes kernel


@st.composite
def _conversion_case(draw):
    """A conversion problem: block sizes, lengths (not multiples of the blocks), per-head budgets and index sets.

    Slashes are scattered distances, a contiguous run of distances (long merged ranges, which a lane writes
    over several steps), or both; verticals may repeat; each head keeps its own number (-1 padding), 0 included.
    """
    causal = draw(st.booleans())
    bm = draw(st.sampled_from([16, 32, 64, 128]))
    bn = draw(st.sampled_from([b for b in (16, 32, 64, 128) if b >= bm]))
    q_len = draw(st.integers(1, 300))
    kv_len = q_len + draw(st.integers(0, 200)) if causal else draw(st.integers(1, 300))
    nv, ns = draw(st.integers(0, 24)), draw(st.integers(0, 24))
    seed = draw(st.integers(0, 2**32 - 1))
    run = draw(st.booleans())
    rng = np.random.default_rng(seed)
    h = 2
    V = np.full((1, h, nv), -1, dtype=np.int32)
    S = np.full((1, h, ns), -1, dtype=np.int32)
    for hi in range(h):
        n_v, n_s = int(rng.integers(0, nv + 1)), int(rng.integers(0, ns + 1))
        V[0, hi, :n_v] = rng.integers(0, kv_len, n_v)
        reach = kv_len + q_len + 2  # past every distance that reaches a query
        dist = rng.choice(reach, size=min(n_s, reach), replace=False)
        if run and n_s:  # a run of neighbouring diagonals from a random start
            lo = int(rng.integers(0, reach))
            dist[: n_s // 2 + 1] = (lo + np.arange(n_s // 2 + 1)) % reach
            dist = np.unique(dist)
        S[0, hi, : len(dist)] = dist
    return q_len, kv_len, V, S, bm, bn, causal


@settings(max_examples=30, deadline=None)
@given(case=_conversion_case(), rows=st.sampled_from([8, 16, 32, 64]), steps=st.sampled_from([1, 2, 4]))
def test_conversion_lanes_equal_serial_and_spec(case, rows, steps):
    """Any conversion problem (Hypothesis): the lanes kernel's lists are the serial kernel's, bit for bit, and the spec's."""
    if not HAVE_TRITON or not (CUDA or INTERPRETED):
        pytest.skip("triton cannot run here")
    q_len, kv_len, V, S, bm, bn, causal = case
    with pytest.MonkeyPatch.context() as mp:
        if not CUDA:
            mp.setenv("TRITON_INTERPRET", "1")
        mod = _load(interpret=not CUDA)
        Vt, St = torch.from_numpy(V).to(DEVICE), torch.from_numpy(S).to(DEVICE)
        serial = mod.convert_vertical_slash_indexes_triton(q_len, kv_len, Vt, St, bm, bn, causal, rows_per_program=1)
        lanes = mod.convert_vertical_slash_indexes_triton(q_len, kv_len, Vt, St, bm, bn, causal, rows_per_program=rows,
                                                          steps_per_check=steps)
    want = yarnref.sparse.convert_vertical_slash_indexes(q_len, kv_len, V, S, bm, bn, causal)
    for a, b, w, name in zip(serial, lanes, want, ("block_count", "block_offset", "column_count", "column_index")):
        assert a.dtype == b.dtype == torch.int32, name
        assert torch.equal(a, b), name  # entries past the counts are -1 in both
        assert np.array_equal(np.asarray(b.cpu()), np.asarray(w)), name


def test_conversion_lanes_long_ranges(ts):
    """Every diagonal kept (one range of up to 12 blocks per row block), 16-wide blocks, three programs of lanes."""
    q_len, kv_len = 180, 200
    V = torch.tensor([[[3, 150, 199]]], dtype=torch.int32, device=DEVICE)
    S = torch.arange(0, kv_len, dtype=torch.int32, device=DEVICE).expand(1, 1, kv_len)
    serial = ts.convert_vertical_slash_indexes_triton(q_len, kv_len, V, S, 16, 16, rows_per_program=1)
    lanes = ts.convert_vertical_slash_indexes_triton(q_len, kv_len, V, S, 16, 16, rows_per_program=8)
    bc, bo = (np.asarray(t.cpu()) for t in lanes[:2])
    for r in range(-(-q_len // 16)):  # the blocks tile [0, causal end) of the row block, in order
        end = min((r + 1) * 16 + kv_len - q_len, kv_len)
        assert list(bo[0, 0, r, : bc[0, 0, r]]) == list(range(0, end, 16)), r
    assert int(lanes[2].max()) == 0  # every vertical lies inside a range
    for a, b in zip(serial, lanes):
        assert torch.equal(a, b)


def test_conversion_rejects_bad_launch():
    """rows_per_program, num_warps and steps_per_check are checked before any kernel runs (no GPU or triton needed)."""
    mod = _load(interpret=False)
    V = torch.zeros((1, 1, 2), dtype=torch.int32)
    for bad in (0, 3, 2, 256, True, 32.0, "32"):
        with pytest.raises(InputError) as exc:
            mod.convert_vertical_slash_indexes_triton(64, 64, V, V, rows_per_program=bad)
        assert exc.value.param == "rows_per_program" and str(mod.CONVERSION_ROWS) in str(exc.value)
    with pytest.raises(InputError) as exc:
        mod.convert_vertical_slash_indexes_triton(64, 64, V, V, rows_per_program=32, num_warps=3)
    assert exc.value.param == "num_warps"
    with pytest.raises(InputError) as exc:
        mod.convert_vertical_slash_indexes_triton(64, 64, V, V, rows_per_program=32, steps_per_check=3)
    assert exc.value.param == "steps_per_check"
    assert mod.DEFAULT_CONVERSION_ROWS in mod.CONVERSION_ROWS and mod.DEFAULT_CONVERSION_STEPS in mod.CONVERSION_STEPS


def test_conversion_chooses_lanes_only_for_grids_beyond_one_wave():
    """``rows_per_program=None``: the serial kernel while its one-warp programs fit the GPU at once, the lanes
    kernel beyond; off CUDA the lanes kernel (what the interpreter tests run)."""
    mod = _load(interpret=False)
    assert mod.conversion_rows(1, torch.device("cpu")) == mod.DEFAULT_CONVERSION_ROWS > 1
    if not CUDA:
        return
    device = torch.device("cuda")
    fits = torch.cuda.get_device_properties(device).multi_processor_count * mod.RESIDENT_PROGRAMS_PER_SM
    assert mod.conversion_rows(fits, device) == 1
    assert mod.conversion_rows(fits + 1, device) == mod.DEFAULT_CONVERSION_ROWS


@pytest.mark.parametrize("dtype", _dtypes(), ids=str)
@pytest.mark.parametrize(
    "tq,tk,causal,force",
    [(100, 160, True, True), (130, 130, True, False), (70, 120, False, False)],  # unforced: empty rows possible
)
def test_pipeline_matches_spec_kernel_mode(ts, dtype, tq, tk, causal, force):
    spec_attention = yarnref.sparse.vertical_slash_attention
    b, hq, hk, d = 1, 4, 2, 64
    gen = torch.Generator().manual_seed(tq + tk)
    q, k, v = _rand_qkv(gen, b, hq, hk, tq, tk, d, dtype)
    V, S = _random_vs(np.random.default_rng(tq), b, hq, tk, nv=6, ns=5, pad=True, force=force)
    lists = ts.convert_vertical_slash_indexes_triton(
        tq, tk, torch.from_numpy(V).to(DEVICE), torch.from_numpy(S).to(DEVICE), causal=causal
    )
    out, lse = ts.sparse_attention_triton(q, k, v, *lists, None, return_lse=True, causal=causal)
    q64, k64, v64 = (np.asarray(x.float().cpu(), np.float64) for x in (q, k, v))
    ref = spec_attention(q64, k64, v64, V, S, mode="kernel", return_lse=True, causal=causal)
    _assert_matches(out, lse, np.asarray(ref[0]), np.asarray(ref[1]), dtype)


# ----------------------------------------------------------------------------- two row blocks per program


def _pooled_lists(rng, b, h, n_rows, tk, ns, nv, bn, sort=True):
    """Lists whose neighbouring row blocks share many entries, as converted lists do.

    Each (batch, head) draws a pool of range starts and columns; each row block
    lists a random subset (ascending, without repeats when ``sort``).  Some rows
    are emptied: the first row block of head 0 (its pair has one empty half),
    the second of head 1, and both blocks of the first pair of the last head.
    """
    bc = np.zeros((b, h, n_rows), np.int32)
    cc = np.zeros((b, h, n_rows), np.int32)
    bo = np.full((b, h, n_rows, ns), -1, np.int32)
    ci = np.full((b, h, n_rows, nv), -1, np.int32)
    for bi in range(b):
        for hi in range(h):
            pool_s = rng.choice(np.arange(-bn + 1, tk + 3), size=min(2 * ns, tk + bn + 2), replace=False)
            pool_c = rng.choice(np.arange(-2, tk + 2), size=min(2 * nv, tk + 4), replace=False)
            for r in range(n_rows):
                n_s, n_c = rng.integers(0, min(ns, pool_s.size) + 1), rng.integers(0, min(nv, pool_c.size) + 1)
                starts = rng.choice(pool_s, size=n_s, replace=False)
                cols = rng.choice(pool_c, size=n_c, replace=False)
                if sort:
                    starts, cols = np.sort(starts), np.sort(cols)
                bc[bi, hi, r], cc[bi, hi, r] = n_s, n_c
                bo[bi, hi, r, :n_s], ci[bi, hi, r, :n_c] = starts, cols
    bc[0, 0, 0] = cc[0, 0, 0] = 0
    if h > 1 and n_rows > 1:
        bc[0, 1, 1] = cc[0, 1, 1] = 0
    bc[0, -1, :2] = cc[0, -1, :2] = 0
    return [torch.from_numpy(a).to(DEVICE) for a in (bc, bo, cc, ci)]


PAIR_SHAPES = [
    # (batch, q_heads, kv_heads, q_len, kv_len, head_dim, bm, bn, causal)
    (1, 2, 2, 128, 128, 64, 64, 64, True),
    (1, 2, 1, 200, 260, 64, 64, 64, True),  # GQA, non-square causal, 4 row blocks with a ragged last one
    (1, 2, 1, 200, 260, 64, 64, 64, False),
    (2, 1, 1, 150, 150, 64, 64, 64, True),  # 3 row blocks: the last pair has no second block; batch 2
    (1, 2, 1, 90, 170, 128, 32, 16, True),  # other tile sizes, head_dim 128
    (1, 1, 1, 100, 120, 96, 64, 64, True),  # head_dim 96 (padded to 128 inside)
]


@pytest.mark.parametrize("shape", PAIR_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("pair_dot", ["split", "joint"])
def test_paired_matches_single_and_reference(ts, shape, pair_dot):
    """Two row blocks per program: the same keys as the one-block kernel (sorted lists, empty halves, ragged ends)."""
    b, hq, hk, tq, tk, d, bm, bn, causal = shape
    seed = sum(shape) + causal
    gen = torch.Generator().manual_seed(seed)
    q, k, v = _rand_qkv(gen, b, hq, hk, tq, tk, d, torch.float16)
    n_rows = -(-tq // bm)
    lists = _pooled_lists(np.random.default_rng(seed), b, hq, n_rows, tk, ns=4, nv=3 * bn // 2, bn=bn)
    scale = 0.8 / np.sqrt(d)
    ref = weighted_attention(q, k, v, key_weights(tq, tk, *lists, bm, bn, causal=causal), scale)
    single = ts.sparse_attention_triton(q, k, v, *lists, scale, bm, bn, return_lse=True, causal=causal)
    paired = ts.sparse_attention_triton(q, k, v, *lists, scale, bm, bn, return_lse=True, causal=causal,
                                        paired=True, pair_dot=pair_dot)
    _assert_matches(*single, *ref, torch.float16)
    _assert_matches(*paired, *ref, torch.float16)
    # Same keys, other summation order: the two launch forms agree to rounding.
    assert torch.allclose(paired[0].float(), single[0].float(), atol=2e-3, rtol=0)
    fin = torch.isfinite(single[1])
    assert torch.equal(fin, torch.isfinite(paired[1]))
    assert torch.allclose(paired[1][fin], single[1][fin], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("pair_dot", ["split", "joint"])
def test_paired_any_list_contents(ts, pair_dot):
    """Unsorted lists with repeats and out-of-range entries: nothing is shared, the result is still exact."""
    b, hq, hk, tq, tk, d = 1, 2, 1, 190, 230, 64
    gen = torch.Generator().manual_seed(5)
    q, k, v = _rand_qkv(gen, b, hq, hk, tq, tk, d, torch.float16)
    lists = _random_lists(np.random.default_rng(5), b, hq, 3, tk, ns=5, nv=70, bn=64)
    ref = weighted_attention(q, k, v, key_weights(tq, tk, *lists, 64, 64), 1 / np.sqrt(d))
    out, lse = ts.sparse_attention_triton(q, k, v, *lists, None, return_lse=True, paired=True, pair_dot=pair_dot)
    _assert_matches(out, lse, *ref, torch.float16)


@settings(max_examples=5, deadline=None)
@given(
    tq=st.integers(1, 200),
    extra=st.integers(0, 70),
    group=st.sampled_from([1, 2]),
    pair_dot=st.sampled_from(["split", "joint"]),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_paired_random_lists(tq, extra, group, pair_dot, causal, seed):
    """Any shape and sorted pooled lists (Hypothesis): two blocks per program equal the masked softmax."""
    if not HAVE_TRITON or not (CUDA or INTERPRETED):
        pytest.skip("triton cannot run here")
    with pytest.MonkeyPatch.context() as mp:
        if not CUDA:
            mp.setenv("TRITON_INTERPRET", "1")
        mod = _load(interpret=not CUDA)
        tk = tq + extra
        gen = torch.Generator().manual_seed(seed)
        q, k, v = _rand_qkv(gen, 1, group, 1, tq, tk, 64, torch.float16)
        lists = _pooled_lists(np.random.default_rng(seed), 1, group, -(-tq // 64), tk, ns=3, nv=40, bn=64)
        out, lse = mod.sparse_attention_triton(q, k, v, *lists, None, return_lse=True, causal=causal, paired=True,
                                               pair_dot=pair_dot)
        ref = weighted_attention(q, k, v, key_weights(tq, tk, *lists, 64, 64, causal=causal), 1 / np.sqrt(64))
        _assert_matches(out, lse, *ref, torch.float16)


def _schedule_reference(count, lists):
    """(shared, b_only) per pair from the definition: membership when both lists are strictly ascending."""
    count, lists = np.asarray(count.cpu()), np.asarray(lists.cpu())
    b, h, n_rows = count.shape
    result = {}
    for bi in range(b):
        for hi in range(h):
            for p in range(-(-n_rows // 2)):
                a = lists[bi, hi, 2 * p, : count[bi, hi, 2 * p]]
                bb = lists[bi, hi, 2 * p + 1, : count[bi, hi, 2 * p + 1]] if 2 * p + 1 < n_rows else a[:0]
                ascending = all(np.all(np.diff(x) > 0) for x in (a, bb))
                shared = np.isin(a, bb) if ascending else np.zeros(len(a), bool)
                b_only = bb[~np.isin(bb, a)] if ascending else bb
                result[bi * h + hi, p] = (shared, b_only)
    return result


@settings(max_examples=8, deadline=None)
@given(n_rows=st.integers(1, 7), ns=st.integers(0, 9), sort=st.booleans(), seed=st.integers(0, 2**16))
def test_pair_schedule_matches_definition(n_rows, ns, sort, seed):
    """The shared flags and the second block's own entries are those of the definition (Hypothesis)."""
    if not HAVE_TRITON or not (CUDA or INTERPRETED):
        pytest.skip("triton cannot run here")
    with pytest.MonkeyPatch.context() as mp:
        if not CUDA:
            mp.setenv("TRITON_INTERPRET", "1")
        mod = _load(interpret=not CUDA)
        bc, bo, cc, ci = _pooled_lists(np.random.default_rng(seed), 1, 3, n_rows, 300, max(ns, 1), 150, 64, sort=sort)
        sched = mod.pair_schedule(bc, bo, cc, ci)
        for (count, lists), (shared, b_only, n_only) in zip(((bc, bo), (cc, ci)), (sched[:3], sched[3:])):
            want = _schedule_reference(count, lists)
            shared, b_only, n_only = (np.asarray(x.cpu()) for x in (shared, b_only, n_only))
            for (bh, p), (w_shared, w_b_only) in want.items():
                assert np.array_equal(shared[bh, p, : len(w_shared)].astype(bool), w_shared)
                assert not shared[bh, p, len(w_shared):].any()  # 0 past the count
                assert n_only[bh, p] == len(w_b_only)
                assert np.array_equal(b_only[bh, p, : len(w_b_only)], w_b_only)


def test_paired_shares_converted_lists(ts):
    """On converted lists (near-diagonal slashes) most range tiles of a pair are shared, and the result is the spec's."""
    b, hq, hk, tq, tk, d = 1, 2, 1, 256, 320, 64
    gen = torch.Generator().manual_seed(21)
    q, k, v = _rand_qkv(gen, b, hq, hk, tq, tk, d, torch.float16)
    V = torch.tensor([[[0, 3, 40, 200, 251], [1, 7, 90, 130, 300]]], dtype=torch.int32, device=DEVICE)
    S = torch.arange(0, 150, dtype=torch.int32, device=DEVICE).expand(b, hq, 150)
    lists = ts.convert_vertical_slash_indexes_triton(tq, tk, V, S)
    shared = ts.pair_schedule(*lists)[0]
    n_shared = int(shared.sum())
    n_first = int(lists[0][:, :, 0::2].sum())
    assert n_shared >= n_first // 2, (n_shared, n_first)
    q64, k64, v64 = (np.asarray(x.float().cpu(), np.float64) for x in (q, k, v))
    ref = yarnref.sparse.vertical_slash_attention(q64, k64, v64, np.asarray(V.cpu()), np.asarray(S.cpu()), mode="kernel",
                                                  return_lse=True)
    for pair_dot in ("split", "joint"):
        out, lse = ts.sparse_attention_triton(q, k, v, *lists, None, return_lse=True, paired=True, pair_dot=pair_dot)
        _assert_matches(out, lse, np.asarray(ref[0]), np.asarray(ref[1]), torch.float16)


@pytest.mark.parametrize("d", [80, 96, 256])
def test_sparse_other_head_dims(ts, d):
    """Head dims that are not powers of two (and 256) run on the kernel, padded inside."""
    b, hq, hk, tq, tk = 1, 2, 1, 70, 100
    dtype = _dtypes()[-1]
    gen = torch.Generator().manual_seed(d)
    q, k, v = _rand_qkv(gen, b, hq, hk, tq, tk, d, dtype)
    lists = _random_lists(np.random.default_rng(d), b, hq, 2, tk, ns=2, nv=30, bn=64)
    ref = weighted_attention(q, k, v, key_weights(tq, tk, *lists, 64, 64), 1 / np.sqrt(d))
    out, lse = ts.sparse_attention_triton(q, k, v, *lists, None, return_lse=True)
    _assert_matches(out, lse, *ref, dtype)


# ----------------------------------------------------------------------------- dense mode


DENSE_SHAPES = [
    # (batch, q_heads, kv_heads, q_len, kv_len)
    (1, 2, 2, 130, 130),
    (2, 2, 1, 70, 200),  # q_len < kv_len (chunked prefill), GQA, batch 2
    (1, 2, 1, 150, 90),  # q_len > kv_len: the first causal rows see no key
]


@pytest.mark.parametrize("d", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("dtype", _dtypes(), ids=str)
@pytest.mark.parametrize("causal", [True, False])
def test_dense_matches_spec(ts, d, dtype, causal):
    # Every shape at head_dim 64; one shape per other head_dim (in turn) to keep the interpreter's time down.
    shapes = DENSE_SHAPES if d == 64 or CUDA else [DENSE_SHAPES[(d // 16 + causal) % len(DENSE_SHAPES)]]
    for b, hq, hk, tq, tk in shapes:
        gen = torch.Generator().manual_seed(d + tq + causal)
        q, k, v = _rand_qkv(gen, b, hq, hk, tq, tk, d, dtype)
        scale = 0.9 / np.sqrt(d)
        out, lse = ts.dense_attention_triton(q, k, v, causal=causal, scale=scale, return_lse=True)
        assert out.shape == q.shape and out.dtype == dtype and lse.shape == (b, hq, tq) and lse.dtype == torch.float32
        q64, k64, v64 = (np.asarray(x.float().cpu(), np.float64) for x in (q, k, v))
        ref_out, ref_lse = yarnref.attention(q64, k64, v64, causal=causal, scale=scale, return_lse=True)
        _assert_matches(out, lse, ref_out, ref_lse, dtype)
        if CUDA and (b, hq, hk, tq, tk) == DENSE_SHAPES[0]:  # without the lse: the same output
            assert torch.equal(ts.dense_attention_triton(q, k, v, causal=causal, scale=scale), out)


def test_dense_launch_variants(ts):
    """Other key tiles, and (on sm_90+) TMA against pointer loads: the same result."""
    gen = torch.Generator().manual_seed(8)
    dtype = _dtypes()[-1]
    q, k, v = _rand_qkv(gen, 1, 2, 1, 200, 260, 64, dtype)
    ref = yarnref.attention(*(np.asarray(x.float().cpu(), np.float64) for x in (q, k, v)), causal=True, return_lse=True)
    base = ts.dense_attention_triton(q, k, v, return_lse=True, tma=False)
    _assert_matches(*base, *ref, dtype)
    for block_n in (32, 128):
        _assert_matches(*ts.dense_attention_triton(q, k, v, return_lse=True, block_n=block_n, tma=False), *ref, dtype)
    if ts._tma_possible(k, v, 64):
        _assert_matches(*ts.dense_attention_triton(q, k, v, return_lse=True, tma=True), *ref, dtype)


def test_dense_rejects_bad_input():
    mod = _load(interpret=False)
    q = torch.zeros((1, 2, 64, 64), dtype=torch.float16)
    for kwargs, param in (
        (dict(causal=1), "causal"),
        (dict(scale=0.0), "scale"),
        (dict(return_lse="no"), "return_lse"),
        (dict(block_n=48), "block_n"),
        (dict(num_stages=0), "num_stages"),
        (dict(tma="auto"), "tma"),
    ):
        with pytest.raises(InputError) as exc:
            mod.dense_attention_triton(q, q, q, **kwargs)
        assert exc.value.param == param
    with pytest.raises(InputError) as exc:
        mod.dense_attention_triton(q.float(), q.float(), q.float())
    assert exc.value.param == "q"
    with pytest.raises(InputError) as exc:
        mod.dense_attention_triton(q, q[:, :, :, :32], q)
    assert exc.value.param == "k"
