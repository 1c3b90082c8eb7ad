"""`Link`: one connection of the store's for its script calls, read by a protocol of its own.

redis-py makes and greets the connection (AUTH, HELLO, SELECT, CLIENT SETNAME, TLS, unix
sockets: everything the URL and the client's settings say); then this protocol takes its
transport over. A call writes its command and gets a future that the reply fulfils, parsed by
hiredis where it arrives (`data_received`): no stream reader, no task, no `asyncio.timeout`
per call. Calls in flight at once share the connection (replies come in the order the commands
were written), so a burst of pushes needs one connection, not one each.

A push one at a time cost 94-126 µs of the client's CPU through redis-py's connection (its
stream reader, a timeout context per read, its retry wrapper around every call) and 69-93 µs
this way (three interleaved pairs; bench/README.md, "Where a lone task's time goes").

The takeover reads redis-py's private attributes (the connection's stream writer and what its
reader holds unread). A redis-py that keeps them elsewhere gets `Plain` instead: its connection
used the ordinary way (`send_packed_command`, `read_response`), one call at a time, with one
debug line saying so; the store works as before, only slower.

A burst of calls larger than the transport's write buffer (its high-water mark, e.g. a server
that stopped reading) makes `crowded` true: the caller waits for `room()` before writing more,
so a stalled server does not make the client buffer every call in memory.

A reply that never comes (a peer gone without a reset) fails every call in flight with
redis-py's `TimeoutError` once `reply_within` seconds passed without any reply (checked by one timer per
connection, not one per call); a dropped connection fails them with its `ConnectionError`. The
caller retries on a new link: the scripts are safe to run twice. A caller cancelled while it
waits leaves its reply to be read and dropped: the connection stays in step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

__all__ = ["Link", "Plain", "open_line", "streams_of"]

log = logging.getLogger(__name__)


async def open_line(connection: Any, reply_within: float) -> Link | Plain:
    """A `Link` over redis-py's `connection` (connected and greeted by redis-py), or `Plain` when
    this redis-py's connection is not one a link can take over."""
    await connection.connect()
    streams = streams_of(connection)
    if streams is None:
        import redis

        log.debug(
            "redis-py %s keeps its connection's streams where this does not expect them: "
            "its %s is used the ordinary way, one call at a time",
            redis.__version__,
            type(connection).__name__,
        )
        return Plain(connection)
    return Link.take(connection, *streams, reply_within)


def streams_of(connection: Any) -> tuple[asyncio.StreamWriter, bytes] | None:
    """redis-py's stream writer of `connection` and the bytes its reader holds unread (none,
    after a greeting); None when they are not where this redis-py release was known to keep
    them (private attributes, `_writer` and `_reader._buffer`)."""
    writer = getattr(connection, "_writer", None)
    reader = getattr(connection, "_reader", None)
    if not isinstance(writer, asyncio.StreamWriter) or not isinstance(reader, asyncio.StreamReader):
        return None
    unread = getattr(reader, "_buffer", None)
    if not isinstance(unread, (bytes, bytearray)):
        return None
    return writer, bytes(unread)


