"""Tests of the estimation's Triton softmax sums (``backends/yarnref_torch/estimate_triton.py``).

On a CUDA machine the kernels run compiled; elsewhere under Triton's CPU
interpreter (``TRITON_INTERPRET=1``, on only while these tests run, as in
``tests/test_triton_sparse.py``).  References, on the same float32 logits:

* a float64 softmax written here from the logits matrix ``(m, kv_len)``
  (causal mask, column sums, sums along each distance);
* the torch operations of ``yarnref_torch.sparse._head_scores`` (the path
  every other input takes).

The buffer's never-written cells hold NaN, so a kernel that read one would
fail.  On CUDA, ``vertical_slash_indices`` with and without the kernels must
select the same index sets up to near-ties.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import HAVE_TRITON, runnable_triton_file

torch = pytest.importorskip("torch")

MODULE_PATH = Path(__file__).resolve().parent.parent / "backends" / "yarnref_torch" / "estimate_triton.py"
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
#: Relative tolerance of the scores: float32 sums in another order and float32 exponentials (NumPy's under
#: the interpreter).  Compiled, Triton's exponential is ``exp2`` of a rounded ``x * log2(e)``, whose relative
#: error grows with the argument's size, to ~1e-5 near -100 where float32 underflows.
RTOL = 5e-5 if CUDA else 1e-5


@pytest.fixture
def et(monkeypatch):
    """The module, ready to run its kernels here (CUDA, or the CPU interpreter), else skip."""
    return runnable_triton_file(MODULE_PATH, monkeypatch)


def _torch_sparse():
    return importlib.import_module("yarnref_torch.sparse")


def _inputs(rng, m: int, kv_len: int, d: int, dtype: str, spread: float = 2.0):
    """The last ``m`` queries and the keys, rounded to ``dtype``, as float32 tensors on the device."""
    q = torch.as_tensor(rng.standard_normal((m, d)) * spread, dtype=getattr(torch, dtype))
    k = torch.as_tensor(rng.standard_normal((kv_len, d)) * spread, dtype=getattr(torch, dtype))
    return q.to(DEVICE, torch.float32), k.to(DEVICE, torch.float32)


def _filled_buffer(q, k) -> torch.Tensor:
    """The skewed ``(m, kv_len + m)`` buffer with the logits on its diagonal view and NaN in every other cell."""
    m, kv_len = q.shape[0], k.shape[0]
    logits = torch.full((m, kv_len + m), math.nan, dtype=torch.float32, device=q.device)
    on_diagonals = logits.as_strided((m, kv_len), (kv_len + m - 1, 1), m - 1)  # [r, j]: row r, column j + m - 1 - r
    on_diagonals.copy_(q @ k.T)
    return logits


def _reference(logits: np.ndarray, scale: float):
    """Float64 ``(vertical, slash_reversed)`` of the ``(m, kv_len)`` logits: causal softmax of the last ``m`` rows."""
    m, kv_len = logits.shape
    position = kv_len - m + np.arange(m)  # (m,)
    key = np.arange(kv_len)
    visible = key[None, :] <= position[:, None]
    s = np.where(visible, scale * logits, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    vertical = p.sum(axis=0)
    slash = np.zeros(kv_len)
    for r in range(m):  # distance delta = position - j, for every visible key of the row
        js = key[visible[r]]
        np.add.at(slash, position[r] - js, p[r, js])
    return vertical, slash[::-1].copy()  # reversed: distance delta at column kv_len - 1 - delta


def _fused(et, q, k, scale, programs=None):
    """The kernels' scores; ``programs``: how many statistics programs to aim at (the module's default if None)."""
    m, kv_len = q.shape[0], k.shape[0]
    logits = _filled_buffer(q, k)
    vertical = torch.full((kv_len,), math.nan, dtype=torch.float32, device=q.device)
    slash_reversed = torch.full((kv_len,), math.nan, dtype=torch.float32, device=q.device)
    default = et.STATS_PROGRAMS
    et.STATS_PROGRAMS = default if programs is None else programs
    try:
        et.estimate_scores(logits, scale, vertical, slash_reversed)
    finally:
        et.STATS_PROGRAMS = default
    return vertical.cpu().double().numpy(), slash_reversed.cpu().double().numpy()


def _torch_path(q, k, scale):
    """The torch operations of ``_head_scores`` (float32 keys, no fused module)."""
    ts = _torch_sparse()
    m, kv_len = q.shape[0], k.shape[0]
    logits = torch.empty((m, kv_len + m), dtype=torch.float32, device=q.device)
    vertical = torch.empty((kv_len,), dtype=torch.float32, device=q.device)
    slash_reversed = torch.empty((kv_len,), dtype=torch.float32, device=q.device)
    ts._head_scores(q, k, k, scale, logits, ts._unwritten_cells(m, q.device), kv_len, vertical, slash_reversed)
    return vertical.cpu().double().numpy(), slash_reversed.cpu().double().numpy()


def _check(et, m, kv_len, d, dtype, scale, seed, spread=2.0, programs=None):
    rng = np.random.default_rng(seed)
    q, k = _inputs(rng, m, kv_len, d, dtype, spread)
    got_v, got_s = _fused(et, q, k, scale, programs)
    want_v, want_s = _reference((q @ k.T).cpu().double().numpy(), scale)
    old_v, old_s = _torch_path(q, k, scale)
    for name, got, want, old in (("vertical", got_v, want_v, old_v), ("slash_reversed", got_s, want_s, old_s)):
        assert np.all(np.isfinite(got)), f"{name}: non-finite scores"
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-30, err_msg=f"{name} vs the float64 softmax")
        np.testing.assert_allclose(got, old, rtol=RTOL, atol=1e-30, err_msg=f"{name} vs the torch path")
    # Every row's probabilities sum to 1: so do both score vectors together over the rows.
    assert abs(got_v.sum() - m) <= 1e-4 * m and abs(got_s.sum() - m) <= 1e-4 * m


@pytest.mark.parametrize("m, kv_len", [(1, 1), (1, 300), (3, 3), (3, 129), (64, 64), (64, 200), (64, 1000)])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fused_scores_equal_the_references(et, m, kv_len, dtype):
    """Key counts below, at and not a multiple of the tile; one row, three, the estimation's 64; kv_len == m."""
    _check(et, m, kv_len, 32, dtype, 1 / math.sqrt(32), seed=m * 1000 + kv_len)


