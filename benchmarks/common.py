"""Shared machinery of the benchmarks: device setup, timing, hardware ceilings, output checks, result rows.

Method (see docs/benchmarks.md):

* Time with CUDA events around each call after a warm-up call (which also
  pays any JIT compilation), repeat within a time budget and report the
  median; short operations (< 2 ms) go through ``triton.testing.do_bench``
  (events, an L2 flush between calls, median).
* Measure the two ceilings in the same run: a device-to-device copy (bytes
  read + bytes written) and a bf16 GEMM; report achieved TB/s or TFLOP/s as a
  percentage of them.
* Check every timed implementation's output against a float64 reference on a
  slice of rows (yarnref's own operations in float64), within yarnref's
  tolerance table (:mod:`yarnref.testing`), so that a fast wrong kernel
  cannot pass.
* Anything missing (an operation a backend does not have yet, a peer that is
  not installed) is recorded as ``missing`` and the run goes on; anything that
  raises is recorded as ``failed`` with the error.

Results are rows (dicts) written as JSON by each benchmark and rendered to
markdown by ``run_all.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # import yarnref from the source tree
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


# ----------------------------------------------------------------------------- command line


def parse_args(description: str, argv=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default="bench-out", help="directory for the JSON results")
    p.add_argument("--quick", action="store_true", help="tiny sizes on whatever device is there (CPU check of the scripts)")
    p.add_argument("--ceilings", default=None, help="JSON file with the ceilings measured earlier in this run")
    p.add_argument("--budget", type=float, default=None, help="seconds this benchmark may take (approximately)")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return args


def pick_device(quick: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not quick:
        raise SystemExit("no CUDA device: run with --quick for the CPU check of the scripts")
    return torch.device("cpu")


def environment() -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        import cupy

        env["cupy"] = cupy.__version__
    except ImportError:
        env["cupy"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["device"] = p.name
        env["sms"] = p.multi_processor_count
        env["memory_gib"] = round(p.total_memory / 2**30, 1)
        env["cuda"] = torch.version.cuda
    else:
        env["device"] = "cpu"
    return env


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_once(fn, device) -> float:
    """Milliseconds of one call (CUDA events on a GPU, the host clock on CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_fn(fn, device: torch.device, budget_s: float = 2.0, min_reps: int = 3, max_reps: int = 100) -> dict:
    """Median milliseconds of ``fn()`` after a warm-up call; the number of repetitions fits ``budget_s``.

    Returns ``{"ms": median, "ms_min": min, "reps": n, "first_ms": warm-up call incl. compilation}``.
    """
    t0 = time.perf_counter()
    fn()  # warm-up: JIT compilation, autotuning, allocator
    sync(device)
    first_ms = (time.perf_counter() - t0) * 1e3
    one = _time_once(fn, device)
    if device.type == "cuda" and one < 2.0:
        try:
            from triton.testing import do_bench

            ms = do_bench(fn, warmup=25, rep=max(50, int(budget_s * 1000 * 0.8)), return_mode="median")
            return {"ms": float(ms), "ms_min": None, "reps": None, "first_ms": first_ms, "timer": "do_bench"}
        except ImportError:
            pass
    if device.type != "cuda":  # --quick on CPU: the scripts are checked, not the speed
        min_reps = 1
    reps = int(min(max_reps, max(min_reps, budget_s * 1e3 / max(one, 1e-3))))
    times = [one] + [_time_once(fn, device) for _ in range(reps - 1)]
    return {"ms": statistics.median(times), "ms_min": min(times), "reps": reps, "first_ms": first_ms, "timer": "events"}


# ----------------------------------------------------------------------------- ceilings


def measure_ceilings(device: torch.device, quick: bool = False) -> dict:
    """Device-to-device copy bandwidth (read + write bytes) and bf16 GEMM rate, measured now."""
    if device.type != "cuda":
        n, size = 1 << 20, 256
        dtype = torch.float32
    else:
        n, size = (1 << 28) if not quick else (1 << 24), 8192 if not quick else 2048
        dtype = torch.bfloat16
    src = torch.randn(n, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, budget_s=1.0)
    copy_tbps = 2 * src.numel() * 4 / (t["ms"] * 1e-3) / 1e12
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device, budget_s=1.5)
    gemm_tflops = 2 * size**3 / (t["ms"] * 1e-3) / 1e12
    ceilings = {
        "copy_tbps": copy_tbps,
        "copy_bytes": 2 * n * 4,
        "gemm_tflops": gemm_tflops,
        "gemm_shape": f"{size}^3 {str(dtype).replace('torch.', '')}",
    }
    if device.type == "cuda":
        try:
            ceilings.update(measure_l2_read(device))
        except MissingOperation as exc:
            ceilings["l2_read_note"] = str(exc)
    return ceilings


