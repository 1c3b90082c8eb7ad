"""Reading TOML values for the config: typed `take`s with defaults, `${ENV}` substitution, and
errors placed at the `file:line` of their key."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .bounds import IntRange, check_name
from .durations import parse_duration
from .errors import ConfigError
from .tomllines import KeyPath, LineIndex, render_path
from .url_syntax import check_url

__all__ = [
    "Parse",
    "Table",
    "boolean",
    "choice",
    "did_you_mean",
    "duration",
    "integer",
    "key_error",
    "list_of_tables",
    "non_empty",
    "safe_name",
    "store_url",
    "string",
    "substitute_env",
    "syntax_message",
    "syntax_where",
    "table_value",
    "type_name",
]

T = TypeVar("T")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


_REQUIRED: Any = object()
Parse = Callable[[Any], T]


class Table:
    """One TOML table being read: typed `take`s, then `finish` rejects the keys left over."""

    def __init__(self, data: dict[str, Any], path: KeyPath, lines: LineIndex) -> None:
        self.data = data
        self.path = path
        self.lines = lines
        self.seen: set[str] = set()

    def take(self, key: str, parse: Parse[T], default: Any = _REQUIRED, *, positive: bool = False) -> T:
        """`parse` of the value at `key` (`default` when absent; required without one)."""
        self.seen.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise key_error(self.lines, self.path, f'missing required key "{key}"')
            return default  # type: ignore[no-any-return]
        try:
            value = parse(self.data[key])
        except ValueError as exc:
            raise key_error(self.lines, (*self.path, key), str(exc)) from None
        if positive and isinstance(value, float) and value <= 0:
            raise key_error(self.lines, (*self.path, key), f"must be more than 0, got {self.data[key]!r}")
        return value

    def fail(self, key: str, message: str) -> None:
        """Raise a `ConfigError` about `key` of this table."""
        raise key_error(self.lines, (*self.path, key), message)

    def finish(self) -> None:
        """Reject any key that no `take` asked for."""
        for key in self.data:
            if key not in self.seen:
                raise key_error(self.lines, (*self.path, key), "unknown key")


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`; did you mean "emails"?` when `word` looks like a typo of one of `known`, else ""."""
    import difflib

    close = difflib.get_close_matches(word, list(known), n=3)
    if not close:
        return ""
    return "; did you mean " + " or ".join(f'"{name}"' for name in close) + "?"


def key_error(lines: LineIndex, path: KeyPath, message: str) -> ConfigError:
    """A `ConfigError` about the key at `path`, placed at its line."""
    return ConfigError(message, where=lines.where(path), key=render_path(path) or None)


def type_name(value: Any) -> str:
    """How a TOML value's type is named in messages: "a string", "an array", ..."""
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array"}
    return names.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)


def string(value: Any) -> str:
    """A string."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type_name(value)}")
    return value


def safe_name(value: Any) -> str:
    """A worker's or a queue's name (`bounds.check_name`)."""
    return check_name(string(value))


def non_empty(value: Any) -> str:
    """A string with more than blanks in it."""
    text = string(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def store_url(value: Any) -> str:
    """A store's URL: a string whose hosts and ports, when it is a URL, a driver can read."""
    text = string(value)
    check_url(text)
    return text


def boolean(value: Any) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {type_name(value)}")
    return value


def integer(bounds: IntRange) -> Parse[int]:
    """A parser of integers within `bounds` (booleans refused)."""

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {type_name(value)}")
        return bounds.check(value)

    return parse


def duration(value: Any) -> float:
    """Seconds in a duration string ("30s") or a bare number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f'expected a duration such as "30s", got {type_name(value)}')
    return parse_duration(value)


def choice(*options: str) -> Parse[Any]:
    """A parser accepting one of `options`."""

    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return parse


def table_value(value: Any) -> dict[str, Any]:
    """A table."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a table, got {type_name(value)}")
    return value


def list_of_tables(value: Any) -> list[dict[str, Any]]:
    """An array of tables (`[[x]]` or inline ones)."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("expected an array of tables")
    return value


def substitute_env(value: Any, path: KeyPath, env: Mapping[str, str], lines: LineIndex) -> Any:
    """`value` with `${VAR}` / `${VAR:-default}` replaced in every string; a missing VAR is an error."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise key_error(lines, path, f"environment variable {name} is not set")

        return _ENV.sub(replace, value)
    if isinstance(value, dict):
        return {k: substitute_env(v, (*path, k), env, lines) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, (*path, i), env, lines) for i, v in enumerate(value)]
    return value


_SYNTAX_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def syntax_where(exc: tomllib.TOMLDecodeError, path: Path) -> str:
    """`file:line:col` of a TOML syntax error."""
    match = _SYNTAX_POSITION.search(str(exc))
    return f"{path}:{match.group(1)}:{match.group(2)}" if match else str(path)


def syntax_message(exc: tomllib.TOMLDecodeError) -> str:
    """A TOML syntax error's message without its position."""
    return "invalid TOML: " + _SYNTAX_POSITION.sub("", str(exc))
