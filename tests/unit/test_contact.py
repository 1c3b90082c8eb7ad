"""`Contact` and the SQL stores' retry helper: what tells an orphan sweep that the store has been
reachable long enough to trust the heartbeats it reads (the chaos test
tests/acceptance/test_chaos_outage.py proves it on real servers restarted mid-run)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import apalis_cli.retrying as retrying_module
import pytest
from apalis_cli.contact import Contact
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


async def test_a_loss_starts_the_steady_time_over_once_the_store_is_reached() -> None:
    contact = Contact()
    await asyncio.sleep(0.15)
    contact.lost()
    assert not contact.steady_for(0.1)
    await asyncio.sleep(0.15)
    assert not contact.steady_for(0.1), "lost until a try gets through"
    contact.reached()
    assert not contact.steady_for(0.1)
    await asyncio.sleep(0.15)
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
    assert contact.steady_for(0)
    assert not contact.steady_for(0.5), "the steady time started at the try that got through"


async def test_an_error_the_store_answered_is_not_a_loss_and_is_retried_at_once() -> None:
    contact = Contact()
    await asyncio.sleep(0.05)
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
    await asyncio.sleep(0.35)
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
