"""The poll streams on every store: `poll` (the seed's decoded stream) and `poll_compact` (the
stored bytes, what the worker takes), driven by hand as a worker would drive them.

`poll` does with a payload its codec cannot decode what the worker does: the task is killed in
the store with a "decode error" line, never yielded, and the stream goes on with the next task.
`poll_compact` hands the stored bytes out as they are; deciding about them is its caller's part.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from apalis_cli.backend import Capability, WorkerContext
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task

from .conftest import Backend, Harness

_WITHIN = 10.0
"""A bound that proves a stream did not hang; not a speed target."""

_GARBAGE = {"json": b"\xff\x00{not json", "msgpack": b"\xc1\xc1\xc1"}


def poller(backend: Backend) -> WorkerContext:
    """A worker's context with one free slot, as a worker running nothing has."""
    return WorkerContext(
        id=f"poller-{time.monotonic_ns()}",
        name="poller",
        queue=backend.get_queue(),
        keep_alive=0.2,
        poll_interval=0.05,
        free_slots=lambda: 1,
    )


async def _done(task: Task[Any]) -> Outcome:
    return Outcome.done()


async def take(backend: Backend, stream: AsyncIterator[Task[Any] | None], count: int) -> list[Task[Any]]:
    """The next `count` tasks of `stream` (idle ticks skipped), each acknowledged as done
    through the store's own layer once taken, as a worker's run would be."""
    acknowledge = backend.middleware()(_done)
    taken: list[Task[Any]] = []
    async with asyncio.timeout(_WITHIN):
        while len(taken) < count:
            task = await anext(stream)
            if task is not None:
                taken.append(task)
                await acknowledge(task)
    return taken


async def idles(stream: AsyncIterator[Task[Any] | None]) -> Task[Any] | None:
    """The stream's next item once the store has nothing more for it: None (idle), or the task
    it should not have had."""
    async with asyncio.timeout(_WITHIN):
        return await anext(stream)


async def polled(
    backend: Backend, open_stream: Callable[[WorkerContext], AsyncIterator[Task[Any] | None]], count: int
) -> tuple[list[Task[Any]], Task[Any] | None]:
    """`count` tasks from a fresh stream of a registered worker, then the item after them."""
    worker = poller(backend)
    beats = backend.heartbeat(worker)
    await anext(beats)  # registered, as a worker is before it polls
    stream = open_stream(worker)
    try:
        return await take(backend, stream, count), await idles(stream)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await beats.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_poll_yields_each_task_decoded_then_idles(harness: Harness, codec: str) -> None:
    backend = harness.backend(codec)
    values = [{"n": n, "text": "café"} for n in range(3)]
    ids = await backend.push_bulk(values)

    tasks, after = await polled(backend, backend.poll, len(values))

    assert {task.id: task.args for task in tasks} == dict(zip(ids, values, strict=True))
    assert after is None, f"{after!r} handed out twice"


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_poll_compact_yields_each_task_as_stored_then_idles(harness: Harness, codec: str) -> None:
    backend = harness.backend(codec)
    values = [{"n": n, "text": "café"} for n in range(3)]
    ids = await backend.push_bulk(values)

    tasks, after = await polled(backend, backend.poll_compact, len(values))

    assert all(isinstance(task.args, bytes) for task in tasks)
    assert {task.id: backend.codec.decode(task.args) for task in tasks} == dict(zip(ids, values, strict=True))
    assert after is None, f"{after!r} handed out twice"


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_poll_kills_a_task_it_cannot_decode_and_goes_on(harness: Harness, codec: str) -> None:
    backend = harness.backend(codec, max_attempts=5)
    before = await backend.push({"n": "before"})
    bad = await backend.push_compact(_GARBAGE[codec])
    after = await backend.push({"n": "after"})

    tasks, next_item = await polled(backend, backend.poll, 2)

    assert {task.id: task.args for task in tasks} == {before: {"n": "before"}, after: {"n": "after"}}
    assert next_item is None, f"{next_item!r} handed out by poll"
    if harness.store.capabilities.has(Capability.INSPECT):
        stored = await harness.inspector(backend).get(bad)
        assert stored is not None
        assert stored.ctx.status is Status.KILLED
        assert (stored.ctx.last_error or "").startswith("decode error")
    # Killed, not left claimed nor retried: a new stream (a restarted worker) never sees it.
    _, again = await polled(backend, backend.poll_compact, 0)
    assert again is None, f"the undecodable task came back: {again!r}"


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_poll_compact_hands_out_an_undecodable_payload_as_stored(harness: Harness, codec: str) -> None:
    backend = harness.backend(codec)
    bad = await backend.push_compact(_GARBAGE[codec])

    (task,), after = await polled(backend, backend.poll_compact, 1)

    assert (task.id, task.args) == (bad, _GARBAGE[codec])
    assert after is None
