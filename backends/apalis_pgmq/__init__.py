"""The pgmq backend (`kind = "pgmq"`): apalis tasks as messages of the real pgmq SQL API."""

from __future__ import annotations

from .store import PgmqStore

__all__ = ["PgmqStore"]
