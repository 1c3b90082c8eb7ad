"""ClaimsAhead: the bookkeeping of tasks claimed for a polling worker by its acknowledgements.

A fake store here: `Store.fetch` hands out numbered tasks and `Store.ack` records what comes
back, which is all the bookkeeping sees of a real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from apalis_cli.ahead import ClaimsAhead, Fetch, Held
from apalis_cli.backend import WorkerContext
from apalis_cli.polling import Waker
from apalis_cli.service import Outcome, OutcomeKind
from apalis_cli.task import Task, TaskContext

H = TypeVar("H", bound=Held)


def context(worker_id: str = "w1", free: int = 1, poll_interval: float = 0.05) -> WorkerContext:
    return WorkerContext(id=worker_id, name=worker_id, queue="q", poll_interval=poll_interval, free_slots=lambda: free)


def task(task_id: str, lock_by: str | None = "w1") -> Task[bytes]:
    return Task(id=task_id, args=b"", ctx=TaskContext(queue="q", lock_by=lock_by))


class Store:
    """Ready tasks `s0, s1, ...` claimed by `fetch(n)`; acknowledgements recorded by `ack`."""

    def __init__(self, ready: int = 0) -> None:
        self.ready = [task(f"s{n}") for n in range(ready)]
        self.limits: list[int] = []
        self.acked: list[tuple[str, OutcomeKind]] = []
        self.waker = Waker()
        self.started = 0

    async def fetch(self, limit: int) -> list[Task[bytes]]:
        self.limits.append(limit)
        batch, self.ready = self.ready[:limit], self.ready[limit:]
        return batch

    async def ack(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        self.acked.extend((t.id, outcome.kind) for t, outcome in items)

    def start(self) -> tuple[Fetch, Waker]:
        self.started += 1
        return self.fetch, self.waker

    def released(self) -> list[str]:
        return [task_id for task_id, kind in self.acked if kind is OutcomeKind.RELEASE]


def polling(ahead: ClaimsAhead[H], worker_id: str = "w1") -> H:
    """The `Held` of the open stream of `worker_id`."""
    holder = ahead.holder(worker_id)
    assert holder is not None
    return holder


def poll(ahead: ClaimsAhead[Held], store: Store, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
    return ahead.poll(worker, store.start)


async def test_a_stream_is_registered_only_once_iterated() -> None:
    store = Store(ready=1)
    ahead = ClaimsAhead(store.ack, Held)
    stream = poll(ahead, store, context())
    assert (store.started, ahead.holder("w1")) == (0, None)
    await stream.aclose()  # type: ignore[attr-defined]
    assert store.started == 0
    assert store.acked == []


async def test_tasks_claimed_ahead_are_served_before_the_store_is_asked() -> None:
    store = Store(ready=2)
    ahead = ClaimsAhead(store.ack, Held)
    stream = poll(ahead, store, context(free=2))
    first = await anext(stream)  # the store's own claim: s0, s1
    holder = polling(ahead)
    await ahead.hand_over(holder, [task("a0"), task("a1"), task("a2")])
    got = [await anext(stream) for _ in range(4)]
    await stream.aclose()  # type: ignore[attr-defined]
    assert first is not None
    assert [first.id, *(t.id for t in got if t is not None)] == ["s0", "s1", "a0", "a1", "a2"]
    assert store.limits == [2]  # the held tasks were taken two at a time (free slots), not claimed
    assert store.acked == []


async def test_closing_the_stream_releases_what_it_holds_and_unregisters_it() -> None:
    store = Store(ready=1)
    ahead = ClaimsAhead(store.ack, Held)
    stream = poll(ahead, store, context())
    await anext(stream)
    holder = polling(ahead)
    await ahead.hand_over(holder, [task("a0"), task("a1")])
    # s0, the stream's own claim, counts until the next take: it may not have started yet.
    assert ahead.held("w1") == ["a0", "a1", "s0"]
    await stream.aclose()  # type: ignore[attr-defined]
    assert store.released() == ["a0", "a1"]
    assert ahead.holder("w1") is None
    assert ahead.held("w1") == []
    assert ahead.wanted([(task("s0"), Outcome.done())]) == []


async def test_tasks_claimed_for_a_stream_that_closed_meanwhile_go_back() -> None:
    store = Store(ready=1)
    ahead = ClaimsAhead(store.ack, Held)
    stream = poll(ahead, store, context())
    await anext(stream)
    holder = polling(ahead)
    await stream.aclose()  # type: ignore[attr-defined]
    await ahead.hand_over(holder, [task("late")])  # the ack that claimed it was in flight
    assert store.released() == ["late"]
    assert list(holder.tasks) == []


async def test_a_hand_over_wakes_the_queues_idle_pollers() -> None:
    store = Store()
    ahead = ClaimsAhead(store.ack, Held)
    stream = poll(ahead, store, context(poll_interval=30.0))
    assert await anext(stream) is None  # nothing ready: the poller would wait
    holder = polling(ahead)
    idle = store.waker.subscribe()
    await ahead.hand_over(holder, [task("a0")])
    got = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert idle.is_set()
    assert got is not None
    assert got.id == "a0"
    assert store.limits == [1]  # served from what was held, not claimed again


async def test_tasks_claimed_ahead_while_the_store_is_asked_are_served_not_reported_idle() -> None:
    # The last runs' ack claims the queue's last tasks for this worker while its own claim is in
    # flight; that claim finds nothing. The stream must hand out what the ack claimed: a burst
    # run stops at the first None with nothing running, and the tasks would go back unrun.
    store = Store()
    ahead = ClaimsAhead(store.ack, Held)
    stream = poll(ahead, store, context(poll_interval=30.0))

    async def fetch_raced_by_an_ack(limit: int) -> list[Task[bytes]]:
        await ahead.hand_over(polling(ahead), [task("a0")])
        return []

    store.fetch = fetch_raced_by_an_ack  # type: ignore[method-assign]
    got = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert got is not None
    assert got.id == "a0"
    assert store.released() == []


async def test_wanted_counts_the_slots_each_workers_finished_runs_free_less_what_it_holds() -> None:
    store = Store(ready=2)
    ahead = ClaimsAhead(store.ack, Held)
    one, two = poll(ahead, store, context("w1")), poll(ahead, store, context("w2"))
    await anext(one)
    await anext(two)
    w1, w2 = ahead.holder("w1"), ahead.holder("w2")
    assert w1 is not None
    assert w2 is not None
    await ahead.hand_over(w2, [task("held", "w2")])
    items = [
        (task("a", "w1"), Outcome.done()),
        (task("b", "w1"), Outcome.retry("flaky", 0.0)),
        (task("c", "w1"), Outcome.kill("broken")),
        (task("d", "w1"), Outcome.release()),  # a release: the worker is stopping, no slot freed
        (task("e", "w2"), Outcome.done()),  # one slot freed, one task held already
        (task("f", "w2"), Outcome.done()),
        (task("g", "w3"), Outcome.done()),  # no stream of w3 polls here
        (task("h", None), Outcome.done()),  # never claimed
    ]
    assert ahead.wanted(items) == [(w1, 3), (w2, 1)]
    assert ahead.wanted(items[4:5]) == []
    for stream in (one, two):
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_newer_stream_of_the_same_worker_keeps_its_registration_when_an_older_closes() -> None:
    store = Store(ready=2)
    ahead = ClaimsAhead(store.ack, Held)
    old = poll(ahead, store, context())
    await anext(old)
    new = poll(ahead, store, context())
    await anext(new)
    newer = ahead.holder("w1")
    await old.aclose()  # type: ignore[attr-defined]
    assert ahead.holder("w1") is newer
    await new.aclose()  # type: ignore[attr-defined]
    assert ahead.holder("w1") is None


class Tagged(Held):
    __slots__ = ("tag",)

    def __init__(self, worker_id: str, waker: Waker) -> None:
        super().__init__(worker_id, waker)
        self.tag = f"made for {worker_id}"


async def test_each_stream_gets_the_stores_own_kind_of_holder() -> None:
    store = Store(ready=1)
    ahead = ClaimsAhead(store.ack, Tagged)
    stream = ahead.poll(context(), store.start)
    await anext(stream)
    holder = ahead.holder("w1")
    await stream.aclose()  # type: ignore[attr-defined]
    assert holder is not None
    assert holder.tag == "made for w1"
    assert holder.waker is store.waker


async def test_tasks_taken_from_the_held_ones_count_as_running_until_the_worker_has_them() -> None:
    # The heartbeat gives back the tasks a worker holds but does not run (a claim whose reply was
    # lost). Held tasks on their way to the worker (taken from the holder, not yet started) must
    # not look lost: after an outage they were claimed long ago, and a beat that reads the
    # worker's tasks at that moment would hand them to another worker while this one runs them.
    store = Store()
    ahead: ClaimsAhead[Held] = ClaimsAhead(store.ack, Held)
    stream = ahead.poll(context(free=2), store.start)
    try:
        assert await anext(stream) is None  # registered; nothing ready
        holder = polling(ahead)
        await ahead.hand_over(holder, [task("a"), task("b")])
        asked = asyncio.ensure_future(anext(stream))
        seen: list[set[str]] = []
        while not asked.done():
            seen.append(set(ahead.held("w1")))
            await asyncio.sleep(0)
        first = await asked
        assert first is not None
        assert first.id == "a"
        assert all(ids == {"a", "b"} for ids in seen), f"held tasks vanished on their way: {seen}"
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_task_handed_to_an_idle_stream_reaches_it_within_two_loop_turns() -> None:
    # The worker waits on the stream while idle; a hand-over must reach it without a claim task
    # of its own around the held tasks (each turn of the loop is latency on a loaded machine).
    store = Store()
    ahead = ClaimsAhead(store.ack, Held)
    stream = poll(ahead, store, context(poll_interval=30.0))
    assert await anext(stream) is None
    waiting = asyncio.ensure_future(anext(stream))
    for _ in range(3):
        await asyncio.sleep(0)  # it waits for a wake-up now
    assert not waiting.done()
    ahead.give(polling(ahead), [task("a0")])
    turns = 0
    while not waiting.done():
        await asyncio.sleep(0)
        turns += 1
    got = waiting.result()
    await stream.aclose()  # type: ignore[attr-defined]
    assert got is not None
    assert got.id == "a0"
    assert turns <= 2


async def test_a_handed_task_starts_in_the_callers_turn_when_the_worker_has_a_slot() -> None:
    # ClaimsAhead.start: the worker starts it at once (no loop turn of the poll stream); one it
    # cannot start, or one behind tasks held before it, waits in the stream as `give` leaves it.
    store = Store()
    ahead = ClaimsAhead(store.ack, Held)
    started: list[str] = []
    slots = 1

    def start(task: Task[bytes]) -> bool:
        nonlocal slots
        if slots == 0:
            return False
        slots -= 1
        started.append(task.id)
        return True

    worker = WorkerContext(id="w1", name="w1", queue="q", poll_interval=30.0, free_slots=lambda: 1, start=start)
    stream = poll(ahead, store, worker)
    assert await anext(stream) is None
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    assert ahead.start(polling(ahead), [task("a0"), task("a1")]) == 1
    assert started == ["a0"]
    assert [t.id for t in polling(ahead).tasks] == ["a1"]
    slots = 1
    assert ahead.start(polling(ahead), [task("a2")]) == 1  # behind a1: not before it
    got = await waiting
    assert got is not None
    assert got.id == "a1"
    await stream.aclose()  # type: ignore[attr-defined]
    assert started == ["a0"]
    assert store.released() == ["a2"]
    assert ahead.start(ahead.holder("w1"), [task("a3")]) is None  # closed: the caller releases it
