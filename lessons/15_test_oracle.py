# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 15: yarnref as a test oracle for your own kernel
#
# **Code:** `yarnref/testing.py` (`tolerance`, `assert_close`, `max_error`, `assert_error_within`),
# `yarnref/vectors.py` (`make_vectors`, `write_vectors`, `check_vectors`), and the spec functions every
# earlier lesson used. The guide's page `oracle.md` has more worked examples.
#
# ## Motivation
#
# You wrote a RoPE kernel for an inference engine, or ported YaRN to another language. Does it compute what
# the method says, for this model's config, at position 100k? A test that compares with a second
# implementation you also wrote proves little; a test with a hand-picked tolerance either hides bugs or
# flakes. yarnref gives the float64 answer for the exact config, and a tolerance derived from the
# precision and the position. Here we write a small kernel the way an engine would (float32, its own
# code: this is the one place in the course where math is written outside yarnref, because it is the code
# under test), break it in four realistic ways, and watch the oracle catch each.

# %% [markdown]
# ## The tolerance
#
# For RoPE outputs in a precision with unit roundoff $u$ whose angles are computed in a precision with unit
# roundoff $u_a$, `yarnref.testing.tolerance` allows
#
# $$|\,\mathrm{yours} - \mathrm{spec}\,| \le \mathrm{atol} + \mathrm{rtol}\,|\mathrm{spec}|, \qquad
#   \mathrm{rtol} = 16u, \quad \mathrm{atol} = 16u + 2u_a\,p_{max},$$
#
# because an angle $p\theta$ rounded in float32 is off by up to $2u_a p$ radians: at $p = 10^6$ that is
# about 0.06 rad, and a correct float32 kernel must pass there too.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import yarnref
from yarnref.precision import round_to
from yarnref.testing import assert_close, max_error, tolerance

config = yarnref.get_preset("qwen2.5-7b-instruct-yarn")  # YaRN x4 over 32k: attention factor 0.1 ln 4 + 1
inv_freq, m_att = yarnref.rope_frequencies(config)
rc = yarnref.parse_rope_config(config)
positions = np.array([0, 1, 7, 4095, 32767, 65535, 131071])
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 4, len(positions), rc.head_dim)).astype(np.float32)  # (batch, heads, seq, head_dim)

cos, sin = yarnref.rope_cos_sin(inv_freq, positions, m_att)  # float64 spec
want = yarnref.apply_rope(q.astype(np.float64), cos, sin, pairing="half")
print(f"head_dim {rc.head_dim}, attention factor {m_att:.4f}, largest position {positions.max()}")
print("float32 tolerance at that position (rtol, atol):", tolerance("float32", max_position=int(positions.max())))


# %% [markdown]
# ## Your kernel, and four bugs
#
# The kernel rotates `q` in float32, half-split pairing, with the attention factor in cos and sin. Each
# `bug` is a mistake real ports have made: the interleaved pairing (GPT-J's) for a half-split model, the
# YaRN attention factor forgotten, position ids cast to the model's dtype (bfloat16), and the frequencies
# recomputed from the base without YaRN's scaling.

# %%
def my_rope_kernel(x, inv_freq, positions, attention_factor, bug=None):
    """The code under test: float32 RoPE as an inference engine writes it."""
    freq = np.asarray(inv_freq, dtype=np.float32)
    if bug == "plain frequencies":
        half = x.shape[-1] // 2
        freq = (np.float32(rc.base) ** (-np.arange(0, half, dtype=np.float32) * 2 / x.shape[-1])).astype(np.float32)
    pos = np.asarray(positions, dtype=np.float32)
    if bug == "bfloat16 positions":  # position ids cast to the model's dtype
        pos = round_to(pos, "bfloat16").astype(np.float32)
    angle = pos[:, None] * freq[None, :]  # (seq, r/2), float32
    factor = np.float32(1.0 if bug == "no attention factor" else attention_factor)
    c, s = np.cos(angle) * factor, np.sin(angle) * factor
    if bug == "interleaved pairing":
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
        return out
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


results = {}
for bug in (None, "interleaved pairing", "no attention factor", "bfloat16 positions", "plain frequencies"):
    got = my_rope_kernel(q, inv_freq, positions, m_att, bug)
    try:
        assert_close(got, want, dtype="float32", op="rope", max_position=int(positions.max()), err_msg=str(bug))
        results[bug] = "passes"
    except AssertionError:
        results[bug] = "caught"
    print(f"{str(bug):<22} max error {max_error(got, want):.2e}  -> {results[bug]}")

# %% [markdown]
# ## Check: the correct kernel passes, every bug is caught
#
# The check cell is the test you would put in your own suite. It also asserts that the tolerance is not
# trivially loose: the correct kernel's error is well above zero (float32 at position 131071 is not exact)
# and every bug's error is above the tolerance.

# %%
assert results[None] == "passes"
assert all(results[bug] == "caught" for bug in results if bug is not None), results
correct_error = max_error(my_rope_kernel(q, inv_freq, positions, m_att), want)
rtol, atol = tolerance("float32", max_position=int(positions.max()))
assert 1e-6 < correct_error < atol
print("checked: the float32 kernel passes with error", f"{correct_error:.2e}", "< atol", f"{atol:.2e}")

