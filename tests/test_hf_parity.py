"""Parity with Hugging Face transformers' own RoPE functions, for every rope type.

transformers computes the inverse frequencies in float32, yarnref in float64, so
the frequencies agree to float32 rounding: evaluating ``b ** x`` in float32
loses about ``ln(b) * x`` ulps of the exponent's rounding, and the blended
schedules (YaRN's ramp, Llama 3's smoothing) amplify the rounding of the blend
weight by up to the factor ``s``.  The tolerance below is
``3 * 2**-24 * (1 + ln b + s)``, about 1e-6 for typical configs.  The attention
factor is a Python float on both sides, computed with the same operations in the
same order: it must match exactly.

The whole module is skipped when transformers (or torch) is not installed.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from transformers import GPTNeoXConfig, LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

from yarnref.config import parse_rope_config, rope_frequencies  # noqa: E402
from yarnref.presets import get_preset, preset_names  # noqa: E402
from yarnref.scaling import DynamicNTKCache  # noqa: E402

transformers.logging.set_verbosity_error()

EPS32 = 2.0**-24


def fp32_rtol(base: float, factor: float = 1.0) -> float:
    return 3 * EPS32 * (1 + math.log(base) + factor)


def assert_matches_transformers(ours, theirs, base, factor=1.0):
    inv_freq, attention = ours
    hf_inv_freq, hf_attention = theirs
    hf = hf_inv_freq.to(torch.float64).numpy()
    assert inv_freq.shape == hf.shape and inv_freq.dtype == np.float64
    np.testing.assert_allclose(inv_freq, hf, rtol=fp32_rtol(base, factor), atol=0)
    assert attention == hf_attention, (attention, hf_attention)
    assert isinstance(attention, float)


# ---------------------------------------------------------------------------------------------
# Hypothesis-drawn configs (shaped like a v5 config.json: rope_theta inside rope_parameters)

bases = st.one_of(st.sampled_from([10000.0, 150000.0, 500000.0, 1e6, 1e7]), st.floats(100.0, 1e7))
factors = st.one_of(st.sampled_from([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 40.0, 64.0]), st.floats(1.0, 64.0))
originals = st.sampled_from([512, 2048, 4096, 8192, 32768])


@st.composite
def geometry(draw):
    """(head_dim, partial_rotary_factor) with an even rotary dim >= 4."""
    head_dim = draw(st.sampled_from([32, 64, 80, 96, 128, 256]))
    prf = draw(st.sampled_from([1.0, 0.5, 0.25]))
    rotary = int(head_dim * prf)
    if rotary < 4 or rotary % 2:
        prf = 1.0
    return head_dim, prf


@st.composite
def hf_configs(draw, rope_type):
    head_dim, prf = draw(geometry())
    rotary = int(head_dim * prf)
    base = draw(bases)
    original = draw(originals)
    params = {"rope_type": rope_type, "rope_theta": base}
    if prf != 1.0 or draw(st.booleans()):
        params["partial_rotary_factor"] = prf
    if rope_type in ("linear", "dynamic", "yarn", "llama3"):
        params["factor"] = draw(factors)
    if rope_type == "yarn":
        params["original_max_position_embeddings"] = original
        if draw(st.booleans()):
            beta_fast = draw(st.floats(1.0, 128.0))
            params["beta_fast"] = beta_fast
            params["beta_slow"] = draw(st.floats(0.25, beta_fast))
        if draw(st.booleans()):
            params["truncate"] = draw(st.booleans())
        choice = draw(st.sampled_from(["none", "attention_factor", "mscales", "lone_mscale"]))
        if choice == "attention_factor":
            params["attention_factor"] = draw(st.floats(0.5, 2.0))
        elif choice == "mscales":
            params["mscale"] = draw(st.sampled_from([0.707, 1.0, 0.5, 2.0]))
            params["mscale_all_dim"] = draw(st.sampled_from([0.707, 1.0, 0.3]))
        elif choice == "lone_mscale":
            params["mscale"] = draw(st.sampled_from([0.707, 1.0, 2.0]))
    if rope_type == "llama3":
        low = draw(st.floats(0.5, 4.0))
        params.update(
            low_freq_factor=low,
            high_freq_factor=draw(st.one_of(st.just(low), st.floats(low, 8 * low))),
            original_max_position_embeddings=original,
        )
    if rope_type == "longrope":
        n = rotary // 2
        params["short_factor"] = draw(st.lists(st.floats(1.0, 4.0), min_size=n, max_size=n))
        params["long_factor"] = draw(st.lists(st.floats(1.0, 80.0), min_size=n, max_size=n))
        params["original_max_position_embeddings"] = original
        if draw(st.booleans()):
            params["factor"] = draw(factors)
        if draw(st.booleans()):
            params["attention_factor"] = draw(st.floats(0.5, 2.0))
    return {
        "hidden_size": head_dim * 4,
        "num_attention_heads": 4,
        "head_dim": head_dim,
        "max_position_embeddings": original * draw(st.sampled_from([1, 2, 4, 8, 32])),
        "rope_parameters": params,
    }


def transformers_frequencies(cfg, seq_len=None):
    hf_config = LlamaConfig(**copy.deepcopy(cfg))
    rope_type = hf_config.rope_parameters["rope_type"]
    return ROPE_INIT_FUNCTIONS[rope_type](hf_config, None, seq_len=seq_len)


def seq_lens(cfg):
    original = cfg["rope_parameters"].get("original_max_position_embeddings", cfg["max_position_embeddings"])
    return st.sampled_from([None, 1, original // 2, original, original + 1, cfg["max_position_embeddings"] * 3])


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "llama3", "longrope"])
@given(data=st.data())
def test_rope_init_functions(rope_type, data):
    cfg = data.draw(hf_configs(rope_type))
    seq_len = data.draw(seq_lens(cfg))
    ours = rope_frequencies(cfg, seq_len=seq_len)
    theirs = transformers_frequencies(cfg, seq_len)
    rc = parse_rope_config(cfg)
    assert rc.rotary_dim == 2 * theirs[0].numel()
    assert_matches_transformers(ours, theirs, rc.base, rc.factor or 1.0)


@given(geometry(), bases, st.booleans())
def test_default_gpt_neox_honours_partial_rotary(geom, base, legacy_layout):
    head_dim, prf = geom
    if legacy_layout:  # GPT-NeoX's own top-level names (Pythia config.json)
        cfg = {"model_type": "gpt_neox", "hidden_size": head_dim * 4, "num_attention_heads": 4,
               "rotary_emb_base": base, "rotary_pct": prf}
    else:
        cfg = {"hidden_size": head_dim * 4, "num_attention_heads": 4,
               "rope_parameters": {"rope_type": "default", "rope_theta": base, "partial_rotary_factor": prf}}
    hf_cfg = {k: v for k, v in copy.deepcopy(cfg).items() if k != "model_type"}
    theirs = GPTNeoXRotaryEmbedding.compute_default_rope_parameters(GPTNeoXConfig(**hf_cfg))
    assert_matches_transformers(rope_frequencies(cfg), theirs, base)


@given(st.sampled_from([32, 64, 80, 128, 256]), bases)
def test_default_llama(head_dim, base):
    cfg = {"hidden_size": head_dim * 8, "num_attention_heads": 8, "rope_theta": base, "rope_scaling": None}
    theirs = LlamaRotaryEmbedding.compute_default_rope_parameters(LlamaConfig(**copy.deepcopy(cfg)))
    assert_matches_transformers(rope_frequencies(cfg), theirs, base)


def test_legacy_rope_scaling_layout_and_type_key():
    """v4 layout: rope_scaling with the old key "type", rope_theta at the top level."""
    cfg = {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 131072, "rope_theta": 1e4,
           "rope_scaling": {"type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096}}
    assert_matches_transformers(rope_frequencies(cfg), transformers_frequencies(cfg), 1e4, 32.0)


# ---------------------------------------------------------------------------------------------
# Real model configs


def _hf_model_config(cfg):
    cfg = copy.deepcopy(cfg)
    model_type = cfg.pop("model_type")
    scaling = cfg.get("rope_scaling")
    if scaling and scaling.get("type") == "su":
        # transformers 5.23's Phi3Config cannot load type "su" without original_max_position_embeddings inside
        # rope_scaling (it renames su -> longrope after standardizing); the Hub's later configs say "longrope".
        scaling["type"] = "longrope"
    return transformers.AutoConfig.for_model(model_type, **cfg)


@pytest.mark.parametrize("name", preset_names())
def test_presets_match_transformers(name):
    cfg = get_preset(name)
    hf_config = _hf_model_config(cfg)
    rope_type = hf_config.rope_parameters["rope_type"]
    rc = parse_rope_config(cfg)
    assert rc.rope_type == rope_type
    original = rc.original_max_position_embeddings or 4096
    for seq_len in (None, original, original + 1):
        if rope_type == "default":
            theirs = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_config)
        else:
            theirs = ROPE_INIT_FUNCTIONS[rope_type](hf_config, None, seq_len=seq_len)
        assert_matches_transformers(rope_frequencies(cfg, seq_len=seq_len), theirs, rc.base, rc.factor or 1.0)


def test_deepseek_softmax_scale_matches_transformers():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    from yarnref.scaling import deepseek_softmax_scale

    cfg = get_preset("deepseek-v3")
    hf_config = _hf_model_config(cfg)
    rc = parse_rope_config(cfg)
    qk_head_dim = rc.qk_nope_head_dim + rc.rotary_dim
    expected = yarn_apply_mscale(hf_config.rope_parameters, qk_head_dim ** (-0.5))
    assert deepseek_softmax_scale(qk_head_dim, rc.factor, rc.params.get("mscale_all_dim")) == expected


# ---------------------------------------------------------------------------------------------
# The stateful updates of transformers' rotary modules


def _run_module(module, seq_len):
    position_ids = torch.tensor([[seq_len - 1]])
    module(torch.zeros(1, dtype=torch.float32), position_ids)
    return module.inv_freq.to(torch.float64).numpy().copy(), module.attention_scaling


@settings(max_examples=15)
@given(st.sampled_from([64, 128]), st.sampled_from([10000.0, 500000.0]), st.sampled_from([2.0, 4.0, 1.5]),
       st.lists(st.integers(1, 40000), min_size=1, max_size=8))
def test_dynamic_ntk_cache_matches_dynamic_rope_update(head_dim, base, factor, history):
    max_pos = 4096
    cfg = {"hidden_size": head_dim * 2, "num_attention_heads": 2, "head_dim": head_dim, "max_position_embeddings": max_pos,
           "rope_parameters": {"rope_type": "dynamic", "factor": factor, "rope_theta": base}}
    module = LlamaRotaryEmbedding(LlamaConfig(**copy.deepcopy(cfg)))
    cache = DynamicNTKCache(head_dim, base, factor, max_pos)
    for seq_len in history:
        theirs = _run_module(module, seq_len)
        ours = cache.update(seq_len)
        np.testing.assert_allclose(ours[0], theirs[0], rtol=fp32_rtol(base, factor), atol=0)
        assert ours[1] == theirs[1]
        assert cache.max_seq_len_cached == module.max_seq_len_cached


@settings(max_examples=10)
@given(st.lists(st.integers(1, 9000), min_size=1, max_size=6))
def test_longrope_switch_matches_longrope_frequency_update(history):
    cfg = get_preset("phi-3-mini-128k")
    hf_config = _hf_model_config(cfg)
    module = transformers.models.phi3.modeling_phi3.Phi3RotaryEmbedding(hf_config)
    for seq_len in history:
        theirs = _run_module(module, seq_len)
        ours = rope_frequencies(cfg, seq_len=seq_len)  # switch="current_length": a pure function of seq_len
        np.testing.assert_allclose(ours[0], theirs[0], rtol=fp32_rtol(1e4), atol=0)
        assert ours[1] == theirs[1]
