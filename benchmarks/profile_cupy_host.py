"""Where a short CuPy-backend call spends its time: the device timeline of one call, and the host's Python.

At 8K tokens a ``dca_attention`` or ``attention`` call takes 1-4 ms, and the
CuPy backend's speed against the torch backend's is then set as much by the
host (Python, CuPy launches, DLPack hand-overs to the Triton kernels) as by
the kernels.  For each operation and backend (the shapes of
``bench_cupy.py``: B = 1, 32 query heads, 8 KV heads, head_dim 128, bf16,
DCA chunk 8192 / local 1024) this prints:

* ``wall``: the median wall time of a synchronised call (20 calls);
* the **device timeline** of one call, recorded with ``torch.profiler``
  (CUPTI records every kernel of the process, CuPy's and Triton's too): when
  the first kernel starts after the call begins, the kernels' summed time,
  the idle gaps of the device inside the call, and each kernel (start,
  duration, name);
* with ``--cprofile``, the host functions of the CuPy call by own time
  (``cProfile``, 50 calls).

Run on the device: ``python benchmarks/profile_cupy_host.py --out DIR [--cprofile]``
(``PYTHONPATH`` with the repository and ``backends``).  Writes
``DIR/profile_cupy_host.txt`` and prints it.  A profile, not a benchmark:
speed ratios come from ``bench_cupy.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import yarnref

N, HEADS, KV_HEADS, D = 8192, 32, 8, 128
CHUNK, LOCAL, THETA = 8192, 1024, 1e6


def calls(device, stack):
    """``{(op, backend): () -> output}`` on shared inputs (CuPy views of torch's memory through DLPack)."""
    import cupy

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn((1, HEADS, N, D), device=device, dtype=torch.bfloat16, generator=g)
    k = torch.randn((1, KV_HEADS, N, D), device=device, dtype=torch.bfloat16, generator=g)
    v = torch.randn((1, KV_HEADS, N, D), device=device, dtype=torch.bfloat16, generator=g)
    inv_freq = 1.0 / (THETA ** (np.arange(0, D, 2, dtype=np.float64) / D))
    cq, ck, cv = (cupy.from_dlpack(x) for x in (q, k, v))
    tf = torch.as_tensor(inv_freq, device=device)
    torch_be = stack.enter_context(yarnref.use_backend("torch", device=str(device)))
    cupy_be = stack.enter_context(yarnref.use_backend("cupy"))
    return {
        ("attention", "torch"): lambda: torch_be.attention(q, k, v, causal=True),
        ("attention", "cupy"): lambda: cupy_be.attention(cq, ck, cv, causal=True),
        ("dca_attention", "torch"): lambda: torch_be.dca_attention(q, k, v, tf, CHUNK, LOCAL),
        ("dca_attention", "cupy"): lambda: cupy_be.dca_attention(cq, ck, cv, inv_freq, CHUNK, LOCAL),
    }


def wall_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def timeline(fn) -> list[str]:
    """The device's kernels during one synchronised call, relative to the call's start on the host."""
    from torch.profiler import ProfilerActivity, profile, record_function

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("yarnref_call"):
            fn()
            torch.cuda.synchronize()
    events = prof.events()
    call = next(e for e in events if e.name == "yarnref_call")
    t0, t1 = call.time_range.start, call.time_range.end  # microseconds
    kernels = sorted(
        (e for e in events if e.device_type.name == "CUDA" and e.name != "yarnref_call"  # (the range's own device-side mark)
         and e.time_range.start >= t0 - 1 and e.time_range.end <= t1 + 5000),
        key=lambda e: e.time_range.start,
    )
    lines = []
    if not kernels:
        return ["  (no device activity recorded)"]
    busy = sum(e.time_range.end - e.time_range.start for e in kernels)
    gaps, last = [], kernels[0].time_range.start
    for e in kernels:
        if e.time_range.start - last > 10:
            gaps.append((last - t0, e.time_range.start - last))
        last = max(last, e.time_range.end)
    lines.append(
        f"  host span {t1 - t0:.0f} us; first kernel at +{kernels[0].time_range.start - t0:.0f} us; last ends at "
        f"+{kernels[-1].time_range.end - t0:.0f} us; kernels {len(kernels)}, busy {busy:.0f} us; "
        f"idle gaps > 10 us: {len(gaps)}, {sum(g for _, g in gaps):.0f} us"
    )
    for e in kernels:
        lines.append(f"    +{e.time_range.start - t0:7.0f} us  {e.time_range.end - e.time_range.start:7.1f} us  {e.name[:110]}")
    for at, gap in gaps:
        lines.append(f"    gap at +{at:.0f} us: {gap:.0f} us")
    return lines


def host_profile(fn, reps=50) -> list[str]:
    fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    return ["  " + line for line in buf.getvalue().splitlines() if line.strip()]


def profile_all(fns: dict, with_cprofile: bool) -> list[str]:
    lines = []
    for (op, backend), fn in fns.items():
        lines.append(f"{op} ({backend}): wall {wall_ms(fn):.3f} ms")
        lines += timeline(fn)
        if with_cprofile and backend == "cupy":
            lines += host_profile(fn)
        lines.append("")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--cprofile", action="store_true", help="also the host functions of the CuPy calls (cProfile)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    device = torch.device("cuda")
    lines = [f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC",
             f"B=1, {HEADS} q heads, {KV_HEADS} kv heads, {N} tokens, head_dim {D}, bf16; DCA chunk {CHUNK}, local {LOCAL}", ""]
    with contextlib.ExitStack() as stack:
        lines += profile_all(calls(device, stack), args.cprofile)
    text = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_cupy_host.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
