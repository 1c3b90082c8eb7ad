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

from apalis_cli.backend import StoreSpec
from apalis_cli.errors import MissingExtra
from apalis_sql import SqlStore

from .config import MysqlConfig
from .queue import MysqlQueue

if TYPE_CHECKING:
    from .connection import Database

__all__ = ["MysqlStore"]


def _require_driver() -> None:
    try:
        import asyncmy  # noqa: F401
    except ImportError:
        raise MissingExtra("backend \"mysql\" needs the extra: pip install 'apalis-cli[mysql]'") from None


class MysqlStore(SqlStore):
    """Queues in one MySQL/MariaDB database, sharing a connection pool."""

    kind: ClassVar[str] = "mysql"
    queue_class = MysqlQueue
    database: Database
    """The pool, unopened until `open()` (an operation before that fails saying so)."""

    def __init__(self, config: MysqlConfig) -> None:
        from .connection import Database

        super().__init__(Database(config))
        self.config = config

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> MysqlStore:
        """Validate the URL and options (`table_prefix`, `min_size`, `max_size`,
        `connect_timeout`) and build the store, unopened."""
        config = MysqlConfig.parse(spec.url, spec.options)
        _require_driver()
        return cls(config)
