"""How a backend joins the conformance suite: one `StoreFactory` in `stores/<kind>.py`.

Each module in `tests/conformance/stores/` defines `FACTORY`, an instance of a `StoreFactory`
subclass. The suite builds a fresh, isolated store per test through it (its own file, schema,
namespace or stream), so tests never see each other's tasks.
"""

from __future__ import annotations

from pathlib import Path

from apalis_cli.backend import Store


class StoreFactory:
    """Builds fresh stores of one kind for the conformance suite."""

    kind: str = ""
    stall_redelivers: str | None = None
    """Why a stall of a whole process, longer than `stale_after`, hands its running tasks to
    another worker by itself (a lease the server ends), or None: the store's sweep waits."""

    async def create(self, tmp_path: Path) -> Store:
        """A new, opened store isolated from every other test (call `need_server` here)."""
        raise NotImplementedError

    async def destroy(self, store: Store) -> None:
        """Close `store` and drop what `create` made (schema, namespace, stream)."""
        await store.close()

    async def drop_connections(self, store: Store) -> None:
        """Kill the store's connections from the server side (pg_terminate_backend, CLIENT
        KILL, ...), as a network failure or server restart would. Only called when the store
        declares the RECONNECT capability."""
        raise NotImplementedError

    async def reopen(self, store: Store) -> Store:
        """Close `store` and open a store over the same data, as a restarted daemon would: the
        default opens the same object again; a factory whose stores keep state on the server
        should return a new store object on the same schema/namespace (the caller closes it).
        `destroy` is still called with the original store."""
        await store.close()
        await store.open()
        return store

    def shutdown(self) -> None:
        """Stop what the factory started for the whole session (a private server); called once,
        after the last test."""
