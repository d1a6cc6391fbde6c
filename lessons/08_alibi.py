# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 8: ALiBi against RoPE: train short, test long
#
# **Paper:** O. Press, N. A. Smith, M. Lewis, *Train Short, Test Long: Attention with Linear Biases Enables
# Input Length Extrapolation*, [arXiv:2108.12409](https://arxiv.org/abs/2108.12409), section 3.
#
# **Code:** `yarnref/alibi.py` (`alibi_slopes`, `alibi_bias`), `yarnref/softmax_attention.py`
# (`attention(..., alibi_slopes=)`).
#
# ## Motivation
#
# Lessons 3-7 repair RoPE after the fact: past its training length a RoPE model meets angles it never saw,
# and every method reshapes the frequencies so that it does not. ALiBi takes the other road. It has no
# position embedding at all; it subtracts from each logit a penalty proportional to the distance. A longer
# input then produces nothing new: only larger distances, whose penalty is larger still.

# %% [markdown]
# ## The equations
#
# For query $i$ and key $j \le i$ in head $h$ (section 3),
#
# $$\mathrm{softmax}\!\left(s\,q_i K^\top + m_h\,[-(i-1), \dots, -2, -1, 0]\right),$$
#
# with the head slopes a geometric sequence: for $n$ heads, $n$ a power of two,
#
# $$m_h = 2^{-8h/n}, \qquad h = 1, \dots, n$$
#
# ($n = 8$: $1/2, 1/4, \dots, 1/256$). Other head counts take the slopes of the nearest lower power of two
# and fill up with every other slope of twice as many heads (the paper's code, BLOOM). If every logit is
# bounded, $|s\,q\cdot k| \le B$, the attention mass a query puts beyond distance $D$ is at most
#
# $$\sum_{d > D} \frac{e^{B - m_h d}}{e^{-B}} = \frac{e^{2B}\, e^{-m_h (D+1)}}{1 - e^{-m_h}},$$
#
# so each head is, in effect, a soft window of width about $1/m_h$ tokens.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import yarnref

heads = 12  # not a power of two: 8 slopes of 8 heads, then 4 odd ones of 16
slopes = yarnref.alibi_slopes(heads)
print("slopes:", np.round(slopes, 5))
bias = yarnref.alibi_bias(slopes, 16, 16)  # (heads, q, k): -m_h |p_q - p_k|

fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
for ax, h in zip(axes, (0, 5, 11)):
    shown = np.where(np.tril(np.ones((16, 16), dtype=bool)), bias[h], np.nan)
    ax.imshow(shown, cmap="viridis")
    ax.set(title=f"head {h}: m = {slopes[h]:.4f}", xlabel="key", ylabel="query")
fig.suptitle("ALiBi biases (causal part)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Train short, test long
#
# A decoding query at the end of a sequence of $n$ tokens, with keys from random content. For each head we
# measure the attention mass on keys farther than $L = 512$ tokens (the "training length") as $n$ grows,
# with one `yarnref.attention` call: the value of a key is 1 if it is farther than $L$, else 0.

# %%
rng = np.random.default_rng(0)
d, L = 32, 512
lengths = [1024, 4096, 8192]
mass = np.zeros((len(lengths), heads))
bound_ok = []
for row, n in enumerate(lengths):
    q = rng.standard_normal((1, heads, 1, d)) / 2
    k = rng.standard_normal((1, heads, n, d)) / 2
    far = (np.arange(n) < n - 1 - L).astype(np.float64)  # (n,): 1 beyond distance L from the last query
    v = np.broadcast_to(far[None, None, :, None], (1, heads, n, 1))
    out = yarnref.attention(q, k, v, causal=True, alibi_slopes=slopes)  # (1, heads, 1, 1)
    mass[row] = out[0, :, 0, 0]
    B = np.abs(np.einsum("bhqd,bhkd->bhqk", q, k)).max() / np.sqrt(d)
    bound = np.exp(2 * B - slopes * (L + 1)) / (1 - np.exp(-slopes))
    bound_ok.append(np.all(mass[row] <= bound + 1e-15))
print("attention mass beyond L, per head, at n =", lengths[-1])
print(np.array2string(mass[-1], precision=2))

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.4))
order = np.argsort(slopes)
for row, n in enumerate(lengths):
    ax.loglog(slopes[order], np.maximum(mass[row, order], 1e-300), marker="o", ls="-" if row == 0 else "", label=f"n = {n}")
