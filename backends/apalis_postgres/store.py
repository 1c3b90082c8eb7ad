"""`PostgresStore` (`kind = "postgres"`): durable tasks in PostgreSQL, woken by LISTEN/NOTIFY.

The driver (psycopg 3 with psycopg-pool) is imported only when a store is built, so
`import apalis_postgres` works without the extra and `from_spec` names it when it is missing.

Clock: every time the store stamps or compares (claim readiness, created/done, heartbeats, the
sweep's staleness, retention) is the server's `now()`, so workers on hosts with skewed clocks
agree on leases. A `run_at` a producer sets (a delay, a retry's backoff) is an absolute epoch
time computed on that host: keep hosts NTP-synchronised.

Durability: a push commits like any transaction of the server (it waits for the WAL flush, so
its task survives a crash); `durable_push = false` trades that for latency. Claims, acks and
heartbeats never wait for the flush: one lost in a crash makes a task run again, which
at-least-once delivery allows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from apalis_cli.backend import StoreSpec
from apalis_cli.errors import ConfigError, MissingExtra
from apalis_sql import SqlStore

from .config import PostgresConfig
from .queue import PostgresQueue

if TYPE_CHECKING:
    from .connection import Database

__all__ = ["PostgresStore"]


def _require_driver() -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise MissingExtra("backend \"postgres\" needs the extra: pip install 'apalis-cli[postgres]'") from None


class PostgresStore(SqlStore):
    """Queues in one PostgreSQL schema, sharing a pool and one LISTEN connection."""

    kind: ClassVar[str] = "postgres"
    queue_class = PostgresQueue
    database: Database
    """The pool and the listener, unopened until `open()` (an operation before that fails saying so)."""

    def __init__(self, config: PostgresConfig) -> None:
        from .connection import Database

        super().__init__(Database(config))
        self.config = config

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> PostgresStore:
        """Validate the URL and options (`schema`, `application_name`, `min_size`, `max_size`,
        `connect_timeout`, `durable_push`) and build the store, unopened."""
        config = PostgresConfig.parse(spec.url, spec.options)
        _require_driver()
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(config.url)  # libpq's own parse: bad ports, unknown parameters
        except ProgrammingError:
            raise ConfigError(f'not a valid PostgreSQL URL: "{config.redacted}"', key="url") from None
        return cls(config)
