"""MkDocs hooks of the yarnref site: the course pages and the list of public names.

* **The course.**  Every lesson source ``lessons/NN_name.py`` becomes the page
  ``lessons/NN_name`` with its outputs and figures: the executed notebook in
  ``build/lessons/`` (written by ``tests/test_lessons.py`` or
  ``python lessons/_execute.py``) if it matches the source, else the lesson is
  executed now, once.  mkdocs-jupyter renders the notebooks (``execute:
  false``: nothing runs twice).  The lessons are added to the navigation in
  course order under "Course", titled by their first heading.
* **The API page.**  ``docs/api.md`` holds one mkdocstrings ``:::`` block per
  module; the marker ``<!-- yarnref-public-names -->`` is replaced by a table
  of every name in ``yarnref.__all__`` linking to the entry of the module that
  defines it.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))
from griffe_rst import rst_to_markdown  # noqa: E402  (the docstrings' reST roles, as on the API entries)

sys.path.remove(str(ROOT / "docs"))
PUBLIC_NAMES_MARKER = "<!-- yarnref-public-names -->"


def _lessons_module():
    sys.path.insert(0, str(ROOT / "lessons"))
    try:
        import _execute
    finally:
        sys.path.remove(str(ROOT / "lessons"))
    return _execute


def _title(path: Path) -> str:
    """The lesson's first heading without the '#' (``Lesson 1: RoPE, ...``)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# # "):
            return line[4:].strip()
    return path.stem


def on_config(config):
    execute = _lessons_module()
    course = [{_title(p): f"lessons/{p.stem}.ipynb"} for p in execute.lesson_paths()]
    nav = [item for item in (config.nav or []) if not (isinstance(item, dict) and "Course" in item)]
    guide_at = 1 if nav else 0
    nav.insert(guide_at, {"Course": course})
    config.nav = nav
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into notebook pages
def on_files(files, config):
    execute = _lessons_module()
    for lesson in execute.lesson_paths():
        notebook = execute.executed_notebook(lesson)
        files.append(
            File(
                f"lessons/{notebook.name}",
                src_dir=str(notebook.parent.parent),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


def _api_modules(markdown: str) -> list[str]:
    return re.findall(r"^::: ([\w.]+)\s*$", markdown, flags=re.M)


def _public_names_table(modules: list[str]) -> str:
    """A table of ``yarnref.__all__``: each name, linked to its entry under the module that defines it."""
    import yarnref

    rows = ["| name | documented in | summary |", "|---|---|---|"]
    for name in yarnref.__all__:
        obj = getattr(yarnref, name)
        spec = getattr(obj, "__wrapped__", obj)  # a dispatching function: the spec function it wraps
        if inspect.ismodule(spec):
            module, anchor = spec.__name__, spec.__name__
        elif inspect.isfunction(spec) or inspect.isclass(spec):
            module, anchor = spec.__module__, f"{spec.__module__}.{spec.__name__}"
        else:  # a constant: the listed module that exports it
            module = next(m for m in modules if name in getattr(importlib.import_module(m), "__all__", ()))
            anchor = f"{module}.{name}"
        summary = (inspect.getdoc(spec) or "").split("\n\n")[0] if not isinstance(spec, (dict, list, str)) else ""
        summary = rst_to_markdown(" ".join(summary.split())).replace("|", "\\|")
        rows.append(f"| [`{name}`](#{anchor}) | `{module}` | {summary} |")
    return "\n".join(rows)


# A fence's run options (```python skip, ```python requires=torch), read by tests/test_docs.py, are
# not Markdown: the site shows the block as plain Python.
_FENCE_OPTIONS = re.compile(r"^(\s*`{3,}\s*[A-Za-z]+)[ \t]+[^{`\n]*$", re.M)


def on_page_markdown(markdown, page, config, files):
    markdown = _FENCE_OPTIONS.sub(r"\1", markdown)
    if PUBLIC_NAMES_MARKER in markdown:
        markdown = markdown.replace(PUBLIC_NAMES_MARKER, _public_names_table(_api_modules(markdown)))
    return markdown
