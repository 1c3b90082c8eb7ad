"""Tick times of a cron schedule, in epoch seconds, DST handled by croniter in the timezone."""

from __future__ import annotations

from datetime import datetime

from .config import CronConfig

__all__ = ["Schedule"]


class Schedule:
    """The ticks of one `CronConfig`."""

    def __init__(self, config: CronConfig) -> None:
        from croniter import croniter  # the config already checked that it is installed

        self._croniter = croniter
        self._config = config

    def _iter(self, start: float, *, backwards: bool = False) -> object:
        s = self._config
        moment = datetime.fromtimestamp(start, s.timezone)
        return self._croniter(s.schedule, moment, is_prev=backwards, second_at_beginning=s.seconds_first)

    def next_after(self, moment: float) -> float:
        """The first tick strictly after `moment`."""
        ticks = self._iter(moment)
        return float(ticks.get_next(float))  # type: ignore[attr-defined]

    def ticks_between(self, after: float, until: float, limit: int) -> list[float]:
        """The last `limit` ticks t with `after` < t <= `until`, oldest first."""
        ticks = self._iter(until + 0.0005, backwards=True)
        found: list[float] = []
        while len(found) < limit:
            tick = float(ticks.get_prev(float))  # type: ignore[attr-defined]
            if tick <= after:
                break
            found.append(tick)
        return found[::-1]
