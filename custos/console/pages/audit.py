"""The audit log's health: latest checkpoint, legal holds, the last verification (run one
here), and a record with its inclusion proof as a download.

Every call is ``custos.audit.service``'s, the admin API's own (admin and auditor roles). A
verification reads the whole log (one at a time per process, as through the API); the page
answers when it is done.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from custos.audit import service as audit_service
from custos.console.web import PREFIX, Request, Response, redirect


async def page(c: Any, r: Request) -> Response:
    service, _ = c.service()
    status = await audit_service.log_status(service, r.principal)
    holds = await audit_service.holds(
        service, r.principal, audit_service.HoldsQuery.model_validate({"active": True})
    )
    return c.render(r, "audit.html", log=status, holds=holds.data, last=c.last_verification)


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
