"""Which real servers the tests may use, and what happens when one is absent.

On a developer's laptop a missing server skips its tests; with APALIS_REQUIRE_SERVICES=1 (CI)
a missing server fails them, never skips.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
from urllib.parse import urlsplit

import pytest

__all__ = ["need_binary", "need_module", "need_server", "test_url"]

DEFAULT_URLS = {
    "postgres": "postgresql://postgres@127.0.0.1:5432/test",
    "mysql": "mysql://root@127.0.0.1:3306/test",
    "redis": "redis://127.0.0.1:6379/0",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "nats": "nats://127.0.0.1:4222",
}
DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306, "redis": 6379, "amqp": 5672, "nats": 4222}


def test_url(service: str) -> str:
    """The URL of `service` for tests: APALIS_TEST_<SERVICE>_URL, or the local default."""
    return os.environ.get(f"APALIS_TEST_{service.upper()}_URL", DEFAULT_URLS[service])


def need_binary(name: str) -> str:
    """The path of program `name` (npm, redis-server, ...); skip without it, or fail under CI."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed"
    if os.environ.get("APALIS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"APALIS_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def need_module(name: str) -> object:
    """Module `name` (an optional extra's, such as uvloop); skip without it, or fail under CI,
    which installs every extra the tests use (`make venv`: `.[all,dev]`)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        reason = f"{name} is not installed ({exc})"
    if os.environ.get("APALIS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"APALIS_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def need_server(service: str) -> str:
    """The URL of `service` if its port answers; otherwise skip (or fail under CI)."""
    url = test_url(service)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[service]
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return url
    except OSError as exc:
        reason = f"{service} is not reachable at {host}:{port} ({exc})"
        if os.environ.get("APALIS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"APALIS_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
