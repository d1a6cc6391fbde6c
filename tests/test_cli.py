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
    assert err.startswith(("yarnref: error: ", "yarnref explain: error: ", "yarnref vectors: error: "))  # argparse: with the command
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


# ---------------------------------------------------------------------------------------------- --version


def test_version_is_the_package_version(capsys):
    import yarnref

    code, out, err = run(capsys, "--version")
    assert code == 0 and err == ""
    assert out == f"yarnref {yarnref.__version__}\n"
    declared = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared and declared.group(1) == yarnref.__version__


# ---------------------------------------------------------------------------------------------- --json


def _json(capsys, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("name", preset_names())
def test_explain_json_is_the_library_numbers(capsys, name):
    from yarnref.cli import EXPLAIN_KEYS, default_stack
    from yarnref.vectors import model_pairing

    data = _json(capsys, "explain", name, "--json")
    assert tuple(data) == EXPLAIN_KEYS
    assert data["format"] == "yarnref-explain" and data["format_version"] == 1
    config = get_preset(name)
    rc = parse_rope_config(config)
    stack = default_stack(config)
    inv_freq, m = rope_frequencies(config, stack=stack)
    # JSON floats round-trip: the very float64 values of the library
    assert np.array_equal(np.array(data["inv_freq"]), inv_freq)
    assert data["attention_factor"] == m
    theta = base_inv_freq(rc.rotary_dim, rc.base)
    assert np.array_equal(np.array(data["base_inv_freq"]), theta)
    assert np.array_equal(np.array(data["scales"]), theta / inv_freq)
    assert data["regions"] == pair_regions(theta / inv_freq, rc.factor)
    assert sum(data["counts"].values()) == rc.rotary_dim // 2
    assert (data["model"], data["rope_type"], data["rotary_dim"], data["base"], data["factor"]) == (
        name, rc.rope_type, rc.rotary_dim, rc.base, rc.factor)
    assert data["stack"] == stack and data["pairing"] == model_pairing(config, stack)
    assert data["warnings"] == list(rc.warnings)
    assert data["source"] == PRESETS[name].source
    assert (data["dca"] is None) == (rc.dual_chunk_attention is None)
    assert (data["yarn"] is None) == (rc.rope_type != "yarn")
    assert data["precision"] is None and data["plot"] is None


def test_explain_json_yarn_range_and_mla(capsys):
    data = _json(capsys, "explain", "yarn-llama-2-7b-128k", "--json")
    assert (data["yarn"]["lo"], data["yarn"]["hi"]) == (20, 46)  # the published range, as by hand above
    assert data["counts"] == {"kept": 21, "blended": 25, "interpolated": 18, "other": 0}
    assert data["attention_factor"] == pytest.approx(0.1 * math.log(32) + 1, rel=1e-15)
    ds = _json(capsys, "explain", "deepseek-v3", "--json")
    g = 0.1 * math.log(40) + 1
    assert ds["mla"] == {"qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                         "softmax_scale": pytest.approx(192 ** -0.5 * g * g, rel=1e-14)}
    assert ds["pairing"] == "interleaved_in_half_out"


@pytest.mark.parametrize("name,stack,extra", [
    ("deepseek-v3", "vllm", []), ("deepseek-v3", "llama.cpp", []), ("gpt-oss-20b", "llama.cpp", []),
    ("gpt-oss-20b", "vllm", []), ("yarn-mistral-7b-128k", "yarn_authors", []),
    ("phi-3-mini-128k", "vllm", ["--max-model-len", "131072"]), ("phi-3-mini-128k", "llama.cpp", ["--max-model-len", "4096"]),
])
def test_explain_stack_option_uses_that_stack(capsys, name, stack, extra):
    config = get_preset(name)
    max_model_len = int(extra[1]) if extra else None
    data = _json(capsys, "explain", name, "--stack", stack, "--json", *extra)
    inv_freq, m = rope_frequencies(config, stack=stack, max_model_len=max_model_len)
    assert np.array_equal(np.array(data["inv_freq"]), inv_freq) and data["attention_factor"] == m
    assert data["stack"] == stack and data["max_model_len"] == max_model_len
    code, text, err = run(capsys, "explain", name, "--stack", stack, *extra)
    assert code == 0, err
    assert f"Attention factor m = {m:.10g}" in text and f"Stack        {stack}" in text


def test_explain_stack_changes_the_numbers_where_stacks_differ(capsys):
    # gpt-oss: truncate=false; llama.cpp always floors/ceils the correction range
    hf = _json(capsys, "explain", "gpt-oss-20b", "--json")
    ggml = _json(capsys, "explain", "gpt-oss-20b", "--json", "--stack", "llama.cpp")
    assert hf["yarn"]["truncate"] is False and ggml["yarn"]["truncate"] is True
    assert ggml["yarn"]["lo"] == math.floor(hf["yarn"]["lo"]) and ggml["yarn"]["hi"] == math.ceil(hf["yarn"]["hi"])
    assert hf["inv_freq"] != ggml["inv_freq"]
    # DeepSeek-V3: vLLM's DeepseekScalingRotaryEmbedding puts g(s, mscale) / g(s, mscale_all_dim) = 1 into cos/sin too,
    # and interleaves
    vllm = _json(capsys, "explain", "deepseek-v3", "--json", "--stack", "vllm")
    assert vllm["pairing"] == "interleaved"
    _, m = rope_frequencies(get_preset("deepseek-v3"), stack="vllm")
    assert vllm["attention_factor"] == m
    # the YaRN authors' rule multiplies g(s) into any attention factor: DeepSeek's m is then not 1, and the text says
    # whose rule it is
    authors = _json(capsys, "explain", "deepseek-v3", "--json", "--stack", "yarn_authors")
    assert authors["attention_factor"] == rope_frequencies(get_preset("deepseek-v3"), stack="yarn_authors")[1] != 1.0
    _, text, _ = run(capsys, "explain", "deepseek-v3", "--stack", "yarn_authors")
    assert "yarn_authors's rule: mscale_rule 'yarn_authors'" in text


def test_explain_json_per_layer_type_rope(capsys, tmp_path):
    gemma3 = {"model_type": "gemma3_text", "head_dim": 256, "hidden_size": 2560, "num_attention_heads": 8,
              "max_position_embeddings": 131072, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
              "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 1024}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(gemma3))
    layers = _json(capsys, "explain", str(path), "--json")["layer_types"]
    assert sorted(layers) == ["full_attention", "sliding_attention"]
    for layer_type, item in layers.items():
        inv_freq, m = rope_frequencies(gemma3, layer_type=layer_type)
        assert np.array_equal(np.array(item["inv_freq"]), inv_freq) and item["attention_factor"] == m


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
def test_explain_precision_reports_the_stack_tables(capsys, precision):
    from yarnref.rope import rope_cos_sin
    from yarnref.vectors import default_positions

    name = "qwen2.5-7b-instruct-yarn"
    config = get_preset(name)
    report = _json(capsys, "explain", name, "--json", "--precision", precision)["precision"]
    positions = default_positions(config)
    assert report["positions"] == positions.tolist() and report["largest_position"] == 131071
    inv64, m = rope_frequencies(config)
    inv32, _ = rope_frequencies(config, precision="float32")
    cos64, sin64 = rope_cos_sin(inv64, positions, m)
    for dtype in {"float32", precision}:
        cos, sin = rope_cos_sin(inv32, positions, m, precision="float32", out_precision=dtype)
        expected = max(np.max(np.abs(cos - cos64)), np.max(np.abs(sin - sin64)))
        assert report["table_max_error"][dtype] == expected
    assert report["inv_freq_max_relative_difference"] == np.max(np.abs(inv32.astype(np.float64) - inv64) / inv64)
    # a float32 angle p * theta at p = 131071 is off by at most a few ulps of the largest angle, and the
    # table errors follow from it (cos and sin are 1-Lipschitz), plus one rounding of the cast
    largest_angle = 131071 * inv64[0]
    assert 0 < report["angle_max_error"] <= 4 * largest_angle * 2.0**-24
    u = {"float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}[precision]
    assert report["table_max_error"][precision] <= m * (report["table_max_error"]["float32"] + 2 * u)
    code, text, err = run(capsys, "explain", name, "--precision", precision)
    assert code == 0, err
    assert f"Precision    {precision} model on transformers" in text
    assert f"{report['table_max_error'][precision]:.3g}" in text


def test_explain_precision_on_llama_cpp_has_only_ggml_float32(capsys):
    report = _json(capsys, "explain", "llama-3.1-8b", "--json", "--stack", "llama.cpp", "--precision", "bfloat16")[
        "precision"]
    assert list(report["table_max_error"]) == ["float32"]
    assert "no bfloat16" in report["note"]


def test_presets_json(capsys):
    from yarnref.cli import PRESET_KEYS

    data = _json(capsys, "presets", "--json")
    assert [item["name"] for item in data] == preset_names()
    for item in data:
        assert tuple(item) == PRESET_KEYS
        rc = parse_rope_config(PRESETS[item["name"]].config)
        assert item["config"] == get_preset(item["name"])
        assert item["rope_type"] == rc.rope_type and item["factor"] == rc.factor
        assert item["dca"] == (rc.dual_chunk_attention is not None)
        assert item["source"] == PRESETS[item["name"]].source and item["notes"] == PRESETS[item["name"]].notes


# ---------------------------------------------------------------------------------------------- preset names


def test_preset_names_are_case_insensitive(capsys):
    _, exact, _ = run(capsys, "explain", "llama-3.1-8b")
    code, upper, err = run(capsys, "explain", "LLaMA-3.1-8B")
    assert code == 0, err
    assert upper == exact


@pytest.mark.parametrize("typo,suggestion", [("llama-3.1-8bb", "llama-3.1-8b"), ("deepsek-v3", "deepseek-v3"),
                                             ("Qwen2.5-7B-Instruct-1N", "qwen2.5-7b-instruct-1m")])
def test_unknown_preset_suggests_close_names(capsys, typo, suggestion):
    code, out, err = run(capsys, "explain", typo)
    _assert_one_line_error(code, out, err, repr(typo), f"did you mean {suggestion!r}", "case-insensitive")


def test_unknown_preset_without_close_names_lists_them_all(capsys):
    code, out, err = run(capsys, "vectors", "zzzzzz", "--out", "x.npz")
    _assert_one_line_error(code, out, err, "'zzzzzz'", *preset_names())
    assert "did you mean" not in err


# ---------------------------------------------------------------------------------------------- stack options: errors


@pytest.mark.parametrize("argv,needles", [
    (["explain", "llama-2-7b", "--stack", "tensorrt"], ["--stack", "'tensorrt'", "'vllm'", "'llama.cpp'"]),
    (["vectors", "llama-2-7b", "--out", "v.npz", "--precision", "fp8"], ["--precision", "'fp8'", "'bfloat16'"]),
    (["explain", "llama-2-7b", "--max-model-len", "0"], ["--max-model-len", "'0'", "[1, 2**53]"]),
    (["explain", "phi-3-mini-128k", "--stack", "vllm"], ["max_model_len", "None", "positive integer", "--max-model-len"]),
    (["explain", "phi-3-mini-128k", "--stack", "yarn_authors"], ["stack", "yarn_authors", "LongRoPE", "option --stack"]),
])
def test_stack_option_errors_are_one_line(capsys, tmp_path, monkeypatch, argv, needles):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    _assert_one_line_error(code, out, err, *needles)
    assert not (tmp_path / "v.npz").exists()


# ---------------------------------------------------------------------------------------------- DCA


def _sparse_model(table):
    config = get_preset("qwen2.5-7b-instruct-1m")
    config.update(num_hidden_layers=len(table), num_attention_heads=len(table[0]))
    config["dual_chunk_attention_config"]["sparse_attention_config"] = table
    return config


def test_explain_summarises_the_sparse_budgets(capsys, tmp_path):
    import statistics
    from collections import Counter

    rng = np.random.default_rng(0)
    table = [{str(h): ["vertical_and_slash", int(rng.choice([30, 100, 500, 1000, 3500])),
                       int(rng.choice([100, 800, 1000, 6096])), float(rng.random())] for h in range(28)}
             for _ in range(3)]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_sparse_model(table)))
    sparse = _json(capsys, "explain", str(path), "--json")["dca"]["sparse"]
    vertical = [130 if item[1] == 30 else item[1] for layer in table for item in layer.values()]  # vLLM runs 30 as 130
    slash = [item[2] for layer in table for item in layer.values()]
    assert (sparse["layers"], sparse["heads"]) == (3, 84)
    for kind, values in (("vertical", vertical), ("slash", slash)):
        assert sparse[kind]["counts"] == {str(b): n for b, n in sorted(Counter(values).items())}
        assert (sparse[kind]["min"], sparse[kind]["median"], sparse[kind]["max"]) == (
            min(values), statistics.median(values), max(values))
    assert sparse["vertical_30_as_130"] == sum(item[1] == 30 for layer in table for item in layer.values())
    assert sparse["enabled"] is True
    code, text, err = run(capsys, "explain", str(path))
    assert code == 0, err
    assert "sparse budgets (vertical-slash, per head; 3 layers, 84 heads)" in text
    counts = ", ".join(f"{b} x {n}" for b, n in sorted(Counter(slash).items()))
    assert f"slash    min {min(slash):,}, median" in text and counts in text
    # without a table: no summary
    assert _json(capsys, "explain", "qwen2.5-7b-instruct-1m", "--json")["dca"]["sparse"] is None


def test_explain_json_dca(capsys):
    dca = _json(capsys, "explain", "qwen2.5-7b-instruct-1m", "--json", "--seq-len", "1000000")["dca"]
    assert dca["chunk_len"] == 253952 and dca["max_distance"] == dca["chunk_size"] == 262144
    assert dca["inter_query_position"] == min(2 * 253952 - 1, 262144)
    assert dca["temperature"] == "qwen"
    assert dca["temperature_at_seq_len"] == pytest.approx(0.1 * math.log(1_000_000 / 262144) + 1, rel=1e-14)


def test_explain_plot_on_a_dca_model_draws_the_distance_map(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "dca.png"
    data = _json(capsys, "explain", "qwen2.5-7b-instruct-1m", "--plot", str(target), "--json")
    assert data["plot"] == str(target)
    png = target.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


# ---------------------------------------------------------------------------------------------- vectors: stack options


def test_vectors_command_writes_pairing_tables_and_dca_ids(capsys, tmp_path):
    from yarnref.dca import dca_position_ids
    from yarnref.rope import apply_rope, rope_cos_sin
    from yarnref.vectors import read_vectors

    out_path = tmp_path / "ds.npz"
    code, out, err = run(capsys, "vectors", "DeepSeek-V3", "--out", str(out_path))
    assert code == 0, err
    assert "the model uses 'interleaved_in_half_out' in transformers" in out
    v = read_vectors(out_path)
    np.testing.assert_array_equal(v["q_rot_interleaved_in_half_out"],
                                  apply_rope(v["q"], v["cos"], v["sin"], "interleaved_in_half_out"))
    inv32, m = rope_frequencies(get_preset("deepseek-v3"), precision="float32")  # the default: bfloat16 tables
    cos, _ = rope_cos_sin(inv32, v["positions"], m, precision="float32", out_precision="bfloat16")
    np.testing.assert_array_equal(v["cos_bfloat16"], cos)

    out_path = tmp_path / "q.npz"
    code, out, err = run(capsys, "vectors", "qwen2.5-7b-instruct-1m", "--out", str(out_path), "--stack", "vllm",
                         "--precision", "float32", "--positions", "0,253951,253952,600000,1009999")
    assert code == 0, err
    v = read_vectors(out_path)
    assert v["meta"]["stack"] == "vllm" and "cos_float32" in v and "cos_bfloat16" not in v
    ids = dca_position_ids(1010000, 262144, 8192)
    for name in ("key", "intra", "successive", "inter"):
        np.testing.assert_array_equal(v[f"dca_{name}"], getattr(ids, name)[v["positions"]])
    assert "DCA position ids: dca_key, dca_intra, dca_successive, dca_inter" in out

    out_path = tmp_path / "plain.npz"
    code, out, err = run(capsys, "vectors", "llama-2-7b", "--out", str(out_path), "--precision", "float64")
    assert code == 0, err
    assert not any(name.endswith(("float32", "bfloat16")) for name in read_vectors(out_path))


def test_help_documents_the_json_keys_and_stack_options(capsys):
    from yarnref.cli import EXPLAIN_KEYS, PRESET_KEYS
    from yarnref.config import STACKS

    assert main(["explain", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for key in EXPLAIN_KEYS:
        assert f" {key}," in text or f" {key} " in text or text.endswith(key), key
    for option in ("--json", "--stack", "--precision", "--max-model-len", *STACKS, "bfloat16"):
        assert option in text
    assert main(["presets", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(key in text for key in PRESET_KEYS)
    assert main(["vectors", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(option in text for option in ("--stack", "--precision", "--max-model-len", "cos_bfloat16"))


def test_explain_precision_positions_are_those_the_lengths_reach(capsys):
    # a LongRoPE model without a length uses its short factors, which cover positions below the original length
    short = _json(capsys, "explain", "phi-3-mini-128k", "--json", "--precision", "float32")["precision"]
    assert short["largest_position"] == 4095 and max(short["positions"]) == 4095
    long = _json(capsys, "explain", "phi-3-mini-128k", "--json", "--precision", "float32", "--seq-len", "100000")
    assert long["precision"]["positions"] == [0, 1, 2, 127, 4095, 4096, 32767, 99999]
    vllm = _json(capsys, "explain", "phi-3-mini-128k", "--json", "--precision", "float32", "--stack", "vllm",
                 "--max-model-len", "131072")["precision"]
    assert vllm["largest_position"] == 131071
    # the angle error grows with the position
    assert long["precision"]["angle_max_error"] > 10 * short["angle_max_error"]
