"""The rsmq key names of one queue and of its dead-letter queue."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RsmqKeys"]

DEAD_SUFFIX = "-dead"


@dataclass(frozen=True, slots=True)
class RsmqKeys:
    """`ns:<q>` (zset), `ns:<q>:Q` (hash), our side hash `ns:<q>:apalis`, and the same three for
    the dead-letter queue `<q>-dead`; our claims zset `ns:<q>:apalis:claims`; `ns:QUEUES` and the
    realtime channel `ns:rt:<q>`; our control record (`paused`, `waiting`, `end`) and control
    channel `ns:apalis-ctl:<q>`."""

    queue: str
    dead_queue: str
    queues: str
    zset: str
    hash: str
    side: str
    dead_zset: str
    dead_hash: str
    dead_side: str
    claims: str
    realtime: str
    control: str

    @classmethod
    def of(cls, namespace: str, queue: str) -> RsmqKeys:
        """The keys of `queue` under `namespace`."""
        dead = queue + DEAD_SUFFIX
        return cls(
            queue=queue,
            dead_queue=dead,
            queues=f"{namespace}:QUEUES",
            zset=f"{namespace}:{queue}",
            hash=f"{namespace}:{queue}:Q",
            side=f"{namespace}:{queue}:apalis",
            dead_zset=f"{namespace}:{dead}",
            dead_hash=f"{namespace}:{dead}:Q",
            dead_side=f"{namespace}:{dead}:apalis",
            claims=f"{namespace}:{queue}:apalis:claims",
            realtime=f"{namespace}:rt:{queue}",
            control=f"{namespace}:apalis-ctl:{queue}",
        )

    @property
    def paused(self) -> str:
        """Present while the queue is paused (lua/control.lua)."""
        return self.side + ":paused"

    @property
    def waiting(self) -> str:
        """The ids someone waits for."""
        return self.side + ":waiting"

    def end(self, task_id: str) -> str:
        """How a waited-for task ended done (rsmq deleted the message)."""
        return f"{self.side}:end:{task_id}"

    @property
    def all(self) -> list[str]:
        """The keys every script takes: queue zset, hash, side hash, the dead queue's three, and
        the claims zset."""
        return [self.zset, self.hash, self.side, self.dead_zset, self.dead_hash, self.dead_side, self.claims]
