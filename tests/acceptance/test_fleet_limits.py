"""Global limits with real daemons: three `apalis run` processes on one store (a SQLite file, a
Redis, PostgreSQL or MariaDB server, pgmq in PostgreSQL) hold a per-key concurrency (sampled from the store all
along), a fleet-wide rate over 20 seconds, and a killed daemon's slots come back within
`stale_after`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from ..services import need_server
from .conftest import APALIS, Apalis

HANDLERS = """
import asyncio, os, time

async def timed(args):
    started = time.time()
    once = args.get("once")
    if once and not os.path.exists(once):
        open(once, "w").close()
        await asyncio.sleep(args.get("hold", 60))
    await asyncio.sleep(args.get("sleep", 0))
    return started
"""

CONFIG = """\
[backends.main]
{backend}

[[workers]]
name = "imports"
handler = "fleet_handlers:timed"
concurrency = 50
keep_alive = "{keep_alive}"
stale_after = "{stale_after}"
poll_interval = "100ms"
middleware = [{layer}]
"""


class Sampler(Protocol):
    """Reads the daemons' store directly: what runs, what is done, what the handler returned."""

    backend: str

    def running_by_key(self) -> dict[str, int]: ...

    def done(self) -> int: ...

    def results(self) -> list[float]: ...

    def workers(self) -> int: ...

    def last_beat(self, pid: int) -> float:
        """When the worker of the daemon with this pid last beat (its row stays until swept)."""
        ...

    def close(self) -> None: ...


