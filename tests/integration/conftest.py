"""Fixtures the integration tests share: a fresh store of each kind, `<kind>_store`.

Each test gets a place of its own on the test server (a SQLite file in its tmp_path, a PostgreSQL
schema, a MySQL database, a Redis or rsmq namespace, AMQP queues and a NATS stream under a prefix
of its own, a scratch database with pgmq), dropped when it ends; the fixture's store is opened
there and closed when the test ends. `make_<kind>_store` / `open_<kind>_store` build more stores
on the same place (a producer in "another process", a worker that dies, a second migration). A
test takes `<kind>_store`, or `store` where its module names the kinds it runs on in
`STORE_KINDS` (one test per kind). The conformance suite's factories (`tests/conformance/
stores/`) make their stores the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from apalis_amqp import AmqpStore
from apalis_cli.backend import Store, StoreSpec
from apalis_cli.control import CancelState
from apalis_cli.task import Status
from apalis_mysql import MysqlStore
from apalis_nats import NatsStore
from apalis_pgmq import PgmqStore
from apalis_postgres import PostgresStore
from apalis_redis import RedisStore
from apalis_rsmq import RsmqStore
from apalis_sql import SqlQueue, load_migrations
from apalis_sqlite import SqliteStore

from ..conformance.stores.mysql import admin_execute
from ..conformance.stores.postgres import drop_schema
from ..conformance.stores.redis import drop_namespace
from ..nats_streams import drop_stream
from ..redis_cluster import PrivateCluster
from ..services import need_server
from .pgmq_install import scratch_database


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module's `STORE_KINDS` parametrise its tests that take `store`, one kind each."""
    kinds = getattr(metafunc.module, "STORE_KINDS", None)
    if kinds is not None and "store" in metafunc.fixturenames:
        metafunc.parametrize("store", kinds, indirect=True, ids=list(kinds))


@pytest.fixture
def store(request: pytest.FixtureRequest) -> Store:
    """The `<kind>_store` of the kind the test is parametrised with (its module's STORE_KINDS)."""
    made: Store = request.getfixturevalue(f"{request.param}_store")
    return made


# -- SQLite ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def beating_all_along(*heartbeats: Any) -> AsyncIterator[None]:
    """Each heartbeat stream beats all along, as a live worker's does, until the block ends;
    then they stop and are closed."""
    stop = asyncio.Event()

    async def beats(stream: Any) -> None:
        while not stop.is_set():
            await anext(stream)

    beating = [asyncio.ensure_future(beats(stream)) for stream in heartbeats]
    try:
        yield
    finally:
        stop.set()
        for beat in beating:
            beat.cancel()
        await asyncio.gather(*beating, return_exceptions=True)
        for stream in heartbeats:
            await stream.aclose()


def make_sqlite_store(base_dir: Path, url: str = "sqlite:///jobs.db", **options: Any) -> SqliteStore:
    """An unopened store in `url`, a path relative to `base_dir`."""
    return SqliteStore.from_spec(StoreSpec(name="main", kind="sqlite", url=url, options=options, base_dir=base_dir))


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An opened store in `jobs.db` under the test's tmp_path."""
    made = make_sqlite_store(tmp_path)
    await made.open()
    try:
        yield made
    finally:
        await made.close()


# -- PostgreSQL and MySQL/MariaDB --------------------------------------------------------------


def make_postgres_store(url: str, schema: str, **options: Any) -> PostgresStore:
    """An unopened store in `schema`, its connections named after the schema (so a test can
    terminate them as a server restart would)."""
    spec = StoreSpec(
        name="t", kind="postgres", url=url, options={"schema": schema, "application_name": schema, **options}
    )
    return PostgresStore.from_spec(spec)


