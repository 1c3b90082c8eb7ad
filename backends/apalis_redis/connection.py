"""Connections shared by the Redis-based stores: a named client that retries with capped
backoff, its registered scripts, and one pub/sub listener per store that wakes idle pollers.

Every connection is named with `CLIENT SETNAME` (`client_name`), so an operator (or a test) can
find and kill exactly this store's connections with `CLIENT LIST` / `CLIENT KILL`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from importlib import resources
from types import TracebackType
from typing import Any, TypeVar

from apalis_cli.contact import Contact
from apalis_cli.errors import BackendError, ConnectionLost, MissingExtra, describe_error
from apalis_cli.polling import Waker
from apalis_cli.redact import redact, redact_url, secrets_in
from apalis_cli.retrying import RECONNECT_BUDGET, retrying, tries_within, wait_after

from .config import cluster_seeds
from .scripts import Lane, Script, register
from .signals import ControlSignals
from .wakeups import Wakeups

__all__ = [
    "ACKNOWLEDGING",
    "Connection",
    "LinkKept",
    "OnConnection",
    "Patience",
    "connect",
    "connect_checked",
    "lua",
    "require_driver",
    "transient",
]

_COMMAND_TIMEOUT = 10.0  # far above any script's run time: the scripts work in bounded batches
_CONNECT_TIMEOUT = 5.0

T = TypeVar("T")


def require_driver(kind: str) -> None:
    """Raise `MissingExtra` when redis-py is not installed."""
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        raise MissingExtra(f"backend \"{kind}\" needs the extra: pip install 'apalis-cli[redis]'") from None


def transient(error: BaseException) -> bool:
    """An error that a later try may not meet: the server is away (refused, reset, timed out),
    loading its data after a restart (LOADING), a replica that is not (yet) the master
    (READONLY, MASTERDOWN), or a cluster between two configurations (TRYAGAIN, CLUSTERDOWN, no
    node reached). A refused password, a script's own error or NOSCRIPT are not."""
    from redis.exceptions import (
        AuthenticationError,
        AuthorizationError,
        ClusterDownError,
        ConnectionError,
        ReadOnlyError,
        RedisClusterUnreachableError,
        SlotNotCoveredError,
        TimeoutError,
        TryAgainError,
    )

    if isinstance(error, AuthenticationError | AuthorizationError):
        return False
    return isinstance(
        error,
        ConnectionError  # BusyLoadingError (LOADING) is one
        | TimeoutError
        | ReadOnlyError
        | TryAgainError
        | ClusterDownError  # MasterDownError (MASTERDOWN) is one
        | SlotNotCoveredError
        | RedisClusterUnreachableError
        | OSError,
    )


