"""Fuzzing the config reader: nothing but ConfigError ever comes out, and what passes gives sane frequencies.

Configs mix plausible values (so that valid configs of every rope type appear)
with junk: wrong types, missing keys, NaN and infinities, huge integers, nested
lists and dicts where numbers belong.
"""

from __future__ import annotations

import json
import math
import os
import random
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yarnref.config import parse_rope_config, rope_frequencies
from yarnref.errors import ConfigError, InputError
from yarnref.presets import get_preset, preset_names

#: Examples per run; raise it for a long fuzzing session (YARNREF_FUZZ_EXAMPLES=20000).
FUZZ_EXAMPLES = int(os.environ.get("YARNREF_FUZZ_EXAMPLES", "300"))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
junk = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


def maybe_junk(plausible):
    return st.one_of(plausible, plausible, plausible, junk)


lengths = st.one_of(st.sampled_from([1, 2, 16, 512, 2048, 4096, 8192, 32768, 131072]), st.integers(-3, 10**7))
positive_floats = st.one_of(st.sampled_from([1.0, 2.0, 4.0, 8.0, 32.0, 40.0]), st.floats(-1.0, 100.0))
factor_lists = st.lists(st.one_of(st.floats(0.5, 64.0), st.floats(-1.0, 1.0)), min_size=0, max_size=9)

ROPE_PARAMETERS = st.fixed_dictionaries(
    {},
    optional={
        "rope_type": maybe_junk(st.sampled_from(["default", "linear", "dynamic", "yarn", "longrope", "llama3", "su",
                                                 "mrope", "proportional", "YARN", ""])),
        "type": maybe_junk(st.sampled_from(["linear", "dynamic", "yarn", "su", "llama3"])),
        "factor": maybe_junk(positive_floats),
        "rope_theta": maybe_junk(st.one_of(st.sampled_from([10000.0, 1e6, 150000]), st.floats(-2.0, 1e9))),
        "partial_rotary_factor": maybe_junk(st.sampled_from([0.25, 0.5, 1.0, 0.0, 1.5, 0.3])),
        "original_max_position_embeddings": maybe_junk(lengths),
        "beta_fast": maybe_junk(positive_floats),
        "beta_slow": maybe_junk(positive_floats),
        "truncate": maybe_junk(st.booleans()),
        "attention_factor": maybe_junk(st.floats(-1.0, 3.0)),
        "mscale": maybe_junk(st.floats(-1.0, 2.0)),
        "mscale_all_dim": maybe_junk(st.floats(-1.0, 2.0)),
        "low_freq_factor": maybe_junk(st.floats(-1.0, 8.0)),
        "high_freq_factor": maybe_junk(st.floats(-1.0, 8.0)),
        "short_factor": maybe_junk(factor_lists),
        "long_factor": maybe_junk(factor_lists),
        "max_trained_positions": maybe_junk(lengths),
    },
)

CONFIGS = st.fixed_dictionaries(
    {},
    optional={
        "model_type": maybe_junk(st.sampled_from(["llama", "phi3", "mistral", "gpt_neox", "deepseek_v3", "qwen2"])),
        "head_dim": maybe_junk(st.sampled_from([2, 4, 8, 16, 64, 96, 128, 127, 0, -8])),
        "hidden_size": maybe_junk(st.sampled_from([64, 512, 4096, 3584, 100, 0])),
        "num_attention_heads": maybe_junk(st.sampled_from([1, 4, 8, 28, 32, 0, 3])),
        "qk_rope_head_dim": maybe_junk(st.sampled_from([8, 64, 63])),
        "qk_nope_head_dim": maybe_junk(st.sampled_from([0, 128, -1])),
        "rope_theta": maybe_junk(st.one_of(st.sampled_from([10000.0, 500000.0, 1e7]), st.floats(-2.0, 1e300))),
        "rotary_emb_base": maybe_junk(st.sampled_from([10000, 0.5])),
        "partial_rotary_factor": maybe_junk(st.sampled_from([0.25, 0.5, 1.0, 2.0])),
        "rotary_pct": maybe_junk(st.sampled_from([0.25, 1.0])),
        "max_position_embeddings": maybe_junk(lengths),
        "original_max_position_embeddings": maybe_junk(lengths),
        "rope_scaling": st.one_of(st.none(), ROPE_PARAMETERS, ROPE_PARAMETERS, junk),
        "rope_parameters": st.one_of(st.none(), ROPE_PARAMETERS, junk),
        "dual_chunk_attention_config": st.one_of(st.none(), junk),
    },
)


@st.composite
def mutated_presets(draw):
    """A real model config with one key deleted or replaced by junk, at the top level or in rope_scaling."""
    config = get_preset(draw(st.sampled_from(preset_names())))
    target = config
    if isinstance(config.get("rope_scaling"), dict) and draw(st.booleans()):
        target = config["rope_scaling"]
    key = draw(st.one_of(st.sampled_from(sorted(target)), st.text(max_size=5)))
    if key in target and draw(st.booleans()):
        del target[key]
    else:
        target[key] = draw(junk)
    return config


