# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 12: The Qwen2.5-1M prefill, end to end
#
# **Papers:** A. Yang et al., *Qwen2.5-1M Technical Report*, [arXiv:2501.15383](https://arxiv.org/abs/2501.15383)
# (DCA for length extrapolation, MInference-style sparse prefill, chunked prefill); C. An et al.,
# *Training-Free Long-Context Scaling of Large Language Models* (DCA), [arXiv:2402.17463](https://arxiv.org/abs/2402.17463);
# H. Jiang et al., *MInference 1.0*, [arXiv:2407.02490](https://arxiv.org/abs/2407.02490).
#
# **Code:** `yarnref/prefill.py` (`qwen_prefill`, `qwen_sparse_plan`, `sparse_attention_config_for`),
# `yarnref/dca.py` (`dca_config`, `dca_segments`, `dca_attention`), `yarnref/sparse.py`
# (`vertical_slash_mask`).
#
# ## Motivation
#
# Lessons 9, 10 and 11 each solved one wall: DCA keeps every relative distance inside the trained range,
# vertical-slash sparsity cuts the quadratic work, chunked prefill bounds the memory. Qwen2.5-7B-Instruct-1M
# runs all three at once, the way vLLM's dual-chunk backend does. This lesson follows one prefill through
# the whole pipeline: the real config, the segments of a 1M-token input, the sparse plan per segment and
# part, and what the sparsity costs in accuracy against dense DCA.

# %% [markdown]
# ## The equations
#
# DCA splits the keys of a query in chunk $c$ (chunks of $L$ = `chunk_size - local_size` tokens) into
# three parts with their own position ids (lesson 9): *intra* (its own chunk, causal), *successive* (the
# previous chunk) and *inter* (all earlier chunks). Above `sparse_attention_threshold` tokens, each segment of queries estimates one
# vertical-slash pattern over its whole row (lesson 10), splits it into the three parts, runs three sparse
# attentions and merges them by their log-sum-exps:
#
# $$o = \sum_{p \in \{\text{intra},\,\text{succ},\,\text{inter}\}} e^{\ell_p - \ell}\, o_p ,\qquad
#   \ell = \log \sum_p e^{\ell_p}.$$
#
# The accuracy of a sparse result is its *recall*, the share of the dense softmax mass it keeps,
# $e^{\ell^{\mathrm{sparse}} - \ell^{\mathrm{dense}}}$, and its error is at most
# $2\,(1 - \mathrm{recall})\,\max|v|$.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import yarnref

config = yarnref.get_preset("qwen2.5-7b-instruct-1m")
dca = yarnref.dca_config(config)
print(dca)
total = 1_000_000
print(f"\nthe segments of a {total:,}-token prefill (chunk_size {dca.chunk_size:,}, local_size {dca.local_size:,}):")
for segment in yarnref.dca_segments(total, total, dca.chunk_size, dca.local_size):
    print(f"  queries [{segment.begin:>9,}, {segment.end:>9,}): intra {segment.intra}, "
          f"successive {segment.successive}, inter {segment.inter}")

# %% [markdown]
# ## A scaled-down run
#
# The same pipeline at 1920 tokens with `chunk_size` 512 and a local window of 16 (the real ratio of 32).
# DCA's chunks are `chunk_size - local_size` tokens long (253,952 above), so 1920 tokens are 3.9 chunks, as
# 1M tokens are for Qwen. Two query heads share one kv
# head (GQA), with the per-head budgets written as in `sparse_attention_config.json`. Head 0 is a *local*
# head: its queries and keys share a content direction, so RoPE's long-term decay concentrates its
# attention near the diagonal. Head 1 is *diffuse* (random q and k).

# %%
rng = np.random.default_rng(0)
T, d, chunk, local = 1920, 64, 512, 16
shared = rng.standard_normal(d)
q = rng.standard_normal((1, 2, T, d))  # (batch, q_heads, T, head_dim), not rotated: DCA rotates
k, v = rng.standard_normal((2, 1, 1, T, d))  # (batch, kv_heads, T, head_dim)
q[0, 0] += 1.5 * shared
k[0, 0] += 1.5 * shared
inv_freq = yarnref.base_inv_freq(d, config["rope_theta"])


def qwen_config(budgets, threshold=256):
    """A scaled-down dual_chunk_attention_config with one layer of per-head budgets {head: [pattern, v, s, score]}."""
    layer = {str(h): ["vertical_and_slash", vertical, slash, 0.9] for h, (vertical, slash) in enumerate(budgets)}
    return {"dual_chunk_attention_config": {
        "chunk_size": chunk, "local_size": local, "original_max_position_embeddings": 0,
        "sparse_attention_threshold": threshold, "sparse_attention_config": [layer]}}


dense, dense_lse = yarnref.dca_attention(q, k, v, inv_freq, chunk, local, return_lse=True)
print(yarnref.sparse_attention_config_for(qwen_config([(100, 200), (100, 200)]), layer=0))

