"""The `[backends.NAME]` table of kind "pgmq", validated into `PgmqConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from apalis_cli.durations import parse_duration
from apalis_cli.errors import ConfigError
from apalis_cli.redact import redact_url
from apalis_sql.options import ServerUrl

__all__ = ["PgmqConfig"]

_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True, slots=True, kw_only=True)
class PgmqConfig(ServerUrl):
    """Settings of a pgmq store.

    - `pool_size`: connections shared by every queue of the store (plus one for LISTEN).
    - `notify`: wake idle workers with `pgmq.enable_notify_insert` + LISTEN (else poll only).
    - `notify_throttle`: the throttle given to `enable_notify_insert` for queues we enable it on:
      pgmq's trigger updates one row per notification, so 0 would make bulk sends quadratic.
    - `connect_timeout`: how long an operation waits for a connection before failing.
    """

    url: str
    pool_size: int = 10
    notify: bool = True
    notify_throttle: float = 0.01
    connect_timeout: float = 10.0

    @classmethod
    def from_options(cls, url: str, options: Mapping[str, Any]) -> PgmqConfig:
        """Validate the URL and the options, naming the bad key in the error."""
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in _SCHEMES:
            raise ConfigError(f'expected a "postgresql://" URL, got "{redact_url(url)}"', key="url")
        values: dict[str, Any] = {}
        for key, value in options.items():
            if key == "pool_size":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"expected a positive integer, got {value!r}", key=key)
                values[key] = value
            elif key == "notify":
                if not isinstance(value, bool):
                    raise ConfigError(f"expected true or false, got {value!r}", key=key)
                values[key] = value
            elif key in ("notify_throttle", "connect_timeout"):
                try:
                    values[key] = parse_duration(value)
                except ValueError as exc:
                    raise ConfigError(str(exc), key=key) from None
            else:
                raise ConfigError("unknown key", key=key)
        return cls(url=url, **values)