class Patience:
    """How a store's commands ride out an outage: the core's retry (`apalis_cli.retrying`), its
    backoff and its budget, in place of redis-py's own policy (which counted 12 tries, about 6 s).

    redis-py runs every command of the client, every pipeline and every script call of
    `scripts.Lane` through its connection's policy (`call_with_retry`); `policy()` is the one
    given to them. A first try that succeeds costs what redis-py's own did, less: no backoff
    object is reset, no wrapper awaited. Only a failure goes to `retrying`, which tries again
    with the shared backoff until `budget` seconds have passed since that failure, then raises
    one `ConnectionLost` line naming the store and its URL without the password.

    A command is tried again also when it was sent and only its reply was lost (a reset, a
    timeout, a server stopped after it ran the call), so each must be safe to run twice:
    - enqueue: a known task id (or idempotency key, unique key) returns the stored id, and
      inserts nothing twice;
    - claim, claim_limited, and the claims ahead of ack: the tasks a lost reply claimed stay
      claimed for the worker, whose next beat gives them back (lua/heartbeat.lua; rsmq's
      receive leaves them to their lease, and its beat gives them back too);
    - ack (both stores): an outcome applies only to a task its worker still holds; the second
      run finds it ended and leaves it alone;
    - heartbeat, farewell, beat: an upsert of the worker and sweeps of what is past its time;
    - cancel, kill, retry, purge (operators): each acts on a task in the state it expects,
      which a first run has left; the second answers as for a task already changed;
    - pause, resume, wait's registration, rsmq's create: a SET, DEL, ZADD or HSETNX of the same
      value; a PUBLISH sent twice wakes a poller twice;
    - reads (browse, heads, activity, counts, inspection): nothing changes.
    Two are not, and are tried again only when nothing was sent (`scripts.Script.repeatable`):
    rsmq's send (the server makes its ids: a second run stores a second copy), and a bulk
    action's batch (a second run would change up to as many tasks again, past the operator's
    limit).

    A Redis Cluster client counts tries, not time: it is given as many as `budget` holds
    (`cluster_policy`, its pipelines too), and a command it gave up on is tried again here for
    what is left of the budget (redis-py gives up early once no node answers a topology refresh);
    it does not retry on the nodes' own connections, and follows MOVED and ASK redirections
    without counting them as tries.
    """

    def __init__(self, what: str, secrets: Iterable[str], contact: Contact) -> None:
        self.what = what
        """The store and its URL, password hidden: the head of the line an outage ends with."""
        self.secrets = tuple(secrets)
        self.contact = contact
        self.budget = RECONNECT_BUDGET
        """Seconds a failing command is tried again (set it before `open` for a cluster)."""
        self._policy: Any = None

    def describe(self, error: BaseException) -> str:
        """`error` in one line, without the URL's secrets."""
        return describe_error(error, self.secrets)

    def unsure(self, error: BaseException) -> ConnectionLost:
        """The line for a call that was sent and lost its reply, and must not run twice."""
        return ConnectionLost(f"{self.what}: {self.describe(error)} (not sent again: it may have been done)")

    def policy(self) -> Any:
        """The redis-py retry policy of this store's connections (one object, shared by all)."""
        if self._policy is None:
            self._policy = _make_policy(self)
        return self._policy

    def cluster_policy(self) -> Any:
        """The retry count of a cluster client: the core's waits that fit in `budget`."""
        from redis.asyncio.retry import Retry
        from redis.backoff import AbstractBackoff

        class Core(AbstractBackoff):
            def compute(self, failures: int) -> float:
                return wait_after(failures)

        return Retry(Core(), tries_within(self.budget))

    async def again(
        self,
        error: Exception,
        do: Callable[[], Awaitable[T]],
        fail: Callable[[Exception, int], Awaitable[Any]],
        spent: float = 0.0,
    ) -> T:
        """After `do()` failed with `error`: `do()` again while its failures are transient,
        within the budget (less `spent` seconds already spent on it); `fail` (redis-py's: drop
        the connection) runs after each failure."""
        failures = 1
        if not transient(error):
            raise error
        self.contact.lost()
        await fail(error, failures)

        async def recover(again: BaseException) -> None:
            nonlocal failures
            failures += 1
            await fail(again, failures)  # type: ignore[arg-type]  # transient(): an Exception

        return await retrying(
            do,
            transient=transient,
            recover=recover,
            budget=self.budget - spent,
            what=self.what,
            describe=self.describe,
            contact=self.contact,
        )


def _make_policy(patience: Patience) -> Any:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    contact = patience.contact

    class Patient(Retry):
        async def call_with_retry(
            self,
            do: Callable[[], Awaitable[T]],
            fail: Callable[..., Awaitable[Any]],
            is_retryable: Callable[[Exception], bool] | None = None,
            with_failure_count: bool = False,
        ) -> T:
            try:
                result = await do()
            except Exception as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failed = fail if with_failure_count else (lambda error, _: fail(error))
                return await patience.again(error, do, failed)
            contact.reached()
            return result

        def __deepcopy__(self, memo: dict[int, Any]) -> Patient:
            return self  # redis-py copies the policy into every connection: it keeps no state

    return Patient(NoBackoff(), 0)


