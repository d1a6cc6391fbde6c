r"""The ``yarnref`` command: explain a model's RoPE scaling, list presets, write golden vectors.

::

    yarnref --version
    yarnref explain [MODEL] [--seq-len N] [--plot FILE.png] [--pairs compact|all] [--json]
                    [--stack STACK] [--precision P] [--max-model-len N]
    yarnref presets [--json]
    yarnref vectors MODEL --out FILE.npz [--positions P ...] [--seed N] [--seq-len N]
                    [--stack STACK] [--precision P] [--max-model-len N]

``MODEL`` is a preset name (``yarnref presets``, matched case-insensitively;
an unknown name gets "did you mean" suggestions) or a path to a Hugging Face
``config.json`` (or to the folder holding one); ``explain`` defaults to
:data:`yarnref.presets.DEFAULT_PRESET`.  Also runnable as ``python -m yarnref``.

``--stack`` is one of :data:`yarnref.config.STACKS` (``transformers``,
``vllm``, ``llama.cpp``, ``yarn_authors``; see
:func:`yarnref.config.stack_options`); by default transformers, or vLLM for
the rope types only vLLM implements.  ``--max-model-len`` is vLLM's
``--max-model-len`` (llama.cpp's ``n_ctx``), from which those stacks pick
LongRoPE's factor list.  ``--precision`` is the dtype the stack's model runs
in: ``float64`` (the spec alone), ``float32``, ``bfloat16`` or ``float16``;
the stack computes its frequencies, angles and cos/sin in float32 and casts
the tables to that dtype (:func:`yarnref.vectors.stack_tables`).

``explain`` on a Dual Chunk Attention model (a config with
``dual_chunk_attention_config``) also summarises the per-head sparse budgets
when the config carries a ``sparse_attention_config`` table, and ``--plot``
draws the DCA distance map (:func:`yarnref.plot.dca_distance_map`) instead of
the per-pair scales, which DCA leaves at 1.

JSON output (``--json``), for scripts; the keys are stable (new keys may be
added, none removed or renamed within a ``format_version``):

* ``explain --json``: one object, :data:`EXPLAIN_KEYS` (see
  :func:`explain_data`): ``format`` (``"yarnref-explain"``),
  ``format_version``, ``model``, ``source``, ``notes``, ``model_type``,
  ``rope_type``, ``head_dim``, ``rotary_dim``, ``partial_rotary_factor``,
  ``base``, ``factor``, ``original_max_position_embeddings``,
  ``max_position_embeddings``, ``seq_len``, ``stack``, ``max_model_len``,
  ``pairing``, ``attention_factor``, ``inv_freq`` (the float64 list
  :func:`yarnref.rope_frequencies` returns for that stack; JSON floats
  round-trip exactly), ``base_inv_freq``, ``scales``, ``regions``,
  ``counts``, ``yarn`` (``lo``, ``hi``, ``beta_fast``, ``beta_slow``,
  ``truncate``, or null), ``mla`` (or null), ``dca`` (or null; with
  ``sparse``, the budget summary or null), ``precision`` (or null),
  ``layer_types`` (or null), ``warnings``, ``plot`` (the path written, or
  null).
* ``presets --json``: a list of objects with :data:`PRESET_KEYS`: ``name``,
  ``rope_type``, ``factor``, ``dca``, ``source``, ``notes``, ``config``.

What ``explain`` prints, per pair ``i = 0 .. r/2 - 1`` (YaRN paper,
arXiv:2309.00071, Eq. 17 and section 3; RoFormer Eq. 15):

* the base frequency :math:`\theta_i = b^{-2i/r}` and its wavelength
  :math:`\lambda_i = 2\pi/\theta_i` (tokens per full turn);
* the scaled wavelength :math:`\lambda'_i = 2\pi/\theta'_i`;
* the turns the unscaled pair makes over the original length,
  :math:`r(i) = L/\lambda_i` (YaRN keeps pairs with :math:`r > \beta_{fast}`
  and interpolates pairs with :math:`r < \beta_{slow}`);
* the scale :math:`\theta_i/\theta'_i`: 1 = kept, ``s`` = interpolated (PI).

Errors (an unknown preset, a file that cannot be read, an invalid config, a
bad option, and anything unexpected) print one line, ``yarnref: error: ...``,
on stderr and exit with status 2; set ``YARNREF_TRACEBACK=1`` to get the
traceback of an unexpected error instead.  ``vectors --out`` never overwrites
an existing file without ``--force``, writes to a temporary file renamed into
place (no partial files), and adds ``.npz`` to a name without it, as NumPy
does; the path it prints is the path it wrote.

Conventions
-----------
* Frequencies are what :func:`yarnref.config.rope_frequencies` returns
  (transformers v5 semantics, float64).  ``--seq-len`` is the current sequence
  length ``max(position_ids) + 1``; it matters for dynamic NTK, LongRoPE
  (long factors iff ``seq_len > L``) and the DCA temperature.
* A pair is "kept" if its scale is 1, "interpolated" if it is ``s`` (both
  within a relative 1e-9), "blended" if strictly between, "other" otherwise
  (LongRoPE's searched factors may exceed ``s``).
* Exit status: 0 success, 2 error (argparse's own usage errors also exit 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .config import STACKS, VLLM_ONLY_TYPES, RopeConfig, parse_rope_config, rope_frequencies
from .errors import ConfigError, InputError, YarnrefError
from .presets import DEFAULT_PRESET, PRESETS, find_preset, preset_names, similar_preset_names
from .rope import base_inv_freq

__all__ = ["main", "load_model", "explain", "explain_data", "pair_regions", "format_presets", "presets_data",
           "sparse_budget_summary", "default_stack", "EXPLAIN_KEYS", "PRESET_KEYS", "PRECISIONS"]

#: ``--precision`` values: the dtype the stack's model runs in (float64: the spec alone).
PRECISIONS = ("float64", "float32", "bfloat16", "float16")

#: The keys of ``yarnref explain --json`` (stable within EXPLAIN_FORMAT_VERSION).
EXPLAIN_KEYS = (
    "format", "format_version", "model", "source", "notes", "model_type", "rope_type", "head_dim", "rotary_dim",
    "partial_rotary_factor", "base", "factor", "original_max_position_embeddings", "max_position_embeddings",
    "seq_len", "stack", "max_model_len", "pairing", "attention_factor", "inv_freq", "base_inv_freq", "scales",
    "regions", "counts", "yarn", "mla", "dca", "precision", "layer_types", "warnings", "plot",
)
EXPLAIN_FORMAT = "yarnref-explain"
EXPLAIN_FORMAT_VERSION = 1

#: The keys of each object of ``yarnref presets --json``.
PRESET_KEYS = ("name", "rope_type", "factor", "dca", "source", "notes", "config")

PROG = "yarnref"
_REL = 1e-9  # relative tolerance for "scale is exactly 1 / exactly s"


class CommandError(Exception):
    """A user-facing error of the command: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------------------
