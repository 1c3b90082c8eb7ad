"""`apalis retry`, `kill` and `purge`: an operator's changes to tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..backend import Capability
from ..durations import parse_duration
from ..errors import ApalisError
from ..task import Status
from .app import DEFAULT_CONFIG, ConfigOption, QueueOption, WorkerOption, app, check_task_id, checked, text

# asyncio and the store's machinery are imported inside the commands: `apalis --help` and the
# other commands do without them.

__all__ = ["kill", "purge", "retry"]

TaskIdArgument = Annotated[
    str, typer.Argument(callback=check_task_id, metavar="TASK_ID", help="The task's id.", show_default=False)
]


@app.command()
def retry(
    task_id: TaskIdArgument,
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    queue: QueueOption = None,
) -> None:
    """Make a failed or killed task pending again (attempts reset)."""
    import asyncio

    asyncio.run(_change(config, worker, queue, task_id, "retry"))
    print(f"retried {task_id}")


@app.command()
def kill(
    task_id: TaskIdArgument,
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    queue: QueueOption = None,
    reason: Annotated[
        str, typer.Option(callback=text, help="Kept as the task's last error.")
    ] = "killed by an operator",
) -> None:
    """Kill a pending, failed or running task: it will not run again."""
    import asyncio

    asyncio.run(_change(config, worker, queue, task_id, "kill", reason))
    print(f"killed {task_id}")


async def _change(
    config: Path, worker: str | None, queue: str | None, task_id: str, action: str, reason: str = ""
) -> None:
    from .common import open_target, require_inspector

    async with open_target(config, worker, queue) as opened:
        inspector = require_inspector(opened, Capability.ADMIN, f"{action} tasks")
        changed = await (inspector.retry(task_id) if action == "retry" else inspector.kill(task_id, reason))
        if not changed:
            task = await inspector.get(task_id)
            if task is None:
                raise ApalisError(f"no task {task_id} in {opened.describe()}")
            raise ApalisError(f"cannot {action} task {task_id}: it is {task.ctx.status.value}")


@app.command()
def purge(
    status: Annotated[Status, typer.Option("--status", "-s", help="Delete tasks in this status.")],
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    queue: QueueOption = None,
    older_than: Annotated[
        str | None, typer.Option(help='Only those finished (or created) longer ago than this, e.g. "7d".')
    ] = None,
) -> None:
    """Delete tasks of one status from a queue; prints how many."""
    age = None if older_than is None else checked("--older-than", older_than, parse_duration)
    import asyncio

    count = asyncio.run(_purge(config, worker, queue, status, age))
    print(f"purged {count} {status.value} task{'s' if count != 1 else ''}")


async def _purge(config: Path, worker: str | None, queue: str | None, status: Status, age: float | None) -> int:
    from .common import open_target, require_inspector

    async with open_target(config, worker, queue) as opened:
        return await require_inspector(opened, Capability.ADMIN, "purge tasks").purge(status, age)
