"""The Typer application and the options its commands share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from ..errors import UsageError

__all__ = ["ConfigOption", "JsonOption", "QueueOption", "WorkerOption", "app", "check_task_id", "checked", "text"]

T = TypeVar("T")
V = TypeVar("V")

app = typer.Typer(
    name="apalis",
    help="Background jobs as a CLI worker daemon: push tasks, run workers, inspect queues.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def text(value: T) -> T:
    """A text option's value (or each of a list's), refused when it is not UTF-8: the shell passes
    bytes, Python keeps what is not UTF-8 as lone surrogates, and no store can write those."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise typer.BadParameter("not UTF-8 text") from None
    return value


def check_task_id(value: str | None) -> str | None:
    """A task id: UTF-8 text with more than blanks in it."""
    if value is not None and not value.strip():
        raise typer.BadParameter("a task id cannot be empty")
    return text(value)


ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", envvar="APALIS_CONFIG", help="The config file (or $APALIS_CONFIG).", show_default=True
    ),
]
WorkerOption = Annotated[
    str | None,
    typer.Option("--worker", "-w", callback=text, help="The worker (queue) to use; optional with one worker."),
]
QueueOption = Annotated[
    str | None, typer.Option("--queue", "-q", callback=text, help="A queue name instead of a worker's queue.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]

DEFAULT_CONFIG = Path("apalis.toml")


def checked(option: str, value: V, check: Callable[[V], T]) -> T:
    """`check(value)` (a bound from `apalis_cli.bounds`, a parser), its ValueError as a usage error
    naming the option: `--priority: must be <= 2147483647, got 99999999999`."""
    try:
        return check(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"apalis {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Background jobs as a CLI worker daemon: push tasks, run workers, inspect queues."""
