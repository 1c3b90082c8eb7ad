"""The stores' Lua scripts, called the short way: EVALSHA written straight onto a connection of
the store's own and its reply read back.

redis-py's connections still do everything a connection must (AUTH, SELECT, CLIENT SETNAME,
TLS, unix sockets, the socket timeout on every read) and its retry policy still retries a
dropped connection (and tells `Contact`), but a call skips the rest of its command machinery:
the pool's lock and checks, the per-command observability hooks, the script object's checks,
and the `asyncio.wait_for` around every write (on Python 3.11 a task and a loop pass of its
own for a write that the socket took at once). One call cost about 75-100 µs of CPU through
`Script.__call__` and 30-35 µs this way (bench/README.md, "Where a lone task's time goes").

A script the server does not know (NOSCRIPT: a restarted or flushed server) is loaded and the
call made again. Pipelines (`client=`) and Redis Cluster, which routes each call to its slot's
node, go through redis-py's own script objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from apalis_cli.service import OutcomeKind

__all__ = ["OUTCOME_CODES", "Lane", "Script", "register"]

OUTCOME_CODES = {
    OutcomeKind.DONE: b"d",
    OutcomeKind.KILL: b"k",
    OutcomeKind.CANCEL: b"c",
    OutcomeKind.RETRY: b"r",
    OutcomeKind.RELEASE: b"l",
}
"""An outcome's kind as Redis's and rsmq's acknowledgement scripts read it: one byte."""


class Lane:
    """The store's own connections for script calls: one per call in flight, kept for reuse."""

    __slots__ = ("_all", "_idle", "_make")

    def __init__(self, client: Any) -> None:
        self._make = client.connection_pool.make_connection  # the client's settings and retry policy
        self._idle: list[Any] = []
        self._all: list[Any] = []  # as many as calls were ever in flight at once

    async def evalsha(self, script: Script, keys: Sequence[Any], args: Iterable[Any]) -> Any:
        """Run `script`; a dropped connection is retried as redis-py retries any command."""
        from redis.exceptions import NoScriptError, ResponseError

        if self._idle:
            conn = self._idle.pop()
        else:
            conn = self._make()
            self._all.append(conn)
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)

        async def dropped(error: Exception) -> None:
            await conn.disconnect(nowait=True)

        try:
            try:
                reply = await conn.retry.call_with_retry(lambda: _call(conn, command), dropped)
            except NoScriptError:
                await conn.retry.call_with_retry(lambda: _call(conn, ("SCRIPT", "LOAD", script.text)), dropped)
                reply = await conn.retry.call_with_retry(lambda: _call(conn, command), dropped)
        except ResponseError:
            self._idle.append(conn)  # the server refused the call: its reply was read in full
            raise
        except BaseException:
            # A call cut short may leave its reply on the wire: never reuse that connection.
            await conn.disconnect(nowait=True)
            raise
        self._idle.append(conn)
        return reply

    async def close(self) -> None:
        """Close every connection (a call still in flight fails as on a dropped connection)."""
        every, self._all, self._idle = self._all, [], []
        for conn in every:
            await conn.disconnect()


def _pack(command: tuple[Any, ...]) -> list[bytes] | None:
    """`command` in Redis's protocol, for arguments of the kinds the scripts take (bytes, str,
    int, float); None for any other (redis-py packs those). A third of the CPU time of redis-py's
    packing, which encodes each argument through generators and checks."""
    parts = [b"*%d\r\n" % len(command)]
    append = parts.append
    for arg in command:
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
    return [b"".join(parts)]


async def _call(conn: Any, command: tuple[Any, ...]) -> Any:
    """Write `command` and read its reply."""
    packed = _pack(command) or conn.pack_command(*command)
    writer = getattr(conn, "_writer", None)
    if not conn.is_connected or writer is None or writer.transport.is_closing():
        await conn.send_packed_command(packed, check_health=False)  # connects, maps errors
    else:
        writer.writelines(packed)
        if writer.transport.get_write_buffer_size():
            # The socket did not take it all at once: wait for it as redis-py does, bounded by
            # the socket timeout, its errors mapped to redis-py's.
            await conn.send_packed_command([], check_health=False)
    return await conn.read_response()


class Script:
    """One registered script: call it with `keys` and `args` (and `client=` a pipeline)."""

    __slots__ = ("_lane", "_slow", "sha", "text")

    def __init__(self, slow: Any, lane: Lane | None) -> None:
        self._slow = slow  # redis-py's script object: pipelines, clusters
        self._lane = lane
        self.sha: str = slow.sha
        self.text: str = slow.script

    async def __call__(self, keys: Sequence[Any] = (), args: Iterable[Any] = (), client: Any = None) -> Any:
        if client is not None or self._lane is None:
            return await self._slow(keys=keys, args=args, client=client)
        return await self._lane.evalsha(self, keys, args)


def register(client: Any, texts: Mapping[str, str], lane: Lane | None) -> dict[str, Script]:
    """The scripts `texts` (by name), registered with `client`, called through `lane` if any."""
    return {name: Script(client.register_script(text), lane) for name, text in texts.items()}
