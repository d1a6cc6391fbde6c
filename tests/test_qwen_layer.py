"""The benchmark's Qwen2.5-1M decoder layer (benchmarks/qwen_layer.py) against the spec, in float64 on CPU.

* chunked prefill through the whole layer (K/V cache, each chunk's queries
  against every key so far) equals the unchunked layer with dense DCA;
* its attention equals the NumPy spec's Qwen2.5-1M pipeline
  (:func:`yarnref.qwen_prefill`, with ``prefill_chunk_size`` for the chunked
  layer), dense and sparse, including the temperature of the prompt length;
* the shipped budget table reads through yarnref's reader and matches its
  provenance.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import yarnref  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import qwen_layer  # noqa: E402

T, CHUNK = 512, 128


def _layer(sparse_table=None, seed=0):
    return qwen_layer.QwenLayer(qwen_layer.tiny_geometry(), dtype=torch.float64, device="cpu", seed=seed,
                                sparse_table=sparse_table, layer=0)


def _input(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((T, 64), generator=g, dtype=torch.float64)


def _spec_attention(layer, x, sparse, prefill_chunk_size):
    """The NumPy spec's attention of the layer's first sublayer on ``x``."""
    h = qwen_layer._rms_norm(x, layer.norm1, layer.g.rms_eps)
    q, k, v = (t.numpy() for t in layer.project(h))
    with yarnref.use_backend("numpy"):
        return yarnref.qwen_prefill(q, k, v, layer.inv_freq, layer.dca_config(sparse), layer=0,
                                    prefill_chunk_size=prefill_chunk_size)


def test_chunked_layer_equals_unchunked_dense():
    layer = _layer()
    x = _input()
    whole = layer.forward(x.clone(), chunk=None, sparse=False)
    for chunk in (CHUNK, 96, 200):  # chunk edges on and off the DCA chunk length (192)
        chunked = layer.forward(x.clone(), chunk=chunk, sparse=False)
        np.testing.assert_allclose(chunked.numpy(), whole.numpy(), rtol=0, atol=1e-10)
    assert not torch.allclose(whole, x)  # the layer did something


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("chunk", [None, CHUNK])
def test_layer_attention_equals_spec_pipeline(sparse, chunk):
    layer = _layer(qwen_layer.tiny_sparse_table())
    x = _input(2)
    layer.forward(x.clone(), chunk=chunk, sparse=sparse, keep_attention=True)
    ref = _spec_attention(layer, x, sparse, chunk)
    np.testing.assert_allclose(layer.last_attention.numpy(), ref, rtol=0, atol=1e-10)


def test_sparse_and_temperature_change_the_attention():
    """The checks above can fail: sparse differs from dense, the prompt length's temperature from the chunk's."""
    layer = _layer(qwen_layer.tiny_sparse_table())
    x = _input(3)
    layer.forward(x.clone(), chunk=CHUNK, sparse=True, keep_attention=True)
    sparse = layer.last_attention
    dense = torch.as_tensor(_spec_attention(layer, x, False, CHUNK))
    assert float((sparse - dense).abs().max()) > 1e-3
    h = qwen_layer._rms_norm(x, layer.norm1, layer.g.rms_eps)
    q, k, v = layer.project(h)
    with yarnref.use_backend("torch", device="cpu"):
        first_at_chunk_length = yarnref.qwen_prefill(q[:, :, :CHUNK], k[:, :, :CHUNK], v[:, :, :CHUNK], layer.inv_freq,
                                                     layer.dca_config(False))
    assert float((first_at_chunk_length - dense[:, :, :CHUNK]).abs().max()) > 1e-6


def test_seq_len_below_kv_len_is_refused():
    layer = _layer()
    h = qwen_layer._rms_norm(_input(), layer.norm1, layer.g.rms_eps)
    q, k, v = (t.numpy() for t in layer.project(h))
    with pytest.raises(yarnref.errors.InputError, match="seq_len"):
        yarnref.qwen_prefill(q, k, v, layer.inv_freq, layer.dca_config(False), seq_len=T - 1)


def test_shipped_budget_table():
    path = qwen_layer.SPARSE_TABLE_PATH
    prov = json.loads(path.with_name(path.stem + ".provenance.json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == prov["sha256"]
    table = qwen_layer.load_sparse_table()
    assert len(table) == 28
    geometry = qwen_layer.qwen25_7b_1m()
    budgets = [yarnref.sparse_attention_config_for({**geometry.dca, "sparse_attention_config": table}, layer)
               for layer in range(28)]
    vertical = np.concatenate([b.config_vertical_size for b in budgets])
    slash = np.concatenate([b.slash_size for b in budgets])
    assert vertical.size == 28 * geometry.heads
    # The model's table: from 30 verticals / 800 slashes up to 19532 / 24528 (the largest slash budget).
    assert (vertical.min(), slash[vertical == 30].min(), slash.max(), vertical[slash.argmax()]) == (30, 800, 24528, 19532)
    assert geometry.dca["chunk_size"] - geometry.dca["local_size"] == 253952


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("chunk", [None, CHUNK])
def test_attention_reference_of_kept_rows(sparse, chunk):
    """The benchmark's row check: the last row block of chosen segments against the float64 reference."""
    geometry = qwen_layer.tiny_geometry()
    geometry = qwen_layer.replace(geometry, dca={**geometry.dca, "sparse_attention_last_q": 64})
    layer = qwen_layer.QwenLayer(geometry, dtype=torch.float64, seed=4, sparse_table=qwen_layer.tiny_sparse_table())
    segments = layer.segments(T, chunk)
    ends = [end for _, end in segments]
    assert ends == sorted(ends) and ends[-1] == T and (chunk is None or CHUNK in ends) and 192 in ends
    picked = [segments[0], segments[len(segments) // 2], segments[-1]]
    rows = [r for _, e in picked for r in range(e - 64, e)]
    layer.forward(_input(5), chunk=chunk, sparse=sparse, keep_rows=rows)
    kept = layer.kept
    for i, (begin, end) in enumerate(picked):
        q_rows = kept["q"][:, :, 64 * i : 64 * (i + 1)]
        ref = layer.kept_reference(q_rows, T, sparse, begin, end)
        np.testing.assert_allclose(kept["attention"][:, :, 64 * i : 64 * (i + 1)].numpy(), ref.numpy(), rtol=0, atol=1e-10)


def _spec_attention_with_sets(layer, x, sets, prefill_chunk_size):
    """The NumPy spec's attention of the layer with its estimation's result replaced by ``sets[kv_len]``."""
    h = qwen_layer._rms_norm(x, layer.norm1, layer.g.rms_eps)
    q, k, v = (t.numpy() for t in layer.project(h))
    with yarnref.use_backend("numpy") as spec:
        estimate = spec.vertical_slash_indices

        def replaced(q_, k_, *args, **kwargs):
            estimate(q_, k_, *args, **kwargs)
            vertical, slash = sets[k_.shape[2]]
            return vertical.numpy(), slash.numpy()

        spec.vertical_slash_indices = replaced
        return yarnref.qwen_prefill(q, k, v, layer.inv_freq, layer.dca_config(True), layer=0,
                                    prefill_chunk_size=prefill_chunk_size)


@pytest.mark.parametrize("chunk", [None, CHUNK])
def test_pattern_substitution_runs_the_layer_on_the_source_sets(chunk):
    """bench_qwen_layer's substitution: the layer attends over the source's sets (the spec with the same sets),
    same shapes and budgets as the estimation's, not the estimation's own; the row check sees them; the wrapper
    goes away on exit."""
    import bench_qwen_layer as bq

    layer = _layer(qwen_layer.tiny_sparse_table())
    x = _input(6)
    layer.forward(x.clone(), chunk=chunk, sparse=True, keep_attention=True)
    estimated = layer.last_attention
    sub = bq.PatternSubstitution(layer, "synthetic")
    sub.prepare(T, chunk)
    with sub, yarnref.use_backend(layer.backend):
        layer.forward(x.clone(), chunk=chunk, sparse=True, keep_attention=True)
        used_sets = yarnref.qwen_sparse_plan(*layer.project(qwen_layer._rms_norm(x, layer.norm1, 1e-6))[:2],
                                                  layer.inv_freq, layer.dca_config(True), prefill_chunk_size=chunk)
    assert "vertical_slash_indices" not in vars(layer.backend)
    ends = {end for _, end in layer.segments(T, chunk)}
    assert set(sub.sets) == ends and sub.calls >= len(ends) - 1  # one estimation per sparse segment (the gate aside)
    for plan in used_sets:  # the plan made inside the block carries the source's sets
        v, s = sub.sets[plan.end]
        np.testing.assert_array_equal(plan.vertical_idx, v.numpy())
        np.testing.assert_array_equal(plan.slash_idx, s.numpy())
    want = _spec_attention_with_sets(layer, x, sub.sets, chunk)
    np.testing.assert_allclose(layer.last_attention.numpy(), want, rtol=0, atol=1e-10)
    assert float((layer.last_attention - estimated).abs().max()) > 1e-3  # the substitution changed the attention


def test_pattern_substitution_keeps_budgets_and_the_row_check_needs_it():
    import bench_qwen_layer as bq

    geometry = qwen_layer.tiny_geometry()
    geometry = qwen_layer.replace(geometry, dca={**geometry.dca, "sparse_attention_last_q": 64})
    layer = qwen_layer.QwenLayer(geometry, dtype=torch.float64, seed=4, sparse_table=qwen_layer.tiny_sparse_table())
    segments = [seg for seg in layer.segments(T, None) if seg[1] > 100]
    rows = [r for _, e in segments for r in range(e - 64, e)]
    sub = bq.PatternSubstitution(layer, "synthetic")
    with sub:
        layer.forward(_input(7), chunk=None, sparse=True, keep_rows=rows)
        inside = bq.check_run(layer, segments, T, True)
    outside = bq.check_run(layer, segments, T, True)  # the reference estimates its own sets: they differ
    assert inside["ok"] and not outside["ok"]
    for kv_len, (v, s) in sub.sets.items():
        with yarnref.use_backend(layer.backend):
            ev, es = layer.backend.vertical_slash_indices(torch.zeros(1, 4, 64, 16, dtype=torch.float64),
                                                          torch.randn(1, 2, kv_len, 16, dtype=torch.float64),
                                                          *sub.budgets)
        assert v.shape == ev.shape and s.shape == es.shape
        np.testing.assert_array_equal((v >= 0).sum(-1).numpy(), (ev >= 0).sum(-1).numpy())
        np.testing.assert_array_equal((s >= 0).sum(-1).numpy(), (es >= 0).sum(-1).numpy())
    with pytest.raises(ValueError, match="smollm2"):
        bq.PatternSubstitution(layer, "smollm2")


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("chunk", [None, CHUNK])
def test_row_sub_chunks_change_nothing(monkeypatch, sparse, chunk):
    """The row-wise work in sub-chunks of 64 rows (a small ROW_BYTES) gives the layer of one sub-chunk per chunk."""
    layer = _layer(qwen_layer.tiny_sparse_table())
    x = _input(6)
    whole = layer.forward(x.clone(), chunk=chunk, sparse=sparse, keep_attention=True)
    attention = layer.last_attention
    monkeypatch.setattr(qwen_layer, "ROW_BYTES", 2 * layer.g.intermediate * 8 * 64)
    assert layer.row_step() == 64
    split = layer.forward(x.clone(), chunk=chunk, sparse=sparse, keep_attention=True)
    np.testing.assert_allclose(layer.last_attention.numpy(), attention.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(split.numpy(), whole.numpy(), rtol=0, atol=1e-12)
    assert float((split - x).abs().max()) > 0.1


def test_sparse_layer_caches_rotated_keys():
    """The sparse layer's cache holds every key at j mod L (what the dense layer's cache holds, rotated once)."""
    layer = _layer(qwen_layer.tiny_sparse_table())
    x = _input(7)
    rows = list(range(CHUNK - 64, CHUNK))
    layer.forward(x.clone(), chunk=CHUNK, sparse=False, keep_rows=rows)
    plain = layer.kept["k"]
    layer.forward(x.clone(), chunk=CHUNK, sparse=True, keep_rows=rows)
    assert layer.kept["k_rotated"]
    ids = yarnref.dca_position_ids(T, 256, 64)
    cos, sin = yarnref.rope_cos_sin(layer.inv_freq, ids.key)
    np.testing.assert_allclose(layer.kept["k"].numpy(), yarnref.apply_rope(plain.numpy(), cos, sin), rtol=0, atol=1e-12)
    assert layer.kept["k_plain"] is None  # CHUNK > the gate: no call below it
    with pytest.raises(ValueError, match="below the sparse gate"):
        layer.forward(x.clone(), chunk=40, sparse=True)  # the second call (80 keys) is below the gate (100)


def test_first_chunk_below_the_gate_reads_its_own_keys():
    """Gate at the chunk size (as at 1M: 32768 both): the first call is dense DCA on the chunk's un-rotated keys,
    the later ones sparse on the rotated cache; the attention equals the spec's pipeline and the row check passes."""
    g = qwen_layer.tiny_geometry()
    geometry = qwen_layer.replace(g, dca={**g.dca, "sparse_attention_threshold": CHUNK, "sparse_attention_last_q": 64})
    layer = qwen_layer.QwenLayer(geometry, dtype=torch.float64, seed=8, sparse_table=qwen_layer.tiny_sparse_table())
    x = _input(8)
    segments = layer.segments(T, CHUNK)
    picked = [segments[0], segments[-1]]
    assert picked[0] == (0, CHUNK)
    rows = [r for _, e in picked for r in range(e - 64, e)]
    layer.forward(x.clone(), chunk=CHUNK, sparse=True, keep_attention=True, keep_rows=rows)
    h = qwen_layer._rms_norm(x, layer.norm1, layer.g.rms_eps)
    q, k, v = (t.numpy() for t in layer.project(h))
    with yarnref.use_backend("numpy"):
        ref = yarnref.qwen_prefill(q, k, v, layer.inv_freq, layer.dca_config(True), layer=0, prefill_chunk_size=CHUNK)
    np.testing.assert_allclose(layer.last_attention.numpy(), ref, rtol=0, atol=1e-10)
    kept = layer.kept
    assert kept["k_plain"].shape[2] == CHUNK
    for i, (begin, end) in enumerate(picked):
        got = layer.kept_reference(kept["q"][:, :, 64 * i : 64 * (i + 1)], T, True, begin, end)
        np.testing.assert_allclose(kept["attention"][:, :, 64 * i : 64 * (i + 1)].numpy(), got.numpy(), rtol=0, atol=1e-10)
