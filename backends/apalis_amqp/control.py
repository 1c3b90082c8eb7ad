"""The control plane on RabbitMQ: pause and wait, with control records on the broker itself.

RabbitMQ keeps no state beside its queues and forgets an acknowledged message, so the store
keeps small records in queues of its own, for apalis queue `q` under prefix `p`:

- `p.q.control`: a direct exchange. Every polling worker binds an exclusive queue of its own to
  it (routing key `pause`), so a pause or resume reaches it within milliseconds. A worker told
  to pause stops consuming and answers the pause's reply queue; `pause()` returns once every
  consumer of the work queue (its passive declare counts them) has answered.
- `p.q.paused`: a durable queue (`x-max-length` 1) that holds a message while the queue is
  paused: a pause publishes one, a resume purges it. The flag outlives every restart, and
  reading it (the message count a declare answers) changes nothing, whoever else reads it at
  the same time. A worker reads it when it starts polling and at every heartbeat; a paused
  worker stops consuming (`basic.cancel`: the broker pushes it nothing, and what it had been
  pushed goes back).
- `p.q.finals`: a stream queue (`x-queue-type: stream`, no plugin needed) of final records:
  the tasks that end (done with their result, killed) in one acknowledgement batch append one
  message listing their records, published with the batch's copies and confirmed with them
  before the tasks' messages are acknowledged (a record the broker did not take leaves its task
  to be redelivered: a waiter's answer is never lost). A waiter reads the stream from the time the
  task's id was made (ids are time-ordered), so it finds a record written before it came as
  well as the one it waits for; records are kept 7 days, at most 1 GiB. It appends a marker
  (confirmed) before it attaches: RabbitMQ attaches a reader whose start time is past every
  record at the stream's end, which it reads a second time to attach, so a record written
  between the two reads was skipped (a queue's first end, written as its waiter came); with
  the marker there is always a record at or after the start.

Cancel is not offered (see `CAPABILITIES`): a RabbitMQ queue cannot be searched by id, so a
cancel could not tell a task that waits from one that ended long ago or never existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from apalis_cli.envelope import Envelope, task_of_final
from apalis_cli.envelope import final_record as envelope_record
from apalis_cli.retrying import delays
from apalis_cli.task import Status, Task, TaskId

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["FINALS_ARGUMENTS", "AmqpControl", "final_record", "records_message", "task_of_record"]

PAUSED_ARGUMENTS: dict[str, Any] = {"x-max-length": 1}
FINALS_ARGUMENTS: dict[str, Any] = {"x-queue-type": "stream", "x-max-age": "7D", "x-max-length-bytes": 1 << 30}
PAUSE_KEY = "pause"
_RECORD_MAX = 512 * 1024
"""A final record larger than this is kept without its result (RESULTS is not offered: a waiter
learns the task is done, and a result of that size is not carried)."""
_STOPPED_WITHIN = 2.0
"""How long a pause waits for the consuming workers to say they stopped."""
_READ_WITHIN = 10.0
"""How long a read of the finals stream may take to reach its end."""
_STEADY = 5.0
"""A wait attached this long before its channel was lost attaches again at once; sooner, after
a backoff (`apalis_cli.retrying.delays`)."""
_EARLIER = 5.0
"""A waiter starts reading this long before its id's time, or its own (clocks of hosts differ:
the broker's must not be this far behind the waiter's, or the marker would be before the start)."""


def final_record(
    status: Status, envelope: Envelope, *, attempts: int, error: str | None, result: str | None
) -> dict[str, Any]:
    """A task's final record (one entry of a records message, see `records_message`); a result
    past `_RECORD_MAX` is left out."""
    kept = result if result is not None and len(result) <= _RECORD_MAX else None
    return envelope_record(status, envelope, attempts=attempts, error=error, result=kept)


def records_message(records: list[dict[str, Any]]) -> aio_pika.Message:
    """The final records of one acknowledgement batch as one message of the finals stream: a
    message per batch, not per task, keeps the stream's cost per task small."""
    body = json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode()
    return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


def task_of_record(queue: str, data: bytes, task_id: TaskId) -> Task[bytes] | None:
    """Task `task_id` as a records message tells its end (its payload is not kept: empty), or
    None when the message does not name it."""
    try:
        records = json.loads(data)
    except ValueError:
        return None
    found = None
    for body in records if isinstance(records, list) else ():
        if isinstance(body, dict) and body.get("id") == task_id:
            found = body
    return None if found is None else task_of_final(queue, task_id, found)


