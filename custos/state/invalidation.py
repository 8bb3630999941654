"""Invalidation: telling every replica's caches that something changed in the store.

One interface, three transports:

- ``MemoryInvalidation``: in-process, the single-node default;
- ``RedisInvalidation``: Redis pub/sub (redis-py asyncio);
- ``PostgresInvalidation``: PostgreSQL ``LISTEN``/``NOTIFY``.

Contract: ``publish(change)`` delivers the change to every subscriber of every instance on the
same channel, the publisher's own included. Delivery is at-most-once and fast (milliseconds): a
message sent while a subscriber was disconnected is lost, so after every reconnection a
subscriber is handed ``Change.everything()`` and must reload all it caches. Callers that need
certainty on top of that (the token directory) also refresh on a timer.

Callbacks are plain functions run on the event loop; they must be quick (the directory's only
sets a flag that its reload task waits on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable

import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from custos.state.models import Change

log = logging.getLogger("custos.state.invalidation")

Callback = Callable[[Change], None]

DEFAULT_CHANNEL = "custos_invalidation"

_BACKOFF_MIN_S = 0.1
_BACKOFF_MAX_S = 5.0


def encode(change: Change) -> str:
    return orjson.dumps({"kind": change.kind, "id": change.id}).decode()


def decode(payload: str | bytes) -> Change:
    """A received payload as a Change; anything unreadable means "reload everything"."""
    try:
        data = orjson.loads(payload)
        return Change(kind=str(data["kind"]), id=str(data["id"]))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        log.warning("unreadable invalidation message %r; reloading everything", payload)
        return Change.everything()


class Invalidation(ABC):
    """Publish store changes and deliver them to subscribers (see the module docstring)."""

    def __init__(self) -> None:
        self._callbacks: list[Callback] = []

    def subscribe(self, callback: Callback) -> None:
        """Call ``callback(change)`` for every change published from now on, by anyone."""
        self._callbacks.append(callback)

    def unsubscribe(self, callback: Callback) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def _deliver(self, change: Change) -> None:
        for callback in list(self._callbacks):
            try:
                callback(change)
            except Exception:
                log.exception("invalidation callback failed")

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Connect and subscribe; returns once changes published from now on will be seen."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Stop listening and release connections."""

    @abstractmethod
    async def publish(self, change: Change) -> None:
        """Announce a committed change."""


class MemoryInvalidation(Invalidation):
    """For one process: a publish is delivered to this instance's subscribers immediately."""

    async def publish(self, change: Change) -> None:
        self._deliver(change)


class RedisInvalidation(Invalidation):
    """Redis pub/sub on one channel; a background task listens and reconnects with backoff."""

    def __init__(
        self, url: str, *, channel: str = DEFAULT_CHANNEL, client_name: str = "custos-invalidation"
    ) -> None:
        super().__init__()
        self.url = url
        self.channel = channel
        #: Shown by Redis ``CLIENT LIST``, so operators can tell custos's connections apart.
        self.client_name = client_name
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self, timeout: float = 5.0) -> None:
        self._redis = aioredis.Redis.from_url(self.url, client_name=self.client_name)
        self._task = asyncio.create_task(self._listen(), name="custos-redis-invalidation")
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            await self.close()
            raise ConnectionError(f"could not subscribe to Redis at {self.url}") from None

    async def _listen(self) -> None:
        backoff = _BACKOFF_MIN_S
        first = True
        while True:
            pubsub = self._client().pubsub()
            try:
                await pubsub.subscribe(self.channel)
                if not first:
                    # Messages sent while we were away are gone: reload everything.
                    self._deliver(Change.everything())
                first = False
                self._subscribed.set()
                backoff = _BACKOFF_MIN_S
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._deliver(decode(message["data"]))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("Redis invalidation connection lost (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise ConnectionError("RedisInvalidation is not started")
        return self._redis

    async def publish(self, change: Change) -> None:
        await self._client().publish(self.channel, encode(change))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._redis is not None:
            client, self._redis = self._redis, None
            await client.aclose()


class PostgresInvalidation(Invalidation):
    """PostgreSQL ``LISTEN``/``NOTIFY`` on one channel, over a dedicated connection.

    The listening connection also sends ``pg_notify`` (behind a lock: an asyncpg connection runs
    one query at a time). If the connection drops, a background task reconnects with backoff and
    hands subscribers ``Change.everything()``.
    """

    def __init__(self, dsn: str, *, channel: str = DEFAULT_CHANNEL) -> None:
        super().__init__()
        self.dsn = dsn
        self.channel = channel
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._reconnect_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._connect()

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        await conn.add_listener(self.channel, self._on_notify)
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn

    def _on_notify(self, _conn: asyncpg.Connection, _pid: int, _channel: str, payload: str) -> None:
        self._deliver(decode(payload))

    def _on_terminated(self, _conn: asyncpg.Connection) -> None:
        if self._closed:
            return
        log.warning("PostgreSQL invalidation connection lost; reconnecting")
        self._conn = None
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        backoff = _BACKOFF_MIN_S
        while not self._closed:
            try:
                await self._connect()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("PostgreSQL invalidation reconnect failed (%s)", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            self._deliver(Change.everything())
            return

    async def publish(self, change: Change) -> None:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise ConnectionError("PostgreSQL invalidation is not connected")
            await conn.execute("SELECT pg_notify($1, $2)", self.channel, encode(change))

    async def close(self) -> None:
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close()


def open_invalidation(url: str | None, *, channel: str = DEFAULT_CHANNEL) -> Invalidation:
    """The transport for ``url``: ``None``/``memory`` → in process, ``redis://…``, or
    ``postgresql://…``. Call ``await inv.start()`` before use and ``await inv.close()`` after."""
    if url is None or url in ("", "memory"):
        return MemoryInvalidation()
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisInvalidation(url, channel=channel)
    if scheme in ("postgresql", "postgres"):
        return PostgresInvalidation(url, channel=channel)
    raise ValueError(f"unsupported invalidation URL {url!r}: use memory, redis:// or postgresql://")
