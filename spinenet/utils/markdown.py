"""Markdown of names that come from files and folders: shown as text, never run as HTML or markup.

A folder named ``<img src=x onerror=...>`` must reach ``report.md`` as those characters, not as an element
that a Markdown viewer renders. :func:`md_text` escapes HTML and the Markdown characters that make links,
code, emphasis or table cells; :func:`md_code` puts a path in a code span that no backtick in it can close.
"""

from __future__ import annotations

import re
from typing import Any

_MD_SPECIAL = re.compile(r"([\\`*\[\]|#])")


def md_text(value: Any) -> str:
    """``value`` as literal Markdown text (one line): HTML and Markdown characters escaped."""
    text = " ".join(str(value).splitlines())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_code(value: Any) -> str:
    """``value`` as an inline code span (literal, HTML inert), fenced by more backticks than it holds."""
    text = " ".join(str(value).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest or text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
