"""poll_batches, Waker and beat_every: the helpers that turn a store's primitives into streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.contact import Contact
from apalis_cli.polling import Waker, beat_every, poll_batches
from apalis_cli.task import Task, TaskContext


def context(free: int = 3, poll_interval: float = 0.05, keep_alive: float = 0.02) -> WorkerContext:
    return WorkerContext(
        id="w1", name="w", queue="q", keep_alive=keep_alive, poll_interval=poll_interval, free_slots=lambda: free
    )


class Source:
    """A queue of numbered tasks handed out by `fetch(n)`, recording limits and releases."""

    def __init__(self, count: int) -> None:
        self.left = [Task(id=f"t{n}", args=b"", ctx=TaskContext(queue="q")) for n in range(count)]
        self.limits: list[int] = []
        self.released: list[str] = []

    async def fetch(self, limit: int) -> list[Task[bytes]]:
        self.limits.append(limit)
        batch, self.left = self.left[:limit], self.left[limit:]
        return batch

    async def release(self, tasks: Sequence[Task[bytes]]) -> None:
        self.released.extend(task.id for task in tasks)


async def test_fetches_in_batches_of_free_slots() -> None:
    source = Source(7)
    stream = poll_batches(context(free=3), source.fetch, source.release)
    got = [await anext(stream) for _ in range(8)]
    await stream.aclose()  # type: ignore[attr-defined]
    assert [t.id if t else None for t in got] == [f"t{n}" for n in range(7)] + [None]
    assert source.limits[:3] == [3, 3, 3]


async def test_closing_the_stream_releases_tasks_never_handed_out() -> None:
    source = Source(5)
    stream = poll_batches(context(free=4), source.fetch, source.release)
    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert first is not None
    assert first.id == "t0"
    assert source.released == ["t1", "t2", "t3"]


async def test_a_worker_with_no_free_slot_still_fetches_one() -> None:
    # The worker asks only when it has room; by then free_slots may have been read as 0.
    source = Source(2)
    stream = poll_batches(context(free=0), source.fetch, source.release)
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert source.limits == [1]


async def test_idle_polls_back_off_up_to_poll_interval() -> None:
    source = Source(0)
    stream = poll_batches(context(poll_interval=0.05), source.fetch, source.release)
    began = time.monotonic()
    for _ in range(12):
        assert await anext(stream) is None
    elapsed = time.monotonic() - began
    await stream.aclose()  # type: ignore[attr-defined]
    # 5+10+20+40 ms, then capped at 50 ms: about 0.4 s for 11 waits; never a busy loop.
    assert elapsed >= 0.3
    assert len(source.limits) == 12


async def test_a_waker_ends_the_idle_wait_at_once() -> None:
    waker = Waker()
    source = Source(0)
    stream = poll_batches(context(poll_interval=10.0), source.fetch, source.release, waker)
    for _ in range(8):  # idle long enough that the next wait is 640 ms
        await anext(stream)
    source.left = [Task(id="new", args=b"", ctx=TaskContext(queue="q"))]
    began = time.monotonic()
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.01)
    waker.notify()
    task = await asyncio.wait_for(waiting, 2)
    await stream.aclose()  # type: ignore[attr-defined]
    assert task is not None
    assert task.id == "new"
    assert time.monotonic() - began < 0.4


async def test_a_notify_before_the_wait_is_not_lost() -> None:
    waker = Waker()
    event = waker.subscribe()
    waker.notify()
    await asyncio.wait_for(event.wait(), 1)
    waker.unsubscribe(event)
    event.clear()
    waker.notify()
    assert not event.is_set(), "an unsubscribed poller is no longer woken"


async def test_beat_every_beats_then_says_farewell() -> None:
    beats: list[float] = []
    farewells: list[bool] = []

    async def beat() -> None:
        beats.append(time.monotonic())

    async def farewell() -> None:
        farewells.append(True)

    stream = beat_every(context(keep_alive=0.02), beat, farewell)
    for _ in range(3):
        await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert len(beats) == 3
    assert beats[2] - beats[0] >= 0.035, "beats are keep_alive apart"
    assert farewells == [True]


async def test_beat_every_counts_keep_alive_from_the_start_of_a_beat() -> None:
    # The others judge a worker by the stamp its beat writes first: a beat whose round trips take
    # a while is followed keep_alive after it began, not keep_alive after they ended (stamps
    # that far apart were past stale_after under load, and another daemon swept the worker).
    waits: list[float] = []

    class Recorded(Contact):
        async def sleep(self, seconds: float) -> None:
            waits.append(seconds)

    contact = Recorded()

    async def beat() -> None:
        await asyncio.sleep(0.3)  # its round trips

    stream = beat_every(context(keep_alive=1.0), beat, None, contact)
    for _ in range(3):
        await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert len(waits) == 2
    assert all(0.25 <= wait <= 0.7 for wait in waits), f"waits {waits}: keep_alive is counted from the beat's start"


class SlowSource(Source):
    """A `Source` whose claim takes a while (a round trip), so a stop can land in the middle."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.claiming = asyncio.Event()

    async def fetch(self, limit: int) -> list[Task[bytes]]:
        self.claiming.set()
        await asyncio.sleep(0.05)
        return await super().fetch(limit)


