r"""Figures: how a scaling method treats each rotation plane, beside the others.

The central picture of the RoPE scaling family (YaRN paper, arXiv:2309.00071,
section 3): every method divides the frequency of pair ``i`` by some scale

.. math::  \mathrm{scale}_i = \theta_i / \theta'_i ,

and the methods differ only in *which* pairs they scale and by how much:

* PI (arXiv:2306.15595, Eq. 4): every pair by ``s``;
* NTK-aware (YaRN Def. 1): base :math:`b s^{r/(r-2)}`, so pair 0 by 1 and the
  last pair by ``s``, geometric in between;
* YaRN (Def. 2 as the code implements it): 1 for pairs turning more than
  ``beta_fast`` times in the original length ``L``, ``s`` for pairs turning
  fewer than ``beta_slow`` times, a ramp in between;
* Llama 3: the same three bands, set by wavelengths ``L / high_freq_factor`` and
  ``L / low_freq_factor``; LongRoPE: a searched factor per pair.

Dual Chunk Attention (arXiv:2402.17463, Eqs. 2-8) leaves the frequencies alone
and remaps positions instead: :func:`dca_distance_map` draws the relative
distance :math:`M[i][j] = P_q^{\mathrm{part}}(i) - P_k(j)` every (query, key)
pair sees, intra-chunk, successive-chunk or inter-chunk, sampled over the
model's whole context (:func:`dca_distances`).

:func:`scaling_comparison` draws a model's scales beside PI, NTK-aware and YaRN
at the same factor and original length; :func:`wavelength_plot` draws the
wavelengths before and after scaling against ``L``.

Conventions
-----------
* x axis: the pair index ``i = 0 .. r/2 - 1`` (fastest first); the top axis
  shows the unscaled wavelength :math:`\lambda_i = 2\pi/\theta_i` in tokens.
* y axis: log scale.
* matplotlib is imported inside the functions (``import yarnref`` imports NumPy
  only).  Figures are built with :class:`matplotlib.figure.Figure`, not
  pyplot: no GUI backend is needed or changed, ``fig.savefig(path)`` renders
  with Agg, and Jupyter displays a returned figure inline.
* The reference curves use transformers' defaults (YaRN ``beta_fast=32``,
  ``beta_slow=1``, truncated correction range).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .config import RopeConfig, parse_rope_config, rope_frequencies
from .errors import InputError
from .rope import base_inv_freq

__all__ = ["pair_scales", "reference_scales", "scaling_comparison", "wavelength_plot", "dca_distances",
           "dca_distance_map", "save_figure"]


def pair_scales(config: Mapping | RopeConfig, seq_len: int | None = None, **frequency_options) -> np.ndarray:
    r"""``theta_i / theta'_i`` for every pair of ``config``, shape ``(r/2,)`` float64 (1 = kept)."""
    rc = parse_rope_config(config)
    inv_freq, _ = rope_frequencies(rc, seq_len, **frequency_options)
    return base_inv_freq(rc.rotary_dim, rc.base) / inv_freq  # (r/2,)


def reference_scales(rotary_dim: int, base: float, factor: float, original_max_position_embeddings: int) -> dict[str, np.ndarray]:
    """The per-pair scales of PI, NTK-aware and YaRN (transformers defaults) at one factor and length.

    Returns ``{"PI (linear)": ..., "NTK-aware": ..., "YaRN": ...}``, each of shape ``(r/2,)``.
    """
    from .scaling import linear_frequencies, ntk_frequencies, yarn_frequencies

    theta = base_inv_freq(rotary_dim, base)  # (r/2,)
    out = {"PI (linear)": theta / linear_frequencies(rotary_dim, base, factor)[0]}
    if rotary_dim >= 4:  # NTK-aware's exponent r / (r - 2) needs r > 2
        out["NTK-aware"] = theta / ntk_frequencies(rotary_dim, base, factor)[0]
    out["YaRN"] = theta / yarn_frequencies(rotary_dim, base, factor, original_max_position_embeddings)[0]
    return out


def _import_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "yarnref's figures need matplotlib: pip install -e '.[plot]' in a yarnref checkout, or pip install matplotlib"
        ) from error
    return Figure


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    Figure = _import_matplotlib()
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _wavelength_axis(ax, rotary_dim: int, base: float) -> None:
    """A top x axis showing the unscaled wavelength 2 pi b^(2i/r) of pair index i (log scale)."""
    log_b = math.log(base)

    def to_wavelength(i):
        return 2 * np.pi * np.exp(np.asarray(i, dtype=np.float64) * 2.0 * log_b / rotary_dim)

    def to_index(wavelength):
        w = np.maximum(np.asarray(wavelength, dtype=np.float64), 1e-300)
        return np.log(w / (2 * np.pi)) * rotary_dim / (2.0 * log_b)

    top = ax.secondary_xaxis("top", functions=(to_wavelength, to_index))
    top.set_xscale("log")
    top.set_xlabel(r"wavelength $\lambda_i = 2\pi/\theta_i$ of the unscaled pair (tokens)")


