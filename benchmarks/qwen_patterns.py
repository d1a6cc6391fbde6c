r"""Vertical-slash index sets at benchmark geometry with Qwen2.5-7B-Instruct-1M's real per-head budgets.

MInference (Jiang et al., arXiv:2407.02490, section 3) keeps, per head, a set
of key columns (verticals) and of diagonals ``delta = i - j`` (slashes);
Qwen2.5-1M (arXiv:2501.15383) ships a per-layer, per-head budget table
(``benchmarks/data/qwen2.5_7b_instruct_1m_sparse_attention_config.json``, read
through :func:`yarnref.sparse_attention_config_for`, so a vertical budget of
30 runs as 130, as in vLLM).  This module builds, for every (layer, head) of
that table, index sets of those budgets at a length ``N``, from two sources:

``synthetic``
    the ``realistic`` generator of ``bench_sparse.py`` (90% of the free
    slashes near the diagonal, distance 100 + an exponential of mean 2048,
    10% uniform; verticals uniform), one head at a time with its own budgets.

``smollm2``
    the index sets a real model chose (``yarnref patterns --npz`` on
    SmolLM2-135M at length ``n``: ``layer{L}_vertical_idx`` and
    ``layer{L}_slash_idx``, ``(heads, width)``, ``-1``-padded), scaled to
    ``N``.  Head assignment: Qwen layer ``l`` takes the exported layer at the
    same relative depth (index ``round(l / 27 * (n_exported - 1))``), Qwen
    head ``h`` takes that layer's head ``h mod heads``.  Scaling, per head:
    the forced sets (slashes 0..99, verticals 0..29, which MInference always
    keeps) are kept as they are; the head's other kept distances ``d`` (and
    positions ``p``) are multiplied by ``r = N / n`` and define an empirical
    quantile function (linear between the sorted scaled values); the head's
    Qwen budget minus the forced entries is drawn from it without repeats
    (inverse-CDF sampling, rounded down), so the distance profile of the
    real head survives at the new length.  When its support is too narrow to
    hold the budget (a head that kept few, tightly clustered slashes), the
    rest is drawn uniformly over ``[100, N)`` (``[30, N)`` for verticals)
    and counted in ``filled_uniform``.

Density is what the kernel computes: the block and column lists of
:func:`yarnref.convert_vertical_slash_indexes` (64 x 64), built per chunk of
row blocks, and the causal query-key pairs they cover (closed form per listed
block and column), over the ``N (N + 1) / 2`` causal pairs.  The
distribution over heads is reported as min, quartiles, max, the ``mean``
(equal to all kept pairs over all causal pairs, since every head has the same
causal pairs: what sets the cost of one call over all heads) and the
work-weighted mean :math:`\sum_h d_h^2 / \sum_h d_h` (the density the average
unit of work sits in).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_sparse import make_indices  # noqa: E402  (imports common, which puts the source tree on sys.path)
from qwen_layer import SPARSE_TABLE_PATH, load_sparse_table  # noqa: E402

FORCED_VERTICALS, FORCED_SLASHES = 30, 100
SOURCES = ("synthetic", "smollm2")
BM = BN = 64


# ----------------------------------------------------------------------------- budgets


def head_budgets(table=None) -> tuple[np.ndarray, np.ndarray]:
    """``(vertical, slash)``, each ``(layers, heads)`` int64: the budgets as run (30 -> 130), via yarnref's reader."""
    import yarnref

    table = load_sparse_table() if table is None else table
    dca = {"chunk_size": 2, "local_size": 1, "sparse_attention_config": table}
    parsed = [yarnref.sparse_attention_config_for(dca, layer) for layer in range(len(table))]
    return np.stack([p.vertical_size for p in parsed]), np.stack([p.slash_size for p in parsed])


def budget_distribution(table=None) -> dict:
    """How many heads have each ``(vertical, slash)`` budget of the table (as written), most common first."""
    import yarnref

    table = load_sparse_table() if table is None else table
    dca = {"chunk_size": 2, "local_size": 1, "sparse_attention_config": table}
    pairs = {}
    for layer in range(len(table)):
        b = yarnref.sparse_attention_config_for(dca, layer)
        for v, s in zip(b.config_vertical_size.tolist(), b.slash_size.tolist()):
            pairs[(v, s)] = pairs.get((v, s), 0) + 1
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))
    vertical, slash = head_budgets(table)
    return {
        "heads": int(vertical.size),
        "budgets": [{"vertical": v, "slash": s, "heads": n} for (v, s), n in ranked],
        "vertical_as_run": _stats(vertical.ravel().astype(np.float64)),
        "slash": _stats(slash.ravel().astype(np.float64)),
    }


