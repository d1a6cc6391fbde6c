"""The real-model presets, and golden frequencies for each, pinned in tests/golden/rope_presets.npz.

The golden values are computed by :func:`reference_frequencies` below: the
formulas written out as scalar Python float64 arithmetic, one pair at a time,
independently of yarnref's vectorised code (RoFormer Eq. 15; YaRN as
transformers v5.23 ``_compute_yarn_parameters`` computes it; the Llama 3.1
schedule; LongRoPE with transformers' switch).  Regenerate the file with::

    YARNREF_WRITE_GOLDEN=1 .venv/bin/python -m pytest tests/test_presets.py -k golden

transformers itself is compared with the same presets in tests/test_hf_parity.py.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from yarnref.config import parse_rope_config, rope_frequencies
from yarnref.errors import ConfigError
from yarnref.presets import DEFAULT_PRESET, PRESETS, Preset, get_preset, preset_names

GOLDEN = Path(__file__).parent / "golden" / "rope_presets.npz"

REQUIRED = {
    "llama-2-7b",
    "yarn-llama-2-7b-64k",
    "yarn-llama-2-7b-128k",
    "yarn-mistral-7b-128k",
    "llama-3.1-8b",
    "llama-3.2-1b",
    "qwen2.5-7b-instruct-yarn",
    "qwen2.5-7b-instruct-1m",
    "deepseek-v3",
    "gpt-oss-20b",
    "phi-3-mini-128k",
}

EXPECTED = {  # name: (rope_type, rotary_dim, base, factor)
    "llama-2-7b": ("default", 128, 10000.0, None),
    "yarn-llama-2-7b-64k": ("yarn", 128, 10000.0, 16.0),
    "yarn-llama-2-7b-128k": ("yarn", 128, 10000.0, 32.0),
    "yarn-mistral-7b-128k": ("yarn", 128, 10000.0, 16.0),
    "llama-3.1-8b": ("llama3", 128, 500000.0, 8.0),
    "llama-3.2-1b": ("llama3", 64, 500000.0, 32.0),
    "qwen2.5-7b-instruct-yarn": ("yarn", 128, 1e6, 4.0),
    "qwen2.5-7b-instruct-1m": ("default", 128, 1e7, None),
    "deepseek-v3": ("yarn", 64, 10000.0, 40.0),
    "gpt-oss-20b": ("yarn", 64, 150000.0, 32.0),
    "phi-3-mini-128k": ("longrope", 96, 10000.0, 32.0),
}


def test_the_required_presets_exist():
    assert REQUIRED <= set(PRESETS)
    assert preset_names() == sorted(PRESETS)
    assert DEFAULT_PRESET == "qwen2.5-7b-instruct-yarn" and DEFAULT_PRESET in PRESETS
    for name, preset in PRESETS.items():
        assert isinstance(preset, Preset) and preset.name == name
        assert preset.source and preset.notes


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_reads_as_expected(name):
    rc = parse_rope_config(get_preset(name))
    assert (rc.rope_type, rc.rotary_dim, rc.base, rc.factor) == EXPECTED[name]


def test_get_preset_returns_a_deep_copy():
    cfg = get_preset("llama-3.1-8b")
    cfg["rope_scaling"]["factor"] = 1.0
    cfg["rope_theta"] = 1.0
    assert get_preset("llama-3.1-8b")["rope_scaling"]["factor"] == 8.0
    assert PRESETS["llama-3.1-8b"].config["rope_theta"] == 500000.0


def test_unknown_preset_lists_the_names():
    with pytest.raises(ConfigError, match="preset") as info:
        get_preset("llama-5")
    for name in preset_names():
        assert name in str(info.value)
    with pytest.raises(ConfigError):
        get_preset(None)  # type: ignore[arg-type]


def test_phi3_factor_lists_are_the_real_ones():
    scaling = get_preset("phi-3-mini-128k")["rope_scaling"]
    long, short = scaling["long_factor"], scaling["short_factor"]
    assert len(long) == len(short) == 48 == 96 // 2
    assert long[0] == 1.0299999713897705 and long[-1] == 64.81001281738281 and long[-2] == long[-1]
    assert short[0] == 1.05 and short[-1] == 2.9499999999999975 and short[11] == 2.000000000000001
    assert all(b >= a for a, b in zip(long, long[1:])) and all(b >= a for a, b in zip(short, short[1:]))
    assert scaling["type"] == "su" and "factor" not in scaling


def test_preset_details():
    mistral = get_preset("yarn-mistral-7b-128k")["rope_scaling"]
    assert (mistral["beta_fast"], mistral["beta_slow"]) == (128, 2)
    assert "128" in PRESETS["yarn-mistral-7b-128k"].notes
    assert get_preset("gpt-oss-20b")["rope_scaling"]["truncate"] is False
    assert get_preset("qwen2.5-7b-instruct-1m")["dual_chunk_attention_config"]["chunk_size"] == 262144
    ds = parse_rope_config(get_preset("deepseek-v3"))
    assert ds.qk_nope_head_dim + ds.rotary_dim == 192


# ---------------------------------------------------------------------------------------------
# Golden values


def reference_frequencies(config: dict, seq_len: int | None = None) -> tuple[list[float], float]:
    """The formulas as scalar float64 arithmetic, pair by pair, for the layouts the presets use."""
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    rope_type = "longrope" if rope_type == "su" else rope_type
    b = float(config["rope_theta"])
    r = config.get("qk_rope_head_dim") or config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    theta = [1.0 / b ** (2 * i / r) for i in range(r // 2)]  # RoFormer Eq. 15

    if rope_type == "default":
        return theta, 1.0

    if rope_type == "yarn":
        s = float(scaling["factor"])
        L = scaling["original_max_position_embeddings"]
        beta_fast, beta_slow = scaling.get("beta_fast", 32), scaling.get("beta_slow", 1)

        def cd(rotations):  # the pair index that turns `rotations` times over L tokens
            return r * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(b))

        lo, hi = cd(beta_fast), cd(beta_slow)
        if scaling.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, r - 1)
        if lo == hi:
            hi += 0.001
        out = []
        for i, t in enumerate(theta):
            interpolation_weight = min(1.0, max(0.0, (i - lo) / (hi - lo)))
            keep = 1.0 - interpolation_weight
            out.append(t / s * (1.0 - keep) + t * keep)
        mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")

        def g(mu):
            return 1.0 if s <= 1 else 0.1 * mu * math.log(s) + 1.0

        m = float(g(mscale) / g(mscale_all)) if (mscale and mscale_all) else g(1)
        return out, m

    if rope_type == "llama3":
        s, L = float(scaling["factor"]), scaling["original_max_position_embeddings"]
        lf, hf = scaling["low_freq_factor"], scaling["high_freq_factor"]
        out = []
        for t in theta:
            wavelength = 2 * math.pi / t
            if wavelength < L / hf:
                out.append(t)
            elif wavelength > L / lf:
                out.append(t / s)
            else:
                kappa = (L / wavelength - lf) / (hf - lf)
                out.append((1 - kappa) * t / s + kappa * t)
        return out, 1.0

    if rope_type == "longrope":
        L = config.get("original_max_position_embeddings") or scaling["original_max_position_embeddings"]
        s = scaling.get("factor") or config["max_position_embeddings"] / L
        factors = scaling["long_factor"] if (seq_len and seq_len > L) else scaling["short_factor"]
        m = 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(L))
        return [t / f for t, f in zip(theta, factors)], m

    raise AssertionError(rope_type)


def golden_cases():
    """(name, seq_len) pairs pinned: every preset at seq_len None, LongRoPE also past its original length."""
    cases = [(name, None) for name in preset_names()]
    cases += [(name, 4097) for name in preset_names() if PRESETS[name].config["rope_scaling"]
              and PRESETS[name].config["rope_scaling"].get("type") == "su"]
    return cases


def golden_key(name, seq_len):
    return f"{name}__seq_len_{seq_len}"


def compute_golden() -> dict[str, np.ndarray]:
    arrays = {}
    for name, seq_len in golden_cases():
        inv_freq, m = reference_frequencies(get_preset(name), seq_len)
        arrays[golden_key(name, seq_len) + "__inv_freq"] = np.asarray(inv_freq, dtype=np.float64)
        arrays[golden_key(name, seq_len) + "__attention_factor"] = np.asarray(m, dtype=np.float64)
    arrays["provenance"] = np.asarray(json.dumps({
        "what": "RoPE inverse frequencies (float64, rotary_dim/2 values) and attention factors for yarnref.presets",
        "computed_by": "tests/test_presets.py::reference_frequencies, scalar Python float64 formulas "
                       "(RoFormer Eq. 15; YaRN arXiv:2309.00071 as transformers v5.23 _compute_yarn_parameters; "
                       "Llama 3.1 schedule; LongRoPE with transformers' seq_len > original switch)",
        "configs": "yarnref/presets.py (sources listed per preset there)",
        "cross_checked": "tests/test_hf_parity.py compares the same presets with transformers 5.23 (float32)",
        "numpy": np.__version__,
    }, sort_keys=True))
    return arrays


def test_write_golden_if_asked():
    if not os.environ.get("YARNREF_WRITE_GOLDEN"):
        pytest.skip("set YARNREF_WRITE_GOLDEN=1 to rewrite tests/golden/rope_presets.npz")
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez(GOLDEN, **compute_golden())


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing; regenerate it with YARNREF_WRITE_GOLDEN=1")
    with np.load(GOLDEN, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def test_golden_file_has_provenance_and_every_case(golden):
    provenance = json.loads(str(golden["provenance"]))
    assert "reference_frequencies" in provenance["computed_by"]
    for name, seq_len in golden_cases():
        assert golden_key(name, seq_len) + "__inv_freq" in golden


@pytest.mark.parametrize("name, seq_len", golden_cases())
def test_golden_values(golden, name, seq_len):
    key = golden_key(name, seq_len)
    expected, expected_m = golden[key + "__inv_freq"], float(golden[key + "__attention_factor"])
    # The pinned values are what the scalar formulas give today (to the last bit or two of libm's pow) ...
    ref, ref_m = reference_frequencies(get_preset(name), seq_len)
    np.testing.assert_allclose(np.asarray(ref), expected, rtol=2e-15, atol=0)
    assert ref_m == pytest.approx(expected_m, rel=1e-15, abs=0)
    # ... and what yarnref computes (the vectorised code may round the last bit differently).
    inv_freq, m = rope_frequencies(get_preset(name), seq_len=seq_len)
    np.testing.assert_allclose(inv_freq, expected, rtol=2e-15, atol=0)
    assert m == expected_m


def test_preset_names_match_case_insensitively():
    from yarnref.presets import find_preset

    for name in preset_names():
        assert find_preset(name.upper()) is PRESETS[name]
        assert get_preset(f"  {name.title()} ") == get_preset(name)


def test_unknown_preset_error_suggests_close_names():
    import difflib

    from yarnref.presets import similar_preset_names

    with pytest.raises(ConfigError) as info:
        get_preset("Llama-3.1-8")
    message = str(info.value)
    assert "did you mean 'llama-3.1-8b'" in message and "'Llama-3.1-8'" in message
    assert all(name in message for name in preset_names())  # and what is allowed
    assert info.value.key == "preset"
    # the suggestions are difflib's closest names, best first
    assert similar_preset_names("qwen2.5-7b-instruct-yarm") == difflib.get_close_matches(
        "qwen2.5-7b-instruct-yarm", preset_names(), n=3, cutoff=0.6)
    assert similar_preset_names("zzzz") == [] and similar_preset_names(None) == []  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        get_preset("zzzz")
    assert "did you mean" not in str(info.value)
