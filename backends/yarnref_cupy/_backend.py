"""The :class:`CupyBackend` class: validation, device handling, and dispatch to the modules.

Each method has the spec function's parameters (names, order, defaults:
:class:`yarnref.backend.Backend` checks this when the class is created),
validates its arguments with the spec's own checks where they are shared
(so that the errors are the same), converts its arrays onto the device
(:mod:`._device`), and calls the module that computes it (:mod:`.rope`,
:mod:`.attention`, :mod:`.dca`, :mod:`.sparse`).
"""

from __future__ import annotations

import numpy as np

from yarnref.alibi import check_alibi_slopes
from yarnref.checks import (
    LOGIT_LIMIT,
    check_bool,
    check_budget,
    check_dca_sizes,
    check_int,
    check_int32_indices,
    check_lengths,
    check_option,
    check_positive_real,
    check_rope_shapes,
    check_same_dtype,
    check_scale,
    check_streaming_sizes,
    is_int,
    start_logits_check,
)
from yarnref.softmax_attention import check_qkv
from yarnref.backend import Backend
from yarnref.errors import InputError
from yarnref.precision import check_precision
from yarnref.rope import PAIRINGS

from . import attention as _attention
from . import dca as _dca
from . import prefill as _prefill
from . import rope as _rope
from . import sparse as _sparse_module
from ._arrays import check_float, compute_dtype, dtype_name, is_nonfinite_magnitude, magnitude_bits, start_max_abs
from ._device import Device, cuda_is_usable


