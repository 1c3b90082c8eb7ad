"""A fleet-wide rate as one time per key: the generic cell rate algorithm (GCRA).

A key's state is its theoretical arrival time `tat`: starts are spaced `per / rate` apart, and
a start is allowed while `tat` is at most `per` ahead of now, so bursts reach `rate` and the
long-run rate is exactly `rate` per `per`. A state in the past means "idle, full burst
available"; a lost state costs at most one extra burst, and nothing accumulates that could leak.
"""

from __future__ import annotations

import math

__all__ = ["EPSILON", "allowance", "next_start", "spend"]

EPSILON = 1e-9
"""Slack for float rounding in `allowance`."""


def allowance(tat: float | None, now: float, rate: int, per: float) -> int:
    """How many starts may happen at `now` for a key whose state is `tat` (None: never started)."""
    ahead = max((tat or now) - now, 0.0)
    return max(0, min(rate, math.floor((per - ahead) / (per / rate) + EPSILON)))


def spend(tat: float | None, now: float, starts: int, rate: int, per: float) -> float:
    """The key's state after `starts` more starts at `now`."""
    return max(tat or now, now) + starts * (per / rate)


def next_start(tat: float, rate: int, per: float) -> float:
    """When the next start is allowed for a key whose state is `tat`."""
    return tat - per + per / rate
