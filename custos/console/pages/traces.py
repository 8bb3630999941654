"""Request traces: the search page, one trace, and its records with their inclusion proofs.

What a principal may read is ``custos.audit.traces``'s rule, the same for the admin API's
``/audit/traces`` routes: a trace outside it is a 404 like a trace that does not exist.
"""

from __future__ import annotations

from typing import Any

import orjson

from custos.audit import traces
from custos.console.web import PREFIX, Request, Response, redirect

FILTERS = (
    ("since", "From (date or time)"),
    ("until", "To (date or time)"),
    ("team", "Team"),
    ("user", "User (email or id)"),
    ("account", "Virtual account"),
    ("model", "Model"),
    ("provider", "Provider account"),
    ("status", "HTTP status"),
    ("outcome", "Outcome"),
    ("data_class", "Data class"),
    ("guardrail", "Guardrail outcome"),
    ("request_id", "Request id"),
)


async def home(c: Any, r: Request) -> Response:
    return redirect(f"{PREFIX}/traces")


async def listing(c: Any, r: Request) -> Response:
    service, _ = c.service()
    query = traces.TraceFilter.of(r.query)
    page = await traces.search(service, r.principal, query)
    values = {name: r.query.get(name, "") for name, _ in FILTERS}
    return c.render(
        r,
        "traces.html",
        page=page,
        names=await _names(service, r.principal),
        filters=FILTERS,
        values=values,
        outcomes=traces.OUTCOMES,
        guardrails=traces.GUARDRAIL_OUTCOMES,
        next_query={**values, "before": page.next_before} if page.next_before else None,
        first_query=values if query.before else None,
    )


async def one(c: Any, r: Request) -> Response:
    service, _ = c.service()
    trace = await traces.get(service, r.principal, r.params["request"])
    views = [_view(record) for record in trace.records]
    return c.render(r, "trace.html", trace=trace, views=views)


async def proof(c: Any, r: Request) -> Response:
    """The request's records with their inclusion proofs, as a JSON download."""
    service, _ = c.service()
    request_id = r.params["request"]
    documents = await traces.proofs(service, r.principal, request_id)
    body = orjson.dumps({"request_id": request_id, "proofs": documents}, option=orjson.OPT_INDENT_2)
    return Response(
        200,
        body,
        b"application/json",
        [(b"content-disposition", _attachment(f"custos-trace-{request_id}.json"))],
    )


async def _names(service: Any, p: Any) -> dict[str, str]:
    """Principal id → email or account name, for the principals ``p`` may see (the API's
    lists); others are shown by id."""
    names = {u.id: u.email for u in await service.list_users(p)}
    names.update((v.account.id, v.account.name) for v in await service.list_accounts(p))
    return names


def _attachment(name: str) -> bytes:
    safe = "".join(ch for ch in name if ch.isalnum() or ch in "-_.")
    return f'attachment; filename="{safe}"'.encode()


def _view(record: dict[str, Any]) -> dict[str, Any]:
    """A record split the way the trace page shows it."""
    decisions = record.get("decisions") or []
    usage = {k.removeprefix("gen_ai.usage."): v for k, v in record.items()
             if k.startswith("gen_ai.usage.")}  # fmt: skip
    return {
        "record": record,
        "decisions": [d for d in decisions if d.get("stage") != "guardrails"],
        "guardrails": [d for d in decisions if d.get("stage") == "guardrails"],
        "attempts": record.get("attempts") or [],
        "skips": record.get("skips") or [],
        "usage": usage,
        "data_classes": record.get("data_classes") or [],
        "summary": [
            ("Time", record.get("time_start")),
            ("Team", record.get("team")),
            ("Principal", f"{record.get('principal.kind')} {record.get('principal.id')}"),
            ("Token", record.get("auth.token_id")),
            ("Operation", f"{record.get('api.protocol')} {record.get('api.operation')}"),
            ("Requested model", record.get("gen_ai.request.model")),
            ("Provider", f"{record.get('provider.account')} / {record.get('provider.model')}"),
            ("Region", record.get("cloud.region")),
            ("Status", record.get("http.response.status_code")),
            ("Outcome", record.get("outcome")),
            ("Stopped at", record.get("stopped_at")),
            ("Error", record.get("error.type")),
            ("Latency", f"{record.get('latency_ms')} ms"),
            ("Config revision", record.get("config.revision")),
            ("Event id", record.get("event_id")),
        ],
    }