class Link(asyncio.Protocol):
    """A connection redis-py opened, taken over for pipelined calls (`open`, `call`, `close`)."""

    def __init__(self, transport: asyncio.BaseTransport, reply_within: float) -> None:
        import hiredis
        from redis._parsers.base import BaseParser
        from redis.exceptions import InvalidResponse

        self._transport: Any = transport
        self._writer: Any = None
        self._timeout = reply_within
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._lost: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._replies = 0  # replies read so far, for the timer: did any come since it last looked?
        self._looked_at = -1
        # Its transport's loop, kept: `asyncio.get_running_loop()` makes a getpid system call
        # (CPython's check against a fork), one of five a push made.
        self._loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._room: asyncio.Future[None] | None = None  # set while the transport's buffer is full

    @classmethod
    async def open(cls, connection: Any, reply_within: float) -> Link:
        """A link over redis-py's `connection` (from the client's pool: its settings), connected
        and greeted by redis-py; the connection is this link's from now on. `TypeError` when
        this redis-py's connection cannot be taken over (`open_line` falls back instead)."""
        line = await open_line(connection, reply_within)
        if not isinstance(line, Link):
            await connection.disconnect()
            raise TypeError(f"cannot take over a {type(connection).__name__}")
        return line

    @classmethod
    def take(cls, connection: Any, writer: asyncio.StreamWriter, unread: bytes, reply_within: float) -> Link:
        """Take `connection`'s transport over (`writer` its stream writer, `unread` what its reader held)."""
        transport = writer.transport
        link = cls(transport, reply_within)
        link._writer = writer  # kept: a stream writer closes its transport when collected
        transport.set_protocol(link)
        # redis-py lets go of it (its streams unused from now on; no "unclosed" warning).
        connection._writer = connection._reader = None
        if unread:
            link.data_received(unread)
        return link

    @property
    def usable(self) -> bool:
        """False once the connection was lost or closed: make a new link."""
        return self._lost is None

    @property
    def crowded(self) -> bool:
        """True while the transport holds more than its high-water mark unsent: await `room()`
        before the next `call`."""
        return self._room is not None

    async def room(self) -> None:
        """Wait until the transport's buffer drained below its low-water mark (or the link was lost)."""
        room = self._room
        if room is not None:
            await asyncio.shield(room)

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        """Write one command (already packed in Redis's protocol); its reply fulfils the future
        (an error reply raises, as redis-py raises it: `ResponseError`, `NoScriptError`...)."""
        if self._lost is not None:
            raise self._lost
        reply: asyncio.Future[Any] = self._loop.create_future()
        self._waiting.append(reply)
        self._transport.write(packed)
        if self._timer is None:
            self._looked_at = -1
            self._timer = self._loop.call_later(self._timeout, self._look)
        return reply

    def close(self) -> None:
        """Close the connection; calls still in flight fail as on a dropped connection."""
        self._transport.close()
        from redis.exceptions import ConnectionError

        self._fail(ConnectionError("the connection was closed"))

    async def aclose(self) -> None:
        """`close`, and wait until the socket is closed (the loop closes it on a later turn)."""
        self.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(self._closed)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self._waiting
        reader.feed(data)
        while waiting:
            try:
                reply = reader.gets()
            except Exception as exc:  # bytes that are not Redis's protocol: nothing after is safe
                self._transport.close()
                self._fail(exc)
                return
            if reply is False:  # not a whole reply yet (RESP2 has no boolean)
                return
            self._replies += 1
            future = waiting.popleft()
            if future.done():
                continue  # its caller was cancelled: the reply is read and dropped
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        from redis.exceptions import ConnectionError

        self._fail(ConnectionError(f"Error while reading from the server: {exc or 'connection closed'}"))

    def eof_received(self) -> bool:
        return False  # the transport closes itself, then connection_lost fails what waits

    def pause_writing(self) -> None:
        if self._room is None:
            self._room = self._loop.create_future()

    def resume_writing(self) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    # -- the reply timer -------------------------------------------------------------------

    def _look(self) -> None:
        """Every `reply_within` seconds while calls wait: fail them all when no reply came since the last look."""
        self._timer = None
        if not self._waiting or self._lost is not None:
            return
        if self._replies == self._looked_at:
            from redis.exceptions import TimeoutError

            self._transport.abort()
            self._fail(TimeoutError(f"no reply from the server within {self._timeout:g} s"))
            return
        self._looked_at = self._replies
        self._timer = self._loop.call_later(self._timeout, self._look)

    def _fail(self, error: BaseException) -> None:
        if self._lost is None:
            self._lost = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, collections.deque()
        for future in waiting:
            if not future.done():
                future.set_exception(self._lost)
        self.resume_writing()  # who waits for room finds the link lost


class Plain:
    """redis-py's own connection used the ordinary way (`send_packed_command`, `read_response`),
    one call at a time: for a redis-py release whose connection `Link` cannot take over. The same
    calls as a link's; a dropped connection or a reply that never came fails the call with
    redis-py's `ConnectionError` or `TimeoutError`, and the link is not used again."""

    crowded = False  # redis-py's own write drains its stream writer

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._turn = asyncio.Lock()  # one command and its reply at a time, in the order called
        self._lost: BaseException | None = None

    @property
    def usable(self) -> bool:
        return self._lost is None

    async def room(self) -> None:
        return None

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        if self._lost is not None:
            raise self._lost
        return asyncio.ensure_future(self._ask(packed))

    async def _ask(self, packed: bytes) -> Any:
        from redis.exceptions import ConnectionError, TimeoutError

        async with self._turn:
            if self._lost is not None:
                raise self._lost
            try:
                # A call cancelled in flight: redis-py drops the connection, the next reconnects.
                await self._connection.send_packed_command(packed, check_health=False)
                return await self._connection.read_response()
            except (ConnectionError, TimeoutError) as error:
                self._lost = error
                raise

    async def aclose(self) -> None:
        if self._lost is None:
            from redis.exceptions import ConnectionError

            self._lost = ConnectionError("the connection was closed")
        with contextlib.suppress(Exception):
            await self._connection.disconnect(nowait=True)
