"""Golden vectors: round trip, agreement with the spec, provenance, the default positions, check_vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yarnref.config import rope_frequencies
from yarnref.errors import InputError
from yarnref.presets import get_preset, preset_names
from yarnref.rope import apply_rope, rope_cos_sin
from yarnref.vectors import (
    ARRAY_NAMES,
    DEFAULT_POSITIONS,
    FORMAT_VERSION,
    check_vectors,
    context_length,
    default_positions,
    make_vectors,
    read_vectors,
    write_vectors,
)


def assert_same(written: dict, read: dict) -> None:
    assert set(read) == set(written) and set(ARRAY_NAMES) | {"meta"} <= set(read)
    for name in set(read) - {"meta"}:
        assert read[name].dtype == written[name].dtype, name
        assert read[name].shape == written[name].shape, name
        np.testing.assert_array_equal(read[name], written[name], err_msg=name)
    assert read["meta"] == written["meta"]


@pytest.mark.parametrize("name", preset_names())
def test_round_trip_and_spec_agreement_every_preset(tmp_path, name):
    config = get_preset(name)
    path = tmp_path / f"{name}.npz"
    written = write_vectors(path, config, heads=1)
    read = read_vectors(path)
    assert_same(written, read)
    inv_freq, m = rope_frequencies(config, seq_len=read["meta"]["seq_len"])  # LongRoPE: the list for these positions
    np.testing.assert_array_equal(read["inv_freq"], inv_freq)  # bit-identical to the spec
    assert read["inv_freq"].dtype == np.float64
    assert float(read["attention_factor"]) == m
    assert read["positions"].dtype == np.int64
    np.testing.assert_array_equal(read["positions"], default_positions(config))
    assert read["meta"]["config"] == config


def test_file_is_portable(tmp_path):
    """No pickles; the UTF-8 copy of the metadata is the same JSON as the unicode one."""
    path = tmp_path / "v.npz"
    write_vectors(path, get_preset("llama-3.1-8b"))
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == set(ARRAY_NAMES) | {"meta_json", "meta_json_utf8"}
        assert data["meta_json_utf8"].dtype == np.uint8
        text = data["meta_json_utf8"].tobytes().decode("utf-8")
        assert text == str(data["meta_json"])
        for name in ARRAY_NAMES:
            assert data[name].dtype in (np.float64, np.int64), name
    meta = json.loads(text)
    assert meta["format_version"] == FORMAT_VERSION
    for key in ("yarnref_version", "numpy_version", "python_version", "created", "config", "conventions", "arrays"):
        assert meta[key], key
    assert meta["numpy_version"] == np.__version__
    assert set(meta["arrays"]) == set(ARRAY_NAMES)


def test_tables_and_rotations_follow_the_formula():
    config = get_preset("yarn-llama-2-7b-128k")
    v = make_vectors(config, positions=[0, 3, 4096, 131071], batch=2, heads=2, seed=7)
    inv_freq, m = v["inv_freq"], float(v["attention_factor"])
    angles = v["positions"][:, None].astype(np.float64) * inv_freq
    np.testing.assert_allclose(v["cos"], m * np.cos(angles), rtol=0, atol=1e-15)
    np.testing.assert_allclose(v["sin"], m * np.sin(angles), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(v["cos"][0], np.full(64, m))  # position 0: no rotation
    np.testing.assert_array_equal(v["sin"][0], np.zeros(64))
    # rotating back by -angle (and dividing by m^2) recovers q and k, in both pairings
    for pairing in ("half", "interleaved"):
        for x in ("q", "k"):
            back = apply_rope(v[f"{x}_rot_{pairing}"], v["cos"], -v["sin"], pairing) / (m * m)
            np.testing.assert_allclose(back, v[x], rtol=0, atol=1e-12)
    # a plane's norm is scaled by m
    half = v["q"][..., :64] ** 2 + v["q"][..., 64:] ** 2
    half_rot = v["q_rot_half"][..., :64] ** 2 + v["q_rot_half"][..., 64:] ** 2
    np.testing.assert_allclose(half_rot, m * m * half, rtol=1e-12)
    inter_rot = v["q_rot_interleaved"][..., 0::2] ** 2 + v["q_rot_interleaved"][..., 1::2] ** 2
    np.testing.assert_allclose(inter_rot, m * m * (v["q"][..., 0::2] ** 2 + v["q"][..., 1::2] ** 2), rtol=1e-12)


def test_partial_rotary_passes_the_rest_through():
    config = {"rope_theta": 10000.0, "head_dim": 64, "partial_rotary_factor": 0.25, "max_position_embeddings": 2048}
    v = make_vectors(config)
    assert v["inv_freq"].shape == (8,) and v["cos"].shape == (v["positions"].size, 8)
    for name in ("q_rot_half", "q_rot_interleaved", "k_rot_half", "k_rot_interleaved"):
        source = v[name[0]]
        np.testing.assert_array_equal(v[name][..., 16:], source[..., 16:])
        assert not np.array_equal(v[name][..., :16], source[..., :16])


def test_seed_determines_inputs():
    config = get_preset("llama-2-7b")
    a, b, c = make_vectors(config, seed=1), make_vectors(config, seed=1), make_vectors(config, seed=2)
    np.testing.assert_array_equal(a["q"], b["q"])
    np.testing.assert_array_equal(a["k"], b["k"])
    assert not np.array_equal(a["q"], c["q"])
    assert not np.array_equal(a["q"], a["k"])
    expected = np.random.default_rng(1).standard_normal(a["q"].shape)
    np.testing.assert_array_equal(a["q"], expected)  # the documented recipe


def test_default_positions():
    # Llama 2: 4k context, no scaling -> below 4096, plus 4095
    assert default_positions(get_preset("llama-2-7b")).tolist() == [0, 1, 2, 127, 4095]
    # YaRN x32 over 4096: the original boundary and the 128k end
    assert default_positions(get_preset("yarn-llama-2-7b-128k")).tolist() == [0, 1, 2, 127, 4095, 4096, 32767, 131071]
    # Qwen2.5 YaRN: max_position_embeddings 32768 but factor 4 reaches 131072
    assert context_length(get_preset("qwen2.5-7b-instruct-yarn")) == 131072
    # the 1M model keeps the 1M position and its last one
    p = default_positions(get_preset("qwen2.5-7b-instruct-1m")).tolist()
    assert 1_000_000 in p and p[-1] == 1_009_999
    assert set(p) >= set(DEFAULT_POSITIONS)
    # no length known: all defaults
    assert default_positions({"rope_theta": 10000.0, "head_dim": 8}).tolist() == list(DEFAULT_POSITIONS)


@pytest.mark.parametrize(
    "positions",
    [[], [-1, 2], [0.5], [[0, 1]], ["a"], [True, False], [2**60]],
)
def test_bad_positions(positions):
    with pytest.raises(InputError) as info:
        make_vectors(get_preset("llama-2-7b"), positions=positions)
    assert info.value.param == "positions"


@pytest.mark.parametrize("kwargs", [dict(seed=-1), dict(batch=0), dict(heads=1.5), dict(seed=True)])
def test_bad_counts(kwargs):
    with pytest.raises(InputError) as info:
        make_vectors(get_preset("llama-2-7b"), **kwargs)
    assert info.value.param == next(iter(kwargs))


def test_float_integral_positions_are_accepted():
    v = make_vectors(get_preset("llama-2-7b"), positions=np.array([0.0, 10.0]))
    assert v["positions"].tolist() == [0, 10] and v["positions"].dtype == np.int64


def test_seq_len_and_options_are_recorded(tmp_path):
    config = get_preset("phi-3-mini-128k")
    short = make_vectors(config, positions=[0, 4000])
    long = write_vectors(tmp_path / "v.npz", config, positions=[0, 5000], seq_len=5001)
    np.testing.assert_array_equal(long["inv_freq"], rope_frequencies(config, 5001)[0])
    assert not np.array_equal(short["inv_freq"], long["inv_freq"])
    read = read_vectors(tmp_path / "v.npz")
    assert read["meta"]["seq_len"] == 5001
    other = make_vectors(get_preset("gpt-oss-20b"), truncate=True)
    assert other["meta"]["frequency_options"] == {"truncate": True}
    np.testing.assert_array_equal(other["inv_freq"], rope_frequencies(get_preset("gpt-oss-20b"), truncate=True)[0])


def test_read_rejects_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InputError, match="missing arrays"):
        read_vectors(tmp_path / "other.npz")
    path = tmp_path / "v.npz"
    write_vectors(path, get_preset("llama-2-7b"))
    with np.load(path) as data:
        payload = {name: data[name] for name in data.files}
    meta = json.loads(str(payload["meta_json"]))
    meta["format_version"] = FORMAT_VERSION + 1
    payload["meta_json"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "future.npz", **payload)
    with pytest.raises(InputError, match="format_version"):
        read_vectors(tmp_path / "future.npz")


# ---------------------------------------------------------------------------------------------- check_vectors


def test_check_vectors_accepts_the_spec_and_float32(tmp_path):
    path = tmp_path / "v.npz"
    v = write_vectors(path, get_preset("qwen2.5-7b-instruct-yarn"))
    checked = check_vectors(path, **{name: v[name] for name in ("inv_freq", "cos", "sin", "q_rot_half", "k_rot_interleaved")},
                            attention_factor=float(v["attention_factor"]))
    assert checked == ["inv_freq", "attention_factor", "cos", "sin", "q_rot_half", "k_rot_interleaved"]
    # a float32 implementation (fp32 frequencies, fp32 angles) passes with its dtype's tolerance
    inv32 = v["inv_freq"].astype(np.float32)
    cos32, sin32 = rope_cos_sin(inv32, v["positions"], float(v["attention_factor"]), precision="float32")
    check_vectors(v, inv_freq=inv32, cos=cos32.astype(np.float32), sin=sin32.astype(np.float32))


def test_check_vectors_catches_errors(tmp_path):
    v = make_vectors(get_preset("llama-3.1-8b"))
    wrong = v["cos"].copy()
    wrong[-1, 3] += 1e-6
    with pytest.raises(AssertionError, match="golden vector 'cos'"):
        check_vectors(v, cos=wrong)
    # the wrong pairing is caught
    with pytest.raises(AssertionError, match="q_rot_half"):
        check_vectors(v, q_rot_half=v["q_rot_interleaved"])
    # float32 angles at large positions fail the float64 tolerance but pass when declared
    cos32, _ = rope_cos_sin(v["inv_freq"].astype(np.float32), v["positions"], 1.0, precision="float32")
    with pytest.raises(AssertionError):
        check_vectors(v, cos=cos32, dtype="float32", angle_dtype="float64")
    check_vectors(v, cos=cos32, dtype="float32")
    with pytest.raises(InputError):
        check_vectors(v)
    with pytest.raises(AssertionError, match="shape"):
        check_vectors(v, cos=v["cos"][:-1])


# ---------------------------------------------------------------------------------------------- property


@settings(max_examples=15)
@given(
    head_dim=st.sampled_from([8, 16, 64]),
    base=st.sampled_from([500.0, 10000.0, 1e6]),
    factor=st.floats(1.0, 64.0),
    original=st.sampled_from([256, 2048, 4096]),
    positions=st.lists(st.integers(0, 2_000_000), min_size=1, max_size=5),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_property(tmp_path_factory, head_dim, base, factor, original, positions, seed):
    config = {
        "rope_theta": base,
        "head_dim": head_dim,
        "max_position_embeddings": int(original * factor),
        "rope_scaling": {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original},
    }
    path = tmp_path_factory.mktemp("v") / "v.npz"
    written = write_vectors(path, config, positions=positions, seed=seed, heads=1)
    read = read_vectors(path)
    assert_same(written, read)
    inv_freq, m = rope_frequencies(config)
    np.testing.assert_array_equal(read["inv_freq"], inv_freq)
    assert read["positions"].tolist() == positions
    assert read["meta"]["config"] == config


# ---------------------------------------------------------------------------------------------
# Only what some stack computes


def test_positions_stay_within_the_stack_context():
    """llama3: vLLM's cache has max_position_embeddings rows, so no position at or beyond it is stored."""
    from yarnref.vectors import default_positions

    pos = default_positions(get_preset("llama-3.2-1b"))
    assert pos.max() == 131071
    # YaRN: vLLM's cache reaches original * factor, beyond Qwen2.5's max_position_embeddings
    assert default_positions(get_preset("qwen2.5-7b-instruct-yarn")).max() == 131071
    assert default_positions(get_preset("yarn-llama-2-7b-128k")).max() == 131071


