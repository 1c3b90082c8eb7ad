"""`apalis run`: the daemon. A live view in a terminal, structured log lines otherwise."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from ..config import load_config
from ..errors import UsageError
from ..events import EventListener
from ..logs import LOG_LEVELS, LogFormat, event_logger, setup_logging
from ..supervisor import Supervisor
from .app import DEFAULT_CONFIG, ConfigOption, app
from .assembly import Assembly, assemble, opened_stores
from .console import Dashboard

__all__ = ["run"]


@app.command()
def run(
    config: ConfigOption = DEFAULT_CONFIG,
    worker: Annotated[
        list[str] | None, typer.Option("--worker", "-w", help="Run only this worker (repeat for several).")
    ] = None,
    burst: Annotated[bool, typer.Option(help="Exit once no task is ready or running.")] = False,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Override every worker's concurrency.")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="console or json (default: console in a terminal, json otherwise).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    live: Annotated[
        bool | None, typer.Option("--live/--no-live", help="The live view (default: on when stdout is a terminal).")
    ] = None,
) -> None:
    """Run the workers until SIGTERM/SIGINT (a second SIGINT stops at once) or, with --burst, until idle."""
    if log_format not in (None, "console", "json"):
        raise UsageError(f'--log-format: expected console or json, got "{log_format}"')
    if log_level.lower() not in LOG_LEVELS:
        raise UsageError(f'--log-level: expected one of {", ".join(LOG_LEVELS)}, got "{log_level}"')
    loaded = load_config(config)
    selected = [loaded.worker(name) for name in worker] if worker else list(loaded.workers)
    if not selected:
        raise UsageError(f"{config}: no [[workers]] to run")
    fmt: LogFormat | None = "json" if log_format == "json" else "console" if log_format == "console" else None
    setup_logging(fmt, log_level.lower())
    assembly = assemble(loaded, selected, concurrency)
    show_live = sys.stdout.isatty() if live is None else live
    asyncio.run(_run(assembly, burst=burst, live=show_live, log_tasks=log_level.lower() in ("debug", "info")))


async def _run(assembly: Assembly, *, burst: bool, live: bool, log_tasks: bool) -> None:
    async with opened_stores(assembly):
        factories = [lambda w=w: assembly.factory(w) for w in assembly.workers]
        dashboard: Dashboard | None = None
        listeners: list[EventListener] = []
        supervisor: Supervisor

        def running(name: str) -> int:
            return sum(w.running for w in supervisor.workers if w is not None and w.name == name)

        if live:
            dashboard = Dashboard([(w.name, w.queue) for w in assembly.workers], running, lambda: supervisor.stopping)
            listeners.append(dashboard.on_event)
        else:
            listeners.append(event_logger(tasks=log_tasks))
        supervisor = Supervisor(factories, on_event=listeners)
        supervisor.install_signal_handlers()
        try:
            if dashboard is None:
                await supervisor.run(burst=burst)
            else:
                console = Console()
                with Live(console=console, get_renderable=dashboard.render, refresh_per_second=4, redirect_stderr=True):
                    await supervisor.run(burst=burst)
        finally:
            supervisor.remove_signal_handlers()
