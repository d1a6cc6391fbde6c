# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 5: NTK-by-parts and YaRN's ramp
#
# **Paper:** B. Peng, J. Quesnelle, H. Fan, E. Shippole, *YaRN: Efficient Context Window Extension of Large
# Language Models*, [arXiv:2309.00071](https://arxiv.org/abs/2309.00071), section 3.2 (Definition 2,
# Eqs. 17-20) and Appendix A.2.
#
# **Code:** `yarnref/scaling/yarn.py` (`yarn_frequencies`, `correction_dim`, `correction_range`,
# `linear_ramp`, `paper_ramp`).
#
# ## Motivation
#
# PI (lesson 3) interpolates every plane; NTK-aware (lesson 4) interpolates by a smooth function of the plane
# index that ignores the training length. NTK-by-parts asks the plane itself: *how many turns does it make
# within the original context?* A plane that turns many times saw every angle and must be kept (it carries
# local order); a plane that does not finish a turn must be interpolated like PI; in between, blend.

# %% [markdown]
# ## The equations
#
# The wavelength of plane $d$ is $\lambda_d = 2\pi/\theta_d$, and it turns $r(d) = L/\lambda_d$ times in the
# original context (Eq. 17). With a ramp $\gamma$ that is 0 for $r < \alpha$ and 1 for $r > \beta$ (Eq. 18),
#
# $$\theta'_d = \big(1-\gamma(r(d))\big)\,\frac{\theta_d}{s} + \gamma(r(d))\,\theta_d , \qquad
#   \gamma(r) = \begin{cases}0 & r < \alpha\\ 1 & r > \beta\\ \dfrac{r-\alpha}{\beta-\alpha} & \text{else.}\end{cases}$$
#
# The paper uses $\alpha = 1$, $\beta = 32$. The code everyone runs (YaRN's reference, transformers, vLLM)
# makes the ramp linear in the *plane index* instead, between the correction dims
#
# $$\mathrm{cd}(\rho) = \frac{r\,\ln\!\big(L/(2\pi\rho)\big)}{2\ln b},$$
#
# the plane that turns exactly $\rho$ times, with $\rho = \beta_{fast} = 32$ and $\rho = \beta_{slow} = 1$,
# floored and ceiled (`correction_range`). yarnref's default is that code; `ramp="paper"` gives Eq. 18.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import yarnref
from yarnref.scaling import correction_dim, correction_range, yarn_frequencies

r, b, L, s = 128, 10000.0, 4096, 16.0
theta = yarnref.base_inv_freq(r, b)  # (r/2,)
turns = L * theta / (2 * np.pi)  # r(d) = L / lambda_d, YaRN Eq. 17
code_freq, _ = yarn_frequencies(r, b, s, L)  # ramp linear in the plane index (the code)
paper_freq, _ = yarn_frequencies(r, b, s, L, ramp="paper")  # Eq. 18: ramp in r(d)
lo, hi = correction_range(r, b, L)
print(f"correction dims: cd(32) = {correction_dim(32, r, b, L):.2f}, cd(1) = {correction_dim(1, r, b, L):.2f}")
print(f"correction range (floored, ceiled): planes {lo:.0f} .. {hi:.0f}")

# %%
pairs = np.arange(r // 2)
fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(10, 3.4))
ax_t.semilogy(pairs, turns)
for rho, label in ((32, r"$\beta$ = 32 turns"), (1, r"$\alpha$ = 1 turn")):
    ax_t.axhline(rho, color="gray", ls=":", lw=0.8)
    ax_t.text(1, rho * 1.3, label, fontsize=8, color="gray")
ax_t.set(xlabel="plane d", ylabel=r"turns in L tokens, $L/\lambda_d$", title="How far each plane turns")
ax_s.plot(pairs, theta / code_freq, label="YaRN (ramp in the plane index)")
ax_s.plot(pairs, theta / paper_freq, ls="--", label="Eq. 18 (ramp in the turns)")
ax_s.axvspan(lo, hi, color="gray", alpha=0.15, label="correction range")
ax_s.set(xlabel="plane d", ylabel=r"scale $\theta_d/\theta'_d$", title=f"NTK-by-parts, s = {s:g}")
ax_s.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Check: kept, interpolated, blended
#
# * Planes that turn at least $\beta = 32$ times are kept exactly; planes that turn at most once are divided
#   by exactly $s$; the scale rises monotonically in between (both ramps).
# * The two ramps agree outside the correction range and differ inside it.
# * At $s = 1$ YaRN is plain RoPE, and a `yarn` config gives the same frequencies.

# %%
for name, freq in (("code", code_freq), ("paper", paper_freq)):
    scale = theta / freq
    assert np.all(scale[turns >= 32] == 1.0), name
    assert np.allclose(scale[turns <= 1], s, rtol=1e-14), name
    assert np.all(np.diff(scale) >= -1e-12), name
outside = (pairs < lo) | (pairs > hi)
assert np.allclose(code_freq[outside], paper_freq[outside], rtol=1e-14)
assert not np.allclose(code_freq, paper_freq)
assert np.allclose(yarn_frequencies(r, b, 1.0, L)[0], theta, rtol=1e-15)
config = {"head_dim": r, "rope_theta": b, "max_position_embeddings": int(s * L),
          "rope_scaling": {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": L}}
assert np.allclose(yarnref.rope_frequencies(config)[0], code_freq, rtol=1e-15)
print("kept:", int(np.sum(theta / code_freq == 1)), " interpolated:", int(np.sum(np.isclose(theta / code_freq, s))),
      " blended:", int(np.sum((theta / code_freq > 1) & ~np.isclose(theta / code_freq, s))))

# %% [markdown]
# ## Exercise
#
# 1. Change `beta_fast` to 64 and `beta_slow` to 2 in `yarn_frequencies`. How do the correction range and
#    the number of kept planes change? Which of them depends on $s$?
# 2. With `truncate=False` the correction dims are not floored and ceiled (some stacks do this). Measure the
#    largest relative difference of the frequencies: is it large enough to matter at position 128k?
#
# ## Summary
#
# * NTK-by-parts decides per plane from the turns it makes in $L$ tokens: keep, interpolate, or blend
#   (checked). The de facto ramp is linear in the plane index; Eq. 18's is linear in the turns.
# * Lesson 6 adds YaRN's second ingredient, the attention temperature.
