"""The board's pages, rendered on the server with Jinja2 (every value autoescaped: a payload, an
error or a queue name holding markup shows as text). Each page's live part is reloaded every
two seconds by htmx (`#live`); the forms post to the JSON API (`api`)."""

from __future__ import annotations

import time
from functools import partial
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..backend import Capability, WorkerInfo
from ..browsing import MinuteCounts, TickSource
from ..control import BulkAction, bulk_reason, statuses_text
from ..errors import ApalisError
from ..storable import decode_result
from ..task import Status, iso
from . import control, ops
from .api import FLASH_COOKIE, error_response, safe_next
from .board import Board, QueueView
from .present import decode_payload, payload_text, pretty, problem
from .security import SESSION_COOKIE
from .state import WebState, web_state

if TYPE_CHECKING:
    from .snapshots import QueueSnapshot

__all__ = ["error_page", "routes"]

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
_STATUS_ORDER = [s for s in Status]


def routes() -> list[Route]:
    """The pages."""
    return [
        Route("/", overview),
        Route("/queues/{queue:path}/purge", purge_confirm),
        Route("/queues/{queue:path}/bulk", bulk_confirm),
        Route("/queues/{queue:path}", queue_page),
        Route("/tasks/{task_id:path}", task_page),
        Route("/workers", workers_page),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


# -- formatting ------------------------------------------------------------------------------


def span(seconds: float | None) -> str:
    """A duration in its two largest units: 42s, 3m 05s, 2h 10m, 4d 3h."""
    if seconds is None:
        return "—"
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def ago(epoch: float | None, now: float | None = None) -> str:
    """`3m 05s ago`, or `in 25s` for a time to come."""
    if epoch is None:
        return "—"
    delta = (time.time() if now is None else now) - epoch
    return f"{span(delta)} ago" if delta >= 0 else f"in {span(-delta)}"


def number(value: int | None) -> str:
    """A count with thousands separated (None: a dash)."""
    return "—" if value is None else f"{value:,}"


def chart(minutes: list[tuple[int, MinuteCounts]]) -> dict[str, Any]:
    """Bar geometry for the done/failed per minute chart (an inline SVG, 60 bars)."""
    height, width, gap = 28.0, 3.0, 1.0
    top = max((c.done + c.failed for _, c in minutes), default=0)
    bars = []
    for i, (minute, counts) in enumerate(minutes):
        total = counts.done + counts.failed
        full = 0.0 if top == 0 else max(height * total / top, 1.0 if total else 0.0)
        # A failure shows as at least a sliver of red, however many runs went well that minute.
        failed = 0.0 if total == 0 else max(full * counts.failed / total, 1.5 if counts.failed else 0.0)
        failed = min(failed, full)
        bars.append(
            {
                "x": i * (width + gap),
                "done_y": height - full,
                "done_h": full - failed,
                "failed_y": height - failed,
                "failed_h": failed,
                "title": f"{iso(minute * 60.0)}: {counts.done} done, {counts.failed} failed",
            }
        )
    total_done = sum(c.done for _, c in minutes)
    total_failed = sum(c.failed for _, c in minutes)
    return {
        "bars": bars,
        "width": len(minutes) * (width + gap) - gap,
        "height": height,
        "bar": width,
        "done": total_done,
        "failed": total_failed,
        "peak": top,
    }


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(files("apalis_cli.web").joinpath("templates"))),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = ago
    env.filters["iso"] = iso
    env.filters["span"] = span
    env.filters["number"] = number
    env.globals["STATUSES"] = _STATUS_ORDER
    return env


_ENV = _environment()


