# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 1: RoPE, the rotary position embedding
#
# **Paper:** J. Su, Y. Lu, S. Pan, A. Murtadha, B. Wen, Y. Liu, *RoFormer: Enhanced Transformer with
# Rotary Position Embedding*, [arXiv:2104.09864](https://arxiv.org/abs/2104.09864), section 3.
#
# **Code:** `yarnref/rope.py` (`base_inv_freq`, `rope_cos_sin`, `apply_rope`, `interleaved_to_half`).
#
# Every long-context method in the next lessons changes one of the things this lesson introduces: the
# frequencies (PI, NTK, YaRN, Llama 3, LongRoPE) or the positions (Dual Chunk Attention). So we start with
# plain RoPE and check its two defining properties with the library.

# %% [markdown]
# ## Motivation
#
# Attention compares a query at position $m$ and a key at position $n$ through an inner product. RoFormer
# asks for position encodings $f_q, f_k$ such that this inner product depends on the positions only
# through their difference (Eq. 11):
#
# $$\langle f_q(\boldsymbol{x}_m, m),\, f_k(\boldsymbol{x}_n, n)\rangle = g(\boldsymbol{x}_m, \boldsymbol{x}_n, m-n).$$
#
# Its answer: split the $r$ rotated features of $\boldsymbol{q}$ and $\boldsymbol{k}$ into $r/2$ planes and
# rotate plane $i$ by the angle $m\theta_i$, where the frequencies fall geometrically with the base
# $b$ (`rope_theta`, 10000 in the paper; Eq. 15, with the paper's $i$ starting at 1):
#
# $$\theta_i = b^{-2i/r}, \qquad i = 0, \dots, r/2 - 1.$$
#
# In each plane (Eq. 13, and the block-diagonal matrix $R_{\Theta,m}$ of Eq. 15):
#
# $$\begin{pmatrix} x'_a \\ x'_b \end{pmatrix} =
#   \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
#   \begin{pmatrix} x_a \\ x_b \end{pmatrix}.$$
#
# Rotations compose and are orthogonal, so (Eq. 16)
#
# $$(R_{\Theta,m}\boldsymbol{q})^\top (R_{\Theta,n}\boldsymbol{k}) = \boldsymbol{q}^\top R_{\Theta,n-m}\,\boldsymbol{k}:$$
#
# the score depends only on $m - n$. The cheap form every implementation uses (Eq. 34) multiplies
# elementwise by tables of $\cos m\theta_i$ and $\sin m\theta_i$; that is `rope_cos_sin` followed by
# `apply_rope`.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import yarnref

np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)
print("yarnref", yarnref.__version__, "| backends usable here:", yarnref.available_backends())

# %% [markdown]
# ## The frequencies
#
# `base_inv_freq(r, b)` is Eq. 15: a vector of $r/2$ inverse frequencies (radians per token). The
# *wavelength* $\lambda_i = 2\pi/\theta_i$ is the number of tokens plane $i$ needs for one full turn. With
# Llama 2's head (128 features, $b = 10^4$) the fastest plane turns every 6.3 tokens and the slowest
# every ~54 000 tokens.

# %%
head_dim, base = 128, 10000.0
inv_freq = yarnref.base_inv_freq(head_dim, base)  # Eq. 15, shape (r/2,) = (64,)
wavelength = 2 * np.pi / inv_freq  # tokens per turn of each plane

print("theta_0..2 =", inv_freq[:3], "   theta_62..63 =", inv_freq[-2:])
print(f"wavelengths: fastest {wavelength[0]:.2f} tokens, slowest {wavelength[-1]:,.0f} tokens")

# %% [markdown]
# ## The rotation
#
# `rope_cos_sin(inv_freq, positions)` returns the tables $\cos p\theta_i$ and $\sin p\theta_i$, each of
# shape `(seq, r/2)`. `apply_rope(x, cos, sin)` rotates the first $r$ features of `x`, shaped
# `(batch, heads, seq, head_dim)` like torch's SDPA. A rotation preserves length, which is the first
# thing to check.

# %%
seq = 16
positions = np.arange(seq)
cos, sin = yarnref.rope_cos_sin(inv_freq, positions)  # each (seq, r/2) = (16, 64)
x = rng.standard_normal((1, 2, seq, head_dim))  # (batch, heads, seq, head_dim)
x_rot = yarnref.apply_rope(x, cos, sin)  # pairing="half": plane i = (x[i], x[i + r/2])

print("cos table:", cos.shape, " rotated:", x_rot.shape)
assert np.allclose(x_rot[:, :, 0], x[:, :, 0]), "position 0 is the identity"
assert np.allclose(np.linalg.norm(x_rot, axis=-1), np.linalg.norm(x, axis=-1)), "a rotation keeps norms"