# Loading a model


def load_model(model: str) -> tuple[dict[str, Any], str, str]:
    """``(config, name, source)`` for a preset name or a path to a config.json (or a folder holding one).

    An existing file or folder wins over a preset of the same name.  Raises
    :class:`CommandError` with a one-line message otherwise.
    """
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise CommandError(f"no config.json in the folder {model!r}")
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"cannot read {str(path)!r}: {error}") from error
        try:
            config = json.loads(text)
        except ValueError as error:
            raise CommandError(f"{str(path)!r} is not valid JSON: {error}") from error
        except RecursionError:
            raise CommandError(f"{str(path)!r} is nested too deeply to be a config.json") from None
        if not isinstance(config, dict):
            raise CommandError(f"{str(path)!r} holds a JSON {type(config).__name__}, not an object (a config.json dict)")
        return config, path.stem if path.name != "config.json" else (path.parent.name or "config.json"), str(path)
    try:
        preset = find_preset(model)
    except ConfigError:
        close = similar_preset_names(model)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise CommandError(
            f"unknown model {model!r}: not a preset name and no such file; {hint}"
            f"MODEL is a preset name, case-insensitive ({', '.join(preset_names())}), or a path to a config.json"
        ) from None
    return json.loads(json.dumps(preset.config)), preset.name, preset.source


# ----------------------------------------------------------------------------------------------
# Formatting helpers


def _num(x: float) -> str:
    """A readable number: ``10,000`` for integral values, 6 significant digits otherwise."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return f"{x:,.0f}"
    return f"{x:.6g}"


def _tokens(x: float) -> str:
    """A length in tokens: 2 decimals below 100, thousands separators up to 1e9, then scientific."""
    if x < 100:
        return f"{x:.2f}"
    if x < 1e9:
        return f"{x:,.0f}"
    return f"{x:.3e}"


def pair_regions(scales: np.ndarray, factor: float | None) -> list[str]:
    """Classify each pair's scale: ``"kept"``, ``"interp"`` (= factor), ``"blend"`` (between) or ``"other"``."""
    out = []
    for x in np.asarray(scales, dtype=np.float64):
        if abs(x - 1.0) <= _REL:
            out.append("kept")
        elif factor is not None and abs(x - factor) <= _REL * factor:
            out.append("interp")
        elif factor is not None and 1.0 < x < factor:
            out.append("blend")
        else:
            out.append("other")
    return out


def _compact_rows(regions: list[str], must: set[int]) -> list[int]:
    """Pair indices to show: the first and last two of each run of one region, plus ``must``."""
    n = len(regions)
    rows: set[int] = set(i for i in must if 0 <= i < n)
    start = 0
    while start < n:
        end = start
        while end + 1 < n and regions[end + 1] == regions[start]:
            end += 1
        rows.update(range(start, min(start + 2, end + 1)))
        rows.update(range(max(end - 1, start), end + 1))
        start = end + 1
    if len(rows) > 24:  # many short runs (LongRoPE): ends plus an even sample
        rows = set(range(3)) | set(range(n - 3, n)) | {int(round(x)) for x in np.linspace(0, n - 1, 12)}
    return sorted(rows)


# ----------------------------------------------------------------------------------------------
# explain


def _yarn_range(rc: RopeConfig, stack: str) -> dict[str, Any]:
    """YaRN's correction range as ``stack`` computes it: ``lo``, ``hi``, ``beta_fast``, ``beta_slow``, ``truncate``."""
    from .config import stack_options
    from .scaling.yarn import correction_range

    p = rc.params
    beta_fast = p.get("beta_fast") or 32
    beta_slow = p.get("beta_slow") or 1
    forced = stack_options(stack, rc)["truncate"]  # llama.cpp, the YaRN authors, vLLM's DeepSeek: always on
    truncate = bool(p.get("truncate", True)) if forced is None else bool(forced)
    lo, hi = correction_range(rc.rotary_dim, rc.base, rc.original_max_position_embeddings, beta_fast, beta_slow, truncate)
    return {"lo": float(lo), "hi": float(hi), "beta_fast": float(beta_fast), "beta_slow": float(beta_slow),
            "truncate": truncate}


def _yarn_section(rc: RopeConfig, lines: list[str], stack: str = "transformers") -> set[int]:
    from .scaling.yarn import correction_dim

    yarn = _yarn_range(rc, stack)
    beta_fast, beta_slow, truncate, lo, hi = (yarn[k] for k in ("beta_fast", "beta_slow", "truncate", "lo", "hi"))
    L = rc.original_max_position_embeddings
    r = rc.rotary_dim
    raw_lo = correction_dim(beta_fast, r, rc.base, L)
    raw_hi = correction_dim(beta_slow, r, rc.base, L)
    lines.append("")
    lines.append(
        f"YaRN correction range (beta_fast {_num(beta_fast)}, beta_slow {_num(beta_slow)}, "
        f"truncate {'on: floor/ceil' if truncate else 'off'}, clamp [0, r-1 = {r - 1}]):"
    )
    for name, value, raw, beta in (("lo", lo, raw_lo, beta_fast), ("hi", hi, raw_hi, beta_slow)):
        wavelength = 2 * math.pi * rc.base ** (2 * value / r)
        lines.append(
            f"  {name} = {_num(value):<8} (cd({_num(beta)}) = {raw:.4f}): at pair index {_num(value)} the wavelength is "
            f"{_tokens(wavelength)} tokens = {L / wavelength:.4g} turns over L = {L:,}"
        )
    lines.append(
        f"  pairs i <= lo keep theta_i; pairs i >= hi get theta_i / {_num(rc.factor)}; "
        "in between the weight of theta_i / s is (i - lo) / (hi - lo)"
    )
    if hi > r // 2 - 1:
        lines.append(f"  hi > r/2 - 1 = {r // 2 - 1}: no pair is fully interpolated")
    return {int(math.floor(lo)), int(math.ceil(hi))}