def _rising_keys(q, k, rise: float):
    """Keys shifted so that every row's logits grow along the keys: each row's maximum moves from tile to tile."""
    direction = q.sum(0) / q.sum(0).square().sum()
    return k + torch.linspace(0, rise, k.shape[0], device=k.device)[:, None] * direction[None, :]


@pytest.mark.parametrize("m, kv_len, programs", [(5, 2100, 1), (5, 2100, 2), (64, 9000, None)])
def test_the_online_softmax_across_tiles_and_parts(et, m, kv_len, programs):
    """Rising logits, so a running maximum that ignored the rescaling would fail: 5 rows give 16-row tiles
    of 512 keys, 2100 keys five tiles, so one program spans all five, or two spans of three tiles (the
    last partial); 64 rows and 9000 keys give 71 partials, more than the combining step takes at once."""
    rng = np.random.default_rng(kv_len + m)
    q, k = _inputs(rng, m, kv_len, 16, "bfloat16", 1.0)
    k = _rising_keys(q, k, 6.0)
    got = _fused(et, q, k, 0.5, programs)
    want = _reference((q @ k.T).cpu().double().numpy(), 0.5)
    old = _torch_path(q, k, 0.5)
    for g, w, o in zip(got, want, old):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=1e-30)
        np.testing.assert_allclose(g, o, rtol=RTOL, atol=1e-30)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # the fixture only loads the module
@given(m=st.integers(1, 70), extra=st.integers(0, 400), d=st.sampled_from([8, 64]),
       dtype=st.sampled_from(["bfloat16", "float16"]), scale=st.sampled_from([None, 0.05, 1.0]),
       spread=st.sampled_from([0.5, 3.0]), programs=st.sampled_from([1, 2, None]), seed=st.integers(0, 2**16))
