"""The audit trail's admin operations (admin and auditor roles; erasure: admin): report,
records, one request, verify, legal holds, content, erasure. Each takes the admin service and
the calling principal, checks the caller's rights, and returns the admin API's reply model;
the routes (``custos.http.admin``) and the CLI (``custos.cli.audit``) are thin layers over them,
as for the identity operations (``custos.admin.service``).

``GET /admin/v1/audit/report?from=&to=&group_by=&data_class=`` — ``custos.audit.compliance.report``.
``GET /admin/v1/audit/report/tool-calls?from=&to=&group_by=&data_class=`` — MCP tool calls grouped
(``custos.audit.compliance.tool_report``), with the same rights as the model-call report.
``GET /admin/v1/audit/events?from=&to=&event_type=&after=&limit=`` — stored records in insertion
order, each as its canonical JSON text exactly as stored (``record``: a string, so a client that
writes it out as UTF-8 has the stored bytes), with its leaf hash; ``next_after`` continues.
``GET /admin/v1/audit/requests/{request}`` — the records of one request id (or one event id).
``GET /admin/v1/audit/verify?from=&to=`` — ``custos audit verify`` run by the gateway, with the
keys stored in the database: the report as JSON. It reads the whole log in pages of
``API_PAGE`` leaves with a database round trip between pages; only a page's hashing holds the
event loop (a page took ~30 ms in all on a busy machine), and one verification runs at a time
per process. On a large log it takes as long as the CLI, so give the client a long timeout.
``GET|POST /admin/v1/audit/holds``, ``POST /admin/v1/audit/holds/{hold}/release`` — legal holds
(``custos.audit.compliance.retention``): admins set and release them with a reason; admins and
auditors list them.
``GET /admin/v1/audit/requests/{request}/content`` — its captured content, decrypted
(``custos.audit.records.content``); ``state: erased`` once its data key was destroyed.
``POST /admin/v1/audit/erase`` ``{"team": T}`` or ``{"principal": P}`` (admin only) — destroy
the data keys of a team or principal and their ciphertexts (``content_store.erase``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from custos.admin import rights
from custos.admin.errors import BadInput
from custos.admin.schemas import MAX_CURSOR
from custos.admin.service import AdminService
from custos.audit import traces
from custos.audit.compliance.report import (
    ReportError,
    build_report,
    parse_group_by,
    parse_range,
    to_json,
)
from custos.audit.compliance.report import metadata_keys as report_metadata_keys
from custos.audit.compliance.retention import Hold, list_holds, release_hold, set_hold
from custos.audit.compliance.tool_report import DEFAULT_GROUP_BY, build_tool_report
from custos.audit.compliance.tool_report import parse_group_by as parse_tool_group_by
from custos.audit.compliance.verify import API_PAGE, verify_log, verify_range
from custos.audit.log.proof import ProofError, prove_event
from custos.audit.records import content
from custos.audit.records.record import EVENT_TYPES
from custos.audit.storage import content_store
from custos.audit.storage.store import AuditStore, StoredEvent
from custos.state.errors import Conflict, Invalid, NotFound
from custos.state.models import Actor

MAX_EVENTS_PAGE = 1000


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


#: The schema of a ``from``/``to`` parameter: a day or an RFC 3339 time (what ``parse_range``
#: reads), so that clients and generated tests know what a valid value looks like.
_DAY_OR_TIME: dict[str, Any] = {
    "anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]
}


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReportQuery(_Query):
    from_: str = Field(
        alias="from",
        description="First day (2026-07-01) or RFC 3339 time.",
        json_schema_extra=_DAY_OR_TIME,
    )
    to: str = Field(
        description="Last day, inclusive (2026-09-30), or an RFC 3339 time, exclusive.",
        json_schema_extra=_DAY_OR_TIME,
    )
    group_by: str = Field("team,provider", description="Comma-separated dimensions.")
    data_class: str | None = Field(None, description="Only calls that carry this data class.")
    source: Literal["declared", "detected"] | None = Field(
        None,
        description="Only calls carrying the class (or any class) from this source: declared "
        "by the caller, or detected in the content.",
    )


class ReportRow(_Out):
    group: dict[str, Any]
    requests: int
    served: int
    denied: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_micros: int


class ReportTotals(_Out):
    requests: int
    served: int
    denied: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_micros: int


class ReportOut(_Out):
    from_: str = Field(alias="from")
    to: str
    group_by: list[str]
    data_class: str | None
    source: str | None
    rows: list[ReportRow]
    totals: ReportTotals

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class ToolReportQuery(ReportQuery):
    """The model-call report's query, with the tool calls' dimensions."""

    group_by: str = Field(
        DEFAULT_GROUP_BY,
        description="Comma-separated: team, principal, principal_kind, endpoint, server, tool, "
        "called_as, region, outcome, status, stage, error, data_class, data_class_source, day, "
        "month, quarter.",
    )
    source: Literal["declared", "detected"] | None = Field(
        None,
        description="Only calls carrying the class (or any class) from this source: declared "
        "by the caller, or detected in the arguments.",
    )


class ToolReportTotals(_Out):
    calls: int
    served: int
    denied: int
    cancelled: int
    failed: int
    tool_errors: int = Field(description="Served calls whose result the tool marked isError.")


class ToolReportRow(ToolReportTotals):
    group: dict[str, Any]


class ToolReportOut(_Out):
    kind: Literal["tool_calls"]
    from_: str = Field(alias="from")
    to: str
    group_by: list[str]
    data_class: str | None
    source: str | None
    rows: list[ToolReportRow]
    totals: ToolReportTotals

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class EventsQuery(_Query):
    from_: str | None = Field(
        None,
        alias="from",
        description="First day or RFC 3339 time.",
        json_schema_extra=_DAY_OR_TIME,
    )
    to: str | None = Field(
        None,
        description="Last day (inclusive) or RFC 3339 time (exclusive).",
        json_schema_extra=_DAY_OR_TIME,
    )
    event_type: str | None = Field(
        None,
        description="Only records of this type.",
        json_schema_extra={"enum": sorted(EVENT_TYPES)},
    )
    after: int = Field(
        0, ge=0, le=MAX_CURSOR, description="Return records inserted after this one (a cursor)."
    )
    limit: int = Field(MAX_EVENTS_PAGE, ge=1, le=MAX_EVENTS_PAGE)


class StoredRecordOut(_Out):
    ingest_id: int
    event_id: str
    event_type: str
    leaf_hash: str = Field(description="SHA-256(0x00 || record), hex.")
    record: str = Field(description="The canonical JSON, exactly as stored and hashed.")

    @classmethod
    def of(cls, event: StoredEvent) -> StoredRecordOut:
        return cls(
            ingest_id=event.ingest_id,
            event_id=event.event_id,
            event_type=event.event_type,
            leaf_hash=event.leaf_hash.hex(),
            record=event.record.decode("utf-8"),
        )


class StoredRecordList(_Out):
    data: list[StoredRecordOut]
    next_after: int | None = Field(description="Pass as ?after= for the next page; null: the end.")


def _store(svc: AdminService) -> AuditStore:
    return AuditStore(svc.store)


async def report(svc: AdminService, principal: Any, q: ReportQuery) -> ReportOut:
    rights.require_reader(principal, "the audit report")
    try:
        since, until = parse_range(q.from_, q.to)
        group_by = parse_group_by(q.group_by)
    except ReportError as exc:
        raise BadInput(str(exc), "group_by" if "group" in str(exc) else "from") from None
    built = await build_report(
        _store(svc),
        since=since,
        until=until,
        group_by=group_by,
        data_class=q.data_class,
        source=q.source,
    )
    return ReportOut.model_validate(to_json(built))


async def tool_report(svc: AdminService, principal: Any, q: ToolReportQuery) -> ToolReportOut:
    rights.require_reader(principal, "the audit report")
    try:
        since, until = parse_range(q.from_, q.to)
        group_by = parse_tool_group_by(q.group_by)
    except ReportError as exc:
        raise BadInput(str(exc), "group_by" if "group" in str(exc) else "from") from None
    built = await build_tool_report(_store(svc), since=since, until=until, group_by=group_by,
                                    data_class=q.data_class, source=q.source)  # fmt: skip
    return ToolReportOut.model_validate(built)


async def metadata_keys(svc: AdminService, principal: Any, since: str, until: str) -> list[str]:
    """The metadata keys the report can group by (``metadata.KEY``) in a range: those carried
    by calls on its days. Admins and auditors, as the report."""
    rights.require_reader(principal, "the audit report")
    try:
        start, end = parse_range(since, until)
    except ReportError as exc:
        raise BadInput(str(exc), "from") from None
    return await report_metadata_keys(_store(svc), start, end)


async def events(svc: AdminService, principal: Any, q: EventsQuery) -> StoredRecordList:
    rights.require_reader(principal, "reading audit records")
    since = until = None
    try:
        if q.from_ is not None or q.to is not None:
            since, until = parse_range(q.from_ or "1970-01-01", q.to or "9999-12-30")
    except ReportError as exc:
        raise BadInput(str(exc), "from") from None
    if q.event_type is not None and q.event_type not in EVENT_TYPES:
        raise BadInput(f"event_type must be one of {', '.join(sorted(EVENT_TYPES))}", "event_type")
    found = await _store(svc).events(
        after=q.after, limit=q.limit, since=since, until=until, event_type=q.event_type
    )
    next_after = found[-1].ingest_id if len(found) == q.limit else None
    return StoredRecordList(data=[StoredRecordOut.of(e) for e in found], next_after=next_after)


async def request_records(svc: AdminService, principal: Any, ref: str) -> StoredRecordList:
    rights.require_reader(principal, "reading audit records")
    found = await _store(svc).find(ref)
    if not found:
        raise NotFound(f"no audit record for request or event {ref!r}")
    return StoredRecordList(data=[StoredRecordOut.of(e) for e in found], next_after=None)


# -- verify ----------------------------------------------------------------------------------------

#: One verification at a time per process: each reads the whole log.
_VERIFYING = asyncio.Lock()


class VerifyQuery(_Query):
    from_: str | None = Field(None, alias="from", description="Check the bodies of records from "
                              "this day (2026-07-01) or RFC 3339 time on.",
                              json_schema_extra=_DAY_OR_TIME)  # fmt: skip
    to: str | None = Field(None, description="... up to this day (inclusive) or RFC 3339 time "
                           "(exclusive). Every other check covers the whole log.",
                           json_schema_extra=_DAY_OR_TIME)  # fmt: skip


class VerifyCheckpoints(_Out):
    total: int
    valid: int


class VerifyRecords(_Out):
    total: int = Field(description="Records whose bodies were checked (in range, not purged).")
    valid: int
    purged: int = Field(description="Bodies emptied by the retention purge, each accounted for "
                        "by an audit.purge record.")  # fmt: skip
    unsigned: int = Field(description="Records not yet covered by a checkpoint.")
    log_size: int = Field(description="Leaves in the log.")


class VerifyRange(_Out):
    from_: str | None = Field(alias="from")
    to: str | None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class VerifyOut(_Out):
    ok: bool
    summary: str = Field(description="N/N checkpoints valid; M/M records valid; P purged …")
    checkpoints: VerifyCheckpoints
    records: VerifyRecords
    range: VerifyRange
    pending_late: int
    exported_checked: int
    keys_from_database: bool = Field(description="Always true here: the gateway checks with the "
                                     "keys in its database. For an independent check run "
                                     "`custos audit verify --public-key`.")  # fmt: skip
    failures: list[str] = Field(description="In the order found; the first is the one to fix.")


async def verify(
    svc: AdminService,
    principal: Any,
    q: VerifyQuery,
    *,
    progress: Callable[[int], None] | None = None,
) -> VerifyOut:
    """``progress``, if given, is told how many of the log's leaves have been checked, page
    after page (the console shows it)."""
    check_verify(principal, q)
    since, until = verify_range(q.from_, q.to)
    async with _VERIFYING:
        report = await verify_log(
            svc.store, since=since, until=until, page_size=API_PAGE, progress=progress
        )
    return VerifyOut.model_validate(report.as_json())


def check_verify(principal: Any, q: VerifyQuery) -> None:
    """What ``verify`` refuses before it starts: the caller's role, the range."""
    rights.require_reader(principal, "verifying the audit log")
    try:
        verify_range(q.from_, q.to)
    except ValueError as exc:
        raise BadInput(str(exc), "from") from None


