# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 11: Chunked prefill and activation memory
#
# **Papers:** A. Agrawal et al., *SARATHI: Efficient LLM Inference by Piggybacking Decodes with Chunked
# Prefills*, [arXiv:2308.16369](https://arxiv.org/abs/2308.16369); A. Yang et al., *Qwen2.5-1M Technical
# Report*, [arXiv:2501.15383](https://arxiv.org/abs/2501.15383) (its 1M-token prefill runs in chunks);
# M. Milakov, N. Gimelshein, *Online normalizer calculation for softmax*,
# [arXiv:1805.02867](https://arxiv.org/abs/1805.02867).
#
# **Code:** `yarnref/prefill.py` (`chunked_prefill`), `yarnref/softmax_attention.py` (`attention`, its
# `block_size`), `yarnref/presets.py` (the Qwen2.5-7B-Instruct-1M config).
#
# ## Motivation
#
# Lessons 9 and 10 make attention over 1M tokens *correct* and *cheap in FLOPs*. Memory is the other wall.
# A prefill of $T$ tokens in one pass holds every layer's activations for all $T$ tokens at once: the MLP's
# intermediate alone is $T \times d_{ff}$ numbers. Chunked prefill runs $C$ tokens at a time against the
# keys cached so far: activations scale with $C$, and only the KV cache scales with $T$. Attention itself is
# the same function, so the result must not change.

# %% [markdown]
# ## The equations
#
# A chunk $[a, b)$ of queries attends to keys $[0, b)$ with the causal mask aligned bottom-right, so the
# union of the chunks is exactly the full causal attention:
#
# $$o_i = \sum_{j \le i} \frac{e^{s\,q_i\cdot k_j}}{\sum_{j' \le i} e^{s\,q_i\cdot k_{j'}}}\, v_j
#   \quad\text{for every } i, \text{ whatever chunk } i \text{ is in.}$$
#
# Per layer and chunk, the activations are about (in numbers, with hidden size $d$, $h_q$ query heads, $h_k$
# kv heads of dim $d_h$, MLP width $d_{ff}$)
#
# $$A(C) = C\,\big(d + (h_q + 2h_k)\,d_h + 2\,d_{ff}\big) \;+\; \underbrace{h_q\, C\, T}_{\text{logits, if not fused}},$$
#
# while the KV cache after $T$ tokens is $2\,T\,h_k\,d_h$ numbers per layer. A fused (flash) kernel never
# stores the logits; yarnref's float64 spec stores them one block of `block_size` queries at a time, which
# is chunking inside attention.

# %%
# %matplotlib inline
import tracemalloc

import matplotlib.pyplot as plt
import numpy as np

import yarnref

rng = np.random.default_rng(0)
T, heads, d = 2048, 2, 64
q, k, v = rng.standard_normal((3, 1, heads, T, d))  # (batch, heads, T, head_dim), already rotated

# %% [markdown]
# ## Check: chunking changes nothing, for any chunk size
#
# Chunk sizes that divide $T$ and sizes that do not, down to one query at a time (decode), give the whole
# prefill's output and log-sum-exp.

# %%
full, full_lse = yarnref.attention(q, k, v, causal=True, return_lse=True)
cases = {1: 300, 7: T, 100: T, 512: T, T: T}  # chunk size -> the last n queries prefilled (chunks of 1: decode)
for chunk, n in cases.items():
    out, lse = yarnref.chunked_prefill(q[:, :, -n:], k, v, chunk_size=chunk, return_lse=True)
    assert np.allclose(out, full[:, :, -n:], rtol=0, atol=1e-12), chunk
    assert np.allclose(lse, full_lse[:, :, -n:], rtol=0, atol=1e-12), chunk
print("chunked prefill == full prefill for chunks of 1 (the last 300 queries), 7, 100, 512 and", T)

# %% [markdown]
# ## Measured: attention memory grows with the query block
#
# `tracemalloc` sees every NumPy allocation. The spec's peak memory for one attention call grows with the
# query block by the logits buffer, $8\,h_q\,C\,T$ bytes in float64, on top of a fixed part (the float64
# copies of q, k, v and the output).

