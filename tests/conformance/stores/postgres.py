"""The PostgreSQL backend in the conformance suite: one schema per test, dropped afterwards."""

from __future__ import annotations

import uuid
from pathlib import Path

from apalis_cli.backend import Store, StoreSpec

from ...services import need_server
from ..factory import StoreFactory


async def drop_schema(url: str, schema: str) -> None:
    """Drop `schema` and everything in it."""
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def terminate_backends(url: str, application_name: str) -> int:
    """`pg_terminate_backend` every connection of `application_name`, as a server restart would."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        cursor = await admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0


class PostgresFactory(StoreFactory):
    """A new schema per test on the test PostgreSQL server, its connections named after it."""

    kind = "postgres"

    async def create(self, tmp_path: Path) -> Store:
        from apalis_postgres import PostgresStore

        url = need_server("postgres")
        schema = f"apalis_t_{uuid.uuid4().hex[:12]}"
        options = {"schema": schema, "application_name": schema, "max_size": 4}
        store = PostgresStore.from_spec(StoreSpec(name="conformance", kind="postgres", url=url, options=options))
        await store.open()
        return store

    async def destroy(self, store: Store) -> None:
        from apalis_postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        await store.close()
        await drop_schema(store.config.url, store.config.schema)

    async def drop_connections(self, store: Store) -> None:
        from apalis_postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        await terminate_backends(store.config.url, store.config.application_name)


FACTORY = PostgresFactory()
