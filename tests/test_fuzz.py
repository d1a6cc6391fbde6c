"""Fuzzing every public function: a yarnref error, or a finite result of the right type; nothing else.

Every callable in ``yarnref.__all__`` gets arguments that are mostly plausible
(small arrays of consistent shapes, sizes, option strings) and sometimes junk
(None, bools, huge or negative integers, NaN, infinities, strings, dicts,
lists, empty arrays, arrays as options, extreme floats such as 1e308).  The
call must either raise a :class:`~yarnref.errors.YarnrefError` or return
NumPy arrays / Python numbers with no NaN and no +inf (``-inf`` is the lse of
a query with no key), without a RuntimeWarning on the way.

Examples per function: 25 in CI; ``YARNREF_FUZZ_EXAMPLES=2000`` for a long run.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import yarnref
from yarnref.errors import YarnrefError

FUZZ_EXAMPLES = int(os.environ.get("YARNREF_FUZZ_EXAMPLES", "25"))
fuzz_settings = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

# ----------------------------------------------------------------------------- values

#: Sizes that are either small (computed) or so large that any array they size is refused up front.
sizes = st.one_of(st.integers(1, 40), st.integers(1, 40), st.sampled_from([0, -1, 2**40, 2**53 + 1, 2**62, 2**63, 10**400]))
extreme_floats = st.sampled_from([0.0, -0.0, 1e308, -1e308, 1e-308, 5e-324, 1e20, 1e155, 65504.0, 2.0**53, -5.0])
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    extreme_floats,
    st.text(max_size=5),
    st.just({}),
    st.just({"a": 1}),
    st.just([1, "x"]),
    st.just(np.array([])),
    st.just(np.array(["x"])),
    st.just(np.zeros((2, 2), dtype=np.int64)),
)


def maybe(plausible):
    """Mostly the plausible value, sometimes junk."""
    return st.one_of(plausible, plausible, plausible, junk)


float_dtypes = st.sampled_from([np.float64, np.float32, np.float16])
elements = st.floats(-4.0, 4.0, width=16)


@st.composite
def qkv(draw, equal_len=False):
    """q, k, v of one dtype with GQA: ``(b, hq, tq, d)``, ``(b, hk, tk, d)``, ``(b, hk, tk, dv)``."""
    dtype = draw(float_dtypes)
    b, hk, group = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    tk = draw(st.integers(1, 24))
    tq = tk if equal_len else draw(st.integers(1, tk))
    d = draw(st.sampled_from([2, 4, 8]))
    scale_up = draw(st.sampled_from([1.0, 1.0, 1.0, 30.0, 1e150]))  # logits near exp's range, or beyond float64's
    arrays = [
        draw(hnp.arrays(dtype, shape, elements=elements)).astype(np.float64) * scale_up
        for shape in ((b, hk * group, tq, d), (b, hk, tk, d), (b, hk, tk, draw(st.sampled_from([d, 3]))))
    ]
    with np.errstate(over="ignore"):
        return tuple(a.astype(dtype) for a in arrays)


def inv_freqs(n):
    return st.one_of(
        st.just(1.0 / 10000.0 ** (np.arange(n) / n)),
        hnp.arrays(np.float64, n, elements=st.floats(1e-6, 10.0)),
        hnp.arrays(np.float64, n, elements=st.floats(allow_nan=True, allow_infinity=True)),
    )


positions = st.one_of(
    hnp.arrays(np.int64, st.integers(1, 12), elements=st.integers(0, 2**20)),
    hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(-1e6, 1e6)),
    st.sampled_from([np.array([2**53]), np.array([2**60]), np.array([2**64 - 1], dtype=np.uint64), np.array([1e39])]),
    st.lists(st.integers(0, 1000), min_size=1, max_size=5),
)
index_lists = hnp.arrays(np.int64, st.tuples(st.just(1), st.just(2), st.integers(1, 6)), elements=st.integers(-1, 40))
options = {
    "pairing": st.sampled_from(["half", "interleaved", "interleaved_in_half_out"]),
    "precision": st.sampled_from(["float64", "float32", "float16", "bfloat16"]),
    "mode": st.sampled_from(["exact", "kernel"]),
    "form": st.sampled_from(["union", "merge"]),
    "temperature": st.sampled_from(["none", "chunkllama", "qwen"]),
}
bools = st.booleans()
scales = st.one_of(st.none(), st.floats(0.01, 2.0))

# ----------------------------------------------------------------------------- the property


def check_result(value, where="result"):
    """NumPy arrays and Python/NumPy numbers only, no NaN, no +inf; recurse into tuples, lists and records."""
    if value is None or isinstance(value, (bool, str, np.bool_)):
        return
    if isinstance(value, (int, np.integer)):
        assert abs(int(value)) <= 2**63, f"{where}: integer {value} beyond int64"
        return
    if isinstance(value, (float, np.floating)):
        assert not math.isnan(value) and value != math.inf, f"{where}: {value}"
        return
    if isinstance(value, np.ndarray):
        assert value.dtype.kind in "biuf", f"{where}: dtype {value.dtype}"
        if value.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                assert not np.any(np.isnan(value)), f"{where}: NaN"
                assert not np.any(value == np.inf), f"{where}: +inf"
        return
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            check_result(item, f"{where}[{i}]")
        return
    if hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            check_result(getattr(value, name), f"{where}.{name}")
        return
    if isinstance(value, Mapping):
        return  # configs and presets: JSON-shaped data
    if isinstance(value, yarnref.Backend):
        return
    raise AssertionError(f"{where}: unexpected type {type(value).__name__}")


def call(fn, *args, **kwargs):
    """Run ``fn``: a yarnref error is fine, a result must pass :func:`check_result`, a warning fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            result = fn(*args, **kwargs)
        except YarnrefError:
            return None
    check_result(result)
    return result


