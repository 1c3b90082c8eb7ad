"""The HTTP JSON API: the CLI's verbs and filters over HTTP. The board's own forms post here.

    GET  /api/queues                          every queue: counts, paused, oldest ready, workers
    GET  /api/queues/{queue}/tasks            ?status= &search= &order=newest|oldest &limit= &after=
    POST /api/queues/{queue}/tasks            push: {"args": ..., "delay": "30s", "priority": 5, ...}
    POST /api/queues/{queue}/purge            {"status": "done", "older_than": "7d", "dry_run": true}
    POST /api/queues/{queue}/bulk             {"action": "retry|cancel|kill|purge", "status": ["killed"],
                                               "since": "2h", "until": "...", "error_contains": "timeout",
                                               "limit": 1000, "dry_run": true,
                                               "reason": "..." (cancel and kill only)}
    POST /api/queues/{queue}/pause | resume
    GET  /api/tasks/{id}                      ?queue= (faster; else every queue is asked)
    POST /api/tasks/{id}/retry | kill | cancel   {"reason": "..."} for kill and cancel
    GET  /api/workers

`?backend=NAME` picks a queue whose name is on several backends. Errors are
`{"error": "one line"}` with 400 (bad input), 401 (token), 403 (read-only board or CSRF),
404, 409 (the store cannot do that, and why) or 503 (the store failed).

A POST with a JSON body needs no CSRF token (a foreign page cannot send one without a CORS
preflight); a form post needs the board's CSRF token and is answered with a redirect back to
the page it came from, the outcome in a one-time cookie.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import ApalisError, Unsupported, UsageError
from ..task import Status, iso
from . import control, ops
from .board import Ambiguous, NotFound, QueueView
from .present import problem, task_json, worker_json
from .security import CSRF_COOKIE
from .state import web_state

if TYPE_CHECKING:
    from .snapshots import QueueSnapshot

__all__ = ["FLASH_COOKIE", "routes"]

FLASH_COOKIE = "apalis_flash"
Handler = Callable[[Request], Awaitable[Response]]


def routes() -> list[Route]:
    """The API's routes (suffixed ones first: a queue name may hold a slash)."""
    return [
        Route("/api/queues", queues),
        Route("/api/queues/{queue:path}/tasks", queue_tasks, methods=["GET"]),
        Route("/api/queues/{queue:path}/tasks", push_task, methods=["POST"]),
        Route("/api/queues/{queue:path}/purge", purge, methods=["POST"]),
        Route("/api/queues/{queue:path}/bulk", bulk, methods=["POST"]),
        Route("/api/queues/{queue:path}/pause", pause, methods=["POST"]),
        Route("/api/queues/{queue:path}/resume", resume, methods=["POST"]),
        Route("/api/queues/{queue:path}", one_queue, methods=["GET"]),
        Route("/api/tasks/{task_id:path}/retry", retry, methods=["POST"]),
        Route("/api/tasks/{task_id:path}/kill", kill, methods=["POST"]),
        Route("/api/tasks/{task_id:path}/cancel", cancel, methods=["POST"]),
        Route("/api/tasks/{task_id:path}", task, methods=["GET"]),
        Route("/api/workers", workers),
    ]


def error_response(exc: BaseException, secrets: Iterable[str] = ()) -> JSONResponse:
    """One line (the config's `secrets` masked) and the status code that fits the failure."""
    if isinstance(exc, NotFound):
        code = 404
    elif isinstance(exc, Ambiguous | ops.BadInput):
        code = 400
    elif isinstance(exc, Unsupported):
        code = 409
    elif isinstance(exc, UsageError):
        code = 400
    else:
        code = 503
    return JSONResponse({"error": problem(exc, secrets)}, status_code=code)


def _guarded(handler: Handler) -> Handler:
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # ours (bad input, not found, unsupported) or the store's driver's
            return error_response(exc, web_state(request).board.config.secrets)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _view(request: Request) -> QueueView:
    return web_state(request).board.view(request.path_params["queue"], request.query_params.get("backend") or None)


# -- reads ---------------------------------------------------------------------------------


def snapshot_json(snap: QueueSnapshot, now: float) -> dict[str, Any]:
    """One queue of `/api/queues`."""
    view = snap.view
    counts = {status.value: snap.stats.counts.get(status) for status in Status} if snap.stats else None
    return {
        "queue": view.queue,
        "backend": view.backend_name,
        "kind": view.kind,
        "url": view.url,
        "workers_configured": list(view.workers),
        "counts": counts,
        "scheduled": snap.stats.scheduled if snap.stats else None,
        "paused": snap.paused,
        "oldest_ready_age": None if snap.oldest_ready_at is None else round(max(now - snap.oldest_ready_at, 0.0), 3),
        "oldest_ready_known": snap.activity_known,
        "workers": None if snap.workers is None else len(snap.workers),
        "finished_per_minute": [
            {"minute": iso(minute * 60.0), "done": c.done, "failed": c.failed} for minute, c in snap.minutes(now)
        ]
        if snap.finished_known
        else None,
        "counted_at": iso(snap.taken_at) if snap.taken_at else None,
        "error": snap.error,
    }


