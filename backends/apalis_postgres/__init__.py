"""The PostgreSQL backend (`kind = "postgres"`): psycopg 3, SKIP LOCKED claims, LISTEN/NOTIFY."""

from __future__ import annotations

from .backend import PostgresStore
from .config import PostgresConfig

__all__ = ["PostgresConfig", "PostgresStore"]