# %% [markdown]
# ## The plan: which pairs each segment computes
#
# `qwen_sparse_plan` returns, per segment, the estimated indices and their split into the parts;
# `vertical_slash_mask(..., mode="kernel")` expands a part's indices into the 64 x 64 blocks and columns
# the CUDA kernel reads. Dense DCA computes every causal pair, $T(T+1)/2$ per head.

# %%
def computed_pairs(budgets):
    """Per head, the number of (query, key) pairs the sparse kernels read, over all segments and parts."""
    pairs = np.zeros(2, dtype=np.int64)
    for segment in yarnref.qwen_sparse_plan(q, k, inv_freq, qwen_config(budgets)):
        for part in segment.parts.values():
            mask = yarnref.vertical_slash_mask(segment.end - segment.begin, part.keys[1] - part.keys[0],
                                               part.vertical_idx, part.slash_idx, mode="kernel", causal=part.causal)
            pairs += mask.sum(axis=(0, 2, 3))  # (heads,)
    return pairs


dense_pairs = T * (T + 1) // 2
sweep = [(30, 50), (60, 100), (100, 200), (300, 600)]
fraction, recall, error = [], [], []
for budget in sweep:
    out, lse = yarnref.qwen_prefill(q, k, v, inv_freq, qwen_config([budget, budget]), return_lse=True)
    fraction.append(computed_pairs([budget, budget]) / dense_pairs)
    recall.append(np.exp(lse - dense_lse).mean(axis=(0, 2)))  # (heads,)
    error.append(np.abs(out - dense).max(axis=(0, 2, 3)))
    print(f"budget v={budget[0]:>3}, s={budget[1]:>3}: pairs computed {np.round(fraction[-1], 3)}, "
          f"mean recall {np.round(recall[-1], 3)}, max error {np.round(error[-1], 3)}  (heads local, diffuse)")
fraction, recall, error = map(np.array, (fraction, recall, error))

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.6))
for head, name in enumerate(("head 0: local", "head 1: diffuse")):
    ax.plot(fraction[:, head], recall[:, head], marker="o", label=name)
    for budget, x, y in zip(sweep, fraction[:, head], recall[:, head]):
        ax.annotate(f"{budget[0]}/{budget[1]}", (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points")
ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=0.8, label="no structure: recall = share of pairs")
ax.set(xlabel="share of the dense DCA pairs computed", ylabel="mean recall",
       title=f"Qwen2.5-1M pipeline, scaled down (T = {T})")
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Check: the pipeline against dense DCA
#
# * Below the threshold the pipeline *is* dense DCA (bit for bit); with full budgets it equals it.
# * Sparse: recall at most 1, error within $2(1-\mathrm{recall})\max|v|$, recall growing with the budget.
# * The local head keeps more of its mass than the diffuse one at the smallest budget, for fewer pairs.
# * Chunked prefill with dense budgets is still dense DCA.

# %%
below = yarnref.qwen_prefill(q, k, v, inv_freq, qwen_config([(30, 50), (30, 50)], threshold=4096))
assert np.array_equal(below, dense), "below the threshold: dense DCA"
full_budget = qwen_config([(T, T), (T, T)])
assert np.allclose(yarnref.qwen_prefill(q, k, v, inv_freq, full_budget), dense, rtol=0, atol=1e-12)
assert np.allclose(yarnref.qwen_prefill(q, k, v, inv_freq, full_budget, prefill_chunk_size=700), dense, rtol=0, atol=1e-12)

out, lse = yarnref.qwen_prefill(q, k, v, inv_freq, qwen_config([(60, 100), (60, 100)]), return_lse=True)
r = np.exp(lse - dense_lse)  # (1, heads, T)
assert np.all(r <= 1 + 1e-12)
assert np.all(np.abs(out - dense) <= 2 * (1 - r)[..., None] * np.abs(v).max() + 1e-12)
assert np.all(np.diff(recall, axis=0) >= -1e-9), "more budget, more recall"
assert recall[0, 0] > recall[0, 1] and fraction[0, 0] <= fraction[0, 1]
print("checked: dense DCA below the threshold and with full budgets; sparse error within its recall bound")

# %% [markdown]
# ## Exercise
#
# 1. Give the two heads different budgets, `[(300, 600), (30, 50)]`, as Qwen's table does for heads that
#    need more. Plot the recall of each query position: where in the sequence does the diffuse head lose
#    its mass, in the intra, successive or inter part?
# 2. Run `qwen_prefill` with `prefill_chunk_size=512` and the budget `(60, 100)`. Each chunk estimates its
#    own pattern: compare its recall with the one-shot prefill's. Which is closer to what vLLM computes for
#    a 1M-token request with `--max-num-batched-tokens 131072`?
#
# ## Summary
#
# * A 1M-token Qwen2.5 prefill is four DCA segments; each runs up to three sparse attentions merged by
#   their log-sum-exps (`qwen_prefill`), exactly dense DCA below the threshold or with full budgets (checked).
# * What sparsity costs is measured by recall, which bounds the error (checked); structured heads keep their
#   mass with few pairs, diffuse heads need budgets close to dense.