@pytest.fixture(autouse=True)
def numpy_backend():
    yarnref.set_backend("numpy")
    yield
    yarnref.set_backend("numpy")


# ----------------------------------------------------------------------------- one test per public function


@fuzz_settings
@given(data=st.data())
def test_rope_cos_sin(data):
    n = data.draw(st.integers(1, 8))
    call(yarnref.rope_cos_sin, data.draw(maybe(inv_freqs(n))), data.draw(maybe(positions)),
         data.draw(maybe(st.floats(0.1, 3.0) | extreme_floats)), precision=data.draw(maybe(options["precision"])),
         out_precision=data.draw(st.one_of(st.none(), maybe(options["precision"]))))


@fuzz_settings
@given(data=st.data())
def test_rope_angles(data):
    n = data.draw(st.integers(1, 8))
    call(yarnref.rope_angles, data.draw(maybe(inv_freqs(n))), data.draw(maybe(positions)),
         precision=data.draw(maybe(options["precision"])))


@fuzz_settings
@given(data=st.data())
def test_apply_rope(data):
    q, _, _ = data.draw(qkv())
    half = data.draw(st.integers(1, q.shape[-1] // 2))
    cos, sin = yarnref.rope_cos_sin(1.0 / 10000.0 ** (np.arange(half) / half), np.arange(q.shape[2]),
                                    data.draw(st.sampled_from([1.0, 1.3, 1e4])))
    out = call(yarnref.apply_rope, data.draw(maybe(st.just(q))), data.draw(maybe(st.just(cos))),
               data.draw(maybe(st.just(sin))), data.draw(maybe(options["pairing"])))
    if out is not None:
        assert out.shape == q.shape and out.dtype == q.dtype


@fuzz_settings
@given(data=st.data())
def test_attention(data):
    q, k, v = data.draw(qkv())
    out = call(yarnref.attention, data.draw(maybe(st.just(q))), data.draw(maybe(st.just(k))),
               data.draw(maybe(st.just(v))), data.draw(maybe(bools)), data.draw(maybe(scales)),
               data.draw(maybe(bools)))
    if isinstance(out, np.ndarray):
        assert out.dtype == q.dtype and np.all(np.isfinite(out))


@fuzz_settings
@given(data=st.data())
def test_merge_attention(data):
    n = data.draw(st.integers(1, 3))
    shape = (1, 2, 3)
    outs = [data.draw(hnp.arrays(np.float64, shape + (4,), elements=st.floats(-10, 10))) for _ in range(n)]
    lses = [data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-2000, 2000) | st.just(-np.inf))) for _ in range(n)]
    result = call(yarnref.merge_attention, data.draw(maybe(st.just(outs))), data.draw(maybe(st.just(lses))))
    if result is not None:
        assert np.all(np.isfinite(result[0]))


