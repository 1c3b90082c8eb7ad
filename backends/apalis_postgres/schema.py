"""The store's SQL: statements loaded once from `sql/*.sql`, and forward-only migrations.

Statements name their tables `{schema}.x`; the schema name was validated by the config and is
quoted here with `psycopg.sql.Identifier` before it goes into the text; `{channel}` is the
NOTIFY channel of wake-ups (the schema's name) and `{control}` that of task ends and cancel
requests, as string literals; `{bulk_where}` is the bulk statements' filter. Task-returning
statements alias the tasks table `t` and select `{columns}` (the shared `TASK_COLUMNS`, with the
result read back as the exact JSON text that was written).
"""

from __future__ import annotations

from apalis_sql import TASK_COLUMNS, Queries, load_migrations, load_queries
from psycopg import AsyncConnection, sql

__all__ = ["BULK_WHERE", "COLUMNS", "control_channel", "load_statements", "migrate"]

_READ_AS = {
    "result": "t.result::text AS result",
    # Most tasks carry no meta: NULL costs no JSON parse per row, and reads back as no meta.
    "meta": "nullif(t.meta, '{}'::jsonb) AS meta",
}
COLUMNS = ", ".join(_READ_AS.get(c, f"t.{c}") for c in TASK_COLUMNS)
"""The columns every task-returning statement selects, in the order `task_from_row` reads."""


BULK_WHERE = """queue = %(queue)s AND status = ANY(%(statuses)s::text[])
    AND (%(since)s::float8 IS NULL OR coalesce(done_at, created_at) >= %(since)s::float8)
    AND (%(until)s::float8 IS NULL OR coalesce(done_at, created_at) <= %(until)s::float8)
    AND (%(pattern)s::text IS NULL OR last_error ILIKE %(pattern)s::text)
    AND (NOT %(fresh)s OR cancel_reason IS NULL)"""
"""The filter of every bulk statement: statuses, since/until on the last change, an error's
substring in any case, and (`fresh`) only tasks not asked to cancel before."""


def control_channel(schema: str) -> str:
    """The channel of task ends and cancel requests (a ':' keeps it apart from any schema's name)."""
    return f"{schema}:control"


def _names(schema: str) -> dict[str, str]:
    # The NOTIFY channels are named after the schema (a validated identifier), as string literals.
    return {
        "schema": sql.Identifier(schema).as_string(),
        "columns": COLUMNS,
        "channel": f"'{schema}'",
        "control": f"'{control_channel(schema)}'",
        "bulk_where": BULK_WHERE,
    }


def load_statements(schema: str) -> Queries:
    """Every named statement of the package, bound to `schema`."""
    return load_queries(__package__ or "apalis_postgres", _names(schema))


async def migrate(conn: AsyncConnection[tuple[object, ...]], schema: str) -> list[int]:
    """Create the schema and apply the migrations it has not seen; returns those applied.

    A transaction-scoped advisory lock serialises concurrent first starts, so two processes
    opening the same fresh schema do not race on `CREATE ... IF NOT EXISTS`.
    """
    ident = sql.Identifier(schema)
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('apalis-migrate'), hashtext(%s))", (schema,))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_version"
                " (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        cursor = await conn.execute(sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_version").format(ident))
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0  # type: ignore[call-overload]
        for migration in load_migrations(__package__ or "apalis_postgres", _names(schema)):
            if migration.version <= current:
                continue
            await conn.execute(migration.sql.encode())
            await conn.execute(
                sql.SQL("INSERT INTO {}.schema_version (version, name) VALUES (%s, %s)").format(ident),
                (migration.version, migration.name),
            )
            applied.append(migration.version)
    return applied
