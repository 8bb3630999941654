"""Request traces: the ``llm.call`` records a caller may read, searched and one by one.

Who sees what (one rule, here, for the console and the admin API alike):

- ``admin`` and ``auditor``: every trace;
- a team manager (role ``team_manager`` and a manager membership): their managed teams' traces;
- everyone: their own traces (``principal.id`` is their user id).

A trace outside the caller's rights is answered as missing (``NotFound``), with the same words
as a trace that does not exist, so changing an id in a URL reveals nothing.

Searches read the projection (``audit_llm_calls``), newest first, one indexed query a page;
pages continue with a keyset cursor (``before``: the last row's time and event id). A filter
on a column without an index (provider, model, status, outcome, data class) first reads which
days hold such calls from the daily rollups (``custos.audit.trace_days``) and walks only those. The
guardrail outcome is not projected: that filter reads the records of the rows found, at most
``GUARDRAIL_SCAN`` of them a page, and says when it stopped early.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from custos.admin import rights
from custos.admin.errors import BadInput
from custos.admin.service import AdminService
from custos.audit import trace_days
from custos.audit.compliance.report import ReportError, parse_range
from custos.audit.log.proof import ProofError, prove_event
from custos.audit.storage.store import AuditStore
from custos.identity.principal import Principal
from custos.state.errors import NotFound

PAGE: Final = 50
GUARDRAIL_SCAN: Final = 2000
GUARDRAIL_OUTCOMES: Final = ("allow", "deny", "mutate", "audit_only", "any")
OUTCOMES: Final = ("served", "denied", "upstream_error", "client_disconnected", "error")

_COLUMNS = (
    "c.event_id, c.request_id, c.time_start, c.team, c.principal_kind, c.principal_id,"
    " c.requested_model, c.provider, c.model, c.status, c.outcome, c.stopped_at,"
    " c.error_type, c.input_tokens, c.output_tokens, c.cost_micros, c.latency_ms"
)


@dataclass(frozen=True, slots=True)
class TraceFilter:
    """What a search asks for; every field is optional. Times as ``parse_range`` reads them."""

    since: str | None = None
    until: str | None = None
    team: str | None = None
    user: str | None = None
    account: str | None = None
    model: str | None = None
    provider: str | None = None
    status: str | None = None
    outcome: str | None = None
    data_class: str | None = None
    guardrail: str | None = None
    request_id: str | None = None
    before: str | None = None

    @classmethod
    def of(cls, values: dict[str, str]) -> TraceFilter:
        """From query parameters; blank values count as absent, unknown names are ignored."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v.strip() for k, v in values.items() if k in names and v.strip()})


@dataclass(frozen=True, slots=True)
class TracePage:
    rows: list[dict[str, Any]]
    #: The cursor for the next (older) page, or ``None`` at the end.
    next_before: str | None
    #: The guardrail filter stopped after reading ``GUARDRAIL_SCAN`` records.
    scan_capped: bool = False


@dataclass(frozen=True, slots=True)
class Trace:
    """One request's ``llm.call`` record(s), parsed, with their inclusion proof status."""

    request_id: str
    records: list[dict[str, Any]]
    #: event id → "included in checkpoint of size N" or why not (yet).
    proofs: dict[str, str] = field(default_factory=dict)


def _scope(p: Principal, args: list[Any]) -> str:
    """The SQL condition limiting rows to what ``p`` may read ("" for readers of everything)."""
    parts = _scope_parts(p, args)
    return "(" + " OR ".join(parts) + ")" if parts else ""


def _scope_parts(p: Principal, args: list[Any]) -> list[str]:
    """What ``p`` may read as conditions of which a row must meet one (none: everything)."""
    if rights.reads_all(p):
        return []
    args.append(p.id)
    parts = [f"c.principal_id = ${len(args)}"]
    for team in sorted(rights.managed_teams(p)):
        args.append(team)
        parts.append(f"c.team = ${len(args)}")
    return parts


async def _principal_ids(svc: AdminService, f: TraceFilter) -> list[str]:
    """The user or account the filter names, as the ids records carry (unknown: the text)."""
    ids = []
    if f.user is not None:
        try:
            ids.append((await svc.find_user(f.user)).id)
        except NotFound:
            ids.append(f.user)
    if f.account is not None:
        try:
            ids.append((await svc.find_account(f.account)).id)
        except NotFound:
            ids.append(f.account)
    return ids


