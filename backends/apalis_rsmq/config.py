"""The RSMQ store's settings: URL, namespace, and the attributes of the queues it creates."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from apalis_cli.errors import ConfigError
from apalis_redis.config import check_namespace, check_url

__all__ = ["QUEUE_NAME", "RsmqConfig"]

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,155}$")
"""rsmq's queue names (`[A-Za-z0-9_-]{1,160}`), leaving room for the `-dead` suffix."""

_KEYS = {"namespace", "vt", "delay", "maxsize", "realtime"}
_ATTRIBUTE_MAX = 9_999_999


def _seconds(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _ATTRIBUTE_MAX:
        raise ConfigError(f"must be a number of seconds from 0 to {_ATTRIBUTE_MAX}, got {value!r}", key=key)
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class RsmqConfig:
    """A validated `[backends.NAME]` table of kind rsmq.

    `vt` (seconds, default 30) is the shortest lease a worker takes on a message it receives (the
    lease is the longer of `vt` and the worker's `stale_after`) and the `vt` attribute written
    when this store creates a queue (whole seconds, rounded up, as rsmq accepts). `delay` and
    `maxsize` are the attributes of created queues: rsmq's default maxsize is 65536 bytes, ours
    is -1 (unlimited) because task payloads may be larger. `realtime` publishes on `ns:rt:<q>`
    after each send, as rsmq's option of that name, and idle workers listen there.
    """

    url: str
    namespace: str = "rsmq"
    vt: float = 30.0
    delay: float = 0.0
    maxsize: int = -1
    realtime: bool = False

    @classmethod
    def parse(cls, url: str, options: Mapping[str, Any]) -> RsmqConfig:
        """Validate the URL and the options; errors name the key."""
        unknown = set(options) - _KEYS
        if unknown:
            raise ConfigError("unknown key", key=sorted(unknown)[0])
        maxsize = options.get("maxsize", -1)
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or not (maxsize == -1 or 1024 <= maxsize <= 65536):
            raise ConfigError(f"must be -1 (unlimited) or 1024 to 65536 bytes, got {maxsize!r}", key="maxsize")
        realtime = options.get("realtime", False)
        if not isinstance(realtime, bool):
            raise ConfigError(f"must be true or false, got {realtime!r}", key="realtime")
        return cls(
            url=check_url(url, "rsmq"),
            namespace=check_namespace(options.get("namespace"), "rsmq"),
            vt=_seconds(options, "vt", 30.0),
            delay=_seconds(options, "delay", 0.0),
            maxsize=maxsize,
            realtime=realtime,
        )