def _mark_original_length(ax, rotary_dim: int, base: float, original: int | None) -> None:
    """A vertical line at the (fractional) pair whose wavelength equals the original length."""
    if not original:
        return
    i = rotary_dim * math.log(original / (2 * math.pi)) / (2 * math.log(base))
    if 0 <= i <= rotary_dim // 2 - 1:
        ax.axvline(i, color="0.4", linestyle=":", linewidth=1)
        ax.annotate(
            f"$\\lambda = L$ = {original:,}",
            xy=(i, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize=8,
            color="0.3",
        )


def _number(x: float) -> str:
    """``10,000`` for integral values, ``%g`` otherwise."""
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:g}"


def _legend(fig, ax, own_figure: bool) -> None:
    """The legend below the axes (outside the data) on our own figure; inside the axes on a caller's."""
    if own_figure:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    else:
        ax.legend(loc="best", fontsize=8, framealpha=0.9)


def _yarn_range(rc: RopeConfig) -> tuple[float, float]:
    """The YaRN correction range ``(lo, hi)`` of a yarn config, as transformers computes it."""
    from .scaling.yarn import correction_range

    p = rc.params
    truncate = p.get("truncate", True)
    return correction_range(rc.rotary_dim, rc.base, rc.original_max_position_embeddings,
                            p.get("beta_fast") or 32, p.get("beta_slow") or 1, bool(truncate))


def _model_label(config, name: str | None, rc: RopeConfig) -> str:
    if name:
        return name
    model_type = rc.model_type or "model"
    return f"{model_type} ({rc.rope_type})"