async def controls_after_migration(queue: SqlQueue) -> None:
    """A queue of a database made before the control plane, migrated on open: its pending task
    `old-pending` can be cancelled (and ends so, with the reason), its done task `old-done` (if
    any) is already final, the queue can be paused, and a unique key holds (global limits and
    unique jobs came later still)."""
    assert (await queue.cancel("old-pending", "migrated")).state is CancelState.CANCELLED
    assert (await queue.cancel("old-done", "migrated")).state in (CancelState.ALREADY_FINAL, CancelState.NOT_FOUND)
    await queue.pause()
    assert await queue.paused()
    cancelled = await queue.get("old-pending")
    assert cancelled is not None
    assert (cancelled.ctx.status, cancelled.ctx.last_error) == (Status.CANCELLED, "migrated")
    first = await queue.push({"n": 1}, unique={"key": "after-migration"}, limit_key="a")
    assert await queue.push({"n": 2}, unique={"key": "after-migration"}) == first


def make_mysql_store(url: str, **options: Any) -> MysqlStore:
    """An unopened store in the database of `url`."""
    return MysqlStore.from_spec(StoreSpec(name="t", kind="mysql", url=url, options=options))


async def mysql_schema_of_version(url: str, version: int) -> None:
    """The tables of schema `version` (prefix `apalis_`) in the database of `url`, as a daemon of
    that version left them: its migrations applied and recorded, no later one."""
    names = {"prefix": "apalis_", "now": "UNIX_TIMESTAMP(NOW(6))", "columns": "", "bulk_where": ""}
    await admin_execute(
        url,
        "CREATE TABLE apalis_schema_version (version INT NOT NULL PRIMARY KEY,"
        " name VARCHAR(191) NOT NULL, applied_at DOUBLE NOT NULL) ENGINE = InnoDB",
    )
    for migration in load_migrations("apalis_mysql", names):
        if migration.version > version:
            continue
        body = "\n".join(line for line in migration.sql.splitlines() if not line.strip().startswith("--"))
        for statement in (part.strip() for part in body.split(";")):
            if statement:
                await admin_execute(url, statement)
        await admin_execute(
            url,
            "INSERT INTO apalis_schema_version VALUES (%s, %s, UNIX_TIMESTAMP())",
            (migration.version, migration.name),
        )


@pytest.fixture
def postgres_url() -> str:
    """The test PostgreSQL server (the test skips, or fails in CI, without it)."""
    return need_server("postgres")


@pytest.fixture
async def postgres_schema(postgres_url: str) -> AsyncIterator[str]:
    """A schema name of the test's own, dropped afterwards."""
    name = f"apalis_t_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schema(postgres_url, name)


@pytest.fixture
async def postgres_store(postgres_url: str, postgres_schema: str) -> AsyncIterator[PostgresStore]:
    """An opened store in `postgres_schema`."""
    made = make_postgres_store(postgres_url, postgres_schema)
    await made.open()
    yield made
    await made.close()


