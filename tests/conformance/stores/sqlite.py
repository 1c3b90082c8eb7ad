"""The SQLite backend in the conformance suite: a fresh database file per test."""

from __future__ import annotations

from pathlib import Path

from apalis_cli.backend import Store, StoreSpec
from apalis_sqlite import SqliteStore

from ..factory import StoreFactory


class SqliteFactory(StoreFactory):
    """A new database file under the test's tmp_path."""

    kind = "sqlite"

    async def create(self, tmp_path: Path) -> Store:
        spec = StoreSpec(name="conformance", kind="sqlite", url="sqlite:///conformance.db", base_dir=tmp_path)
        store = SqliteStore.from_spec(spec)
        await store.open()
        return store

    async def drop_connections(self, store: Store) -> None:
        # An embedded database has no server to kill the session: the store's connection is
        # closed out from under it, which every later operation sees as a broken connection.
        assert isinstance(store, SqliteStore)
        await store.db.drop()


FACTORY = SqliteFactory()