def _stats(x: np.ndarray) -> dict:
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"min": float(q[0]), "q1": float(q[1]), "median": float(q[2]), "q3": float(q[3]), "max": float(q[4]),
            "mean": float(x.mean())}


def density_stats(density: np.ndarray) -> dict:
    """min, quartiles, max, mean (= aggregate density) and the work-weighted mean over heads."""
    d = np.asarray(density, dtype=np.float64).ravel()
    out = _stats(d)
    out["work_weighted_mean"] = float((d * d).sum() / d.sum()) if d.sum() > 0 else 0.0
    out["heads"] = int(d.size)
    return out


# ----------------------------------------------------------------------------- index sets


def _pad_sorted(rows: list[np.ndarray], descending: bool) -> np.ndarray:
    """``(1, heads, width)`` int64: each row sorted (ascending verticals, descending slashes), ``-1``-padded."""
    width = max(1, max(len(r) for r in rows))
    out = np.full((1, len(rows), width), -1, dtype=np.int64)
    for h, r in enumerate(rows):
        r = np.sort(np.asarray(r, dtype=np.int64))
        out[0, h, : len(r)] = r[::-1] if descending else r
    return out


def _clamped(budget: int, n: int, minimum: int) -> int:
    """The budget an estimation keeps at length ``n`` (MInference's minimums, at most ``n``)."""
    return int(min(n, max(int(budget), minimum)))


def synthetic_indices(n: int, vertical_budget: np.ndarray, slash_budget: np.ndarray, seed: int):
    """``realistic`` index sets of per-head budgets, ``(1, heads, width)`` int64 each (sorted, ``-1``-padded)."""

    def one_head(h: int):
        nv, ns = _clamped(vertical_budget[h], n, 30), _clamped(slash_budget[h], n, 50)
        # The generator draws at least one free slash; a budget within the forced diagonals is those alone.
        v, s = make_indices(n, 1, nv, max(ns, min(n, FORCED_SLASHES + 1)), "realistic", seed * 1000 + h, "cpu")
        return v[0, 0].numpy(), (s[0, 0].numpy() if ns > FORCED_SLASHES else np.arange(ns))

    # Heads differ in size, so one generator call each; each has its own seed, so threads give the same sets.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        pairs = list(pool.map(one_head, range(len(vertical_budget))))
    return _pad_sorted([v for v, _ in pairs], False), _pad_sorted([s for _, s in pairs], True)


def _draw_profile(kept: np.ndarray, forced: int, ratio: float, n: int, count: int, rng) -> tuple[np.ndarray, int]:
    """``count`` distinct integers in ``[forced, n)`` drawn from the scaled empirical distribution of ``kept``.

    Returns ``(values, filled_uniform)``: how many had to come from the uniform fill.
    """
    if count <= 0:
        return np.zeros(0, np.int64), 0
    free = np.sort(kept[kept >= forced]).astype(np.float64) * ratio
    chosen = np.zeros(0, np.int64)
    if free.size:
        grid = np.linspace(0.0, 1.0, free.size) if free.size > 1 else np.zeros(1)
        for _ in range(8):  # rejection of repeats: a few rounds of oversampling
            need = count - chosen.size
            if need <= 0:
                break
            u = rng.random(2 * need + 16)
            draw = np.floor(np.interp(u, grid, free) if free.size > 1 else free[0] + u * ratio).astype(np.int64)
            draw = draw[(draw >= forced) & (draw < n)]
            merged = np.concatenate([chosen, draw])
            _, first = np.unique(merged, return_index=True)
            chosen = merged[np.sort(first)][:count]
    filled = count - chosen.size
    if filled > 0:
        free_slots = np.ones(n - forced, dtype=bool)  # [forced, n) less the chosen: setdiff1d's result, in O(n)
        free_slots[chosen - forced] = False
        pool = np.flatnonzero(free_slots).astype(np.int64) + forced
        chosen = np.concatenate([chosen, rng.choice(pool, size=filled, replace=False)])
    return chosen, int(filled)


def load_patterns(path: Path) -> dict:
    """An ``.npz`` of ``yarnref patterns --npz``: ``{"length": n, "layers": [...], "sets": {layer: (vertical, slash)}}``."""
    with np.load(path, allow_pickle=False) as f:
        layers = [int(x) for x in f["layers"]]
        sets = {layer: (np.asarray(f[f"layer{layer}_vertical_idx"]), np.asarray(f[f"layer{layer}_slash_idx"])) for layer in layers}
        return {"length": int(f["length"]), "layers": layers, "sets": sets}


