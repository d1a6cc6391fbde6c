r"""What the methods do to a real model: perplexity, passkey retrieval, attention patterns.

Perplexity (the YaRN paper's section 4.3 protocol with non-overlapping
windows).  The text's token ids (the tokenizer's plain encoding: no BOS, no
chat template) are cut into consecutive windows of exactly ``N`` tokens (a
shorter tail is dropped); each window is scored on its own, from position 0;
with :math:`\ell_t = -\log p(x_t \mid x_{<t})`

.. math::  \mathrm{PPL} = \exp\Big(\frac{1}{W (N - 1)} \sum_{w=1}^{W} \sum_{t=2}^{N} \ell_t^{(w)}\Big).

With a ``stride`` :math:`S < N` the windows slide instead (Press et al.,
"Train Short, Test Long", arXiv:2108.12409, section 4; the YaRN paper's
sliding-window evaluation with :math:`S = 256`): window :math:`w` covers
tokens :math:`[wS, wS + N)`, the first window scores its tokens
:math:`2..N` and every later one only its last :math:`S` tokens, the ones no
earlier window scored.  Every token is scored once, and every token after the
first window sees at least :math:`N - S` tokens of context (at :math:`S = N`,
the default, the windows are the non-overlapping ones above, each scoring its
tokens :math:`2..N`).

Passkey retrieval (Mohtashami and Jaggi, "Landmark Attention",
arXiv:2305.16300, appendix; used by the YaRN, DCA and Qwen2.5-1M papers): a
random five-digit number is hidden at a relative depth of a filler haystack,
the prompt is exactly ``N`` tokens, and the model's greedy continuation must
contain the number.  Accuracy per (length, depth).

Attention patterns (MInference, arXiv:2407.02490, section 3.2; Qwen2.5-1M's
sparsity refinement, arXiv:2501.15383): per layer and head at length ``N``,
the vertical-slash index sets estimated from the last 64 queries
(:func:`yarnref.vertical_slash_indices`), and for each budget the recall,
the share of each query's dense attention mass the exact vertical-slash set
keeps, :math:`\exp(\mathrm{lse}_{\mathrm{vs}} - \mathrm{lse}_{\mathrm{dense}})`
averaged over all queries, with the exact density (kept causal pairs /
causal pairs) and the kernel density (key slots the block/column kernel
visits, :func:`yarnref.convert_vertical_slash_indexes`, / causal pairs; above
1 at full budget, since blocks on the diagonal are computed whole).  The
refinement picks per head the smallest budget whose recall reaches a target
and writes a ``sparse_attention_config``.

Conventions: logits and log-probabilities in float32 whatever the model's
dtype; the LM head runs on blocks of 16384 rows so no ``(N, vocab)``
matrix exists at once; windows of the same length are batched
(``batch_tokens`` tokens per forward).
"""

from __future__ import annotations

import math
import random
import re
import time

import numpy as np
import torch

import yarnref

from ..checks import check_int
from ..errors import InputError
from .methods import MethodSpec
from .plug import PlugState, plug

__all__ = [
    "tokenize",
    "perplexity",
    "passkey",
    "passkey_prompt",
    "patterns",
    "DEFAULT_BUDGETS",
    "PASSKEY_DEPTHS",
]

HEAD_TOKENS = 16384  # rows of (rows, vocab) float32 logits held at once
DEFAULT_BUDGETS = ((64, 128), (128, 256), (256, 512), (500, 1000), (1000, 2000), (1000, 4000), (1000, 6096), (2000, 12000))
PASSKEY_DEPTHS = tuple(round(0.1 * i, 1) for i in range(11))


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


_TOKEN_CACHE: dict = {}


