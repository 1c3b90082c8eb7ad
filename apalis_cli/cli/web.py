"""`apalis web`: the web board and its JSON API over the config's queues."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import MissingExtra
from .app import DEFAULT_CONFIG, ConfigOption, app, text

__all__ = ["web"]


@app.command()
def web(
    config: ConfigOption = DEFAULT_CONFIG,
    addr: Annotated[
        str, typer.Option(callback=text, help="Listen on HOST:PORT (loopback by default).")
    ] = "127.0.0.1:8080",
    admin: Annotated[
        bool,
        typer.Option(
            help="Allow actions (retry, cancel, kill, purge, pause, push); off loopback it needs APALIS_WEB_TOKEN."
        ),
    ] = False,
) -> None:
    """Serve the web board: every queue's counts, tasks, workers, and actions with --admin.

    A token in $APALIS_WEB_TOKEN protects every page and API call (bearer header or sign-in form).
    """
    try:
        from ..web.serve import run_board  # the web extra: starlette, uvicorn, jinja2
    except ImportError as exc:
        raise MissingExtra(
            f"apalis web needs the extra: pip install 'apalis-cli[web]' ({exc.name} is missing)"
        ) from None
    run_board(config, addr, admin=admin)
