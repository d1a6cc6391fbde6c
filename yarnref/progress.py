"""Progress reports for the spec's long loops.

The float64 spec is written to be read, not to be fast: on a CPU, attention
or DCA over tens of thousands of tokens takes minutes (see the CPU costs in
the guide's backends page).  Inside ``with yarnref.show_progress():`` those
calls report how far they are::

    with yarnref.show_progress():                  # a tqdm bar, if tqdm is installed
        out = yarnref.dca_attention(q, k, v, inv_freq, 8192, 512)

    with yarnref.show_progress(lambda done, total, what: print(what, done, "/", total)):
        out = yarnref.attention(q, k, v)            # a callback instead

What reports: the query-block loop of :func:`yarnref.softmax_attention.attention`,
both forms of :func:`yarnref.dca.dca_attention`, the row loops of the
sparse attentions (:mod:`yarnref.sparse`) and the chunks of
:func:`yarnref.prefill.chunked_prefill`.  Only the outermost of nested loops
reports (a chunked prefill counts its chunks, not the attention blocks inside
each), so one call gives one bar.

Conventions
-----------
* Off by default, and silent without tqdm unless a callback is given.
* A :class:`contextvars.ContextVar` holds the setting, so threads and asyncio
  tasks do not see each other's (as :func:`yarnref.use_backend`).
* The spec only: the GPU backends are fast enough not to need it.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterable, Iterator, TypeVar

from .errors import InputError

__all__ = ["show_progress", "progress_iter"]

#: None: off.  Otherwise the callback, or "tqdm".
_REPORTER: contextvars.ContextVar = contextvars.ContextVar("yarnref_progress", default=None)
#: True while a loop reports, so that the loops inside it stay silent.
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("yarnref_progress_active", default=False)


@contextlib.contextmanager
def show_progress(callback: Callable[[int, int, str], None] | None = None) -> Iterator[None]:
    """Report the progress of the long spec calls made inside the ``with`` block.

    ``callback``: None for a tqdm bar per call (nothing if tqdm is not
    installed), or a function called after every step as
    ``callback(done, total, what)``, ``what`` naming the loop (``"attention"``,
    ``"dca_attention"``, ...).
    """
    if callback is not None and not callable(callback):
        raise InputError("callback", callback, "None or a function callback(done, total, what)")
    token = _REPORTER.set("tqdm" if callback is None else callback)
    try:
        yield
    finally:
        _REPORTER.reset(token)


def _tqdm_reporter(total: int, what: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=f"yarnref {what}", leave=False)


T = TypeVar("T")


def progress_iter(steps: Iterable[T], what: str) -> Iterator[T]:
    """The items of ``steps`` (a sized iterable: a range, a list), one step of a spec loop each.

    A step counts as done when the loop asks for the next item, so ``continue``
    counts too.  Reports only inside :func:`show_progress`, and only for the
    outermost such loop.
    """
    with _progress_steps(len(steps), what) as tick:
        for item in steps:
            yield item
            tick()


@contextlib.contextmanager
def _progress_steps(total: int, what: str) -> Iterator[Callable[[], None]]:
    """A ``tick()`` to call after each of ``total`` steps; a no-op unless this loop reports."""
    reporter = _REPORTER.get()
    if reporter is None or _ACTIVE.get() or total < 1:
        yield lambda: None
        return
    active = _ACTIVE.set(True)
    bar = _tqdm_reporter(total, what) if reporter == "tqdm" else None
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if bar is not None:
            bar.update(1)
        elif callable(reporter):
            reporter(done, total, what)

    try:
        yield tick
    finally:
        if bar is not None:
            bar.close()
        _ACTIVE.reset(active)
