"""Time the float64 NumPy DCA spec on a long prompt and report its peak memory (the docs quote the result).

Usage: python scripts/time_dca_cpu.py [--seq-len 32768] [--heads 8] [--head-dim 128]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
import tracemalloc

import numpy as np

import yarnref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--local-size", type=int, default=512)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (1, args.heads, args.seq_len, args.head_dim)
    q, k, v = (rng.standard_normal(shape) for _ in range(3))
    inv_freq = yarnref.base_inv_freq(args.head_dim, 10000.0)
    tracemalloc.start()
    start = time.perf_counter()
    cpu0 = time.process_time()
    out = yarnref.dca_attention(q, k, v, inv_freq, args.chunk_size, args.local_size)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    _, peak = tracemalloc.get_traced_memory()
    assert np.isfinite(out).all()
    inputs = 3 * q.nbytes
    print(
        f"float64 dca_attention, batch 1, {args.heads} heads, head_dim {args.head_dim}, {args.seq_len} tokens, "
        f"chunk_size {args.chunk_size}, local_size {args.local_size}: wall {wall:.1f} s, CPU {cpu:.1f} s; "
        f"inputs {inputs / 2**20:.0f} MiB, extra peak (tracemalloc) {(peak) / 2**20:.0f} MiB, "
        f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB; "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, NumPy {np.__version__}"
    )


if __name__ == "__main__":
    main()
