"""What `apalis push` reads: JSON values from the argument, stdin or a file, each with its place.

The input is read as bytes and split into lines before it is decoded, so that a file and stdin
are read the same way: a line that is not UTF-8 is named (`tasks.jsonl:3: not UTF-8 text`), and a
character that JSON allows inside a string (U+2028, say) never splits a line. Every value keeps
its place (`tasks.jsonl:1200`) so that a value the codec refuses later is named too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

__all__ = ["Value", "read_argument", "read_lines", "read_stdin"]

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Value:
    """One task's arguments and where they were read (`"tasks.jsonl:12"`, `"the argument"`)."""

    where: str
    value: Any


def read_argument(text: str) -> Value:
    """The JSON value of the command-line argument."""
    # The shell passes bytes; Python decodes what is not UTF-8 to lone surrogates.
    where = "the argument"
    return Value(where, _parse(_decode(text.encode("utf-8", "surrogateescape"), where), where))


def read_stdin(data: bytes) -> list[Value]:
    """Values from stdin: one JSON value per line, or one value spread over several lines."""
    lines = [line for line in data.removeprefix(_BOM).splitlines() if line.strip()]
    if len(lines) > 1:
        try:
            return [Value("stdin", _parse(data.removeprefix(_BOM).decode("utf-8"), "stdin"))]
        except (UnicodeDecodeError, UsageError):
            pass  # not one value: one per line
    return read_lines(data, "stdin")


def read_lines(data: bytes, source: str) -> list[Value]:
    """One JSON value per non-blank line of `data` (a JSON Lines file named `source`)."""
    values = []
    for number, raw in enumerate(data.removeprefix(_BOM).splitlines(), 1):
        if raw.strip():
            where = f"{source}:{number}"
            try:
                values.append(Value(where, _parse(_decode(raw, where), where)))
            except UsageError as exc:
                raise UsageError(f"{exc}; nothing was pushed") from None
    if not values:
        raise UsageError(f"{source}: no tasks in it")
    return values


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise UsageError(f"{where} is JSON nested too deeply to read") from None
    except ValueError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc}") from None
