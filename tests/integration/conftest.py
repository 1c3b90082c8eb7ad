"""Fixtures the integration tests share: fresh stores of the server-backed SQL kinds.

Each test gets a place of its own on the test server (a PostgreSQL schema, a MySQL database),
dropped when it ends; `*_store` is a store opened there, closed when the test ends, and
`make_postgres_store` / `make_mysql_store` build more stores on the same place (a producer in
"another process", a second migration). The conformance suite's factories (`tests/conformance/
stores/`) make their stores the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from apalis_cli.backend import StoreSpec
from apalis_mysql import MysqlStore
from apalis_postgres import PostgresStore

from tests.conformance.stores.mysql import admin_execute
from tests.conformance.stores.postgres import drop_schema
from tests.services import need_server


def make_postgres_store(url: str, schema: str, **options: Any) -> PostgresStore:
    """An unopened store in `schema`, its connections named after the schema (so a test can
    terminate them as a server restart would)."""
    spec = StoreSpec(
        name="t", kind="postgres", url=url, options={"schema": schema, "application_name": schema, **options}
    )
    return PostgresStore.from_spec(spec)


def make_mysql_store(url: str, **options: Any) -> MysqlStore:
    """An unopened store in the database of `url`."""
    return MysqlStore.from_spec(StoreSpec(name="t", kind="mysql", url=url, options=options))


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
