"""Durations as people write them: "250ms", "30s", "5m", "2h", "7d", or a bare number of seconds."""

from __future__ import annotations

import math
import re

from .bounds import check_duration

__all__ = ["format_duration", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text`; raises ValueError with a message fit for a person.

    A duration is finite and at most 100 years (`bounds.MAX_DURATION`): TOML can spell `nan` and
    `inf`, and a timer or a run time that far away breaks whatever computes with it.
    """
    if isinstance(text, bool):
        raise ValueError(f'expected a duration such as "30s", got {text!r}')
    if isinstance(text, int | float):
        try:
            return check_duration(float(text))
        except OverflowError:  # an integer too large for a float
            return check_duration(math.inf)
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f'expected a duration such as "250ms", "30s", "5m", "2h" or "7d", got "{text}"')
    return check_duration(float(match.group(1)) * _UNITS[match.group(2) or "s"])


def format_duration(seconds: float) -> str:
    """A short human form: 0.25 -> "250ms", 90 -> "1m30s"."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if v]
    return "".join(parts)
