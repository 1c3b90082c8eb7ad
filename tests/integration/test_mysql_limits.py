"""MySQL/MariaDB global limits across processes (a store of its own stands for each): the
daemons idle since their last claim found every key at its limit hear of the slots another
daemon's claim or last runs left, through the queue's listeners (`listener`), not at their next
poll. The cases every store with global limits shares are in tests/conformance/test_limits.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.fleet import FleetLimits
from apalis_cli.polling import woken
from apalis_cli.service import Outcome
from apalis_cli.sink import new_task
from apalis_mysql import MysqlStore, turns
from apalis_mysql.locked import LockedSession

from ..conformance.stores.mysql import admin_execute
from .conftest import make_mysql_store, mysql_schema_of_version

ONE_PER_KEY = FleetLimits(key="account", concurrency=1, keyed_concurrency=True)
HEARD_WITHIN = 20.0
"""Below the listener's sleep (30 s): only a signal wakes it before then."""


def context(worker_id: str, slots: int, limits: FleetLimits = ONE_PER_KEY, **settings: Any) -> WorkerContext:
    return WorkerContext(id=worker_id, name=worker_id, queue="q", free_slots=lambda: slots, limits=limits, **settings)


async def running_by_key(url: str, prefix: str = "apalis_") -> dict[str, int]:
    rows = await admin_execute(
        url, f"SELECT limit_key, COUNT(*) FROM {prefix}tasks WHERE status = 'running' GROUP BY limit_key"
    )
    return {str(key): int(n) for key, n in rows}


async def swept_until_numbered(store: MysqlStore, url: str, task_id: str) -> None:
    """A worker of `store` beats (its beats sweep the queue) until `task_id` has a number."""
    beats = store.backend("q", codec=JsonCodec()).heartbeat(
        WorkerContext(id="sweeper", name="sweeper", queue="q", stale_after=0.5, keep_alive=0.1)
    )
    for _ in range(10):
        for _ in range(10):  # back to back: a beat late by more than its period does not sweep
            await anext(beats)
        rows = await admin_execute(url, "SELECT limit_seq FROM apalis_tasks WHERE id = %s", (task_id,))
        if rows[0][0] is not None:
            return
    raise AssertionError(f"{task_id} not numbered after 100 beats")


async def _listening(store: MysqlStore) -> Any:
    """An event the queue's wake-ups in `store`'s process set, once its listener sleeps (the
    wake-up of its first sleep is past)."""
    store.database.listen("q")
    await store.database.listening()
    return store.database.waker("q").subscribe()


async def test_a_limited_claim_that_took_all_it_asked_for_wakes_the_other_daemons(mysql_url: str) -> None:
    claimer, idle = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    await claimer.open()
    await idle.open()
    try:
        for n in range(3):  # pushed by the idle daemon's process: the claimer looks its listeners up afresh
            await idle.backend("q", codec=JsonCodec()).push({"account": f"k{n}"}, limit_key=f"k{n}")
        heard = await _listening(idle)
        stream = claimer.backend("q", codec=JsonCodec()).poll_compact(context("w1", slots=2))
        try:
            assert await anext(stream) is not None  # took the two it asked for: k2 may be left
            assert await woken(heard, HEARD_WITHIN), "the other process was not told"
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await claimer.close()
        await idle.close()


async def test_a_stopped_daemons_last_run_frees_its_keys_slot_for_another_daemon(mysql_url: str) -> None:
    leaving, staying = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    await leaving.open()
    await staying.open()
    try:
        pusher = staying.backend("q", codec=JsonCodec())  # the leaving one looks its listeners up afresh
        first = await pusher.push({"account": "a", "n": 0}, limit_key="a")
        second = await pusher.push({"account": "a", "n": 1}, limit_key="a")
        q = leaving.backend("q", codec=JsonCodec())
        stream = q.poll_compact(context("w1", slots=2))
        running = await anext(stream)  # asked for two, got one: nobody told
        assert running is not None
        assert running.id == first
        other = staying.backend("q", codec=JsonCodec()).poll_compact(context("w2", slots=1, poll_interval=3600))
        assert await anext(other) is None  # the key is at its limit
        heard = await _listening(staying)
        await stream.aclose()  # type: ignore[attr-defined]  # the daemon stops polling, its run ends
        await q.ack_batch([(running, Outcome.done())])
        assert await woken(heard, HEARD_WITHIN), "the other daemon was not told of the freed slot"
        picked = await anext(other)
        await other.aclose()  # type: ignore[attr-defined]
        assert picked is not None
        assert picked.id == second
    finally:
        await leaving.close()
        await staying.close()


