"""Ring attention across GPUs: yarnref's torch ring against one GPU and against torch's own context parallelism.

Run with one process per GPU::

    torchrun --nproc-per-node 2 benchmarks/bench_ring.py --out bench-out/ring
    torchrun --nproc-per-node 2 benchmarks/bench_ring.py --quick --out /tmp/ring   # CPU, gloo: checks the script

What it measures (B=1, 32 heads, head_dim 128, bf16, causal; ``--sizes``,
default 256K and 1M tokens):

* ``p2p``: NCCL point-to-point bandwidth of the ring exchange itself (every
  rank sends a K/V-sized buffer to the next and receives from the previous,
  ``dist.batch_isend_irecv``), GB/s per rank and direction.
* ``single``: one GPU, SDPA with cuDNN (``is_causal``) on the whole sequence,
  where it fits (rank 0 runs it while the others wait).
* ``ring zigzag`` / ``ring contiguous``: :func:`yarnref_torch.ring.ring_attention`
  with the output's lse (it is what a model layer needs to stack); the
  contiguous layout shows the causal load imbalance.  ``ring serial``: the
  zig-zag ring with ``overlap=False`` (communication then compute), so
  ``hidden = (serial - overlapped) / comm`` is the share of the communication
  the overlap hides, with ``comm = (P - 1) x`` the measured exchange time.
* ``torch context_parallel``: ``torch.distributed.tensor.experimental.context_parallel``
  (head-tail load balancing, the all-to-all rotation, SDPA cuDNN), in the same run.
* ``dca``: :func:`yarnref_torch.ring.ring_dca_attention` at the largest size
  (Qwen2.5-1M's chunk_size 262144, local_size 8192, RoPE theta 1e7), against
  the torch backend's single-GPU ``dca_attention`` where it fits.
* ``vertical-slash`` (at the DCA size; ``--no-vs`` skips it): the kernels'
  key sets (kernel mode) with Qwen2.5-7B-1M's common budget, 1000 verticals
  and 6096 slashes per head, drawn with ``bench_sparse``'s ``realistic``
  pattern.  One GPU: the torch backend's public ``vertical_slash_attention``
  on the whole sequence, where it fits; the ring:
  :func:`yarnref_torch.ring.ring_vertical_slash_attention` (zig-zag, kernel
  mode, with the lse).  Both timed calls start from the lists (the last-query
  estimation is not timed: it is the same work on one GPU and on the ring,
  done once on the device holding the last queries) and include their list
  conversion (on the ring, each rank's two query runs, once).  Their outputs
  are checked against float64 attention over the kernel-mode key set
  (``bench_sparse.sparse_reference_rows``, which counts each listed key with
  its multiplicity) of lists converted on the prefix problem that ends at the
  checked row block: the same lists as the whole-sequence conversion for
  those rows (``tests/test_ring.py`` tests that property).

Every timed output is checked on sampled rows (on each rank, 16 rows at the
start of its shard and 16 at its end, 2 heads) against a float64 reference
(:func:`common.dense_reference_rows`; for DCA the torch backend's float64
``dca_attention`` on the prefix), within yarnref's tolerance table
(:func:`common.compare`, :mod:`yarnref.testing`).  Scaling efficiency = ``t_single / (P
t_ring)``.  JSON and markdown go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "backends"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import yarnref  # noqa: E402
from yarnref.ring import padded_length, shard_positions  # noqa: E402
from yarnref.rope import base_inv_freq  # noqa: E402
from common import compare, dense_reference_rows, flops_causal, measure_ceilings  # noqa: E402
from bench_sparse import make_indices, sparse_reference_rows  # noqa: E402
from yarnref_torch.ring import ring_attention, ring_dca_attention, ring_vertical_slash_attention, shard_tensor  # noqa: E402

HEADS, HEAD_DIM = 32, 128
VS_VERTICALS, VS_SLASHES, VS_PATTERN, VS_BLOCK = 1000, 6096, "realistic", 64  # Qwen2.5-7B-1M's common budget
DCA_CHUNK, DCA_LOCAL, DCA_THETA = 262144, 8192, 1e7
CHECK_ROWS, CHECK_HEADS = 16, 2


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-out/ring", help="directory for ring.json and ring.md")
    p.add_argument("--quick", action="store_true", help="tiny sizes on CPU with gloo (checks the script)")
    p.add_argument("--sizes", default=None, help="comma-separated sequence lengths (default 262144,1048576)")
    p.add_argument("--single-max", type=int, default=1 << 20, help="largest length timed on one GPU")
    p.add_argument("--no-dense", action="store_true", help="skip the dense rows (--sizes then only sets the default --dca-size)")
    p.add_argument("--no-dca", action="store_true")
    p.add_argument("--dca-size", type=int, default=None, help="length of the DCA and vertical-slash rows (default: 1M, or the largest --sizes if smaller)")
    p.add_argument("--no-vs", action="store_true", help="skip the vertical-slash rows")
    return p.parse_args()


# ----------------------------------------------------------------------------- plumbing


class Bench:
    def __init__(self, args):
        self.args = args
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.heads, self.head_dim = (HEADS, HEAD_DIM) if not args.quick else (4, 32)
        self.rows = []
        self.ceilings = {}
        self.t0 = time.perf_counter()

    def log(self, msg):
        if self.rank == 0:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dist.barrier()

    def timed(self, fn, reps: int, warmup: int = 1):
        """Median wall ms of ``fn()`` over ``reps`` calls (after ``warmup``), all ranks in step; returns (ms, last result)."""
        out = None
        for _ in range(warmup):
            out = fn()
        self.sync()
        times = []
        for _ in range(reps):
            self.sync()
            t = time.perf_counter()
            out = fn()
            self.sync()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times), out

    def single(self, fn, check, reps: int):
        """One GPU: rank 0 times ``fn()`` alone (``reps`` calls after a warm-up) and checks its output with ``check(out)``.

        The other ranks wait.  Every rank gets ``(median ms, every rank's check combined)``.
        """
        ms, result = None, {"max_abs": 0.0, "rel_l2": 0.0, "ok": True, "rows": 0}
        if self.rank == 0:
            out = fn()  # warm-up (cuDNN plans, kernel compilation)
            times = []
            for _ in range(reps):
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                t = time.perf_counter()
                out = fn()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                times.append((time.perf_counter() - t) * 1e3)
            ms = statistics.median(times)
            result = check(out)
            del out
        result = self.gather_check(result)
        box = [ms]
        dist.broadcast_object_list(box, src=0)
        return box[0], result

    def add(self, **row):
        if row.get("ms") and row.get("seq_len") and row.get("part") == "dense":
            # Causal attention's forward FLOPs over all GPUs, per GPU per second.
            flops = flops_causal(1, self.heads, row["seq_len"], row["seq_len"], self.head_dim)
            row["tflops_per_gpu"] = flops / (row["gpus"] * row["ms"] * 1e-3) / 1e12
        if self.rank == 0:
            self.rows.append(row)
            self.log(json.dumps({k: v for k, v in row.items() if k != "check"}))

    def gather_check(self, check: dict) -> dict:
        """Every rank's row check, combined: the worst errors."""
        checks = [None] * self.world
        dist.all_gather_object(checks, check)
        return {
            "max_abs": max(c["max_abs"] for c in checks),
            "rel_l2": max(c["rel_l2"] for c in checks),
            "ok": all(c["ok"] for c in checks),
            "rows_checked": sum(c["rows"] for c in checks),
        }


def full_inputs(b: Bench, n: int, seed: int):
    """The whole q, k, v, identical on every rank (one seeded generator)."""
    g = torch.Generator(device=b.device).manual_seed(seed)
    shape = (1, b.heads, n, b.head_dim)
    return [torch.randn(shape, generator=g, device=b.device, dtype=b.dtype) for _ in range(3)]


def check_rows(blocks, out_rows, ref_rows) -> dict:
    """Compare the sampled rows: ``out_rows``/``ref_rows`` lists of ``(1, heads, rows, d)`` tensors."""
    o = torch.cat([x.cpu() for x in out_rows], dim=2)  # the output's own dtype: it sets the tolerance
    r = torch.cat([x.to(torch.float64).cpu() for x in ref_rows], dim=2)
    return {**compare(o, r), "rows": o.shape[2]}


def sample_blocks(n_local: int):
    """Local row blocks checked on each rank: the first and the last CHECK_ROWS rows of its shard."""
    m = min(CHECK_ROWS, n_local)
    return [(0, m), (n_local - m, n_local)]


def contiguous_global(positions: np.ndarray, start: int, stop: int):
    """Global positions of local rows [start, stop) as a (first, last + 1) range if they are contiguous, else None."""
    p = positions[start:stop]
    return (int(p[0]), int(p[-1]) + 1) if np.all(np.diff(p) == 1) else None


def check_sampled(out_local, positions, reference, block: int | None = None) -> dict:
    """Check this rank's sampled rows against ``reference((a, c))``, float64 rows of global positions ``[a, c)``.

    A sampled run is checked where its global positions are contiguous (and,
    with ``block``, inside one ``block``-row block, whose key set the
    reference recomputes).
    """
    outs, refs = [], []
    for start, stop in sample_blocks(out_local.shape[2]):
        rng = contiguous_global(positions, start, stop)
        if rng is None or (block and rng[0] // block != (rng[1] - 1) // block):
            continue
        outs.append(out_local[:, :CHECK_HEADS, start:stop])
        refs.append(reference(rng))
    return check_rows(None, outs, refs)


def dense_ref(q, k, v, positions, scale):
    """float64 causal attention of the given global query positions, first CHECK_HEADS heads (yarnref's, on the device)."""
    h = CHECK_HEADS
    return dense_reference_rows(q[:, :h], k[:, :h], v[:, :h], np.asarray(positions).tolist(), scale)


def check_local(b: Bench, out_local, q, k, v, positions, scale):
    """Check this rank's output shard on its sampled rows against float64 dense attention."""
    outs, refs = [], []
    for start, stop in sample_blocks(out_local.shape[2]):
        outs.append(out_local[:, :CHECK_HEADS, start:stop])
        refs.append(dense_ref(q, k, v, positions[start:stop], scale))
    return check_rows(None, outs, refs)


# ----------------------------------------------------------------------------- parts


def bench_p2p(b: Bench, nbytes: int):
    """The ring exchange alone: send nbytes to the next rank, receive from the previous."""
    n = nbytes // 2
    buf = torch.ones(n, dtype=torch.bfloat16 if b.device.type == "cuda" else torch.float32, device=b.device)
    nxt, prv = (b.rank + 1) % b.world, (b.rank - 1) % b.world

    def exchange():
        recv = torch.empty_like(buf)
        reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, buf, nxt), dist.P2POp(dist.irecv, recv, prv)])
        for r in reqs:
            r.wait()
        return recv

    ms, _ = b.timed(exchange, reps=5, warmup=2)
    moved = buf.numel() * buf.element_size()
    b.add(part="p2p", bytes=moved, ms=ms, gb_s=moved / ms / 1e6)
    return moved / ms / 1e6  # GB/s


