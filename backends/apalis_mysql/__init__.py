"""The MySQL/MariaDB backend (`kind = "mysql"`): asyncmy, SKIP LOCKED claims, batched acks."""

from __future__ import annotations

from .backend import MysqlStore
from .config import MysqlConfig

__all__ = ["MysqlConfig", "MysqlStore"]
