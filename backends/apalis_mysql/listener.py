"""Wake-ups across processes on MySQL/MariaDB, which has no LISTEN/NOTIFY.

A listener holds a connection of its own that sleeps in `SELECT SLEEP(n) /* apalis-wake <tag> */`;
a signal is `KILL QUERY` of every connection the server lists running that statement (the
`information_schema.PROCESSLIST`): the sleep ends at once with an error, the listener wakes its
pollers (or asks which runs have a cancel requested) and sleeps again. One tag per queue (a push
wakes only that queue's pollers) and one per store for the control plane (a cancel asked of a
running task, the end of a task someone waits for). The tags are digests of the database, table
prefix and queue, so the statement's text is plain hex whatever the names hold.

Measured here (MariaDB 10.11, loopback): a KILL QUERY ends the sleep within 0.2 ms; the
PROCESSLIST lookup costs 0.7-1 ms, so a signaller keeps the connection ids it found for a second
(`Signals`) and kills those first, then looks again when its list is older than that. KILL needs
the same user (or the CONNECTION ADMIN privilege): a connection it may not kill is skipped, and
its pollers find work by polling, as before.

A listener that starts sleeping on a new connection (a daemon or a waiter starting, a listener
reconnecting) would be missing from those lists until they go stale: it announces itself first,
by a signal to the control plane's listeners, and a process whose control listener is woken
looks its lists up again at its next signals (at most every `RECHECK_EVERY` per tag: a control
signal also says a task ended or a cancel was asked, and those may come often). A process that
listens to nothing (a plain producer) hears no announcement and keeps trusting its lists for
`KNOWN_FOR`; its pushes of one task go to an idle worker's listener by id anyway (`handing`).

A listener holds a named lock of its connection's id (`LIVE_LOCK`) for as long as that
connection lives: the server frees it when the connection ends, which another process can read
in a statement of its own (`IS_USED_LOCK`). A listener whose process was killed stays asleep on
the server for up to 5 s (MariaDB looks at a sleeping connection's client every 5 s of its
SLEEP), so a KILL QUERY of it succeeds; the server then answers the dead client, finds it gone
and ends the connection at once (0.2-0.5 ms after the KILL's answer here), freeing the lock
(`handing`: a task handed to such a listener is taken back).

A signal that arrives while a listener is between two sleeps is lost; so the listener sends its
next sleep before it wakes the pollers: they claim after it is on its way, and a push they miss
has a signal that finds it sleeping. A task nothing wakes for is still found by the pollers' idle
backoff (`poll_interval`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from apalis_cli.retrying import keep_connected

__all__ = ["LIVE_LOCK", "Listener", "Signals", "end_sleep", "gone", "sleep_statement", "tag", "vanished"]


SLEEP_S = 30  # a listener's sleep ends at least this often: a lost connection is noticed then
KNOWN_FOR = 1.0  # seconds a signaller trusts its list of sleeping listeners before looking again
RECHECK_EVERY = 0.1  # after its control listener was woken, a signaller looks again at most this often
ANNOUNCE_WITHIN = 1.0  # seconds a new listener's announcement may take before it listens without
LIVE_LOCK = "apalis-listen:"  # + the connection id: a named lock each listener holds while it lives
_INTERRUPTED = 1317  # "Query execution was interrupted": the KILL QUERY of a signal
_UNKNOWN_THREAD = 1094  # the connection is no more
_GONE = {_UNKNOWN_THREAD, 1095}  # or not the owner of the thread (another user's listener)

Conn = Any  # asyncmy ships no usable annotations for its Cython classes


def tag(*scope: str) -> str:
    """The tag of a queue (`database, prefix, queue`) or of a store's control plane (`database,
    prefix`): hex, safe inside a comment."""
    return hashlib.sha1("\0".join(scope).encode()).hexdigest()[:24] + ("q" if len(scope) > 2 else "c")


def gone(exc: BaseException) -> bool:
    """Whether `exc` is the server's answer to a KILL of a connection that is gone (its process
    stopped) or not ours to end."""
    return bool(exc.args) and exc.args[0] in _GONE


def vanished(exc: BaseException) -> bool:
    """Whether `exc` is the server's answer to a KILL of a connection that is no more (not of
    one that is another user's: that one is there)."""
    return bool(exc.args) and exc.args[0] == _UNKNOWN_THREAD


async def end_sleep(conn: Conn, listener: int) -> None:
    """End the sleep of the listener whose connection id is `listener` (raises what `gone`
    tells when that connection is no more)."""
    await conn.cursor().execute(f"KILL QUERY {int(listener)}")


def sleep_statement(tag: str) -> str:
    """The statement a listener of `tag` sleeps in, as the server lists it."""
    return f"SELECT SLEEP({SLEEP_S}) /* apalis-wake {tag} */"


class Listener:
    """One connection that sleeps under one tag and calls `woken()` when a signal ends its sleep
    (and once each time it is (re)connected: a signal may have been missed meanwhile). Once its
    first sleep on a connection is on its way, it awaits `announce()` (the other processes look
    their lists of sleeping listeners up again), then says it is `ready`."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Conn]],
        tag: str,
        woken: Callable[[], object],
        own: set[int],
        announce: Callable[[], Awaitable[object]],
    ) -> None:
        self._connect = connect
        self._own = own
        self.tag = tag
        self._woken = woken
        self._announce = announce
        self._statement = sleep_statement(tag)
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        """Set while a sleep is in place."""
        self.connection_id: int | None = None
        """The server's id of the listening connection, also in `own` (the signals sent from
        this process leave it out: they tell its pollers directly)."""
        self.connections = 0
        """How many connections it has listened on: a restarted server gives its ids out again
        from 1, so a listener that connected again may have the id it had before."""

    def start(self) -> None:
        """Start listening in the background (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"apalis-wake-{self.tag}")

    async def stop(self) -> int | None:
        """Stop listening; the connection id whose sleep the caller should end (`KILL`), since
        the server notices a closed connection only when its sleep ends."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.ready.clear()
        gone = self.connection_id
        self._forget_id()
        return gone

    @property
    def connection(self) -> tuple[int, int] | None:
        """Which connection it listens on, told apart from an earlier one that had the same id
        (its count of connections, then the id); None while it has none."""
        return None if self.connection_id is None else (self.connections, self.connection_id)

    def _forget_id(self) -> None:
        if self.connection_id is not None:
            self._own.discard(self.connection_id)
            self.connection_id = None

    async def _run(self) -> None:
        await keep_connected(self._session, what=f"wake-up listener {self.tag}")

    async def _session(self, steady: Callable[[], None]) -> None:
        conn = await self._connect()
        try:
            cursor = conn.cursor()
            await cursor.execute(f"SELECT CONNECTION_ID(), GET_LOCK(CONCAT('{LIVE_LOCK}', CONNECTION_ID()), 0)")
            self._forget_id()
            self.connection_id = int((await cursor.fetchone())[0])
            self.connections += 1
            self._own.add(self.connection_id)
            steady()
            woke = True  # (re)connected: a signal may have been missed
            announce = True  # a new connection: the others' lists lack it
            while True:
                sleeping = asyncio.ensure_future(self._sleep(cursor))
                await asyncio.sleep(0)  # the sleep is sent before the pollers claim
                if announce:
                    announce = False
                    # Before the pollers claim: a push after their claim finds this listener.
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(ANNOUNCE_WITHIN):
                            await self._announce()
                self.ready.set()
                if woke:
                    self._woken()
                woke = await sleeping
        except Exception:
            self._forget_id()  # its connection is lost: no hand-over is read under it meanwhile
            raise
        finally:
            self.ready.clear()
            with contextlib.suppress(Exception):
                conn.close()

    async def _sleep(self, cursor: Any) -> bool:
        """One sleep; True when a signal ended it."""
        try:
            await cursor.execute(self._statement)
            row = await cursor.fetchone()
        except Exception as exc:
            if exc.args and exc.args[0] == _INTERRUPTED:
                return True
            raise
        return bool(row and row[0])  # MySQL answers 1 to an interrupted SLEEP, MariaDB an error


class Signals:
    """The signalling side: which connections sleep under each tag, as last looked up, and the
    statements that end their sleeps."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[float, list[int]]] = {}
        self._rechecked: dict[str, float] = {}
        self._heard = float("-inf")
        self.own: set[int] = set()
        """This process's listeners: told directly, never killed."""

    def forget(self) -> None:
        """Look every tag up again (the connection to the server was lost: ids restart)."""
        self._known.clear()
        self._rechecked.clear()

    def heard(self) -> None:
        """This process's control listener was woken: maybe by a new listener announcing itself,
        so each list is looked up again at its next signal (at most every `RECHECK_EVERY`)."""
        self._heard = time.monotonic()

    async def send(self, conn: Conn, tag: str) -> None:
        """End the sleep of every other listener of `tag`: those known at once, then (when the
        list is older than `KNOWN_FOR`, or than the last announcement heard) the ones a fresh
        lookup finds besides."""
        now = time.monotonic()
        at, ids = self._known.get(tag, (0.0, []))
        recheck = self._heard >= at and now - self._rechecked.get(tag, float("-inf")) >= RECHECK_EVERY
        killed = await self._kill(conn, tag, ids)
        if not (recheck or now - at > KNOWN_FOR):
            return
        cursor = conn.cursor()
        await cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = %s", (sleep_statement(tag),))
        found = [int(row[0]) for row in await cursor.fetchall() if int(row[0]) not in self.own]
        # A listener between two sleeps (woken a moment ago, its next SLEEP not yet running) is
        # not in that list, yet there: the ids known before are kept (a connection that is gone
        # answers its next KILL with an error, which drops it from the list: `_kill`), and a list
        # that is empty is looked up again after `RECHECK_EVERY`, not `KNOWN_FOR` (a pusher at
        # 200/s whose lookup found its worker's listener between sleeps sent 131 signals to
        # nobody, and their tasks waited 0.5 s for the worker's idle claims).
        known = found + [i for i in self._known.get(tag, (0.0, []))[1] if i not in found]
        self._known[tag] = (now if known else now - KNOWN_FOR + RECHECK_EVERY, known)
        if recheck:
            self._rechecked[tag] = now
        await self._kill(conn, tag, [i for i in found if i not in killed])

    async def _kill(self, conn: Conn, tag: str, ids: list[int]) -> set[int]:
        """KILL QUERY each of `ids` in one round trip (a failed one is dropped from the list and
        the rest sent again); the ids killed."""
        killed: set[int] = set()
        while ids:
            cursor = conn.cursor()
            done = 0
            try:
                await cursor.execute(";".join(f"KILL QUERY {i}" for i in ids))
                done = 1
                while done < len(ids) and await cursor.nextset():
                    done += 1
                killed.update(ids)
                return killed
            except Exception as exc:
                if not gone(exc):
                    raise
                killed.update(ids[:done])
                lost = ids[done]
                at, known = self._known.get(tag, (0.0, []))
                self._known[tag] = (at, [i for i in known if i != lost])
                ids = ids[done + 1 :]
        return killed
