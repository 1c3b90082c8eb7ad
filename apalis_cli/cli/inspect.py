"""`apalis inspect`, `workers` and `stats`: look at queues without consuming anything."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..bounds import COUNT
from ..errors import ApalisError, DecodeError, Unsupported
from ..redact import redact
from ..storable import decode_result
from ..task import Status, Task, iso
from .app import DEFAULT_CONFIG, ConfigOption, JsonOption, QueueOption, WorkerOption, app, check_task_id, checked

if TYPE_CHECKING:
    from ..backend import QueueStats, WorkerInfo
    from .common import Opened

# The store's machinery (asyncio, the config, the store registry) and rich's tables are imported
# inside the commands: `apalis --help` and the other commands do without them.

__all__ = ["inspect", "stats", "task_json", "workers"]

StatusOption = Annotated[Status | None, typer.Option("--status", "-s", help="Only tasks in this status.")]


@app.command()
def inspect(
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    queue: QueueOption = None,
    status: StatusOption = None,
    limit: Annotated[int, typer.Option(help="At most this many tasks.")] = 50,
    task_id: Annotated[str | None, typer.Option("--id", callback=check_task_id, help="One task by id.")] = None,
    decode: Annotated[bool, typer.Option(help="Also show the arguments decoded by the worker's codec.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Peek at a queue's tasks without consuming them."""
    checked("--limit", limit, COUNT.check)
    import asyncio

    tasks, opened_codec, secrets = asyncio.run(_inspect(config, worker, queue, status, limit, task_id))
    rows = [task_json(task, opened_codec if decode else None, secrets) for task in tasks]
    if as_json:
        from ..printable import printable_json

        print(printable_json(rows))
    else:
        from . import console

        if task_id is not None:
            console.print_task(rows[0], decode=decode)
        else:
            console.print_tasks(rows, decode=decode)


async def _inspect(
    config: Path, worker: str | None, queue: str | None, status: Status | None, limit: int, task_id: str | None
) -> tuple[list[Task[bytes]], Any, frozenset[str]]:
    from ..backend import Capability, Inspector
    from .common import open_target, require_inspector

    async with open_target(config, worker, queue) as opened:
        backend: Any = opened.backend
        if not isinstance(backend, Inspector):
            require_inspector(opened, Capability.INSPECT, "list its tasks")  # raises, saying why
        # A store without full INSPECT may still list some statuses (a broker's dead letters):
        # ask, and let it refuse what it cannot; say on stderr that the view is partial.
        partial = opened.backend.capabilities.why_not(Capability.INSPECT)
        try:
            if task_id is not None:
                task = await backend.get(task_id)
                if task is None:
                    raise ApalisError(f"no task {task_id} in {opened.describe()}")
                tasks = [task]
            else:
                tasks = await backend.list_tasks(status, limit)
        except Unsupported as exc:
            raise Unsupported(f"{opened.describe()} cannot list its tasks: {exc}") from None
        from . import console
        from .common import paused_or_none

        if partial:
            console.note(f"{opened.describe()} shows only part of its tasks: {partial}")
        if await paused_or_none(opened):
            console.note(f"{opened.describe()} is paused: its tasks wait for apalis resume")
        return tasks, opened.backend.codec, opened.config.secrets


def task_json(task: Task[bytes], codec: Any = None, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """The `inspect --json` object of one task (`codec` given: with the decoded `args`); the
    stored error is shown with `secrets` masked (it may come from an older or another writer)."""
    payload = bytes(task.args)
    try:
        text, encoding = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = payload.hex(), "hex"
    ctx = task.ctx
    row: dict[str, Any] = {
        "id": task.id,
        "status": ctx.status.value,
        "attempts": ctx.attempts,
        "max_attempts": ctx.max_attempts,
        "run_at": iso(ctx.run_at),
        "queue": ctx.queue,
        "priority": ctx.priority,
        "payload": text,
        "payload_encoding": encoding,
        "last_error": redact(ctx.last_error, secrets) if ctx.last_error else ctx.last_error,
        "result": decode_result(ctx.result),
        "lock_by": ctx.lock_by,
        "idempotency_key": ctx.idempotency_key,
        "created_at": iso(ctx.created_at) if ctx.created_at else None,
        "done_at": iso(ctx.done_at),
    }
    if codec is not None:
        try:
            row["args"] = codec.decode(payload)
        except DecodeError as exc:
            row["decode_error"] = str(exc)
    return row


@app.command()
def workers(
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    queue: QueueOption = None,
    as_json: JsonOption = False,
) -> None:
    """The workers registered on each queue, with their last heartbeat."""
    import asyncio

    found = asyncio.run(_each_queue(config, worker, queue, _workers_of))
    infos = [info for group in found for info in group]
    if as_json:
        print(json.dumps([_worker_json(info) for info in infos], indent=2))
    else:
        from . import console

        console.print_workers([_worker_json(info) for info in infos])


@app.command()
def stats(
    config: ConfigOption = DEFAULT_CONFIG,
    worker: WorkerOption = None,
    queue: QueueOption = None,
    as_json: JsonOption = False,
) -> None:
    """How many tasks each queue holds in each status."""
    import asyncio

    found = asyncio.run(_each_queue(config, worker, queue, _stats_of))
    rows = [{"queue": s.queue, **{str(k): v for k, v in s.counts.items()}, "paused": paused} for s, paused in found]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        from . import console

        console.print_stats(rows)


async def _workers_of(opened: Opened) -> list[WorkerInfo]:
    from ..backend import Capability
    from .common import require_inspector

    return await require_inspector(opened, Capability.WORKERS, "list its workers").workers()


async def _stats_of(opened: Opened) -> tuple[QueueStats, bool | None]:
    """The queue's counts, and whether it is paused (None where the store cannot pause)."""
    from ..backend import Inspector
    from .common import paused_or_none

    # Counting is often possible where browsing is not (a broker counts its queues): ask the
    # store, which raises `Unsupported` with its reason if it cannot.
    backend: Any = opened.backend
    if not isinstance(backend, Inspector):
        raise Unsupported(f"{opened.describe()} cannot count its tasks: the store has no inspector")
    stats: QueueStats = await backend.stats()
    return stats, await paused_or_none(opened)


async def _each_queue(config_path: Path, worker: str | None, queue: str | None, fn: Any) -> list[Any]:
    """`fn(opened)` for the chosen queue, or for every worker's queue when none is chosen."""
    from ..api import open_queue
    from ..config import load_config
    from .common import Opened, all_targets, masked_errors, open_target

    if worker is not None or queue is not None:
        async with open_target(config_path, worker, queue) as opened:
            return [await fn(opened)]
    config = load_config(config_path)
    results = []
    with masked_errors(config):
        for target in all_targets(config):
            async with open_queue(config, target) as (store, backend):
                results.append(await fn(Opened(config, target, store, backend)))
    return results


def _worker_json(info: WorkerInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "queue": info.queue,
        "host": info.host,
        "pid": info.pid,
        "started_at": iso(info.started_at),
        "last_seen": iso(info.last_seen),
        "layers": list(info.layers),
        "running": info.running,
    }
