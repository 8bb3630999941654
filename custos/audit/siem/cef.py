"""Audit records as CEF (ArcSight Common Event Format, version 0) lines.

``CEF:0|Custos|Custos AI Gateway|<version>|<event type>|<name>|<severity>|<extension>``

Escaping, as the CEF specification has it:

- **header** fields: a backslash becomes ``\\\\`` and a pipe ``\\|``; a header cannot span lines,
  so a CR or LF becomes a space;
- **extension** values: a backslash becomes ``\\\\``, an equals sign ``\\=``, a newline ``\\n`` and
  a carriage return ``\\r``; a pipe is left as it is;
- extension keys are fixed here (letters and digits only).

The keys used are the standard CEF dictionary's where one fits (``rt``, ``externalId``,
``suser``, ``outcome``, ``act``, ``app``, ``reason``, ``dvchost``, ``requestMethod``,
``request``, the ``cs``/``cn`` custom fields with their labels) and the vendor's own
(``CustosAuditSeq``, ``CustosLeafHash``, ``CustosCostMicros``) otherwise; docs/siem.md has the
table.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

from custos.audit.siem.levels import level_of

VENDOR: Final = "Custos"
PRODUCT: Final = "Custos AI Gateway"


def escape_header(value: object) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def escape_value(value: object) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace("=", "\\=")
    return text.replace("\r", "\\r").replace("\n", "\\n")


def extension(pairs: list[tuple[str, Any]]) -> str:
    """``key=value`` pairs joined by spaces, values escaped; ``None`` values left out."""
    return " ".join(f"{k}={escape_value(_text(v))}" for k, v in pairs if v is not None)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)


def to_cef(seq: int, fields: dict[str, Any], leaf_hash: str) -> str:
    """The CEF line of the record ``fields`` at sequence number ``seq``."""
    kind = fields["event_type"]
    header = [
        "CEF:0",
        escape_header(VENDOR),
        escape_header(PRODUCT),
        escape_header(fields.get("gateway.version")),
        escape_header(kind),
        escape_header(_name(fields)),
        str(level_of(fields).cef),
    ]
    pairs: list[tuple[str, Any]] = [
        ("rt", _epoch_ms(fields["time_start"])),
        ("externalId", fields["event_id"]),
        ("dvchost", fields.get("gateway.instance")),
        ("CustosAuditSeq", seq),
        ("CustosLeafHash", leaf_hash),
    ]
    # A record the mapping cannot read is still sent, with the common keys.
    with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
        pairs += _BY_TYPE.get(kind, _nothing)(fields)
    return "|".join(header) + "|" + extension(pairs)


def _name(f: dict[str, Any]) -> str:
    kind = f["event_type"]
    if kind == "llm.call":
        return f"{f.get('api.operation')} {f.get('gen_ai.request.model') or '-'} {f.get('outcome')}"
    if kind == "admin.change":
        return f"{f.get('action')} {f.get('target.type')}"
    if kind == "auth.failure":
        return f"credential refused: {f.get('error.type')}"
    return kind


def _epoch_ms(text: str) -> int:
    from custos.audit.records.record import parse_rfc3339, unix_ms

    return unix_ms(parse_rfc3339(text))


def _llm_call(f: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("suser", f.get("principal.id")),
        ("act", f.get("api.operation")),
        ("app", f.get("api.protocol")),
        ("outcome", f.get("outcome")),
        ("reason", f.get("error.type")),
        ("cs1Label", "team"),
        ("cs1", f.get("team")),
        ("cs2Label", "requestedModel"),
        ("cs2", f.get("gen_ai.request.model")),
        ("cs3Label", "provider"),
        ("cs3", f.get("provider.account")),
        ("cs4Label", "providerModel"),
        ("cs4", f.get("provider.model")),
        ("cs5Label", "requestId"),
        ("cs5", f.get("request_id")),
        ("cs6Label", "configRevision"),
        ("cs6", f.get("config.revision")),
        ("cn1Label", "httpStatus"),
        ("cn1", f.get("http.response.status_code")),
        ("cn2Label", "inputTokens"),
        ("cn2", f.get("gen_ai.usage.input_tokens")),
        ("cn3Label", "outputTokens"),
        ("cn3", f.get("gen_ai.usage.output_tokens")),
        ("CustosCostMicros", f.get("cost_micros")),
        ("CustosLatencyMs", f.get("latency_ms")),
        ("CustosStoppedAt", f.get("stopped_at")),
        ("CustosDataClasses", [c["class"] for c in f.get("data_classes") or []] or None),
    ]


def _admin_change(f: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("suser", f.get("actor.id")),
        ("spriv", f.get("actor.role")),
        ("act", f.get("action")),
        ("cs1Label", "targetType"),
        ("cs1", f.get("target.type")),
        ("cs2Label", "targetId"),
        ("cs2", f.get("target.id")),
    ]


def _config_revision(f: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("act", f.get("trigger")),
        ("cs1Label", "configRevision"),
        ("cs1", f.get("config.revision")),
        ("cs2Label", "previousRevision"),
        ("cs2", f.get("config.previous_revision")),
        ("cs3Label", "textSha256"),
        ("cs3", f.get("config.text_sha256")),
        ("fname", f.get("config.source")),
    ]


def _auth_failure(f: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("requestMethod", f.get("http.request.method")),
        ("request", f.get("http.route")),
        ("reason", f.get("error.type")),
        ("outcome", "failure"),
        ("cs1Label", "clientNetwork"),
        ("cs1", f.get("client.address")),
        ("cs5Label", "requestId"),
        ("cs5", f.get("request_id")),
    ]


def _audit_purge(f: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("act", "purge"),
        ("cnt", f.get("purge.count")),
        ("cs1Label", "cutoff"),
        ("cs1", f.get("purge.cutoff")),
        ("cn1Label", "firstSeq"),
        ("cn1", f.get("purge.first_seq")),
        ("cn2Label", "lastSeq"),
        ("cn2", f.get("purge.last_seq")),
    ]


def _nothing(f: dict[str, Any]) -> list[tuple[str, Any]]:
    return []


_BY_TYPE: Final = {
    "llm.call": _llm_call,
    "admin.change": _admin_change,
    "config.revision": _config_revision,
    "auth.failure": _auth_failure,
    "audit.purge": _audit_purge,
}
