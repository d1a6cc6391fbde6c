# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 13: Ring attention, a sequence spread over several devices
#
# **Paper:** H. Liu, M. Zaharia, P. Abbeel, *Ring Attention with Blockwise Transformers for
# Near-Infinite Context*, [arXiv:2310.01889](https://arxiv.org/abs/2310.01889), section 3 and
# Algorithm 1. The load-balanced layouts: W. Brandon et al., *Striped Attention*,
# [arXiv:2311.09431](https://arxiv.org/abs/2311.09431), and the zig-zag layout of Llama 3's context
# parallelism ([arXiv:2407.21783](https://arxiv.org/abs/2407.21783), section 3.3.2).
#
# A million tokens of queries, keys and values, with the activations around them, do not fit one
# GPU. Ring attention spreads the sequence over $P$ devices: each keeps its *shard* of the queries,
# and the key/value shards travel around a ring of devices, one hop per step. After $P$ steps every
# query has met every key, and the result is exactly softmax attention.
#
# ## The method
#
# At step $t$ device $r$ holds the K/V shard $s = (r - t) \bmod P$. It computes the attention of its
# queries over those keys alone, with the log-sum-exp of each row,
#
# $$o_i^{(t)} = \sum_{j \in K_s} \frac{e^{s_{ij}}}{\sum_{j' \in K_s} e^{s_{ij'}}}\, v_j, \qquad
# \ell_i^{(t)} = \log \sum_{j \in K_s} e^{s_{ij}},$$
#
# and folds it into its running result with the same log-sum-exp merge that Dual Chunk Attention
# uses for its three parts (lesson 3):
#
# $$\ell_i \leftarrow \log\big(e^{\ell_i} + e^{\ell_i^{(t)}}\big), \qquad
# o_i \leftarrow e^{\ell_i^{\mathrm{old}} - \ell_i}\, o_i + e^{\ell_i^{(t)} - \ell_i}\, o_i^{(t)}.$$
#
# Meanwhile it sends its K/V shard on to device $r + 1$ and receives the next one from $r - 1$, so
# on real hardware the communication hides behind the compute.
#
# yarnref's `ring_attention` simulates the $P$ devices exactly in NumPy; `yarnref_torch.ring` runs
# the same schedule across processes with `torch.distributed`.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import yarnref
from yarnref.ring import ring_schedule, shard_positions

rng = np.random.default_rng(0)

# %% [markdown]
# ## Layouts: who holds which tokens
#
# Sixteen tokens on four devices. *Contiguous*: device $r$ holds one block. *Zig-zag*: the sequence
# is cut into $2P$ blocks and device $r$ holds blocks $r$ and $2P - 1 - r$, an early one and a late
# one. *Striped*: device $r$ holds every $P$-th token, starting at $r$.

# %%
T, P = 16, 4
for layout in yarnref.RING_LAYOUTS:
    print(f"{layout:<11}", [p.tolist() for p in shard_positions(T, P, layout)])

# %% [markdown]
# ## Plot: the ring, step by step
#
# Each panel is the $T \times T$ causal attention matrix (queries down, keys across) at one ring
# step; a cell is coloured by the device that computes that score at that step, and blank if no
# device does (above the diagonal, or computed at another step). With the contiguous layout the
# devices with early tokens sit idle at most steps: their queries cannot see the later keys that
# arrive. With zig-zag every device has the same amount of work at every step.

# %%
def step_owner(T, P, layout, step):
    """(T, T) array: the device computing score (i, j) at this step, -1 if none."""
    sched = ring_schedule(T, P, layout)
    owner = np.full((T, T), -1)
    for r in range(P):
        queries = sched.positions[r]
        keys = sched.positions[sched.key_shard[step, r]]
        for i in queries:
            visible = keys[keys <= i]
            owner[i, visible] = r
    return owner


