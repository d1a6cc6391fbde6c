# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 9: Dual Chunk Attention (DCA)
#
# **Paper:** C. An, F. Huang, J. Zhang, S. Gong, X. Qiu, C. Zhou, L. Kong, *Training-Free Long-Context
# Scaling of Large Language Models* (ChunkLlama), ICML 2024,
# [arXiv:2402.17463](https://arxiv.org/abs/2402.17463), section 3. As run in production:
# *Qwen2.5-1M Technical Report*, [arXiv:2501.15383](https://arxiv.org/abs/2501.15383), through vLLM's
# dual-chunk attention backend.
#
# **Code:** `yarnref/dca.py` (`dca_position_ids`, `dca_relative_positions`, `dca_attention`,
# `dca_config`).
#
# Lessons 3-7 changed the *frequencies* so that long distances map to angles the model knows. DCA leaves the
# frequencies alone and changes the *positions*: it never lets a query see a relative distance larger than
# the one it was trained on. No fine-tuning is needed.

# %% [markdown]
# ## The method
#
# Cut the sequence into chunks of $L$ tokens. yarnref uses the config names of ChunkLlama, vLLM and
# Qwen2.5-1M: `chunk_size` $C$ is the largest position a query may take, `local_size` is $C - L$, so
# $L = C - \mathrm{local\_size}$ (the paper's $s$, with $C = c - 1$ for its pretraining length $c$).
#
# A key at absolute position $j$ gets its position inside its chunk; a query at $i$ gets one of three
# positions, depending on how far back the key's chunk is (paper Eqs. 2-7):
#
# $$P_k(j) = j \bmod L, \qquad
#   P_q^{\mathrm{intra}}(i) = i \bmod L, \qquad
#   P_q^{\mathrm{succ}}(i) = \min(i \bmod L + L,\ C), \qquad
#   P_q^{\mathrm{inter}} = \min(2L - 1,\ C).$$
#
# The part is chosen by the chunk distance $\lfloor i/L\rfloor - \lfloor j/L\rfloor$: 0 is *intra*, 1 is
# *successive*, 2 or more is *inter*, and the effective relative distance is (Eq. 8)
#
# $$M_{ij} = P_q^{\mathrm{part}(i,j)}(i) - P_k(j) \in [0, C].$$
#
# Intra distances are exact ($M_{ij} = i - j$); successive ones are exact for the first `local_size`
# queries of a chunk and then saturate; inter ones are $C - P_k(j)$. Attention is one softmax over all
# keys $j \le i$ (Eq. 9), each logit computed with its part's query rotation:
#
# $$o_i = \sum_{j \le i} \operatorname{softmax}_j\!\Big(\tfrac{1}{\sqrt d}\,
#       \big\langle R_{P_q^{\mathrm{part}(i,j)}(i)}\,\boldsymbol q_i,\ R_{P_k(j)}\,\boldsymbol k_j\big\rangle\Big)\,\boldsymbol v_j.$$
#
# Implementations run the three parts as three flash-attention calls and merge them by their
# log-sum-exps $\ell_p = \log\sum_{j\in K_p} e^{s_{ij}}$ (paper Appendix A.2, Algorithm 1):
# $o = \sum_p e^{\ell_p - \ell}\,o_p$ with $\ell = \log\sum_p e^{\ell_p}$. That is the same softmax, which we
# check below.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import yarnref
from yarnref.dca import qwen_attention_scale

rng = np.random.default_rng(0)

# %% [markdown]
# ## Position ids, worked by hand
#
# A toy configuration: `chunk_size` $C = 8$, `local_size` 2, so chunks of $L = 6$ tokens, over 20 tokens.
# `dca_position_ids` returns every table (the two `*_critical` ones, unclamped, are used only by the
# sparse estimation of lesson 10).

# %%
C, local, n = 8, 2, 20
ids = yarnref.dca_position_ids(n, C, local)
print("token            ", np.arange(n))
for name in ("key", "intra", "successive", "inter"):
    print(f"{name:<17}", getattr(ids, name))