def test_longrope_vectors_use_the_list_a_stack_uses_for_the_stored_positions():
    from yarnref.scaling.longrope import longrope_frequencies

    cfg = get_preset("phi-3-mini-128k")
    v = make_vectors(cfg)
    rs = cfg["rope_scaling"]
    long_freq, _ = longrope_frequencies(96, 10000.0, rs["short_factor"], rs["long_factor"], 4096,
                                        max_position_embeddings=131072, seq_len=131072)
    np.testing.assert_array_equal(v["inv_freq"], long_freq)
    assert v["positions"].max() == 131071
    assert v["meta"]["longrope"]["uses_long_factors"] is True
    assert "max(position_ids) + 1" in v["meta"]["longrope"]["decided_by"]
    assert v["meta"]["seq_len"] == 131072
    # vLLM's static switch with its max_model_len gives the same list
    v_vllm = make_vectors(cfg, stack="vllm", max_model_len=131072)
    np.testing.assert_array_equal(v_vllm["inv_freq"], long_freq)
    # short positions only: the short list, as transformers would use
    v_short = make_vectors(cfg, positions=[0, 1, 4095])
    assert v_short["meta"]["longrope"]["uses_long_factors"] is False
    # a seq_len that would rotate position 131071 with the short list: no stack computes that
    with pytest.raises(InputError, match="seq_len"):
        make_vectors(cfg, seq_len=100)
    with pytest.raises(InputError, match="max_model_len"):
        make_vectors(cfg, stack="vllm", max_model_len=2048)


