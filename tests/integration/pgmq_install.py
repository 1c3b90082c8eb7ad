"""The real pgmq SQL (1.13.0, from the PyPI wheel `pgmq==1.1.4`) in a scratch database.

The install script cannot run twice on one database, so each test session loads it once into
its own `apalis_pgmq_<random>` database, dropped when the session ends; tests keep apart by
using their own queue names.
"""

from __future__ import annotations

import atexit
import importlib.resources
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

__all__ = ["PGMQ_VERSION", "pgmq_sql", "scratch_database", "with_database"]

PGMQ_VERSION = "1.13.0"
_WHEEL = "pgmq==1.1.4"
_made: dict[str, str] = {}


def pgmq_sql() -> str:
    """pgmq's install script, from the installed `pgmq` package or else its downloaded wheel."""
    try:
        files = importlib.resources.files("pgmq") / "sql"
        version = (files / "VERSION").read_text().strip()
        if version == PGMQ_VERSION:
            return (files / "pgmq.sql").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, _WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("pgmq-*.whl"))
        return zipfile.ZipFile(wheel).read("pgmq/sql/pgmq.sql").decode()


def with_database(url: str, database: str) -> str:
    """`url` with `database` in place of its own."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def scratch_database(url: str) -> str:
    """The URL of this session's database with pgmq installed, made on first call."""
    if url in _made:
        return _made[url]
    name = f"apalis_pgmq_{os.urandom(5).hex()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    made = with_database(url, name)
    atexit.register(_drop, url, name)
    with psycopg.connect(made) as conn:
        conn.execute(pgmq_sql())
    _made[url] = made
    return made


def _drop(url: str, name: str) -> None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error:
        pass
