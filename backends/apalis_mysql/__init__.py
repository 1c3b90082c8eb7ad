"""The MySQL/MariaDB backend (`kind = "mysql"`): asyncmy, SKIP LOCKED claims, batched acks."""

from __future__ import annotations

from .store import MysqlStore

__all__ = ["MysqlStore"]
