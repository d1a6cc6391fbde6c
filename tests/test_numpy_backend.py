"""The NumPy backend refuses other libraries' arrays instead of converting them silently."""

import numpy as np
import pytest

import yarnref
from yarnref.errors import DeviceMismatchError


def test_a_torch_tensor_is_refused_by_name():
    torch = pytest.importorskip("torch")
    x = np.zeros((1, 1, 2, 4))
    with yarnref.use_backend("numpy"):
        with pytest.raises(DeviceMismatchError, match="^k: the numpy backend takes NumPy arrays, got torch.Tensor"):
            yarnref.attention(x, torch.zeros(1, 1, 2, 4), x)
        with pytest.raises(DeviceMismatchError, match="^lses:"):
            yarnref.merge_attention([x], [torch.zeros(1, 1, 2)])
        # NumPy arrays, Python lists and scalars pass
        assert yarnref.rope_cos_sin([1.0, 0.5], [0, 1], 1.0)[0].shape == (2, 2)


def test_the_spec_functions_keep_their_signatures():
    import inspect

    from yarnref.backend import OPERATIONS, NumpyBackend, spec_function

    for op in OPERATIONS:
        assert inspect.signature(getattr(NumpyBackend, op)) == inspect.signature(spec_function(op))


def test_frequency_tolerance_is_relative():
    """A 1e-4 relative error in the slowest pair (~1e-7 absolute) must fail; float32 rounding must pass."""
    from yarnref.testing import assert_close, tolerance

    inv, _ = yarnref.rope_frequencies(yarnref.get_preset("llama-3.1-8b"))
    assert tolerance(np.float32, op="frequencies")[1] == 0.0
    assert_close(inv.astype(np.float32), inv, op="frequencies")
    wrong = inv.copy()
    wrong[-1] *= 1 + 1e-4
    with pytest.raises(AssertionError):
        assert_close(wrong.astype(np.float32), inv, op="frequencies")
