"""Progress reports of the spec's long loops (yarnref.progress): on request only, outermost loop only."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import yarnref
from yarnref.errors import InputError


def qkv(rng, q_len=50, kv_len=50, heads=2, d=8):
    return rng.standard_normal((1, heads, q_len, d)), *rng.standard_normal((2, 1, heads, kv_len, d))


def record():
    calls = []
    return calls, lambda done, total, what: calls.append((done, total, what))


def test_off_by_default_and_results_unchanged(rng):
    q, k, v = qkv(rng)
    calls, callback = record()
    plain = yarnref.attention(q, k, v, block_size=7)
    with yarnref.show_progress(callback):
        reported = yarnref.attention(q, k, v, block_size=7)
    assert np.array_equal(plain, reported)
    assert calls == [(i, 8, "attention") for i in range(1, 9)]  # ceil(50 / 7) = 8 blocks, each reported once
    yarnref.attention(q, k, v, block_size=7)  # outside the block: nothing more
    assert len(calls) == 8


def test_blocks_with_no_visible_key_count_too(rng):
    q, k, v = qkv(rng, q_len=30, kv_len=10)  # causal: the first 20 queries see nothing (skipped blocks)
    calls, callback = record()
    with yarnref.show_progress(callback):
        yarnref.attention(q, k, v, block_size=4)
    assert [c[0] for c in calls] == list(range(1, 9)) and calls[-1][1] == 8


def test_only_the_outermost_loop_reports(rng):
    q, k, v = qkv(rng, q_len=64, kv_len=64)
    calls, callback = record()
    with yarnref.show_progress(callback):
        yarnref.chunked_prefill(q, k, v, chunk_size=16)
    assert {what for _, _, what in calls} == {"chunked_prefill"}
    assert [done for done, _, _ in calls] == [1, 2, 3, 4]


@pytest.mark.parametrize("form", ["union", "merge"])
def test_dca_reports(rng, form):
    q, k, v = qkv(rng, q_len=96, kv_len=96, d=16)
    inv_freq = yarnref.base_inv_freq(16, 10000.0)
    calls, callback = record()
    with yarnref.show_progress(callback):
        out = yarnref.dca_attention(q, k, v, inv_freq, 40, 8, form=form)
    assert np.array_equal(out, yarnref.dca_attention(q, k, v, inv_freq, 40, 8, form=form))
    assert calls and all(what == "dca_attention" for _, _, what in calls)
    assert calls[-1][0] == calls[-1][1], "the last step completes the count"


def test_tqdm_bar(rng, capsys):
    pytest.importorskip("tqdm")
    q, k, v = qkv(rng)
    with yarnref.show_progress():
        yarnref.attention(q, k, v, block_size=10)
    assert "yarnref attention" in capsys.readouterr().err


def test_the_setting_is_per_thread(rng):
    q, k, v = qkv(rng)
    calls, callback = record()
    with yarnref.show_progress(callback):
        other = threading.Thread(target=yarnref.attention, args=(q, k, v), kwargs={"block_size": 5})
        other.start()
        other.join()
    assert calls == []  # a thread started inside the block runs with the default (off)


def test_bad_callback():
    with pytest.raises(InputError, match="callback"):
        with yarnref.show_progress(callback=3):
            pass
