"""vLLM's own rope types through rope_frequencies, and transformers' proportional type.

The references are written here after vLLM 0.33's classes (``ntk_scaling_rope.py``,
``dynamic_ntk_alpha_rope.py``): in float64 NumPy for the spec, and in torch float32
for ``precision="float32"``.  ``proportional`` is compared with transformers' own
``ROPE_INIT_FUNCTIONS``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yarnref.config import parse_rope_config, rope_frequencies
from yarnref.errors import ConfigError, InputError


def _cfg(params, head_dim=128):
    return {"hidden_size": head_dim * 4, "num_attention_heads": 4, "head_dim": head_dim,
            "max_position_embeddings": 4096, "rope_parameters": params}


dims = st.sampled_from([32, 64, 128, 256])
bases = st.sampled_from([10000.0, 500000.0, 1e6])


@settings(max_examples=20)
@given(dims, bases, st.floats(1.0, 64.0), st.one_of(st.none(), st.floats(0.25, 3.0)))
def test_vllm_ntk_fixed_and_mixed(r, base, factor, mixed_b):
    params = {"rope_type": "ntk", "rope_theta": base, "factor": factor}
    if mixed_b is not None:
        params["mixed_b"] = mixed_b
    cfg = _cfg(params, r)
    inv, m = rope_frequencies(cfg, stack="vllm")
    i = np.arange(r // 2)
    theta = base ** (-2.0 * i / r)
    if mixed_b is None:  # base * s, then / s^(2/r)
        expected = (base * factor) ** (-2.0 * i / r) / factor ** (2.0 / r)
    else:
        a = math.log(factor) / (r / 2) ** mixed_b
        expected = theta / np.exp(a * (i + 1.0) ** mixed_b)
    np.testing.assert_allclose(inv, expected, rtol=1e-13)
    assert m == 1.0
    # the last pair is divided by exactly s in both variants
    assert inv[-1] == pytest.approx(theta[-1] / factor, rel=1e-12)
    with pytest.raises(InputError, match="vllm"):
        rope_frequencies(cfg)  # transformers has no 'ntk'


@settings(max_examples=15)
@given(dims, bases, st.floats(1.0, 2000.0))
def test_vllm_dynamic_alpha(r, base, alpha):
    cfg = _cfg({"rope_type": "dynamic", "rope_theta": base, "alpha": alpha}, r)
    inv, m = rope_frequencies(cfg, stack="vllm")
    new_base = base * alpha ** (r / (r - 2))
    np.testing.assert_allclose(inv, new_base ** (-2.0 * np.arange(r // 2) / r), rtol=1e-13)
    assert m == 1.0
    assert any("alpha" in w for w in parse_rope_config(cfg).warnings)
    with pytest.raises(InputError, match="vllm"):
        rope_frequencies(cfg)


def test_dynamic_without_factor_or_alpha_is_rejected():
    with pytest.raises(ConfigError, match="factor"):
        rope_frequencies(_cfg({"rope_type": "dynamic", "rope_theta": 1e4}), stack="vllm")


@pytest.mark.parametrize("params", [{"rope_type": "ntk", "factor": 4.0}, {"rope_type": "ntk", "factor": 4.0, "mixed_b": 1.5},
                                    {"rope_type": "dynamic", "alpha": 100.0},
                                    {"rope_type": "proportional", "partial_rotary_factor": 0.25}])
def test_explain_reports_the_extra_types(params):
    import warnings

    from yarnref.cli import explain

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero warnings for proportional's frequency-0 pairs
        text = explain(_cfg({**params, "rope_theta": 1e4}))
    assert f"RoPE type    {params['rope_type']}" in text


torch = pytest.importorskip("torch")


def _torch_vllm_inv_freq(base, r):
    return 1.0 / (base ** (torch.arange(0, r, 2, dtype=torch.float) / r))


@pytest.mark.parametrize("r, base, factor", [(128, 10000.0, 4.0), (64, 1e6, 16.0), (128, 500000.0, 2.5)])
def test_float32_ntk_fixed_and_alpha_match_vllm_formulas(r, base, factor):
    from test_hf_parity import torch_pow

    with torch_pow():
        ours = rope_frequencies(_cfg({"rope_type": "ntk", "rope_theta": base, "factor": factor}, r), stack="vllm",
                                precision="float32")[0]
        ours_alpha = rope_frequencies(_cfg({"rope_type": "dynamic", "rope_theta": base, "alpha": factor}, r),
                                      stack="vllm", precision="float32")[0]
    theirs = (_torch_vllm_inv_freq(base * factor, r) / factor ** (2 / r)).numpy()
    np.testing.assert_array_equal(ours, theirs)
    theirs_alpha = _torch_vllm_inv_freq(base * factor ** (r / (r - 2)), r).numpy()
    np.testing.assert_array_equal(ours_alpha, theirs_alpha)


def test_float32_ntk_mixed_is_within_ulps_of_vllm():
    r, base, s, b = 128, 10000.0, 8.0, 1.5
    ours = rope_frequencies(_cfg({"rope_type": "ntk", "rope_theta": base, "factor": s, "mixed_b": b}, r),
                            stack="vllm", precision="float32")[0]
    a = torch.tensor(s).log() / (r / 2) ** b
    lam = (a * torch.arange(1, r // 2 + 1).float() ** b).exp()
    theirs = (_torch_vllm_inv_freq(base, r) / lam).numpy()
    ulps = np.abs(ours.view(np.int32).astype(np.int64) - theirs.view(np.int32))
    assert ulps.max() <= 4  # torch's vectorised pow / exp are not correctly rounded


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("head_dim, prf, base, factor", [(256, 0.25, 1e6, 1.0), (128, 0.5, 1e4, 8.0),
                                                         (512, 0.25, 1e6, None), (64, 1.0, 1e4, 2.0)])
def test_proportional_matches_transformers(head_dim, prf, base, factor):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from test_hf_parity import torch_pow

    params = {"rope_type": "proportional", "rope_theta": base, "partial_rotary_factor": prf}
    if factor is not None:
        params["factor"] = factor
    cfg = _cfg(params, head_dim)
    theirs, their_m = ROPE_INIT_FUNCTIONS["proportional"](LlamaConfig(**copy.deepcopy(cfg)), None)
    ours, m = rope_frequencies(cfg)
    assert parse_rope_config(cfg).rotary_dim == head_dim and ours.shape == (head_dim // 2,)
    np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=3 * 2**-24 * (1 + math.log(base)), atol=0)
    assert m == their_m
    n = int(prf * head_dim // 2)
    assert np.all(ours[n:] == 0) and np.all(ours[:n] > 0)
    with torch_pow():
        ours32, _ = rope_frequencies(cfg, precision="float32")
    np.testing.assert_array_equal(ours32, theirs.numpy())


def _vllm_yarn_inv(base, r, s, original, beta_fast=32, beta_slow=1, truncate=True):
    """vLLM 0.33 YaRNScalingRotaryEmbedding._compute_inv_freq, restated."""
    pos_freqs = base ** (torch.arange(0, r, 2, dtype=torch.float) / r)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (s * pos_freqs)

    def dim(rot):
        return (r * math.log(original / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = dim(beta_fast), dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, r - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(r // 2, dtype=torch.float) - low) / (high - low), 0, 1)
    mask = (1 - ramp) * 1.0
    return interpolation * (1 - mask) + extrapolation * mask


def _vllm_llama3_inv(base, r, s, lf, hf, original):
    """vLLM 0.33 Llama3RotaryEmbedding._compute_inv_freq, restated."""
    inv = _torch_vllm_inv_freq(base, r)
    wave = 2 * math.pi / inv
    smooth = (original / wave - lf) / (hf - lf) if lf != hf else 0
    return torch.where(wave < original / hf, inv,
                       torch.where(wave > original / lf, inv / s, (1 - smooth) * inv / s + smooth * inv))


@pytest.mark.parametrize("name", ["yarn-llama-2-7b-128k", "yarn-mistral-7b-128k", "qwen2.5-7b-instruct-yarn",
                                  "gpt-oss-20b", "llama-3.1-8b", "llama-3.2-1b", "phi-3-mini-128k"])
def test_float32_path_matches_vllm_formulas_bit_for_bit(name):
    from test_hf_parity import torch_pow

    from yarnref.presets import get_preset

    cfg = get_preset(name)
    rc = parse_rope_config(cfg)
    p, r, b = rc.params, rc.rotary_dim, rc.base
    with torch_pow():
        ours, _ = rope_frequencies(cfg, stack="vllm", precision="float32", max_model_len=131072)
    if rc.rope_type == "yarn":
        theirs = _vllm_yarn_inv(b, r, rc.factor, rc.original_max_position_embeddings, p.get("beta_fast") or 32,
                                p.get("beta_slow") or 1, p.get("truncate", True))
    elif rc.rope_type == "llama3":
        theirs = _vllm_llama3_inv(b, r, rc.factor, p["low_freq_factor"], p["high_freq_factor"],
                                  rc.original_max_position_embeddings)
    else:  # longrope, long factors (max_model_len > original): Phi3LongRoPEScaledRotaryEmbedding._compute_inv_freq
        theirs = 1.0 / (torch.tensor(p["long_factor"], dtype=torch.float32)
                        * (b ** (torch.arange(0, r, 2, dtype=torch.float) / r)))
    np.testing.assert_array_equal(ours, theirs.numpy())