# %%
blocks = [32, 64, 128, 256, 512, 1024, 2048]
peaks = []
for block in blocks:
    tracemalloc.start()
    yarnref.attention(q, k, v, causal=True, block_size=block)
    peaks.append(tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
peaks = np.array(peaks)
logits = 8 * heads * np.array(blocks) * T  # bytes of one block's logits
base = peaks[0]
for block, peak, lg in zip(blocks, peaks, logits):
    print(f"block {block:>5}: peak {peak / 2**20:7.1f} MiB, logits buffer {lg / 2**20:6.1f} MiB")
assert np.all(peaks >= logits), "the logits of a block are held at once"
assert np.all(peaks <= 2 * logits + base), "and not much more than that grows with the block"
assert np.all(np.diff(peaks) > 0)

# %% [markdown]
# ## What it means for a 1M-token prefill
#
# Qwen2.5-7B-Instruct-1M ($d = 3584$, 28 query heads and 4 kv heads of 128, 28 layers; $d_{ff} = 18944$
# from the model's `config.json`, not in the preset) in bfloat16. The KV cache of 1M tokens is fixed by the
# task; the activations are set by the chunk size.

# %%
config = yarnref.get_preset("qwen2.5-7b-instruct-1m")
hidden, hq, hk = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
dh, layers, d_ff, total = hidden // hq, config["num_hidden_layers"], 18944, 1_000_000
bytes_per = 2  # bfloat16
kv_cache = 2 * total * hk * dh * layers * bytes_per
chunks = 2 ** np.arange(10, 21)  # 1k .. 1M tokens per chunk
activations = chunks * (hidden + (hq + 2 * hk) * dh + 2 * d_ff) * bytes_per  # one layer at a time
logits_unfused = hq * chunks * total * bytes_per
print(f"KV cache for {total:,} tokens: {kv_cache / 2**30:.1f} GiB")
for c in (32768, 131072, total):
    a = c * (hidden + (hq + 2 * hk) * dh + 2 * d_ff) * bytes_per
    print(f"chunk {c:>9,}: activations {a / 2**30:6.2f} GiB, unfused logits {hq * c * total * bytes_per / 2**40:7.2f} TiB")
assert yarnref.parse_rope_config(config).head_dim == dh  # the head dim the RoPE config uses

fig, (ax_m, ax_q) = plt.subplots(1, 2, figsize=(10, 3.4))
ax_m.loglog(blocks, peaks / 2**20, marker="o", label="measured peak (spec)")
ax_m.loglog(blocks, logits / 2**20, ls="--", label=r"logits buffer $8 h_q C T$")
ax_m.set(xlabel="query block C", ylabel="MiB", title=f"One attention call, T = {T}")
ax_m.legend(fontsize=7)
ax_q.loglog(chunks, activations / 2**30, label="activations per layer")
ax_q.loglog(chunks, logits_unfused / 2**30, label="logits if not fused")
ax_q.axhline(kv_cache / 2**30, color="gray", ls=":", label="KV cache, 1M tokens")
ax_q.axhline(141e9 / 2**30, color="red", lw=0.8, label="one H200 (141 GB)")
ax_q.set(xlabel="prefill chunk C (tokens)", ylabel="GiB", title="Qwen2.5-7B-1M, bfloat16")
ax_q.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## On a GPU (optional)
#
# On a GPU the torch backend runs each chunk through a fused attention kernel (flash), which never stores
# the logits: the peak memory of a chunked prefill then barely depends on the chunk, and the result matches
# the one-pass prefill to bfloat16 rounding. 32768 tokens, 8 heads of 128, bfloat16. Skipped without CUDA.

# %%
from yarnref.testing import assert_close

gpu = "torch" in yarnref.gpu_backends()  # the torch backend with a CUDA device
if gpu:
    import torch
if not gpu:
    print("No CUDA device for the torch backend here: the GPU cell is skipped.")

if gpu:
    n = 32768
    with yarnref.use_backend("torch", device="cuda"):
        qg, kg, vg = (torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        one_pass = yarnref.attention(qg, kg, vg, causal=True)
        for chunk in (2048, 8192, n):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = yarnref.chunked_prefill(qg, kg, vg, chunk_size=chunk)
            torch.cuda.synchronize()
            extra = (torch.cuda.max_memory_allocated() - base) / 2**20
            print(f"chunk {chunk:>6}: peak memory above the inputs {extra:8.1f} MiB (logits would be "
                  f"{8 * chunk * n * 2 / 2**20:9.1f} MiB)")
            assert_close(out, one_pass, dtype="bfloat16", op="attention")

# %% [markdown]
# ## Exercise
#
# 1. The KV cache dominates at 1M tokens. How large is it in float8, and how large with 8 kv heads instead
#    of 4? At what context length does the KV cache of this model fill one H200 in bfloat16?
# 2. Chunked *sparse* prefill is not chunking-invariant (lesson 10). Run `yarnref.chunked_prefill` with
#    `sparse=dict(vertical_size=64, slash_size=256)` and chunks of 256 and 1024, and compare both with dense
#    attention. Which one is closer, and why?
#
# ## Summary
#
# * Dense chunked prefill is exactly the full prefill, for any chunk size down to decode (checked).
# * Activation memory grows with the chunk, the KV cache with the context (measured on the spec, and
#   computed for Qwen2.5-7B-1M): chunking is what lets a 1M-token prefill fit.
