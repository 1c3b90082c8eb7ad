"""AckBatcher and the acknowledging layer: outcomes of one loop turn share one write."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from apalis_cli.acks import AckBatcher, ack_layer
from apalis_cli.errors import ConnectionLost
from apalis_cli.service import Outcome, OutcomeKind
from apalis_cli.task import Task, TaskContext


def make_task(n: int) -> Task[Any]:
    return Task(id=f"t{n}", args=n, ctx=TaskContext(queue="q", attempts=1, lock_by="w"))


class Flushes:
    """A flush that records each batch it was given (and can be told to fail or be slow)."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.batches: list[list[tuple[str, OutcomeKind]]] = []
        self.delay = delay
        self.fail_next: BaseException | None = None

    async def __call__(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        self.batches.append([(task.id, outcome.kind) for task, outcome in items])
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc


async def test_acks_of_one_loop_turn_are_one_flush() -> None:
    flushes = Flushes()
    batcher = AckBatcher(flushes)
    await asyncio.gather(*(batcher.ack(make_task(n), Outcome.done(n)) for n in range(50)))
    assert len(flushes.batches) == 1
    assert [task_id for task_id, _ in flushes.batches[0]] == [f"t{n}" for n in range(50)]


async def test_acks_arriving_during_a_flush_share_the_next_one() -> None:
    flushes = Flushes(delay=0.05)
    batcher = AckBatcher(flushes)
    first = asyncio.ensure_future(batcher.ack(make_task(0), Outcome.done()))
    await asyncio.sleep(0.01)  # the first flush is now in progress
    later = [asyncio.ensure_future(batcher.ack(make_task(n), Outcome.done())) for n in range(1, 6)]
    await asyncio.gather(first, *later)
    assert [len(batch) for batch in flushes.batches] == [1, 5]


async def test_an_ack_returns_only_once_written() -> None:
    flushes = Flushes(delay=0.05)
    batcher = AckBatcher(flushes)
    waiter = asyncio.ensure_future(batcher.ack(make_task(0), Outcome.done()))
    await asyncio.sleep(0.01)
    assert not waiter.done(), "the run's slot must not free before the store has its outcome"
    await waiter


async def test_a_failed_flush_fails_every_waiter_and_the_next_flush_works() -> None:
    flushes = Flushes()
    flushes.fail_next = ConnectionError("server went away")
    batcher = AckBatcher(flushes)
    results = await asyncio.gather(
        *(batcher.ack(make_task(n), Outcome.done()) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    await batcher.ack(make_task(9), Outcome.done())
    assert [len(batch) for batch in flushes.batches] == [3, 1]


class Refusing:
    """A store that refuses, whole, any batch holding the result "bad"."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.written: dict[str, Outcome] = {}

    async def __call__(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        self.batches.append([task.id for task, _ in items])
        if any(outcome.result == "bad" for _, outcome in items):
            raise ValueError("the driver cannot encode this")
        self.written.update((task.id, outcome) for task, outcome in items)


async def test_an_outcome_the_store_refuses_fails_its_own_task_alone() -> None:
    store = Refusing()
    batcher = AckBatcher(store)
    outcomes = [Outcome.done(n) for n in range(5)]
    outcomes[2] = Outcome.done("bad")
    results = await asyncio.gather(*(batcher.ack(make_task(n), outcome) for n, outcome in enumerate(outcomes)))

    assert store.batches[0] == ["t0", "t1", "t2", "t3", "t4"]
    for n in (0, 1, 3, 4):
        assert results[n] == store.written[f"t{n}"] == Outcome.done(n)
    # The refused outcome is replaced by a kill saying why: its task is not left running.
    assert results[2] == store.written["t2"]
    assert results[2].kind is OutcomeKind.KILL
    assert results[2].error == "the store refused this run's outcome (done): ValueError: the driver cannot encode this"


async def test_a_lost_store_fails_the_whole_batch_at_once() -> None:
    flushes = Flushes()
    flushes.fail_next = ConnectionLost("the connection dropped")
    batcher = AckBatcher(flushes)
    results = await asyncio.gather(
        *(batcher.ack(make_task(n), Outcome.done()) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionLost) for r in results)
    assert [len(batch) for batch in flushes.batches] == [3], "no outcome is tried alone, nor replaced"


async def test_ack_layer_writes_the_outcome_of_each_run() -> None:
    written: list[tuple[str, Outcome]] = []

    async def ack(task: Task[Any], outcome: Outcome) -> None:
        written.append((task.id, outcome))

    async def handler(task: Task[Any]) -> Outcome:
        return Outcome.done(task.args * 2)

    outcome = await ack_layer(ack)(handler)(make_task(21))
    assert outcome == Outcome.done(42)
    assert written == [("t21", Outcome.done(42))]


async def test_ack_layer_releases_a_cancelled_run() -> None:
    written: list[tuple[str, OutcomeKind]] = []
    entered = asyncio.Event()

    async def ack(task: Task[Any], outcome: Outcome) -> None:
        written.append((task.id, outcome.kind))

    async def hangs(task: Task[Any]) -> Outcome:
        entered.set()
        await asyncio.sleep(30)
        return Outcome.done()

    run = asyncio.ensure_future(ack_layer(ack)(hangs)(make_task(1)))
    await entered.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert written == [("t1", OutcomeKind.RELEASE)]


def test_a_batcher_acknowledges_on_each_loop_it_is_used_on() -> None:
    # A store opened again on a new loop (a second `asyncio.run`, a sync sink's loop) keeps its
    # batcher: the loop it keeps from the last ack must not outlive that loop.
    flushes = Flushes()
    batcher = AckBatcher(flushes)
    for n in range(2):
        written = asyncio.run(batcher.ack(make_task(n), Outcome.done(n)))
        assert written == Outcome.done(n)
    assert flushes.batches == [[("t0", OutcomeKind.DONE)], [("t1", OutcomeKind.DONE)]]