_l2_kernel = None


def measure_l2_read(device: torch.device, mbytes: int = 24, sweeps: int = 40) -> dict:
    """Read bandwidth of the L2 cache into the SMs (TB/s), measured now.

    A buffer of ``mbytes`` MB (it fits in the H100's 50 MB L2) is read
    ``sweeps`` times by one program per 4 KB slice stride, with ``.cg`` loads
    (cached in L2 only, not in L1), so every byte after the first sweep comes
    from L2.  Sparse attention with 64-row tiles moves each 64-key K/V tile
    from L2 into shared memory once per 64 queries; this is its ceiling.
    """
    global _l2_kernel
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:
        raise MissingOperation("triton is not installed: no L2 ceiling") from exc
    if _l2_kernel is None:

        @triton.jit
        def l2_read(X, Out, n_elems, SWEEPS: tl.constexpr, BLOCK: tl.constexpr):
            pid = tl.program_id(0)
            step = tl.num_programs(0) * BLOCK
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            offs = tl.arange(0, BLOCK)
            for _ in range(SWEEPS):
                for start in range(pid * BLOCK, n_elems, step):
                    acc += tl.load(X + start + offs, cache_modifier=".cg").to(tl.float32)
            tl.store(Out + pid * BLOCK + offs, acc)

        _l2_kernel = l2_read
    block = 2048  # bf16 elements: 4 KB per load step
    n = mbytes * (1 << 20) // 2
    n -= n % block
    x = torch.randn(n, device=device, dtype=torch.float32).to(torch.bfloat16)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    grid = (sms * 8,)
    out = torch.empty(grid[0] * block, device=device, dtype=torch.float32)
    t = time_fn(lambda: _l2_kernel[grid](x, out, n, SWEEPS=sweeps, BLOCK=block, num_warps=4), device, budget_s=1.0)
    return {"l2_read_tbps": sweeps * n * 2 / (t["ms"] * 1e-3) / 1e12, "l2_read_bytes": n * 2}


def load_or_measure_ceilings(args, device) -> dict:
    if args.ceilings and Path(args.ceilings).is_file():
        return json.loads(Path(args.ceilings).read_text())
    return measure_ceilings(device, args.quick)


# ----------------------------------------------------------------------------- checks


def compare(out, ref, *, op: str = "attention", **tolerance_options) -> dict:
    """``out`` against its float64 reference, with yarnref's oracle (:mod:`yarnref.testing`).

    ``ok``: every entry within the tolerance table of ``out``'s dtype for
    ``op`` (:func:`yarnref.testing.assert_close`; ``tolerance_options`` such as
    ``max_position`` and ``angle_dtype`` go to it), non-finite entries equal.
    ``max_abs`` (:func:`yarnref.testing.max_error`) and the relative L2 error
    are reported beside it.
    """
    from yarnref.testing import assert_close, dtype_name, max_error

    o = out.detach().to(torch.float64).cpu().numpy()
    r = ref.detach().to(torch.float64).cpu().numpy()
    norm = float(np.linalg.norm(r))
    rel = float(np.linalg.norm(o - r) / norm) if norm > 0 else float(np.linalg.norm(o - r))
    result = {"max_abs": max_error(o, r), "rel_l2": rel, "finite": bool(np.isfinite(o).all()), "ok": True}
    try:
        assert_close(o, r, dtype=dtype_name(out.dtype), op=op, **tolerance_options)
    except AssertionError as error:
        result["ok"] = False
        result["why"] = str(error).splitlines()[0]
    return result


def merge_checks(*errs) -> dict:
    """One check of several compared slices: the worst numbers, ok only if all are."""
    return {
        "max_abs": max(e["max_abs"] for e in errs),
        "rel_l2": max(e["rel_l2"] for e in errs),
        "finite": all(e["finite"] for e in errs),
        "ok": all(e["ok"] for e in errs),
    }


