"""One Qwen2.5-7B-Instruct-1M decoder layer through the Qwen2.5-1M prefill, 128K to 1M tokens: time and peak memory.

The layer is ``qwen_layer.QwenLayer`` (random bf16 weights; hidden 3584, 28
query / 4 KV heads of 128, MLP 18944, q/k/v biases, RMSNorm 1e-6, RoPE theta
1e7) with attention by :func:`yarnref.qwen_prefill` on the torch backend:
DCA (chunk 262144, local 8192), the temperature of the prompt length (O =
262144), and, in the ``dca+sparse`` variant, vertical-slash attention per DCA
segment above the 32768-key gate with the budgets of one real layer of the
model's table (the layer of median total budget).  Variants per length:

* ``dense dca`` / ``dca+sparse <source>``: the attention (dense DCA is the
  baseline the report's 3-7x time-to-first-token is measured against);
  ``<source>`` says where the sparse path's index sets come from
  (:class:`PatternSubstitution`): the estimation always runs on the layer's
  own q and k (its time and memory are in the layer's), and with random
  weights it ranks random scores, so its kept slashes spread over every
  distance and the kernel's lists cover nearly the whole causal area
  (``estimated``: the run as the library computes it, a near-dense
  pattern); ``synthetic`` and ``smollm2`` replace its result by index sets
  of the same shapes and per-head budgets from ``qwen_patterns`` (the
  ``realistic`` generator, or SmolLM2-135M's exported sets scaled to the
  segment's key count; ``smollm2`` needs ``--patterns DIR`` with
  ``smollm2_<n>.npz`` from ``yarnref patterns --npz``), drawn per DCA
  segment key count before the timed run;
* ``chunked 32K`` / ``unchunked``: chunked prefill through the whole layer
  (32768 tokens at a time, K/V cache kept, each chunk's queries against every
  key so far) or the whole prompt at once (where memory allows: an
  out-of-memory is recorded as such; at 1M the unchunked variants are not
  run, which the run notes: two (T, 18944) MLP buffers take 74 GiB and the
  four variants would take the benchmark past its time budget).

Variants run in order of importance at each length (chunked: dense,
synthetic, smollm2, estimated; then unchunked), so that the time budget
(``--budget``, 290 s by default) cuts the least important ones, with a note:
a variant is skipped when the time spent plus its time at the length before,
scaled by the square of the length ratio, would pass 95% of the budget.
``last_sets_density`` on the sparse rows is the mean over heads of the
kernel-list density of the last estimation's sets over the causal square of
its keys; ``estimation_ms`` (and ``estimation_share`` of the layer's time) is
the device time of the timed call's ``vertical_slash_indices`` calls (CUDA
events around each, read after the run), ``estimations`` their number.

Per variant: the layer's time of the second of two identical calls
(``ms``; the first, ``first_ms``, also pays what a new shape costs once: the
cuDNN execution plan of every new (q_len, kv_len) and any kernel
compilation; ``--repeats 1`` times the first call alone); ``layer_peak_gib``, the peak of
``torch.cuda.max_memory_allocated`` above what is allocated when the layer
starts (its weights, the hidden states of the prompt and the K/V cache,
reported beside it), and ``mlp_peak_gib``, the MLP's own peak above its input
(the largest over chunks), against the report's 71 GB -> 2.3 GB for one MLP
at 1M tokens; beside them the peaks of the other phases of a chunk, each
above what was allocated when it started (``projection_peak_gib``: norm,
q/k/v, the cache write; ``attention_peak_gib``: ``qwen_prefill``;
``output_peak_gib``: the output projection), ``row_step`` (rows per
sub-chunk of the row-wise work, ``qwen_layer.ROW_BYTES``) and
``within_goal`` (``layer_peak`` at most 2.3e9 bytes).  ``ttft_ratio`` on the ``dca+sparse`` rows is dense DCA's
time over ours with the same chunking (and ``vs_dense_unchunked``).

Check: the attention outputs of the last row block of the first, middle and
last DCA segment of the run against a float64 reference
(``QwenLayer.attention_reference``: dense DCA in float64, or the index sets
the run used, substituted ones included, attended in float64: the check runs
inside the substitution block).
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch

from common import compare, main_wrapper, merge_checks, sync
from bench_sparse_real import _pop_option

import qwen_patterns as qp
from qwen_layer import QwenLayer, load_sparse_table, qwen25_7b_1m, tiny_geometry, tiny_sparse_table, replace

LENGTHS = (131072, 262144, 524288, 1048576)
CHUNK = 32768
GIB = 2**30
#: The report's figure for chunked prefill's activation memory at 1M tokens, 2.3 GB (decimal; 2.14 GiB).
GOAL_BYTES = 2.3e9
#: Unchunked variants are run below this length only (see the note the run writes).
SKIP_UNCHUNKED_FROM = 1048576
#: Set from the command line before main_wrapper parses the common options.
OPTIONS = {"patterns": None, "lengths": None, "repeats": None, "list_mib": None, "row_mib": None, "merge_mib": None,
           "variants": None}
#: What ``--variants`` may name: the dense DCA layer and the sparse layer's pattern sources.
VARIANTS = ("dense", "synthetic", "smollm2", "estimated")


def set_memory_budgets(rec) -> None:
    """``--list-mib``, ``--row-mib``, ``--merge-mib``: the byte budgets that bound the layer's memory, set for this run.

    The list chunks of the torch backend's ``vertical_slash_attention``
    (``yarnref_torch.sparse.LIST_BYTES``), the layer's row sub-chunks
    (``qwen_layer.ROW_BYTES``) and the LSE merge's row blocks
    (``yarnref_torch.attention.MERGE_BYTES``): a run with one of them raised
    measures what that bound costs in time and gives back in memory.  The
    values in force are recorded in the run's notes.
    """
    import importlib

    import qwen_layer

    targets = {
        "list_mib": (importlib.import_module("yarnref_torch.sparse"), "LIST_BYTES"),
        "row_mib": (qwen_layer, "ROW_BYTES"),
        "merge_mib": (importlib.import_module("yarnref_torch.attention"), "MERGE_BYTES"),
    }
    for option, (module, name) in targets.items():
        if OPTIONS[option] is not None:
            mib = int(OPTIONS[option])
            if mib < 1:
                raise SystemExit(f"--{option.replace('_', '-')} must be at least 1 (MiB), not {mib}")
            setattr(module, name, mib << 20)
    rec.note("memory budgets: " + ", ".join(f"{name} {getattr(module, name) >> 20} MiB" for module, name in targets.values()))


class CallTimes:
    """The summed time of the calls made through :meth:`run`: CUDA events around each call on a CUDA
    device, read after the run (so nothing synchronises inside the timed call), the host clock elsewhere."""

    def __init__(self, cuda: bool):
        self.cuda, self.events, self.host_ms = cuda, [], 0.0

    def run(self, fn, *args, **kwargs):
        if self.cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn(*args, **kwargs)
            stop.record()
            self.events.append((start, stop))
            return result
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        self.host_ms += (time.perf_counter() - t0) * 1e3
        return result

    def ms(self) -> float:
        """Milliseconds so far (on CUDA: call after a synchronisation)."""
        return sum(a.elapsed_time(b) for a, b in self.events) + self.host_ms


class PatternSubstitution:
    """Context manager: the layer's estimation still runs, its index sets are replaced by a pattern source's.

    With random weights, the estimation (``vertical_slash_indices`` on the
    last 64 queries of each DCA segment) ranks random scores: its slashes
    spread uniformly over the distances and the kernel's lists cover nearly
    the whole causal area, which says nothing about a trained model.  Inside
    this block, every call of the layer's backend's ``vertical_slash_indices``
    (the operation :func:`yarnref.qwen_prefill` fetches from the backend in
    force, here ``layer.backend``) first runs the real estimation on the
    layer's own q and k, so its time and memory are paid, then returns the
    index sets of ``source`` at the call's key count ``kv_len`` with the
    same per-head budgets (checked: same shapes, same kept count per head).
    The pipeline may estimate a segment's heads in several calls (one KV head
    per call with the sparse layer's cache of rotated keys), in ascending
    order; each call gets its heads' rows of the sets, and a segment's
    estimation is counted once its last head is done:

    * ``"synthetic"``: ``qwen_patterns.synthetic_indices`` (bench_sparse's
      ``realistic`` generator, per head with its budget);
    * ``"smollm2"``: ``qwen_patterns.real_indices``, SmolLM2's exported
      sets scaled to ``kv_len`` (``patterns``: ``{length: load_patterns(...)}``);
    * ``"estimated"``: no substitution (the estimation's own sets), recorded
      the same way.

    The sets of a key count are drawn once (seeded by ``kv_len`` and the
    layer) and cached on the host (one instance serves every run of the
    benchmark; each call moves its sets to the device, a few MiB, as the
    pipeline moves the estimation's sets to the host): :meth:`prepare` draws
    them before a timed run, and the float64 row check, run inside the same
    block, sees the sets the run used.  ``calls`` counts the estimations
    since the block was entered (or the benchmark's reset before its timed
    call), :meth:`estimation_ms` their time, and ``last`` holds the last call's
    ``(kv_len, vertical, slash)``.  Leaving the block removes the wrapper (the backend's own
    method is back); the library is not changed.
    """

    SOURCES = ("estimated", "synthetic", "smollm2")

    def __init__(self, layer: QwenLayer, source: str, patterns=None, n_layers: int | None = None):
        if source not in self.SOURCES:
            raise ValueError(f"source must be one of {self.SOURCES}, got {source!r}")
        if source == "smollm2" and not patterns:
            raise ValueError("the smollm2 source needs exported patterns (yarnref patterns --npz)")
        self.layer, self.source, self.patterns = layer, source, patterns
        self.n_layers = n_layers if n_layers is not None else len(layer.sparse_table)
        vertical, slash = qp.head_budgets(layer.sparse_table)
        self.budgets = vertical[layer.layer], slash[layer.layer]  # as run (30 -> 130), as the pipeline passes them
        self.sets, self.calls, self.last, self.times = {}, 0, None, CallTimes(layer.device.type == "cuda")

    def sets_for(self, kv_len: int):
        """``(vertical, slash)`` int64 tensors ``(1, heads, width)`` on the host for ``kv_len`` keys."""
        if kv_len not in self.sets:
            seed = kv_len // 64 + 7919 * self.layer.layer
            vb, sb = self.budgets
            if self.source == "synthetic":
                v, s = qp.synthetic_indices(kv_len, vb, sb, seed=seed)
            else:
                v, s, _ = qp.pattern_sets("smollm2", kv_len, self.layer.layer, vb, sb, self.patterns, self.n_layers)
            self.sets[kv_len] = (torch.as_tensor(v), torch.as_tensor(s))
        return self.sets[kv_len]

    def prepare(self, n: int, chunk) -> None:
        """Draw the sets of every DCA segment's key count of a run of ``n`` tokens (outside the timed region)."""
        if self.source != "estimated":
            for _, end in self.layer.segments(n, chunk):
                self.sets_for(end)

    def __enter__(self):
        backend = self.layer.backend
        estimate = backend.vertical_slash_indices  # the backend's own (bound) operation

        def substituted(q, k, vertical_size, slash_size, last_q=64, **kwargs):
            vertical, slash = self.times.run(estimate, q, k, vertical_size, slash_size, last_q, **kwargs)  # paid in full
            kv_len = k.shape[2]
            h0, h1 = self.head, self.head + q.shape[1]  # the pipeline estimates head ranges in ascending order
            if self.source != "estimated":
                sets = []
                for full, theirs, name in zip(self.sets_for(kv_len), (vertical, slash), ("vertical", "slash")):
                    mine = full[:, h0:h1].to(theirs.device)
                    width = theirs.shape[-1]
                    if (mine[..., width:] >= 0).any() or mine[..., :width].shape != theirs.shape \
                            or not torch.equal((mine >= 0).sum(-1), (theirs >= 0).sum(-1)):
                        raise AssertionError(f"{self.source} {name} sets at {kv_len} keys, heads [{h0}, {h1}): shape "
                                             f"{tuple(mine.shape)}, not the estimation's {tuple(theirs.shape)} with the same budgets")
                    sets.append(mine[..., :width])
                vertical, slash = sets
            self.parts.append((vertical, slash))
            self.head = h1 % self.heads
            if self.head == 0:  # every head estimated: one estimation of the pipeline
                self.calls += 1
                joined = [torch.cat([torch.nn.functional.pad(p[i], (0, max(q[i].shape[-1] for q in self.parts) - p[i].shape[-1]),
                                                             value=-1) for p in self.parts], dim=1) for i in (0, 1)]
                self.last, self.parts = (kv_len, *joined), []
            return vertical, slash

        backend.vertical_slash_indices = substituted  # an instance attribute: found first by the backend lookup
        self.calls, self.last, self.times = 0, None, CallTimes(self.layer.device.type == "cuda")
        self.head, self.parts, self.heads = 0, [], self.layer.g.heads
        return self

    def __exit__(self, *exc):
        del self.layer.backend.vertical_slash_indices
        return False

    def estimation_ms(self) -> float:
        """Time spent in the estimation calls since the block was entered (device time on CUDA; call after a sync)."""
        return self.times.ms()

    def last_density(self) -> float | None:
        """Mean over heads of the kernel-list density of the last call's sets over the causal square of its keys."""
        if self.last is None:
            return None
        kv_len, v, s = self.last
        return float(qp.kernel_density(v, s, kv_len, device=self.layer.device).mean())


class PhaseTimes:
    """Context manager: where one layer call's time goes, measured inside the call.

    Inside this block the layer's attention operations are wrapped (and the
    wrappers removed on leaving; the library is not changed): each call of
    ``yarnref.qwen_prefill`` (``attention``: everything of a chunk's attention
    after the projections), of the backend's ``dca_attention`` (``dense_dca``:
    the dense DCA of the chunks below the sparse gate, or of the whole dense
    variant), ``vertical_slash_attention`` (``sparse_call``: validation, list
    conversion and kernel), ``merge_attention`` (``merge``: the LSE merge of
    the DCA parts), and inside the sparse call the list conversion
    (``conversion``, ``yarnref_torch.sparse._convert``) and the Triton kernel
    (``sparse_kernel``) gets CUDA events around it (host clocks on the CPU),
    read after the run, so nothing synchronises inside the call.  The
    estimation's time is :meth:`PatternSubstitution.estimation_ms`.

    With ``count_pairs`` every conversion's lists also count the query-key
    pairs the kernel computes (:func:`qwen_patterns.listed_pairs`, summed on
    the device): the kernel's rate is ``4 * head_dim * pairs`` flop over its
    time.  The counting adds device work, so it runs in a call that is not
    the timed one (the benchmark's first call).
    """

    PHASES = ("attention", "dense_dca", "sparse_call", "conversion", "sparse_kernel", "merge")

    def __init__(self, layer: QwenLayer, count_pairs: bool = False):
        self.layer, self.count_pairs = layer, count_pairs
        self.times = {phase: CallTimes(layer.device.type == "cuda") for phase in self.PHASES}
        self.pairs = None
        self._restore = []

    def _timed(self, phase: str, fn, after=None):
        def wrapper(*args, **kwargs):
            result = self.times[phase].run(fn, *args, **kwargs)
            if after is not None:
                after(args, result)
            return result
        return wrapper

    def _patch(self, owner, name: str, phase: str, after=None, instance: bool = False):
        original = getattr(owner, name)
        setattr(owner, name, self._timed(phase, original, after))
        self._restore.append((owner, name, None if instance else original))

    def _add_pairs(self, args, converted):
        q_len, kv_len, _vertical, _slash, bm, bn, causal = args
        pairs = qp.listed_pairs(converted, q_len, kv_len, causal, bm, bn).sum()
        self.pairs = pairs if self.pairs is None else self.pairs + pairs

    def __enter__(self):
        import importlib

        import yarnref

        backend = self.layer.backend
        self._patch(yarnref, "qwen_prefill", "attention")
        for name, phase in (("dca_attention", "dense_dca"), ("vertical_slash_attention", "sparse_call"),
                            ("merge_attention", "merge")):
            self._patch(backend, name, phase, instance=True)  # an instance attribute: found first by the lookup
        self._patch(importlib.import_module("yarnref_torch.sparse"), "_convert", "conversion",
                    after=self._add_pairs if self.count_pairs else None)
        try:
            triton_sparse = importlib.import_module("yarnref_torch.triton_sparse")
        except ImportError:  # no Triton: the sparse call runs the torch path, its time is the call's
            triton_sparse = None
        if triton_sparse is not None and hasattr(triton_sparse, "sparse_attention_triton"):
            self._patch(triton_sparse, "sparse_attention_triton", "sparse_kernel")
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._restore):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._restore = []
        return False

    def ms(self) -> dict:
        """Time per phase (ms; device time between the events on CUDA, read after a sync)."""
        return {phase: times.ms() for phase, times in self.times.items()}

    def counted_pairs(self) -> int | None:
        return None if self.pairs is None else int(self.pairs)


def median_budget_layer(table) -> int:
    vertical, slash = qp.head_budgets(table)
    total = (vertical + slash).sum(axis=1)
    return int(np.argsort(total, kind="stable")[len(total) // 2])


def picked_segments(layer: QwenLayer, n: int, chunk):
    """First, middle and last DCA segment of the run that the row check can use (multiple of 64 rows, at least 64)."""
    usable = [(b, e) for b, e in layer.segments(n, chunk) if (e - b) % 64 == 0 and e - b >= 64]
    if not usable:
        return []
    return sorted({usable[0], usable[len(usable) // 2], usable[-1]})


def check_run(layer: QwenLayer, segments, n: int, sparse: bool) -> dict:
    kept = layer.kept
    errs = []
    for i, (begin, end) in enumerate(segments):
        q_rows = kept["q"][:, :, 64 * i : 64 * (i + 1)]
        ref = layer.kept_reference(q_rows, n, sparse, begin, end)
        errs.append(compare(kept["attention"][:, :, 64 * i : 64 * (i + 1)], ref,
                            max_position=layer.g.dca["chunk_size"]))
        del ref
    return merge_checks(*errs)


def variant_name(pattern: str | None, chunk) -> str:
    """``dense dca`` or ``dca+sparse <pattern>``, then ``chunked 32K`` or ``unchunked``."""
    kind = "dense dca" if pattern is None else f"dca+sparse {pattern}"
    return f"{kind} {'chunked ' + _k(chunk) if chunk else 'unchunked'}"


def run_variant(rec, layer: QwenLayer, n: int, substitution: PatternSubstitution | None, chunk, dtype, label: str,
                repeats: int = 1):
    """One timed layer run; ``substitution``: None (dense DCA) or the index-set source of the sparse path."""
    device = rec.device
    sparse = substitution is not None
    pattern = substitution.source if sparse else None
    name = variant_name(pattern, chunk)
    case = f"{label} {name}"
    with rec.guard(case, "qwen layer"):
        substitution = substitution if sparse else contextlib.nullcontext()
        t_sets = time.perf_counter()
        if sparse:
            substitution.prepare(n, chunk)  # drawn before the timed run (cached per key count)
        t_sets = time.perf_counter() - t_sets
        segments = picked_segments(layer, n, chunk)
        rows = [r for _, e in segments for r in range(e - 64, e)]
        g = torch.Generator(device=device).manual_seed(n)
        x_in = torch.randn((n, layer.g.hidden), generator=g, device=device, dtype=dtype)
        memory = {} if device.type == "cuda" else None
        with substitution:
            times, pairs = [], None
            for i in range(repeats):  # the same call each time; the last one keeps its rows and memory
                last = i == repeats - 1
                if sparse:  # the estimation's count and time are those of the timed (last) call
                    substitution.calls, substitution.times = 0, CallTimes(device.type == "cuda")
                    substitution.head, substitution.parts = 0, []
                x = x_in.clone() if not last else x_in
                # The first of several calls counts the kernel's pairs; the phases are the timed call's.
                phases = PhaseTimes(layer, count_pairs=sparse and i == 0 and repeats > 1)
                sync(device)
                t0 = time.perf_counter()
                with phases:
                    layer.forward(x, chunk=chunk, sparse=sparse, memory=memory if last else None,
                                  keep_rows=rows if last else None)
                sync(device)
                times.append((time.perf_counter() - t0) * 1e3)
                pairs = phases.counted_pairs() if pairs is None else pairs
                del x
            del x_in
            ms = times[-1]
            phase_ms = phases.ms()
            calls = substitution.calls if sparse else 0
            estimation_ms = substitution.estimation_ms() if sparse else None  # after the sync above
            err = check_run(layer, segments, n, sparse)  # inside the block: the reference sees the sets the run used
            layer.kept = None
            density = substitution.last_density() if sparse else None
        extra = {}
        if memory:
            extra = {"layer_peak_gib": memory["layer_peak"] / GIB, "mlp_peak_gib": memory["mlp_peak"] / GIB,
                     "projection_peak_gib": memory["projection_peak"] / GIB,
                     "attention_peak_gib": memory["attention_peak"] / GIB, "output_peak_gib": memory["output_peak"] / GIB,
                     "row_step": memory["row_step"],
                     "mlp_sub_chunk_buffers_gib": 2 * min(memory["row_step"], n) * layer.g.intermediate
                     * torch.finfo(dtype).bits / 8 / GIB,
                     "within_goal": memory["layer_peak"] <= GOAL_BYTES,
                     "kv_cache_gib": memory["kv_cache"] / GIB, "weights_gib": layer.weight_bytes() / GIB,
                     "hidden_gib": n * layer.g.hidden * torch.finfo(dtype).bits / 8 / GIB}
        extra.update(phase_breakdown(phase_ms, ms, estimation_ms, pairs, layer.g.head_dim, rec.ceilings))
        if sparse:
            extra.update(pattern=pattern, estimations=calls, sets_drawn_s=t_sets, last_sets_density=density,
                         estimation_ms=estimation_ms, estimation_share=estimation_ms / ms if ms else None)
        mlp_naive = n if chunk is None else min(chunk, n)
        timer = "one call" if repeats == 1 else f"call {repeats} of {repeats}"
        rec.add(case, "qwen layer", timing={"ms": ms, "first_ms": times[0], "timer": timer, "reps": 1}, err=err,
                ok=err["ok"], variant=name, length=n, sparse=sparse, chunk=chunk,
                chunking=("chunked " + _k(chunk)) if chunk else "unchunked",
                mlp_two_buffers_gib=2 * mlp_naive * layer.g.intermediate * torch.finfo(dtype).bits / 8 / GIB,
                note=("peak above weights+hidden+K/V: layer {:.2f} GiB (goal {:.2f}), attention {:.2f}, MLP {:.2f}, "
                      "projections {:.2f}, output {:.2f} GiB".format(
                          extra["layer_peak_gib"], GOAL_BYTES / GIB, extra["attention_peak_gib"], extra["mlp_peak_gib"],
                          extra["projection_peak_gib"], extra["output_peak_gib"]) if memory else None), **extra)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def phase_breakdown(phase_ms: dict, ms: float, estimation_ms: float | None, pairs: int | None, head_dim: int,
                    ceilings: dict | None) -> dict:
    """The row's phase fields: ``<phase>_ms`` of :class:`PhaseTimes`, ``outside_attention_ms`` (the
    projections, the MLP, the norms and the cache writes: the call minus ``attention``),
    ``conversion_exposed_ms`` (the list conversion's time on the call's path: at most the sparse calls' time
    outside the kernel, since a long call converts the next lists beside the kernel),
    ``estimation_conversion_share`` (the estimation and that conversion time over the call), and with counted
    pairs ``kernel_pairs`` and the kernel's rate ``kernel_tflops`` against the GEMM and the L2 read ceilings
    of the run (a 64-row tile reads its 64 keys and values, 32 KB in bf16 at head_dim 128, from L2 for 64
    queries: ``64 * head_dim / 128`` flop per byte, so the L2 read rate allows ``L2 * 64 * head_dim / 128``
    flop/s)."""
    out = {f"{phase}_ms": value for phase, value in phase_ms.items()}
    out["outside_attention_ms"] = ms - phase_ms["attention"]
    # The conversions of a long call run on a side stream beside the kernel (CONVERT_AHEAD): what they cost
    # the call is at most the time its sparse calls spend outside the kernel.
    exposed = min(phase_ms["conversion"], max(0.0, phase_ms["sparse_call"] - phase_ms["sparse_kernel"]))
    out["conversion_exposed_ms"] = exposed
    if estimation_ms is not None:
        out["estimation_conversion_share"] = (estimation_ms + exposed) / ms if ms else None
    if pairs:
        out["kernel_pairs"] = pairs
        kernel_s = phase_ms["sparse_kernel"] / 1e3
        if kernel_s > 0:
            tflops = 4 * head_dim * pairs / kernel_s / 1e12
            out["kernel_tflops"] = tflops
            ceilings = ceilings or {}
            if ceilings.get("gemm_tflops"):
                out["kernel_vs_gemm"] = tflops / ceilings["gemm_tflops"]
            if ceilings.get("l2_read_tbps"):
                out["kernel_vs_l2_bound"] = tflops / (ceilings["l2_read_tbps"] * 64 * head_dim / 128)
    return out


def _k(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 else str(n)


def add_ratios(rec, label: str):
    """On each passing ``dca+sparse`` row: dense DCA's time over its own, same chunking and unchunked."""
    rows = [r for r in rec.rows if r["case"].startswith(label + " ") and "ms" in r and r.get("check") == "pass"]
    dense = {r["chunking"]: r for r in rows if not r["sparse"]}
    for r in rows:
        if not r["sparse"]:
            continue
        same = dense.get(r["chunking"])
        if same:
            r["ttft_ratio"] = same["ms"] / r["ms"]
            r.setdefault("speedup_vs", {})[same["variant"]] = same["ms"] / r["ms"]
        unchunked = dense.get("unchunked")
        if unchunked:
            r["vs_dense_unchunked"] = unchunked["ms"] / r["ms"]
            r.setdefault("speedup_vs", {})[unchunked["variant"]] = unchunked["ms"] / r["ms"]


def plan(sources, chunk, n: int, skip_unchunked_from: int | None, dense: bool = True):
    """The variants of one length, most important first (the time budget cuts from the end):
    chunked dense and sparse of each source, then unchunked (``None``: dense, left out when not ``dense``)."""
    dense_part = [None] if dense else []
    out = [(p, chunk) for p in dense_part + list(sources)]
    if skip_unchunked_from is None or n < skip_unchunked_from:
        out += [(p, None) for p in dense_part + list(sources)]
    return out


def chosen_variants(option: str | None) -> set:
    """``--variants``: a comma-separated subset of :data:`VARIANTS` (default: all of them)."""
    if option is None:
        return set(VARIANTS)
    names = [name.strip() for name in option.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise SystemExit(f"--variants takes a comma-separated subset of {', '.join(VARIANTS)}, not {option!r}")
    return set(names)


def run(rec):
    device = rec.device
    quick = rec.args.quick
    budget = rec.args.budget or (60 if quick else 290)
    patterns = qp.find_patterns(OPTIONS["patterns"])
    if quick:
        g = tiny_geometry()
        geometry = replace(g, dca={**g.dca, "sparse_attention_last_q": 64})
        table, lengths, chunk, dtype = tiny_sparse_table(), (512,), 128, torch.float32
        warm, skip_unchunked_from = None, None
    else:
        geometry, table, lengths, chunk, dtype = qwen25_7b_1m(), load_sparse_table(), LENGTHS, CHUNK, torch.bfloat16
        warm, skip_unchunked_from = 65536, SKIP_UNCHUNKED_FROM
    if OPTIONS["lengths"]:
        lengths = tuple(int(x) for x in OPTIONS["lengths"].split(","))
    repeats = int(OPTIONS["repeats"]) if OPTIONS["repeats"] else (1 if quick else 2)
    if repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    rec.note(f"each variant runs {repeats} time(s); ms is the last call, first_ms the first")
    set_memory_budgets(rec)
    sources = ["synthetic"] + (["smollm2"] if patterns else []) + ["estimated"]
    wanted = chosen_variants(OPTIONS["variants"])
    sources = [s for s in sources if s in wanted]
    if not patterns:
        rec.note(f"smollm2 patterns missing: no smollm2_*.npz in {OPTIONS['patterns']!s} (yarnref patterns --npz)")
    else:
        rec.note(f"smollm2 patterns exported at lengths {sorted(patterns)} from {OPTIONS['patterns']}")
    if skip_unchunked_from is not None:
        rec.note(f"unchunked variants from {_k(skip_unchunked_from)} tokens skipped: the unchunked layer at 1M holds "
                 "two (T, 18944) MLP buffers (74 GiB) and its four variants would take the run past its time budget")
    layer_index = median_budget_layer(table) if not quick else 0
    layer = QwenLayer(geometry, dtype=dtype, device=device, seed=0, sparse_table=table, layer=layer_index)
    substitutions = {source: PatternSubstitution(layer, source, patterns) for source in sources}
    rec.note(f"layer {layer_index} of the budget table (median total budget); weights {layer.weight_bytes() / GIB:.2f} GiB; "
             f"DCA {geometry.dca}; prefill chunk {chunk}; sparse index sets: {', '.join(sources)} "
             "(estimation always run; its sets replaced by the source's, same shapes and budgets)")
    if warm is not None:
        t0 = time.perf_counter()
        for sparse in (False, True)[: 2 if sources else 1]:
            x = torch.randn((warm, geometry.hidden), device=device, dtype=dtype)
            with substitutions[sources[0]] if sparse else contextlib.nullcontext():
                layer.forward(x, chunk=chunk, sparse=sparse)
            del x
        sync(device)
        rec.note(f"warm-up at {warm} tokens (kernel compilation): {time.perf_counter() - t0:.1f} s")
    seconds = {}  # (pattern, chunk) -> (length, seconds of the variant, check and set drawing included)
    for n in lengths:
        label = _k(n)
        for pattern, this_chunk in plan(sources, chunk, n, skip_unchunked_from, dense="dense" in wanted):
            # Attention dominates at these lengths: a variant's time grows about as n^2.
            before = seconds.get((pattern, this_chunk))
            predicted = before[1] * (n / before[0]) ** 2 if before else 0.0
            if rec.elapsed() + predicted > 0.95 * budget:
                rec.note(f"time budget ({budget:.0f} s): skipped {label} {variant_name(pattern, this_chunk)} "
                         f"({rec.elapsed():.0f} s spent, about {predicted:.0f} s predicted from the length before)")
                continue
            t0 = time.perf_counter()
            run_variant(rec, layer, n, substitutions.get(pattern), this_chunk, dtype, label, repeats)
            seconds[(pattern, this_chunk)] = (n, time.perf_counter() - t0)
        add_ratios(rec, label)


if __name__ == "__main__":
    OPTIONS["patterns"] = _pop_option("patterns")
    OPTIONS["lengths"] = _pop_option("lengths")  # comma-separated token counts (default: LENGTHS)
    OPTIONS["repeats"] = _pop_option("repeats")  # calls per variant (default 2 on the device, 1 with --quick)
    OPTIONS["variants"] = _pop_option("variants")  # a subset of VARIANTS (default: all)
    for option in ("list_mib", "row_mib", "merge_mib"):  # the memory budgets (see set_memory_budgets)
        OPTIONS[option] = _pop_option(option.replace("_", "-"))
    main_wrapper("qwen_layer", run)