@pytest.mark.parametrize("name", ["llama-3.2-1b", "phi-3-mini-128k", "yarn-llama-2-7b-128k", "qwen2.5-7b-instruct-yarn"])
def test_stack_float32_output_passes_the_default_vectors(name):
    """What transformers computes in float32 for the stored positions passes check_vectors (it once did not)."""
    cfg = get_preset(name)
    v = make_vectors(cfg, heads=1)
    inv32, m = rope_frequencies(cfg, seq_len=v["meta"]["seq_len"], precision="float32")
    cos, sin = rope_cos_sin(inv32, v["positions"], m, precision="float32")
    q32 = v["q"].astype(np.float32)
    q_rot = apply_rope(q32, cos, sin, "half")
    assert check_vectors(v, inv_freq=inv32, attention_factor=m, cos=cos, sin=sin, q_rot_half=q_rot) == [
        "inv_freq", "attention_factor", "cos", "sin", "q_rot_half"]
    # and a planted off-by-one position does not
    cos_bad, _ = rope_cos_sin(inv32, v["positions"] + 1, m, precision="float32")
    with pytest.raises(AssertionError, match="cos"):
        check_vectors(v, cos=cos_bad)


# ---------------------------------------------------------------------------------------------
# The pairing the model uses, the stack's low-precision tables, DCA position ids


