r"""One Qwen2.5-7B-Instruct-1M decoder layer with random weights, running the Qwen2.5-1M prefill.

Papers: Yang et al., "Qwen2.5-1M Technical Report", arXiv:2501.15383 (DCA,
vertical-slash sparse attention, chunked prefill); An et al., "Training-Free
Long-Context Scaling of Large Language Models", arXiv:2402.17463 (DCA); Jiang
et al., "MInference 1.0", arXiv:2407.02490 (vertical-slash).

The layer is Qwen2's (pre-norm, grouped-query attention with q/k/v biases,
SwiGLU MLP):

.. math::
   h = x + W_o\,\mathrm{Attn}(\mathrm{RMSNorm}(x)), \qquad
   y = h + W_d\,\big(\mathrm{SiLU}(W_g\,\mathrm{RMSNorm}(h)) \odot W_u\,\mathrm{RMSNorm}(h)\big),

with :math:`\mathrm{RMSNorm}(x) = x / \sqrt{\mathrm{mean}(x^2) + \epsilon} \cdot w`.
``Attn`` is :func:`yarnref.qwen_prefill` on the torch backend: DCA (chunk
262144, local 8192 from the model's config.json), the YaRN-style attention
temperature :math:`s = \max(1, 0.1 \ln(T / O) + 1)` on keys and queries with
``T`` the prompt length and ``O`` = 262144, and, above the threshold gate,
vertical-slash sparse attention per DCA segment with the model's per-head
budgets (``benchmarks/data/qwen2.5_7b_instruct_1m_sparse_attention_config.json``).

Chunked prefill (the report's section on inference): the prompt goes through
the *whole layer* ``chunk`` tokens at a time.  Each chunk's keys and values are
written into a K/V cache of the prompt's length; the chunk's queries attend to
every key so far (``k[:, :, :end]``), and its MLP runs on ``chunk`` tokens
only, which is what bounds the activation memory.  Inside a chunk, the
row-wise work (both RMSNorms, the q/k/v and output projections, the MLP) runs
``row_step`` rows at a time, sized so that the MLP's two ``(rows,
intermediate)`` buffers fit in :data:`ROW_BYTES` (7040 rows, 509 MiB, at
Qwen2.5-7B's MLP 18944 in bf16): every one of these operations computes each
token's row from that row alone (RMSNorm normalises a row by its own mean
square; a matrix product's row ``i`` is row ``i`` of the input times the
weight), so the sub-chunks give the same rows; only the GEMM library may pick
another kernel for another row count, which can change the order of the
additions inside a dot product (float rounding), never which terms are added.
Sparse variant: the cache holds each key rotated once to its DCA key position
``j mod L`` when it is written (a key's DCA position depends on its own index
only), and :func:`yarnref.qwen_prefill` reads it with ``rotated_keys=True``
instead of rotating a copy of every key at every call.  With dense DCA the chunked
layer equals the unchunked one; with sparse attention each chunk estimates its
own pattern, which is what :func:`yarnref.qwen_prefill` computes with
``prefill_chunk_size=chunk`` (both are tested on CPU in float64).

Conventions: hidden states ``(tokens, hidden)`` for batch 1; attention
tensors ``(1, heads, tokens, head_dim)``; the layer writes its output over
its input (the residual stream is one buffer, as in a serving engine); half
types keep RMSNorm in float32 (as transformers' Qwen2 does).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace  # noqa: F401  (replace: for callers)
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
#: Bytes of the two ``(rows, intermediate)`` MLP buffers of one sub-chunk: inside a prefill chunk the row-wise
#: work (RMSNorms, projections, MLP) runs ``rows`` at a time (:meth:`QwenLayer.row_step`), so its activations
#: no longer grow with the chunk.  At Qwen2.5-7B's MLP 18944 in bf16: 7040 rows, 509 MiB.
ROW_BYTES = 1 << 29
#: The per-head budget table Qwen2.5-7B-Instruct-1M ships (see the provenance file beside it).
SPARSE_TABLE_PATH = HERE / "data" / "qwen2.5_7b_instruct_1m_sparse_attention_config.json"


def load_sparse_table(path: Path = SPARSE_TABLE_PATH) -> list:
    """The per-layer ``sparse_attention_config`` list (validated layer by layer by yarnref's reader)."""
    import yarnref

    table = json.loads(Path(path).read_text())
    for layer in range(len(table)):
        yarnref.sparse_attention_config_for({"chunk_size": 2, "local_size": 1, "sparse_attention_config": table}, layer)
    return table


@dataclass(frozen=True)
class LayerGeometry:
    """A Qwen2 decoder layer's sizes and its Qwen2.5-1M prefill settings."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    rms_eps: float
    rope_theta: float
    #: ``dual_chunk_attention_config`` keys (chunk_size, local_size, original_max_position_embeddings,
    #: sparse_attention_threshold, sparse_attention_last_q).
    dca: dict = field(default_factory=dict)


def qwen25_7b_1m() -> LayerGeometry:
    """Qwen2.5-7B-Instruct-1M: sizes and DCA from yarnref's preset (its config.json); MLP size and eps from the same
    config.json (``intermediate_size`` 18944, ``rms_norm_eps`` 1e-6), which the preset does not carry."""
    import yarnref

    cfg = yarnref.get_preset("qwen2.5-7b-instruct-1m")
    heads = cfg["num_attention_heads"]
    return LayerGeometry(
        hidden=cfg["hidden_size"], heads=heads, kv_heads=cfg["num_key_value_heads"],
        head_dim=cfg["hidden_size"] // heads, intermediate=18944, rms_eps=1e-6, rope_theta=float(cfg["rope_theta"]),
        dca=dict(cfg["dual_chunk_attention_config"], sparse_attention_threshold=32768, sparse_attention_last_q=64),
    )


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    normed = work * torch.rsqrt(work.pow(2).mean(-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


class QwenLayer:
    """One decoder layer with random weights (``seed``), on ``device`` in ``dtype``.

    ``sparse_table``: the per-layer ``sparse_attention_config`` (None: the sparse
    path is never taken); ``layer``: which entry of it this layer uses.
    """

    def __init__(self, geometry: LayerGeometry, *, dtype=torch.bfloat16, device="cpu", seed: int = 0,
                 sparse_table=None, layer: int = 0):
        import yarnref

        self.g, self.dtype, self.device, self.layer = geometry, dtype, torch.device(device), layer
        self.sparse_table = sparse_table
        gen = torch.Generator(device="cpu").manual_seed(seed)
        H, Hk, d, D, F = geometry.hidden, geometry.kv_heads, geometry.head_dim, geometry.heads * geometry.head_dim, geometry.intermediate

        def w(rows, cols, gain=1.0):  # (in, out): y = x @ w; variance-preserving scale
            return (torch.randn((rows, cols), generator=gen, dtype=torch.float32) * gain / math.sqrt(rows)).to(device, dtype)

        def b(n):
            return (0.1 * torch.randn(n, generator=gen, dtype=torch.float32)).to(device, dtype)

        self.w_q, self.b_q = w(H, D), b(D)
        self.w_k, self.b_k = w(H, Hk * d), b(Hk * d)
        self.w_v, self.b_v = w(H, Hk * d), b(Hk * d)
        self.w_o = w(D, H, 0.5)
        self.w_gate, self.w_up, self.w_down = w(H, F), w(H, F), w(F, H, 0.5)
        self.norm1 = (1.0 + 0.1 * torch.randn(H, generator=gen)).to(device, dtype)
        self.norm2 = (1.0 + 0.1 * torch.randn(H, generator=gen)).to(device, dtype)
        self.inv_freq = yarnref.rope_frequencies({"rope_theta": geometry.rope_theta, "head_dim": d,
                                                  "hidden_size": D, "num_attention_heads": geometry.heads})[0]
        #: The torch backend every attention call of this layer runs on (one instance, so that a benchmark can
        #: wrap one of its operations for the layer's calls; see ``bench_qwen_layer.PatternSubstitution``).
        with yarnref.use_backend("torch", device=str(self.device)) as backend:
            self.backend = backend

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.w_q, self.b_q, self.w_k, self.b_k, self.w_v, self.b_v,
                                                          self.w_o, self.w_gate, self.w_up, self.w_down, self.norm1, self.norm2))

    def dca_config(self, sparse: bool) -> dict:
        """The ``dual_chunk_attention_config`` of one variant: dense DCA, or DCA + vertical-slash above the gate."""
        cfg = dict(self.g.dca)
        if sparse:
            if self.sparse_table is None:
                raise ValueError("the sparse variant needs a sparse_attention_config table")
            cfg.update(sparse_attention_config=self.sparse_table, sparse_attention_enabled=True)
        else:
            cfg.update(sparse_attention_enabled=False)
        return cfg

    # ------------------------------------------------------------------ pieces

    def project(self, h: torch.Tensor):
        """q ``(1, heads, n, d)``, k and v ``(1, kv_heads, n, d)`` of the normed hidden states ``h`` ``(n, hidden)``."""
        n, d = h.shape[0], self.g.head_dim
        q = (h @ self.w_q + self.b_q).view(n, self.g.heads, d).transpose(0, 1)[None].contiguous()
        k = (h @ self.w_k + self.b_k).view(n, self.g.kv_heads, d).transpose(0, 1)[None].contiguous()
        v = (h @ self.w_v + self.b_v).view(n, self.g.kv_heads, d).transpose(0, 1)[None].contiguous()
        return q, k, v

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """SwiGLU of RMSNorm(x), ``(n, hidden)``; in-place activation so two ``(n, intermediate)`` buffers live at once."""
        h = _rms_norm(x, self.norm2, self.g.rms_eps)
        gate = torch.nn.functional.silu(h @ self.w_gate, inplace=True)  # in the model dtype, as transformers' Qwen2MLP
        gate.mul_(h @ self.w_up)
        del h
        return gate @ self.w_down

    def row_step(self) -> int:
        """Rows per sub-chunk of the row-wise work (norms, projections, MLP): the largest multiple of 64 whose two
        ``(rows, intermediate)`` MLP buffers fit in :data:`ROW_BYTES` (at least 64)."""
        per_row = 2 * self.g.intermediate * torch.finfo(self.dtype).bits // 8
        return max(64, ROW_BYTES // per_row // 64 * 64)

    def rotate_keys(self, k: torch.Tensor, start: int) -> torch.Tensor:
        """Keys ``(1, kv_heads, n, d)`` of rows ``[start, start + n)`` rotated to their DCA key positions ``j mod L``,
        as :func:`yarnref.qwen_prefill` rotates them (the same backend operations, so the same values)."""
        import yarnref

        L = self.g.dca["chunk_size"] - self.g.dca["local_size"]
        positions = np.arange(start, start + k.shape[2], dtype=np.int64) % L
        with yarnref.use_backend(self.backend) as be:
            cos, sin = be.rope_cos_sin(self.inv_freq, positions)
            return be.apply_rope(k, cos, sin, "half")

    def gate_open(self, kv_len: int, sparse: bool) -> bool:
        """Whether a call over ``kv_len`` keys takes the sparse path (the pipeline's threshold gate)."""
        return sparse and kv_len > self.g.dca["sparse_attention_threshold"]

    def attention(self, q, k_seen, v_seen, seq_len: int, sparse: bool, rotated_keys: bool = False):
        """:func:`yarnref.qwen_prefill` of the chunk's queries against the keys so far, on the torch backend."""
        import yarnref

        with yarnref.use_backend(self.backend):
            return yarnref.qwen_prefill(q, k_seen, v_seen, self.inv_freq, self.dca_config(sparse), layer=self.layer,
                                        seq_len=seq_len, rotated_keys=rotated_keys)

    # ------------------------------------------------------------------ the layer

    @torch.no_grad()
    def forward(self, x: torch.Tensor, *, chunk: int | None = None, sparse: bool = True, keep_attention: bool = False,
                memory: dict | None = None, keep_rows=None) -> torch.Tensor:
        """Run the layer over the prompt ``x`` ``(T, hidden)``, ``chunk`` tokens at a time (None: all at once).

        Overwrites ``x`` with the layer's output and returns it.  Inside a
        chunk the row-wise work (RMSNorms, the q/k/v and output projections,
        the MLP) runs :meth:`row_step` rows at a time (see :data:`ROW_BYTES`).
        With ``sparse`` the K/V cache holds the keys rotated to their DCA key
        positions (:meth:`rotate_keys`, written once per token) and the
        attention reads them with ``rotated_keys=True``; a call below the
        sparse gate (dense DCA, which takes un-rotated keys) is then possible
        for the first chunk only, which gets the chunk's own un-rotated keys.
        With ``keep_attention`` the attention outputs ``(1, heads, T, d)`` are
        kept in ``self.last_attention`` (for checks).  ``memory``: a dict that
        gets, on CUDA, the peak bytes above the memory allocated at the start
        of the call (``layer_peak``: weights, the input and the K/V cache are
        below that line) and, per phase of a chunk, its peak above what was
        allocated when the phase started (``projection_peak``: norm, q/k/v and
        the cache write; ``attention_peak``; ``output_peak``: the output
        projection and residual; ``mlp_peak``), the largest over chunks.
        ``keep_rows``: absolute rows whose queries and attention outputs are
        kept in ``self.kept`` (``{"rows", "q", "attention"}``, each ``(1,
        heads, rows, d)``), with the K/V cache (``"k"``, ``"v"``; ``"k_rotated"``
        says how ``"k"`` holds the keys, and ``"k_plain"`` has the un-rotated
        keys of the first chunk when that call ran below the gate), for a
        float64 check.
        """
        T = x.shape[0]
        chunk = T if chunk is None else chunk
        step = self.row_step()
        g = self.g
        rotated = sparse  # the sparse pipeline reads a cache of keys rotated once
        for start in range(chunk, T, chunk):
            if rotated and not self.gate_open(min(start + chunk, T), True):
                raise ValueError(f"chunk {chunk}: the call ending at {min(start + chunk, T)} keys runs below the sparse gate "
                                 f"({g.dca['sparse_attention_threshold']}) after the first chunk, which a cache of rotated keys "
                                 "cannot serve (dense DCA takes un-rotated keys); use a chunk above the gate")
        cuda = x.is_cuda and memory is not None
        k_cache = torch.empty((1, g.kv_heads, T, g.head_dim), dtype=self.dtype, device=x.device)  # the K/V cache
        v_cache = torch.empty_like(k_cache)
        phase = [None, 0]  # the running phase and the memory allocated when it started

        def mark(name):  # ends the running phase (its peak, and the layer's), starts ``name``
            if not cuda:
                return
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            if phase[0] is not None:
                memory[phase[0]] = max(memory[phase[0]], peak - phase[1])
            memory["layer_peak"] = max(memory["layer_peak"], peak - base)
            torch.cuda.reset_peak_memory_stats()
            phase[:] = [name, torch.cuda.memory_allocated()]

        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            memory.update(layer_peak=0, projection_peak=0, attention_peak=0, output_peak=0, mlp_peak=0,
                          kv_cache=2 * k_cache.numel() * k_cache.element_size(), row_step=step)
        kept = [] if keep_attention else None
        rows = None if keep_rows is None else torch.as_tensor(sorted(keep_rows), dtype=torch.int64)
        picked_q, picked_attn, first_plain = [], [], None
        for start in range(0, T, chunk):
            stop = min(start + chunk, T)
            n = stop - start
            plain = rotated and not self.gate_open(stop, sparse)  # the first chunk, below the gate: un-rotated keys
            mark("projection_peak")
            q = torch.empty((1, g.heads, n, g.head_dim), dtype=self.dtype, device=x.device)
            k_plain = torch.empty((1, g.kv_heads, n, g.head_dim), dtype=self.dtype, device=x.device) if plain else None
            for a in range(0, n, step):  # row-wise: each row's norm and projections are its own
                b = min(a + step, n)
                h = _rms_norm(x[start + a : start + b], self.norm1, g.rms_eps)
                q[:, :, a:b], k, v_cache[:, :, start + a : start + b] = self.project(h)
                del h
                if plain:
                    k_plain[:, :, a:b] = k
                k_cache[:, :, start + a : start + b] = self.rotate_keys(k, start + a) if rotated else k
                del k
            mark("attention_peak")
            if plain:
                attn = self.attention(q, k_plain, v_cache[:, :, :stop], T, sparse)  # (1, heads, n, d)
            else:
                attn = self.attention(q, k_cache[:, :, :stop], v_cache[:, :, :stop], T, sparse, rotated_keys=rotated)
            if rows is not None:
                here = rows[(rows >= start) & (rows < stop)] - start
                picked_q.append(q[:, :, here.to(q.device)].clone())
                picked_attn.append(attn[:, :, here.to(q.device)].clone())
                first_plain = k_plain if plain else first_plain
            del q, k_plain
            if kept is not None:
                kept.append(attn)
            mark("output_peak")
            for a in range(0, n, step):
                b = min(a + step, n)
                x[start + a : start + b] += attn[0, :, a:b].transpose(0, 1).reshape(b - a, -1) @ self.w_o
            del attn
            mark("mlp_peak")
            for a in range(0, n, step):  # the rows before a + start are done; these read their own rows only
                b = min(a + step, n)
                x[start + a : start + b] += self.mlp(x[start + a : start + b])
        mark(None)
        if kept is not None:
            self.last_attention = torch.cat(kept, dim=2)
        if rows is not None:
            self.kept = {"rows": rows.tolist(), "q": torch.cat(picked_q, dim=2), "attention": torch.cat(picked_attn, dim=2),
                         "k": k_cache, "v": v_cache, "k_rotated": rotated, "k_plain": first_plain}
        return x

    # ------------------------------------------------------------------ the float64 check

    def segments(self, T: int, chunk: int | None) -> list[tuple[int, int]]:
        """The DCA segments ``(begin, end)`` the prefill walks (per prefill chunk), in order."""
        from yarnref.dca import dca_segments

        chunk = T if chunk is None else chunk
        out = []
        for start in range(0, T, chunk):
            stop = min(start + chunk, T)
            out += [(seg.begin, seg.end) for seg in dca_segments(stop, stop - start, self.g.dca["chunk_size"], self.g.dca["local_size"])]
        return out

    def kept_reference(self, q_rows, T: int, sparse: bool, begin: int, end: int):
        """:meth:`attention_reference` of rows ``[end - 64, end)`` from ``self.kept`` (the cache as the run held it:
        rotated keys for the sparse path, the first chunk's un-rotated keys where its call ran below the gate)."""
        kept = self.kept
        rotated = kept["k_rotated"]
        if rotated and not self.gate_open(end, sparse):
            k, rotated = kept["k_plain"][:, :, :end], False
        else:
            k = kept["k"][:, :, :end]
        return self.attention_reference(q_rows, k, kept["v"][:, :, :end], T, sparse, begin, rotated_keys=rotated)

    @torch.no_grad()
    def attention_reference(self, q_rows, k, v, T: int, sparse: bool, begin: int, rotated_keys: bool = False):
        """float64 attention of the last 64 rows of the DCA segment ``[begin, end)``, ``end = k.shape[2]``.

        ``q_rows`` ``(1, heads, 64, d)``: the run's queries of rows ``[end -
        64, end)``; ``k``, ``v``: the run's keys ``[0, end)``.  The segment's
        length must be a multiple of 64 and at least ``last_q`` = 64 rows (so
        the rows are one row block of the run, and the estimation's rows).
        Dense: :func:`yarnref.qwen_prefill` in float64.  Sparse: the index
        sets the run used (:func:`yarnref.qwen_sparse_plan` of the segment,
        whose estimation reads only these rows, so the other rows are given
        as zeros), each DCA part's kernel key set attended in float64 with the
        DCA rotations, merged by log-sum-exp.  The successive and inter parts
        place their queries right after their keys, so their slash distances
        are taken down by ``end - 64 - begin`` for the 64-row call (the same
        absolute diagonals; those that go negative reach no key of these rows).
        ``rotated_keys``: ``k`` holds the keys as the sparse layer's cache does,
        rotated to ``j mod L`` (the plan is then computed from them, as the run
        did, and they are attended as they are); the dense reference needs
        un-rotated keys.
        """
        import yarnref
        from yarnref.dca import dca_position_ids, qwen_attention_scale

        end, m = k.shape[2], q_rows.shape[2]
        if m != 64 or (end - begin) % 64 or end - begin < 64:
            raise ValueError(f"rows must be the last 64 of a segment of a multiple of 64 rows (got {m}, [{begin}, {end}))")
        dca = self.dca_config(sparse)
        q64, k64, v64 = q_rows.double(), k.double(), v.double()
        with yarnref.use_backend(self.backend) as be:
            if not sparse or end <= dca["sparse_attention_threshold"]:
                if rotated_keys:
                    raise ValueError("the dense reference needs un-rotated keys")
                return yarnref.qwen_prefill(q64, k64, v64, self.inv_freq, dca, layer=self.layer, seq_len=T)
            padded = torch.cat([q_rows.new_zeros(q_rows.shape[:2] + (end - m - begin, q_rows.shape[-1])), q_rows], dim=2)
            (plan,) = yarnref.qwen_sparse_plan(padded, k, self.inv_freq, dca, layer=self.layer, seq_len=T,
                                               rotated_keys=rotated_keys)
            del padded
            ids = dca_position_ids(end, dca["chunk_size"], dca["local_size"])
            if rotated_keys:
                k_rot = k64
            else:
                cos, sin = be.rope_cos_sin(self.inv_freq, ids.key)
                k_rot = be.apply_rope(k64, cos, sin, "half")
            temperature = qwen_attention_scale(T, dca["original_max_position_embeddings"])
            scale = temperature**2 / math.sqrt(self.g.head_dim)
            positions = {"intra": ids.intra, "successive": ids.successive, "inter": ids.inter}
            outs, lses = [], []
            for name, part in plan.parts.items():
                start, stop = part.keys
                slash = part.slash_idx
                if not part.causal:
                    slash = np.where(slash >= 0, slash - (end - m - begin), -1)
                    slash = np.where(slash >= 0, slash, -1)
                qc, qs = be.rope_cos_sin(self.inv_freq, positions[name][end - m : end])
                q_rot = be.apply_rope(q64, qc, qs, "half")
                vertical, slash = be.asarray(part.vertical_idx), be.asarray(slash)
                group = self.g.heads // self.g.kv_heads
                parts = [  # one KV head (and its query heads) at a time: the float64 path holds (heads, 64, keys) weights
                    be.vertical_slash_attention(q_rot[:, h : h + group], k_rot[:, h // group : h // group + 1, start:stop],
                                                v64[:, h // group : h // group + 1, start:stop], vertical[:, h : h + group],
                                                slash[:, h : h + group], "kernel", scale, True, causal=part.causal)
                    for h in range(0, self.g.heads, group)
                ]
                outs.append(torch.cat([o for o, _ in parts], dim=1))
                lses.append(torch.cat([l for _, l in parts], dim=1))
            return be.merge_attention(outs, lses)[0] if len(outs) > 1 else outs[0]


def tiny_geometry(**changes) -> LayerGeometry:
    """A small layer for CPU checks: hidden 64, 4 query / 2 KV heads of 16, MLP 96, DCA chunk 256 local 64."""
    g = LayerGeometry(hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=96, rms_eps=1e-6, rope_theta=1e4,
                      dca=dict(chunk_size=256, local_size=64, original_max_position_embeddings=128,
                               sparse_attention_threshold=100, sparse_attention_last_q=16))
    return replace(g, **changes)


def tiny_sparse_table(heads: int = 4, layers: int = 1, seed: int = 0) -> list:
    """A ``sparse_attention_config`` with small per-head budgets (different per head), for CPU checks."""
    rng = np.random.default_rng(seed)
    return [{str(h): ["vertical_and_slash", int(rng.integers(8, 40)), int(rng.integers(20, 120)), 1.0] for h in range(heads)}
            for _ in range(layers)]
