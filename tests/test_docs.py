"""The documentation cannot rot: its examples run, its API page matches the code, its links resolve.

* Every fenced code block of the runnable pages (:data:`RUNNABLE_PAGES`) is
  executed, in page order, in one namespace per page, in a temporary working
  directory:

  - a ```` ```python ```` block runs as Python;
  - ```` ```python skip ```` never runs (it is still compiled, so a syntax
    error is caught);
  - ```` ```python requires=torch,transformers ```` runs only where those
    modules import; otherwise it is skipped and the test reports it;
  - a ```` ```bash ```` block whose every command line starts with
    ``yarnref `` runs those commands as ``python -m yarnref ...``; any other
    bash block (installs, GPU scripts) is shown, not run.

* ``docs/api.md`` (rendered by mkdocstrings from the docstrings) lists the
  modules that define every public name; ``tests/test_site.py`` builds the
  site in strict mode.
* Every relative link in ``docs/*.md`` points at a file that exists, and every
  ``api.md#anchor`` at a heading of that page.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUNNABLE_PAGES = ("oracle.md", "backends.md", "conventions.md", "index.md", "stacks.md", "ring.md")
WRITTEN_PAGES = ("index.md", "methods.md", "conventions.md", "oracle.md", "backends.md", "stacks.md", "ring.md", "million-tokens.md", "limits.md", "where-things-live.md")
ALL_PAGES = (*WRITTEN_PAGES, "api.md")

_FENCE = re.compile(r"^(`{3,})(.*)$")


def code_blocks(page: Path) -> list[tuple[int, str, list[str], str]]:
    """``(line, language, options, code)`` of every fenced block of ``page`` (line numbers from 1)."""
    blocks = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i].strip())
        if not match:
            i += 1
            continue
        fence, info = match.group(1), match.group(2).split()
        start = i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        language = info[0] if info else ""
        blocks.append((start, language, info[1:], "\n".join(body) + "\n"))
    return blocks


def _requirements(options: list[str]) -> list[str]:
    needs = []
    for option in options:
        if option.startswith("requires="):
            needs += [name for name in option.removeprefix("requires=").split(",") if name]
    return needs


def _missing(modules: list[str]) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def _yarnref_commands(code: str) -> list[str] | None:
    """The command lines of a bash block if every one of them runs the yarnref command, else None."""
    commands = [line.strip() for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]
    if commands and all(line.startswith("yarnref ") for line in commands):
        return commands
    return None


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_page_examples_run(page, tmp_path, monkeypatch):
    import yarnref

    path = DOCS / page
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.replace('.', '_')}"}
    ran, skipped = 0, []
    try:
        for line, language, options, code in code_blocks(path):
            where = f"{page}:{line}"
            if language == "python":
                compiled = compile(code, where, "exec")  # even a skipped block must be valid Python
                if "skip" in options:
                    continue
                missing = _missing(_requirements(options))
                if missing:
                    skipped.append(f"{where} (needs {', '.join(missing)})")
                    continue
                try:
                    exec(compiled, namespace)
                except Exception as error:
                    raise AssertionError(f"the example at {where} failed: {type(error).__name__}: {error}") from error
                ran += 1
            elif language == "bash":
                commands = _yarnref_commands(code)
                if commands is None or "skip" in options:
                    continue
                for command in commands:
                    argv = [sys.executable, "-m", "yarnref", *shlex.split(command)[1:]]
                    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path,
                                            env={**os.environ, "PYTHONPATH": str(ROOT)})
                    assert result.returncode == 0, f"{where}: `{command}` exited {result.returncode}:\n{result.stderr}"
                ran += 1
    finally:
        yarnref.set_backend("numpy")  # an example may have changed the process-wide default
    assert ran > 0, f"{page} has no runnable example"
    if skipped:
        pytest.skip(f"{page}: ran {ran} blocks; skipped {len(skipped)}: {'; '.join(skipped)}")


def test_readme_example_runs(tmp_path, monkeypatch):
    """The README's Python example runs as written on a CPU-only machine (its GPU part is guarded)."""
    import yarnref

    monkeypatch.chdir(tmp_path)
    blocks = [(line, code) for line, language, _, code in code_blocks(ROOT / "README.md") if language == "python"]
    assert blocks, "README.md has no Python example"
    namespace: dict = {"__name__": "readme"}
    try:
        for line, code in blocks:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
    finally:
        yarnref.set_backend("numpy")
    assert namespace["q_rot"].shape == (1, 32, 8192, 128)


