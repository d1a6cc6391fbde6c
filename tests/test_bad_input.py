"""Hostile input, as a new user (or a fuzzer) would try it: every call gets a yarnref error or a correct result.

Each row of :data:`REFUSED` is one reproducer: a call, the yarnref error it
must raise, and the parameter (or config key) that error must name.  Nothing
may escape as a raw Python or NumPy exception, a RuntimeWarning, a NaN, a hang
or an allocation of terabytes.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import yarnref
from yarnref import checks
from yarnref.softmax_attention import attention, merge_attention
from yarnref.cli import main
from yarnref.errors import BackendError, ConfigError, DeviceMismatchError, InputError, UnknownBackendError, YarnrefError
from yarnref.vectors import read_vectors, write_vectors

RNG = np.random.default_rng(0)
Q = RNG.standard_normal((1, 2, 8, 16))
LSE = np.zeros((1, 2, 8))
BASE = {"rope_theta": 10000.0, "head_dim": 64, "max_position_embeddings": 4096}
INV_FREQ = yarnref.rope_frequencies(BASE)[0]


def yarn(**params):
    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, **params}
    return {**BASE, "max_position_embeddings": 16384, "rope_scaling": scaling}


DYNAMIC = {**BASE, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}

# (id, call, error class, the parameter or key the error names)
REFUSED = [
    # extreme but finite config numbers
    ("beta_fast-1e308", lambda: yarnref.rope_frequencies(yarn(beta_fast=1e308)), ConfigError, "rope_scaling.beta_fast"),
    ("beta_slow-1e-308", lambda: yarnref.rope_frequencies(yarn(beta_slow=1e-308)), ConfigError, "rope_scaling.beta_slow"),
    ("factor-1e308", lambda: yarnref.rope_frequencies(yarn(factor=1e308)), ConfigError, "rope_scaling.factor"),
    ("factor-1e20", lambda: yarnref.parse_rope_config(yarn(factor=1e20)), ConfigError, "rope_scaling.factor"),
    ("mscale_all_dim-1e308", lambda: yarnref.rope_frequencies(yarn(factor=1e9, mscale=1.0, mscale_all_dim=1e308)),
     ConfigError, "rope_scaling.mscale_all_dim"),
    ("array-in-config", lambda: yarnref.rope_frequencies({**BASE, "rope_theta": np.array([1.0, 2.0])}), ConfigError, "rope_theta"),
    ("array-in-rope_scaling", lambda: yarnref.rope_frequencies(yarn(rope_theta=np.array([1.0, 2.0]))), ConfigError,
     "rope_scaling.rope_theta"),
    ("array-as-rope_type", lambda: yarnref.parse_rope_config(yarn(type=np.array([]))), ConfigError, "rope_scaling.type"),
    ("head_dim-0-config", lambda: yarnref.rope_frequencies({**BASE, "head_dim": 0}), ConfigError, "head_dim"),
    # errors that name the real culprit
    ("dynamic-seq_len-10**400", lambda: yarnref.rope_frequencies(DYNAMIC, 10**400), InputError, "seq_len"),
    ("extrapolation_factor--5", lambda: yarnref.rope_frequencies(yarn(), extrapolation_factor=-5.0), InputError, "extrapolation_factor"),
    ("dynamic_yarn-no", lambda: yarnref.rope_frequencies(yarn(), 300000, dynamic_yarn="no"), InputError, "dynamic_yarn"),
    ("stack-array", lambda: yarnref.rope_frequencies(BASE, stack=np.array([])), InputError, "stack"),
    # finite inputs that would give NaN or inf
    ("attention-scale-1e308", lambda: yarnref.attention(Q, Q, Q, scale=1e308), InputError, "q"),
    ("attention-q-1e155", lambda: yarnref.attention(Q * 1e155, Q * 1e155, Q), InputError, "q"),
    ("dca-attention_factor-1e200", lambda: yarnref.dca_attention(Q, Q, Q, INV_FREQ[:8], 4, 2, attention_factor=1e200), InputError, "q"),
    ("cos_sin-inv_freq-1e308", lambda: yarnref.rope_cos_sin(np.full(4, 1e308), np.arange(4.0)), InputError, "inv_freq"),
    ("cos_sin-float32-overflow", lambda: yarnref.rope_cos_sin(np.full(4, 1e30), np.arange(4.0) * 1e10, precision="float32"),
     InputError, "inv_freq"),
    ("merge-lse-+inf", lambda: yarnref.merge_attention([Q, Q], [np.full(LSE.shape, np.inf), LSE]), InputError, "lses[0]"),
    ("apply_rope-float16-overflow", lambda: yarnref.apply_rope(np.full((1, 1, 2, 4), 60000, np.float16), np.ones((2, 2)), np.ones((2, 2))),
     InputError, "x"),
    # raw exceptions before
    ("head_dim-0-attention", lambda: attention(np.zeros((1, 1, 2, 0)), np.zeros((1, 1, 2, 0)), np.zeros((1, 1, 2, 0))), InputError, "q"),
    ("string-q", lambda: yarnref.attention("abc", Q, Q), InputError, "q"),
    ("dict-q", lambda: attention({}, Q, Q), InputError, "q"),
    ("pairing-array", lambda: yarnref.apply_rope(Q, np.ones((8, 8)), np.ones((8, 8)), pairing=np.array([])), InputError, "pairing"),
    ("precision-array", lambda: yarnref.rope_cos_sin(INV_FREQ, np.arange(4), precision=np.array([])), InputError, "precision"),
    ("tri_shape_mask-None", lambda: yarnref.tri_shape_mask(8, 8, 2, 2, None), InputError, "n_last"),
    ("seq_len-10**400", lambda: yarnref.dca_position_ids(10**400, 4, 2), InputError, "seq_len"),
    ("seq_len-2**63", lambda: yarnref.dca_position_ids(2**63, 4, 2), InputError, "seq_len"),
    ("rotary_dim-2**70", lambda: yarnref.rotary_dim(2**70, 1.0), InputError, "head_dim"),
    ("mixed-dtypes", lambda: yarnref.attention(Q.astype(np.float32), Q, Q), InputError, "k"),
    # unbounded sizes
    ("dca_segments-2**62", lambda: yarnref.dca_segments(2**62, 2**62, 2, 1), InputError, "kv_len"),
    ("dca_segments-2**40", lambda: yarnref.dca_segments(2**40, 2**40, 2, 1), InputError, "q_len"),
    ("dca_position_ids-2**40", lambda: yarnref.dca_position_ids(2**40, 1024, 256), InputError, "seq_len"),
    ("dca_relative_positions-2**30", lambda: yarnref.dca_relative_positions(2**30, 1024, 256), InputError, "seq_len"),
    ("a_shape_mask-2**40", lambda: yarnref.a_shape_mask(2**40, 2**40), InputError, "kv_len"),
    ("tri_shape_mask-2**40", lambda: yarnref.tri_shape_mask(2**40, 2**40), InputError, "kv_len"),
    ("vertical_slash_mask-2**40", lambda: yarnref.vertical_slash_mask(2**40, 2**40, [[[0]]], [[[0]]]), InputError, "kv_len"),
    # positions float64 cannot hold exactly
    ("position-2**60", lambda: yarnref.rope_cos_sin(INV_FREQ, np.array([2**60])), InputError, "positions"),
    ("position-uint64-max", lambda: yarnref.rope_cos_sin(INV_FREQ, np.array([2**64 - 1], dtype=np.uint64)), InputError, "positions"),
    ("position-int64-min", lambda: yarnref.rope_cos_sin(INV_FREQ, np.array([-(2**63)])), InputError, "positions"),
    ("position-float-1e39", lambda: yarnref.rope_angles(INV_FREQ, np.array([1e39]), precision="float32"), InputError, "positions"),
    # int32 index lists
    ("convert-kv_len-2**31", lambda: yarnref.convert_vertical_slash_indexes(1, 2**31 + 1000, [[[2**31 + 990]]], [[[0]]]),
     InputError, "kv_len"),
]


@pytest.mark.parametrize("call, error, name", [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED])
def test_reproducer_gets_a_yarnref_error_naming_the_parameter(call, error, name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way to the error
        with pytest.raises(error) as info:
            call()
    assert getattr(info.value, "key", getattr(info.value, "param", None)) == name
    assert "is not allowed; expected" in str(info.value)


def test_limits_are_documented_numbers():
    assert checks.MAX_LENGTH == checks.MAX_POSITION == 2**53
    assert float(2**53) + 1 == float(2**53)  # the first integer float64 cannot hold is 2**53 + 1
    assert checks.INT32_MAX == np.iinfo(np.int32).max


def test_largest_position_is_accepted_and_exact():
    cos, sin = yarnref.rope_cos_sin(INV_FREQ[:1], np.array([2**53, -(2**53)]))  # theta_0 = 1: the angle is the position
    assert np.allclose(cos[:, 0], math.cos(2.0**53)) and np.allclose(sin[:, 0], [math.sin(2.0**53), -math.sin(2.0**53)])


def test_merge_with_large_lse_equals_logaddexp_reference():
    """Parts whose lse differ by more than exp's range: the merge must subtract the maximum, not anything smaller."""
    rng = np.random.default_rng(1)
    outs = [rng.standard_normal((2, 3, 5, 4)) for _ in range(3)]
    lses = [rng.uniform(-900.0, 1500.0, (2, 3, 5)) for _ in range(3)]
    out, lse = merge_attention(outs, lses)
    want_lse = np.logaddexp(np.logaddexp(lses[0], lses[1]), lses[2])
    want = sum(o * np.exp(l - want_lse)[..., None] for o, l in zip(outs, lses))
    np.testing.assert_allclose(lse, want_lse, rtol=1e-13)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_attention_with_logits_near_a_thousand_is_finite_and_merges():
    """Logits far beyond exp's range (~709) are handled by the maximum shift; two key halves merge to the whole."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 2, 6, 8)) * 30 for _ in range(3))
    full, full_lse = attention(q, k, v, causal=False, return_lse=True)
    assert np.all(np.isfinite(full)) and full_lse.max() > 709
    a = attention(q, k[:, :, :3], v[:, :, :3], causal=False, return_lse=True)
    b = attention(q, k[:, :, 3:], v[:, :, 3:], causal=False, return_lse=True)
    out, lse = merge_attention([a[0], b[0]], [a[1], b[1]])
    np.testing.assert_allclose(lse, full_lse, rtol=1e-13)
    np.testing.assert_allclose(out, full, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- arrays of other libraries


def test_non_dispatched_functions_refuse_torch_tensors():
    torch = pytest.importorskip("torch")
    t = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    calls = {
        "attention_recall": lambda: yarnref.attention_recall(t, t, np.ones((4, 4), bool)),
        "rope_angles": lambda: yarnref.rope_angles(torch.ones(4), np.arange(3)),
        "rope_angles positions": lambda: yarnref.rope_angles(np.ones(4), torch.arange(3)),
        "interleaved_to_half": lambda: yarnref.interleaved_to_half(t, 4),
        "half_to_interleaved": lambda: yarnref.half_to_interleaved(t, 4),
        "merge_attention generator": lambda: yarnref.merge_attention((o for o in [t[0]]), (l for l in [t[0, ..., 0]])),
    }
    for name, call in calls.items():
        with pytest.raises(DeviceMismatchError, match="torch"):
            call()


def test_merge_attention_accepts_generators_of_numpy_arrays():
    parts = [(Q, LSE), (Q * 2, LSE + 1.0)]
    want = yarnref.merge_attention([p[0] for p in parts], [p[1] for p in parts])
    got = yarnref.merge_attention((p[0] for p in parts), (p[1] for p in parts))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# ----------------------------------------------------------------------------- backends


def test_unknown_backend_is_a_lookup_error():
    with pytest.raises(LookupError) as info:
        yarnref.set_backend("no-such-backend")
    assert isinstance(info.value, (UnknownBackendError, BackendError, YarnrefError))
    assert "no-such-backend" in str(info.value)


def test_backend_options_it_does_not_take_are_refused():
    with pytest.raises(BackendError, match="device"):
        yarnref.set_backend("numpy", device="cuda")
    assert yarnref.get_backend().name == "numpy"


def test_missing_library_is_not_called_installed():
    if "cupy" in yarnref.available_backends():
        pytest.skip("CuPy runs here")
    with pytest.raises(BackendError) as info:
        yarnref.set_backend("cupy")
    message = str(info.value)
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert "is not installed" in message and "pip install -e '.[cupy]'" in message
        assert "installed but cannot run" not in message
    else:
        assert "cannot run here" in message


# ----------------------------------------------------------------------------- DCAConfig


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(chunk_size=-1, local_size=5), "chunk_size"),
        (dict(chunk_size=8, local_size=8), "local_size"),
        (dict(chunk_size=8, local_size="2"), "local_size"),
        (dict(chunk_size=8, local_size=2, original_max_position_embeddings=-1), "original_max_position_embeddings"),
        (dict(chunk_size=8, local_size=2, sparse_attention_enabled="yes"), "sparse_attention_enabled"),
        (dict(chunk_size=8, local_size=2, sparse_attention_config="table"), "sparse_attention_config"),
    ],
)
def test_dca_config_validates_at_construction(kwargs, key):
    with pytest.raises(ConfigError) as info:
        yarnref.DCAConfig(**kwargs)
    assert info.value.key == key


def test_sparse_table_must_match_the_model():
    table = [{"0": ["vertical_and_slash", 1000, 6096, 0.9]}]
    model = {"num_hidden_layers": 28, "num_attention_heads": 28,
             "dual_chunk_attention_config": {"chunk_size": 262144, "local_size": 8192, "sparse_attention_config": table}}
    with pytest.raises(ConfigError, match="num_hidden_layers = 28"):
        yarnref.dca_config(model)
    model["num_hidden_layers"] = 1
    with pytest.raises(ConfigError, match="num_attention_heads = 28"):
        yarnref.dca_config(model)
    model["num_attention_heads"] = 1
    assert yarnref.dca_config(model).sparse_attention_config == table
    model["dual_chunk_attention_config"]["sparse_attention_config"] = "table"
    with pytest.raises(ConfigError, match="'table'"):  # a string is shown by its value
        yarnref.dca_config(model)


# ----------------------------------------------------------------------------- golden-vector files


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip", b"PK\x03\x04garbage"],
    ids=["empty", "text", "broken-zip"],
)
def test_malformed_vector_files_are_input_errors(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_vectors(path)
    assert info.value.param == "path"


def test_vector_file_with_bad_metadata_is_an_input_error(tmp_path):
    good = tmp_path / "good.npz"
    vectors = write_vectors(good, BASE, positions=[0, 1])
    arrays = {name: vectors[name] for name in ("inv_freq", "attention_factor", "positions", "cos", "sin", "q", "k",
                                               "q_rot_half", "k_rot_half", "q_rot_interleaved", "k_rot_interleaved")}
    for meta in ("[" * 100000, json.dumps({"format": vectors["meta"]["format"], "format_version": "9"}), 7):
        bad = tmp_path / "bad.npz"
        np.savez(bad, **arrays, meta_json=np.array(meta))
        with pytest.raises(InputError):
            read_vectors(bad)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(InputError):
        read_vectors(tmp_path / "single.npy")


# ----------------------------------------------------------------------------- the command


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["explain", "qwen2.5-7b-instruct-1m", "--seq-len", "9" * 26], "--seq-len"),
        (["vectors", "llama-2-7b", "--out", "v.npz", "--heads", "100000000"], "heads"),
        (["vectors", "llama-2-7b", "--out", "v.npz", "--batch", "1000", "--heads", "1000"], "heads"),
        (["explain", "--no-such-option"], "--no-such-option"),
    ],
)
def test_cli_errors_are_one_line_and_status_2(capsys, tmp_path, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("yarnref") and "error:" in err and fragment in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial file


def test_cli_deeply_nested_json_is_one_line(capsys, tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"a": ' * 100000 + "1" + "}" * 100000)
    code, out, err = run(capsys, "explain", str(path))
    assert code == 2 and err.count("\n") == 1 and "nested" in err


def test_cli_unknown_plot_format_is_one_line(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "explain", "llama-2-7b", "--plot", str(tmp_path / "x.unknownext"))
    assert code == 2 and err.count("\n") == 1 and "unknownext" in err
    assert not (tmp_path / "x.unknownext").exists()


def test_cli_out_refuses_to_overwrite_and_prints_the_path_written(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "vectors", "llama-2-7b", "--out", "noext", "--positions", "0,1")
    assert code == 0 and out.startswith("Wrote noext.npz:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noext.npz"]
    before = (tmp_path / "noext.npz").read_bytes()
    code, out, err = run(capsys, "vectors", "llama-2-7b", "--out", "noext.npz", "--positions", "0,1,2")
    assert code == 2 and "--force" in err and err.count("\n") == 1
    assert (tmp_path / "noext.npz").read_bytes() == before
    code, out, err = run(capsys, "vectors", "llama-2-7b", "--out", "noext", "--positions", "0,1,2", "--force")
    assert code == 0 and read_vectors(tmp_path / "noext.npz")["positions"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noext.npz"]  # no temporary file left


def test_cli_plot_without_matplotlib_keeps_the_explanation(capsys, monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, out, err = run(capsys, "explain", "llama-2-7b", "--plot", str(tmp_path / "x.png"))
    assert code == 2
    explanation = run(capsys, "explain", "llama-2-7b")[1]
    assert out == explanation  # the text explanation is printed in full, without a "Plot written" line
    assert err.count("\n") == 1 and err.count("-e '.[plot]'") == 1  # the hint, once


# ----------------------------------------------------------------------------- the same screens on the torch backend

ON_EVERY_BACKEND = [row for row in REFUSED if row[0] in {
    "attention-scale-1e308", "attention-q-1e155", "dca-attention_factor-1e200", "cos_sin-inv_freq-1e308",
    "merge-lse-+inf", "position-2**60", "position-int64-min", "mixed-dtypes", "string-q", "pairing-array",
    "convert-kv_len-2**31",
}]


@pytest.mark.parametrize("call, error, name", [row[1:] for row in ON_EVERY_BACKEND], ids=[row[0] for row in ON_EVERY_BACKEND])
def test_torch_backend_refuses_the_same_input(call, error, name):
    pytest.importorskip("torch")
    with yarnref.use_backend("torch", device="cpu"):
        with pytest.raises(error) as info:
            call()
    assert getattr(info.value, "key", getattr(info.value, "param", None)) == name


def test_torch_float32_logits_beyond_float32_are_refused():
    torch = pytest.importorskip("torch")
    q = torch.full((1, 1, 2, 4), 1e19, dtype=torch.float32)  # logits 4e38 / 2: beyond float32's 3.4e38
    with yarnref.use_backend("torch", device="cpu"):
        with pytest.raises(InputError) as info:
            yarnref.attention(q, q, q)
    assert info.value.param == "q"


def test_torch_mask_refuses_sizes_beyond_memory():
    """The torch backend's whole-mask builder refuses a 2**40-key mask before allocating (the spec's rule)."""
    pytest.importorskip("torch")
    idx = np.zeros((1, 1, 1), dtype=np.int64)
    with yarnref.use_backend("torch", device="cpu"):
        for mode in ("exact", "kernel"):
            with pytest.raises(InputError) as info:
                yarnref.vertical_slash_mask(2**20, 2**40, idx, idx, mode)
            assert info.value.param == "kv_len" and "GiB" in str(info.value)