def real_indices(patterns: dict, n: int, layer: int, n_layers: int, vertical_budget: np.ndarray, slash_budget: np.ndarray,
                 seed: int):
    """SmolLM2's index sets scaled to length ``n`` for Qwen ``layer`` (module docstring): ``(vertical, slash, filled)``."""
    src_layers = patterns["layers"]
    pick = src_layers[int(round(layer / max(1, n_layers - 1) * (len(src_layers) - 1)))]
    src_v, src_s = patterns["sets"][pick]
    ratio = n / patterns["length"]
    rng = np.random.default_rng(seed)
    verts, slashes, filled = [], [], 0
    for h, (v_b, s_b) in enumerate(zip(vertical_budget.tolist(), slash_budget.tolist())):  # heads differ in size
        row_v, row_s = src_v[h % src_v.shape[0]], src_s[h % src_s.shape[0]]
        nv, ns = _clamped(v_b, n, 30), _clamped(s_b, n, 50)
        fv, fs = min(FORCED_VERTICALS, nv), min(FORCED_SLASHES, ns)
        v, a = _draw_profile(row_v[row_v >= 0], FORCED_VERTICALS, ratio, n, nv - fv, rng)
        s, b = _draw_profile(row_s[row_s >= 0], FORCED_SLASHES, ratio, n, ns - fs, rng)
        verts.append(np.concatenate([np.arange(fv), v]))
        slashes.append(np.concatenate([np.arange(fs), s]))
        filled += a + b
    return _pad_sorted(verts, False), _pad_sorted(slashes, True), filled


# ----------------------------------------------------------------------------- density after conversion