def scaling_comparison(
    config: Mapping | RopeConfig,
    *,
    name: str | None = None,
    seq_len: int | None = None,
    ax=None,
    figsize=(9.0, 6.0),
    **frequency_options,
):
    r"""The model's per-pair scale :math:`\theta_i/\theta'_i` beside PI, NTK-aware and YaRN; returns the Figure.

    The references use the model's factor and original length (for a config
    without scaling: factor 1, and only the model's curve is drawn).  ``name``
    labels the model's curve and the title; ``seq_len`` and
    ``frequency_options`` go to :func:`yarnref.config.rope_frequencies`;
    ``ax`` draws into an existing matplotlib Axes.
    """
    rc = parse_rope_config(config)
    own_figure = ax is None
    fig, ax = _new_axes(ax, figsize)
    from matplotlib.ticker import FuncFormatter

    n = rc.rotary_dim // 2
    pairs = np.arange(n)
    label = _model_label(config, name, rc)
    factor = rc.factor
    original = rc.original_max_position_embeddings
    if factor is not None and original is None and rc.max_position_embeddings:
        # linear / dynamic have no original length: the length they scale from is max_position_embeddings
        original = rc.max_position_embeddings

    if factor is not None and factor > 1 and original:
        styles = {"PI (linear)": ("tab:blue", "--"), "NTK-aware": ("tab:green", "-."), "YaRN": ("tab:orange", ":")}
        for ref_name, ref in reference_scales(rc.rotary_dim, rc.base, factor, original).items():
            color, style = styles[ref_name]
            ax.plot(pairs, ref, color=color, linestyle=style, linewidth=1.8, label=f"{ref_name}, s = {factor:g}" + (" (beta 32/1, truncated)" if ref_name == "YaRN" else ""), zorder=4)
        ax.axhline(factor, color="0.6", linewidth=0.8)
        ax.annotate(f"s = {factor:g}", xy=(0.0, factor), xycoords=("axes fraction", "data"), xytext=(4, 3),
                    textcoords="offset points", ha="left", va="bottom", fontsize=8, color="0.35")

    # The model's own curve: a wide translucent band under the thin reference lines, so a reference that
    # coincides with it (YaRN for a YaRN model) stays visible.
    model_style = dict(color="tab:red", linewidth=5, alpha=0.4, solid_capstyle="round", zorder=3)
    if rc.rope_type == "longrope" and seq_len is None and not frequency_options:
        short = pair_scales(rc, original)
        long = pair_scales(rc, original + 1)
        ax.plot(pairs, long, label=f"{label}: longrope, long factors (seq_len > L)", **model_style)
        ax.plot(pairs, short, color="tab:purple", linewidth=5, alpha=0.35, zorder=3,
                label=f"{label}: longrope, short factors (seq_len <= L)")
        scales = np.maximum(short, long)
    else:
        scales = pair_scales(rc, seq_len, **frequency_options)
        used = "" if seq_len is None else f", seq_len {seq_len:,}"
        ax.plot(pairs, scales, label=f"{label}: {rc.rope_type}{used}", **model_style)
    if rc.rope_type == "yarn" and original:
        for where, text in zip(_yarn_range(rc), ("lo", "hi")):
            ax.axvline(where, color="tab:red", linewidth=0.8, alpha=0.6, linestyle="-")
            ax.annotate(f"YaRN {text} = {where:.4g}", xy=(where, 0.0), xycoords=("data", "axes fraction"),
                        xytext=(3, 4), textcoords="offset points", fontsize=8, color="tab:red", rotation=90,
                        ha="left", va="bottom")
    ax.axhline(1.0, color="0.6", linewidth=0.8)

    ax.set_yscale("log", base=2)
    top = max(float(np.max(scales)), factor or 1.0)
    ax.set_ylim(0.8, top * 1.6 if top > 1.01 else 2.0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel(f"pair index i (0 = fastest; {n} pairs, rotary_dim = {rc.rotary_dim})")
    ax.set_ylabel(r"scale $\theta_i / \theta'_i$  (1 = kept, s = interpolated)")
    _wavelength_axis(ax, rc.rotary_dim, rc.base)
    _mark_original_length(ax, rc.rotary_dim, rc.base, original)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", axis="y", alpha=0.12)
    if factor is None or factor <= 1:
        note = f"no frequency scaling (rope_type {rc.rope_type!r})"
        if rc.dual_chunk_attention is not None:
            dca = rc.dual_chunk_attention
            note += (f"\nDual Chunk Attention remaps positions instead:\nchunk_size {dca.get('chunk_size')}, "
                     f"local_size {dca.get('local_size')}")
        ax.text(0.5, 0.6, note, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.3")
    parts = [f"base {_number(rc.base)}"]
    if factor is not None:
        parts.append(f"factor {factor:g}")
    if original:
        parts.append(f"original length L = {original:,}")
    ax.set_title(f"{label}: per-pair frequency scale\n" + ", ".join(parts), fontsize=11)
    _legend(fig, ax, own_figure)
    return fig


def wavelength_plot(
    config: Mapping | RopeConfig,
    *,
    name: str | None = None,
    seq_len: int | None = None,
    ax=None,
    figsize=(8.0, 5.4),
    **frequency_options,
):
    r"""Wavelengths :math:`2\pi/\theta_i` and :math:`2\pi/\theta'_i` per pair against ``L`` and the context; returns the Figure."""
    from .vectors import context_length

    rc = parse_rope_config(config)
    own_figure = ax is None
    fig, ax = _new_axes(ax, figsize)
    inv_freq, _ = rope_frequencies(rc, seq_len, **frequency_options)
    theta = base_inv_freq(rc.rotary_dim, rc.base)
    pairs = np.arange(rc.rotary_dim // 2)
    label = _model_label(config, name, rc)
    ax.plot(pairs, 2 * np.pi / theta, color="0.5", linestyle="--", linewidth=1.5, label=r"unscaled $2\pi/\theta_i$")
    ax.plot(pairs, 2 * np.pi / inv_freq, color="black", linewidth=2.2, label=rf"{label}: $2\pi/\theta'_i$")
    original = rc.original_max_position_embeddings
    if original:
        ax.axhline(original, color="tab:orange", linestyle=":", label=f"original length L = {original:,}")
    context = context_length(rc)
    if context and context != original:
        ax.axhline(context, color="tab:red", linestyle=":", label=f"context length = {context:,}")
    ax.set_yscale("log")
    ax.set_xlabel(f"pair index i ({rc.rotary_dim // 2} pairs)")
    ax.set_ylabel("wavelength (tokens)")
    ax.set_title(f"{label}: wavelength of each rotation pair", fontsize=11)
    ax.grid(True, alpha=0.3)
    _legend(fig, ax, own_figure)
    return fig


#: The most positions :func:`dca_distances` samples on each axis.
MAX_DCA_SAMPLES = 4096


def _dca_sizes(config: Mapping | RopeConfig):
    from .dca import dca_config

    rc = parse_rope_config(config)
    if rc.dual_chunk_attention is None:
        raise InputError("config", "a config without dual_chunk_attention_config", "a DCA model's config")
    return rc, dca_config(dict(rc.dual_chunk_attention))


def dca_distances(config: Mapping | RopeConfig, seq_len: int | None = None, samples: int = 384):
    r"""``(positions, distances)``: DCA's effective distance between sampled tokens of a DCA model.

    ``positions``: ``(k,)`` int64, ``k <= samples`` token positions spread
    evenly over ``0 .. seq_len - 1`` (default ``seq_len``: the model's context
    length, :func:`yarnref.vectors.context_length`, else four chunks).
    ``distances[a, b]``: ``(k, k)`` int64, Eq. (8) for query
    ``positions[a]`` and key ``positions[b]``, ``-1`` where the key comes
    after the query; this is :func:`yarnref.dca_relative_positions` at those
    rows and columns, without building the ``(seq_len, seq_len)`` matrix.
    The part is chosen by the chunk distance ``a // L - b // L`` (0 intra, 1
    successive, 2 or more inter), the ids are :func:`yarnref.vectors.dca_ids_at`.
    """
    from .checks import check_int
    from .vectors import context_length, dca_ids_at

    rc, d = _dca_sizes(config)
    samples = check_int("samples", samples, 2, MAX_DCA_SAMPLES)
    if seq_len is None:
        seq_len = context_length(rc) or 4 * d.chunk_len
    seq_len = check_int("seq_len", seq_len, 1, 2**53)
    positions = np.unique(np.round(np.linspace(0, seq_len - 1, min(samples, seq_len))).astype(np.int64))  # (k,)
    ids = dca_ids_at(rc, positions)
    chunk = positions // d.chunk_len  # (k,)
    chunk_distance = chunk[:, None] - chunk[None, :]  # (k, k)
    query = np.where(chunk_distance == 0, ids["intra"][:, None],
                     np.where(chunk_distance == 1, ids["successive"][:, None], ids["inter"][:, None]))
    causal = positions[None, :] <= positions[:, None]
    return positions, np.where(causal, query - ids["key"][None, :], -1).astype(np.int64)


def dca_distance_map(
    config: Mapping | RopeConfig,
    *,
    name: str | None = None,
    seq_len: int | None = None,
    samples: int = 384,
    figsize=(12.0, 5.2),
):
    r"""The DCA distance map of a DCA model: which relative distance each (query, key) pair sees; returns the Figure.

    Left: :func:`dca_distances` as an image over (key position, query
    position), the chunk boundaries (multiples of ``L = chunk_size -
    local_size``) drawn; intra-chunk distances grow as ``i - j``, the
    successive chunk's are ``min(r(i) + L, C) - r(j)`` and every earlier
    chunk's ``min(2L - 1, C) - r(j)``, all within ``[0, C]``.  Right: the
    last query's distance to every key beside the true distance ``i - j``
    that plain RoPE would use.
    """
    rc, d = _dca_sizes(config)
    positions, distances = dca_distances(rc, seq_len, samples)
    Figure = _import_matplotlib()
    fig = Figure(figsize=figsize, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1.15, 1))
    top = int(positions[-1])
    shown = np.ma.masked_less(distances, 0)
    edges = np.concatenate([positions, [top + 1]]).astype(np.float64)
    mesh = left.pcolormesh(edges, edges, shown, cmap="viridis", vmin=0, vmax=d.chunk_size, shading="flat")
    fig.colorbar(mesh, ax=left, label="effective distance (tokens)")
    for boundary in range(d.chunk_len, top + 1, d.chunk_len):
        left.axvline(boundary, color="white", linewidth=0.8, alpha=0.8)
        left.axhline(boundary, color="white", linewidth=0.8, alpha=0.8)
    left.set_xlim(0, top + 1)
    left.set_ylim(top + 1, 0)
    left.set_xlabel("key position j")
    left.set_ylabel("query position i")
    left.set_title("distance each (query, key) pair sees\n(white lines: chunk boundaries, every L tokens)", fontsize=10)

    last = distances[-1]  # (k,): the last query against every sampled key
    right.plot(positions, positions[-1] - positions, color="0.5", linestyle="--", linewidth=1.5,
               label="plain RoPE: i - j")
    right.plot(positions, last, color="tab:red", linewidth=2, label="DCA")
    right.axhline(d.chunk_size, color="tab:blue", linestyle=":", linewidth=1,
                  label=f"chunk_size C = {d.chunk_size:,} (the largest distance)")
    right.set_xlabel("key position j")
    right.set_ylabel(f"distance from the last query i = {top:,}")
    right.set_title("the last query's distances", fontsize=10)
    right.grid(True, alpha=0.3)
    right.legend(loc="upper right", fontsize=8, framealpha=0.9)
    label = _model_label(config, name, rc)
    fig.suptitle(f"{label}: Dual Chunk Attention distance map over {top + 1:,} tokens\n"
                 f"chunk_size C = {d.chunk_size:,}, local_size = {d.local_size:,}, chunk length L = {d.chunk_len:,}",
                 fontsize=11)
    return fig


def save_figure(fig, path, *, dpi: int = 130) -> Path:
    """Save ``fig`` to ``path`` (format from the suffix, e.g. ``.png``, ``.svg``, ``.pdf``); return the path."""
    path = Path(path)
    if not path.suffix:
        raise InputError("path", str(path), "a file name with a suffix such as .png, .svg or .pdf")
    fig.savefig(path, dpi=dpi)
    return path
