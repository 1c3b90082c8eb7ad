"""MySQL/MariaDB hand-over: a push of one task due now claims it for a worker listed idle (in
another process here: a store of its own), which starts it after a read of its hands (`handing`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncmy
import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_mysql import MysqlStore, handing
from apalis_mysql import connection as mysql_connection
from apalis_mysql.handing import SPAN

from ..acceptance.chaos_servers import PrivateServer, free_port, mariadb_database, private_mariadb
from .conftest import make_mysql_store
from .running import run_until
from .test_handed_to_killed import killed_while_idle


@contextlib.asynccontextmanager
async def _worker_and_pusher(mysql_url: str) -> AsyncIterator[tuple[MysqlStore, MysqlStore]]:
    """Two open stores on the server, as two processes would have: a worker's and a pusher's."""
    worker_store, pusher = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    await worker_store.open()
    await pusher.open()
    try:
        yield worker_store, pusher
    finally:
        await worker_store.close()
        await pusher.close()


async def _next_task(stream: AsyncIterator[Task[bytes] | None]) -> Task[bytes]:
    while True:
        task = await anext(stream)
        if task is not None:
            return task


async def _idle_worker(store: MysqlStore, worker_id: str) -> AsyncIterator[Task[bytes] | None]:
    """A poll stream whose first claim found nothing: its worker is listed idle."""
    ctx = WorkerContext(id=worker_id, name=worker_id, queue="q", free_slots=lambda: 5)
    stream = store.backend("q", codec=JsonCodec()).poll_compact(ctx)
    assert await anext(stream) is None
    return stream


async def test_a_lone_push_is_claimed_for_an_idle_worker_of_another_process(mysql_url: str) -> None:
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        pushed = pusher.backend("q", codec=JsonCodec())
        task_id = await pushed.push({"n": 1})
        stored = await pushed.get(task_id)
        assert stored is not None
        assert (stored.ctx.status, stored.ctx.lock_by, stored.ctx.attempts) == (Status.RUNNING, "w1", 1)
        got = await asyncio.wait_for(_next_task(stream), 10)
        assert (got.id, got.ctx.lock_by, got.ctx.attempts) == (task_id, "w1", 1)
        await worker_store.backend("q", codec=JsonCodec()).ack_batch([(got, Outcome.done())])
        done = await pushed.get(task_id)
        assert done is not None
        assert done.ctx.status is Status.DONE
        # Listed again while the task ran: the next push is handed too.
        second = await pushed.push({"n": 2})
        got = await asyncio.wait_for(_next_task(stream), 10)
        assert got.id == second
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_worker_that_stops_polling_gives_back_the_task_handed_to_it(mysql_url: str) -> None:
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        pushed = pusher.backend("q", codec=JsonCodec())
        task_id = await pushed.push({"n": 1})
        await stream.aclose()  # type: ignore[attr-defined]  # before it read the hand
        back = await pushed.get(task_id)
        assert back is not None
        assert (back.ctx.status, back.ctx.lock_by, back.ctx.attempts) == (Status.PENDING, None, 0)
        again = pushed.push({"n": 2})
        assert (await pushed.get(await again)).ctx.status is Status.PENDING  # type: ignore[union-attr]


async def test_a_task_not_due_or_in_a_paused_queue_is_not_handed(mysql_url: str) -> None:
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        pushed = pusher.backend("q", codec=JsonCodec())
        later = await pushed.push({"n": 1}, delay=60)
        await pushed.pause()
        paused = await pushed.push({"n": 2})
        for task_id in (later, paused):
            stored = await pushed.get(task_id)
            assert stored is not None
            assert (stored.ctx.status, stored.ctx.lock_by) == (Status.PENDING, None)
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_push_to_a_worker_whose_process_is_gone_is_stored_for_the_others(mysql_url: str) -> None:
    # The push ends the listener's sleep itself: a listener that is gone (the process stopped
    # without unlisting its worker) is no error; that worker is handed nothing more, and the task
    # is pending when the push returns, for any other worker to claim (as another connection sees
    # it), not left to the dead worker until the orphan sweep.
    worker_store, pusher = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    reader = make_mysql_store(mysql_url)
    await worker_store.open()
    await pusher.open()
    await reader.open()
    try:
        stream = await _idle_worker(worker_store, "w1")  # listed idle, its stream left open
        database = worker_store.database
        listener = database._listeners[database._queue_tag("q")].connection_id
        await worker_store.close()  # its listener's connection is gone, the listing stays
        # The server ends a killed connection's thread a moment after the KILL (listed 'Killed'
        # meanwhile, and a KILL QUERY of it succeeds): under load, more than a push takes.
        lookup = "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s"
        async with asyncio.timeout(10):
            while True:
                if await pusher.database.run(lambda conn: _fetch_one(conn, lookup, listener)) is None:
                    break
                await asyncio.sleep(0.01)
        pushed = pusher.backend("q", codec=JsonCodec())
        task_id = await pushed.push({"n": 1})
        stored = await reader.backend("q", codec=JsonCodec()).get(task_id)
        assert stored is not None
        assert (stored.ctx.status, stored.ctx.lock_by) == (Status.PENDING, None)
        again = await pushed.push({"n": 2})  # the connection is still fit for use
        stored = await reader.backend("q", codec=JsonCodec()).get(again)
        assert stored is not None
        assert (stored.ctx.status, stored.ctx.lock_by) == (Status.PENDING, None)  # w1 is unlisted
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await pusher.close()
        await reader.close()


async def test_a_task_handed_to_a_listener_found_gone_after_the_push_goes_back_to_the_others(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The push commits its hand-over and does not wait long for the KILL that wakes the worker:
    # one answered after the push returned that the listener is gone (its process stopped
    # without unlisting its worker) takes the task back, pending with its attempt not counted,
    # for any other worker; it stayed the dead worker's until the orphan sweep (`stale_after`).
    worker_store, pusher = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    await worker_store.open()
    await pusher.open()
    try:
        stream = await _idle_worker(worker_store, "w1")  # listed idle, its stream left open
        await worker_store.close()  # its listener's connection is gone, the listing stays
        held = HeldWakeUps(pusher, monkeypatch, "wake_listener")
        pushed = pusher.backend("q", codec=JsonCodec())
        async with asyncio.timeout(10):  # held until released: the push must not wait for it
            task_id = await pushed.push({"n": 1})
        stored = await pushed.get(task_id)
        assert stored is not None
        assert (stored.ctx.status, stored.ctx.lock_by) == (Status.RUNNING, "w1"), "handed and committed"
        held.release.set()  # the KILL goes out now, and finds the listener gone
        deadline = time.monotonic() + 10
        while (stored := await pushed.get(task_id)) is not None and stored.ctx.status is Status.RUNNING:
            assert time.monotonic() < deadline, "the task stayed with the worker whose listener is gone"
            await asyncio.sleep(0.05)
        assert stored is not None
        assert (stored.ctx.status, stored.ctx.lock_by, stored.ctx.attempts) == (Status.PENDING, None, 0)
        again = await pushed.get(await pushed.push({"n": 2}))
        assert again is not None
        assert (again.ctx.status, again.ctx.lock_by) == (Status.PENDING, None), "w1 is handed no more"
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await pusher.close()


async def test_a_worker_reads_no_hand_made_under_the_listener_it_lost(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hand made under a listener that is gone may be taken back by its push (the KILL says so)
    # and claimed by another worker: the worker, alive with a new listener, reads none of the
    # old listener's hands, and gets them once it is listed again under the new one (then the
    # push's take-back, by the old listener's name, leaves them to it): one run either way.
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        listener = worker_store.database._listeners[worker_store.database._queue_tag("q")]
        lost = listener.connection_id
        await pusher.database.run(lambda conn: conn.cursor().execute(f"KILL CONNECTION {lost}"))
        deadline = time.monotonic() + 10
        while listener.connection_id in (None, lost):
            assert time.monotonic() < deadline, "the listener did not connect again"
            await asyncio.sleep(0.05)
        held = HeldWakeUps(pusher, monkeypatch, "wake_listener")
        pushed = pusher.backend("q", codec=JsonCodec())
        task_id = await pushed.push({"n": 1})  # handed under the lost listener, its KILL held
        stored = await pushed.get(task_id)
        assert stored is not None
        assert stored.ctx.lock_by == "w1"
        assert await worker_store.database.claim("q", "w1", 5) == [], "read under a listener it lost"
        held.release.set()  # the KILL finds the old listener gone; w1 is listed under its new one
        deadline = time.monotonic() + 10
        while pusher.database._hands_waking:  # the KILL, then the take-back it asks for
            assert time.monotonic() < deadline, "the held wake-up did not end"
            await asyncio.sleep(0.05)
        got = await worker_store.database.claim("q", "w1", 5)
        assert [task.id for task in got] == [task_id]
        stored = await pushed.get(task_id)
        assert stored is not None
        assert (stored.ctx.status, stored.ctx.lock_by) == (Status.RUNNING, "w1")
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]


class HeldPush:
    """A push of one task (`hand_push`, without the COMMIT that ends its script) whose COMMIT
    waits for `release`: as the server runs it while the woken worker's read comes."""

    def __init__(self, pusher: MysqlStore, task_id: str) -> None:
        self.held, self.release = asyncio.Event(), asyncio.Event()
        script, commit = pusher.database.sql["hand_push"].rsplit(";", 1)
        assert commit.strip() == "COMMIT"
        self._script = script
        self._params = {
            "id": task_id,
            "queue": "q",
            "payload": b'{"n": 1}',
            "max_attempts": 1,
            "run_at": time.time(),
            "priority": 0,
            "meta": None,
            "waited": 0,
            "own": (0,),
            "span": SPAN,
        }
        self.done = asyncio.ensure_future(pusher.database.run(self._push))

    async def _push(self, conn: Any) -> None:
        cursor = conn.cursor()
        await cursor.execute(self._script, self._params)
        wake = None
        while True:
            if cursor.description:
                ((*_, wake),) = await cursor.fetchall()
            if not await cursor.nextset():
                break
        assert wake == 1, "the push committed: it had no listener to wake"
        self.held.set()
        await self.release.wait()
        await cursor.execute("COMMIT")