def test_model_pairing_of_the_presets_and_of_deepseek_v3():
    from yarnref.rope import PAIRINGS
    from yarnref.vectors import model_pairing

    deepseek = get_preset("deepseek-v3")
    # transformers' DeepSeek-V3 reads interleaved pairs and writes them half-split; vLLM and llama.cpp interleave
    assert model_pairing(deepseek) == "interleaved_in_half_out"
    assert model_pairing(deepseek, "vllm") == model_pairing(deepseek, "llama.cpp") == "interleaved"
    assert model_pairing({**deepseek, "rope_interleave": False}) == "half"
    for name in preset_names():
        for stack in ("transformers", "vllm", "llama.cpp", "yarn_authors"):
            assert model_pairing(get_preset(name), stack) in PAIRINGS
        if name != "deepseek-v3":  # Llama, Mistral, Qwen, Phi-3, gpt-oss: half-split everywhere
            assert model_pairing(get_preset(name)) == "half"
    assert model_pairing({"model_type": "gptj", "head_dim": 64, "rope_theta": 10000.0}) == "interleaved"
    with pytest.raises(InputError, match="stack"):
        model_pairing(deepseek, "tensorrt")


def test_vectors_store_the_model_pairing_rotation(tmp_path):
    config = get_preset("deepseek-v3")
    written = write_vectors(tmp_path / "ds.npz", config, heads=2, seed=5)
    v = read_vectors(tmp_path / "ds.npz")
    assert v["meta"]["pairing"] == "interleaved_in_half_out"
    assert v["meta"]["pairings"] == ["half", "interleaved", "interleaved_in_half_out"]
    for x in ("q", "k"):
        expected = apply_rope(v[x], v["cos"], v["sin"], "interleaved_in_half_out")
        np.testing.assert_array_equal(v[f"{x}_rot_interleaved_in_half_out"], expected)
        # the same planes as the interleaved rotation, written half-split: evens' then odds'
        interleaved = v[f"{x}_rot_interleaved"]
        np.testing.assert_array_equal(expected, np.concatenate([interleaved[..., 0::2], interleaved[..., 1::2]], -1))
    assert check_vectors(v, q_rot_interleaved_in_half_out=written["q_rot_interleaved_in_half_out"]) == [
        "q_rot_interleaved_in_half_out"]
    # vLLM runs DeepSeek interleaved: no third rotation, and asking to check one is an error
    vllm = make_vectors(config, stack="vllm", heads=1)
    assert vllm["meta"]["pairing"] == "interleaved" and "q_rot_interleaved_in_half_out" not in vllm
    with pytest.raises(InputError, match="q_rot_interleaved_in_half_out"):
        check_vectors(vllm, q_rot_interleaved_in_half_out=v["q_rot_interleaved_in_half_out"])


