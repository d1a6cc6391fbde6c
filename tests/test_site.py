"""The documentation site builds in strict mode: no broken link, anchor or reference.

``mkdocs build --strict`` with the repository's ``mkdocs.yml``: the guide
pages, the API reference rendered by mkdocstrings from the docstrings, and
every lesson with its outputs (the executed notebooks that
``tests/test_lessons.py`` leaves in ``build/lessons/``; a lesson not executed
yet is executed here, once).  Skipped when the ``docs`` extra is not
installed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

for _module in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter", "jupytext", "nbclient"):
    try:
        _found = importlib.util.find_spec(_module) is not None
    except ModuleNotFoundError:
        _found = False
    if not _found:
        pytest.skip(f"{_module} is not installed (pip install 'yarnref[docs]')", allow_module_level=True)


def test_site_builds_in_strict_mode(tmp_path, monkeypatch):
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    site = tmp_path / "site"
    config = load_config(str(ROOT / "mkdocs.yml"), site_dir=str(site), strict=True)
    build(config)  # raises mkdocs.exceptions.Abort on any warning in strict mode
    assert (site / "index.html").is_file()
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="yarnref.alibi.alibi_slopes"' in api and 'id="yarnref.softmax_attention.attention"' in api
    lessons = sorted(p.stem for p in (ROOT / "lessons").glob("[0-9][0-9]_*.py"))
    for name in lessons:
        page = (site / "lessons" / name / "index.html").read_text(encoding="utf-8")
        assert "image/png" in page or "data:image/png" in page, f"{name}: the page shows no figure"
