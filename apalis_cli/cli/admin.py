"""`apalis retry`, `kill` and `purge`: an operator's changes to tasks, one by id or many by filter
(`bulk`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..durations import parse_duration
from ..errors import ApalisError, UsageError
from ..task import Status
from .app import DEFAULT_CONFIG, ConfigOption, QueueOption, WorkerOption, app, check_task_id, checked, text
from .bulk import (
    DryRunOption,
    ErrorContainsOption,
    FilterOptions,
    LimitOption,
    SinceOption,
    StatusesOption,
    UntilOption,
    YesOption,
    run_bulk,
)

# asyncio and the store's machinery are imported inside the commands: `apalis --help` and the
# other commands do without them.

__all__ = ["TaskIdArgument", "by_id_or_filter", "kill", "purge", "retry"]

TaskIdArgument = Annotated[
    str | None,
    typer.Argument(
        callback=check_task_id, metavar="TASK_ID", help="The task's id (or a filter instead).", show_default=False
    ),
]


def by_id_or_filter(
    verb: str, task_id: str | None, options: FilterOptions, worker: str | None, queue: str | None
) -> bool:
    """True when the command acts on one task by id, False when on a filter; a usage error when
    it is given both or neither (`--queue`/`--worker` alone are a filter: the whole queue)."""
    if task_id is not None:
        if options.given or options.dry_run or options.yes:
            raise UsageError(f"give a task id or a filter (--status, --since, ...) to {verb}, not both")
        return True
    if not (options.given or worker is not None or queue is not None):
        raise UsageError(
            f"say which tasks to {verb}: a task id, or a filter (--status, --queue, --since, --until, "
            "--error-contains, --limit)"
        )
    return False


# Taken only to be refused with the reason: cancel and kill keep a reason, retry and purge none.
NoReasonOption = Annotated[str | None, typer.Option("--reason", hidden=True)]


def _no_reason(verb: str, reason: str | None) -> None:
    if reason is not None:
        raise UsageError(f"--reason: {verb} keeps no reason (cancel and kill do)")


@app.command()
def retry(
    task_id: TaskIdArgument = None,
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    queue: QueueOption = None,
    status: StatusesOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    error_contains: ErrorContainsOption = None,
    limit: LimitOption = None,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
    reason: NoReasonOption = None,
) -> None:
    """Make a failed, killed or cancelled task pending again (attempts reset); by id, or every
    task a filter matches (killed and cancelled ones unless --status says otherwise)."""
    _no_reason("retry", reason)
    options = FilterOptions(status, since, until, error_contains, limit, dry_run, yes)
    if not by_id_or_filter("retry", task_id, options, worker, queue):
        run_bulk("retry", options, config, worker, queue)
        return
    assert task_id is not None
    import asyncio

    asyncio.run(_change(config, worker, queue, task_id, "retry"))
    print(f"retried {task_id}")


@app.command()
def kill(
    task_id: TaskIdArgument = None,
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    queue: QueueOption = None,
    reason: Annotated[
        str | None,
        typer.Option(callback=text, help='Kept as the task\'s last error [default: "killed by an operator"].'),
    ] = None,
    status: StatusesOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    error_contains: ErrorContainsOption = None,
    limit: LimitOption = None,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
) -> None:
    """Kill a pending, failed or running task: it will not run again; by id, or every task a
    filter matches."""
    options = FilterOptions(status, since, until, error_contains, limit, dry_run, yes)
    if reason is not None and not reason.strip():
        raise UsageError("--reason must not be empty")
    if not by_id_or_filter("kill", task_id, options, worker, queue):
        run_bulk("kill", options, config, worker, queue, reason)
        return
    assert task_id is not None
    import asyncio

    from ..control import DEFAULT_KILL_REASON, operator_reason

    asyncio.run(_change(config, worker, queue, task_id, "kill", operator_reason(reason, DEFAULT_KILL_REASON)))
    print(f"killed {task_id}")


async def _change(
    config: Path, worker: str | None, queue: str | None, task_id: str, action: str, reason: str = ""
) -> None:
    from ..backend import Capability
    from .common import open_task_queue, require_inspector

    async with open_task_queue(config, worker, queue, task_id) as opened:
        inspector = require_inspector(opened, Capability.ADMIN, f"{action} tasks")
        changed = await (inspector.retry(task_id) if action == "retry" else inspector.kill(task_id, reason))
        if not changed:
            task = await inspector.get(task_id)
            if task is None:
                raise ApalisError(f"no task {task_id} in {opened.describe()}")
            raise ApalisError(f"cannot {action} task {task_id}: it is {task.ctx.status.value}")


@app.command()
def purge(
    status: StatusesOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    queue: QueueOption = None,
    older_than: Annotated[
        str | None, typer.Option(help='Only those finished (or created) longer ago than this, e.g. "7d".')
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    error_contains: ErrorContainsOption = None,
    limit: LimitOption = None,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
    reason: NoReasonOption = None,
) -> None:
    """Delete tasks. `--status S [--older-than 7d]` deletes one status at once, as a retention
    chore; any other filter counts, asks, then deletes (done, killed and cancelled tasks unless
    --status says otherwise)."""
    _no_reason("purge", reason)
    age = None if older_than is None else checked("--older-than", older_than, parse_duration)
    options = FilterOptions(status, since, until, error_contains, limit, dry_run, yes)
    plain = status is not None and len(status) == 1 and not (options.given and _beyond_status(options))
    if plain and not dry_run and not yes:
        assert status is not None
        import asyncio

        count = asyncio.run(_purge(config, worker, queue, status[0], age))
        print(f"purged {count} {status[0].value} task{'s' if count != 1 else ''}")
        return
    if not options.given and not dry_run and worker is None and queue is None:
        raise UsageError("say which tasks to purge: --status, or a filter (--since, --until, --error-contains, ...)")
    if age is not None:
        if until is not None:
            raise UsageError("give --older-than or --until, not both")
        options = FilterOptions(status, since, f"{age}s", error_contains, limit, dry_run, yes)
    run_bulk("purge", options, config, worker, queue)


def _beyond_status(options: FilterOptions) -> bool:
    return any(value is not None for value in (options.since, options.until, options.error_contains, options.limit))


async def _purge(config: Path, worker: str | None, queue: str | None, status: Status, age: float | None) -> int:
    from ..backend import Capability
    from .common import open_target, require_inspector

    async with open_target(config, worker, queue) as opened:
        return await require_inspector(opened, Capability.ADMIN, "purge tasks").purge(status, age)
