"""`apalis run`: the daemon. A live view in a terminal, structured log lines otherwise."""

from __future__ import annotations

from typing import Annotated

import typer

from ..bounds import CONCURRENCY
from .app import DEFAULT_CONFIG, ConfigOption, app, checked, text

__all__ = ["run"]


@app.command()
def run(
    config: ConfigOption = DEFAULT_CONFIG,
    worker: Annotated[
        list[str] | None,
        typer.Option("--worker", "-w", callback=text, help="Run only this worker (repeat for several)."),
    ] = None,
    burst: Annotated[bool, typer.Option(help="Exit once no task is ready or running.")] = False,
    concurrency: Annotated[int | None, typer.Option(help="Override every worker's concurrency.")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="console or json (default: console in a terminal, json otherwise).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    live: Annotated[
        bool | None,
        typer.Option(
            "--live/--no-live", help="The live view (default: on in a terminal unless --log-format is given)."
        ),
    ] = None,
    metrics_addr: Annotated[
        str | None, typer.Option(help="Serve Prometheus /metrics and /healthz on HOST:PORT, e.g. 127.0.0.1:9464.")
    ] = None,
    web: Annotated[
        str | None,
        typer.Option(
            metavar="ADDR", callback=text, help="Serve the web board (with /metrics and /healthz) on HOST:PORT."
        ),
    ] = None,
    web_admin: Annotated[
        bool, typer.Option(help="Allow the board's actions (off loopback it needs APALIS_WEB_TOKEN).")
    ] = False,
) -> None:
    """Run the workers: the daemon.

    SIGTERM or SIGINT stops gracefully (a second SIGINT at once); --burst exits when nothing is
    ready or running.
    """
    if concurrency is not None:
        checked("--concurrency", concurrency, CONCURRENCY.check)
    from .daemon import run_daemon  # the daemon's machinery: imported only when it runs

    run_daemon(
        config,
        worker,
        burst=burst,
        concurrency=concurrency,
        log_format=log_format,
        log_level=log_level,
        live=live,
        metrics_addr=metrics_addr,
        web=web,
        web_admin=web_admin,
    )