# -- rendering -------------------------------------------------------------------------------


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """A page, with what every page needs (mode, CSRF token, the one-time flash)."""
    state = web_state(request)
    flash_raw = request.cookies.get(FLASH_COOKIE)
    flash = None
    if flash_raw:
        kind, _, text = unquote(flash_raw).partition(":")
        flash = {"ok": kind == "ok", "text": text}
    nonce = request.scope.get("apalis_csrf", "")
    html = _ENV.get_template(template).render(
        request_path=request.url.path,
        here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        admin=state.admin,
        logged_in=state.guard.needs_login,
        csrf=state.guard.csrf_token(nonce) if nonce else "",
        flash=flash,
        now=time.time(),
        config_path=str(state.board.config.path),
        queue_url=partial(queue_url, state.board),
        task_url=partial(task_url, state.board),
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    if flash_raw and request.headers.get("hx-request") is None:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


async def error_page(request: Request, code: int, message: str) -> Response:
    """An error as a page of the board."""
    return render(request, "error.html", status_code=code, code=code, message=message, title=f"{code}")


def _failed(request: Request, exc: BaseException) -> Response:
    return render(
        request,
        "error.html",
        status_code=error_response(exc).status_code,
        code=error_response(exc).status_code,
        message=problem(exc, web_state(request).board.config.secrets),
        title="error",
    )


def _shared_name(board: Board, view: QueueView) -> bool:
    return sum(1 for v in board.queues if v.queue == view.queue) > 1


def queue_url(board: Board, view: QueueView, **params: str | None) -> str:
    """The queue page's address, with the given query parameters (None ones left out); the
    backend is named only when another backend has a queue of the same name."""
    query = {k: v for k, v in params.items() if v}
    if _shared_name(board, view):
        query["backend"] = view.backend_name
    tail = f"?{urlencode(query)}" if query else ""
    return f"/queues/{quote(view.queue, safe='')}{tail}"


def task_url(board: Board, task_id: str, view: QueueView) -> str:
    """The task page's address."""
    query = {"queue": view.queue}
    if _shared_name(board, view):
        query["backend"] = view.backend_name
    return f"/tasks/{quote(task_id, safe='')}?{urlencode(query)}"


_ENV.globals["chart"] = chart


# -- pages -----------------------------------------------------------------------------------


def _queue_row(snap: QueueSnapshot, now: float) -> dict[str, Any]:
    view = snap.view
    counts = snap.stats.counts if snap.stats else {}
    return {
        "view": view,
        "snap": snap,
        "counts": {s.value: counts.get(s) for s in Status},
        "scheduled": snap.stats.scheduled if snap.stats else None,
        "oldest_age": None if snap.oldest_ready_at is None else now - snap.oldest_ready_at,
        "chart": chart(snap.minutes(now)) if snap.finished_known else None,
        "oldest_known": snap.activity_known,
        "workers": None if snap.workers is None else len(snap.workers),
        "no_pause": control.why_no_pause(view),
    }


async def overview(request: Request) -> Response:
    """Every queue of every backend: counts, activity, the oldest ready task, workers."""
    state = web_state(request)
    snaps = await state.snapshots.all()
    now = time.time()
    rows = [_queue_row(s, now) for s in snaps]
    totals = {s.value: sum(r["counts"][s.value] or 0 for r in rows) for s in Status}
    workers = sum(r["workers"] or 0 for r in rows)
    charts = [r["chart"] for r in rows if r["chart"]]
    done = sum(c["done"] for c in charts) if charts else None
    failed = sum(c["failed"] for c in charts) if charts else None
    return render(
        request,
        "overview.html",
        title="Overview",
        rows=rows,
        totals=totals,
        worker_total=workers,
        hour_done=done,
        hour_failed=failed,
    )


async def queue_page(request: Request) -> Response:
    """One queue's tasks: by status, searched, 50 a page by keyset."""
    state = web_state(request)
    q = request.query_params
    try:
        view = state.board.view(request.path_params["queue"], q.get("backend") or None)
        status = ops.parse_status(q.get("status"))
        newest_first = ops.parse_order(q.get("order"), status)
        search = (q.get("q") or "").strip()
        await state.snapshots.all()
        snap = state.snapshots.of(view)
        page = None
        page_error = None
        try:
            page = await ops.list_page(
                view, status=status, text=search or None, after=q.get("after") or None, newest_first=newest_first
            )
        except ops.BadInput:
            raise
        except Exception as exc:  # the store cannot list (or failed): the page says why
            page_error = problem(exc, state.board.config.secrets)
    except ApalisError as exc:
        return _failed(request, exc)
    counts = snap.stats.counts if snap.stats else {}
    status_name = status.value if status else None
    rows = []
    for task in page.tasks if page else []:
        text, encoding = payload_text(bytes(task.args))
        rows.append({"task": task, "preview": text if encoding == "utf-8" else f"hex {text}", "ctx": task.ctx})
    return render(
        request,
        "queue.html",
        title=view.queue,
        view=view,
        snap=snap,
        counts={s.value: counts.get(s) for s in Status},
        status=status.value if status else "",
        search=search,
        order="newest" if (page.newest_first if page else newest_first) else "oldest",  # as served
        rows=rows,
        page=page,
        page_error=page_error,
        first_page=not q.get("after"),
        next_url=queue_url(
            state.board, view, status=status_name, q=search or None, order=q.get("order"), after=page.next
        )
        if page and page.next
        else None,
        first_url=queue_url(state.board, view, status=status_name, q=search or None, order=q.get("order")),
        no_admin=view.why_not(Capability.ADMIN),
        no_cancel=control.why_no_cancel(view),
        no_pause=control.why_no_pause(view),
        no_bulk=control.why_no_bulk(view),
        bulk_actions=[a.value for a in BulkAction],
        no_push=None if view.sink is not None else "this store takes no pushed tasks",
        oldest_age=None if snap.oldest_ready_at is None else time.time() - snap.oldest_ready_at,
        oldest_known=snap.activity_known,
        fallback_scan=ops.FALLBACK_SCAN,
    )


async def task_page(request: Request) -> Response:
    """One task: payload decoded and pretty-printed, attempts, error, result, times, holder."""
    state = web_state(request)
    q = request.query_params
    task_id = request.path_params["task_id"]
    try:
        view, task = await state.board.find_task(task_id, q.get("queue") or None, q.get("backend") or None)
    except ApalisError as exc:
        return _failed(request, exc)
    payload = bytes(task.args)
    value, how, decode_error = decode_payload(payload, view.codec)
    raw, encoding = payload_text(payload)
    holder = _holder(state, view, task.ctx.lock_by)
    result = decode_result(task.ctx.result)
    return render(
        request,
        "task.html",
        title=f"Task {task.id}",
        view=view,
        task=task,
        ctx=task.ctx,
        payload_pretty=pretty(value) if how else None,
        decoded_as=how,
        decode_error=decode_error,
        payload_raw=raw,
        payload_encoding=encoding,
        payload_size=len(payload),
        result_pretty=None if task.ctx.result is None else pretty(result),
        meta_pretty=pretty(dict(task.ctx.meta)) if task.ctx.meta else None,
        holder=holder,
        no_admin=view.why_not(Capability.ADMIN),
        no_cancel=control.why_no_cancel(view),
    )


def _holder(state: WebState, view: QueueView, lock_by: str | None) -> WorkerInfo | None:
    if lock_by is None:
        return None
    for worker in state.snapshots.of(view).workers or []:
        if worker.id == lock_by:
            return worker
    return None


async def workers_page(request: Request) -> Response:
    """Registered workers (host, pid, heartbeat age, running, layers); cron workers' next ticks."""
    state = web_state(request)
    snaps = await state.snapshots.all()
    now = time.time()
    groups = [{"view": s.view, "snap": s, "workers": s.workers} for s in snaps]
    crons = _cron_rows(state, now)
    return render(request, "workers.html", title="Workers", groups=groups, crons=crons)


def _cron_rows(state: WebState, now: float) -> list[dict[str, Any]]:
    from ..registry import build_worker_store

    rows = []
    for worker in state.board.cron_workers:
        ticks: list[float] = []
        error = None
        try:
            store = build_worker_store(state.board.config, worker)
            if isinstance(store, TickSource):
                ticks = store.next_ticks(now, 3)
        except Exception as exc:
            error = problem(exc, state.board.config.secrets)
        cron = worker.cron or {}
        rows.append(
            {
                "name": worker.name,
                "schedule": str(cron.get("schedule", "")),
                "timezone": str(cron.get("timezone", "UTC")),
                "pipe_to": worker.pipe_to,
                "queue": worker.queue,
                "ticks": ticks,
                "error": error,
            }
        )
    return rows


async def purge_confirm(request: Request) -> Response:
    """What a purge would delete, and the button that does it (admin)."""
    state = web_state(request)
    q = request.query_params
    try:
        if not state.admin:
            raise ops.BadInput("this board is read-only: start it with --admin to purge")
        view = state.board.view(request.path_params["queue"], q.get("backend") or None)
        status = ops.parse_status(q.get("status"))
        if status is None:
            raise ops.BadInput("status: say which status to purge")
        older_than = ops.parse_age(q.get("older_than"), "older_than")
        count = await ops.purge_count(view, status, older_than)
    except ApalisError as exc:
        return _failed(request, exc)
    return render(
        request,
        "purge.html",
        title=f"Purge {view.queue}",
        view=view,
        status=status.value,
        older_than=q.get("older_than") or "",
        count=count,
    )


_BULK_FIELDS = ("status", "since", "until", "error_contains", "limit", "reason")


async def bulk_confirm(request: Request) -> Response:
    """How many tasks a bulk action would change (the store's dry run), and the button that does
    it (admin)."""
    state = web_state(request)
    q = request.query_params
    try:
        if not state.admin:
            raise ops.BadInput("this board is read-only: start it with --admin to act on tasks")
        view = state.board.view(request.path_params["queue"], q.get("backend") or None)
        action = ops.parse_action(q.get("action"))
        where = ops.parse_bulk_filter(q, action)
        reason = ops.parse_bulk_reason(q, action)
        count = await ops.bulk(view, action, where, dry_run=True, reason=reason)
    except ApalisError as exc:
        return _failed(request, exc)
    fields = {name: q.get(name) or "" for name in _BULK_FIELDS}
    return render(
        request,
        "bulk.html",
        title=f"{action.value.capitalize()} tasks of {view.queue}",
        view=view,
        action=action.value,
        statuses=statuses_text(where.statuses_for(action)),
        fields=fields,
        kept=bulk_reason(action, reason) if action.takes_reason else None,
        count=count,
    )


async def login(request: Request) -> Response:
    """The login form (when a token protects the board) and its post."""
    state = web_state(request)
    target = safe_next(request.query_params.get("next") or "/")
    if not state.guard.needs_login:
        return RedirectResponse(target, status_code=303)
    message = None
    if request.method == "POST":
        form = await request.form()
        offered = form.get("token")
        if not state.guard.csrf_ok(request.cookies.get("apalis_csrf"), str(form.get("csrf") or "")):
            message = "The form was stale: try again."
        elif isinstance(offered, str) and state.guard.token_matches(offered):
            response = RedirectResponse(safe_next(str(form.get("next") or "/")), status_code=303)
            response.set_cookie(SESSION_COOKIE, state.guard.session_value(), path="/", httponly=True, samesite="strict")
            return response
        else:
            message = "That is not the token."
    return render(request, "login.html", title="Sign in", next=target, message=message, status_code=200)


async def logout(request: Request) -> Response:
    """Forget the session cookie."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
