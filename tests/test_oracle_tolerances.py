"""yarnref.testing's RoPE tolerances accept what correct stacks compute and reject planted bugs.

The "stacks" here are written in this file, in torch float32, after the
stacks' own formulas (independent of yarnref's code):

* vLLM: float32 ``inv_freq`` (``base ** (arange / r)``, reciprocal, YaRN /
  Llama 3 blends in float32), a float32 cos/sin cache ``cos(t * inv_freq) *
  mscale``, the rotation in float32;
* ggml (llama.cpp): angles by the float32 recurrence ``theta *= powf(base,
  -2/r)``, YaRN's blend on the angles, the rotation in float32;
* transformers: its own ``LlamaRotaryEmbedding`` in bfloat16 and its
  ``rotate_half`` rotation in bfloat16.

Each is compared with yarnref's float64 spec at positions from 0 to beyond
128K (up to 262143) with :func:`yarnref.testing.assert_close`, ``op="rope"``
and the matching ``angles``.  Then the vLLM-style implementation gets one
planted bug at a time (an off-by-one position, the wrong pairing, the wrong
attention factor, no YaRN ramp) and must fail.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import LlamaConfig  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

from yarnref.config import parse_rope_config, rope_frequencies  # noqa: E402
from yarnref.presets import get_preset  # noqa: E402
from yarnref.rope import apply_rope, rope_cos_sin  # noqa: E402
from yarnref.scaling import llama3_freq_divisors  # noqa: E402
from yarnref.testing import assert_close  # noqa: E402

transformers.logging.set_verbosity_error()

CONFIGS = ["yarn-llama-2-7b-128k", "yarn-mistral-7b-128k", "qwen2.5-7b-instruct-yarn", "llama-3.1-8b", "gpt-oss-20b"]
POSITIONS = np.concatenate([np.arange(0, 48), np.arange(131072 - 48, 131072), np.arange(262144 - 48, 262144)])
F = torch.float32


def _q(head_dim, seed=0):
    return np.random.default_rng(seed).standard_normal((1, 3, POSITIONS.size, head_dim))


def _spec(cfg, q, stack="transformers", positions=POSITIONS):
    inv, m = rope_frequencies(cfg, stack=stack)
    cos, sin = rope_cos_sin(inv, positions, m)
    return apply_rope(q, cos, sin)


def _yarn_range(r, base, original, beta_fast, beta_slow, truncate):
    def dim(rot):
        return r * math.log(original / (rot * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = dim(beta_fast), dim(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    return max(lo, 0), min(hi, r - 1)


def _rotate_half_f32(q, cos, sin, interleaved=False):
    """q: (1, H, T, D) float32 tensor; cos, sin: (T, r/2)."""
    r = 2 * cos.shape[-1]
    rot = q[..., :r]
    if interleaved:
        a, b = rot[..., 0::2], rot[..., 1::2]
    else:
        a, b = rot[..., : r // 2], rot[..., r // 2:]
    a2, b2 = a * cos - b * sin, b * cos + a * sin
    out = torch.stack([a2, b2], -1).flatten(-2) if interleaved else torch.cat([a2, b2], -1)
    return torch.cat([out, q[..., r:]], -1)


def vllm_style(cfg, q, *, bug=None, positions=POSITIONS):
    """A vLLM-like float32 implementation; ``bug`` plants one mistake."""
    rc = parse_rope_config(cfg)
    p, r, base = rc.params, rc.rotary_dim, rc.base
    pos_freqs = base ** (torch.arange(0, r, 2, dtype=F) / r)
    mscale = 1.0
    if rc.rope_type == "yarn":
        s = rc.factor
        lo, hi = _yarn_range(r, base, rc.original_max_position_embeddings, p.get("beta_fast") or 32,
                             p.get("beta_slow") or 1, p.get("truncate", True))
        if lo == hi:
            hi += 0.001
        ramp = torch.clamp((torch.arange(r // 2, dtype=F) - lo) / (hi - lo), 0, 1)
        mask = 1 - ramp
        if bug == "missing_ramp":
            mask = torch.zeros_like(mask)
        inv = (1.0 / (s * pos_freqs)) * (1 - mask) + (1.0 / pos_freqs) * mask
        mscale = 0.1 * math.log(s) + 1.0
    elif rc.rope_type == "llama3":
        s, lf, hf, L = rc.factor, p["low_freq_factor"], p["high_freq_factor"], rc.original_max_position_embeddings
        inv0 = 1.0 / pos_freqs
        wave = 2 * math.pi / inv0
        smooth = (L / wave - lf) / (hf - lf)
        inv = torch.where(wave < L / hf, inv0, torch.where(wave > L / lf, inv0 / s, (1 - smooth) * inv0 / s + smooth * inv0))
        if bug == "missing_ramp":
            inv = inv0 / s
    else:
        inv = 1.0 / pos_freqs
    if bug == "wrong_attention_factor":
        mscale = 1.0 if mscale != 1.0 else 0.1 * math.log(rc.factor) + 1.0
    t = torch.from_numpy(positions + (1 if bug == "off_by_one" else 0)).to(F)
    freqs = torch.einsum("i,j->ij", t, inv)
    cos, sin = freqs.cos() * mscale, freqs.sin() * mscale
    return _rotate_half_f32(torch.from_numpy(q).to(F), cos, sin, interleaved=bug == "wrong_pairing").numpy()


def ggml_style(cfg, q):
    """A ggml-like float32 implementation: the angle recurrence, YaRN's blend on the angles."""
    rc = parse_rope_config(cfg)
    p, r, base = rc.params, rc.rotary_dim, rc.base
    theta_scale = torch.tensor(base, dtype=F) ** torch.tensor(-2.0 / r, dtype=F)
    freq_scale, ext, corr, factors = 1.0, 0.0, (0.0, 0.0), torch.ones(r // 2, dtype=F)
    mscale = 1.0
    if rc.rope_type == "yarn":
        freq_scale, ext = 1.0 / rc.factor, 1.0
        corr = _yarn_range(r, base, rc.original_max_position_embeddings, p.get("beta_fast") or 32,
                           p.get("beta_slow") or 1, True)  # ggml always floors/ceils
        _, m = rope_frequencies(cfg, stack="llama.cpp")
        mscale = m  # net magnitude after llama.cpp's attn_factor cancels ggml's internal one
    elif rc.rope_type == "llama3":
        factors = torch.from_numpy(llama3_freq_divisors(r, base, rc.factor, p["low_freq_factor"], p["high_freq_factor"],
                                                        rc.original_max_position_embeddings)).to(F)
    theta = torch.from_numpy(POSITIONS).to(F)
    angles = []
    for i in range(r // 2):
        extrap = theta / factors[i]
        interp = freq_scale * extrap
        if ext:
            y = (i - corr[0]) / max(0.001, corr[1] - corr[0])
            mix = (1 - min(1.0, max(0.0, y))) * ext
            interp = interp * (1 - mix) + extrap * mix
        angles.append(interp)
        theta = theta * theta_scale
    angles = torch.stack(angles, -1)
    return _rotate_half_f32(torch.from_numpy(q).to(F), angles.cos() * mscale, angles.sin() * mscale).numpy()


def transformers_bf16(cfg, q):
    cfg = copy.deepcopy(cfg)
    cfg.pop("model_type", None)
    module = LlamaRotaryEmbedding(LlamaConfig(**cfg))
    x = torch.from_numpy(q).to(torch.bfloat16)
    cos, sin = module(x, torch.from_numpy(POSITIONS)[None])  # (1, T, D) bf16
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return (x * cos + rotated * sin).float().numpy()


@pytest.mark.parametrize("name", CONFIGS)
def test_correct_stacks_pass(name):
    cfg = get_preset(name)
    rc = parse_rope_config(cfg)
    q = _q(rc.head_dim)
    top = int(POSITIONS.max())
    # vLLM-style float32 rotation (a unit-scale atol once rejected these for yarn-llama-2-128k, yarn-mistral, qwen2.5-yarn)
    assert_close(vllm_style(cfg, q), _spec(cfg, q, "vllm"), dtype="float32", op="rope", max_position=top,
                 rotary_dim=rc.rotary_dim, base=rc.base, err_msg=f"{name}: vLLM-style float32")
    # ggml-style recurrence against llama.cpp's spec
    assert_close(ggml_style(cfg, q), _spec(cfg, q, "llama.cpp"), dtype="float32", op="rope", max_position=top,
                 angles="ggml", rotary_dim=rc.rotary_dim, base=rc.base, err_msg=f"{name}: ggml-style recurrence")
    # transformers' own bf16 tables and rotation
    assert_close(transformers_bf16(cfg, q), _spec(cfg, q), dtype="bfloat16", op="rope", max_position=top,
                 err_msg=f"{name}: transformers bfloat16")


def test_ggml_recurrence_needs_its_own_angle_bound():
    """The product bound is too tight for ggml's recurrence at 256K: the recurrence really is worse."""
    cfg = get_preset("llama-2-7b")
    rc = parse_rope_config(cfg)
    q = _q(rc.head_dim, seed=3)
    with pytest.raises(AssertionError):
        assert_close(ggml_style(cfg, q), _spec(cfg, q, "llama.cpp"), dtype="float32", op="rope", max_position=0)
    assert_close(ggml_style(cfg, q), _spec(cfg, q, "llama.cpp"), dtype="float32", op="rope",
                 max_position=int(POSITIONS.max()), angles="ggml", rotary_dim=rc.rotary_dim, base=rc.base)


@pytest.mark.parametrize("bug", ["off_by_one", "wrong_pairing", "wrong_attention_factor", "missing_ramp"])
@pytest.mark.parametrize("name", CONFIGS)
def test_planted_bugs_fail(name, bug):
    cfg = get_preset(name)
    rc = parse_rope_config(cfg)
    q = _q(rc.head_dim, seed=1)
    buggy, spec = vllm_style(cfg, q, bug=bug), _spec(cfg, q, "vllm")
    with pytest.raises(AssertionError, match="not close"):
        assert_close(buggy, spec, dtype="float32", op="rope", max_position=int(POSITIONS.max()))
    with pytest.raises(AssertionError, match="not close"):
        assert_close(buggy, spec, dtype="float32", op="rope", max_position=int(POSITIONS.max()),
                     rotary_dim=rc.rotary_dim, base=rc.base)
    # also with ggml's looser angle bound, up to 128K (at 256K its worst case, 0.1 rad for Qwen's base 1e6,
    # is as large as a 14% attention-factor error: beyond 128K only the product bound separates them)
    upto_128k = POSITIONS[POSITIONS < 131072]
    q = q[:, :, : upto_128k.size]
    with pytest.raises(AssertionError, match="not close"):
        assert_close(vllm_style(cfg, q, bug=bug, positions=upto_128k), _spec(cfg, q, "vllm", upto_128k),
                     dtype="float32", op="rope", max_position=int(upto_128k.max()), angles="ggml",
                     rotary_dim=rc.rotary_dim, base=rc.base)
