"""Prometheus metrics, served at ``GET /metrics``.

Label values come from the config (account, model names, budget ids) and fixed code sets (the
matched route's template, status, error code), never from what a client sends (its path, body or
headers), so the number of series stays bounded however many odd requests arrive.

The metrics a request updates on its way through are ``LoopCounter`` and ``LoopHistogram``
(``custos.telemetry.loop_metrics``: no lock, updated only on the event loop's thread); those the
audit writer's and other threads update are ``prometheus_client``'s own.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

from custos.telemetry.loop_metrics import LoopCounter, LoopHistogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = LoopCounter(
    "custos_requests",
    "Requests by route and final HTTP status.",
    ["route", "status"],
    registry=REGISTRY,
)
DENIALS = LoopCounter(
    "custos_errors",
    "Requests stopped by the gateway, by error code.",
    ["code"],
    registry=REGISTRY,
)
LATENCY = LoopHistogram(
    "custos_request_duration_seconds",
    "Time from request received to last byte sent.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
UPSTREAM_ATTEMPTS = LoopCounter(
    "custos_upstream_attempts",
    "Calls to providers by provider account and outcome (HTTP status or error).",
    ["account", "outcome"],
    registry=REGISTRY,
)
TOKENS = LoopCounter(
    "custos_tokens",
    "Tokens by provider model and direction (input, output).",
    ["model", "direction"],
    registry=REGISTRY,
)
COST = LoopCounter(
    "custos_cost_micros",
    "Cost in micro-dollars by provider model.",
    ["model"],
    registry=REGISTRY,
)
HTTP_REFUSED = Counter(
    "custos_http_refused",
    "Requests the HTTP layer cut off, by reason (header_too_large: 431, header_timeout: 408, "
    "body_timeout: the body did not arrive in time).",
    ["reason"],
    registry=REGISTRY,
)
ACTIVE_STREAMS = Gauge(
    "custos_active_streams", "Streams being relayed to clients now.", registry=REGISTRY
)
CONFIG_RELOADS = Counter(
    "custos_config_reloads",
    "Config reload attempts by result (applied, refused, unchanged).",
    ["result"],
    registry=REGISTRY,
)
CONFIG_INFO = Gauge(
    "custos_config_revision_info",
    "The config revision being served (value 1).",
    ["revision"],
    registry=REGISTRY,
)

DENIALS_BY_STAGE = LoopCounter(
    "custos_denials",
    "LLM requests stopped by the gateway, by the stage that stopped them.",
    ["stage"],
    registry=REGISTRY,
)
# The audit trail (custos/audit/storage/writer.py): alarms are custos_audit_store_up == 0 and a
# growing custos_audit_spool_bytes (the store is down and records wait in the local spool).
AUDIT_RECORDS = Counter(
    "custos_audit_records", "Audit records written, by event type.", ["event_type"],
    registry=REGISTRY,
)  # fmt: skip
AUDIT_QUEUE_DEPTH = Gauge(
    "custos_audit_queue_depth",
    "Audit records in memory, not yet in the spool (built, or settled and built at the next "
    "flush).",
    registry=REGISTRY,
)
AUDIT_UNSHIPPED = Gauge(
    "custos_audit_unshipped", "Audit records in the spool, not yet in the store.", registry=REGISTRY
)
AUDIT_SPOOL_BYTES = Gauge(
    "custos_audit_spool_bytes", "Size of the local audit spool.", registry=REGISTRY
)
AUDIT_SPOOL_MAX_BYTES = Gauge(
    "custos_audit_spool_max_bytes",
    "The spool's bound (audit.spool.max_bytes): at it, new requests are refused.",
    registry=REGISTRY,
)
AUDIT_STORE_UP = Gauge(
    "custos_audit_store_up", "1 while the store accepts audit records, else 0.", registry=REGISTRY
)
AUDIT_SHIP_FAILURES = Counter(
    "custos_audit_ship_failures", "Failed attempts to write audit records to the store.",
    registry=REGISTRY,
)  # fmt: skip
AUDIT_REFUSED = Counter(
    "custos_audit_refused",
    "Audit records the store refused for what they hold, kept in the spool's refused/ directory.",
    registry=REGISTRY,
)
AUDIT_DROPPED = Counter(
    "custos_audit_dropped",
    "Audit records lost: the spool could not be written with 200,000 records waiting in "
    "memory, or a record could not be built at all (logged with its request id).",
    registry=REGISTRY,
)
AUDIT_REPAIRED = Counter(
    "custos_audit_repaired",
    "Audit records that held a value no record can (an integer past 2**53 - 1, text that is "
    "not UTF-8), written with it clamped or replaced and the paths listed in audit.repaired.",
    registry=REGISTRY,
)

# SIEM sinks (custos/audit/siem/follower.py): alarm on a growing lag or on failures that go on.
SIEM_RECORDS = Counter(
    "custos_siem_records", "Audit records a SIEM sink's receiver acknowledged.", ["sink"],
    registry=REGISTRY,
)  # fmt: skip
SIEM_FAILURES = Counter(
    "custos_siem_failures", "Failed attempts to deliver a batch to a SIEM sink (retried).",
    ["sink"], registry=REGISTRY,
)  # fmt: skip
SIEM_LAG = Gauge(
    "custos_siem_lag_records",
    "Records in the audit log a SIEM sink has not delivered yet (set by the replica sending "
    "for the sink).",
    ["sink"],
    registry=REGISTRY,
)


@lru_cache(maxsize=8192)
def child(metric: MetricWrapperBase | LoopCounter | LoopHistogram, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: ``labels()`` hashes and locks on every call,
    which shows in the hot path's profile. Label values come from bounded sets (routes, status
    codes, configured model names), so the cache stays small."""
    return metric.labels(*labels)


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def set_revision(revision: str) -> None:
    CONFIG_INFO.clear()
    CONFIG_INFO.labels(revision=revision).set(1)


