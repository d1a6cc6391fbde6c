r"""Dual Chunk Attention on torch (spec: :mod:`yarnref.dca`).

Paper: An et al., "Training-Free Long-Context Scaling of Large Language
Models" (ChunkLlama), arXiv:2402.17463, section 3; as run in Qwen2.5-1M
(arXiv:2501.15383) by vLLM's DualChunkFlashAttention backend.

With ``L = chunk_size - local_size`` and ``C = chunk_size``, keys sit at
``P_k(j) = j mod L`` and a query ``i`` at (Eqs. (2)-(7))

.. math::
   P_q^{\mathrm{intra}}(i) = i \bmod L, \quad
   P_q^{\mathrm{succ}}(i) = \min(i \bmod L + L, C), \quad
   P_q^{\mathrm{inter}} = \min(2L - 1, C),

the part chosen by the chunk distance (Eq. (8)), and one softmax over all keys
``j <= i`` (Eq. (9)).

How this backend computes it: the softmax over the union equals the LSE merge
of the softmaxes over the three parts (paper Appendix A.2), so both ``form``
values take the same path, the one vLLM takes.  Per DCA segment (the queries
inside one chunk, :func:`yarnref.dca.dca_segments`): rotate the segment's
queries to the intra, successive and inter positions, run
:func:`~yarnref_torch.attention.attention_tensors` on the three key ranges
(intra causal, the other two not) with the lse, and merge.  On CUDA in
float16/bfloat16/float32 those calls are torch's fused flash / memory-efficient
kernels, so no ``(seq, seq)`` score matrix ever exists; elsewhere they are the
blocked path, ``O(block * kv_len)`` memory.

Conventions
-----------
Those of :mod:`yarnref.dca`.  Un-rotated q and k; the queries are the last
``q_len`` of ``kv_len`` positions; ``pi_factor`` divides every position;
``attention_factor`` and the ChunkLlama temperature multiply cos and sin;
the Qwen temperature multiplies each rotated key by its write-time factor and
the scale by the query factor (:func:`yarnref.dca.dca_temperature`).

Precision: the cos/sin tables are computed in float64 (positions never exceed
``C``, so a float64 table over ``0..C`` is exact to float64) and read in the
compute dtype.  float64 inputs are computed in float64; float32 inputs in
float32; float16/bfloat16 inputs are rotated in float32, then (on CUDA, where
the fused kernels need it) rounded to the input dtype for the attention, as
vLLM rotates in the model dtype.  The output has q's dtype; the lse is float64
for float64 inputs, float32 otherwise.
"""

from __future__ import annotations


import numpy as np
import torch

from yarnref.checks import check_dca_sizes, check_same_dtype, start_logits_check
from yarnref.softmax_attention import check_qkv
from yarnref.errors import InputError

from ._arrays import ArrayConverter, check_float, compute_dtype, tensor_to_numpy
from .attention import logit_limit, attention_tensors, merge_tensors
from .rope import rotate

__all__ = ["dca_attention"]


#: Bytes of cos/sin tables :func:`_position_table` keeps for the next call (the last pair made, if it is
#: no larger): a call with the same frequency tensor, unchanged since, and the same sizes skips their
#: kernels.  At a 32K chunk the pair takes 16 MiB in float32; Qwen2.5-1M's 262144-token chunks (134 MiB)
#: are made afresh every call rather than held between calls.
TABLE_CACHE_BYTES = 1 << 25

_last_table: dict = {}


def _position_table(inv_freq: torch.Tensor, n: int, pi_factor: float, factor: float, dtype: torch.dtype):
    """cos and sin of ``(p / pi_factor) * theta`` times ``factor`` for ``p = 0 .. n-1``, each ``(n, r/2)``.

    Computed in float64, returned in ``dtype`` (read only: they may be the previous call's, see
    :data:`TABLE_CACHE_BYTES`; torch's version counter tells an ``inv_freq`` changed in place).
    """
    try:
        version = inv_freq._version
    except RuntimeError:  # an inference-mode tensor has no version counter: its tables are never kept
        version = None
    key = (n, float(pi_factor), float(factor), dtype, version)
    last = _last_table.get("entry")
    if version is not None and last is not None and last[0] is inv_freq and last[1] == key:
        return last[2]
    p = torch.arange(n, dtype=torch.float64, device=inv_freq.device) / pi_factor  # (n,) positions / PI factor
    angles = p[:, None] * inv_freq.to(torch.float64)  # (n, r/2)
    tables = (torch.cos(angles) * factor).to(dtype), (torch.sin(angles) * factor).to(dtype)
    _last_table.clear()
    if version is not None and 2 * tables[0].numel() * tables[0].element_size() <= TABLE_CACHE_BYTES:
        _last_table["entry"] = (inv_freq, key, tables)
    return tables


