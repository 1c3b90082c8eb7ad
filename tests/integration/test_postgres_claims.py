"""PostgreSQL claims ahead: the statement that acknowledges a worker's runs announces the tasks it
makes ready.

The cases every store that claims ahead shares are in tests/conformance/test_claims_ahead.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from apalis_cli.backend import StoreSpec, WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_postgres import PostgresStore
from psycopg import sql

from tests.conformance.stores.postgres import drop_schema
from tests.services import need_server


@pytest.fixture
async def store() -> AsyncIterator[PostgresStore]:
    """A store in a fresh schema of its own, dropped afterwards."""
    url = need_server("postgres")
    schema = f"apalis_t_{uuid.uuid4().hex[:12]}"
    made = PostgresStore.from_spec(StoreSpec(name="t", kind="postgres", url=url, options={"schema": schema}))
    await made.open()
    yield made
    await made.close()
    await drop_schema(url, schema)


def context(worker_id: str, slots: int = 1, **settings: Any) -> WorkerContext:
    return WorkerContext(id=worker_id, name=worker_id, queue="q", free_slots=lambda: slots, **settings)


@pytest.mark.parametrize("outcome", [Outcome.release(), Outcome.retry("flaky", 0.0)], ids=["released", "retried-now"])
async def test_a_task_ready_again_is_announced_to_listening_workers_once_acknowledged(
    store: PostgresStore, outcome: Outcome
) -> None:
    q = store.backend("q", codec=JsonCodec(), max_attempts=3)
    await q.push("a")
    stream = q.poll_compact(context("w1"))
    task = await anext(stream)
    assert task is not None
    async with await psycopg.AsyncConnection.connect(store.config.url, autocommit=True) as listener:
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(store.config.schema)))
        await q.ack_batch([(task, outcome)])
        heard = [(n.channel, n.payload) async for n in listener.notifies(timeout=5.0, stop_after=1)]
    await stream.aclose()  # type: ignore[attr-defined]
    assert heard == [(store.config.schema, "q")]