async def _where(
    svc: AdminService, p: Principal, f: TraceFilter
) -> tuple[list[str], list[str], list[Any], trace_days.Asked]:
    """The filter's conditions, the caller's scope (``_scope_parts``) and their arguments, and
    the same filter as the rollups read it."""
    args: list[Any] = []
    conds: list[str] = []
    scope = _scope_parts(p, args)
    first_day = last_day = None
    if f.since is not None or f.until is not None:
        try:
            since, until = parse_range(f.since or "1970-01-01", f.until or "9999-12-30")
        except ReportError as exc:
            raise BadInput(str(exc), "since") from None
        args.extend((since, until))
        conds.append(f"c.time_start >= ${len(args) - 1} AND c.time_start < ${len(args)}")
        first_day, last_day = since.date(), (until - timedelta(microseconds=1)).date()
    for column, value in (("c.team", f.team), ("c.provider", f.provider),
                          ("c.request_id", f.request_id), ("c.outcome", f.outcome)):  # fmt: skip
        if value is not None:
            args.append(value)
            conds.append(f"{column} = ${len(args)}")
    pids = await _principal_ids(svc, f)
    for pid in pids:
        args.append(pid)
        conds.append(f"c.principal_id = ${len(args)}")
    if f.model is not None:
        args.append(f.model)
        conds.append(f"(c.model = ${len(args)} OR c.requested_model = ${len(args)})")
    if f.status is not None:
        if not f.status.isdigit() or not 100 <= int(f.status) <= 599:
            raise BadInput("status must be an HTTP status code (100-599)", "status")
        args.append(int(f.status))
        conds.append(f"c.status = ${len(args)}")
    if f.data_class is not None:
        args.append(f.data_class)
        conds.append(
            "EXISTS (SELECT 1 FROM audit_llm_call_data_classes x"
            f" WHERE x.event_id = c.event_id AND x.data_class = ${len(args)})"
        )
    if f.before is not None:
        at, _, event_id = f.before.partition("|")
        try:
            moment = datetime.fromisoformat(at)
        except ValueError:
            raise BadInput("before is not a cursor this search returned", "before") from None
        args.extend((moment, moment, event_id))
        n = len(args)
        conds.append(
            f"(c.time_start < ${n - 2} OR (c.time_start = ${n - 1} AND c.event_id < ${n}))"
        )
        day = (moment.astimezone(UTC) if moment.tzinfo else moment).date()
        last_day = day if last_day is None else min(last_day, day)
    asked = trace_days.Asked(
        team=f.team, provider=f.provider, model=f.model,
        status=int(f.status) if f.status is not None else None, outcome=f.outcome,
        data_class=f.data_class, request_id=f.request_id, principal_ids=pids,
        first_day=first_day, last_day=last_day,
    )  # fmt: skip
    return conds, scope, args, asked


def _newest(conds: list[str], scope: list[str], limit: str) -> str:
    """The newest rows meeting ``conds`` and one of ``scope``. With several scope conditions
    (a team manager's own calls and their teams'), each one's newest rows are read apart, in
    its own index's order, then merged: an ``OR`` would read every row of the teams and sort
    them all, for a page of 50."""
    order = "ORDER BY c.time_start DESC, c.event_id DESC"

    def one(extra: list[str]) -> str:
        where = " AND ".join(conds + extra)
        return f"SELECT {_COLUMNS} FROM audit_llm_calls c{' WHERE ' + where if where else ''}" + (
            f" {order} LIMIT {limit}"
        )

    if len(scope) <= 1:
        return one(scope)
    merged = " UNION ".join(f"SELECT * FROM ({one([part])}) b{i}" for i, part in enumerate(scope))
    return f"SELECT * FROM ({merged}) u ORDER BY time_start DESC, event_id DESC LIMIT {limit}"


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


async def search(
    svc: AdminService, p: Principal, f: TraceFilter, *, limit: int = PAGE
) -> TracePage:
    """One page of the traces ``p`` may read that match ``f``, newest first."""
    if f.guardrail is not None and f.guardrail not in GUARDRAIL_OUTCOMES:
        raise BadInput(f"guardrail must be one of {', '.join(GUARDRAIL_OUTCOMES)}", "guardrail")
    conds, scope, args, asked = await _where(svc, p, f)
    store = AuditStore(svc.store)
    want = limit if f.guardrail is None else GUARDRAIL_SCAN
    rows = await _rows(store, p, conds, scope, args, asked, want + 1)
    capped = False
    if f.guardrail is None:
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if rows else None
    else:
        read, ended = rows[:want], len(rows) <= want
        kept = await _with_guardrail(store, read, f.guardrail, limit + 1)
        more = len(kept) > limit
        rows = kept[:limit]
        last = rows[-1] if rows else None
        if not more and not ended:  # read GUARDRAIL_SCAN rows without filling the page
            capped = more = True
            last = read[-1]
    for row in rows:
        row["time_start"] = _time(row["time_start"])
    cursor = None
    if more and last is not None:
        cursor = f"{_time(last['time_start']).isoformat()}|{last['event_id']}"
    return TracePage(rows, cursor, capped)


