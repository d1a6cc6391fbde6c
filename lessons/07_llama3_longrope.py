# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 7: The Llama 3 and LongRoPE schedules, and what LongRoPE2 changes
#
# **Papers:** Meta, *The Llama 3 Herd of Models*, [arXiv:2407.21783](https://arxiv.org/abs/2407.21783) (the
# schedule is in Meta's reference code, `apply_scaling`; the paper gives no equation);
# Y. Ding et al., *LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens*,
# [arXiv:2402.13753](https://arxiv.org/abs/2402.13753), Eqs. 2-3; Microsoft, *Phi-3 Technical Report*,
# [arXiv:2404.14219](https://arxiv.org/abs/2404.14219); N. Shang et al., *LongRoPE2: Near-Lossless LLM
# Context Window Scaling*, [arXiv:2502.20082](https://arxiv.org/abs/2502.20082).
#
# **Code:** `yarnref/scaling/llama3.py` (`llama3_frequencies`, `llama3_freq_divisors`),
# `yarnref/scaling/longrope.py` (`longrope_frequencies`, `longrope_attention_factor`, `uses_long_factors`),
# `yarnref/config.py` (`rope_frequencies`), `yarnref/presets.py` (real configs).
#
# ## Motivation
#
# Lessons 3-5 derived per-plane scales from a formula. The schedules real models ship take the last step:
# Llama 3.1 writes NTK-by-parts in wavelengths with two hand-set thresholds, and LongRoPE *searches* one
# factor per plane, then ships the list in `config.json`. An oracle must reproduce both exactly, including
# the switch between LongRoPE's short and long factors and the precision real stacks compute them in.

# %% [markdown]
# ## The equations
#
# **Llama 3** (Meta's `apply_scaling`): with $\lambda_{hi} = L/\mathit{hf}$ and $\lambda_{lo} = L/\mathit{lf}$,
#
# $$\theta'_i = \begin{cases} \theta_i & \lambda_i < \lambda_{hi} \\ \theta_i/s & \lambda_i > \lambda_{lo} \\
#   (1-\kappa_i)\,\theta_i/s + \kappa_i\,\theta_i & \text{else,} \end{cases} \qquad
#   \kappa_i = \frac{L/\lambda_i - \mathit{lf}}{\mathit{hf} - \mathit{lf}},$$
#
# and no attention factor. It is YaRN's ramp (lesson 5) with $\alpha = \mathit{lf}$, $\beta = \mathit{hf}$
# turns, linear in the turns as in the YaRN paper's Eq. 18.
#
# **LongRoPE** (Eqs. 2-3): one searched factor per plane, $\theta'_i = \theta_i / f_i$, with a `long_factor`
# list used beyond $L$ and a `short_factor` list below it; Phi-3's attention factor is
#
# $$m_{att} = \sqrt{1 + \frac{\ln s}{\ln L}} .$$
#
# **LongRoPE2** keeps this form (a `longrope` config with per-plane factors) and changes how the factors are
# found: it argues that the higher planes are insufficiently trained, so the "critical" plane beyond which
# they are interpolated sits lower than a turn count predicts; it searches the factors with a
# needle-driven perplexity rather than plain perplexity, and trains with a mixed context window so short
# inputs keep the original RoPE. For an oracle nothing new is needed: the result is another `long_factor`
# list.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import yarnref
from yarnref.scaling import (
    llama3_frequencies,
    longrope_attention_factor,
    longrope_frequencies,
    uses_long_factors,
    yarn_frequencies,
)

rng = np.random.default_rng(0)
r, b, L, s = 128, 500000.0, 8192, 8.0  # Llama 3.1 8B: base 5e5, 8k original context, factor 8
theta = yarnref.base_inv_freq(r, b)
wavelength = 2 * np.pi / theta
llama_freq, llama_factor = llama3_frequencies(r, b, s, 1.0, 4.0, L)
yarn_freq, _ = yarn_frequencies(r, b, s, L, beta_fast=4.0, beta_slow=1.0, ramp="paper")
print("Llama 3 attention factor:", llama_factor)