def tokenize(tokenizer, text: str, needed: int | None = None) -> list[int]:
    """The plain token ids of ``text`` (no special tokens); with ``needed``, at least the first ``needed`` of them.

    With ``needed`` a growing prefix of the text is encoded and its last 64
    tokens are dropped, so the ids returned are those of the whole text (the
    pre-tokenizer splits at spaces and punctuation, so nothing 64 tokens before
    the cut depends on it).  The last few results are kept, so a study that
    scores many methods on one text encodes it once.
    """
    key = (id(tokenizer), hash(text), needed)
    if key not in _TOKEN_CACHE:
        if len(_TOKEN_CACHE) >= 4:
            _TOKEN_CACHE.pop(next(iter(_TOKEN_CACHE)))
        _TOKEN_CACHE[key] = _encode(tokenizer, text, needed)
    return list(_TOKEN_CACHE[key])


def _encode(tokenizer, text: str, needed: int | None) -> list[int]:
    if needed is not None:
        chars = max(4096, 6 * needed)
        while chars < len(text):
            ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
            if len(ids) - 64 >= needed:
                return ids[:needed]
            chars *= 2
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _cache_kwargs(model, cache) -> dict:
    """The KV-cache keyword of this transformers version: ``cache`` (5.2x) or ``past_key_values`` (earlier)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


def _new_cache(model):
    """An empty ``DynamicCache`` for ``model`` (transformers 5 takes the config; 4.x takes nothing)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


@torch.no_grad()
def _hidden_states(model, ids: torch.Tensor, state: PlugState, prefill_chunk: int | None):
    """Yield ``(start, hidden)`` blocks of the last layer's normalised hidden states for ``ids`` ``(batch, n)``."""
    n = ids.shape[1]
    state.prompt_length = n
    if prefill_chunk is None or prefill_chunk >= n:
        yield 0, model.model(input_ids=ids, use_cache=False).last_hidden_state
        return
    cache = _new_cache(model)
    for start in range(0, n, prefill_chunk):
        stop = min(start + prefill_chunk, n)
        positions = torch.arange(start, stop, device=ids.device)[None].expand(ids.shape[0], -1)
        out = model.model(input_ids=ids[:, start:stop], position_ids=positions, **_cache_kwargs(model.model, cache))
        yield start, out.last_hidden_state


