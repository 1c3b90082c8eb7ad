"""`apalis cancel`, `pause` and `resume`: the control plane from the shell.

A store that cannot do one of these (its capability declared lacking) is named with the reason
in one line, exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import ApalisError, Unsupported, UsageError
from .admin import TaskIdArgument, by_id_or_filter
from .app import DEFAULT_CONFIG, ConfigOption, QueueOption, WorkerOption, app, text
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

if TYPE_CHECKING:
    from ..api import QueueTarget
    from ..config import Config
    from ..control import CancelState, Pausable
    from .common import Opened

__all__ = ["cancel", "pause", "resume"]


@app.command()
def cancel(
    task_id: TaskIdArgument = None,
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    queue: QueueOption = None,
    reason: Annotated[
        str | None,
        typer.Option(callback=text, help='Kept as the task\'s last error [default: "cancelled by an operator"].'),
    ] = None,
    status: StatusesOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    error_contains: ErrorContainsOption = None,
    limit: LimitOption = None,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
) -> None:
    """Cancel a task: one not started never starts; a running one is stopped where it runs. It
    ends `cancelled`, never retried. By id, or every task a filter matches."""
    options = FilterOptions(status, since, until, error_contains, limit, dry_run, yes)
    if reason is not None and not reason.strip():
        raise UsageError("--reason must not be empty")
    if not by_id_or_filter("cancel", task_id, options, worker, queue):
        run_bulk("cancel", options, config, worker, queue, reason)
        return
    assert task_id is not None
    import asyncio

    from ..control import DEFAULT_CANCEL_REASON, CancelState, operator_reason

    state = asyncio.run(_cancel(config, worker, queue, task_id, operator_reason(reason, DEFAULT_CANCEL_REASON)))
    if state is CancelState.REQUESTED:
        print(f"cancelling {task_id}: it is running, its worker was told to stop it")
    else:
        print(f"cancelled {task_id}")


async def _cancel(config: Path, worker: str | None, queue: str | None, task_id: str, reason: str) -> CancelState:
    from ..backend import Capability
    from ..control import Canceller, CancelState
    from .common import open_task_queue, require

    async with open_task_queue(config, worker, queue, task_id) as opened:
        require(opened, Capability.CANCEL, "cancel tasks")
        backend: Any = opened.backend
        if not isinstance(backend, Canceller):
            raise Unsupported(f"{opened.describe()} cannot cancel tasks: the store has no cancel")
        result = await backend.cancel(task_id, reason)
        if result.state is CancelState.NOT_FOUND:
            raise ApalisError(f"no task {task_id} in {opened.describe()}")
        if result.state is CancelState.ALREADY_FINAL:
            status = result.status.value if result.status is not None else "final"
            raise ApalisError(f"cannot cancel task {task_id}: it is {status}")
        return result.state


QueueArgument = Annotated[
    str | None,
    typer.Argument(callback=text, metavar="QUEUE", help="The queue (or --worker, or --all).", show_default=False),
]
AllOption = Annotated[bool, typer.Option("--all", help="Every queue of the config.")]


@app.command()
def pause(
    queue: QueueArgument = None,
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    every: AllOption = False,
) -> None:
    """Pause a queue: no worker anywhere starts its tasks until it is resumed (pushes are still
    taken, running tasks finish). The state is kept in the store."""
    _switch(config, queue, worker, every, pause=True)


@app.command()
def resume(
    queue: QueueArgument = None,
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    every: AllOption = False,
) -> None:
    """Resume a paused queue: its workers start its tasks again at once."""
    _switch(config, queue, worker, every, pause=False)


def _switch(config_path: Path, queue: str | None, worker: str | None, every: bool, *, pause: bool) -> None:
    verb = "pause" if pause else "resume"
    if every and (queue is not None or worker is not None):
        raise UsageError(f"give a queue, --worker or --all to {verb}, not several")
    from ..api import resolve_target
    from ..config import load_config
    from .common import all_targets

    config = load_config(config_path)
    if every:
        targets = all_targets(config)
    elif queue is None and worker is None and len(config.workers) != 1:
        raise UsageError(f"say which queue to {verb}: apalis {verb} QUEUE (or --all)")
    else:
        targets = [resolve_target(config, worker, queue)]
    import asyncio

    lines, refused = asyncio.run(_switch_all(config, targets, pause=pause))
    for line in lines:
        print(line)
    if refused:
        from . import fail_line

        for line in refused:
            print(fail_line(line), file=sys.stderr)
        raise typer.Exit(2)


async def _switch_all(config: Config, targets: list[QueueTarget], *, pause: bool) -> tuple[list[str], list[str]]:
    """Pause or resume each target; what was done, and why the others could not be."""
    from .common import open_resolved

    done, refused = [], []
    for target in targets:
        async with open_resolved(config, target) as opened:
            try:
                pausable = _pausable(opened, "be paused")
            except Unsupported as exc:
                refused.append(str(exc))
                continue
            was = await pausable.paused()
            if pause:
                await pausable.pause()
                done.append(f"{opened.describe()} was already paused" if was else f"paused {opened.describe()}")
            else:
                await pausable.resume()
                done.append(f"resumed {opened.describe()}" if was else f"{opened.describe()} was not paused")
    return done, refused


def _pausable(opened: Opened, doing: str) -> Pausable:
    from ..backend import Capability
    from ..control import Pausable
    from .common import require

    require(opened, Capability.PAUSE, doing)
    backend: Any = opened.backend
    if not isinstance(backend, Pausable):
        raise Unsupported(f"{opened.describe()} cannot {doing}: the store has no pause")
    return backend
