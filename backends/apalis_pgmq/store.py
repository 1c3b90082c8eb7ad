"""`PgmqStore` (`kind = "pgmq"`): apalis queues on the real pgmq SQL API in PostgreSQL.

A queue is a pgmq queue (`pgmq.create`); a task is a message, its id the message id, its
attempts the message's `read_ct`. The claim reads messages as `pgmq.read` does, with a visibility
timeout (the lease), the heartbeat `pgmq.set_vt` on every running message, done and killed tasks are
`pgmq.archive`d (the archive is where `inspect` finds them until `retention` purges them),
retries are `pgmq.set_vt` to the retry time. A worker that dies stops extending its leases, so its
messages reappear by themselves with `read_ct + 1`; a message read more often than its
max_attempts is archived as killed instead of run. Idle workers wake on
`pgmq.enable_notify_insert` notifications (throttled, see `PgmqConfig`) and otherwise poll with
capped backoff. The pgmq schema must already be installed (extension or SQL script); apalis keeps
only a worker registry, idempotency and unique keys, pauses, waiters and rate states in its own
schema `apalis_pgmq`. Global limits (`scope = "global"`) are held by a claim of its own on
pgmq's tables (`apalis_pgmq.limits`).

Decisions, for other pgmq clients and for `inspect`:
- Killed tasks are archived (no dead-letter queue), with `status: "killed"` and the error in the
  message headers under "apalis"; a done task's result (JSON text) goes there too.
- Idempotency keys live in `apalis_pgmq.keys` (queue, key -> msg_id) until `retention` passes.
- Priorities are not offered: the claim, as pgmq.read, hands out the oldest visible message first.
- A task id given to `push` is not kept: pgmq numbers its messages, and that number is the id.
- A task's global limit key is its "apalis" header `limit_key`; a queue claimed by a worker with
  a keyed limit gets one index, `pgmq.q_<queue>_apalis_key`, as pgmq's own `create_fifo_index`
  adds one, and the limited claim runs as one function of the queue's own,
  `apalis_pgmq.limit_claim_<queue>` (see `sql/limits.sql`; pgmq.drop_queue leaves it behind, and
  the next store to open drops it: `sql/cleanup.sql`).
- What pgmq has no function for writes its tables directly: the "apalis" headers (error, result,
  killed) just before `pgmq.archive` / `pgmq.set_vt`, `read_ct` given back to a released task (its
  attempt never started), an operator's `retry` (read_ct reset, or a killed message moved back
  from the archive under its own id), the `retention` purge of old archive rows, and the claim's
  read of the messages it chose (vt, read_ct and last_read_at set as pgmq.read sets them), by
  pgmq.read's own statement rather than pgmq.read itself, which reads the messages in a snapshot
  later than the pause's: a task pushed after a pause could be claimed.
"""

from __future__ import annotations

from typing import ClassVar

from apalis_cli.backend import Capabilities, StoreSpec
from apalis_cli.codec import Codec
from apalis_cli.errors import MissingExtra, UsageError

from .config import PgmqConfig
from .connection import Connection
from .queue import CAPABILITIES, PgmqQueue
from .statements import check_queue_name

__all__ = ["PgmqStore"]


class PgmqStore:
    """One PostgreSQL database with pgmq: its connections, shared by every queue on it."""

    kind: ClassVar[str] = "pgmq"
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, config: PgmqConfig) -> None:
        self.config = config
        self.connection = Connection(config)

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> PgmqStore:
        """Validate the table; the driver must be installed (extra "postgres")."""
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            raise MissingExtra("backend \"pgmq\" needs the extra: pip install 'apalis-cli[postgres]'") from None
        return cls(PgmqConfig.from_options(spec.url, spec.options))

    async def open(self) -> None:
        """Connect, check that pgmq is installed and create the `apalis_pgmq` schema."""
        await self.connection.open()

    async def close(self) -> None:
        """Stop listening and close every connection."""
        await self.connection.close()

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> PgmqQueue:
        """The queue-bound backend (the pgmq queue is created on first use)."""
        if (why := check_queue_name(queue)) is not None:
            raise UsageError(why)
        return PgmqQueue(self.connection, queue, codec=codec, max_attempts=max_attempts)