@pytest.mark.parametrize("name,stack", [
    ("yarn-llama-2-7b-128k", "transformers"), ("yarn-llama-2-7b-128k", "vllm"), ("yarn-llama-2-7b-128k", "yarn_authors"),
    ("deepseek-v3", "vllm"), ("llama-3.1-8b", "transformers"), ("phi-3-mini-128k", "vllm"),
])
@pytest.mark.parametrize("table_precision", ["bfloat16", "float16"])
def test_stack_tables_are_the_library_float32_path_bit_for_bit(tmp_path, name, stack, table_precision):
    from yarnref.precision import round_to

    config = get_preset(name)
    options = {"stack": stack, **({"max_model_len": 131072} if name == "phi-3-mini-128k" else {})}
    path = tmp_path / "v.npz"
    write_vectors(path, config, heads=1, table_precision=table_precision, **options)
    v = read_vectors(path)
    inv32, m = rope_frequencies(config, v["meta"]["seq_len"], precision="float32", **options)
    cos32, sin32 = rope_cos_sin(inv32, v["positions"], m, precision="float32")
    low_cos, low_sin = rope_cos_sin(inv32, v["positions"], m, precision="float32", out_precision=table_precision)
    for stored, expected in ((v["inv_freq_float32"], inv32), (v["cos_float32"], cos32), (v["sin_float32"], sin32),
                             (v[f"cos_{table_precision}"], low_cos), (v[f"sin_{table_precision}"], low_sin)):
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, expected)
    # the low-precision tables hold values exact in that precision, each the rounding of the float32 one
    for x in ("cos", "sin"):
        low = v[f"{x}_{table_precision}"].astype(np.float64)
        np.testing.assert_array_equal(round_to(low, table_precision), low)
        np.testing.assert_array_equal(low, round_to(v[f"{x}_float32"], table_precision))
    # the float32 table differs from the float64 spec by at most the float32 angle error at that position
    angle_error = np.abs(v["positions"][:, None] * np.float64(1.0)) * 2.0**-23 * np.max(inv32) + 1e-6
    assert np.all(np.abs(v["cos_float32"] - v["cos"]) <= angle_error * m + 2.0**-22)
    assert v["meta"]["stack_tables"]["arrays"] == ["inv_freq_float32", "cos_float32", "sin_float32",
                                                   f"cos_{table_precision}", f"sin_{table_precision}"]