async def test_a_woken_worker_reads_the_task_handed_to_it_while_the_push_commits(mysql_url: str) -> None:
    # A push ends the idle worker's sleep while its COMMIT runs (so the commit's redo-log flush is
    # not on the task's way): the worker's read of its hands may reach the server before that
    # COMMIT has run. It waits for it and finds the task, rather than coming back empty.
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        push = HeldPush(pusher, "t1")
        await push.held.wait()
        reading = asyncio.ensure_future(worker_store.database.claim("q", "w1", 5))
        await asyncio.sleep(0.5)  # the read reaches the server before the push commits
        push.release.set()
        await push.done
        assert [task.id for task in await reading] == ["t1"]
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]


async def test_a_worker_fed_by_hands_alone_stays_listed(mysql_url: str) -> None:
    # One task at a time, each run and acknowledged before the next push: the worker never
    # makes a claim of its own, yet every push hands its task over (its listing had slots for
    # five hands; its acknowledgements list it again as their runs give the slots back).
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")  # five slots
        pushed = pusher.backend("q", codec=JsonCodec())
        worker_queue = worker_store.backend("q", codec=JsonCodec())
        for n in range(12):
            task_id = await pushed.push({"n": n})
            stored = await pushed.get(task_id)
            assert stored is not None
            assert (n, stored.ctx.lock_by) == (n, "w1"), "handed at its push"
            got = await asyncio.wait_for(_next_task(stream), 10)
            assert got.id == task_id
            await worker_queue.ack_batch([(got, Outcome.done())])
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_push_that_finds_the_listing_held_does_not_stop_the_next_from_handing(mysql_url: str) -> None:
    # A push passes by a listing another transaction holds (the worker reading its hands, say)
    # and stores its task plainly; the next push, once the listing is free, hands again (a push
    # that finds no listing at all makes the next ones plain for a while).
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        pushed = pusher.backend("q", codec=JsonCodec())
        held, release = asyncio.Event(), asyncio.Event()

        async def hold_the_listing(conn: Any) -> None:
            cursor = conn.cursor()
            await cursor.execute("START TRANSACTION")
            await cursor.execute(f"SELECT 1 FROM {worker_store.config.table_prefix}idle FOR UPDATE")
            await cursor.fetchall()
            held.set()
            await release.wait()
            await cursor.execute("ROLLBACK")

        holding = asyncio.ensure_future(worker_store.database.run(hold_the_listing))
        await held.wait()
        passed = await pushed.get(await pushed.push({"n": 1}))
        assert passed is not None
        assert passed.ctx.lock_by is None
        release.set()
        await holding
        handed = await pushed.get(await pushed.push({"n": 2}))
        assert handed is not None
        assert handed.ctx.lock_by == "w1"
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]


