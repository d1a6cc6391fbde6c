# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 4: NTK-aware and dynamic NTK scaling
#
# **Papers:** the NTK-aware and dynamic NTK methods were first posted on r/LocalLLaMA (bloc97, emozilla) and
# are written up in B. Peng, J. Quesnelle, H. Fan, E. Shippole, *YaRN: Efficient Context Window Extension of
# Large Language Models*, [arXiv:2309.00071](https://arxiv.org/abs/2309.00071), Definition 1, Appendix A.1
# and section 3.3.
#
# **Code:** `yarnref/scaling/ntk.py` (`ntk_aware_base`, `ntk_frequencies`, `dynamic_ntk_frequencies`,
# `DynamicNTKCache`); config `rope_type` `"dynamic"`.
#
# ## Motivation
#
# Lesson 3's PI divides *every* frequency by $s$, including the fast planes that resolve neighbouring
# tokens and already saw every angle in training. The NTK-aware idea (from the neural tangent kernel
# argument that networks struggle to learn high frequencies): leave the fast planes almost alone and
# stretch the slow ones, by changing only the base $b$.

# %% [markdown]
# ## The equations
#
# NTK-aware scaling (YaRN, Definition 1) replaces the base so that the slowest plane is interpolated by
# exactly $s$:
#
# $$b' = b\, s^{\frac{r}{r-2}}, \qquad \theta'_i = b'^{-2i/r} = \theta_i\, s^{-\frac{2i}{r-2}} .$$
#
# The per-plane scale $\theta_i/\theta'_i = s^{2i/(r-2)}$ is 1 for plane 0 and $s$ for the last plane,
# geometric in between. **Dynamic NTK** (section 3.3) picks the factor from the current length $\ell$,
#
# $$s(\ell) = \max\!\left(1, \frac{\ell}{L}\right),$$
#
# so inputs within the trained window run the unchanged model. transformers writes it with the config's
# `factor` $\alpha$ as a slope, $b' = b\,(\alpha\ell/L - (\alpha - 1))^{r/(r-2)}$, and caches the largest
# base it has computed.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import yarnref
from yarnref.scaling import (
    DynamicNTKCache,
    dynamic_ntk_frequencies,
    linear_frequencies,
    ntk_aware_base,
    ntk_frequencies,
)

r, b, L, s = 128, 10000.0, 4096, 8.0
theta = yarnref.base_inv_freq(r, b)  # (r/2,)
ntk_freq, ntk_factor = ntk_frequencies(r, b, s)
pi_freq, _ = linear_frequencies(r, b, s)
print(f"NTK-aware base for s = {s:g}: {ntk_aware_base(b, s, r):.1f} (from {b:g})")

# %%
pairs = np.arange(r // 2)
fig, (ax_s, ax_d) = plt.subplots(1, 2, figsize=(10, 3.4))
ax_s.semilogy(pairs, theta / pi_freq, label="PI")
ax_s.semilogy(pairs, theta / ntk_freq, label="NTK-aware")
ax_s.set(xlabel="plane i", ylabel=r"scale $\theta_i/\theta'_i$", title=f"Per-plane scale, s = {s:g}")
ax_s.legend(fontsize=8)
lengths = np.arange(1024, 8 * L + 1, 512)
bases = [ntk_aware_base(b, max(1.0, l / L), r) for l in lengths]
ax_d.plot(lengths, bases)
ax_d.axvline(L, color="gray", ls=":", lw=0.8)
ax_d.set(xlabel=r"current length $\ell$", ylabel="base b'", title="Dynamic NTK: the base follows the length")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Check: what NTK keeps, and how dynamic NTK behaves
#
# * NTK-aware keeps plane 0 exactly and divides the last plane by exactly $s$; its scale is geometric.
# * Dynamic NTK is plain RoPE up to $L$ and NTK-aware at $s = \ell/L$ beyond (with slope 1).
# * transformers' dynamic NTK is *stateful*: the cache only grows, so after a 16k request a 9k request keeps
#   the 16k base. `DynamicNTKCache` reproduces that, and the answer then depends on history.

# %%
scale = theta / ntk_freq
assert scale[0] == 1.0 and np.isclose(scale[-1], s, rtol=1e-12)
assert np.allclose(np.diff(np.log(scale)), np.log(s) * 2 / (r - 2), rtol=1e-9), "geometric in the plane index"
assert ntk_factor == 1.0

short, _ = dynamic_ntk_frequencies(r, b, 1.0, L, seq_len=L)
assert np.allclose(short, theta, rtol=1e-15), "within the window: plain RoPE"
long_, _ = dynamic_ntk_frequencies(r, b, 1.0, L, seq_len=8 * L)
assert np.allclose(long_, ntk_frequencies(r, b, 8.0)[0], rtol=1e-12), "at 8L: NTK-aware with s = 8"

cache = DynamicNTKCache(r, b, 2.0, L)
after_16k, _ = cache.update(16384)
then_9k, _ = cache.update(9000)
fresh_9k, _ = dynamic_ntk_frequencies(r, b, 2.0, L, seq_len=9000)
assert np.array_equal(then_9k, after_16k) and not np.allclose(then_9k, fresh_9k)
print("checked: NTK keeps plane 0, interpolates the last by s; dynamic NTK is RoPE within L; the cache only grows")

# %% [markdown]
# ## The cost of dynamic scaling: the same token, different angles
#
# With dynamic NTK the frequencies depend on the length of the whole input, so a key cached at length
# $\ell_1$ was rotated with a different base than the query at $\ell_2$. We measure the worst angle
# difference for the key at position 3000 between lengths 5k and 16k.

# %%
freq_5k, _ = dynamic_ntk_frequencies(r, b, 1.0, L, seq_len=5000)
freq_16k, _ = dynamic_ntk_frequencies(r, b, 1.0, L, seq_len=16384)
drift = np.abs(yarnref.rope_angles(freq_5k, [3000]) - yarnref.rope_angles(freq_16k, [3000]))[0]
print(f"largest angle change at position 3000: {drift.max():.3f} rad (plane {drift.argmax()})")
assert drift.max() > 0.1

# %% [markdown]
# ## Exercise
#
# 1. vLLM's variant (`yarnref.scaling.vllm_dynamic_ntk_frequencies`) fixes the base from the maximum
#    model length once. Compare its frequencies at $\ell = 9000$ with `DynamicNTKCache` after a 16k request.
# 2. NTK-aware at $s = 8$ interpolates the *middle* planes by $\sqrt{8}$. Find the planes whose wavelength
#    exceeds $L$ (they never finish a turn) and compute how far past $L$ each of them can go before leaving
#    its trained range. Is NTK-aware enough for $sL$ in all of them?
#
# ## Summary
#
# * NTK-aware changes the base: fast planes kept, the slowest divided by $s$, geometric in between (checked).
# * Dynamic NTK picks $s$ from the current length, RoPE inside the window (checked), but its frequencies
#   depend on the length (and, in transformers, on history), so cached keys drift.
