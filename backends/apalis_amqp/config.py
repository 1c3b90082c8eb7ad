"""The AMQP store's config: the broker URL, the queue-name prefix and the priority range."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from apalis_cli.errors import ConfigError
from apalis_cli.redact import redact_url

__all__ = ["AmqpConfig"]

_SCHEMES = ("amqp", "amqps")
_PREFIX = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_KEYS = {"prefix", "max_priority"}


@dataclass(frozen=True, slots=True, kw_only=True)
class AmqpConfig:
    """A validated `[backends.NAME]` table of kind amqp.

    `prefix` starts every queue name (`<prefix>.<queue>`, `.dead`, `.delay.<ms>`); `max_priority`
    is the work queues' `x-max-priority` (0 turns priorities off). RabbitMQ refuses to redeclare
    a queue with other arguments, so changing it needs new queues (another prefix).
    """

    url: str
    prefix: str = "apalis"
    max_priority: int = 9

    @classmethod
    def parse(cls, url: str, options: Mapping[str, Any]) -> AmqpConfig:
        """Validate the URL and the options; errors name the key."""
        unknown = set(options) - _KEYS
        if unknown:
            raise ConfigError("unknown key", key=sorted(unknown)[0])
        if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
            shown = redact_url(url) if isinstance(url, str) else repr(url)
            raise ConfigError(f'amqp needs an "amqp://" or "amqps://" URL, got "{shown}"', key="url")
        prefix = options.get("prefix", "apalis")
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ConfigError(f"must be 1-64 letters, digits, '_', '.' or '-', got {prefix!r}", key="prefix")
        max_priority = options.get("max_priority", 9)
        if isinstance(max_priority, bool) or not isinstance(max_priority, int) or not 0 <= max_priority <= 255:
            raise ConfigError(f"must be an integer from 0 to 255, got {max_priority!r}", key="max_priority")
        return cls(url=url, prefix=prefix, max_priority=max_priority)