# %% [markdown]
# ## Check: scores depend only on $m - n$ (Eq. 16)
#
# Put the *same* query vector $\boldsymbol{q}$ at every position and the same key vector $\boldsymbol{k}$
# at every position. Then the score matrix $S_{mn} = (R_m\boldsymbol{q})^\top(R_n\boldsymbol{k})$ must be
# constant along its diagonals (a Toeplitz matrix), also far from the origin. The helper `at_positions`
# only places a vector at many positions; the rotation is the library's.

# %%
def at_positions(vec, positions, pairing="half"):
    # The rows of R_p vec for every p in positions: shape (len(positions), head_dim).
    cos, sin = yarnref.rope_cos_sin(inv_freq, positions)
    x = np.broadcast_to(vec, (1, 1, len(positions), vec.size))  # (batch, heads, seq, head_dim)
    return yarnref.apply_rope(x, cos, sin, pairing=pairing)[0, 0]


q, k = rng.standard_normal(head_dim), rng.standard_normal(head_dim)
S = at_positions(q, np.arange(64)) @ at_positions(k, np.arange(64)).T  # (64, 64): S[m, n]
assert np.allclose(S[1:, 1:], S[:-1, :-1], rtol=0, atol=1e-9), "S must be constant along diagonals"

# The same distance m - n = 4 far away, and a different distance (which must give another score).
for shift in (0, 1_000, 123_456, 1_000_000):
    s = at_positions(q, [7 + shift]) @ at_positions(k, [3 + shift]).T
    assert np.isclose(s[0, 0], S[7, 3], rtol=0, atol=1e-8), (shift, s[0, 0], S[7, 3])
assert not np.isclose(S[7, 3], S[7, 2]), "a different distance gives a different score"
print(f"score at distance 4: {S[7, 3]:.6f} at every shift up to 1,000,000")

# %% [markdown]
# ## Check: the two pairings are a permutation of each other
#
# Which two features form a plane is a convention, and the stacks disagree:
#
# * `"half"` (GPT-NeoX; Llama in Hugging Face transformers; vLLM `is_neox_style=True`): plane $i$ is
#   $(x_i, x_{i+r/2})$.
# * `"interleaved"` (GPT-J; Meta's complex-number form; DeepSeek in vLLM and ggml): plane $i$ is
#   $(x_{2i}, x_{2i+1})$.
#
# Both are the same rotation after the permutation $P$ that sends feature $2i \to i$ and
# $2i+1 \to i + r/2$ (`interleaved_to_half`): $\mathrm{interleaved}(x) = P^{-1}\,\mathrm{half}(Px)$. This
# is why a checkpoint can be moved from one convention to the other by permuting the rows of $W_q$ and
# $W_k$ (what transformers' Llama converter does). Using the wrong pairing *without* the permutation
# changes every score, a classic porting bug. Here with partial rotary: only 48 of 64 features rotate.

# %%
r, d = 48, 64  # rotary dim, head dim (partial rotary factor 0.75)
cos_p, sin_p = yarnref.rope_cos_sin(yarnref.base_inv_freq(r, base), np.arange(9))  # (9, r/2)
qs, ks = rng.standard_normal((2, 1, 2, 9, d))  # two (batch, heads, seq, head_dim) arrays

inter = yarnref.apply_rope(qs, cos_p, sin_p, pairing="interleaved")
via_half = yarnref.half_to_interleaved(
    yarnref.apply_rope(yarnref.interleaved_to_half(qs, r), cos_p, sin_p, pairing="half"), r
)
assert np.allclose(inter, via_half, rtol=0, atol=1e-12), "interleaved = P^-1 half(P x)"
assert np.array_equal(inter[..., r:], qs[..., r:]), "the features after rotary_dim pass through"

# Scores: permuting q and k alike keeps them; the wrong pairing alone does not.
scores_inter = inter @ yarnref.apply_rope(ks, cos_p, sin_p, pairing="interleaved").swapaxes(-1, -2)
q_half = yarnref.apply_rope(yarnref.interleaved_to_half(qs, r), cos_p, sin_p, pairing="half")
k_half = yarnref.apply_rope(yarnref.interleaved_to_half(ks, r), cos_p, sin_p, pairing="half")
scores_perm = q_half @ k_half.swapaxes(-1, -2)
scores_wrong = yarnref.apply_rope(qs, cos_p, sin_p) @ yarnref.apply_rope(ks, cos_p, sin_p).swapaxes(-1, -2)
assert np.allclose(scores_inter, scores_perm, rtol=0, atol=1e-12)
assert not np.allclose(scores_inter, scores_wrong, atol=1e-3)
print("max |score difference| with the wrong pairing:", float(np.abs(scores_inter - scores_wrong).max()))

