r"""Dual Chunk Attention on the GPU (spec: :mod:`yarnref.dca`).

Paper: An et al., "Training-Free Long-Context Scaling of Large Language
Models", arXiv:2402.17463, section 3: keys at :math:`P_k(j) = j \bmod L`;
queries at :math:`P_q^{\mathrm{intra}} = i \bmod L`,
:math:`P_q^{\mathrm{succ}} = \min(i \bmod L + L, C)`,
:math:`P_q^{\mathrm{inter}} = \min(2L - 1, C)` (Eqs. 2-7), the part chosen by
the chunk distance (Eq. 8), one softmax over all keys ``j <= i`` (Eq. 9),
computed as three attentions merged by their log-sum-exps (Appendix A.2,
Algorithm 1), which is how vLLM runs it for Qwen2.5-1M (arXiv:2501.15383).

How it runs here: keys are rotated once; the queries are walked by DCA
segment (:func:`yarnref.dca.dca_segments`: the queries of one chunk), and for
each segment the three parts are blocked attentions over contiguous key
ranges (intra ``[cs, end)`` bottom-right causal, successive ``[cs - L, cs)``
and inter ``[0, cs - L)`` unmasked) with their lse, merged.  Nothing of size
``q_len * kv_len`` is ever held: memory is ``O(block * kv_len)``.  The Python
loops run over segments and query blocks, never over heads or tokens.

Conventions: the spec's (:mod:`yarnref.dca`).  ``form`` selects how the spec
computes; on the GPU both forms are the same merged computation (they are
equal up to rounding, which the spec's tests check).  Tables are computed in
float64 and applied in the compute dtype (float64 for float64 inputs, else
float32); the temperature factors come from :func:`yarnref.dca.dca_temperature`.
For float16/bfloat16 inputs a fused kernel takes
(:func:`.attention.takes_fused`: yarnref's Triton dense kernel where torch and
Triton are installed, else the NVRTC kernel), the rotated q and k are rounded
to the input dtype and each part runs in that kernel with its lse, as vLLM
rotates in the model dtype and runs its parts in FlashAttention; the parts are
merged by the LSE rule of :func:`.attention.merge_attention` (on the GPU one
elementwise pass writing straight into the output, :func:`merge_into`), the
merge the torch backend composes around SDPA.  The rotations are yarnref's
Triton RoPE kernel where Triton runs (:mod:`.rope`), on 16-bit q and k
directly (computed in float32, rounded once to the input dtype), reading rows
of one float64-computed table (:func:`position_table`).
"""

from __future__ import annotations

import importlib

import numpy as np

from ._arrays import compute_dtype, scalar
from .attention import attention, merge_attention, takes_fused
from .rope import apply_rope, cos_sin

spec = importlib.import_module("yarnref.dca")

#: Logits held at once by one part's attention block: ``batch * q_heads * block * keys`` numbers.
BLOCK_ELEMENTS = 1 << 26