def test_llama_cpp_tables_are_ggml_float32_only():
    from yarnref.ggml import llama_cpp_cos_sin

    config = get_preset("llama-3.1-8b")
    v = make_vectors(config, heads=1, table_precision="bfloat16", stack="llama.cpp")
    cos, sin = llama_cpp_cos_sin(config, v["positions"])
    np.testing.assert_array_equal(v["cos_float32"], cos)
    np.testing.assert_array_equal(v["sin_float32"], sin)
    assert "cos_bfloat16" not in v and "inv_freq_float32" not in v
    assert "no bfloat16" in v["meta"]["stack_tables"]["no_lower_precision_table"]


def test_no_stack_tables_unless_asked():
    v = make_vectors(get_preset("llama-2-7b"), heads=1)
    assert v["meta"]["stack_tables"] is None and not any(name.endswith("float32") for name in v)
    with pytest.raises(InputError, match="table_precision"):
        make_vectors(get_preset("llama-2-7b"), table_precision="float8")


def test_dca_position_ids_of_the_qwen_1m_vectors(tmp_path):
    from yarnref.dca import dca_position_ids
    from yarnref.vectors import DCA_ID_NAMES

    config = get_preset("qwen2.5-7b-instruct-1m")
    path = tmp_path / "q.npz"
    write_vectors(path, config, heads=1)
    v = read_vectors(path)
    dca = config["dual_chunk_attention_config"]
    ids = dca_position_ids(int(v["positions"].max()) + 1, dca["chunk_size"], dca["local_size"])
    for name in DCA_ID_NAMES:
        assert v[f"dca_{name}"].dtype == np.int64
        np.testing.assert_array_equal(v[f"dca_{name}"], getattr(ids, name)[v["positions"]], err_msg=name)
    assert v["meta"]["dca"]["chunk_len"] == 262144 - 8192
    # no DCA ids for a model without DCA
    assert not any(name.startswith("dca_") for name in make_vectors(get_preset("llama-2-7b"), heads=1))


@settings(max_examples=25, deadline=None)
@given(
    chunk_size=st.integers(2, 64),
    local_fraction=st.floats(0.0, 0.99),
    positions=st.lists(st.integers(0, 600), min_size=1, max_size=8),
)
def test_dca_ids_at_any_positions_are_dca_position_ids(chunk_size, local_fraction, positions):
    from yarnref.dca import dca_position_ids
    from yarnref.vectors import DCA_ID_NAMES, dca_ids_at

    local_size = max(1, min(chunk_size - 1, int(local_fraction * chunk_size)))
    config = {"head_dim": 8, "rope_theta": 10000.0,
              "dual_chunk_attention_config": {"chunk_size": chunk_size, "local_size": local_size}}
    got = dca_ids_at(config, positions)
    ids = dca_position_ids(max(positions) + 1, chunk_size, local_size)
    for name in DCA_ID_NAMES:
        np.testing.assert_array_equal(got[name], getattr(ids, name)[positions], err_msg=name)


def test_deepseek_vectors_match_transformers_interleave_rotation():
    """The stored DeepSeek-V3 rotation is what transformers' apply_rotary_pos_emb_interleave computes (float64)."""
    torch = pytest.importorskip("torch")
    deepseek_v3 = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")

    v = make_vectors(get_preset("deepseek-v3"), heads=2, seed=3)
    cos = torch.from_numpy(np.concatenate([v["cos"], v["cos"]], -1))[None]  # (1, n, r): transformers' cat(c, c)
    sin = torch.from_numpy(np.concatenate([v["sin"], v["sin"]], -1))[None]
    q_embed, k_embed = deepseek_v3.apply_rotary_pos_emb_interleave(torch.from_numpy(v["q"]), torch.from_numpy(v["k"]),
                                                                   cos, sin)
    np.testing.assert_allclose(v["q_rot_interleaved_in_half_out"], q_embed.numpy(), rtol=0, atol=1e-14)
    np.testing.assert_allclose(v["k_rot_interleaved_in_half_out"], k_embed.numpy(), rtol=0, atol=1e-14)
