"""The PostgreSQL backend (`kind = "postgres"`): psycopg 3, SKIP LOCKED claims, LISTEN/NOTIFY."""

from __future__ import annotations

from .store import PostgresStore

__all__ = ["PostgresStore"]
