"""yarnref's CuPy backend: the spec's operations on an NVIDIA GPU.

Select it with ``yarnref.set_backend("cupy")`` (or ``use_backend``); it needs
CuPy (``cupy-cuda12x`` or ``cupy-cuda13x``) and a working CUDA device.
Importing this package does not import CuPy: :meth:`CupyBackend.is_available`
and the constructor do.

Modules, one concept each: :mod:`._device` (arrays in = arrays out, device
checks, DLPack), :mod:`._arrays` (dtypes, bfloat16 rounding), :mod:`.kernels`
(which fused kernels run: yarnref's Triton kernels on CuPy arrays, or NVRTC;
``YARNREF_CUPY_KERNELS``), :mod:`.flash` (the NVRTC attention kernel
``flash_attention.cu``, float16/bfloat16), :mod:`.rope`, :mod:`.attention`
(the blocked softmax core, the fused dispatch and the LSE merge),
:mod:`.dca`, :mod:`.sparse` (vertical-slash, A-shape, tri-shape) with the
CUDA kernel ``vertical_slash_index.cu``.
"""

from ._backend import CupyBackend

__all__ = ["CupyBackend"]
