"""A process's contact with its store: lost, and since when it has been reachable again.

After an outage every worker's last heartbeat is old, the live workers' too: they could not beat
while the store was down. An orphan sweep that believed those heartbeats the moment the store
answered again would take the tasks of live workers, tasks they may have finished while their
acknowledgements waited for the store, and run them a second time. So a store sweeps only once
its process has had the store reachable for a full `stale_after` (`steady_for`): every live
worker has had that long to reconnect and beat. A store opened just now counts as reached now,
so a new process also waits `stale_after` before it takes anyone's tasks.

The store's connection layer reports each try: `lost()` when one failed for want of the store,
`reached()` when one got its answer. A heartbeat or a retry waiting in `sleep` wakes as soon as
the store is reached again, so a reconnecting worker beats and writes its pending
acknowledgements at once rather than after its backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

__all__ = ["Contact"]


class Contact:
    """Whether the store is reachable from this process now, and since when without a break."""

    __slots__ = ("_lost", "_restored", "_since")

    def __init__(self) -> None:
        self._since = time.monotonic()
        self._lost = False
        self._restored: asyncio.Event | None = None

    def lost(self) -> None:
        """A try failed because the store could not be reached (refused, dropped, timed out)."""
        self._lost = True

    def reached(self) -> None:
        """A try got its answer from the store; after a loss, the steady time starts over."""
        if self._lost:
            self._lost = False
            self._since = time.monotonic()
            restored, self._restored = self._restored, None
            if restored is not None:
                restored.set()

    def steady_for(self, seconds: float) -> bool:
        """True when the store has been reachable, without a failed try, for `seconds`."""
        return not self._lost and time.monotonic() - self._since >= seconds

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds`, or less: until a lost store is reached again."""
        restored = self._restored
        if restored is None:
            restored = self._restored = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await restored.wait()