# %% [markdown]
# ## Plot: the relative-distance matrix
#
# Left, plain RoPE: query $i$ sees key $j$ at distance $i - j$, up to 19 here. Right, DCA
# (`dca_relative_positions`): the same triangle, but no entry exceeds $C = 8$. The dashed lines are the
# chunk boundaries; the blocks one chunk below the diagonal are the successive part, the rest the inter
# part.

# %%
M = yarnref.dca_relative_positions(n, C, local)  # (n, n), -1 above the diagonal
i, j = np.indices((n, n))
plain = np.where(j <= i, i - j, -1)

fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
for ax, matrix, title in ((axes[0], plain, "RoPE: $i - j$"), (axes[1], M, f"DCA: $M_{{ij}}$ (C={C}, L={C - local})")):
    shown = np.ma.masked_less(matrix, 0)
    image = ax.imshow(shown, cmap="viridis", vmin=0, vmax=n - 1)
    for (row, col), value in np.ndenumerate(matrix):
        if value >= 0:
            ax.text(col, row, value, ha="center", va="center", fontsize=6,
                    color="white" if value < 0.6 * (n - 1) else "black")
    ax.set(title=title, xlabel="key j", ylabel="query i", xticks=range(0, n, 5), yticks=range(0, n, 5))
for boundary in range(C - local, n, C - local):
    for line in (axes[1].axvline, axes[1].axhline):
        line(boundary - 0.5, color="red", lw=0.8, ls="--")
fig.colorbar(image, ax=axes, shrink=0.9, label="relative distance")
plt.show()

# %% [markdown]
# ## Check: the distances
#
# Every visible entry lies in $[0, C]$ and reaches $C$; intra-chunk entries are the true distances; and
# on the first $C + 1$ tokens *every* entry is the true distance.

# %%
visible = j <= i
same_chunk = (i // (C - local)) == (j // (C - local))
assert M[visible].min() == 0 and M[visible].max() == C
assert np.array_equal(M[visible & same_chunk], (i - j)[visible & same_chunk])
assert np.all(M[~visible] == -1)
assert np.array_equal(M[: C + 1, : C + 1], plain[: C + 1, : C + 1]), "exact up to C + 1 tokens"
assert not np.array_equal(M[: C + 2, : C + 2], plain[: C + 2, : C + 2]), "and no further"
print("largest effective distance:", M.max(), "| largest true distance:", plain.max())

# %% [markdown]
# ## Check: DCA is RoPE attention on up to $C + 1$ tokens
#
# Since every distance is the true one there, `dca_attention` (which takes **un-rotated** q and k: it
# rotates each query to several positions) must equal plain causal RoPE attention built from lesson 1's
# pieces and `yarnref.attention`. One token more and they differ. We use grouped-query attention (4 query
# heads, 2 kv heads) and partial rotary (24 of 32 features).

# %%
C, local = 16, 4  # chunks of L = 12 tokens
inv_freq = yarnref.base_inv_freq(24, 10000.0)  # r = 24 of head_dim = 32
q = rng.standard_normal((1, 4, 40, 32))  # (batch, q_heads, seq, head_dim)
k = rng.standard_normal((1, 2, 40, 32))  # (batch, kv_heads, seq, head_dim)
v = rng.standard_normal((1, 2, 40, 32))


def rope_attention(q, k, v):
    cos, sin = yarnref.rope_cos_sin(inv_freq, np.arange(k.shape[2]))
    return yarnref.attention(yarnref.apply_rope(q, cos, sin), yarnref.apply_rope(k, cos, sin), v, causal=True)


for n in range(1, C + 2):  # every length up to C + 1
    dca = yarnref.dca_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n], inv_freq, C, local)
    assert np.allclose(dca, rope_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n]), rtol=0, atol=1e-12), n
n = C + 2
dca = yarnref.dca_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n], inv_freq, C, local)
difference = np.abs(dca - rope_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n])).max(axis=(0, 1, 3))
assert difference[:-1].max() < 1e-12 and difference[-1] > 1e-6, difference
print(f"equal to RoPE attention up to {C + 1} tokens; at {C + 2} the last query differs by {difference[-1]:.3g}")

