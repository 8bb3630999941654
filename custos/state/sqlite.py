"""The SQLite store: one connection, driven by one worker thread.

Why one thread: ``sqlite3`` calls block, so they must leave the event loop; and one connection
means one writer, which is what SQLite allows anyway. An ``asyncio.Lock`` gives each transaction
the connection to itself for its whole duration, so two coroutines never interleave statements in
one transaction (and never read each other's uncommitted rows).

The database runs in WAL mode (readers never block the writer; several gateway processes may open
the same file), with ``busy_timeout`` so a second process waits for the write lock instead of
failing, ``foreign_keys`` on (SQLite's default is off), and ``synchronous=FULL`` because admin
changes are rare and must survive a power cut. Writes start with ``BEGIN IMMEDIATE`` so the
write lock is taken up front rather than on the first write, which could fail half-way with
``SQLITE_BUSY`` and no way to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar, cast

from custos import private
from custos.state.errors import Conflict, Invalid, StoreError
from custos.state.migrations import split_sqlite_script
from custos.state.models import utcnow
from custos.state.store import Row, SessionLock, Store, Tx

T = TypeVar("T")

log = logging.getLogger("custos.state")

_PARAM = re.compile(r"\$(\d+)")


@lru_cache(maxsize=512)
def _sql(sql: str) -> str:
    """``$1`` → ``?1``: SQLite's numbered parameters, so one SQL text serves both dialects."""
    return _PARAM.sub(r"?\1", sql)


def _time_text(value: datetime) -> str:
    # Fixed width, always with microseconds, always UTC: text order is then time order, which
    # the snapshot's ``revoked_at > $1`` comparisons rely on.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


# Datetimes are bound as that text by the sqlite3 module itself: it looks an adapter up only for
# values that are not already an int, float, str, bytes or None, so binding the audit trail's
# thousands of rows a second costs no Python call per value.
sqlite3.register_adapter(datetime, _time_text)


def _translate(exc: sqlite3.IntegrityError) -> StoreError:
    message = str(exc)
    if message.startswith("UNIQUE"):
        column = message.rsplit(":", 1)[-1].strip()
        return Conflict(f"a record with this {column} already exists")
    if message.startswith("FOREIGN KEY"):
        return Conflict("the change would leave a reference to a missing record")
    return Invalid(f"the change breaks a rule of the schema ({message})")


def _create_private(path: str) -> None:
    """Create the database file 0600 before SQLite does (it would use the umask, 0644 as a
    rule); its -wal and -shm files take the database file's mode."""
    with contextlib.suppress(FileExistsError, FileNotFoundError):  # missing dir: SQLite says so
        os.close(private.open_fd(path, os.O_WRONLY | os.O_EXCL))


#: ``Store.time_bucket``: times are fixed-width ISO text in UTC, so each unit is a prefix.
_TIME_BUCKETS = {
    "day": "substr({0}, 1, 10)",
    "month": "substr({0}, 1, 7)",
    "quarter": "substr({0}, 1, 4) || '-Q' || ((CAST(substr({0}, 6, 2) AS INTEGER) + 2) / 3)",
}


