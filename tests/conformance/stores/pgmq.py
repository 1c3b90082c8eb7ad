"""The pgmq backend in the conformance suite, on the real pgmq 1.13 SQL in a scratch database."""

from __future__ import annotations

import os
from pathlib import Path

from apalis_cli.backend import Store, StoreSpec

from tests.integration.pgmq_install import scratch_database
from tests.services import need_server

from ..factory import StoreFactory


class PgmqFactory(StoreFactory):
    """A store per test on the session's pgmq database, with its own application_name."""

    kind = "pgmq"
    stall_redelivers = (
        "a pgmq lease is the message's vt, max(stale_after, 1 s), extended by each heartbeat: a "
        "stalled process extends none, and the message is read again once its vt passes"
    )

    async def create(self, tmp_path: Path) -> Store:
        from apalis_pgmq import PgmqStore

        url = scratch_database(need_server("postgres"))
        app = f"apalis_conf_{os.urandom(4).hex()}"
        store = PgmqStore.from_spec(
            StoreSpec(name="conformance", kind="pgmq", url=f"{url}?application_name={app}", options={"pool_size": 4})
        )
        store.application_name = app  # type: ignore[attr-defined]
        await store.open()
        return store

    async def drop_connections(self, store: Store) -> None:
        import psycopg

        url = scratch_database(need_server("postgres"))
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = %s",
                (store.application_name,),  # type: ignore[attr-defined]
            )


FACTORY = PgmqFactory()
