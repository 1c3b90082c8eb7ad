"""What `apalis run` does once its options are read: assemble the workers and supervise them.

Kept apart from the command's definition (`run.py`) so that `apalis --help` and the other
commands do not import the daemon's machinery (asyncio, structlog, rich's live view, workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import NoReturn

import structlog
from rich.console import Console
from rich.live import Live

from .. import loops
from ..backend import Inspector
from ..config import load_config
from ..errors import UsageError
from ..events import EventListener, masking
from ..logs import LOG_LEVELS, LogFormat, event_logger, setup_logging
from ..supervisor import Supervisor
from .assembly import Assembly, assemble, opened_stores
from .children import children_details
from .common import masked_errors
from .daemon_http import HttpOptions, parse_http_options, serving_http
from .live import Dashboard

__all__ = ["run_daemon"]

_DEPTH_EVERY = 2.0
_DEPTH_TIMEOUT = 10.0
_LAST_COUNT_TIMEOUT = 2.0


def run_daemon(
    config: Path,
    worker: list[str] | None,
    *,
    burst: bool,
    concurrency: int | None,
    log_format: str | None,
    log_level: str,
    live: bool | None,
    metrics_addr: str | None,
    web: str | None = None,
    web_admin: bool = False,
) -> None:
    """`apalis run` with its options (see `run.run` for what they mean)."""
    if log_format not in (None, "console", "json"):
        raise UsageError(f'--log-format: expected console or json, got "{log_format}"')
    if log_level.lower() not in LOG_LEVELS:
        raise UsageError(f'--log-level: expected one of {", ".join(LOG_LEVELS)}, got "{log_level}"')
    http = parse_http_options(metrics_addr, web, web_admin)
    loaded = load_config(config)
    selected = [loaded.worker(name) for name in dict.fromkeys(worker)] if worker else list(loaded.workers)
    if not selected:
        raise UsageError(f"{config}: no [[workers]] to run")
    fmt: LogFormat | None = "json" if log_format == "json" else "console" if log_format == "console" else None
    setup_logging(fmt, log_level.lower(), secrets=loaded.secrets)
    assembly = assemble(loaded, selected, concurrency)
    # Asking for a log format asks for log lines; otherwise a terminal gets the live view.
    show_live = (sys.stdout.isatty() and log_format is None) if live is None else live
    log_tasks = log_level.lower() in ("debug", "info")
    with contextlib.suppress(asyncio.CancelledError), masked_errors(loaded):  # a signal while waiting for a store
        loops.run(_run(assembly, burst=burst, live=show_live, log_tasks=log_tasks, http=http))


async def _run(assembly: Assembly, *, burst: bool, live: bool, log_tasks: bool, http: HttpOptions) -> None:
    # A daemon waits for a store that is not up yet (a signal ends the wait); a burst run is a
    # script's step: it fails at once.
    async with contextlib.AsyncExitStack() as stores:
        with _cancel_on_signals():
            await stores.enter_async_context(opened_stores(assembly, wait=not burst))
        await _supervise(assembly, burst=burst, live=live, log_tasks=log_tasks, http=http)


@contextlib.contextmanager
def _cancel_on_signals() -> Iterator[None]:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        if task is not None:
            loop.add_signal_handler(sig, task.cancel)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _supervise(assembly: Assembly, *, burst: bool, live: bool, log_tasks: bool, http: HttpOptions) -> None:
    async with contextlib.AsyncExitStack() as stack:
        factories = [lambda w=w: assembly.factory(w) for w in assembly.workers]
        dashboard: Dashboard | None = None
        listeners: list[EventListener] = []
        depths: Mapping[str, Inspector] = {}
        supervisor: Supervisor

        def running(name: str) -> int:
            return sum(w.running for w in supervisor.workers if w is not None and w.name == name)

        if live:
            dashboard = Dashboard(
                [(w.name, w.queue) for w in assembly.workers],
                running,
                lambda: supervisor.stopping,
                details=children_details(assembly.pools()),
            )
            listeners.append(dashboard.on_event)
            depths = assembly.inspectors()
            await stack.enter_async_context(_watching_depths(depths, dashboard))
        else:
            listeners.append(event_logger(tasks=log_tasks))
        if http:
            listeners.append(await stack.enter_async_context(serving_http(assembly, lambda: supervisor.workers, http)))
        supervisor = Supervisor(factories, on_event=[masking(listeners, assembly.config.secrets)])
        screens: list[Live] = []
        supervisor.install_signal_handlers(exit_now=lambda signum: _exit_now(signum, screens))
        try:
            if dashboard is None:
                await supervisor.run(burst=burst)
            else:
                console = Console()
                with Live(
                    console=console, get_renderable=dashboard.render, refresh_per_second=4, redirect_stderr=True
                ) as screen:
                    screens.append(screen)
                    await supervisor.run(burst=burst)
                    await _count_depths(depths, dashboard, _LAST_COUNT_TIMEOUT)  # the last frame stays on screen
        finally:
            supervisor.remove_signal_handlers()


def _exit_now(signum: int, screens: list[Live]) -> NoReturn:
    """The second signal found runs that nothing but the end of the process stops (a sync
    handler's threads): end it now. Their tasks were never released, so no other worker runs
    them meanwhile; they come back when this worker's heartbeat is stale."""
    for live in screens:
        with contextlib.suppress(Exception):
            live.stop()  # give the terminal its cursor back
    structlog.get_logger("apalis").warning(
        "exiting at once: runs still going end with the process; their tasks come back after stale_after"
    )
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(128 + signum)


@contextlib.asynccontextmanager
async def _watching_depths(queues: Mapping[str, Inspector], dashboard: Dashboard) -> AsyncIterator[None]:
    """Count each queue's tasks for the live view now and then, in a task of its own."""
    watcher = asyncio.create_task(_watch_depths(queues, dashboard), name="apalis-live-depths")
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _watch_depths(queues: Mapping[str, Inspector], dashboard: Dashboard) -> None:
    # Off the hot path: one count per queue every _DEPTH_EVERY seconds, and never more than a
    # tenth of the store's time (a count that takes 0.5 s on a large queue is asked every 5 s).
    while True:
        started = time.monotonic()
        await _count_depths(queues, dashboard, _DEPTH_TIMEOUT)
        await asyncio.sleep(max(_DEPTH_EVERY, 10 * (time.monotonic() - started)))


async def _count_depths(queues: Mapping[str, Inspector], dashboard: Dashboard, per_queue: float) -> None:
    for queue, inspector in queues.items():
        try:
            async with asyncio.timeout(per_queue):
                stats = await inspector.stats()
        except Exception:  # a store that is down: the view keeps the last figures, dimmed
            dashboard.set_depth(queue, None)
        else:
            dashboard.set_depth(queue, stats)
            await _read_paused(queue, inspector, dashboard, per_queue)


async def _read_paused(queue: str, inspector: Inspector, dashboard: Dashboard, within: float) -> None:
    """Whether the queue is paused, as its store says (the workers hear it only at their
    heartbeat, where the store tells them at all)."""
    from ..backend import Capability
    from ..control import Pausable

    capabilities = getattr(inspector, "capabilities", None)
    if not isinstance(inspector, Pausable) or (capabilities is not None and not capabilities.has(Capability.PAUSE)):
        return
    with contextlib.suppress(Exception):  # a store that is down: the last state stays
        async with asyncio.timeout(within):
            dashboard.set_paused(queue, await inspector.paused())
