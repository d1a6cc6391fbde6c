"""The real-model study: SmolLM2-135M (8K window) extended to 64K with every method.

Run on one GPU (bf16, the torch backend; about 5 to 8 minutes on an H200)::

    PYTHONPATH=$PWD:$PWD/backends:/root/yarnref-model/site \\
    YARNREF_GGUF=/root/yarnref-model/SmolLM2-135M-Instruct.Q4_1.gguf \\
    python3 scripts/study_real_model.py --out OUT_DIR

and draw the figures anywhere with matplotlib::

    python scripts/study_real_model.py --plot OUT_DIR/study.json --figures docs/figures

What it measures (the sections run in this order; each result is written to
``study.json`` as soon as it exists, so a run stopped by a time limit keeps
what it finished; perplexity gets the first 45% of ``--budget-s``, passkey
runs until 80% and patterns until 97%, and what would start later is listed
as skipped):

1. perplexity on the King James Bible at 2K, 4K, 8K, 16K, 32K and 64K tokens
   (non-overlapping windows, at most ``--ppl-tokens`` tokens per length) for
   none, linear, ntk, dynamic, yarn, dynamic-yarn, dca and dca-yarn (factor 8
   for the scaled methods, so 64K is inside every scaled window), and from 32K
   the same with ``--sparse`` (vertical-slash prefill, budget 1000/6096);
2. passkey retrieval at 4K, 8K, 16K, 32K and 64K over 10 depths, for the same
   methods;
3. attention patterns at 32K and 64K (YaRN x8): recall and densities per
   budget per head, and per-head budgets reaching 95% recall.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

METHODS = ("none", "linear", "ntk", "dynamic", "yarn", "dynamic-yarn", "dca", "dca-yarn")
SCALED = ("linear", "ntk", "dynamic", "yarn", "dynamic-yarn")
PPL_LENGTHS = (2048, 4096, 8192, 16384, 32768, 65536)
PASSKEY_LENGTHS = (4096, 8192, 16384, 32768, 65536)
PASSKEY_DEPTHS = (0.0, 0.11, 0.22, 0.33, 0.44, 0.56, 0.67, 0.78, 0.89, 1.0)
SPARSE_FROM = 32768


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def run(args) -> int:
    import torch

    from yarnref.models.corpus import PROVENANCE, read_text
    from yarnref.models.evaluate import patterns, passkey, perplexity
    from yarnref.models.loading import load_model
    from yarnref.models.methods import method_spec

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "study.json"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    import transformers

    study = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "dtype": dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised), max_position_embeddings 8192",
        "text": PROVENANCE,
        "factor": args.factor,
        "perplexity": [],
        "passkey": [],
        "patterns": [],
        "skipped": [],
        "errors": [],
        "timings": {},
    }
    model, tokenizer = load_model("smollm2-135m", device=device, dtype=dtype, progress=False)
    study["timings"]["load_s"] = time.perf_counter() - started
    text = read_text("kjv")
    _write(path, study)

    def failed(label: str, error: Exception) -> None:
        """Record an item that raised, free the GPU memory it held, and go on."""
        import traceback

        study["errors"].append({"item": label, "error": f"{type(error).__name__}: {error}",
                                "traceback": traceback.format_exc(limit=6)})
        print(f"{label}: FAILED {type(error).__name__}: {error}", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _write(path, study)

    def over(share: float) -> bool:
        """True once the run has used ``share`` of its time budget (the end of a section's slot)."""
        return time.perf_counter() - started > share * args.budget_s

    scale = args.scale

    def dca_sizes(method):
        """DCA's default sizes (3/4 and 1/8 of the 8K window), scaled down with --scale."""
        if method not in ("dca", "dca-yarn") or scale == 1:
            return {}
        return {"dca_chunk": 6144 // scale, "dca_local": 1024 // scale}

    def spec_for(method, **kw):
        factor = args.factor if method in SCALED else None
        return method_spec(method, model.config, factor=factor, **kw)

    sections = set(args.sections.split(","))
    lengths = [n // scale for n in PPL_LENGTHS if n <= args.max_length and "perplexity" in sections]
    t0 = time.perf_counter()
    for n in lengths:
        for method in METHODS:
            for sparse in ((False, True) if n >= SPARSE_FROM // scale else (False,)):
                label = f"perplexity {method}{' sparse' if sparse else ''} {n}"
                if over(0.45):
                    study["skipped"].append(label)
                    continue
                spec = spec_for(method, sparse=sparse, **dca_sizes(method))
                windows = max(1, args.ppl_tokens // n)
                try:
                    r = perplexity(model, tokenizer, text, n, spec, max_windows=windows, batch_tokens=args.batch_tokens)
                except Exception as error:  # recorded (out of memory included); the study goes on
                    failed(label, error)
                    continue
                study["perplexity"].append({"method": method, "sparse": sparse, "length": n, "perplexity": r["perplexity"],
                                            "windows": r["windows"], "tokens": r["tokens"], "seconds": r["seconds"]})
                print(f"{label}: {r['perplexity']:.3f} ({r['windows']} windows, {r['seconds']:.1f} s)", flush=True)
                _write(path, study)
    study["timings"]["perplexity_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for method in METHODS if "passkey" in sections else ():
        for n in [m // scale for m in PASSKEY_LENGTHS if m <= args.max_length]:
            label = f"passkey {method} {n}"
            if over(0.8):
                study["skipped"].append(label)
                continue
            try:
                r = passkey(model, tokenizer, n, PASSKEY_DEPTHS, spec_for(method, **dca_sizes(method)), trials=args.trials, seed=0,
                            batch_tokens=args.passkey_batch_tokens)
            except Exception as error:
                failed(label, error)
                continue
            for row in r["results"]:
                study["passkey"].append({"method": method, "length": n, "depth": row["depth"], "correct": row["correct"],
                                         "trials": row["trials"], "answers": row["answers"], "keys": row["keys"]})
            print(f"{label}: {sum(x['correct'] for x in r['results'])}/{len(r['results']) * args.trials} ({r['seconds']:.1f} s)", flush=True)
            _write(path, study)
    study["timings"]["passkey_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for n in (32768 // scale, 65536 // scale):
        if n * scale > args.max_length or "patterns" not in sections:
            continue
        if over(0.97):
            study["skipped"].append(f"patterns {n}")
            continue
        spec = method_spec("yarn", model.config, factor=args.factor)
        try:
            r = patterns(model, tokenizer, text, n, spec, recall_queries=min(args.recall_queries, n), layers=args.pattern_layers)
        except Exception as error:
            failed(f"patterns {n}", error)
            continue
        indices = r.pop("indices")
        study["patterns"].append(r)
        import numpy as np

        arrays = {"layers": np.asarray(sorted(indices)), "length": np.int64(n)}
        for layer, (v, s) in indices.items():  # int32 and compressed: the file comes back from the GPU machine
            arrays[f"layer{layer}_vertical_idx"], arrays[f"layer{layer}_slash_idx"] = v.astype(np.int32), s.astype(np.int32)
        np.savez_compressed(out / f"patterns_{n}.npz", **arrays)
        (out / f"sparse_attention_config_{n}.json").write_text(json.dumps(r["sparse_attention_config"]))
        print(f"patterns {n}: {r['seconds']:.1f} s", flush=True)
        _write(path, study)
    study["timings"]["patterns_s"] = time.perf_counter() - t0
    study["timings"]["total_s"] = time.perf_counter() - started
    _write(path, study)
    print(f"study written to {path} ({study['timings']['total_s']:.0f} s; skipped {len(study['skipped'])})")
    return 0


def _tokens(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def perplexity_figure(study: dict, figures: Path, plt) -> None:
    """Perplexity against window length, one line per method (dashed: with --sparse)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab10").colors  # one colour per method; its --sparse line dashed in the same colour
    for method, color in zip(METHODS, colors):
        for sparse in (False, True):
            rows = sorted((r["length"], r["perplexity"]) for r in study["perplexity"] if r["method"] == method and r["sparse"] == sparse)
            if rows:
                x, y = zip(*rows)
                ax.plot(x, y, marker="x" if sparse else "o", ls="--" if sparse else "-", color=color,
                        label=method + (" + sparse" if sparse else ""))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.axvline(8192, color="grey", lw=0.8)
    ax.set_xlabel("window length (tokens)")
    ax.set_ylabel("perplexity (KJV)")
    ax.set_title(f"SmolLM2-135M (trained at 8K), factor {study['factor']:g}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(figures / "real_model_perplexity.png", dpi=120)


def plot(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    study = json.loads(Path(args.plot).read_text())
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)

    if study["perplexity"]:
        perplexity_figure(study, figures, plt)

    methods = [m for m in METHODS if any(r["method"] == m for r in study["passkey"])]
    if methods:
        fig, axes = plt.subplots(2, (len(methods) + 1) // 2, figsize=(12, 5), squeeze=False)
        for ax, method in zip(axes.flat, methods):
            rows = [r for r in study["passkey"] if r["method"] == method]
            lengths = sorted({r["length"] for r in rows})
            depths = sorted({r["depth"] for r in rows})
            grid = np.full((len(depths), len(lengths)), np.nan)
            for r in rows:
                grid[depths.index(r["depth"]), lengths.index(r["length"])] = r["correct"] / r["trials"]
            ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
            ax.set_xticks(range(len(lengths)), [_tokens(n) for n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=6)
            ax.set_title(method, fontsize=9)
        for ax in list(axes.flat)[len(methods):]:
            ax.axis("off")
        fig.suptitle("passkey retrieval: depth (rows) x length (columns), green = found")
        fig.tight_layout()
        fig.savefig(figures / "real_model_passkey.png", dpi=120)

    if study["patterns"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for entry in study["patterns"]:
            budgets = entry["budgets"]
            recall = [np.mean([np.mean(l["budgets"][i]["recall"]) for l in entry["layers"]]) for i in range(len(budgets))]
            density = [np.mean([np.mean(l["budgets"][i]["exact_density"]) for l in entry["layers"]]) for i in range(len(budgets))]
            ax.plot(density, recall, marker="o", label=_tokens(entry["length"]))
            for (v, s), x, y in zip(budgets, density, recall):
                ax.annotate(f"{v}:{s}", (x, y), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("exact density (kept causal pairs)")
        ax.set_ylabel("recall of the attention mass")
        ax.set_title("vertical-slash recall vs budget (mean over heads)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(figures / "real_model_recall.png", dpi=120)
    tables = markdown_tables(study)
    tables_path = Path(args.plot).with_name("tables.md")  # beside the study, not among the site's pages
    tables_path.write_text(tables)
    print(tables)
    print(f"figures written to {figures}, tables to {tables_path}")
    return 0


def markdown_tables(study: dict) -> str:
    """The study's numbers as Markdown tables (perplexity, passkey, patterns), for the docs page."""
    lines = [f"Measured {study['date']} on {study['device']} ({study['dtype']}, torch {study['torch']}, "
             f"transformers {study['transformers']}); scaled methods at factor {study['factor']:g}.", ""]
    ppl = study["perplexity"]
    if ppl:
        lengths = sorted({r["length"] for r in ppl})
        lines += ["| method | " + " | ".join(_tokens(n) for n in lengths) + " |",
                  "|---|" + "---:|" * len(lengths)]
        for method in METHODS:
            for sparse in (False, True):
                cells = {r["length"]: r["perplexity"] for r in ppl if r["method"] == method and r["sparse"] == sparse}
                if cells:
                    name = method + (" + sparse" if sparse else "")
                    lines.append(f"| {name} | " + " | ".join(f"{cells[n]:.3g}" if n in cells else "" for n in lengths) + " |")
        lines.append("")
    keys = study["passkey"]
    if keys:
        lengths = sorted({r["length"] for r in keys})
        lines += ["| passkey (found / tried, all depths) | " + " | ".join(_tokens(n) for n in lengths) + " |",
                  "|---|" + "---:|" * len(lengths)]
        for method in METHODS:
            rows = [r for r in keys if r["method"] == method]
            if rows:
                cells = []
                for n in lengths:
                    at = [r for r in rows if r["length"] == n]
                    cells.append(f"{sum(r['correct'] for r in at)}/{sum(r['trials'] for r in at)}" if at else "")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    for entry in study["patterns"]:
        lines += [f"Patterns at {_tokens(entry['length'])} ({entry['method']['method']} x{entry['method']['factor']:g}), "
                  f"recall over the last {entry['recall_queries']} queries, mean over {len(entry['layers'])} layers "
                  "and their heads:", "",
                  "| budget V:S | recall | exact density | kernel density | heads reaching the target |", "|---|---:|---:|---:|---:|"]
        for i, (v, s_) in enumerate(entry["budgets"]):
            recall = [x for l in entry["layers"] for x in l["budgets"][i]["recall"]]
            exact = [x for l in entry["layers"] for x in l["budgets"][i]["exact_density"]]
            kernel = [x for l in entry["layers"] for x in l["budgets"][i]["kernel_density"]]
            reach = sum(x >= entry["recall_target"] for x in recall)
            lines.append(f"| {v}:{s_} | {sum(recall) / len(recall):.3f} | {sum(exact) / len(exact):.4f} | "
                         f"{sum(kernel) / len(kernel):.4f} | {reach}/{len(recall)} |")
        lines.append("")
    if study.get("skipped") or study.get("errors"):
        lines.append(f"Skipped: {len(study.get('skipped', []))} items; failed: {len(study.get('errors', []))} items.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output folder (run the study)")
    p.add_argument("--plot", metavar="STUDY.json", help="draw the figures of a finished study")
    p.add_argument("--figures", default="docs/figures", help="folder for the figures (with --plot)")
    p.add_argument("--factor", type=float, default=8.0, help="factor of the scaled methods (default 8: 64K)")
    p.add_argument("--max-length", type=int, default=65536)
    p.add_argument("--ppl-tokens", type=int, default=262144, help="tokens scored per length at most (default 256K)")
    p.add_argument("--batch-tokens", type=int, default=131072, help="tokens per forward for perplexity")
    p.add_argument("--passkey-batch-tokens", type=int, default=655360, help="tokens per forward for passkey prompts")
    p.add_argument("--trials", type=int, default=1, help="passkey keys per length and depth")
    p.add_argument("--recall-queries", type=int, default=4096, help="patterns: recall over the last Q queries")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip what would start after this many seconds")
    p.add_argument("--sections", default="perplexity,passkey,patterns", help="which sections to run (comma-separated)")
    p.add_argument("--scale", type=int, default=1, help="divide every length by this (a quick CPU check: --scale 32)")
    p.add_argument("--pattern-layers", type=lambda t: [int(x) for x in t.split(",")], default=None,
                   help="patterns: these layers only (default: all)")
    args = p.parse_args(argv)
    if args.plot:
        return plot(args)
    if not args.out:
        p.error("give --out OUT_DIR (run the study) or --plot STUDY.json")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
