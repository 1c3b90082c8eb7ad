"""The Redis store's settings: the URL (redis://, rediss://, unix://) and the key namespace."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from apalis_cli.errors import ConfigError
from apalis_cli.redact import redact_url

__all__ = ["RedisSettings", "check_namespace", "check_url"]

_SCHEMES = ("redis", "rediss", "unix")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_url(url: str, kind: str) -> str:
    """`url` if it is a Redis URL; a `ConfigError` on `url` otherwise (password redacted)."""
    if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
        shown = redact_url(url) if isinstance(url, str) else repr(url)
        raise ConfigError(f'{kind} needs a "redis://", "rediss://" or "unix://" URL, got "{shown}"', key="url")
    parts = urlsplit(url)
    database = parts.path.strip("/") if parts.scheme != "unix" else ""
    # redis-py reads a path that is not a number as database 0: a typo would share another's data.
    if database and not (database.isascii() and database.isdigit() and int(database) < 2**31):
        raise ConfigError(f'the database after the host must be a number such as "/0", got "/{database}"', key="url")
    try:
        from redis.connection import parse_url
    except ImportError:  # the store class says which extra is missing
        return url
    try:
        parse_url(url)  # type: ignore[no-untyped-call]  # the driver's own reading of the query options, without connecting
    except ValueError as exc:
        raise ConfigError(str(exc), key="url") from None
    return url


def check_namespace(value: Any, default: str) -> str:
    """A key namespace: letters, digits, `_`, `.` and `-` (they are also glob-safe)."""
    if value is None:
        return default
    if not isinstance(value, str) or not _NAMESPACE.match(value):
        raise ConfigError(f"must be 1-64 letters, digits, '_', '.' or '-', got {value!r}", key="namespace")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisSettings:
    """A validated `[backends.NAME]` table of kind redis."""

    url: str
    namespace: str = "apalis"

    @classmethod
    def parse(cls, url: str, options: Mapping[str, Any]) -> RedisSettings:
        """Validate the URL and the options; errors name the key."""
        unknown = set(options) - {"namespace"}
        if unknown:
            raise ConfigError("unknown key", key=sorted(unknown)[0])
        return cls(url=check_url(url, "redis"), namespace=check_namespace(options.get("namespace"), "apalis"))
