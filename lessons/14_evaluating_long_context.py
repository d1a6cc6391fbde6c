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
# # Lesson 14: Evaluating long context: perplexity by length, passkey retrieval, lost in the middle
#
# **Papers:** Peng et al., *YaRN* ([arXiv:2309.00071](https://arxiv.org/abs/2309.00071), section 4:
# perplexity by length and passkey); Press, Smith and Lewis, *Train Short, Test Long* (ALiBi,
# [arXiv:2108.12409](https://arxiv.org/abs/2108.12409), the sliding-window evaluation); Mohtashami
# and Jaggi, *Landmark Attention* ([arXiv:2305.16300](https://arxiv.org/abs/2305.16300), the passkey
# test); Liu et al., *Lost in the Middle: How Language Models Use Long Contexts*
# ([arXiv:2307.03172](https://arxiv.org/abs/2307.03172)).
#
# **Code:** `yarnref/models/evaluate.py` (`perplexity`, `passkey`, `passkey_prompt`), and the
# study `scripts/study_real_model.py` whose GPU results are in `docs/data/`.
#
# Every lesson so far checked a method against its paper. This one asks what the papers' tables
# ask: does the *model* still work past its training window? Three measurements answer it, and
# each can mislead if it is not set up with care.
#
# * **Perplexity by length.** A method that breaks the model shows as a perplexity that explodes
#   past $T_{\mathrm{train}}$. But a perplexity averages over tokens, most of which see a short
#   context, so a flat curve alone does not prove the far context is *used*.
# * **Passkey retrieval.** A five-digit key is hidden at a depth of a long filler text; the model
#   must repeat it. This tests whether one fact can be fetched from far back.
# * **Lost in the middle.** Accuracy as a function of *where* the fact sits. Liu et al. found a
#   U-shape on multi-document question answering: facts at the start and end of the context are
#   found, facts in the middle are missed.

# %% [markdown]
# ## The equations
#
# With $\ell_t = -\log p(x_t \mid \text{the tokens before } t \text{ in its window})$, the perplexity
# over a set $\mathcal S$ of scored tokens is
#
# $$\mathrm{PPL}(\mathcal S) = \exp\Big(\frac{1}{|\mathcal S|}\sum_{t \in \mathcal S} \ell_t\Big).$$
#
# The set and the context each token sees depend on the protocol. **Disjoint windows** of $N$
# tokens: window $w$ is $[wN, (w+1)N)$ and scores its tokens $2..N$, so a token sees between 0 and
# $N-1$ tokens of context. **Sliding windows** with stride $S$: window $w$ is $[wS, wS + N)$; the first
# scores its tokens $2..N$ and every later one only its last $S$, so every token is scored once and,
# after the first window, sees at least $N - S$ tokens (positions counted from 0):
#
# $$\mathcal S_{\mathrm{disjoint}} = \bigcup_w \{wN + 1, \dots, wN + N - 1\}, \qquad
#   \mathcal S_{\mathrm{sliding}} = \{1, \dots, N - 1\} \cup \bigcup_{w \ge 1} \{wS + N - S, \dots, wS + N - 1\}.$$
#
# Past the training window $T_{\mathrm{train}}$ the tokens split into those *within* it and those
# *beyond* it; at length $N$ a disjoint window's perplexity mixes the two, with the share
# $(N - T_{\mathrm{train}})/(N - 1)$ of its tokens at positions the model never saw:
#
# $$\mathrm{PPL}_N = \exp\Big(\tfrac{T_{\mathrm{train}} - 1}{N - 1}\,\overline{\ell}_{\mathrm{within}}
#   + \tfrac{N - T_{\mathrm{train}}}{N - 1}\,\overline{\ell}_{\mathrm{beyond}}\Big).$$
#
# **Passkey accuracy** at length $N$ and relative depth $d$ over $K$ trials with keys $k_i$ and
# greedy answers $a_i$:
#
# $$\mathrm{acc}(N, d) = \frac{1}{K}\sum_{i=1}^{K} \mathbb 1[a_i = k_i], \qquad
#   \text{lost in the middle:}\ \ \mathrm{acc}(N, \tfrac12) < \min\big(\mathrm{acc}(N, 0),\ \mathrm{acc}(N, 1)\big).$$
#
# SmolLM2-135M was trained on $T_{\mathrm{train}} = 8192$ tokens. On a CPU a forward pass over 4K
# tokens already takes close to a minute, so the cells below measure the instruments and their
# protocols at up to 1024 tokens, and the *beyond the window* results come from the GPU study
# (2K to 64K, one H200) stored in `docs/data/`.

