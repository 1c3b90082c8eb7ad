"""The stores' Lua scripts, called the short way: EVALSHA written straight onto a connection of
the store's own (`link.Link`) and its reply read back.

redis-py makes and greets that connection (AUTH, SELECT, CLIENT SETNAME, TLS, unix sockets) and
its retry policy retries a call that found it dropped (and tells `Contact`), but a call skips
the rest of its command machinery: the pool's lock and checks, the per-command observability
hooks, the script object's checks, the `asyncio.wait_for` around every write, the stream reader
and the timeout context around every read. One call cost about 75-100 µs of CPU through
`Script.__call__`, 30-35 µs written on a redis-py connection, less on the link
(bench/README.md, "Where a lone task's time goes").

A script the server does not know (NOSCRIPT: a restarted or flushed server) is loaded and the
call made again. Pipelines (`client=`) and Redis Cluster, which routes each call to its slot's
node, go through redis-py's own script objects.

A call that failed for want of the server is made again (`connection.Patience`), also when it
was sent and only its reply was lost: every script of the stores may run twice, except those
registered as `once` (rsmq's send, whose ids the server makes, and a bulk action's batch). Those
are made again only when nothing was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from apalis_cli.contact import Contact
from apalis_cli.errors import BackendError
from apalis_cli.service import OutcomeKind

from .link import Link, Plain, open_line

__all__ = ["OUTCOME_CODES", "Lane", "Script", "pack_items", "register"]

OUTCOME_CODES = {
    OutcomeKind.DONE: b"d",
    OutcomeKind.KILL: b"k",
    OutcomeKind.CANCEL: b"c",
    OutcomeKind.RETRY: b"r",
    OutcomeKind.RELEASE: b"l",
}
"""An outcome's kind as Redis's and rsmq's acknowledgement scripts read it: one byte."""


def _dropped() -> tuple[type[Exception], ...]:
    """redis-py's errors of a connection dropped or silent (imported when one was raised)."""
    from redis.exceptions import ConnectionError, TimeoutError

    return (ConnectionError, TimeoutError)


def _no_script() -> type[Exception]:
    """redis-py's error for a script the server does not know."""
    from redis.exceptions import NoScriptError

    return NoScriptError


class Lane:
    """The store's own connection for script calls (`link.Link`): every call in flight shares
    it, and one that fails for want of the server is retried on a new one."""

    __slots__ = ("_client", "_closed", "_contact", "_link", "_opening", "_unsure")

    def __init__(
        self,
        client: Any,
        contact: Contact | None = None,
        unsure: Callable[[Exception], Exception | None] = lambda error: None,
    ) -> None:
        self._client = client  # its pool makes the connections (its settings), its retry policy retries
        self._contact = contact
        self._unsure = unsure  # what to raise when a `once` call was sent and lost (None: not lost)
        self._link: Link | Plain | None = None
        self._opening: asyncio.Future[Link | Plain] | None = None
        self._closed = False

    def evalsha(self, script: Script, keys: Sequence[Any], args: Iterable[Any]) -> Awaitable[Any]:
        """Run `script`; a dropped connection is retried as redis-py retries any command."""
        args = tuple(args)
        head, tail = script.head(keys), pack_items(args)
        packed = None if head is None or tail is None else b"*%d\r\n%s%s" % (3 + len(keys) + len(args), head, tail)
        return self.send(script, keys, args, packed)

    async def send(self, script: Script, keys: Sequence[Any], args: Sequence[Any], packed: bytes | None) -> Any:
        """`evalsha` of a call already packed (`packed`: the whole EVALSHA of `keys` and `args` in
        Redis's protocol, or None to let redis-py pack it on the slow way)."""
        link = self._link
        if packed is not None and link is not None and link.usable:
            # The common case, in one try: an open link, a script the server knows. The except
            # clauses import redis-py's errors only when something was raised: an import
            # statement run on every call took 1-5 us, a tenth of a push's CPU at worst.
            try:
                if link.crowded:  # the transport's buffer is full: the server reads slower than we write
                    await link.room()
                reply = await link.call(packed)
            except _dropped() as error:
                if self._contact is not None:
                    self._contact.lost()  # as redis-py's retry policy tells it (connection.py)
                unsure = None if script.repeatable else self._unsure(error)
                if unsure is not None:
                    raise unsure from error  # sent, perhaps run: never sent again
            except _no_script():
                pass  # loaded the slow way, then called again
            else:
                if self._contact is not None:
                    self._contact.reached()
                return reply
        # The slow way: a new link, a reload, redis-py's retry policy.
        return await self._slow(script, ("EVALSHA", script.sha, len(keys), *keys, *args))

    async def _slow(self, script: Script, command: tuple[Any, ...]) -> Any:
        from redis.exceptions import NoScriptError

        packed = _pack(command) or self._client.connection_pool.make_connection().pack_command(*command)
        retry = self._client.get_retry()

        async def call(what: bytes | list[bytes]) -> Any:
            link = await self._linked()  # failing here, nothing was sent: it may be tried again
            return await link.call(what if isinstance(what, bytes) else b"".join(what))

        async def once(what: bytes | list[bytes]) -> Any:
            link = await self._linked()
            try:
                return await link.call(what if isinstance(what, bytes) else b"".join(what))
            except Exception as error:
                unsure = self._unsure(error)
                if unsure is None:
                    raise
                raise unsure from error  # sent, perhaps run: never sent again

        last = call if script.repeatable else once

        async def dropped(error: Exception) -> None:
            link = self._link
            if link is not None and not link.usable:  # closed by its loss; another may be open
                self._link = None

        try:
            return await retry.call_with_retry(lambda: last(packed), dropped)
        except NoScriptError:
            load = _pack(("SCRIPT", "LOAD", script.text))
            assert load is not None
            await retry.call_with_retry(lambda: call(load), dropped)
            return await retry.call_with_retry(lambda: last(packed), dropped)

    async def _linked(self) -> Link | Plain:
        """The open link, or a new one (one connect at a time, shared by every call waiting)."""
        link = self._link
        if link is not None and link.usable:
            if link.crowded:
                await link.room()
            return link
        if self._closed:
            # A call that outlived its store (a worker's last release after the close): a new
            # connection would never be closed.
            raise BackendError("the redis store is closed")
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        opening = self._opening
        try:
            return await asyncio.shield(opening)
        finally:
            if self._opening is opening and opening.done():
                self._opening = None

    async def _open(self) -> Link | Plain:
        pool = self._client.connection_pool
        connection = pool.make_connection()
        try:
            link = await open_line(connection, pool.connection_kwargs.get("socket_timeout") or _TIMEOUT)
        except BaseException:  # refused, or the lane closed meanwhile: no socket left open
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)
            raise
        self._link = link
        return link

    async def close(self) -> None:
        """Close the connection (a call still in flight fails as on a dropped connection); no
        call opens one again."""
        self._closed = True
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening
        link, self._link = self._link, None
        if link is not None:
            await link.aclose()


