r"""The methods a real model runs with, by name: a validated :class:`MethodSpec`.

A method is three independent choices:

1. **the rotary frequencies** (what ``rope_cos_sin`` gets): a rope config in
   transformers' names, read by :func:`yarnref.rope_frequencies`, or static
   NTK-aware scaling (:func:`yarnref.scaling.ntk_frequencies`, which
   transformers does not implement);
2. **the attention**: dense causal attention, or Dual Chunk Attention
   (An et al., arXiv:2402.17463, Eqs. (2)-(9)) with a chunk size and local
   window, optionally with Qwen2.5-1M's temperature
   :math:`s(n) = \max(1, 0.1 \ln(n / O) + 1)` on the logits (arXiv:2501.15383);
3. **sparse prefill** (``--sparse``): vertical-slash attention (MInference,
   arXiv:2407.02490, section 3.2) with per-head budgets, estimated from the
   last 64 queries; with DCA, the Qwen2.5-1M pipeline
   (:func:`yarnref.qwen_prefill`).

With ``F`` the factor and ``O`` the model's training window
(``max_position_embeddings`` of its config, 8192 for SmolLM2-135M):

==============  =====================================================================
``none``        plain RoPE (``rope_type: default``)
``linear``      Position Interpolation: ``{"rope_type": "linear", "factor": F}``
``ntk``         static NTK-aware: base ``b F^{r/(r-2)}`` (YaRN Def. 1)
``dynamic``     dynamic NTK as transformers: ``{"rope_type": "dynamic", "factor": F}``
``yarn``        ``{"rope_type": "yarn", "factor": F, "original_max_position_embeddings": O}``
``dynamic-yarn``  YaRN with ``s = max(1, seq_len / O)`` (YaRN section 3.3)
``llama3``      ``{"rope_type": "llama3", "factor": F, "low_freq_factor": 1,
                "high_freq_factor": 4, "original_max_position_embeddings": O}``
``longrope``    ``{"rope_type": "longrope", "short_factor": 1..., "long_factor": YaRN's
                per-pair scales at F, "original_max_position_embeddings": O}`` with
                ``max_position_embeddings = F O`` (no searched factors exist for
                this model, so YaRN's ramp stands in for LongRoPE's search)
``dca``         DCA over plain RoPE, ``chunk_size`` 6144 and ``local_size`` 1024
                by default (ChunkLlama's 3/4 and 1/8 of ``O``)
``dca-yarn``    DCA with Qwen2.5-1M's temperature (``original_max_position_embeddings = O``)
==============  =====================================================================

``rope_scaling`` (a dict, the command's ``--rope-scaling JSON``) is merged
over the method's ``rope_parameters``; with ``rope_type`` in it, it is the
whole rotary config (e.g. ``{"rope_type": "yarn", "factor": 8, "beta_fast": 16}``).

Conventions: positions are token indices ``0 .. n-1``; ``seq_len`` is
``max(position_ids) + 1`` (transformers' rule for dynamic methods); the
rotary tables are computed in float32 as transformers does
(``rope_precision="float32"``) unless ``"float64"`` is asked for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..checks import check_int, check_positive_real
from ..config import parse_rope_config, rope_frequencies
from ..dca import DCAConfig
from ..errors import ConfigError, InputError
from ..scaling import ntk_frequencies

__all__ = [
    "METHODS",
    "DEFAULT_FACTOR",
    "DEFAULT_SPARSE_BUDGET",
    "MethodSpec",
    "SparseSpec",
    "method_spec",
    "model_rope_config",
    "uniform_sparse_table",
]

METHODS = ("none", "linear", "ntk", "dynamic", "yarn", "dynamic-yarn", "llama3", "longrope", "dca", "dca-yarn")
#: Factor used when none is given (YaRN x4, the issue tracker's and the docs' default comparison).
DEFAULT_FACTOR = 4.0
#: MInference's default vertical-slash budget (vertical columns, slash diagonals).
DEFAULT_SPARSE_BUDGET = (1000, 6096)
ROPE_PRECISIONS = ("float32", "float64")
_SCALED = ("linear", "ntk", "dynamic", "yarn", "dynamic-yarn", "llama3", "longrope")


def model_rope_config(config) -> dict[str, Any]:
    """The rotary part of a transformers model config, as a config.json-shaped dict yarnref reads.

    ``config``: a transformers ``PretrainedConfig`` or a dict.  Raises
    :class:`~yarnref.errors.ConfigError` for partial rotary (the Llama, Qwen2
    and Mistral code rotates every feature).
    """
    get = (lambda k, d=None: config.get(k, d)) if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    rope = get("rope_parameters") or get("rope_scaling") or {}
    theta = rope.get("rope_theta", get("rope_theta"))
    heads = get("num_attention_heads")
    head_dim = get("head_dim") or get("hidden_size") // heads
    partial = rope.get("partial_rotary_factor", get("partial_rotary_factor", 1.0)) or 1.0
    if partial != 1.0:
        raise ConfigError("partial_rotary_factor", partial, "1.0 (the Llama/Qwen2/Mistral code rotates every feature)")
    out = {
        "model_type": get("model_type", "llama"),
        "hidden_size": get("hidden_size"),
        "num_attention_heads": heads,
        "head_dim": head_dim,
        "max_position_embeddings": get("max_position_embeddings"),
        "rope_theta": theta,
        "rope_parameters": {k: v for k, v in dict(rope).items() if k != "partial_rotary_factor"},
    }
    out["rope_parameters"].setdefault("rope_type", "default")
    out["rope_parameters"]["rope_theta"] = theta
    return out


@dataclass(frozen=True)
class SparseSpec:
    """Vertical-slash prefill: one budget for every head, or a per-layer ``sparse_attention_config`` table."""

    vertical_size: int = DEFAULT_SPARSE_BUDGET[0]
    slash_size: int = DEFAULT_SPARSE_BUDGET[1]
    #: a Qwen2.5-1M ``sparse_attention_config`` (list over layers of {head: [pattern, v, s, score]}), or None
    table: Any = field(default=None, compare=False, hash=False)
    last_q: int = 64


def uniform_sparse_table(layers: int, heads: int, vertical_size: int, slash_size: int) -> list[dict]:
    """A ``sparse_attention_config`` giving every head of every layer the same budget (score 0)."""
    return [{str(h): ["vertical_and_slash", int(vertical_size), int(slash_size), 0.0] for h in range(heads)} for _ in range(layers)]


@dataclass(frozen=True)
class MethodSpec:
    """A method, validated against a model: frequencies, attention and sparse prefill.

    ``rope_config``: the config.json-shaped dict of the rotary frequencies
    (transformers' names); ``ntk_factor``: static NTK-aware instead (its
    ``rope_config`` is the plain one); ``dynamic_yarn``: YaRN with ``s`` from
    ``seq_len``; ``dca``: a :class:`yarnref.dca.DCAConfig` or None;
    ``sparse``: a :class:`SparseSpec` or None; ``prefill_chunk``: queries per
    forward when prefilling (None: the whole input at once).
    """

    name: str
    factor: float | None
    rope_config: dict = field(compare=False, hash=False)
    ntk_factor: float | None = None
    dynamic_yarn: bool = False
    dca: DCAConfig | None = None
    sparse: SparseSpec | None = None
    prefill_chunk: int | None = None
    rope_precision: str = "float32"

    @property
    def depends_on_length(self) -> bool:
        """True if the frequencies change with ``seq_len`` (dynamic NTK, dynamic YaRN, LongRoPE)."""
        return self.dynamic_yarn or self.rope_config["rope_parameters"]["rope_type"] in ("dynamic", "longrope")

    @property
    def transformers_rope_parameters(self) -> dict | None:
        """The ``rope_parameters`` transformers itself would run this with, or None if it has no such method."""
        if self.ntk_factor is not None or self.dynamic_yarn or self.dca is not None:
            return None
        return dict(self.rope_config["rope_parameters"])

    def frequencies(self, seq_len: int | None = None) -> tuple[np.ndarray, float]:
        """``(inv_freq, attention_factor)`` (float64 ``(head_dim/2,)``, float) at the current length ``seq_len``."""
        rc = self.rope_config
        if self.ntk_factor is not None:
            rotary = parse_rope_config(rc).rotary_dim
            return ntk_frequencies(rotary, float(rc["rope_theta"]), self.ntk_factor)
        if self.dynamic_yarn:
            return rope_frequencies(rc, seq_len=seq_len, dynamic_yarn=True)
        return rope_frequencies(rc, seq_len=seq_len)

    def check_length(self, length: int, param: str = "length") -> int:
        """``length`` if this method can run a sequence that long (its config's checks), else an InputError."""
        length = check_int(param, length, 2)
        try:
            self.frequencies(length)
        except (ConfigError, InputError) as error:
            raise InputError(param, length, f"a length the {self.name} config accepts ({error})") from None
        return length

    def describe(self) -> dict:
        """A JSON-ready summary (for result files)."""
        out = {
            "method": self.name,
            "factor": self.factor,
            "rope_parameters": self.rope_config["rope_parameters"],
            "max_position_embeddings": self.rope_config["max_position_embeddings"],
            "rope_precision": self.rope_precision,
        }
        if self.ntk_factor is not None:
            out["ntk_aware_factor"] = self.ntk_factor
        if self.dynamic_yarn:
            out["dynamic_yarn"] = True
        if self.dca is not None:
            out["dca"] = {"chunk_size": self.dca.chunk_size, "local_size": self.dca.local_size,
                          "temperature": self.dca.temperature,
                          "original_max_position_embeddings": self.dca.original_max_position_embeddings}
        if self.sparse is not None:
            out["sparse"] = {"last_q": self.sparse.last_q, "table": self.sparse.table is not None}
            if self.sparse.table is None:
                out["sparse"].update(vertical_size=self.sparse.vertical_size, slash_size=self.sparse.slash_size)
        if self.prefill_chunk is not None:
            out["prefill_chunk"] = self.prefill_chunk
        return out


def _rope_scaling(value) -> dict | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise InputError("rope_scaling", value, f"a JSON object of rope parameters ({error.msg})") from None
    if not isinstance(value, dict):
        raise InputError("rope_scaling", value, "a JSON object of rope parameters, e.g. {\"rope_type\": \"yarn\", \"factor\": 8}")
    return dict(value)


def _sparse_table(table, layers: int, heads: int):
    """Validate a ``sparse_attention_config`` table against the model (every layer, every head)."""
    from ..prefill import sparse_attention_config_for

    if isinstance(table, str):
        from pathlib import Path

        try:
            table = json.loads(Path(table).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InputError("sparse_config", table, f"a readable JSON file holding a sparse_attention_config ({error})") from None
    if isinstance(table, dict) and "sparse_attention_config" in table:
        table = table["sparse_attention_config"]
    if not isinstance(table, list) or len(table) != layers:
        raise InputError("sparse_config", type(table).__name__, f"a list of {layers} layers of {{head: [pattern, vertical, slash, score]}}")
    for layer in range(layers):
        sparse_attention_config_for({"chunk_size": 2, "local_size": 1, "sparse_attention_config": table}, layer, (0, heads))
    return table


def method_spec(
    name: str,
    model_config,
    *,
    factor: float | None = None,
    rope_scaling=None,
    dca_chunk: int | None = None,
    dca_local: int | None = None,
    sparse: bool = False,
    sparse_budget: tuple[int, int] | None = None,
    sparse_config=None,
    prefill_chunk: int | None = None,
    rope_precision: str = "float32",
) -> MethodSpec:
    """Build and validate a :class:`MethodSpec` for a model (its transformers config or config dict).

    Raises :class:`~yarnref.errors.InputError` naming the option for an
    unknown method, a factor below 1 or not finite, DCA sizes that do not fit
    (``1 <= dca_local < dca_chunk``), a budget below 1, options the method
    does not take; :class:`~yarnref.errors.ConfigError` for a rope config
    yarnref rejects.
    """
    if name not in METHODS:
        raise InputError("method", name, f"one of {', '.join(METHODS)}")
    if rope_precision not in ROPE_PRECISIONS:
        raise InputError("rope_precision", rope_precision, f"one of {ROPE_PRECISIONS}")
    base = model_rope_config(model_config)
    original = int(base["max_position_embeddings"])
    theta = base["rope_theta"]
    if factor is not None:
        factor = check_positive_real("factor", factor)
        if factor < 1.0:
            raise InputError("factor", factor, "a finite number >= 1 (the context extension factor)")
        if name not in _SCALED:
            raise InputError("factor", factor, f"not given with --method {name} (it has no factor; scaled methods: {', '.join(_SCALED)})")
    f = DEFAULT_FACTOR if factor is None else factor
    is_dca = name in ("dca", "dca-yarn")
    if (dca_chunk is not None or dca_local is not None) and not is_dca:
        raise InputError("dca_chunk" if dca_chunk is not None else "dca_local", dca_chunk if dca_chunk is not None else dca_local,
                         "not given unless --method is dca or dca-yarn")

    params: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    max_pos = original
    ntk_factor = None
    dynamic_yarn = False
    if name == "linear":
        params.update(rope_type="linear", factor=f)
    elif name == "ntk":
        ntk_factor = f
    elif name == "dynamic":
        params.update(rope_type="dynamic", factor=f)
    elif name in ("yarn", "dynamic-yarn"):
        params.update(rope_type="yarn", factor=f, original_max_position_embeddings=original)
        max_pos = int(round(f * original))
        dynamic_yarn = name == "dynamic-yarn"  # the factor stays for the config's checks; s comes from seq_len
    elif name == "llama3":
        params.update(rope_type="llama3", factor=f, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=original)
    elif name == "longrope":
        yarn_cfg = dict(base, rope_parameters={"rope_type": "yarn", "factor": f, "rope_theta": theta,
                                               "original_max_position_embeddings": original})
        plain, _ = rope_frequencies(dict(base, rope_parameters={"rope_type": "default", "rope_theta": theta}))
        scaled, _ = rope_frequencies(yarn_cfg)
        params.update(rope_type="longrope", short_factor=[1.0] * plain.size, long_factor=[float(x) for x in plain / scaled],
                      original_max_position_embeddings=original)
        max_pos = int(round(f * original))

    extra = _rope_scaling(rope_scaling)
    if extra is not None:
        if is_dca or name == "ntk" or dynamic_yarn:
            raise InputError("rope_scaling", extra, f"not given with --method {name} (its frequencies are not a transformers rope config)")
        if "rope_type" in extra:
            params = {"rope_theta": theta}
        params.update(extra)
        if "max_position_embeddings" in params:  # a convenience: the length the config is stretched to
            max_pos = check_int("rope_scaling.max_position_embeddings", params.pop("max_position_embeddings"), 1)
        elif params.get("rope_type") in ("yarn", "longrope") and "factor" in params and "original_max_position_embeddings" in params:
            max_pos = int(round(float(params["factor"]) * int(params["original_max_position_embeddings"])))
    rope_config = dict(base, max_position_embeddings=max_pos, rope_parameters=params)
    parse_rope_config(rope_config)  # ConfigError naming the key if yarnref rejects it

    dca = None
    if is_dca:
        chunk = check_int("dca_chunk", 3 * original // 4 if dca_chunk is None else dca_chunk, 2)
        local = check_int("dca_local", original // 8 if dca_local is None else dca_local, 1)
        if local >= chunk:
            raise InputError("dca_local", local, f"an integer < dca_chunk = {chunk}")
        dca = DCAConfig(chunk_size=chunk, local_size=local,
                        original_max_position_embeddings=original if name == "dca-yarn" else None)

    sparse_spec = None
    if sparse_config is not None and not sparse:
        sparse = True
    if sparse_budget is not None and not sparse:
        raise InputError("sparse_budget", sparse_budget, "given only with --sparse")
    if sparse:
        layers = int(_get(model_config, "num_hidden_layers"))
        heads = int(_get(model_config, "num_attention_heads"))
        if sparse_config is not None:
            if sparse_budget is not None:
                raise InputError("sparse_budget", sparse_budget, "not given together with a sparse_attention_config file")
            sparse_spec = SparseSpec(table=_sparse_table(sparse_config, layers, heads))
        else:
            v, s = DEFAULT_SPARSE_BUDGET if sparse_budget is None else sparse_budget
            v, s = check_int("sparse_vertical", v, 1), check_int("sparse_slash", s, 1)
            sparse_spec = SparseSpec(vertical_size=v, slash_size=s, table=uniform_sparse_table(layers, heads, v, s))
    if prefill_chunk is not None:
        prefill_chunk = check_int("prefill_chunk", prefill_chunk, 1)
    return MethodSpec(name=name, factor=(f if name in _SCALED else None), rope_config=rope_config, ntk_factor=ntk_factor,
                      dynamic_yarn=dynamic_yarn, dca=dca, sparse=sparse_spec, prefill_chunk=prefill_chunk,
                      rope_precision=rope_precision)


def _get(config, key):
    return config.get(key) if isinstance(config, dict) else getattr(config, key)


def describe_factor(spec: MethodSpec) -> str:
    """``"yarn x4"``-style label."""
    return spec.name if spec.factor is None or math.isclose(spec.factor, 1.0) else f"{spec.name} x{spec.factor:g}"
