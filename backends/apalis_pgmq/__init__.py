"""The pgmq backend (`kind = "pgmq"`): apalis tasks as messages of the real pgmq SQL API."""

from __future__ import annotations

from .backend import CAPABILITIES, PgmqStore
from .config import PgmqConfig
from .queue import PgmqQueue

__all__ = ["CAPABILITIES", "PgmqConfig", "PgmqQueue", "PgmqStore"]
