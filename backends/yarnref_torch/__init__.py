"""yarnref's torch backend: the spec's operations on torch tensors, on CPU or CUDA.

Select it with ``yarnref.set_backend("torch")`` (or ``"torch", device="cpu"``)
or ``with yarnref.use_backend("torch"):``; every operation of
:data:`yarnref.backend.OPERATIONS` then runs here.  Arrays in = arrays out:
NumPy inputs are copied to the backend's device once and results are torch
tensors; tensors already there are used as they are; a tensor on another
device is an error, never a silent copy (:mod:`yarnref_torch._arrays`).

Modules, one concept each:

* :mod:`._arrays`: conversion and validation of inputs.
* :mod:`.rope`: cos/sin tables and the rotation.
* :mod:`.attention`: softmax attention (torch's fused kernels on CUDA, a
  blocked path elsewhere) and the LSE merge.
* :mod:`.dca`: Dual Chunk Attention (per-segment parts, LSE-merged).
* :mod:`.sparse`: vertical-slash estimation, index conversion, masks and
  sparse attention, A-shape and tri-shape (pure torch; on CUDA the
  vertical-slash attention uses the Triton kernel of ``triton_sparse``, the
  estimation the softmax sums of ``estimate_triton``).

Everything is vectorised over batch, heads and tokens: the Python loops that
remain run over query blocks, DCA segments, chunks or index positions.
"""

from __future__ import annotations

try:
    import torch
except ImportError as _exc:  # pragma: no cover - exercised only where torch is missing
    from yarnref.errors import BackendError

    raise BackendError("the torch backend needs PyTorch: pip install -e '.[torch]' in a yarnref checkout, or pip install torch") from _exc

import numpy as np

from yarnref.softmax_attention import DEFAULT_BLOCK_SIZE
from yarnref.backend import Backend
from yarnref.checks import check_same_dtype

from . import attention as _attention
from . import dca as _dca
from . import prefill as _prefill
from . import rope as _rope
from . import sparse as _sparse
from ._arrays import ArrayConverter, normalize_device, tensor_to_numpy

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """The spec's operations in torch, on ``device`` (``None``: CUDA if available, else CPU).

    float64, float32, float16 and bfloat16 are kept; half types are computed
    in float32 and returned in their own dtype.
    """

    name = "torch"

    def __init__(self, device=None):
        self.device: torch.device = normalize_device(device)
        self._conv = ArrayConverter(self.device)

    @classmethod
    def is_available(cls) -> bool:
        """True: torch imported, and its CPU always works (CUDA is checked when ``device="cuda"`` is asked for)."""
        return True

    @classmethod
    def has_gpu(cls) -> bool:
        """True where torch sees a CUDA device."""
        return bool(torch.cuda.is_available())

    def describe(self) -> str:
        return f"torch-{self.device.type}"

    def asarray(self, x, param: str = "x"):
        """``x`` as a tensor on this backend's device (NumPy copied once; a tensor elsewhere is an error)."""
        return self._conv.tensor(x, param)

    def to_numpy(self, x) -> np.ndarray:
        return tensor_to_numpy(x)

    def concatenate(self, arrays, axis=0):
        tensors = {f"arrays[{i}]": self.asarray(a, f"arrays[{i}]") for i, a in enumerate(arrays)}
        check_same_dtype(**tensors)
        return torch.cat(list(tensors.values()), dim=axis)

    # ------------------------------------------------------------------ RoPE

    def rope_cos_sin(self, inv_freq, positions, attention_factor=1.0, *, precision="float64", out_precision=None):
        return _rope.rope_cos_sin(self._conv, inv_freq, positions, attention_factor, precision=precision, out_precision=out_precision)

    def apply_rope(self, x, cos, sin, pairing="half"):
        return _rope.apply_rope(self._conv, x, cos, sin, pairing)

    # ------------------------------------------------------------------ attention

    def attention(self, q, k, v, causal=True, scale=None, return_lse=False, *, block_size=DEFAULT_BLOCK_SIZE, alibi_slopes=None):
        return _attention.attention(self._conv, q, k, v, causal, scale, return_lse, block_size=block_size, alibi_slopes=alibi_slopes)

    def merge_attention(self, outputs, lses):
        return _attention.merge_attention(self._conv, outputs, lses)

    # ------------------------------------------------------------------ Dual Chunk Attention

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
        return _dca.dca_attention(
            self._conv,
            q,
            k,
            v,
            inv_freq,
            chunk_size,
            local_size,
            scale,
            pairing=pairing,
            attention_factor=attention_factor,
            temperature=temperature,
            max_position_embeddings=max_position_embeddings,
            original_max_position_embeddings=original_max_position_embeddings,
            seq_len=seq_len,
            key_write_lengths=key_write_lengths,
            pi_factor=pi_factor,
            form=form,
            return_lse=return_lse,
        )

    # ------------------------------------------------------------------ sparse attention

    def vertical_slash_indices(self, q, k, vertical_size, slash_size, last_q=64, *, scale=None, force_verticals=30, force_slashes=100):
        return _sparse.vertical_slash_indices(
            self._conv, q, k, vertical_size, slash_size, last_q, scale=scale, force_verticals=force_verticals, force_slashes=force_slashes
        )

    def convert_vertical_slash_indexes(self, q_len, kv_len, vertical_idx, slash_idx, block_size_m=64, block_size_n=64, causal=True):
        return _sparse.convert_vertical_slash_indexes(self._conv, q_len, kv_len, vertical_idx, slash_idx, block_size_m, block_size_n, causal)

    def vertical_slash_mask(self, q_len, kv_len, vertical_idx, slash_idx, mode="exact", causal=True, *, block_size_m=64, block_size_n=64):
        return _sparse.vertical_slash_mask(
            self._conv, q_len, kv_len, vertical_idx, slash_idx, mode, causal, block_size_m=block_size_m, block_size_n=block_size_n
        )

    def vertical_slash_attention(
        self, q, k, v, vertical_idx, slash_idx, mode="kernel", scale=None, return_lse=False, *, causal=True, block_size_m=64, block_size_n=64
    ):
        return _sparse.vertical_slash_attention(
            self._conv, q, k, v, vertical_idx, slash_idx, mode, scale, return_lse, causal=causal, block_size_m=block_size_m, block_size_n=block_size_n
        )

    def a_shape_attention(self, q, k, v, n_init=128, n_local=3968, scale=None, return_lse=False):
        return _sparse.a_shape_attention(self._conv, q, k, v, n_init, n_local, scale, return_lse)

    def tri_shape_attention(self, q, k, v, n_init=128, n_local=3968, n_last=100, scale=None, return_lse=False):
        return _sparse.tri_shape_attention(self._conv, q, k, v, n_init, n_local, n_last, scale, return_lse)

    # ------------------------------------------------------------------ the Qwen2.5-1M pipeline's bookkeeping

    def split_sparse_parts(self, verticals, slashes, begin, end, chunk_start, chunk_len):
        return _prefill.split_sparse_parts(self._conv, verticals, slashes, begin, end, chunk_start, chunk_len)
