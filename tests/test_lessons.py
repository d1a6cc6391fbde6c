"""Execute every lesson in ``lessons/`` and fail on any cell error or failing check.

The lessons' sources are jupytext percent-format files, ``lessons/NN_name.py``
(one per lesson, read and executed through ``lessons/_execute.py``).  Each
lesson's check cells ``assert`` real properties (scores depend only on m - n,
every scaling method is RoPE at factor 1, DCA equals RoPE attention on short
inputs, ...), so a lesson that runs is a lesson whose claims hold for the
current code.

The kernel is ipykernel's ``python3`` launched with the interpreter running
pytest, from the ``lessons/`` folder as Jupyter would.  A first cell, injected
here and removed afterwards, asserts that the kernel is this interpreter and
imports this checkout's ``yarnref``.  Each executed notebook is kept in
``build/lessons/`` for the documentation site (``tests/test_site.py``), so the
lessons run once per test session.

The suite is skipped when jupytext, nbclient, nbformat, ipykernel or
matplotlib are missing (``pip install -e '.[lessons]'``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LESSONS_DIR = REPO / "lessons"

for _module in ("jupytext", "nbclient", "nbformat", "ipykernel", "matplotlib"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not installed (pip install -e '.[lessons]')", allow_module_level=True)

from nbclient.exceptions import CellExecutionError  # noqa: E402

sys.path.insert(0, str(LESSONS_DIR))
import _execute  # noqa: E402

sys.path.remove(str(LESSONS_DIR))

LESSONS = [p.name for p in _execute.lesson_paths()]

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


def test_lessons_exist_in_course_order():
    assert LESSONS, f"no lessons found in {LESSONS_DIR}"
    assert LESSONS[0] == "01_rope.py"
    numbers = [int(name[:2]) for name in LESSONS]
    assert len(set(numbers)) == len(numbers), f"two lessons share a number: {LESSONS}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_source_has_the_parts_of_a_lesson(lesson):
    """A title, the equations, a check cell that asserts, a figure, an exercise; yarnref's math, not its own."""
    nb = _execute.read_lesson(LESSONS_DIR / lesson)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert markdown.lstrip().startswith(f"# Lesson {int(lesson[:2])}:"), "the first cell is the lesson's title"
    assert "$$" in markdown, "the equations"
    assert "## Exercise" in markdown, "an exercise"
    assert any(line.lstrip().startswith("assert ") for line in code.splitlines()), "a check cell that asserts"
    assert "import yarnref" in code, "the lesson calls yarnref"
    assert "sys.path" not in code, "lessons must not edit sys.path"


@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_executes(lesson):
    path = LESSONS_DIR / lesson
    try:
        nb = _execute.execute_lesson(path, preflight=_PREFLIGHT)
    except CellExecutionError as exc:  # keep the report short: the failing cell and its traceback
        pytest.fail(f"{lesson} failed:\n{exc}", pytrace=False)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells), "every code cell ran"
    images = sum("image/png" in o.get("data", {}) for c in code_cells for o in c.outputs)
    assert images >= 1, f"{lesson} drew no figure"
    _execute.store_executed(path, nb)  # for the documentation site
