"""`apalis push`: enqueue tasks from the shell; new ids on stdout, one per line.

All or nothing for what can be known in advance: the whole input is read, checked and encoded
before the first task is written, so a bad line stores nothing and is named. The tasks are then
written in batches; a store that fails part-way leaves the batches already written (their ids are
on stdout) and the error says how many.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..bounds import ATTEMPTS, KEY_LENGTH, PRIORITY, check_length, check_time
from ..durations import format_duration, parse_duration
from ..errors import ApalisError, Unsupported, UsageError
from .app import DEFAULT_CONFIG, ConfigOption, QueueOption, WorkerOption, app, checked, text
from .push_input import Value, read_argument, read_lines, read_stdin

if TYPE_CHECKING:
    from ..api import QueueTarget
    from ..backend import NewTask, TaskSink
    from ..config import Config
    from .common import Opened

__all__ = ["WAIT_TIMED_OUT", "parse_at", "push"]

_CHUNK = 1000

WAIT_TIMED_OUT = 124
"""`push --wait`'s exit code when `--timeout` passed first (as `timeout(1)`): the task goes on."""


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
    max_attempts: Annotated[int | None, typer.Option(help="Runs before the task is killed.")] = None,
    key: Annotated[
        str | None, typer.Option(callback=text, help="Idempotency key: the same key twice makes one task.")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait for the task to end: its result as JSON on stdout (exit 0), or its last error on "
            f"stderr when killed or cancelled (exit 1); exit {WAIT_TIMED_OUT} on --timeout, the task goes on.",
        ),
    ] = False,
    timeout: Annotated[
        str | None, typer.Option(help='With --wait: give up waiting after this long, e.g. "30s".')
    ] = None,
    unique_key: Annotated[
        str | None,
        typer.Option(callback=text, help="Unique key: no new task while one holds it (see --unique-period)."),
    ] = None,
    unique_period: Annotated[
        str | None, typer.Option(help='How long a task holds its unique key, e.g. "10m" (default: no end).')
    ] = None,
    unique_states: Annotated[
        str | None,
        typer.Option(help="The states in which a task holds its unique key (default: pending,running,failed,done)."),
    ] = None,
    on_conflict: Annotated[
        str | None, typer.Option(help="What a duplicate unique push does: skip (default), replace or extend.")
    ] = None,
) -> None:
    """Push tasks; prints each new task id on stdout (with --wait: the task's result).

    A file or stdin is read and encoded whole before the first task is written: a bad line
    pushes nothing.
    """
    options = _options(delay, at, priority, max_attempts)
    within = _wait_options(wait, timeout)
    if key is not None and not key.strip():
        # Most likely an unset shell variable (`--key "$ID"`): every such push would be one task.
        raise UsageError("--key must not be empty")
    if key is not None:
        checked("--key", key, lambda text: check_length(text, KEY_LENGTH))
    unique = _unique(unique_key, unique_period, unique_states, on_conflict)
    values = _read_values(args, file)
    if key is not None and len(values) != 1:
        raise UsageError("--key names one task; it cannot be used when pushing several")
    if wait and len(values) != 1:
        raise UsageError("--wait waits for one task; it cannot be used when pushing several")
    if unique is not None and len(values) != 1:
        raise UsageError("--unique-key names one task; it cannot be used when pushing several")
    from .common import resolve

    loaded, target = resolve(config, worker, queue)
    if unique is not None:
        options["unique"] = unique
    tasks = _new_tasks(values, loaded, target, options, key)
    from .. import loops  # here, not at the top: `apalis --help` and the other commands do without

    if wait:
        raise typer.Exit(loops.run(_push_and_wait(loaded, target, tasks[0], options, key, within)))
    loops.run(_push(loaded, target, tasks, [v.where for v in values], options, key))


def _wait_options(wait: bool, timeout: str | None) -> float | None:
    if timeout is None:
        return None
    if not wait:
        raise UsageError("--timeout goes with --wait")
    seconds = checked("--timeout", timeout, parse_duration)
    if seconds <= 0:
        raise UsageError("--timeout must be longer than zero")
    return seconds


async def _push_and_wait(
    config: Config, target: QueueTarget, task: NewTask, options: dict[str, Any], key: str | None, within: float | None
) -> int:
    """Push one task and wait for it to end; the exit code (0 done, 1 killed or cancelled,
    `WAIT_TIMED_OUT`)."""
    import dataclasses
    import json

    from ..backend import Capability
    from ..control import Waiter
    from ..printable import printable
    from ..redact import redact
    from ..task import Status
    from .common import open_resolved, require
    from .inspect import task_json

    async with open_resolved(config, target) as opened:
        sink = _sink(opened, options, key)
        # Checked before the push: a store that cannot wait must not leave a task behind.
        require(opened, Capability.WAIT, "wait for a task")
        waiter: Any = opened.backend
        if not isinstance(waiter, Waiter):
            raise Unsupported(f"{opened.describe()} cannot wait for a task: the store has no wait")
        # Marked waited: a worker that ends it before the wait registers leaves its end kept.
        (task_id,) = await sink.enqueue([dataclasses.replace(task, waited=True)])
        ended = await waiter.wait(task_id, within)
        if ended is None:
            late = f"task {task_id} had not ended after {format_duration(within or 0)}; it goes on"
            print(f"apalis: {late}", file=sys.stderr)
            return WAIT_TIMED_OUT
        if ended.ctx.status is Status.DONE:
            print(json.dumps(task_json(ended)["result"], ensure_ascii=False))
            return 0
        error = redact(ended.ctx.last_error or "", config.secrets)
        line = f"task {task_id} ended {ended.ctx.status.value}: {error}"
        print(printable(f"apalis: {' '.join(line.split())}"), file=sys.stderr)
        return 1


