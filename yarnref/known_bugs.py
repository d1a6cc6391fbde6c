"""Known bugs of other stacks, each shown by one call, with the stack's version and source location.

An oracle has to tell an implementer whether a difference is a bug in their
code or a known behaviour of the stack they compare against.  Each function
here reproduces one stack's faulty behaviour on the shapes or numbers given
(in NumPy, following the stack's own operations), so that the behaviour can
be seen and tested without installing the stack.  The correct behaviour is
what the rest of yarnref computes.

========================================  =====================================================================
function                                  stack, version, where
========================================  =====================================================================
:func:`vllm_dual_chunk_rope`              vLLM 0.33, ``rotary_embedding/dual_chunk_rope.py``
                                          (``DualChunkRotaryEmbedding._apply_rotary_embedding``): crashes with
                                          neox pairing and partial rotary
:func:`chunkqwen_kv_heads`                HKUNLP/ChunkLlama @ d53f9b1, ``chunkqwen_attn_replace.py``
                                          (``forward``): ``repeat_kv`` applied twice, so GQA models crash
:func:`minference_forced_slashes`         MInference's ``vertical_and_slash_kernel`` (and vLLM's port): with
                                          fewer slashes than the 100 forced diagonals, the kept ones are
                                          ``torch.topk``'s choice among ties at +inf, which may drop the main
                                          diagonal
========================================  =====================================================================

Conventions: shapes as in the stacks' code; each function raises
:class:`StackBug` where the stack crashes, with the stack's error in words.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError, YarnrefError

__all__ = ["StackBug", "vllm_dual_chunk_rope", "chunkqwen_kv_heads", "minference_forced_slashes"]


class StackBug(YarnrefError, RuntimeError):
    """Raised where the reproduced stack crashes; the message names the stack, the version and the cause."""


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(name, value, "a positive integer")
    return int(value)


def _torch_repeat(x: np.ndarray, *sizes: int) -> np.ndarray:
    """``torch.Tensor.repeat``: with more sizes than dims, leading dims of size 1 are added first."""
    x = x.reshape((1,) * (len(sizes) - x.ndim) + x.shape)
    return np.tile(x, sizes)


def vllm_dual_chunk_rope(head_size: int, rotary_dim: int, is_neox_style: bool, *, num_tokens: int = 3,
                         num_heads: int = 2) -> tuple[int, ...]:
    """The shape vLLM's ``DualChunkRotaryEmbedding`` gives one rotated query part, or :class:`StackBug`.

    ``_apply_rotary_embedding`` takes ``cos``/``sin`` of shape ``(tokens,
    rotary_dim/2)``; for neox pairing it calls ``cos.repeat(1, 1, 2)``, which
    on a 2-D tensor *adds* a leading dim: ``(1, tokens, rotary_dim)``, then
    ``unsqueeze(-2)``.  The rotated part becomes ``(1, tokens, heads,
    rotary_dim)`` and ``flatten(-2).squeeze(0)`` hides that for full rotary,
    but with ``rotary_dim < head_size`` it is concatenated with the 3-D pass
    part ``(tokens, heads, head_size - rotary_dim)``, and torch raises
    ("Tensors must have same number of dimensions").  Interleaved pairing
    (``repeat_interleave``) keeps 2-D tables and works.
    """
    head_size, rotary_dim = _positive("head_size", head_size), _positive("rotary_dim", rotary_dim)
    if rotary_dim > head_size or rotary_dim % 2:
        raise InputError("rotary_dim", rotary_dim, f"an even number <= head_size = {head_size}")
    tokens, heads = _positive("num_tokens", num_tokens), _positive("num_heads", num_heads)
    cos = np.ones((tokens, rotary_dim // 2))  # (tokens, r/2), one half of the cached cos_sin row
    if is_neox_style:
        cos = _torch_repeat(cos, 1, 1, 2)[..., None, :]  # (1, tokens, 1, r)
    else:
        cos = np.repeat(cos, 2, axis=-1)[..., None, :]  # (tokens, 1, r)
    hidden_rot = np.ones((tokens, heads, rotary_dim)) * cos  # broadcast, as torch does
    if rotary_dim < head_size:
        hidden_pass = np.ones((tokens, heads, head_size - rotary_dim))
        if hidden_rot.ndim != hidden_pass.ndim:
            raise StackBug(
                f"vLLM 0.33 DualChunkRotaryEmbedding (dual_chunk_rope.py, _apply_rotary_embedding) crashes: neox "
                f"pairing makes the rotated part {hidden_rot.shape} (cos.repeat(1, 1, 2) adds a dim to a 2-D table), "
                f"which torch.cat cannot join with the pass-through part {hidden_pass.shape}"
            )
        hidden = np.concatenate([hidden_rot, hidden_pass], axis=-1)
    else:
        hidden = hidden_rot
    hidden = hidden.reshape(hidden.shape[:-2] + (-1,))  # flatten(-2)
    if hidden.shape[0] == 1 and hidden.ndim > 2:  # squeeze(0)
        hidden = hidden[0]
    return hidden.shape


def chunkqwen_kv_heads(num_attention_heads: int, num_key_value_heads: int) -> int:
    """The number of K/V heads ChunkLlama's Qwen2 replacement hands flash-attention, or :class:`StackBug`.

    ``chunkqwen_attn_replace.py`` (HKUNLP/ChunkLlama @ d53f9b1) calls
    ``repeat_kv(key_states, num_key_value_groups)`` right after the
    projections *and again* after the cache update, so the keys reach the
    attention with ``kv_heads * g * g`` heads (``g = heads / kv_heads``).
    Without GQA (``g = 1``) that is harmless; with GQA it is not a divisor of
    the query heads, which ``flash_attn_func`` (prefill) and the ``matmul`` of
    the decode path both reject.  ChunkLlama's Llama replacement repeats once.
    """
    heads, kv_heads = _positive("num_attention_heads", num_attention_heads), _positive("num_key_value_heads",
                                                                                        num_key_value_heads)
    if heads % kv_heads:
        raise InputError("num_key_value_heads", kv_heads, f"a divisor of num_attention_heads = {heads}")
    group = heads // kv_heads
    repeated = kv_heads * group * group  # repeat_kv twice
    if heads % repeated:
        raise StackBug(
            f"ChunkLlama's Qwen2 replacement (chunkqwen_attn_replace.py @ d53f9b1) repeats K/V heads twice: "
            f"{kv_heads} -> {kv_heads * group} -> {repeated} heads for {heads} query heads; flash_attn_func needs "
            f"the K/V heads to divide the query heads, and the decode matmul needs them equal"
        )
    return repeated


def minference_forced_slashes(slash_size: int, *, force_slashes: int = 100, minimum: int = 50,
                              tie_order: str = "lowest_index") -> np.ndarray:
    """The diagonal distances MInference's estimation keeps when every candidate is a forced (+inf) one.

    ``vertical_and_slash_kernel`` sets the scores of the last
    ``force_slashes`` entries of its slash vector (distances ``0 ..
    force_slashes - 1``; entry ``i`` is distance ``last - i``) to +inf and
    takes ``torch.topk`` of ``max(slash_size, minimum)`` entries.  Below
    ``force_slashes`` that is a choice among ties, which ``torch.topk`` does
    not specify.  ``tie_order="lowest_index"`` picks the lowest entries first,
    i.e. the *farthest* forced diagonals, and drops the main diagonal
    (distance 0), which every causal row needs; ``"highest_index"`` keeps it.
    yarnref's :func:`yarnref.vertical_slash_indices` breaks ties towards small
    distances (the main diagonal is always kept).  Returns the kept distances,
    sorted.
    """
    slash_size = _positive("slash_size", slash_size)
    force_slashes = _positive("force_slashes", force_slashes)
    if tie_order not in ("lowest_index", "highest_index"):
        raise InputError("tie_order", tie_order, "'lowest_index' or 'highest_index'")
    n = min(max(slash_size, minimum), force_slashes)
    entries = np.arange(force_slashes)  # entry i of the forced tail is distance force_slashes - 1 - i
    chosen = entries[:n] if tie_order == "lowest_index" else entries[-n:]
    return np.sort(force_slashes - 1 - chosen)
