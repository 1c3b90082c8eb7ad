"""`QueueBase`: what most queue-bound backends share (a helper, never a requirement).

It gives a store's queue object the decoded `poll`, `get_queue`, the batched acknowledging
`middleware()` and the `TaskSink` conveniences, so the store writes only its own primitives:
`poll_compact`, `heartbeat`, `enqueue` and `ack_batch`.

`decoded` is the seed's `poll` over any `poll_compact`: it does with a payload its codec cannot
decode what the worker does (the worker decodes in its innermost service, see worker.py): the
task is killed in the store with a "decode error" line and the stream goes on with the next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from .acks import AckBatcher, ack_layer
from .backend import Capabilities, WorkerContext
from .codec import Codec
from .errors import DecodeError
from .service import Layer, Outcome, Service
from .sink import PushMixin
from .task import Task

__all__ = ["QueueBase", "decoded"]


class QueueBase(PushMixin):
    """Shared plumbing of a queue-bound backend over a store's primitives."""

    capabilities: Capabilities = Capabilities()

    def __init__(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> None:
        self.queue = queue
        self.codec = codec
        self.max_attempts = max_attempts
        self._acks = AckBatcher(self.ack_batch)

    def get_queue(self) -> str:
        """The queue this backend is bound to."""
        return self.queue

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Implemented by the store."""
        raise NotImplementedError

    async def ack_batch(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        """Write many outcomes in one round trip (implemented by the store)."""
        raise NotImplementedError

    async def poll(self, worker: WorkerContext) -> AsyncIterator[Task[Any] | None]:
        """Tasks with decoded args; a task whose payload cannot be decoded is killed, not yielded."""
        # A generator of its own, closing `decoded` when it is closed: `poll_compact` is called
        # at the first step, as before (some stores start listening when it is called).
        stream = decoded(self.poll_compact(worker), self.codec, self.middleware())
        try:
            async for task in stream:
                yield task
        finally:
            await stream.aclose()

    def middleware(self) -> Layer:
        """Acknowledges each final outcome, batched with the others of the same loop turn."""
        return ack_layer(self._acks.ack)


async def decoded(
    stream: AsyncIterator[Task[bytes] | None], codec: Codec, acknowledge: Layer
) -> AsyncGenerator[Task[Any] | None, None]:
    """`stream` (a `poll_compact`) with each task's args decoded by `codec`: the seed's `poll`.

    A task whose payload `codec` cannot decode is killed through `acknowledge` (the queue's
    `middleware()`) with the line the worker writes, and is not yielded: ending the stream
    instead would leave it claimed, to come back and end the next stream too."""
    decode = codec.decode
    try:
        async for task in stream:
            if task is None:
                yield None
                continue
            try:
                args = decode(task.args)
            except DecodeError as exc:
                await acknowledge(_decided(Outcome.undecodable(exc)))(task)
                continue
            yield dataclasses.replace(task, args=args)
    finally:
        # Closed with this stream, not at a later garbage collection: its `finally` hands back
        # the tasks it fetched and never handed out.
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()


def _decided(outcome: Outcome) -> Service:
    """A service that runs nothing and ends with `outcome`."""

    async def decided(task: Task[Any]) -> Outcome:
        return outcome

    return decided
