"""`/metrics` and `/healthz` of a running daemon, on Starlette: alone (`apalis run
--metrics-addr`) or beside the board (`apalis run --web`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .server import bind, serving

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = ["healthz_response", "metrics_app", "metrics_response", "serving_metrics"]


def healthz_response(metrics: Metrics) -> Response:
    """200 when every worker is alive and its store answered its last heartbeat, else 503; the
    paused queues are listed (a pause is an operator's choice, not a fault)."""
    ok, report = metrics.healthy()
    body = {"healthy": ok, "workers": report, "paused_queues": metrics.paused_queues()}
    return JSONResponse(body, status_code=200 if ok else 503)


async def metrics_response(metrics: Metrics) -> Response:
    """The Prometheus text exposition (queue depths refreshed at most every few seconds)."""
    await metrics.refresh_depth()
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def metrics_app(metrics: Metrics) -> Starlette:
    """An application serving only /metrics and /healthz."""

    async def metrics_route(request: Request) -> Response:
        return await metrics_response(metrics)

    async def healthz(request: Request) -> Response:
        return healthz_response(metrics)

    async def elsewhere(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("try /metrics or /healthz\n", status_code=404)

    return Starlette(
        routes=[Route("/metrics", metrics_route), Route("/healthz", healthz)],
        exception_handlers={404: elsewhere},
    )


@contextlib.asynccontextmanager
async def serving_metrics(metrics: Metrics, host: str, port: int, *, option: str) -> AsyncIterator[int]:
    """Serve /metrics and /healthz on host:port for the block; yields the port bound."""
    sock = bind(host, port, option=option)
    bound = int(sock.getsockname()[1])
    async with serving(metrics_app(metrics), sock):
        yield bound
