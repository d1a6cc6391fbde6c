"""Run the lessons: read a jupytext percent-format source, execute it, keep the executed notebook.

The lessons' sources are the ``lessons/NN_name.py`` files (jupytext percent
format: ``# %%`` starts a code cell, ``# %% [markdown]`` a text cell).  This
module is shared by the test suite (``tests/test_lessons.py``), which executes
every lesson, and by the documentation site (``docs/hooks.py``), which shows
the executed notebooks with their outputs and figures.  A lesson executed by
the tests is stored in ``build/lessons/NN_name.ipynb`` with the SHA-256 of its
source, and the site reuses it while the source is unchanged, so a CI run
executes each lesson once.

Usage::

    python lessons/_execute.py              # execute every lesson into build/lessons/
    python lessons/_execute.py 03 05        # only the lessons whose names start so
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

LESSONS_DIR = Path(__file__).resolve().parent
REPO = LESSONS_DIR.parent
EXECUTED_DIR = REPO / "build" / "lessons"


def lesson_paths() -> list[Path]:
    """Every lesson source, in course order (``NN_name.py``)."""
    return sorted(LESSONS_DIR.glob("[0-9][0-9]_*.py"))


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_lesson(path: Path):
    """The lesson at ``path`` as an (unexecuted) nbformat notebook."""
    import jupytext

    nb = jupytext.read(path, fmt="py:percent")
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    return nb


def kernel_env() -> dict[str, str]:
    """The kernel's environment: this checkout importable, one BLAS thread (CI has two cores)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(REPO / "backends"), env.get("PYTHONPATH", "")) if p)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def execute_lesson(path: Path, *, preflight: str | None = None, timeout: int = 300):
    """Execute the lesson at ``path`` in a fresh ``python3`` kernel started in ``lessons/``.

    ``preflight``: code run first, in a cell removed again before the notebook is
    returned.  Raises ``nbclient.exceptions.CellExecutionError`` on the first
    failing cell (an exception or a failing ``assert``).  The returned notebook
    carries the source digest in ``metadata.yarnref.source_sha256``.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = read_lesson(path)
    if preflight:
        nb.cells.insert(0, nbformat.v4.new_code_cell(preflight, id="preflight"))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=kernel_env())
    if preflight:
        nb.cells.pop(0)
    nb.metadata["yarnref"] = {"source_sha256": source_digest(path)}
    return nb


def store_executed(path: Path, nb) -> Path:
    """Write an executed notebook to ``build/lessons/<name>.ipynb``; return that path."""
    import nbformat

    EXECUTED_DIR.mkdir(parents=True, exist_ok=True)
    out = EXECUTED_DIR / (path.stem + ".ipynb")
    nbformat.write(nb, out)
    return out


def executed_notebook(path: Path) -> Path:
    """The executed notebook of a lesson: the stored one if its source is unchanged, else executed now."""
    import nbformat

    out = EXECUTED_DIR / (path.stem + ".ipynb")
    if out.is_file():
        stored = nbformat.read(out, as_version=4)
        if stored.metadata.get("yarnref", {}).get("source_sha256") == source_digest(path):
            return out
    return store_executed(path, execute_lesson(path))


if __name__ == "__main__":
    prefixes = sys.argv[1:]
    for lesson in lesson_paths():
        if not prefixes or any(lesson.name.startswith(p) for p in prefixes):
            print("executed", store_executed(lesson, execute_lesson(lesson)), flush=True)
