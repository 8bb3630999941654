"""The audit log's health: latest checkpoint, legal holds, the last verification (run one
here), and a record with its inclusion proof as a download.

Every call is ``custos.audit.service``'s, the admin API's own (admin and auditor roles). A
verification reads the whole log (one at a time per process, as through the API); the page
answers when it is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from custos.admin import rights
from custos.audit import service as audit_service
from custos.audit.records.record import EVENT_TYPES
from custos.console.web import PREFIX, Request, Response, StreamResponse, redirect

log = logging.getLogger("custos.console")


async def page(c: Any, r: Request) -> Response:
    service, _ = c.service()
    status = await audit_service.log_status(service, r.principal)
    holds = await audit_service.holds(
        service, r.principal, audit_service.HoldsQuery.model_validate({"active": True})
    )
    return c.render(
        r, "audit.html", log=status, holds=holds.data, last=c.last_verification,
        can_hold=rights.is_admin(r.principal), event_types=sorted(EVENT_TYPES),
    )  # fmt: skip


@dataclass(slots=True)
class Verification:
    """A verification run from the console: running (``report`` is ``None``) or done."""

    started: str
    by: str
    total: int
    done: int = 0
    report: audit_service.VerifyOut | None = None
    error: str | None = None
    finished: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.report is None and self.error is None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def verify(c: Any, r: Request) -> Response:
    """Start a verification (one at a time); the audit page follows its progress."""
    service, _ = c.service()
    query = audit_service.VerifyQuery.model_validate(
        {k: v for k, v in (("from", r.form.get("from")), ("to", r.form.get("to"))) if v}
    )
    audit_service.check_verify(r.principal, query)  # refused now, not in the background
    current = c.last_verification
    if current is not None and current.running:
        return _flash(r, "A verification is running already.")
    status = await audit_service.log_status(service, r.principal)
    run = Verification(started=_now(), by=r.principal.name, total=status.log_size)

    def progress(done: int) -> None:
        run.done = done

    async def work() -> None:
        try:
            run.report = await audit_service.verify(service, r.principal, query, progress=progress)
        except Exception as exc:  # shown on the page; the log has the details
            log.exception("verification from the console failed")
            run.error = type(exc).__name__
        run.finished = _now()

    run.task = asyncio.create_task(work())
    c.last_verification = run
    return _flash(r, "Verification started.")


async def set_hold(c: Any, r: Request) -> Response:
    service, _ = c.service()
    body = audit_service.HoldCreate(
        team=r.form.get("team", "").strip() or None, reason=r.form.get("reason", "").strip()
    )
    hold = await audit_service.create_hold(service, r.principal, body)
    return _flash(r, f"Legal hold {hold.id} set on {hold.team or 'every record'}.")


async def release_hold(c: Any, r: Request) -> Response:
    service, _ = c.service()
    body = audit_service.HoldRelease(reason=r.form.get("reason", "").strip())
    hold = await audit_service.end_hold(service, r.principal, r.params["hold"], body)
    return _flash(r, f"Legal hold {hold.id} released.")


def _flash(r: Request, message: str) -> Response:
    assert r.session is not None
    r.session.flash.append(message)
    return redirect(f"{PREFIX}/audit")


async def export(c: Any, r: Request) -> StreamResponse:
    """The stored records (``custos audit export``, ``GET /admin/v1/audit/events``) as JSON
    lines, each line the stored bytes, page after page."""
    service, _ = c.service()
    values = {k: r.query[k] for k in ("from", "to", "event_type") if r.query.get(k)}

    async def page(after: int) -> audit_service.StoredRecordList:
        query = audit_service.EventsQuery.model_validate({**values, "after": after})
        return await audit_service.events(service, r.principal, query)

    first = await page(0)  # checks the role and the range before the download starts

    async def rest() -> AsyncIterator[bytes]:
        found = first
        while found.next_after is not None:
            found = await page(found.next_after)
            yield _lines(found)

    disposition = (b"content-disposition", b'attachment; filename="custos-audit.jsonl"')
    return StreamResponse(rest(), _lines(first), b"application/x-ndjson", [disposition])


def _lines(found: audit_service.StoredRecordList) -> bytes:
    return b"".join(e.record.encode() + b"\n" for e in found.data)


async def proof(c: Any, r: Request) -> Response:
    service, _ = c.service()
    ref = r.query.get("ref", "").strip()
    if not ref:
        return redirect(f"{PREFIX}/audit")
    documents = await audit_service.record_proofs(service, r.principal, ref)
    body = orjson.dumps({"ref": ref, "proofs": documents}, option=orjson.OPT_INDENT_2)
    safe = "".join(ch for ch in ref if ch.isalnum() or ch in "-_")[:80]
    return Response(200, body, b"application/json",
                    [(b"content-disposition", f'attachment; filename="custos-proof-{safe}.json"'
                      .encode())])  # fmt: skip