_TIMEOUT = 10.0  # a reply's wait when the client has no socket timeout


def _pack(command: tuple[Any, ...]) -> bytes | None:
    """`command` in Redis's protocol, for arguments of the kinds the scripts take (bytes, str,
    int, float); None for any other (redis-py packs those). A third of the CPU time of redis-py's
    packing, which encodes each argument through generators and checks."""
    items = pack_items(command)
    return None if items is None else b"*%d\r\n%s" % (len(command), items)


def pack_items(items: Sequence[Any]) -> bytes | None:
    """`items` as the bulk strings of a command in Redis's protocol (no count before them); None
    for a kind `_pack` does not take."""
    parts: list[bytes] = []
    append = parts.append
    for arg in items:
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif kind is str:
            data = arg.encode()
        elif kind is int:
            data = b"%d" % arg
        elif kind is float:
            data = repr(arg).encode()
        else:
            return None
        append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Script:
    """One registered script: call it with `keys` and `args` (and `client=` a pipeline)."""

    __slots__ = ("_head", "_lane", "_slow", "repeatable", "sha", "text")

    def __init__(self, slow: Any, lane: Lane | None, *, repeatable: bool = True) -> None:
        self._slow = slow  # redis-py's script object: pipelines, clusters
        self._lane = lane
        self.sha: str = slow.sha
        self.text: str = slow.script
        self.repeatable = repeatable
        """False: a second run would do its work twice (sent again only if never sent)."""
        self._head: tuple[tuple[Any, ...], bytes | None] | None = None

    def head(self, keys: Sequence[Any]) -> bytes | None:
        """EVALSHA, the script's sha, the number of keys and `keys`, packed (`pack_items`).

        Kept for the last tuple of keys asked for: a queue passes the same tuple on every push,
        claim and acknowledgement (a tuple: it cannot change while it is kept), so the part of a
        call that never changes is packed once (a push's 16 arguments took 4.9 us to pack, its 7
        own ones 2.3 us)."""
        kept = self._head
        if kept is not None and kept[0] is keys:
            return kept[1]
        packed = pack_items(("EVALSHA", self.sha, len(keys), *keys))
        if type(keys) is tuple:
            self._head = (keys, packed)
        return packed

    async def __call__(self, keys: Sequence[Any] = (), args: Iterable[Any] = (), client: Any = None) -> Any:
        if client is not None or self._lane is None:
            return await self._slow(keys=keys, args=args, client=client)
        return await self._lane.evalsha(self, keys, args)

    def packed(self, keys: Sequence[Any], args: Sequence[Any], packed: bytes) -> Awaitable[Any]:
        """The call `self(keys=keys, args=args)`, already packed by the caller (`packed`: the
        whole EVALSHA in Redis's protocol, as `head(keys)` and `args` pack): for the hot path,
        whose own packing knows its arguments' kinds. A cluster's call goes through redis-py."""
        if self._lane is None:
            return self._slow(keys=keys, args=args)  # type: ignore[no-any-return]
        return self._lane.send(self, keys, args, packed)


def register(client: Any, texts: Mapping[str, str], lane: Lane | None, once: Collection[str] = ()) -> dict[str, Script]:
    """The scripts `texts` (by name), registered with `client`, called through `lane` if any;
    those named in `once` must not run twice (see the module's docstring)."""
    return {
        name: Script(client.register_script(text), lane, repeatable=name not in once) for name, text in texts.items()
    }