# -- legal holds -----------------------------------------------------------------------------------


class HoldCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    team: str | None = Field(None, min_length=1, max_length=200,
                             description="Hold this team's LLM calls; omit to hold every "
                             "record.")  # fmt: skip
    reason: str = Field(min_length=1, max_length=1000, description="Why (case, request, …).")


class HoldRelease(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field(min_length=1, max_length=1000)


class HoldsQuery(_Query):
    active: bool = Field(False, description="Only holds in force.")


class HoldOut(_Out):
    id: str
    team: str | None = Field(description="null: every record is held.")
    reason: str
    set_by: str
    set_at: str
    active: bool
    released_by: str | None
    released_at: str | None
    release_reason: str | None

    @classmethod
    def of(cls, hold: Hold) -> HoldOut:
        return cls(active=hold.active, **hold.to_dict())


class HoldList(_Out):
    data: list[HoldOut]


def _admin(principal: Any) -> Actor:
    rights.require_admin(principal, "legal holds")
    return Actor(id=f"user:{principal.id}", role="admin")


async def holds(svc: AdminService, principal: Any, q: HoldsQuery) -> HoldList:
    rights.require_reader(principal, "reading legal holds")
    found = await list_holds(svc.store, active_only=q.active)
    return HoldList(data=[HoldOut.of(h) for h in found])


async def create_hold(svc: AdminService, principal: Any, body: HoldCreate) -> HoldOut:
    actor = _admin(principal)
    return HoldOut.of(await set_hold(svc.store, actor, team=body.team, reason=body.reason))


async def end_hold(svc: AdminService, principal: Any, hold_id: str, body: HoldRelease) -> HoldOut:
    actor = _admin(principal)
    return HoldOut.of(await release_hold(svc.store, actor, hold_id, reason=body.reason))


# -- content: read back, erase -----------------------------------------------------------------


class EventContentOut(_Out):
    event_id: str
    mode: str = Field(description="The record's content mode: none, hash, redacted or full.")
    state: str = Field(
        description="available, erased, hashed (only digests exist), not_captured or missing."
    )
    dek_id: str | None = Field(None, description="The data key the content was encrypted under.")
    erased_at: str | None = Field(None, description="When its data key was destroyed.")
    request: Any = Field(None, description="The request content, decrypted.")
    response: Any = Field(None, description="The response content, decrypted.")
    digests: dict[str, str | None] | None = Field(
        None, description="Mode hash: HMAC-SHA-256 of each part, keyed by the record's salt."
    )


class ContentOut(_Out):
    request_id: str
    data: list[EventContentOut]


class EraseIn(_Query):
    team: str | None = Field(
        None, min_length=1, description="Erase the content of this team (its name)."
    )
    principal: str | None = Field(
        None, min_length=1, description="Erase the content of this principal: a user id or "
        "email, or a virtual account id or name.",
    )  # fmt: skip


class ErasureOut(_Out):
    scope: str
    subject: str = Field(description="The team name or principal id whose keys were destroyed.")
    data_keys: int = Field(description="Data keys destroyed.")
    contents: int = Field(description="Encrypted contents (request or response parts) deleted.")
    erased_at: str


async def request_content(svc: AdminService, principal: Any, ref: str) -> ContentOut:
    """The decrypted content of one request's ``llm.call`` record(s), each ciphertext checked
    against its record first."""
    rights.require_reader(principal, "reading audit content")
    store = _store(svc)
    found = await store.find(ref)
    if not found:
        raise NotFound(f"no audit record for request or event {ref!r}")
    try:
        items = await content.read_content(store, content.keys_for(svc.store), found)
    except content.ContentUnreadable as exc:
        raise Conflict(f"audit content check failed: {exc}") from None
    except content.ContentKeyUnavailable as exc:
        raise Conflict(f"audit content cannot be decrypted here: {exc}") from None
    return ContentOut(
        request_id=ref,
        data=[EventContentOut.model_validate(dataclasses.asdict(i)) for i in items],
    )


async def erase_content(svc: AdminService, principal: Any, body: EraseIn) -> ErasureOut:
    """Crypto-shredding: destroy the data keys of a team or a principal (admin only)."""
    role = rights.require_admin(principal, "erasing audit content")
    if (body.team is None) == (body.principal is None):
        raise BadInput("give exactly one of team or principal", "team")
    if body.team is not None:
        scope, subject = "team", body.team
    else:
        scope, subject = "principal", await _principal_id(svc, str(body.principal))
    if not subject:
        raise BadInput(f"{scope} must not be empty", scope)
    actor = Actor(f"user:{principal.id}", role)
    done = await content_store.erase(svc.store, actor, scope=scope, subject=subject)
    return ErasureOut(**done.to_dict(), erased_at=done.erased_at.isoformat())


async def _principal_id(svc: AdminService, ref: str) -> str:
    """A user or virtual account named by id, email or name; a principal the store no longer
    knows (deleted) is erased by the id given, as records name it."""
    store = svc.store
    lookups = (store.get_user, store.get_user_by_email, store.get_account,
               store.get_account_by_name)  # fmt: skip
    for lookup in lookups:
        try:
            return (await lookup(ref)).id
        except (NotFound, Invalid):
            continue
    return ref


# -- the log's state (the console's audit page) ----------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LogStatus:
    """The latest checkpoint (``None`` before the first) and how many leaves the log holds."""

    log_size: int
    checkpoint_size: int | None
    checkpoint_at: str | None
    checkpoint_root: str | None
    checkpoints: int


async def log_status(svc: AdminService, principal: Any) -> LogStatus:
    rights.require_reader(principal, "reading the audit log's state")
    async with svc.store.transaction(readonly=True) as tx:
        head = await tx.fetchrow("SELECT size FROM audit_tree_head WHERE id = 1")
        latest = await tx.fetchrow(
            "SELECT size, at, root FROM audit_checkpoints ORDER BY id DESC LIMIT 1"
        )
        count = await tx.fetchrow("SELECT count(*) AS n FROM audit_checkpoints")
    return LogStatus(
        log_size=int(head["size"]) if head else 0,
        checkpoint_size=int(latest["size"]) if latest else None,
        checkpoint_at=str(latest["at"]) if latest else None,
        checkpoint_root=bytes(latest["root"]).hex() if latest else None,
        checkpoints=int(count["n"]) if count else 0,
    )


async def record_proofs(svc: AdminService, principal: Any, ref: str) -> list[dict[str, Any]]:
    """The records of one request or event id, each with its inclusion proof document
    (``custos audit check-proof`` reads one), or why none can be made yet."""
    found = (await request_records(svc, principal, ref)).data
    out: list[dict[str, Any]] = []
    for event in found:
        try:
            out.append(await prove_event(svc.store, event.event_id))
        except ProofError as exc:
            out.append({"event_id": event.event_id, "record": event.record,
                        "proof_error": str(exc)})  # fmt: skip
    return out


# -- request traces ------------------------------------------------------------------------------


class TracesQuery(_Query):
    from_: str | None = Field(None, alias="from", description="First day or RFC 3339 time.",
                              json_schema_extra=_DAY_OR_TIME)  # fmt: skip
    to: str | None = Field(None, description="Last day (inclusive) or RFC 3339 time "
                           "(exclusive).", json_schema_extra=_DAY_OR_TIME)  # fmt: skip
    team: str | None = Field(None, description="Only this team's calls.")
    user: str | None = Field(None, description="Only this user's calls (id or email).")
    account: str | None = Field(None, description="Only this virtual account's calls.")
    model: str | None = Field(None, description="Provider or requested model.")
    provider: str | None = Field(None, description="Provider account.")
    status: int | None = Field(None, ge=100, le=599, description="HTTP status answered.")
    outcome: Literal[traces.OUTCOMES] | None = None  # type: ignore[valid-type]
    data_class: str | None = Field(None, description="Only calls carrying this data class.")
    guardrail: Literal[traces.GUARDRAIL_OUTCOMES] | None = Field(  # type: ignore[valid-type]
        None, description="Only calls with a guardrail verdict of this kind (any: at least one)."
    )
    request_id: str | None = None
    before: str | None = Field(None, description="next_before of the previous page.")
    limit: int = Field(traces.PAGE, ge=1, le=500)


class TraceRowOut(_Out):
    event_id: str
    request_id: str
    time_start: str
    team: str | None
    principal_kind: str | None
    principal_id: str | None
    requested_model: str | None
    provider: str | None
    model: str | None
    status: int
    outcome: str
    stopped_at: str | None
    error_type: str | None
    input_tokens: int
    output_tokens: int
    cost_micros: int
    latency_ms: int


class TraceListOut(_Out):
    data: list[TraceRowOut]
    next_before: str | None = Field(description="Pass as ?before= for older traces; null: the "
                                    "end.")  # fmt: skip
    scan_capped: bool = Field(description="The guardrail filter stopped reading before the "
                              "page was full; continue with next_before.")  # fmt: skip


class TraceOut(_Out):
    request_id: str
    records: list[dict[str, Any]] = Field(description="The request's llm.call records, parsed.")
    proofs: dict[str, str] = Field(description="Event id → its inclusion proof status.")


async def trace_list(svc: AdminService, principal: Any, q: TracesQuery) -> TraceListOut:
    """Traces the caller may read (``custos.audit.traces``: admins and auditors every one,
    team managers their teams', everyone their own), newest first."""
    values = q.model_dump(exclude={"from_", "to", "limit"}, exclude_none=True)
    found = await traces.search(
        svc,
        principal,
        traces.TraceFilter(since=q.from_, until=q.to, **{k: str(v) for k, v in values.items()}),
        limit=q.limit,
    )
    rows = [
        TraceRowOut.model_validate({**r, "time_start": r["time_start"].isoformat()})
        for r in found.rows
    ]
    return TraceListOut(data=rows, next_before=found.next_before, scan_capped=found.scan_capped)


async def trace(svc: AdminService, principal: Any, request_id: str) -> TraceOut:
    found = await traces.get(svc, principal, request_id)
    return TraceOut(request_id=found.request_id, records=found.records, proofs=found.proofs)