def connect(url: str, client_name: str, patience: Patience, *, cluster: bool = False, retry: Any = None) -> Any:
    """A redis-py asyncio client whose commands are tried again as `patience` says (unless
    `retry` says otherwise), with bytes replies. With `cluster`, a `RedisCluster` on the URL's
    seed nodes (`cluster_seeds`), which finds the others and sends each queue's scripts to the
    node of its slot; it counts its tries (`Patience.cluster_policy`), and what is left of the
    budget when it gives up is spent by `Patience.again` (it gives up early when no node
    answers), so it too fails in the same one line.

    A reply that never comes (a peer gone without a reset) times out after `_COMMAND_TIMEOUT`
    and counts as a dropped connection: an acknowledgement must never wait forever. Blocking
    pub/sub reads are exempt (redis-py reads them without a timeout)."""
    from redis.asyncio import Redis
    from redis.exceptions import ConnectionError, TimeoutError

    options: dict[str, Any] = {
        "client_name": client_name,
        "retry": retry or (patience.cluster_policy() if cluster else patience.policy()),
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

    class Cluster(RedisCluster):
        reached = retry is None
        """Whether a failed command is tried again for what is left of the budget: not until
        `connect_checked` reached the cluster once, so an unreachable one is one error at once
        (opening spent the whole budget, 29 s, in its PING)."""

        async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return await super().execute_command(*args, **kwargs)
            except Exception as error:
                if not self.reached:
                    raise
                # redis-py tried it as many times as the budget holds, but gives up before once
                # a topology refresh reached no node (every master away): what is left of the
                # budget is spent here, so a restart of the whole cluster is ridden out too.
                again = super().execute_command
                spent = time.monotonic() - started
                return await patience.again(error, lambda: again(*args, **kwargs), _no_drop, spent)

    first, others = cluster_seeds(url)
    return Cluster.from_url(first, startup_nodes=[ClusterNode(host, port) for host, port in others], **options)


async def _no_drop(error: Exception, failures: int) -> None:
    """A cluster client drops a failed node's connection by itself."""


def _once() -> Any:
    """A policy that tries once (opening, and the pub/sub connection: `keep_connected` retries)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Retry(NoBackoff(), 0)


async def connect_checked(url: str, client_name: str, patience: Patience, *, cluster: bool = False) -> Any:
    """`connect`, then one PING, so an unreachable server (or a refused password) is one clear
    `BackendError` at open, at once: the reconnect backoff is for a server lost while running
    (`apalis run` waits for a store that is not up yet by opening again with its own backoff)."""
    client = connect(url, client_name, patience, cluster=cluster, retry=_once())
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        where = "redis cluster" if cluster else "redis"
        raise BackendError(redact(f"cannot reach {where} at {url}: {exc}", secrets_in(url))) from None
    client.set_retry(patience.cluster_policy() if cluster else patience.policy())
    if cluster:
        client.reached = True
    return client


class LinkKept:
    """Raise a dropped connection (after redis-py's own retries) as `ConnectionLost`: a write
    that failed because the server is away, not because it refused what it was given.

    A class with nothing per use, so a hot path keeps one (`ACKNOWLEDGING`): a
    `contextlib.contextmanager` made a generator and two context objects on every ack, and
    imported redis's exceptions each time (six calls of a worker's acknowledgement)."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            return
        from redis.exceptions import ConnectionError, TimeoutError

        if isinstance(exc, ConnectionError | TimeoutError):
            raise ConnectionLost(f"redis: {self.what}: {exc}") from exc


ACKNOWLEDGING = LinkKept("acknowledging")
"""Around an acknowledgement's script call (every store on Redis)."""


def lua(package: str, name: str) -> str:
    """The text of `lua/<name>.lua` shipped in `package`."""
    return resources.files(package).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


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
        once: Collection[str] = (),
    ) -> None:
        self.url = url
        self.client_name = client_name
        self.cluster = cluster
        self.contact = Contact()
        """This process's contact with the server: the orphan sweep waits for a steady one."""
        self.patience = Patience(f"{what} at {redact_url(url)}", secrets_in(url), self.contact)
        """How its commands ride out an outage (`budget`: for how long)."""
        self.scripts: dict[str, Script] = {}
        """The registered scripts, by name (after `open`)."""
        self._texts = dict(scripts)
        self._once = frozenset(once)  # scripts that must not run twice (`scripts.Script.repeatable`)
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
        client = await connect_checked(self.url, self.client_name, self.patience, cluster=self.cluster)
        self._lane = None if self.cluster else Lane(client, self.contact, self._unsure)
        self.scripts = register(client, self._texts, self._lane, self._once)
        if self._wake_prefix is not None or self.control_prefix is not None:
            self._wakeups = Wakeups(
                client, self._wake_prefix, self.control_prefix, self.signals, cluster=self.cluster, once=_once
            )
        self._client = client

    def _unsure(self, error: Exception) -> Exception | None:
        """For a call that must not run twice and failed after it was sent: the one line to
        raise when the server was lost (the call may have been done), None for another error."""
        return self.patience.unsure(error) if transient(error) else None

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

    def wakes(self, queue: str) -> int:
        """How many times `queue`'s pollers were woken by its channel (a task made ready, or
        the listener reconnected: anything may have been missed); never by a hand-over."""
        return 0 if self._wakeups is None else self._wakeups.wakes.get(queue, 0)

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
