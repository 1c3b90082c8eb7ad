"""`MysqlStore` (`kind = "mysql"`): durable tasks in MySQL or MariaDB (10.6+: SKIP LOCKED).

The driver is asyncmy, imported only when a store is built, so `import apalis_mysql` works
without the extra and `from_spec` names it when it is missing. asyncmy was chosen over aiomysql
because its protocol and row parsing are compiled (Cython), which matters when a claim or an ack
batch carries hundreds of rows, and it is maintained against current MariaDB/MySQL.

Tables live in the URL's database, named with `table_prefix` (default `apalis_`). Every time the
store stamps or compares is the server's clock (`UNIX_TIMESTAMP(NOW(6))`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from apalis_cli.backend import CONTROL_NOT_BUILT, Capabilities, StoreSpec
from apalis_cli.codec import Codec
from apalis_cli.errors import MissingExtra

from .config import MysqlConfig

if TYPE_CHECKING:
    from .connection import Database
    from .queue import MysqlQueue

__all__ = ["MysqlStore"]


def _require_driver() -> None:
    try:
        import asyncmy  # noqa: F401
    except ImportError:
        raise MissingExtra("backend \"mysql\" needs the extra: pip install 'apalis-cli[mysql]'") from None


class MysqlStore:
    """Queues in one MySQL/MariaDB database, sharing a connection pool."""

    kind: ClassVar[str] = "mysql"
    capabilities: ClassVar[Capabilities] = Capabilities({**CONTROL_NOT_BUILT})

    def __init__(self, config: MysqlConfig) -> None:
        from .connection import Database

        self.config = config
        self.database: Database = Database(config)
        """The pool, unopened until `open()` (an operation before that fails saying so)."""
        self._open = False
        self.migrations_applied: list[int] = []

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> MysqlStore:
        """Validate the URL and options (`table_prefix`, `min_size`, `max_size`,
        `connect_timeout`) and build the store, unopened."""
        config = MysqlConfig.parse(spec.url, spec.options)
        _require_driver()
        return cls(config)

    async def open(self) -> None:
        """Connect, then create or migrate the tables (idempotent)."""
        if self._open:
            return
        self.migrations_applied = await self.database.open()
        self._open = True

    async def close(self) -> None:
        """Close the pool."""
        if self._open:
            self._open = False
            await self.database.close()

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> MysqlQueue:
        """The queue-bound backend."""
        from .queue import MysqlQueue

        return MysqlQueue(self.database, queue, codec=codec, max_attempts=max_attempts)