async def test_a_claim_cancelled_mid_flight_is_released_not_stranded() -> None:
    source = SlowSource(3)
    stream = poll_batches(context(free=2), source.fetch, source.release)
    poller = asyncio.ensure_future(anext(stream))
    await source.claiming.wait()
    poller.cancel()  # a stopping worker cancels its poller while the store is claiming
    done, _ = await asyncio.wait({poller}, timeout=2)
    assert done, "the poller ends once the claim it waited for is over"
    assert poller.cancelled(), "the cancellation reaches the poller"
    assert source.released == ["t0", "t1"], "what the claim took goes back to the queue"
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_claim_that_fails_while_the_poller_is_cancelled_releases_nothing() -> None:
    class Failing(SlowSource):
        async def fetch(self, limit: int) -> list[Task[bytes]]:
            self.claiming.set()
            await asyncio.sleep(0.05)
            raise ConnectionError("store went away")

    source = Failing(3)
    stream = poll_batches(context(free=2), source.fetch, source.release)
    poller = asyncio.ensure_future(anext(stream))
    await source.claiming.wait()
    poller.cancel()
    await asyncio.wait({poller}, timeout=2)
    assert poller.cancelled()
    assert source.released == []


async def test_a_failed_claim_raises_to_the_poller() -> None:
    class Failing(Source):
        async def fetch(self, limit: int) -> list[Task[bytes]]:
            await asyncio.sleep(0)
            raise ConnectionError("store went away")

    stream = poll_batches(context(), Failing(1).fetch, Source(0).release)
    with pytest.raises(ConnectionError, match="went away"):
        await anext(stream)


async def test_closing_the_decoded_poll_stream_hands_back_what_it_fetched_at_once() -> None:
    """`poll` (the seed's decoded stream) closes the `poll_compact` under it: the tasks it
    fetched and never handed out are pending again when `aclose()` returns, not at some later
    garbage collection."""
    from apalis_cli.codec import JsonCodec
    from apalis_cli.memory import MemoryStore
    from apalis_cli.task import Status

    queue = MemoryStore().backend("q", codec=JsonCodec())
    for n in range(3):
        await queue.push({"n": n})
    stream = queue.poll(context(free=3))
    first = await anext(stream)
    assert first is not None
    assert first.args == {"n": 0}
    await stream.aclose()  # type: ignore[attr-defined]
    counts = (await queue.stats()).counts
    assert (counts[Status.RUNNING], counts[Status.PENDING]) == (1, 2)