def test_fused_scores_property(et, m, extra, d, dtype, scale, spread, programs, seed):
    """Any row count, key count (>= rows, as the estimation's), scale, logit spread and statistics split."""
    _check(et, m, m + extra, d, dtype, 1 / math.sqrt(d) if scale is None else scale, seed, spread, programs)


def test_the_choice_is_made_in_one_place():
    """CPU and float32/float64 inputs take the torch operations; so does everything with the flag off."""
    ts = _torch_sparse()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert ts._fused_scores_available(torch.zeros((2, 4), dtype=dtype), 64) is None
    if CUDA and HAVE_TRITON:
        half = torch.zeros((2, 4), dtype=torch.bfloat16, device="cuda")
        assert ts._fused_scores_available(half, 64) is not None
        assert ts._fused_scores_available(half, 1000) is None  # more rows than one launch takes
        assert ts._fused_scores_available(half.float(), 64) is None


# ----------------------------------------------------------------------------- several heads per launch


@pytest.mark.parametrize("n, m, kv_len", [(1, 64, 300), (3, 64, 200), (7, 5, 130), (2, 1, 40)])
def test_stacked_heads_equal_one_head_at_a_time(et, n, m, kv_len):
    """``_group_scores``: the heads' rows stacked into one skewed buffer (one matmul) give each head the
    scores of the float64 softmax; the work buffer is larger than needed and NaN-filled."""
    ts = _torch_sparse()
    rng = np.random.default_rng(n * 100 + m)
    q = torch.as_tensor(rng.standard_normal((n, m, 32)) * 2, dtype=torch.bfloat16).to(DEVICE, torch.float32)
    k = torch.as_tensor(rng.standard_normal((kv_len, 32)) * 2, dtype=torch.bfloat16).to(DEVICE, torch.float32)
    flat = torch.full((n * m * (kv_len + n * m) + 77,), math.nan, dtype=torch.float32, device=DEVICE)
    vertical = torch.full((n, kv_len), math.nan, dtype=torch.float32, device=DEVICE)
    slash_reversed = torch.full((n, kv_len), math.nan, dtype=torch.float32, device=DEVICE)
    ts._group_scores(q, k, 0.3, flat, et, vertical, slash_reversed)
    for h in range(n):
        want = _reference((q[h] @ k.T).cpu().double().numpy(), 0.3)
        for name, got, w in (("vertical", vertical[h], want[0]), ("slash_reversed", slash_reversed[h], want[1])):
            np.testing.assert_allclose(got.cpu().double().numpy(), w, rtol=RTOL, atol=1e-30, err_msg=f"head {h}: {name}")


