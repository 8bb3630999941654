"""Opening a backend by its URL: the store (SQLite or PostgreSQL) and the counters (memory or
Redis).

The interfaces (``custos.state.store``, ``custos.state.counters``) do not import their
implementations; this module does, so an implementation may import its interface without a
loop. Each implementation is imported only when its URL asks for it: a single node on SQLite
never loads the PostgreSQL or Redis drivers.
"""

from __future__ import annotations

from custos.state.counters import Counters
from custos.state.errors import Invalid
from custos.state.store import ChangePublisher, Store


async def open_store(
    url: str, *, migrate: bool = True, publisher: ChangePublisher | None = None
) -> Store:
    """Open the store named by ``url`` and (unless ``migrate=False``) migrate it.

    ``sqlite:///./custos.db`` (relative path), ``sqlite:////var/lib/custos.db`` (absolute),
    ``sqlite:///:memory:`` (tests), ``postgresql://user@host:5432/db`` (any asyncpg DSN; extra
    query parameters such as ``?search_path=custos`` become server settings).
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    store: Store
    if not sep:
        raise Invalid(f"store URL {url!r} has no scheme: use sqlite:///PATH or postgresql://…")
    if scheme == "sqlite":
        from custos.state.sqlite import SQLiteStore

        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise Invalid("sqlite URL needs a path: sqlite:///./custos.db or sqlite:///:memory:")
        store = SQLiteStore(path)
    elif scheme in ("postgresql", "postgres"):
        from custos.state.postgres import PostgresStore

        store = PostgresStore(url)
    else:
        raise Invalid(f"unsupported store URL scheme {scheme!r}: use sqlite:// or postgresql://")
    await store.open()
    try:
        if migrate:
            await store.migrate()
    except BaseException:
        await store.close()
        raise
    store.publisher = publisher
    return store


async def migrate(url: str) -> list[int]:
    """Bring the database at ``url`` to the latest schema; what ``custos db migrate`` runs.

    Returns the versions applied (empty when it was up to date).
    """
    store = await open_store(url, migrate=False)
    try:
        return await store.migrate()
    finally:
        await store.close()


def open_counters(url: str, *, prefix: str = "custos:") -> Counters:
    """``memory`` or a ``redis://…`` URL (``rediss://`` for TLS)."""
    if url == "memory":
        from custos.state.counters_memory import MemoryCounters

        return MemoryCounters()
    if url.startswith(("redis://", "rediss://")):
        from custos.state.counters_redis import RedisCounters

        return RedisCounters(url, prefix=prefix)
    raise ValueError(f"state.counters must be 'memory' or a redis:// URL, not {url!r}")
