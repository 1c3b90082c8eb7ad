"""Housekeeping a heartbeat starts and never waits for: one at a time, its failures logged.

A beat that waited for a VACUUM or a purge of many expired rows was as late as they were long;
past `stale_after` (or a pgmq lease) the other workers took its running tasks and ran them a
second time (tests/integration/test_postgres_sweep.py, test_pgmq.py). So the beat starts the
housekeeping beside itself and goes on. A beat that asks while one runs starts none: the next
beat asks again, and a table is not tidied twice at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Housekeeping"]

_log = logging.getLogger(__name__)


class Housekeeping:
    """A job run beside the beat that asked for it, never two at once."""

    def __init__(self, what: str) -> None:
        self._what = what  # for the log: "tidying the tasks table after a sweep"
        self._running: asyncio.Future[object] | None = None

    def start(self, job: Callable[[], Awaitable[object]]) -> None:
        """Run `job()` beside the caller, unless the last one still runs."""
        if self._running is not None and not self._running.done():
            return
        self._running = asyncio.ensure_future(job())
        self._running.add_done_callback(self._ended)

    def _ended(self, running: asyncio.Future[object]) -> None:
        # Logged by its type: its text may quote the server (a URL with its password).
        if not running.cancelled() and (exc := running.exception()) is not None:
            _log.warning("%s failed: %s", self._what, type(exc).__name__)