ax.set(xlabel=r"head slope $m_h$", ylabel="attention mass beyond distance L", ylim=(1e-40, 2),
       title="Longer inputs add (almost) nothing; steep heads see only the last L tokens")
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Check
#
# * Eight heads get the paper's slopes $1/2, \dots, 1/256$; twelve heads keep the first eight of them.
# * The bias is $-m_h$ times the distance, zero on the diagonal, and aligned bottom-right like every
#   attention in yarnref.
# * The mass beyond $L$ never exceeds the bound above, and for steep heads it is negligible at every length:
#   these heads compute the same output at 8k as on the last $L$ tokens alone.

# %%
assert np.array_equal(yarnref.alibi_slopes(8), 0.5 ** np.arange(1, 9))
assert np.array_equal(slopes[:8], yarnref.alibi_slopes(8))
assert np.all(np.diagonal(bias, axis1=1, axis2=2) == 0)
assert np.allclose(bias[:, -1, :], -slopes[:, None] * np.arange(15, -1, -1)[None, :])
assert all(bound_ok), "the bound on the mass beyond L holds"
steep = slopes >= 1 / 16
n = 8192
q = rng.standard_normal((1, heads, 1, d)) / 2
k, v = rng.standard_normal((2, 1, heads, n, d)) / 2
full = yarnref.attention(q, k, v, causal=True, alibi_slopes=slopes)
window = yarnref.attention(q, k[:, :, -L:], v[:, :, -L:], causal=True, alibi_slopes=slopes)
assert np.allclose(full[:, steep], window[:, steep], atol=1e-12)
print(f"checked: {int(steep.sum())} steep heads see the same output at {n} tokens as on the last {L}")

# %% [markdown]
# ## On a GPU (optional)
#
# The torch backend takes the same `alibi_slopes`. At 32768 tokens the last 16 queries of a float32 GPU call
# must match the float64 spec (which can afford 16 queries over 32k keys on a CPU) to float32 tolerance.
# Skipped without CUDA.

# %%
from yarnref.testing import assert_close

gpu = "torch" in yarnref.gpu_backends()  # the torch backend with a CUDA device
if gpu:
    import torch
if not gpu:
    print("No CUDA device for the torch backend here: the GPU cell is skipped.")

if gpu:
    n, last = 32768, 16
    qg = rng.standard_normal((1, heads, n, d)).astype(np.float32)
    kg, vg = rng.standard_normal((2, 1, heads, n, d)).astype(np.float32)
    with yarnref.use_backend("torch", device="cuda") as backend:
        out_gpu = backend.to_numpy(yarnref.attention(qg, kg, vg, causal=True, alibi_slopes=slopes))
    spec = yarnref.attention(qg[:, :, -last:].astype(np.float64), kg.astype(np.float64), vg.astype(np.float64),
                             causal=True, alibi_slopes=slopes)
    assert_close(out_gpu[:, :, -last:], spec, dtype="float32", op="attention")
    print(f"torch on CUDA, {n} tokens with ALiBi: the last {last} queries match the float64 spec")

# %% [markdown]
# ## Exercise
#
# 1. The shallowest head (slope $2^{-8}$ for 8 heads) has a window of hundreds of tokens. At what length
#    does its output at 8k differ from the last-$L$ output by more than $10^{-3}$?
# 2. ALiBi's lse at the end of a long input grows with the number of keys within each head's window. Use
#    `return_lse=True` to plot it against $n$ for the steepest and the shallowest head, and compare with
#    RoPE's lesson 6: does ALiBi need a temperature?
#
# ## Summary
#
# * ALiBi adds $-m_h\,|i-j|$ to the logits with geometric head slopes (checked against the paper's values).
# * Longer inputs bring only larger distances, whose weight is bounded (checked): the steep heads are local
#   windows, which is why ALiBi extrapolates, and also why it does not use far context as RoPE models
#   extended by lessons 3-7 and 9 do.
