"""`apalis push`: enqueue tasks from the shell; new ids on stdout, one per line."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..backend import Capability, TaskSink
from ..durations import parse_duration
from ..errors import Unsupported, UsageError
from .app import DEFAULT_CONFIG, ConfigOption, QueueOption, WorkerOption, app

if TYPE_CHECKING:
    from .common import Opened

__all__ = ["parse_at", "push"]

_CHUNK = 1000


@app.command()
def push(
    args: Annotated[
        str | None, typer.Argument(help="The task's arguments as JSON; - reads stdin (one JSON value per line).")
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    queue: QueueOption = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="A .jsonl file: one task per line.")] = None,
    delay: Annotated[str | None, typer.Option(help='Run after this long, e.g. "30s", "5m".')] = None,
    at: Annotated[str | None, typer.Option(help="Run at this ISO 8601 time (UTC without an offset).")] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first among ready tasks.")] = 0,
    max_attempts: Annotated[int | None, typer.Option(min=1, help="Runs before the task is killed.")] = None,
    key: Annotated[str | None, typer.Option(help="Idempotency key: the same key twice makes one task.")] = None,
) -> None:
    """Push tasks; prints each new task id on stdout."""
    values = _read_values(args, file)
    options = _options(delay, at, priority, max_attempts)
    if key is not None and len(values) != 1:
        raise UsageError("--key names one task; it cannot be used when pushing several")
    import asyncio  # here, not at the top: `apalis --help` and the other commands do without

    asyncio.run(_push(config, worker, queue, values, options, key, show_progress=file is not None))


async def _push(
    config: Path,
    worker: str | None,
    queue: str | None,
    values: Sequence[Any],
    options: dict[str, Any],
    key: str | None,
    *,
    show_progress: bool,
) -> None:
    from .common import open_target

    async with open_target(config, worker, queue) as opened:
        sink = _sink(opened, options, key)
        if len(values) == 1 and not show_progress:
            task_id = await sink.push(values[0], idempotency_key=key, **options)
            print(task_id, flush=True)
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        with Progress(
            TextColumn("pushing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=True,
        ) as progress:
            bar = progress.add_task("push", total=len(values))
            for start in range(0, len(values), _CHUNK):
                chunk = values[start : start + _CHUNK]
                ids = await sink.push_bulk(chunk, **options)
                sys.stdout.write("".join(f"{task_id}\n" for task_id in ids))
                sys.stdout.flush()
                progress.advance(bar, len(chunk))


def _sink(opened: Opened, options: dict[str, Any], key: str | None) -> TaskSink:
    from .common import require

    backend: Any = opened.backend
    if not isinstance(backend, TaskSink):
        raise Unsupported(f"{opened.describe()} cannot take pushed tasks (its tasks come from the store itself)")
    if options.get("delay") or options.get("run_at") is not None:
        require(opened, Capability.SCHEDULE, "schedule tasks")
    if options.get("priority"):
        require(opened, Capability.PRIORITY, "order tasks by priority")
    if key is not None:
        require(opened, Capability.IDEMPOTENCY, "deduplicate by key")
    return backend


def _options(delay: str | None, at: str | None, priority: int, max_attempts: int | None) -> dict[str, Any]:
    if delay is not None and at is not None:
        raise UsageError("give either --delay or --at, not both")
    options: dict[str, Any] = {"priority": priority, "max_attempts": max_attempts}
    if delay is not None:
        try:
            options["delay"] = parse_duration(delay)
        except ValueError as exc:
            raise UsageError(f"--delay: {exc}") from None
    if at is not None:
        options["run_at"] = parse_at(at)
    return options


def parse_at(text: str) -> float:
    """Epoch seconds of an ISO 8601 time; without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f'--at: expected an ISO 8601 time such as "2030-01-31T09:30:00Z", got "{text}"') from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _read_values(args: str | None, file: Path | None) -> list[Any]:
    if (args is None) == (file is None):
        raise UsageError("give the task's arguments as JSON (or - for stdin), or --file FILE.jsonl")
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{file}: cannot read: {exc.strerror or exc}") from None
        return _json_lines(text, str(file))
    assert args is not None
    if args != "-":
        return [_json(args, "the argument")]
    text = sys.stdin.read()
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) <= 1:
        return [_json(text, "stdin")]
    try:
        return [json.loads(text)]  # one value spread over several lines
    except ValueError:
        return _json_lines(text, "stdin")


def _json_lines(text: str, source: str) -> list[Any]:
    values = [_json(line, f"{source}:{number}") for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not values:
        raise UsageError(f"{source}: no tasks in it")
    return values


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
