"""The PostgreSQL store: an asyncpg pool.

Writes run at READ COMMITTED and lock the rows they read-then-change (``Tx.for_update``), so
two replicas changing one token serialise on its row and the admin event's "before" is exactly
what was changed. Read-only transactions run at REPEATABLE READ so a multi-query read (the
directory's snapshot) sees one consistent state. Migrations take a transaction-scoped advisory
lock so replicas starting together migrate once.

Extra query parameters in the URL become server settings (an asyncpg feature), so
``postgresql://…/db?search_path=custos`` keeps custos's tables in their own schema.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from custos.state.errors import Conflict, Invalid, StoreError
from custos.state.store import Row, SessionLock, Store, Tx

#: Advisory lock key for migrations: the bytes of "custos" as an integer.
MIGRATION_LOCK_KEY = int.from_bytes(b"custos", "big")
#: The second key of the two-key advisory locks ``Tx.lock`` and ``Store.session_lock`` take, so
#: that two schemas in one database (tests, tenants) never contend.
_SCHEMA_KEY = "hashtext(current_schema())"
#: ``Store.time_bucket``.
_TIME_BUCKETS = {
    "day": "to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "month": "to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM')",
    "quarter": "to_char({0} AT TIME ZONE 'UTC', 'YYYY-\"Q\"Q')",
}


def _translate(exc: asyncpg.PostgresError) -> StoreError:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return Conflict(f"a record with this value already exists ({exc.constraint_name})")
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return Conflict("the change would leave a reference to a missing record")
    return Invalid(f"the change breaks a rule of the schema ({exc.constraint_name or exc})")


_CONSTRAINT_ERRORS = (asyncpg.IntegrityConstraintViolationError,)


class _AdvisorySessionLock:
    """A session-level advisory lock, held by a connection of its own (outside the pool) for as
    long as that connection lives: if the process dies, PostgreSQL releases the lock."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def alive(self) -> bool:
        if self.conn.is_closed():
            return False
        try:
            await asyncio.wait_for(self.conn.fetchval("SELECT 1"), 5)
        except Exception:
            return False
        return True

    async def release(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.conn.close(), 5)
        if not self.conn.is_closed():
            self.conn.terminate()


class PostgresStore(Store):
    dialect = "postgresql"
    serial_writes = False
    text_nul = "\ufffd"
    _migration_lock_sql = f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
    _migrations_table_sql = (
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
        " name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL);"
    )

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10) -> None:
        super().__init__()
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=self._min_size, max_size=self._max_size
        )
        encoding = await self._pool.fetchval("SELECT current_setting('server_encoding')")
        if encoding != "UTF8":
            await self.close()
            raise StoreError(
                f"the PostgreSQL database uses the {encoding} encoding; custos needs UTF8 (audit"
                " records are UTF-8 text the database parses, and names may hold any character)."
                " Create the database with ENCODING 'UTF8'."
            )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def session_lock(self, key: int) -> SessionLock | None:
        conn = await asyncpg.connect(self.dsn)
        try:
            got = await conn.fetchval(f"SELECT pg_try_advisory_lock($1, {_SCHEMA_KEY})", key)
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return None
        return _AdvisorySessionLock(conn)

    @staticmethod
    def time_bucket(column: str, unit: str) -> str:
        return _TIME_BUCKETS[unit].format(column)

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[Tx]:
        if self._pool is None:
            raise StoreError("the store is closed")
        async with self._pool.acquire() as conn:
            isolation = "repeatable_read" if readonly else "read_committed"
            async with conn.transaction(isolation=isolation, readonly=readonly):
                yield _PostgresTx(conn)


class _PostgresTx:
    dialect = "postgresql"
    for_update = " FOR UPDATE"
    serial_writes = False
    text_nul = "\ufffd"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            status = await self._conn.execute(sql, *args)
        except _CONSTRAINT_ERRORS as exc:
            raise _translate(exc) from exc
        # The status is e.g. "UPDATE 3" or "INSERT 0 1": the row count is the last word.
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        try:
            await self._conn.executemany(sql, list(args))
        except _CONSTRAINT_ERRORS as exc:
            raise _translate(exc) from exc

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._conn.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row = await self._conn.fetchrow(sql, *args)
        return None if row is None else dict(row)

    async def run_script(self, script: str) -> None:
        # Without arguments asyncpg uses the simple query protocol, which runs several
        # statements in one call, inside the open transaction.
        await self._conn.execute(script)

    async def lock(self, key: int, *, shared: bool = False) -> None:
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        await self._conn.execute(f"SELECT {function}($1, {_SCHEMA_KEY})", key)

    @asynccontextmanager
    async def erasing(self) -> AsyncIterator[None]:
        yield  # dead rows leave the files with VACUUM, not per transaction

    @asynccontextmanager
    async def purge_window(self) -> AsyncIterator[None]:
        # The guard triggers read this transaction-local setting (migration 0005).
        await self.fetch("SELECT set_config('custos.audit_purge', 'on', true) AS purging")
        yield
        await self.fetch("SELECT set_config('custos.audit_purge', 'off', true) AS purging")
