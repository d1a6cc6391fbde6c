"""Real model configs (the RoPE-relevant part of their config.json), with where each value comes from.

Each :class:`Preset` holds a config.json-shaped dict with Hugging Face key
names: the keys that decide positions and attention shapes (``model_type``,
``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim``, ``num_hidden_layers``, ``max_position_embeddings``,
``rope_theta``, ``rope_scaling``, ...), not the whole file.  ``source`` says
where the values were read, ``notes`` what to know about them.

    >>> from yarnref.presets import get_preset
    >>> from yarnref.config import rope_frequencies
    >>> inv_freq, m = rope_frequencies(get_preset("yarn-llama-2-7b-128k"))
    >>> round(m, 6)
    1.346574

:func:`get_preset` returns a deep copy, so editing it never changes the preset.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = ["Preset", "PRESETS", "DEFAULT_PRESET", "find_preset", "get_preset", "preset_names", "similar_preset_names"]


@dataclass(frozen=True)
class Preset:
    """A named real-model config: ``config`` (config.json-shaped), ``source`` (provenance), ``notes``."""

    name: str
    config: dict[str, Any] = field(repr=False)
    source: str
    notes: str = ""


_LLAMA2_7B = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "num_hidden_layers": 32,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "rope_scaling": None,
}


def _yarn_llama2(factor: float) -> dict[str, Any]:
    return {
        **_LLAMA2_7B,
        "max_position_embeddings": int(factor * 4096),
        "rope_scaling": {"type": "yarn", "factor": factor, "original_max_position_embeddings": 4096},
    }


_MISTRAL_7B = {
    "model_type": "mistral",
    "architectures": ["MistralForCausalLM"],
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "rope_theta": 10000.0,
}

_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

_QWEN25_7B = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 3584,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "num_hidden_layers": 28,
}

# Phi-3-mini-128k-instruct's LongRoPE factors (48 = rotary_dim / 2 = 96 / 2 entries each), verbatim from the
# config.json as released (transformers_version 4.39.3), read from Microsoft's copy of it in
# dotnet/machinelearning @ 6d1f7e2bf83e260ceb4f07ad1ae9fe3257033d49,
# src/Microsoft.ML.GenAI.Phi/Resource/Config/phi-3-mini-128k-instruct-config.json; the same two lists are in
# torchtune's phi3_mini_128k builder (joecummings/torchtune @ 74cb6d24, torchtune/models/phi3/_model_builders.py).
_PHI3_MINI_128K_LONG = [
    1.0299999713897705, 1.0499999523162842, 1.0499999523162842, 1.0799999237060547, 1.2299998998641968,
    1.2299998998641968, 1.2999999523162842, 1.4499999284744263, 1.5999999046325684, 1.6499998569488525,
    1.8999998569488525, 2.859999895095825, 3.68999981880188, 5.419999599456787, 5.489999771118164,
    5.489999771118164, 9.09000015258789, 11.579999923706055, 15.65999984741211, 15.769999504089355,
    15.789999961853027, 18.360000610351562, 21.989999771118164, 23.079999923706055, 30.009998321533203,
    32.35000228881836, 32.590003967285156, 35.56000518798828, 39.95000457763672, 53.840003967285156,
    56.20000457763672, 57.95000457763672, 59.29000473022461, 59.77000427246094, 59.920005798339844,
    61.190006256103516, 61.96000671386719, 62.50000762939453, 63.3700065612793, 63.48000717163086,
    63.48000717163086, 63.66000747680664, 63.850006103515625, 64.08000946044922, 64.760009765625,
    64.80001068115234, 64.81001281738281, 64.81001281738281,
]
_PHI3_MINI_128K_SHORT = [
    1.05, 1.05, 1.05, 1.1, 1.1, 1.1500000000000001, 1.2000000000000002, 1.2500000000000002,
    1.3000000000000003, 1.3500000000000003, 1.5000000000000004, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.0500000000000007,
    2.0500000000000007, 2.0500000000000007, 2.1000000000000005, 2.1000000000000005, 2.1000000000000005,
    2.1500000000000004, 2.1500000000000004, 2.3499999999999996, 2.549999999999999, 2.5999999999999988,
    2.5999999999999988, 2.7499999999999982, 2.849999999999998, 2.849999999999998, 2.9499999999999975,
]

_HF = "https://huggingface.co/"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "llama-2-7b",
            dict(_LLAMA2_7B),
            source=_HF + "meta-llama/Llama-2-7b-hf config.json",
            notes="Plain RoPE (rope_scaling null), 4k context. Older copies of the config.json omit rope_theta; "
            "transformers then uses its default 10000.0, which is the value given here.",
        ),
        Preset(
            "yarn-llama-2-7b-64k",
            _yarn_llama2(16.0),
            source=_HF + "NousResearch/Yarn-Llama-2-7b-64k; values as jquesnelle/yarn finetune.py @ 995db5b writes "
            "them: rope_scaling {type yarn, factor, original_max_position_embeddings 4096}, "
            "max_position_embeddings = factor * 4096",
            notes="YaRN s = 16 over Llama 2 7B (paper Table 2). beta_fast/beta_slow are not in the config; the "
            "training code used the Llama class defaults 32/1, which transformers also uses.",
        ),
        Preset(
            "yarn-llama-2-7b-128k",
            _yarn_llama2(32.0),
            source=_HF + "NousResearch/Yarn-Llama-2-7b-128k; values as jquesnelle/yarn finetune.py @ 995db5b writes "
            "them (factor 32, original 4096, max_position_embeddings 131072)",
            notes="YaRN s = 32 (paper Table 2: PPL 2.37 at 128k). Correction range (lo, hi) = (20, 46); attention "
            "factor 0.1 ln 32 + 1.",
        ),
        Preset(
            "yarn-mistral-7b-128k",
            {
                **_MISTRAL_7B,
                "max_position_embeddings": 131072,
                "rope_scaling": {
                    "type": "yarn",
                    "factor": 16.0,
                    "original_max_position_embeddings": 8192,
                    "beta_fast": 128,
                    "beta_slow": 2,
                },
            },
            source=_HF + "NousResearch/Yarn-Mistral-7b-128k; factor and original length as jquesnelle/yarn "
            "finetune.py @ 995db5b writes them for --architecture mistral; beta_fast=128, beta_slow=2 from "
            "scaled_rope/modeling_mistral_yarn.py (MistralYaRNScaledRotaryEmbedding defaults)",
            notes="The checkpoint was trained and evaluated with beta_fast=128, beta_slow=2: the Mistral YaRN class "
            "defaults, which _init_rope never overrides. The published config.json does not carry them (it was "
            "written for that remote code), so running the Hub config through transformers' 'yarn' uses 32/1 — a "
            "mismatch. This preset states the betas the model was trained with.",
        ),
        Preset(
            "llama-3.1-8b",
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": 4096,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "num_hidden_layers": 32,
                "max_position_embeddings": 131072,
                "rope_theta": 500000.0,
                "rope_scaling": dict(_LLAMA31_ROPE),
            },
            source=_HF + "meta-llama/Llama-3.1-8B config.json",
            notes="llama3 schedule: factor 8, low/high freq factors 1/4, original 8192; head_dim 128.",
        ),
        Preset(
            "llama-3.2-1b",
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": 2048,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "head_dim": 64,
                "num_hidden_layers": 16,
                "max_position_embeddings": 131072,
                "rope_theta": 500000.0,
                "rope_scaling": {**_LLAMA31_ROPE, "factor": 32.0},
            },
            source=_HF + "meta-llama/Llama-3.2-1B config.json",
            notes="As Llama 3.1 but factor 32 and head_dim 64.",
        ),
        Preset(
            "qwen2.5-7b-instruct-yarn",
            {
                **_QWEN25_7B,
                "max_position_embeddings": 32768,
                "rope_theta": 1000000.0,
                "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
            },
            source=_HF + "Qwen/Qwen2.5-7B-Instruct config.json plus the rope_scaling block its model card says to "
            "add for inputs over 32,768 tokens",
            notes="Static YaRN x4 (32k -> 128k). max_position_embeddings stays 32768, so transformers' implicit "
            "factor is 1 and it does not warn. Qwen's card notes static YaRN may hurt short texts; vLLM needs "
            "--max-model-len for the longer context (vllm#8793).",
        ),
        Preset(
            "qwen2.5-7b-instruct-1m",
            {
                **_QWEN25_7B,
                "max_position_embeddings": 1010000,
                "rope_theta": 10000000.0,
                "rope_scaling": None,
                "sliding_window": 32768,
                "use_sliding_window": False,
                "dual_chunk_attention_config": {
                    "chunk_size": 262144,
                    "local_size": 8192,
                    "original_max_position_embeddings": 262144,
                },
            },
            source=_HF + "Qwen/Qwen2.5-7B-Instruct-1M config.json",
            notes="Plain RoPE with base 1e7 plus Dual Chunk Attention (chunk_len = 262144 - 8192 = 253952); the "
            "vertical-slash sparse_attention_config is a separate file, not part of config.json.",
        ),
        Preset(
            "deepseek-v3",
            {
                "model_type": "deepseek_v3",
                "architectures": ["DeepseekV3ForCausalLM"],
                "hidden_size": 7168,
                "num_attention_heads": 128,
                "num_key_value_heads": 128,
                "num_hidden_layers": 61,
                "q_lora_rank": 1536,
                "kv_lora_rank": 512,
                "qk_nope_head_dim": 128,
                "qk_rope_head_dim": 64,
                "v_head_dim": 128,
                "max_position_embeddings": 163840,
                "rope_theta": 10000,
                "rope_scaling": {
                    "beta_fast": 32,
                    "beta_slow": 1,
                    "factor": 40,
                    "mscale": 1.0,
                    "mscale_all_dim": 1.0,
                    "original_max_position_embeddings": 4096,
                    "type": "yarn",
                },
            },
            source=_HF + "deepseek-ai/DeepSeek-V3 config.json",
            notes="MLA: RoPE on the 64-dim qk_rope sub-head only. mscale == mscale_all_dim, so the cos/sin factor "
            "is 1.0; the softmax scale is 192^-0.5 * (0.1 ln 40 + 1)^2 (scaling.deepseek_softmax_scale). "
            "transformers' DeepSeek-V3 reads interleaved pairs and writes half-split (rope_interleave).",
        ),
        Preset(
            "gpt-oss-20b",
            {
                "model_type": "gpt_oss",
                "architectures": ["GptOssForCausalLM"],
                "hidden_size": 2880,
                "num_attention_heads": 64,
                "num_key_value_heads": 8,
                "head_dim": 64,
                "num_hidden_layers": 24,
                "max_position_embeddings": 131072,
                "initial_context_length": 4096,
                "sliding_window": 128,
                "rope_theta": 150000,
                "rope_scaling": {
                    "rope_type": "yarn",
                    "factor": 32.0,
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                    "truncate": False,
                    "original_max_position_embeddings": 4096,
                },
            },
            source=_HF + "openai/gpt-oss-20b config.json",
            notes="YaRN x32 with truncate=false: the correction range is not floored/ceiled (vllm#27722, "
            "sglang#14270); ggml cannot represent this. Half-split pairing.",
        ),
        Preset(
            "phi-3-mini-128k",
            {
                "model_type": "phi3",
                "architectures": ["Phi3ForCausalLM"],
                "hidden_size": 3072,
                "num_attention_heads": 32,
                "num_key_value_heads": 32,
                "num_hidden_layers": 32,
                "max_position_embeddings": 131072,
                "original_max_position_embeddings": 4096,
                "rope_theta": 10000.0,
                "sliding_window": 262144,
                "rope_scaling": {
                    "long_factor": list(_PHI3_MINI_128K_LONG),
                    "short_factor": list(_PHI3_MINI_128K_SHORT),
                    "type": "su",
                },
            },
            source=_HF + "microsoft/Phi-3-mini-128k-instruct config.json as first released (transformers_version "
            "4.39.3), read from Microsoft's copy in dotnet/machinelearning @ 6d1f7e2 "
            "(src/Microsoft.ML.GenAI.Phi/Resource/Config/phi-3-mini-128k-instruct-config.json); the same lists "
            "are in torchtune's phi3_mini_128k builder",
            notes="LongRoPE ('su'): 48 short and 48 long factors (head_dim 96), no 'factor' key, so the attention "
            "factor is sqrt(1 + ln(131072/4096) / ln 4096) for both lists. The Hub repository was updated later "
            "(mid-2024 refresh) with different factor lists; those were not verified here.",
        ),
    ]
}

#: The preset used when none is named.
DEFAULT_PRESET = "qwen2.5-7b-instruct-yarn"


def preset_names() -> list[str]:
    """The preset names, sorted."""
    return sorted(PRESETS)


def similar_preset_names(name: str, limit: int = 3) -> list[str]:
    """Up to ``limit`` preset names close to ``name`` (case-insensitive, :func:`difflib.get_close_matches`), best first."""
    if not isinstance(name, str):
        return []
    by_lower = {preset.lower(): preset for preset in PRESETS}
    close = difflib.get_close_matches(name.strip().lower(), list(by_lower), n=limit, cutoff=0.6)
    return [by_lower[match] for match in close]


def _unknown(name) -> str:
    """The ``allowed`` phrase of the error for an unknown preset name: suggestions first, then every name."""
    close = similar_preset_names(name) if isinstance(name, str) else []
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}a preset name, case-insensitive: one of {preset_names()}"


def find_preset(name: str) -> Preset:
    """The preset called ``name``, matched case-insensitively (``"Llama-3.1-8B"`` is ``"llama-3.1-8b"``).

    An unknown name raises :class:`~yarnref.errors.ConfigError` whose message
    suggests the closest names (:func:`similar_preset_names`) and lists them all.
    """
    if isinstance(name, str):
        if name in PRESETS:
            return PRESETS[name]
        by_lower = {preset.lower(): preset for preset in PRESETS}
        key = name.strip().lower()
        if key in by_lower:
            return PRESETS[by_lower[key]]
    raise ConfigError("preset", name, _unknown(name))


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of the named preset's config dict (name matched as :func:`find_preset` does).

    Unknown names raise :class:`~yarnref.errors.ConfigError` with suggestions and the list of names.
    """
    return copy.deepcopy(find_preset(name).config)
