"""What the SQL stores (SQLite, PostgreSQL, MySQL) share, kept free of any driver.

- `files`: loading `sql/*.sql` (named statements, numbered migrations) and identifier checks.
- `rows`: the canonical task columns, a row -> `Task` mapping and the insert parameters.
- `browse`: the board's pages by keyset and activity, over a store's fetch.
- `acks`: a batch of outcomes grouped into per-kind statement parameters (`AckPlan`).
- `status`: the status machine as the SQL sees it (claimable, final, the orphan message).
- `database`: what the shared queue asks of a server's `Database` (`SqlDatabase`, `Session`),
  and what one process knows of its workers and waiters (`Controls`).
- `control`: cancel, pause, wait and bulk actions (`SqlControl`).
- `queue`, `inspector`, `store`: the queue, its inspector and the store of PostgreSQL and
  MySQL/MariaDB, written once over a `SqlDatabase` (SQLite keeps its own: one process, no pool).
"""

from __future__ import annotations

from .acks import AckPlan, AckRow, plan_acks
from .browse import Fetch, browse_tasks, queue_activity
from .control import SqlControl
from .database import Backlog, BeatAsk, Beaten, Controls, Session, SqlDatabase, told_reason
from .files import Migration, Queries, identifier, load_migrations, load_queries, render, split_named
from .inspector import SqlInspector, StatementInspector
from .options import PoolOptions, pool_options
from .queue import SqlQueue
from .rows import (
    INSERT_COLUMNS,
    TASK_COLUMNS,
    decode_meta,
    encode_meta,
    insert_params,
    stats_from_rows,
    task_from_row,
    worker_from_row,
    worker_params,
)
from .status import CLAIMABLE, FINAL, orphan_error
from .store import SqlStore

__all__ = [
    "CLAIMABLE",
    "FINAL",
    "INSERT_COLUMNS",
    "TASK_COLUMNS",
    "AckPlan",
    "AckRow",
    "Backlog",
    "BeatAsk",
    "Beaten",
    "Controls",
    "Fetch",
    "Migration",
    "PoolOptions",
    "Queries",
    "Session",
    "SqlControl",
    "SqlDatabase",
    "SqlInspector",
    "SqlQueue",
    "SqlStore",
    "StatementInspector",
    "browse_tasks",
    "decode_meta",
    "encode_meta",
    "identifier",
    "insert_params",
    "load_migrations",
    "load_queries",
    "orphan_error",
    "plan_acks",
    "pool_options",
    "queue_activity",
    "render",
    "split_named",
    "stats_from_rows",
    "task_from_row",
    "told_reason",
    "worker_from_row",
    "worker_params",
]
