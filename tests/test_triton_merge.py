"""Tests of the Triton LSE merge (``backends/yarnref_torch/merge_triton.py``).

On a CUDA machine the kernel runs compiled; elsewhere under Triton's CPU
interpreter (``TRITON_INTERPRET=1``, on only while these tests run, as in
``tests/test_triton_sparse.py``).  Reference: the spec's
``yarnref.softmax_attention.merge_attention`` in float64 on the same parts,
and the union's attention the parts were cut from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yarnref.softmax_attention import attention, merge_attention
from yarnref.testing import assert_close

from conftest import runnable_triton_file

torch = pytest.importorskip("torch")

MODULE_PATH = Path(__file__).resolve().parent.parent / "backends" / "yarnref_torch" / "merge_triton.py"
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture
def mt(monkeypatch):
    """The module, ready to run its kernel here (CUDA, or the CPU interpreter), else skip."""
    return runnable_triton_file(MODULE_PATH, monkeypatch)


def _parts(rng, n_parts, shape, empty, kv_len=24):
    """Attention of one query block over ``n_parts`` disjoint key ranges (float64), some of them empty."""
    batch, heads, rows, d = shape
    q = rng.standard_normal((batch, heads, rows, d))
    k, v = rng.standard_normal((2, batch, heads, kv_len, d))
    cuts = np.sort(rng.integers(0, kv_len + 1, size=n_parts - 1))
    bounds = [0, *cuts.tolist(), kv_len]
    outputs, lses = [], []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if hi <= lo or i in empty:
            outputs.append(np.zeros(shape))
            lses.append(np.full(shape[:-1], -np.inf))
        else:
            o, lse = attention(q, k[:, :, lo:hi], v[:, :, lo:hi], causal=False, return_lse=True)
            outputs.append(o)
            lses.append(lse)
    return q, k, v, outputs, lses


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # the fixture only loads the module
@given(n_parts=st.integers(2, 4), rows=st.integers(1, 70), heads=st.integers(1, 3), d=st.sampled_from([16, 40, 128]),
       dtype=st.sampled_from(["float16", "bfloat16"]), empty=st.sets(st.integers(0, 3), max_size=4),
       strided=st.booleans(), seed=st.integers(0, 2**16))
def test_merge_kernel_equals_the_spec(mt, n_parts, rows, heads, d, dtype, empty, strided, seed):
    """The kernel's output and lse against the spec's merge of the same (rounded) parts, in float64; rows
    whose every part is empty give 0 and -inf; any strides with a unit last one."""
    rng = np.random.default_rng(seed)
    shape = (2, heads, rows, d)
    _, _, _, outputs, lses = _parts(rng, n_parts, shape, empty)
    tdtype = getattr(torch, dtype)
    t_out, t_lse = [], []
    for o, lse in zip(outputs, lses):
        if strided:  # (batch, seq, heads, d) in memory, seen as (batch, heads, seq, d); the lse a column of a wider array
            o_t = torch.as_tensor(o.transpose(0, 2, 1, 3).copy(), dtype=tdtype, device=DEVICE).transpose(1, 2)
            wide = torch.zeros(shape[:-1] + (2,), dtype=torch.float32, device=DEVICE)
            wide[..., 1] = torch.as_tensor(lse, dtype=torch.float32)
            lse_t = wide[..., 1]
        else:
            o_t = torch.as_tensor(o, dtype=tdtype, device=DEVICE)
            lse_t = torch.as_tensor(lse, dtype=torch.float32, device=DEVICE)
        t_out.append(o_t)
        t_lse.append(lse_t)
    out, lse = mt.merge_triton(t_out, t_lse)
    assert out.dtype == tdtype and lse.dtype == torch.float32 and out.shape == shape
    rounded = [o.to(torch.float64).cpu().numpy() for o in t_out]
    lse32 = [lse_t.to(torch.float64).cpu().numpy() for lse_t in t_lse]
    want_out, want_lse = merge_attention(rounded, lse32)
    assert_close(out.to(torch.float64).cpu().numpy(), want_out, dtype=dtype, op="merge")
    assert_close(lse.to(torch.float64).cpu().numpy(), want_lse, dtype="float32", op="merge")
    all_empty = np.all(np.stack([np.isneginf(x) for x in lse32]), axis=0)
    assert np.all(np.isneginf(lse.cpu().numpy()[all_empty])) and np.all(out.to(torch.float64).cpu().numpy()[all_empty] == 0)


def test_merge_kernel_of_the_union(mt):
    """Merging the parts gives the attention over the union of their keys (the reason the merge exists)."""
    rng = np.random.default_rng(5)
    q, k, v, outputs, lses = _parts(rng, 3, (1, 2, 33, 64), empty=set(), kv_len=40)
    out, lse = mt.merge_triton([torch.as_tensor(o, dtype=torch.float16, device=DEVICE) for o in outputs],
                               [torch.as_tensor(x, dtype=torch.float32, device=DEVICE) for x in lses])
    union_out, union_lse = attention(q, k, v, causal=False, return_lse=True)
    assert_close(out.to(torch.float64).cpu().numpy(), union_out, dtype="float16", op="merge")
    assert_close(lse.cpu().numpy().astype(np.float64), union_lse, dtype="float32", op="merge")


def test_merge_dispatch(mt):
    """merge_tensors takes the kernel for CUDA half-precision parts of one shape with float32 lses only."""
    o = torch.zeros((1, 2, 8, 16), dtype=torch.bfloat16, device=DEVICE)
    lse = torch.zeros((1, 2, 8), dtype=torch.float32, device=DEVICE)
    assert mt.available([o, o], [lse, lse]) == (CUDA and mt.triton is not None)
    assert not mt.available([o], [lse])  # one part: nothing to merge
    assert not mt.available([o, o.float()], [lse, lse])  # mixed dtypes
    assert not mt.available([o, o], [lse, lse.double()])  # a float64 lse: the eager float64 merge
    assert not mt.available([o, o[:, :, :4]], [lse, lse[:, :, :4]])  # shapes differ (broadcasting: eager)
    assert not mt.available([o.float(), o.float()], [lse, lse])  # float32 outputs: the eager float32 merge