def _attention_lines(rc: RopeConfig, m: float, seq_len, lines: list[str], stack: str = "transformers") -> None:
    from .config import stack_options
    from .scaling.yarn import deepseek_softmax_scale, get_mscale

    p = rc.params
    s = rc.factor
    rule = stack_options(stack, rc)["mscale_rule"] if rc.rope_type == "yarn" else None
    if rule is not None and rule != "transformers":
        how = f"{stack}'s rule: mscale_rule {rule!r}, see yarnref.scaling.yarn_attention_factor"
    elif rc.rope_type == "longrope" and stack != "transformers":
        how = (f"{stack}'s rule: sqrt(1 + ln(max / L) / ln L) from max_position_embeddings = "
               f"{rc.max_position_embeddings:,}")
    elif rc.rope_type == "yarn":
        if p.get("attention_factor") is not None:
            how = "the config's attention_factor, used verbatim"
        elif p.get("mscale") and p.get("mscale_all_dim"):
            how = (
                f"g(s, mscale) / g(s, mscale_all_dim) = g({_num(s)}, {_num(p['mscale'])}) / "
                f"g({_num(s)}, {_num(p['mscale_all_dim'])}), g(s, mu) = 0.1 mu ln s + 1"
            )
        else:
            how = f"0.1 ln s + 1 = 0.1 ln {_num(s)} + 1 (YaRN Eq. 22)"
    elif rc.rope_type == "longrope":  # transformers
        if p.get("attention_factor") is not None:
            how = "the config's attention_factor, used verbatim"
        else:
            how = f"sqrt(1 + ln s / ln L) = sqrt(1 + ln {_num(s)} / ln {rc.original_max_position_embeddings:,})"
    else:
        how = f"rope_type {rc.rope_type!r} has none"
    lines.append("")
    lines.append(f"Attention factor m = {m:.10g}  ({how})")
    lines.append(f"  multiplied into cos and sin, so the rotary part of every logit is scaled by m^2 = {m * m:.10g}")
    if rc.is_mla:
        qk = rc.qk_nope_head_dim + rc.rotary_dim
        msa = p.get("mscale_all_dim")
        plain = qk ** -0.5
        if rc.rope_type != "default" and s is not None:
            softmax = deepseek_softmax_scale(qk, s, msa)
            lines.append(
                f"  DeepSeek MLA softmax scale: (qk_nope {rc.qk_nope_head_dim} + qk_rope {rc.rotary_dim})^-1/2 "
                f"* g(s, mscale_all_dim)^2 = {plain:.6g} * {softmax / plain:.6g} = {softmax:.6g}"
            )
            if msa:
                rope_total = m * m * softmax / plain
                lines.append(
                    f"  net logit multipliers: rope dims x {rope_total:.6g} (= m^2 g(s, mscale_all_dim)^2), "
                    f"nope dims x {softmax / plain:.6g} (= g(s, mscale_all_dim)^2 = {get_mscale(s, msa) ** 2:.6g})"
                )


def _dca_lines(rc: RopeConfig, seq_len, lines: list[str]) -> None:
    from .dca import dca_config, qwen_attention_scale

    d = dca_config(dict(rc.dual_chunk_attention))
    lines.append("")
    lines.append("Dual Chunk Attention (dual_chunk_attention_config):")
    lines.append(
        f"  chunk_size {d.chunk_size:,}, local_size {d.local_size:,}, "
        f"chunk length c = chunk_size - local_size = {d.chunk_len:,}"
    )
    lines.append(
        f"  keys sit at p mod c (< {d.chunk_len:,}); intra-chunk queries at p mod c; successive-chunk queries at "
        f"min(p mod c + c, chunk_size); earlier chunks at min(2c - 1, chunk_size) = {min(2 * d.chunk_len - 1, d.chunk_size):,}: "
        f"every relative distance stays <= chunk_size = {d.chunk_size:,}"
    )
    if d.original_max_position_embeddings:
        orig = d.original_max_position_embeddings
        line = f"  temperature: q and k x max(1, 0.1 ln(n / {orig:,}) + 1) (vLLM / Qwen2.5-1M)"
        if seq_len is not None:
            line += f"; at n = seq_len {seq_len:,}: {qwen_attention_scale(seq_len, orig):.6g}"
        lines.append(line)
    else:
        lines.append("  temperature: none (original_max_position_embeddings absent or 0)")
    if d.sparse_attention_config is not None or d.sparse_attention_enabled:
        lines.append(
            f"  sparse attention: enabled {d.sparse_attention_enabled}, threshold {d.sparse_attention_threshold:,}, "
            f"last_q {d.sparse_attention_last_q}"
        )
    summary = sparse_budget_summary(rc)
    if summary is not None:
        lines.append(f"  sparse budgets (vertical-slash, per head; {summary['layers']} layers, {summary['heads']} heads):")
        for kind in ("vertical", "slash"):
            b = summary[kind]
            counts = ", ".join(f"{budget} x {n}" for budget, n in b["counts"].items())
            lines.append(f"    {kind:<8} min {b['min']:,}, median {_num(b['median'])}, max {b['max']:,}; "
                         f"heads per budget: {counts}")
        if summary["vertical_30_as_130"]:
            lines.append(f"    ({summary['vertical_30_as_130']} heads have vertical 30 in the table, which vLLM runs as 130)")
    if rc.rope_type != "default":
        lines.append("  note: with DCA, vLLM uses the plain base and ignores the rope scaling above")


def default_stack(config: Mapping | RopeConfig) -> str:
    """The stack ``explain`` and ``vectors`` use without ``--stack``: vLLM for rope types only it implements."""
    rc = parse_rope_config(config)
    vllm_only = rc.rope_type in VLLM_ONLY_TYPES or (rc.rope_type == "dynamic" and rc.params.get("alpha") is not None)
    return "vllm" if vllm_only else "transformers"


