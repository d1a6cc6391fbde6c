"""parse_rope_config and rope_frequencies: how config.json keys are read, bad configs, warnings, options."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest

from yarnref.config import (
    ROPE_TYPES,
    STACKS,
    RopeConfig,
    parse_rope_config,
    rope_frequencies,
    stack_options,
)
from yarnref.errors import ConfigError, InputError
from yarnref.presets import get_preset
from yarnref.rope import base_inv_freq
from yarnref.scaling import (
    dynamic_ntk_frequencies,
    linear_frequencies,
    llama3_frequencies,
    yarn_attention_factor,
    yarn_frequencies,
)

LLAMA = {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 4096, "rope_theta": 10000.0}


def with_scaling(scaling, **top):
    return {**LLAMA, **top, "rope_scaling": scaling}


# ---------------------------------------------------------------------------------------------
# Reading keys


def test_plain_rope_from_hidden_size_and_heads():
    rc = parse_rope_config(LLAMA)
    assert (rc.rope_type, rc.head_dim, rc.rotary_dim, rc.base) == ("default", 128, 128, 10000.0)
    assert rc.factor is None and rc.partial_rotary_factor == 1.0 and rc.warnings == ()
    inv_freq, m = rope_frequencies(LLAMA)
    np.testing.assert_array_equal(inv_freq, base_inv_freq(128, 10000.0))
    assert m == 1.0 and type(m) is float


def test_v5_rope_parameters_with_theta_inside():
    cfg = {"head_dim": 64, "max_position_embeddings": 4096,
           "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5, "partial_rotary_factor": 0.5}}
    rc = parse_rope_config(cfg)
    assert (rc.rope_type, rc.rotary_dim, rc.base, rc.factor) == ("linear", 32, 5e5, 4.0)
    np.testing.assert_array_equal(rope_frequencies(cfg)[0], linear_frequencies(32, 5e5, 4.0)[0])


def test_theta_inside_parameters_wins_and_is_reported():
    cfg = {**LLAMA, "rope_theta": 1e4, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    rc = parse_rope_config(cfg)
    assert rc.base == 1e6
    assert any("rope_theta differs" in w for w in rc.warnings)


def test_missing_theta_uses_transformers_default_with_a_warning():
    rc = parse_rope_config({"head_dim": 64})
    assert rc.base == 10000.0
    assert any("rope_theta is missing" in w for w in rc.warnings)


def test_legacy_type_key_and_su_alias():
    rc = parse_rope_config(with_scaling({"type": "linear", "factor": 2}))
    assert rc.rope_type == "linear" and rc.params["rope_type"] == "linear" and "type" not in rc.params
    phi = get_preset("phi-3-mini-128k")
    rc = parse_rope_config(phi)
    assert rc.rope_type == "longrope"
    assert any("'su'" in w and "KeyError" in w for w in rc.warnings)


def test_rope_type_wins_over_type():
    rc = parse_rope_config(with_scaling({"rope_type": "linear", "type": "dynamic", "factor": 2}))
    assert rc.rope_type == "linear"
    assert any("rope_type" in w and "type" in w for w in rc.warnings)


def test_phi3_yarn_means_longrope():
    cfg = get_preset("phi-3-mini-128k")
    cfg["rope_scaling"]["type"] = "yarn"
    rc = parse_rope_config(cfg)
    assert rc.rope_type == "longrope"
    assert any("Phi3Config" in w for w in rc.warnings)


def test_rope_scaling_wins_over_rope_parameters():
    cfg = {**LLAMA, "rope_scaling": {"type": "linear", "factor": 2.0}, "rope_parameters": {"rope_type": "linear", "factor": 4.0}}
    rc = parse_rope_config(cfg)
    assert rc.factor == 2.0
    assert any("rope_scaling" in w and "rope_parameters" in w for w in rc.warnings)


def test_mrope_is_default_frequencies():
    rc = parse_rope_config(with_scaling({"type": "mrope", "mrope_section": [16, 24, 24]}))
    assert rc.rope_type == "default"
    assert any("mrope" in w for w in rc.warnings)


def test_deepseek_mla_uses_the_rope_sub_head():
    rc = parse_rope_config(get_preset("deepseek-v3"))
    assert rc.is_mla and rc.rotary_dim == rc.head_dim == 64 and rc.qk_nope_head_dim == 128
    assert rc.params["mscale"] == 1.0 and rc.factor == 40.0
    inv_freq, m = rope_frequencies(get_preset("deepseek-v3"))
    assert inv_freq.shape == (32,) and m == 1.0
    cfg = get_preset("deepseek-v3")
    cfg["partial_rotary_factor"] = 0.5
    rc = parse_rope_config(cfg)
    assert rc.rotary_dim == 64 and any("vllm#41185" in w for w in rc.warnings)


def test_top_level_original_wins():
    cfg = with_scaling({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
                       original_max_position_embeddings=1024, max_position_embeddings=4096)
    rc = parse_rope_config(cfg)
    assert rc.original_max_position_embeddings == 1024 == rc.params["original_max_position_embeddings"]
    assert any("top-level value" in w for w in rc.warnings)


def test_gpt_neox_names():
    rc = parse_rope_config({"model_type": "gpt_neox", "hidden_size": 2048, "num_attention_heads": 16, "rotary_emb_base": 10000})
    assert rc.rotary_dim == 32 and rc.partial_rotary_factor == 0.25 and rc.base == 10000.0


def test_rope_config_is_frozen_and_detached_from_the_input():
    cfg = get_preset("llama-3.1-8b")
    rc = parse_rope_config(cfg)
    assert parse_rope_config(rc) is rc
    with pytest.raises(dataclasses.FrozenInstanceError):
        rc.base = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        rc.params["factor"] = 2.0  # type: ignore[index]
    cfg["rope_scaling"]["factor"] = 2.0
    assert rc.factor == 8.0 and rc.source["rope_scaling"]["factor"] == 8.0
    assert isinstance(rc, RopeConfig)
    np.testing.assert_array_equal(rope_frequencies(rc)[0], rope_frequencies(get_preset("llama-3.1-8b"))[0])


def test_dual_chunk_attention_is_kept_raw():
    rc = parse_rope_config(get_preset("qwen2.5-7b-instruct-1m"))
    assert dict(rc.dual_chunk_attention) == {"chunk_size": 262144, "local_size": 8192, "original_max_position_embeddings": 262144}
    assert rc.rope_type == "default" and rc.base == 1e7
    cfg = get_preset("qwen2.5-7b-instruct-1m")
    cfg["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert any("DualChunkRotaryEmbedding" in w for w in parse_rope_config(cfg).warnings)


# ---------------------------------------------------------------------------------------------
# Every bad config raises ConfigError naming the key


BAD_CONFIGS = [
    ("config", ["not", "a", "mapping"]),
    ("rope_scaling", with_scaling("yarn")),
    ("rope_parameters", {**LLAMA, "rope_parameters": [1, 2]}),
    ("rope_scaling.type", with_scaling({"type": "ntk-by-parts", "factor": 2})),
    ("rope_parameters.rope_type", {**LLAMA, "rope_parameters": {"rope_type": 7}}),
    ("rope_parameters.full_attention.rope_type",
     {**LLAMA, "rope_parameters": {"full_attention": {"rope_type": "unknown"}}}),
    ("rope_scaling.factor", with_scaling({"type": "linear"})),
    ("rope_scaling.factor", with_scaling({"type": "dynamic", "factor": None})),
    ("rope_scaling.factor", with_scaling({"type": "yarn", "original_max_position_embeddings": 1024})),
    ("rope_scaling.factor", with_scaling({"type": "linear", "factor": 0.5})),
    ("rope_scaling.factor", with_scaling({"type": "linear", "factor": "2"})),
    ("rope_scaling.factor", with_scaling({"type": "linear", "factor": True})),
    ("rope_scaling.factor", with_scaling({"type": "linear", "factor": float("nan")})),
    ("rope_scaling.factor", with_scaling({"type": "llama3", "factor": float("inf"), "low_freq_factor": 1,
                                          "high_freq_factor": 4, "original_max_position_embeddings": 1024})),
    ("head_dim", {"head_dim": 127, "rope_theta": 1e4}),
    ("head_dim", {"head_dim": 0, "rope_theta": 1e4}),
    ("head_dim", {"head_dim": 64.0, "rope_theta": 1e4}),
    ("head_dim", {"rope_theta": 1e4}),
    ("head_dim", {"head_dim": 2**40, "rope_theta": 1e4}),
    ("partial_rotary_factor", {"head_dim": 64, "partial_rotary_factor": 0.33}),
    ("partial_rotary_factor", {"head_dim": 64, "partial_rotary_factor": 1.5}),
    ("partial_rotary_factor", {"head_dim": 64, "partial_rotary_factor": 0}),
    ("rope_parameters.partial_rotary_factor", {"head_dim": 64, "rope_parameters": {"partial_rotary_factor": -1}}),
    ("qk_rope_head_dim", {"qk_rope_head_dim": 63, "qk_nope_head_dim": 128}),
    ("num_attention_heads", {"hidden_size": 4096, "num_attention_heads": 0}),
    ("hidden_size", {"hidden_size": "4096", "num_attention_heads": 32}),
    ("rope_theta", {**LLAMA, "rope_theta": 1.0}),
    ("rope_theta", {**LLAMA, "rope_theta": "10000"}),
    ("rope_parameters.rope_theta", {**LLAMA, "rope_parameters": {"rope_theta": -5}}),
    ("max_position_embeddings", {**LLAMA, "max_position_embeddings": 0}),
    ("max_position_embeddings", {**LLAMA, "max_position_embeddings": -4096}),
    ("max_position_embeddings", with_scaling({"type": "dynamic", "factor": 2.0}, max_position_embeddings=None)),
    ("original_max_position_embeddings", with_scaling({"type": "yarn", "factor": 2.0}, original_max_position_embeddings=0)),
    ("rope_scaling.original_max_position_embeddings",
     with_scaling({"type": "yarn", "factor": 2.0, "original_max_position_embeddings": -1})),
    ("rope_scaling.original_max_position_embeddings",
     with_scaling({"type": "yarn", "factor": 2.0}, max_position_embeddings=None)),
    ("rope_scaling.beta_fast", with_scaling({"type": "yarn", "factor": 2.0, "beta_fast": 1, "beta_slow": 32})),
    ("rope_scaling.beta_fast", with_scaling({"type": "yarn", "factor": 2.0, "beta_fast": 0})),
    ("rope_scaling.beta_slow", with_scaling({"type": "yarn", "factor": 2.0, "beta_slow": "one"})),
    ("rope_scaling.truncate", with_scaling({"type": "yarn", "factor": 2.0, "truncate": "no"})),
    ("rope_scaling.attention_factor", with_scaling({"type": "yarn", "factor": 2.0, "attention_factor": 0})),
    ("rope_scaling.mscale", with_scaling({"type": "yarn", "factor": 2.0, "mscale": -1.0, "mscale_all_dim": 1.0})),
    ("rope_scaling.low_freq_factor", with_scaling({"type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 1024})),
    ("rope_scaling.high_freq_factor", with_scaling({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 0, "original_max_position_embeddings": 1024})),
    ("rope_scaling.short_factor", with_scaling({"type": "longrope", "long_factor": [1.0] * 64,
                                                "original_max_position_embeddings": 1024})),
    ("rope_scaling.short_factor", with_scaling({"type": "longrope", "short_factor": [1.0] * 63, "long_factor": [1.0] * 64,
                                                "original_max_position_embeddings": 1024})),
    ("rope_scaling.long_factor", with_scaling({"type": "longrope", "short_factor": [1.0] * 64, "long_factor": [1.0] * 128,
                                               "original_max_position_embeddings": 1024})),
    ("rope_scaling.long_factor", with_scaling({"type": "longrope", "short_factor": [1.0] * 64,
                                               "long_factor": [1.0] * 63 + [-2.0], "original_max_position_embeddings": 1024})),
    ("rope_scaling.long_factor", with_scaling({"type": "longrope", "short_factor": [1.0] * 64, "long_factor": "1,2,3",
                                               "original_max_position_embeddings": 1024})),
    ("rope_scaling.factor", with_scaling({"type": "longrope", "short_factor": [1.0] * 64, "long_factor": [1.0] * 64,
                                          "original_max_position_embeddings": 1024}, max_position_embeddings=None)),
    ("rope_scaling.rope_type", {"head_dim": 2, "max_position_embeddings": 64, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
    ("dual_chunk_attention_config", {**LLAMA, "dual_chunk_attention_config": [262144, 8192]}),
]


@pytest.mark.parametrize("key, config", BAD_CONFIGS, ids=[f"{i}-{k}" for i, (k, _) in enumerate(BAD_CONFIGS)])
def test_bad_configs_raise_config_error_naming_the_key(key, config):
    with pytest.raises(ConfigError) as info:
        parse_rope_config(config)
    assert info.value.key == key
    assert key in str(info.value)
    with pytest.raises(ConfigError):
        rope_frequencies(config)


def test_config_error_is_a_value_error_and_names_allowed_values():
    with pytest.raises(ValueError, match=r"rope_scaling.type='nope' is not allowed; expected one of"):
        parse_rope_config(with_scaling({"type": "nope"}))
    for rope_type in ROPE_TYPES:
        assert rope_type in str(pytest.raises(ConfigError, parse_rope_config, with_scaling({"type": "x"})).value)


def test_overflowing_values_are_config_errors():
    cfg = with_scaling({"type": "dynamic", "factor": 1e300}, max_position_embeddings=4096)
    with pytest.raises(ConfigError):
        rope_frequencies(cfg, seq_len=2**40)
    cfg = with_scaling({"type": "linear", "factor": 1e308}, rope_theta=1e100)  # factor x length beyond 2**53
    with pytest.raises(ConfigError, match="factor") as info:
        rope_frequencies(cfg)
    assert info.value.key == "rope_scaling.factor"
    # The largest allowed factor on the largest base: the slowest frequency underflows to 0.
    cfg = with_scaling({"type": "linear", "factor": 2.0**52}, rope_theta=1.7e308, head_dim=4096, max_position_embeddings=2)
    with pytest.raises(ConfigError, match="finite and positive"):
        rope_frequencies(cfg)


# ---------------------------------------------------------------------------------------------
# Warnings: what real stacks read differently, or what looks wrong


def warnings_of(config):
    return "\n".join(parse_rope_config(config).warnings)


def test_warning_yarn_without_original_falls_back_to_max_position_embeddings():
    cfg = with_scaling({"type": "yarn", "factor": 4.0}, max_position_embeddings=131072)
    rc = parse_rope_config(cfg)
    assert rc.original_max_position_embeddings == 131072
    assert "silently uses max_position_embeddings=131072" in "\n".join(rc.warnings)


def test_warning_factor_differs_from_lengths():
    cfg = with_scaling({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}, max_position_embeddings=65536)
    assert "differs from max_position_embeddings / original_max_position_embeddings" in warnings_of(cfg)
    assert "differs from" not in warnings_of(get_preset("qwen2.5-7b-instruct-yarn"))  # implicit factor 1: no warning


def test_warning_mistral_betas():
    cfg = get_preset("yarn-mistral-7b-128k")
    assert "beta_fast=128" not in warnings_of(cfg)  # the preset states the trained betas
    del cfg["rope_scaling"]["beta_fast"], cfg["rope_scaling"]["beta_slow"]
    assert "beta_fast=128, beta_slow=2" in warnings_of(cfg)


def test_warning_llama3_high_not_above_low():
    base = {"type": "llama3", "factor": 16.0, "original_max_position_embeddings": 8192}
    assert "no smooth band" in warnings_of(with_scaling({**base, "low_freq_factor": 1.0, "high_freq_factor": 1.0},
                                                        max_position_embeddings=131072))
    assert "smooth band is empty" in warnings_of(with_scaling({**base, "low_freq_factor": 4.0, "high_freq_factor": 1.0},
                                                              max_position_embeddings=131072))
    assert ">= max_position_embeddings" in warnings_of(with_scaling({**base, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
                                                                    max_position_embeddings=8192))


def test_warning_truncate_false_and_lone_mscale():
    assert "cannot represent" in warnings_of(get_preset("gpt-oss-20b"))
    cfg = with_scaling({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "mscale": 0.707},
                       max_position_embeddings=4096)
    assert "ignore a lone mscale" in warnings_of(cfg)


def test_warning_unknown_keys_and_null_truncate():
    cfg = with_scaling({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "finetuned": True,
                        "truncate": None}, max_position_embeddings=4096)
    text = warnings_of(cfg)
    assert "finetuned" in text and "truncate is null" in text
    f_null, _ = rope_frequencies(cfg)
    f_false, _ = rope_frequencies(cfg, truncate=False)
    np.testing.assert_array_equal(f_null, f_false)


def test_warning_inverted_correction_range():
    cfg = {"head_dim": 8, "rope_theta": 2.0, "max_position_embeddings": 4096,
           "rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096}}
    assert "inverts" in warnings_of(cfg)
    inv_freq, _ = rope_frequencies(cfg)
    np.testing.assert_array_equal(inv_freq, base_inv_freq(8, 2.0) / 2.0)


def test_presets_of_plain_models_have_no_warnings():
    for name in ("llama-2-7b", "llama-3.1-8b", "llama-3.2-1b", "qwen2.5-7b-instruct-yarn", "deepseek-v3",
                 "yarn-llama-2-7b-128k", "qwen2.5-7b-instruct-1m"):
        assert parse_rope_config(get_preset(name)).warnings == (), name


# ---------------------------------------------------------------------------------------------
# rope_frequencies: seq_len and the options


def test_seq_len_matters_only_where_it_should():
    llama = get_preset("llama-3.1-8b")
    np.testing.assert_array_equal(rope_frequencies(llama, seq_len=10)[0], rope_frequencies(llama, seq_len=10**6)[0])
    dyn = with_scaling({"type": "dynamic", "factor": 2.0})
    np.testing.assert_array_equal(rope_frequencies(dyn)[0], base_inv_freq(128, 1e4))
    np.testing.assert_array_equal(rope_frequencies(dyn, seq_len=16384)[0], dynamic_ntk_frequencies(128, 1e4, 2.0, 4096, 16384)[0])
    phi = get_preset("phi-3-mini-128k")
    short, m_short = rope_frequencies(phi, seq_len=4096)
    long, m_long = rope_frequencies(phi, seq_len=4097)
    assert m_short == m_long == math.sqrt(1 + math.log(32) / math.log(4096))
    np.testing.assert_array_equal(long, base_inv_freq(96, 1e4) / np.asarray(phi["rope_scaling"]["long_factor"]))
    np.testing.assert_array_equal(short, base_inv_freq(96, 1e4) / np.asarray(phi["rope_scaling"]["short_factor"]))


def test_stack_options_table():
    assert stack_options() == stack_options("transformers")
    assert stack_options("vllm", get_preset("deepseek-v3"))["mscale_rule"] == "vllm_deepseek"
    assert stack_options("vllm", get_preset("gpt-oss-20b"))["mscale_rule"] == "transformers"
    for stack in STACKS:
        assert set(stack_options(stack)) == set(stack_options("transformers"))
    with pytest.raises(InputError, match="stack"):
        stack_options("tgi")


def test_vllm_longrope_is_static():
    phi = get_preset("phi-3-mini-128k")
    with pytest.raises(InputError, match="max_model_len"):
        rope_frequencies(phi, stack="vllm")
    short = rope_frequencies(phi, seq_len=4096)[0]
    long = rope_frequencies(phi, seq_len=4097)[0]
    np.testing.assert_array_equal(rope_frequencies(phi, seq_len=100, stack="vllm", max_model_len=131072)[0], long)
    np.testing.assert_array_equal(rope_frequencies(phi, seq_len=10**5, stack="vllm", max_model_len=4096)[0], short)
    np.testing.assert_array_equal(
        rope_frequencies(phi, seq_len=100, longrope_switch="static", max_model_len=8192)[0], long)


def test_vllm_dynamic_is_plain_rope_without_max_trained_positions():
    dyn = with_scaling({"type": "dynamic", "factor": 4.0})
    np.testing.assert_array_equal(rope_frequencies(dyn, seq_len=10**5, stack="vllm")[0], base_inv_freq(128, 1e4))
    assert not np.array_equal(rope_frequencies(dyn, seq_len=10**5)[0], base_inv_freq(128, 1e4))


def test_vllm_deepseek_mscale_rule():
    cfg = get_preset("deepseek-v3")
    del cfg["rope_scaling"]["mscale_all_dim"]
    assert rope_frequencies(cfg)[1] == 0.1 * math.log(40) + 1.0  # transformers: a lone mscale is ignored
    assert rope_frequencies(cfg, stack="vllm")[1] == yarn_attention_factor(40.0, mscale=1.0, rule="vllm_deepseek")


def test_llama_cpp_stack():
    gpt_oss = get_preset("gpt-oss-20b")
    hf, m = rope_frequencies(gpt_oss)
    ggml, m_ggml = rope_frequencies(gpt_oss, stack="llama.cpp")  # always floor/ceil
    assert m == m_ggml
    np.testing.assert_array_equal(ggml, yarn_frequencies(64, 150000.0, 32.0, 4096, truncate=True, epsilon_rule="ggml")[0])
    assert not np.array_equal(hf, ggml)
    with pytest.raises(InputError, match="stack"):
        rope_frequencies(with_scaling({"type": "dynamic", "factor": 2.0}), stack="llama.cpp")
    llama = get_preset("llama-3.1-8b")
    np.testing.assert_array_equal(rope_frequencies(llama, stack="llama.cpp")[0], rope_frequencies(llama)[0])


def test_yarn_authors_stack():
    cfg = with_scaling({"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096, "attention_factor": 0.5},
                       max_position_embeddings=65536)
    assert rope_frequencies(cfg)[1] == 0.5
    assert rope_frequencies(cfg, stack="yarn_authors")[1] == (0.1 * math.log(16.0) + 1.0) * 0.5
    with pytest.raises(InputError, match="stack"):
        rope_frequencies(get_preset("llama-3.1-8b"), stack="yarn_authors")
    with pytest.raises(InputError, match="stack"):
        rope_frequencies(get_preset("phi-3-mini-128k"), stack="yarn_authors")


def test_yarn_switches():
    cfg = get_preset("yarn-llama-2-7b-128k")
    r, b, s, L = 128, 10000.0, 32.0, 4096
    np.testing.assert_array_equal(rope_frequencies(cfg, ramp="paper")[0], yarn_frequencies(r, b, s, L, ramp="paper")[0])
    np.testing.assert_array_equal(rope_frequencies(cfg, clamp="half")[0], yarn_frequencies(r, b, s, L, clamp="half")[0])
    np.testing.assert_array_equal(rope_frequencies(cfg, truncate=False)[0], yarn_frequencies(r, b, s, L, truncate=False)[0])
    np.testing.assert_array_equal(rope_frequencies(cfg, extrapolation_factor=0.0)[0], base_inv_freq(r, b) / s)
    # transformers < 4.45 used max_position_embeddings as L (transformers#33783)
    old, _ = rope_frequencies(cfg, correction_length="max_position_embeddings")
    np.testing.assert_array_equal(old, yarn_frequencies(r, b, s, 131072)[0])
    # dynamic YaRN: s = max(1, seq_len / L)
    f, m = rope_frequencies(cfg, seq_len=8 * L, dynamic_yarn=True)
    np.testing.assert_array_equal(f, yarn_frequencies(r, b, 8.0, L)[0])
    assert m == 0.1 * math.log(8.0) + 1.0


def test_llama3_matches_the_module():
    f, m = rope_frequencies(get_preset("llama-3.2-1b"))
    np.testing.assert_array_equal(f, llama3_frequencies(64, 500000.0, 32.0, 1.0, 4.0, 8192)[0])


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(stack="sglang"), "stack"),
        (dict(ramp="log"), "ramp"),
        (dict(clamp="r"), "clamp"),
        (dict(truncate="yes"), "truncate"),
        (dict(epsilon_rule="numpy"), "epsilon_rule"),
        (dict(correction_length="L"), "correction_length"),
        (dict(mscale_rule="hf"), "mscale_rule"),
        (dict(extrapolation_factor="1"), "extrapolation_factor"),
        (dict(dynamic_yarn=True), "seq_len"),
        (dict(seq_len=0), "seq_len"),
        (dict(seq_len=1.5), "seq_len"),
        (dict(max_model_len=-1), "max_model_len"),
        (dict(longrope_switch="dynamic"), "longrope_switch"),
        (dict(dynamic_ntk="hf"), "dynamic_ntk"),
    ],
)
def test_bad_options_raise_input_error(kwargs, param):
    with pytest.raises(InputError) as info:
        rope_frequencies(get_preset("yarn-llama-2-7b-64k"), **kwargs)
    assert info.value.param == param


def test_dynamic_yarn_only_for_yarn():
    with pytest.raises(InputError, match="dynamic_yarn"):
        rope_frequencies(get_preset("llama-3.1-8b"), seq_len=10, dynamic_yarn=True)


def test_input_config_is_not_modified():
    cfg = get_preset("phi-3-mini-128k")
    before = copy.deepcopy(cfg)
    rope_frequencies(cfg, seq_len=5000)
    assert cfg == before


# ---------------------------------------------------------------------------------------------
# Stack presets that follow what the stacks compute (vLLM 0.33, llama.cpp after PR #17945/#18006)


def _deepseek(**rope):
    cfg = get_preset("deepseek-v3")
    cfg["rope_scaling"].update(rope)
    return cfg


def test_vllm_deepseek_ignores_attention_factor():
    """vLLM's get_rope never passes attention_factor to DeepseekScalingRotaryEmbedding."""
    from yarnref.scaling import get_mscale

    cfg = _deepseek(attention_factor=1.2, mscale=0.707, mscale_all_dim=1.0)
    assert rope_frequencies(cfg)[1] == 1.2  # transformers: verbatim
    expected = get_mscale(40.0, 0.707) / get_mscale(40.0, 1.0)  # vLLM: the mscale ratio, attention_factor unseen
    assert rope_frequencies(cfg, stack="vllm")[1] == pytest.approx(expected, rel=1e-15)
    assert rope_frequencies(cfg, stack="vllm")[1] != 1.2
    # vLLM's own key attn_factor does reach it
    cfg["rope_scaling"]["attn_factor"] = 2.0
    assert rope_frequencies(cfg, stack="vllm")[1] == pytest.approx(2 * expected, rel=1e-15)


