"""The one backoff of every store, the worker, the daemon and cron: its waits, its time budget,
and the line a caller reads when a store stayed away past it."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable

import pytest
from apalis_cli.errors import ConnectionLost
from apalis_cli.retrying import RECONNECT_BUDGET, delays, keep_connected, retrying, tries_within, wait_after


def test_waits_double_up_to_the_cap() -> None:
    assert list(itertools.islice(delays(0.1, 1.0, jitter=False), 6)) == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_keeps_each_wait_in_the_upper_half_and_under_the_cap() -> None:
    for _ in range(200):
        waits = list(itertools.islice(delays(0.1, 1.0), 8))
        bounds = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
        assert all(b / 2 <= w < b for w, b in zip(waits, bounds, strict=True))
        assert waits[:4] == sorted(waits[:4]), "waits still grow while they double"
    assert len({next(delays(1.0, 1.0)) for _ in range(20)}) > 1, "not every wait is the same"


def test_a_caller_that_counts_tries_gets_the_same_waits_and_as_many_as_the_budget_holds() -> None:
    # redis-py's cluster client is told a number of tries and a wait per failure, not a time.
    assert [wait_after(n, jitter=False) for n in range(1, 9)] == list(itertools.islice(delays(jitter=False), 8))
    assert all(0.5 <= wait_after(n) / wait_after(n, jitter=False) < 1 for n in range(1, 30))
    for budget in (0.01, 1.0, 2.5, RECONNECT_BUDGET, 120.0):
        tries = tries_within(budget)
        longest = [wait_after(n, jitter=False) for n in range(1, tries + 2)]
        assert sum(longest[:tries]) <= budget < sum(longest), budget


def refused(calls: list[float]) -> ConnectionError:
    calls.append(time.monotonic())
    return ConnectionError("connection refused")


async def test_a_store_that_stays_away_is_given_up_after_the_budget_in_one_line() -> None:
    calls: list[float] = []

    async def connect() -> None:
        raise refused(calls)

    started = time.monotonic()
    with pytest.raises(ConnectionLost) as lost:
        await retrying(connect, transient=lambda e: isinstance(e, ConnectionError), budget=0.5, what="postgres at db")
    took = time.monotonic() - started
    assert re.fullmatch(
        r"postgres at db: ConnectionError: connection refused \(failing for 0\.\d s, gave up\)", str(lost.value)
    )
    assert isinstance(lost.value.__cause__, ConnectionError)
    assert len(calls) > 3, "it tried again meanwhile"
    assert took < 5, "and gave up once its budget was spent"


async def test_an_error_that_is_not_transient_is_raised_at_once() -> None:
    calls: list[float] = []

    async def insert() -> None:
        calls.append(time.monotonic())
        raise ValueError("duplicate key")

    with pytest.raises(ValueError, match="duplicate key"):
        await retrying(insert, transient=lambda e: isinstance(e, ConnectionError))
    assert len(calls) == 1


async def test_recover_runs_between_tries_and_the_operation_succeeds_once_the_store_is_back() -> None:
    calls: list[float] = []
    recovered: list[str] = []

    async def query() -> str:
        if len(calls) < 3:
            raise refused(calls)
        return "row"

    async def reconnect(error: BaseException) -> None:
        recovered.append(str(error))
        if len(recovered) == 1:
            raise ConnectionError("still down")  # a failed reconnect costs that try, nothing more

    assert await retrying(query, transient=lambda e: isinstance(e, ConnectionError), recover=reconnect) == "row"
    assert recovered == ["connection refused"] * 3
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(gap >= 0.02 for gap in gaps), "it waits between tries"


async def test_a_recover_that_fails_for_good_is_raised() -> None:
    async def query() -> None:
        raise ConnectionError("connection reset")

    async def reconnect(error: BaseException) -> None:
        raise PermissionError("password authentication failed")

    with pytest.raises(PermissionError):
        await retrying(query, transient=lambda e: isinstance(e, ConnectionError), recover=reconnect)


async def test_a_retry_waiting_for_the_store_can_be_cancelled() -> None:
    async def query() -> None:
        raise ConnectionError("connection refused")

    waiting = asyncio.create_task(retrying(query, transient=lambda e: True))
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_connection_kept_is_made_again_and_backs_off_from_the_start_once_steady(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    waited: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("apalis_cli.retrying.asyncio.sleep", sleep)
    sessions: list[str] = []
    done = asyncio.Event()

    async def session(steady: Callable[[], None]) -> None:
        sessions.append("try")
        if len(sessions) in (1, 2, 3):
            raise ConnectionError("refused by postgresql://u:s3cret@db/app")  # never connected
        if len(sessions) == 4:
            steady()  # connected and listening, then lost
            raise ConnectionError("lost")
        done.set()
        await asyncio.Event().wait()  # listening for good

    kept = asyncio.create_task(keep_connected(session, what="LISTEN connection"))
    await asyncio.wait_for(done.wait(), 5)
    kept.cancel()
    with pytest.raises(asyncio.CancelledError):
        await kept
    assert len(sessions) == 5
    assert waited[0] < waited[1] < waited[2], "the waits grow while it cannot connect"
    assert waited[3] < waited[2], "after a steady session the next outage backs off from the start"
    assert "LISTEN connection: ConnectionError, connecting again in" in caplog.text
    assert "s3cret" not in caplog.text