def _scores64(q, k, m, force_verticals=30, force_slashes=100):
    """Float64 estimation scores ``(vertical, slash)`` ``(batch, q_heads, kv_len)`` of the last ``m`` queries."""
    batch, q_heads, _, d = q.shape
    kv_len = k.shape[2]
    q64 = q[:, :, -m:].double()
    k64 = k.double().repeat_interleave(q_heads // k.shape[1], dim=1)
    logits = (q64 @ k64.transpose(-1, -2)) / math.sqrt(d)
    position = kv_len - m + torch.arange(m, device=q.device)
    key = torch.arange(kv_len, device=q.device)
    p = torch.softmax(logits.masked_fill(key[None, :] > position[:, None], -math.inf), dim=-1)
    vertical = p.sum(-2)
    delta = (position[:, None] - key[None, :]).clamp(min=0)  # masked cells carry p = 0
    slash = torch.zeros_like(vertical).scatter_add_(
        -1, delta.expand_as(p).reshape(batch, q_heads, -1), p.reshape(batch, q_heads, -1))
    vertical[..., :force_verticals] = math.inf
    slash[..., :force_slashes] = math.inf
    return vertical.cpu().numpy(), slash.cpu().numpy()


def _same_sets_up_to_ties(got, want, score, rtol, what):
    """The same top-k sets, except entries whose score ties the k-th best within ``rtol`` of it (as tests/test_agree_sparse.py)."""
    for b, h in np.ndindex(*got.shape[:2]):
        g, w = got[b, h], want[b, h]
        assert np.array_equal(g < 0, w < 0), f"{what}[{b}, {h}]: padding differs"
        g_set, w_set = set(g[g >= 0].tolist()), set(w[w >= 0].tolist())
        if g_set == w_set:
            continue
        kth = score[b, h, sorted(w_set)].min()
        for j in g_set ^ w_set:
            assert abs(score[b, h, j] - kth) <= rtol * abs(kth), f"{what}[{b}, {h}]: index {j} differs beyond a tie"


def _indices_both_ways(monkeypatch, ts, q, k, vertical_size, slash_size, fused_module=None):
    """``vertical_slash_indices`` with the torch operations, then with the Triton sums (``fused_module``: the
    module to use where the backend would not choose one, as on the CPU interpreter)."""
    import yarnref

    backend = yarnref.backend._backend_class("torch")(device=q.device.type)
    results = {}
    for fused in (False, True):
        monkeypatch.setattr(ts, "FUSED_ESTIMATION", fused)
        if fused and fused_module is not None:
            monkeypatch.setattr(ts, "_fused_scores_available", lambda q, m: fused_module)
        v, s = backend.vertical_slash_indices(q, k, vertical_size, slash_size, 64)
        results[fused] = (v.cpu().numpy(), s.cpu().numpy())
    return results


def test_runs_of_heads_within_each_kv_head(et, monkeypatch):
    """The estimation's loop over runs of heads (3, 3 and 1 of each KV head's 7, from a smaller buffer
    budget) covers every head once, within its own KV head: the index sets are the torch path's."""
    ts = _torch_sparse()
    kv_len, m = 150, 64
    monkeypatch.setattr(ts, "ESTIMATE_BYTES", 4 * 3 * m * (kv_len + 3 * m))
    assert ts._fused_heads(7, m, kv_len) == 3
    g = torch.Generator().manual_seed(3)
    q = torch.randn((2, 14, 70, 16), generator=g).to(torch.bfloat16).float().to(DEVICE)
    k = torch.randn((2, 2, kv_len, 16), generator=g).to(torch.bfloat16).float().to(DEVICE)
    sizes = np.arange(14) * 3 + 30
    results = _indices_both_ways(monkeypatch, ts, q, k, sizes, sizes + 20, fused_module=et)
    v_score, s_score = _scores64(q, k, m)
    _same_sets_up_to_ties(results[True][0], results[False][0], v_score, 1e-4, "vertical")
    _same_sets_up_to_ties(results[True][1], results[False][1], s_score, 1e-4, "slash")


# ----------------------------------------------------------------------------- CUDA: the whole estimation


@pytest.mark.skipif(not CUDA, reason="the fused estimation runs on CUDA only")
@pytest.mark.parametrize("kv_len", [3000, 70001])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_indices_with_and_without_the_kernels(monkeypatch, kv_len, dtype):
    """``vertical_slash_indices`` (GQA, per-head budgets) selects the same sets with the kernels as without."""
    if not HAVE_TRITON:
        pytest.skip("triton is not installed")
    ts = _torch_sparse()
    g = torch.Generator(device="cuda").manual_seed(kv_len)
    tdt = getattr(torch, dtype)
    q = torch.randn((1, 8, 64, 128), device="cuda", dtype=tdt, generator=g)
    k = torch.randn((1, 2, kv_len, 128), device="cuda", dtype=tdt, generator=g)
    q[:, :, :, :8] *= 4  # some peaked rows
    vertical_size = np.array([30, 1000, 200, 64, 999, 30, 500, 100])
    slash_size = np.array([800, 50, 6096, 100, 300, 800, 2000, 64])
    assert ts._fused_scores_available(q, 64) is not None
    results = _indices_both_ways(monkeypatch, ts, q, k, vertical_size, slash_size)
    v_score, s_score = _scores64(q, k, 64)
    # float32 sums of float32 exponentials: both paths are within ~1e-5 of each other, relative.
    _same_sets_up_to_ties(results[True][0], results[False][0], v_score, 1e-4, "vertical")
    _same_sets_up_to_ties(results[True][1], results[False][1], s_score, 1e-4, "slash")
