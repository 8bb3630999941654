"""The audit log's health: latest checkpoint, legal holds, the last verification (run one
here), and a record with its inclusion proof as a download.

Every call is ``custos.audit.service``'s, the admin API's own (admin and auditor roles). A
verification reads the whole log (one at a time per process, as through the API); the page
answers when it is done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson

from custos.admin import rights
from custos.audit import service as audit_service
from custos.audit.records.record import EVENT_TYPES
from custos.console.web import PREFIX, Request, Response, StreamResponse, redirect


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


async def verify(c: Any, r: Request) -> Response:
    service, _ = c.service()
    query = audit_service.VerifyQuery.model_validate(
        {k: v for k, v in (("from", r.form.get("from")), ("to", r.form.get("to"))) if v}
    )
    report = await audit_service.verify(service, r.principal, query)
    c.last_verification = (datetime.now(UTC).isoformat(timespec="seconds"), report)
    assert r.session is not None
    r.session.flash.append("Verification finished: " + ("OK" if report.ok else "FAILED"))
    return redirect(f"{PREFIX}/audit")


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
