"""Running a worker in a test until what the test waits for has happened."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from apalis_cli.worker import Worker


async def run_until(worker: Worker, condition: Any, within: float = 10.0) -> None:
    """Run `worker` until `condition()` holds, then stop it gracefully; fail on a timeout or if
    the worker ends first (its crash, if any, is the error shown)."""
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + within
    try:
        while not condition():
            if running.done():
                running.result()
                raise AssertionError("the worker stopped before the condition held")
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await running