def test_vllm_deepseek_always_truncates():
    cfg = _deepseek(truncate=False)
    truncated = rope_frequencies(_deepseek(), stack="vllm")[0]
    assert not np.array_equal(rope_frequencies(cfg)[0], truncated)  # transformers honours truncate=false
    np.testing.assert_array_equal(rope_frequencies(cfg, stack="vllm")[0], truncated)
    assert stack_options("vllm", cfg)["truncate"] is True


def test_llama_cpp_deepseek2_net_magnitude_is_one():
    for ms, msa in ((0.707, 0.707), (1.0, 0.707), (1.0, 1.0)):
        cfg = _deepseek(mscale=ms, mscale_all_dim=msa)
        assert rope_frequencies(cfg, stack="llama.cpp")[1] == 1.0
    # a non-MLA YaRN config keeps llama.cpp's general rule
    assert rope_frequencies(get_preset("yarn-llama-2-7b-128k"), stack="llama.cpp")[1] == pytest.approx(
        0.1 * math.log(32) + 1, rel=1e-15)


def test_longrope_attention_factor_vllm_and_llama_cpp_from_max_position():
    phi = get_preset("phi-3-mini-128k")
    phi["rope_scaling"].update(attention_factor=1.5, factor=8.0)
    from_max = math.sqrt(1 + math.log(131072 / 4096) / math.log(4096))
    assert rope_frequencies(phi, seq_len=5000)[1] == 1.5  # transformers: attention_factor wins
    for stack in ("vllm", "llama.cpp"):
        assert rope_frequencies(phi, stack=stack, max_model_len=131072)[1] == from_max
    del phi["rope_scaling"]["attention_factor"]
    assert rope_frequencies(phi, seq_len=5000)[1] == math.sqrt(1 + math.log(8.0) / math.log(4096))
    assert rope_frequencies(phi, stack="vllm", max_model_len=131072)[1] == from_max
    # vLLM's short_mscale / long_mscale overrides, by the list in use
    phi["rope_scaling"].update(short_mscale=1.1, long_mscale=1.3)
    assert rope_frequencies(phi, stack="vllm", max_model_len=131072)[1] == 1.3
    assert rope_frequencies(phi, stack="vllm", max_model_len=4096)[1] == 1.1


def test_every_rope_type_has_its_frequency_functions(monkeypatch):
    """``ROPE_FREQUENCY_FUNCTIONS`` is the one table rope_frequencies dispatches through (the extension point)."""
    from yarnref.config import ROPE_TYPES
    from yarnref.scaling import frequencies

    assert set(frequencies.ROPE_FREQUENCY_FUNCTIONS) == set(ROPE_TYPES)
    config = {"rope_theta": 10000.0, "head_dim": 8, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    want, factor = rope_frequencies(config)
    marked = (lambda *args: (want * 3.0, 1.5), frequencies.ROPE_FREQUENCY_FUNCTIONS["linear"][1])
    monkeypatch.setitem(frequencies.ROPE_FREQUENCY_FUNCTIONS, "linear", marked)
    got, got_factor = rope_frequencies(config)
    assert np.array_equal(got, want * 3.0) and got_factor == 1.5 and factor == 1.0
