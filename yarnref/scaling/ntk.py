r"""NTK-aware scaling (static) and dynamic NTK scaling.

Sources: bloc97, "NTK-Aware Scaled RoPE" (r/LocalLLaMA, 2023) and emozilla,
"Dynamically Scaled RoPE" (r/LocalLLaMA, 2023); written up as equations in the
YaRN paper, Peng, Quesnelle, Fan, Shippole, "YaRN: Efficient Context Window
Extension of Large Language Models", arXiv:2309.00071 (section 3.1, Definition
1, Appendix A.1 and section 3.3).

Equations:

* YaRN Def. 1 / Eq. (16) (NTK-aware interpolation): keep the positions, change
  the base ``b`` so that the *slowest* pair ``i = r/2 - 1`` is interpolated by
  exactly ``s`` while the fastest pair ``i = 0`` is untouched:

  .. math::  b' = b \cdot s^{\frac{r}{r-2}}, \qquad \theta'_i = b'^{-2i/r}, \qquad m_{att} = 1.

  (Check: :math:`\theta'_{r/2-1} = b^{-(r-2)/r} s^{-1} = \theta_{r/2-1}/s`.)
* YaRN section 3.3 (dynamic scaling): at inference time, with ``L`` the
  trained length and ``\ell`` the current length, use :math:`s = \max(1, \ell/L)`.
  transformers' ``_compute_dynamic_ntk_parameters`` generalises this with the
  config's ``factor`` acting as a *slope* ``s``:

  .. math::  b' = b \cdot \left(\frac{s\,\ell}{L} - (s - 1)\right)^{\frac{r}{r-2}},
             \qquad \ell = \max(\mathrm{seq\_len}, L),

  with ``L = max_position_embeddings`` (not ``original_max_position_embeddings``).
  At ``ell = L`` nothing changes; with ``s = 1`` the NTK ratio is exactly
  ``ell / L``, the paper's rule.

Conventions
-----------
* ``rotary_dim`` is ``r`` (the exponent denominator), which must be at least 4
  here because of the ``r / (r - 2)`` exponent.
* :func:`dynamic_ntk_frequencies` is a **pure** function of ``seq_len``.  Real
  stacks are not: transformers' ``dynamic_rope_update`` keeps a cache that
  grows with the longest sequence seen and resets only below the trained
  length, so the frequencies for a given length depend on what ran before.
  :class:`DynamicNTKCache` reproduces that state machine (and, with
  ``reset=False``, the YaRN authors' grow-only cache).  Neither recomputes
  keys already in a KV cache: the paper (section 3.3) asks for caching keys
  *before* RoPE, which no mainstream stack does (transformers#25104).
* vLLM's ``"dynamic"`` is static: :func:`vllm_dynamic_ntk_frequencies`.
  vLLM's ``"ntk"`` type ("fixed NTK", kexue.fm/archives/9706) is a different
  formula, offered as ``ntk_frequencies(..., variant="vllm_fixed")``.
* float64 throughout; ``inv_freq`` has shape ``(r/2,)``; ``m_att = 1``.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np

from ..errors import InputError
from ..rope import base_inv_freq
from .linear import _real

__all__ = [
    "NTK_VARIANTS",
    "ntk_aware_base",
    "ntk_frequencies",
    "dynamic_ntk_base",
    "dynamic_ntk_frequencies",
    "vllm_dynamic_ntk_frequencies",
    "DynamicNTKCache",
]

#: ``variant`` values of :func:`ntk_frequencies`.
NTK_VARIANTS = ("base_change", "vllm_fixed", "vllm_mixed")


def _ntk_rotary_dim(rotary_dim) -> int:
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, Integral) or rotary_dim < 4 or rotary_dim % 2:
        raise InputError("rotary_dim", rotary_dim, "an even integer >= 4 (NTK scaling uses the exponent r / (r - 2))")
    return int(rotary_dim)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise InputError(name, value, "a positive integer")
    return int(value)


def ntk_aware_base(base: float, factor: float, rotary_dim: int) -> float:
    r"""Def. 1: the NTK-aware base :math:`b' = b \cdot s^{r/(r-2)}`."""
    r = _ntk_rotary_dim(rotary_dim)
    b = _real("base", base, minimum=1.0, strict=True)
    s = _real("factor", factor, minimum=0.0, strict=True)
    return b * s ** (r / (r - 2))


def ntk_frequencies(
    rotary_dim: int,
    base: float,
    factor: float,
    *,
    variant: str = "base_change",
    mixed_b: float | None = None,
) -> tuple[np.ndarray, float]:
    r"""Static NTK-aware frequencies, shape ``(r/2,)``, and ``m_att = 1.0``.

    ``variant``:

    * ``"base_change"`` (default, YaRN Def. 1): :math:`\theta'_i = (b s^{r/(r-2)})^{-2i/r}`;
      pair 0 unchanged, pair ``r/2 - 1`` divided by exactly ``s``.
    * ``"vllm_fixed"`` (vLLM ``NTKScalingRotaryEmbedding``, "fixed NTK"): base
      ``b s``, then every frequency divided by ``s^(2/r)``:
      :math:`\theta'_i = \theta_i\, s^{-(2i+2)/r}`, so even pair 0 is scaled
      (by ``s^(-2/r)``) and the last pair by exactly ``s``.
    * ``"vllm_mixed"`` (same class with ``mixed_b``):
      :math:`\theta'_i = \theta_i / \exp(a (i+1)^{\beta})`,
      :math:`a = \ln s / (r/2)^{\beta}`, ``beta = mixed_b``.
    """
    if not isinstance(variant, str) or variant not in NTK_VARIANTS:
        raise InputError("variant", variant, f"one of {NTK_VARIANTS}")
    r = _ntk_rotary_dim(rotary_dim)
    s = _real("factor", factor, minimum=0.0, strict=True)
    if variant == "base_change":
        return base_inv_freq(r, ntk_aware_base(base, s, r)), 1.0
    theta = base_inv_freq(r, base)  # (r/2,)
    pair = np.arange(r // 2, dtype=np.float64)  # i = 0 .. r/2-1
    if variant == "vllm_fixed":
        if mixed_b is not None:
            raise InputError("mixed_b", mixed_b, "None with variant='vllm_fixed' (use variant='vllm_mixed')")
        return theta * s ** (-(2.0 * pair + 2.0) / r), 1.0
    beta = _real("mixed_b", mixed_b, minimum=0.0, strict=True)
    a = math.log(s) / (r / 2) ** beta
    return theta / np.exp(a * (pair + 1.0) ** beta), 1.0


def dynamic_ntk_base(base: float, factor: float, rotary_dim: int, max_position_embeddings: int, seq_len: int | None = None) -> float:
    r"""transformers' dynamic base :math:`b (s\ell/L - (s-1))^{r/(r-2)}`, :math:`\ell = \max(\mathrm{seq\_len}, L)`.

    ``seq_len=None`` means ``ell = L`` (what transformers uses at init), which
    gives back ``b``.
    """
    r = _ntk_rotary_dim(rotary_dim)
    b = _real("base", base, minimum=1.0, strict=True)
    s = _real("factor", factor, minimum=0.0, strict=True)
    trained = _positive_int("max_position_embeddings", max_position_embeddings)
    current = trained if seq_len is None else max(_positive_int("seq_len", seq_len), trained)  # ell
    # Same order of operations as transformers: base * ((s * ell / L) - (s - 1)) ** (r / (r - 2)).
    return b * ((s * current / trained) - (s - 1)) ** (r / (r - 2))


def dynamic_ntk_frequencies(
    rotary_dim: int,
    base: float,
    factor: float,
    max_position_embeddings: int,
    seq_len: int | None = None,
) -> tuple[np.ndarray, float]:
    """Dynamic NTK frequencies at ``seq_len`` exactly as transformers' ``_compute_dynamic_ntk_parameters``.

    A pure function: the frequencies transformers uses for a sequence of
    ``seq_len`` tokens *when its cache was last grown at that length* (see
    :class:`DynamicNTKCache` for the history dependence).  Returns
    ``(inv_freq (r/2,), 1.0)``.
    """
    new_base = dynamic_ntk_base(base, factor, rotary_dim, max_position_embeddings, seq_len)
    return base_inv_freq(rotary_dim, new_base), 1.0


def vllm_dynamic_ntk_frequencies(
    rotary_dim: int,
    base: float,
    factor: float,
    max_position: int,
    max_trained_positions: int | None = None,
) -> tuple[np.ndarray, float]:
    """vLLM's ``"dynamic"`` with a ``factor``: the dynamic formula evaluated once, at load.

    vLLM (``DynamicNTKScalingRotaryEmbedding``) takes ``ell = max_position``
    (the config's ``max_position_embeddings``) and
    ``L = rope_parameters.get("max_trained_positions", max_position)``; so
    without ``max_trained_positions`` the base is unchanged and this is plain
    RoPE (vllm#3488, #5093).  The frequencies do not change with the length.
    """
    current = _positive_int("max_position", max_position)
    trained = current if max_trained_positions is None else _positive_int("max_trained_positions", max_trained_positions)
    r = _ntk_rotary_dim(rotary_dim)
    b = _real("base", base, minimum=1.0, strict=True)
    s = _real("factor", factor, minimum=0.0, strict=True)
    new_base = b * ((s * current / trained) - (s - 1)) ** (r / (r - 2))
    return base_inv_freq(r, new_base), 1.0


class DynamicNTKCache:
    """The stateful cache transformers' ``dynamic_rope_update`` keeps for ``rope_type="dynamic"``.

    transformers calls the update with ``seq_len = max(position_ids) + 1`` on
    every forward:

    * **grow**: if ``seq_len > max_seq_len_cached``, recompute the frequencies
      at ``seq_len`` and set ``max_seq_len_cached = seq_len``;
    * **reset**: if ``seq_len < original_max_seq_len`` (the config's
      ``max_position_embeddings``) and the cache had grown past it, restore
      the original frequencies (the attention factor is not reset; it is 1
      for dynamic NTK anyway).

    For ``L <= seq_len <= max_seq_len_cached`` nothing changes, so the result
    depends on the longest sequence seen before: after a 16k request a 9k
    request uses the 16k base, while a fresh model would use the 9k base.
    ``reset=False`` gives the YaRN authors' grow-only cache
    (``LlamaDynamicScaledRotaryEmbedding``), which never goes back.

    Example::

        cache = DynamicNTKCache(128, 10000.0, 2.0, 4096)
        f16k, _ = cache.update(16384)
        f9k, _ = cache.update(9000)        # == f16k: no change below the cached length
        f9k_fresh, _ = dynamic_ntk_frequencies(128, 10000.0, 2.0, 4096, 9000)  # != f9k
    """

    def __init__(self, rotary_dim: int, base: float, factor: float, max_position_embeddings: int, *, reset: bool = True):
        self.rotary_dim, self.base, self.factor = rotary_dim, base, factor
        self.original_max_seq_len = _positive_int("max_position_embeddings", max_position_embeddings)
        self.reset = bool(reset)
        self.original_inv_freq, self.attention_scaling = dynamic_ntk_frequencies(
            rotary_dim, base, factor, self.original_max_seq_len, None
        )
        self.inv_freq = self.original_inv_freq
        self.max_seq_len_cached = self.original_max_seq_len

    def update(self, seq_len: int) -> tuple[np.ndarray, float]:
        """Apply one forward's update for ``seq_len = max(position_ids) + 1``; return the frequencies in use."""
        seq_len = _positive_int("seq_len", seq_len)
        cached = self.max_seq_len_cached  # read before growing, as transformers does
        if seq_len > cached:  # grow
            self.inv_freq, self.attention_scaling = dynamic_ntk_frequencies(
                self.rotary_dim, self.base, self.factor, self.original_max_seq_len, seq_len
            )
            self.max_seq_len_cached = seq_len
        if self.reset and seq_len < self.original_max_seq_len and cached > self.original_max_seq_len:  # reset
            self.inv_freq = self.original_inv_freq
            self.max_seq_len_cached = self.original_max_seq_len
        return self.inv_freq.copy(), float(self.attention_scaling)

    __call__ = update
