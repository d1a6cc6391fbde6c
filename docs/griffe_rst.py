"""A griffe extension: yarnref's docstrings (reStructuredText roles) as the site's Markdown.

yarnref's docstrings are read in a terminal (``help()``) and on this site.
They use a few reST constructs, rewritten here before mkdocstrings renders
them:

* ``:math:`expr``` -> ``$expr$`` and ``.. math:: expr`` (with its indented
  continuation lines) -> a ``$$ ... $$`` block, typeset by MathJax through
  ``pymdownx.arithmatex``;
* bullet items' continuation lines, indented by 2 in reST, are indented by 4,
  as Python-Markdown needs to keep a paragraph or a formula inside the item,
  and each item follows a blank line;
* ``:func:`name```, ``:class:``, ``:mod:``, ``:data:``, ``:meth:``,
  ``:attr:``, ``:exc:`` -> ```name``` (``~a.b.c`` shows ``c``).
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:func|class|mod|data|meth|attr|exc|obj):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(\s*)\.\. math::\s*(.*)$")


def _name(match: re.Match) -> str:
    tilde, target = match.group(1), match.group(2).strip()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


_BULLET = re.compile(r"^(\s*)[*-] ")


def _indent_list_items(lines: list[str]) -> list[str]:
    """Continuation lines of ``* item`` indented by 2 (reST) -> by 4 (Python-Markdown's list rule)."""
    out, bullet = [], None
    for line in lines:
        match = _BULLET.match(line)
        depth = len(line) - len(line.lstrip())
        if match:
            bullet = len(match.group(1))
        elif line.strip() and bullet is not None and depth < bullet + 2:
            bullet = None  # text back at the item's level: the list has ended
        if bullet is not None and not match and line.strip() and depth >= bullet + 2:
            line = "  " + line
        if match and out and out[-1].strip():
            out.append("")  # Python-Markdown starts a list, or a new item after a paragraph, only after a blank line
        out.append(line)
    return out


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with its reST roles and math directives in Markdown."""
    lines = _indent_list_items(text.splitlines())
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent, first = match.group(1), match.group(2)
        body = [first] if first.strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() and not body or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            if lines[i].strip():
                body.append(lines[i].strip())
            i += 1
        out += ["", f"{indent}$$", *(f"{indent}{line}" for line in body), f"{indent}$$", ""]
    text = "\n".join(out)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1).strip()}$", text)
    return _ROLE.sub(_name, text)


class RstRoles(griffe.Extension):
    """Rewrite every docstring griffe loads (see :func:`rst_to_markdown`)."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
