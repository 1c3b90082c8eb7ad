"""What the board does, once for both faces: the JSON API and the pages call these.

Inputs arrive as text (query strings, form fields, JSON values) and are checked here with the
CLI's own bounds and parsers, so a bad value gets the same one-line message on every face:
`BadInput` (400), `NotFound` (404), `Unsupported` (409: the store cannot do that, and why).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..backend import Capability
from ..bounds import ATTEMPTS, COUNT, PRIORITY, check_time
from ..browsing import PageCursor, TaskSearch
from ..control import (
    DEFAULT_CANCEL_REASON,
    DEFAULT_KILL_REASON,
    BulkAction,
    BulkFilter,
    CancelState,
    operator_reason,
    statuses_text,
)
from ..durations import parse_duration
from ..errors import ApalisError, BadPayload, Unsupported
from ..task import Status, Task
from . import control
from .board import Board, QueueView

__all__ = [
    "FALLBACK_SCAN",
    "PAGE_SIZE",
    "BadInput",
    "Page",
    "bulk",
    "cancel",
    "kill",
    "list_page",
    "parse_action",
    "parse_bulk_filter",
    "parse_bulk_reason",
    "parse_status",
    "purge",
    "push",
    "retry",
]

PAGE_SIZE = 50
MAX_PAGE = 500
PREVIEW_BYTES = 256
FALLBACK_SCAN = 5000  # tasks read from a store without keyset pages, to search and page through


class BadInput(ApalisError):
    """A request's value that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a queue's tasks and the cursor of the next (None: the last page)."""

    tasks: list[Task[bytes]]
    next: str | None
    newest_first: bool
    keyset: bool  # False: the store cannot page by keyset (a broker), the page was cut from a list
    order: str | None = None  # the store's own order of its pages (None: by run_at, then id)


def parse_status(text: str | None) -> Status | None:
    """A status name (empty or `all`: None)."""
    if not text or text == "all":
        return None
    try:
        return Status(text)
    except ValueError:
        names = ", ".join(s.value for s in Status)
        raise BadInput(f'status: expected one of {names} or all, got "{text}"') from None


def default_newest_first(status: Status | None) -> bool:
    """Waiting and running tasks list oldest first (next to run on top), ended ones newest first."""
    return status not in (Status.PENDING, Status.RUNNING, Status.FAILED)


def parse_order(text: str | None, status: Status | None) -> bool:
    """`newest` / `oldest` as newest_first (absent: the status's default)."""
    if not text:
        return default_newest_first(status)
    if text not in ("newest", "oldest"):
        raise BadInput(f'order: expected newest or oldest, got "{text}"')
    return text == "newest"


def parse_limit(text: str | int | None) -> int:
    """A page size from 1 to `MAX_PAGE` (absent: `PAGE_SIZE`)."""
    if text is None or text == "":
        return PAGE_SIZE
    try:
        value = int(text)
    except ValueError:
        raise BadInput(f'limit: expected a whole number, got "{text}"') from None
    if not 1 <= value <= MAX_PAGE:
        raise BadInput(f"limit: must be 1 to {MAX_PAGE}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class StoreCursor:
    """The cursor a `CursorBrowser` made, which only its store reads."""

    text: str


_NOT_A_CURSOR = "after: not a cursor this board made (follow the `next` of a page)"


def encode_cursor(cursor: PageCursor | StoreCursor | int) -> str:
    """A cursor as an opaque URL-safe string."""
    value: object
    if isinstance(cursor, int):
        value = [cursor]
    elif isinstance(cursor, StoreCursor):
        value = {"store": cursor.text}
    else:
        value = [cursor.run_at, cursor.id]
    raw = json.dumps(value, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> PageCursor | StoreCursor | int:
    """The cursor `encode_cursor` made; `BadInput` for anything else."""
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if isinstance(value, dict) and list(value) == ["store"] and isinstance(value["store"], str):
            return StoreCursor(value["store"])
        if isinstance(value, list) and len(value) == 1 and type(value[0]) is int and value[0] >= 0:
            return int(value[0])
        run_at, task_id = value
        if isinstance(run_at, int | float) and not isinstance(run_at, bool) and isinstance(task_id, str):
            return PageCursor(float(run_at), task_id)
    except (ValueError, TypeError, binascii.Error):
        pass
    raise BadInput(_NOT_A_CURSOR)


async def list_page(
    view: QueueView,
    *,
    status: Status | None,
    text: str | None,
    after: str | None,
    newest_first: bool,
    limit: int = PAGE_SIZE,
) -> Page:
    """One page of the queue's tasks, by keyset where the store can page so."""
    if view.error is not None:
        raise Unsupported(f'backend "{view.backend_name}" is not reachable: {view.error}')
    search = TaskSearch(status=status, text=text or None)
    cursor = decode_cursor(after) if after else None
    by_store = view.cursor_browser
    if by_store is not None:
        if cursor is not None and not isinstance(cursor, StoreCursor):
            raise BadInput("after: not a cursor of this queue")
        try:
            browsed = await by_store.browse_page(
                search,
                after=cursor.text if cursor else None,
                limit=limit,
                newest_first=newest_first,
                preview=PREVIEW_BYTES,
            )
        except ValueError:
            raise BadInput(_NOT_A_CURSOR) from None
        nxt = encode_cursor(StoreCursor(browsed.next)) if browsed.next is not None else None
        served = newest_first if browsed.newest_first is None else browsed.newest_first
        return Page(browsed.tasks, nxt, served, keyset=True, order=by_store.order)
    browser = view.browser
    if browser is not None:
        if isinstance(cursor, int | StoreCursor):
            raise BadInput("after: not a cursor of this queue")
        tasks = await browser.browse(
            search, after=cursor, limit=limit + 1, newest_first=newest_first, preview=PREVIEW_BYTES
        )
        more = len(tasks) > limit
        tasks = tasks[:limit]
        nxt = encode_cursor(PageCursor.of(tasks[-1])) if more and tasks else None
        return Page(tasks, nxt, newest_first, keyset=True)
    # A store without keyset pages (a broker's dead letters): read what it lists, then cut.
    inspector = view.inspector
    if inspector is None:
        raise Unsupported(f'queue "{view.queue}" on backend "{view.backend_name}" cannot list its tasks')
    start = cursor if isinstance(cursor, int) else 0
    listed = await inspector.list_tasks(status, FALLBACK_SCAN)
    found = search.select(listed)
    found.sort(key=lambda t: (t.ctx.run_at, t.id), reverse=newest_first)
    chunk = found[start : start + limit]
    nxt = encode_cursor(start + limit) if len(found) > start + limit else None
    return Page(chunk, nxt, newest_first, keyset=False)


async def retry(view: QueueView, task_id: str) -> None:
    """Make a failed or killed task pending again; an error says why not."""
    inspector = view.require_inspector(Capability.ADMIN, "retry tasks")
    if not await inspector.retry(task_id):
        await _explain(view, task_id, "retry")


async def kill(view: QueueView, task_id: str, reason: str) -> None:
    """Kill a task that has not ended; an error says why not."""
    inspector = view.require_inspector(Capability.ADMIN, "kill tasks")
    if not await inspector.kill(task_id, operator_reason(reason if reason.strip() else None, DEFAULT_KILL_REASON)):
        await _explain(view, task_id, "kill")


async def cancel(view: QueueView, task_id: str, reason: str) -> bool:
    """Cancel a task that has not ended: True when it was cancelled at once, False when it runs
    and its worker was told to stop it; an error says why not."""
    from .board import NotFound

    result = await control.cancel(
        view, task_id, operator_reason(reason if reason.strip() else None, DEFAULT_CANCEL_REASON)
    )
    if result.state is CancelState.NOT_FOUND:
        raise NotFound(f'no task {task_id} in queue "{view.queue}"')
    if result.state is CancelState.ALREADY_FINAL:
        status = result.status.value if result.status is not None else "final"
        raise Unsupported(f"cannot cancel task {task_id}: it is {status}")
    return result.state is CancelState.CANCELLED


def parse_action(text: Any) -> BulkAction:
    """A bulk action's name."""
    try:
        return BulkAction(str(text or ""))
    except ValueError:
        names = ", ".join(a.value for a in BulkAction)
        raise BadInput(f'action: expected one of {names}, got "{text or ""}"') from None


def parse_bulk_filter(data: Mapping[str, Any], action: BulkAction) -> BulkFilter:
    """The filter of a bulk request, from a JSON body or a form or a query string (the CLI's
    options by name: status (one or a list), since, until, error_contains, limit)."""
    raw = data.get("status")
    names = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else [] if raw is None else [raw]
    statuses = set()
    for name in names:
        if name in ("", None, "default"):
            continue
        found = parse_status(str(name))
        if found is not None:
            statuses.add(found)
    cannot = statuses - action.applies_to
    if cannot:
        raise BadInput(
            f"status: {action.value} cannot change {statuses_text(cannot)} tasks "
            f"(it takes {statuses_text(action.applies_to)})"
        )
    since = _moment(data.get("since"), "since")
    until = _moment(data.get("until"), "until")
    if since is not None and until is not None and since > until:
        raise BadInput("since must come before until")
    contains = _blank(data.get("error_contains"))
    if contains is not None and not isinstance(contains, str):
        raise BadInput("error_contains: expected text")
    limit = _int(data.get("limit"), "limit", COUNT.check, None)
    return BulkFilter(statuses=frozenset(statuses), since=since, until=until, error_contains=contains, limit=limit)


def _moment(value: Any, field: str) -> float | None:
    """A time as the CLI takes it: ISO 8601, epoch seconds, or a duration ago ("2h")."""
    value = _blank(value)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return time.time() - parse_duration(value.strip())
        except ValueError:
            pass
    try:
        return _parse_time(value)
    except BadInput:
        raise BadInput(
            f"{field}: expected an ISO 8601 time such as 2030-01-31T09:30:00Z, epoch seconds or a duration ago "
            f'such as 2h, got "{value}"'
        ) from None


def parse_bulk_reason(data: Mapping[str, Any], action: BulkAction) -> str | None:
    """The reason a bulk cancel or kill keeps on each task it ends (None: blank or absent, the
    default one); refused for the actions that keep none."""
    reason = _blank(data.get("reason"))
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise BadInput("reason: expected text")
    if not action.takes_reason:
        raise BadInput(f"reason: {action.value} keeps no reason (cancel and kill do)")
    return reason


async def bulk(
    view: QueueView, action: BulkAction, where: BulkFilter, *, dry_run: bool, reason: str | None = None
) -> int:
    """How many tasks of the queue `action` changed (with `dry_run`: would change); `reason`
    (cancel, kill) is kept on each task it ends."""
    return await control.bulk(view, action, where, dry_run=dry_run, reason=reason)


async def _explain(view: QueueView, task_id: str, action: str) -> None:
    from .board import NotFound

    task = await view.require_inspector(Capability.INSPECT, "find tasks").get(task_id)
    if task is None:
        raise NotFound(f'no task {task_id} in queue "{view.queue}"')
    raise Unsupported(f"cannot {action} task {task_id}: it is {task.ctx.status.value}")


def parse_age(text: str | float | None, field: str) -> float | None:
    """A duration (`"7d"`, seconds) or None."""
    if text is None or text == "":
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise BadInput(f"{field}: {exc}") from None


async def purge_count(view: QueueView, status: Status, older_than: float | None) -> int | None:
    """How many tasks a purge of `status` (older than `older_than`) would delete; None where
    the store cannot count that."""
    if older_than is None:
        snapshot_counts = await view.require_inspector(Capability.INSPECT, "count its tasks").stats()
        return snapshot_counts.counts.get(status)
    return None


async def purge(view: QueueView, status: Status, older_than: float | None) -> int:
    """Delete the queue's tasks of `status` (older than `older_than`); how many."""
    inspector = view.require_inspector(Capability.ADMIN, "purge tasks")
    return await inspector.purge(status, older_than)


@dataclass(frozen=True, slots=True, kw_only=True)
class PushRequest:
    """A push as checked: the value and its options."""

    args: Any
    delay: float | None = None
    run_at: float | None = None
    priority: int = 0
    max_attempts: int | None = None
    idempotency_key: str | None = None


def parse_push(data: dict[str, Any], *, args_text: bool) -> PushRequest:
    """A push from a JSON body (`args` is the value) or a form (`args` is JSON text)."""
    if "args" not in data:
        raise BadInput("args: missing (the task's arguments, as JSON)")
    args = data["args"]
    if args_text:
        if not isinstance(args, str) or not args.strip():
            raise BadInput("args: missing (the task's arguments, as JSON)")
        try:
            args = json.loads(args)
        except ValueError as exc:
            raise BadInput(f"args: not JSON: {exc}") from None
    delay = parse_age(_blank(data.get("delay")), "delay")
    run_at = None
    at = _blank(data.get("run_at"))
    if at is not None:
        run_at = _parse_time(at)
    if delay is not None and run_at is not None:
        raise BadInput("give delay or run_at, not both")
    priority = _int(data.get("priority"), "priority", PRIORITY.check, 0)
    max_attempts = _int(data.get("max_attempts"), "max_attempts", ATTEMPTS.check, None)
    key = _blank(data.get("idempotency_key"))
    if key is not None and not isinstance(key, str):
        raise BadInput("idempotency_key: expected text")
    return PushRequest(
        args=args, delay=delay, run_at=run_at, priority=priority or 0, max_attempts=max_attempts, idempotency_key=key
    )


def _blank(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _int(value: Any, field: str, check: Any, default: int | None) -> int | None:
    value = _blank(value)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadInput(f"{field}: expected a whole number, got {json.dumps(value)}")
    try:
        number = int(value)
    except ValueError:
        raise BadInput(f'{field}: expected a whole number, got "{value}"') from None
    try:
        return int(check(number))
    except ValueError as exc:
        raise BadInput(f"{field}: {exc}") from None


def _parse_time(value: Any) -> float:
    from datetime import UTC, datetime

    if isinstance(value, int | float) and not isinstance(value, bool):
        epoch = float(value)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadInput(f'run_at: expected an ISO 8601 time such as 2030-01-31T09:30:00Z, got "{value}"') from None
        epoch = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    else:
        raise BadInput("run_at: expected an ISO 8601 time or epoch seconds")
    try:
        return check_time(epoch)
    except ValueError as exc:
        raise BadInput(f"run_at: {exc}") from None


async def push(view: QueueView, request: PushRequest) -> str:
    """Push the task into the queue (under its limit key, where the queue's limits have one); its id."""
    from ..fleet.keys import key_of

    sink = view.sink
    if sink is None:
        raise Unsupported(f'queue "{view.queue}" on backend "{view.backend_name}" takes no pushed tasks')
    try:
        return await sink.push(
            request.args,
            delay=request.delay,
            run_at=request.run_at,
            priority=request.priority,
            max_attempts=request.max_attempts,
            idempotency_key=request.idempotency_key,
            limit_key=None if view.limit_key is None else key_of(request.args, view.limit_key),
        )
    except BadPayload as exc:  # the codec refused the value (NaN for json, say)
        raise BadInput(f"args: {exc}") from None


def board_time() -> float:
    """Now, in epoch seconds (one place, for the pages' ages)."""
    return time.time()


def require_view(board: Board, queue: str, backend: str | None) -> QueueView:
    """The queue a request names (`NotFound` / a usage error when ambiguous)."""
    return board.view(queue, backend or None)