@torch.no_grad()
def _window_nll(model, ids: torch.Tensor, state: PlugState, prefill_chunk: int | None, first: int = 1) -> torch.Tensor:
    """Summed negative log-likelihood (float64, per row) of tokens ``first``..n-1 of each row of ``ids``."""
    total = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
    head = model.get_output_embeddings()
    n = ids.shape[1]
    block = max(1, HEAD_TOKENS // ids.shape[0])  # positions per LM-head block
    for start, hidden in _hidden_states(model, ids, state, prefill_chunk):
        for a in range(max(0, first - 1 - start), hidden.shape[1], block):
            b = min(a + block, hidden.shape[1])
            lo, hi = start + a, min(start + b, n - 1)  # predicting tokens lo+1 .. hi
            if hi <= lo:
                continue
            logits = head(hidden[:, a : a + (hi - lo)]).float()  # (batch, hi-lo, vocab), at most HEAD_TOKENS rows
            target = ids[:, lo + 1 : hi + 1]
            logp = torch.log_softmax(logits, dim=-1).gather(-1, target[..., None])[..., 0]
            total -= logp.double().sum(dim=1)
    return total


def perplexity(model, tokenizer, text: str, length: int, spec: MethodSpec, *, max_windows: int | None = None,
               stride: int | None = None, batch_tokens: int = 65536, progress: bool = False,
               text_name: str = "text") -> dict:
    """Perplexity of ``model`` plugged with ``spec`` over windows of ``length`` tokens of ``text``.

    ``stride``: None (or ``length``) for non-overlapping windows; a smaller
    ``stride`` slides the windows by that many tokens, and each window after
    the first scores only its last ``stride`` tokens (see the module
    docstring).  ``max_windows`` limits the number of windows either way.

    Returns a dict with ``perplexity``, ``nll`` (mean per scored token),
    ``tokens`` (scored: ``windows * (length - 1)`` without a stride, else
    ``length - 1 + (windows - 1) * stride``), ``windows``,
    ``length``, ``stride``, ``text_tokens`` (of the text, or of the prefix
    encoded when ``max_windows`` limits the work), ``method`` and ``seconds``.
    """
    length = spec.check_length(length)
    stride = length if stride is None else check_int("stride", stride, 1, length)
    if max_windows is not None:
        max_windows = check_int("max_windows", max_windows, 1)
    batch_tokens = check_int("batch_tokens", batch_tokens, 1)
    ids = tokenize(tokenizer, text, None if max_windows is None else length + (max_windows - 1) * stride)
    if len(ids) < length:
        raise InputError(text_name, f"{len(ids)} tokens", f"a text of at least length = {length} tokens (one window)")
    windows = (len(ids) - length) // stride + 1
    if max_windows is not None:
        windows = min(windows, max_windows)
    state = plug(model, spec)
    device = _device_of(model)
    used = torch.tensor(ids[: length + (windows - 1) * stride], dtype=torch.long, device=device)
    all_ids = used.unfold(0, length, stride)  # (windows, length): window w is tokens [w * stride, w * stride + length)
    per_batch = max(1, batch_tokens // length)
    started = time.perf_counter()
    nll = 0.0
    if stride == length:  # (first window, last window + 1, first token scored): every window scores tokens 1..length-1
        jobs = [(w, min(w + per_batch, windows), 1) for w in range(0, windows, per_batch)]
    else:  # the first window scores tokens 1..length-1; a later one only its last `stride`, which no earlier one scored
        jobs = [(0, 1, 1)] + [(w, min(w + per_batch, windows), length - stride) for w in range(1, windows, per_batch)]
    for a, b, first in _progress(jobs, len(jobs), f"perplexity {spec.name} @ {length}", progress):
        nll += float(_window_nll(model, all_ids[a:b].contiguous(), state, spec.prefill_chunk, first).sum())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tokens = windows * (length - 1) if stride == length else length - 1 + (windows - 1) * stride
    mean = nll / tokens
    return {
        "perplexity": math.exp(mean),
        "nll": mean,
        "tokens": tokens,
        "windows": windows,
        "length": length,
        "stride": stride,
        "text_tokens": len(ids),
        "method": spec.describe(),
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- passkey

_PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                  "I will quiz you about the important information there.\n")
_PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
_PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
_PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"


def passkey_prompt(tokenizer, length: int, depth: float, key: int) -> list[int]:
    """Token ids of a passkey prompt of exactly ``length`` tokens with ``key`` at relative ``depth`` of the filler.

    The filler is whole repetitions of a fixed sentence group, cut to the
    exact token count at its end; the needle starts at the filler repetition
    nearest to ``depth`` of the filler.
    """
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    intro, unit, question = encode(_PASSKEY_INTRO), encode(_PASSKEY_FILLER), encode(_PASSKEY_QUESTION)
    needle = encode(_PASSKEY_NEEDLE.format(key=key))
    room = length - len(intro) - len(needle) - len(question)
    if room < len(unit):
        minimum = len(intro) + len(needle) + len(question) + len(unit)
        raise InputError("length", length, f"an integer >= {minimum} (the passkey prompt's fixed parts and one filler group)")
    units = room // len(unit)
    at = int(round(depth * units))
    filler = unit * (units + 1)
    before, after = filler[: at * len(unit)], filler[at * len(unit) : room]
    ids = intro + before + needle + after + question
    assert len(ids) == length
    return ids


def _parse_depths(depths) -> list[float]:
    if isinstance(depths, str):
        try:
            depths = [float(x) for x in depths.split(",") if x.strip()]
        except ValueError:
            raise InputError("depths", depths, "comma-separated numbers in [0, 1], e.g. 0,0.25,0.5,0.75,1") from None
    depths = list(depths)
    if not depths or any(not (isinstance(d, (int, float)) and 0.0 <= d <= 1.0) for d in depths):
        raise InputError("depths", depths, "one or more numbers in [0, 1]")
    return [float(d) for d in depths]


@torch.no_grad()
def _greedy(model, ids: torch.Tensor, state: PlugState, new_tokens: int, prefill_chunk: int | None) -> torch.Tensor:
    """Greedy continuation ``(batch, new_tokens)`` of ``ids`` ``(batch, n)`` with a KV cache."""
    n = ids.shape[1]
    state.prompt_length = n
    cache = _new_cache(model)
    chunk = prefill_chunk or n
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        positions = torch.arange(start, stop, device=ids.device)[None].expand(ids.shape[0], -1)
        out = model(input_ids=ids[:, start:stop], position_ids=positions, logits_to_keep=1, **_cache_kwargs(model, cache))
    generated = []
    token = out.logits[:, -1].argmax(-1)
    for step in range(new_tokens):
        generated.append(token)
        if step + 1 == new_tokens:
            break
        positions = torch.full((ids.shape[0], 1), n + step, device=ids.device, dtype=torch.long)
        out = model(input_ids=token[:, None], position_ids=positions, logits_to_keep=1, **_cache_kwargs(model, cache))
        token = out.logits[:, -1].argmax(-1)
    return torch.stack(generated, dim=1)


def passkey(model, tokenizer, lengths, depths, spec: MethodSpec, *, trials: int = 1, seed: int = 0,
            batch_tokens: int = 131072, progress: bool = False, new_tokens: int = 8) -> dict:
    """Passkey retrieval accuracy per (length, depth) for ``model`` plugged with ``spec``.

    ``lengths``: an int or a list of prompt lengths (tokens); ``depths``: a
    list (or comma-separated string) of relative depths in [0, 1];
    ``trials`` keys per (length, depth), drawn from ``random.Random(seed)``.
    The answer counts if the first number in the greedy continuation of
    ``new_tokens`` tokens is the key.  Returns ``accuracy`` (overall),
    ``results`` (one dict per length and depth with ``correct``, ``trials``,
    ``accuracy`` and the answers), ``method`` and ``seconds``.
    """
    lengths = [lengths] if isinstance(lengths, (int, np.integer)) else list(lengths)
    if not lengths:
        raise InputError("length", lengths, "one or more lengths")
    lengths = [spec.check_length(n) for n in lengths]
    depths = _parse_depths(depths)
    trials = check_int("trials", trials, 1)
    rng = random.Random(seed)
    device = _device_of(model)
    state = plug(model, spec)
    started = time.perf_counter()
    results = []
    for n in _progress(lengths, len(lengths), f"passkey {spec.name}", progress):
        jobs = [(d, rng.randint(10000, 99999)) for d in depths for _ in range(trials)]  # every depth's keys, one batch list
        prompts = [passkey_prompt(tokenizer, n, d, key) for d, key in jobs]
        answers = []
        per_batch = max(1, batch_tokens // n)
        for b in range(0, len(jobs), per_batch):
            ids = torch.tensor(prompts[b : b + per_batch], dtype=torch.long, device=device)
            out = _greedy(model, ids, state, new_tokens, spec.prefill_chunk)
            answers += tokenizer.batch_decode(out.tolist())
        for i, d in enumerate(depths):
            rows = range(i * trials, (i + 1) * trials)
            keys = [jobs[r][1] for r in rows]
            got = [answers[r] for r in rows]
            found = [re.search(r"\d+", a) for a in got]
            correct = [bool(m and int(m.group()) == key) for m, key in zip(found, keys)]
            results.append({"length": n, "depth": d, "trials": trials, "correct": sum(correct),
                            "accuracy": sum(correct) / trials, "keys": keys, "answers": got})
    total = sum(r["correct"] for r in results)
    return {
        "accuracy": total / (len(results) * trials),
        "results": results,
        "lengths": lengths,
        "depths": depths,
        "trials": trials,
        "seed": seed,
        "method": spec.describe(),
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- patterns


def _exact_counts(v_idx: torch.Tensor, s_idx: torch.Tensor, n: int) -> np.ndarray:
    """Kept causal pairs per head of the exact vertical-slash set: ``(heads,)`` float64.

    For query ``i``: ``|{c in V, c <= i}| + |{d in S, d <= i}| - |{(c, d): c + d = i}|``,
    summed over ``i = 0 .. n-1``: ``sum_c (n - c) + sum_d (n - d) - |{(c, d): c + d < n}|``
    (the last term by a sorted search of ``n - c`` among the slashes).
    """
    out = np.empty(v_idx.shape[0], dtype=np.float64)
    for h in range(v_idx.shape[0]):  # a loop over the heads of one layer (their index sets differ in size)
        v = v_idx[h][v_idx[h] >= 0].to(torch.int64)
        s = torch.sort(s_idx[h][s_idx[h] >= 0].to(torch.int64)).values
        both = torch.searchsorted(s, n - v).sum()  # slashes d < n - c, for each vertical c
        out[h] = float((n - v).sum() + (n - s).sum() - both)
    return out


def _kernel_slots(v_idx, s_idx, n: int, bm: int = 64, bn: int = 64) -> np.ndarray:
    """Key slots the block/column kernel visits per head, ``(heads,)``: ``sum_m (BN * blocks_m + columns_m) * rows_m``."""
    block_count, _offsets, column_count, _columns = yarnref.convert_vertical_slash_indexes(n, n, v_idx[None], s_idx[None], bm, bn)
    bc = yarnref.get_backend().to_numpy(block_count)[0].astype(np.float64)  # (heads, n_row_blocks)
    cc = yarnref.get_backend().to_numpy(column_count)[0].astype(np.float64)
    rows = np.minimum(bm, n - bm * np.arange(bc.shape[-1]))  # (n_row_blocks,)
    return ((bn * bc + cc) * rows).sum(axis=-1)


@torch.no_grad()
def patterns(model, tokenizer, text: str, length: int, spec: MethodSpec, *, layers=None, budgets=DEFAULT_BUDGETS,
             recall_target: float = 0.95, last_q: int = 64, recall_queries: int | None = None, progress: bool = False,
             text_name: str = "text") -> dict:
    """Vertical-slash statistics of every head of ``layers`` on the first window of ``length`` tokens of ``text``.

    Returns a JSON-ready dict: per layer and head, per budget ``(v, s)``, the
    mean recall, the exact and kernel densities; the per-head refined budget
    (smallest of ``budgets``, in order, whose recall reaches
    ``recall_target``; the last budget if none does) as ``sparse_attention_config``
    (a list over all layers; layers not analysed get the last budget, score 0);
    and ``indices``: per analysed layer the estimated ``vertical_idx`` and
    ``slash_idx`` ``(heads, n)`` at the refined budgets, for the ``.npz``.
    ``recall_queries``: average the recall over the last that many queries
    (None: all of them; the densities always count every query).
    """
    if spec.dca is not None:
        raise InputError("method", spec.name, "a method without DCA (patterns are measured on RoPE-rotated q and k)")
    if spec.sparse is not None:
        raise InputError("sparse", True, "False (patterns compare against the dense attention)")
    length = spec.check_length(length)
    n_layers = model.config.num_hidden_layers
    heads = model.config.num_attention_heads
    if layers is None:
        layers = list(range(n_layers))
    layers = sorted({check_int("layers", l, 0) for l in layers})
    if layers[-1] >= n_layers:
        raise InputError("layers", layers[-1], f"layer indices in [0, {n_layers})")
    budgets = [tuple(b) for b in budgets]
    for v, s in budgets:
        check_int("budget", v, 1), check_int("budget", s, 1)
    if not (0.0 < recall_target <= 1.0):
        raise InputError("recall_target", recall_target, "a number in (0, 1]")
    if recall_queries is not None:
        recall_queries = min(check_int("recall_queries", recall_queries, 1), length)
    ids = tokenize(tokenizer, text, length)
    if len(ids) < length:
        raise InputError(text_name, f"{len(ids)} tokens", f"a text of at least length = {length} tokens")
    device = _device_of(model)
    state = plug(model, spec)
    state.capture.update({layer: None for layer in layers})
    started = time.perf_counter()
    x = torch.tensor(ids[:length], dtype=torch.long, device=device)[None]
    state.prompt_length = length
    model.model(input_ids=x, use_cache=False)
    causal_pairs = length * (length + 1) / 2
    per_layer, table, index_sets = [], [], {}
    last_v, last_s = budgets[-1]
    with yarnref.use_backend("torch", device=device):
        for layer in _progress(layers, len(layers), f"patterns @ {length}", progress):
            q, k = state.capture[layer]  # (1, heads, n, d), (1, kv_heads, n, d), rotated
            q_rec = q if recall_queries is None else q[:, :, length - recall_queries :]  # the last queries
            _, dense_lse = yarnref.attention(q_rec, k, k, causal=True, return_lse=True)  # (1, heads, m)
            rows = []
            per_budget = []
            for v_b, s_b in budgets:
                v_idx, s_idx = yarnref.vertical_slash_indices(q, k, v_b, s_b, last_q)
                _, lse = yarnref.vertical_slash_attention(q_rec, k, k, v_idx, s_idx, "exact", None, True)
                recall = torch.exp((lse - dense_lse).double()).mean(dim=-1)[0].cpu().numpy()  # (heads,)
                exact = _exact_counts(v_idx[0], s_idx[0], length) / causal_pairs
                kernel = _kernel_slots(v_idx[0], s_idx[0], length) / causal_pairs
                per_budget.append((v_idx[0].cpu().numpy(), s_idx[0].cpu().numpy()))
                rows.append({"vertical_size": v_b, "slash_size": s_b, "recall": recall.tolist(),
                             "exact_density": exact.tolist(), "kernel_density": kernel.tolist()})
            chosen = {}
            choice_v, choice_s = [], []
            for h in range(heads):
                pick = next((i for i, r in enumerate(rows) if r["recall"][h] >= recall_target), len(rows) - 1)
                v_b, s_b = budgets[pick]
                chosen[str(h)] = ["vertical_and_slash", int(v_b), int(s_b), float(rows[pick]["recall"][h])]
                choice_v.append(per_budget[pick][0][h])
                choice_s.append(per_budget[pick][1][h])
            index_sets[layer] = (_pad(choice_v), _pad(choice_s))
            per_layer.append({"layer": layer, "budgets": rows, "refined": chosen})
            state.capture[layer] = None
    for layer in range(n_layers):
        refined = next((p["refined"] for p in per_layer if p["layer"] == layer), None)
        table.append(refined or {str(h): ["vertical_and_slash", int(last_v), int(last_s), 0.0] for h in range(heads)})
    state.capture.clear()
    return {
        "length": length,
        "last_q": last_q,
        "recall_target": recall_target,
        "recall_queries": length if recall_queries is None else recall_queries,
        "budgets": [list(b) for b in budgets],
        "layers": per_layer,
        "sparse_attention_config": table,
        "indices": index_sets,
        "method": spec.describe(),
        "seconds": time.perf_counter() - started,
    }


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    """Stack per-head ``-1``-padded index rows of different widths into one ``(heads, width)`` int64 array."""
    rows = [r[r >= 0] for r in rows]
    width = max(1, max(len(r) for r in rows))
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for h, r in enumerate(rows):
        out[h, : len(r)] = r
    return out
