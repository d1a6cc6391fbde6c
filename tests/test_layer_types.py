"""Per-layer-type RoPE (Gemma 3): both config layouts read as transformers reads them."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from yarnref.config import parse_rope_config, rope_frequencies, rope_layer_types
from yarnref.errors import InputError

# google/gemma-3-4b-it's text config, as on the Hub (transformers v4 layout)
GEMMA3_V4 = {
    "model_type": "gemma3_text", "hidden_size": 2560, "num_attention_heads": 8, "num_key_value_heads": 4,
    "head_dim": 256, "num_hidden_layers": 34, "max_position_embeddings": 131072, "sliding_window": 1024,
    "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
}
GEMMA3_V5 = {
    **{k: v for k, v in GEMMA3_V4.items() if k not in ("rope_theta", "rope_local_base_freq", "rope_scaling")},
    "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
}


def _theta(r, base):
    return base ** (-np.arange(0, r, 2) / r)


@pytest.mark.parametrize("cfg", [GEMMA3_V4, GEMMA3_V5], ids=["v4", "v5"])
def test_two_ropes(cfg):
    assert rope_layer_types(cfg) == ("full_attention", "sliding_attention")
    full, m_full = rope_frequencies(cfg, layer_type="full_attention")
    sliding, m_sliding = rope_frequencies(cfg, layer_type="sliding_attention")
    np.testing.assert_allclose(full, _theta(256, 1e6) / 8, rtol=1e-14)
    np.testing.assert_allclose(sliding, _theta(256, 1e4), rtol=1e-14)
    assert m_full == m_sliding == 1.0
    # the default is the full-attention layers, with a warning naming the other layer type
    np.testing.assert_array_equal(rope_frequencies(cfg)[0], full)
    rc = parse_rope_config(cfg)
    assert rc.layer_type == "full_attention" and any("sliding_attention" in w for w in rc.warnings)
    assert parse_rope_config(cfg, "sliding_attention").rope_type == "default"


def test_layer_type_errors():
    with pytest.raises(InputError, match="layer_type"):
        rope_frequencies(GEMMA3_V4, layer_type="chunked_attention")
    with pytest.raises(InputError, match="layer_type"):
        rope_frequencies({"head_dim": 64, "hidden_size": 256, "num_attention_heads": 4}, layer_type="full_attention")
    assert rope_layer_types({"head_dim": 64, "hidden_size": 256, "num_attention_heads": 4}) == ()


def test_gemma3_defaults_without_thetas():
    """Gemma3TextConfig.default_theta: 1e6 global, 1e4 local."""
    cfg = {k: v for k, v in GEMMA3_V4.items() if k not in ("rope_theta", "rope_local_base_freq", "rope_scaling")}
    np.testing.assert_allclose(rope_frequencies(cfg)[0], _theta(256, 1e6), rtol=1e-14)
    np.testing.assert_allclose(rope_frequencies(cfg, layer_type="sliding_attention")[0], _theta(256, 1e4), rtol=1e-14)


def test_explain_shows_both():
    from yarnref.cli import explain

    text = explain(GEMMA3_V4)
    assert "Per-layer-type RoPE" in text and "sliding_attention" in text and "full_attention" in text


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("cfg", [GEMMA3_V4, GEMMA3_V5], ids=["v4", "v5"])
def test_matches_transformers_gemma3(cfg):
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

    from test_hf_parity import torch_pow

    hf = Gemma3TextConfig(**{k: v for k, v in copy.deepcopy(cfg).items() if k != "model_type"})
    module = Gemma3RotaryEmbedding(hf)
    for layer_type in ("full_attention", "sliding_attention"):
        theirs = getattr(module, f"{layer_type}_inv_freq").numpy()
        ours, m = rope_frequencies(cfg, layer_type=layer_type)
        np.testing.assert_allclose(ours, theirs.astype(np.float64), rtol=3 * 2**-24 * (2 + np.log(1e6) + 8))
        assert m == getattr(module, f"{layer_type}_attention_scaling")
        with torch_pow():
            ours32, _ = rope_frequencies(cfg, layer_type=layer_type, precision="float32")
        np.testing.assert_array_equal(ours32, theirs)