def _budget_stats(values: np.ndarray) -> dict[str, Any]:
    budgets, counts = np.unique(values, return_counts=True)
    return {"counts": {str(int(b)): int(n) for b, n in zip(budgets, counts)}, "min": int(values.min()),
            "median": float(np.median(values)), "max": int(values.max())}


def sparse_budget_summary(config: Mapping | RopeConfig) -> dict[str, Any] | None:
    """A DCA model's vertical-slash budgets, summarised; ``None`` without a ``sparse_attention_config`` table.

    Returns ``enabled``, ``threshold``, ``last_q``, ``layers``, ``heads``
    (over all layers), ``vertical`` and ``slash`` (each ``counts``: heads per
    budget, keys the budgets as strings in increasing order; ``min``,
    ``median``, ``max``), and ``vertical_30_as_130``.  Budgets are as vLLM runs
    them (:func:`yarnref.config.sparse_attention_config_for`: a table
    vertical of 30 runs as 130).
    """
    from .config import dca_config, sparse_attention_config_for

    rc = parse_rope_config(config)
    if rc.dual_chunk_attention is None:
        return None
    d = dca_config(dict(rc.dual_chunk_attention))
    table = d.sparse_attention_config
    if table is None:
        return None
    layers = sorted(int(k) for k in table) if isinstance(table, Mapping) else list(range(len(table)))
    parsed = [sparse_attention_config_for(d, layer) for layer in layers]
    vertical = np.concatenate([b.vertical_size for b in parsed])  # (heads over all layers,)
    slash = np.concatenate([b.slash_size for b in parsed])
    config_vertical = np.concatenate([b.config_vertical_size for b in parsed])
    return {
        "enabled": bool(d.sparse_attention_enabled),
        "threshold": int(d.sparse_attention_threshold),
        "last_q": int(d.sparse_attention_last_q),
        "layers": len(layers),
        "heads": int(vertical.size),
        "vertical": _budget_stats(vertical),
        "slash": _budget_stats(slash),
        "vertical_30_as_130": int(np.count_nonzero(config_vertical == 30)),
    }


def _report_positions(rc: RopeConfig, positions: np.ndarray, seq_len, max_model_len) -> np.ndarray:
    """The default positions a forward with these lengths reaches: below ``seq_len`` or ``max_model_len``.

    Without either, a LongRoPE model uses its short factors (transformers'
    switch at ``seq_len=None``), which cover positions below the original
    length only.
    """
    limit = seq_len if seq_len is not None else max_model_len
    if limit is None and rc.rope_type == "longrope":
        limit = rc.original_max_position_embeddings
    if limit is None:
        return positions
    return np.union1d(positions[positions < limit], [limit - 1]).astype(np.int64)


def _precision_report(rc: RopeConfig, stack: str, precision: str, seq_len, max_model_len) -> dict[str, Any] | None:
    """How far the stack's float32 (and ``precision``) numbers are from the float64 spec, at the default positions."""
    if precision == "float64":
        return None
    from .rope import rope_angles, rope_cos_sin
    from .vectors import default_positions, stack_tables

    options = {"stack": stack}
    if max_model_len is not None:
        options["max_model_len"] = max_model_len
    positions = _report_positions(rc, default_positions(rc), seq_len, max_model_len)
    inv64, m = rope_frequencies(rc, seq_len, **options)
    cos64, sin64 = rope_cos_sin(inv64, positions, m)  # (n, r/2)
    arrays, notes = stack_tables(rc, positions, table_precision=precision, seq_len=seq_len, **options)
    report: dict[str, Any] = {"dtype": precision, "stack": stack, "positions": [int(p) for p in positions],
                              "largest_position": int(positions.max()), "inv_freq_max_relative_difference": None,
                              "angle_max_error": None, "table_max_error": {}, "note": notes.get("no_lower_precision_table")}
    if "inv_freq_float32" in arrays:
        inv32 = arrays["inv_freq_float32"].astype(np.float64)
        rotated = inv64 > 0  # proportional RoPE: pairs of frequency 0 are not rotated
        report["inv_freq_max_relative_difference"] = float(np.max(np.abs(inv32 - inv64)[rotated] / inv64[rotated]))
        top = positions[-1:]
        report["angle_max_error"] = float(np.max(np.abs(rope_angles(inv32, top, precision="float32")
                                                        - rope_angles(inv64, top))))
    for dtype in ("float32", precision):
        if f"cos_{dtype}" in arrays:
            report["table_max_error"][dtype] = float(max(np.max(np.abs(arrays[f"cos_{dtype}"] - cos64)),
                                                         np.max(np.abs(arrays[f"sin_{dtype}"] - sin64))))
    return report


def _precision_lines(report: dict[str, Any], lines: list[str]) -> None:
    lines.append("")
    how = ("ggml's float32 angles and cos/sin (yarnref.ggml)" if report["stack"] == "llama.cpp" else
           "float32 frequencies, angles and cos/sin" + ("" if report["dtype"] == "float32" else
                                                        f", tables cast to {report['dtype']}"))
    lines.append(f"Precision    {report['dtype']} model on {report['stack']}: {how} "
                 "(yarnref.vectors.stack_tables), against the float64 spec")
    if report["inv_freq_max_relative_difference"] is not None:
        lines.append(f"  inv_freq float32: max relative difference {report['inv_freq_max_relative_difference']:.3g}")
        lines.append(f"  angle p * theta at the largest position p = {report['largest_position']:,}: off by up to "
                     f"{report['angle_max_error']:.3g} rad in float32")
    for dtype, error in report["table_max_error"].items():
        lines.append(f"  cos/sin {dtype:<8} max |difference| {error:.3g} over positions "
                     f"{', '.join(f'{p:,}' for p in report['positions'])}")
    if report["note"]:
        lines.append(f"  {report['note']}")


