"""The MySQL/MariaDB backend in the conformance suite: one database per test, dropped afterwards."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from apalis_cli.backend import Store, StoreSpec

from ...services import need_server
from ..factory import StoreFactory


async def admin_connect(url: str) -> Any:
    """An autocommit asyncmy connection to the server of `url` (its own database)."""
    import asyncmy

    parts = urlsplit(url)
    return await asyncmy.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/") or None,
        autocommit=True,
    )


async def admin_execute(url: str, statement: str, args: Any = None) -> list[Any]:
    """Run one statement on an admin connection; its rows."""
    conn = await admin_connect(url)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(statement, args)
            return list(await cursor.fetchall())
    finally:
        conn.close()


async def kill_connections(url: str, database: str) -> int:
    """`KILL` every connection using `database`, as a server restart would."""
    conn = await admin_connect(url)
    killed = 0
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(
                "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()", (database,)
            )
            for (thread,) in await cursor.fetchall():
                try:
                    await cursor.execute(f"KILL {int(thread)}")
                    killed += 1
                except Exception:  # it ended by itself meanwhile
                    pass
    finally:
        conn.close()
    return killed


class MysqlFactory(StoreFactory):
    """A new database per test on the test MariaDB server."""

    kind = "mysql"

    async def create(self, tmp_path: Path) -> Store:
        from apalis_mysql import MysqlStore

        url = need_server("mysql")
        database = f"apalis_t_{uuid.uuid4().hex[:12]}"
        await admin_execute(url, f"CREATE DATABASE {database}")
        parts = urlsplit(url)
        own = urlunsplit(parts._replace(path=f"/{database}"))
        store = MysqlStore.from_spec(StoreSpec(name="conformance", kind="mysql", url=own, options={"max_size": 4}))
        await store.open()
        return store

    async def destroy(self, store: Store) -> None:
        from apalis_mysql import MysqlStore

        assert isinstance(store, MysqlStore)
        await store.close()
        await admin_execute(store.config.url, f"DROP DATABASE IF EXISTS {store.config.database}")

    async def drop_connections(self, store: Store) -> None:
        from apalis_mysql import MysqlStore

        assert isinstance(store, MysqlStore)
        await kill_connections(store.config.url, store.config.database)


FACTORY = MysqlFactory()