def dense_reference_rows(q, k, v, rows, scale, causal=True):
    """The float64 reference for query ``rows``: yarnref's attention (the torch backend, tested against the spec).

    Causal alignment is bottom-right; each run of consecutive rows is one
    call over the keys it can see, so no ``(rows, kv_len)`` matrix of the
    whole sequence is built.  Returns ``(b, hq, len(rows), dv)`` float64.
    """
    import yarnref

    tq, tk = q.shape[2], k.shape[2]
    rows = [int(r) for r in rows]
    runs, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i] != rows[i - 1] + 1:
            runs.append((rows[start], rows[i - 1] + 1))
            start = i
    parts = []
    with yarnref.use_backend("torch", device=q.device) as backend:
        for a, c in runs:
            keys = c + (tk - tq) if causal else tk  # the keys row c - 1 can see
            q64 = q[:, :, a:c].to(torch.float64)
            k64, v64 = k[:, :, :keys].to(torch.float64), v[:, :, :keys].to(torch.float64)
            parts.append(backend.attention(q64, k64, v64, causal=causal, scale=scale))
    return torch.cat(parts, dim=2)


# ----------------------------------------------------------------------------- results


class Recorder:
    """Collects result rows of one benchmark and writes them as JSON."""

    def __init__(self, bench: str, args, device: torch.device, ceilings: dict):
        self.bench, self.args, self.device, self.ceilings = bench, args, device, ceilings
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, case: str, impl: str, *, status: str = "ok", timing: dict | None = None, flops: float | None = None,
            nbytes: float | None = None, err: dict | None = None, ok: bool | None = None, **extra) -> dict:
        row = {"bench": self.bench, "case": case, "impl": impl, "status": status}
        if timing is not None:
            ms = timing["ms"]
            row.update(ms=ms, first_ms=timing.get("first_ms"), timer=timing.get("timer"), reps=timing.get("reps"))
            if flops:
                row["tflops"] = flops / (ms * 1e-3) / 1e12
                row["pct_gemm"] = 100 * row["tflops"] / self.ceilings["gemm_tflops"]
            if nbytes:
                row["tbps"] = nbytes / (ms * 1e-3) / 1e12
                row["pct_copy"] = 100 * row["tbps"] / self.ceilings["copy_tbps"]
        if err is not None:
            row["max_abs"], row["rel_l2"] = err["max_abs"], err["rel_l2"]
        if ok is not None:
            row["check"] = "pass" if ok else "FAIL"
            if not ok:
                row["status"] = "wrong"
        row.update(extra)
        self.rows.append(row)
        summary = f"{row['ms']:.3f} ms" if "ms" in row else ""
        print(f"[{self.bench}] {case:<28} {impl:<34} {row['status']:<8} {summary} {row.get('check', '')} {extra.get('reason', '')}", flush=True)
        return row

    def missing(self, case: str, impl: str, reason: str):
        return self.add(case, impl, status="missing", reason=reason)

    def failed(self, case: str, impl: str, exc: BaseException):
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        return self.add(case, impl, status="failed", reason=reason)

    @contextlib.contextmanager
    def guard(self, case: str, impl: str):
        """Run a measurement; a raised error becomes a ``failed`` row and the benchmark goes on."""
        try:
            yield
        except MissingOperation as exc:
            self.missing(case, impl, str(exc))
        except Exception as exc:  # noqa: BLE001 - a benchmark must never take the run down
            traceback.print_exc()
            self.failed(case, impl, exc)
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def note(self, text: str):
        self.notes.append(text)
        print(f"[{self.bench}] note: {text}", flush=True)

    def add_ratios(self, case: str, ours: str, peers=None):
        """For each peer row of ``case``: ratio = its time / ours (> 1 means ours is faster).

        Peers: the rows named in ``peers``, by default every row not starting with "yarnref"
        (our own stages, such as the index conversion, are not peers).
        """
        base = next((r for r in self.rows if r["case"] == case and r["impl"] == ours and "ms" in r), None)
        if base is None:
            return
        for r in self.rows:
            is_peer = r["impl"] in peers if peers is not None else not r["impl"].startswith("yarnref")
            if r["case"] == case and "ms" in r and r is not base and is_peer:
                r[f"speedup_vs_{_slug(r['impl'])}"] = r["ms"] / base["ms"]
                base.setdefault("speedup_vs", {})[r["impl"]] = r["ms"] / base["ms"]

    def write(self):
        path = Path(self.args.out) / f"{self.bench}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"bench": self.bench, "quick": self.args.quick, "env": environment(), "ceilings": self.ceilings,
               "elapsed_s": self.elapsed(), "notes": self.notes, "rows": self.rows}
        path.write_text(json.dumps(doc, indent=1, default=_json_default))
        print(f"[{self.bench}] wrote {path} ({len(self.rows)} rows, {self.elapsed():.1f} s)", flush=True)


class MissingOperation(Exception):
    """An operation or peer that is not there (recorded as ``missing``)."""


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return str(x)


def backend_op(backend, name: str):
    """``backend.<name>`` or raise MissingOperation."""
    fn = getattr(backend, name, None)
    if fn is None:
        raise MissingOperation(f"the {backend!r} backend has no {name}() yet")
    return fn


