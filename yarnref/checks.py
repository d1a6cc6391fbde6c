"""Argument checks shared by the spec modules and the backends.

Each check returns the value as a plain Python number, or raises
:class:`~yarnref.errors.InputError` naming the parameter, the value and what is
allowed.  Booleans are not integers here (``True`` is not a size), and NumPy
scalars are accepted wherever Python numbers are.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError

__all__ = ["is_int", "is_real", "check_int", "check_bool", "check_positive_real", "check_scale", "default_scale"]


def is_int(x) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_real(x) -> bool:
    """A real number (Python or NumPy int/float), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer ``>= minimum``."""
    if not is_int(value) or value < minimum:
        raise InputError(name, value, f"an integer >= {minimum}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """``value`` if it is True or False (NumPy bools included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(name, value, "True or False")
    return bool(value)


def check_positive_real(name: str, value) -> float:
    """``value`` as a float if it is a finite number > 0."""
    if not is_real(value) or not (math.isfinite(float(value)) and float(value) > 0):
        raise InputError(name, value, "a finite number > 0")
    return float(value)


def default_scale(head_dim: int) -> float:
    """``1 / sqrt(head_dim)``, the softmax scale of scaled dot-product attention."""
    return 1.0 / math.sqrt(head_dim)


def check_scale(scale, head_dim: int) -> float:
    """The softmax scale: ``1/sqrt(head_dim)`` for None, else a finite number > 0."""
    if scale is None:
        return default_scale(head_dim)
    if not is_real(scale) or not (math.isfinite(float(scale)) and float(scale) > 0):
        raise InputError("scale", scale, "None or a finite number > 0")
    return float(scale)