def _offset_of(task_id: TaskId, now: float) -> Any:
    """Where a reader of the finals stream starts for `task_id`: a little before its id was made
    (its records cannot be older) and never after `now` (an id made by a host whose clock runs
    ahead), or the first record for an id of another making."""
    made = _made_at(task_id)
    if made is None:
        return "first"
    return datetime.datetime.fromtimestamp(min(made, now) - _EARLIER, tz=datetime.UTC)


class _Detached(Exception):
    """A wait's channel was lost (its connection, or the broker cancelled its consumer)."""


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _made_at(task_id: TaskId) -> float | None:
    """When an id of `apalis_cli.task.new_task_id` was made (its first 48 bits: milliseconds)."""
    if len(task_id) != 30:
        return None
    try:
        return int(task_id[:12], 16) / 1000.0
    except ValueError:
        return None


class AmqpControl:
    """The control half of an `AmqpQueue`: `Pausable` and `Waiter`."""

    queue: str
    work: str
    _conn: Connection

    if TYPE_CHECKING:

        async def _ensure_queues(self) -> None:
            """The queue's (work, dead and control)."""

    @property
    def control_exchange(self) -> str:
        """The direct exchange control messages go through."""
        return f"{self.work}.control"

    @property
    def paused_queue(self) -> str:
        """The queue holding the last pause or resume."""
        return f"{self.work}.paused"

    @property
    def finals(self) -> str:
        """The stream of final records."""
        return f"{self.work}.finals"

    async def _ensure_control(self) -> None:
        """Declare the control exchange and the finals stream."""
        await self._conn.declare_exchange(self.control_exchange)
        await self._conn.declare(self.paused_queue, PAUSED_ARGUMENTS, adopt=False)
        await self._conn.declare(self.finals, FINALS_ARGUMENTS, adopt=False)

    # -- pause -----------------------------------------------------------------------------

    async def pause(self) -> None:
        """Every worker stops consuming this queue (now, and after any restart)."""
        await self._conn.retrying(lambda: self._tell_paused(True))

    async def resume(self) -> None:
        """Workers consume again."""
        await self._conn.retrying(lambda: self._tell_paused(False))

    async def _tell_paused(self, paused: bool) -> None:
        await self._ensure_queues()
        if paused:
            flag = aio_pika.Message(b"1", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await self._conn.publish_many([(self.paused_queue, flag)])
        else:
            await self._conn.purge(self.paused_queue)
            message = aio_pika.Message(b"0", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await self._conn.publish_to(self.control_exchange, PAUSE_KEY, message)
            return
        # A pause returns once every worker consuming the queue has stopped (each answers on a
        # reply queue of this call's own), so no task pushed after it is handed out; a worker
        # that does not answer within `_STOPPED_WITHIN` obeys when its heartbeat reads the flag.
        channel = await self._conn.channel()
        try:
            work = await channel.declare_queue(self.work, passive=True)
            consuming = int(work.declaration_result.consumer_count or 0)
            replies = await channel.declare_queue(exclusive=True, auto_delete=True)
            answered = 0
            everyone = asyncio.Event()
            if consuming == 0:
                everyone.set()

            async def on_reply(_: AbstractIncomingMessage) -> None:
                nonlocal answered
                answered += 1
                if answered >= consuming:
                    everyone.set()

            await replies.consume(on_reply, no_ack=True)
            message = aio_pika.Message(b"1", delivery_mode=aio_pika.DeliveryMode.PERSISTENT, reply_to=replies.name)
            await self._conn.publish_to(self.control_exchange, PAUSE_KEY, message)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOPPED_WITHIN):
                    await everyone.wait()
        finally:
            if not channel.is_closed:
                await channel.close()

    async def paused(self) -> bool:
        """True while the queue is paused (the last message of the paused queue says so)."""
        return await self._conn.retrying(self._read_paused)

    async def _read_paused(self) -> bool:
        return await self._conn.count(self.paused_queue, PAUSED_ARGUMENTS) > 0

    # -- wait ------------------------------------------------------------------------------

    async def _read_from(
        self,
        channel: AbstractChannel,
        task_id: TaskId,
        on_record: Callable[[AbstractIncomingMessage], Awaitable[None]],
        marker: str,
    ) -> None:
        """Consume the finals stream on `channel` from where `task_id`'s records can start, once
        `marker` is appended (confirmed): the start is then never past the stream's end (see the
        module's docstring)."""
        await channel.set_qos(prefetch_count=500)  # a stream's consumer must have one
        stream = await channel.declare_queue(self.finals, passive=True)
        await self._conn.publish_many([(self.finals, aio_pika.Message(b"", message_id=marker))])
        await stream.consume(on_record, arguments={"x-stream-offset": _offset_of(task_id, time.time())})

    async def _final(self, task_id: TaskId) -> Task[bytes] | None:
        """The task's final record, read from the finals stream up to its end (a marker this
        call appends), or None when it has none (it has not ended, or not in 7 days)."""
        await self._conn.retrying(self._ensure_control)
        marker = f"apalis-marker-{uuid.uuid4().hex}"
        found: list[Task[bytes]] = []
        reached = asyncio.Event()

        async def on_record(message: AbstractIncomingMessage) -> None:
            # Read before the ack, which yields: each delivery runs as a task of its own, and the
            # marker's must not be seen before the records ahead of it are.
            if message.message_id == marker:
                reached.set()
            elif (task := task_of_record(self.queue, message.body, task_id)) is not None:
                found.append(task)
            await message.ack()

        channel = await self._conn.channel()
        try:
            await self._read_from(channel, task_id, on_record, marker)
            try:
                async with asyncio.timeout(_READ_WITHIN):
                    await reached.wait()
            except TimeoutError:
                # A bare TimeoutError reads as "apalis: error: TimeoutError": say what timed out.
                raise TimeoutError(
                    f"the finals stream {self.finals!r} did not reach its end within {_READ_WITHIN:g} s"
                ) from None
        finally:
            if not channel.is_closed:
                await channel.close()
        return found[-1] if found else None

    async def wait(self, task_id: TaskId, timeout: float | None = None) -> Task[bytes] | None:  # noqa: ASYNC109
        """The task once its final record is in the finals stream (done or killed), read from
        the time its id was made (or the waiter's time, if earlier); None after `timeout`, unless
        it had ended when the wait came (then it is the answer, whatever the timeout). An unknown
        id waits for the whole timeout: a RabbitMQ queue cannot tell it from a task still to
        come. A wait whose channel is lost (the connection, or the broker cancelling its
        consumer) attaches again from the same start, so an end written meanwhile is read."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        waits = delays(0.1, 5.0)
        while True:
            attached = loop.time()
            try:
                return await self._conn.retrying(lambda: self._wait_attached(task_id, deadline))
            except _Detached:  # attached again with a fresh reconnect budget
                if loop.time() - attached > _STEADY:
                    waits = delays(0.1, 5.0)
                    continue
                # Lost again as soon as attached (a broker that fails this reader each time): not
                # in a tight loop, each attachment appending a marker.
                pause = next(waits)
                await asyncio.sleep(pause if deadline is None else min(pause, max(deadline - loop.time(), 0.0)))

    async def _wait_attached(self, task_id: TaskId, deadline: float | None) -> Task[bytes] | None:
        """One attachment of `wait` to the finals stream; `_Detached` when its channel is lost
        before it has an answer."""
        await self._ensure_control()
        loop = asyncio.get_running_loop()
        found: asyncio.Future[Task[bytes]] = loop.create_future()
        lost: asyncio.Future[None] = loop.create_future()
        marker = f"apalis-marker-{uuid.uuid4().hex}"
        caught_up: asyncio.Future[None] = loop.create_future()  # the records there when it came are read

        async def on_record(message: AbstractIncomingMessage) -> None:
            if message.message_id == marker:  # read before the ack, which yields (see `_final`)
                _settle(caught_up)
            elif not found.done() and (task := task_of_record(self.queue, message.body, task_id)) is not None:
                found.set_result(task)
            await message.ack()

        channel = await self._conn.channel()
        channel.close_callbacks.add(lambda *_: _settle(lost))
        (await channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(lambda *_: _settle(lost))
        try:
            await self._read_from(channel, task_id, on_record, marker)
            left = None if deadline is None else deadline - loop.time()
            answers: set[asyncio.Future[Any]] = {found, lost}
            timed_out = False
            try:
                async with asyncio.timeout(left):
                    await asyncio.wait(answers, return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                timed_out = True
            if not found.done() and not lost.done():
                # A task that had ended when the wait came is its answer, however short the
                # timeout: the records up to the marker are read first.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_READ_WITHIN):
                        await asyncio.wait({*answers, caught_up}, return_when=asyncio.FIRST_COMPLETED)
            if found.done():
                return found.result()
            if lost.done() and not (timed_out and caught_up.done()):
                raise _Detached
            return None
        finally:
            if not channel.is_closed:
                await channel.close()