# %% [markdown]
# ## Errors against position
#
# The correct kernel's error grows with the position, as float32 angles do; the tolerance grows with it.
# Bugs are far above it at every position where they show (the bfloat16 positions only past 256, where
# bfloat16 stops representing every integer).

# %%
scan = np.unique(np.logspace(0, 6, 60).astype(np.int64))
qs = rng.standard_normal((1, 1, len(scan), rc.head_dim)).astype(np.float32)
spec = yarnref.apply_rope(qs.astype(np.float64), *yarnref.rope_cos_sin(inv_freq, scan, m_att))
fig, ax = plt.subplots(figsize=(7, 3.6))
for bug in (None, "bfloat16 positions", "no attention factor"):
    err = np.abs(my_rope_kernel(qs, inv_freq, scan, m_att, bug) - spec).max(axis=(0, 1, 3))  # (positions,)
    ax.loglog(scan, np.maximum(err, 1e-9), label=str(bug) if bug else "correct float32 kernel")
ax.loglog(scan, [tolerance("float32", max_position=int(p))[1] + tolerance("float32")[0] * 4 for p in scan],
          color="gray", ls=":", label="tolerance (atol + rtol |x|, |x| <= 4)")
ax.set(xlabel="position", ylabel="max |kernel - spec|", title="What the oracle allows, and what it catches")
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Attention: a kernel that aligns the causal mask top-left
#
# With fewer queries than keys (chunked prefill, decode), yarnref aligns the causal mask bottom-right, as
# flash-attn does: the queries are the last positions. A kernel that aligns it top-left (SDPA's
# `is_causal` with `q_len != kv_len`) is right for a square call and wrong for every other; the oracle
# catches it on the first chunked call.

# %%
def my_attention(q, k, v, top_left=False):
    """The code under test: causal attention in float32, with a materialised mask."""
    tq, tk = q.shape[2], k.shape[2]
    logits = q @ np.swapaxes(k, -1, -2) / np.float32(np.sqrt(q.shape[-1]))
    offset = 0 if top_left else tk - tq
    mask = np.arange(tk)[None, :] > np.arange(tq)[:, None] + offset
    logits = np.where(mask, -np.inf, logits)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ v


qa, ka, va = rng.standard_normal((3, 1, 2, 48, 32)).astype(np.float32)
for tq in (48, 16):  # square, then the last 16 queries of a chunk
    ref = yarnref.attention(qa[:, :, -tq:].astype(np.float64), ka.astype(np.float64), va.astype(np.float64))
    assert_close(my_attention(qa[:, :, -tq:], ka, va), ref, dtype="float32", op="attention")
    try:
        assert_close(my_attention(qa[:, :, -tq:], ka, va, top_left=True), ref, dtype="float32", op="attention")
        caught = False
    except AssertionError:
        caught = True
    print(f"q_len {tq}, kv_len 48: top-left kernel {'caught' if caught else 'passes'}")
    assert caught == (tq != 48)

# %% [markdown]
# ## Golden vectors for another language
#
# A port in C++, Rust or Go cannot import yarnref. `yarnref vectors PRESET --out file.npz` (or
# `yarnref.vectors.write_vectors`) stores the frequencies, cos/sin and rotated q/k at large positions with
# their provenance; the port's test loads the file and compares, and `check_vectors` does the comparison
# for a Python harness. Our buggy kernel fails it too.

# %%
from yarnref.vectors import check_vectors, make_vectors

golden = make_vectors(config, positions=positions)
ours = my_rope_kernel(golden["q"].astype(np.float32), inv_freq, golden["positions"], m_att)
print("checked arrays:", check_vectors(golden, q_rot_half=ours, dtype="float32"))
try:
    check_vectors(golden, q_rot_half=my_rope_kernel(golden["q"].astype(np.float32), inv_freq, golden["positions"], m_att,
                                                    "no attention factor"), dtype="float32")
    raise RuntimeError("the golden vectors missed the bug")
except AssertionError as error:
    print("caught:", str(error).splitlines()[0][:100])

# %% [markdown]
# ## Exercise
#
# 1. Add a fifth bug: compute the angles as `(pos * freq) % (2 * np.pi)` in float32 *before* multiplying.
#    Is it a bug? Compare its error with the correct kernel's at position $10^6$ and decide with
#    `assert_close`.
# 2. Cast the correct kernel's output to bfloat16 (`yarnref.precision.round_to`) and test it with
#    `assert_error_within` against a naive bfloat16 rotation. Why is an elementwise tolerance the wrong tool
#    for half precision?
#
# ## Summary
#
# * `assert_close` with `max_position` accepts a correct float32 kernel at position $10^5$ and catches the
#   pairing, the attention factor, bfloat16 positions and unscaled frequencies (checked).
# * The bottom-right causal alignment is part of the contract: a top-left kernel is caught on the first
#   chunked call (checked).
# * Golden vectors carry the same test to other languages.
