"""The memory backend in the conformance suite."""

from __future__ import annotations

from pathlib import Path

from apalis_cli.backend import Store, StoreSpec
from apalis_cli.memory import MemoryStore

from ..factory import StoreFactory


class MemoryFactory(StoreFactory):
    """A new in-process store per test."""

    kind = "memory"

    async def create(self, tmp_path: Path) -> Store:
        store = MemoryStore.from_spec(StoreSpec(name="conformance", kind="memory", url="memory://"))
        await store.open()
        return store


FACTORY = MemoryFactory()