def _unique(key: str | None, period: str | None, states: str | None, on_conflict: str | None) -> dict[str, Any] | None:
    """The `unique` push option from the --unique-* options, checked now (nothing is pushed else)."""
    if key is None:
        flags = (("--unique-period", period), ("--unique-states", states), ("--on-conflict", on_conflict))
        given = [flag for flag, value in flags if value is not None]
        if given:
            raise UsageError(f"{given[0]} needs --unique-key")
        return None
    if not key.strip():
        raise UsageError("--unique-key must not be empty")  # most likely an unset shell variable
    unique: dict[str, Any] = {"key": key, "period": period, "states": states}
    if on_conflict is not None:
        unique["on_conflict"] = on_conflict
    from ..fleet.unique import unique_from

    unique_from(unique, labels=_UNIQUE_FLAGS)
    return unique


_UNIQUE_FLAGS = {
    "key": "--unique-key",
    "period": "--unique-period",
    "states": "--unique-states",
    "on_conflict": "--on-conflict",
}


def _new_tasks(
    values: Sequence[Value], config: Config, target: QueueTarget, options: dict[str, Any], key: str | None
) -> list[NewTask]:
    """Every value encoded by the target's codec, as tasks: a value the codec refuses is named.
    Under a worker whose global limits are by key, each task carries its key from its value."""
    from ..codec import codec_by_name
    from ..sink import new_task

    codec = codec_by_name(target.codec)
    worker = next((w for w in config.workers if w.name == target.worker), None)
    limits = worker.limits if worker is not None and worker.queue == target.queue else None
    limit_key = None
    if limits is not None and limits.keyed and limits.key is not None:
        from ..fleet.keys import key_of

        limit_key = limits.key
    tasks = []
    for value in values:
        if limit_key is not None:
            options = {**options, "limit_key": key_of(value.value, limit_key)}
        try:
            payload = codec.encode(value.value)
        except UsageError as exc:
            message = f"{value.where} cannot be pushed: {exc}"
            if len(values) > 1:
                message += "; nothing was pushed"
            raise UsageError(message) from None
        tasks.append(new_task(payload, default_max_attempts=target.max_attempts, idempotency_key=key, **options))
    return tasks


async def _push(
    config: Config,
    target: QueueTarget,
    tasks: Sequence[NewTask],
    wheres: Sequence[str],
    options: dict[str, Any],
    key: str | None,
) -> None:
    from .common import open_resolved

    async with open_resolved(config, target) as opened:
        sink = _sink(opened, options, key)
        stored = 0
        with _progress(len(tasks)) as advance:
            try:
                for start in range(0, len(tasks), _CHUNK):
                    chunk = tasks[start : start + _CHUNK]
                    ids = await sink.enqueue(chunk)
                    # Straight to stdout, line by line as batches land: `> ids.txt` gets every id.
                    sys.stdout.write("".join(f"{task_id}\n" for task_id in ids))
                    sys.stdout.flush()
                    stored += len(chunk)
                    advance(len(chunk))
            except BaseException as exc:
                if stored == 0:
                    raise
                done = (
                    f"{stored} of {len(tasks)} tasks were pushed (their ids are on stdout), up to {wheres[stored - 1]}"
                )
                if isinstance(exc, Exception):
                    from ..errors import describe_error

                    raise ApalisError(f"{done}; then the store failed: {describe_error(exc)}") from None
                print(f"apalis: {done}", file=sys.stderr)  # interrupted: say what is stored, then stop
                raise


def _progress(total: int) -> Any:
    """A context manager yielding `advance(n)`: a bar on stderr when it is a terminal and the ids
    are not going there too (the bar never takes stdout, so `> ids.txt` gets every id)."""
    import contextlib

    if total < 2 or not sys.stderr.isatty() or sys.stdout.isatty():
        return contextlib.nullcontext(lambda n: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def bar() -> Any:
        with Progress(
            TextColumn("pushing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as progress:
            task = progress.add_task("push", total=total)
            yield lambda n: progress.advance(task, n)

    return bar()


def _sink(opened: Opened, options: dict[str, Any], key: str | None) -> TaskSink:
    from ..backend import Capability, TaskSink
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
    if options.get("unique") is not None:
        require(opened, Capability.UNIQUE, "push a unique task")
    return backend


def _options(delay: str | None, at: str | None, priority: int, max_attempts: int | None) -> dict[str, Any]:
    """The push options, each checked against the bounds every store can hold."""
    if delay is not None and at is not None:
        raise UsageError("give either --delay or --at, not both")
    options: dict[str, Any] = {"priority": checked("--priority", priority, PRIORITY.check)}
    options["max_attempts"] = None if max_attempts is None else checked("--max-attempts", max_attempts, ATTEMPTS.check)
    if delay is not None:
        options["delay"] = checked("--delay", delay, parse_duration)
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
    try:
        # An offset can carry a time in year 1 or 9999 over the edge of what can be stored.
        return check_time(moment.timestamp())
    except (ValueError, OverflowError):
        raise UsageError(f'--at: "{text}" must fall in the years 1 to 9999 once in UTC') from None


def _read_values(args: str | None, file: Path | None) -> list[Value]:
    if (args is None) == (file is None):
        raise UsageError("give the task's arguments as JSON (or - for stdin), or --file FILE.jsonl")
    if file is not None:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise UsageError(f"{file}: cannot read: {exc.strerror or exc}") from None
        return read_lines(data, str(file))
    assert args is not None
    if args != "-":
        return [read_argument(args)]
    return read_stdin(sys.stdin.buffer.read())