def _block_size(rows_per_query: int, n_keys: int) -> int:
    return max(1, BLOCK_ELEMENTS // (rows_per_query * max(1, n_keys)))


def position_table(xp, inv_freq, n: int, pi_factor: float, table_factor: float, dtype):
    """cos and sin of ``(p / pi_factor) * theta`` times ``table_factor`` for ``p = 0 .. n-1``, each ``(n, r/2)``.

    Computed in float64 (every DCA position is an integer ``<= C``), returned
    in ``dtype``; every rotation of the call reads its rows.  On the GPU one
    elementwise kernel computes both tables with the same float64 operations
    as :func:`.rope.cos_sin` (``p / pi_factor``, times ``theta``, cos/sin,
    times the factor, one rounding to ``dtype``), where the array form takes
    about ten launches before the call's first attention can start.
    """
    if xp is not np and np.dtype(dtype) in (np.float32, np.float64):
        cos = xp.empty((n, inv_freq.shape[0]), dtype=dtype)
        sin = xp.empty_like(cos)
        _table_kernel(xp)(inv_freq, float(pi_factor), float(table_factor), inv_freq.shape[0], cos, sin)
        return cos, sin
    positions = xp.arange(n, dtype=np.float64) / scalar(pi_factor, np.float64)  # (n,)
    cos, sin = cos_sin(xp, inv_freq, positions, table_factor, "float64", "float64", np.float64)  # (n, r/2)
    return cos.astype(dtype, copy=False), sin.astype(dtype, copy=False)


_TABLE_KERNEL: list = []


def _table_kernel(cupy):
    """The fused table: element ``i`` of the ``(n, r/2)`` outputs is position ``i / half``, frequency ``i % half``."""
    if not _TABLE_KERNEL:
        _TABLE_KERNEL.append(cupy.ElementwiseKernel(
            "raw float64 inv_freq, float64 pi_factor, float64 factor, int64 half",
            "T cos_out, T sin_out",
            """
            const double position = (double)(i / half) / pi_factor;
            const double angle = position * inv_freq[i % half];
            cos_out = (T)(cos(angle) * factor);
            sin_out = (T)(sin(angle) * factor);
            """,
            "yarnref_dca_position_table",
        ))
    return _TABLE_KERNEL[0]


_MERGE_KERNELS: dict[str, object] = {}
#: (parts' dtype, output dtype) -> whether the fused merge ran for it (absent: not tried yet).
_MERGE_OK: dict[tuple[str, str], bool] = {}


def _merge_kernels(cupy):
    """Two CuPy ElementwiseKernels: the LSE merge of up to three parts, output and lse, in one pass each."""
    if "out" not in _MERGE_KERNELS:
        _MERGE_KERNELS["out"] = cupy.ElementwiseKernel(
            "T o1, T o2, T o3, L l1, L l2, L l3",
            "O out",
            """
            L m = l1 > l2 ? l1 : l2;
            m = m > l3 ? m : l3;
            if (isinf(m)) {  // every part empty (m = -inf): output 0
                out = (O)0.0f;
            } else {
                L w1 = exp(l1 - m), w2 = exp(l2 - m), w3 = exp(l3 - m);  // exp(-inf) = 0 for empty parts
                out = (O)((w1 * (L)(float)o1 + w2 * (L)(float)o2 + w3 * (L)(float)o3) / (w1 + w2 + w3));
            }
            """,
            "yarnref_dca_merge_out",
        )
        _MERGE_KERNELS["lse"] = cupy.ElementwiseKernel(
            "L l1, L l2, L l3",
            "L lse",
            """
            L m = l1 > l2 ? l1 : l2;
            m = m > l3 ? m : l3;
            lse = isinf(m) ? m : m + log(exp(l1 - m) + exp(l2 - m) + exp(l3 - m));
            """,
            "yarnref_dca_merge_lse",
        )
    return _MERGE_KERNELS


def merge_into(xp, outputs, lses, out, lse) -> None:
    """LSE-merge two or three parts (the same rule as :func:`.attention.merge_attention`) into the views ``out``, ``lse``.

    ``outputs``: ``(b, h, n, d)`` in one dtype; ``lses``: ``(b, h, n)``.  On
    the GPU with float32 lse (every 16-bit and float32 call) two elementwise
    kernels read each part once and write ``out`` (q's dtype) and ``lse``
    straight into their slices, where the general merge makes about a dozen
    passes; float64 and the NumPy shim take the general merge.
    """
    # CuPy compiles one kernel per dtype combination; whether it compiled is remembered per combination.
    signature = (outputs[0].dtype.name, out.dtype.name)
    if xp is not np and len(outputs) in (2, 3) and all(l.dtype == np.float32 for l in lses) and _MERGE_OK.get(signature, True):
        kernels = _merge_kernels(xp)
        parts_o = list(outputs) + [outputs[-1]] * (3 - len(outputs))  # a missing third part has weight exp(-inf) = 0
        parts_l = list(lses) + [xp.full_like(lses[0], -np.inf)] * (3 - len(lses))
        try:
            kernels["out"](*parts_o, *(l[..., None] for l in parts_l), out)
            kernels["lse"](*parts_l, lse)
            _MERGE_OK[signature] = True
            return
        except Exception:  # noqa: BLE001 - a CuPy that cannot compile this dtype (e.g. an older bfloat16): the general merge
            if _MERGE_OK.get(signature):
                raise  # it ran before: a real error
            _MERGE_OK[signature] = False
    o, l = merge_attention(xp, outputs, lses)
    out[...] = o
    lse[...] = l


def dca_attention(
    xp, q, k, v, inv_freq, chunk_size: int, chunk_len: int, scale: float, pairing: str,
    table_factor: float, query_factor: float, key_factor, pi_factor: float, segments,
):
    """DCA over validated device arrays.  ``key_factor``: ``(kv_len,)`` device array, or None for all ones.  Returns ``(out, lse)``.

    The torch backend's composition: one float64 cos/sin table over the
    positions used, rows read per rotation; 16-bit q and k rotated straight
    into their own dtype where a fused kernel takes the parts (the rotation
    computes in float32 and rounds once, as rotating a float32 copy and then
    rounding does), so no float32 copy of q or k is made.
    """
    batch, q_heads, q_len, _ = q.shape
    kv_len = k.shape[2]
    r = 2 * inv_freq.shape[0]
    cdt = compute_dtype(q, k, v)
    offset = kv_len - q_len  # absolute position of query row 0
    # The dtype the rotated q/k go to attention in: q's 16-bit dtype where a fused kernel takes the
    # call (vLLM rotates in the model dtype too), else the compute dtype.
    work = q.dtype if takes_fused(xp, q, k, v, causal=False) else cdt
    # Positions used: keys and intra queries j mod L < L; successive min(i mod L + L, C) and inter
    # min(2L - 1, C), both <= min(2L - 1, C), and only once kv_len > L.
    inter_position = min(2 * chunk_len - 1, chunk_size)
    n_positions = inter_position + 1 if kv_len > chunk_len else kv_len
    cos, sin = position_table(xp, inv_freq, n_positions, pi_factor, table_factor, cdt)  # (n_positions, r/2)

    # Keys are rotated once, at p mod L, and carry their write-time factor (vLLM caches them so): chunk by
    # chunk, with the table's first rows (a chunk's positions are 0, 1, ...), straight into k_rot, and only
    # when the first segment that reads the chunk comes (segments read keys [0, end)), so the device gets
    # the first segment's attention after two rotations.
    k_rot = xp.empty(k.shape, dtype=work)  # (b, hk, kv_len, d)
    rotated = 0  # keys [0, rotated) of k_rot are done

    def rotate_keys_to(end: int) -> int:
        start = rotated
        while start < end:  # a loop over chunks (kv_len / L of them in all)
            stop = min(start + chunk_len, kv_len)
            kc, ks = cos[: stop - start], sin[: stop - start]
            if key_factor is None and work == k.dtype:  # computed in the compute dtype, rounded once into k_rot
                apply_rope(xp, k[:, :, start:stop], kc, ks, r, pairing, out=k_rot[:, :, start:stop])
            else:
                part = apply_rope(xp, k[:, :, start:stop].astype(cdt), kc, ks, r, pairing)
                if key_factor is not None:  # the Qwen temperature's write-time factors
                    part *= key_factor[start:stop].astype(cdt)[:, None]
                k_rot[:, :, start:stop] = part.astype(work, copy=False)
            start = stop
        return start

    vc = v.astype(work, copy=False)
    logit_scale = scale * query_factor

    out = xp.empty((batch, q_heads, q_len, v.shape[-1]), dtype=q.dtype)
    lse = xp.empty((batch, q_heads, q_len), dtype=cdt)
    for seg in segments:
        rotated = rotate_keys_to(seg.end)
        rows = slice(seg.begin - offset, seg.end - offset)
        q_seg = q[:, :, rows] if work == q.dtype else q[:, :, rows].astype(cdt)  # (b, hq, n, d), un-rotated
        r0, r1 = seg.begin - seg.intra[0], seg.end - seg.intra[0]  # the segment's in-chunk positions i mod L
        parts = [(part, span, causal) for part, span, causal in (
            ("intra", seg.intra, True),  # bottom-right causal: query i sees [cs, i]
            ("successive", seg.successive, False),
            ("inter", seg.inter, False),
        ) if span[1] > span[0]]
        # The intra part alone (the first chunk): written straight into the output, nothing to merge
        # (its rows are never empty).
        alone = len(parts) == 1 and out.dtype == work
        outputs, lses = [], []
        for part, (start, stop), causal in parts:
            if part == "intra":
                qc, qs = cos[r0:r1], sin[r0:r1]  # i mod L
            elif part == "successive":
                if r1 - 1 + chunk_len <= chunk_size:  # min(i mod L + L, C) = i mod L + L: a run of table rows
                    qc, qs = cos[r0 + chunk_len : r1 + chunk_len], sin[r0 + chunk_len : r1 + chunk_len]
                else:
                    succ = xp.minimum(xp.arange(r0, r1, dtype=np.int64) + chunk_len, chunk_size)  # min(i mod L + L, C)
                    qc, qs = cos[succ], sin[succ]
            else:
                qc, qs = cos[inter_position : inter_position + 1], sin[inter_position : inter_position + 1]  # one position
            qp = apply_rope(xp, q_seg, qc, qs, r, pairing).astype(work, copy=False)
            o, l = attention(
                xp, qp, k_rot[:, :, start:stop], vc[:, :, start:stop], causal, logit_scale,
                _block_size(batch * q_heads, stop - start),
                out=out[:, :, rows] if alone else None, lse=lse[:, :, rows] if alone else None,
            )
            outputs.append(o)
            lses.append(l)
        if len(outputs) == 1 and not alone:
            out[:, :, rows] = outputs[0]
            lse[:, :, rows] = lses[0]
        elif len(outputs) > 1:
            merge_into(xp, outputs, lses, out[:, :, rows], lse[:, :, rows])
    return out, lse