@pytest.fixture
async def mysql_url() -> AsyncIterator[str]:
    """The URL of a fresh database of the test's own on the test MySQL/MariaDB server, dropped
    afterwards."""
    server = need_server("mysql")
    database = f"apalis_t_{uuid.uuid4().hex[:12]}"
    await admin_execute(server, f"CREATE DATABASE {database}")
    yield urlunsplit(urlsplit(server)._replace(path=f"/{database}"))
    await admin_execute(server, f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture
async def mysql_store(mysql_url: str) -> AsyncIterator[MysqlStore]:
    """An opened store in the database of `mysql_url`."""
    made = make_mysql_store(mysql_url)
    await made.open()
    yield made
    await made.close()


# -- Redis and rsmq ----------------------------------------------------------------------------


def make_redis_store(url: str, namespace: str | None = None, **options: Any) -> RedisStore:
    """An unopened store under `namespace` (a fresh one by default)."""
    options = {"namespace": namespace or f"it-redis-{uuid.uuid4().hex[:12]}", **options}
    return RedisStore.from_spec(StoreSpec(name="it", kind="redis", url=url, options=options))


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    """An opened store under a namespace of the test's own, deleted afterwards."""
    made = make_redis_store(need_server("redis"))
    await made.open()
    try:
        yield made
    finally:
        await made.close()
        await drop_namespace(made.config.url, made.config.namespace)


@pytest.fixture
async def rsmq_store() -> AsyncIterator[RsmqStore]:
    """An opened rsmq store under a namespace of the test's own, deleted afterwards; its
    visibility timeout is 1 s, so a claim that is not kept comes back within a test."""
    url = need_server("redis")
    options = {"namespace": f"it-rsmq-{uuid.uuid4().hex[:12]}", "vt": 1}
    made = RsmqStore.from_spec(StoreSpec(name="it", kind="rsmq", url=url, options=options))
    await made.open()
    try:
        yield made
    finally:
        await made.close()
        await drop_namespace(url, made.config.namespace)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[PrivateCluster]:
    """A private three-master Redis Cluster for the module, stopped afterwards."""
    started = PrivateCluster()
    started.start()
    try:
        yield started
    finally:
        started.stop()


def redis_cluster_spec(url: str, **options: Any) -> StoreSpec:
    """The table of a Redis store on the cluster at `url`."""
    return StoreSpec(name="it", kind="redis", url=url, options={"cluster": True, **options})


@pytest.fixture
async def redis_cluster_store(redis_cluster: PrivateCluster) -> AsyncIterator[RedisStore]:
    """An opened store on the module's cluster, under a namespace of the test's own."""
    made = RedisStore.from_spec(redis_cluster_spec(redis_cluster.url, namespace=f"it-{uuid.uuid4().hex[:12]}"))
    await made.open()
    try:
        yield made
    finally:
        await made.close()


# -- The brokers -------------------------------------------------------------------------------


async def open_amqp_store(prefix: str) -> AmqpStore:
    """An opened store whose queues are named under `prefix`."""
    spec = StoreSpec(name="it", kind="amqp", url=need_server("amqp"), options={"prefix": prefix})
    store = AmqpStore.from_spec(spec)
    await store.open()
    return store


@pytest.fixture
async def amqp_store() -> AsyncIterator[AmqpStore]:
    """An opened store under a prefix of the test's own; the queues it made are deleted after."""
    made = await open_amqp_store(f"it{uuid.uuid4().hex[:10]}")
    try:
        yield made
    finally:
        names, exchanges = set(made.connection.created), set(made.connection.exchanges)
        await made.close()
        channel = await made.connection.channel()
        for name in sorted(names):
            await channel.queue_delete(name)
        for name in sorted(exchanges):
            await channel.exchange_delete(name)
        await made.connection.close()


async def open_nats_store(tag: str) -> NatsStore:
    """An opened store on the stream `I<tag>` (in memory), its subjects under `i<tag>`."""
    options = {"stream": f"I{tag}", "prefix": f"i{tag}", "storage": "memory"}
    store = NatsStore.from_spec(StoreSpec(name="it", kind="nats", url=need_server("nats"), options=options))
    await store.open()
    return store


@pytest.fixture
async def nats_store() -> AsyncIterator[NatsStore]:
    """An opened store on a stream of the test's own, deleted afterwards."""
    made = await open_nats_store(uuid.uuid4().hex[:10])
    try:
        yield made
    finally:
        js = await made.connection.js()
        await drop_stream(js, made.config.stream)
        await made.close()


@pytest.fixture
def pgmq_url() -> str:
    """A scratch database with the pgmq extension on the test PostgreSQL server."""
    return scratch_database(need_server("postgres"))


@pytest.fixture
async def pgmq_store(pgmq_url: str) -> AsyncIterator[PgmqStore]:
    """An opened pgmq store on `pgmq_url`, its connections named for the test alone."""
    app = f"apalis_it_{os.urandom(4).hex()}"
    made = PgmqStore.from_spec(StoreSpec(name="t", kind="pgmq", url=f"{pgmq_url}?application_name={app}"))
    await made.open()
    try:
        yield made
    finally:
        await made.close()
