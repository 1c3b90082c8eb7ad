"""Serving an ASGI application with uvicorn inside a running event loop (the daemon's, or the
`apalis web` command's): the socket is bound here, so a busy port is a one-line error rather
than uvicorn's exit, and signals stay with the caller (uvicorn would take SIGINT and SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn

from ..errors import UsageError

__all__ = ["bind", "serving"]


class _Server(uvicorn.Server):
    """uvicorn's server, leaving signal handling to whoever runs the loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int, *, option: str) -> socket.socket:
    """A listening socket on host:port; a `UsageError` naming `option` when that fails."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise UsageError(f"{option}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serving(app: Any, sock: socket.socket) -> AsyncIterator[uvicorn.Server]:
    """Serve `app` on `sock` for the duration of the block, then stop (open connections get a
    moment to finish)."""
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        log_level="warning",  # its "Started server process" lines would land on the live view
        access_log=False,
        timeout_graceful_shutdown=2,
        server_header=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="apalis-web")
    try:
        # uvicorn says it is up only by a flag (no event to wait on); it is set within milliseconds.
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if task.done():
            task.result()  # uvicorn failed to start: raise what it raised
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        sock.close()