# %%
# %matplotlib inline
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import yarnref
from yarnref.models.corpus import read_text
from yarnref.models.evaluate import passkey, perplexity, tokenize
from yarnref.models.loading import load_model
from yarnref.models.methods import method_spec
from yarnref.models.plug import unplug

model, tokenizer = load_model("smollm2-135m", progress=False)  # float32 on the CPU
text = read_text("kjv")  # the King James Bible, Project Gutenberg #10 (public domain)
T_TRAIN = model.config.max_position_embeddings
print(model.config.num_hidden_layers, "layers;", T_TRAIN, "training window")

# %% [markdown]
# ## The instrument first: yarnref's perplexity is transformers' loss
#
# A measurement is only as good as its instrument. With no scaling, `perplexity` must give what
# transformers' own model and its own loss give on the same 512 tokens (transformers shifts the
# labels inside and averages the 511 predictions).

# %%
ids = torch.tensor(tokenize(tokenizer, text, 512)[:512])[None]  # (1, 512)
unplug(model)  # transformers' own rotary module and attention
with torch.no_grad():
    reference = float(torch.exp(model(ids, labels=ids).loss))
ours = perplexity(model, tokenizer, text, 512, method_spec("none", model.config), max_windows=1)
print(f"transformers: {reference:.6f}   yarnref: {ours['perplexity']:.6f}   ({ours['tokens']} tokens scored)")

# %% [markdown]
# ## Perplexity by window length, and the protocol
#
# The same first 1024 tokens of the text, cut into disjoint windows of 256, 512 and 1024 tokens, and
# read with windows of 256 sliding by 128. Longer windows give each token more context, so the
# perplexity falls; the sliding windows give every token at least 128 tokens of context at the cost of
# 7 forward passes instead of 4. A table that does not say which protocol it used cannot be compared
# with another.

