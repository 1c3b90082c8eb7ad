"""Connections shared by the Redis-based stores: a named client that retries with capped
backoff, its registered scripts, and one pub/sub listener per store that wakes idle pollers.

Every connection is named with `CLIENT SETNAME` (`client_name`), so an operator (or a test) can
find and kill exactly this store's connections with `CLIENT LIST` / `CLIENT KILL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Awaitable, Callable, Iterator, Mapping
from importlib import resources
from typing import Any, TypeVar

import msgpack
from apalis_cli.contact import Contact
from apalis_cli.errors import BackendError, ConnectionLost, MissingExtra
from apalis_cli.polling import Waker
from apalis_cli.redact import redact, secrets_in
from apalis_cli.retrying import keep_connected

from .config import cluster_seeds
from .scripts import Lane, Script, register
from .signals import ControlSignals

__all__ = ["Connection", "OnConnection", "Wakeups", "connect", "connect_checked", "link_kept", "lua", "require_driver"]

_RECONNECT_TRIES = 12
_RECONNECT_CAP = 1.0
_COMMAND_TIMEOUT = 10.0  # far above any script's run time: the scripts work in bounded batches
_CONNECT_TIMEOUT = 5.0

T = TypeVar("T")


def require_driver(kind: str) -> None:
    """Raise `MissingExtra` when redis-py is not installed."""
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        raise MissingExtra(f"backend \"{kind}\" needs the extra: pip install 'apalis-cli[redis]'") from None


def connect(
    url: str, client_name: str, contact: Contact | None = None, *, cluster: bool = False, retry: Any = None
) -> Any:
    """A redis-py asyncio client that reconnects and retries a command on a dropped connection
    (about 6 s of backoff in all, capped at 1 s, unless `retry` says otherwise), with bytes
    replies; `contact` hears of every try of every command (see `apalis_cli.contact`). With
    `cluster`, a `RedisCluster` on the URL's seed nodes (`cluster_seeds`), which finds the others
    and sends each queue's scripts to the node of its slot (it retries without telling `contact`).

    A reply that never comes (a peer gone without a reset) times out after `_COMMAND_TIMEOUT`
    and counts as a dropped connection: an acknowledgement must never wait forever. Blocking
    pub/sub reads are exempt (redis-py reads them without a timeout)."""
    from redis.asyncio import Redis
    from redis.exceptions import ConnectionError, TimeoutError

    options: dict[str, Any] = {
        "client_name": client_name,
        "retry": retry or _patient(contact or Contact()),
        "retry_on_error": [ConnectionError, TimeoutError],
        "decode_responses": False,
        "socket_timeout": _COMMAND_TIMEOUT,
        "socket_connect_timeout": _CONNECT_TIMEOUT,
    }
    if not url.startswith("unix:"):
        options["socket_keepalive"] = True  # a TCP option: redis-py refuses it for a unix:// socket
    if not cluster:
        return Redis.from_url(url, **options)
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    first, others = cluster_seeds(url)
    return RedisCluster.from_url(first, startup_nodes=[ClusterNode(host, port) for host, port in others], **options)


def _patient(contact: Contact) -> Any:
    from redis.backoff import ExponentialBackoff

    return _retry(ExponentialBackoff(cap=_RECONNECT_CAP, base=0.02), _RECONNECT_TRIES, contact)


def _retry(backoff: Any, tries: int, contact: Contact) -> Any:
    """redis-py's retry policy, telling `contact` whether each try reached the server."""
    from redis.asyncio.retry import Retry
    from redis.exceptions import ConnectionError, TimeoutError

    class Watched(Retry):
        async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Any, *args: Any, **kwargs: Any) -> T:
            async def attempt() -> T:
                try:
                    result = await do()
                except (ConnectionError, TimeoutError, OSError):
                    contact.lost()
                    raise
                contact.reached()
                return result

            return await super().call_with_retry(attempt, fail, *args, **kwargs)

        def __deepcopy__(self, memo: dict[int, Any]) -> Watched:
            # redis-py copies the policy into every connection: the copies share `contact`.
            clone = copy.copy(self)
            clone._backoff = copy.deepcopy(self._backoff, memo)
            return clone

    return Watched(backoff, tries)