class SqliteSampler:
    backend = 'kind = "sqlite"\nurl = "sqlite:///fleet.db"'

    def __init__(self, cwd: Path) -> None:
        self._cwd = cwd
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:  # once the daemons created the file
            self._conn = sqlite3.connect(self._cwd / "fleet.db", timeout=10)
        return self._conn

    def running_by_key(self) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT limit_key, count(*) FROM apalis_tasks WHERE status = 'running' GROUP BY limit_key"
        )
        return {str(key): int(n) for key, n in rows}

    def done(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM apalis_tasks WHERE status = 'done'").fetchone()[0])

    def results(self) -> list[float]:
        return [float(r) for (r,) in self.conn.execute("SELECT result FROM apalis_tasks WHERE result IS NOT NULL")]

    def workers(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM apalis_workers").fetchone()[0])

    def last_beat(self, pid: int) -> float:
        row = self.conn.execute("SELECT last_seen FROM apalis_workers WHERE id LIKE ?", (f"%-{pid}-%",)).fetchone()
        return float(row[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class RedisSampler:
    def __init__(self, url: str) -> None:
        import redis

        self.namespace = f"fleet{uuid.uuid4().hex[:8]}"
        self.backend = f'kind = "redis"\nurl = "{url}"\nnamespace = "{self.namespace}"'
        self._client = redis.Redis.from_url(url)
        self._base = f"{self.namespace}:{{imports}}:"

    def _fields(self, ids: Any, name: str) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hget(self._base + "t:" + task_id.decode(), name)
        return list(pipe.execute())

    def running_by_key(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for key in self._fields(self._client.zrange(self._base + "running", 0, -1), "lk"):
            if key is not None:
                counts[key.decode()] = counts.get(key.decode(), 0) + 1
        return counts

    def done(self) -> int:
        return int(self._client.zcard(self._base + "done"))

    def results(self) -> list[float]:
        return [float(r) for r in self._fields(self._client.zrange(self._base + "done", 0, -1), "res") if r]

    def workers(self) -> int:
        return int(self._client.zcard(self._base + "workers"))

    def last_beat(self, pid: int) -> float:
        beats: Any = self._client.zrange(self._base + "workers", 0, -1, withscores=True)
        return next(float(seen) for worker, seen in beats if f"-{pid}-" in bytes(worker).decode())

    def close(self) -> None:
        for key in self._client.scan_iter(match=f"{self.namespace}:*", count=1000):
            self._client.delete(key)
        self._client.close()


class SqlSampler:
    """The tables of a PostgreSQL schema or a MariaDB table prefix of the test's own, read by
    one connection on a loop of the sampler's own (the test itself is synchronous)."""

    backend: str
    tasks_table: str
    workers_table: str

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()

    def query(self, statement: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return self._loop.run_until_complete(self._query(statement, args))

    async def _query(self, statement: str, args: tuple[Any, ...]) -> list[Any]:
        raise NotImplementedError

    def running_by_key(self) -> dict[str, int]:
        rows = self.query(
            f"SELECT limit_key, count(*) FROM {self.tasks_table} WHERE status = 'running' GROUP BY limit_key"
        )
        return {str(key): int(n) for key, n in rows}

    def done(self) -> int:
        return int(self.query(f"SELECT count(*) FROM {self.tasks_table} WHERE status = 'done'")[0][0])

    def results(self) -> list[float]:
        return [float(r) for (r,) in self.query(f"SELECT result FROM {self.tasks_table} WHERE result IS NOT NULL")]

    def workers(self) -> int:
        return int(self.query(f"SELECT count(*) FROM {self.workers_table}")[0][0])

    def last_beat(self, pid: int) -> float:
        return float(self.query(f"SELECT last_seen FROM {self.workers_table} WHERE id LIKE %s", (f"%-{pid}-%",))[0][0])


class PostgresSampler(SqlSampler):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.schema = f"fleet{uuid.uuid4().hex[:8]}"
        self.backend = f'kind = "postgres"\nurl = "{url}"\nschema = "{self.schema}"'
        self.tasks_table, self.workers_table = f"{self.schema}.tasks", f"{self.schema}.workers"
        self._conn: Any = None

    async def _query(self, statement: str, args: tuple[Any, ...]) -> list[Any]:
        import psycopg

        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        return list(await (await self._conn.execute(statement, args)).fetchall())

    def close(self) -> None:
        from ..conformance.stores.postgres import drop_schema

        if self._conn is not None:
            self._loop.run_until_complete(self._conn.close())
        self._loop.run_until_complete(drop_schema(self.url, self.schema))
        self._loop.close()


class MysqlSampler(SqlSampler):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.prefix = f"fleet{uuid.uuid4().hex[:8]}_"
        self.backend = f'kind = "mysql"\nurl = "{url}"\ntable_prefix = "{self.prefix}"'
        self.tasks_table, self.workers_table = f"{self.prefix}tasks", f"{self.prefix}workers"
        self._conn: Any = None

    async def _query(self, statement: str, args: tuple[Any, ...]) -> list[Any]:
        from ..conformance.stores.mysql import admin_connect

        if self._conn is None:
            self._conn = await admin_connect(self.url)
        async with self._conn.cursor() as cursor:
            await cursor.execute(statement, args or None)
            return list(await cursor.fetchall())

    def close(self) -> None:
        tables = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name LIKE %s",
            (self.prefix.replace("_", "\\_") + "%",),
        )
        for (name,) in tables:
            self.query(f"DROP TABLE IF EXISTS `{name}`")
        if self._conn is not None:
            self._loop.run_until_complete(self._conn.ensure_closed())
        self._loop.close()


class PgmqSampler(SqlSampler):
    """A database of the test's own with pgmq's real SQL loaded: the daemons' queue is pgmq's
    table `pgmq.q_imports` (its archive `pgmq.a_imports`), with what apalis keeps in the message
    headers under "apalis", and the worker registry `apalis_pgmq.workers`."""

    def __init__(self, url: str) -> None:
        super().__init__()
        import psycopg

        from ..integration.pgmq_install import pgmq_sql, with_database

        self.server_url = url
        self.database = f"fleet_pgmq_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.url = with_database(url, self.database)
        with psycopg.connect(self.url) as conn:
            conn.execute(pgmq_sql())
        self.backend = f'kind = "pgmq"\nurl = "{self.url}"'
        self.workers_table = "apalis_pgmq.workers"
        self._conn: Any = None

    async def _query(self, statement: str, args: tuple[Any, ...]) -> list[Any]:
        import psycopg

        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        return list(await (await self._conn.execute(statement, args)).fetchall())

    def running_by_key(self) -> dict[str, int]:
        # Running as apalis_pgmq's status says: read, its lease alive, not waiting for a retry.
        rows = self.query(
            "SELECT headers -> 'apalis' ->> 'limit_key', count(*) FROM pgmq.q_imports"
            " WHERE read_ct > 0 AND vt > clock_timestamp()"
            " AND (headers -> 'apalis' -> 'failed_ct') IS DISTINCT FROM to_jsonb(read_ct)"
            " GROUP BY 1"
        )
        return {str(key): int(n) for key, n in rows}

    def done(self) -> int:
        statement = "SELECT count(*) FROM pgmq.a_imports WHERE NOT headers -> 'apalis' ? 'status'"
        return int(self.query(statement)[0][0])

    def results(self) -> list[float]:
        rows = self.query(
            "SELECT headers -> 'apalis' ->> 'result' FROM pgmq.a_imports WHERE headers -> 'apalis' ? 'result'"
        )
        return [float(r) for (r,) in rows]

    def close(self) -> None:
        import psycopg

        if self._conn is not None:
            self._loop.run_until_complete(self._conn.close())
        self._loop.close()
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


KINDS = ["sqlite", "redis", "postgres", "mysql", "pgmq"]


def open_sampler(kind: str, cwd: Path) -> Sampler:
    """The store of `kind` that daemons in `cwd` share, and a way to read it apart from them."""
    (cwd / "fleet_handlers.py").write_text(HANDLERS)
    if kind == "sqlite":
        return SqliteSampler(cwd)
    if kind == "redis":
        return RedisSampler(need_server("redis"))
    if kind == "postgres":
        return PostgresSampler(need_server("postgres"))
    if kind == "pgmq":
        return PgmqSampler(need_server("postgres"))
    return MysqlSampler(need_server("mysql"))


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, apalis: Apalis, tmp_path: Path) -> Iterator[Sampler]:
    """The store the daemons share, and a way to read it apart from them."""
    sampler = open_sampler(request.param, tmp_path)
    yield sampler
    sampler.close()


@pytest.fixture
def fleet(apalis: Apalis, store: Sampler) -> Apalis:
    return apalis


def configure(apalis: Apalis, store: Sampler, layer: str, keep_alive: str = "1s", stale_after: str = "3s") -> None:
    apalis.write_config(
        CONFIG.format(backend=store.backend, layer=layer, keep_alive=keep_alive, stale_after=stale_after)
    )


def push(apalis: Apalis, values: list[dict[str, object]]) -> None:
    jsonl = apalis.cwd / "tasks.jsonl"
    jsonl.write_text("".join(json.dumps(v) + "\n" for v in values))
    result = apalis("push", "--file", str(jsonl))
    assert result.code == 0, result.err


def daemon(apalis: Apalis, name: str) -> subprocess.Popen[bytes]:
    with (apalis.cwd / f"{name}.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [APALIS, "run", "--log-format", "json", "--log-level", "warning"],
            cwd=apalis.cwd,
            env=apalis.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_daemons(started: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every daemon still running, then wait for each (SIGKILL after 20 s)."""
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def daemons(fleet: Apalis) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_daemons(started)


def wait_for(condition: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not callable(condition) or not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.02)


def test_three_daemons_never_pass_a_per_key_concurrency(
    fleet: Apalis, store: Sampler, daemons: list[subprocess.Popen[bytes]]
) -> None:
    configure(fleet, store, '{ kind = "concurrency", limit = 3, scope = "global", key = "account" }')
    total = 400
    push(fleet, [{"account": f"a{n % 10}", "n": n, "sleep": 0.05} for n in range(total)])
    daemons.extend(daemon(fleet, f"d{i}") for i in range(3))
    most: dict[str, int] = {}
    samples = 0
    deadline = time.monotonic() + 90
    while True:
        for key, running in store.running_by_key().items():
            most[key] = max(most.get(key, 0), running)
        samples += 1
        done = store.done()
        if done == total:
            break
        assert time.monotonic() < deadline, f"only {done} of {total} tasks ran"
        assert all(p.poll() is None for p in daemons), "a daemon died"
    assert samples > 50, "the store was sampled all along"
    assert max(most.values()) == 3, f"every key ran at its limit and never above it: {most}"
    assert sorted(most) == [f"a{n}" for n in range(10)]


RATE, WINDOW = 50, 20.0
"""The fleet-wide rate (tasks a second) and the window it is measured over (issue 15: 20 s)."""


@pytest.fixture(scope="module")
def fleet_rates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float | BaseException]:
    """The rate each kind's fleet held over its own 20 s window, or what stopped it from running.

    Every kind's three daemons run at once, each fleet on its own store and directory, so the five
    20 s windows pass side by side: one wait of about 20 s in place of five. A fleet's window is
    its own (from the first task its handler started); a kind that could not start (a server
    missing: skipped, or failed under CI) fails its own test alone, as does its measurement.
    """
    outcome: dict[str, float | BaseException] = {}
    fleets: dict[str, tuple[Sampler, list[subprocess.Popen[bytes]]]] = {}

    def start(kind: str) -> None:  # the fleets are set up side by side too (a thread each)
        try:
            cwd = tmp_path_factory.mktemp(f"rate-{kind}")
            sampler = open_sampler(kind, cwd)
            started: list[subprocess.Popen[bytes]] = []
            fleets[kind] = (sampler, started)
            fleet = Apalis(cwd, cwd / "jobs.toml")
            configure(fleet, sampler, f'{{ kind = "rate_limit", rate = {RATE}, per = "1s", scope = "global" }}')
            push(fleet, [{"n": n} for n in range(int(RATE * (WINDOW + 6)))])
            started.extend(daemon(fleet, f"d{i}") for i in range(3))
        except BaseException as exc:  # pytest.skip/fail of need_server too: that kind's test re-raises it
            outcome[kind] = exc

    try:
        with concurrent.futures.ThreadPoolExecutor(len(KINDS)) as pool:
            list(pool.map(start, KINDS))
        # Fifteen daemons start at once: a minute for each fleet's first task (the window
        # starts there, so a slow start takes nothing from the measurement).
        firsts: dict[str, float] = {}
        waiting = [kind for kind in fleets if kind not in outcome]
        deadline = time.monotonic() + 60
        while waiting:
            for kind in list(waiting):
                try:
                    sampler = fleets[kind][0]
                    if sampler.done() > 0:
                        firsts[kind] = min(sampler.results())
                        waiting.remove(kind)
                    elif time.monotonic() > deadline:
                        raise AssertionError(f"timed out after 60s waiting for a start ({kind})")
                except BaseException as exc:
                    outcome[kind] = exc
                    waiting.remove(kind)
            time.sleep(0.02)
        if firsts:
            time.sleep(max(0.0, max(firsts.values()) + WINDOW + 1.0 - time.time()))
        for kind, first in firsts.items():
            try:
                within = sum(1 for at in fleets[kind][0].results() if first <= at < first + WINDOW)
                outcome[kind] = within / WINDOW
            except BaseException as exc:
                outcome[kind] = exc
    finally:  # measured: the daemons stop now, not when the module's later tests have run beside them
        stop_daemons([process for _, started in fleets.values() for process in started])
        for sampler, _ in fleets.values():
            sampler.close()
    return outcome


@pytest.mark.timeout(300)  # the first test's set-up starts every fleet and waits out their windows
@pytest.mark.parametrize("kind", KINDS)
def test_a_fleet_wide_rate_holds_within_ten_percent_over_20s(
    kind: str, fleet_rates: dict[str, float | BaseException]
) -> None:
    measured = fleet_rates[kind]
    if isinstance(measured, BaseException):
        raise measured
    print(f"{kind}: fleet-wide rate over {WINDOW:.0f}s: {measured:.1f}/s for {RATE}/s (burst included)")
    assert abs(measured - RATE) <= 0.1 * RATE, f"{measured:.1f}/s is not within 10% of {RATE}/s"


def test_a_killed_daemons_slots_come_back_within_stale_after(
    fleet: Apalis, store: Sampler, daemons: list[subprocess.Popen[bytes]]
) -> None:
    keep_alive, stale_after = 0.5, 2.0
    configure(fleet, store, '{ kind = "concurrency", limit = 1, scope = "global", key = "account" }', "500ms", "2s")
    marker = fleet.cwd / "held"
    push(fleet, [{"account": "a", "once": str(marker), "hold": 60}, {"account": "a", "n": 2}])
    first = daemon(fleet, "first")
    daemons.append(first)
    wait_for(marker.exists, 30, "the first daemon to run the key's first task")
    second = daemon(fleet, "second")
    daemons.append(second)
    wait_for(lambda: store.workers() >= 2, 30, "both daemons")
    time.sleep(stale_after)  # the second daemon is steady, and the key's task waits for the slot
    assert store.done() == 0, "the key's second task waits while the first holds the slot"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    last_beat = store.last_beat(first.pid)
    wait_for(lambda: store.done() == 2, 30, "the key's tasks to run on the second daemon")
    back = min(store.results())
    print(f"the killed daemon's slot came back {back - last_beat:.2f}s after its last heartbeat (stale_after 2s)")
    assert back - last_beat >= stale_after - 0.05, "the slot stayed held while the lease was alive"
    # The sweep runs at the second daemon's heartbeats (every keep_alive): a slot is back within
    # stale_after and one beat; the rest is slack for a loaded machine's scheduling.
    assert back - last_beat <= stale_after + keep_alive + 1.5, "the slot came back with the lease"


def test_check_refuses_a_global_limit_the_store_cannot_hold(apalis: Apalis) -> None:
    """`apalis check` says what `apalis run` would: one line at the layer, exit 2 (before it
    connects: no server needed)."""
    apalis.write_config(
        CONFIG.format(
            backend='kind = "rsmq"\nurl = "redis://127.0.0.1:1/0"',
            layer='{ kind = "concurrency", limit = 1, scope = "global", key = "account" }',
            keep_alive="1s",
            stale_after="3s",
        ).replace('handler = "fleet_handlers:timed"', 'handler = "apalis_cli.demo:resize_image"')
    )
    result = apalis("check")
    assert result.code == 2, result.err
    assert "middleware: this store cannot hold a global limit (concurrency 1 per account)" in result.err
    assert "Traceback" not in result.err
