"""The driver-free helpers the SQL stores share (`apalis_sql`), checked where SQLite uses them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from apalis_cli.errors import ConfigError
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task, TaskContext
from apalis_sql import (
    TASK_COLUMNS,
    identifier,
    load_migrations,
    load_queries,
    plan_acks,
    render,
    split_named,
    task_from_row,
)
from apalis_sqlite.connection import split_statements


def test_named_statements_and_placeholders() -> None:
    text = "-- a file comment\n-- name: one\nSELECT {prefix}x FROM t WHERE j = '{}';\n-- name: two\nSELECT 2;\n"
    found = split_named(text, "file")
    assert found == {"one": "SELECT {prefix}x FROM t WHERE j = '{}';", "two": "SELECT 2;"}
    assert render(found["one"], {"prefix": "p_"}) == "SELECT p_x FROM t WHERE j = '{}';"
    assert split_named("SELECT 1;", "file") == {"file": "SELECT 1;"}
    with pytest.raises(ValueError, match="taken by Mapping"):
        split_named("-- name: get\nSELECT 1;", "file")


def test_the_sqlite_package_loads_its_statements_and_migrations() -> None:
    queries = load_queries("apalis_sqlite", {"prefix": "zz_"})
    assert "zz_tasks" in queries.claim
    assert "{prefix}" not in queries["ack_done"]
    with pytest.raises(AttributeError, match="no statement named"):
        _ = queries.nothing
    (first, *_) = load_migrations("apalis_sqlite", {"prefix": "zz_"})
    assert first.version == 1
    assert "CREATE TABLE IF NOT EXISTS zz_tasks" in first.sql
    statements = list(split_statements(first.sql))
    assert len(statements) == 6
    assert all(s.rstrip().endswith(";") for s in statements)


@pytest.mark.parametrize("value", ["ok_1", "", "A" * 48])
def test_identifiers_accepted(value: str) -> None:
    assert identifier(value, key="k") == value


@pytest.mark.parametrize("value", ["1abc", "a-b", "a b", "a;drop", "A" * 49, 3])
def test_identifiers_refused_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        identifier(value, key="table_prefix")
    assert caught.value.key == "table_prefix"


def test_rows_become_tasks_whatever_the_driver_returns() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    row = ("id", "q", memoryview(b"\x00"), "failed", 2, 3, when, 1, "k", {"m": 1}, None, "e", {"r": 2}, when, None)
    assert len(row) == len(TASK_COLUMNS)
    task = task_from_row(row)
    assert task.args == b"\x00"
    assert task.ctx.status is Status.FAILED
    assert task.ctx.run_at == when.timestamp()
    assert task.ctx.meta == {"m": 1}
    assert task.ctx.result == '{"r":2}'


def test_outcomes_are_grouped_per_kind() -> None:
    task = Task(id="t", args=b"", ctx=TaskContext(queue="q", lock_by="w"))
    plan = plan_acks([(task, Outcome.done([1])), (task, Outcome.retry("x", 50.0)), (task, Outcome.kill("y"))], 100.0)
    assert plan.done == [("[1]", 100.0, "t", "w")]
    assert plan.retry == [("x", 50.0, "t", "w")]
    assert plan.wake
    assert plan.kill == [("y", 100.0, "t", "w")]
    assert plan.release == []
    assert not plan_acks([], 1.0)
