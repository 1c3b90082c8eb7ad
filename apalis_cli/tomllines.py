"""Where a key lives in a TOML file: maps key paths to line numbers, for `file:line` errors.

`tomllib` gives values but no positions, so the source is scanned once: table headers
(`[backends.main]`), arrays of tables (`[[workers]]`, counted) and `key = value` lines. A value
inside an inline table or a multi-line array is placed at the line of the key that holds it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["KeyPath", "LineIndex", "render_path"]

KeyPath = tuple[str | int, ...]

_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*(\[\[|\[)\s*({_DOTTED})\s*\]")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART = re.compile(_KEY)


def render_path(path: Sequence[str | int]) -> str:
    """`("workers", 1, "concurrency")` -> `workers[1].concurrency`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            out += f".{name}" if out else name
    return out


def _split(dotted: str) -> list[str]:
    parts = []
    for raw in _PART.findall(dotted):
        if raw[:1] in "\"'":
            raw = raw[1:-1]
        parts.append(raw)
    return parts


class LineIndex:
    """Line numbers (1-based) of the tables and keys of one TOML source."""

    def __init__(self, source: str, path: Path) -> None:
        self.path = path
        self._lines: dict[KeyPath, int] = {}
        self._scan(source)

    def where(self, path: Sequence[str | int]) -> str:
        """`file:line` of `path`, or of its nearest enclosing key or table that was found."""
        key = tuple(path)
        while key:
            line = self._lines.get(key)
            if line is not None:
                return f"{self.path}:{line}"
            key = key[:-1]
        return f"{self.path}:1"

    def _scan(self, source: str) -> None:
        arrays: dict[KeyPath, int] = {}
        table: KeyPath = ()
        depth = 0
        string: str | None = None  # the closing quotes of a multi-line string we are inside
        for number, line in enumerate(source.splitlines(), start=1):
            if string is None and depth == 0:
                header = _HEADER.match(line)
                assign = None if header else _ASSIGN.match(line)
                if header:
                    parts = _split(header.group(2))
                    table = (*self._resolve(parts[:-1], arrays), parts[-1])
                    if header.group(1) == "[[":
                        arrays[table] = arrays.get(table, -1) + 1
                        table = (*table, arrays[table])
                    self._lines.setdefault(table, number)
                    continue
                if assign:
                    key = (*table, *_split(assign.group(1)))
                    self._lines.setdefault(key, number)
                    line = line[assign.end() :]
            depth, string = _track(line, depth, string)

    @staticmethod
    def _resolve(parts: list[str], arrays: dict[KeyPath, int]) -> KeyPath:
        # `[workers.extra]` after `[[workers]]` belongs to the last workers element.
        path: KeyPath = ()
        for part in parts:
            path = (*path, part)
            if path in arrays:
                path = (*path, arrays[path])
        return path


def _track(text: str, depth: int, string: str | None) -> tuple[int, str | None]:
    """Bracket depth and multi-line string state after `text`, ignoring strings and comments."""
    i, n = 0, len(text)
    while i < n:
        if string is not None:
            end = _close(text, i, string)
            if end < 0:
                return depth, string
            i, string = end, None
            continue
        ch = text[i]
        if ch == "#":
            break
        if text.startswith('"""', i) or text.startswith("'''", i):
            string = text[i : i + 3]
            i += 3
            continue
        if ch in "\"'":
            i = _skip_string(text, i)
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(depth - 1, 0)
        i += 1
    return depth, string


def _close(text: str, start: int, quotes: str) -> int:
    """Where the multi-line string closed by `quotes` ends in `text` (from `start`), or -1.

    In a basic string a backslash escapes the next character, so an escaped quote and two more
    do not close it; one or two quotes just before the delimiter belong to the string, so a
    run of up to five quotes closes it after the last three.
    """
    i, n = start, len(text)
    while i < n:
        if text[i] == "\\" and quotes == '"""':
            i += 2
            continue
        if text.startswith(quotes, i):
            end = i + 3
            while end < n and end - i < 5 and text[end] == quotes[0]:
                end += 1
            return end
        i += 1
    return -1


def _skip_string(text: str, start: int) -> int:
    quote = text[start]
    i = start + 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    return i
