"""The rsmq store's connection: the Redis one (`apalis_redis.connection.Connection`) with the
rsmq scripts, listening on rsmq's realtime channels when `realtime` is on, and on our control
channels (`ns:apalis-ctl:<q>`: cancels, waited-for tasks' ends)."""

from __future__ import annotations

import random

from apalis_redis.connection import Connection, lua

from .config import RsmqConfig

__all__ = ["connect_store"]

_SCRIPTS = ("create", "send", "receive", "ack", "beat", "kill", "retry", "cancel", "bulk", "browse", "counts")
_CONTROL = ("receive", "ack", "beat", "kill", "retry", "cancel", "bulk")  # start with lua/control.lua


def connect_store(config: RsmqConfig) -> Connection:
    """The connection of an rsmq store, unopened."""
    control, walk = lua("apalis_rsmq", "control"), lua("apalis_redis", "walk")
    texts = {
        name: (control if name in _CONTROL else "") + (walk if name == "browse" else "") + lua("apalis_rsmq", name)
        for name in _SCRIPTS
    }
    return Connection(
        config.url,
        f"apalis-rsmq:{config.namespace}:{random.getrandbits(48):012x}",
        texts,
        what="rsmq",
        wake_prefix=f"{config.namespace}:rt:" if config.realtime else None,
        control_prefix=f"{config.namespace}:apalis-ctl:",
        # Not run twice (apalis_redis.connection.Patience says why the others may be): the
        # server makes the ids of what send stores (a second run stores two copies), and a
        # second run of a bulk batch changes up to as many messages again.
        once=("send", "bulk"),
    )