class _AlwaysHeld:
    """The session lock where writes are serial: no other process needs keeping out."""

    async def alive(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class SQLiteStore(Store):
    dialect = "sqlite"
    serial_writes = True
    text_nul = "\x00"
    _migrations_table_sql = (
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
        " name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL);"
    )

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        super().__init__()
        self.path = path
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custos-sqlite")
        self._conn = await self._run(self._connect)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the module never opens transactions behind our back; we issue
        # BEGIN/COMMIT ourselves. check_same_thread=False only because close() may run after
        # the worker thread is gone; every statement still runs on the one worker thread.
        if self.path != ":memory:":
            _create_private(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        conn.execute("PRAGMA foreign_keys = ON")
        if self.path != ":memory:":
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise StoreError(f"could not put {self.path} in WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._run(self._conn.close)
                self._conn = None
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def checkpoint_wal(self) -> bool:
        """Copy the WAL into the database file and truncate the WAL to nothing, so that page
        images of rows since deleted (with ``secure_delete``) leave both files. False when a
        reader in another process kept it from completing (a later checkpoint truncates it)."""
        async with self._lock:
            conn = self.connection
            pragma = "PRAGMA wal_checkpoint(TRUNCATE)"
            row = await self._run(lambda: conn.execute(pragma).fetchone())
        busy = bool(row[0]) if row is not None else False
        if busy:
            log.warning("WAL checkpoint of %s incomplete: another connection is reading", self.path)
        return not busy

    @property
    def database_file(self) -> str | None:
        return self.path

    async def session_lock(self, key: int) -> SessionLock | None:
        return _AlwaysHeld()

    @staticmethod
    def time_bucket(column: str, unit: str) -> str:
        return _TIME_BUCKETS[unit].format(column)

    @property
    def connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._conn

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[Tx]:
        async with self._lock:
            conn = self.connection
            try:
                # BEGIN is inside the try: if the task is cancelled while the worker runs it,
                # the BEGIN still happens and must be rolled back. The worker runs jobs in order,
                # so the ROLLBACK queued below always comes after whatever is in flight.
                await self._run(conn.execute, "BEGIN" if readonly else "BEGIN IMMEDIATE")
                yield _SQLiteTx(self, conn)
                await self._run(conn.execute, "COMMIT")
            except BaseException:
                await asyncio.shield(self._run(_rollback, conn))
                raise

    async def run_transaction(
        self, body: Callable[[Tx], Coroutine[Any, Any, T]], *, readonly: bool = False
    ) -> T:
        """One hop to the worker thread for the whole transaction: ``BEGIN IMMEDIATE``, the
        body driven there (its ``tx`` methods run the statement at once instead of hopping),
        ``COMMIT``. A batch of audit records is some fifteen statements: fifteen hops, each a
        wake-up of both threads, cost more than the statements at a moderate rate."""
        async with self._lock:
            conn = self.connection
            return await self._run(_run_inline, _InlineTx(self, conn), body, readonly)


def _run_inline(tx: _InlineTx, body: Callable[[Tx], Coroutine[Any, Any, T]], readonly: bool) -> T:
    """``body(tx)`` in a transaction, on the worker thread (``SQLiteStore.run_transaction``)."""
    conn = tx._conn
    conn.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
    try:
        result = _drive(body(tx))
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return result


def _drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (every await it makes completes at once)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coroutine.close()
    raise RuntimeError("a transaction run on the store's thread awaited something besides tx")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class _SQLiteTx:
    dialect = "sqlite"
    for_update = ""
    serial_writes = True
    text_nul = "\x00"

    def __init__(self, store: SQLiteStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn

    # Each method does its whole job on the worker thread (statement and fetch), so a call is
    # one hop across threads.

    def _execute(self, sql: str, args: Sequence[Any]) -> int:
        try:
            return self._conn.execute(_sql(sql), args).rowcount
        except sqlite3.IntegrityError as exc:
            raise _translate(exc) from exc

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        try:
            return self._conn.executemany(_sql(sql), rows).rowcount
        except sqlite3.IntegrityError as exc:
            raise _translate(exc) from exc

    def _fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        return [dict(r) for r in self._conn.execute(_sql(sql), args).fetchall()]

    def _script(self, script: str) -> None:
        for statement in split_sqlite_script(script):
            self._conn.execute(statement)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._store._run(self._execute, sql, args)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> int:
        rows = args if isinstance(args, list) else list(args)
        return await self._store._run(self._executemany, sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._store._run(self._fetch, sql, args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def run_script(self, script: str) -> None:
        await self._store._run(self._script, script)

    async def lock(self, key: int, *, shared: bool = False) -> None:
        return None  # BEGIN IMMEDIATE already gave this transaction the database to itself

    @asynccontextmanager
    async def erasing(self) -> AsyncIterator[None]:
        await self.execute("PRAGMA secure_delete = ON")
        yield
        await self.execute("PRAGMA secure_delete = OFF")

    @asynccontextmanager
    async def purge_window(self) -> AsyncIterator[None]:
        # The guard triggers let a change through while this row exists (migration 0005).
        await self.execute(
            "INSERT INTO audit_purge_window (id, opened_at) VALUES (1, $1)", utcnow()
        )
        yield
        await self.execute("DELETE FROM audit_purge_window")


class _InlineTx(_SQLiteTx):
    """A ``_SQLiteTx`` already on the worker thread: each method runs its statement at once."""

    async def execute(self, sql: str, *args: Any) -> int:
        return self._execute(sql, args)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> int:
        return self._executemany(sql, args if isinstance(args, list) else list(args))

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return self._fetch(sql, args)

    async def run_script(self, script: str) -> None:
        self._script(script)