async def _fetch_one(conn: Any, query: str, *args: Any) -> Any:
    async with conn.cursor() as cursor:
        await cursor.execute(query, args)
        return await cursor.fetchone()


@pytest.fixture
def restartable() -> Iterator[tuple[PrivateServer, str]]:
    """A private MariaDB (this test restarts it) and the URL of a database on it."""
    with private_mariadb(free_port()) as server:
        yield server, mariadb_database(server, "handing")


def _at_fraction(fraction: float) -> float:
    """Block until the clock is `fraction` into a second (the next such moment); that time."""
    now = time.time()
    time.sleep((fraction - now % 1) % 1)
    return time.time()


async def test_a_listing_made_before_the_server_restarted_is_not_handed_to(
    restartable: tuple[PrivateServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A restarted server numbers its connections from 1 again: a listing made before (here of a
    # worker whose process stopped meanwhile) names a listener id that another connection may
    # hold now. A push must neither end that connection's statement (KILL QUERY) nor hand its
    # task to a worker it cannot wake: the task is stored for the others. The listing is of the
    # moment before the server started, halfway into a second, and the push's connection is made
    # early in a later one: a reading of the server's start as `NOW(6) - Uptime` was then half a
    # second before the start, and took the listing for one made after it.
    monkeypatch.setattr(handing, "SPAN", 60.0)  # the listing outlasts the restart
    monkeypatch.setattr(mysql_connection, "SPAN", 60.0)
    server, url = restartable
    worker_store = make_mysql_store(url)
    await worker_store.open()
    idle = f"{worker_store.database.config.table_prefix}idle"
    stream = await _idle_worker(worker_store, "w1")  # kept: closed, it would unlist the worker
    await worker_store.close()  # its process is gone, its listing stays
    server.stop()
    before = _at_fraction(0.5) - 0.001
    server.start()
    bystander = await asyncmy.connect(
        host="127.0.0.1", port=server.port, user="root", database="handing", autocommit=True
    )
    try:
        # The listing now names the bystander's connection, as a number given out again would,
        # and was made at the last moment before the start (as a quicker restart leaves it).
        (bystander_id,) = await _fetch_one(bystander, "SELECT CONNECTION_ID()")
        until = before + handing.SPAN
        await _fetch_one(
            bystander, f"UPDATE {idle} SET listener = %s, until = %s WHERE worker_id = 'w1'", bystander_id, until
        )
        assert await _fetch_one(bystander, "SELECT ROW_COUNT()") == (1,), "the worker is not listed"
        sleeping = asyncio.ensure_future(_fetch_one(bystander, "SELECT SLEEP(2)"))
        _at_fraction(0.0)
        pusher = make_mysql_store(url)
        await pusher.open()
        try:
            pushed = pusher.backend("q", codec=JsonCodec())
            task_id = await pushed.push({"n": 1})
            stored = await pushed.get(task_id)
            assert stored is not None
            assert (stored.ctx.status, stored.ctx.lock_by) == (Status.PENDING, None), "handed by a stale listing"
            assert await sleeping == (0,), "the push ended an unrelated connection's statement"
        finally:
            await pusher.close()
    finally:
        bystander.close()
        del stream


async def _listed_again(worker_store: MysqlStore, pusher: MysqlStore, stream: AsyncIterator[Any], since: float) -> None:
    """Poll until the worker's listing was written since `since` (this machine's clock, which
    the server's is), under its queue listener's present connection id; 10 s at most."""
    idle = f"{pusher.database.config.table_prefix}idle"
    listener = worker_store.database._listeners[worker_store.database._queue_tag("q")]
    deadline = time.monotonic() + 10
    seen: list[Any] = []
    while True:
        assert await anext(stream) is None
        row = await pusher.database.run(
            lambda conn: _fetch_one(conn, f"SELECT listener, until - {handing.SPAN} FROM {idle}")
        )
        seen.append((row, listener.connection_id))
        if row is not None and row[0] == listener.connection_id and row[1] >= since:
            return
        assert time.monotonic() < deadline, f"the worker was not listed again with its new listener: {seen[-3:]}"
        await asyncio.sleep(0.05)


async def _handed_to_w1(pusher: MysqlStore, stream: AsyncIterator[Task[bytes] | None]) -> None:
    pushed = pusher.backend("q", codec=JsonCodec())
    task_id = await pushed.push({"n": 1})
    stored = await pushed.get(task_id)
    assert stored is not None
    assert (stored.ctx.status, stored.ctx.lock_by) == (Status.RUNNING, "w1")  # handed
    assert (await asyncio.wait_for(_next_task(stream), 10)).id == task_id


async def test_a_worker_is_listed_again_with_its_listener_after_a_server_restart(
    restartable: tuple[PrivateServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a restart its listener sleeps on a new connection: the worker's next empty claim lists
    # it again under that one (not only once half of its listing's span is gone), and pushes are
    # handed to it again. (The restarted server numbers connections from 1 again: the listener's
    # new id may be one this process's listeners had before, the control listener's say.)
    monkeypatch.setattr(handing, "SPAN", 60.0)  # a listing by time alone would wait 30 s
    monkeypatch.setattr(mysql_connection, "SPAN", 60.0)
    server, url = restartable
    async with _worker_and_pusher(url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        server.restart(down_for=0.1)
        restarted = time.time()
        # The loop stays blocked a second more: its listener connects again, and lists, after the
        # end of the second the server started in (each connection's reading of its start: Uptime
        # counts whole seconds), which a listing must be made after to be handed to.
        time.sleep(1.1)  # noqa: ASYNC251 (blocking on purpose)
        await _listed_again(worker_store, pusher, stream, restarted)
        await _handed_to_w1(pusher, stream)
        await stream.aclose()  # type: ignore[attr-defined]


async def _connect_until(port: int, last: int) -> None:
    """Connect to the server (and leave) until it has given out the connection id `last`."""
    while True:
        conn = await asyncmy.connect(host="127.0.0.1", port=port, user="root")
        try:
            (given,) = await _fetch_one(conn, "SELECT CONNECTION_ID()")
        finally:
            conn.close()
        assert given <= last, f"the server is past connection id {last} already"
        if given == last:
            return


async def test_a_worker_whose_listener_has_its_old_id_after_a_server_restart_is_listed_again(
    restartable: tuple[PrivateServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The restarted server gives the queue's listener the very id it had before the restart. Its
    # worker's listing, made before, is passed by (`@apalis_boot`), so the worker must list itself
    # again all the same: it did only once half of its listing's span was gone, and pushes until
    # then were not handed over (each a plain insert, a wake-up and a claim of its own).
    monkeypatch.setattr(handing, "SPAN", 60.0)  # a listing by time alone would wait 30 s
    monkeypatch.setattr(mysql_connection, "SPAN", 60.0)
    server, url = restartable
    await _connect_until(server.port, 30)  # the listeners' ids, well past those a start gives out
    async with _worker_and_pusher(url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        database = worker_store.database
        queue_listener = database._listeners[database._queue_tag("q")]
        control_listener = database._listeners[database._control_tag]
        old_id = queue_listener.connection_id
        assert old_id is not None
        # Once the server is back, the queue's listener connects first, when the server's next id
        # is its old one; the control listener after it.
        gate, queue_back = asyncio.Event(), asyncio.Event()
        connect_queue, connect_control = queue_listener._connect, control_listener._connect

        async def queue_connect() -> Any:
            await gate.wait()
            conn = await connect_queue()
            queue_back.set()
            return conn

        async def control_connect() -> Any:
            await queue_back.wait()
            return await connect_control()

        monkeypatch.setattr(queue_listener, "_connect", queue_connect)
        monkeypatch.setattr(control_listener, "_connect", control_connect)
        server.restart(down_for=0.1)
        restarted = time.time()
        await asyncio.sleep(1.1)  # past the second the readings of the server's start may be late
        await _connect_until(server.port, old_id - 1)
        gate.set()
        await asyncio.wait_for(queue_back.wait(), 10)
        await _listed_again(worker_store, pusher, stream, restarted)
        assert queue_listener.connection_id == old_id, "the listener was not given its old id again"
        await _handed_to_w1(pusher, stream)
        await stream.aclose()  # type: ignore[attr-defined]


class HeldWakeUps:
    """Stand-ins for a store's wake-ups that the server holds (a KILL QUERY of a listener not
    asleep yet: up to 2-4 s) until `release`, then sends for real; `sent` counts those begun
    (`begun`: one, `again`: two or more)."""

    def __init__(self, store: MysqlStore, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.release, self.begun, self.again = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.sent = 0
        real = getattr(store.database, name)

        async def held(*args: Any) -> None:
            self.sent += 1
            (self.again if self.begun.is_set() else self.begun).set()
            async with asyncio.timeout(30):
                await self.release.wait()
            await real(*args)

        monkeypatch.setattr(store.database, name, held)


async def test_a_push_does_not_wait_for_the_wake_up_of_other_processes(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A push with no idle worker to hand to wakes the queue's listeners in other processes: a
    # KILL QUERY of each, which the server may hold for seconds. The push returned only then.
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        worker_store.database.listen("q")
        await worker_store.database.listening()
        await asyncio.sleep(0.2)  # the listener's own first wake-up, on its start, is over
        held = HeldWakeUps(pusher, monkeypatch, "signal")
        pushed = pusher.backend("q", codec=JsonCodec())
        async with asyncio.timeout(10):  # held until released: the push must not wait for it
            first = await pushed.push({"n": 1}, idempotency_key="1")  # a key: never handed
            await held.begun.wait()  # the wake-up is on its way
            second = await pushed.push({"n": 2}, idempotency_key="2")
        assert held.sent == 1, "one wake-up at a time"
        woken = worker_store.database.waker("q").subscribe()
        woken.clear()  # the listener's first wake-up, at its start
        held.release.set()
        await asyncio.wait_for(woken.wait(), 10)  # the held wake-up ended the worker's sleep
        await asyncio.wait_for(held.again.wait(), 10)  # and one more went out after it, for the second push
        for task_id in (first, second):
            stored = await pushed.get(task_id)
            assert stored is not None
            assert stored.ctx.status is Status.PENDING


async def test_a_push_that_hands_its_task_over_does_not_wait_for_the_workers_wake_up(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A push that hands its task to an idle worker ends that worker's listener's sleep itself:
    # a KILL QUERY the server may hold for seconds. It ran inside the push's transaction, before
    # its COMMIT, so the push returned (and its listing stayed locked) only then.
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        held = HeldWakeUps(pusher, monkeypatch, "wake_listener")
        pushed = pusher.backend("q", codec=JsonCodec())
        async with asyncio.timeout(10):  # held until released: the push must not wait for it
            task_id = await pushed.push({"n": 1})
        assert held.begun.is_set(), "the push did not wake its worker's listener"
        stored = await pushed.get(task_id)
        assert stored is not None
        assert (stored.ctx.status, stored.ctx.lock_by) == (Status.RUNNING, "w1"), "handed and committed"
        held.release.set()
        got = await asyncio.wait_for(_next_task(stream), 10)
        assert got.id == task_id
        await stream.aclose()  # type: ignore[attr-defined]


async def test_an_acknowledgement_does_not_wait_for_the_wake_up_it_sends(
    mysql_store: MysqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run retried at once makes its task ready again: its acknowledgement wakes the queue's
    # listeners in other processes, by KILL QUERYs the server may hold for seconds, and the
    # worker's next acknowledgements (and the tasks claimed ahead in this one) waited for them.
    queue = mysql_store.backend("q", codec=JsonCodec())
    task_id = await queue.push({"n": 1}, idempotency_key="1")  # a key: never handed
    stream = queue.poll_compact(WorkerContext(id="w1", name="w1", queue="q", free_slots=lambda: 1))
    task = await _next_task(stream)
    held = HeldWakeUps(mysql_store, monkeypatch, "signal")
    async with asyncio.timeout(10):  # held until released: the acknowledgement must not wait for it
        await queue.ack_batch([(task, Outcome.retry("again", time.time()))])
        await held.begun.wait()  # its wake-up is on its way
    stored = await queue.get(task_id)
    assert stored is not None
    assert stored.ctx.last_error == "again"  # the retry is stored (and the task ready again)
    held.release.set()
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_task_handed_to_a_worker_killed_while_idle_starts_on_another_at_once(mysql_store: MysqlStore) -> None:
    # A worker process killed with SIGKILL while listed idle: its listener stays asleep on the
    # server for up to 5 s (MariaDB looks at a sleeping connection's client every 5 s), so the
    # push's KILL QUERY of it succeeded and the task stayed in the dead worker's name until the
    # orphan sweep of a worker that runs (stale_after: 30 s at the default keep_alive of 10 s).
    # Now the push sees the listener's connection end after its KILL and takes the task back.
    queue = "killed-idle"
    backend: Any = mysql_store.backend(queue, codec=JsonCodec(), max_attempts=1)
    await killed_while_idle(mysql_store, queue)
    pushed_at = time.monotonic()
    task_id = await backend.push({"x": 1})
    started: list[tuple[str, int, float]] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.append((task.id, task.ctx.attempts, time.monotonic() - pushed_at))

    other = Worker(name="other", backend=backend, handler=handler)  # keep_alive 10 s: its sweep waits 30 s
    await run_until(other, lambda: bool(started), within=15)
    assert [(task, attempts) for task, attempts, _ in started] == [(task_id, 1)]  # its first attempt
    assert started[0][2] < 5, f"started {started[0][2]:.1f} s after its push"


async def test_a_worker_listed_right_after_a_push_found_none_is_handed_the_next(mysql_url: str) -> None:
    # A push that found no idle worker made this process's pushes plain inserts for 50 ms: a
    # worker that listed itself meanwhile (its claim, woken by the first of them, came back
    # short) was handed nothing, and in a stream of 200/s ten tasks took the slower way (a
    # commit, a signal and a claim's commit in a row). The first such while is 5 ms now. Five
    # queues: on a loaded machine one worker's claim may take the old 50 ms by itself.
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        for queue in ("q0", "q1", "q2", "q3", "q4"):
            pushed = pusher.backend(queue, codec=JsonCodec())
            stream = worker_store.backend(queue, codec=JsonCodec()).poll_compact(
                WorkerContext(id=f"w-{queue}", name="w", queue=queue, free_slots=lambda: 5)
            )
            first = await pushed.push({"n": 1})  # no worker listed: stored pending
            found = time.monotonic()
            assert (await _next_task(stream)).id == first  # its claim came back short: listed, 4 free
            await asyncio.sleep(max(0.0, found + 0.01 - time.monotonic()))
            stored = await pushed.get(await pushed.push({"n": 2}))
            assert stored is not None
            assert (stored.ctx.status, stored.ctx.lock_by) == (Status.RUNNING, f"w-{queue}"), "not handed"
            await stream.aclose()  # type: ignore[attr-defined]