async def test_tasks_without_a_key_run_behind_a_keyed_backlog_deeper_than_one_scan(mysql_store: MysqlStore) -> None:
    """A limited claim finds the tasks pushed without a key however many keyed tasks come before
    them in the queue's order: each claim reads the next part of the ready tasks (1,000 at most),
    so those behind 2,500 tasks of a key at its limit are reached within a few claims. (Tasks
    without a key share the limit as one key of their own: one at a time here.)"""
    q = mysql_store.backend("q", codec=JsonCodec(), max_attempts=1)
    await q.push_bulk([{"account": "hot", "n": n} for n in range(2500)], limit_key="hot", priority=5)
    keyless = set(await q.push_bulk([{"n": n} for n in range(3)]))
    stream = q.poll_compact(context("w1", slots=4))
    got: list[Any] = []
    try:
        for _ in range(100):  # each turn of the stream is a claim, or an idle wait after one
            task = await anext(stream)
            if task is not None:
                got.append(task)
                if task.id in keyless:
                    await q.ack_batch([(task, Outcome.done())])
            if keyless <= {t.id for t in got}:
                break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert keyless <= {t.id for t in got}, "every task without a key ran"
    assert sum(t.id not in keyless for t in got) == 1, "one task of the key at its limit, no more"


def _tables(plan: Any) -> list[Any]:
    """The tables read in an ANALYZE FORMAT=JSON plan."""
    found = []
    if isinstance(plan, dict):
        if "table_name" in plan:
            found.append(plan)
        for value in plan.values():
            found += _tables(value)
    elif isinstance(plan, list):
        for value in plan:
            found += _tables(value)
    return found


async def _analyze(store: MysqlStore, name: str, params: dict[str, Any]) -> list[Any]:
    """The tables read by the named statement as the store sends it, on its own connection."""
    db = store.database

    async def analyze(conn: Any) -> Any:
        cursor = conn.cursor()
        await cursor.execute("ANALYZE FORMAT=JSON " + cursor.mogrify(db.sql[name], params))
        return json.loads((await cursor.fetchone())[0])

    return _tables(await db.run(analyze))


async def test_a_keyed_claims_walk_reads_the_keys_it_takes_not_every_key_waiting(mysql_store: MysqlStore) -> None:
    """A turn of a keyed claim steps through as many keys as it may take, however many keys have
    tasks waiting: its cost does not grow with the queue's keys. (Under the driver's default
    collation, utf8mb4_general_ci, against the tables' utf8mb4_bin, the server read every key
    with waiting tasks and sorted them to keep the first few.)"""
    q = mysql_store.backend("q", codec=JsonCodec(), max_attempts=1)
    await q.enqueue([new_task(b"{}", default_max_attempts=1, limit_key=f"k{n:05}") for n in range(1200)])
    params = {"queue": "q", "after": None, "upto": None, "count": 10, "walk": 12, "blocked": ("",), "now": 0.0}
    params |= {"ahead": None, "cap": None}  # no keyed rate, the keys at their concurrency named
    # A loose index scan, or a range scan of one entry a key here: the server picks one or the
    # other by the table's statistics at the time (InnoDB's, updated in the background).
    walks = [
        table
        for table in await _analyze(mysql_store, "limit_turn_first", params)
        if table.get("key") == "apalis_tasks_ready_keys"
    ]
    assert walks, "the keys are walked on tasks_ready_keys"
    assert all(walk["r_rows"] <= 13 for walk in walks), [walk["r_rows"] for walk in walks]


