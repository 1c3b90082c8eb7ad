"""MySQL/MariaDB under an ordinary database user on a server with binary logging on, as most
production servers run (replication, point-in-time backups, managed services): such a server
refuses triggers and stored routines to a user without SUPER (error 1419), so a migration that
created one stopped every daemon and `apalis push` at start (this session's first schema
version 9 did). The migrations and a keyed claim must work with the privileges of the
application's own database alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import asyncmy
import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.fleet import FleetLimits

from ..acceptance.chaos_servers import free_port, private_mariadb
from .conftest import make_mysql_store


async def _as_root(port: int, *statements: str) -> list[tuple[object, ...]]:
    conn = await asyncmy.connect(host="127.0.0.1", port=port, user="root", password="")
    try:
        rows: list[tuple[object, ...]] = []
        async with conn.cursor() as cur:
            for statement in statements:
                await cur.execute(statement)
                rows = list(await cur.fetchall())
        return rows
    finally:
        conn.close()


@pytest.fixture
def app_url() -> Iterator[str]:
    """A database `app` on a private MariaDB with binary logging on, and a user `app` with every
    privilege on that database and none beyond it."""
    with private_mariadb(free_port(), binlog=True) as server:
        grants = [
            "CREATE DATABASE app",
            *(f"CREATE USER 'app'@'{host}' IDENTIFIED BY 'pw'" for host in ("127.0.0.1", "localhost")),
            *(f"GRANT ALL PRIVILEGES ON app.* TO 'app'@'{host}'" for host in ("127.0.0.1", "localhost")),
        ]
        asyncio.run(_as_root(server.port, *grants))
        (log_bin,) = asyncio.run(_as_root(server.port, "SELECT @@log_bin"))
        assert log_bin == (1,), "the server must log binary, or the test shows nothing"
        yield f"mysql://app:pw@127.0.0.1:{server.port}/app"


async def test_a_user_without_super_migrates_and_claims_keyed_tasks_with_binary_logging_on(app_url: str) -> None:
    store = make_mysql_store(app_url)
    await store.open()  # every migration, as the application's user
    try:
        q = store.backend("q", codec=JsonCodec())
        await q.push_bulk([{"account": "a", "n": n} for n in range(3)], limit_key="a")
        await q.push({"account": "b"}, limit_key="b")
        limits = FleetLimits(key="account", concurrency=1, keyed_concurrency=True)
        ctx = WorkerContext(id="w1", name="w1", queue="q", free_slots=lambda: 4, limits=limits)
        stream = q.poll_compact(ctx)
        try:
            got = [await anext(stream) for _ in range(2)]
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        # one task of each key: the keyed claim of the migrated schema, under the limit
        assert sorted(json.loads(t.args)["account"] for t in got if t is not None) == ["a", "b"]
    finally:
        await store.close()
