"""Copies of the audit trail outside the store: OTLP (spans and log records) and JSON lines.

Exporters receive batches of records once they are durable (from the writer's flush task, never
from a request) and must not block: the JSON lines file is appended to with one ``write`` per
batch; OpenTelemetry's batch processors queue spans and log records and send them from their own
threads through the standard OTLP/HTTP exporter.

What is exported is the record and nothing more, so a copy can never hold what the record does
not (no token, no provider key, no content: ``audit.content`` is ``none``):

- **spans**, for ``llm.call``: one SERVER span per request named
  ``{gen_ai.operation.name} {gen_ai.request.model}`` carrying the record's GenAI attributes,
  with one CLIENT child span per upstream attempt (``gen_ai.provider.name``, the upstream model,
  its status, error and region), timed from the record;
- **log records**, for every event: the body is the record's canonical JSON, exactly as stored,
  with ``audit.event_id``, ``audit.event_type`` and ``audit.leaf_hash`` as attributes, so a SIEM
  copy can be checked against the log (``SHA-256(0x00 || body)`` is the leaf hash);
- **checkpoint log records** (``OTLPCheckpointExport``, driven by the checkpointer, not the
  writer): each new signed checkpoint's note as the body, with its origin, size and root as
  attributes. A copy of the checkpoints outside the database is what exposes a history
  rewritten by someone who holds both the database and the signing key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from custos import private
from custos.audit.gateway_info import GatewayInfo
from custos.audit.log.checkpoint import Checkpoint
from custos.audit.records.record import LLM_CALL, SealedRecord
from custos.config.audit import AuditSettings, OTLPSettings

log = logging.getLogger("custos.audit")

#: The semantic-conventions schema the attribute names follow.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
_SPAN_FIELDS_SKIPPED = frozenset({"salt", "event_type", "schema_version", "metadata"})
#: Attribute namespaces defined by the semantic conventions; the record's other fields are
#: exported under ``custos.``.
_SEMCONV = ("gen_ai.", "error.", "http.", "cloud.", "server.", "client.")


class JSONLExport:
    """Appends every record's bytes to a file, one per line (what ``custos audit export``
    writes, for a SIEM that tails files)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        private.make_dir(self.path.parent)
        self._file = private.open_binary(self.path, "ab")

    def export(self, records: Sequence[SealedRecord]) -> None:
        self._file.write(b"".join([r.body + b"\n" for r in records]))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _resource(gateway: GatewayInfo) -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource.create(
        {
            "service.name": "custos",
            "service.version": gateway.version,
            "service.instance.id": gateway.instance,
        }
    )


