"""Where the time of one public ``vertical_slash_attention`` call goes (torch backend, CUDA).

128K tokens, 32 heads, head_dim 128, bf16, the ``realistic`` pattern of
bench_sparse.py.  Prints the CUDA kernels of one profiled call (torch.profiler,
sorted by device time) and the wall time of the call against the kernel alone,
so that the cost of validation and index conversion is visible.  Not part of
run_all.sh: ``python benchmarks/profile_sparse_api.py --out DIR``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bench_sparse import BM, BN, HEAD_DIM, HEADS, N_SLASH, N_VERT, load_triton_sparse, make_indices
from common import MissingOperation, main_wrapper, time_fn, use_yarnref_backend


def run(rec):
    device = rec.device
    if device.type != "cuda":
        rec.note(str(MissingOperation("the profile needs CUDA")))
        return
    ts = load_triton_sparse()
    n, heads, d = 131072, HEADS, HEAD_DIM
    g = torch.Generator(device=device).manual_seed(n)
    q, k, v = (torch.randn((1, heads, n, d), device=device, dtype=torch.bfloat16, generator=g) for _ in range(3))
    V, S = make_indices(n, heads, N_VERT, N_SLASH, "realistic", seed=n + len("realistic"), device=device)
    lists = ts.convert_vertical_slash_indexes_triton(n, n, V, S, BM, BN)
    scale = 1 / math.sqrt(d)
    case = "128K realistic"
    with use_yarnref_backend("torch", device) as be:
        api = lambda: be.vertical_slash_attention(q, k, v, V, S)  # noqa: E731
        api()
        rec.add(case, "public vertical_slash_attention", timing=time_fn(api, device, budget_s=2.0))
        kernel = lambda: ts.sparse_attention_triton(q, k, v, *lists, scale, BM, BN)  # noqa: E731
        kernel()
        rec.add(case, "kernel alone", timing=time_fn(kernel, device, budget_s=2.0))
        convert = lambda: ts.convert_vertical_slash_indexes_triton(n, n, V, S, BM, BN)  # noqa: E731
        rec.add(case, "conversion alone", timing=time_fn(convert, device, budget_s=1.0))
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
            api()
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60)
    print(table, flush=True)
    (Path(rec.args.out) / "profile_sparse_api.txt").write_text(table)


if __name__ == "__main__":
    main_wrapper("profile_sparse_api", run)
