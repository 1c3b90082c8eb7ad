"""An acknowledgement's call of lua/ack.lua, packed around the parts that never change.

Of its seven arguments four are the queue's (its base, wake channel and control channel, and
the retention, which changes only with a heartbeat's settings): they are packed once, with the
EVALSHA, the sha and the keys, and each call packs only the clock's text, the outcomes and the
claims ahead. `pack_items` went over all seven, one type check and one `bytes` formatting
each, on every acknowledgement: on a lone task's worker path (asyncio), a twentieth of the
Python it runs (bench/README.md, "Redis, session 15"). A call with limited workers' claims
(lua/ack_limited.lua) is packed the ordinary way.
"""

from __future__ import annotations

from typing import Any

from .connection import Connection
from .scripts import Script, pack_items

__all__ = ["AckCall"]

_ARGS = 7  # base, now, wake, retention, outcomes, claims ahead, control


class AckCall:
    """The acknowledgements of one queue, through its store's connection."""

    __slots__ = ("_base", "_connection", "_control", "_kept", "_keys", "_wake")

    def __init__(
        self, connection: Connection, keys: tuple[bytes, ...], base: bytes, wake: bytes, control: bytes
    ) -> None:
        self._connection = connection  # its scripts are registered when the store opens
        self._keys = keys  # a tuple: the script packs it once (`Script.head`)
        self._base, self._wake, self._control = base, wake, control
        self._kept: tuple[Script, int, bytes, bytes, bytes] | None = None
        """The script and retention it was packed for, then the call up to the clock's text,
        the wake channel and retention, and the control channel, packed."""

    def args(self, now: str, retention: int, outcomes: bytes, claims: bytes) -> list[Any]:
        """lua/ack.lua's arguments (lua/ack_limited.lua takes one more after them)."""
        return [self._base, now, self._wake, retention, outcomes, claims, self._control]

    async def __call__(self, now: str, retention: int, outcomes: bytes, claims: bytes) -> Any:
        """lua/ack.lua with these arguments; its reply."""
        script = self._connection.scripts["ack"]
        kept = self._kept
        if kept is None or kept[0] is not script or kept[1] != retention:
            head = script.head(self._keys)
            base, middle = pack_items((self._base,)), pack_items((self._wake, retention))
            control = pack_items((self._control,))
            if head is None or base is None or middle is None or control is None:  # never: bytes and an int
                return await script(keys=self._keys, args=self.args(now, retention, outcomes, claims))
            count = 3 + len(self._keys) + _ARGS
            kept = self._kept = (script, retention, b"*%d\r\n%s%s" % (count, head, base), middle, control)
        # The clock's text is ASCII: its length in characters is its length in bytes.
        packed = b"".join(
            (
                kept[2],
                f"${len(now)}\r\n{now}\r\n".encode(),
                kept[3],
                b"$%d\r\n" % len(outcomes),
                outcomes,
                b"\r\n$%d\r\n" % len(claims),
                claims,
                b"\r\n",
                kept[4],
            )
        )
        return await script.packed(self._keys, self.args(now, retention, outcomes, claims), packed)
