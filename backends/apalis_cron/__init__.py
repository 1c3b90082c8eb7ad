"""The cron backend (`kind = "cron"`): scheduled ticks as tasks, once per tick with `pipe_to`."""

from __future__ import annotations

from .backend import CronBackend, CronStore, Ticker, tick_key
from .config import CronSettings
from .schedule import Schedule

__all__ = ["CronBackend", "CronSettings", "CronStore", "Schedule", "Ticker", "tick_key"]