# -- budgets and rate limits (custos.limits) ---------------------------------------------------

COUNTERS_UP = Gauge(
    "custos_counters_up",
    "1 while the budget and rate-limit counters answer, 0 while they are unreachable.",
    registry=REGISTRY,
)
COUNTERS_UP.set(1)
COUNTER_FAILURES = Counter(
    "custos_counter_failures",
    "Requests that met unreachable counters, by what they govern (budgets, rate_limits) and "
    "the decision taken (fail_open, fail_closed).",
    ["kind", "decision"],
    registry=REGISTRY,
)
COUNTER_SEEDS = Counter(
    "custos_counter_seeds",
    "Times shared counters were seeded from the spend ledger (first start, Redis restarted).",
    registry=REGISTRY,
)
LEDGER_FLUSH_FAILURES = Counter(
    "custos_ledger_flush_failures",
    "Spend-ledger batches that could not be written (kept for the next attempt).",
    registry=REGISTRY,
)
GUARDRAIL_VERDICTS = LoopCounter(
    "custos_guardrail_verdicts_total",
    "Guardrail decisions, by guardrail, hook and outcome (allow, deny, mutate, audit_only)",
    ["guardrail", "hook", "outcome"],
    registry=REGISTRY,
)
GUARDRAIL_ERRORS = LoopCounter(
    "custos_guardrail_errors_total",
    "Guardrails that could not decide (timeout, error, a webhook's bad answer), by guardrail",
    ["guardrail", "reason"],
    registry=REGISTRY,
)
GUARDRAIL_SECONDS = LoopHistogram(
    "custos_guardrail_seconds",
    "Time a guardrail took on one call (a stream's output guardrails: over the whole stream)",
    ["guardrail", "hook"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
    registry=REGISTRY,
)
DATA_CLASSES_DETECTED = LoopCounter(
    "custos_data_classes_detected_total",
    "Requests in which a configured data class was detected in the content, by class",
    ["data_class"],
    registry=REGISTRY,
)
UNPRICED_CALLS = LoopCounter(
    "custos_unpriced_calls",
    "Calls served by a model the config marks 'unpriced: allow' (charged 0 to budgets).",
    ["model"],
    registry=REGISTRY,
)
BUDGET_OVERRUNS = Counter(
    "custos_budget_overruns",
    "Calls let through over an audit-mode budget's limit, by budget id.",
    ["budget"],
    registry=REGISTRY,
)
BUDGET_ALERTS = Counter(
    "custos_budget_alerts",
    "Budget alert webhooks by budget id and outcome (delivered, failed).",
    ["budget", "outcome"],
    registry=REGISTRY,
)

# -- routing (custos.routing) ------------------------------------------------------------------

RESIDENCY_DECISIONS = LoopCounter(
    "custos_residency_decisions_total",
    "Residency rules that applied to a request, by rule and outcome (allow: targets in an "
    "allowed region were left; deny: none was, the request was refused residency_denied)",
    ["rule", "outcome"],
    registry=REGISTRY,
)

TARGET_COOLDOWN = Gauge(
    "custos_target_cooldown",
    "1 while a virtual model skips a target that kept failing (its cooldown, until a probe "
    "answers), else 0.",
    ["virtual_model", "target"],
    registry=REGISTRY,
)
TARGET_SKIPS = LoopCounter(
    "custos_target_skips",
    "Targets a virtual model passed over without trying them, by reason (cooldown).",
    ["virtual_model", "target", "reason"],
    registry=REGISTRY,
)
TARGET_LATENCY = Gauge(
    "custos_target_first_event_seconds",
    "Moving average of a target's time to its first event (a plain call's whole answer), as "
    "the latency strategy sees it (targets of latency-strategy virtual models).",
    ["target", "kind"],
    registry=REGISTRY,
)
