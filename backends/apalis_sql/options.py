"""Options the server-backed SQL stores share: known keys, pool sizes and the connect timeout,
and what a config reached by a URL says of it without its password."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from apalis_cli.durations import parse_duration
from apalis_cli.errors import ConfigError
from apalis_cli.redact import redact_url, secrets_in

__all__ = ["PoolOptions", "ServerUrl", "pool_options"]


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """A connection pool's bounds and how long to wait for a connection."""

    min_size: int
    max_size: int
    connect_timeout: float


class ServerUrl:
    """A helper base of a store's config whose server is reached by `url` (PostgreSQL, MySQL,
    pgmq): the URL to show, and the secrets to mask wherever a driver may echo them."""

    __slots__ = ()
    url: str

    @property
    def redacted(self) -> str:
        """The URL without its password."""
        return redact_url(self.url)

    @property
    def secrets(self) -> frozenset[str]:
        """The URL's password and the pieces of it a driver may echo, for `redact`."""
        return secrets_in(self.url)


def pool_options(options: Mapping[str, Any], known: Collection[str]) -> PoolOptions:
    """Reject keys not in `known`, then read `min_size`, `max_size` and `connect_timeout`."""
    for key in options:
        if key not in known:
            raise ConfigError(f"unknown key (known: {', '.join(sorted(known))})", key=key)
    min_size = _int(options, "min_size", 1, 0)
    max_size = _int(options, "max_size", 10, 1)
    if max_size < min_size:
        raise ConfigError(f"must be >= min_size ({min_size}), got {max_size}", key="max_size")
    try:
        timeout = parse_duration(options.get("connect_timeout", "10s"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), key="connect_timeout") from None
    return PoolOptions(min_size, max_size, timeout)


def _int(options: Mapping[str, Any], key: str, default: int, low: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"must be an integer >= {low}, got {value!r}", key=key)
    return value
