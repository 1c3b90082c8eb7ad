"""The board as an ASGI application (Starlette): the pages, the JSON API, health and metrics.

`create_app` wires the parts; `WebState` (state.py) is what every route reads.
The gate in front of every route refuses a foreign Host on a loopback address and, when a token
is set, a request without it (see `security`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import api, pages
from .board import Board
from .health import healthz_response, metrics_response
from .security import CSRF_COOKIE, SESSION_COOKIE, Guard
from .snapshots import Snapshots
from .state import WebState, web_state

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = ["WebState", "create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_OPEN_PATHS = ("/login", "/static/", "/healthz", "/metrics")


def create_app(
    board: Board,
    *,
    admin: bool = False,
    token: str | None = None,
    loopback: bool = True,
    metrics: Metrics | None = None,
    fresh_for: float = 2.0,
) -> Starlette:
    """The board's application over an opened `board` (the caller opens and closes it)."""
    state = WebState(
        board=board,
        snapshots=Snapshots(board, fresh_for=fresh_for),
        guard=Guard(token),
        admin=admin,
        loopback=loopback,
        metrics=metrics,
    )
    static = StaticFiles(directory=str(files("apalis_cli.web").joinpath("static")))
    routes = [
        *pages.routes(),
        *api.routes(),
        Route("/healthz", healthz),
        Route("/metrics", metrics_route),
        Mount("/static", app=static, name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
    app.state.web = state
    app.add_middleware(_Gate, state=state)
    return app


async def healthz(request: Request) -> Response:
    """200 when every worker of the daemon (or, for `apalis web`, every store) is well, else 503."""
    state = web_state(request)
    if state.metrics is not None:
        return healthz_response(state.metrics)
    stores = {view.backend_name: view.error for view in state.board.queues}
    ok = all(error is None for error in stores.values())
    body = {"healthy": ok, "stores": {name: {"reachable": e is None, "error": e} for name, e in stores.items()}}
    return JSONResponse(body, status_code=200 if ok else 503)


async def metrics_route(request: Request) -> Response:
    """The daemon's Prometheus metrics (404 for `apalis web`, which runs no workers)."""
    metrics = web_state(request).metrics
    if metrics is None:
        return PlainTextResponse("no metrics: this board runs no workers (see apalis run --web)\n", status_code=404)
    return await metrics_response(metrics)


async def _not_found(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": f"no such endpoint: {request.url.path}"}, status_code=404)
    return await pages.error_page(request, 404, "There is nothing at this address.")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"{request.method} is not allowed here"}, status_code=405)


class _Gate:
    """Host check on loopback, then the token (when one is set); pure ASGI, before routing."""

    def __init__(self, app: ASGIApp, state: WebState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        if self.state.loopback and not _loopback_host(request.headers.get("host", "")):
            response: Response = PlainTextResponse(
                "this board answers only to a loopback Host (127.0.0.1, localhost or [::1])\n", status_code=421
            )
            await response(scope, receive, send)
            return
        guard = self.state.guard
        authorized = guard.allowed(request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE))
        if not authorized and not path.startswith(_OPEN_PATHS):
            if path.startswith("/api/"):
                response = JSONResponse(
                    {"error": "this board needs its token: Authorization: Bearer $APALIS_WEB_TOKEN"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="apalis"'},
                )
            else:
                target = path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(f"/login?next={quote(target)}", status_code=303)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, _with_csrf_cookie(request, send))


def _with_csrf_cookie(request: Request, send: Send) -> Send:
    """Give a browser that has none its CSRF cookie (pages read the nonce from the scope)."""
    if request.cookies.get(CSRF_COOKIE):
        request.scope["apalis_csrf"] = request.cookies[CSRF_COOKIE]
        return send
    nonce = Guard.new_nonce()
    request.scope["apalis_csrf"] = nonce
    cookie = f"{CSRF_COOKIE}={nonce}; Path=/; HttpOnly; SameSite=Strict"

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message.setdefault("headers", [])
            message["headers"] = [*message["headers"], (b"set-cookie", cookie.encode("latin-1"))]
        await send(message)

    return sending


def _loopback_host(header: str) -> bool:
    host = header.strip()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    from .security import is_loopback

    return is_loopback(host.lower())


def json_dumps(value: Any) -> str:
    """JSON for a page's data attribute."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