def bench_dense(b: Bench, n: int, p2p_gbs: float):
    scale = 1.0 / math.sqrt(b.head_dim)
    q, k, v = full_inputs(b, n, seed=n)
    reps = 3 if n <= (1 << 18) else 1
    single_ms = None
    # One GPU (rank 0), where it fits.
    if n <= b.args.single_max:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def single():
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION] if b.device.type == "cuda" else [SDPBackend.MATH]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

        rows = np.concatenate([np.arange(0, CHECK_ROWS), np.arange(n - CHECK_ROWS, n)])
        check_single = lambda out: check_rows(None, [out[:, :CHECK_HEADS, torch.as_tensor(rows, device=b.device)]], [dense_ref(q, k, v, rows, scale)])  # noqa: E731
        single_ms, check = b.single(single, check_single, reps)
        b.add(part="dense", seq_len=n, impl="single GPU (SDPA cuDNN)" if b.device.type == "cuda" else "single process (SDPA math)", gpus=1, ms=single_ms, check=check)
        if b.device.type == "cuda":
            torch.cuda.empty_cache()

    kv_bytes = 2 * q.numel() // b.world * q.element_size()  # the K/V shard each step moves
    comm_ms = (b.world - 1) * kv_bytes / (p2p_gbs * 1e6) if p2p_gbs else None
    results = {}
    for layout, overlap, label in (("zigzag", True, "ring zigzag"), ("contiguous", True, "ring contiguous"), ("zigzag", False, "ring zigzag serial")):
        if n > (1 << 18) and label != "ring zigzag":
            continue  # at the large size only the main configuration (time budget)
        positions = shard_positions(n, b.world, layout)[b.rank]
        local = [shard_tensor(x, b.world, b.rank, layout) for x in (q, k, v)]
        fn = lambda: ring_attention(*local, layout, causal=True, scale=scale, return_lse=True, overlap=overlap)  # noqa: E731
        ms, (out, _) = b.timed(fn, reps=reps)
        check = b.gather_check(check_local(b, out, q, k, v, positions, scale))
        results[label] = ms
        row = dict(part="dense", seq_len=n, impl=f"yarnref {label}", gpus=b.world, ms=ms, check=check)
        if single_ms:
            row["speedup"] = single_ms / ms
            row["scaling_efficiency"] = single_ms / (b.world * ms)
        row["comm_bytes_per_rank"] = (b.world - 1) * kv_bytes
        row["comm_ms_measured_bw"] = comm_ms
        if label == "ring zigzag serial" and comm_ms:
            row["hidden_fraction"] = max(0.0, min(1.0, (ms - results["ring zigzag"]) / comm_ms))
        b.add(**row)
        del local, out
    # torch's own context parallelism, in the same run.  It shards its buffers in place, so it is
    # given q, k, v themselves (no second full copy: at 2M tokens three more 16 GiB tensors do not
    # fit beside its float32 merge buffers); the check reads the first heads, copied first.
    checked = [x[:, :CHECK_HEADS].clone() for x in (q, k, v)]
    buffers = [q, k, v]
    del q, k, v
    b.add(**bench_torch_cp(b, buffers, checked, n, scale, reps, single_ms))
    del buffers, checked
    if b.device.type == "cuda":
        torch.cuda.empty_cache()


