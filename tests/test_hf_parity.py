"""Parity with Hugging Face transformers' own RoPE functions, for every rope type.

transformers computes the inverse frequencies in float32, yarnref in float64, so
the frequencies agree to float32 rounding: evaluating ``b ** x`` in float32
loses about ``ln(b) * x`` ulps of the exponent's rounding, and the blended
schedules (YaRN's ramp, Llama 3's smoothing) amplify the rounding of the blend
weight by up to the factor ``s``.  The tolerance below is
``3 * 2**-24 * (1 + ln b + s)``, about 1e-6 for typical configs, plus, for
Llama 3, the rounding of its smoothing weight ``kappa = (L/lambda - lf) / (hf -
lf)``: the numerator carries about ``(3 + ln b) hf + lf`` ulps of float32 error
(``L / lambda <= hf`` in the band, ``lambda`` itself off by ``2 + ln b`` ulps),
the division by ``hf - lf`` amplifies it, and the blend ``theta ((1 - kappa)/s
+ kappa)`` turns an error in ``kappa`` into a relative error up to ``s`` times
larger.  The attention factor is a Python float on both sides, computed with
the same operations in the same order: it must match exactly.

``precision="float32"`` must reproduce transformers' float32 ``inv_freq`` bit for
bit.  The one float32 operation yarnref cannot reproduce in NumPy is torch's
vectorised ``pow`` (SLEEF, not correctly rounded; yarnref gives the correctly
rounded power, which is torch's scalar result): the exact tests feed yarnref
torch's own powers, and a separate test bounds the difference without them.

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


def fp32_rtol(base: float, factor: float = 1.0, low_freq_factor=None, high_freq_factor=None) -> float:
    rtol = 3 * EPS32 * (1 + math.log(base) + factor)
    if low_freq_factor is not None and high_freq_factor != low_freq_factor:
        numerator_ulps = (3 + math.log(base)) * high_freq_factor + low_freq_factor
        rtol += 3 * EPS32 * factor * numerator_ulps / abs(high_freq_factor - low_freq_factor)
    return rtol


def assert_matches_transformers(ours, theirs, base, factor=1.0, llama3=(None, None)):
    inv_freq, attention = ours
    hf_inv_freq, hf_attention = theirs
    hf = hf_inv_freq.to(torch.float64).numpy()
    assert inv_freq.shape == hf.shape and inv_freq.dtype == np.float64
    np.testing.assert_allclose(inv_freq, hf, rtol=fp32_rtol(base, factor, *llama3), atol=0)
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


def _llama3_factors(rc):
    if rc.rope_type != "llama3":
        return (None, None)
    return rc.params["low_freq_factor"], rc.params["high_freq_factor"]


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "llama3", "longrope"])
@given(data=st.data())
def test_rope_init_functions(rope_type, data):
    cfg = data.draw(hf_configs(rope_type))
    seq_len = data.draw(seq_lens(cfg))
    ours = rope_frequencies(cfg, seq_len=seq_len)
    theirs = transformers_frequencies(cfg, seq_len)
    rc = parse_rope_config(cfg)
    assert rc.rotary_dim == 2 * theirs[0].numel()
    assert_matches_transformers(ours, theirs, rc.base, rc.factor or 1.0, _llama3_factors(rc))


def test_llama3_close_freq_factors_regression():
    """low/high freq factors 1.5 / 1.75: the blend divides by 0.25 and amplifies float32 rounding (it once flaked)."""
    for base in (10000.0, 500000.0, 1e7):
        for factor in (8.0, 64.0):
            cfg = {"hidden_size": 512, "num_attention_heads": 4, "head_dim": 128, "max_position_embeddings": 8192,
                   "rope_parameters": {"rope_type": "llama3", "rope_theta": base, "factor": factor,
                                       "low_freq_factor": 1.5, "high_freq_factor": 1.75,
                                       "original_max_position_embeddings": 8192}}
            rc = parse_rope_config(cfg)
            assert_matches_transformers(rope_frequencies(cfg), transformers_frequencies(cfg), base, factor,
                                        _llama3_factors(rc))
            # and the float32 path is bit-exact there (given torch's powers)
            with torch_pow():
                ours32, _ = rope_frequencies(cfg, precision="float32")
            assert np.array_equal(ours32, transformers_frequencies(cfg)[0].numpy())


# ---------------------------------------------------------------------------------------------
# The float32 path: bit for bit


class torch_pow:
    """Within the block, yarnref's float32 ``pow`` is torch's own (vectorised) ``float ** tensor``."""

    def __enter__(self):
        import yarnref.scaling.float32 as f32

        self.module, self.saved = f32, f32.f32_pow
        f32.f32_pow = lambda base, e: (base ** torch.from_numpy(np.ascontiguousarray(e))).numpy()

    def __exit__(self, *exc):
        self.module.f32_pow = self.saved


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "llama3", "longrope"])
@given(data=st.data())
def test_float32_path_is_bit_exact_with_transformers(rope_type, data):
    cfg = data.draw(hf_configs(rope_type))
    seq_len = data.draw(seq_lens(cfg))
    theirs = transformers_frequencies(cfg, seq_len)[0].numpy()
    with torch_pow():
        ours, _ = rope_frequencies(cfg, seq_len=seq_len, precision="float32")
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.view(np.int32), theirs.view(np.int32))
    # Without torch's powers, the correctly rounded power differs from torch's by at most one ulp, and
    # the blends can amplify it.  Llama 3's blend b = f (1/factor + s (1 - 1/factor)) has a smooth factor
    # s = (orig f / (2 pi) - low) / (high - low) that moves with f, so inside the band a relative change
    # of f changes b by up to 1 + high (factor - 1) / (high - low) times as much (9 for factors 3, 1.5
    # and 2.0, where one ulp became five); the blend's own roundings add a few ulps.
    amplification = 1.0
    p = cfg["rope_parameters"]
    if rope_type == "llama3" and p["high_freq_factor"] > p["low_freq_factor"]:  # equal factors: no band
        amplification += p["high_freq_factor"] * (p["factor"] - 1) / (p["high_freq_factor"] - p["low_freq_factor"])
    ours_cr, _ = rope_frequencies(cfg, seq_len=seq_len, precision="float32")
    np.testing.assert_allclose(ours_cr, theirs, rtol=(amplification + 4) * np.finfo(np.float32).eps, atol=0)


@pytest.mark.parametrize("name", preset_names())
def test_float32_presets_bit_exact(name):
    cfg = get_preset(name)
    hf_config = _hf_model_config(cfg)
    rope_type = hf_config.rope_parameters["rope_type"]
    rc = parse_rope_config(cfg)
    for seq_len in (None, (rc.original_max_position_embeddings or 4096) + 1):
        if rope_type == "default":
            theirs = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_config)[0].numpy()
        else:
            theirs = ROPE_INIT_FUNCTIONS[rope_type](hf_config, None, seq_len=seq_len)[0].numpy()
        with torch_pow():
            ours, _ = rope_frequencies(cfg, seq_len=seq_len, precision="float32")
        np.testing.assert_array_equal(ours.view(np.int32), theirs.view(np.int32))


def test_torch_scalar_pow_is_the_correctly_rounded_power():
    """yarnref's power is torch's scalar (libm) result; the vectorised one differs by <= 1 ulp on a few pairs."""
    from yarnref.scaling.float32 import f32_exponents, f32_pow

    differ = total = 0
    for base in (10000.0, 500000.0, 1e6, 1e7, 12345.678):
        for dim in (64, 128, 256):
            e = f32_exponents(dim)
            ours = f32_pow(base, e)
            scalar = np.array([(torch.tensor(base, dtype=torch.float32) ** torch.tensor(v)).item() for v in e],
                              dtype=np.float32)
            np.testing.assert_array_equal(ours, scalar)
            vector = (base ** torch.from_numpy(e)).numpy()
            ulps = np.abs(ours.view(np.int32).astype(np.int64) - vector.view(np.int32))
            assert ulps.max() <= 1
            differ, total = differ + int((ulps > 0).sum()), total + e.size
    assert differ < 0.05 * total


@settings(max_examples=6)
@given(st.sampled_from(["yarn-llama-2-7b-128k", "llama-3.1-8b", "qwen2.5-7b-instruct-yarn", "gpt-oss-20b",
                        "llama-3.2-1b", "yarn-mistral-7b-128k"]),
       st.integers(0, 2**17))
def test_bfloat16_tables_match_transformers_rotary_class(name, start):
    """rope_cos_sin on the stack's float32 inv_freq: transformers' bf16 tables, up to float32 cos/sin ulps."""
    from yarnref.rope import rope_cos_sin

    cfg = get_preset(name)
    cfg.pop("model_type")
    module = LlamaRotaryEmbedding(LlamaConfig(**copy.deepcopy(cfg)))
    positions = torch.arange(start, start + 2048)[None]
    with torch_pow():
        inv_freq, m = rope_frequencies(cfg, precision="float32")
    np.testing.assert_array_equal(inv_freq, module.inv_freq.numpy())
    assert m == module.attention_scaling
    half = inv_freq.size
    cos32, sin32 = (t[0, :, :half].numpy() for t in module(torch.zeros(1, dtype=torch.float32), positions))
    cos16, sin16 = (t[0, :, :half].float().numpy() for t in module(torch.zeros(1, dtype=torch.bfloat16), positions))
    c32, s32 = rope_cos_sin(inv_freq, positions[0].numpy(), m, precision="float32")
    c16, s16 = rope_cos_sin(inv_freq, positions[0].numpy(), m, precision="float32", out_precision="bfloat16")
    for ours32, theirs32, ours16, theirs16 in ((c32, cos32, c16, cos16), (s32, sin32, s16, sin16)):
        # float32: the angles are identical; torch's vectorised cos/sin are within 1 ulp of the correctly rounded
        # ones, and the product with the attention factor can round that ulp once more
        ulps = np.abs(ours32.view(np.int32).astype(np.int64) - theirs32.view(np.int32))
        assert ulps.max() <= 2
        # bfloat16: equal wherever the float32 values are equal; elsewhere at most one bf16 ulp
        differs = ours16 != theirs16
        assert not np.any(differs & (ours32 == theirs32))
        assert differs.mean() < 1e-3


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
