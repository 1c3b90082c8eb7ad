"""The settings of a `kind = "sqlite"` store: where the file is and how to open it.

URLs: `sqlite:///relative.db` (relative to the config file's folder), `sqlite:////abs/path.db`,
and `sqlite://:memory:` (one private database per store, gone with the process). Options:

- `table_prefix` (default "apalis_"): tables are `<prefix>tasks`, `<prefix>workers`, ...
- `busy_timeout` (default "5s"): how long a statement waits for another process's write lock.
- `synchronous` (default "normal"): "normal" (WAL-safe, fast) or "full" (fsync every commit).
- `watch` (default true): on Linux, wake idle workers when another process writes the database
  (inotify); false leaves cross-process pushes to polling within `poll_interval`.

`:memory:` lives as long as the store's one connection: a reconnect starts from an empty one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apalis_cli.backend import StoreSpec
from apalis_cli.durations import parse_duration
from apalis_cli.errors import ConfigError
from apalis_cli.redact import redact_url
from apalis_sql import identifier

__all__ = ["MEMORY", "SqliteConfig"]

MEMORY = ":memory:"
_SCHEME = "sqlite://"
_SYNCHRONOUS = ("normal", "full")
_OPTIONS = ("table_prefix", "busy_timeout", "synchronous", "watch")


@dataclass(frozen=True, slots=True, kw_only=True)
class SqliteConfig:
    """A validated sqlite store configuration."""

    path: str
    """The database file (absolute), or `:memory:`."""
    table_prefix: str = "apalis_"
    busy_timeout: float = 5.0
    synchronous: str = "normal"
    watch: bool = True

    @property
    def in_memory(self) -> bool:
        """True for a private in-memory database."""
        return self.path == MEMORY

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> SqliteConfig:
        """Validate `spec` (its URL and options), raising `ConfigError` naming the bad key."""
        path = parse_url(spec.url, spec.base_dir)
        options = dict(spec.options)
        unknown = [key for key in options if key not in _OPTIONS]
        if unknown:
            raise ConfigError(f"unknown option for a sqlite store (known: {', '.join(_OPTIONS)})", key=unknown[0])
        return cls(
            path=path,
            table_prefix=identifier(options.get("table_prefix", "apalis_"), key="table_prefix"),
            busy_timeout=_duration(options, "busy_timeout", 5.0),
            synchronous=_synchronous(options.get("synchronous", "normal")),
            watch=_boolean(options, "watch", True),
        )


def parse_url(url: str, base_dir: Path) -> str:
    """The database path a `sqlite://` URL names (relative paths resolved against `base_dir`)."""
    if not isinstance(url, str) or not url.startswith(_SCHEME):
        shown = redact_url(url) if isinstance(url, str) else repr(url)  # another store's URL, say
        raise ConfigError(f'expected "sqlite:///relative.db" or "sqlite:////abs/path.db", got "{shown}"', key="url")
    rest = url[len(_SCHEME) :]
    if "?" in rest or "#" in rest:
        raise ConfigError("a sqlite URL takes no query string: set table_prefix and the rest as options", key="url")
    if rest in (MEMORY, "/" + MEMORY):
        return MEMORY
    if not rest.startswith("/"):
        raise ConfigError(
            f'a sqlite URL has no host: write "sqlite:///relative.db" or "sqlite:////abs/path.db", '
            f'got "{redact_url(url)}"',
            key="url",
        )
    name = rest[1:]
    if not name or name.endswith("/"):
        raise ConfigError(f'the sqlite URL names no database file: "{url}"', key="url")
    path = Path(name)
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def _duration(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    try:
        return parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), key=key) from None


def _synchronous(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in _SYNCHRONOUS:
        raise ConfigError(f'must be "normal" or "full", got {value!r}', key="synchronous")
    return value.lower()


def _boolean(options: Mapping[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", key=key)
    return value
