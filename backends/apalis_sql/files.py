"""SQL kept in `sql/*.sql` data files, loaded once per store, and identifiers checked.

A package's `sql/` folder holds two kinds of file:

- `NNNN_name.sql` (e.g. `0001_schema.sql`): migration NNNN, applied in order, each once; the store
  records the highest version applied.
- any other `*.sql`: named statements, each after a `-- name: claim` line (a file without such
  a line is one statement named after the file).

`{placeholder}`s are replaced by the names the store passes (a table prefix, say); only those
names are touched, so other braces in the SQL are left alone. Names must be validated
identifiers: they go into the SQL text, not into parameters.

A statement whose name starts with `_` is a fragment, not a statement: a piece several statements
share (a filter, say), written once and put where they say `{_name}` (a fragment may use another).

Whole-line `--` comments and indentation stay in the files: a loaded statement goes without
them, so it is the shorter text a driver parses and sends on each run (psycopg caches the parse
of a statement of at most 4,096 bytes only: a longer one was parsed again at every run). No
statement has a string literal over several lines, whose text that would change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files

from apalis_cli.errors import ConfigError

__all__ = [
    "Migration",
    "Queries",
    "identifier",
    "load_migrations",
    "load_queries",
    "render",
    "split_named",
    "without_comments",
]

_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")
_NAME_LINE = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RESERVED = frozenset(name for name in dir(Mapping) if not name.startswith("_"))
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")
_COMMENT_LINE = re.compile(r"^[ \t]*--[^\n]*\n?", re.MULTILINE)
_INDENT = re.compile(r"^[ \t]+", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema step."""

    version: int
    name: str
    sql: str


class Queries(Mapping[str, str]):
    """Named statements; `queries["claim"]` or `queries.claim`, a clear error when missing.

    Names that `Mapping` itself uses (`get`, `keys`, `items`, `values`) are refused at load.
    """

    __slots__ = ("_package", "_queries")

    def __init__(self, queries: Mapping[str, str], package: str = "") -> None:
        self._queries = dict(queries)
        self._package = package

    def __getitem__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no statement named {name!r} in {self._package or 'these'} sql files") from None

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(str(exc)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


def identifier(value: object, *, key: str) -> str:
    """`value` if it is a plain SQL identifier (letters, digits, `_`; up to 48), else a
    `ConfigError` naming `key`. An empty string is allowed (an empty prefix)."""
    if value == "":
        return ""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ConfigError(
            f"must be letters, digits and underscores (not starting with a digit, at most 48), got {value!r}",
            key=key,
        )
    return value


def render(sql: str, names: Mapping[str, str]) -> str:
    """`sql` with each `{name}` of `names` replaced; other braces stay as they are."""
    if not names:
        return sql
    return _PLACEHOLDER.sub(lambda m: names.get(m.group(1), m.group(0)), sql)


def split_named(text: str, default: str) -> dict[str, str]:
    """The statements of one file by name; text before the first `-- name:` is `default`."""
    marks = list(_NAME_LINE.finditer(text))
    out: dict[str, str] = {}
    head = text[: marks[0].start()] if marks else text
    if _has_sql(head):
        out[default] = head.strip()
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        name = mark.group(1)
        if name in _RESERVED:
            raise ValueError(f"statement name {name!r} is taken by Mapping: choose another")
        if name in out:
            raise ValueError(f"statement {name!r} is defined twice")
        out[name] = text[mark.end() : end].strip()
    return out


def load_queries(package: str, names: Mapping[str, str] | None = None) -> Queries:
    """Every named statement in `package`'s `sql/` folder (migrations excluded), rendered."""
    queries: dict[str, str] = {}
    for entry in sorted(files(package).joinpath("sql").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql") or _MIGRATION.match(entry.name):
            continue
        for name, sql in split_named(entry.read_text(encoding="utf-8"), entry.name[:-4]).items():
            if name in queries:
                raise ValueError(f"statement {name!r} is defined twice in {package}/sql")
            queries[name] = render(sql, names or {})
    fragments = {name: sql for name, sql in queries.items() if name.startswith("_")}
    for _ in fragments:  # a fragment may use another: as many passes as there are fragments
        fragments = {name: render(sql, fragments) for name, sql in fragments.items()}
    return Queries(
        {name: without_comments(render(sql, fragments)) for name, sql in queries.items() if name not in fragments},
        package,
    )


def without_comments(sql: str) -> str:
    """`sql` without its whole-line `--` comments (a comment after code on its line stays) and
    its indentation."""
    return _INDENT.sub("", _COMMENT_LINE.sub("", sql)).strip()


def load_migrations(package: str, names: Mapping[str, str] | None = None) -> list[Migration]:
    """The numbered migrations in `package`'s `sql/` folder, in order, rendered."""
    found: list[Migration] = []
    for entry in files(package).joinpath("sql").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            text = render(entry.read_text(encoding="utf-8"), names or {})
            found.append(Migration(int(match.group(1)), match.group(2), text))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a number in {package}/sql: {versions}")
    return found


def _has_sql(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())
