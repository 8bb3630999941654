"""Reading the audit trail of a test gateway straight from its store (SQLite file or PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import orjson

from custos.audit.records.record import SealedRecord, leaf_hash, unseal
from custos.audit.storage.store import AuditStore
from custos.state.backends import open_store
from custos.state.store import Store, Tx
from tests.conftest import GatewayProcess

T = TypeVar("T")


class FlakyStore(AuditStore):
    """An ``AuditStore`` whose writes fail (the store down) while ``down`` is set; counts the
    insert calls (``inserts``) and the records they stored (``inserted``)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.down = False
        self.inserts = 0
        self.inserted = 0

    async def insert(
        self, records: Sequence[SealedRecord], attachments: Sequence[bytes] = ()
    ) -> None:
        self.inserts += 1
        if self.down:
            raise ConnectionError("the store is down")
        await super().insert(records, attachments)
        self.inserted += len(records)

    async def ping(self) -> None:
        if self.down:
            raise ConnectionError("the store is down")


@asynccontextmanager
async def unguarded(store: Store) -> AsyncIterator[Tx]:
    """A transaction with the audit tables' guard triggers out of the way, as whoever owns the
    database can do: on PostgreSQL triggers are off for the transaction (a superuser's
    ``session_replication_role``), on SQLite the guard triggers are dropped and re-created
    around the change. What tamper tests use to play the attacker."""
    async with store.transaction() as tx:
        if tx.dialect == "postgresql":
            await tx.execute("SET LOCAL session_replication_role = replica")
            yield tx
            return
        guards = await tx.fetch(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
            " AND name LIKE 'audit_guard_%'"
        )
        for guard in guards:
            await tx.execute(f"DROP TRIGGER {guard['name']}")
        yield tx
        for guard in guards:
            await tx.execute(guard["sql"])


async def _query(store_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    store = await open_store(store_url, migrate=False)
    try:
        async with store.transaction(readonly=True) as tx:
            return await tx.fetch(sql, *args)
    finally:
        await store.close()


def query(store_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    return asyncio.run(_query(store_url, sql, *args))


def stored_records(store_url: str, event_type: str | None = None) -> list[dict[str, Any]]:
    """Every stored record (parsed), after checking its leaf hash matches its bytes and that
    the bytes are canonical (``unseal``: no float, integers in range, sorted keys)."""
    rows = query(store_url, "SELECT * FROM audit_events ORDER BY ingest_id")
    out = []
    for row in rows:
        body = bytes(row["record"])
        assert bytes(row["leaf_hash"]) == leaf_hash(body)
        record = unseal(body).fields
        if event_type is None or record["event_type"] == event_type:
            out.append(record)
    return out


def call_records(store_url: str, request_id: str) -> list[dict[str, Any]]:
    return [r for r in stored_records(store_url, "llm.call") if r["request_id"] == request_id]


def eventually(fetch: Callable[[], T], ok: Callable[[T], bool], timeout: float = 10.0) -> T:
    """``fetch()`` until ``ok`` holds of its result (then return it) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def one_call(store_url: str, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The one ``llm.call`` record of ``request_id``; fails unless there is exactly one (and
    still exactly one a moment later)."""
    found = eventually(lambda: call_records(store_url, request_id), bool, timeout)
    assert len(found) == 1, f"{len(found)} records for request {request_id}"
    time.sleep(0.15)  # a second record, if one were written, would be shipped by now
    again = call_records(store_url, request_id)
    assert len(again) == 1, f"{len(again)} records for request {request_id}"
    return found[0]


def serve_http(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """``handler`` serving on a loopback port in a daemon thread: the server and its URL
    (``server.shutdown()`` stops it)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def records_of(
    gw: GatewayProcess, request_id: str, client: httpx.Client | None = None
) -> list[dict[str, Any]]:
    """The ``llm.call`` records of one request, read through the admin API (``[]``: none)."""
    response = (client or httpx).get(
        f"{gw.url}/admin/v1/audit/requests/{request_id}", headers=gw.headers, timeout=10
    )
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    found = [orjson.loads(r["record"]) for r in response.json()["data"]]
    return [r for r in found if r["event_type"] == "llm.call"]


def recorded(
    gw: GatewayProcess, request_id: str, client: httpx.Client | None = None, timeout: float = 10
) -> dict[str, Any]:
    """The one ``llm.call`` record of ``request_id`` once stored (fails unless exactly one)."""
    found = eventually(lambda: records_of(gw, request_id, client), bool, timeout)
    assert len(found) == 1, f"{len(found)} records for request {request_id}"
    return found[0]


def integers_in(value: Any) -> Iterator[int]:
    """Every integer in a parsed record, however deep."""
    if isinstance(value, dict):
        for item in value.values():
            yield from integers_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from integers_in(item)
    elif type(value) is int:
        yield value


@dataclass
class Sent:
    """One request of a load run: its marker (in the metadata and the prompt), the status the
    client got (0: no complete response), the request id and when the response was complete."""

    marker: str
    status: int
    request_id: str | None
    done_at: float


class Load:
    """``workers`` clients sending chat requests in a loop, in a thread, until ``stop``."""

    def __init__(self, base_url: str, token: str, *, model: str = "openai-main/gpt-5.5",
                 workers: int = 8, prefix: str = "load") -> None:  # fmt: skip
        self.base_url, self.token, self.model = base_url, token, model
        self.workers, self.prefix = workers, prefix
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> list[Sent]:
        self._stop.set()
        self._thread.join(60)
        return list(self.sent)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.workers)
        async with httpx.AsyncClient(timeout=20, limits=limits) as client:
            await asyncio.gather(*(self._worker(client, w) for w in range(self.workers)))

    async def _worker(self, client: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            marker = f"{self.prefix}-{worker}-{n}"
            headers = {"authorization": f"Bearer {self.token}",
                       "x-custos-metadata": json.dumps({"run": marker})}  # fmt: skip
            body = {"model": self.model, "messages": [{"role": "user", "content": marker}]}
            try:
                response = await client.post(f"{self.base_url}/chat/completions", headers=headers,
                                             json=body)  # fmt: skip
                status, request_id = (
                    response.status_code,
                    response.headers.get("x-custos-request-id"),
                )
            except httpx.HTTPError:
                status, request_id = 0, None
                await asyncio.sleep(0.05)
            self.sent.append(Sent(marker, status, request_id, time.time()))


def markers_in_store(store_url: str) -> Counter[str]:
    """How many ``llm.call`` records carry each metadata ``run`` marker."""
    return Counter(
        r["metadata"]["run"]
        for r in stored_records(store_url, "llm.call")
        if "run" in r["metadata"]
    )
