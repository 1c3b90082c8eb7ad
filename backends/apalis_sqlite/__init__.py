"""The embedded SQLite backend (`kind = "sqlite"`), the default store: a file, no server."""

from __future__ import annotations

from .store import SqliteStore

__all__ = ["SqliteStore"]
