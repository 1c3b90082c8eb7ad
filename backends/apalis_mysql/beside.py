"""Wake-ups sent beside the code that asked for them, which never waits for them.

A wake-up of other processes is a `KILL QUERY` of each of their listeners (`listener`), and the
server holds a KILL for up to 2 s (4 seen) when its target is not asleep yet, woken by another
signal just before (THD::awake retries the target's mutex for SECONDS_TO_WAIT_FOR_KILL; a loop
of three killers and three listeners here: 60 of 450 KILLs took 2-4 s). A push that sent its
wake-up itself returned that much later. So a push asks for its wake-up here and returns.

None is lost: per tag one signal is in flight at a time, and a wake-up asked for while it is
sends one more after it (the one in flight may have passed a listener before the asker's commit;
the next finds it). Several asked for meanwhile are that one, which also keeps a stream of pushes
from filling the pool with signals. `drain` waits for those on their way (a store that closes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

__all__ = ["Beside"]


class Beside:
    """Signals of `send(tag)`, each sent beside its asker, one at a time per tag."""

    def __init__(self, send: Callable[[str], Awaitable[None]]) -> None:
        self._send = send
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()

    def wake(self, tag: str) -> None:
        """Send a signal of `tag` after everything the caller committed, without waiting."""
        if tag in self._sending:
            self._again.add(tag)
            return
        self._sending[tag] = asyncio.create_task(self._run(tag), name=f"apalis-wake-beside-{tag}")

    async def _run(self, tag: str) -> None:
        try:
            while True:
                # A failure is no loss: the pollers it misses find the task at their next claim.
                with contextlib.suppress(Exception):
                    await self._send(tag)
                if tag not in self._again:
                    return
                self._again.discard(tag)
        finally:
            del self._sending[tag]

    async def drain(self) -> None:
        """Wait for the signals on their way, and those asked for meanwhile."""
        while self._sending:
            await asyncio.wait(list(self._sending.values()))

    def cancel(self) -> None:
        """Stop sending (the store is closing)."""
        for sending in self._sending.values():
            sending.cancel()