def explain(
    config: Mapping | RopeConfig,
    *,
    name: str | None = None,
    source: str | None = None,
    notes: str | None = None,
    seq_len: int | None = None,
    pairs: str = "compact",
    stack: str | None = None,
    precision: str = "float64",
    max_model_len: int | None = None,
) -> str:
    """The text report ``yarnref explain`` prints for ``config`` (see the module docstring).

    ``stack``: one of :data:`yarnref.config.STACKS` (default
    :func:`default_stack`); ``precision``: one of :data:`PRECISIONS` (other
    than float64 adds the precision section); ``max_model_len``: passed to
    :func:`yarnref.rope_frequencies` (the static LongRoPE switch).
    """
    if not isinstance(pairs, str) or pairs not in ("compact", "all"):
        raise InputError("pairs", pairs, "'compact' or 'all'")
    rc = parse_rope_config(config)
    stack, options = _stack_and_options(rc, stack, precision, max_model_len)
    inv_freq, m = rope_frequencies(rc, seq_len, **options)
    theta = base_inv_freq(rc.rotary_dim, rc.base)  # (r/2,)
    with np.errstate(divide="ignore"):  # proportional RoPE: pairs with frequency 0 are not rotated
        scales = theta / inv_freq  # (r/2,)
    n = rc.rotary_dim // 2
    factor = rc.factor
    L = rc.original_max_position_embeddings or rc.max_position_embeddings

    lines = []
    lines.append(f"Model        {name or '(config)'}")
    if source:
        lines.append(f"Source       {source}")
    if notes:
        lines.append(f"Notes        {notes}")
    if rc.model_type:
        lines.append(f"model_type   {rc.model_type}")
    lines.append(f"RoPE type    {rc.rope_type}")
    head = f"head_dim {rc.head_dim}, rotary_dim {rc.rotary_dim} ({n} pairs"
    if rc.partial_rotary_factor != 1.0:
        head += f", partial_rotary_factor {rc.partial_rotary_factor:g}"
    head += ")"
    if rc.is_mla:
        head += f"; MLA: RoPE on the qk_rope sub-head, qk_nope_head_dim {rc.qk_nope_head_dim}"
    lines.append(f"Dims         {head}")
    lines.append(f"Base         {_num(rc.base)} (rope_theta)")
    lines.append(f"Factor       {'none (no scaling)' if factor is None else _num(factor)}")
    lengths = []
    if rc.original_max_position_embeddings is not None:
        lengths.append(f"original {rc.original_max_position_embeddings:,}")
    if rc.max_position_embeddings is not None:
        lengths.append(f"max_position_embeddings {rc.max_position_embeddings:,}")
    if factor is not None and rc.original_max_position_embeddings is not None:
        lengths.append(f"factor x original = {int(round(factor * rc.original_max_position_embeddings)):,}")
    lines.append(f"Lengths      {'; '.join(lengths) if lengths else 'not given'}")
    if seq_len is not None:
        lines.append(f"seq_len      {seq_len:,} (current length: used by dynamic NTK, LongRoPE and the DCA temperature)")
    from .vectors import model_pairing

    lines.append(f"Stack        {stack}" + (f", max_model_len {max_model_len:,}" if max_model_len else "")
                 + f" (--stack: {', '.join(STACKS)})")
    lines.append(f"Pairing      {model_pairing(rc, stack)} (how this model's q/k planes are formed in {stack})")

    must: set[int] = set()
    if rc.rope_type == "yarn":
        must = _yarn_section(rc, lines, stack)
    elif rc.rope_type == "llama3":
        p = rc.params
        lo_w = rc.original_max_position_embeddings / p["low_freq_factor"]
        hi_w = rc.original_max_position_embeddings / p["high_freq_factor"]
        lines.append("")
        lines.append(
            f"Llama 3 bands (low_freq_factor {_num(p['low_freq_factor'])}, high_freq_factor {_num(p['high_freq_factor'])}): "
            f"wavelength < L/high = {_tokens(hi_w)} kept; > L/low = {_tokens(lo_w)} divided by {_num(factor)}; "
            "smooth in between"
        )
    elif rc.rope_type == "longrope":
        from .scaling.longrope import uses_long_factors

        long = uses_long_factors(seq_len, rc.original_max_position_embeddings)
        lines.append("")
        lines.append(
            f"LongRoPE: per-pair divisors from {'long_factor' if long else 'short_factor'} "
            f"({'seq_len > L' if long else 'seq_len <= L or not given'}; transformers switches to long_factor when "
            f"max(position_ids) + 1 > {rc.original_max_position_embeddings:,}: pass --seq-len)"
        )
        lines.append(
            f"  short_factor in [{min(rc.params['short_factor']):.4g}, {max(rc.params['short_factor']):.4g}], "
            f"long_factor in [{min(rc.params['long_factor']):.4g}, {max(rc.params['long_factor']):.4g}]"
        )
    elif rc.rope_type == "dynamic" and rc.params.get("alpha") is not None:
        alpha = float(rc.params["alpha"])
        lines.append("")
        lines.append(
            f"Dynamic NTK with alpha = {alpha:.6g} (vLLM's DynamicNTKAlphaRotaryEmbedding, Hunyuan): a static base "
            f"b * alpha^(r/(r-2)) = {_num(rc.base * alpha ** (rc.rotary_dim / (rc.rotary_dim - 2)))}; only vLLM "
            "implements it"
        )
    elif rc.rope_type == "dynamic":
        from .scaling.ntk import dynamic_ntk_base

        b2 = dynamic_ntk_base(rc.base, factor, rc.rotary_dim, rc.max_position_embeddings, seq_len)
        ell = max(seq_len or 0, rc.max_position_embeddings)
        lines.append("")
        lines.append(
            f"Dynamic NTK at length {ell:,} (max(seq_len, max_position_embeddings)): base "
            f"b * (s*l/L - (s-1))^(r/(r-2)) = {_num(b2)}" + ("" if seq_len else " (pass --seq-len to grow it)")
        )
        alpha = factor * ell / rc.max_position_embeddings - (factor - 1)
        lines.append(
            f"  NTK alpha = s*l/L - (s-1) = {alpha:.6g}: pair 0 kept, the slowest pair divided by {alpha:.6g} "
            "(factor s is a slope here, not the scale)"
        )
    elif rc.rope_type == "linear":
        lines.append("")
        lines.append(f"Position Interpolation: every pair divided by {_num(factor)}")

    _attention_lines(rc, m, seq_len, lines, stack)

    regions = pair_regions(scales, factor)
    counts = {k: regions.count(k) for k in ("kept", "blend", "interp", "other")}
    summary = f"{counts['kept']} kept (scale 1)"
    if factor is not None:
        summary += f", {counts['blend']} blended (1 < scale < {_num(factor)}), {counts['interp']} interpolated (scale = {_num(factor)})"
    if counts["other"]:
        summary += f", {counts['other']} other (scale outside [1, s])"
    lines.append("")
    lines.append(f"Pairs        {summary}")

    shown = list(range(n)) if pairs == "all" else _compact_rows(regions, must | {0, n - 1})
    where = "every pair" if pairs == "all" else "compact; --pairs all for every pair"
    lines.append("")
    lines.append(f"Per pair ({where}); L = {L:,}" if L else f"Per pair ({where})")
    header = (
        f"{'i':>5}  {'lambda=2pi/theta':>17}  {'lambda_scaled':>15}  {'turns over L':>13}  {'scale theta/theta_s':>19}  region"
    )
    lines.append(header)
    previous = -1
    for i in shown:
        if i != previous + 1:
            lines.append(f"{'...':>5}")
        wavelength = 2 * math.pi / theta[i]
        scaled = 2 * math.pi / inv_freq[i] if inv_freq[i] > 0 else math.inf  # proportional: frequency 0
        turns = f"{L / wavelength:.4g}" if L else "-"
        lines.append(
            f"{i:>5}  {_tokens(wavelength):>17}  {_tokens(scaled):>15}  {turns:>13}  {scales[i]:>19.6g}  {regions[i]}"
        )
        previous = i
    if previous != n - 1:
        lines.append(f"{'...':>5}")

    if rc.dual_chunk_attention is not None:
        _dca_lines(rc, seq_len, lines)

    report = _precision_report(rc, stack, precision, seq_len, max_model_len)
    if report is not None:
        _precision_lines(report, lines)

    if rc.layer_types and isinstance(config, Mapping):
        lines.append("")
        lines.append(f"Per-layer-type RoPE (the report above is for {rc.layer_type!r} layers)")
        for layer_type in rc.layer_types:
            other = parse_rope_config(config, layer_type)
            inv, m_other = rope_frequencies(other, seq_len, **options)
            lines.append(f"  {layer_type:<18} {other.rope_type}, base {_num(other.base)}, factor "
                         f"{_num(other.factor) if other.factor else '-'}, attention factor {m_other:.6g}, "
                         f"theta' from {inv[0]:.6g} to {inv[-1]:.6g}")

    lines.append("")
    if rc.warnings:
        lines.append("Warnings")
        for w in rc.warnings:
            lines.append(f"  - {w}")
    else:
        lines.append("Warnings     none")
    return "\n".join(lines) + "\n"


