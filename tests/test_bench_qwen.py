"""The Qwen2.5-1M benchmarks (bench_sparse_real.py, bench_qwen_layer.py) end to end at --quick sizes on CPU.

Every timed output must pass its float64 row check; the real-model source is
``missing`` without ``--patterns`` and measured with a tiny exported ``.npz``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_qwen_patterns import _fake_patterns, _write_npz  # noqa: E402


def _run(script: str, out: Path, *extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]))
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), "--budget", "120", *extra]
    proc = subprocess.run(cmd, cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    name = {"bench_sparse_real.py": "sparse_real", "bench_qwen_layer.py": "qwen_layer"}[script]
    return json.loads((out / f"{name}.json").read_text())


def _checked(doc) -> list[dict]:
    assert not [r for r in doc["rows"] if r["status"] in ("failed", "wrong")], [r for r in doc["rows"] if r["status"] != "ok"]
    return [r for r in doc["rows"] if "check" in r]


def test_bench_sparse_real_quick(tmp_path):
    patterns = tmp_path / "patterns"
    patterns.mkdir()
    _write_npz(patterns / "smollm2_256.npz", _fake_patterns(n0=256, heads=3, layers=(0, 1, 2)))
    doc = _run("bench_sparse_real.py", tmp_path, "--patterns", str(patterns))
    checked = _checked(doc)
    assert {r["case"].split()[-1] for r in checked if r["impl"].endswith("(api)")} == {"synthetic", "smollm2"}
    assert all(r["check"] == "pass" for r in checked)
    densities = [r for r in doc["rows"] if r["case"].startswith("density")]
    assert len(densities) == 2 and all(0 < r["mean"] <= 1 for r in densities)


def test_bench_qwen_layer_quick(tmp_path):
    """Dense DCA and DCA+sparse with each index-set source (estimated, synthetic, smollm2), chunked and unchunked."""
    patterns = tmp_path / "patterns"
    patterns.mkdir()
    _write_npz(patterns / "smollm2_256.npz", _fake_patterns(n0=256, heads=3, layers=(0, 1, 2)))
    doc = _run("bench_qwen_layer.py", tmp_path, "--patterns", str(patterns))
    checked = _checked(doc)
    assert len(checked) == 8 and all(r["check"] == "pass" for r in checked)
    sparse = [r for r in checked if r["sparse"]]
    assert sorted(r["pattern"] for r in sparse) == sorted(["estimated", "synthetic", "smollm2"] * 2)
    assert all("ttft_ratio" in r and r["estimations"] > 0 and 0 < r["last_sets_density"] <= 1 for r in sparse)
    # Random weights estimate near-dense sets; the realistic source keeps fewer pairs at the same budgets.
    density = {r["pattern"]: r["last_sets_density"] for r in sparse if r["chunk"] is None}
    assert density["synthetic"] < density["estimated"]
    # Where the time went, measured inside the call: the attention's phases nest and the rest is outside it.
    for r in checked:
        assert 0 < r["attention_ms"] <= r["ms"] and r["outside_attention_ms"] == pytest.approx(r["ms"] - r["attention_ms"])
        if r["sparse"]:
            assert 0 < r["conversion_ms"] <= r["sparse_call_ms"] <= r["attention_ms"]
            assert 0 <= r["conversion_exposed_ms"] <= min(r["conversion_ms"], r["sparse_call_ms"] - r["sparse_kernel_ms"])
            assert 0 < r["estimation_conversion_share"] < 1
        else:
            assert r["sparse_call_ms"] == r["conversion_ms"] == 0 and 0 < r["dense_dca_ms"] <= r["attention_ms"]


def test_bench_qwen_layer_runs_the_variants_asked_for(tmp_path):
    """``--variants`` runs that subset of the layer's variants (chunked and unchunked); an unknown name is refused."""
    doc = _run("bench_qwen_layer.py", tmp_path, "--variants", "synthetic", "--lengths", "512", "--repeats", "2")
    variants = {r["variant"] for r in doc["rows"] if "variant" in r}
    assert variants == {"dca+sparse synthetic chunked 128", "dca+sparse synthetic unchunked"}, variants
    assert all(r["check"] == "pass" for r in _checked(doc))
    # The first of the two calls counted the pairs of every list the kernel got: the tiny layer's 4 heads see
    # at least their own diagonal (a forced slash) and at most the causal square, the DCA parts never overlap.
    for r in _checked(doc):
        assert 4 * 512 <= r["kernel_pairs"] <= 4 * 512 * 513 // 2
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]))
    bad = subprocess.run([sys.executable, "bench_qwen_layer.py", "--quick", "--out", str(tmp_path), "--variants", "sparse"],
                         cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--variants takes a comma-separated subset of dense, synthetic" in bad.stderr


def test_bench_qwen_layer_memory_budgets_are_set_and_recorded(tmp_path):
    """``--list-mib``/``--row-mib``/``--merge-mib`` set the bounds the run uses (recorded in its notes); checks still pass."""
    doc = _run("bench_qwen_layer.py", tmp_path, "--list-mib", "1", "--row-mib", "1", "--merge-mib", "1", "--lengths", "512")
    assert any(note == "memory budgets: LIST_BYTES 1 MiB, ROW_BYTES 1 MiB, MERGE_BYTES 1 MiB" for note in doc["notes"]), doc["notes"]
    checked = _checked(doc)
    assert checked and all(r["check"] == "pass" for r in checked)


def test_host_blank_is_the_longest_stretch_without_host_operations():
    """``common._host_blank`` (the gap report of ``device_timeline``): nested and overlapping host operations
    cover time together; the longest uncovered stretch inside the gap is found with the operations around it."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import _host_blank

    def op(name, a, b):
        return SimpleNamespace(name=name, time_range=SimpleNamespace(start=a, end=b))

    host = [op("early", 0, 5), op("outer", 10, 40), op("inner", 12, 20), op("late", 55, 60), op("after", 90, 95)]
    length, before, after = _host_blank(host, 8, 100)
    assert (length, before.name, after.name) == (30, "late", "after")  # 60 .. 90, longer than 40 .. 55 and 8 .. 10
    length, before, after = _host_blank(host, 8, 58)
    assert (length, before.name, after.name) == (15, "outer", "late")  # "after" starts past the gap
    assert _host_blank(host, 12, 14) is None  # covered throughout by "outer"
