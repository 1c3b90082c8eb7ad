"""The RSMQ backend (`kind = "rsmq"`): the rsmq 0.12 / pyrsmq data layout on Redis, so other
rsmq clients send us tasks and receive ours; see `apalis_rsmq.queue` for the mapping."""

from __future__ import annotations

from .store import RsmqStore

__all__ = ["RsmqStore"]
