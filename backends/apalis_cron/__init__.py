"""The cron backend (`kind = "cron"`): scheduled ticks as tasks, once per tick with `pipe_to`."""

from __future__ import annotations

from .config import CronConfig
from .queue import CronBackend, CronStore, Ticker, tick_key
from .schedule import Schedule

__all__ = ["CronBackend", "CronConfig", "CronStore", "Schedule", "Ticker", "tick_key"]
