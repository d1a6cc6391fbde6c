"""Figures: the per-pair scaling comparison and the wavelength plot; lazy matplotlib import."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yarnref.config import parse_rope_config, rope_frequencies
from yarnref.errors import InputError
from yarnref.plot import pair_scales, reference_scales
from yarnref.presets import get_preset, preset_names
from yarnref.rope import base_inv_freq

REPO = Path(__file__).resolve().parents[1]


def test_importing_yarnref_does_not_import_matplotlib():
    code = (
        "import sys, yarnref, yarnref.plot, yarnref.cli, yarnref.vectors; "
        "bad = [m for m in ('matplotlib', 'torch', 'cupy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", preset_names())
def test_pair_scales_is_theta_over_scaled_theta(name):
    config = get_preset(name)
    rc = parse_rope_config(config)
    inv_freq, _ = rope_frequencies(config)
    np.testing.assert_array_equal(pair_scales(config), base_inv_freq(rc.rotary_dim, rc.base) / inv_freq)


def test_reference_scales_properties():
    r, b, s, L = 128, 10000.0, 16.0, 4096
    ref = reference_scales(r, b, s, L)
    assert set(ref) == {"PI (linear)", "NTK-aware", "YaRN"}
    np.testing.assert_allclose(ref["PI (linear)"], s, rtol=1e-15)
    # NTK-aware: pair 0 kept, last pair divided by exactly s, geometric (log-linear) in between
    assert ref["NTK-aware"][0] == pytest.approx(1.0, rel=1e-15)
    assert ref["NTK-aware"][-1] == pytest.approx(s, rel=1e-12)
    np.testing.assert_allclose(np.diff(np.log(ref["NTK-aware"])), math.log(s) / (r / 2 - 1), rtol=1e-9)
    # YaRN: kept up to lo = 20, interpolated from hi = 46, monotone
    yarn = ref["YaRN"]
    np.testing.assert_allclose(yarn[:21], 1.0, rtol=1e-15)
    np.testing.assert_allclose(yarn[46:], s, rtol=1e-12)
    assert np.all(np.diff(yarn) >= -1e-12)
    # factor 1: all methods are plain RoPE
    for scales in reference_scales(r, b, 1.0, L).values():
        np.testing.assert_allclose(scales, 1.0, rtol=1e-12)




def _lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_scaling_comparison_draws_model_and_references(tmp_path):
    pytest.importorskip("matplotlib")
    from yarnref.plot import save_figure, scaling_comparison

    config = get_preset("yarn-llama-2-7b-128k")
    fig = scaling_comparison(config, name="yarn-llama-2-7b-128k")
    ax = fig.axes[0]
    lines = _lines_by_label(ax)
    labels = list(lines)
    assert any(l.startswith("PI (linear), s = 32") for l in labels)
    assert any(l.startswith("NTK-aware, s = 32") for l in labels)
    assert any(l.startswith("YaRN, s = 32") for l in labels)
    model = lines["yarn-llama-2-7b-128k: yarn"]
    np.testing.assert_allclose(model.get_ydata(), pair_scales(config))
    np.testing.assert_array_equal(model.get_xdata(), np.arange(64))
    pi = next(line for label, line in lines.items() if label.startswith("PI"))
    np.testing.assert_allclose(pi.get_ydata(), 32.0)
    assert ax.get_yscale() == "log"
    assert "yarn-llama-2-7b-128k" in ax.get_title() and "factor 32" in ax.get_title()
    assert "pair index" in ax.get_xlabel() and "scale" in ax.get_ylabel()
    assert fig.legends, "the figure has a legend"
    # the top axis shows wavelengths
    texts = " ".join(child.get_xlabel() for child in ax.child_axes) if ax.child_axes else ""
    assert "wavelength" in texts
    path = save_figure(fig, tmp_path / "scales.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_scaling_comparison_longrope_draws_both_lists():
    pytest.importorskip("matplotlib")
    from yarnref.plot import scaling_comparison

    config = get_preset("phi-3-mini-128k")
    ax = scaling_comparison(config, name="phi3").axes[0]
    lines = _lines_by_label(ax)
    short = next(line for label, line in lines.items() if "short factors" in label)
    long = next(line for label, line in lines.items() if "long factors" in label)
    np.testing.assert_allclose(short.get_ydata(), config["rope_scaling"]["short_factor"], rtol=1e-12)
    np.testing.assert_allclose(long.get_ydata(), config["rope_scaling"]["long_factor"], rtol=1e-12)
    # with an explicit seq_len only the list in use is drawn
    lines = _lines_by_label(scaling_comparison(config, name="phi3", seq_len=5000).axes[0])
    assert not any("short factors" in label for label in lines)
    np.testing.assert_allclose(lines["phi3: longrope, seq_len 5,000"].get_ydata(), config["rope_scaling"]["long_factor"], rtol=1e-12)


def test_scaling_comparison_without_scaling_draws_only_the_model():
    pytest.importorskip("matplotlib")
    from yarnref.plot import scaling_comparison

    ax = scaling_comparison(get_preset("qwen2.5-7b-instruct-1m"), name="q").axes[0]
    lines = _lines_by_label(ax)
    assert list(lines) == ["q: default"]
    np.testing.assert_array_equal(lines["q: default"].get_ydata(), 1.0)
    assert any("Dual Chunk Attention" in text.get_text() for text in ax.texts)


def test_scaling_comparison_into_given_axes():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from yarnref.plot import scaling_comparison, wavelength_plot

    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert scaling_comparison(get_preset("llama-3.1-8b"), ax=left) is fig
    assert wavelength_plot(get_preset("llama-3.1-8b"), ax=right) is fig
    assert left.get_lines() and right.get_lines()
    assert left.get_legend() is not None and not fig.legends


def test_wavelength_plot_data():
    pytest.importorskip("matplotlib")
    from yarnref.plot import wavelength_plot

    config = get_preset("llama-3.1-8b")
    ax = wavelength_plot(config, name="l31").axes[0]
    lines = _lines_by_label(ax)
    inv_freq, _ = rope_frequencies(config)
    np.testing.assert_allclose(lines["l31: $2\\pi/\\theta'_i$"].get_ydata(), 2 * np.pi / inv_freq)
    assert any("8,192" in label for label in lines)  # the original length
    assert any("131,072" in label for label in lines)  # the context length


def test_save_figure_needs_a_suffix(tmp_path):
    pytest.importorskip("matplotlib")
    from yarnref.plot import save_figure, scaling_comparison

    fig = scaling_comparison(get_preset("llama-2-7b"))
    with pytest.raises(InputError) as info:
        save_figure(fig, tmp_path / "noext")
    assert info.value.param == "path"
    assert save_figure(fig, tmp_path / "x.svg").read_text().lstrip().startswith("<?xml")


# ---------------------------------------------------------------------------------------------- DCA distance map


@settings(max_examples=25, deadline=None)
@given(chunk_size=st.integers(2, 40), local=st.integers(1, 39), seq_len=st.integers(1, 150),
       samples=st.integers(2, 200))
def test_dca_distances_are_dca_relative_positions_at_the_samples(chunk_size, local, seq_len, samples):
    from yarnref.dca import dca_relative_positions
    from yarnref.plot import dca_distances

    local = min(local, chunk_size - 1)  # local_size < chunk_size
    config = {"head_dim": 8, "rope_theta": 10000.0,
              "dual_chunk_attention_config": {"chunk_size": chunk_size, "local_size": local}}
    positions, distances = dca_distances(config, seq_len, samples)
    assert positions[0] == 0 and positions[-1] == seq_len - 1 and np.all(np.diff(positions) > 0)
    assert positions.size == min(samples, seq_len)
    full = dca_relative_positions(seq_len, chunk_size, local)
    np.testing.assert_array_equal(distances, full[np.ix_(positions, positions)])


def test_dca_distances_of_qwen_1m_stay_within_chunk_size():
    from yarnref.plot import dca_distances

    positions, distances = dca_distances(get_preset("qwen2.5-7b-instruct-1m"))
    assert positions[-1] == 1010000 - 1  # the model's context length
    seen = distances[distances >= 0]
    assert seen.max() <= 262144 and seen.min() == 0
    # intra-chunk pairs see their true distance; others are capped
    true = positions[:, None] - positions[None, :]
    same_chunk = (positions[:, None] // 253952) == (positions[None, :] // 253952)
    np.testing.assert_array_equal(distances[same_chunk & (true >= 0)], true[same_chunk & (true >= 0)])
    assert np.all(distances[true > 262144] < true[true > 262144])


def test_dca_distance_map_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from yarnref.plot import dca_distance_map, save_figure

    fig = dca_distance_map(get_preset("qwen2.5-7b-instruct-1m"), name="qwen 1m", samples=64)
    image, profile = fig.axes[0], fig.axes[1]
    title = fig._suptitle.get_text()  # Figure.get_suptitle() is matplotlib >= 3.8; yarnref supports 3.7
    assert "Dual Chunk Attention" in title and "253,952" in title
    # the right panel's DCA line is the last query's row of dca_distances
    from yarnref.plot import dca_distances

    positions, distances = dca_distances(get_preset("qwen2.5-7b-instruct-1m"), samples=64)
    dca_line = next(line for line in profile.get_lines() if line.get_label() == "DCA")
    np.testing.assert_array_equal(dca_line.get_ydata(), distances[-1])
    assert len(image.collections) == 1  # the mesh
    path = save_figure(fig, tmp_path / "dca.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(InputError, match="dual_chunk_attention_config"):
        dca_distance_map(get_preset("llama-2-7b"))
