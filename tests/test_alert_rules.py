"""deploy/prometheus/custos-rules.yml: a Prometheus rule file whose every expression names
metrics the gateway exports (a renamed metric would otherwise leave an alert that never fires)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client.metrics_core import Metric

from custos.telemetry import metrics

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "custos-rules.yml"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def exported() -> set[str]:
    """The series names the gateway's /metrics can hold, from its registry."""
    names: set[str] = set()
    family: Metric
    for family in metrics.REGISTRY.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
    return names


def test_rules_name_only_exported_metrics() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len({r["alert"] for r in rules}) == len(rules) > 0
    known = exported()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        named = set(re.findall(r"\bcustos_[a-z_]+", rule["expr"]))
        assert named and named <= known, (rule["alert"], named - known)
    expressions = " ".join(r["expr"] for r in rules)
    for needed in ("custos_audit_store_up", "custos_audit_dropped_total", "custos_counters_up"):
        assert needed in expressions