@_guarded
async def queues(request: Request) -> Response:
    """Every queue of every backend in the config, with its figures."""
    snaps = await web_state(request).snapshots.all()
    now = ops.board_time()
    return JSONResponse([snapshot_json(snap, now) for snap in snaps])


@_guarded
async def one_queue(request: Request) -> Response:
    """One queue with its figures."""
    state = web_state(request)
    view = _view(request)
    await state.snapshots.all()
    return JSONResponse(snapshot_json(state.snapshots.of(view), ops.board_time()))


@_guarded
async def queue_tasks(request: Request) -> Response:
    """A page of the queue's tasks (keyset: follow `next` as `after`)."""
    view = _view(request)
    q = request.query_params
    status = ops.parse_status(q.get("status"))
    page = await ops.list_page(
        view,
        status=status,
        text=q.get("search") or None,
        after=q.get("after") or None,
        newest_first=ops.parse_order(q.get("order"), status),
        limit=ops.parse_limit(q.get("limit")),
    )
    rows = [task_json(t, backend=view.backend_name) for t in page.tasks]
    for row in rows:
        row["payload_preview"] = True  # at most ops.PREVIEW_BYTES of the payload; GET the task for all
    order = "newest" if page.newest_first else "oldest"
    sorted_by = page.order or "run_at, then id"
    return JSONResponse({"tasks": rows, "next": page.next, "order": order, "sorted_by": sorted_by})


@_guarded
async def task(request: Request) -> Response:
    """One task, its payload decoded."""
    board = web_state(request).board
    q = request.query_params
    view, found = await board.find_task(
        request.path_params["task_id"], q.get("queue") or None, q.get("backend") or None
    )
    return JSONResponse(task_json(found, codec=view.codec, backend=view.backend_name))


@_guarded
async def workers(request: Request) -> Response:
    """Every registered worker of every queue, with its heartbeat's age."""
    snaps = await web_state(request).snapshots.all()
    now = ops.board_time()
    rows = [worker_json(w, backend=s.view.backend_name, now=now) for s in snaps for w in (s.workers or [])]
    return JSONResponse(rows)


# -- actions -------------------------------------------------------------------------------


class _Forbidden(ApalisError):
    pass


