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
# # Lesson 2: A real model past its training window
#
# **Papers:** Peng et al., *YaRN* ([arXiv:2309.00071](https://arxiv.org/abs/2309.00071)); An et al.,
# *Training-Free Long-Context Scaling of Large Language Models* (DCA,
# [arXiv:2402.17463](https://arxiv.org/abs/2402.17463)); Mohtashami and Jaggi, *Landmark Attention*
# (the passkey test, [arXiv:2305.16300](https://arxiv.org/abs/2305.16300)).
#
# **Code:** `yarnref/models/` (`load_model`, `method_spec`, `plug`, `perplexity`, `passkey`).
#
# The earlier lessons checked every method on random tensors. This one runs them on a real model,
# SmolLM2-135M-Instruct. It was trained on windows of $T_{\mathrm{train}} = 8192$ tokens. Its rotary
# pairs turn at $\theta_i = b^{-2i/d}$ with $b = 10^5$ and $d = 64$, so pair $i$ takes
# $\lambda_i = 2\pi/\theta_i$ tokens per turn. The slowest pairs never completed a turn during
# training: their angles past 8K are new to the model:
#
# $$\phi_i(p) = p\,\theta_i, \qquad \theta_i = b^{-2i/d}, \qquad \lambda_i = \frac{2\pi}{\theta_i},
# \qquad \text{pair } i \text{ is out of distribution past } T_{\mathrm{train}} \text{ when } \lambda_i > T_{\mathrm{train}}.$$
#
# Every method answers this differently:
#
# * **Position Interpolation** divides every position by $s$: $\theta'_i = \theta_i / s$.
# * **NTK-aware scaling** changes the base, $b' = b\, s^{d/(d-2)}$. The fast pairs barely move and
#   the slowest pair is divided by exactly $s$.
# * **YaRN** keeps the fast pairs, interpolates the slow ones and ramps in between. It also
#   multiplies cos and sin by $0.1 \ln s + 1$, which sharpens the softmax.
# * **DCA** keeps the frequencies. It remaps *positions* so that no query ever sees a relative
#   distance larger than `chunk_size`.
#
# The model is run by transformers' own Llama code. yarnref replaces the rotary module and the
# attention function, and nothing else. On a CPU we stay at a few hundred tokens: the cells below
# show each method's cost *inside* the window, and show that DCA retrieves a fact from farther
# back than any distance it lets the model see. The GPU study in `docs/real-model.md` goes to 64K.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import torch

import yarnref
from yarnref.models.corpus import read_text
from yarnref.models.evaluate import passkey, perplexity
from yarnref.models.loading import load_model
from yarnref.models.methods import method_spec
from yarnref.models.plug import plug, unplug

model, tokenizer = load_model("smollm2-135m", progress=False)  # float32 on the CPU
text = read_text("kjv")  # the King James Bible, Project Gutenberg #10 (public domain)
print(model.config.num_hidden_layers, "layers;", model.config.max_position_embeddings, "training window")

# %% [markdown]
# ## What each method does to the frequencies
#
# `method_spec` turns a method name into what the model runs with. `frequencies(seq_len)` returns
# the inverse frequencies and the attention factor that `yarnref.rope_frequencies` computes. Below
# is the scale $\theta_i / \theta'_i$ of each rotary pair at factor 4.

# %%
base, _ = method_spec("none", model.config).frequencies()
fig, ax = plt.subplots(figsize=(6, 3.5))
for name in ("linear", "ntk", "yarn", "llama3", "longrope"):
    inv_freq, factor = method_spec(name, model.config, factor=4.0).frequencies(4 * 8192)
    ax.plot(base / inv_freq, label=f"{name} (attention factor {factor:.3f})")
ax.set_xlabel("rotary pair i (fast to slow)")
ax.set_ylabel("scale θ_i / θ'_i")
ax.legend(fontsize=8)
ax.set_title("SmolLM2-135M at factor 4")
plt.show()

# %% [markdown]
# ## Plugging yarnref in, and checking it changes nothing
#
# `plug(model, spec)` swaps the rotary module and selects the `"yarnref"` attention function.
# With `none` the model must compute what transformers computes, up to float32 rounding.