# %% [markdown]
# ## Check: Llama 3 is NTK-by-parts in wavelengths; LongRoPE switches lists
#
# * Llama 3 keeps wavelengths below $L/\mathit{hf}$, divides those above $L/\mathit{lf}$ by $s$, and equals
#   YaRN's Eq. 18 ramp with $\alpha = \mathit{lf}$, $\beta = \mathit{hf}$.
# * LongRoPE uses the short factors up to $L$ tokens and the long ones beyond, and Phi-3's attention factor
#   is $\sqrt{1 + \ln s/\ln L}$.

# %%
llama_scale = theta / llama_freq
assert np.all(llama_scale[wavelength < L / 4] == 1.0)
assert np.allclose(llama_scale[wavelength > L], s, rtol=1e-14)
assert np.allclose(llama_freq, yarn_freq, rtol=1e-12), "Llama 3 = NTK-by-parts with alpha = lf, beta = hf"

short = np.linspace(1.0, 2.0, r // 2)
long_ = np.linspace(1.0, 16.0, r // 2)
L_phi = 4096
at_short, m_short = longrope_frequencies(r, 10000.0, short, long_, L_phi, factor=32.0, seq_len=L_phi)
at_long, m_long = longrope_frequencies(r, 10000.0, short, long_, L_phi, factor=32.0, seq_len=L_phi + 1)
base_phi = yarnref.base_inv_freq(r, 10000.0)
assert np.allclose(at_short, base_phi / short) and np.allclose(at_long, base_phi / long_)
assert not uses_long_factors(L_phi, L_phi) and uses_long_factors(L_phi + 1, L_phi)
assert np.isclose(m_long, np.sqrt(1 + np.log(32) / np.log(L_phi)), rtol=1e-15)
assert np.isclose(longrope_attention_factor(32.0, L_phi), m_long)
print("checked: Llama 3 = NTK-by-parts in wavelengths; LongRoPE short/long switch and attention factor")

# %%
phi3 = yarnref.get_preset("phi-3-mini-128k")  # LongRoPE as shipped: 48 searched factors per list
phi3_rc = yarnref.parse_rope_config(phi3)
phi3_theta = yarnref.base_inv_freq(phi3_rc.rotary_dim, phi3_rc.base)
phi3_long = np.asarray(phi3["rope_scaling"]["long_factor"])
phi3_short = np.asarray(phi3["rope_scaling"]["short_factor"])
phi3_wavelength = 2 * np.pi / phi3_theta / phi3_rc.original_max_position_embeddings
assert np.allclose(yarnref.rope_frequencies(phi3, seq_len=8192)[0], phi3_theta / phi3_long, rtol=1e-15)
assert np.allclose(yarnref.rope_frequencies(phi3, seq_len=4096)[0], phi3_theta / phi3_short, rtol=1e-15)

fig, ax = plt.subplots(figsize=(6.5, 3.4))
ax.loglog(wavelength / L, llama_scale, label="Llama 3.1 8B (lf = 1, hf = 4)")
ax.loglog(phi3_wavelength, phi3_long, marker=".", ms=3, lw=0.8, label="Phi-3-mini-128k long_factor (LongRoPE)")
ax.loglog(phi3_wavelength, phi3_short, marker=".", ms=3, lw=0.8, label="Phi-3-mini-128k short_factor")
ax.axvline(1 / 4, color="gray", ls=":", lw=0.8)
ax.axvline(1.0, color="gray", ls=":", lw=0.8)
ax.set(xlabel=r"wavelength / original context, $\lambda_i / L$", ylabel=r"scale $\theta_i/\theta'_i$",
       title="A formula and a search: the per-plane scales real models ship")
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Real models
#
# `rope_frequencies(config, seq_len=None)` takes a dict shaped like a Hugging Face `config.json` and returns
# what transformers computes (in float64). The presets hold the RoPE-relevant part of real configs, with
# their provenance. `seq_len` matters for dynamic NTK and for LongRoPE's short/long switch: we ask for the
# full context. (Qwen2.5-7B-Instruct-1M is plain RoPE with base $10^7$: it reaches 1M tokens with Dual
# Chunk Attention, lesson 9.)

# %%
print(f"{'preset':<26} {'rope_type':<9} {'r':>4} {'base':>9} {'s':>5} {'L':>6} {'m_att':>7}")
curves = {}
for name in yarnref.preset_names():
    config = yarnref.get_preset(name)
    rc = yarnref.parse_rope_config(config)
    inv_freq, m = yarnref.rope_frequencies(config, seq_len=rc.max_position_embeddings)
    base_freq = yarnref.base_inv_freq(rc.rotary_dim, rc.base)
    factor = "-" if rc.factor is None else f"{rc.factor:g}"
    print(f"{name:<26} {rc.rope_type:<9} {rc.rotary_dim:>4} {rc.base:>9.3g} {factor:>5} "
          f"{rc.original_max_position_embeddings or '-':>6} {m:>7.4f}")
    if rc.rope_type != "default":
        curves[name] = (2 * np.pi / base_freq / rc.original_max_position_embeddings, base_freq / inv_freq)

# Known values: YaRN's temperature, DeepSeek's mscale ratio, Phi-3's LongRoPE factor.
m_att = {name: yarnref.rope_frequencies(yarnref.get_preset(name))[1]
         for name in ("yarn-llama-2-7b-128k", "deepseek-v3", "phi-3-mini-128k")}
assert np.isclose(m_att["yarn-llama-2-7b-128k"], 0.1 * np.log(32) + 1, rtol=1e-15)  # YaRN Eq. 22, s = 32
assert m_att["deepseek-v3"] == 1.0  # mscale == mscale_all_dim: the ratio is 1
assert np.isclose(m_att["phi-3-mini-128k"], np.sqrt(1 + np.log(32) / np.log(4096)), rtol=1e-15)

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
for name, (relative_wavelength, scale) in curves.items():
    ax.loglog(relative_wavelength, scale, label=name, lw=1.2, marker="." if "phi" in name else None, ms=3)
ax.axvline(1.0, color="gray", ls=":", lw=0.8)
ax.set(xlabel=r"original wavelength / original context $\lambda_i / L$", ylabel=r"scale $\theta_i/\theta'_i$",
       title="Per-pair scale of real configs (LongRoPE: the long factors)")
ax.legend(fontsize=7, loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Precision: float32 angles and bfloat16 tables at position 1M
#
# The spec computes in float64. Real stacks do not: transformers computes the angles
# `position_ids.float() @ inv_freq` in float32, multiplies cos and sin by the attention factor, and casts
# the tables to the activation dtype, usually bfloat16. `rope_cos_sin` reproduces both steps:
# `precision="float32"` rounds the frequencies, the positions and the angle to float32, and
# `out_precision="bfloat16"` rounds the tables. The angle error grows with the position (half a float32 ulp
# of an angle near $p$ radians); the bfloat16 rounding is a constant $\le 2^{-9}\,m_{att}$, which the
# float32 angle error overtakes around position $10^5$. Llama 3.1 8B's frequencies:

# %%
inv_freq, m = yarnref.rope_frequencies(yarnref.get_preset("llama-3.1-8b"))
positions = np.unique(np.logspace(0, 6, 120).astype(np.int64))  # 1 .. 1,000,000
exact = np.stack(yarnref.rope_cos_sin(inv_freq, positions, m))  # (2, n, r/2): cos, sin
fp32 = np.stack(yarnref.rope_cos_sin(inv_freq, positions, m, precision="float32"))
bf16 = np.stack(yarnref.rope_cos_sin(inv_freq, positions, m, precision="float32", out_precision="bfloat16"))
err32 = np.abs(fp32 - exact).max(axis=(0, 2))  # (n,) worst over cos/sin and planes
err16 = np.abs(bf16 - exact).max(axis=(0, 2))

# The effect on a score: q at position 1M, k at 1M - 1000, rotated with each table.
q, k = rng.standard_normal((2, 1, 1, 1, r))


def score(precision, out_precision=None):
    tables = [yarnref.rope_cos_sin(inv_freq, [p], m, precision=precision, out_precision=out_precision)
              for p in (1_000_000, 999_000)]
    return float(yarnref.apply_rope(q, *tables[0]).ravel() @ yarnref.apply_rope(k, *tables[1]).ravel())


s64, s32, s16 = score("float64"), score("float32"), score("float32", "bfloat16")
print(f"at position 1M: max table error fp32 {err32[-1]:.2e}, bf16 {err16[-1]:.2e}")
print(f"score q.k at (1M, 1M-1000): float64 {s64:.5f}  fp32 {s32:.5f}  bf16 {s16:.5f}")

small = positions <= 1000
assert np.all(err16[small] <= 2.0**-9 * m + 1e-6), "bf16 rounding: at most half a bf16 ulp"
assert err32[small].max() < 1e-4 and err32[-1] > 1e-2, "fp32 angle errors grow with the position"

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.loglog(positions, err32, label="float32 angles and tables")
ax.loglog(positions, err16, label="float32 angles, bfloat16 tables")
ax.axhline(2.0**-9, color="gray", ls=":", lw=0.8)
ax.text(1.5, 2.0**-9 * 1.3, r"$2^{-9}$: half a bf16 ulp", fontsize=8, color="gray")
ax.set(xlabel="position", ylabel="max |table - float64|", title="cos/sin table error, Llama 3.1 8B")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## On a GPU (optional)
#
# `rope_cos_sin` with the torch backend builds the same float32 tables on the GPU; they must match the
# spec's emulation to a couple of float32 ulps (the GPU's `cos` is not correctly rounded). Skipped without
# CUDA.

# %%
gpu = "torch" in yarnref.gpu_backends()  # the torch backend with a CUDA device
if gpu:
    import torch
if not gpu:
    print("No CUDA device for the torch backend here: the GPU cell is skipped.")

if gpu:
    many = np.arange(0, 1_000_001, 7)
    spec = yarnref.rope_cos_sin(inv_freq, many, m, precision="float32")
    with yarnref.use_backend("torch", device="cuda") as backend:
        tables = yarnref.rope_cos_sin(inv_freq, many, m, precision="float32")
        for got, want in zip(tables, spec):
            assert np.allclose(backend.to_numpy(got), want, rtol=0, atol=1e-6)
        print("torch float32 tables on", tables[0].device, "match the spec's emulation")

# %% [markdown]
# ## Exercise
#
# 1. With `longrope_frequencies(..., switch="max_model_len", max_model_len=...)` the long factors are used
#    for every length (vLLM's rule when the model length exceeds $L$). Compute the score between two tokens
#    at distance 100 under both rules for a 2k input. Which stack's output would an oracle test against?
# 2. Llama 3.1's `high_freq_factor` is 4. Change it to 8 and count the planes that are kept, blended and
#    interpolated. Which planes move from "kept" to "blended"?
#
# ## Summary
#
# * Llama 3 is NTK-by-parts written in wavelengths, with no attention factor (checked).
# * LongRoPE ships searched per-plane factors, a short and a long list, and $\sqrt{1+\ln s/\ln L}$ (checked);
#   LongRoPE2 changes the search, not the form.
# * `rope_frequencies` turns real configs into these numbers as transformers does; at position $10^6$,
#   float32 angles are off by up to ~0.05 rad, which dwarfs bfloat16's table rounding.