def _stack_and_options(rc: RopeConfig, stack, precision, max_model_len) -> tuple[str, dict[str, Any]]:
    """The stack to use and the options for :func:`yarnref.rope_frequencies`; InputError for a bad value."""
    from .checks import check_option

    stack = default_stack(rc) if stack is None else stack
    check_option("stack", stack, STACKS)
    check_option("precision", precision, PRECISIONS)
    options: dict[str, Any] = {"stack": stack}
    if max_model_len is not None:
        options["max_model_len"] = max_model_len
    return stack, options


def _plain_float(x) -> float | None:
    return None if x is None else float(x)


def explain_data(
    config: Mapping | RopeConfig,
    *,
    name: str | None = None,
    source: str | None = None,
    notes: str | None = None,
    seq_len: int | None = None,
    stack: str | None = None,
    precision: str = "float64",
    max_model_len: int | None = None,
) -> dict[str, Any]:
    """What ``yarnref explain --json`` prints: a dict with the keys :data:`EXPLAIN_KEYS` (see the module docstring).

    Every number is the library's: ``inv_freq`` and ``attention_factor`` are
    :func:`yarnref.rope_frequencies` for the stack, ``scales`` is
    ``base_inv_freq / inv_freq`` (``null`` where a frequency is 0), and so on.
    """
    from .dca import dca_config, qwen_attention_scale
    from .vectors import model_pairing

    rc = parse_rope_config(config)
    stack, options = _stack_and_options(rc, stack, precision, max_model_len)
    inv_freq, m = rope_frequencies(rc, seq_len, **options)
    theta = base_inv_freq(rc.rotary_dim, rc.base)  # (r/2,)
    with np.errstate(divide="ignore"):
        scales = theta / inv_freq  # (r/2,)
    regions = pair_regions(scales, rc.factor)
    data: dict[str, Any] = {key: None for key in EXPLAIN_KEYS}
    data.update(
        format=EXPLAIN_FORMAT, format_version=EXPLAIN_FORMAT_VERSION, model=name, source=source, notes=notes,
        model_type=rc.model_type, rope_type=rc.rope_type, head_dim=rc.head_dim, rotary_dim=rc.rotary_dim,
        partial_rotary_factor=float(rc.partial_rotary_factor), base=float(rc.base), factor=_plain_float(rc.factor),
        original_max_position_embeddings=rc.original_max_position_embeddings,
        max_position_embeddings=rc.max_position_embeddings, seq_len=seq_len, stack=stack,
        max_model_len=max_model_len, pairing=model_pairing(rc, stack), attention_factor=float(m),
        inv_freq=[float(x) for x in inv_freq], base_inv_freq=[float(x) for x in theta],
        scales=[float(x) if np.isfinite(x) else None for x in scales], regions=regions,
        counts={"kept": regions.count("kept"), "blended": regions.count("blend"),
                "interpolated": regions.count("interp"), "other": regions.count("other")},
        warnings=list(rc.warnings),
    )
    if rc.rope_type == "yarn":
        data["yarn"] = _yarn_range(rc, stack)
    if rc.is_mla:
        from .scaling.yarn import deepseek_softmax_scale

        qk = rc.qk_nope_head_dim + rc.rotary_dim
        softmax = (deepseek_softmax_scale(qk, rc.factor, rc.params.get("mscale_all_dim"))
                   if rc.rope_type != "default" and rc.factor is not None else qk ** -0.5)
        data["mla"] = {"qk_nope_head_dim": rc.qk_nope_head_dim, "qk_rope_head_dim": rc.rotary_dim,
                       "softmax_scale": float(softmax)}
    if rc.dual_chunk_attention is not None:
        d = dca_config(dict(rc.dual_chunk_attention))
        orig = d.original_max_position_embeddings
        data["dca"] = {
            "chunk_size": d.chunk_size, "local_size": d.local_size, "chunk_len": d.chunk_len,
            "inter_query_position": min(2 * d.chunk_len - 1, d.chunk_size), "max_distance": d.chunk_size,
            "temperature": d.temperature, "original_max_position_embeddings": orig,
            "temperature_at_seq_len": (float(qwen_attention_scale(seq_len, orig))
                                       if orig and seq_len is not None else None),
            "sparse": sparse_budget_summary(rc),
        }
    data["precision"] = _precision_report(rc, stack, precision, seq_len, max_model_len)
    if rc.layer_types and isinstance(config, Mapping):
        data["layer_types"] = {}
        for layer_type in rc.layer_types:
            other = parse_rope_config(config, layer_type)
            inv, m_other = rope_frequencies(other, seq_len, **options)
            data["layer_types"][layer_type] = {"rope_type": other.rope_type, "base": float(other.base),
                                               "factor": _plain_float(other.factor), "attention_factor": float(m_other),
                                               "inv_freq": [float(x) for x in inv]}
    return data


