"""The board's control verbs beyond the Inspector: cancel a task, pause and resume a queue.

They belong to the control plane (`Capability.CANCEL` and `PAUSE`, the `Controller` protocol);
until a store offers them, the board shows the reason and no button.
"""

from __future__ import annotations

from typing import Any

from ..backend import Capability
from ..errors import Unsupported
from .board import QueueView

__all__ = ["cancel", "pause", "paused_state", "resume", "why_no_cancel", "why_no_pause"]

_NOT_YET = "this version of apalis-cli has no control plane yet"


def _why_not(view: QueueView, name: str, method: str) -> str | None:
    try:
        capability = Capability(name)
    except ValueError:
        return _NOT_YET
    why = view.why_not(capability)
    if why is None and not callable(getattr(view.backend, method, None)):
        return "the store has no control plane"
    return why


def why_no_cancel(view: QueueView) -> str | None:
    """Why this queue's tasks cannot be cancelled (None: they can)."""
    return _why_not(view, "cancel", "cancel")


def why_no_pause(view: QueueView) -> str | None:
    """Why this queue cannot be paused (None: it can)."""
    return _why_not(view, "pause", "pause")


def _require(why: str | None, view: QueueView, doing: str) -> Any:
    if why is not None:
        raise Unsupported(f'queue "{view.queue}" on backend "{view.backend_name}" cannot {doing}: {why}')
    return view.backend


async def cancel(view: QueueView, task_id: str, reason: str) -> bool:
    """Cancel the task; False when there is no such task or it had ended."""
    backend = _require(why_no_cancel(view), view, "cancel tasks")
    was = await backend.cancel(task_id, reason)
    return was is not None and was is not False


async def pause(view: QueueView) -> bool:
    """Pause the queue; False if it was paused already."""
    return bool(await _require(why_no_pause(view), view, "be paused").pause())


async def resume(view: QueueView) -> bool:
    """Resume the queue; False if it was not paused."""
    return bool(await _require(why_no_pause(view), view, "be paused").resume())


async def paused_state(view: QueueView) -> bool | None:
    """Whether the queue is paused (None where the store cannot pause queues)."""
    if why_no_pause(view) is not None:
        return None
    return bool(await view.backend.paused())  # type: ignore[attr-defined]