class CupyBackend(Backend):
    """yarnref's operations on an NVIDIA GPU through CuPy.

    ``CupyBackend(device=None)``: ``device`` is a CUDA device id (default: the
    current device).  Arrays in = arrays out: inputs are NumPy arrays (copied
    to the device once), CuPy arrays on the device, or torch CUDA tensors
    (zero-copy through DLPack); results are CuPy arrays.  float16, bfloat16
    (CuPy's ``bfloat16``, i.e. ``ml_dtypes.bfloat16``), float32 and float64
    are taken.  Computed in float64 for float64 inputs, else in float32;
    outputs in the spec's dtypes, lse in the compute dtype.  The fused kernels
    (yarnref's Triton kernels where torch and Triton are installed, else the
    NVRTC kernel) are chosen per call by :mod:`.kernels`.

    ``_xp`` is for yarnref's own tests only: ``CupyBackend(_xp=numpy)`` runs
    every array operation with NumPy standing in for CuPy, on the host.
    """

    name = "cupy"

    def __init__(self, device=None, *, _xp=None):
        self._device = Device(device, xp=_xp)
        self.xp = self._device.xp

    # ----------------------------------------------------------------- backend protocol

    @classmethod
    def is_available(cls) -> bool:
        return cuda_is_usable()

    @classmethod
    def has_gpu(cls) -> bool:
        return cuda_is_usable()  # CuPy runs on a CUDA device or not at all

    def describe(self) -> str:
        return "cupy"

    @property
    def device(self):
        """The CUDA device id (None in the NumPy shim)."""
        return self._device.id

    def asarray(self, x):
        return self._device.asarray(x)

    def to_numpy(self, x) -> np.ndarray:
        return self._device.to_numpy(x)

    def concatenate(self, arrays, axis=0):
        parts = {f"arrays[{i}]": self._in(a, f"arrays[{i}]") for i, a in enumerate(arrays)}
        check_same_dtype(**parts)
        with self._device.context():
            return self.xp.concatenate(list(parts.values()), axis=axis)

    def _in(self, x, name: str):
        return self._device.asarray(x, name)

    # ----------------------------------------------------------------- RoPE

    def rope_cos_sin(self, inv_freq, positions, attention_factor=1.0, *, precision="float64", out_precision=None):
        check_precision(precision)
        out_precision = precision if out_precision is None else check_precision(out_precision, "out_precision")
        check_positive_real("attention_factor", attention_factor)
        xp = self.xp
        with self._device.context():
            freqs = self._in(inv_freq, "inv_freq")
            out_dtype = freqs.dtype if freqs.dtype.kind == "f" else np.dtype(np.float64)
            if freqs.dtype.kind not in "fiu" or freqs.ndim != 1 or freqs.size == 0:
                raise InputError("inv_freq", f"shape {freqs.shape}", "a non-empty 1-D array of r/2 frequencies")
            freqs = freqs.astype(np.float64)
            if not bool(xp.all(xp.isfinite(freqs))):
                raise InputError("inv_freq", "non-finite values", "finite frequencies")
            pos = self._in(positions, "positions")
            if pos.dtype.kind not in "fiu":
                raise InputError("positions", f"array of dtype {pos.dtype}", "an integer or real array")
            pos = pos.astype(np.float64)
            if not bool(xp.all(xp.isfinite(pos))):
                raise InputError("positions", "non-finite values", "finite positions")
            return _rope.cos_sin(xp, freqs, pos, float(attention_factor), precision, out_precision, out_dtype)

    def apply_rope(self, x, cos, sin, pairing="half"):
        check_option("pairing", pairing, PAIRINGS)
        with self._device.context():
            x = self._in(x, "x")
            if x.dtype.kind != "f" and dtype_name(x.dtype) != "bfloat16":
                raise InputError("x", f"dtype {x.dtype}", "a floating-point array")
            check_float("x", x)
            cos, sin = self._in(cos, "cos"), self._in(sin, "sin")
            for name, table in (("cos", cos), ("sin", sin)):
                if table.dtype.kind not in "fiu" and dtype_name(table.dtype) != "bfloat16":
                    raise InputError(name, f"dtype {table.dtype}", "a real array")
            r = check_rope_shapes(x, cos, sin)
            return _rope.apply_rope(self.xp, x, cos, sin, r, pairing)

    # ----------------------------------------------------------------- attention

    def _qkv(self, q, k, v):
        q, k, v = self._in(q, "q"), self._in(k, "k"), self._in(v, "v")
        dims = check_qkv(q, k, v)
        for name, a in (("q", q), ("k", k), ("v", v)):
            check_float(name, a)
        return q, k, v, dims

    def _start_logits_check(self, q, k, v, scale, factor, finite=None):
        """The logits check (:func:`yarnref.checks.start_logits_check`) on the bit patterns, read back by ``finish``.

        The bound is the compute precision's: float64 inputs :data:`LOGIT_LIMIT`, others float32's 1e37.
        """
        limit = LOGIT_LIMIT if compute_dtype(q, k, v) == np.float64 else 1e37
        return start_logits_check(q, k, scale, factor, v, limit=limit, finite=finite,
                                  max_abs=lambda arrays: start_max_abs(self.xp, arrays))

    def attention(self, q, k, v, causal=True, scale=None, return_lse=False, *, block_size=512, alibi_slopes=None):
        with self._device.context():
            q, k, v, (_, hq, _, _, _, d) = self._qkv(q, k, v)
            causal = check_bool("causal", causal)
            scale = check_scale(scale, d)
            if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
                raise InputError("block_size", block_size, "a positive integer")
            slopes = None
            if alibi_slopes is not None:
                slopes = self._in(alibi_slopes, "alibi_slopes")
                check_alibi_slopes(slopes.shape, hq)
                if slopes.dtype.kind not in "fiu" or not bool(self.xp.all(self.xp.isfinite(slopes))):
                    raise InputError("alibi_slopes", "non-finite or non-real values", "finite real slopes")
            out, lse = _attention.attention(self.xp, q, k, v, causal, scale, int(block_size), slopes)
            # Launched after the attention is enqueued (so their launch overlaps its run) and read once:
            # bad inputs raise here, before anything is returned.
            self._start_logits_check(q, k, v, scale, 1.0).finish()
            return (out, lse) if return_lse else out

    def merge_attention(self, outputs, lses):
        outputs, lses = list(outputs), list(lses)
        if not outputs or len(outputs) != len(lses):
            raise InputError("outputs", f"{len(outputs)} outputs and {len(lses)} lses", "a non-empty, equal number of each")
        with self._device.context():
            os_ = [self._in(o, f"outputs[{i}]") for i, o in enumerate(outputs)]
            ls = [self._in(l, f"lses[{i}]") for i, l in enumerate(lses)]
            for i, (o, l) in enumerate(zip(os_, ls)):
                check_float(f"outputs[{i}]", o)
                check_float(f"lses[{i}]", l)
                if o.shape != os_[0].shape or l.shape != o.shape[:-1]:
                    raise InputError(
                        f"outputs[{i}]", f"shape {o.shape} with lse {l.shape}", f"output {os_[0].shape} and lse {os_[0].shape[:-1]}"
                    )
            return _attention.merge_attention(self.xp, os_, ls)

    # ----------------------------------------------------------------- DCA

    def dca_attention(
        self,
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
        spec = _dca.spec

        xp = self.xp
        with self._device.context():
            q, k, v, (_, _, _, q_len, kv_len, head_dim) = self._qkv(q, k, v)
            if q_len > kv_len:
                raise InputError(
                    "q", f"q_len={q_len}", f"at most kv_len = {kv_len} (the queries are the last q_len of the kv_len positions)"
                )
            chunk_len = check_dca_sizes(chunk_size, local_size)
            freqs = self._in(inv_freq, "inv_freq")
            if (
                freqs.ndim != 1
                or freqs.size == 0
                or 2 * freqs.size > head_dim
                or (freqs.dtype.kind != "f" and dtype_name(freqs.dtype) != "bfloat16")
            ):
                raise InputError(
                    "inv_freq",
                    f"array of shape {freqs.shape} and dtype {freqs.dtype}",
                    f"a 1-D float array of r/2 finite frequencies, 1 <= r/2 <= head_dim/2 = {head_dim // 2}",
                )
            freqs = freqs.astype(np.float64)
            scale, attention_factor, pi_factor, return_lse = spec.dca_options(
                head_dim, scale, pairing, attention_factor, pi_factor, form, return_lse
            )
            if key_write_lengths is not None:
                key_write_lengths = self._device.to_host_small(key_write_lengths, "key_write_lengths")
            factors = spec.dca_temperature(
                temperature,
                kv_len,
                seq_len=seq_len,
                key_write_lengths=key_write_lengths,
                max_position_embeddings=max_position_embeddings,
                original_max_position_embeddings=original_max_position_embeddings,
            )
            segments = spec.dca_segments(kv_len, q_len, chunk_size, local_size)
            out, lse = _dca.dca_attention(
                xp, q, k, v, freqs, int(chunk_size), chunk_len, scale, pairing,
                attention_factor * factors.table, float(factors.query),
                None if factors.key is None or np.all(factors.key == 1.0) else self._in(factors.key, "key_write_lengths"),
                pi_factor, segments,
            )
            # As in attention: launched after the work, read once; bad inputs raise before anything is returned.
            self._start_logits_check(q, k, v, scale, spec.dca_logit_factor(attention_factor, factors),
                                     finite={"inv_freq": freqs}).finish()
            return (out, lse) if return_lse else out

    # ----------------------------------------------------------------- vertical-slash, A-shape, tri-shape

    def _finite_floats(self, **arrays) -> None:
        """The spec's check for the sparse operations: float dtypes and finite values."""
        for name, a in arrays.items():
            check_float(name, a)
        # One pass per array on the device (the largest magnitude's bit pattern), one read back for all.
        bits = self._device.to_numpy(magnitude_bits(self.xp, list(arrays.values())))
        for (name, a), pattern in zip(arrays.items(), bits.tolist()):
            if is_nonfinite_magnitude(pattern, a.dtype):
                raise InputError(name, "non-finite values", "finite values")

    def _sparse_qkv(self, q, k, v, causal: bool):
        q, k, v = self._in(q, "q"), self._in(k, "k"), self._in(v, "v")
        dims = check_qkv(q, k, v)
        self._finite_floats(q=q, k=k, v=v)
        if causal and dims[3] > dims[4]:
            raise InputError(
                "q", f"q_len={dims[3]}", f"at most kv_len = {dims[4]} when causal (the queries are the last q_len positions)"
            )
        return q, k, v, dims

    def _budget(self, name, value, heads):
        if not is_int(value):
            value = self._device.to_host_small(value, name)
        return check_budget(name, value, heads)

    def vertical_slash_indices(self, q, k, vertical_size, slash_size, last_q=64, *, scale=None, force_verticals=30, force_slashes=100):
        spec = _sparse_spec()
        with self._device.context():
            q, k = self._in(q, "q"), self._in(k, "k")
            _, q_heads, _, q_len, kv_len, head_dim = check_qkv(q, k, k)
            self._finite_floats(q=q, k=k)
            if q_len > kv_len:
                raise InputError("q", f"q_len={q_len}", f"at most kv_len = {kv_len} (the queries are the last q_len positions)")
            n_vertical = np.minimum(kv_len, np.maximum(self._budget("vertical_size", vertical_size, q_heads), spec.MIN_VERTICAL_SIZE))
            n_slash = np.minimum(kv_len, np.maximum(self._budget("slash_size", slash_size, q_heads), spec.MIN_SLASH_SIZE))
            last_q = check_int("last_q", last_q, 1)
            force_verticals = check_int("force_verticals", force_verticals, 0)
            force_slashes = check_int("force_slashes", force_slashes, 0)
            scale = check_scale(scale, head_dim)
            return _sparse().vertical_slash_indices(
                self.xp, q, k, n_vertical, n_slash, last_q, scale, force_verticals, force_slashes
            )

    def _index_args(self, q_len, kv_len, vertical_idx, slash_idx, block_size_m, block_size_n, causal, conversion=False):
        spec = _sparse_spec()
        causal = check_bool("causal", causal)
        q_len, kv_len = check_lengths(q_len, kv_len, causal)
        bm = check_int("block_size_m", block_size_m, 1)
        bn = check_int("block_size_n", block_size_n, 1)
        if conversion:
            _sparse().check_block_sizes(bm, bn)
        vertical, slash = _sparse().check_indices(
            self.xp, self._in(vertical_idx, "vertical_idx"), self._in(slash_idx, "slash_idx"), kv_len
        )
        return q_len, kv_len, vertical, slash, bm, bn, causal

    def convert_vertical_slash_indexes(self, q_len, kv_len, vertical_idx, slash_idx, block_size_m=64, block_size_n=64, causal=True):
        with self._device.context():
            q_len, kv_len, vertical, slash, bm, bn, causal = self._index_args(
                q_len, kv_len, vertical_idx, slash_idx, block_size_m, block_size_n, causal, conversion=True
            )
            check_int32_indices(kv_len, bm, bn)
            return _sparse().convert(self.xp, self._device, q_len, kv_len, vertical, slash, bm, bn, causal)

    def vertical_slash_mask(self, q_len, kv_len, vertical_idx, slash_idx, mode="exact", causal=True, *, block_size_m=64, block_size_n=64):
        mode = check_option("mode", mode, _sparse_spec().VS_MODES)
        with self._device.context():
            q_len, kv_len, vertical, slash, bm, bn, causal = self._index_args(
                q_len, kv_len, vertical_idx, slash_idx, block_size_m, block_size_n, causal
            )
            sparse = _sparse()
            if mode == "exact":
                return sparse.exact_mask(self.xp, q_len, kv_len, vertical, slash, causal)
            converted = sparse.convert(self.xp, self._device, q_len, kv_len, vertical, slash, bm, bn, causal)
            return sparse.kernel_mask(self.xp, q_len, kv_len, converted, causal, bm, bn)

    def vertical_slash_attention(
        self, q, k, v, vertical_idx, slash_idx, mode="kernel", scale=None, return_lse=False, *, causal=True, block_size_m=64, block_size_n=64
    ):
        spec = _sparse_spec()
        causal = check_bool("causal", causal)
        with self._device.context():
            q, k, v, (batch, q_heads, _, _, kv_len, head_dim) = self._sparse_qkv(q, k, v, causal)
            mode = check_option("mode", mode, spec.VS_MODES)
            scale = check_scale(scale, head_dim)
            return_lse = check_bool("return_lse", return_lse)
            bm = check_int("block_size_m", block_size_m, 1)
            bn = check_int("block_size_n", block_size_n, 1)
            sparse = _sparse()
            vertical, slash = sparse.check_indices(
                self.xp, self._in(vertical_idx, "vertical_idx"), self._in(slash_idx, "slash_idx"), kv_len, (batch, q_heads)
            )
            out, lse = sparse.vs_attention(self.xp, self._device, q, k, v, vertical, slash, mode, scale, causal, bm, bn)
            return (out, lse) if return_lse else out

    def _streaming(self, q, k, v, n_init, n_local, n_last, scale, return_lse):
        spec = _sparse_spec()
        with self._device.context():
            q, k, v, (_, _, _, q_len, kv_len, head_dim) = self._sparse_qkv(q, k, v, True)
            _, _, n_init, n_local, n_last = check_streaming_sizes(q_len, kv_len, n_init, n_local, n_last)
            scale = check_scale(scale, head_dim)
            return_lse = check_bool("return_lse", return_lse)
            out, lse = _sparse().streaming_attention(self.xp, q, k, v, n_init, n_local, n_last or 0, scale)
            return (out, lse) if return_lse else out

    def a_shape_attention(self, q, k, v, n_init=128, n_local=3968, scale=None, return_lse=False):
        return self._streaming(q, k, v, n_init, n_local, None, scale, return_lse)

    def tri_shape_attention(self, q, k, v, n_init=128, n_local=3968, n_last=100, scale=None, return_lse=False):
        return self._streaming(q, k, v, n_init, n_local, n_last, scale, return_lse)

    # ----------------------------------------------------------------- the Qwen2.5-1M pipeline's bookkeeping

    def split_sparse_parts(self, verticals, slashes, begin, end, chunk_start, chunk_len):
        with self._device.context():
            return _prefill.split_sparse_parts(self.xp, self._device, verticals, slashes, begin, end, chunk_start, chunk_len)


def _sparse_spec():
    return _sparse_module.spec


def _sparse():
    return _sparse_module
