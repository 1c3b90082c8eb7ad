"""The Typer application and the options its commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ConfigOption", "JsonOption", "QueueOption", "WorkerOption", "app"]

app = typer.Typer(
    name="apalis",
    help="Background jobs as a CLI worker daemon: push tasks, run workers, inspect queues.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", envvar="APALIS_CONFIG", help="The config file (or $APALIS_CONFIG).", show_default=True
    ),
]
WorkerOption = Annotated[
    str | None, typer.Option("--worker", "-w", help="The worker (queue) to use; optional with one worker.")
]
QueueOption = Annotated[str | None, typer.Option("--queue", "-q", help="A queue name instead of a worker's queue.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]

DEFAULT_CONFIG = Path("apalis.toml")
