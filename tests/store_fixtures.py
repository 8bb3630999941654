"""Fixtures for the store tests: a fresh database per test, on SQLite and on PostgreSQL.

PostgreSQL tests run in a schema of their own (``custos_test_<random>``, chosen through the
URL's ``search_path``), dropped afterwards, so they neither see nor leave anything in the shared
database. Where PostgreSQL or Redis is unreachable the tests that need it are skipped, except
under CI (``CI`` set), where a missing service is a failure: CI must run the whole suite.

Override the servers with ``CUSTOS_TEST_PG_URL`` and ``CUSTOS_TEST_REDIS_URL``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from custos.state.backends import open_store
from custos.state.store import Store

PG_URL = os.environ.get("CUSTOS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CUSTOS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DIALECTS = ["sqlite", "postgresql"]


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable: {exc}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


_pg_probe: list[str | None] = []


async def require_pg() -> None:
    """Skip (or under CI fail) the test when PostgreSQL is unreachable; probes once per run."""
    if not _pg_probe:
        try:
            conn = await asyncpg.connect(PG_URL, timeout=3)
            await conn.close()
            _pg_probe.append(None)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            _pg_probe.append(str(exc) or type(exc).__name__)
    if _pg_probe[0] is not None:
        _unavailable(f"PostgreSQL at {PG_URL}", RuntimeError(_pg_probe[0]))


def with_search_path(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


async def create_pg_schema() -> str:
    """A new empty schema; returns its name."""
    schema = f"custos_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return schema


async def drop_pg_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=DIALECTS)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a fresh, empty database (not yet migrated), for each dialect."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'custos.db'}"
        return
    await require_pg()
    schema = await create_pg_schema()
    try:
        yield with_search_path(PG_URL, schema)
    finally:
        await drop_pg_schema(schema)


@pytest.fixture
async def pg_url(tmp_path: Path) -> AsyncIterator[str]:
    """A fresh PostgreSQL schema only (for tests of the cluster paths)."""
    await require_pg()
    schema = await create_pg_schema()
    try:
        yield with_search_path(PG_URL, schema)
    finally:
        await drop_pg_schema(schema)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An opened, migrated store on a fresh database, for each dialect."""
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        await client.ping()
    except (OSError, RedisError) as exc:
        _unavailable(f"Redis at {REDIS_URL}", exc)
    finally:
        await client.aclose()
    yield REDIS_URL