def _log_pipeline(
    settings: OTLPSettings, gateway: GatewayInfo, batching: dict[str, Any]
) -> tuple[Any, Any]:
    """A logger provider sending OTLP/HTTP log records to ``settings.endpoint`` from a batch
    processor's thread, and its ``custos.audit`` logger."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    provider = LoggerProvider(resource=_resource(gateway))
    exporter = OTLPLogExporter(
        endpoint=f"{settings.endpoint}/v1/logs",
        headers=dict(settings.headers),
        timeout=settings.timeout_s,
    )
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, **batching))
    logger = provider.get_logger("custos.audit", gateway.version, schema_url=SCHEMA_URL)
    return provider, logger


class OTLPExport:
    """Spans and log records over OTLP/HTTP to ``settings.endpoint``."""

    def __init__(self, settings: OTLPSettings, gateway: GatewayInfo) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = _resource(gateway)
        common: dict[str, Any] = {"headers": dict(settings.headers), "timeout": settings.timeout_s}
        # Batches are sent from the processors' threads; the queues are deep enough for a few
        # seconds at thousands of requests a second, and what overflows is dropped, never
        # waited for (the audit trail itself is the store, not this copy).
        batching: dict[str, Any] = {
            "schedule_delay_millis": 500,
            "max_queue_size": 65536,
            "max_export_batch_size": 2048,
        }
        self._tracer_provider = None
        self._logger_provider = None
        self._tracer = None
        self._logger = None
        if settings.traces:
            self._tracer_provider = TracerProvider(resource=resource)
            self._tracer_provider.add_span_processor(
                BatchSpanProcessor(
                    OTLPSpanExporter(endpoint=f"{settings.endpoint}/v1/traces", **common),
                    **batching,
                )
            )
            self._tracer = self._tracer_provider.get_tracer(
                "custos", gateway.version, schema_url=SCHEMA_URL
            )
        if settings.logs:
            self._logger_provider, self._logger = _log_pipeline(settings, gateway, batching)

    def export(self, records: Sequence[SealedRecord]) -> None:
        for record in records:
            if self._tracer is not None and record.event_type == LLM_CALL:
                self._spans(record)
            if self._logger is not None:
                self._log(record)

    def _spans(self, record: SealedRecord) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        assert self._tracer is not None
        f = record.fields
        start_ns = record.at_ms * 1_000_000
        end_ns = start_ns + f["latency_ms"] * 1_000_000
        name = f"{f['gen_ai.operation.name']} {f['gen_ai.request.model'] or 'unknown'}"
        span = self._tracer.start_span(
            name, kind=SpanKind.SERVER, attributes=span_attributes(f), start_time=start_ns
        )
        if f["error.type"] is not None:
            span.set_status(Status(StatusCode.ERROR, f["error.type"]))
        parent = trace.set_span_in_context(span)
        for attempt in f["attempts"]:
            account, _, model = attempt["target"].partition("/")
            child_start = start_ns + attempt["offset_ms"] * 1_000_000
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": f["gen_ai.operation.name"],
                "gen_ai.request.model": model,
                "custos.provider.account": account,
            }
            provider_type = self._provider_type(f, account)
            if provider_type is not None:
                attributes["gen_ai.provider.name"] = provider_type
            if attempt["status"] is not None:
                attributes["http.response.status_code"] = attempt["status"]
            if attempt["error"] is not None:
                attributes["error.type"] = attempt["error"]
            if attempt["region"] is not None:
                attributes["cloud.region"] = attempt["region"]
            child = self._tracer.start_span(
                f"{f['gen_ai.operation.name']} {model}",
                context=parent,
                kind=SpanKind.CLIENT,
                attributes=attributes,
                start_time=child_start,
            )
            if attempt["error"] is not None:
                child.set_status(Status(StatusCode.ERROR, attempt["error"]))
            child.end(end_time=child_start + attempt["latency_ms"] * 1_000_000)
        span.end(end_time=end_ns)

    @staticmethod
    def _provider_type(fields: dict[str, Any], account: str) -> str | None:
        # The served attempt's provider is in the record; an earlier attempt on another account
        # of the same type has the same name, and a different type is unknown here.
        if fields["provider.account"] == account:
            return fields["gen_ai.provider.name"]
        return None

    def _log(self, record: SealedRecord) -> None:
        from opentelemetry._logs import SeverityNumber

        assert self._logger is not None
        self._logger.emit(
            timestamp=record.at_ms * 1_000_000,
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            body=record.body.decode("utf-8"),
            event_name=f"custos.audit.{record.event_type}",
            attributes={
                "audit.event_id": record.event_id,
                "audit.event_type": record.event_type,
                "audit.leaf_hash": record.leaf_hash.hex(),
                "audit.schema_version": record.fields["schema_version"],
            },
        )

    def close(self) -> None:
        for provider in (self._tracer_provider, self._logger_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception:
                    log.warning("OTLP export: shutdown failed", exc_info=True)


class OTLPCheckpointExport:
    """Each new signed checkpoint as one OTLP log record (``custos.audit.checkpoint``): the body
    is the signed note exactly as stored and written to the export file; attributes carry the
    origin, tree size, root (hex and base64), time and the note's SHA-256. Sent from the batch
    processor's thread; the checkpointer only queues it."""

    def __init__(self, settings: OTLPSettings, gateway: GatewayInfo) -> None:
        self._provider, self._logger = _log_pipeline(
            settings, gateway, {"schedule_delay_millis": 500}
        )

    def __call__(self, checkpoint: Checkpoint) -> None:
        import base64

        from opentelemetry._logs import SeverityNumber

        from custos.audit.records.record import unix_ms

        self._logger.emit(
            timestamp=unix_ms(checkpoint.at) * 1_000_000,
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            body=checkpoint.note,
            event_name="custos.audit.checkpoint",
            attributes={
                "audit.checkpoint.origin": checkpoint.origin,
                "audit.checkpoint.size": checkpoint.size,
                "audit.checkpoint.root_hash": checkpoint.root.hex(),
                "audit.checkpoint.root_hash_base64": base64.b64encode(checkpoint.root).decode(),
                "audit.checkpoint.time": checkpoint.time,
                "audit.checkpoint.note_sha256": checkpoint.note_hash.hex(),
            },
        )

    def close(self) -> None:
        try:
            self._provider.shutdown()
        except Exception:
            log.warning("OTLP checkpoint export: shutdown failed", exc_info=True)


def span_attributes(fields: dict[str, Any]) -> dict[str, Any]:
    """The request span's attributes: the record's scalar fields, under their semantic-convention
    names where they have one and ``custos.NAME`` otherwise; metadata as
    ``custos.metadata.KEY``; decisions and skips as string arrays; the time to first chunk in
    seconds, as the conventions define it."""
    attributes: dict[str, Any] = {}
    for key, value in fields.items():
        if key in _SPAN_FIELDS_SKIPPED or value is None:
            continue
        if isinstance(value, str | bool | int):
            attributes[key if key.startswith(_SEMCONV) else f"custos.{key}"] = value
    attributes["custos.principal.teams"] = list(fields["principal.teams"])
    attributes["custos.data_classes"] = [c["class"] for c in fields["data_classes"]]
    # Each stage's decision as ``stage:rule:decision`` (guardrails' among them), and the
    # targets routing passed over as ``target:reason``.
    attributes["custos.decisions"] = [
        f"{d['stage']}:{d['rule'] or '-'}:{d['decision']}" for d in fields["decisions"]
    ]
    attributes["custos.skips"] = [f"{s['target']}:{s['reason']}" for s in fields["skips"]]
    for key, value in fields["metadata"].items():
        attributes[f"custos.metadata.{key}"] = value
    if fields["time_to_first_chunk_ms"] is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = fields["time_to_first_chunk_ms"] / 1000
    return attributes


class Exports:
    """Every configured export, called with each durable batch."""

    def __init__(self, settings: AuditSettings, gateway: GatewayInfo) -> None:
        self.sinks: list[JSONLExport | OTLPExport] = [JSONLExport(p) for p in settings.jsonl_paths]
        if settings.otlp is not None:
            self.sinks.append(OTLPExport(settings.otlp, gateway))

    def __call__(self, records: Sequence[SealedRecord]) -> None:
        for sink in self.sinks:
            try:
                sink.export(records)
            except Exception:
                log.exception("audit export to %s failed", type(sink).__name__)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