async def connect_checked(url: str, client_name: str, contact: Contact | None = None, *, cluster: bool = False) -> Any:
    """`connect`, then one PING, so an unreachable server (or a refused password) is one clear
    `BackendError` at open, at once: the reconnect backoff is for a server lost while running
    (`apalis run` waits for a store that is not up yet by opening again with its own backoff)."""
    from redis.backoff import NoBackoff

    contact = contact or Contact()
    client = connect(url, client_name, contact, cluster=cluster, retry=_retry(NoBackoff(), 0, contact))
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        where = "redis cluster" if cluster else "redis"
        raise BackendError(redact(f"cannot reach {where} at {url}: {exc}", secrets_in(url))) from None
    client.set_retry(_patient(contact))
    return client


@contextlib.contextmanager
def link_kept(what: str) -> Iterator[None]:
    """Raise a dropped connection (after redis-py's own retries) as `ConnectionLost`: a write
    that failed because the server is away, not because it refused what it was given."""
    from redis.exceptions import ConnectionError, TimeoutError

    try:
        yield
    except (ConnectionError, TimeoutError) as exc:
        raise ConnectionLost(f"redis: {what}: {exc}") from exc


def lua(package: str, name: str) -> str:
    """The text of `lua/<name>.lua` shipped in `package`."""
    return resources.files(package).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class Wakeups:
    """One pub/sub connection per store: a message on `<prefix><queue>` wakes that queue's pollers,
    and one on `<control prefix><queue>` goes to `control` (a cancel, a task's end).

    It listens with pattern subscriptions (`<prefix>*`) started by the first poller or the first
    `listen()`; after a dropped connection it resubscribes (with the core's backoff,
    `apalis_cli.retrying.keep_connected`) and wakes everyone, since a message may have been missed.
    A message that hands a task to a worker (`h` + MessagePack, lua/enqueue.lua) goes to the
    queue's `takers` instead, and wakes no one else: the task is that worker's.
    """

    def __init__(
        self,
        client: Any,
        prefix: str | None,
        control_prefix: str | None = None,
        control: ControlSignals | None = None,
    ) -> None:
        self._client = client
        self._prefix = prefix.encode() if prefix is not None else None
        self._control_prefix = control_prefix.encode() if control_prefix is not None else None
        self._control = control
        self._wakers: dict[str, Waker] = {}
        self.takers: dict[str, list[Callable[[list[Any]], None]]] = {}
        """Per queue, who reads the tasks handed to workers (each ignores other processes' workers)."""
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def waker(self, queue: str) -> Waker:
        """The waker of `queue`, listening from now on."""
        waker = self._wakers.get(queue)
        if waker is None:
            waker = self._wakers[queue] = Waker()
        self.start()
        return waker

    async def listen(self) -> None:
        """Listen from now on, and return once subscribed (a message published after this
        returns is heard, unless the connection drops)."""
        self.start()
        await self._subscribed.wait()

    def start(self) -> None:
        """Listen from now on (without waiting for the subscription)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="apalis-redis-wakeups")

    async def close(self) -> None:
        """Stop listening."""
        task, self._task = self._task, None
        if task is None:
            return
        # redis-py's read can swallow a cancellation that arrives as its reply does (seen as a
        # store close that never returned, its listener "cancelling" in get_message): ask again
        # until the listener has ended, as the worker does with its heartbeat.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()

    async def _listen(self) -> None:
        await keep_connected(self._session, what="redis pub/sub")

    async def _session(self, steady: Callable[[], None]) -> None:
        prefixes = [p for p in (self._prefix, self._control_prefix) if p is not None]
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(*(prefix + b"*" for prefix in prefixes))
            self._subscribed.set()
            self._wake_all()  # anything pushed while we were not listening
            steady()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None:
                    self._heard(message["channel"], message["data"])
        finally:
            self._subscribed.clear()
            with contextlib.suppress(Exception):
                await asyncio.shield(pubsub.aclose())

    def _heard(self, channel: bytes, data: bytes) -> None:
        if self._prefix is not None and channel.startswith(self._prefix):
            queue = channel[len(self._prefix) :].decode()
            if data[:1] == b"h":
                takers = self.takers.get(queue)
                if takers:
                    handed = msgpack.unpackb(data[1:], raw=True)
                    for take in takers:
                        take(handed)
                return
            waker = self._wakers.get(queue)
            if waker is not None:
                waker.notify()
        elif self._control is not None and self._control_prefix is not None:
            self._control.heard(channel[len(self._control_prefix) :].decode(), data)

    def _wake_all(self) -> None:
        for waker in self._wakers.values():
            waker.notify()
        if self._control is not None:
            self._control.missed()


class Connection:
    """One store's connection: the client, its scripts and its pub/sub listener, made by `open`.

    Queues take this, not their store. `wake_prefix` names the pub/sub channels that wake idle
    pollers (`<prefix><queue>`); without it, only pushes made in this process wake them.
    `control_prefix` names the control channels (`signals`: cancels and tasks' ends).
    """

    def __init__(
        self,
        url: str,
        client_name: str,
        scripts: Mapping[str, str],
        *,
        what: str,
        cluster: bool = False,
        wake_prefix: str | None = None,
        control_prefix: str | None = None,
    ) -> None:
        self.url = url
        self.client_name = client_name
        self.cluster = cluster
        self.contact = Contact()
        """This process's contact with the server: the orphan sweep waits for a steady one."""
        self.scripts: dict[str, Script] = {}
        """The registered scripts, by name (after `open`)."""
        self._texts = dict(scripts)
        self._what = what
        self._wake_prefix = wake_prefix
        self.control_prefix = control_prefix
        self.signals = ControlSignals()
        """Workers to tell of cancels and waiters to wake, heard on the control channels."""
        self._client: Any = None
        self._lane: Lane | None = None
        self._wakeups: Wakeups | None = None
        self._local: dict[str, Waker] = {}

    async def open(self) -> None:
        """Connect (one clear `BackendError` when the server cannot be reached) and register the
        scripts; idempotent."""
        if self._client is not None:
            return
        client = await connect_checked(self.url, self.client_name, self.contact, cluster=self.cluster)
        self._lane = None if self.cluster else Lane(client, self.contact)
        self.scripts = register(client, self._texts, self._lane)
        if self._wake_prefix is not None or self.control_prefix is not None:
            self._wakeups = Wakeups(client, self._wake_prefix, self.control_prefix, self.signals)
        self._client = client

    async def close(self) -> None:
        """Stop listening and release every connection."""
        if self._wakeups is not None:
            await self._wakeups.close()
            self._wakeups = None
        if self._lane is not None:
            lane, self._lane = self._lane, None
            await lane.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    @property
    def client(self) -> Any:
        """The redis-py client (after `open`)."""
        if self._client is None:
            raise BackendError(f"the {self._what} store is not open")
        return self._client

    async def listen(self) -> None:
        """Hear the control channels from now on (returns once subscribed)."""
        if self._wakeups is None:
            raise BackendError(f"the {self._what} store is not open")
        await self._wakeups.listen()

    def start_listening(self) -> None:
        """Hear the control channels from now on (a worker that registers: its cancels)."""
        if self._wakeups is not None:
            self._wakeups.start()

    def take_handed(self, queue: str, take: Callable[[list[Any]], None]) -> None:
        """Call `take` with every task handed over on `queue`'s wake channel (lua/enqueue.lua):
        `[worker id, the 10 fields of claiming.lua]`, for whichever worker it is."""
        if self._wakeups is None:
            raise BackendError(f"the {self._what} store is not open")
        takers = self._wakeups.takers.setdefault(queue, [])
        if take not in takers:
            takers.append(take)

    def waker(self, queue: str) -> Waker:
        """What wakes the idle pollers of `queue`: its pub/sub channel, or pushes in this process."""
        if self._wake_prefix is not None:
            if self._wakeups is None:
                raise BackendError(f"the {self._what} store is not open")
            return self._wakeups.waker(queue)
        return self._local.setdefault(queue, Waker())


class OnConnection:
    """What a store on one `Connection` shows of it (Redis and rsmq): open, close, the client and
    the name its connections give the server. A helper base: each store builds its connection."""

    connection: Connection

    async def open(self) -> None:
        """Connect and load the scripts; idempotent (queues are made on first use)."""
        await self.connection.open()

    async def close(self) -> None:
        """Stop listening and release every connection."""
        await self.connection.close()

    @property
    def client(self) -> Any:
        """The redis-py client (after `open`)."""
        return self.connection.client

    @property
    def client_name(self) -> str:
        """The name every connection of this store gives the server (`CLIENT LIST`)."""
        return self.connection.client_name
