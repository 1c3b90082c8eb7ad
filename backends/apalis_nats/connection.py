"""The store's NATS connection, its stream, and pull requests made by hand.

nats-py reconnects by itself (its subscriptions come back with it); operations that fail while
it does are retried here with capped backoff. Pulls are raw `CONSUMER.MSG.NEXT` requests on an
inbox of our own, `no_wait` for up to n ready messages. No long polls: on server 2.9.10 a
delivery that falls due as a pull request expires was seen to vanish (counted as delivered,
never received, back only after `ack_wait`), so an idle worker waits on a core subscription to
the work subject instead, which wakes it on the next publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import nats
from apalis_cli.errors import BackendError, ConnectionLost
from apalis_cli.polling import Waker
from apalis_cli.redact import redact, secrets_in
from apalis_cli.retrying import retrying
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from .config import NatsConfig

__all__ = ["FAILURES", "Connection", "Puller", "flush", "unsubscribe", "wakes"]

T = TypeVar("T")

FAILURES: tuple[type[BaseException], ...] = (NatsError, ConnectionError, OSError, asyncio.TimeoutError, ConnectionLost)
"""What a lost connection raises: the operation is retried once the client has reconnected."""

_SUBJECTS_OVERLAP = 10065
_FINAL_TTL = 7 * 86400.0
_FINAL_RECORDS = {"file": 1_000_000, "memory": 100_000}
"""The final records' bucket drops its oldest records past this count (a waiter reads its record
within moments of its write; `inspect` does not list done tasks)."""
_NOT_UNIQUE = (10099, 10100)  # a second unfiltered / overlapping consumer on a WorkQueue stream
_FIRST_CONNECT_ATTEMPTS = 3


async def _quiet(_: Exception) -> None:
    """nats-py reports every reconnect attempt; the worker reports what matters."""


async def flush(client: Client) -> None:
    """`client.flush()`, shielded: nats-py 2.16 leaves a cancelled flush's PONG future in its
    queue, and the PONG that later completes it crashes the client's read loop."""
    await asyncio.shield(client.flush(timeout=5))