def use_yarnref_backend(name: str, device: torch.device):
    """``yarnref.use_backend(name, ...)`` (torch gets the device); MissingOperation if it cannot be selected."""
    import yarnref

    try:
        if name == "torch":
            return yarnref.use_backend("torch", device=str(device))
        return yarnref.use_backend(name)
    except Exception as exc:  # noqa: BLE001
        raise MissingOperation(f"backend {name!r} unavailable: {type(exc).__name__}: {exc}") from exc


def flops_causal(b: int, h: int, tq: int, tk: int, d: int) -> float:
    """Forward FLOPs of causal attention (QK^T and PV, 2 flops per MAC) over the visible pairs, bottom-right."""
    off = tk - tq
    pairs = tq * (off + 1) + tq * (tq - 1) / 2  # sum over queries i of (i + off + 1) visible keys
    return 4.0 * b * h * d * pairs


def device_timeline(prof, min_gap_us: float = 20.0, top: int = 12) -> str:
    """Where the device waited in a torch.profiler run: the time from the first host operation to the first
    kernel, the kernels' busy time against their span, and the longest idle gaps between kernels (each with
    the kernel that ended the gap and the host operation launched last before it), for gaps of ``min_gap_us``
    or more.  For each listed gap, the longest stretch in it where the host ran no torch operation at all
    (Python or NumPy work) is given with the host operations on either side; with ``with_stack=True`` in the
    profiler, each is followed by its innermost yarnref frame."""
    from torch.autograd import DeviceType

    events = list(prof.events())
    kernels = sorted((e for e in events if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)
    host = sorted((e for e in events if e.device_type == DeviceType.CPU), key=lambda e: e.time_range.start)
    if not kernels or not host:
        return "no kernels or host operations recorded"
    t0 = host[0].time_range.start
    busy, end, gaps = 0.0, kernels[0].time_range.start, []
    for e in kernels:
        start, stop = e.time_range.start, e.time_range.end
        if start - end >= min_gap_us:
            before = [h.name for h in host if h.time_range.start <= start and h.time_range.start >= end]
            gaps.append((start - end, e.name[:60], before[-1][:40] if before else "-", end, start))
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    span = end - kernels[0].time_range.start
    lines = [f"host start to first kernel: {kernels[0].time_range.start - t0:.0f} us; kernels busy {busy:.0f} us "
             f"of a {span:.0f} us span ({busy / span:.0%}); {len(gaps)} gaps of {min_gap_us:.0f} us or more, "
             f"{sum(g[0] for g in gaps):.0f} us in all"]
    for gap, name, launched, gap_start, gap_end in sorted(gaps, reverse=True)[:top]:
        lines.append(f"  {gap:8.0f} us idle before {name}  (host op started in the gap: {launched})")
        blank = _host_blank(host, gap_start, gap_end)
        if blank is not None:
            length, after_op, before_op = blank
            lines.append(f"           longest host stretch without torch operations: {length:.0f} us, "
                         f"after {_where(after_op)}, before {_where(before_op)}")
    return "\n".join(lines)


def _host_blank(host, start: float, stop: float):
    """``(us, op before, op after)``: the longest interval in ``[start, stop]`` covered by no host operation."""
    covered, previous, best = start, None, None
    for h in host:
        a, b = h.time_range.start, h.time_range.end
        if b < start:
            continue
        if a > stop:
            break
        if a > covered and (best is None or a - covered > best[0]):
            best = (a - covered, previous, h)
        if b > covered:
            covered, previous = b, h
    return best


def _where(op) -> str:
    """A host operation's name and, where recorded, its innermost frame in yarnref's or the benchmark's code."""
    if op is None:
        return "the gap's start"
    frames = [f for f in (getattr(op, "stack", None) or []) if "yarnref" in f or "benchmarks" in f]
    return f"{op.name[:40]}" + (f" [{frames[0].strip()[-90:]}]" if frames else "")


def free_gib() -> float:
    if not torch.cuda.is_available():
        return math.inf
    free, _ = torch.cuda.mem_get_info()
    return free / 2**30


def main_wrapper(bench_name: str, run):
    """Parse args, measure (or load) the ceilings, run ``run(rec)`` and always write what was recorded."""
    args = parse_args(bench_name)
    device = pick_device(args.quick)
    ceilings = load_or_measure_ceilings(args, device)
    rec = Recorder(bench_name, args, device, ceilings)
    try:
        run(rec)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        rec.failed("(benchmark)", bench_name, exc)
    finally:
        rec.write()
    return rec
