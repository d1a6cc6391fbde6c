"""Where the time of the Qwen2.5-1M pipeline's estimation goes (torch backend, CUDA).

One prefill chunk of the 1M-token layer: the last 32768 queries of ``kv_len``
keys (Qwen2.5-7B-Instruct-1M geometry, bf16, keys already at their DCA
positions as the layer's cache holds them), the budgets of the median layer of
the shipped table.  For each ``kv_len``:

* ``plan``: :func:`yarnref.qwen_sparse_plan` with ``rotated_keys=True``, the
  estimation of one chunk as the layer runs it (query rotation, the shifted
  keys, ``vertical_slash_indices`` per KV head, the sets moved to the host and
  split into DCA parts);
* ``indices``: ``vertical_slash_indices`` alone, one call per KV head on keys
  made beforehand (what the layer benchmark's ``estimation_ms`` times);
* ``prefill``: :func:`yarnref.qwen_prefill` of the chunk (the estimation and
  the sparse attention of its DCA parts; random inputs estimate near-dense
  sets, so this is the attention's slowest case).

Each is timed as wall time (host clock around a synchronised call) and as
device time (CUDA events); a wall time well above the device time means the
host is the bound.  Then the CUDA kernels of one ``plan`` and one
``prefill`` call at the longest length (torch.profiler, sorted by device
time) are written to ``profile_estimation.txt``, with the device's idle gaps
(``common.device_timeline``; once more with Python stacks, which name the
code the host ran while the device waited; that run's trace is written as
``qwen_prefill_trace.json.gz``) and the host functions of one ``prefill`` call
by their own time (cProfile; time waiting for the device shows up in the
functions that synchronise).  Not part of run_all.sh:
``python benchmarks/profile_estimation.py --out DIR``.
"""

from __future__ import annotations

import cProfile
import gzip
import io
import pstats
import time
from pathlib import Path

import numpy as np
import torch

from bench_qwen_layer import median_budget_layer
from common import MissingOperation, device_timeline, main_wrapper, sync, time_fn
from qwen_layer import QwenLayer, load_sparse_table, qwen25_7b_1m

CHUNK = 32768


