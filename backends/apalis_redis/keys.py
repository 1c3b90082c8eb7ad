"""The key names of one queue (see the layout in `apalis_redis.queue`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HANDING_FORMAT", "QueueKeys"]

HANDING_FORMAT = "v2"
"""The format of the idle listing and the tasks on their way (lua/handing.lua), in their keys'
names. A daemon reads only the keys of its own format: the first format (`idle` scored by
until_ms, `handed` holding one id) kept the same names, and an old daemon beside new ones read a
new listing as live for ever (handing tasks to dead workers) and overwrote a worker's list of
tasks on their way with one id (taking from the others the heartbeat's grace against a second
run). A new format takes new names: pushes of each format hand only to workers of their own,
and every other task reaches any worker as ready (its wake-up) as before."""


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """Every key of one queue shares the hash tag `{queue}`: one cluster slot per queue."""

    base: str
    ready: str
    scheduled: str
    running: str
    failed: str
    done: str
    killed: str
    cancelled: str
    paused: str
    workers: str
    winfo: str
    idle: str
    handed: str
    wake: str
    control: str

    @classmethod
    def of(cls, namespace: str, queue: str) -> QueueKeys:
        """The keys of `queue` under `namespace`."""
        base = f"{namespace}:{{{queue}}}:"
        return cls(
            base=base,
            ready=base + "ready",
            scheduled=base + "scheduled",
            running=base + "running",
            failed=base + "failed",
            done=base + "done",
            killed=base + "killed",
            cancelled=base + "cancelled",
            paused=base + "paused",
            workers=base + "workers",
            winfo=base + "winfo",
            idle=f"{base}idle:{HANDING_FORMAT}",
            handed=f"{base}handed:{HANDING_FORMAT}",
            wake=f"{namespace}:wake:{queue}",
            control=f"{namespace}:ctl:{queue}",
        )

    @property
    def statuses(self) -> list[str]:
        """The seven keys every control-plane script takes (lua/control.lua), in its order."""
        return [self.ready, self.scheduled, self.running, self.failed, self.done, self.killed, self.cancelled]

    @property
    def earlier_handing(self) -> list[str]:
        """The idle listing and the tasks on their way of the daemons before `HANDING_FORMAT`
        (`idle`, `handed`): never read here; the heartbeat drops their entries of workers gone."""
        return [self.base + "idle", self.base + "handed"]

    def task(self, task_id: str) -> str:
        """The hash of one task."""
        return f"{self.base}t:{task_id}"