# %%
ids = torch.tensor(tokenizer(text[:3000], add_special_tokens=False)["input_ids"][:256])[None]  # (1, 256)
with torch.no_grad():
    reference = model(ids).logits  # transformers' own rotary module and SDPA
    plug(model, method_spec("none", model.config))
    plugged = model(ids).logits
    plug(model, method_spec("dca", model.config, dca_chunk=96, dca_local=16))
    dca = model(ids).logits
    unplug(model)
rel = lambda a, b: float((a - b).abs().max() / b.abs().max())  # noqa: E731
print(f"plugged vs transformers: {rel(plugged, reference):.1e}")
print(f"DCA (chunk 96) vs RoPE, first 97 tokens: {rel(dca[:, :97], reference[:, :97]):.1e}; after: {rel(dca[:, 97:], reference[:, 97:]):.1e}")

# %% [markdown]
# ## Perplexity inside the window
#
# Perplexity over non-overlapping windows:
# $\mathrm{PPL} = \exp\big(\frac{1}{W(N-1)}\sum_w \sum_{t \ge 2} -\log p(x_t \mid x_{<t})\big)$.
# At 512 tokens no extension is needed, so these numbers show what each method *costs*.

# %%
specs = {
    "none": method_spec("none", model.config),
    "linear x4": method_spec("linear", model.config, factor=4.0),
    "ntk x4": method_spec("ntk", model.config, factor=4.0),
    "yarn x4": method_spec("yarn", model.config, factor=4.0),
    "dca 128/32": method_spec("dca", model.config, dca_chunk=128, dca_local=32),
}
ppl = {name: perplexity(model, tokenizer, text, 512, spec, max_windows=1)["perplexity"] for name, spec in specs.items()}
for name, value in ppl.items():
    print(f"{name:<11} {value:7.3f}")

# %% [markdown]
# ## The passkey, farther back than DCA lets the model look
#
# With `chunk_size` 128 and `local_size` 32, DCA never shows the model a distance above 128. A key
# hidden at depth 0 of a 512-token prompt is about 450 tokens before the question. The model
# still has to find it.

# %%
dca_small = method_spec("dca", model.config, dca_chunk=128, dca_local=32)
result = passkey(model, tokenizer, 512, [0.0, 0.5], dca_small, trials=2, seed=1)
for row in result["results"]:
    print(f"depth {row['depth']}: {row['correct']}/{row['trials']}  answers {row['answers']}")
distances = yarnref.dca_relative_positions(512, 128, 32)
print("largest distance DCA uses:", distances.max(), "of", 511)

# %% [markdown]
# ## Check

# %%
assert rel(plugged, reference) < 2e-5, "the plugged model must reproduce transformers' logits"
assert rel(dca[:, :97], reference[:, :97]) < 2e-5, "DCA is plain RoPE up to chunk_size + 1 tokens"
assert rel(dca[:, 97:], reference[:, 97:]) > 1e-3, "and differs once distances are remapped"
assert ppl["linear x4"] > 2 * ppl["none"], "PI without fine-tuning hurts even inside the window"
assert ppl["yarn x4"] < ppl["linear x4"], "YaRN keeps the fast pairs and costs far less"
assert distances.max() <= 128
assert result["accuracy"] >= 0.5, "DCA retrieves keys from beyond its largest distance"
print("all checks passed")

# %% [markdown]
# ## Exercise
#
# 1. Lower `dca_chunk` to 64, then to 32. At what chunk size does the passkey at depth 0 get lost?
# 2. `yarnref perplexity --length 16384 --method none` on a GPU, then `--method yarn --factor 2`.
#    By how much does YaRN bring the perplexity back at twice the training window?
# 3. Why does `dynamic` give exactly `none`'s perplexity at 512 tokens? Hint: `seq_len`.

# %% [markdown]
# ## On a GPU
#
# This cell runs only where CUDA is available. It measures 16K tokens, twice the training window,
# without scaling and with YaRN x2.

# %%
if torch.cuda.is_available():
    gpu_model, gpu_tokenizer = load_model("smollm2-135m", device="cuda", dtype="bfloat16", progress=False)
    for name, spec in (("none", method_spec("none", gpu_model.config)), ("yarn x2", method_spec("yarn", gpu_model.config, factor=2.0))):
        r = perplexity(gpu_model, gpu_tokenizer, text, 16384, spec, max_windows=4)
        print(f"{name}: perplexity {r['perplexity']:.2f} at 16K")
