"""Stored text made safe to show: what a handler, a payload or another daemon wrote must not
drive the terminal that displays it.

A handler's error (a command's stderr), a payload, a result, an idempotency key or a hostname in
the worker registry can hold escape sequences (`ESC[2J` clears the screen, `ESC]0;...BEL` retitles
the window), carriage returns that overwrite what was printed, bidi overrides that reorder it, and
lone surrogates that make the write itself fail. Everything stored goes through `printable` before
it reaches a table, the live view or a console log line; rich markup is kept out by printing
`rich.text.Text`, never a markup string.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

__all__ = ["printable", "printable_json"]

# Characters that are not shown as themselves: control (Cc), format (Cf: bidi overrides,
# zero-width joiners), surrogate (Cs), private use (Co), unassigned (Cn), line and paragraph
# separators (Zl, Zp). Ordinary spaces (Zs) are shown.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_NOT_ASCII_PRINTABLE = re.compile(r"[^\x20-\x7e\n]")


def printable(text: str, *, newlines: bool = False) -> str:
    """`text` with every character that would act on a terminal written as its Python escape
    (`ESC` as `\\x1b`, a carriage return as `\\r`, U+202E as `\\u202e`); `newlines` keeps line
    breaks as they are (a multi-line view), otherwise they are escaped too (one line per value)."""
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(ch if _shown(ch, newlines) else _escape(ch) for ch in text)


def printable_json(value: Any, *, indent: int | None = 2) -> str:
    """`value` as JSON text that is safe to print: non-ASCII text stays readable, but control and
    format characters (and lone surrogates, which no terminal encoding can write) are `\\uXXXX`
    escapes, which every JSON reader decodes back to the same string."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return _NOT_ASCII_PRINTABLE.sub(_json_escape, text)


def _shown(ch: str, newlines: bool) -> bool:
    if ch == "\n":
        return newlines
    return unicodedata.category(ch) not in _HIDDEN


def _escape(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")


def _json_escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch == "\n" or unicodedata.category(ch) not in _HIDDEN:
        return ch
    return json.dumps(ch)[1:-1]  # the standard escape, a surrogate pair above U+FFFF included
