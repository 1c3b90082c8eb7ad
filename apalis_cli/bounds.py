"""The ranges of the numbers a person gives (options, config keys, push arguments), in one place.

Each range is one that every store can hold, so a value is refused where it is read, before
anything is written, instead of failing later in a driver (an integer column overflows) or, worse,
being stored and then breaking whoever reads it back (a run time in year 0 breaks `inspect` of the
whole queue). The checks raise `ValueError` with a message for a person; callers add the name of
the option or key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "ATTEMPTS",
    "CONCURRENCY",
    "COUNT",
    "EARLIEST_TIME",
    "ID_LENGTH",
    "KEY_LENGTH",
    "LATEST_TIME",
    "MAX_DURATION",
    "NAME_LENGTH",
    "PRIORITY",
    "IntRange",
    "check_duration",
    "check_length",
    "check_name",
    "check_time",
]


@dataclass(frozen=True, slots=True)
class IntRange:
    """An inclusive range of integers."""

    low: int
    high: int

    def check(self, value: int) -> int:
        """`value` if it is in the range; ValueError saying which end it passed otherwise."""
        if value < self.low:
            raise ValueError(f"must be >= {self.low}, got {value}")
        if value > self.high:
            raise ValueError(f"must be <= {self.high}, got {value}")
        return value


_INT32_MAX = 2**31 - 1

PRIORITY = IntRange(-(2**31), _INT32_MAX)
"""A task's priority: a signed 32-bit integer (the `integer` columns of the SQL stores)."""

ATTEMPTS = IntRange(1, _INT32_MAX)
"""`max_attempts`, of a task or a worker."""

COUNT = IntRange(1, _INT32_MAX)
"""Sizes and counts: `inspect --limit`, a rate limit's rate, a concurrency layer's limit."""

CONCURRENCY = IntRange(1, 10_000)
"""Tasks one worker runs at once: each may hold a thread, so beyond this is a typo, not a plan."""

NAME_LENGTH = 100
"""Worker and queue names, in characters: a worker's id (name, host, pid) and a broker's queue names
(prefix, name, suffix) are built from them and must fit the stores' columns (191) and AMQP's 255."""

KEY_LENGTH = 255
"""An idempotency key, in characters (the SQL stores' column)."""

ID_LENGTH = 64
"""A task id given by the producer, in characters (the SQL stores' column)."""

MAX_DURATION = 100 * 365 * 86400.0
"""The longest duration taken (100 years): delays, timeouts, retention, intervals."""

EARLIEST_TIME = datetime(1, 1, 1, tzinfo=UTC).timestamp()
LATEST_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
"""The run times a task may have (epoch seconds): years 1 to 9999, what every date type shows."""


def check_duration(seconds: float) -> float:
    """`seconds` if it is a finite duration from 0 to `MAX_DURATION`."""
    if math.isnan(seconds):
        raise ValueError("a duration must be a number, got nan")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {seconds:g}")
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration must be at most 100 years (36500d), got {seconds:g}s")
    return seconds


def check_time(epoch: float) -> float:
    """`epoch` (seconds) if it falls in the years 1 to 9999 (UTC)."""
    if math.isnan(epoch) or not EARLIEST_TIME <= epoch <= LATEST_TIME:
        raise ValueError("must fall in the years 1 to 9999 (UTC)")
    return epoch


def check_name(name: str) -> str:
    """`name` if it can name a worker or a queue in every store: not blank, at most `NAME_LENGTH`
    characters, no control characters."""
    if not name.strip():
        raise ValueError("must not be empty")
    if len(name) > NAME_LENGTH:
        raise ValueError(f"must be at most {NAME_LENGTH} characters, got {len(name)}")
    if not name.isprintable():
        raise ValueError(f"must not contain control characters, got {name!r}")
    return name


def check_length(text: str, limit: int) -> str:
    """`text` if it has at most `limit` characters."""
    if len(text) > limit:
        raise ValueError(f"must be at most {limit} characters, got {len(text)}")
    return text
