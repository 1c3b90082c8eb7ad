"""SQLite's schema version 6 (`0006_status_check.sql`): the tasks table made again with its
status CHECK as comparisons. A file of version 5 keeps its tasks, their rowids and what the
CHECK refuses; a daemon of the old version still running on the file (its statements prepared
against version 5) claims and acknowledges after the migration as before; and the check no
longer builds a temporary index for every row a claim or an acknowledgement writes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from apalis_cli.codec import JsonCodec
from apalis_cli.task import Status
from apalis_sql import load_migrations, load_queries
from apalis_sqlite.connection import split_statements

from .conftest import make_sqlite_store

_NAMES = {"prefix": "apalis_"}


def _version_5_file(path: Path) -> None:
    queries = load_queries("apalis_sqlite", _NAMES)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(queries.version_table)
    for migration in load_migrations("apalis_sqlite", _NAMES)[:5]:
        for statement in split_statements(migration.sql):
            conn.execute(statement)
    conn.execute(queries.set_version, {"version": 5, "now": time.time()})
    conn.executemany(
        "INSERT INTO apalis_tasks (id, queue, payload, status, run_at, priority, created_at, limit_key, result)"
        " VALUES (?, 'q', CAST('{}' AS BLOB), ?, ?, ?, 0, ?, ?)",
        [
            ("a-first", "pending", 1, 5, None, None),
            ("b-keyed", "pending", 2, 0, "k1", None),
            ("c-plain", "pending", 3, 0, None, None),
            ("d-done", "done", 0, 0, None, '"ok"'),
        ],
    )
    conn.close()


def _claim(conn: sqlite3.Connection, claim: str, acks: list[str]) -> list[str]:
    """A transaction of a daemon: acknowledge `acks` done, claim one task."""
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    if acks:
        conn.executemany(load_queries("apalis_sqlite", _NAMES).ack_done, [(None, now, i, "old") for i in acks])
    rows = conn.execute(claim, {"queue": "q", "worker": "old", "now": now, "limit": 1}).fetchall()
    conn.execute("COMMIT")
    return [row[0] for row in rows]


async def test_a_version_5_file_keeps_its_tasks_and_its_running_old_daemons(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    _version_5_file(path)
    claim = load_queries("apalis_sqlite", _NAMES).claim
    old = sqlite3.connect(path, isolation_level=None)  # a daemon of version 5, running all along
    try:
        assert _claim(old, claim, []) == ["a-first"]
        rowids = dict(old.execute("SELECT id, rowid FROM apalis_tasks").fetchall())
        store = make_sqlite_store(tmp_path)
        await store.open()  # a daemon of version 6 starts: the file is migrated
        try:
            assert _claim(old, claim, ["a-first"]) == ["b-keyed"]  # the old daemon goes on
            queue = store.backend("q", codec=JsonCodec())
            tasks = {i: await queue.get(i) for i in ("a-first", "b-keyed", "c-plain", "d-done")}
            statuses = {i: (t.ctx.status, t.ctx.lock_by) for i, t in tasks.items() if t is not None}
            assert statuses == {
                "a-first": (Status.DONE, None),
                "b-keyed": (Status.RUNNING, "old"),
                "c-plain": (Status.PENDING, None),
                "d-done": (Status.DONE, None),
            }
        finally:
            await store.close()
        assert dict(old.execute("SELECT id, rowid FROM apalis_tasks").fetchall()) == rowids
        assert old.execute("SELECT version FROM apalis_schema_version").fetchone() == (6,)
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            old.execute("UPDATE apalis_tasks SET status = 'lost' WHERE id = 'c-plain'")
        # The check is comparisons now: no temporary index built for each row written.
        program = old.execute("EXPLAIN " + load_queries("apalis_sqlite", _NAMES).ack_done, (None, 0, "x", "w"))
        assert "OpenEphemeral" not in {row[1] for row in program}
    finally:
        old.close()
