"""Ring attention, the spec (yarnref.ring): layouts, the schedule, and the ring against single-device attention.

The independent references are the single-device functions: dense causal
(and full) attention, DCA (:func:`yarnref.dca.dca_attention`, itself checked
against a brute-force distance-matrix DCA in test_dca.py) and exact
vertical-slash attention.  The ring must equal them for every layout, world
size and length (padding included) to float64 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import yarnref
from yarnref.softmax_attention import attention
from yarnref.dca import dca_attention
from yarnref.errors import InputError
from yarnref.ring import (
    RING_LAYOUTS,
    Run,
    check_kernel_layout,
    pair_blocks,
    restrict_kernel_lists,
    run_kernel_lists,
    shard_runs,
    step_blocks,
    padded_length,
    ring_attention,
    ring_dca_attention,
    ring_schedule,
    ring_source,
    ring_vertical_slash_attention,
    shard,
    shard_positions,
    unshard,
)
from yarnref.rope import base_inv_freq
from yarnref.sparse import convert_vertical_slash_indexes, vertical_slash_attention

TOL = 1e-12  # float64 rounding of a few merges


def qkv(seed, seq_len, q_heads=2, kv_heads=1, head_dim=8, batch=1):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, q_heads, seq_len, head_dim))
    k = rng.standard_normal((batch, kv_heads, seq_len, head_dim))
    v = rng.standard_normal((batch, kv_heads, seq_len, head_dim))
    return q, k, v


layouts = st.sampled_from(RING_LAYOUTS)
world_sizes = st.integers(1, 5)
lengths = st.integers(1, 40)


# ----------------------------------------------------------------------------- layouts


@given(seq_len=lengths, world_size=world_sizes, layout=layouts)
def test_shards_partition_the_padded_sequence(seq_len, world_size, layout):
    total = padded_length(seq_len, world_size, layout)
    multiple = world_size * (2 if layout == "zigzag" else 1)
    assert total % multiple == 0 and seq_len <= total < seq_len + multiple
    positions = shard_positions(seq_len, world_size, layout)
    assert all(p.size == total // world_size for p in positions)
    assert sorted(np.concatenate(positions).tolist()) == list(range(total))


@given(seq_len=lengths, world_size=world_sizes, layout=layouts)
def test_unshard_inverts_shard(seq_len, world_size, layout):
    x = np.random.default_rng(seq_len).standard_normal((1, 2, seq_len, 3))
    shards = shard(x, world_size, layout)
    np.testing.assert_array_equal(unshard(shards, seq_len, layout), x)


def test_layouts_hold_the_documented_positions():
    # 8 tokens on 2 devices.
    assert [p.tolist() for p in shard_positions(8, 2, "contiguous")] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [p.tolist() for p in shard_positions(8, 2, "zigzag")] == [[0, 1, 6, 7], [2, 3, 4, 5]]
    assert [p.tolist() for p in shard_positions(8, 2, "striped")] == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_ring_passes_shards_to_the_next_device():
    # Every device sees every shard exactly once, and receives at step t what its predecessor held at t - 1.
    P = 4
    for r in range(P):
        assert sorted(ring_source(r, t, P) for t in range(P)) == list(range(P))
        for t in range(1, P):
            assert ring_source(r, t, P) == ring_source((r - 1) % P, t - 1, P)


@given(
    qa=st.integers(0, 30), ka=st.integers(0, 30), stride=st.integers(1, 4), nq=st.integers(0, 8), nk=st.integers(0, 8), causal=st.booleans()
)
def test_pair_blocks_cover_exactly_the_causal_pairs(qa, ka, stride, nq, nk, causal):
    q_run, k_run = Run(qa, stride, nq), Run(ka, stride, nk)
    covered = np.zeros((nq, nk), dtype=int)
    for block in pair_blocks(q_run, k_run, causal):
        rows, keys = np.arange(*block.rows), np.arange(*block.keys)
        visible = np.ones((rows.size, keys.size), dtype=bool)
        if block.causal:
            visible = keys[None, :] <= (np.arange(rows.size) + keys.size - rows.size)[:, None]
        covered[np.ix_(rows, keys)] += visible
    qp, kp = q_run.positions(), k_run.positions()
    expected = kp[None, :] <= qp[:, None] if causal else np.ones((nq, nk), dtype=bool)
    np.testing.assert_array_equal(covered, expected.astype(int))


@given(seq_len=lengths, world_size=world_sizes, layout=layouts, causal=st.booleans())
def test_step_blocks_cover_each_step_exactly_once(seq_len, world_size, layout, causal):
    runs = shard_runs(seq_len, world_size, layout)
    positions = shard_positions(seq_len, world_size, layout)
    for r in range(world_size):
        for s in range(world_size):
            covered = np.zeros((positions[r].size, positions[s].size), dtype=int)
            for block in step_blocks(runs[r], runs[s], causal):
                rows, keys = np.arange(*block.rows), np.arange(*block.keys)
                visible = np.ones((rows.size, keys.size), dtype=bool)
                if block.causal:
                    visible = keys[None, :] - keys[0] <= (np.arange(rows.size) + keys.size - rows.size)[:, None]
                covered[np.ix_(rows, keys)] += visible
            expected = positions[s][None, :] <= positions[r][:, None] if causal else np.ones_like(covered, dtype=bool)
            np.testing.assert_array_equal(covered, expected.astype(int))


def test_zigzag_off_diagonal_steps_are_one_call():
    runs = shard_runs(64, 4, "zigzag")
    for r in range(4):
        for s in range(4):
            blocks = step_blocks(runs[r], runs[s])
            if s != r:
                assert len(blocks) == 1 and not blocks[0].causal  # n/2 x n or n x n/2
                assert (blocks[0].rows[1] - blocks[0].rows[0]) * (blocks[0].keys[1] - blocks[0].keys[0]) == 16 * 8


# ----------------------------------------------------------------------------- schedule


@given(seq_len=lengths, world_size=world_sizes, layout=layouts, causal=st.booleans())
def test_schedule_counts_every_unmasked_score_once(seq_len, world_size, layout, causal):
    sched = ring_schedule(seq_len, world_size, layout, causal)
    total = seq_len * (seq_len + 1) // 2 if causal else seq_len * seq_len
    assert sched.scores.sum() == total
    for t in range(world_size):  # each step, the devices hold a permutation of the shards
        assert sorted(sched.key_shard[t].tolist()) == list(range(world_size))


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_contiguous_layout_is_unbalanced_and_zigzag_is_not(world_size):
    seq_len = 64 * world_size
    plain = ring_schedule(seq_len, world_size, "contiguous")
    zigzag = ring_schedule(seq_len, world_size, "zigzag")
    striped = ring_schedule(seq_len, world_size, "striped")
    # Contiguous: device r has (r + 1) non-empty steps, r full blocks and half a diagonal one, so the
    # last does (P - 1/2) blocks against a mean of P/2: (2P - 1)/P times the mean.
    assert [(plain.scores[:, r] > 0).sum() for r in range(world_size)] == list(range(1, world_size + 1))
    assert plain.imbalance == pytest.approx((2 * world_size - 1) / world_size, rel=0.02)
    assert plain.step_imbalance == pytest.approx((2 * world_size - 1) / world_size, rel=0.02)
    assert zigzag.imbalance == 1.0
    assert striped.imbalance < 1.02 and striped.step_imbalance < 1.05


# ----------------------------------------------------------------------------- the ring equals one device


@settings(deadline=None)
@given(seq_len=lengths, world_size=world_sizes, layout=layouts, gqa=st.booleans(), seed=st.integers(0, 2**16))
def test_ring_attention_equals_causal_attention(seq_len, world_size, layout, gqa, seed):
    q, k, v = qkv(seed, seq_len, q_heads=2, kv_heads=1 if gqa else 2)
    out, lse = ring_attention(q, k, v, world_size, layout, return_lse=True)
    ref, ref_lse = attention(q, k, v, causal=True, return_lse=True)
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=TOL)


@settings(deadline=None)
@given(blocks=st.integers(1, 6), world_size=world_sizes, layout=layouts, seed=st.integers(0, 2**16))
def test_ring_attention_equals_full_attention(blocks, world_size, layout, seed):
    seq_len = blocks * world_size * (2 if layout == "zigzag" else 1)
    q, k, v = qkv(seed, seq_len)
    out = ring_attention(q, k, v, world_size, layout, causal=False, scale=0.3)
    np.testing.assert_allclose(out, attention(q, k, v, causal=False, scale=0.3), rtol=0, atol=TOL)


def test_ring_attention_keeps_the_dtype_and_is_exported():
    q, k, v = (x.astype(np.float32) for x in qkv(0, 10))
    out = yarnref.ring_attention(q, k, v, 3, "zigzag")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, attention(q, k, v), atol=1e-6)


@settings(deadline=None, max_examples=15)
@given(
    seq_len=st.integers(1, 40),
    world_size=st.integers(1, 4),
    layout=layouts,
    chunk_len=st.integers(1, 9),
    local_size=st.integers(1, 4),
    temperature=st.sampled_from(["none", "qwen"]),
    seed=st.integers(0, 2**16),
)
def test_ring_dca_equals_single_device_dca(seq_len, world_size, layout, chunk_len, local_size, temperature, seed):
    q, k, v = qkv(seed, seq_len, q_heads=2, kv_heads=1)
    inv_freq = base_inv_freq(8, 10000.0)
    kwargs = {"original_max_position_embeddings": 4} if temperature == "qwen" else {}
    chunk_size = chunk_len + local_size
    out, lse = ring_dca_attention(q, k, v, inv_freq, chunk_size, local_size, world_size, layout, temperature=temperature, return_lse=True, **kwargs)
    ref, ref_lse = dca_attention(q, k, v, inv_freq, chunk_size, local_size, temperature=temperature, return_lse=True, **kwargs)
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=TOL)


@st.composite
def sparse_lists(draw, seq_len):
    """Random vertical columns and slash distances per head, -1 padded (widths differ per head)."""
    heads = 2
    width_v, width_s = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    vertical = np.full((1, heads, width_v), -1)
    slash = np.full((1, heads, width_s), -1)
    for h in range(heads):
        cols = draw(st.lists(st.integers(0, seq_len - 1), max_size=width_v, unique=True))
        dists = draw(st.lists(st.integers(0, seq_len - 1), max_size=width_s, unique=True))
        vertical[0, h, : len(cols)] = cols
        slash[0, h, : len(dists)] = dists
    return vertical, slash


@settings(deadline=None, max_examples=25)
@given(data=st.data(), seq_len=st.integers(1, 40), world_size=st.integers(1, 4), layout=layouts, seed=st.integers(0, 2**16))
def test_ring_vertical_slash_equals_single_device(data, seq_len, world_size, layout, seed):
    q, k, v = qkv(seed, seq_len, q_heads=2, kv_heads=1)
    vertical, slash = data.draw(sparse_lists(seq_len))
    out, lse = ring_vertical_slash_attention(q, k, v, vertical, slash, world_size, layout, return_lse=True, mode="exact")
    ref, ref_lse = vertical_slash_attention(q, k, v, vertical, slash, mode="exact", return_lse=True)
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
    np.testing.assert_array_equal(np.isinf(lse), np.isinf(ref_lse))  # rows with no key: -inf on both
    finite = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[finite], ref_lse[finite], rtol=0, atol=TOL)


@st.composite
def kernel_case(draw):
    """A world size, an aligned layout and a length whose shard runs start on 64-row blocks (some padded), with lists."""
    world_size = draw(st.integers(1, 4))
    layout = draw(st.sampled_from(["contiguous", "zigzag"]))
    multiple = world_size * (2 if layout == "zigzag" else 1)
    blocks = draw(st.integers(1, max(1, 8 // multiple)))  # 64-row blocks per run
    seq_len = multiple * 64 * blocks - draw(st.integers(0, multiple - 1))  # a few tokens short: padded
    heads = 2
    width_v, width_s = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    vertical = np.full((1, heads, width_v), -1)
    slash = np.full((1, heads, width_s), -1)
    for h in range(heads):  # per-head budgets: -1 padding, any order
        cols = draw(st.lists(st.integers(0, seq_len - 1), max_size=width_v, unique=True))
        dists = draw(st.lists(st.integers(0, seq_len - 1), max_size=width_s, unique=True))
        vertical[0, h, : len(cols)] = cols
        slash[0, h, : len(dists)] = dists
    return world_size, layout, seq_len, vertical, slash


@settings(deadline=None, max_examples=20)
@given(case=kernel_case(), block_size_n=st.sampled_from([64, 128]), seed=st.integers(0, 2**16))
def test_ring_vertical_slash_kernel_mode_equals_single_device(case, block_size_n, seed):
    """The kernels' key sets on the ring: the single device's kernel mode, counts of doubly listed keys included."""
    world_size, layout, seq_len, vertical, slash = case
    q, k, v = qkv(seed, seq_len, q_heads=2, kv_heads=1)
    out, lse = ring_vertical_slash_attention(q, k, v, vertical, slash, world_size, layout, return_lse=True, block_size_n=block_size_n)
    ref, ref_lse = vertical_slash_attention(q, k, v, vertical, slash, mode="kernel", return_lse=True, block_size_n=block_size_n)
    exact = vertical_slash_attention(q, k, v, vertical, slash, mode="exact")
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
    np.testing.assert_array_equal(np.isinf(lse), np.isinf(ref_lse))
    finite = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[finite], ref_lse[finite], rtol=0, atol=TOL)
    if seq_len > 64 and np.any(slash >= 64):
        assert not np.allclose(out, exact)  # the kernel's key sets are not the exact ones: the comparison can fail


@settings(deadline=None, max_examples=15)
@given(case=kernel_case())
def test_run_conversion_lists_the_single_device_row_blocks(case):
    """convert(b - a, b) of a run's rows [a, b) lists what the whole-sequence conversion lists for those row blocks."""
    world_size, layout, seq_len, vertical, slash = case
    runs = check_kernel_layout(seq_len, world_size, layout)
    total = padded_length(seq_len, world_size, layout)
    whole = convert_vertical_slash_indexes(total, total, vertical, slash)
    for q_run in (run for device in runs for run in device):
        a, b = q_run.start, q_run.start + q_run.count
        blocks = slice(a // 64, b // 64)
        count, offset, ccount, columns = run_kernel_lists(vertical, slash, q_run)
        for idx in np.ndindex(*count.shape):
            g = (idx[0], idx[1], blocks.start + idx[2])
            mine = offset[idx][: count[idx]]
            theirs = whole[1][g][: whole[0][g]]
            np.testing.assert_array_equal(mine, theirs[theirs < b])  # blocks from b on: above every row of the run
            np.testing.assert_array_equal(columns[idx][: ccount[idx]], whole[3][g][: whole[2][g]])


@settings(deadline=None, max_examples=15)
@given(case=kernel_case(), block_size_n=st.sampled_from([64, 128]))
def test_restricted_lists_split_the_listed_keys_among_the_key_runs(case, block_size_n):
    """Every key a query run's lists name, with its count, lies in exactly one key run's restricted lists."""
    world_size, layout, seq_len, vertical, slash = case
    runs = [run for device in check_kernel_layout(seq_len, world_size, layout) for run in device]
    total = padded_length(seq_len, world_size, layout)

    def counts(lists, kv_len):
        count, offset, ccount, columns = lists
        cover = np.zeros(count.shape + (kv_len,), dtype=np.int64)
        for idx in np.ndindex(*count.shape):
            for o in offset[idx][: count[idx]]:
                cover[idx][o : o + block_size_n] += 1
            np.add.at(cover[idx], columns[idx][: ccount[idx]], 1)
        return cover

    for q_run in runs:
        lists = run_kernel_lists(vertical, slash, q_run, block_size_n=block_size_n)
        whole = counts(lists, total + block_size_n)[..., :total]
        pieced = np.zeros_like(whole)
        for k_run in runs:
            part = restrict_kernel_lists(lists, k_run, block_size_n)
            listed = np.arange(part[1].shape[-1]) < part[0][..., None]
            assert np.all((part[1][listed] >= 0) & (part[1][listed] + block_size_n <= k_run.count))  # whole blocks only
            pieced[..., k_run.start : k_run.start + k_run.count] += counts(part, k_run.count)
        np.testing.assert_array_equal(pieced, whole)


def test_kernel_mode_refuses_unaligned_runs():
    q, k, v = qkv(0, 256)
    lists = np.array([[[3], [0]]]), np.array([[[0], [5]]])
    with pytest.raises(InputError, match="layout.*striped.*'contiguous' or 'zigzag'"):
        ring_vertical_slash_attention(q, k, v, *lists, 2, "striped")
    with pytest.raises(InputError, match=r"seq_len=256.*multiple of 512"):
        ring_vertical_slash_attention(q, k, v, *lists, 4, "zigzag")  # runs of 32 rows
    q, k, v = qkv(0, 200)
    with pytest.raises(InputError, match="seq_len=200"):
        ring_vertical_slash_attention(q, k, v, *lists, 2, "contiguous")
    ring_vertical_slash_attention(q, k, v, *lists, 2, "striped", mode="exact")  # the exact key sets take every layout
    with pytest.raises(InputError, match="mode"):
        ring_vertical_slash_attention(q, k, v, *lists, 2, "zigzag", mode="blocks")


# ----------------------------------------------------------------------------- bad input


def test_bad_input_names_the_parameter():
    q, k, v = qkv(0, 6)
    with pytest.raises(InputError, match="layout"):
        ring_attention(q, k, v, 2, "ring")
    with pytest.raises(InputError, match="world_size"):
        ring_attention(q, k, v, 0)
    with pytest.raises(InputError, match="multiple of 4"):
        ring_attention(q, k, v, 2, "zigzag", causal=False)  # padding keys would be seen
    with pytest.raises(InputError, match="k"):
        ring_attention(q, k[:, :, :5], v[:, :, :5], 2)
    with pytest.raises(InputError, match="vertical_idx"):
        ring_vertical_slash_attention(q, k, v, np.array([[[6], [0]]]), np.array([[[0], [0]]]), 2)
    with pytest.raises(InputError, match="local_size"):
        ring_dca_attention(q, k, v, base_inv_freq(8, 1e4), 4, 4, 2)
