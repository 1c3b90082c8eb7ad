"""The NATS store's config: server URL(s), the JetStream stream and its subject prefix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from apalis_cli.durations import parse_duration
from apalis_cli.errors import ConfigError
from apalis_cli.redact import redact_url

__all__ = ["NatsConfig"]

_SCHEMES = ("nats", "tls", "ws", "wss")
_STREAM = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_KEYS = {"stream", "prefix", "duplicate_window", "storage"}


def _seconds(value: Any, key: str) -> float:
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            str(exc) if isinstance(exc, ValueError) else f"expected a duration, got {value!r}", key=key
        ) from None
    if seconds <= 0:
        raise ConfigError(f"must be positive, got {value!r}", key=key) from None
    return seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsConfig:
    """A validated `[backends.NAME]` table of kind nats.

    `stream` is the WorkQueue stream holding every queue of this table, on subjects
    `<prefix>.>`; `duplicate_window` is how long an idempotency key is remembered.
    """

    url: str
    stream: str = "APALIS"
    prefix: str = "apalis"
    duplicate_window: float = 120.0
    storage: str = "file"

    @property
    def servers(self) -> list[str]:
        """The server URLs, for the client."""
        return [one.strip() for one in self.url.split(",") if one.strip()]

    @classmethod
    def parse(cls, url: str, options: Mapping[str, Any]) -> NatsConfig:
        """Validate the URL and the options; errors name the key."""
        unknown = set(options) - _KEYS
        if unknown:
            raise ConfigError("unknown key", key=sorted(unknown)[0])
        if not isinstance(url, str) or not url.strip():
            raise ConfigError('nats needs a "nats://" URL', key="url")
        for one in url.split(","):
            if urlsplit(one.strip()).scheme not in _SCHEMES:
                raise ConfigError(f'nats needs "nats://", "tls://" or "ws://" URLs, got "{redact_url(url)}"', key="url")
        stream = options.get("stream", "APALIS")
        if not isinstance(stream, str) or not _STREAM.match(stream):
            raise ConfigError(f"must be 1-64 letters, digits, '_' or '-', got {stream!r}", key="stream")
        prefix = options.get("prefix", "apalis")
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ConfigError(f"must be 1-64 letters, digits, '_' or '-', got {prefix!r}", key="prefix")
        storage = options.get("storage", "file")
        if storage not in ("file", "memory"):
            raise ConfigError(f'must be "file" or "memory", got {storage!r}', key="storage")
        window = _seconds(options.get("duplicate_window", 120.0), "duplicate_window")
        return cls(url=url, stream=stream, prefix=prefix, duplicate_window=window, storage=storage)
