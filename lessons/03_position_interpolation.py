# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 3: Position Interpolation
#
# **Paper:** S. Chen, S. Wong, L. Chen, Y. Tian, *Extending Context Window of Large Language Models via
# Positional Interpolation*, [arXiv:2306.15595](https://arxiv.org/abs/2306.15595), section 2.
#
# **Code:** `yarnref/scaling/linear.py` (`linear_frequencies`, `interpolate_positions`), `yarnref/rope.py`
# (`rope_cos_sin`); config `rope_scaling = {"rope_type": "linear", "factor": s}`.
#
# ## Motivation
#
# A RoPE model trained on $L$ tokens has seen, in plane $i$, only the angles $m\theta_i$ with $0 \le m < L$.
# The fast planes turn many times in $L$ tokens, so every angle is familiar. The slow planes do not finish
# one turn: past position $L$ they reach angles the model never saw during training, and attention scores
# built from them are out of distribution. PI's answer is to never leave the trained range: squeeze the
# $sL$ positions of the longer context into the $L$ positions the model knows.

# %% [markdown]
# ## The equations
#
# PI rescales the position (Eq. 4 of the paper): with $L' = sL$,
#
# $$f'(\boldsymbol x, m) = f\!\left(\boldsymbol x, \frac{mL}{L'}\right) = f\!\left(\boldsymbol x, \frac{m}{s}\right),$$
#
# which for RoPE is the same as dividing every frequency by $s$:
#
# $$\theta'_i = \frac{\theta_i}{s}, \qquad m\,\theta'_i = \frac{m}{s}\,\theta_i .$$
#
# The price is resolution: neighbouring tokens now differ by $\theta_0/s$ in the fastest plane instead of
# $\theta_0$, so the model must tell apart positions $s$ times closer than it learned to (the paper's
# remedy is a short fine-tune, about 1000 steps). PI has no attention factor: $m_{att} = 1$.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import yarnref
from yarnref.scaling import interpolate_positions, linear_frequencies

r, b, L, s = 128, 10000.0, 4096, 4.0  # a Llama 2 head stretched from 4k to 16k
theta = yarnref.base_inv_freq(r, b)  # (r/2,): radians per token
pi_freq, pi_factor = linear_frequencies(r, b, s)
print("attention factor:", pi_factor)
print("fastest plane: %.4f rad/token -> %.4f" % (theta[0], pi_freq[0]))
print("slowest plane: %.3g rad/token -> %.3g" % (theta[-1], pi_freq[-1]))

# %% [markdown]
# ## Which planes leave the trained range?
#
# Plane $i$ has seen angles up to $L\theta_i$ (modulo $2\pi$, everything if $L\theta_i \ge 2\pi$). At a
# position $m \ge L$ a plane is out of distribution if $m\theta_i \bmod 2\pi$ was never reached, which for a
# plane that has not finished one turn means $m\theta_i > (L-1)\theta_i$. We count such planes with the
# angles `yarnref.rope_angles` computes.

# %%
positions = np.arange(0, int(s * L), 64)  # 0 .. sL - 64
angles_rope = yarnref.rope_angles(theta, positions)  # (n, r/2): m * theta_i
angles_pi = yarnref.rope_angles(pi_freq, positions)
seen = (L - 1) * theta  # (r/2,): the widest angle each plane saw in training (positions 0 .. L-1)
full_turn = seen >= 2 * np.pi  # these planes saw every angle


def unseen_planes(angles):
    return np.sum((angles > seen[None, :] * (1 + 1e-12)) & ~full_turn[None, :], axis=1)  # (n,)


