"""Every backend's Dual Chunk Attention agrees with the float64 spec (yarnref.dca)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from yarnref.softmax_attention import attention
from yarnref.errors import InputError
from yarnref.rope import apply_rope, base_inv_freq, rope_cos_sin
from yarnref.testing import assert_close, dtype_name

from conftest import as_inputs, backend_dtypes, backend_settings


def spec_dca():
    """The spec function; a missing one fails the test (it is part of the oracle surface)."""
    return importlib.import_module("yarnref.dca").dca_attention


def backend_dca(backend):
    """The backend's operation; every backend implements every operation, so a missing one fails."""
    return getattr(backend, "dca_attention")


@st.composite
def dca_problems(draw, dtypes):
    chunk_size = draw(st.integers(2, 24), label="chunk_size")
    local_size = draw(st.integers(1, chunk_size - 1), label="local_size")
    kv_len = draw(st.integers(1, 70), label="kv_len")
    q_len = draw(st.one_of(st.just(kv_len), st.just(1), st.integers(1, kv_len)), label="q_len")
    kv_heads = draw(st.integers(1, 2), label="kv_heads")
    group = draw(st.sampled_from([1, 2, 3]), label="group")
    head_dim = draw(st.sampled_from([8, 16, 24]), label="head_dim")
    rotary = 2 * draw(st.integers(1, head_dim // 2), label="rotary_dim/2")  # partial rotary when < head_dim
    temperature = draw(st.sampled_from(["none", "chunkllama", "qwen"]), label="temperature")
    extra = {}
    if temperature != "none":
        extra["seq_len"] = draw(st.one_of(st.none(), st.integers(kv_len, kv_len + 300)), label="seq_len")
    if temperature == "chunkllama":
        extra["max_position_embeddings"] = draw(st.integers(1, 100), label="max_position_embeddings")
        if rotary == head_dim and draw(st.booleans(), label="per_key_lengths"):  # ChunkLlama decode
            seen = extra["seq_len"] or kv_len
            extra["key_write_lengths"] = np.minimum(np.arange(1, kv_len + 1) + draw(st.integers(0, 50)), seen)
    if temperature == "qwen":
        extra["original_max_position_embeddings"] = draw(st.integers(1, 100), label="original_max_position_embeddings")
        if draw(st.booleans(), label="per_key_lengths"):  # decode: each key written at its own length
            seen = extra["seq_len"] or kv_len
            extra["key_write_lengths"] = np.minimum(np.arange(1, kv_len + 1) + draw(st.integers(0, 50)), seen)
    return {
        "chunk_size": chunk_size,
        "local_size": local_size,
        "shapes": (
            (draw(st.integers(1, 2), label="batch"), kv_heads * group, q_len, head_dim),
            (kv_heads, kv_len, head_dim),
            (kv_heads, kv_len, draw(st.sampled_from([head_dim, 8]), label="v_dim")),
        ),
        "inv_freq": base_inv_freq(rotary, draw(st.sampled_from([10.0, 100.0, 10000.0]), label="base")),
        "kwargs": {
            "scale": draw(st.sampled_from([None, 0.2]), label="scale"),
            "pairing": draw(st.sampled_from(["half", "interleaved"]), label="pairing"),
            "attention_factor": draw(st.sampled_from([1.0, 1.2]), label="attention_factor"),
            "pi_factor": draw(st.sampled_from([1.0, 1.5, 4.0]), label="pi_factor"),
            "form": draw(st.sampled_from(["union", "merge"]), label="form"),
            "temperature": temperature,
            **extra,
        },
        "dtype": draw(st.sampled_from(dtypes), label="dtype"),
        "seed": draw(st.integers(0, 2**16), label="seed"),
    }


@backend_settings
@given(data=st.data())
def test_dca_agrees_with_the_spec(backend, data):
    spec, fn = spec_dca(), backend_dca(backend)
    p = data.draw(dca_problems(backend_dtypes(backend)))
    rng = np.random.default_rng(p["seed"])
    (bq, hq, tq, d), k_shape, v_shape = p["shapes"]
    (q, q64), (k, k64), (v, v64) = (
        as_inputs(backend, rng.standard_normal(shape), p["dtype"]) for shape in ((bq, hq, tq, d), (bq, *k_shape), (bq, *v_shape))
    )
    args = (p["inv_freq"], p["chunk_size"], p["local_size"])
    out, lse = fn(q, k, v, *args, return_lse=True, **p["kwargs"])
    want_out, want_lse = spec(q64, k64, v64, *args, return_lse=True, **p["kwargs"])
    assert dtype_name(out.dtype) == p["dtype"]
    assert tuple(out.shape) == want_out.shape and tuple(lse.shape) == want_lse.shape
    assert_close(out, want_out, dtype=p["dtype"], op="dca", err_msg="out")
    assert_close(lse, want_lse, dtype=p["dtype"], op="dca", err_msg="lse")


@backend_settings
@given(st.integers(3, 16), st.data())
def test_dca_is_rope_attention_up_to_chunk_size_plus_one_tokens(backend, chunk_size, data):
    """With L > local_size every DCA distance is the true one for kv_len <= chunk_size + 1 (Eqs. 2-8)."""
    backend_dca(backend)
    local_size = data.draw(st.integers(1, (chunk_size - 1) // 2), label="local_size")  # L = C - local > local
    n = data.draw(st.integers(1, chunk_size + 1), label="n")
    rng = np.random.default_rng(n)
    q, k, v = rng.standard_normal((3, 1, 2, n, 16))
    inv = base_inv_freq(12, 10000.0)
    cos, sin = rope_cos_sin(inv, np.arange(n))
    want = attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, causal=True)
    got = backend.dca_attention(q, k, v, inv, chunk_size, local_size)
    assert_close(got, want, dtype="float64", op="dca")


def test_bad_dca_inputs_raise_input_errors(backend):
    spec_dca()
    fn = backend_dca(backend)
    q = np.zeros((1, 2, 5, 8))
    inv = base_inv_freq(8, 10000.0)
    with pytest.raises(InputError, match="local_size"):
        fn(q, q, q, inv, 4, 4)
    with pytest.raises(InputError, match="pairing"):
        fn(q, q, q, inv, 4, 1, pairing="interleaved_in_half_out")
    with pytest.raises(InputError, match="max_position_embeddings"):
        fn(q, q, q, inv, 4, 1, max_position_embeddings=8)  # only temperature="chunkllama" uses it
    with pytest.raises(InputError, match="original_max_position_embeddings"):
        fn(q, q, q, inv, 4, 1, temperature="qwen")
    with pytest.raises(InputError, match="inv_freq"):
        fn(q, q, q, base_inv_freq(16, 10000.0), 4, 1)  # r/2 = 8 > head_dim/2
    with pytest.raises(InputError, match="q"):
        fn(np.zeros((1, 2, 6, 8)), q, q, inv, 4, 1)  # more queries than keys


@pytest.mark.gpu
def test_cuda_dca_never_materialises_the_score_matrix(backend):
    """16K tokens, 4 heads: (seq x seq) float32 scores would take 4 GiB; the fused per-part path needs far less."""
    torch = pytest.importorskip("torch")
    if backend.name != "torch" or backend.device.type != "cuda":
        pytest.skip("a torch-cuda test")
    backend_dca(backend)
    n, heads = 16384, 4
    q = torch.randn((1, heads, n, 64), device=backend.device, dtype=torch.bfloat16)
    k, v = torch.randn((2, 1, 1, n, 64), device=backend.device, dtype=torch.bfloat16)
    inv = base_inv_freq(64, 10000.0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = backend.dca_attention(q, k, v, inv, 4096, 512)
    torch.cuda.synchronize()
    assert out.shape == q.shape and bool(torch.isfinite(out).all())
    assert torch.cuda.max_memory_allocated() - before < 1 << 30


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_bad_values_are_refused_by_attention_and_dca(backend, dtype):
    """NaN/inf in q, k, v or inv_freq, and logits beyond the compute precision, are InputErrors naming the array.

    On CUDA the torch backend starts these reductions before it enqueues the
    attention and reads them back after (one synchronisation): the error must
    still come, and no result with it.
    """
    if dtype not in backend_dtypes(backend):
        pytest.skip(f"{backend.name} has no {dtype}")
    rng = np.random.default_rng(3)
    freqs = base_inv_freq(16, 10000.0)
    for name, bad in (("q", np.nan), ("k", np.inf), ("v", -np.inf)):
        arrays = {n: rng.standard_normal((1, 2, 40, 16)) for n in "qkv"}
        arrays[name][0, 1, 17, 5] = bad
        q, k, v = (as_inputs(backend, arrays[n], dtype)[0] for n in "qkv")
        with pytest.raises(InputError) as exc:
            backend.attention(q, k, v)
        assert exc.value.param == name
        with pytest.raises(InputError) as exc:
            backend_dca(backend)(q, k, v, freqs, 16, 4)
        assert exc.value.param == name
    q, k, v = (as_inputs(backend, rng.standard_normal((1, 2, 40, 16)), dtype)[0] for _ in range(3))
    with pytest.raises(InputError) as exc:
        backend_dca(backend)(q, k, v, np.array([1.0, np.inf, 0.5, 0.1, 0.01, 0.001, 1e-4, 1e-5]), 16, 4)
    assert exc.value.param == "inv_freq"
    if dtype == "float32" and backend.name != "numpy":  # the spec computes in float64; a backend in float32:
        # max|q| max|k| head_dim scale = 1e38 * 4 > 1e37, the float32 logits could overflow
        big, _ = as_inputs(backend, np.full((1, 2, 40, 16), 1e19), dtype)
        for fn in (lambda: backend.attention(big, big, v), lambda: backend_dca(backend)(big, big, v, freqs, 16, 4)):
            with pytest.raises(InputError) as exc:
                fn()
            assert exc.value.param == "q"


@given(st.integers(2, 300), st.integers(1, 300), st.data())
def test_torch_successive_query_rows_are_the_clamped_positions(chunk_len, local, data):
    """The torch backend takes the successive queries' table rows min(r + L, C) by slices (Eq. (5)); they are
    the rows of that index, whatever part of [r0, r1) reaches C."""
    torch = pytest.importorskip("torch")
    from yarnref_torch.dca import _successive_rows

    local = min(local, chunk_len)  # C = L + local, local <= L as the spec requires of the DCA sizes
    chunk_size = chunk_len + local
    table = torch.arange((min(2 * chunk_len - 1, chunk_size) + 1) * 3, dtype=torch.float64).reshape(-1, 3)
    r0 = data.draw(st.integers(0, chunk_len - 1), label="r0")
    r1 = data.draw(st.integers(r0 + 1, chunk_len), label="r1")
    want = table[torch.clamp(torch.arange(r0, r1) + chunk_len, max=chunk_size)]
    got = _successive_rows(table, r0, r1, chunk_len, chunk_size)
    assert torch.equal(got.expand(r1 - r0, -1), want)


def test_torch_dca_tables_kept_between_calls_follow_the_frequencies():
    """The torch backend reuses the last cos/sin tables for the same frequency tensor; a change in place (torch's
    version counter) or another tensor makes them afresh, so every call equals the spec; inference-mode tensors
    (no version counter) are served too."""
    torch = pytest.importorskip("torch")
    import yarnref
    from yarnref.dca import dca_attention

    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 96, 16)) for _ in range(3))
    inv = torch.as_tensor(base_inv_freq(16, 10000.0))
    with yarnref.use_backend("torch", device="cpu") as be:
        first = be.dca_attention(torch.as_tensor(q), torch.as_tensor(k), torch.as_tensor(v), inv, 40, 8).numpy()
        again = be.dca_attention(torch.as_tensor(q), torch.as_tensor(k), torch.as_tensor(v), inv, 40, 8).numpy()
        inv.mul_(0.5)  # in place: the kept tables no longer apply
        halved = be.dca_attention(torch.as_tensor(q), torch.as_tensor(k), torch.as_tensor(v), inv, 40, 8).numpy()
    with torch.inference_mode(), yarnref.use_backend("torch", device="cpu") as be:  # no version counter: never kept
        frozen = torch.as_tensor(base_inv_freq(16, 10000.0))
        inference = [be.dca_attention(torch.as_tensor(q), torch.as_tensor(k), torch.as_tensor(v), frozen, 40, 8).numpy()
                     for _ in range(2)]
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(inference[0], first)
    np.testing.assert_array_equal(inference[1], first)
    assert_close(first, dca_attention(q, k, v, base_inv_freq(16, 10000.0), 40, 8), dtype="float64", op="dca")
    assert_close(halved, dca_attention(q, k, v, base_inv_freq(16, 10000.0) * 0.5, 40, 8), dtype="float64", op="dca")
    assert np.abs(halved - first).max() > 1e-3