@fuzz_settings
@given(data=st.data())
def test_dca_attention(data):
    q, k, v = data.draw(qkv())
    chunk = data.draw(maybe(st.integers(2, 12)))
    local = data.draw(maybe(st.integers(1, 6)))
    call(yarnref.dca_attention, data.draw(maybe(st.just(q))), k, v, data.draw(maybe(inv_freqs(q.shape[-1] // 2))),
         chunk, local, data.draw(maybe(scales)), pairing=data.draw(maybe(st.sampled_from(["half", "interleaved"]))),
         attention_factor=data.draw(maybe(st.floats(0.5, 2.0))), form=data.draw(maybe(options["form"])),
         temperature=data.draw(maybe(st.just("none"))), return_lse=data.draw(maybe(bools)))


@fuzz_settings
@given(data=st.data())
def test_vertical_slash_indices(data):
    q, k, _ = data.draw(qkv())
    call(yarnref.vertical_slash_indices, data.draw(maybe(st.just(q))), data.draw(maybe(st.just(k))),
         data.draw(maybe(st.integers(1, 40))), data.draw(maybe(st.integers(1, 40))), data.draw(maybe(st.integers(1, 8))))


@fuzz_settings
@given(data=st.data())
def test_convert_vertical_slash_indexes(data):
    call(yarnref.convert_vertical_slash_indexes, data.draw(maybe(sizes)), data.draw(maybe(sizes)),
         data.draw(maybe(index_lists)), data.draw(maybe(index_lists)), data.draw(maybe(st.sampled_from([8, 16, 64]))),
         data.draw(maybe(st.sampled_from([8, 16, 64]))), data.draw(maybe(bools)))


@fuzz_settings
@given(data=st.data())
def test_vertical_slash_mask(data):
    call(yarnref.vertical_slash_mask, data.draw(maybe(sizes)), data.draw(maybe(sizes)), data.draw(maybe(index_lists)),
         data.draw(maybe(index_lists)), data.draw(maybe(options["mode"])), data.draw(maybe(bools)))


@fuzz_settings
@given(data=st.data())
def test_vertical_slash_attention(data):
    q, k, v = data.draw(qkv())
    batch, heads = q.shape[:2]
    idx = st.just(np.tile(np.arange(3), (batch, heads, 1)))
    call(yarnref.vertical_slash_attention, data.draw(maybe(st.just(q))), k, v, data.draw(maybe(idx)),
         data.draw(maybe(idx)), data.draw(maybe(options["mode"])), data.draw(maybe(scales)), data.draw(maybe(bools)))


@fuzz_settings
@given(data=st.data())
def test_a_and_tri_shape_attention(data):
    q, k, v = data.draw(qkv())
    n_init, n_local, n_last = (data.draw(maybe(st.integers(0, 8))) for _ in range(3))
    call(yarnref.a_shape_attention, q, k, v, n_init, n_local, data.draw(maybe(scales)), data.draw(maybe(bools)))
    call(yarnref.tri_shape_attention, q, k, v, n_init, n_local, n_last, data.draw(maybe(scales)), data.draw(maybe(bools)))


@fuzz_settings
@given(data=st.data())
def test_masks_and_position_ids(data):
    q_len, kv_len, a, b, c = (data.draw(maybe(sizes)) for _ in range(5))
    call(yarnref.a_shape_mask, q_len, kv_len, a, b)
    call(yarnref.tri_shape_mask, q_len, kv_len, a, b, c)
    call(yarnref.dca_position_ids, kv_len, a, b)
    call(yarnref.dca_segments, kv_len, q_len, a, b)
    if not isinstance(kv_len, int) or kv_len <= 64:
        call(yarnref.dca_relative_positions, kv_len, a, b)


@fuzz_settings
@given(data=st.data())
def test_attention_recall(data):
    q, k, _ = data.draw(qkv())
    mask = st.just(np.ones((q.shape[2], k.shape[2]), dtype=bool))
    call(yarnref.attention_recall, data.draw(maybe(st.just(q))), data.draw(maybe(st.just(k))), data.draw(maybe(mask)),
         data.draw(maybe(scales)), causal=data.draw(maybe(bools)))


@fuzz_settings
@given(data=st.data())
def test_chunked_prefill(data):
    q, k, v = data.draw(qkv())
    call(yarnref.chunked_prefill, q, data.draw(maybe(st.just(k))), v, data.draw(maybe(st.integers(1, 16))),
         data.draw(maybe(scales)), return_lse=data.draw(maybe(bools)))


def dca_configs():
    table = [{str(h): ["vertical_and_slash", 8, 8, 0.9] for h in range(4)}]
    plausible = st.fixed_dictionaries(
        {"chunk_size": maybe(st.integers(2, 16)), "local_size": maybe(st.integers(1, 8))},
        optional={
            "original_max_position_embeddings": maybe(st.integers(0, 64)),
            "sparse_attention_config": maybe(st.just(table)),
            "sparse_attention_enabled": maybe(bools),
            "sparse_attention_threshold": maybe(st.integers(1, 16)),
            "sparse_attention_last_q": maybe(st.integers(1, 8)),
        },
    )
    return maybe(plausible)


@fuzz_settings
@given(data=st.data())
def test_dca_config_and_qwen_pipeline(data):
    config = data.draw(dca_configs())
    dca = call(yarnref.dca_config, config)
    if isinstance(config, dict) and {"chunk_size", "local_size"} <= set(config):
        call(yarnref.DCAConfig, **config)  # the constructor validates what it is given
    else:
        call(yarnref.DCAConfig, config, 1)
    if dca is None:
        return
    call(yarnref.sparse_attention_config_for, dca, data.draw(maybe(st.integers(0, 2))), data.draw(maybe(st.none())))
    q, k, v = data.draw(qkv(equal_len=True))
    inv = 1.0 / 10000.0 ** (np.arange(q.shape[-1] // 2) / (q.shape[-1] // 2))
    layer = data.draw(maybe(st.just(0)))
    call(yarnref.qwen_sparse_plan, q, k, inv, dca, data.draw(maybe(scales)), layer=layer)
    call(yarnref.qwen_prefill, q, k, v, inv, dca, data.draw(maybe(scales)), layer=layer,
         prefill_chunk_size=data.draw(maybe(st.none() | st.integers(1, 16))))


@st.composite
def sorted_index_groups(draw, descending: bool):
    """Per-head-group index arrays as an estimation returns them (sometimes unsorted, float, or ragged)."""
    groups = []
    for _ in range(draw(st.integers(1, 2))):
        rows = draw(hnp.arrays(np.int64, st.tuples(st.just(1), st.integers(1, 3), st.integers(0, 6)), elements=st.integers(-1, 30)))
        if draw(st.booleans()) and descending:  # the order split_sparse_parts needs: sorted, padding at the end
            rows = np.sort(rows, axis=-1)[..., ::-1]
        elif draw(st.booleans()):
            ascending = np.sort(np.where(rows >= 0, rows, 10**6), axis=-1)
            rows = np.where(ascending < 10**6, ascending, -1)
        groups.append(rows)
    return groups


@fuzz_settings
@given(data=st.data())
def test_split_sparse_parts(data):
    L = data.draw(st.integers(1, 20))
    cs = L * data.draw(st.integers(0, 3))
    begin = data.draw(st.integers(cs, cs + L - 1))
    end = data.draw(st.integers(begin + 1, cs + L))
    result = call(yarnref.split_sparse_parts, data.draw(maybe(sorted_index_groups(False))),
                  data.draw(maybe(sorted_index_groups(True))), data.draw(maybe(st.just(begin))),
                  data.draw(maybe(st.just(end))), data.draw(maybe(st.just(cs))), data.draw(maybe(st.just(L))))
    if result is not None:
        for part in result[2].values():
            check_result((part.vertical_idx, part.slash_idx))
            assert part.vertical_idx.dtype == np.int64 and part.slash_idx.dtype == np.int64


@fuzz_settings
@given(data=st.data())
def test_small_rope_functions(data):
    # Finite features: the two permutations move NaN and inf exactly, which is their correct result.
    x = data.draw(hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.sampled_from([2, 4, 8])),
                             elements=st.floats(allow_nan=False, allow_infinity=False)))
    call(yarnref.rotary_dim, data.draw(maybe(st.integers(1, 256))), data.draw(maybe(st.floats(0.1, 1.0))))
    call(yarnref.base_inv_freq, data.draw(maybe(st.sampled_from([2, 8, 64]))), data.draw(maybe(st.floats(1.5, 1e6))))
    call(yarnref.interleaved_to_half, data.draw(maybe(st.just(x))), data.draw(maybe(st.sampled_from([2, 4, 8]))))
    call(yarnref.half_to_interleaved, data.draw(maybe(st.just(x))), data.draw(maybe(st.sampled_from([2, 4, 8]))))


@fuzz_settings
@given(data=st.data())
def test_presets_configs_and_backends(data):
    name = data.draw(maybe(st.sampled_from(yarnref.preset_names())))
    config = call(yarnref.get_preset, name)
    if config is not None:
        rc = call(yarnref.parse_rope_config, config)
        call(yarnref.rope_frequencies, config, data.draw(st.none() | maybe(st.integers(1, 2**20))),
             stack=data.draw(maybe(st.sampled_from(["transformers", "vllm", "llama.cpp", "yarn_authors"]))),
             dynamic_yarn=data.draw(maybe(st.just(False))), extrapolation_factor=data.draw(maybe(st.just(1.0))))
        assert rc is None or isinstance(rc, yarnref.RopeConfig)
    call(yarnref.parse_rope_config, data.draw(junk))
    backend = data.draw(maybe(st.sampled_from(["numpy", "no-such-backend"])))
    call(yarnref.set_backend, backend, **data.draw(st.sampled_from([{}, {"device": "cuda"}, {"x": 1}])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            with yarnref.use_backend(backend):
                pass
        except YarnrefError:
            pass
    for fn in (yarnref.preset_names, yarnref.available_backends, yarnref.registered_backends, yarnref.get_backend):
        call(fn)


def test_every_public_function_is_fuzzed():
    """A public callable added to yarnref.__all__ must get a fuzz test here."""
    source = inspect.getsource(inspect.getmodule(test_every_public_function_is_fuzzed))
    functions = [n for n in yarnref.__all__ if callable(getattr(yarnref, n)) and not isinstance(getattr(yarnref, n), type)]
    missing = [n for n in functions if f"yarnref.{n}" not in source]
    assert not missing, f"not fuzzed: {missing}"


# ----------------------------------------------------------------------------- ALiBi, ring attention, progress

layouts = st.sampled_from(["contiguous", "zigzag", "striped"])


@fuzz_settings
@given(data=st.data())
def test_alibi(data):
    slopes = call(yarnref.alibi_slopes, data.draw(maybe(sizes)))
    bias = call(yarnref.alibi_bias, data.draw(maybe(st.just(slopes if slopes is not None else np.ones(2)))),
                data.draw(maybe(sizes)), data.draw(maybe(sizes)))
    if bias is not None:
        assert np.all(bias <= 0)  # a penalty, never a bonus
    q, k, v = data.draw(qkv())
    call(yarnref.attention, q, k, v, data.draw(maybe(bools)),
         alibi_slopes=data.draw(maybe(st.just(yarnref.alibi_slopes(q.shape[1])))))


@fuzz_settings
@given(data=st.data())
def test_ring_attention_and_schedule(data):
    q, k, v = data.draw(qkv(equal_len=True))
    world, layout = data.draw(maybe(st.integers(1, 5))), data.draw(maybe(layouts))
    call(yarnref.ring_attention, data.draw(maybe(st.just(q))), k, v, world, layout, data.draw(maybe(bools)),
         data.draw(maybe(scales)), data.draw(maybe(bools)))
    call(yarnref.ring_schedule, data.draw(maybe(sizes)), world, layout, data.draw(maybe(bools)))


@fuzz_settings
@given(data=st.data())
def test_ring_dca_and_sparse(data):
    q, k, v = data.draw(qkv(equal_len=True))
    world, layout = data.draw(maybe(st.integers(1, 4))), data.draw(maybe(layouts))
    call(yarnref.ring_dca_attention, data.draw(maybe(st.just(q))), k, v, data.draw(maybe(inv_freqs(q.shape[-1] // 2))),
         data.draw(maybe(st.integers(2, 12))), data.draw(maybe(st.integers(1, 6))), world, layout)
    batch, heads = q.shape[:2]
    idx = st.just(np.tile(np.arange(3), (batch, heads, 1)))
    call(yarnref.ring_vertical_slash_attention, q, k, v, data.draw(maybe(idx)), data.draw(maybe(idx)), world, layout,
         data.draw(maybe(scales)), data.draw(maybe(bools)), mode=data.draw(maybe(st.sampled_from(["kernel", "exact"]))))


@fuzz_settings
@given(data=st.data())
def test_show_progress(data):
    callback = data.draw(maybe(st.just(lambda done, total, what: None)))
    try:
        context = yarnref.show_progress(callback)
        with context:
            q, k, v = data.draw(qkv())
            call(yarnref.attention, q, k, v)
    except YarnrefError:
        assert not callable(callback)


def test_gpu_backends():
    names = call(yarnref.gpu_backends)
    assert isinstance(names, list) and "numpy" not in names
