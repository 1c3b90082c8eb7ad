"""`Contact` and the SQL stores' retry helper: what tells an orphan sweep that the store has been
reachable, and its own process awake, long enough to trust the heartbeats it reads (the chaos test
tests/acceptance/test_chaos_outage.py proves it on real servers restarted mid-run)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import apalis_cli.contact as contact_module
import apalis_cli.retrying as retrying_module
import pytest
from apalis_cli.contact import RETRY_WAIT_CAP, Contact, stall_gap
from apalis_cli.errors import ConnectionLost
from apalis_cli.retrying import retrying


class Down(Exception):
    """The store could not be reached."""


class Deadlock(Exception):
    """The store answered: roll back and try again."""


def transient(exc: BaseException) -> bool:
    return isinstance(exc, Down | Deadlock)


def answered(exc: BaseException) -> bool:
    return isinstance(exc, Deadlock)


async def test_a_new_contact_is_steady_only_after_the_time_asked() -> None:
    contact = Contact()
    assert not contact.steady_for(0.2), "a process that just connected has not seen anyone beat yet"
    await asyncio.sleep(0.25)
    assert contact.steady_for(0.2)


def test_a_loss_starts_the_steady_time_over_once_the_slowest_retry_has_come_round(clock: Clock) -> None:
    contact = Contact()
    clock.now += 0.15
    contact.lost()
    assert not contact.steady_for(0.1)
    clock.now += 0.15
    assert not contact.steady_for(0.1), "lost until a try gets through"
    contact.reached()
    clock.now += 0.15
    # Another process that lost the store too may be in a retry's wait of up to RETRY_WAIT_CAP:
    # it beats again only after that, and must then have stale_after before it is judged.
    assert not contact.steady_for(0.1), "other processes may still be waiting to try again"
    clock.now += RETRY_WAIT_CAP - 0.15 + 0.1
    assert contact.steady_for(0.1)
    contact.reached()  # a try that got through while nothing was lost changes nothing
    assert contact.steady_for(0.1)


async def test_a_sleep_ends_when_the_store_is_reached_again() -> None:
    contact = Contact()
    contact.lost()
    sleeper = asyncio.create_task(contact.sleep(30))
    await asyncio.sleep(0.01)
    assert not sleeper.done()
    contact.reached()
    async with asyncio.timeout(5):
        await sleeper


async def test_retrying_tells_the_contact_of_each_try() -> None:
    contact = Contact()
    tries: list[float] = []

    async def flaky() -> str:
        tries.append(time.monotonic())
        if len(tries) < 3:
            raise Down
        assert not contact.steady_for(0), "lost while the store did not answer"
        return "ok"

    assert await retrying(flaky, transient=transient, contact=contact) == "ok"
    assert not contact.steady_for(0), "the steady time starts RETRY_WAIT_CAP after the try that got through"


async def test_an_error_the_store_answered_is_not_a_loss_and_is_retried_at_once(clock: Clock) -> None:
    contact = Contact()
    clock.now += 0.05
    tries: list[float] = []

    async def busy() -> str:
        tries.append(time.monotonic())
        if len(tries) <= 5:
            raise Down  # the waits grow: 0.05, 0.1, 0.2, 0.4, 0.8 s (less jitter)
        if len(tries) <= 8:
            raise Deadlock
        return "ok"

    await retrying(busy, transient=transient, answered=answered, contact=contact)
    gaps = [later - earlier for earlier, later in itertools.pairwise(tries[5:])]
    assert max(gaps) < 0.4, f"a deadlock after an outage waited for the outage's backoff: {gaps}"
    assert not contact.steady_for(0.3), "the outage counted, the deadlocks did not end it"
    clock.now += RETRY_WAIT_CAP + 0.35
    assert contact.steady_for(0.3)


async def test_a_store_away_for_the_whole_budget_is_a_loss_of_contact() -> None:
    contact = Contact()
    with pytest.raises(ConnectionLost):
        await retrying(_always(Down), transient=transient, contact=contact, budget=0.01)
    assert not contact.steady_for(0)


async def test_a_retry_waiting_for_the_store_goes_once_another_operation_got_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retrying_module, "delays", lambda: itertools.repeat(30.0))  # long waits
    contact = Contact()
    store_up = False

    async def write() -> str:
        if not store_up:
            raise Down
        return "written"

    waiting = asyncio.create_task(retrying(write, transient=transient, contact=contact, budget=60))
    await asyncio.sleep(0.05)  # its first try failed: it now waits 30 s
    store_up = True
    assert await retrying(write, transient=transient, contact=contact) == "written"
    async with asyncio.timeout(5):
        assert await waiting == "written"


def _always(exc: type[Exception]) -> Callable[[], Awaitable[None]]:
    async def fail() -> None:
        raise exc

    return fail


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock()
    monkeypatch.setattr(contact_module, "time", SimpleNamespace(monotonic=made))
    return made


KEEP_ALIVE, STALE_AFTER = 0.2, 0.6  # stall_gap: 0.3


def beats(contact: Contact, clock: Clock, *workers: str, every: float = 0.25, count: int = 1) -> None:
    """`count` rounds in which each of `workers` begins a beat, `every` seconds apart."""
    for _ in range(count):
        clock.now += every
        for worker in workers:
            contact.beat(worker, KEEP_ALIVE, STALE_AFTER)


def test_a_worker_sweeps_once_it_has_beaten_for_stale_after(clock: Clock) -> None:
    contact = Contact()
    beats(contact, clock, "x", count=2)
    assert not contact.may_sweep("x", STALE_AFTER), "it has beaten for 0.25 s only"
    assert not contact.may_sweep("y", STALE_AFTER), "a worker that never beat here never sweeps"
    beats(contact, clock, "x", count=2)
    assert contact.may_sweep("x", STALE_AFTER)
    beats(contact, clock, "y")
    assert not contact.may_sweep("y", STALE_AFTER), "a worker that joins now waits its own stale_after"


def test_a_stall_of_the_process_holds_every_workers_sweep_for_stale_after(clock: Clock) -> None:
    contact = Contact()
    beats(contact, clock, "x", "y", count=4)
    assert contact.may_sweep("x", STALE_AFTER)
    clock.now += 1.0  # the event loop blocked: neither beats
    contact.beat("x", KEEP_ALIVE, STALE_AFTER)
    assert not contact.may_sweep("x", STALE_AFTER), "the first to beat after a stall must not sweep"
    contact.beat("y", KEEP_ALIVE, STALE_AFTER)
    beats(contact, clock, "x", "y", count=2)
    assert not contact.may_sweep("x", STALE_AFTER)
    assert not contact.may_sweep("y", STALE_AFTER)
    beats(contact, clock, "x", "y")
    assert contact.may_sweep("x", STALE_AFTER), "stale_after of steady beats since the stall"
    assert contact.may_sweep("y", STALE_AFTER)


def test_a_late_beat_within_the_gap_is_no_stall(clock: Clock) -> None:
    contact = Contact()
    beats(contact, clock, "x", count=4)
    beats(contact, clock, "x", every=0.29)  # a round trip of 0.09 s: under stall_gap (0.3)
    assert contact.may_sweep("x", STALE_AFTER)


def test_a_stall_during_a_beat_holds_its_sweep(clock: Clock) -> None:
    # A store whose server judges staleness when the sweep runs (PostgreSQL's now()) asks after
    # its round trips: a stall since the beat began has not been noted by any beat yet.
    contact = Contact()
    beats(contact, clock, "x", count=4)
    clock.now += 0.5
    assert not contact.may_sweep("x", STALE_AFTER)


def test_a_worker_whose_heartbeat_ended_starts_anew(clock: Clock) -> None:
    contact = Contact()
    beats(contact, clock, "x", count=4)
    contact.forget("x")
    assert not contact.may_sweep("x", STALE_AFTER)
    beats(contact, clock, "x")
    assert not contact.may_sweep("x", STALE_AFTER), "a new heartbeat waits stale_after again"


def test_the_stall_gap_lies_between_a_beat_and_a_neighbour_judged_stale() -> None:
    assert stall_gap(0.2, 0.6) == pytest.approx(0.3)
    assert stall_gap(10, 30) == pytest.approx(15)
    assert stall_gap(1.0, 1.0) == pytest.approx(1.5), "never less than one and a half beats"
