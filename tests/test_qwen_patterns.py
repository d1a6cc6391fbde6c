"""benchmarks/qwen_patterns.py: per-head index sets at benchmark geometry and their density after conversion."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")

import yarnref  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import qwen_layer  # noqa: E402
import qwen_patterns as qp  # noqa: E402


def _mask_density(v, s, n):
    """Independent count: the torch backend's whole kernel-mode mask (unique covered causal pairs) per head."""
    with yarnref.use_backend("torch", device="cpu"):
        mask = yarnref.vertical_slash_mask(n, n, torch.as_tensor(v), torch.as_tensor(s), mode="kernel")
    return mask.sum(dim=(-1, -2))[0].numpy() / (n * (n + 1) / 2)


def _fake_patterns(n0=256, heads=3, layers=(0, 2), seed=0):
    """The ``.npz`` layout of ``yarnref patterns --npz``: per layer (heads, width) -1-padded index sets."""
    rng = np.random.default_rng(seed)
    sets = {}
    for layer in layers:
        vs, ss = [], []
        for _ in range(heads):
            k = int(rng.integers(0, 20))
            vs.append(np.concatenate([np.arange(30), np.sort(rng.choice(np.arange(30, n0), k, replace=False))]))
            ss.append(np.concatenate([np.arange(100), 100 + np.sort(rng.choice(np.arange(0, 40), int(rng.integers(1, 30)), replace=False))]))
        w_v, w_s = max(map(len, vs)), max(map(len, ss))
        sets[layer] = (np.stack([np.pad(r, (0, w_v - len(r)), constant_values=-1) for r in vs]),
                       np.stack([np.pad(r, (0, w_s - len(r)), constant_values=-1) for r in ss]))
    return {"length": n0, "layers": list(layers), "sets": sets}


def _write_npz(path, p):
    arrays = {"layers": np.asarray(p["layers"], dtype=np.int64), "length": np.int64(p["length"]),
              "provenance": np.asarray(json.dumps({"command": "yarnref patterns"}))}
    for layer, (v, s) in p["sets"].items():
        arrays[f"layer{layer}_vertical_idx"], arrays[f"layer{layer}_slash_idx"] = v, s
    np.savez(path, **arrays)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(130, 900), seed=st.integers(0, 10_000), chunked=st.booleans())
def test_kernel_density_equals_the_kernel_mask(n, seed, chunked):
    rng = np.random.default_rng(seed)
    vb, sb = rng.integers(30, 140, size=4), rng.integers(50, 260, size=4)
    v, s = qp.synthetic_indices(n, vb, sb, seed)
    density = qp.kernel_density(v, s, n, max_elements=2000 if chunked else 1 << 25)
    np.testing.assert_allclose(density, _mask_density(v, s, n), rtol=0, atol=1e-12)
    assert np.all((density > 0) & (density <= 1))


@settings(max_examples=12, deadline=None)
@given(q_len=st.integers(1, 300), extra=st.integers(0, 400), seed=st.integers(0, 10_000), causal=st.booleans())
def test_listed_pairs_count_the_kernel_mask(q_len, extra, seed, causal):
    """The pairs the layer benchmark's kernel rate is computed from: those of the spec's kernel-mode mask."""
    rng = np.random.default_rng(seed)
    kv_len = q_len + extra if causal else max(extra, 1)
    heads, width = 3, 40
    v = np.full((1, heads, width), -1)
    s = np.full((1, heads, width), -1)
    for h in range(heads):  # verticals ascending, slashes descending, each -1-padded (the conversion's input)
        cols = np.sort(rng.choice(kv_len, min(int(rng.integers(1, width)), kv_len), replace=False))
        dist = np.sort(rng.choice(kv_len + q_len, min(int(rng.integers(1, width)), kv_len + q_len), replace=False))[::-1]
        v[0, h, : len(cols)], s[0, h, : len(dist)] = cols, dist
    v, s = torch.as_tensor(v), torch.as_tensor(s)
    with yarnref.use_backend("torch", device="cpu"):
        converted = yarnref.convert_vertical_slash_indexes(q_len, kv_len, v, s, qp.BM, qp.BN, causal)
    got = qp.listed_pairs(converted, q_len, kv_len, causal).numpy()
    mask = yarnref.vertical_slash_mask(q_len, kv_len, v.numpy(), s.numpy(), mode="kernel", causal=causal)
    np.testing.assert_array_equal(got, mask[0].sum(axis=(-1, -2)))


def test_real_sets_keep_budgets_forced_entries_and_profile():
    p = _fake_patterns()
    n = 4096  # ratio 16
    vb, sb = np.array([130, 40, 60, 35]), np.array([300, 120, 50, 200])
    v, s, filled = qp.real_indices(p, n, layer=27, n_layers=28, vertical_budget=vb, slash_budget=sb, seed=0)
    assert filled == 0  # the scaled supports are wide enough here
    for h in range(4):
        vh, sh = v[0, h][v[0, h] >= 0], s[0, h][s[0, h] >= 0]
        assert vh.size == vb[h] and sh.size == sb[h]
        assert len(set(vh)) == vh.size and len(set(sh)) == sh.size and vh.max() < n and sh.max() < n
        assert set(range(30)) <= set(vh) and set(range(min(100, sb[h]))) <= set(sh)
        # Layer 27 of 28 takes the last exported layer (2); head h takes its head h mod 3.  The source's free slashes
        # lie in [100, 140), scaled by 16: [1600, 2240).
        free = sh[sh >= 100]
        assert np.all((free >= 1600) & (free < 2240))
    v2, s2, _ = qp.real_indices(p, n, 27, 28, vb, sb, seed=0)
    assert np.array_equal(v, v2) and np.array_equal(s, s2)  # deterministic


def test_density_report_sources(tmp_path):
    table = qwen_layer.tiny_sparse_table(heads=3, layers=2)
    missing = qp.density_report([512], tmp_path, table=table, log=lambda *_: None)
    assert missing["sources"]["smollm2 512"]["status"] == "missing"
    assert missing["sources"]["synthetic 512"]["status"] == "ok"
    _write_npz(tmp_path / "smollm2_256.npz", _fake_patterns())
    report = qp.density_report([512, 1024], tmp_path, table=table, log=lambda *_: None)
    for key in ("synthetic 512", "synthetic 1024", "smollm2 512", "smollm2 1024"):
        r = report["sources"][key]
        assert r["status"] == "ok" and r["heads"] == 6
        assert r["min"] <= r["q1"] <= r["median"] <= r["q3"] <= r["max"] <= 1
        assert r["mean"] <= r["work_weighted_mean"] <= r["max"] + 1e-12  # sum d^2 / sum d >= mean d
    assert report["sources"]["smollm2 1024"]["from_length"] == 256
    # Longer sequences, same budgets: the kept fraction shrinks.
    assert report["sources"]["synthetic 1024"]["mean"] < report["sources"]["synthetic 512"]["mean"]


def test_budget_distribution_of_the_shipped_table():
    dist = qp.budget_distribution()
    assert dist["heads"] == 28 * 28 == sum(b["heads"] for b in dist["budgets"])
    top = [(b["vertical"], b["slash"]) for b in dist["budgets"][:3]]
    assert top[0] == (1000, 6096) and (30, 800) in top  # the table's most common budgets
    assert dist["vertical_as_run"]["min"] == 100  # a vertical budget of 30 runs as 130; the next smallest is 100
