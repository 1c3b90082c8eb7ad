"""PostgreSQL claims ahead: the statement that acknowledges a worker's runs announces the tasks it
makes ready.

The cases every store that claims ahead shares are in tests/conformance/test_claims_ahead.py."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_postgres import PostgresStore
from psycopg import sql


def context(worker_id: str, slots: int = 1, **settings: Any) -> WorkerContext:
    return WorkerContext(id=worker_id, name=worker_id, queue="q", free_slots=lambda: slots, **settings)


@pytest.mark.parametrize("outcome", [Outcome.release(), Outcome.retry("flaky", 0.0)], ids=["released", "retried-now"])
async def test_a_task_ready_again_is_announced_to_listening_workers_once_acknowledged(
    postgres_store: PostgresStore, outcome: Outcome
) -> None:
    q = postgres_store.backend("q", codec=JsonCodec(), max_attempts=3)
    await q.push("a")
    stream = q.poll_compact(context("w1"))
    task = await anext(stream)
    assert task is not None
    async with await psycopg.AsyncConnection.connect(postgres_store.config.url, autocommit=True) as listener:
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(postgres_store.config.schema)))
        await q.ack_batch([(task, outcome)])
        heard = [(n.channel, n.payload) async for n in listener.notifies(timeout=5.0, stop_after=1)]
    await stream.aclose()  # type: ignore[attr-defined]
    assert heard == [(postgres_store.config.schema, "q")]
