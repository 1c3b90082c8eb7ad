"""Scheduled tasks moved to the work subject when due, by every polling worker of the queue.

JetStream 2.9 has no delayed publish, so a task pushed for later waits on the schedule subject,
read through a consumer of its own: an early one is `nak`ed with the time it has left, a due
one is published to the work subject (deduplicated by its scheduled sequence) and then acked.
"""

from __future__ import annotations

import asyncio
import math
import time

from apalis_cli.polling import woken
from apalis_cli.retrying import delays
from nats.aio.msg import Msg

from . import messages as m
from .connection import FAILURES, Connection, Puller, unsubscribe, wakes

__all__ = ["move_due"]

_SCHEDULE_POLL = 0.25
_AWAY_CAP = 0.5
"""The longest wait between two looks while NATS is away (the client reconnects meanwhile)."""


async def move_due(conn: Connection, *, consumer: str, sched: str, work: str) -> None:
    """Move due tasks from `sched` (read by durable `consumer`) to `work`, until cancelled.

    The mover sleeps until the next due time it knows of, at most `_SCHEDULE_POLL`, or until a
    new scheduled push arrives."""
    stream = conn.config.stream
    client = await conn.client()
    puller = Puller(client, stream, consumer)
    wake = asyncio.Event()
    watch = await client.subscribe(sched, cb=wakes(wake))
    next_due = math.inf
    waits = delays(cap=_AWAY_CAP)
    try:
        while True:
            try:
                wake.clear()
                msgs = await puller.fetch(100)
                waits = delays(cap=_AWAY_CAP)  # NATS answered: the next outage backs off from the start
                now = time.time()
                due = []
                for msg in msgs:
                    run_at = m.envelope_of(msg.headers, "", 1).run_at
                    if run_at > now + 0.0005:
                        await msg.nak(delay=run_at - now + 0.001)
                        next_due = min(next_due, run_at)
                    else:
                        due.append(msg)
                if due:
                    await conn.publish_many([(work, msg.data, _moved_headers(msg, stream)) for msg in due])
                    for msg in due:
                        await msg.ack()
                if msgs:
                    continue
                if next_due < now - 1.0:
                    next_due = math.inf  # another mover took it
                pause = min(max(next_due - now, 0.002), _SCHEDULE_POLL)
                await woken(wake, pause)
            except FAILURES:
                await asyncio.sleep(next(waits))  # NATS is away: the client reconnects meanwhile
    finally:
        await unsubscribe(watch)
        await puller.close()


def _moved_headers(msg: Msg, stream: str) -> dict[str, str]:
    """A due task's headers for the work subject, deduplicated by its scheduled sequence (a
    mover that dies between publish and ack makes no second copy)."""
    seq = msg.metadata.sequence.stream
    task_id = m.envelope_of(msg.headers, f"{stream}-{seq}", 1).id
    return {**m.copy_headers(msg.headers, id=task_id), m.MSG_ID: f"{stream}:moved:{seq}"}