colors = plt.get_cmap("tab10")
fig, axes = plt.subplots(2, P, figsize=(3 * P, 6.4))
for row, layout in enumerate(("contiguous", "zigzag")):
    for t in range(P):
        owner = step_owner(T, P, layout, t)
        image = np.ones((T, T, 3))
        for r in range(P):
            image[owner == r] = colors(r)[:3]
        ax = axes[row, t]
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"{layout}, step {t}")
        ax.set_xticks([])
        ax.set_yticks([])
for r in range(P):
    axes[0, 0].plot([], [], "s", color=colors(r), label=f"device {r}")
fig.legend(loc="lower center", ncol=P)
fig.tight_layout(rect=(0, 0.06, 1, 1))
plt.show()

# %% [markdown]
# ## The causal load imbalance, counted
#
# `ring_schedule` counts the unmasked scores each device computes at each step. A ring step lasts as
# long as its busiest device, so the ring's time is $\sum_t \max_r \mathrm{work}_{t,r}$. With the
# contiguous layout device $r$ does $r$ full blocks and half of the diagonal one, so the last device
# does $(2P - 1)/P$ times the mean work: almost twice for large $P$. Zig-zag pairs an early block
# (little work) with a late one (much work), so every device does the same.

# %%
P, T = 8, 8 * 256
fig, ax = plt.subplots(figsize=(7, 3.5))
width = 0.27
for k, layout in enumerate(yarnref.RING_LAYOUTS):
    sched = ring_schedule(T, P, layout)
    ax.bar(np.arange(P) + (k - 1) * width, sched.work / sched.work.mean(), width, label=f"{layout} (ring time x{sched.step_imbalance:.2f})")
    print(f"{layout:<11} busiest / mean = {sched.imbalance:.3f}, ring time / ideal = {sched.step_imbalance:.3f}")
ax.axhline(1.0, color="k", lw=0.8)
ax.set_xlabel("device")
ax.set_ylabel("causal work / mean")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Check: the ring is exactly dense attention
#
# For every layout and several world sizes, including lengths the layout does not divide (they are
# padded at the end; under the causal mask no real query sees the padding), the simulated ring
# equals single-device causal attention to float64 rounding, output and log-sum-exp alike.

# %%
for T in (37, 64):
    q = rng.standard_normal((1, 4, T, 16))
    k = rng.standard_normal((1, 2, T, 16))  # GQA: two query heads per kv head
    v = rng.standard_normal((1, 2, T, 16))
    dense, dense_lse = yarnref.attention(q, k, v, causal=True, return_lse=True)
    for layout in yarnref.RING_LAYOUTS:
        for P in (1, 2, 3, 4):
            out, lse = yarnref.ring_attention(q, k, v, P, layout, return_lse=True)
            assert np.abs(out - dense).max() < 1e-12, (T, layout, P)
            assert np.abs(lse - dense_lse).max() < 1e-12, (T, layout, P)
print("ring attention == dense causal attention for every layout and world size")

# %% [markdown]
# The same ring carries Dual Chunk Attention (each device rotates its queries and keys to their DCA
# positions once; the parts are the key runs cut at chunk borders) and vertical-slash sparse
# attention (the global column and diagonal lists restricted to each pair of shards):

# %%
T = 50
q, k, v = (rng.standard_normal((1, 2, T, 16)) for _ in range(3))
inv_freq = yarnref.base_inv_freq(16, 10000.0)
single = yarnref.dca_attention(q, k, v, inv_freq, 12, 4)
ringed = yarnref.ring_dca_attention(q, k, v, inv_freq, 12, 4, world_size=4, layout="zigzag")
assert np.abs(single - ringed).max() < 1e-12
print("ring DCA == single-device DCA")

# %% [markdown]
# ## Exercise
#
# 1. Plot `step_owner` for the striped layout. Why is its work balanced to within one diagonal per step,
#    and why does device 0 do slightly less than device $P-1$?
# 2. With `ring_schedule`, find the world size at which the contiguous layout's ring takes 1.9 times
#    as long as a perfectly balanced one.
# 3. On a machine with two GPUs, run `torchrun --nproc-per-node 2 benchmarks/bench_ring.py` and
#    compare the measured time of the contiguous and zig-zag rings with what `step_imbalance`
#    predicts.