async def test_a_limited_claims_acknowledgement_tells_those_waiting_for_a_task_it_ended(
    mysql_store: MysqlStore,
) -> None:
    """The acknowledgement a limited claim carries (`ack_ahead`) says whether it ended a task
    someone waits for, so their processes are told (`notify_control`)."""
    q = mysql_store.backend("q", codec=JsonCodec(), max_attempts=1)
    db = mysql_store.database
    waited = await q.push({"account": "a"}, limit_key="a", waited=True)
    await q.push({"account": "b"}, limit_key="b")
    await q.push({"account": "c"}, limit_key="c")
    carried, told = [], []
    ack_ahead, notify_control = db.ack_ahead, db.notify_control

    def spy_ack_ahead(session: Any, plan: Any) -> list[Any]:
        carried.append(plan)
        return ack_ahead(session, plan)

    async def spy_notify_control() -> None:
        told.append(True)
        await notify_control()

    db.ack_ahead, db.notify_control = spy_ack_ahead, spy_notify_control  # type: ignore[method-assign]
    stream = q.poll_compact(context("w1", slots=2))
    try:
        first = await anext(stream)  # took the two it asked for: the worker has a backlog
        assert first is not None
        assert first.id == waited
        await q.ack_batch([(first, Outcome.done())])  # claims the slot it frees, carrying the ack
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert carried, "the acknowledgement rode on a limited claim"
    assert told, "the waiters of the task it ended were not told"


async def test_a_keyed_claims_first_turn_passes_over_a_key_at_its_limit_and_commits_in_its_round_trip(
    mysql_store: MysqlStore, monkeypatch: Any
) -> None:
    """A keyed claim sends its first turn in its first round trip, before it knows which keys
    are at their concurrency: the turn finds them itself, and where it took all the claim asks
    for the server claims them, commits and frees the lock in the same trip
    (`limit_claim_full`). A worker's first claim, with a key another worker runs at its limit
    first in its walk, takes the other keys' tasks and not that key's, in one round trip (it
    was two: lock, state and turn; then the claim's UPDATE, commit and unlock)."""
    q = mysql_store.backend("q", codec=JsonCodec(), max_attempts=1)
    for key in ("a", "b", "c", "d"):
        await q.push_bulk([{"account": key, "n": n} for n in range(2)], limit_key=key)
    holder = q.poll_compact(context("w0", slots=1))
    trips: list[int] = []
    send = LockedSession._send

    async def counted(session: LockedSession, last: list[str]) -> Any:
        trips.append(1)
        return await send(session, last)

    try:
        held = await anext(holder)
        assert held is not None
        assert json.loads(held.args)["account"] == "a"
        monkeypatch.setattr(LockedSession, "_send", counted)
        stream = q.poll_compact(context("w1", slots=3))  # filled by the keys: no keyless scan
        try:
            first = await anext(stream)
            claimed_in = len(trips)
            got = [first] + [await anext(stream) for _ in range(2)]
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await holder.aclose()  # type: ignore[attr-defined]
    assert sorted(json.loads(t.args)["account"] for t in got if t is not None) == ["b", "c", "d"]
    assert claimed_in == 1, f"{claimed_in} round trips"


async def test_a_keyed_claim_that_runs_out_of_keys_wraps_round_and_commits_in_its_second_round_trip(
    mysql_store: MysqlStore, monkeypatch: Any
) -> None:
    """A keyed claim whose first turn reaches the last key before it has all it asks for walks
    again from the first key up to where it began, in its second round trip, which also claims,
    commits and frees the lock where that turn had the rest (it was three trips: lock, state
    and turn; the second turn; the claim's UPDATE, commit and unlock)."""
    q = mysql_store.backend("q", codec=JsonCodec(), max_attempts=1)
    for key in ("a", "b", "c", "d"):
        await q.push_bulk([{"account": key, "n": n} for n in range(2)], limit_key=key)
    trips: list[int] = []
    send = LockedSession._send

    async def counted(session: LockedSession, last: list[str]) -> Any:
        trips.append(1)
        return await send(session, last)

    monkeypatch.delattr(turns, "scan_params")  # a worker that walks (its last scan came short)
    stream = q.poll_compact(context("w1", slots=3))
    try:
        first = [await anext(stream) for _ in range(3)]  # a, b and c: the walk stops after c
        assert sorted(json.loads(t.args)["account"] for t in first if t is not None) == ["a", "b", "c"]
        monkeypatch.setattr(LockedSession, "_send", counted)
        # Their acknowledgement claims the three slots it frees: d, then a and b again.
        await q.ack_batch([(t, Outcome.done()) for t in first if t is not None])
        claimed_in = len(trips)
        got = [await anext(stream) for _ in range(3)]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert [json.loads(t.args)["account"] for t in got if t is not None] == ["a", "b", "d"]
    assert claimed_in == 2, f"{claimed_in} round trips"