def check_result(config, seq_len):
    """Run the reader; only ConfigError may escape; a result must be finite, positive and well shaped."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy RuntimeWarning either
        try:
            rc = parse_rope_config(config)
        except ConfigError as error:
            assert error.key and error.key in str(error)
            return False
        assert all(isinstance(w, str) for w in rc.warnings)
        try:
            inv_freq, attention = rope_frequencies(config, seq_len=seq_len)
        except ConfigError as error:
            assert error.key in str(error)
            return False
    assert isinstance(inv_freq, np.ndarray) and inv_freq.dtype == np.float64
    assert inv_freq.shape == (rc.rotary_dim // 2,)
    assert np.all(np.isfinite(inv_freq)) and np.all(inv_freq > 0)
    assert type(attention) is float and math.isfinite(attention) and attention > 0
    return True


@settings(max_examples=FUZZ_EXAMPLES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.one_of(CONFIGS, mutated_presets(), junk), st.one_of(st.none(), st.integers(1, 10**7)))
def test_fuzzed_configs_raise_only_config_error(config, seq_len):
    check_result(config, seq_len)


def _plausible_config(rng: random.Random) -> dict:
    """A config of a random rope type with mostly sensible values and the occasional bad one."""
    rope_type = rng.choice(["default", "linear", "dynamic", "yarn", "longrope", "llama3", "su"])
    head_dim = rng.choice([8, 16, 64, 96, 128])
    params = {"type" if rng.random() < 0.5 else "rope_type": rope_type,
              "factor": rng.choice([1.0, 2.0, 8.0, 32.0, 0.5, None]),
              "original_max_position_embeddings": rng.choice([512, 4096, 8192, 0])}
    if rng.random() < 0.3:
        params["partial_rotary_factor"] = rng.choice([0.25, 0.5, 0.3])
    rotary = int(head_dim * params.get("partial_rotary_factor", 1.0))
    if rope_type == "yarn":
        params.update(beta_fast=rng.choice([32, 128, 0.5]), beta_slow=rng.choice([1, 2, 64]),
                      truncate=rng.choice([True, False]), mscale=rng.choice([None, 0.707, 1.0]),
                      mscale_all_dim=rng.choice([None, 0.707, 1.0]))
    if rope_type == "llama3":
        params.update(low_freq_factor=rng.choice([1.0, 2.0, 0.0]), high_freq_factor=rng.choice([1.0, 4.0]))
    if rope_type in ("longrope", "su"):
        n = rotary // 2 + rng.choice([0, 0, 0, 1])
        params.update(short_factor=[rng.uniform(1, 3) for _ in range(n)], long_factor=[rng.uniform(1, 64) for _ in range(n)])
    return {
        "head_dim": head_dim,
        "rope_theta": rng.choice([10000.0, 500000.0, 1e7, 0.5]),
        "max_position_embeddings": rng.choice([4096, 32768, 131072]),
        rng.choice(["rope_scaling", "rope_parameters"]): params,
    }


def test_plausible_configs_are_mostly_valid_and_never_crash():
    rng = random.Random(20261122)
    outcomes = [check_result(_plausible_config(rng), rng.choice([None, 100, 10**6])) for _ in range(1500)]
    assert sum(outcomes) > 300, f"only {sum(outcomes)} of {len(outcomes)} plausible configs were valid"
    assert sum(outcomes) < len(outcomes), "the bad values must be rejected"


#: Extreme but finite numbers (and their integer cousins) that random fuzzing rarely draws.
EXTREMES = (1e308, -1e308, 1e-308, 5e-324, 1e20, 1e-20, 2**53, 2**63, 10**400, 0.0, 0.5, 1.0)
#: A config of each kind whose numbers the grid replaces one at a time.
GRID_BASES = {
    "yarn": {"head_dim": 128, "rope_theta": 10000.0, "max_position_embeddings": 131072,
             "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096,
                              "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
                              "attention_factor": 1.1}},
    "llama3": {"head_dim": 128, "rope_theta": 500000.0, "max_position_embeddings": 131072,
               "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
                                "low_freq_factor": 1.0, "high_freq_factor": 4.0}},
    "dynamic": {"head_dim": 64, "rope_theta": 10000.0, "max_position_embeddings": 4096,
                "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
    "linear": {"head_dim": 64, "rope_theta": 10000.0, "max_position_embeddings": 4096,
               "rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    "longrope": {"head_dim": 8, "rope_theta": 10000.0, "max_position_embeddings": 131072,
                 "original_max_position_embeddings": 4096,
                 "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.3],
                                  "long_factor": [1.0, 2.0, 4.0, 8.0]}},
}


def _grid():
    for kind, base in GRID_BASES.items():
        keys = [(None, k) for k, v in base.items() if isinstance(v, (int, float))]
        keys += [("rope_scaling", k) for k, v in base["rope_scaling"].items() if isinstance(v, (int, float))]
        for outer, key in keys:
            for value in EXTREMES:
                yield kind, outer, key, value


@pytest.mark.parametrize("kind", sorted(GRID_BASES))
def test_extreme_numbers_grid_gives_config_errors_or_finite_results(kind, tmp_path):
    """Every numeric key of each base config set to each extreme value: the reader, the frequencies, the
    ``explain`` text and golden vectors give a yarnref error or finite numbers; never a raw exception."""
    from yarnref.cli import explain, explain_data
    from yarnref.errors import YarnrefError
    from yarnref.vectors import make_vectors

    checked = 0
    for _, outer, key, value in (row for row in _grid() if row[0] == kind):
        config = json.loads(json.dumps(GRID_BASES[kind]))
        (config[outer] if outer else config)[key] = value
        for seq_len in (None, 10**6):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                try:
                    valid = check_result(config, seq_len)
                except InputError as error:  # seq_len beyond what a dynamic config allows, named as such
                    assert error.param == "seq_len"
                    continue
                if not valid:
                    continue
                try:
                    text = explain(config, seq_len=seq_len, pairs="all")
                    assert "nan" not in text.lower().split()
                    json.dumps(explain_data(config, seq_len=seq_len), allow_nan=False)  # what --json prints
                    vectors = make_vectors(config, positions=[0, 1, 4096], seq_len=seq_len)
                except YarnrefError:
                    continue
                for name in ("inv_freq", "cos", "sin", "q_rot_half", "k_rot_interleaved"):
                    assert np.all(np.isfinite(vectors[name])), (key, value, name)
                checked += 1
    assert checked > 0
