"""Audit records as OCSF API Activity events (class 6003, category 6 Application Activity).

Follows OCSF 1.6.0 (``OCSF_VERSION``). Every event carries the base event's required
attributes (``activity_id``, ``category_uid``, ``class_uid``, ``type_uid``, ``time``,
``severity_id``, ``metadata`` with ``product`` and ``version``) and API Activity's (``actor``,
``api`` with ``operation``, ``src_endpoint``). The mapping per field is in docs/siem.md; what a
record holds that OCSF has no attribute for is kept under ``unmapped`` with the record's own
key, so nothing in the record is lost on the way.

Activities: an LLM call creates a completion (1 Create); an admin change maps its action
(create 1, update 3, delete 4, anything else 99 Other); a config revision is an Update (3);
the retention purge a Delete (4); an auth failure maps its HTTP method (GET 2 Read, POST 1
Create, PUT/PATCH 3 Update, DELETE 4 Delete, else 99).
"""

from __future__ import annotations

from typing import Any, Final

from custos.audit.siem.levels import level_of

OCSF_VERSION: Final = "1.6.0"
CATEGORY_UID: Final = 6
CLASS_UID: Final = 6003
ACTIVITIES: Final = {0: "Unknown", 1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
_SEVERITIES: Final = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}
_BY_METHOD: Final = {"GET": 2, "HEAD": 2, "POST": 1, "PUT": 3, "PATCH": 3, "DELETE": 4}
_BY_ACTION: Final = {"create": 1, "update": 3, "delete": 4}

#: Record keys every event maps (the rest of a record goes to ``unmapped``).
_COMMON: Final = frozenset(
    {
        "event_type",
        "event_id",
        "time_start",
        "time_end",
        "schema_version",
        "gateway.instance",
        "gateway.version",
        "request_id",
    }
)
_LLM_MAPPED: Final = _COMMON | {
    "principal.id",
    "principal.kind",
    "principal.teams",
    "auth.token_id",
    "api.operation",
    "api.protocol",
    "http.response.status_code",
    "outcome",
    "error.type",
    "latency_ms",
    "gen_ai.provider.name",
    "cloud.region",
    "provider.account",
    "provider.model",
    "gen_ai.request.model",
    "config.revision",
}


def to_ocsf(seq: int, fields: dict[str, Any], leaf_hash: str) -> dict[str, Any]:
    """The OCSF API Activity event of the record ``fields`` at sequence number ``seq``."""
    kind = fields["event_type"]
    try:
        activity, mapped, event = _BUILDERS.get(kind, _generic)(fields)
    except (KeyError, TypeError, ValueError, AttributeError):
        # A record the mapping cannot read is still sent (never skipped: the log has no gaps),
        # with the common attributes and everything else under ``unmapped``.
        activity, mapped, event = _generic(fields)
    severity = level_of(fields).ocsf
    event.update(
        {
            "activity_id": activity,
            "activity_name": ACTIVITIES.get(activity, "Other"),
            "category_uid": CATEGORY_UID,
            "category_name": "Application Activity",
            "class_uid": CLASS_UID,
            "class_name": "API Activity",
            "type_uid": CLASS_UID * 100 + activity,
            "type_name": f"API Activity: {ACTIVITIES.get(activity, 'Other')}",
            "severity_id": severity,
            "severity": _SEVERITIES[severity],
            "time": _epoch_ms(fields["time_start"]),
            "metadata": _metadata(seq, fields, leaf_hash),
            "dst_endpoint": {
                "hostname": fields.get("gateway.instance") or "custos",
                "svc_name": "custos",
            },
        }
    )
    if "cloud" in event:
        event["metadata"]["profiles"] = ["cloud"]
    if fields.get("time_end"):
        event["start_time"] = event["time"]
        event["end_time"] = _epoch_ms(fields["time_end"])
    unmapped = {k: v for k, v in fields.items() if k not in mapped and v is not None}
    if unmapped:
        event["unmapped"] = unmapped
    return event


def _metadata(seq: int, fields: dict[str, Any], leaf_hash: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {
            "name": "Custos",
            "vendor_name": "Custos",
            "version": fields.get("gateway.version") or "unknown",
        },
        "uid": fields["event_id"],
        "sequence": seq,
        "event_code": fields["event_type"],
        "original_time": fields["time_start"],
        "log_name": "custos.audit",
        "log_provider": "custos",
        "log_version": str(fields.get("schema_version")),
        # The leaf hash lets a receiver check the record against the signed log.
        "labels": [f"leaf_hash:{leaf_hash}"],
    }
    if fields.get("request_id"):
        metadata["correlation_uid"] = fields["request_id"]
    return metadata


def _epoch_ms(text: str) -> int:
    from custos.audit.records.record import parse_rfc3339, unix_ms

    return unix_ms(parse_rfc3339(text))


def _status(event: dict[str, Any], ok: bool, code: Any, error: Any, what: str) -> None:
    """``status_id`` and its caption (OCSF requires ``status`` to be the caption of a mapped
    ``status_id``); what happened in our terms (``served``, ``denied: budget_exceeded``) is the
    ``status_detail``."""
    event["status_id"] = 1 if ok else 2
    event["status"] = "Success" if ok else "Failure"
    event["status_detail"] = what if error is None else f"{what}: {error}"
    if code is not None:
        event["status_code"] = str(code)
        event["http_response"] = {"code": code}