async def _rows(
    store: AuditStore,
    p: Principal,
    conds: list[str],
    scope: list[str],
    args: list[Any],
    asked: trace_days.Asked,
    limit: int,
) -> list[dict[str, Any]]:
    """The newest ``limit`` rows meeting the conditions. Where the daily rollups name the days
    that can hold them (``custos.audit.trace_days``), only those days' rows are walked, a run of
    consecutive days at a time, newest first, until the page is full."""
    if not trace_days.narrows(asked):
        sql = _newest(conds, scope, f"${len(args) + 1}")
        return [dict(r) for r in await store.fetch(sql, *args, limit)]
    n = len(args)
    bounded = [*conds, f"c.time_start >= ${n + 1} AND c.time_start < ${n + 2}"]
    sql = _newest(bounded, scope, f"${n + 3}")
    rows: list[dict[str, Any]] = []
    async for span in trace_days.spans(store, p, asked):
        found = await store.fetch(sql, *args, span.start, span.end, limit - len(rows))
        rows += [dict(r) for r in found]
        if len(rows) >= limit:
            break
    return rows


async def _with_guardrail(
    store: AuditStore, rows: list[dict[str, Any]], outcome: str, enough: int
) -> list[dict[str, Any]]:
    """The rows whose record holds a guardrail decision with ``outcome`` (``any``: one at all)."""
    kept: list[dict[str, Any]] = []
    for start in range(0, len(rows), 200):
        chunk = rows[start : start + 200]
        ids = [r["event_id"] for r in chunk]
        marks = ", ".join(f"${i}" for i in range(1, len(ids) + 1))
        found = await store.fetch(
            f"SELECT event_id, record FROM audit_events WHERE event_id IN ({marks})", *ids
        )
        records = {r["event_id"]: orjson.loads(bytes(r["record"])) for r in found}
        for row in chunk:
            decisions = records.get(row["event_id"], {}).get("decisions") or []
            if any(
                d.get("stage") == "guardrails" and outcome in ("any", d.get("decision"))
                for d in decisions
            ):
                kept.append(row)
                if len(kept) >= enough:
                    return kept
    return kept


async def get(svc: AdminService, p: Principal, request_id: str) -> Trace:
    """One request's trace, if ``p`` may read it; else ``NotFound`` as if there were none."""
    args: list[Any] = [request_id]
    scope = _scope(p, args)
    sql = (
        "SELECT e.event_id, e.record FROM audit_llm_calls c"
        " JOIN audit_events e ON e.event_id = c.event_id WHERE c.request_id = $1"
        + (f" AND {scope}" if scope else "")
        + " ORDER BY e.ingest_id"
    )
    rows = await AuditStore(svc.store).fetch(sql, *args)
    if not rows:
        raise NotFound(f"no trace for request {request_id!r}")
    records = [orjson.loads(bytes(r["record"])) for r in rows]
    proofs = {}
    for row in rows:
        try:
            doc = await prove_event(svc.store, row["event_id"])
            proofs[row["event_id"]] = f"included in the checkpoint of size {_size(doc)}"
        except ProofError as exc:
            proofs[row["event_id"]] = f"not yet provable: {exc}"
    return Trace(request_id, records, proofs)


def _size(doc: dict[str, Any]) -> str:
    lines = str(doc.get("checkpoint", "")).splitlines()
    return lines[1] if len(lines) > 1 else "?"


async def proofs(svc: AdminService, p: Principal, request_id: str) -> list[dict[str, Any]]:
    """The proof documents of one request's records (``custos audit check-proof`` reads each),
    if ``p`` may read the trace."""
    trace = await get(svc, p, request_id)
    out = []
    for record in trace.records:
        try:
            out.append(await prove_event(svc.store, record["event_id"]))
        except ProofError as exc:
            out.append({"event_id": record["event_id"], "record": record, "proof_error": str(exc)})
    return out


#: How a cell's missing value (no team, no data class, no provider) is named in a download link.
NONE: Final = "(none)"


async def cell_records(
    svc: AdminService,
    p: Principal,
    *,
    since: str,
    until: str,
    team: str,
    data_class: str,
    provider: str,
) -> list[bytes]:
    """The stored records behind one cell of the quarter question (the report grouped by team,
    data class and provider): every ``llm.call`` in ``[since, until)`` with that team, carrying
    that data class (``NONE``: none at all), sent to that provider, as stored, in insertion
    order. Admins and auditors, as the report."""
    rights.require_reader(p, "the records behind the audit report")
    try:
        start, end = parse_range(since, until)
    except ReportError as exc:
        raise BadInput(str(exc), "from") from None
    args: list[Any] = [start, end]
    conds = ["c.time_start >= $1", "c.time_start < $2"]
    for column, value in (("c.team", team), ("c.provider", provider)):
        if value == NONE:
            conds.append(f"{column} IS NULL")
        else:
            args.append(value)
            conds.append(f"{column} = ${len(args)}")
    classes = "SELECT 1 FROM audit_llm_call_data_classes x WHERE x.event_id = c.event_id"
    if data_class == NONE:
        conds.append(f"NOT EXISTS ({classes})")
    else:
        args.append(data_class)
        conds.append(f"EXISTS ({classes} AND x.data_class = ${len(args)})")
    rows = await AuditStore(svc.store).fetch(
        "SELECT e.record FROM audit_llm_calls c JOIN audit_events e ON e.event_id = c.event_id"
        f" WHERE {' AND '.join(conds)} ORDER BY e.ingest_id",
        *args,
    )
    return [bytes(r["record"]) for r in rows]
