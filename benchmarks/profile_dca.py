"""Where the time of one torch-backend ``dca_attention`` call goes, against one dense causal call (CUDA).

bench_attention.py's DCA case (32 heads, head_dim 128, bf16, chunk_size 32768,
local_size 4096) at 32K and 64K: the public call, one dense causal cuDNN call
without and with the log-sum-exp (DCA needs it for the merge), and the CUDA
kernels of one profiled DCA call (torch.profiler, sorted by device time) with
the device's idle time in it (``common.device_timeline``), the host time
from a call's start to its first attention call, the device timeline of a
call from CUDA events around its attention calls (before the first, the
calls, between them, after the last), and the host functions of 20 calls by
their own time (cProfile).
Not part of run_all.sh: ``python benchmarks/profile_dca.py --out DIR``.
"""

from __future__ import annotations

import cProfile
import io
import math
import pstats
from pathlib import Path

import torch
import torch.nn.functional as F

from common import MissingOperation, device_timeline, main_wrapper, time_fn, use_yarnref_backend

HEADS, HEAD_DIM, CHUNK, LOCAL = 32, 128, 32768, 4096


def run(rec):
    device = rec.device
    if device.type != "cuda":
        rec.note(str(MissingOperation("the profile needs CUDA")))
        return
    exponents = torch.arange(0, HEAD_DIM, 2, dtype=torch.float64, device=device) / HEAD_DIM
    inv_freq = 1.0 / (1e6**exponents)  # RoPE theta 1e6, as bench_attention.py
    tables = []
    for n in (32768, 65536):
        g = torch.Generator(device=device).manual_seed(n)
        q, k, v = (torch.randn((1, HEADS, n, HEAD_DIM), device=device, dtype=torch.bfloat16, generator=g) for _ in range(3))
        case = f"{n // 1024}K"
        scale = 1 / math.sqrt(HEAD_DIM)
        with use_yarnref_backend("torch", device) as be:
            dca = lambda: be.dca_attention(q, k, v, inv_freq, CHUNK, LOCAL)  # noqa: E731
            dca()
            rec.add(case, "dca_attention", timing=time_fn(dca, device, budget_s=2.0))
            dense = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
            dense()
            rec.add(case, "sdpa default, causal", timing=time_fn(dense, device, budget_s=2.0))
            stats = lambda: torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False, scale=scale)  # noqa: E731
            stats()
            rec.add(case, "cudnn causal with lse", timing=time_fn(stats, device, budget_s=2.0))
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
                dca()
                torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=70)
        first = host_time_to_first_attention(dca, device, calls=20)
        timeline = attention_timeline(dca, device, calls=20)
        for name, ms in timeline.items():
            rec.add(case, f"dca timeline: {name}", timing={"ms": ms, "timer": "events", "reps": 20})
        rec.add(case, "host time to the first attention call", timing={"ms": first, "timer": "host clock", "reps": 20})
        tables.append(f"== {case}\n{table}\n{device_timeline(prof)}\n"
                      f"host time from the call to its first attention_tensors call: {first * 1e3:.0f} us (median of 20)\n"
                      "device timeline of a call (CUDA events, median of 20, ms): "
                      + ", ".join(f"{name} {ms:.3f}" for name, ms in timeline.items()) + "\n"
                      f"{host_functions(dca, device, calls=20)}")
        print(tables[-1], flush=True)
    (Path(rec.args.out) / "profile_dca.txt").write_text("\n".join(tables))


def host_time_to_first_attention(fn, device, calls: int) -> float:
    """Median host milliseconds from the start of ``fn()`` to its first ``attention_tensors`` call (the
    backend's first large kernel is launched there; the device waits for the host until then)."""
    import statistics
    import time

    import yarnref_torch.dca as torch_dca

    original, marks = torch_dca.attention_tensors, []

    def marked(*args, **kwargs):
        marks.append(time.perf_counter())
        return original(*args, **kwargs)

    times = []
    torch_dca.attention_tensors = marked
    try:
        for _ in range(calls):
            torch.cuda.synchronize(device)
            marks.clear()
            t0 = time.perf_counter()
            fn()
            times.append((marks[0] - t0) * 1e3)
    finally:
        torch_dca.attention_tensors = original
    return statistics.median(times)


def attention_timeline(fn, device, calls: int) -> dict:
    """Where a call's device time goes, from CUDA events around it and around each ``attention_tensors``
    call inside it (medians over ``calls`` calls, ms): ``before first attention`` (from the call's start:
    the host's work and the rotations before the first attention kernel), ``attention calls`` (the sum of
    the attention calls), ``between attention calls`` and ``after last attention`` (the merge, the check's
    read-back, the return)."""
    import statistics

    import yarnref_torch.dca as torch_dca

    original, marks = torch_dca.attention_tensors, []

    def marked(*args, **kwargs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        result = original(*args, **kwargs)
        b.record()
        marks.append((a, b))
        return result

    parts = {"before first attention": [], "attention calls": [], "between attention calls": [],
             "after last attention": [], "call": []}
    torch_dca.attention_tensors = marked
    try:
        for _ in range(calls):
            marks.clear()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            inside = sum(a.elapsed_time(b) for a, b in marks)
            span = marks[0][0].elapsed_time(marks[-1][1])
            parts["before first attention"].append(start.elapsed_time(marks[0][0]))
            parts["attention calls"].append(inside)
            parts["between attention calls"].append(span - inside)
            parts["after last attention"].append(marks[-1][1].elapsed_time(stop))
            parts["call"].append(start.elapsed_time(stop))
    finally:
        torch_dca.attention_tensors = original
    return {name: statistics.median(values) for name, values in parts.items()}


def host_functions(fn, device, calls: int) -> str:
    """cProfile of ``calls`` synchronised calls, by own time: where the host's share of a call goes (the
    time spent waiting for the device shows up in the function that synchronises)."""
    profile = cProfile.Profile()
    torch.cuda.synchronize(device)
    profile.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize(device)
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(30)
    return f"host functions of {calls} calls (cProfile, by own time)\n{text.getvalue()}"


if __name__ == "__main__":
    main_wrapper("profile_dca", run)
