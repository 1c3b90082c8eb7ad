"""The cron worker's config: its schedule (5 or 6 fields, or an alias), timezone and catch-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apalis_cli.errors import ConfigError, MissingExtra

__all__ = ["CatchUp", "CronConfig"]

CatchUp = Literal["none", "latest", "all"]
_CATCH_UP: tuple[CatchUp, ...] = ("none", "latest", "all")
_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_KEYS = {"schedule", "timezone", "catch_up", "catch_up_limit"}


@dataclass(frozen=True, slots=True, kw_only=True)
class CronConfig:
    """A validated schedule.

    `schedule` has 6 fields (seconds first: "0 0 3 * * *"), 5 fields (minutes first, as in
    crontab) or is an alias such as "@hourly". `catch_up` says what happens to ticks missed
    while no daemon ran: "none" skips them, "latest" runs the most recent one, "all" runs each
    (at most `catch_up_limit`, oldest first).
    """

    schedule: str
    timezone: ZoneInfo
    catch_up: CatchUp = "none"
    catch_up_limit: int = 10

    @property
    def seconds_first(self) -> bool:
        """True for the 6-field form."""
        return len(self.schedule.split()) == 6

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> CronConfig:
        """Validate a cron worker's keys; errors name the key."""
        unknown = set(options) - _KEYS
        if unknown:
            raise ConfigError("unknown key", key=sorted(unknown)[0])
        schedule = options.get("schedule")
        if not isinstance(schedule, str) or not schedule.strip():
            raise ConfigError('a cron schedule is required, e.g. "0 */5 * * * *"', key="schedule")
        schedule = " ".join(schedule.split())
        _check_schedule(schedule)
        tz_name = options.get("timezone", "UTC")
        try:
            timezone = ZoneInfo(str(tz_name))
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f'unknown timezone "{tz_name}" (use an IANA name such as "Europe/Paris")', key="timezone"
            ) from None
        catch_up = options.get("catch_up", "none")
        if catch_up not in _CATCH_UP:
            raise ConfigError(f'must be "none", "latest" or "all", got {catch_up!r}', key="catch_up")
        limit = options.get("catch_up_limit", 10)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise ConfigError(f"must be an integer from 1 to 1000, got {limit!r}", key="catch_up_limit")
        return cls(schedule=schedule, timezone=timezone, catch_up=cast(CatchUp, catch_up), catch_up_limit=limit)


def _check_schedule(schedule: str) -> None:
    try:
        from croniter import croniter
    except ImportError:
        raise MissingExtra("backend \"cron\" needs the extra: pip install 'apalis-cli[cron]'") from None
    fields = len(schedule.split())
    if schedule.startswith("@"):
        if schedule not in _ALIASES:
            raise ConfigError(f'unknown alias "{schedule}" (known: {", ".join(_ALIASES)})', key="schedule")
        return
    if fields not in (5, 6):
        raise ConfigError(
            f'expected 5 fields (minute first) or 6 (second first), got {fields} in "{schedule}"', key="schedule"
        )
    if not croniter.is_valid(schedule, second_at_beginning=fields == 6):
        raise ConfigError(f'not a valid cron expression: "{schedule}"', key="schedule")
