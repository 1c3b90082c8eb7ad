"""The board's control verbs beyond the Inspector: cancel a task, pause and resume a queue, and
act on every task a filter matches (`apalis_cli.control`).

Each is a capability (`CANCEL`, `PAUSE`, `BULK`); where a store lacks one the board shows the
reason and no button, and the API answers 409 with it.
"""

from __future__ import annotations

from typing import Any

from ..backend import Capability
from ..control import BulkAction, BulkActor, BulkFilter, Canceller, CancelResult, Pausable
from ..errors import Unsupported
from .board import QueueView

__all__ = [
    "bulk",
    "cancel",
    "pause",
    "paused_state",
    "resume",
    "why_no_bulk",
    "why_no_cancel",
    "why_no_pause",
]


def _why_not(view: QueueView, capability: Capability, protocol: type[Any], what: str) -> str | None:
    why = view.why_not(capability)
    if why is None and not isinstance(view.backend, protocol):
        return f"the store has no {what}"
    return why


def why_no_cancel(view: QueueView) -> str | None:
    """Why this queue's tasks cannot be cancelled (None: they can)."""
    return _why_not(view, Capability.CANCEL, Canceller, "cancel")


def why_no_pause(view: QueueView) -> str | None:
    """Why this queue cannot be paused (None: it can)."""
    return _why_not(view, Capability.PAUSE, Pausable, "pause")


def why_no_bulk(view: QueueView) -> str | None:
    """Why this queue's tasks cannot be acted on by filter (None: they can)."""
    return _why_not(view, Capability.BULK, BulkActor, "bulk actions")


def _require(why: str | None, view: QueueView, doing: str) -> Any:
    if why is not None:
        raise Unsupported(f'queue "{view.queue}" on backend "{view.backend_name}" cannot {doing}: {why}')
    return view.backend


async def cancel(view: QueueView, task_id: str, reason: str) -> CancelResult:
    """Cancel the task: what happened (cancelled, requested of its worker, already final, not found)."""
    canceller: Canceller = _require(why_no_cancel(view), view, "cancel tasks")
    return await canceller.cancel(task_id, reason)


async def pause(view: QueueView) -> bool:
    """Pause the queue; False if it was paused already."""
    pausable: Pausable = _require(why_no_pause(view), view, "be paused")
    was = await pausable.paused()
    await pausable.pause()
    return not was


async def resume(view: QueueView) -> bool:
    """Resume the queue; False if it was not paused."""
    pausable: Pausable = _require(why_no_pause(view), view, "be paused")
    was = await pausable.paused()
    await pausable.resume()
    return was


async def paused_state(view: QueueView) -> bool | None:
    """Whether the queue is paused (None where the store cannot pause queues)."""
    if why_no_pause(view) is not None:
        return None
    pausable: Pausable = view.backend  # type: ignore[assignment]
    return await pausable.paused()


async def bulk(
    view: QueueView, action: BulkAction, where: BulkFilter, *, dry_run: bool, reason: str | None = None
) -> int:
    """How many tasks `action` changed (with `dry_run`: would change); `reason` (cancel, kill)
    is kept on each task it ends."""
    actor: BulkActor = _require(why_no_bulk(view), view, f"{action.value} tasks by filter")
    return await actor.bulk(action, where, dry_run=dry_run, reason=reason)