def _successive_rows(table: torch.Tensor, r0: int, r1: int, chunk_len: int, chunk_size: int) -> torch.Tensor:
    """The rows of positions ``min(r + L, C)`` for ``r`` in ``[r0, r1)`` (Eq. (5)), without an index tensor.

    The positions rise by one until they reach ``C`` and stay there: a slice of the table, one row (which
    the rotation broadcasts) when every query is at ``C``, or the slice and that row repeated.
    """
    rising = max(0, min(r1, chunk_size - chunk_len + 1) - r0)  # rows with r + L <= C
    if rising == r1 - r0:
        return table[r0 + chunk_len : r1 + chunk_len]
    last = table[chunk_size : chunk_size + 1]  # (1, r/2): position C
    if rising == 0:
        return last
    return torch.cat([table[r0 + chunk_len : r0 + chunk_len + rising], last.expand(r1 - r0 - rising, -1)])


def dca_attention(
    conv: ArrayConverter,
    q,
    k,
    v,
    inv_freq,
    chunk_size,
    local_size,
    scale=None,
    *,
    pairing="half",
    attention_factor=1.0,
    temperature="none",
    max_position_embeddings=None,
    original_max_position_embeddings=None,
    seq_len=None,
    key_write_lengths=None,
    pi_factor=1.0,
    form="union",
    return_lse=False,
):
    """Dual Chunk Attention on un-rotated q and k; see :func:`yarnref.dca.dca_attention`."""
    from yarnref.dca import dca_logit_factor, dca_options, dca_segments, dca_temperature  # the spec's rules, shared

    q, k, v = (check_float(n, conv.tensor(a, n)) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    check_same_dtype(q=q, k=k, v=v)
    batch, q_heads, _, q_len, kv_len, head_dim = check_qkv(q, k, v)
    if q_len > kv_len:
        raise InputError("q", f"q_len={q_len}", f"at most kv_len = {kv_len} (the queries are the last q_len of the kv_len positions)")
    chunk_len = check_dca_sizes(chunk_size, local_size)
    chunk_size = int(chunk_size)
    freqs = conv.tensor(inv_freq, "inv_freq")
    if freqs.ndim != 1 or freqs.numel() == 0 or 2 * freqs.numel() > head_dim or not freqs.is_floating_point():
        raise InputError(
            "inv_freq",
            f"array of shape {tuple(freqs.shape)} and dtype {freqs.dtype}",
            f"a 1-D float array of r/2 finite frequencies, 1 <= r/2 <= head_dim/2 = {head_dim // 2}",
        )
    scale, attention_factor, pi_factor, return_lse = dca_options(head_dim, scale, pairing, attention_factor, pi_factor, form, return_lse)
    if isinstance(key_write_lengths, torch.Tensor):
        # Validated on the host by the spec's rules: a (kv_len,) vector of integers, metadata like a shape.
        key_write_lengths = tensor_to_numpy(conv.tensor(key_write_lengths, "key_write_lengths"))
    factors = dca_temperature(
        temperature,
        kv_len,
        seq_len=seq_len,
        key_write_lengths=key_write_lengths,
        max_position_embeddings=max_position_embeddings,
        original_max_position_embeddings=original_max_position_embeddings,
    )
    # The logits check (the spec's bound, yarnref.dca.dca_logit_factor) and the frequencies' finiteness.
    # On CUDA its reductions are launched right after the first attention call and read back at the end
    # (the call's one synchronisation), so the device gets its first large kernel as early as possible
    # and never waits on the host in between; nothing is returned before the check has passed.  On the
    # host there is no device to keep busy: it runs first, before any work.
    def start_check():
        return start_logits_check(q, k, scale, factor=dca_logit_factor(attention_factor, factors), v=v,
                                  limit=logit_limit(q.dtype), finite={"inv_freq": freqs})

    pending = None
    if not q.is_cuda:
        pending = start_check()
        pending.finish()

    cdt = compute_dtype(q.dtype)
    # The dtype the rotated q/k are handed to attention in: the input's for CUDA half types (the
    # fused kernels need it), else the compute dtype (the blocked path computes in it anyway).
    work = q.dtype if (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)) else cdt
    # Positions used: keys and intra queries j mod L < L; successive min(i mod L + L, C) and inter
    # min(2L - 1, C), both <= min(2L - 1, C), and only once kv_len > L.
    n_positions = min(2 * chunk_len - 1, chunk_size) + 1 if kv_len > chunk_len else kv_len
    cos, sin = _position_table(freqs, n_positions, pi_factor, attention_factor * factors.table, cdt)  # (n_positions, r/2)

    # Keys: rotated once, chunk by chunk (positions j mod L), times their write-time factor, into k_rot;
    # a chunk is rotated when the first segment that reads it comes (segments read keys [0, end) only).
    key_factor = None
    if factors.key is not None and not np.all(factors.key == 1.0):
        key_factor = torch.from_numpy(np.ascontiguousarray(factors.key)).to(q.device, cdt)  # (kv_len,)
    k_rot = torch.empty(k.shape, dtype=work, device=k.device)
    rotated = 0  # keys [0, rotated) of k_rot are done

    def rotate_keys_to(end: int) -> int:
        start = rotated
        while start < end:  # a loop over chunks (kv_len / L of them in all)
            stop = min(start + chunk_len, kv_len)
            if key_factor is None and work == k.dtype:  # written in place; computed in float32/float64
                rotate(k[:, :, start:stop], cos[: stop - start], sin[: stop - start], pairing, out=k_rot[:, :, start:stop])
            else:
                part = rotate(k[:, :, start:stop].to(cdt), cos[: stop - start], sin[: stop - start], pairing)
                if key_factor is not None:
                    part = part * key_factor[start:stop, None]  # (n, 1) over (batch, kv_heads, n, head_dim)
                k_rot[:, :, start:stop] = part.to(work)
            start = stop
        return start

    v_work = v.to(work)

    offset = kv_len - q_len  # absolute position of query row 0
    part_scale = scale * factors.query
    out = torch.empty((batch, q_heads, q_len, v.shape[-1]), dtype=work, device=q.device)
    lse = torch.empty((batch, q_heads, q_len), dtype=cdt, device=q.device)
    for seg in dca_segments(kv_len, q_len, chunk_size, local_size):  # a loop over DCA segments
        rotated = rotate_keys_to(seg.end)
        rows = slice(seg.begin - offset, seg.end - offset)
        q_seg = q[:, :, rows] if work == q.dtype else q[:, :, rows].to(cdt)  # rotated in float32/float64 either way
        r0, r1 = seg.begin - seg.intra[0], seg.end - seg.intra[0]  # in-chunk positions i mod L of the segment
        outputs, lses = [], []
        for part, (start, stop), causal in (
            ("intra", seg.intra, True),  # bottom-right causal: query i sees [cs, i]
            ("successive", seg.successive, False),
            ("inter", seg.inter, False),
        ):
            if stop <= start:
                continue
            if part == "successive":
                qc, qs = _successive_rows(cos, r0, r1, chunk_len, chunk_size), _successive_rows(sin, r0, r1, chunk_len, chunk_size)
            elif part == "inter":
                inter = min(2 * chunk_len - 1, chunk_size)  # one position for every query
                qc, qs = cos[inter : inter + 1], sin[inter : inter + 1]
            else:
                qc, qs = cos[r0:r1], sin[r0:r1]  # i mod L
            q_rot = rotate(q_seg, qc, qs, pairing).to(work)
            o, l = attention_tensors(q_rot, k_rot[:, :, start:stop], v_work[:, :, start:stop], causal, part_scale, True)
            outputs.append(o)
            lses.append(l)
            if pending is None:
                pending = start_check()
        if len(outputs) == 1:  # the intra part alone (the first chunk): nothing to merge, its rows are never empty
            out[:, :, rows], lse[:, :, rows] = outputs[0], lses[0]
        else:
            out[:, :, rows], lse[:, :, rows] = merge_tensors(outputs, lses)
    if pending is None:  # q_len = 0: no segment
        pending = start_check()
    out = out.to(q.dtype)
    pending.finish()  # bad inputs raise here, before anything is returned
    return (out, lse) if return_lse else out