async def test_a_keyed_claim_that_did_not_get_the_lock_commits_nothing(mysql_store: MysqlStore) -> None:
    """A keyed claim's first round trip commits what its turn took only where it holds the
    queue's lock: one that waited for it in vain (another daemon held it) is rolled back and
    tried again, claiming each task once."""
    q = mysql_store.backend("q", codec=JsonCodec(), max_attempts=1)
    db = mysql_store.database
    for key in ("a", "b", "c"):
        await q.push({"account": key}, limit_key=key)
    db.sql["named_lock"] = db.sql["named_lock"].replace(", 10)", ", 1)")  # a wait of 1 s, not 10
    config = db.config
    scope = f"{config.database}:{config.table_prefix}:q:"
    name = "apalis-limits:" + hashlib.sha1(scope.encode()).hexdigest()
    held, freed = asyncio.Event(), asyncio.Event()

    async def hold(conn: Any) -> None:  # another daemon's claim, holding the lock for 1.5 s
        cursor = conn.cursor()
        await cursor.execute("SELECT GET_LOCK(%s, 0)", (name,))
        assert (await cursor.fetchone())[0] == 1
        held.set()
        await asyncio.sleep(1.5)
        await cursor.execute("SELECT RELEASE_LOCK(%s)", (name,))
        freed.set()

    holder = asyncio.create_task(db.run(hold))
    await held.wait()
    stream = q.poll_compact(context("w1", slots=3))
    try:
        got = [await anext(stream) for _ in range(3)]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await holder
    assert freed.is_set(), "claimed before the lock was free"
    assert sorted(json.loads(t.args)["account"] for t in got if t is not None) == ["a", "b", "c"]
    assert [t.ctx.attempts for t in got if t is not None] == [1, 1, 1]


async def test_a_keyed_claims_scan_takes_a_key_met_twice_in_its_window_once_under_a_limit_of_one(
    mysql_store: MysqlStore, mysql_url: str
) -> None:
    """The scan of the keys' tasks interleaved (every key's first task, then every key's second)
    meets a key once a place: a claim wanting more than there are keys with room meets each
    key again, and takes one task of each under a concurrency of 1, however many it met."""
    q = mysql_store.backend("q", codec=JsonCodec(), max_attempts=1)
    for key in ("a", "b"):
        await q.push_bulk([{"account": key, "n": n} for n in range(3)], limit_key=key)
    stream = q.poll_compact(context("w1", slots=5))
    try:
        assert await anext(stream) is not None
        assert await running_by_key(mysql_url) == {"a": 1, "b": 1}
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_keyed_claims_scan_leaves_a_key_the_room_its_running_tasks_leave_it(
    mysql_store: MysqlStore, mysql_url: str
) -> None:
    """Under a concurrency of 2 a key, one task of which another worker runs, has room for one
    more: a claim that meets it three times in its scan takes one of them, and two of a key
    with none running."""
    two = FleetLimits(key="account", concurrency=2, keyed_concurrency=True)
    q = mysql_store.backend("q", codec=JsonCodec(), max_attempts=1)
    for key in ("a", "b"):
        await q.push_bulk([{"account": key, "n": n} for n in range(4)], limit_key=key)
    holder = q.poll_compact(context("w0", slots=1, limits=two))
    try:
        held = await anext(holder)
        assert held is not None
        assert json.loads(held.args)["account"] == "a"
        stream = q.poll_compact(context("w1", slots=6, limits=two))
        try:
            assert await anext(stream) is not None
            assert await running_by_key(mysql_url) == {"a": 2, "b": 2}
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await holder.aclose()  # type: ignore[attr-defined]


