"""Which event loop the daemon, `apalis push` and `SyncSink` run on: uvloop's when it is installed
(`pip install 'apalis-cli[uvloop]'`), asyncio's otherwise or when `APALIS_LOOP=asyncio` says so.

uvloop's loop costs less per turn: a push one at a time to Redis took 54-76 us of the client's CPU
on it against 56-94 us on asyncio's in four interleaved pairs (bench/README.md, "Redis, a push one
at a time"), and a lone task's round trips take two turns each. Code that brings its own loop (an
application awaiting `open_sink`) keeps the loop it runs on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["ENV", "loop_factory", "new_event_loop", "own_group", "run"]

T = TypeVar("T")

ENV = "APALIS_LOOP"
"""`asyncio` (asyncio's own loop even with uvloop installed), `uvloop` (fail when it is not
installed) or unset (uvloop's when installed)."""


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when it is installed and not turned off; None for asyncio's."""
    choice = os.environ.get(ENV, "").strip().lower()
    if choice not in ("", "asyncio", "uvloop"):
        raise ConfigError(f'{ENV}: expected "asyncio" or "uvloop", got "{choice}"')
    if choice == "asyncio":
        return None
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(f"{ENV}=uvloop, but uvloop is not installed: pip install 'apalis-cli[uvloop]'") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_factory` picks."""
    try:
        factory = loop_factory()
    except BaseException:
        main.close()  # never started: no "never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the kind `loop_factory` picks."""
    factory = loop_factory()
    return factory() if factory is not None else asyncio.new_event_loop()


def own_group() -> dict[str, Any]:
    """The `asyncio.create_subprocess_exec` option that starts a child in a process group of its
    own (a Ctrl-C in the terminal reaches the daemon only; a kill of the group reaches what the
    child started) on the running loop: `process_group=0` on asyncio's; uvloop's refuses that
    option (uvloop 0.21-0.23) and starts the child in a session of its own instead, which makes
    a process group of its own too (its id the child's pid), without a controlling terminal."""
    if type(asyncio.get_running_loop()).__module__.startswith("uvloop"):
        return {"start_new_session": True}
    return {"process_group": 0}
