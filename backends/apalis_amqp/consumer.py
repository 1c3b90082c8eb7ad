"""One worker's consumer on one queue: its own channel, prefetch = the worker's concurrency.

The broker pushes at most `prefetch` unacknowledged messages, so a worker never holds more than
it can run (backpressure at the broker) and a new message wakes it at once. The channel outlives
a poll stream (the worker may restart its stream after an error while runs go on: their
acknowledgements need the channel that delivered them); it closes when the worker says goodbye
or is found stale, and the broker then requeues whatever it held.

"Idle" is the broker's word, not a guess: messages are pushed a moment after a consumer starts or
after an ack frees a prefetch slot, so an empty buffer alone does not mean an empty queue. A
passive declare on the consumer's own channel answers after every delivery the broker sent
before it, with the count of messages still ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from apalis_cli.contact import Contact
from apalis_cli.task import TaskId

from .connection import FAILURES

__all__ = ["Consumer", "Consumers", "Held"]


@dataclass(slots=True)
class Held:
    """A delivered message whose task was handed to the worker and is not yet settled."""

    message: AbstractIncomingMessage
    attempts: int
    since: float


class Consumer:
    """A channel consuming one work queue for one worker."""

    def __init__(self, worker_id: str, channel: AbstractChannel, queue: AbstractQueue) -> None:
        self.worker_id = worker_id
        self.channel = channel
        self.queue = queue
        self.buffer: deque[AbstractIncomingMessage] = deque()
        self.held: dict[TaskId, Held] = {}
        self.arrived = asyncio.Event()
        self._tag: str | None = None
        self.strays: list[AbstractIncomingMessage] = []  # delivered after consuming stopped
        self.cancelled = False  # the broker cancelled the consumer (its queue was deleted)
        channel.close_callbacks.add(self._on_close)

    @property
    def closed(self) -> bool:
        """True once the channel (or its connection) is gone."""
        return self.channel.is_closed

    @property
    def consuming(self) -> bool:
        """True while the broker pushes messages to this consumer."""
        return self._tag is not None

    def _on_close(self, *_: Any) -> None:
        self.arrived.set()  # a waiting poll stream notices at once

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._tag is None:
            self.strays.append(message)
        else:
            self.buffer.append(message)
        self.arrived.set()

    def _on_cancel(self, *_: Any) -> None:
        self._tag = None
        self.cancelled = True
        self.arrived.set()

    async def start(self, prefetch: int, queue: AbstractQueue | None = None) -> None:
        """Set the prefetch window and start consuming (once; again on `queue` after the
        broker cancelled the consumer)."""
        if queue is not None:
            self.queue, self.cancelled = queue, False
        if self._tag is None:
            underlay = await self.channel.get_underlay_channel()
            underlay.on_consumer_cancel_callbacks.add(self._on_cancel)
            await self.channel.set_qos(prefetch_count=prefetch)
            self._tag = await self.queue.consume(self._on_message)

    async def ready(self) -> int:
        """How many messages of the queue are ready and not yet delivered to anyone; any message
        the broker pushed to this consumer before answering is in `buffer` when this returns."""
        declared = await self.channel.declare_queue(self.queue.name, passive=True)
        await asyncio.sleep(0)  # let a delivery that arrived with the answer reach the buffer
        return int(declared.declaration_result.message_count or 0)

    async def stop(self) -> list[AbstractIncomingMessage]:
        """Stop consuming; returns the messages delivered but never handed to the worker."""
        tag, self._tag = self._tag, None
        if tag is not None and not self.closed:
            with contextlib.suppress(*FAILURES):
                await self.queue.cancel(tag)
        unclaimed = [*self.buffer, *self.strays]
        self.buffer.clear()
        self.strays.clear()
        return unclaimed

    def hold(self, task_id: TaskId, message: AbstractIncomingMessage, attempts: int) -> None:
        """Remember the delivery of a task handed to the worker, for its acknowledgement."""
        self.held[task_id] = Held(message, attempts, time.time())

    async def close(self) -> None:
        """Close the channel: the broker requeues every message still unacknowledged on it."""
        self._tag = None
        if not self.closed:
            with contextlib.suppress(*FAILURES):
                await self.channel.close()


class Consumers:
    """The consumers of one store, by (queue, worker id), and when each worker last beat: a live
    worker's heartbeat closes the channels of the workers in this process that stopped beating.

    A worker sweeps only when `contact` says it may (`apalis_cli.contact`): after a stall of the
    whole process (its event loop blocked, a broker slow to answer) every worker's last beat is
    old, the live ones' too, and the first to beat again would otherwise close its neighbours'
    channels and have their tasks run twice."""

    def __init__(self) -> None:
        self.by_worker: dict[tuple[str, str], Consumer] = {}
        self.beats: dict[str, float] = {}
        self.contact = Contact()
        """This process's beats, noted by `beat_every`: a stall holds the sweep."""

    async def close(self) -> None:
        """Close every consumer's channel (the broker requeues what each one held)."""
        for consumer in list(self.by_worker.values()):
            await consumer.close()
        self.by_worker.clear()