@pytest.mark.parametrize("page", WRITTEN_PAGES)
def test_python_blocks_compile(page):
    """Every Python block of every written page is valid Python, runnable or not (api.md shows signatures)."""
    for line, language, _, code in code_blocks(DOCS / page):
        if language == "python":
            compile(code, f"{page}:{line}", "exec")


def _api_modules() -> list[str]:
    """The modules ``docs/api.md`` documents (its mkdocstrings ``::: module`` lines)."""
    return re.findall(r"^::: ([\w.]+)\s*$", (DOCS / "api.md").read_text(encoding="utf-8"), flags=re.M)


def test_api_page_documents_every_public_name():
    """Each listed module exists, once; every name ``import yarnref`` exports is defined in a listed module."""
    import inspect

    import yarnref

    listed = _api_modules()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    for name in listed:
        importlib.import_module(name)
    for name in yarnref.__all__:
        obj = getattr(yarnref, name)
        obj = getattr(obj, "__wrapped__", obj)  # a dispatching function: the spec function it wraps
        if inspect.ismodule(obj):
            home = {obj.__name__}
        elif inspect.isfunction(obj) or inspect.isclass(obj):
            home = {obj.__module__}
        else:  # a constant: any listed module exporting it
            home = {m for m in listed if name in getattr(importlib.import_module(m), "__all__", ())}
        assert home & set(listed), f"yarnref.{name} is defined in {home}, which docs/api.md does not list"


_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*)$")


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc gives a heading (the site's ids)."""
    text = re.sub(r"[`*\[\]()]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[\s]+", "-", text)


def _api_anchors() -> set[str]:
    """mkdocstrings' ids on the API page: each module, and each name in its ``__all__``."""
    anchors = set()
    for name in _api_modules():
        module = importlib.import_module(name)
        anchors.add(name)
        for member in getattr(module, "__all__", ()):
            anchors.add(f"{name}.{member}")
            obj = getattr(module, member)
            if isinstance(obj, type):
                anchors.update(f"{name}.{member}.{attr}" for attr in vars(obj) if not attr.startswith("_"))
    return anchors


def _anchors(page: Path) -> set[str]:
    if page.name == "api.md":
        return _api_anchors()
    anchors = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        elif not in_code and (match := _HEADING.match(line)):
            anchors.add(_slug(match.group(1)))
    return anchors


def _lesson_page(target: str) -> bool:
    """``lessons/NN_name.ipynb``: the site's page of the lesson source ``lessons/NN_name.py``."""
    match = re.fullmatch(r"lessons/(\d\d_\w+)\.ipynb", target)
    return bool(match) and (ROOT / "lessons" / f"{match.group(1)}.py").is_file()


@pytest.mark.parametrize("page", ALL_PAGES)
def test_links_resolve(page):
    path = DOCS / page
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code blocks are not links
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        if _lesson_page(file_part):
            continue
        linked = path if not file_part else (path.parent / file_part).resolve()
        if not linked.exists():
            broken.append(target)
            continue
        if fragment and linked.suffix == ".md" and fragment not in _anchors(linked):
            broken.append(target)
    assert not broken, f"{page}: broken links {broken}"


def test_where_things_live_names_every_spec_module():
    """The layout page stays true: each module of yarnref/ is named there."""
    page = (DOCS / "where-things-live.md").read_text(encoding="utf-8")
    modules = sorted(p.name for p in (DOCS.parent / "yarnref").glob("*.py") if not p.name.startswith("__"))
    missing = [m for m in modules if f"`{m}`" not in page and f"{m}`" not in page]
    assert not missing, f"docs/where-things-live.md does not mention {missing}"
