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

from apalis_cli.backend import CONTROL_NOT_BUILT, Capabilities, StoreSpec
from apalis_cli.codec import Codec
from apalis_cli.errors import ConfigError, MissingExtra

from .config import PostgresConfig

if TYPE_CHECKING:
    from .connection import Database
    from .queue import PostgresQueue

__all__ = ["PostgresStore"]


def _require_driver() -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise MissingExtra("backend \"postgres\" needs the extra: pip install 'apalis-cli[postgres]'") from None


class PostgresStore:
    """Queues in one PostgreSQL schema, sharing a pool and one LISTEN connection."""

    kind: ClassVar[str] = "postgres"
    capabilities: ClassVar[Capabilities] = Capabilities({**CONTROL_NOT_BUILT})

    def __init__(self, config: PostgresConfig) -> None:
        from .connection import Database

        self.config = config
        self.database: Database = Database(config)
        """The pool and the listener, unopened until `open()` (an operation before that fails saying so)."""
        self._open = False
        self.migrations_applied: list[int] = []

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

    async def open(self) -> None:
        """Connect, then create or migrate the schema (idempotent)."""
        if self._open:
            return
        self.migrations_applied = await self.database.open()
        self._open = True

    async def close(self) -> None:
        """Close the pool and the listener."""
        if self._open:
            self._open = False
            await self.database.close()

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> PostgresQueue:
        """The queue-bound backend."""
        from .queue import PostgresQueue

        return PostgresQueue(self.database, queue, codec=codec, max_attempts=max_attempts)