# %% [markdown]
# ## Check: the union softmax equals the LSE merge
#
# `form="union"` computes Eq. 9 directly: one softmax over the logits of all three parts. `form="merge"`
# runs each part as a separate `yarnref.attention` call per chunk (the intra one causal, the others not)
# and merges them with `yarnref.merge_attention`, as vLLM does. 40 tokens make four chunks (the last one
# short), so all three parts appear. We also check chunked prefill and decode: the last queries alone,
# against the whole cache, give the last rows of the full prefill.

# %%
union, lse_union = yarnref.dca_attention(q, k, v, inv_freq, C, local, form="union", return_lse=True)
merged, lse_merged = yarnref.dca_attention(q, k, v, inv_freq, C, local, form="merge", return_lse=True)
assert np.allclose(union, merged, rtol=0, atol=1e-12) and np.allclose(lse_union, lse_merged, rtol=0, atol=1e-12)

for q_len in (17, 1):  # a prefill chunk that starts mid-chunk, and one decode step
    tail = yarnref.dca_attention(q[:, :, -q_len:], k, v, inv_freq, C, local)
    assert np.allclose(tail, union[:, :, -q_len:], rtol=0, atol=1e-12), q_len
print("union == merge; chunked prefill and decode == the rows of the full prefill")
print("max |DCA - RoPE attention| over 40 tokens:", float(np.abs(union - rope_attention(q, k, v)).max()))

# %% [markdown]
# ## Qwen2.5-1M
#
# Qwen2.5-7B-Instruct-1M and 14B-Instruct-1M ship a `dual_chunk_attention_config` in their `config.json`
# ($C = 262144$, `local_size` 8192, so $L = 253952$) next to `max_position_embeddings` = 1010000 and
# `rope_theta` = $10^7$; vLLM then ignores any `rope_scaling`. The preset holds those keys, and
# `dca_config` reads and validates them. A
# 1M-token prompt is four chunks, and no query ever sees a distance beyond 262144, the length the models
# were trained to.
#
# vLLM adds a temperature ($\texttt{original\_max\_position\_embeddings} = O > 0$): queries and keys are
# each multiplied by $s(n) = \max\!\big(1,\ 0.1 \ln(n/O) + 1\big)$ for the sequence length $n$, so the
# logits grow by $s^2$, YaRN's $(0.1\ln s + 1)^2$ with $s$ set per request. yarnref offers it as
# `dca_attention(..., temperature="qwen")`.