class Connection:
    """One NATS client per store, with its JetStream context and the stream made sure of."""

    def __init__(self, config: NatsConfig) -> None:
        self.config = config
        self._client: Client | None = None
        self._lock = asyncio.Lock()
        self._buckets: dict[str, KeyValue] = {}
        self.reconnected = Waker()
        """Notified once the client has reconnected, its subscriptions back: a message published
        while it was away reached none of them (a waiter reads its task's record again)."""

    async def client(self) -> Client:
        """The connected client (connecting on first use); raises `ConnectionLost` while the
        client is reconnecting."""
        client = self._client
        if client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await self._connect()
                client = self._client
        if not client.is_connected:
            raise ConnectionLost("NATS is reconnecting")
        return client

    async def js(self) -> JetStreamContext:
        """The JetStream context of the connected client."""
        return (await self.client()).jetstream(timeout=5.0)

    async def _connect(self) -> Client:
        try:
            # nats-py applies max_reconnect_attempts to the first connect too: unlimited, it would
            # never give up on a server that is down, and `apalis push` would hang instead of
            # saying so. The first connect tries each server a few times; once connected, the
            # client reconnects for as long as it takes.
            client = await nats.connect(
                servers=self.config.servers,
                name="apalis-cli",
                allow_reconnect=True,
                max_reconnect_attempts=_FIRST_CONNECT_ATTEMPTS,
                reconnect_time_wait=0.25,
                connect_timeout=5,
                error_cb=_quiet,
                reconnected_cb=self._on_reconnected,
            )
        except Exception as exc:  # nats-py raises many kinds when the first connect fails
            url = self.config.url
            raise ConnectionLost(redact(f"cannot reach NATS at {url}: {exc!r}", secrets_in(url))) from None
        client.options["max_reconnect_attempts"] = -1
        try:
            await self._ensure_stream(client.jetstream(timeout=5.0))
            await self._ensure_buckets(client.jetstream(timeout=5.0))
        except BaseException:
            await client.close()
            raise
        return client

    async def _on_reconnected(self) -> None:
        self.reconnected.notify()

    async def stream_exists(self) -> bool:
        """True when the stream is there."""
        try:
            await (await self.js()).stream_info(self.config.stream)
        except NotFoundError:
            return False
        return True

    async def ensure_stream(self) -> None:
        """Create the stream again (someone deleted it while apalis used it)."""
        await self._ensure_stream(await self.js())

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Create the stream, or use the one that exists when it can serve: a WorkQueue stream
        whose subjects take `<prefix>.>`. Anything else is one line saying what to change (it
        would be the same on every retry)."""
        s = self.config
        wanted = f"{s.prefix}.>"
        config = StreamConfig(
            name=s.stream,
            subjects=[wanted],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE if s.storage == "file" else StorageType.MEMORY,
            duplicate_window=s.duplicate_window,
        )
        try:
            await js.add_stream(config)
            return
        except BadRequestError as exc:
            if exc.err_code == _SUBJECTS_OVERLAP:
                owner = await _stream_of(js, wanted)
                raise BackendError(
                    f'NATS subjects "{wanted}" belong to stream "{owner}", so stream "{s.stream}" cannot take them: '
                    f'set stream = "{owner}" to use it, or another prefix'
                ) from None
        # It exists with another configuration (storage, limits, subjects...): use it if it fits.
        info = await js.stream_info(s.stream)
        retention = str(getattr(info.config.retention, "value", info.config.retention))  # a str, as nats-py reads it
        if retention != RetentionPolicy.WORK_QUEUE.value:
            raise BackendError(
                f'NATS stream "{s.stream}" has retention "{retention}", and apalis needs a WorkQueue stream: '
                "set stream to another name (apalis creates it) or recreate it with retention workqueue"
            )
        subjects = info.config.subjects or []
        if not any(_covers(subject, wanted) for subject in subjects):
            raise BackendError(
                f'NATS stream "{s.stream}" takes subjects {", ".join(subjects) or "(none)"}, not "{wanted}": '
                f'add "{wanted}" to its subjects, or set prefix to a subject prefix it takes'
            )

    # -- the control plane's buckets (see `apalis_nats.control`) ------------------------------

    @property
    def control_bucket(self) -> str:
        """The bucket of paused flags."""
        return f"{self.config.stream}_CTL"

    @property
    def final_bucket(self) -> str:
        """The bucket of final records."""
        return f"{self.config.stream}_FIN"

    def final_subject(self, key: str) -> str:
        """The subject a final record is written on (a plain publish there is a KV put)."""
        return f"$KV.{self.final_bucket}.{key}"

    async def _ensure_buckets(self, js: JetStreamContext) -> None:
        storage = StorageType.FILE if self.config.storage == "file" else StorageType.MEMORY
        try:
            self._buckets[self.control_bucket] = await js.key_value(self.control_bucket)
        except BucketNotFoundError:
            config = KeyValueConfig(bucket=self.control_bucket, history=1, storage=storage)
            self._buckets[self.control_bucket] = await js.create_key_value(config)
        try:
            self._buckets[self.final_bucket] = await js.key_value(self.final_bucket)
        except BucketNotFoundError:
            # The bucket's stream made by hand: a KV bucket bounded by max_bytes would reserve
            # that much of the server's JetStream storage (a few stores and it refuses every new
            # stream), and one bounded by count refuses new records when full (discard new).
            # This one drops its oldest records past a count, and reserves nothing.
            await js.add_stream(
                StreamConfig(
                    name=f"KV_{self.final_bucket}",
                    subjects=[f"$KV.{self.final_bucket}.>"],
                    storage=storage,
                    max_age=_FINAL_TTL,
                    max_msgs=_FINAL_RECORDS[self.config.storage],
                    max_msgs_per_subject=1,
                    discard=DiscardPolicy.OLD,
                    allow_rollup_hdrs=True,
                    deny_delete=True,
                    allow_direct=True,
                )
            )
            self._buckets[self.final_bucket] = await js.key_value(self.final_bucket)

    async def _bucket(self, name: str) -> KeyValue:
        bucket = self._buckets.get(name)
        if bucket is None:  # deleted while in use, or not made yet
            await self.client()
            await self._ensure_buckets(await self.js())
            bucket = self._buckets[name]
        return bucket

    async def put_final(self, key: str, data: bytes) -> None:
        """Write a final record and wait for the server to have it."""
        await (await self._bucket(self.final_bucket)).put(key, data)

    async def get_final(self, key: str) -> bytes | None:
        """A final record, or None."""
        try:
            entry = await (await self._bucket(self.final_bucket)).get(key)
        except NotFoundError:  # no such key, or deleted
            return None
        return entry.value

    async def forget_final(self, key: str) -> None:
        """Delete a final record (the task runs again)."""
        await (await self._bucket(self.final_bucket)).delete(key)

    async def put_paused(self, queue: str, paused: bool) -> None:
        """Store the paused flag of `queue`."""
        await (await self._bucket(self.control_bucket)).put(f"paused.{queue}", b"1" if paused else b"0")

    async def get_paused(self, queue: str) -> bool:
        """The paused flag of `queue` (never set: not paused)."""
        try:
            entry = await (await self._bucket(self.control_bucket)).get(f"paused.{queue}")
        except NotFoundError:
            return False
        return entry.value == b"1"

    async def add_consumer(self, durable: str, subject: str, ack_wait: float) -> None:
        """Create (or update) durable pull consumer `durable` on `subject`. A WorkQueue stream
        lets one consumer read a subject: a consumer another client made on ours is named in one
        line rather than retried."""
        stream = self.config.stream
        js = await self.js()
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=subject,
            ack_wait=ack_wait,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=-1,
            max_ack_pending=-1,
        )
        try:
            await js.add_consumer(stream, config)
        except BadRequestError as exc:
            if exc.err_code not in _NOT_UNIQUE:
                raise
            others = [
                info.name
                for info in await js.consumers_info(stream)
                if info.name != durable and _covers(info.config.filter_subject or ">", subject)  # none: all
            ]
            raise BackendError(
                f'NATS consumer {", ".join(others) or "(another)"} on stream "{stream}" already reads '
                f'"{subject}", and a WorkQueue stream lets one consumer read a subject: delete it, and send '
                "from that client without consuming (or read through the apalis consumer "
                f'"{durable}")'
            ) from None

    async def publish_many(self, items: Sequence[tuple[str, bytes, dict[str, str]]]) -> None:
        """Publish (subject, data, headers) triples, each acked by the stream; retried while
        NATS is away."""

        async def publish() -> None:
            js = await self.js()
            await asyncio.gather(*(js.publish(subject, data, headers=h) for subject, data, h in items))

        if items:
            await self.retrying(publish)

    @property
    def current(self) -> Client | None:
        """The client as it is, without connecting (None before the first use)."""
        return self._client

    async def close(self) -> None:
        """Drain nothing, just close: unacknowledged messages come back after `ack_wait`."""
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            await client.close()

    async def retrying(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation`, retried with the core's backoff and budget (`apalis_cli.retrying`)
        while NATS is away (nats-py reconnects by itself meanwhile)."""
        return await retrying(operation, transient=lambda exc: isinstance(exc, FAILURES), what="NATS")


