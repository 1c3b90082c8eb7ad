"""Unique jobs: at most one task per key in a queue, among the tasks in some states, for a window.

The answer comes from the store's rows, read and written in the one atomic step of the push (a
transaction holding the write lock, a Lua script): no lock of its own that could go stale. A
task pushed with `unique` keeps its key and the end of its window (`until`); a later push of
the same key conflicts while that window is open and the task is in one of the push's `states`:

- `skip` (default): nothing is written; the push answers with the existing task's id;
- `replace`: a pending duplicate takes the new push's payload, run time, priority, attempts and
  meta (a running or finished one stays as it is, as with skip);
- `extend`: as skip, and the duplicate's window starts again from this push.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..bounds import KEY_LENGTH
from ..durations import parse_duration
from ..errors import UsageError
from ..task import Status

__all__ = ["CONFLICTS", "DEFAULT_STATES", "LABELS", "Unique", "unique_from"]

CONFLICTS = ("skip", "replace", "extend")
"""What a push does when it meets a duplicate."""

DEFAULT_STATES: frozenset[Status] = frozenset({Status.PENDING, Status.RUNNING, Status.FAILED, Status.DONE})
"""Every state but killed (and cancelled): a task that ran, runs or will run holds its key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Unique:
    """One push's uniqueness: its `key`, the end of its window (`until`, None: no end), the
    `states` a duplicate must be in, and what to do on a conflict."""

    key: str
    until: float | None = None
    states: frozenset[Status] = DEFAULT_STATES
    on_conflict: str = "skip"

    @property
    def period(self) -> float | None:
        """The window's length from now (None: no end)."""
        return None if self.until is None else max(self.until - time.time(), 0.0)

    def state_names(self) -> list[str]:
        """The states as the stores write them, sorted."""
        return sorted(status.value for status in self.states)


LABELS: Mapping[str, str] = {name: f"unique {name}" for name in ("key", "period", "states", "on_conflict")}
"""How an error names each option of `unique` (the CLI names its own flags instead)."""


def unique_from(
    value: Unique | Mapping[str, Any], now: float | None = None, *, labels: Mapping[str, str] = LABELS
) -> Unique:
    """A `Unique` from `push(unique={...})`: `key`, `period` ("10m" or seconds; none: no end),
    `states` (names of statuses) and `on_conflict`; UsageError names what is wrong, each option
    as `labels` calls it."""
    if isinstance(value, Unique):
        return value
    if not isinstance(value, Mapping):
        raise UsageError('unique must be a table such as {"key": "report-7", "period": "10m"}')
    unknown = set(value) - set(LABELS)
    if unknown:
        raise UsageError(f'unique: unknown option "{sorted(unknown)[0]}" (key, period, states, on_conflict)')
    key = value.get("key")
    if not isinstance(key, str) or not key.strip():
        raise UsageError(f"{labels['key']} must be a non-empty string")
    if len(key) > KEY_LENGTH:
        raise UsageError(f"{labels['key']} must be at most {KEY_LENGTH} characters, got {len(key)}")
    until = None
    if value.get("period") is not None:
        try:
            period = parse_duration(value["period"])
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{labels['period']}: {exc}") from None
        if period <= 0:
            raise UsageError(f"{labels['period']} must be more than 0")
        until = (time.time() if now is None else now) + period
    on_conflict = value.get("on_conflict", "skip")
    if on_conflict not in CONFLICTS:
        raise UsageError(f"{labels['on_conflict']} must be one of {', '.join(CONFLICTS)}, got {on_conflict!r}")
    states = DEFAULT_STATES if value.get("states") is None else _states(value["states"], labels["states"])
    return Unique(key=key, until=until, states=states, on_conflict=on_conflict)


def _states(names: Any, label: str) -> frozenset[Status]:
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    if not isinstance(names, Iterable) or not names:
        raise UsageError(f"{label} must name at least one status")
    known = {status.value: status for status in Status}
    chosen = set()
    for name in names:
        if name not in known:
            raise UsageError(f"{label}: unknown state {name!r} (one of {', '.join(known)})")
        chosen.add(known[name])
    return frozenset(chosen)
