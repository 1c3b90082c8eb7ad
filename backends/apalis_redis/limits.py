"""Global limits and unique pushes on Redis: the claim within limits (`lua/limited.lua`, one
atomic script per claim, alone or carried by an acknowledgement, over the limit keys' lines of
`lua/lines.lua`) and a unique push's arguments for `lua/enqueue.lua`."""

from __future__ import annotations

import time
from typing import Any

import msgpack
from apalis_cli.backend import WorkerContext
from apalis_cli.fleet import FleetLimits, Unique
from apalis_cli.polling import Waker

__all__ = ["LimitedClaims", "limit_args", "line_sets", "unique_args"]


async def line_sets(client: Any, base: str) -> list[str]:
    """The limit keys' lines (`lua/lines.lua`), pending tasks out of the ready set: those of the
    keys listed in the heads and of the keys parked at their limit."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.zrange(base + "heads", 0, -1)
        pipe.zrange(base + "parked", 0, -1)
        heads, parked = await pipe.execute()
    return [base + "kp:" + key.decode() for key in sorted({*heads, *parked})]


def unique_args(unique: Unique) -> list[str]:
    """A unique push as enqueue.lua reads it: key, window end ('' = none), states, on_conflict."""
    until = "" if unique.until is None else repr(unique.until)
    return [unique.key, until, ",".join(unique.state_names()), unique.on_conflict]


def limit_args(limits: FleetLimits) -> list[Any]:
    """The limits as claim_limited.lua reads them."""
    return [
        -1 if limits.concurrency is None else limits.concurrency,
        int(limits.keyed_concurrency),
        -1 if limits.rate is None else limits.rate,
        repr(float(limits.per)),
        int(limits.keyed_rate),
    ]


class LimitedClaims:
    """One worker's claims within its global limits: where its last claim stopped among the
    parked keys, and a wake-up when a rate next lets a start through. A claim is either the
    worker's own (`claim`, lua/claim_limited.lua) or carried by the acknowledgement of its runs
    (`ack_fields` and `took`, lua/ack.lua as the script ack_limited)."""

    def __init__(self, script: Any, keys: list[bytes], base: bytes, worker: WorkerContext, waker: Waker) -> None:
        assert worker.limits is not None
        self._script, self._keys, self._base, self._worker_id = script, keys, base, worker.id
        self._limits = limit_args(worker.limits)
        self._waker = waker
        self._after = ""
        self._timer: Any = None

    async def claim(self, limit: int) -> list[Any]:
        """Claim up to `limit` tasks; the 10 fields of each, as claiming.lua lists them."""
        args = [self._base, repr(time.time()), limit, self._worker_id, *self._limits, self._after]
        return self.took(msgpack.unpackb(await self._script(keys=self._keys, args=args), raw=True))

    def ack_fields(self, limit: int) -> list[Any]:
        """A claim of up to `limit` tasks as ack.lua reads it from an acknowledgement."""
        return [self._worker_id, limit, self._after, *self._limits]

    def took(self, reply: list[Any]) -> list[Any]:
        """The tasks of a claim's reply {tasks, after, wake_at, more}; the next claim goes on
        from its `after`, and the worker is woken as it says."""
        tasks, after, wake_at, more = reply
        self._after = after.decode() if isinstance(after, bytes) else str(after)
        if more:
            self._waker.notify()  # a backlog of a key at its limit is being parked: go on at once
        elif wake_at:
            self._wake_at(float(wake_at))
        return list(tasks)

    def _wake_at(self, at: float) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(max(at - time.time(), 0.0), self._waker.notify)
