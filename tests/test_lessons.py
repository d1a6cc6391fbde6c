"""Execute every Jupyter lesson in ``lessons/`` and fail on any cell error.

Each lesson's check cells ``assert`` real properties (scores depend only on
m - n, every scaling method is RoPE at factor 1, DCA equals RoPE attention on
short inputs, ...), so a lesson that runs is a lesson whose claims hold for the
current code.

The kernel is ipykernel's ``python3`` launched with the interpreter running
pytest (jupyter_client substitutes ``sys.executable`` for a kernelspec's
``python``), from the ``lessons/`` folder as Jupyter would, so a lesson
cannot lean on the repository root being the working directory.  A first
cell, injected here and not stored in the notebooks, asserts that the kernel
is this interpreter and imports this checkout's ``yarnref``.  The repository
root is put on the kernel's ``PYTHONPATH`` so an uninstalled checkout works
too; after ``pip install -e .`` that entry is redundant.

The suite is skipped when nbclient, nbformat, ipykernel or matplotlib are
missing (``pip install -e '.[lessons]'``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LESSONS_DIR = REPO / "lessons"

for _module in ("nbclient", "nbformat", "ipykernel", "matplotlib"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not installed (pip install -e '.[lessons]')", allow_module_level=True)

import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402

LESSONS = sorted(p.name for p in LESSONS_DIR.glob("[0-9][0-9]_*.ipynb"))

# Asserts that the kernel runs this interpreter and imports this checkout's yarnref, and makes a
# RuntimeWarning raised in yarnref an error, as pytest does for the rest of the suite (pyproject.toml).
_PREFLIGHT = f"""
import os, sys, warnings
assert os.path.realpath(sys.executable) == {os.path.realpath(sys.executable)!r}, sys.executable
import yarnref
assert os.path.realpath(yarnref.__file__).startswith({str(REPO / "yarnref") + os.sep!r}), yarnref.__file__
warnings.filterwarnings("error", category=RuntimeWarning, module="yarnref")
del os, sys, warnings
"""


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    # Keep the 2-core CI machine responsive: one BLAS thread per kernel.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def execute_lesson(path: Path, *, timeout: int = 120) -> nbformat.NotebookNode:
    """Run every cell of the lesson at ``path``; raise ``CellExecutionError`` on the first error."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_PREFLIGHT, id="preflight"))
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=_kernel_env())
    return nb


def test_lessons_exist():
    assert LESSONS, f"no lessons found in {LESSONS_DIR}"
    assert LESSONS[0] == "01_rope.ipynb"


def test_notebooks_match_their_source():
    """The stored notebooks are exactly what ``lessons/_build.py`` generates, with no outputs."""
    spec = importlib.util.spec_from_file_location("_lessons_build", LESSONS_DIR / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert sorted(build.LESSONS) == LESSONS, "a notebook exists without a source in _build.py, or the reverse"
    for name, cells in build.LESSONS.items():
        stored = (LESSONS_DIR / name).read_text(encoding="utf-8")
        assert stored == build.render(name, cells), f"{name} is stale: run python lessons/_build.py"
        nb = nbformat.reads(stored, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name} is stored with outputs"
                assert "sys.path" not in cell.source, f"{name}: lessons must not edit sys.path"


@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_executes(lesson):
    try:
        nb = execute_lesson(LESSONS_DIR / lesson)
    except CellExecutionError as exc:  # keep the report short: the failing cell and its traceback
        pytest.fail(f"{lesson} failed:\n{exc}", pytrace=False)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells), "every code cell ran"
    images = sum("image/png" in o.get("data", {}) for c in code_cells for o in c.outputs)
    assert images >= 1, f"{lesson} drew no figure"


if __name__ == "__main__":  # python tests/test_lessons.py OUTDIR: execute and keep the outputs, to look at them
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "executed-lessons")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[2:] or LESSONS:
        nbformat.write(execute_lesson(LESSONS_DIR / name), out_dir / name)
        print("executed", out_dir / name)