out_rope, out_pi = unseen_planes(angles_rope), unseen_planes(angles_pi)
print("planes that never finish a turn in L tokens:", int(np.sum(~full_turn)), "of", r // 2)
print("planes out of the trained range near sL: RoPE", out_rope[-1], " PI", out_pi[-1])

# %%
fig, (ax_a, ax_n) = plt.subplots(1, 2, figsize=(10, 3.4))
slow = r // 2 - 1
ax_a.plot(positions, angles_rope[:, slow], label="RoPE (extrapolate)")
ax_a.plot(positions, angles_pi[:, slow], label=f"PI, s = {s:g}")
ax_a.axhspan(0, seen[slow], color="gray", alpha=0.2, label="angles seen in training")
ax_a.axvline(L, color="gray", ls=":", lw=0.8)
ax_a.set(xlabel="position m", ylabel=r"angle $m\theta_{63}$ (rad)", title="The slowest plane")
ax_a.legend(fontsize=8)
ax_n.plot(positions, out_rope, label="RoPE")
ax_n.plot(positions, out_pi, label="PI")
ax_n.axvline(L, color="gray", ls=":", lw=0.8)
ax_n.set(xlabel="position m", ylabel="planes at unseen angles", title=f"Out of distribution, r = {r}")
ax_n.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Check: PI is RoPE at divided positions, and stays in range
#
# * Rotating with the PI frequencies at position $m$ is rotating with the original ones at $m/s$
#   (`interpolate_positions`), for the cos/sin tables and for a rotated query.
# * Up to $sL$ no plane of PI leaves the trained range, while plain RoPE has planes out of range right
#   after $L$.
# * A linear `rope_scaling` config gives the same frequencies through `rope_frequencies`.
# * The price: the angle between neighbours in the fastest plane is divided by $s$.

# %%
rng = np.random.default_rng(0)
m = np.array([0, 1, 17, 4095, 9000, 16383])
cos_pi, sin_pi = yarnref.rope_cos_sin(pi_freq, m)
cos_div, sin_div = yarnref.rope_cos_sin(theta, interpolate_positions(m, s))
assert np.allclose(cos_pi, cos_div, atol=1e-12) and np.allclose(sin_pi, sin_div, atol=1e-12)
q = rng.standard_normal((1, 1, len(m), r))
assert np.allclose(yarnref.apply_rope(q, cos_pi, sin_pi), yarnref.apply_rope(q, cos_div, sin_div), atol=1e-12)

assert out_pi.max() == 0, "PI never leaves the trained range up to sL"
assert out_rope[positions > L + 64].min() > 0, "plain RoPE does, right after L"

config = {"head_dim": r, "rope_theta": b, "max_position_embeddings": int(s * L),
          "rope_scaling": {"rope_type": "linear", "factor": s}}
inv_freq, factor = yarnref.rope_frequencies(config)
assert np.allclose(inv_freq, theta / s, rtol=1e-15) and factor == 1.0
assert np.isclose(pi_freq[0], theta[0] / s)
print("checked: PI = RoPE at m / s, in range up to sL, and the config path agrees")

# %% [markdown]
# ## What PI does to a score
#
# The score between a query and a key at distance $\Delta$ (same content vector in both) is a sum of
# cosines, $\sum_i \cos(\Delta\theta_i)$. Under PI the curve is the RoPE curve stretched $s$ times: the
# scores PI assigns at distance $s\Delta$ are the ones RoPE assigned at $\Delta$. Long distances become
# familiar; short ones become finer than anything seen in training.

# %%
x = rng.standard_normal((1, 1, 1, r))
distances = np.arange(0, 2 * L)


def scores(freq):
    cos, sin = yarnref.rope_cos_sin(freq, distances)
    keys = yarnref.apply_rope(np.repeat(x, len(distances), axis=2), cos, sin)  # (1, 1, n, r)
    query = yarnref.apply_rope(x, *yarnref.rope_cos_sin(freq, [0]))
    return (keys[0, 0] @ query[0, 0, 0]) / r


score_rope, score_pi = scores(theta), scores(pi_freq)
stride = int(s)
assert np.allclose(score_pi[::stride], score_rope[: len(distances[::stride])], atol=1e-12)

fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(distances, score_rope, lw=0.8, label="RoPE")
ax.plot(distances, score_pi, lw=0.8, label=f"PI, s = {s:g}")
ax.set(xlabel=r"distance $\Delta$ = m - n", ylabel="q.k / r", title="A score against distance")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Exercise
#
# 1. Repeat the out-of-range count for $b = 5\times 10^5$ (Llama 3's base). How many planes are out of the
#    trained range at $4L$ without PI, and why does a larger base make this worse, not better?
# 2. PI's fastest plane now turns $\theta_0/s$ per token. Plot `score_pi` and `score_rope` for the first 32
#    distances. At what $s$ would neighbouring tokens differ by less than $0.1$ rad in every plane?
#
# ## Summary
#
# * PI divides positions by $s$, the same as dividing every frequency by $s$ (checked).
# * It keeps every angle inside the range seen in training up to $sL$ (checked), at the cost of local
#   resolution; lesson 4 keeps the fast planes and lesson 5 chooses plane by plane.