# %%
qwen_config = yarnref.get_preset("qwen2.5-7b-instruct-1m")  # the RoPE-relevant keys of its config.json
print("dual_chunk_attention_config:", qwen_config["dual_chunk_attention_config"])
print("max_position_embeddings:", qwen_config["max_position_embeddings"], "| rope_theta:", qwen_config["rope_theta"])
dca = yarnref.dca_config(qwen_config)
print("chunk length L =", dca.chunk_len, "| chunks in a 1M prompt:", -(-1_000_000 // dca.chunk_len))
for length in (131072, 262144, 524288, 1010000):
    s = qwen_attention_scale(length, dca.original_max_position_embeddings)
    print(f"n = {length:>9,}: s = {s:.4f}, logits x {s * s:.4f}")
assert dca.chunk_len == 253952 and dca.temperature == "qwen"
assert qwen_attention_scale(262144, 262144) == 1.0 < qwen_attention_scale(1010000, 262144)

# %% [markdown]
# ## On a real model: SmolLM2-135M
#
# Everything above ran on random tensors. Now the same `dca_attention` runs inside a real model:
# SmolLM2-135M-Instruct (trained on 8192-token windows) through transformers' own Llama code, with
# yarnref plugged in as its attention (`yarnref.models`, lesson 2). A CPU cannot run this model past
# 8192 tokens in a few minutes, so we shrink DCA instead of growing the input: over 1024 tokens of the
# King James Bible, `chunk_size` 512, 256 and 128 cap every distance the model sees at $C$, like a model
# whose window is $C$. Two references: plain RoPE over the whole 1024 tokens (every distance exact), and
# plain RoPE over disjoint windows of 256 tokens (a model that simply cannot see farther back than
# 256 tokens, scoring the same text):
#
# $$\mathrm{PPL} = \exp\Big(\frac{1}{|\mathcal S|}\sum_{t\in\mathcal S} -\log p(x_t \mid x_{<t})\Big),
#   \qquad \max_{i, j} M_{ij} = C \ \text{ with DCA}.$$

# %%
import json
from pathlib import Path

from yarnref.models.corpus import read_text
from yarnref.models.evaluate import perplexity
from yarnref.models.loading import load_model
from yarnref.models.methods import method_spec

model, tokenizer = load_model("smollm2-135m", progress=False)  # float32 on the CPU
text = read_text("kjv")  # the King James Bible, Project Gutenberg #10 (public domain)
real_ppl = {"RoPE, 1024": perplexity(model, tokenizer, text, 1024, method_spec("none", model.config), max_windows=1)}
for chunk in (512, 256, 128):
    spec = method_spec("dca", model.config, dca_chunk=chunk, dca_local=chunk // 8)  # ChunkLlama's local window: C/8
    real_ppl[f"DCA C={chunk}, 1024"] = perplexity(model, tokenizer, text, 1024, spec, max_windows=1)
real_ppl["RoPE, 4 x 256"] = perplexity(model, tokenizer, text, 256, method_spec("none", model.config), max_windows=4)
for name, r in real_ppl.items():
    print(f"{name:<16} perplexity {r['perplexity']:.3f} ({r['tokens']} tokens scored)")
largest = {chunk: int(yarnref.dca_relative_positions(1024, chunk, chunk // 8).max()) for chunk in (512, 256, 128)}
print("largest distance DCA shows the model:", largest, "of 1023")

# %% [markdown]
# DCA with $C = 256$ reads the whole 1024 tokens and beats the model cut to 256-token windows, though
# it never shows a distance above 256: the remapped far keys still carry information. It costs a
# little against full RoPE attention, more as $C$ shrinks. (Lesson 14 shows that a 256-token window
# *sliding* by 128 reads this text about as well as DCA does: inside the training window DCA is not a
# gain. Its gain is past the window.)
#
# Past the window is where the GPU study measured it: SmolLM2-135M on one H200 in bfloat16, 2K to 64K
# tokens, DCA with ChunkLlama's default sizes for this model (`chunk_size` 6144, `local_size` 1024),
# DCA with Qwen2.5-1M's temperature (`dca-yarn`), and no scaling. The raw results are
# `docs/data/smollm2_135m_study_2026-11-28.json`.

# %%
study = json.loads(Path("../docs/data/smollm2_135m_study_2026-11-28.json").read_text())
study_ppl = {(r["method"], r["length"]): r["perplexity"] for r in study["perplexity"] if not r["sparse"]}
study_lengths = sorted({n for _, n in study_ppl})
found = {}
for r in study["passkey"]:
    found.setdefault((r["method"], r["length"]), []).append(r["correct"])
passkey_lengths = sorted({n for _, n in found})
shown_methods = ("none", "dca", "dca-yarn")
print(f"measured {study['date']} on {study['device']} ({study['dtype']})")
for name in shown_methods:
    print(f"{name:<9} perplexity", " ".join(f"{study_ppl[name, n]:8.3g}" for n in study_lengths),
          "| passkey", " ".join(f"{sum(found[name, n])}/{len(found[name, n])}" for n in passkey_lengths))

fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
names = list(real_ppl)
axes[0].barh(names, [real_ppl[k]["perplexity"] for k in names], color=["tab:blue", "tab:green", "tab:green", "tab:green", "tab:gray"])
axes[0].invert_yaxis()
axes[0].set(xlabel="perplexity", title="CPU: 1024 tokens of the KJV, float32")
for name in shown_methods:
    axes[1].plot(study_lengths, [study_ppl[name, n] for n in study_lengths], "o-", label=name)
    axes[2].plot(passkey_lengths, [np.mean(found[name, n]) for n in passkey_lengths], "o-", label=name)
for ax in axes[1:]:
    ax.axvline(8192, color="gray", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.legend(fontsize=8)
axes[1].set_xticks(study_lengths, [f"{n // 1024}K" for n in study_lengths])
axes[2].set_xticks(passkey_lengths, [f"{n // 1024}K" for n in passkey_lengths])
axes[1].set(yscale="log", xlabel="length (dashed: training window)", ylabel="perplexity",
            title=f"GPU study: perplexity, {study['date'][:10]}")
axes[2].set(xlabel="length", ylabel="passkey accuracy (10 depths)", ylim=(-0.05, 1.05),
            title=f"GPU study: passkey, {study['device']}")
plt.show()

# %% [markdown]
# No scaling breaks past 8K (20 at 16K, over 1000 at 64K). DCA holds the model's own 8K perplexity to
# 64K, with no training: no query ever sees a distance it was not trained on. Passkey retrieval is
# another matter: DCA's accuracy dips at 16K-32K and recovers at 64K, a pattern the study reports and
# does not explain; perplexity and retrieval measure different things (lesson 14).
#
# ## Check: DCA on the real model

# %%
assert all(largest[chunk] == chunk for chunk in largest), "DCA never shows a distance above chunk_size"
p = {k: r["perplexity"] for k, r in real_ppl.items()}
assert p["RoPE, 1024"] < p["DCA C=512, 1024"] < p["DCA C=256, 1024"] < p["DCA C=128, 1024"], "a smaller chunk costs more"
assert p["DCA C=256, 1024"] < p["RoPE, 4 x 256"], "DCA uses the text beyond its largest distance"
past = [n for n in study_lengths if n > 8192]
assert all(study_ppl["none", n] > 2 * study_ppl["none", 8192] for n in past), "no scaling fails past the window"
assert all(study_ppl["dca", n] < 1.05 * study_ppl["none", 8192] for n in past), "DCA holds the 8K level"
within_chunk = [n for n in study_lengths if n <= 6145]  # DCA is RoPE up to C + 1: equal to bfloat16 rounding
assert all(abs(study_ppl["dca", n] - study_ppl["none", n]) < 1e-3 * study_ppl["none", n] for n in within_chunk)
print("checks on the real model passed")

# %% [markdown]
# ## On a GPU (optional)
#
# With the torch backend, `yarnref.dca_attention` runs on the GPU; here a 4096-token prefill with three
# chunks of a scaled-down configuration, against the float64 spec. Skipped without CUDA.

# %%
gpu = "torch" in yarnref.gpu_backends()  # the torch backend with a CUDA device
if gpu:
    import torch
if not gpu:
    print("No CUDA device for the torch backend here: the GPU cell is skipped.")

if gpu:
    qg = rng.standard_normal((1, 8, 4096, 64))
    kg, vg = rng.standard_normal((2, 1, 2, 4096, 64))
    freqs = yarnref.base_inv_freq(64, 1e6)
    expected = yarnref.dca_attention(qg, kg, vg, freqs, 1536, 128)  # the spec, on the CPU
    with yarnref.use_backend("torch", device="cuda") as backend:
        out = yarnref.dca_attention(qg, kg, vg, freqs, 1536, 128)
        assert np.allclose(backend.to_numpy(out), expected, rtol=0, atol=1e-8)
        print("torch on", out.device, "matches the spec")

# %% [markdown]
# ## Exercise
#
# 1. With `yarnref.dca_relative_positions(seq_len, chunk_size, local_size)`, find the largest distance any
#    query ever sees for `seq_len = 4 * chunk_size`, and compare it with `chunk_size + local_size`. Which of
#    the three parts (intra, successive, inter) produces it?
# 2. Call `yarnref.dca_attention` with a `chunk_size` equal to the sequence length and compare it with
#    causal RoPE attention (`yarnref.attention` on rotated q and k). Which check cell above says they must
#    agree, and up to what length?

# %% [markdown]
# ## Summary
#
# * DCA remaps positions so that every effective distance is at most `chunk_size` (checked), and intra-chunk
#   distances stay exact.
# * On up to `chunk_size + 1` tokens it *is* RoPE attention (checked, with GQA and partial rotary).
# * The three-part LSE merge that the kernels run is the union softmax of Eq. 9 (checked), and chunked
#   prefill and decode are the same call on the last queries.
# * On SmolLM2-135M it reads past its largest distance (checked on the CPU); on a GPU it holds the
#   model's 8K perplexity to 64K tokens with no training, where plain RoPE fails (the stored study, checked).
# * **Lesson 10** makes the 1M-token prefill affordable with vertical-slash sparse attention, estimated per
#   DCA segment as Qwen2.5-1M does.