def _covers(pattern: str, wanted: str) -> bool:
    """True when subject filter `pattern` matches every subject `wanted` matches."""
    have, want = pattern.split("."), wanted.split(".")
    for index, token in enumerate(have):
        if token == ">":
            return True
        if index >= len(want) or want[index] == ">" or (token != "*" and token != want[index]):
            return False
    return len(have) == len(want)


async def _stream_of(js: JetStreamContext, subject: str) -> str:
    """The name of the stream that takes `subject` ("another stream" if none is found)."""
    try:
        return await js.find_stream_name_by_subject(subject)
    except NatsError:
        return "another stream"


def _reraise_cancel() -> None:
    """Raise the cancellation that an `asyncio.wait_for` inside nats-py swallowed (Python 3.11
    drops a cancel that arrives as the awaited result does)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Puller:
    """Pull requests to one durable consumer, answered on an inbox of this puller's own."""

    def __init__(self, client: Client, stream: str, consumer: str) -> None:
        self._client = client
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = client.new_inbox()
        self._sub: Subscription | None = None

    async def fetch(self, batch: int, wait: float = 0.0) -> list[Msg]:
        """Up to `batch` messages: those ready now, or (with `wait`) the first one to arrive
        within `wait` seconds."""
        if self._sub is None:
            self._sub = await self._client.subscribe(self._inbox)
        request: dict[str, Any] = {"batch": batch}
        if wait > 0:
            request["expires"] = int(wait * 1e9)
        else:
            request["no_wait"] = True
        await self._client.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait + 2.0  # past it, the request was lost with a connection
        messages: list[Msg] = []
        while len(messages) < batch:
            try:
                msg = await self._sub.next_msg(timeout=max(deadline - loop.time(), 0.001))
            except TimeoutError:
                break
            finally:
                _reraise_cancel()  # next_msg uses 3.11's wait_for, which may swallow one
            status = msg.headers.get("Status") if msg.headers else None
            if status is None:
                messages.append(msg)
            elif status in ("404", "408", "409"):
                break  # no (more) messages, request expired, or the consumer went away
        return messages

    async def close(self) -> None:
        """Stop listening on the inbox."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(*FAILURES):
                await sub.unsubscribe()


def wakes(event: asyncio.Event) -> Callable[[Msg], Awaitable[None]]:
    """A subscription callback that sets `event` (a publish wakes a waiting poller)."""

    async def notified(_: Msg) -> None:
        event.set()

    return notified


async def unsubscribe(subscription: Subscription) -> None:
    """Unsubscribe; a connection lost meanwhile took the subscription with it."""
    with contextlib.suppress(*FAILURES):
        await subscription.unsubscribe()
