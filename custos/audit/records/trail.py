"""``AuditTrail``: the one object the gateway talks to about auditing.

It turns what happened into sealed records and hands them to the writer. On the request path
it is the governance chain's first stage (``custos.stage``), so it settles last:

- ``enter(ctx)`` — first thing on the request path: 503 ``audit_unavailable`` while records
  cannot be made durable (see ``custos.audit.storage.writer`` for when);
- ``settle(ctx)`` — run exactly once per request whatever its outcome, after the other
  stages settled: builds that request's one ``llm.call`` record (``mcp.tool_call`` for a tool
  call through ``/mcp/*``);
- ``release(ctx)`` — awaited before a response (a stream's last chunk) is released: with
  ``durability: strict`` it waits until the request's record is durable, else returns at once;
- ``auth_failure(…)`` — a refused credential on ``/v1/models`` or the admin API;
- ``config_applied(loaded)`` — a revision began to be served (start, reload): its text goes to
  the store and a ``config.revision`` record to the writer;
- with ``audit.content`` other than ``none``, ``enter`` gives the request a capture object and
  ``settle`` adds the ``content.*`` fields to its record and queues its encrypted content
  with it (``custos.audit.records.content``); with ``none`` neither does anything more than today;
- a background task turns new rows of the store's ``admin_events`` into ``admin.change``
  records (written straight to the store with the cursor, in one transaction: the admin event
  itself is already durable, so no spool is needed).

Settings that can change on reload (``durability``, ``on_failure``, ``content``) are read from
the revision being served when they are needed (``content``: when a request is admitted).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from custos.audit.compliance.export import Exports
from custos.audit.gateway_info import GatewayInfo
from custos.audit.records import content, events
from custos.audit.records.record import NotCanonical, SealedRecord, seal
from custos.audit.storage.spool import Spool
from custos.audit.storage.store import AuditStore
from custos.audit.storage.writer import (
    STRICT_WAIT_S,
    AuditUnavailable,
    AuditWriter,
    WaitFor,
    failed,
)
from custos.config.audit import AuditSettings
from custos.errors import GatewayError
from custos.state.invalidation import Invalidation
from custos.telemetry import metrics

if TYPE_CHECKING:
    from custos.config.loader import LoadedConfig
    from custos.context import RequestContext
    from custos.state.store import Store

log = logging.getLogger("custos.audit")

#: How often the store's admin events are turned into records.
ADMIN_POLL_S = 0.5
#: Settled requests waiting for their record to be built (``settle``) beyond which they
#: are built at once: a flush that is late (a slow disk) must not hold requests in memory.
MAX_SETTLED = 2000


class AuditTrail:
    name = "audit"

    def __init__(
        self,
        store: Store,
        settings: Callable[[], AuditSettings],
        *,
        instance: str | None = None,
        base_dir: Path | None = None,
        worker: int | None = None,
    ) -> None:
        """``worker``: this process is worker ``worker`` of ``custos serve --workers``; it
        spools in ``<audit.spool.path>/worker-<worker>`` (a spool is one process's) and its
        records name the instance ``<instance>/worker-<worker>``."""
        self._settings = settings
        first = settings()
        instance = instance or socket.gethostname()
        if worker is not None:
            instance = f"{instance}/worker-{worker}"
        self.gateway = GatewayInfo(instance)
        self.store = AuditStore(store)
        spool_path = Path(first.spool.path)
        if base_dir is not None and not spool_path.is_absolute():
            spool_path = base_dir / spool_path
        if worker is not None:
            spool_path = spool_path / f"worker-{worker}"
        self.exports = Exports(first, self.gateway)
        self.writer = AuditWriter(
            self.store,
            Spool(spool_path, max_bytes=first.spool.max_bytes),
            flush_interval_s=first.flush_interval_ms / 1000,
            block=lambda: self._settings().on_failure == "block",
            export=self.exports if self.exports.sinks else None,
            prepare=self._build_settled,
            waiting=lambda: len(self._settled),
        )
        self._waiters: dict[str, asyncio.Future[None]] = {}
        #: Settled requests whose record is built at the writer's next flush (see settle),
        #: with the time each was settled.
        self._settled: list[tuple[RequestContext, int]] = []
        self._revision: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: ``audit.content`` of the revision being served; ``None`` for ``none``.
        self._capture: str | None = None
        sqlite_path = store.database_file
        self.content_keys = content.ContentKeys(
            lambda: content.master_key(self._settings().content_key, sqlite_path)
        )
        content.register(store, self.content_keys)
        # The store announces its changes (an erasure included) on the invalidation transport.
        if isinstance(store.publisher, Invalidation):
            store.publisher.subscribe(self.content_keys.forget)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, loaded: LoadedConfig) -> None:
        """Replay the spool, start writing, record the revision being served and catch up on
        admin events. Raises when the spool or the store cannot be used."""
        self._content_mode(loaded)
        await self.writer.start()
        await self._ingest_admin_events()
        await self._config(loaded, "start")
        self._tasks.append(asyncio.create_task(self._admin_loop(), name="custos-audit-admin"))

    async def close(self) -> None:
        if isinstance(self.store.store.publisher, Invalidation):
            self.store.store.publisher.unsubscribe(self.content_keys.forget)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._ingest_admin_events()
        except Exception:
            log.warning("audit: admin events not recorded at stop; recorded at next start")
        await self.writer.close()
        self.exports.close()

    # -- the request path ----------------------------------------------------------------------

    def enter(self, ctx: RequestContext) -> None:
        if self._capture is not None:
            ctx.capture = content.ContentCapture(self._capture, ctx.protocol)
        reason = self.writer.admit()
        if reason is not None:
            raise GatewayError(
                503,
                "audit_unavailable",
                f"The gateway cannot record requests right now ({reason}); try again shortly.",
                headers={"retry-after": "1"},
                stage="audit",
            )

    def settle(self, ctx: RequestContext) -> None:
        """Queue the request's ``llm.call`` record (never raises: a failure to build it is
        logged and counted, and the response goes out).

        With ``durability: batched`` the record is built and sealed at the writer's next
        flush (within ``flush_interval_ms``, the window in which a batched record becomes
        durable anyway), together with the others settled since: built one after the other,
        with the code and data in the processor's caches, records cost about a third less CPU
        than records built one per request in between the rest of the request path (measured
        under load). Everything a record says is in the context by now, and the time it was
        settled is kept. With ``strict``, or content capture, it is built at once."""
        wait_for = self._wait_for(ctx)
        if wait_for is None and ctx.capture is None:
            self._settled.append((ctx, time.monotonic_ns()))
            if len(self._settled) >= MAX_SETTLED:  # the flush is late: do not hold more
                self._build_settled()
            self.writer.notify()
            return
        self._build(ctx, time.monotonic_ns(), wait_for)

    def _build_settled(self) -> None:
        settled, self._settled = self._settled, []
        for ctx, ended_ns in settled:
            self._build(ctx, ended_ns, None)

    def _build(self, ctx: RequestContext, ended_ns: int, wait_for: WaitFor) -> None:
        attachment = None
        try:
            build = events.mcp_tool_call if ctx.mcp is not None else events.llm_call
            record, at_ms = build(ctx, self.gateway, ended_ns)
        except Exception:
            log.exception("audit: could not build the record of request %s", ctx.request_id)
            record, at_ms = events.unbuilt_llm_call(ctx, self.gateway, ended_ns)
        if ctx.capture is not None:
            attachment = self._capture_content(record, at_ms, ctx)
        try:
            sealed = self._seal_llm_call(record, at_ms, ctx.request_id)
        except Exception:  # not even the repaired record: the request goes without one
            log.exception("audit: request %s has no record", ctx.request_id)
            metrics.AUDIT_DROPPED.inc()
            if wait_for is not None:  # strict: the response is not released (503)
                self._waiters[ctx.request_id] = failed("its record could not be built")
                asyncio.get_running_loop().call_later(
                    STRICT_WAIT_S, self._waiters.pop, ctx.request_id, None
                )
            return
        stage = record["stopped_at"]
        if record["outcome"] == "denied" and stage is not None:
            metrics.DENIALS_BY_STAGE.labels(stage).inc()
        waiter = self.writer.submit(sealed, wait_for, attachment)
        if waiter is not None:
            self._waiters[ctx.request_id] = waiter
            waiter.add_done_callback(lambda _f: self._waiters.pop(ctx.request_id, None))

    def _seal_llm_call(self, record: dict[str, Any], at_ms: int, request_id: str) -> SealedRecord:
        """Seal ``record``; one holding a value no record can is repaired (``events.repaired``),
        logged and counted in ``custos_audit_repaired_total``, and sealed with the repairs
        listed: the request keeps its one record."""
        try:
            return seal(record, at_ms=at_ms, check=False)  # built from typed fields
        except NotCanonical as exc:
            fixed = events.repaired(record)
            log.error("audit: the record of request %s was repaired (%s): %s", request_id,
                      ", ".join(fixed["audit.repaired"]), exc)  # fmt: skip
            metrics.AUDIT_REPAIRED.inc()
            return seal(fixed, at_ms=at_ms)

    async def release(self, ctx: RequestContext) -> None:
        """With ``durability: strict``, wait until the request's record is durable (503 when it
        cannot be made so in time)."""
        waiter = self._waiters.get(ctx.request_id)
        if waiter is None or ctx.client_disconnected:
            return
        try:
            await self.writer.wait(waiter)
        except AuditUnavailable as exc:
            raise GatewayError(
                503,
                "audit_unavailable",
                f"The gateway could not make this request's audit record durable ({exc}).",
                headers={"retry-after": "1"},
                stage="audit",
            ) from None

    def _capture_content(
        self, record: dict[str, Any], at_ms: int, ctx: RequestContext
    ) -> bytes | None:
        """The content fields of ``record`` and its encrypted content (``None``: none to
        store). A failure costs the content, never the record."""
        try:
            attachment = content.capture_into(record, at_ms, ctx, self.content_keys)
        except Exception:
            log.exception("audit: the content of request %s was not captured", ctx.request_id)
            return None
        return attachment.encode() if attachment is not None else None

    def _content_mode(self, loaded: LoadedConfig) -> None:
        mode = loaded.config.audit.content
        self._capture = None if mode == "none" else mode

    def _wait_for(self, ctx: RequestContext) -> WaitFor:
        settings = ctx.runtime.config.audit
        if settings.durability != "strict":
            return None
        return "store" if settings.on_failure == "block" else "spool"

    # -- other events --------------------------------------------------------------------------

    def auth_failure(
        self, *, request_id: str, route: str, method: str, code: str, client: str | None
    ) -> None:
        try:
            record, at_ms = events.auth_failure(
                request_id=request_id,
                route=route,
                method=method,
                code=code,
                client=client,
                revision=self._revision or "",
                gateway=self.gateway,
            )
            self.writer.submit(seal(record, at_ms=at_ms))
        except Exception:
            log.exception("audit: could not record an authentication failure")

    def config_applied(self, loaded: LoadedConfig) -> None:
        """A reloaded revision is being served (called from ``Gateway.apply``)."""
        self._content_mode(loaded)
        task = asyncio.create_task(self._config(loaded, "reload"), name="custos-audit-config")
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _config(self, loaded: LoadedConfig, trigger: str) -> None:
        previous, self._revision = self._revision, loaded.revision
        text_sha256 = hashlib.sha256(loaded.text.encode()).hexdigest()
        record, at_ms = events.config_revision(
            revision=loaded.revision,
            previous=previous,
            text_sha256=text_sha256,
            source=loaded.source,
            trigger=trigger,
            gateway=self.gateway,
        )
        self.writer.submit(seal(record, at_ms=at_ms))
        # The text goes straight to the store (the config file itself is the copy that
        # survives a crash meanwhile); retried until the store takes it.
        delay = 0.2
        while True:
            try:
                await self.store.save_config_text(loaded.revision, loaded.text)
                return
            except Exception as exc:
                if trigger == "start":
                    raise
                log.warning("audit: config text not stored yet (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _admin_loop(self) -> None:
        while True:
            await asyncio.sleep(ADMIN_POLL_S)
            try:
                await self._ingest_admin_events()
            except Exception as exc:
                log.debug("audit: admin events not read (%s); retrying", exc)

    async def _ingest_admin_events(self) -> None:
        while True:
            records = await self.store.ingest_admin_events(self._admin_record)
            if not records:
                return
            for record in records:
                metrics.AUDIT_RECORDS.labels(record.event_type).inc()
            if self.exports.sinks:
                self.exports(records)

    def _admin_record(self, event: dict[str, Any]) -> SealedRecord:
        record, at_ms = events.admin_change(event, self.gateway)
        return seal(record, at_ms=at_ms)