def bench_torch_cp(b: Bench, buffers, checked, n, scale, reps, single_ms):
    """torch's context_parallel on the whole ``buffers`` (q, k, v; sharded in place), checked on ``checked``'s heads."""
    row = dict(part="dense", seq_len=n, impl="torch context_parallel (alltoall, cuDNN)", gpus=b.world)
    if b.device.type != "cuda":
        row["missing"] = "context_parallel needs CUDA"
        return row
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.experimental import context_parallel
        from torch.distributed.tensor.experimental._attention import set_rotate_method
        from torch.nn.attention import SDPBackend, sdpa_kernel

        mesh = init_device_mesh("cuda", (b.world,))
        set_rotate_method("alltoall")
        qc, kc, vc = buffers
        with context_parallel(mesh, buffers=[qc, kc, vc], buffer_seq_dims=[2, 2, 2], no_restore_buffers={qc, kc, vc}):
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                ms, out = b.timed(lambda: F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, scale=scale), reps=reps)
        # Head-tail load balancing: rank r holds blocks r and 2P-1-r, yarnref's zig-zag layout.
        positions = shard_positions(n, b.world, "zigzag")[b.rank]
        row.update(ms=ms, check=b.gather_check(check_local(b, out, *checked, positions, scale)))
        if single_ms:
            row["speedup"] = single_ms / ms
            row["scaling_efficiency"] = single_ms / (b.world * ms)
        del qc, kc, vc, out
    except Exception as exc:  # recorded, the run goes on
        row["failed"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    return row


def bench_dca(b: Bench, n: int):
    chunk, local_size = (DCA_CHUNK, DCA_LOCAL) if not b.args.quick else (300, 40)
    inv_freq = base_inv_freq(b.head_dim, DCA_THETA)
    scale = 1.0 / math.sqrt(b.head_dim)
    q, k, v = full_inputs(b, n, seed=n + 1)
    reps = 1 if n > (1 << 18) else 3

    def reference(positions_block):
        """float64 DCA of a contiguous block of query positions [a, c): the torch backend, prefix [0, c), 2 heads."""
        a, c = positions_block
        with yarnref.use_backend("torch", device=b.device):
            f64 = lambda x: x[:, :CHECK_HEADS, :c].to(torch.float64)  # noqa: E731
            return yarnref.dca_attention(f64(q)[:, :, a:c], f64(k), f64(v), inv_freq, chunk, local_size, scale)

    def check(out_local, positions):
        return check_sampled(out_local, positions, reference)

    single_ms = None
    if n <= b.args.single_max:
        def single():
            with yarnref.use_backend("torch", device=b.device):
                return yarnref.dca_attention(q, k, v, inv_freq, chunk, local_size, scale)

        single_ms, c = b.single(single, lambda out: check(out, np.arange(n)), reps)
        b.add(part="dca", seq_len=n, impl="single GPU (yarnref torch dca_attention)", gpus=1, ms=single_ms, check=c)
    layout = "zigzag"
    positions = shard_positions(n, b.world, layout)[b.rank]
    local = [shard_tensor(x, b.world, b.rank, layout) for x in (q, k, v)]
    fn = lambda: ring_dca_attention(*local, inv_freq, chunk, local_size, layout, scale, return_lse=True)  # noqa: E731
    ms, (out, _) = b.timed(fn, reps=reps)
    row = dict(part="dca", seq_len=n, impl="yarnref ring DCA zigzag", gpus=b.world, ms=ms, check=b.gather_check(check(out, positions)))
    if single_ms:
        row["speedup"] = single_ms / ms
        row["scaling_efficiency"] = single_ms / (b.world * ms)
    b.add(**row)


def bench_vs(b: Bench, n: int):
    """Kernel-mode vertical-slash attention: one GPU (the public call) against the zig-zag ring, lists given."""
    scale = 1.0 / math.sqrt(b.head_dim)
    q, k, v = full_inputs(b, n, seed=n + 2)
    vertical, slash = make_indices(n, b.heads, VS_VERTICALS, VS_SLASHES, VS_PATTERN, seed=n, device=b.device)  # the same on every rank
    reps = 1 if n > (1 << 18) else 3
    base = dict(part="vertical-slash", seq_len=n, budget=f"{VS_VERTICALS} v + {VS_SLASHES} s, {VS_PATTERN}")

    def reference(positions_block):
        """float64 attention over the kernel-mode key set of the contiguous query positions [a, c) (inside one row block), 2 heads."""
        a, c = positions_block
        r0, r1 = a // VS_BLOCK * VS_BLOCK, (c - 1) // VS_BLOCK * VS_BLOCK + VS_BLOCK  # whole row blocks around them
        r1 = min(r1, n)
        with yarnref.use_backend("torch", device=b.device):  # the rows [r0, r1) are the last queries of keys [0, r1)
            lists = yarnref.convert_vertical_slash_indexes(r1 - r0, r1, torch.where(vertical < r1, vertical, -1), slash)
        rows = list(range(a - r0, c - r0))
        out = [sparse_reference_rows(q[:, :, r0:r1], k[:, :, :r1], v[:, :, :r1], lists, h, rows, scale) for h in range(CHECK_HEADS)]
        return torch.stack(out)[None]  # (1, heads, rows, d)

    def check(out_local, positions):
        return check_sampled(out_local, positions, reference, block=VS_BLOCK)

    single_ms = None
    if n <= b.args.single_max:
        def single():
            with yarnref.use_backend("torch", device=b.device):
                return yarnref.vertical_slash_attention(q, k, v, vertical, slash, scale=scale)  # kernel mode, the default

        single_ms, c = b.single(single, lambda out: check(out, np.arange(n)), reps)
        b.add(**base, impl="single GPU (yarnref torch vertical_slash_attention, kernel mode)", gpus=1, ms=single_ms, check=c)
        if b.device.type == "cuda":
            torch.cuda.empty_cache()
    layout = "zigzag"
    row = dict(**base, impl="yarnref ring vertical-slash zigzag (kernel mode)", gpus=b.world)
    if padded_length(n, b.world, layout) % (2 * b.world * VS_BLOCK):
        row["missing"] = f"kernel mode on the ring needs zig-zag runs on {VS_BLOCK}-row blocks: a length that is a multiple of {2 * b.world * VS_BLOCK}"
        b.add(**row)
        return
    positions = shard_positions(n, b.world, layout)[b.rank]
    local = [shard_tensor(x, b.world, b.rank, layout) for x in (q, k, v)]
    fn = lambda: ring_vertical_slash_attention(*local, vertical, slash, layout, scale, return_lse=True)  # noqa: E731
    ms, (out, _) = b.timed(fn, reps=reps)
    row.update(ms=ms, check=b.gather_check(check(out, positions)))
    if single_ms:
        row["speedup"] = single_ms / ms
        row["scaling_efficiency"] = single_ms / (b.world * ms)
    b.add(**row)
    del local, out, q, k, v
    if b.device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- output


def write(b: Bench, out_dir: Path):
    env = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(b.device) if b.device.type == "cuda" else "cpu",
        "world_size": b.world,
        "backend": dist.get_backend(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "heads": b.heads,
        "head_dim": b.head_dim,
        "dtype": str(b.dtype).replace("torch.", ""),
        "wall_s": time.perf_counter() - b.t0,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ring.json").write_text(json.dumps({"environment": env, "ceilings": b.ceilings, "rows": b.rows}, indent=2, default=str))
    lines = [
        f"Ring attention, {env['world_size']} x {env['device']}, torch {env['torch']}, {env['date_utc']} UTC "
        f"(B=1, {b.heads} heads, head_dim {b.head_dim}, {env['dtype']}, causal)",
        "",
        "| part | tokens | implementation | GPUs | ms | speedup vs 1 GPU | scaling eff. | TFLOP/s per GPU | comm/rank (GB) | hidden | check (rel L2, max abs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in b.rows:
        if r["part"] == "p2p":
            lines.insert(2, f"{env['backend'].upper()} point-to-point (ring exchange, {r['bytes'] / 2**20:.0f} MiB): {r['gb_s']:.1f} GB/s per rank and direction\n")
            if b.ceilings.get("gemm_tflops"):
                lines.insert(3, f"Measured in this run on rank 0's device: GEMM ({b.ceilings['gemm_shape']}) {b.ceilings['gemm_tflops']:.0f} TFLOP/s, "
                             f"copy {b.ceilings['copy_tbps']:.2f} TB/s; the TFLOP/s column is causal attention's forward FLOPs per GPU and its share of that GEMM rate (bf16 on GPUs)\n")
            continue
        fmt = lambda key, f: (f.format(r[key]) if r.get(key) is not None else "")  # noqa: E731
        rate = fmt("tflops_per_gpu", "{:.0f}")
        if rate and b.ceilings.get("gemm_tflops"):
            rate += f" ({r['tflops_per_gpu'] / b.ceilings['gemm_tflops']:.0%})"
        chk = r.get("check")
        chk_s = f"{'ok' if chk['ok'] else 'FAIL'} {chk['rel_l2']:.1e}, {chk['max_abs']:.1e}" if chk else r.get("missing", r.get("failed", ""))
        comm = f"{r['comm_bytes_per_rank'] / 1e9:.2f}" if r.get("comm_bytes_per_rank") else ""
        lines.append(
            f"| {r['part']} | {r['seq_len']} | {r['impl']} | {r['gpus']} | {fmt('ms', '{:.1f}')} | {fmt('speedup', '{:.2f}x')} | "
            f"{fmt('scaling_efficiency', '{:.0%}')} | {rate} | {comm} | {fmt('hidden_fraction', '{:.0%}')} | {chk_s} |"
        )
    (out_dir / "ring.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main():
    args = parse_args()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    elif not args.quick:
        raise SystemExit("no CUDA device: run with --quick for the CPU check of the script")
    dist.init_process_group(backend)
    b = Bench(args)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([1024, 2048] if args.quick else [1 << 18, 1 << 20])
    dca_size = args.dca_size or min(max(sizes), 1 << 20 if not args.quick else max(sizes))
    try:
        # The device's own limits, measured now (rank 0's GPU): bf16 GEMM rate and copy bandwidth.
        b.ceilings = measure_ceilings(b.device, quick=args.quick) if b.rank == 0 else {}
        b.log(f"ceilings: {json.dumps(b.ceilings)}")
        kv_bytes = 2 * b.heads * b.head_dim * 2 * max(sizes) // b.world
        p2p = bench_p2p(b, min(kv_bytes, 1 << 30))
        for n in sizes if not args.no_dense else []:
            b.log(f"dense, {n} tokens")
            bench_dense(b, n, p2p)
        if not args.no_dca:
            b.log(f"DCA, {dca_size} tokens")
            bench_dca(b, dca_size)
        if not args.no_vs:
            b.log(f"vertical-slash (kernel mode), {dca_size} tokens")
            bench_vs(b, dca_size)
    finally:
        if b.rank == 0:
            write(b, Path(args.out))
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
