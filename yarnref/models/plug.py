r"""Plugging yarnref into transformers' own model code, at its two extension points.

transformers' Llama/Qwen2/Mistral layers compute, per layer,
``q, k = apply_rotary_pos_emb(q, k, cos, sin)`` with ``(cos, sin) =
model.model.rotary_emb(x, position_ids)`` (once per forward), then
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, q, k, v, mask,
scaling=...)``.  :func:`plug` replaces the first and selects the second:

* :class:`YarnrefRotaryEmbedding` (the model's ``rotary_emb``): cos and sin
  from :func:`yarnref.rope_frequencies` (or static NTK) and
  :func:`yarnref.rope_cos_sin` on the torch backend, in transformers' layout
  ``(batch, seq, head_dim)`` (the ``r/2`` angles written twice, the "half"
  pairing) and with the attention factor multiplied in.  By default the angles
  are float32, as transformers computes them (``position_ids.float() @
  inv_freq.float()``), so with no scaling the plugged model reproduces
  transformers' logits.  For DCA it returns the identity (cos 1, sin 0): DCA
  rotates each query to several positions, so it needs q and k un-rotated.
* :func:`yarnref_attention`, registered in ``AttentionInterface`` as
  ``"yarnref"``: :func:`yarnref.attention` (dense, causal, GQA),
  :func:`yarnref.dca_attention`, :func:`yarnref.vertical_slash_indices` +
  :func:`yarnref.vertical_slash_attention` (``--sparse``), or
  :func:`yarnref.qwen_prefill` (DCA with ``--sparse``), all on the torch
  backend on the tensors' device.  Decoding steps (one query) are dense.

Conventions
-----------
* No padding: the batches yarnref runs are rows of equal length, so no
  attention mask is built (a custom attention name gets none from
  transformers) and a mask handed in is an error.
* DCA with Qwen2.5-1M's temperature: the query of a request of length ``n``
  is scaled by ``s(n)``, each key by ``s`` of the length when it was written
  (the prompt length for prompt keys, ``j + 1`` for a decoded key ``j``), as
  vLLM caches them.  The runner sets :attr:`PlugState.prompt_length` before a
  prefill.
* :func:`unplug` restores the model's own rotary module and SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

import yarnref

from ..errors import InputError
from .methods import MethodSpec

__all__ = ["ATTENTION_NAME", "PlugState", "YarnrefRotaryEmbedding", "plug", "unplug", "yarnref_attention", "attention_modules"]

ATTENTION_NAME = "yarnref"


@dataclass
class PlugState:
    """What the plugged modules share: the method, the prompt length, optional captures of q/k."""

    spec: MethodSpec
    prompt_length: int | None = None
    #: layer index -> None; filled by the attention function with (rotated q, rotated k) of the last forward
    capture: dict = field(default_factory=dict)
    _frequencies: dict = field(default_factory=dict)
    _budgets: dict = field(default_factory=dict)

    def frequencies(self, seq_len: int) -> tuple[np.ndarray, float]:
        key = seq_len if self.spec.depends_on_length else None
        if key not in self._frequencies:
            self._frequencies[key] = self.spec.frequencies(seq_len)
        return self._frequencies[key]


class YarnrefRotaryEmbedding(torch.nn.Module):
    """The model's ``rotary_emb`` with yarnref's frequencies: ``forward(x, position_ids) -> (cos, sin)``."""

    def __init__(self, state: PlugState, head_dim: int):
        super().__init__()
        self.state = state
        self.head_dim = head_dim

    def forward(self, x, position_ids):
        # position_ids: (batch, seq) -> cos, sin: (batch, seq, head_dim) in x's dtype
        spec = self.state.spec
        if spec.dca is not None:  # DCA rotates inside the attention
            shape = (*position_ids.shape, self.head_dim)
            return torch.ones(shape, dtype=x.dtype, device=x.device), torch.zeros(shape, dtype=x.dtype, device=x.device)
        seq_len = int(position_ids.max()) + 1
        inv_freq, factor = self.state.frequencies(seq_len)
        with yarnref.use_backend("torch", device=x.device):
            cos, sin = yarnref.rope_cos_sin(inv_freq, position_ids, factor, precision=spec.rope_precision)  # (batch, seq, r/2)
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)  # the half pairing: (batch, seq, r)
        return cos.to(x.dtype), sin.to(x.dtype)


def _key_write_lengths(prompt_length: int | None, kv_len: int) -> tuple[int, np.ndarray]:
    """``(seq_len, key_write_lengths)`` of the Qwen temperature for a cache of ``kv_len`` keys.

    Prompt keys were written at the prompt's length, a decoded key ``j`` at ``j + 1``.
    """
    prompt = kv_len if prompt_length is None else max(1, int(prompt_length))
    seq_len = max(prompt, kv_len)
    return seq_len, np.maximum(prompt, np.arange(1, kv_len + 1, dtype=np.int64))


def yarnref_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature, computed by yarnref on the torch backend.

    ``query`` ``(batch, heads, q_len, head_dim)``, ``key``/``value``
    ``(batch, kv_heads, kv_len, head_dim)`` (after the cache update; the
    queries are the last ``q_len`` positions).  Returns ``(out, None)`` with
    ``out`` ``(batch, q_len, heads, head_dim)``, as transformers expects.
    """
    state: PlugState | None = getattr(module, "yarnref_state", None)
    if state is None:
        raise InputError("attn_implementation", ATTENTION_NAME, "a model prepared by yarnref.models.plug(model, spec)")
    if attention_mask is not None:
        raise InputError("attention_mask", "a mask", "None: yarnref runs unpadded rows (causal by position)")
    if dropout:
        raise InputError("dropout", dropout, "0 (evaluation only)")
    spec = state.spec
    layer = int(module.layer_idx)
    q_len, kv_len = query.shape[2], key.shape[2]
    sparse = spec.sparse is not None and q_len > 1
    with yarnref.use_backend("torch", device=query.device):
        if spec.dca is not None:
            inv_freq, factor = state.frequencies(kv_len)
            if sparse:
                dca = _dca_with_table(spec)
                out = yarnref.qwen_prefill(query, key, value, inv_freq, dca, scaling, layer=layer)
            else:
                options = {}
                if spec.dca.temperature == "qwen":
                    seq_len, written = _key_write_lengths(state.prompt_length, kv_len)
                    options = dict(temperature="qwen", original_max_position_embeddings=spec.dca.original_max_position_embeddings,
                                   seq_len=seq_len, key_write_lengths=written)
                out = yarnref.dca_attention(query, key, value, inv_freq, spec.dca.chunk_size, spec.dca.local_size, scaling,
                                            attention_factor=factor, form="merge", **options)
        else:
            if layer in state.capture:
                state.capture[layer] = (query.detach(), key.detach())
            if sparse:
                vertical, slash = _budgets(state, layer)
                v_idx, s_idx = yarnref.vertical_slash_indices(query, key, vertical, slash, spec.sparse.last_q, scale=scaling)
                out = yarnref.vertical_slash_attention(query, key, value, v_idx, s_idx, "kernel", scaling)
            else:
                out = yarnref.attention(query, key, value, causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _budgets(state: PlugState, layer: int):
    """Per-head ``(vertical, slash)`` budgets of ``layer`` from the spec's table (vLLM's 30 -> 130 applied)."""
    from ..prefill import sparse_attention_config_for

    if layer not in state._budgets:
        table = state.spec.sparse.table
        b = sparse_attention_config_for({"chunk_size": 2, "local_size": 1, "sparse_attention_config": table}, layer)
        state._budgets[layer] = (b.vertical_size, b.slash_size)
    return state._budgets[layer]


def _dca_with_table(spec: MethodSpec):
    from dataclasses import replace

    return replace(spec.dca, sparse_attention_config=spec.sparse.table, sparse_attention_enabled=True,
                   sparse_attention_threshold=1, sparse_attention_last_q=spec.sparse.last_q)


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, yarnref_attention)