# %%
none = method_spec("none", model.config)
by_length = {n: perplexity(model, tokenizer, text, n, none, max_windows=1024 // n) for n in (256, 512, 1024)}
sliding = perplexity(model, tokenizer, text, 256, none, stride=128, max_windows=7)
for n, r in by_length.items():
    print(f"disjoint {n:>4}: perplexity {r['perplexity']:.3f} over {r['tokens']} tokens in {r['windows']} windows")
print(f"sliding   256 by 128: perplexity {sliding['perplexity']:.3f} over {sliding['tokens']} tokens in {sliding['windows']} windows")

# %% [markdown]
# ### The methods inside the window
#
# At 1024 tokens nothing needs extending, so these numbers are each method's *cost*: YaRN x2
# interpolates the slow pairs and sharpens the softmax; DCA with `chunk_size` 256 never shows the
# model a distance above 256 (lesson 9).

# %%
methods = {
    "none": none,
    "yarn x2": method_spec("yarn", model.config, factor=2.0),
    "dca 256/32": method_spec("dca", model.config, dca_chunk=256, dca_local=32),
}
at_1024 = {"none": by_length[1024]}
at_1024 |= {name: perplexity(model, tokenizer, text, 1024, spec, max_windows=1) for name, spec in methods.items() if name != "none"}
for name, r in at_1024.items():
    print(f"{name:<11} {r['perplexity']:.3f}")

# %% [markdown]
# ### Beyond the window: the GPU study
#
# The study ran every method on one H200 in bfloat16 at 2K to 64K tokens (scaled methods at factor 8,
# DCA with `chunk_size` 6144, `local_size` 1024; disjoint windows, up to 256K tokens per length). Its raw
# results are `docs/data/smollm2_135m_study_2026-11-28.json`.

# %%
study = json.loads(Path("../docs/data/smollm2_135m_study_2026-11-28.json").read_text())
print(f"measured {study['date']} on {study['device']} ({study['dtype']}, torch {study['torch']}, "
      f"transformers {study['transformers']}); factor {study['factor']:g}")
dense = [r for r in study["perplexity"] if not r["sparse"]]
names = list(dict.fromkeys(r["method"] for r in dense))
gpu_lengths = sorted({r["length"] for r in dense})
gpu_ppl = {(r["method"], r["length"]): r["perplexity"] for r in dense}
print(f"{'method':<13}" + "".join(f"{n // 1024:>8}K" for n in gpu_lengths))
for name in names:
    print(f"{name:<13}" + "".join(f"{gpu_ppl[name, n]:>9.3g}" for n in gpu_lengths))

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
lengths = list(by_length)
left.plot(lengths, [by_length[n]["perplexity"] for n in lengths], "o-", label="none, disjoint windows")
left.plot([256], [sliding["perplexity"]], "s", label="none, windows of 256 sliding by 128")
for marker, name in zip("^v", ("yarn x2", "dca 256/32")):
    left.plot([1024], [at_1024[name]["perplexity"]], marker, label=name)
left.set(xscale="log", xticks=lengths, xticklabels=lengths, xlabel="window length N (tokens)", ylabel="perplexity",
         title="CPU: the first 1024 tokens of the KJV, float32")
left.legend(fontsize=8)
for name in names:
    right.plot(gpu_lengths, [gpu_ppl[name, n] for n in gpu_lengths], "o-", label=name, ms=3)
right.axvline(T_TRAIN, color="gray", ls="--", lw=1)
right.text(T_TRAIN * 1.05, 3e2, "training window", fontsize=8, color="gray")
right.set(xscale="log", yscale="log", xticks=gpu_lengths, xticklabels=[f"{n // 1024}K" for n in gpu_lengths],
          xlabel="window length N", ylabel="perplexity", title=f"GPU study, {study['device']}, {study['date'][:10]}")
right.legend(fontsize=7, ncol=2)
for ax in (left, right):
    ax.xaxis.set_minor_locator(plt.NullLocator())  # only the measured lengths as ticks
plt.show()

# %% [markdown]
# Without scaling, the perplexity explodes past 8K (the slow rotary pairs reach angles never seen in
# training, lesson 2); Position Interpolation is flat but ten times too high; YaRN is flat at about 11,
# its price inside the window; DCA stays at the model's own 8K level all the way to 64K.
#
# ## Passkey retrieval by depth
#
# On the CPU: 256 and 512 tokens, five depths, one key each, without scaling and with DCA at
# `chunk_size` 128. With DCA the key at depth 0 of a 512-token prompt lies about 450 tokens back,
# farther than any distance DCA lets the model see.

# %%
depths = [0.0, 0.25, 0.5, 0.75, 1.0]
cpu_passkey = {
    "none": passkey(model, tokenizer, [256, 512], depths, none, trials=1, seed=0),
    "dca 128/16": passkey(model, tokenizer, [256, 512], depths, method_spec("dca", model.config, dca_chunk=128, dca_local=16),
                          trials=1, seed=0),
}
for name, result in cpu_passkey.items():
    print(f"{name:<11} accuracy {result['accuracy']:.2f}; depth 0 of 512 answered {result['results'][5]['answers'][0]!r} "
          f"for key {result['results'][5]['keys'][0]}")


def accuracy_grid(rows, lengths, depths):
    """(lengths, depths) array of accuracy from passkey result rows."""
    cell = {(r["length"], round(r["depth"], 2)): r["correct"] / r["trials"] for r in rows}
    return np.array([[cell[n, round(d, 2)] for d in depths] for n in lengths])


# %% [markdown]
# The study's passkey results: one random key per depth, ten depths, five lengths, every method.
# Each panel is a (length x depth) grid: white cells are keys found.

# %%
study_depths = sorted({r["depth"] for r in study["passkey"]})
study_lengths = sorted({r["length"] for r in study["passkey"]})
grids = {name: accuracy_grid([r for r in study["passkey"] if r["method"] == name], study_lengths, study_depths) for name in names}

fig, axes = plt.subplots(2, 5, figsize=(13, 5), layout="constrained")
panels = [(f"CPU: {name}", accuracy_grid(r["results"], [256, 512], depths), [256, 512], depths)
          for name, r in cpu_passkey.items()]
panels += [(f"GPU: {name}", grids[name], study_lengths, study_depths) for name in names]
for ax, (title, grid, ls, ds) in zip(axes.flat, panels):
    ax.imshow(grid, vmin=0, vmax=1, cmap="gray", aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(len(ds) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(ls) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="tab:gray", lw=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title(title, fontsize=9)
    ax.set_yticks(range(len(ls)), [f"{n // 1024}K" if n >= 1024 else str(n) for n in ls], fontsize=7)
    ax.set_xticks([0, len(ds) - 1], ["0", "1"], fontsize=7)
    ax.set_xlabel("depth", fontsize=8)
fig.suptitle(f"passkey found (white) by length and depth; GPU rows: {study['device']}, {study['date'][:10]}", fontsize=10)
plt.show()

# %% [markdown]
# ## Lost in the middle?
#
# Pool the study's keys over lengths and plot the accuracy against depth, per method (Position
# Interpolation, which finds no key anywhere, is left out). A U-shape would show the middle being lost.

# %%
beyond = [r for r in study["passkey"] if r["method"] != "linear"]
by_depth = np.array([np.mean([r["correct"] for r in beyond if r["depth"] == d]) for d in study_depths])
fig, ax = plt.subplots(figsize=(6.5, 3.6))
for name in names:
    if name != "linear":
        ax.plot(study_depths, grids[name].mean(axis=0), "-", lw=0.8, alpha=0.6, label=name)
ax.plot(study_depths, by_depth, "k-o", lw=2, label="all but linear")
ax.set(xlabel="depth of the key (0: farthest from the question)", ylabel="accuracy over 4K-64K",
       title=f"passkey accuracy by depth, {study['device']}, {study['date'][:10]}", ylim=(-0.05, 1.05))
ax.legend(fontsize=7, ncol=2)
plt.show()
print("pooled accuracy by depth:", np.round(by_depth, 2))

# %% [markdown]
# On this model and this task there is no U-shape. The hardest depth is 0, the key farthest from the
# question; the middle is not worse than the end. The passkey is a copy task with a filler that is
# trivially unlike the key, which is easier than Liu et al.'s question answering over similar
# documents, and a 135M model has its own profile. The lesson: lost in the middle is a *measurement*
# to make on each model and task, not a law; with one key per cell, as here, a cell is worth
# about $\pm$ one key, so only patterns over many cells count.
#
# ## Check

# %%
assert abs(ours["perplexity"] - reference) < 1e-4 * reference, "yarnref's perplexity is transformers' own loss"
assert ours["tokens"] == 511 and by_length[256]["tokens"] == 4 * 255 and sliding["tokens"] == 255 + 6 * 128
ppl = [by_length[n]["perplexity"] for n in (256, 512, 1024)]
assert ppl[0] > ppl[1] > ppl[2], "more context per token, lower perplexity"
assert sliding["perplexity"] < by_length[256]["perplexity"], "sliding windows give every token more context"
assert at_1024["none"]["perplexity"] < at_1024["yarn x2"]["perplexity"], "inside the window YaRN only costs"
for result in cpu_passkey.values():
    assert [(r["length"], r["depth"]) for r in result["results"]] == [(n, d) for n in (256, 512) for d in depths]
    assert all(r["trials"] == 1 and r["correct"] in (0, 1) and len(r["keys"]) == 1 for r in result["results"])
    assert result["accuracy"] == np.mean([r["correct"] for r in result["results"]])
assert cpu_passkey["none"]["accuracy"] == 1.0, "inside the window every key is found"
assert cpu_passkey["dca 128/16"]["results"][5]["correct"] == 1, "DCA finds a key beyond its largest distance"
# the GPU study: the failure past the window and its cures
beyond_lengths = [n for n in gpu_lengths if n > T_TRAIN]
assert all(gpu_ppl["none", n] > 2 * gpu_ppl["none", T_TRAIN] for n in beyond_lengths), "no scaling breaks past 8K"
assert all(gpu_ppl["yarn", n] < gpu_ppl["none", n] for n in beyond_lengths), "YaRN beats no scaling past the window"
assert all(gpu_ppl["dca", n] < 1.05 * gpu_ppl["none", T_TRAIN] for n in [T_TRAIN, *beyond_lengths]), "DCA holds the 8K level to 64K"
assert grids["none"][study_lengths.index(4096)].all() and not grids["none"][[n > T_TRAIN for n in study_lengths]].any()
assert by_depth.argmin() == 0, "the key farthest back is the hardest to find"
print("all checks passed")

# %% [markdown]
# ## Exercise
#
# 1. Slide windows of 256 by 64, then by 32 (`stride=`). How close does the perplexity come to one
#    disjoint window of 1024? What does each stride cost in forward passes?
# 2. Run the CPU passkey with DCA at `dca_chunk=64, dca_local=8` and three keys per cell (`trials=3`).
#    Which depths are lost first?
# 3. From the study JSON, split the perplexity of `none` at 16K into the share of tokens within and
#    beyond 8K (the equation above), assuming the within part is the 8K perplexity. What mean NLL must
#    the beyond tokens have?

# %% [markdown]
# ## On a GPU
#
# Where the torch backend has a CUDA device, this cell measures what the CPU cannot: 16K tokens, twice
# the training window, without scaling and with YaRN x2, and the passkey at 16K.

# %%
gpu = "torch" in yarnref.gpu_backends()  # the torch backend with a CUDA device
if not gpu:
    print("No CUDA device for the torch backend here: the GPU cell is skipped.")

if gpu:
    gpu_model, gpu_tokenizer = load_model("smollm2-135m", device="cuda", dtype="bfloat16", progress=False)
    for name, spec in (("none", method_spec("none", gpu_model.config)), ("yarn x2", method_spec("yarn", gpu_model.config, factor=2.0))):
        r = perplexity(gpu_model, gpu_tokenizer, text, 16384, spec, max_windows=4)
        k = passkey(gpu_model, gpu_tokenizer, 16384, depths, spec, trials=2)
        print(f"{name}: perplexity {r['perplexity']:.2f} at 16K; passkey {k['accuracy']:.0%}")
