"""`PostgresQueue`: one queue of a PostgreSQL store: the shared SQL queue (`apalis_sql.SqlQueue`)
over this store's `Database`, woken across processes by LISTEN/NOTIFY."""

from __future__ import annotations

from apalis_sql import SqlQueue

__all__ = ["PostgresQueue"]


class PostgresQueue(SqlQueue):
    """One queue in a PostgreSQL schema (its Inspector is `apalis_sql.SqlInspector`)."""