async def test_keyed_tasks_of_a_database_before_the_interleaved_scan_are_numbered_and_claimed_by_it(
    mysql_url: str, monkeypatch: Any
) -> None:
    """A database of schema version 8 is migrated on open: the keyed tasks waiting in it are
    numbered within their keys (a running one first), and a task pushed afterwards by a daemon
    of version 8 (its insert names no number) by the next sweep; a claim behind the key at its
    limit takes the other keys' tasks, each key's first one, in one round trip."""
    await mysql_schema_of_version(mysql_url, 8)
    insert = (
        "INSERT INTO apalis_tasks (id, queue, payload, status, run_at, created_at, limit_key, lock_by, lock_at)"
        " VALUES (%s, 'q', %s, %s, UNIX_TIMESTAMP() - %s, UNIX_TIMESTAMP(), %s, %s, %s)"
    )
    await admin_execute(mysql_url, insert, ("a0", '{"account": "a"}', "running", 9, "a", "w0", 0))
    for n, key in enumerate(("a", "a", "b", "b", "c"), start=1):
        row = (f"{key}{n}", json.dumps({"account": key}), "pending", 6 - n, key, None, None)
        await admin_execute(mysql_url, insert, row)
    store = make_mysql_store(mysql_url)
    await store.open()
    try:
        assert 9 in store.migrations_applied
        await admin_execute(mysql_url, insert, ("d9", '{"account": "d"}', "pending", 0, "d", None, None))
        await admin_execute(  # a0's worker, alive to the sweep
            mysql_url,
            "INSERT INTO apalis_workers (id, name, queue, host, pid, started_at, last_seen)"
            " VALUES ('w0', 'w0', 'q', 'h', 1, UNIX_TIMESTAMP(), UNIX_TIMESTAMP() + 3600)",
        )
        await swept_until_numbered(store, mysql_url, "d9")
        numbers = await admin_execute(mysql_url, "SELECT id, limit_seq FROM apalis_tasks ORDER BY id")
        seq = {str(i): n for i, n in numbers}
        assert seq == {"a0": 1, "a1": 2, "a2": 3, "b3": 1, "b4": 2, "c5": 1, "d9": 1}
        trips: list[int] = []
        send = LockedSession._send

        async def counted(session: LockedSession, last: list[str]) -> Any:
            trips.append(1)
            return await send(session, last)

        monkeypatch.setattr(LockedSession, "_send", counted)
        q = store.backend("q", codec=JsonCodec(), max_attempts=1)
        stream = q.poll_compact(context("w1", slots=3))
        try:
            got = [await anext(stream) for _ in range(3)]
            claimed_in = len(trips)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
    assert sorted(t.id for t in got if t is not None) == ["b3", "c5", "d9"]
    assert claimed_in == 1, f"{claimed_in} round trips"


async def test_a_keyed_task_an_older_daemon_pushed_unnumbered_is_not_passed_over_by_the_scan(
    mysql_store: MysqlStore, mysql_url: str
) -> None:
    """A daemon of schema version 8 pushes keyed tasks without a number within their key
    (migration 0009): the scan reads numbered tasks alone, so while it fills its claims from the
    others it would pass such a task over for good. The sweep numbers it (a key with nothing
    waiting starts at the queue's first number), and the claim takes it in its turn. Pushes of
    ours number each key's tasks on, a batch's consecutively."""
    q = mysql_store.backend("q", codec=JsonCodec(), max_attempts=1)
    await admin_execute(
        mysql_url,
        "INSERT INTO apalis_tasks (id, queue, payload, status, run_at, created_at, limit_key)"
        " VALUES ('old', 'q', '{\"account\": \"0\"}', 'pending', UNIX_TIMESTAMP() - 60, UNIX_TIMESTAMP(), '0')",
    )
    for key in ("a", "b"):
        await q.push_bulk([{"account": key, "n": n} for n in range(3)], limit_key=key)
    await q.push({"account": "a", "n": 3}, limit_key="a")
    await q.push({"account": "b", "n": 3}, limit_key="b", unique={"key": "u", "period": "10m"})
    rows = await admin_execute(mysql_url, "SELECT limit_key, limit_seq FROM apalis_tasks ORDER BY limit_key, limit_seq")
    numbers = [(str(key), seq) for key, seq in rows]
    assert numbers == [("0", None), *(("a", n) for n in range(1, 5)), *(("b", n) for n in range(1, 5))]
    await swept_until_numbered(mysql_store, mysql_url, "old")
    stream = q.poll_compact(context("w1", slots=1))
    try:
        got = await anext(stream)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert got is not None
    assert got.id == "old"