def attention_modules(model) -> list:
    """The model's attention modules (those with a ``layer_idx`` under ``model.model.layers``)."""
    return [layer.self_attn for layer in model.model.layers]


def plug(model, spec: MethodSpec) -> PlugState:
    """Run ``model`` (a transformers Llama/Qwen2/Mistral causal LM) with ``spec``; returns the shared state.

    Replaces ``model.model.rotary_emb`` and sets the attention implementation to
    ``"yarnref"``; the original rotary module is kept for :func:`unplug`.
    Plugging again replaces the method.
    """
    if not isinstance(spec, MethodSpec):
        raise InputError("spec", type(spec).__name__, "a yarnref.models.MethodSpec (yarnref.models.method_spec(...))")
    base = model.model
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    if not hasattr(base, "_yarnref_original_rotary"):
        base._yarnref_original_rotary = base.rotary_emb
    _register()
    state = PlugState(spec=spec)
    base.rotary_emb = YarnrefRotaryEmbedding(state, head_dim)
    for attn in attention_modules(model):
        attn.yarnref_state = state
    model.set_attn_implementation(ATTENTION_NAME)
    return state


def unplug(model) -> None:
    """Undo :func:`plug`: the model's own rotary module and SDPA attention."""
    base = model.model
    if hasattr(base, "_yarnref_original_rotary"):
        base.rotary_emb = base._yarnref_original_rotary
        del base._yarnref_original_rotary
    for attn in attention_modules(model):
        if hasattr(attn, "yarnref_state"):
            del attn.yarnref_state
    model.set_attn_implementation("sdpa")