def _llm_call(f: dict[str, Any]) -> tuple[int, frozenset[str], dict[str, Any]]:
    principal = f.get("principal.id")
    user: dict[str, Any] = {"uid": principal or "unknown", "type": f.get("principal.kind")}
    if f.get("principal.teams"):
        user["groups"] = [{"name": team} for team in f["principal.teams"]]
    if f.get("auth.token_id"):
        user["credential_uid"] = f["auth.token_id"]
    api: dict[str, Any] = {
        "operation": f.get("api.operation") or "unknown",
        "service": {"name": f"custos {f.get('api.protocol') or 'llm'} API"},
        "request": {"uid": f["request_id"]},
        "response": {"message": f.get("outcome")},
    }
    if f.get("http.response.status_code") is not None:
        api["response"]["code"] = f["http.response.status_code"]
    if f.get("error.type"):
        api["response"]["error"] = f["error.type"]
    event: dict[str, Any] = {
        "actor": {"user": {k: v for k, v in user.items() if v is not None}},
        "api": api,
        "src_endpoint": {"name": principal or "unauthenticated"},
        "message": f"{f.get('api.operation')} {f.get('gen_ai.request.model') or '-'}: "
        f"{f.get('outcome')}",
    }
    if f.get("latency_ms") is not None:
        event["duration"] = f["latency_ms"]
    if f.get("provider.model"):
        event["resources"] = [
            {
                "type": "model",
                "name": f["provider.model"],
                "uid": f"{f.get('provider.account')}/{f['provider.model']}",
            }
        ]
    if f.get("gen_ai.provider.name"):
        event["cloud"] = {"provider": f["gen_ai.provider.name"], "region": f.get("cloud.region")}
    ok = f.get("outcome") == "served"
    _status(event, ok, f.get("http.response.status_code"), f.get("error.type"), f["outcome"])
    return 1, _LLM_MAPPED, event


def _admin_change(f: dict[str, Any]) -> tuple[int, frozenset[str], dict[str, Any]]:
    action = str(f.get("action") or "")
    verb = action.rsplit(".", 1)[-1].split("_", 1)[0]
    event = {
        "actor": {"user": {"uid": f.get("actor.id") or "unknown", "type": f.get("actor.role")}},
        "api": {"operation": action or "unknown", "service": {"name": "custos admin API"}},
        "src_endpoint": {"name": f.get("actor.id") or "unknown"},
        "resources": [{"type": f.get("target.type"), "uid": f.get("target.id")}],
        "message": f"{action} {f.get('target.type')} {f.get('target.id')}",
    }
    _status(event, True, None, None, "applied")
    mapped = _COMMON | {"actor.id", "actor.role", "action", "target.type", "target.id"}
    return _BY_ACTION.get(verb, 99), mapped, event


def _config_revision(f: dict[str, Any]) -> tuple[int, frozenset[str], dict[str, Any]]:
    event = {
        "actor": {"app_name": "custos"},
        "api": {
            "operation": f"config.{f.get('trigger') or 'revision'}",
            "service": {"name": "custos config"},
        },
        "src_endpoint": {"name": f.get("config.source") or "config"},
        "resources": [{"type": "config", "uid": f.get("config.revision")}],
        "message": f"config revision {f.get('config.revision')} served",
    }
    _status(event, True, None, None, "served")
    return 3, _COMMON | {"config.revision", "config.source", "trigger"}, event


def _auth_failure(f: dict[str, Any]) -> tuple[int, frozenset[str], dict[str, Any]]:
    method = str(f.get("http.request.method") or "").upper()
    event = {
        "actor": {"user": {"name": "unauthenticated"}},
        "api": {
            "operation": f"{method} {f.get('http.route')}",
            "service": {"name": "custos"},
            "request": {"uid": f.get("request_id")},
        },
        # The record keeps the client's network (/24 or /48), not its address.
        "src_endpoint": {"name": f.get("client.address") or "unknown"},
        "http_request": {"http_method": method, "url": {"path": f.get("http.route")}},
        "message": f"credential refused: {f.get('error.type')}",
    }
    _status(event, False, f.get("http.response.status_code"), f.get("error.type"), "refused")
    mapped = _COMMON | {
        "http.request.method",
        "http.route",
        "client.address",
        "http.response.status_code",
        "error.type",
    }
    return _BY_METHOD.get(method, 99), mapped, event


def _audit_purge(f: dict[str, Any]) -> tuple[int, frozenset[str], dict[str, Any]]:
    event = {
        "actor": {"app_name": "custos"},
        "api": {"operation": "audit.purge", "service": {"name": "custos audit"}},
        "src_endpoint": {"name": f"retention {f.get('trigger')}"},
        "resources": [{"type": "audit_records", "name": f"{f.get('purge.count')} records"}],
        "message": f"{f.get('purge.count')} record bodies purged before {f.get('purge.cutoff')}",
    }
    _status(event, True, None, None, "purged")
    return 4, _COMMON | {"trigger"}, event


def _generic(f: dict[str, Any]) -> tuple[int, frozenset[str], dict[str, Any]]:
    event = {
        "actor": {"app_name": "custos"},
        "api": {"operation": f["event_type"]},
        "src_endpoint": {"name": f.get("gateway.instance") or "custos"},
    }
    return 99, _COMMON, event


_BUILDERS: Final = {
    "llm.call": _llm_call,
    "admin.change": _admin_change,
    "config.revision": _config_revision,
    "auth.failure": _auth_failure,
    "audit.purge": _audit_purge,
}