def presets_data() -> list[dict[str, Any]]:
    """What ``yarnref presets --json`` prints: one dict per preset (sorted by name) with :data:`PRESET_KEYS`."""
    out = []
    for name in preset_names():
        preset = PRESETS[name]
        rc = parse_rope_config(preset.config)
        out.append({"name": name, "rope_type": rc.rope_type, "factor": _plain_float(rc.factor),
                    "dca": rc.dual_chunk_attention is not None, "source": preset.source, "notes": preset.notes,
                    "config": json.loads(json.dumps(preset.config))})
    return out


def format_presets() -> str:
    """One line per preset: name, rope type, factor, source."""
    rows = []
    for name in preset_names():
        preset = PRESETS[name]
        rc = parse_rope_config(preset.config)
        factor = "-" if rc.factor is None else _num(rc.factor)
        extra = " +DCA" if rc.dual_chunk_attention is not None else ""
        rows.append((name, rc.rope_type + extra, factor, preset.source))
    width = max(len(r[0]) for r in rows)
    type_width = max(len(r[1]) for r in rows)
    out = [f"{'name':<{width}}  {'rope_type':<{type_width}}  {'factor':>6}  source"]
    out += [f"{a:<{width}}  {b:<{type_width}}  {c:>6}  {d}" for a, b, c, d in rows]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# argparse


_MAX_INT = 2**53  # lengths and seeds: the bound of yarnref.checks


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {_shown(text)}") from None
    if not 1 <= value <= _MAX_INT:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, 2**53], got {_shown(text)}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {_shown(text)}") from None
    if not 0 <= value <= _MAX_INT:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**53], got {_shown(text)}")
    return value


def _positions(tokens: list[str]) -> list[int]:
    """``["0,1", "4096"]`` -> ``[0, 1, 4096]`` (commas or spaces; ``1_000_000`` allowed)."""
    out = []
    for token in tokens:
        for part in token.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                value = int(part)
            except ValueError:
                raise CommandError(f"--positions: {part!r} is not an integer") from None
            if value < 0:
                raise CommandError(f"--positions: {value} is negative; positions are integers >= 0")
            out.append(value)
    if not out:
        raise CommandError("--positions: give at least one integer position")
    return out


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error printed as one line (``yarnref: error: ...``) and status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="yarnref: the reference for how RoPE transformers reach long context (RoPE, PI, NTK, YaRN, "
        "Llama 3, LongRoPE, Dual Chunk Attention).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                        help="print yarnref's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def stack_arguments(p, precision_default: str, precision_help: str) -> None:
        p.add_argument("--stack", choices=STACKS, default=None,
                       help="whose numbers: transformers (default; vllm for the rope types only vLLM implements), "
                       "vllm, llama.cpp or yarn_authors (yarnref.config.stack_options)")
        p.add_argument("--precision", choices=PRECISIONS, default=precision_default, help=precision_help)
        p.add_argument("--max-model-len", type=_positive_int, default=None, metavar="N",
                       help="vLLM's --max-model-len / llama.cpp's n_ctx: the static LongRoPE switch of those stacks")

    p = sub.add_parser("explain", help="explain a model's RoPE scaling pair by pair",
                       description="Explain a model's RoPE scaling: type, lengths, YaRN correction range, "
                       "attention factor, and a per-pair table of wavelengths and scales.")
    p.add_argument("model", nargs="?", default=DEFAULT_PRESET, metavar="MODEL",
                   help=f"a preset name or a path to a config.json (default: {DEFAULT_PRESET})")
    p.add_argument("--seq-len", type=_positive_int, default=None, metavar="N",
                   help="current sequence length (dynamic NTK, LongRoPE long/short, DCA temperature)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also draw the per-pair scale beside PI, NTK-aware and YaRN, or for a DCA model the DCA distance map "
                   "(needs matplotlib)")
    p.add_argument("--pairs", choices=("compact", "all"), default="compact",
                   help="table rows: compact (default: the ends of each region) or all")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object instead of the text; its keys, stable within format_version: "
                   f"{', '.join(EXPLAIN_KEYS)}")
    stack_arguments(p, "float64", "the dtype the stack's model runs in: float64 (default: the spec alone), float32, "
                    "bfloat16 or float16 adds how far the stack's float32 frequencies, angles and cast tables are "
                    "from the spec")

    pr = sub.add_parser("presets", help="list the presets (name, rope type, factor, source)")
    pr.add_argument("--json", action="store_true",
                    help=f"print a JSON list, one object per preset with the keys {', '.join(PRESET_KEYS)}")

    v = sub.add_parser("vectors", help="write golden vectors (.npz) for a model",
                       description="Write golden vectors: inv_freq, attention factor, cos/sin at chosen positions, "
                       "seeded q/k and their rotations in both pairings, with provenance (see yarnref.vectors).")
    v.add_argument("model", metavar="MODEL", help="a preset name or a path to a config.json")
    v.add_argument("--out", required=True, metavar="FILE.npz", help="output file (.npz is added if missing)")
    v.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    v.add_argument("--positions", nargs="+", default=None, metavar="P",
                   help="positions (integers >= 0, spaces or commas; default: 0 1 2 127 4095 4096 32767 131071 "
                   "1000000 below the model's context length, plus its boundaries)")
    v.add_argument("--seed", type=_non_negative_int, default=0, metavar="N", help="seed of q and k (default 0)")
    v.add_argument("--seq-len", type=_positive_int, default=None, metavar="N",
                   help="current sequence length passed to rope_frequencies (dynamic NTK, LongRoPE)")
    v.add_argument("--batch", type=_positive_int, default=1, metavar="B", help="batch size of q and k (default 1)")
    v.add_argument("--heads", type=_positive_int, default=2, metavar="H", help="heads of q and k (default 2)")
    stack_arguments(v, "bfloat16", "the dtype the stack's model runs in: the stack's float32 cos/sin tables and, for "
                    "bfloat16 (default) or float16, those cast to it are written too (cos_float32, cos_bfloat16, ...); "
                    "float64 writes the spec's tables only")

    from .models.commands import add_model_commands  # perplexity, passkey, patterns (torch imported only when run)

    add_model_commands(sub)
    return parser