def _prefix_pairs(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_{t=0}^{x} min(t, w)`` for ``x >= -1`` (0 at ``x = -1``), elementwise, int64."""
    x = x.clamp(min=-1)
    below = x * (x + 1) // 2
    above = w * (w + 1) // 2 + (x - w) * w
    return torch.where(x <= w, below, above)


def _list_pairs(converted, start: int, stop: int, bm: int, bn: int) -> torch.Tensor:
    """Causal query-key pairs the lists of rows ``[start, stop)`` (keys ``[0, stop)``) cover, per head ``(heads,)``."""
    block_count, block_offset, column_count, column_index = converted
    R = block_count.shape[-1]
    dev = block_count.device
    p0 = start + torch.arange(R, device=dev, dtype=torch.int64) * bm  # first position of each row block
    p1 = torch.clamp(p0 + bm, max=stop) - 1  # last position
    off = block_offset.to(torch.int64)
    listed = torch.arange(off.shape[-1], device=dev) < block_count[..., None]
    width = (torch.clamp(off + bn, max=stop) - off).clamp(min=0)  # keys of the block inside [0, stop)
    pairs = _prefix_pairs(p1[:, None] + 1 - off, width) - _prefix_pairs(p0[:, None] - off, width)
    total = torch.where(listed, pairs, 0).sum(dim=(-1, -2))  # (batch, heads)
    col = column_index.to(torch.int64)
    listed = torch.arange(col.shape[-1], device=dev) < column_count[..., None]
    seen = (p1[:, None] - torch.maximum(p0[:, None], col) + 1).clamp(min=0)
    total += torch.where(listed, seen, 0).sum(dim=(-1, -2))
    return total[0]


def listed_pairs(converted, q_len: int, kv_len: int, causal: bool, bm: int = BM, bn: int = BN) -> torch.Tensor:
    """Query-key pairs the kernel computes from one call's lists, per head ``(heads,)`` (batch 0), int64.

    Causal: the queries are the last ``q_len`` of ``kv_len`` positions and see the keys up to their own
    (:func:`_list_pairs`).  Not causal: every query sees every listed key inside ``[0, kv_len)``.
    """
    if causal:
        return _list_pairs(converted, kv_len - q_len, kv_len, bm, bn)
    block_count, block_offset, column_count, column_index = converted
    R = block_count.shape[-1]
    dev = block_count.device
    rows = (torch.clamp(torch.arange(1, R + 1, device=dev, dtype=torch.int64) * bm, max=q_len)
            - torch.arange(R, device=dev, dtype=torch.int64) * bm)  # (R,) queries per row block
    off = block_offset.to(torch.int64)
    listed = torch.arange(off.shape[-1], device=dev) < block_count[..., None]
    width = (torch.clamp(off + bn, max=kv_len) - off.clamp(min=0)).clamp(min=0)  # keys of the range inside [0, kv_len)
    keys = torch.where(listed, width, 0).sum(-1)  # (batch, heads, R)
    keys += torch.minimum(column_count.to(torch.int64), torch.tensor(column_index.shape[-1], device=dev))
    return (keys * rows).sum(-1)[0]


def kernel_density(vertical, slash, n: int, *, device="cpu", max_elements: int = 1 << 25) -> np.ndarray:
    """Per head: causal pairs the 64 x 64 kernel lists cover / ``n (n + 1) / 2``, converted per chunk of row blocks.

    ``vertical``, ``slash``: ``(1, heads, width)`` sorted, ``-1``-padded (numpy or torch).
    """
    import yarnref

    v = torch.as_tensor(vertical, device=device)
    s = torch.as_tensor(slash, device=device)
    heads = v.shape[1]
    per_block = heads * (s.shape[-1] + v.shape[-1] + 2)
    rows = max(1, max_elements // per_block) * BM
    total = torch.zeros(heads, dtype=torch.int64, device=device)
    with yarnref.use_backend("torch", device=str(device)):
        for start in range(0, n, rows):  # chunks of row blocks: rows [start, stop) are the last queries of stop keys
            stop = min(start + rows, n)
            v_part = torch.where(v < stop, v, -1)  # ascending: the dropped verticals are each row's tail
            converted = yarnref.convert_vertical_slash_indexes(stop - start, stop, v_part, s, BM, BN, True)
            total += _list_pairs(converted, start, stop, BM, BN)
    return total.cpu().numpy().astype(np.float64) / (n * (n + 1) / 2)


# ----------------------------------------------------------------------------- the report


def pattern_sets(source: str, n: int, layer: int, vertical_budget, slash_budget, patterns=None, n_layers=28):
    """``(vertical, slash, info)`` of one layer at length ``n``; ``patterns``: ``{n_source: load_patterns(...)}``."""
    if source == "synthetic":
        v, s = synthetic_indices(n, vertical_budget, slash_budget, seed=n // 1024 + 7 * layer)
        return v, s, {}
    src = min(patterns, key=lambda m: (abs(math.log(n / m)), -m))  # the exported length nearest in ratio
    v, s, filled = real_indices(patterns[src], n, layer, n_layers, vertical_budget, slash_budget, seed=n // 1024 + 7 * layer)
    return v, s, {"from_length": src, "filled_uniform": filled}


def find_patterns(directory) -> dict:
    """``{length: patterns}`` for every ``smollm2_*.npz`` in ``directory`` (empty if none or no directory)."""
    found = {}
    if directory is None or not Path(directory).is_dir():
        return found
    for path in sorted(Path(directory).glob("smollm2_*.npz")):
        p = load_patterns(path)
        found[p["length"]] = p
    return found


def density_report(lengths, patterns_dir=None, *, layers=None, device="cpu", budget_s: float | None = None, table=None,
                   log=print) -> dict:
    """Per source and length: the per-head density distribution over the table's heads (``missing`` when absent)."""
    vertical, slash = head_budgets(table)
    n_layers = vertical.shape[0]
    layers = list(range(n_layers)) if layers is None else list(layers)
    patterns = find_patterns(patterns_dir)
    report = {"budgets": budget_distribution(table), "layers": layers, "sources": {}}
    t0 = time.perf_counter()
    for n in lengths:  # both sources at a length before the next length
        for source in SOURCES:
            key = f"{source} {n}"
            if source == "smollm2" and not patterns:
                report["sources"][key] = {"status": "missing",
                                          "reason": f"no smollm2_*.npz in {patterns_dir!s} (yarnref patterns --npz)"}
                continue
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                report["sources"][key] = {"status": "skipped", "reason": f"time budget {budget_s:.0f} s spent"}
                continue
            densities, extra = [], {}
            for layer in layers:
                v, s, info = pattern_sets(source, n, layer, vertical[layer], slash[layer], patterns, n_layers)
                densities.append(kernel_density(v, s, n, device=device))
                for k_, val in info.items():
                    extra[k_] = extra.get(k_, 0) + val if k_ == "filled_uniform" else val
            d = np.concatenate(densities)
            report["sources"][key] = {"status": "ok", "source": source, "length": n, **density_stats(d), **extra,
                                      "per_layer_mean": [float(x.mean()) for x in densities]}
            log(f"density {key}: " + ", ".join(f"{k_} {report['sources'][key][k_]:.3f}" for k_ in
                                               ("min", "q1", "median", "q3", "max", "mean", "work_weighted_mean")))
    report["seconds"] = time.perf_counter() - t0
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="131072,262144,524288,1048576")
    p.add_argument("--patterns", default=None, metavar="DIR", help="directory with smollm2_<n>.npz (yarnref patterns --npz)")
    p.add_argument("--layers", default=None, help="Qwen layers (default all 28), comma-separated")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    p.add_argument("--budget", type=float, default=None, help="seconds (lengths not reached are skipped)")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lengths = [int(x) for x in args.lengths.split(",")]
    layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
    report = density_report(lengths, args.patterns, layers=layers, device=device, budget_s=args.budget)
    report["table"] = str(SPARSE_TABLE_PATH.name)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
