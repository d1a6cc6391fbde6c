# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 6: YaRN's attention temperature
#
# **Paper:** B. Peng, J. Quesnelle, H. Fan, E. Shippole, *YaRN: Efficient Context Window Extension of Large
# Language Models*, [arXiv:2309.00071](https://arxiv.org/abs/2309.00071), section 3.4 (Eqs. 21-22).
#
# **Code:** `yarnref/scaling/yarn.py` (`yarn_attention_factor`, `get_mscale`), `yarnref/softmax_attention.py`
# (`attention` with `return_lse`), `yarnref/rope.py` (`rope_cos_sin`'s `attention_factor`).
#
# ## Motivation
#
# Stretch the context $s$ times and every query has $s$ times more keys to spread its attention over. The
# softmax gets flatter, its entropy grows, and the model sees attention distributions it was not trained
# on. YaRN counters this with a temperature: divide the logits by $t < 1$, i.e. sharpen them.

# %% [markdown]
# ## The equations
#
# YaRN's attention (Eq. 21) is $\mathrm{softmax}\big(q_m^\top k_n / (t\sqrt{d})\big)$, with the fit (Eq. 22)
#
# $$\sqrt{1/t} = 0.1 \ln s + 1 .$$
#
# Implementations multiply $\sqrt{1/t}$ into both cos and sin (the *attention factor* $m_{att}$), so the
# rotary logits grow by $m_{att}^2 = 1/t$ without touching the attention kernel. The entropy of a query's
# attention, with logits $z_j$ and probabilities $p_j$, is
#
# $$H = -\sum_j p_j \ln p_j = \mathrm{lse}(z) - \sum_j p_j z_j ,$$
#
# and both terms come out of one attention call: the log-sum-exp, and (with the keys as values)
# $\sum_j p_j z_j = \mathrm{scale}\; q \cdot \sum_j p_j k_j$.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import yarnref
from yarnref.scaling import yarn_attention_factor, yarn_frequencies

factors = np.array([1, 2, 4, 8, 16, 32, 64])
print("s      m_att = 0.1 ln s + 1   logit gain m_att^2")
for f in factors:
    m = yarn_attention_factor(float(f))
    print(f"{f:<6} {m:<22.4f} {m * m:.4f}")


def entropy(q, k, scale):
    """Mean attention entropy of the queries, from yarnref.attention: H = lse - scale * q . (sum_j p_j k_j)."""
    expected_key, lse = yarnref.attention(q, k, k, causal=True, scale=scale, return_lse=True)
    return float(np.mean(lse - scale * np.sum(q * expected_key, axis=-1)))


# %% [markdown]
# ## The experiment
#
# A small head ($r = 64$, $L = 512$) on synthetic tokens that share a common direction, so RoPE's
# long-term decay makes attention prefer nearby keys. We stretch it $s = 8$ times with YaRN's frequencies
# and measure the entropy of the last 64 queries at growing lengths, with and without the temperature.

# %%
rng = np.random.default_rng(0)
r, b, L, s = 64, 10000.0, 512, 8.0
yarn_freq, m_att = yarn_frequencies(r, b, s, L)
theta = yarnref.base_inv_freq(r, b)
content = rng.standard_normal(r)
lengths = [256, 512, 1024, 2048, 4096]
results = {"RoPE within L": [], "YaRN, no temperature": [], "YaRN with temperature": []}
for n in lengths:
    x = 0.5 * content + rng.standard_normal((1, 1, n, r))  # (1, 1, n, r): tokens with a shared direction
    for name, freq, factor in (("RoPE within L", theta, 1.0), ("YaRN, no temperature", yarn_freq, 1.0),
                               ("YaRN with temperature", yarn_freq, m_att)):
        if name == "RoPE within L" and n > L:
            results[name].append(np.nan)
            continue
        cos, sin = yarnref.rope_cos_sin(freq, np.arange(n), factor)
        rotated = yarnref.apply_rope(x, cos, sin)
        results[name].append(entropy(rotated[:, :, -64:], rotated, scale=1 / np.sqrt(r)))
for name, values in results.items():
    print(f"{name:<24}", "  ".join(f"{v:6.3f}" for v in values))

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.4))
for name, values in results.items():
    ax.semilogx(lengths, values, marker="o", label=name)
ax.semilogx(lengths, np.log(lengths), color="gray", ls=":", label="uniform: ln n")
ax.axvline(L, color="gray", lw=0.8)
ax.set(xlabel="length n", ylabel="mean attention entropy (nats)", title=f"Entropy against length, s = {s:g}")
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Check: the temperature's numbers and what it does
#
# * $m_{att} = 0.1\ln s + 1$ exactly, and a `yarn` config returns it as the attention factor.
# * In cos and sin, $m_{att}$ scales every rotary logit by $m_{att}^2$.
# * Sharpening never raises entropy: at every length beyond $L$, the temperature lowers it.

# %%
for f in factors:
    assert yarn_attention_factor(float(f)) == 0.1 * np.log(float(f)) + 1 if f > 1 else yarn_attention_factor(1.0) == 1.0
config = {"head_dim": r, "rope_theta": b, "max_position_embeddings": int(s * L),
          "rope_scaling": {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": L}}
assert np.isclose(yarnref.rope_frequencies(config)[1], 0.1 * np.log(s) + 1, rtol=1e-15)

q, k = rng.standard_normal((2, 1, 1, 1, r))
positions = [1000]
plain = [yarnref.apply_rope(t, *yarnref.rope_cos_sin(yarn_freq, positions)) for t in (q, k)]
warm = [yarnref.apply_rope(t, *yarnref.rope_cos_sin(yarn_freq, positions, m_att)) for t in (q, k)]
assert np.isclose(np.sum(warm[0] * warm[1]), m_att**2 * np.sum(plain[0] * plain[1]), rtol=1e-12)

for n, cold, hot in zip(lengths, results["YaRN with temperature"], results["YaRN, no temperature"]):
    assert cold < hot, n
print("checked: 0.1 ln s + 1, logits scaled by its square, entropy lowered at every length")

# %% [markdown]
# ## Exercise
#
# 1. DeepSeek's configs set `mscale` and `mscale_all_dim`; `yarn_attention_factor(s, mscale=1.0,
#    mscale_all_dim=1.0)` is then 1. Where does DeepSeek apply the temperature instead? (See
#    `yarnref.scaling.deepseek_softmax_scale`.)
# 2. Replace 0.1 by 0.2 in the temperature (`attention_factor=` of `yarn_frequencies`). At which length does
#    the sharpened entropy at $8L$ fall below the RoPE entropy at $L$?
#
# ## Summary
#
# * YaRN's temperature is $0.1\ln s + 1$ multiplied into cos and sin, so logits grow by its square (checked).
# * It lowers the attention entropy that grows with the context (checked), keeping long-context attention
#   closer to what the model saw in training.