# %% [markdown]
# ## Plot: wavelengths and the long-range decay
#
# Left: the wavelength of every plane for Llama 2 ($b = 10^4$) and Llama 3 ($b = 5\cdot 10^5$), with
# their training lengths. Planes whose wavelength exceeds the training length never completed a turn in
# training: beyond it they show the model angles it has never seen. That is the problem the next
# lesson's methods solve.
#
# Right: the score between two all-ones vectors as a function of their distance,
# $\frac{1}{r}(R_\Delta\boldsymbol{1})^\top\boldsymbol{1} = \frac{2}{r}\sum_i \cos(\Delta\,\theta_i)$, the mean
# of the planes' cosines. It oscillates and decays on
# average: RoFormer's long-term decay (section 3.4.3; its Fig. 2 plots an upper bound of this).

# %%
fig, (ax_w, ax_d) = plt.subplots(1, 2, figsize=(9, 3.2))
for b, ctx, color, model in ((1e4, 4096, "C0", "Llama 2"), (5e5, 8192, "C1", "Llama 3")):
    lam = 2 * np.pi / yarnref.base_inv_freq(head_dim, b)
    ax_w.semilogy(lam, color=color, label=f"{model}: base {b:g}")
    ax_w.axhline(ctx, color=color, ls="--", lw=0.8, label=f"{model}: trained on {ctx}")
ax_w.set(xlabel="plane i", ylabel="wavelength (tokens)", title=r"Wavelengths $2\pi/\theta_i$")
ax_w.legend(fontsize=7, loc="upper left")

distance = np.arange(0, 20_000)
ones = np.ones(head_dim)
decay = at_positions(ones, distance) @ ones / head_dim  # (R_d 1) . 1 / r = score at distance d
ax_d.semilogx(distance[1:], decay[1:], lw=0.6)
ax_d.set(xlabel="distance m - n", ylabel="score / r", title="Long-term decay (base 1e4)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Precision: where float32 angles go wrong
#
# Real stacks compute the angle $p\,\theta_i$ in float32 (`position_ids.float() @ inv_freq`). The angle of
# the fastest plane at position $p$ is $p$ radians, and float32 has only 24 bits, so at $p \approx 10^6$
# the angle is off by up to half an ulp of $10^6$, about 0.03 rad. `precision="float32"` reproduces that
# rounding; lesson 7 measures it for real models at position 1M.

# %%
p = np.array([1_000, 100_000, 1_000_000])
exact = yarnref.rope_angles(inv_freq, p)  # float64 angles, (3, r/2)
fp32 = yarnref.rope_angles(inv_freq, p, precision="float32")
err = np.abs(fp32 - exact).max(axis=-1)
for pos, e in zip(p, err):
    print(f"position {pos:>9,}: max float32 angle error {e:.2e} rad")
assert err[-1] > 1e-3 and err[0] < 1e-4, "the error grows with position"

# %% [markdown]
# ## On a GPU (optional)
#
# The same calls run on a GPU with the torch backend. NumPy inputs are moved to the device once and
# torch tensors come back; we compare with the float64 spec above. This cell is skipped on a machine
# without CUDA.

# %%
gpu = "torch" in yarnref.gpu_backends()  # the torch backend with a CUDA device
if gpu:
    import torch
if not gpu:
    print("No CUDA device for the torch backend here: the GPU cell is skipped.")

if gpu:
    x_big = rng.standard_normal((1, 8, 4096, head_dim))
    cos_big, sin_big = yarnref.rope_cos_sin(inv_freq, np.arange(4096))
    expected = yarnref.apply_rope(x_big, cos_big, sin_big)  # the spec, on the CPU
    with yarnref.use_backend("torch", device="cuda") as backend:
        out = yarnref.apply_rope(x_big, cos_big, sin_big)  # a torch tensor on the GPU
        print(type(out).__name__, out.device, out.dtype)
        assert np.allclose(backend.to_numpy(out), expected, rtol=0, atol=1e-10)

# %% [markdown]
# ## Exercise
#
# 1. Rotate a query and a key with `yarnref.apply_rope` at positions $(m, n) = (5, 2)$ and $(1005, 1002)$ and
#    confirm the score is the same. Then give the key the *interleaved* pairing but the query the *half*
#    pairing: what breaks, and how does the permutation check above explain it?
# 2. Change the base $b$ from $10^4$ to $10^6$ in the long-term decay figure. Which planes now never
#    finish a turn in 4096 tokens, and what does that suggest about why long-context models raise `rope_theta`?

# %% [markdown]
# ## Summary
#
# * RoPE rotates plane $i$ of $\boldsymbol q$ and $\boldsymbol k$ by $p\,\theta_i$ with
#   $\theta_i = b^{-2i/r}$; scores then depend only on $m-n$ (checked, including at position $10^6$).
# * The half-split and interleaved pairings are the same rotation up to a fixed permutation (checked).
# * Slow planes never finish a turn within the training length. **Lessons 3-7** change the frequencies to
#   stretch the context; **lesson 9** changes the positions instead.
