"""What a RabbitMQ queue can tell without being consumed: counts from passive declares, and the
dead-letter queue peeked (nothing consumes it, so a peek's redelivered flag does no harm). The
work queue cannot be browsed, and only a task that ended is found by id (by its final record,
see `apalis_amqp.control`): other answers are one line why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apalis_cli.backend import Capabilities, Capability, QueueStats, WorkerInfo
from apalis_cli.control import DEFAULT_KILL_REASON
from apalis_cli.errors import Unsupported
from apalis_cli.task import Status, Task, TaskId

from .connection import FAILURES, Connection
from .messages import read_envelope

__all__ = ["AmqpInspector"]


class AmqpInspector:
    """The `Inspector` half of an `AmqpQueue`."""

    queue: str
    work: str
    dead: str
    max_attempts: int
    capabilities: Capabilities
    _conn: Connection

    async def stats(self) -> QueueStats:
        """Ready messages in the work queue and in the dead-letter queue (passive declares)."""
        counts: dict[Status, int | None] = dict.fromkeys(Status)
        channel = await self._conn.channel()
        try:
            for name, status in ((self.work, Status.PENDING), (self.dead, Status.KILLED)):
                declared = await channel.declare_queue(name, passive=True)
                counts[status] = declared.declaration_result.message_count
        except FAILURES:
            pass  # a queue not declared yet has no messages to count
        finally:
            if not channel.is_closed:
                await channel.close()
        return QueueStats(queue=self.queue, counts=counts)

    async def list_tasks(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[Task[bytes]]:
        """Killed tasks, peeked from the dead-letter queue (basic.get, then requeued by closing
        the channel; nothing consumes that queue, so its redelivered flags do no harm)."""
        if status is not Status.KILLED:
            raise Unsupported(self.capabilities.lacking[Capability.INSPECT])
        channel = await self._conn.channel()
        tasks: list[Task[bytes]] = []
        try:
            queue = await channel.declare_queue(self.dead, durable=True)
            for index in range(offset + limit):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                if index >= offset:
                    env = read_envelope(message, self.max_attempts)
                    tasks.append(
                        env.task(self.queue, message.body, status=Status.KILLED, attempts=env.attempts, lock_by=None)
                    )
        finally:
            if not channel.is_closed:
                await channel.close()  # requeues every peeked message
        return tasks

    async def get(self, task_id: TaskId) -> Task[bytes] | None:
        """A task that ended (done or killed, in the last 7 days), by its final record; of any
        other the store cannot say whether it waits or never was (see the INSPECT capability)."""
        ended = await self._final(task_id)
        if ended is None:
            why = self.capabilities.lacking[Capability.INSPECT]
            raise Unsupported(f"no task {task_id} ended in the last 7 days, and {why}")
        return ended

    if TYPE_CHECKING:

        async def _final(self, task_id: TaskId) -> Task[bytes] | None:
            """The control half's (`AmqpControl._final`)."""

    async def workers(self) -> list[WorkerInfo]:
        """Not offered: see the WORKERS capability."""
        raise Unsupported(self.capabilities.lacking[Capability.WORKERS])

    async def retry(self, task_id: TaskId) -> bool:
        """Not offered: see the ADMIN capability."""
        raise Unsupported(self.capabilities.lacking[Capability.ADMIN])

    async def kill(self, task_id: TaskId, reason: str = DEFAULT_KILL_REASON) -> bool:
        """Not offered: see the ADMIN capability."""
        raise Unsupported(self.capabilities.lacking[Capability.ADMIN])

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Empty the dead-letter queue (`status` killed, no age filter); nothing else."""
        if status is not Status.KILLED or older_than:
            raise Unsupported(self.capabilities.lacking[Capability.ADMIN])
        channel = await self._conn.channel()
        try:
            queue = await channel.declare_queue(self.dead, durable=True)
            result = await queue.purge()
            return int(result.message_count or 0)
        finally:
            if not channel.is_closed:
                await channel.close()
