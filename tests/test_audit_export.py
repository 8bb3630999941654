"""Copies of the audit trail: OTLP spans and log records received by a local OTLP/HTTP receiver,
the JSON lines export, Prometheus metrics; and canaries (a token, a provider key, a prompt) that
must appear in nothing the gateway writes."""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from custos.audit.records.record import leaf_hash
from tests.audit_helpers import eventually, one_call, query, serve_http
from tests.conftest import CUSTOS, ROOT, GatewayProcess, free_port, standard_config, wait_http


class OTLPReceiver:
    """An OTLP/HTTP (protobuf) receiver on loopback that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.logs: list[Any] = []
        self.raw: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.raw.append(body)
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            receiver.spans.extend(scope.spans)
                elif self.path == "/v1/logs":
                    request = ExportLogsServiceRequest.FromString(body)
                    for resource in request.resource_logs:
                        for scope in resource.scope_logs:
                            receiver.logs.extend(scope.log_records)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server, self.url = serve_http(Handler)

    def close(self) -> None:
        self.server.shutdown()


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(item: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in item.attributes}


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    found = OTLPReceiver()
    yield found
    found.close()


def test_otlp_spans_logs_and_jsonl(
    mock_provider: Any, receiver: OTLPReceiver, tmp_path: Path
) -> None:
    audit = (
        f'audit: {{export: [{{otlp: {{endpoint: "{receiver.url}"}}}},'
        " {jsonl: {path: ./exports/audit.jsonl}}]}\n"
    )
    gateway = GatewayProcess(standard_config(mock_provider.url) + audit, tmp_path)
    store_url = f"sqlite:///{tmp_path / 'custos.db'}"
    try:
        metadata = {"project": "alpha", "data_classification": "customer_data"}
        served = httpx.post(
            f"{gateway.base_url}/chat/completions",
            headers={**gateway.headers, "x-custos-metadata": json.dumps(metadata)},
            json={"model": "chat-default", "messages": [{"role": "user", "content": "hi"}]},
            timeout=15,
        )
        assert served.status_code == 200
        request_id = served.headers["x-custos-request-id"]
        record = one_call(store_url, request_id)

        def request_spans() -> list[Any]:
            return [
                s for s in receiver.spans if _attributes(s).get("custos.request_id") == request_id
            ]

        spans = eventually(request_spans, lambda found: len(found) == 1, timeout=15)
        assert len(spans) == 1
        span = spans[0]
        attributes = _attributes(span)
        assert span.name == "chat chat-default"
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "chat-default"
        assert attributes["gen_ai.provider.name"] == "azure.ai.openai"
        assert attributes["gen_ai.usage.input_tokens"] == record["gen_ai.usage.input_tokens"]
        assert attributes["gen_ai.usage.output_tokens"] == record["gen_ai.usage.output_tokens"]
        assert attributes["http.response.status_code"] == 200
        assert attributes["cloud.region"] == "eu"
        assert attributes["custos.cost_micros"] == record["cost_micros"]
        assert attributes["custos.metadata.project"] == "alpha"
        assert attributes["custos.data_classes"] == ["customer_data"]
        assert attributes["custos.decisions"] == [
            f"{d['stage']}:{d['rule'] or '-'}:{d['decision']}" for d in record["decisions"]
        ]
        assert attributes["custos.decisions"][0].startswith("authorize:")
        # One child span per upstream attempt, in the same trace, under the request's span.
        children = eventually(
            lambda: [s for s in receiver.spans if s.parent_span_id == span.span_id],
            lambda found: len(found) == 3,
        )
        assert all(c.trace_id == span.trace_id for c in children)
        # Attempt spans start a millisecond apart at most (backoff_ms: 1), so their start times can
        # tie: compare them as a multiset, not in time order.
        got = sorted(
            (
                _attributes(c).get("http.response.status_code"),
                _attributes(c)["custos.provider.account"],
            )
            for c in children
        )
        assert got == [(200, "azure-eu"), (503, "openai-main"), (503, "openai-main")]
        assert _attributes(children[0])["gen_ai.operation.name"] == "chat"

        # A log record per audit event: the body is the record's bytes as stored.
        stored = {
            r["event_id"]: bytes(r["record"])
            for r in query(store_url, "SELECT event_id, record FROM audit_events")
        }
        logs = eventually(
            lambda: [
                entry
                for entry in receiver.logs
                if _attributes(entry)["audit.event_id"] == record["event_id"]
            ],
            bool,
        )
        entry = logs[0]
        body = entry.body.string_value.encode()
        assert body == stored[record["event_id"]]
        assert _attributes(entry)["audit.leaf_hash"] == leaf_hash(body).hex()
        assert _attributes(entry)["audit.event_type"] == "llm.call"
        assert entry.event_name == "custos.audit.llm.call"
        kinds = eventually(
            lambda: {_attributes(e)["audit.event_type"] for e in receiver.logs},
            lambda k: {"llm.call", "config.revision", "admin.change"} <= k,
        )
        assert {"llm.call", "config.revision", "admin.change"} <= kinds

        # The JSON lines file holds the same bytes.
        lines = eventually(
            lambda: (tmp_path / "exports" / "audit.jsonl").read_bytes().splitlines(),
            lambda found: stored[record["event_id"]] in found,
        )
        assert stored[record["event_id"]] in lines
        assert all(line in stored.values() for line in lines)

        # Prometheus: requests, tokens, cost, denials by stage, the audit queue and spool.
        httpx.post(
            f"{gateway.base_url}/chat/completions",
            headers={"authorization": "Bearer x"},
            json={"model": "chat-default", "messages": []},
        )
        eventually(
            lambda: gateway.metric("custos_denials_total", stage="authenticate"), lambda v: v >= 1
        )
        assert gateway.metric("custos_denials_total", stage="authenticate") >= 1
        assert gateway.metric("custos_audit_records_total", event_type="llm.call") >= 2
        assert gateway.metric("custos_audit_store_up") == 1
        text = httpx.get(f"{gateway.url}/metrics").text
        for name in (
            "custos_audit_queue_depth",
            "custos_audit_spool_bytes",
            "custos_audit_unshipped",
            "custos_tokens_total",
            "custos_cost_micros_total",
            "custos_request_duration_seconds_bucket",
        ):
            assert name in text, name
    finally:
        gateway.stop()


def test_canaries_appear_in_nothing_written(receiver: OTLPReceiver, tmp_path: Path) -> None:
    provider_key = "CANARY-PROVIDER-KEY-8f1d2c7e9a"
    prompt = "CANARY-PROMPT-5b7e0c3d1f: my customer CUST-123456 wants a refund"
    port = free_port()
    mock_url = f"http://127.0.0.1:{port}"
    mock = subprocess.Popen(
        [*CUSTOS, "mock-provider", "--port", str(port), "--api-key", provider_key], cwd=ROOT
    )
    wait_http(f"{mock_url}/_mock/stats", mock)
    audit = (
        f'audit: {{export: [{{otlp: {{endpoint: "{receiver.url}"}}}},'
        " {jsonl: {path: ./audit.jsonl}}]}\n"
    )
    gateway = GatewayProcess(
        standard_config(mock_url) + audit, tmp_path, env={"CUSTOS_TEST_MOCK_KEY": provider_key}
    )
    store_url = f"sqlite:///{tmp_path / 'custos.db'}"
    try:
        vat_team = httpx.post(
            f"{gateway.url}/admin/v1/teams", headers=gateway.headers, json={"name": "canary"}
        )
        assert vat_team.status_code == 201
        httpx.post(
            f"{gateway.url}/admin/v1/accounts",
            headers=gateway.headers,
            json={"name": "canary-bot", "team": "canary"},
        )
        vat = httpx.post(
            f"{gateway.url}/admin/v1/tokens",
            headers=gateway.headers,
            json={"name": "canary", "account": "canary-bot"},
        ).json()["token"]
        tokens = [gateway.token, vat]
        request_ids = []
        for token, model, stream in [
            (gateway.token, "openai-main/gpt-5.5", False),
            (gateway.token, "claude-main/claude-sonnet-4.5", True),
            (gateway.token, "openai-main/gpt-5.5+status=400", False),
            (vat, "openai-main/gpt-5.5", False),  # the account may not: 403
            (gateway.token + "x", "openai-main/gpt-5.5", False),  # a mangled token: 401
        ]:
            response = httpx.post(
                f"{gateway.base_url}/chat/completions",
                headers={
                    "authorization": f"Bearer {token}",
                    "x-custos-metadata": json.dumps({"project": "VISIBLE-CONTROL-41"}),
                },
                json={
                    "model": model,
                    "stream": stream,
                    "messages": [{"role": "user", "content": prompt}],
                },
                timeout=15,
            )
            request_ids.append(response.headers["x-custos-request-id"])
        httpx.get(f"{gateway.base_url}/models", headers={"authorization": f"Bearer {vat}x"})
        for request_id in request_ids:
            one_call(store_url, request_id)
        exported = subprocess.run(
            [*CUSTOS, "audit", "export", "--url", gateway.url, "--token", gateway.token],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        eventually(lambda: len(receiver.logs), lambda n: n >= len(request_ids))
        time.sleep(1.0)  # the last OTLP batch
    finally:
        gateway.stop()
        mock.terminate()
        mock.wait(10)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"custos.db", "gateway.log", "audit.jsonl"} <= names
    blobs = [(str(p), p.read_bytes()) for p in written if p.name != "custos.yaml"]
    blobs += [("otlp", b"".join(receiver.raw)), ("export", exported)]
    canaries = [
        provider_key,
        prompt.split(":")[0],
        "CUST-123456",
        *tokens,
        *(t.split("_")[-1] for t in tokens),
    ]
    for canary in canaries:
        for where, blob in blobs:
            assert canary.encode() not in blob, f"{canary[:20]}… found in {where}"
    # What was written is not nothing: a value the record does keep (metadata) is found in the
    # database, the JSON lines file, the export and the OTLP copy, so the search can find things.
    for where in ("custos.db", "audit.jsonl", "otlp", "export"):
        assert any(
            b"VISIBLE-CONTROL-41" in blob
            for name, blob in blobs
            if name.split("/")[-1].startswith(where)
        ), where
    assert exported.count(b"\n") >= len(request_ids) and receiver.spans
