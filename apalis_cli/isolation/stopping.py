"""Stopping a process the daemon started, and everything it started: its process group.

Children of a process pool and command handlers are started with `process_group=0` (a session
of their own on uvloop's loop: `apalis_cli.loops.own_group`), so each leads a group of its own:
a Ctrl-C in the terminal reaches only the daemon (which decides how to stop), and a kill reaches
the programs a handler started as well as the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable

__all__ = ["despite_cancellation", "terminate_group"]


async def terminate_group(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to the group `process` leads, SIGKILL to what is left of it after `grace`; then
    wait for `process` and close its stdin."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    if process.returncode is None:
        _signal_group(process, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await process.wait()
    # The handler's own programs get the grace too; nothing signals the end of a process that
    # is not our child, so the group is polled.
    while _signal_group(process, 0) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    _signal_group(process, signal.SIGKILL)
    await process.wait()
    if process.stdin is not None:
        process.stdin.close()


def _signal_group(process: asyncio.subprocess.Process, sig: int) -> bool:
    """Send `sig` to the group `process` leads; False when no process of it is left. The group
    cannot be another's while a process of it exists."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def despite_cancellation(work: Awaitable[None]) -> None:
    """Await `work` to its end even if this task is cancelled again meanwhile (the caller then
    re-raises its own cancellation): a run must not end while its process still runs."""
    future = asyncio.ensure_future(work)
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(future)
    future.result()
