"""yarnref.known_bugs: each stack bug is reproduced, and the shape logic agrees with torch where torch is here."""

from __future__ import annotations

import numpy as np
import pytest

from yarnref import known_bugs
from yarnref.known_bugs import StackBug
from yarnref.sparse import vertical_slash_indices


def test_vllm_dual_chunk_rope_crashes_only_with_neox_and_partial_rotary():
    with pytest.raises(StackBug, match="DualChunkRotaryEmbedding"):
        known_bugs.vllm_dual_chunk_rope(128, 64, True)
    assert known_bugs.vllm_dual_chunk_rope(128, 128, True, num_tokens=3, num_heads=2) == (3, 256)
    assert known_bugs.vllm_dual_chunk_rope(128, 64, False, num_tokens=3, num_heads=2) == (3, 256)


def test_vllm_dual_chunk_rope_shapes_follow_torch():
    torch = pytest.importorskip("torch")
    tokens, heads = 3, 2
    for head, rot, neox in ((128, 64, True), (128, 128, True), (128, 64, False)):
        cos = torch.ones(tokens, rot // 2)
        cos = cos.repeat(1, 1, 2).unsqueeze(-2) if neox else cos.repeat_interleave(2, dim=-1).unsqueeze(-2)
        hidden_rot = torch.ones(tokens, heads, rot) * cos
        try:
            hidden = torch.cat((hidden_rot, torch.ones(tokens, heads, head - rot)), dim=-1) if rot < head else hidden_rot
            shape = tuple(hidden.flatten(-2).squeeze(0).shape)
        except RuntimeError:
            shape = None
        if shape is None:
            with pytest.raises(StackBug):
                known_bugs.vllm_dual_chunk_rope(head, rot, neox, num_tokens=tokens, num_heads=heads)
        else:
            assert known_bugs.vllm_dual_chunk_rope(head, rot, neox, num_tokens=tokens, num_heads=heads) == shape


def test_chunkqwen_repeats_kv_twice():
    assert known_bugs.chunkqwen_kv_heads(32, 32) == 32  # no GQA: harmless
    with pytest.raises(StackBug, match="twice"):
        known_bugs.chunkqwen_kv_heads(28, 4)  # Qwen2.5-7B: 4 -> 28 -> 196 K/V heads
    torch = pytest.importorskip("torch")
    heads, kv, d = 4, 2, 8
    k = torch.ones(1, kv, 5, d)

    def repeat_kv(x, n):  # transformers' repeat_kv
        b, h, t, dim = x.shape
        return x[:, :, None].expand(b, h, n, t, dim).reshape(b, h * n, t, dim)

    k2 = repeat_kv(repeat_kv(k, heads // kv), heads // kv)
    assert k2.shape[1] == kv * (heads // kv) ** 2
    with pytest.raises(RuntimeError):
        torch.matmul(torch.ones(1, heads, 1, d), k2.transpose(2, 3))  # ChunkQwen's decode path


def test_minference_forced_slashes_can_drop_the_main_diagonal():
    dropped = known_bugs.minference_forced_slashes(60, tie_order="lowest_index")
    kept = known_bugs.minference_forced_slashes(60, tie_order="highest_index")
    assert dropped.size == kept.size == 60
    assert 0 not in dropped and 0 in kept
    assert known_bugs.minference_forced_slashes(120).size == 100  # every forced diagonal kept
    # yarnref breaks the ties towards the main diagonal
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 1, 3, 200, 16))
    _, slash = vertical_slash_indices(q, k, 40, 60, 64)
    for h in range(3):
        assert 0 in slash[0, h]
