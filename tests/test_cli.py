"""The ``yarnref`` command: explain on every preset, presets, vectors, errors, config.json paths."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yarnref.cli import main, pair_regions
from yarnref.config import parse_rope_config, rope_frequencies
from yarnref.presets import DEFAULT_PRESET, PRESETS, get_preset, preset_names
from yarnref.rope import base_inv_freq

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(out: str) -> dict[int, dict]:
    """Parse the per-pair table: i -> {wavelength, scaled, turns, scale, region}."""
    rows = {}
    in_table = False
    for line in out.splitlines():
        if line.lstrip().startswith("i ") and "lambda=2pi/theta" in line:
            in_table = True
            continue
        if not in_table:
            continue
        parts = line.split()
        if not parts:
            break
        if parts[0] == "...":
            continue
        i, wavelength, scaled, turns, scale, region = parts
        rows[int(i)] = {
            "wavelength": float(wavelength.replace(",", "")),
            "scaled": float(scaled.replace(",", "")),
            "turns": float(turns),
            "scale": float(scale),
            "region": region,
        }
    return rows


def pair_counts(out: str) -> dict[str, int]:
    line = next(l for l in out.splitlines() if l.startswith("Pairs "))
    counts = {}
    for number, word in re.findall(r"(\d+) (kept|blended|interpolated|other)", line):
        counts[word] = int(number)
    return counts


# ---------------------------------------------------------------------------------------------- explain


@pytest.mark.parametrize("name", preset_names())
def test_explain_every_preset(capsys, name):
    code, out, err = run(capsys, "explain", name, "--pairs", "all")
    assert code == 0, err
    assert err == ""
    config = get_preset(name)
    rc = parse_rope_config(config)
    inv_freq, m = rope_frequencies(config)
    n = rc.rotary_dim // 2
    assert f"Model        {name}" in out
    assert f"RoPE type    {rc.rope_type}" in out
    assert f"rotary_dim {rc.rotary_dim} ({n} pairs" in out
    assert f"Attention factor m = {m:.10g}" in out
    assert PRESETS[name].source in out

    # the table has every pair, and its numbers are the spec's
    rows = table_rows(out)
    assert sorted(rows) == list(range(n))
    theta = base_inv_freq(rc.rotary_dim, rc.base)
    scales = theta / inv_freq
    got = np.array([rows[i]["scale"] for i in range(n)])
    np.testing.assert_allclose(got, scales, rtol=1e-5)
    for i in (0, n // 2, n - 1):
        wavelength = 2 * math.pi / theta[i]
        assert rows[i]["wavelength"] == pytest.approx(wavelength, rel=1e-2, abs=0.006)
        assert rows[i]["scaled"] == pytest.approx(2 * math.pi / inv_freq[i], rel=1e-2, abs=0.006)
    regions = pair_regions(scales, rc.factor)
    assert [rows[i]["region"] for i in range(n)] == regions

    # the summary counts add up to the pairs and match the regions
    counts = pair_counts(out)
    assert sum(counts.values()) == n
    assert counts["kept"] == regions.count("kept")
    if rc.factor is not None:
        assert counts["interpolated"] == regions.count("interp")
        assert counts["blended"] == regions.count("blend")

    for warning in rc.warnings:
        assert warning in out
    if not rc.warnings:
        assert "Warnings     none" in out


def test_explain_default_model_is_the_default_preset(capsys):
    code, out, _ = run(capsys, "explain")
    assert code == 0
    assert f"Model        {DEFAULT_PRESET}" in out


def test_explain_yarn_llama_2_7b_128k_by_hand(capsys):
    code, out, _ = run(capsys, "explain", "yarn-llama-2-7b-128k")
    assert code == 0
    # YaRN correction dims, computed here from the formula: cd(rho) = r ln(L / (2 pi rho)) / (2 ln b)
    r, b, L, s = 128, 10000.0, 4096, 32.0

    def cd(rho):
        return r * math.log(L / (2 * math.pi * rho)) / (2 * math.log(b))

    lo, hi = math.floor(cd(32)), math.ceil(cd(1))
    assert (lo, hi) == (20, 46)  # the published range for this model
    assert f"lo = {lo} " in out and f"cd(32) = {cd(32):.4f}" in out
    assert f"hi = {hi} " in out and f"cd(1) = {cd(1):.4f}" in out
    m = 0.1 * math.log(s) + 1
    assert f"Attention factor m = {m:.10g}" in out
    assert f"m^2 = {m * m:.10g}" in out
    # pairs 0..20 kept, 21..45 blended, 46..63 interpolated
    assert pair_counts(out) == {"kept": 21, "blended": 25, "interpolated": 18}
    rows = table_rows(out)
    assert rows[20]["region"] == "kept" and rows[21]["region"] == "blend"
    assert rows[45]["region"] == "blend" and rows[46]["region"] == "interp"
    # the blended pair 21: weight (21 - 20) / (46 - 20) on theta / s
    w = 1 / 26
    assert rows[21]["scale"] == pytest.approx(1 / ((1 - w) + w / s), rel=1e-5)
    # turns over L at the first pair: L / (2 pi)
    assert rows[0]["turns"] == pytest.approx(L / (2 * math.pi), rel=1e-3)


def test_explain_gpt_oss_untruncated_range(capsys):
    code, out, _ = run(capsys, "explain", "gpt-oss-20b")
    assert code == 0
    r, b, L = 64, 150000.0, 4096
    lo = r * math.log(L / (2 * math.pi * 32)) / (2 * math.log(b))
    hi = r * math.log(L / (2 * math.pi)) / (2 * math.log(b))
    assert "truncate off" in out
    assert f"lo = {lo:.6g}" in out and f"hi = {hi:.6g}" in out
    assert "truncate=false" in out  # the config warning about ggml


def test_explain_deepseek_softmax_scale(capsys):
    code, out, _ = run(capsys, "explain", "deepseek-v3")
    assert code == 0
    g = 0.1 * 1.0 * math.log(40) + 1
    plain = 192 ** -0.5
    assert "Attention factor m = 1 " in out  # mscale == mscale_all_dim
    assert f"= {plain:.6g} * {g * g:.6g} = {plain * g * g:.6g}" in out
    assert "qk_nope_head_dim 128" in out


def test_explain_dca(capsys):
    code, out, _ = run(capsys, "explain", "qwen2.5-7b-instruct-1m", "--seq-len", "1000000")
    assert code == 0
    assert "Dual Chunk Attention" in out
    assert "chunk_size 262,144, local_size 8,192" in out
    assert "c = chunk_size - local_size = 253,952" in out
    # the inter-chunk query position is min(2c - 1, chunk_size), so no distance exceeds chunk_size
    assert "earlier chunks at min(2c - 1, chunk_size) = 262,144" in out
    assert "every relative distance stays <= chunk_size = 262,144" in out
    t = max(1.0, 0.1 * math.log(1_000_000 / 262144) + 1)
    assert f"at n = seq_len 1,000,000: {t:.6g}" in out
    assert pair_counts(out) == {"kept": 64}


def test_explain_longrope_switches_with_seq_len(capsys):
    _, short, _ = run(capsys, "explain", "phi-3-mini-128k", "--seq-len", "4096", "--pairs", "all")
    _, long, _ = run(capsys, "explain", "phi-3-mini-128k", "--seq-len", "4097", "--pairs", "all")
    assert "divisors from short_factor" in short
    assert "divisors from long_factor" in long
    config = get_preset("phi-3-mini-128k")
    short_rows, long_rows = table_rows(short), table_rows(long)
    for i in (0, 20, 47):
        assert short_rows[i]["scale"] == pytest.approx(config["rope_scaling"]["short_factor"][i], rel=1e-5)
        assert long_rows[i]["scale"] == pytest.approx(config["rope_scaling"]["long_factor"][i], rel=1e-5)
    m = math.sqrt(1 + math.log(131072 / 4096) / math.log(4096))
    assert f"Attention factor m = {m:.10g}" in short and f"Attention factor m = {m:.10g}" in long


def test_explain_dynamic_ntk_follows_seq_len(capsys, tmp_path):
    config = {"rope_theta": 10000.0, "head_dim": 64, "max_position_embeddings": 2048,
              "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    _, at_init, _ = run(capsys, "explain", str(path), "--pairs", "all")
    _, grown, _ = run(capsys, "explain", str(path), "--seq-len", "8192", "--pairs", "all")
    assert pair_counts(at_init) == {"kept": 32, "blended": 0, "interpolated": 0}
    alpha = 2.0 * 8192 / 2048 - 1.0  # s l / L - (s - 1)
    assert f"NTK alpha = s*l/L - (s-1) = {alpha:.6g}" in grown
    assert table_rows(grown)[31]["scale"] == pytest.approx(alpha, rel=1e-5)  # slowest pair divided by alpha


def test_compact_table_shows_region_ends(capsys):
    _, out, _ = run(capsys, "explain", "yarn-llama-2-7b-128k")
    rows = table_rows(out)
    for i in (0, 1, 19, 20, 21, 22, 44, 45, 46, 47, 62, 63):
        assert i in rows
    assert len(rows) < 64
    assert "--pairs all" in out


def test_explain_config_json_path_and_folder(capsys, tmp_path):
    config = get_preset("yarn-llama-2-7b-128k")
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    code, from_file, err = run(capsys, "explain", str(folder / "config.json"))
    assert code == 0, err
    code, from_folder, err = run(capsys, "explain", str(folder))
    assert code == 0, err
    _, from_preset, _ = run(capsys, "explain", "yarn-llama-2-7b-128k")
    assert "Model        my-model" in from_file
    assert f"Source       {folder / 'config.json'}" in from_file
    # the numbers are the preset's
    assert table_rows(from_file) == table_rows(from_preset) == table_rows(from_folder)
    assert "lo = 20 " in from_file and "hi = 46 " in from_file


def test_explain_plot_writes_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "scales.png"
    code, out, err = run(capsys, "explain", "llama-3.1-8b", "--plot", str(target))
    assert code == 0, err
    assert f"Plot written to {target}" in out
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_explain_plot_to_missing_folder_is_an_error(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "explain", "llama-2-7b", "--plot", str(tmp_path / "no" / "such" / "x.png"))
    assert code == 2
    assert err.startswith("yarnref: error: cannot write the plot") and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- presets


def test_presets_lists_all(capsys):
    code, out, err = run(capsys, "presets")
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["name", "rope_type", "factor"]
    assert len(lines) == 1 + len(PRESETS)
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert sorted(by_name) == preset_names()
    for name, line in by_name.items():
        rc = parse_rope_config(PRESETS[name].config)
        fields = line.split()
        assert fields[1] == rc.rope_type
        assert PRESETS[name].source in line
        if rc.factor is None:
            assert "-" in fields[2:4]
        else:
            assert float(fields[2] if fields[2] != "+DCA" else fields[3]) == rc.factor


# ---------------------------------------------------------------------------------------------- vectors


def test_vectors_command_round_trip(capsys, tmp_path):
    from yarnref.vectors import read_vectors

    out_path = tmp_path / "v.npz"
    code, out, err = run(capsys, "vectors", "qwen2.5-7b-instruct-yarn", "--out", str(out_path), "--seed", "3")
    assert code == 0, err
    assert f"Wrote {out_path}" in out
    data = read_vectors(out_path)
    inv_freq, m = rope_frequencies(get_preset("qwen2.5-7b-instruct-yarn"))
    np.testing.assert_array_equal(data["inv_freq"], inv_freq)
    assert float(data["attention_factor"]) == m
    assert data["meta"]["seed"] == 3
    assert data["meta"]["config"] == get_preset("qwen2.5-7b-instruct-yarn")
    assert 131071 in data["positions"] and 32768 in data["positions"]


def test_vectors_command_positions_and_shapes(capsys, tmp_path):
    from yarnref.vectors import read_vectors

    out_path = tmp_path / "v.npz"
    code, _, err = run(capsys, "vectors", "llama-2-7b", "--out", str(out_path), "--positions", "0,5", "7", "1_000_000",
                       "--batch", "2", "--heads", "3")
    assert code == 0, err
    data = read_vectors(out_path)
    assert data["positions"].tolist() == [0, 5, 7, 1_000_000]
    assert data["q"].shape == (2, 3, 4, 128)


@pytest.mark.parametrize("positions", ["-1", "1,x", ","])
def test_vectors_command_bad_positions(capsys, tmp_path, positions):
    code, out, err = run(capsys, "vectors", "llama-2-7b", "--out", str(tmp_path / "v.npz"), "--positions", positions)
    assert code == 2
    assert err.startswith("yarnref: error: --positions") and err.count("\n") == 1
    assert not (tmp_path / "v.npz").exists()


# ---------------------------------------------------------------------------------------------- errors


def _assert_one_line_error(code, out, err, *needles):
    assert code == 2
    assert out == ""
    assert err.startswith("yarnref: error: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_unknown_preset(capsys):
    code, out, err = run(capsys, "explain", "llama-9-infinite")
    _assert_one_line_error(code, out, err, "'llama-9-infinite'", "preset", DEFAULT_PRESET)


def test_missing_file(capsys, tmp_path):
    code, out, err = run(capsys, "vectors", str(tmp_path / "nope.json"), "--out", str(tmp_path / "v.npz"))
    _assert_one_line_error(code, out, err, "nope.json")


def test_invalid_json(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    code, out, err = run(capsys, "explain", str(path))
    _assert_one_line_error(code, out, err, "not valid JSON", str(path))


def test_json_not_an_object(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    code, out, err = run(capsys, "explain", str(path))
    _assert_one_line_error(code, out, err, "list", "not an object")


def test_folder_without_config(capsys, tmp_path):
    code, out, err = run(capsys, "explain", str(tmp_path))
    _assert_one_line_error(code, out, err, "no config.json")


def test_invalid_config_names_the_key(capsys, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"head_dim": 64, "max_position_embeddings": 4096,
                                "rope_scaling": {"rope_type": "yarn", "factor": 0.5}}))
    code, out, err = run(capsys, "explain", str(path))
    _assert_one_line_error(code, out, err, "rope_scaling.factor", "0.5", str(path))


def test_unknown_rope_type(capsys, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"head_dim": 64, "rope_scaling": {"rope_type": "warp-drive", "factor": 2}}))
    code, out, err = run(capsys, "explain", str(path))
    _assert_one_line_error(code, out, err, "warp-drive")


def test_usage_errors_exit_2(capsys):
    assert main(["explain", "--seq-len", "0"]) == 2
    assert "--seq-len" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main([]) == 2
    capsys.readouterr()


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "explain" in capsys.readouterr().out


def test_python_m_yarnref():
    result = subprocess.run([sys.executable, "-m", "yarnref", "presets"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert DEFAULT_PRESET in result.stdout
    result = subprocess.run([sys.executable, "-m", "yarnref", "explain", "no-such-model"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("yarnref: error: unknown model") and "Traceback" not in result.stderr
