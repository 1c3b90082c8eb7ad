"""The cron backend (`kind = "cron"`): scheduled ticks as tasks, once per tick with `pipe_to`."""

from __future__ import annotations

from .store import CronStore

__all__ = ["CronStore"]
