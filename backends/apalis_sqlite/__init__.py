"""The embedded SQLite backend (`kind = "sqlite"`), the default store: a file, no server."""

from __future__ import annotations

from .backend import SqliteQueue, SqliteStore
from .config import SqliteConfig

__all__ = ["SqliteConfig", "SqliteQueue", "SqliteStore"]
