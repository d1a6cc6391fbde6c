"""The errors yarnref raises.

Every error names the parameter (or config key), the value it got and what is
allowed, so that a user reading a traceback knows what to change.  All of them
derive from :class:`YarnrefError`; the ones about bad input are also
``ValueError`` (or ``TypeError``) so that generic handlers still catch them.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "YarnrefError",
    "ConfigError",
    "InputError",
    "BackendError",
    "UnknownBackendError",
    "BackendWarning",
    "DeviceMismatchError",
]


class YarnrefError(Exception):
    """Base class of every error raised by yarnref on purpose."""


def _describe(name: str, value: Any, allowed: str, context: str | None) -> str:
    where = f"{context}: " if context else ""
    return f"{where}{name}={value!r} is not allowed; expected {allowed}"


class ConfigError(YarnrefError, ValueError):
    """A model config (a config.json-shaped dict) is invalid.

    Attributes: ``key`` (the config key, dotted for nested keys such as
    ``rope_scaling.factor``), ``value`` and ``allowed`` (a phrase).
    """

    def __init__(self, key: str, value: Any, allowed: str, context: str | None = None):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(_describe(key, value, allowed, context))


class InputError(YarnrefError, ValueError):
    """A function argument (an array's shape, a size, an option) is invalid.

    Attributes: ``param``, ``value`` and ``allowed``.
    """

    def __init__(self, param: str, value: Any, allowed: str, context: str | None = None):
        self.param, self.value, self.allowed = param, value, allowed
        super().__init__(_describe(param, value, allowed, context))


class BackendError(YarnrefError, RuntimeError):
    """A backend was asked for that is unknown or cannot run here."""


class UnknownBackendError(BackendError, LookupError):
    """A backend name that no plugin registers (also a ``LookupError``, as unknown names are elsewhere)."""


class BackendWarning(UserWarning):
    """A backend was found another way than asked (a broken entry point fell back to the built-in one)."""


class DeviceMismatchError(YarnrefError, ValueError):
    """Arrays on different devices, or of a kind the backend will not convert silently."""
