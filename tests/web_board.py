"""A board served over real HTTP (uvicorn on a loopback port) on a real store, for the web tests."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import nats
from apalis_cli.backend import BackendExt, Inspector, TaskSink
from apalis_cli.config import load_config
from apalis_cli.web.app import create_app
from apalis_cli.web.board import Board
from apalis_cli.web.server import bind, serving

from .conformance.stores.mysql import admin_execute
from .conformance.stores.postgres import drop_schema
from .conformance.stores.redis import drop_namespace
from .nats_streams import drop_stream
from .services import need_server

__all__ = ["Served", "backend_table", "serve_board", "walk_pages"]

WORKERS = """
[[workers]]
name = "thumbnails"
backend = "main"
queue = "thumbnails"
handler = "apalis_cli.demo:resize_image"
max_attempts = 2

[[workers]]
name = "packed"
backend = "main"
queue = "packed"
codec = "msgpack"
handler = "apalis_cli.demo:resize_image"

[[workers]]
name = "markup"
backend = "main"
queue = "<script>alert('q')</script>"
handler = "apalis_cli.demo:resize_image"
"""


@dataclass
class Served:
    """A running board: its URL, a client for it, the board itself (its queues' backends)."""

    url: str
    client: httpx.AsyncClient
    board: Board

    def queue(self, name: str) -> BackendExt:
        """The backend of queue `name` (to push and change tasks behind the board's back)."""
        view = self.board.find_view(name)
        assert view is not None, name
        return view.backend

    def sink(self, name: str = "thumbnails") -> TaskSink:
        """The queue `name` as a `TaskSink` (to push behind the board's back)."""
        backend = self.queue(name)
        assert isinstance(backend, TaskSink)
        return backend

    def inspector(self, name: str = "thumbnails") -> Inspector:
        """The queue `name` as an `Inspector` (to kill or look behind the board's back)."""
        backend = self.queue(name)
        assert isinstance(backend, Inspector)
        return backend

    async def csrf(self, path: str = "/") -> str:
        """The CSRF token of a page (its cookie is kept by the client)."""
        page = await self.client.get(path)
        match = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert match, "no CSRF field on the page (is the board started with admin?)"
        return match.group(1)


async def walk_pages(served: Served, queue: str = "thumbnails", **params: str) -> tuple[list[str], list[Any]]:
    """Every page of a queue's listing through the API, following `next`: the ids in order, and
    each page's answer."""
    seen: list[str] = []
    bodies: list[Any] = []
    after: str | None = None
    while len(bodies) < 50:
        answer = await served.client.get(
            f"/api/queues/{queue}/tasks", params={**params, **({"after": after} if after else {})}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["tasks"]) <= int(params.get("limit", 50))
        bodies.append(body)
        seen += [t["id"] for t in body["tasks"]]
        after = body["next"]
        if after is None:
            return seen, bodies
    raise AssertionError("the pages never ended")


def backend_table(kind: str, tmp_path: Path) -> tuple[str, str | None]:
    """A `[backends.main]` table for `kind` and what to drop afterwards (a schema, a database, a
    Redis namespace)."""
    if kind == "sqlite":
        return '[backends.main]\nkind = "sqlite"\nurl = "sqlite:///board.db"\n', None
    if kind == "memory":  # the board's own process holds the tasks: enough for what it does alone
        return '[backends.main]\nkind = "memory"\n', None
    if kind in ("redis", "rsmq"):  # (rsmq's queue names refuse WORKERS' markup queue)
        namespace = f"apalis-w-{uuid.uuid4().hex[:12]}"
        url = need_server("redis")
        return f'[backends.main]\nkind = "{kind}"\nurl = "{url}"\nnamespace = "{namespace}"\n', namespace
    if kind == "nats":  # a stream of its own, in memory
        tag = uuid.uuid4().hex[:12]
        url = need_server("nats")
        table = f'[backends.main]\nkind = "nats"\nurl = "{url}"\nstream = "W{tag}"\nprefix = "w{tag}"\n'
        return table + 'storage = "memory"\n', f"W{tag}"
    if kind == "mysql":
        server = need_server("mysql")
        database = f"apalis_w_{uuid.uuid4().hex[:12]}"
        url = urlunsplit(urlsplit(server)._replace(path=f"/{database}"))
        return f'[backends.main]\nkind = "mysql"\nurl = "{url}"\n', database
    url = need_server("postgres")
    schema = f"apalis_w_{uuid.uuid4().hex[:12]}"
    table = f'[backends.main]\nkind = "postgres"\nurl = "{url}"\nschema = "{schema}"\nmax_size = 4\n'
    return table, schema


@contextlib.asynccontextmanager
async def serve_board(
    kind: str, tmp_path: Path, *, admin: bool = True, token: str | None = None, workers: str = WORKERS, **app: Any
) -> AsyncIterator[Served]:
    """Serve a board over `kind` (memory, sqlite, postgres, mysql, redis, rsmq or nats) on a free
    loopback port."""
    table, made = backend_table(kind, tmp_path)
    if kind == "mysql":
        await admin_execute(need_server("mysql"), f"CREATE DATABASE {made}")
    path = tmp_path / "jobs.toml"
    path.write_text(table + workers)
    board = Board(load_config(path))
    await board.open()
    try:
        sock = bind("127.0.0.1", 0, option="--addr")
        port = sock.getsockname()[1]
        application = create_app(board, admin=admin, token=token, fresh_for=0.0, **app)
        async with serving(application, sock):
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
                yield Served(url, client, board)
    finally:
        await board.close()
        if kind == "postgres" and made is not None:
            await drop_schema(need_server("postgres"), made)
        elif kind == "mysql":
            await admin_execute(need_server("mysql"), f"DROP DATABASE IF EXISTS {made}")
        elif kind in ("redis", "rsmq") and made is not None:
            await drop_namespace(need_server("redis"), made)
        elif kind == "nats" and made is not None:
            nc = await nats.connect(need_server("nats"))
            try:
                await drop_stream(nc.jetstream(), made)
            finally:
                await nc.close()
