"""`MysqlQueue`: one queue of a MySQL/MariaDB store: the shared SQL queue (`apalis_sql.SqlQueue`)
over this store's `Database`.

MariaDB has no `UPDATE ... RETURNING`, so a claim is one short transaction: `SELECT ... FOR
UPDATE SKIP LOCKED` then `UPDATE` of those ids; the tasks handed out are the selected rows with
the claim applied (`claims`). A batch of acknowledgements claims, in its own transaction, the
tasks for the slots it frees, so a busy worker waits for one commit per batch. Wake-ups: a push
in this process wakes its pollers at once; pushes from other processes are found by polling
with backoff capped at `poll_interval`.
"""

from __future__ import annotations

from apalis_sql import SqlQueue

__all__ = ["MysqlQueue"]


class MysqlQueue(SqlQueue):
    """One queue in a MySQL/MariaDB database (its Inspector is `apalis_sql.SqlInspector`)."""