def run(rec):
    import yarnref

    device = rec.device
    if device.type != "cuda" and not rec.args.quick:
        rec.note(str(MissingOperation("the profile needs CUDA (or --quick on CPU)")))
        return
    geometry = qwen25_7b_1m()
    table = load_sparse_table()
    layer = QwenLayer(geometry, dtype=torch.bfloat16, device=device, sparse_table=table, layer=median_budget_layer(table))
    lengths = [CHUNK + 4096] if rec.args.quick else [262144, 1048576]
    chunk = 2048 if rec.args.quick else CHUNK
    g = torch.Generator(device=device).manual_seed(0)
    dca = layer.dca_config(sparse=True)
    prof_table = None
    for kv_len in lengths:
        case = f"{kv_len // 1024}K keys, {chunk // 1024}K queries"
        q = torch.randn((1, geometry.heads, chunk, geometry.head_dim), device=device, dtype=torch.bfloat16, generator=g)
        k = torch.randn((1, geometry.kv_heads, kv_len, geometry.head_dim), device=device, dtype=torch.bfloat16, generator=g)
        k = layer.rotate_keys(k, 0)
        with yarnref.use_backend(layer.backend) as be:
            plan = lambda: yarnref.qwen_sparse_plan(q, k, layer.inv_freq, dca, layer=layer.layer, seq_len=kv_len,  # noqa: E731
                                                    rotated_keys=True)
            segments = plan()
            rec.note(f"{case}: {len(segments)} DCA segment(s); widths vertical {segments[-1].vertical_idx.shape[-1]}, "
                     f"slash {segments[-1].slash_idx.shape[-1]}")
            rec.add(case, "qwen_sparse_plan (device time)", timing=time_fn(plan, device, budget_s=3.0))
            rec.add(case, "qwen_sparse_plan (wall time)", timing=_wall(plan, device, reps=3))
            budgets = yarnref.sparse_attention_config_for(dca, layer.layer)
            group = geometry.heads // geometry.kv_heads
            q_last = q[:, :, -64:]

            def indices():
                for h in range(geometry.kv_heads):  # one call per KV head, as the pipeline with rotated keys
                    be.vertical_slash_indices(q_last[:, h * group:(h + 1) * group], k[:, h:h + 1],
                                              budgets.vertical_size[h * group:(h + 1) * group],
                                              budgets.slash_size[h * group:(h + 1) * group], 64)

            rec.add(case, "vertical_slash_indices x kv_heads (device time)", timing=time_fn(indices, device, budget_s=3.0))
            rec.add(case, "vertical_slash_indices x kv_heads (wall time)", timing=_wall(indices, device, reps=3))
            if device.type != "cuda":  # the sparse attention's blocked CPU path: minutes even at --quick sizes
                continue
            v = torch.randn(k.shape, device=device, dtype=torch.bfloat16, generator=g)
            prefill = lambda: yarnref.qwen_prefill(q, k, v, layer.inv_freq, dca, layer=layer.layer,  # noqa: E731
                                                   seq_len=kv_len, rotated_keys=True)
            prefill()
            rec.add(case, "qwen_prefill (wall time)", timing=_wall(prefill, device, reps=2))
            if kv_len == lengths[-1] and device.type == "cuda":
                acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                parts = []
                for name, fn in (("qwen_sparse_plan", plan), ("qwen_prefill", prefill)):
                    sync(device)
                    with torch.profiler.profile(activities=acts) as prof:
                        fn()
                        sync(device)
                    parts.append(f"== {name}, {case}\n" + prof.key_averages().table(
                        sort_by="cuda_time_total", row_limit=25, max_name_column_width=70) + "\n" + device_timeline(prof))
                sync(device)  # once more with Python stacks (slower host operations): what the host did in each gap
                with torch.profiler.profile(activities=acts, with_stack=True) as prof:
                    prefill()
                    sync(device)
                parts.append(f"== qwen_prefill's idle gaps with the host's frames (with_stack=True), {case}\n"
                             + device_timeline(prof))
                trace = Path(rec.args.out) / "qwen_prefill_trace.json"
                prof.export_chrome_trace(str(trace))  # Python frames and kernels on one time line (chrome://tracing)
                with open(trace, "rb") as raw, gzip.open(f"{trace}.gz", "wb") as packed:
                    packed.write(raw.read())
                trace.unlink()
                profile = cProfile.Profile()  # the host's share: where one prefill call's Python time goes
                sync(device)
                profile.enable()
                prefill()
                sync(device)
                profile.disable()
                text = io.StringIO()
                stats = pstats.Stats(profile, stream=text)
                stats.sort_stats("tottime").print_stats(25)
                text.write("-- yarnref's functions by cumulative time (waiting for the device included)\n")
                stats.sort_stats("cumulative").print_stats(r"yarnref|prefill", 30)
                parts.append(f"== host functions of one qwen_prefill call (cProfile, by own time), {case}\n{text.getvalue()}")
                prof_table = "\n".join(parts)
            del v
        del q, k
    if device.type == "cuda":
        import yarnref_torch.sparse as torch_sparse

        rec.note(f"half-precision logits matmul written into its strided view: {torch_sparse.HALF_MM_INTO_VIEW}")
    if prof_table is not None:
        print(prof_table, flush=True)
        (Path(rec.args.out) / "profile_estimation.txt").write_text(prof_table)


def _wall(fn, device, reps: int) -> dict:
    """Median host-clock milliseconds of a synchronised call."""
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": float(np.median(times)), "ms_min": min(times), "reps": reps, "timer": "wall"}


if __name__ == "__main__":
    main_wrapper("profile_estimation", run)