def _run(args, out) -> int:
    if getattr(args, "model_command", None) is not None:  # yarnref.models.commands
        return args.model_command(args, out)
    if args.command == "presets":
        out.write(json.dumps(presets_data(), indent=2) + "\n" if args.json else format_presets())
        return 0
    config, name, source = load_model(args.model)
    stack_args = dict(stack=args.stack, precision=args.precision, max_model_len=args.max_model_len)
    if args.command == "explain":
        notes = PRESETS[name].notes if (name in PRESETS and source == PRESETS[name].source) else None
        if args.json:
            data = explain_data(config, name=name, source=source, notes=notes, seq_len=args.seq_len, **stack_args)
            report = ""
        else:
            report = explain(config, name=name, source=source, notes=notes, seq_len=args.seq_len, pairs=args.pairs,
                             **stack_args)
        if args.plot:
            from .plot import dca_distance_map, save_figure, scaling_comparison

            try:
                if parse_rope_config(config).dual_chunk_attention is not None:  # DCA remaps positions, not frequencies
                    fig = dca_distance_map(config, name=name, seq_len=args.seq_len)
                else:
                    options = {} if args.stack is None else {"stack": args.stack}
                    if args.max_model_len is not None:
                        options["max_model_len"] = args.max_model_len
                    fig = scaling_comparison(config, name=name, seq_len=args.seq_len, **options)
                save_figure(fig, args.plot)
            except ImportError as error:  # the explanation stands without the figure: print it, then say why
                out.write(report)
                raise CommandError(f"--plot: no figure written; {error}") from error
            except (OSError, ValueError) as error:  # a missing folder, or a format matplotlib does not know
                raise CommandError(f"cannot write the plot to {args.plot!r}: {error}") from error
            report += f"\nPlot written to {args.plot}\n"
        if args.json:
            data["plot"] = args.plot
            report = json.dumps(data, indent=2, allow_nan=False) + "\n"
        out.write(report)
        return 0
    # vectors
    from .vectors import write_vectors

    positions = None if args.positions is None else _positions(args.positions)
    target = Path(args.out)
    if target.suffix != ".npz":  # NumPy adds the suffix; say so and write exactly there
        target = target.with_name(target.name + ".npz")
    if target.exists() and not args.force:
        raise CommandError(f"--out {str(target)!r} exists; pass --force to overwrite it")
    if target.exists() and not target.is_file():
        raise CommandError(f"--out {str(target)!r} exists and is not a file")
    if not target.parent.is_dir():
        raise CommandError(f"cannot write {str(target)!r}: no folder {str(target.parent)!r}")
    # Written to a temporary file in the same folder and renamed: no partial file under the name asked for.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp.npz")
    try:
        stack = args.stack or default_stack(config)
        options: dict[str, Any] = {"stack": stack}
        if args.max_model_len is not None:
            options["max_model_len"] = args.max_model_len
        vectors = write_vectors(temporary, config, positions=positions, seed=args.seed, batch=args.batch,
                                heads=args.heads, seq_len=args.seq_len,
                                table_precision=None if args.precision == "float64" else args.precision, **options)
        os.replace(temporary, target)
    except OSError as error:
        raise CommandError(f"cannot write {str(target)!r}: {error}") from error
    finally:
        if temporary.exists():
            temporary.unlink()
    pos = vectors["positions"]
    meta = vectors["meta"]
    lines = [
        f"Wrote {target}: {name} ({meta['rope']['rope_type']}, stack {meta['stack']}), {vectors['inv_freq'].size} "
        f"frequencies, attention factor {float(vectors['attention_factor']):.10g}, {pos.size} positions "
        f"({', '.join(str(int(p)) for p in pos)}), q/k {tuple(vectors['q'].shape)}",
        f"  rotations: pairings {', '.join(meta['pairings'])}; the model uses {meta['pairing']!r} in {meta['stack']}",
    ]
    if meta["stack_tables"] is not None:
        tables = meta["stack_tables"]
        lines.append(f"  {meta['stack']} tables: {', '.join(tables['arrays'])}"
                     + (f" ({tables['no_lower_precision_table']})" if tables.get("no_lower_precision_table") else ""))
    if meta["dca"] is not None:
        lines.append(f"  DCA position ids: {', '.join(meta['dca']['arrays'])}")
    out.write("\n".join(lines) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``yarnref`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return int(exit_.code or 0)
    try:
        return _run(args, sys.stdout)
    except CommandError as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except YarnrefError as error:
        flag = _FLAGS.get(getattr(error, "param", None)) if isinstance(error, InputError) else None
        option = f" (the option {flag})" if flag else ""
        print(f"{PROG}: error: {_where(args)}: {_one_line(error)}{option}", file=sys.stderr)
        return 2
    except Exception as error:  # anything else: still one line and status 2 (YARNREF_TRACEBACK=1 shows it)
        if os.environ.get("YARNREF_TRACEBACK"):
            raise
        print(f"{PROG}: error: {_where(args)}: unexpected {type(error).__name__}: {_one_line(error)} "
              "(set YARNREF_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 2


#: The command-line option behind each library parameter an InputError may name.
_FLAGS = {"max_model_len": "--max-model-len", "seq_len": "--seq-len", "stack": "--stack", "precision": "--precision",
          "positions": "--positions", "seed": "--seed", "batch": "--batch", "heads": "--heads"}


def _where(args) -> str:
    model = getattr(args, "model", None)
    return f"{args.command} {model}" if model else args.command


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
