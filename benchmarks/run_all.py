"""Run every benchmark in its own process (ceilings first), then write results.json and results.md.

Each benchmark runs as a subprocess with a time budget and a hard timeout, so
a hang or a crashed CUDA context costs one benchmark, not the run; the whole
run stays under ``--deadline`` seconds (default 450).  ``--quick`` runs tiny
sizes (on CPU when there is no GPU, with Triton's interpreter) to check the
scripts end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: (name, script, budget seconds, hard timeout seconds) in run order; the headline first.
BENCHES = [
    ("sparse", "bench_sparse.py", 170, 240),
    ("attention", "bench_attention.py", 100, 150),
    ("rope", "bench_rope.py", 30, 80),
    ("cupy", "bench_cupy.py", 190, 240),
    # Qwen2.5-7B-Instruct-1M at real budgets (128K-1M tokens): the sparse call per layer, and the full decoder layer.
    ("sparse_real", "bench_sparse_real.py", 220, 280),
    ("qwen_layer", "bench_qwen_layer.py", 230, 290),
]

#: Benchmarks that take ``--patterns DIR`` (index sets exported by ``yarnref patterns --npz``).
PATTERN_BENCHES = {"sparse_real", "qwen_layer"}


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def run_step(name, script, out, extra, timeout, env, log):
    cmd = [sys.executable, str(HERE / script), "--out", str(out), *extra]
    t0 = time.perf_counter()
    print(f"== {name}: {' '.join(cmd[1:])} (timeout {timeout:.0f} s)", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=HERE, env=env, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        output = proc.stdout
    except subprocess.TimeoutExpired as exc:
        status = f"timeout after {timeout:.0f} s"
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    log.write(f"===== {name} ({status})\n{output}\n")
    log.flush()
    for line in output.splitlines():
        if line.startswith("[") or line.startswith("Traceback") or "Error" in line[:40]:
            print(line, flush=True)
    took = time.perf_counter() - t0
    print(f"== {name}: {status} in {took:.0f} s", flush=True)
    return {"name": name, "status": status, "seconds": took}


# ----------------------------------------------------------------------------- markdown


def _fmt(x, spec):
    return "" if x is None else format(x, spec)


def render(out: Path, steps, ceilings) -> str:
    lines = ["# yarnref benchmark results", ""]
    env = (ceilings or {}).get("env", {})
    lines.append(f"Run: {env.get('date_utc', '?')} UTC on {env.get('device', '?')}; torch {env.get('torch')}, "
                 f"triton {env.get('triton')}, cupy {env.get('cupy')}, CUDA {env.get('cuda')}.")
    if ceilings:
        lines.append(f"Ceilings measured in this run: device-to-device copy **{ceilings['copy_tbps']:.2f} TB/s** "
                     f"(read + write), GEMM **{ceilings['gemm_tflops']:.0f} TFLOP/s** ({ceilings['gemm_shape']})"
                     + (f", L2 read **{ceilings['l2_read_tbps']:.2f} TB/s**." if "l2_read_tbps" in ceilings else "."))
    lines.append("")
    lines.append("| step | status | seconds |")
    lines.append("|---|---|---|")
    for s in steps:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} |")
    lines.append("")
    header, lines = lines, []
    headline = []
    for s in steps:
        path = out / f"{s['name']}.json"
        if not path.is_file():
            lines += [f"## {s['name']}", "", "no results (see run_all.log)", ""]
            continue
        doc = json.loads(path.read_text())
        lines += [f"## {s['name']}", ""]
        lines.append("| case | implementation | status | ms | TFLOP/s (% GEMM) | TB/s (% copy) | speedup of ours | check (rel. L2) | notes |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in doc["rows"]:
            tf = f"{r['tflops']:.0f} ({r['pct_gemm']:.0f}%)" if "tflops" in r else ""
            if "tflops_tiles" in r:
                tf += f"; tiles {r['tflops_tiles']:.0f}"
            if "l2_tbps_tiles" in r:
                tf += f"; L2 {r['l2_tbps_tiles']:.2f} TB/s" + (f" ({r['pct_l2']:.0f}% of L2)" if "pct_l2" in r else "")
            tb = f"{r['tbps']:.2f} ({r['pct_copy']:.0f}%)" if "tbps" in r else ""
            sp = "; ".join(f"{v:.2f}x vs {k}" for k, v in r.get("speedup_vs", {}).items())
            chk = f"{r.get('check', '')} ({_fmt(r.get('rel_l2'), '.1e')})" if "check" in r else ""
            notes = "; ".join(str(x) for x in (r.get("reason"), r.get("note"),
                                                f"density {100 * r['density']:.0f}%" if "density" in r else None,
                                                f"mask build {r['mask_build_s']:.1f} s" if "mask_build_s" in r else None,
                                                f"first call {r['first_ms'] / 1e3:.1f} s" if r.get("first_ms", 0) and r["first_ms"] > 2000 else None,
                                                f"DCA / fastest dense {r['dca_over_fastest_dense']:.2f}" if "dca_over_fastest_dense" in r else None,
                                                f"estimate + conversion {100 * r['overhead_share']:.1f}% of the call" if "overhead_share" in r else None,
                                                f"peak {r['peak_gib']:.2f} GiB (whole lists {r['whole_lists_gib']:.1f} GiB)" if r.get("peak_gib") is not None else None,
                                                f"TTFT ratio {r['ttft_ratio']:.2f}x" if "ttft_ratio" in r else None)
                              if x)
            lines.append(f"| {r['case']} | {r['impl']} | {r['status']} | {_fmt(r.get('ms'), '.3f')} | {tf} | {tb} | {sp} | {chk} | {notes} |")
            if s["name"] == "sparse" and r["impl"] == "yarnref triton sparse" and "speedup_vs" in r:
                headline.append((r["case"], r["ms"], r.get("density"), r["speedup_vs"]))
        for note in doc.get("notes", []):
            lines.append(f"\n- {note}")
        lines.append("")
    head = []
    if headline:
        head = ["## Headline: vertical-slash sparse attention (1000 verticals, 6096 slashes, 32 heads, d=128, bf16)", ""]
        for case, ms, density, sp in headline:
            rel = ", ".join(f"{v:.2f}x vs {k}" for k, v in sp.items())
            head.append(f"- **{case}**: {ms:.1f} ms, density {100 * (density or 0):.0f}% of causal; speedup of ours: {rel}")
        head.append("")
    return "\n".join(header + head + lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--deadline", type=float, default=450.0, help="seconds for the whole run")
    p.add_argument("--only", default=None, help="comma-separated subset of: " + ",".join(b[0] for b in BENCHES))
    p.add_argument("--patterns", default=None, metavar="DIR", help="smollm2_<n>.npz from yarnref patterns --npz, for " + ",".join(sorted(PATTERN_BENCHES)))
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    gpu = cuda_available()
    if args.quick and not gpu:
        env.setdefault("TRITON_INTERPRET", "1")  # the Triton kernels run on the CPU interpreter
    extra = ["--quick"] if args.quick else []
    t_start = time.perf_counter()
    steps = []
    with open(out / "run_all.log", "w") as log:
        steps.append(run_step("ceilings", "bench_ceilings.py", out, extra, 120, env, log))
        ceil_path = out / "ceilings.json"
        ceil_args = ["--ceilings", str(ceil_path)] if ceil_path.is_file() else []
        wanted = set(args.only.split(",")) if args.only else None
        for name, script, budget, timeout in BENCHES:
            if wanted and name not in wanted:
                continue
            left = args.deadline - (time.perf_counter() - t_start)
            if left < 20:
                steps.append({"name": name, "status": "skipped (deadline)", "seconds": 0.0})
                continue
            timeout = min(timeout, left)
            budget = min(budget, max(10.0, timeout - 40)) if not args.quick else 30
            more = ["--patterns", str(Path(args.patterns).resolve())] if args.patterns and name in PATTERN_BENCHES else []
            steps.append(run_step(name, script, out, extra + ceil_args + more + ["--budget", str(budget)], timeout, env, log))
    ceilings = json.loads(ceil_path.read_text()) if ceil_path.is_file() else None
    rows = []
    for s in steps:
        path = out / f"{s['name']}.json"
        if s["name"] != "ceilings" and path.is_file():
            rows += json.loads(path.read_text())["rows"]
    (out / "results.json").write_text(json.dumps({"ceilings": ceilings, "steps": steps, "rows": rows}, indent=1))
    md = render(out, [s for s in steps if s["name"] != "ceilings"], ceilings)
    (out / "results.md").write_text(md)
    total = time.perf_counter() - t_start
    print(f"== all done in {total:.0f} s: {out / 'results.md'}")
    print(md)


if __name__ == "__main__":
    main()
