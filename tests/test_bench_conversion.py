"""benchmarks/bench_conversion.py end to end at --quick sizes on CPU (Triton's interpreter).

The lanes kernel's lists must equal the serial kernel's in every timed launch
variant, and every row must carry its time and its speed ratio.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent


def test_bench_conversion_quick(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]), TRITON_INTERPRET="1",
               CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_conversion.py"), "--quick", "--out", str(tmp_path), "--budget", "120"]
    proc = subprocess.run(cmd, cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "conversion.json").read_text())
    rows = doc["rows"]
    if any("interpreter" in r.get("reason", "") or "TRITON_INTERPRET" in r.get("reason", "") for r in rows):
        pytest.skip("the Triton interpreter cannot run here")
    assert all(r["status"] == "ok" for r in rows), rows
    lanes = [r for r in rows if r["impl"].startswith("lanes")]
    # one launch at the default steps_per_check, then the same launch at the other values
    assert len(lanes) == 3 and all(r["check"] == "pass" for r in lanes)
    assert sorted(r["steps_per_check"] for r in lanes) == [1, 2, 4]
    serial = next(r for r in rows if r["impl"] == "serial")
    assert serial["mean_blocks"] > 0 and serial["mean_columns"] >= 0
    for r in lanes:
        assert r["rows_per_program"] > 1 and r["speedup_vs_serial"] == pytest.approx(serial["ms"] / r["ms"])