async def _action_input(request: Request) -> tuple[dict[str, Any], bool]:
    """The POST's fields and whether it came from a form; refuses a read-only board, a form
    without a valid CSRF token, and a body that is neither JSON nor a form."""
    state = web_state(request)
    if not state.admin:
        raise _Forbidden("this board is read-only: start it with --admin to act on tasks and queues")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            data = await request.json()
        except ValueError as exc:
            raise ops.BadInput(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ops.BadInput("the body must be a JSON object")
        return data, False
    if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not state.guard.csrf_ok(request.cookies.get(CSRF_COOKIE), fields.get("csrf")):
            raise _Forbidden("the form's CSRF token is missing or stale: reload the page and try again")
        return fields, True
    if not ctype and int(request.headers.get("content-length") or 0) == 0:
        return {}, False  # `curl -X POST` without a body
    raise ops.BadInput("send the fields as JSON (Content-Type: application/json)")


Work = Callable[[Request, dict[str, Any], bool], Awaitable[tuple[dict[str, Any], str]]]


def _action(work: Work) -> Handler:
    """An action: its input checked, `work` run, the answer as JSON or, for a form, a redirect
    back with the outcome (`work` returns the JSON body and the sentence a person reads)."""

    async def run(request: Request) -> Response:
        data: dict[str, Any] = {}
        is_form = False
        try:
            data, is_form = await _action_input(request)
            body, said = await work(request, data, is_form)
        except _Forbidden as exc:
            return _answer(request, is_form, {"error": str(exc)}, 403, str(exc), data)
        except Exception as exc:
            secrets = web_state(request).board.config.secrets
            message = problem(exc, secrets)
            code = error_response(exc, secrets).status_code
            return _answer(request, is_form, {"error": message}, code, message, data)
        return _answer(request, is_form, body, 200, said, data)

    run.__name__ = work.__name__
    run.__doc__ = work.__doc__
    return run


def _answer(
    request: Request, is_form: bool, body: dict[str, Any], code: int, said: str, data: dict[str, Any]
) -> Response:
    if not is_form:
        return JSONResponse(body, status_code=code)
    response = RedirectResponse(safe_next(str(data.get("next") or "")), status_code=303)
    flash = ("ok:" if code == 200 else "error:") + said
    response.set_cookie(FLASH_COOKIE, quote(flash[:500]), path="/", httponly=True, samesite="strict")
    return response


def safe_next(target: str) -> str:
    """A local path to go back to (never another site: `//host`, `/\\host` and `scheme:` are not)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@_action
async def retry(request: Request, data: dict[str, Any], is_form: bool) -> tuple[dict[str, Any], str]:
    """Make a failed or killed task pending again (attempts counted afresh)."""
    task_id = request.path_params["task_id"]
    view = await _task_view(request, data)
    await ops.retry(view, task_id)
    return {"retried": task_id}, f"Task {task_id} will run again."


@_action
async def kill(request: Request, data: dict[str, Any], is_form: bool) -> tuple[dict[str, Any], str]:
    """Kill a task that has not ended: it will not run again."""
    task_id = request.path_params["task_id"]
    view = await _task_view(request, data)
    await ops.kill(view, task_id, str(data.get("reason") or ""))
    return {"killed": task_id}, f"Task {task_id} was killed."


@_action
async def cancel(request: Request, data: dict[str, Any], is_form: bool) -> tuple[dict[str, Any], str]:
    """Cancel a task that has not ended (a running one is stopped where it runs)."""
    task_id = request.path_params["task_id"]
    view = await _task_view(request, data)
    at_once = await ops.cancel(view, task_id, str(data.get("reason") or ""))
    await web_state(request).snapshots.refresh()
    if at_once:
        return {"cancelled": task_id, "state": "cancelled"}, f"Task {task_id} was cancelled: it will never start."
    return (
        {"cancelled": task_id, "state": "requested"},
        f"Task {task_id} is running: its worker was told to stop it.",
    )


async def _task_view(request: Request, data: dict[str, Any]) -> QueueView:
    board = web_state(request).board
    queue = data.get("queue") or request.query_params.get("queue")
    backend = data.get("backend") or request.query_params.get("backend")
    if queue:
        return board.view(str(queue), str(backend) if backend else None)
    view, _ = await board.find_task(request.path_params["task_id"])
    return view


@_action
async def purge(request: Request, data: dict[str, Any], is_form: bool) -> tuple[dict[str, Any], str]:
    """Delete the queue's tasks of one status (older than a duration); `dry_run` counts them."""
    view = _view(request)
    status = ops.parse_status(str(data.get("status") or ""))
    if status is None:
        raise ops.BadInput("status: say which status to purge")
    older_than = ops.parse_age(data.get("older_than"), "older_than")
    if _truthy(data.get("dry_run")):
        count = await ops.purge_count(view, status, older_than)
        return {"would_purge": count}, f"{count} {status.value} tasks would be deleted."
    count = await ops.purge(view, status, older_than)
    await web_state(request).snapshots.refresh()
    return {"purged": count}, f"Deleted {count} {status.value} task{'s' if count != 1 else ''}."


@_action
async def bulk(request: Request, data: dict[str, Any], is_form: bool) -> tuple[dict[str, Any], str]:
    """Retry, cancel, kill or purge every task of the queue a filter matches (the CLI's filter:
    status, since, until, error_contains, limit); `dry_run` counts them, changing nothing;
    `reason` (cancel, kill) is kept on each task they end."""
    view = _view(request)
    action = ops.parse_action(data.get("action"))
    where = ops.parse_bulk_filter(data, action)
    reason = ops.parse_bulk_reason(data, action)
    if _truthy(data.get("dry_run")):
        count = await ops.bulk(view, action, where, dry_run=True, reason=reason)
        return {"action": action.value, "would_change": count}, f"{count} tasks would be changed."
    count = await ops.bulk(view, action, where, dry_run=False, reason=reason)
    await web_state(request).snapshots.refresh()
    done = {"retry": "retried", "cancel": "cancelled", "kill": "killed", "purge": "purged"}[action.value]
    return {"action": action.value, "changed": count}, f"{done.capitalize()} {count} task{'s' if count != 1 else ''}."


@_action
async def pause(request: Request, data: dict[str, Any], is_form: bool) -> tuple[dict[str, Any], str]:
    """Pause the queue: no worker anywhere starts its tasks until it is resumed."""
    view = _view(request)
    changed = await control.pause(view)
    await web_state(request).snapshots.refresh()
    return {"paused": True, "changed": changed}, f"Queue {view.queue} is paused."


@_action
async def resume(request: Request, data: dict[str, Any], is_form: bool) -> tuple[dict[str, Any], str]:
    """Resume the queue."""
    view = _view(request)
    changed = await control.resume(view)
    await web_state(request).snapshots.refresh()
    return {"paused": False, "changed": changed}, f"Queue {view.queue} runs again."


@_action
async def push_task(request: Request, data: dict[str, Any], is_form: bool) -> tuple[dict[str, Any], str]:
    """Push a task: `args` is its JSON value (in a form: JSON text, checked before it is sent)."""
    view = _view(request)
    pushed = await ops.push(view, ops.parse_push(data, args_text=is_form))
    return {"id": pushed}, f"Pushed task {pushed}."


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"))
