"""yarnref at the length it exists for: 1M tokens with Qwen2.5-7B's 28 query heads, and the int32 limits.

The GPU tests allocate the real sizes (q ``(1, 28, 2**20, 128)`` bfloat16 is
7.5 GB: a head starts 2**27 elements into the tensor, so element offsets pass
2**31 from the 17th head on), run the torch backend, and compare sampled rows
with the float64 spec computed on the same (bfloat16) values.  They need a
CUDA device with about 60 GB free and are skipped without one.

On the CPU: converting and consuming the vertical-slash lists per chunk of
row blocks (what bounds their memory at 1M tokens) gives the one-shot result,
and the Triton converter refuses lengths its int32 lists cannot hold.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import yarnref
import yarnref.testing
from yarnref.errors import InputError

torch = pytest.importorskip("torch")

T = 2**20  # 1M tokens
HQ, HK, D = 28, 4, 128  # Qwen2.5-7B-Instruct-1M's attention geometry
CHUNK, LOCAL = 262144, 8192  # its dual_chunk_attention_config
GROUP = HQ // HK

needs_big_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 75 * 2**30,
    reason="needs a CUDA device with at least 75 GiB (1M-token tensors)",
)


def relative_error(actual, reference) -> float:
    """``||actual - reference|| / ||reference||`` in float64 (Frobenius norms)."""
    a = yarnref.testing.to_float64(actual)
    r = yarnref.testing.to_float64(reference)
    err = float(np.linalg.norm(a - r) / np.linalg.norm(r))
    print(f"relative error {err:.3e}")  # shown with pytest -s: the measured numbers behind the bounds
    return err


# ----------------------------------------------------------------------------- CPU: chunked lists


def _random_pattern(rng, batch, heads, kv_len, n_vertical, n_slash):
    vertical = np.full((batch, heads, n_vertical), -1, dtype=np.int64)
    slash = np.full((batch, heads, n_slash), -1, dtype=np.int64)
    for b in range(batch):
        for h in range(heads):
            nv = rng.integers(1, n_vertical + 1)  # uneven budgets: -1 padding
            ns = rng.integers(1, n_slash + 1)
            vertical[b, h, :nv] = np.sort(rng.choice(kv_len, nv, replace=False))
            slash[b, h, :ns] = np.sort(rng.choice(kv_len, ns, replace=False))[::-1]
    return vertical, slash


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("q_len,kv_len", [(256, 256), (200, 456), (129, 129), (64, 1000)])
def test_lists_consumed_per_chunk_equal_one_shot(monkeypatch, q_len, kv_len, causal):
    """Chunks of row blocks (bounded list memory) give the one-shot outputs and lse, causal or not
    (queries after the keys: each chunk's distances shifted down by its first row).

    Each chunk sees the same keys; only the length of the blocked float64
    reductions of the CPU path changes, so the results agree to rounding.
    """
    from yarnref_torch import sparse as torch_sparse

    rng = np.random.default_rng(q_len * 7 + kv_len)
    q = torch.from_numpy(rng.standard_normal((1, 4, q_len, 16)))
    k = torch.from_numpy(rng.standard_normal((1, 2, kv_len, 16)))
    v = torch.from_numpy(rng.standard_normal((1, 2, kv_len, 16)))
    vertical, slash = _random_pattern(rng, 1, 4, kv_len, 12, 20)
    if not causal:  # distances up to kv_len + q_len reach keys of queries after the keys
        slash = np.where(slash >= 0, slash + rng.integers(0, q_len, slash.shape), -1)
    kw = dict(return_lse=True, causal=causal)
    with yarnref.use_backend("torch", device="cpu"):
        whole, whole_lse = yarnref.vertical_slash_attention(q, k, v, vertical, slash, **kw)
        assert torch_sparse._list_chunk_rows(1, 4, 12, 20, 64, 64) >= q_len  # one shot at the default budget
        # A budget of one row block's lists: every row block converted and consumed on its own.
        monkeypatch.setattr(torch_sparse, "LIST_BYTES", 4 * 4 * (20 + 12 + 2))
        assert torch_sparse._list_chunk_rows(1, 4, 12, 20, 64, 64) == 64
        chunked, chunked_lse = yarnref.vertical_slash_attention(q, k, v, vertical, slash, **kw)
    np.testing.assert_allclose(chunked.numpy(), whole.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(chunked_lse.numpy(), whole_lse.numpy(), rtol=1e-13, atol=1e-13)
    # ... and both are the spec's kernel-mode result.
    ref, ref_lse = yarnref.vertical_slash_attention(q.numpy(), k.numpy(), v.numpy(), vertical, slash, **kw)
    np.testing.assert_allclose(chunked.numpy(), ref, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(chunked_lse.numpy(), ref_lse, rtol=1e-11, atol=1e-11)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the Triton kernel and a side stream)")
@pytest.mark.parametrize("causal", [True, False])
def test_lists_converted_ahead_equal_converted_in_turn(monkeypatch, causal):
    """On CUDA a long call converts the next chunk's lists on a side stream while the kernel consumes the
    current chunk's: the outputs and lse are those of converting each chunk in turn, bit for bit."""
    from yarnref_torch import sparse as torch_sparse

    rng = np.random.default_rng(5)
    q_len, kv_len = 700, 1500
    q = torch.from_numpy(rng.standard_normal((1, 4, q_len, 64))).to("cuda", torch.bfloat16)
    k = torch.from_numpy(rng.standard_normal((1, 2, kv_len, 64))).to("cuda", torch.bfloat16)
    v = torch.from_numpy(rng.standard_normal((1, 2, kv_len, 64))).to("cuda", torch.bfloat16)
    vertical, slash = _random_pattern(rng, 1, 4, kv_len, 40, 60)
    if not causal:
        slash = np.where(slash >= 0, slash + rng.integers(0, q_len, slash.shape), -1)
    monkeypatch.setattr(torch_sparse, "LIST_BYTES", 3 * 4 * 4 * (60 + 40 + 2))  # three row blocks per chunk
    results = {}
    for ahead in (False, True):
        monkeypatch.setattr(torch_sparse, "CONVERT_AHEAD", ahead)
        with yarnref.use_backend("torch", device="cuda"):
            results[ahead] = yarnref.vertical_slash_attention(q, k, v, vertical, slash, return_lse=True, causal=causal)
    torch.cuda.synchronize()
    assert torch.equal(results[True][0], results[False][0]) and torch.equal(results[True][1], results[False][1])


def test_list_chunk_at_1m_tokens_is_bounded():
    """At 1M tokens, 28 heads, 1000/6096 budgets the lists come in chunks of at most LIST_BYTES."""
    from yarnref_torch import sparse as torch_sparse

    rows = torch_sparse._list_chunk_rows(1, HQ, 1000, 6096, 64, 64)
    per_row_block = 4 * HQ * (6096 + 1000 + 2)
    assert rows % 64 == 0 and rows // 64 * per_row_block <= torch_sparse.LIST_BYTES
    whole = -(-T // 64) * per_row_block
    assert whole > 12 * 2**30 and T // rows >= 48  # 12.1 GiB at once before; now about fifty chunks of <= 256 MiB


def test_triton_converter_refuses_lengths_beyond_int32():
    triton_sparse = pytest.importorskip("yarnref_torch.triton_sparse")
    if triton_sparse.triton is None:
        pytest.skip("Triton is not installed")
    idx = torch.zeros((1, 1, 1), dtype=torch.int64)
    for q_len, kv_len, param in ((1, 2**31 + 1000, "kv_len"), (2**31, 2**31, "q_len")):
        with pytest.raises(InputError) as info:
            triton_sparse.convert_vertical_slash_indexes_triton(q_len, kv_len, idx, idx)
        assert info.value.param == param and "int32" in str(info.value)


def test_last_block_from_plan_is_the_pipeline():
    """The float64 re-computation the 1M-token GPU test uses equals the spec's pipeline (small sizes)."""
    from yarnref.dca import qwen_attention_scale

    rng = np.random.default_rng(11)
    n, chunk, local, hq, hk, d = 2048, 640, 128, 4, 2, 32
    q, k, v = (torch.from_numpy(rng.standard_normal((1, h, n, d))) for h in (hq, hk, hk))
    inv_freq = 10000.0 ** (-np.arange(0, d, 2) / d)
    table = [{str(h): ["vertical_and_slash", 40, 90, 0.9] for h in range(hq)}]
    config = {"chunk_size": chunk, "local_size": local, "original_max_position_embeddings": 512,
              "sparse_attention_config": table, "sparse_attention_enabled": True, "sparse_attention_threshold": 256}
    out = yarnref.qwen_prefill(q.numpy(), k.numpy(), v.numpy(), inv_freq, config)
    plan = yarnref.qwen_sparse_plan(q.numpy(), k.numpy(), inv_freq, config)
    assert len(plan[-1].parts) == 3 and plan[-1].end - plan[-1].begin > 64  # intra, successive and inter
    scale = qwen_attention_scale(n, 512) ** 2 / np.sqrt(d)
    for heads in (slice(0, 2), slice(2, 4)):
        ref = _last_block_from_plan(plan[-1], q, k, v, inv_freq, heads, scale, chunk, local)
        np.testing.assert_allclose(out[:, heads, n - 64 :], ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- GPU: 1M tokens, 28 heads


@pytest.fixture(scope="module")
def qkv_1m():
    """Un-rotated bf16 q ``(1, 28, 2**20, 128)``, k and v ``(1, 4, 2**20, 128)`` on the GPU."""
    gen = torch.Generator(device="cuda").manual_seed(20261128)
    q = torch.randn((1, HQ, T, D), device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn((1, HK, T, D), device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn((1, HK, T, D), device="cuda", dtype=torch.bfloat16, generator=gen)
    yield q, k, v
    del q, k, v
    torch.cuda.empty_cache()


def _inv_freq():
    inv_freq, _ = yarnref.rope_frequencies({"rope_theta": 1e7, "head_dim": D, "num_attention_heads": HQ, "hidden_size": HQ * D})
    return inv_freq


def _host(x, heads=None) -> np.ndarray:
    """A slice of a bf16 GPU tensor as float64 NumPy (the exact same values)."""
    if heads is not None:
        x = x[:, heads]
    return x.double().cpu().numpy()


@pytest.mark.gpu
@pytest.mark.slow
@needs_big_gpu
def test_rope_at_1m_tokens_28_heads(qkv_1m):
    """The Triton rotation past 2**31 element offsets: the whole tensor and a 64-token view of it."""
    q = qkv_1m[0]
    inv_freq = _inv_freq()
    positions = np.arange(T)
    sampled = np.array([0, 1, 2**17 + 3, 2**19 + 5, T - 64, T - 1])
    with yarnref.use_backend("torch", device="cuda"):
        cos, sin = yarnref.rope_cos_sin(inv_freq, positions)
        out = yarnref.apply_rope(q, cos, sin)
        # A view whose heads start h * 2**27 elements into the storage (DCA and the Qwen pipeline pass these).
        view = q[:, :, T - 64 :]
        out_view = yarnref.apply_rope(view, cos[T - 64 :], sin[T - 64 :])
    torch.cuda.synchronize()
    cos64, sin64 = yarnref.rope_cos_sin(inv_freq, sampled)
    ref = yarnref.apply_rope(_host(q[:, :, sampled]), cos64, sin64)
    got = _host(out[:, :, sampled])
    # Each output is one bf16 rounding (2**-8 relative) of a float32 rotation of float32 tables.
    yarnref.testing.assert_close(got, ref, rtol=2**-8 * 1.01, atol=1e-5, err_msg="rope at 1M, 28 heads")
    assert torch.equal(out_view, out[:, :, T - 64 :])
    del out, out_view


def _last_rows_reference(q, k, v, rows: slice, fn, heads):
    """The spec's ``fn`` for the query rows ``rows`` (the last queries of keys ``[0, rows.stop)``), in float64."""
    group_heads = slice(heads.start, heads.stop)
    kv_heads = slice(heads.start // GROUP, -(-heads.stop // GROUP))
    qh = _host(q[:, group_heads, rows])
    kh = _host(k[:, kv_heads, : rows.stop])
    vh = _host(v[:, kv_heads, : rows.stop])
    return fn(qh, kh, vh)


@pytest.mark.gpu
@pytest.mark.slow
@needs_big_gpu
def test_attention_at_1m_tokens(qkv_1m):
    q, k, v = qkv_1m
    with yarnref.use_backend("torch", device="cuda"):
        out = yarnref.attention(q, k, v, causal=True)
    torch.cuda.synchronize()
    heads = slice(0, HQ)
    for rows in (slice(T - 64, T), slice(300_000, 300_064)):
        ref = _last_rows_reference(q, k, v, rows, lambda a, b, c: yarnref.attention(a, b, c, causal=True), heads)
        assert relative_error(out[:, :, rows], ref) < 1e-2
    del out


@pytest.mark.gpu
@pytest.mark.slow
@needs_big_gpu
def test_dca_at_1m_tokens(qkv_1m):
    """Dense DCA (Qwen2.5-1M's chunk 262144, local 8192) over 1M tokens with 28 query heads."""
    q, k, v = qkv_1m
    inv_freq = _inv_freq()
    with yarnref.use_backend("torch", device="cuda"):
        out = yarnref.dca_attention(q, k, v, inv_freq, CHUNK, LOCAL)
    torch.cuda.synchronize()
    assert bool(torch.isfinite(out).all())
    heads = slice(0, GROUP)  # one kv head's query heads (the spec's float64 rows cost memory)
    dca = lambda a, b, c: yarnref.dca_attention(a, b, c, inv_freq, CHUNK, LOCAL)  # noqa: E731
    # Rows in the first chunk, in the third (inter-chunk keys) and the last.
    for rows in (slice(100_032, 100_096), slice(600_000, 600_064), slice(T - 64, T)):
        ref = _last_rows_reference(q, k, v, rows, dca, heads)
        assert relative_error(out[:, heads, rows], ref) < 1e-2, rows
    del out


def _budget_pattern(kv_len: int, heads: int):
    """Qwen2.5-1M's most common budget, 1000 verticals and 6096 slashes per head (the 100 local diagonals among them)."""
    rng = np.random.default_rng(7)
    vertical = np.stack([np.sort(rng.choice(kv_len, 1000, replace=False)) for _ in range(heads)])[None]
    far = [np.sort(rng.choice(np.arange(100, kv_len), 5996, replace=False))[::-1] for _ in range(heads)]
    slash = np.stack([np.concatenate([f, np.arange(99, -1, -1)]) for f in far])[None]
    return vertical, slash


@pytest.mark.gpu
@pytest.mark.slow
@needs_big_gpu
def test_vertical_slash_at_1m_tokens(qkv_1m):
    """The public sparse call at 1M tokens: lists built per chunk (bounded memory), sampled rows exact."""
    from yarnref_torch import sparse as torch_sparse

    q, k, v = qkv_1m
    vertical, slash = _budget_pattern(T, HQ)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with yarnref.use_backend("torch", device="cuda"):
        out = yarnref.vertical_slash_attention(q, k, v, vertical, slash)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    out_bytes = out.numel() * out.element_size()
    # The output, one chunk of lists and its part of the output (no 12 GiB of lists at once).
    print(f"1M-token sparse call: {extra / 2**30:.2f} GiB above its inputs (output {out_bytes / 2**30:.2f} GiB)")
    assert extra <= out_bytes + 2 * torch_sparse.LIST_BYTES + 2**30, f"{extra / 2**30:.2f} GiB"
    heads = slice(0, GROUP)
    for rows in (slice(T - 64, T), slice(524_288, 524_352)):
        ref = _last_rows_reference(
            q, k, v, rows,
            # Verticals past the sub-problem's keys lie above every one of its rows' diagonals.
            lambda a, b, c: yarnref.vertical_slash_attention(
                a, b, c, np.where(vertical[:, heads] < rows.stop, vertical[:, heads], -1), slash[:, heads]
            ),
            heads,
        )
        assert relative_error(out[:, heads, rows], ref) < 1e-2, rows
    del out


def _last_block_from_plan(segment, q, k, v, inv_freq, heads, scale, chunk=CHUNK, local=LOCAL):
    """Step 5 of the Qwen2.5-1M pipeline for the last 64 queries, in float64, from a segment's index sets.

    Each DCA part of the segment: the queries rotated to the part's DCA
    positions, the keys at theirs, kernel-mode vertical-slash attention with
    the part's lists, then the log-sum-exp merge.  The last row block alone is
    the same problem: causal parts are bottom-right aligned, and for the
    parts whose queries follow their keys a row ``start_m + i`` on diagonal
    ``delta`` reads the key row ``i`` reads on diagonal ``delta - start_m``.
    """
    n = k.shape[2]
    group = q.shape[1] // k.shape[1]
    ids = yarnref.dca_position_ids(n, chunk, local)
    rows = np.arange(n - 64, n)
    kv_heads = slice(heads.start // group, -(-heads.stop // group))
    q64, k64, v64 = _host(q[:, heads, n - 64 :]), _host(k[:, kv_heads]), _host(v[:, kv_heads])
    k_rot = yarnref.apply_rope(k64, *yarnref.rope_cos_sin(inv_freq, ids.key))
    positions = {"intra": ids.intra, "successive": ids.successive, "inter": ids.inter}
    start_m = (segment.end - segment.begin) - 64
    outputs, lses = [], []
    for name, part in segment.parts.items():
        a, b = part.keys
        q_rot = yarnref.apply_rope(q64, *yarnref.rope_cos_sin(inv_freq, positions[name][rows]))
        slash = part.slash_idx[:, heads]
        if not part.causal:
            slash = np.where(slash >= start_m, slash - start_m, -1)
        out, lse = yarnref.vertical_slash_attention(
            q_rot, k_rot[:, :, a:b], v64[:, :, a:b], part.vertical_idx[:, heads], slash, "kernel", scale, True,
            causal=part.causal,
        )
        outputs.append(out)
        lses.append(lse)
    return yarnref.merge_attention(outputs, lses)[0]


@pytest.mark.gpu
@pytest.mark.slow
@needs_big_gpu
def test_qwen_prefill_at_1m_tokens(qkv_1m):
    """The Qwen2.5-1M pipeline (DCA + vertical-slash per segment, temperature) over 1M tokens, 28 heads.

    The estimate picks the top 1000 / 6096 of a million nearly equal scores of
    random data, and the pipeline rotates q and k in bfloat16 as the stacks
    do, so its index sets differ from a float64 estimate near the cut-off.
    The check is therefore on what follows the estimate: the last row block,
    recomputed in float64 from the index sets the torch pipeline chose
    (:func:`yarnref.qwen_sparse_plan`, the oracle surface for exactly this).
    """
    from yarnref.dca import qwen_attention_scale

    q, k, v = qkv_1m
    inv_freq = _inv_freq()
    table = [{str(h): ["vertical_and_slash", 1000, 6096, 0.9] for h in range(HQ)}]
    config = {
        "chunk_size": CHUNK, "local_size": LOCAL, "original_max_position_embeddings": 262144,
        "sparse_attention_config": table, "sparse_attention_enabled": True, "sparse_attention_threshold": 32768,
    }
    with yarnref.use_backend("torch", device="cuda"):
        out = yarnref.qwen_prefill(q, k, v, inv_freq, config)
        torch.cuda.synchronize()
        assert bool(torch.isfinite(out).all())
        plan = yarnref.qwen_sparse_plan(q, k, inv_freq, config)
    assert [(s.begin, s.end) for s in plan] == [(0, 253952), (253952, 507904), (507904, 761856), (761856, 1015808), (1015808, T)]
    heads = slice(0, GROUP)
    scale = qwen_attention_scale(T, 262144) ** 2 / np.sqrt(D)
    ref = _last_block_from_plan(plan[-1], q, k, v, inv_freq, heads, scale)
    assert relative_error(out[:, heads, T - 64 :], ref) < 1e-2
    del out


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_merge_in_row_blocks_changes_no_bit(monkeypatch, dtype):
    """The torch backend's LSE merge in blocks of rows (bounded temporaries) equals the one-block merge bit for bit,
    empty parts (lse -inf) included, and is the spec's merge."""
    from yarnref_torch import attention as torch_attention

    rng = np.random.default_rng(11)
    dt = getattr(torch, dtype)
    outputs = [torch.from_numpy(rng.standard_normal((1, 3, 100, 8))).to(dt) for _ in range(3)]
    lses = [torch.from_numpy(rng.standard_normal((1, 3, 100)) * 5).to(torch.float64 if dtype == "float64" else torch.float32)
            for _ in range(3)]
    lses[1][0, 1, 10:30] = -math.inf
    lses[0][0, 2, 40:50] = lses[1][0, 2, 40:50] = lses[2][0, 2, 40:50] = -math.inf  # rows with no key at all
    whole = torch_attention.merge_tensors(outputs, lses)
    monkeypatch.setattr(torch_attention, "MERGE_BYTES", 7 * 3 * 8 * 4)  # 7 rows a step: blocks off the row count
    blocked = torch_attention.merge_tensors(outputs, lses)
    assert all(torch.equal(a, b) for a, b in zip(whole, blocked))
    assert blocked[0].dtype == dt and blocked[1].dtype == lses[0].dtype
    ref, ref_lse = yarnref.merge_attention([o.double().numpy() for o in outputs], [l.double().numpy() for l in lses])
    tol = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 1e-2}[dtype]
    np.testing.assert_allclose(blocked[0].double().numpy(), ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(blocked[1].double().numpy(), ref_lse, rtol=tol, atol=tol)
