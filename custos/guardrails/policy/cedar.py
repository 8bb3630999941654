"""The ``cedar`` guardrail's engine: Cedar policies evaluated in process (cedarpy).

A ``PolicyRequest`` becomes a Cedar request and its entities (docs/policy.md has the schema):

- principal ``User::"<email>"`` or ``VirtualAccount::"<name>"``, with ``uid`` and ``roles``
  (a set) as attributes and its teams ``Team::"<name>"`` as parents (``principal in
  Team::"support"``);
- action ``Action::"call_tool"`` or ``Action::"call_model"``;
- resource ``Tool::"<server>/<name>"`` with ``server``, ``name`` and ``arguments`` (a record),
  or ``Model::"<name>"`` with ``name``;
- context ``{metadata: {...}, data_classes: [set of names], time: datetime(...)}``.

A ``forbid`` policy whose condition cannot be evaluated (a tool argument of an unexpected
type: ``to`` sent as a list where the policy compares a string) denies. Cedar itself skips a
policy that errors, which for a ``forbid`` would let through exactly the call it was written
to stop; a ``permit`` that errors does not apply (Cedar's default deny), which already fails
closed.

Values Cedar has no type for are adapted: a ``null`` argument is left out, a non-integral number
becomes its decimal text, an integer beyond 64 bits its text.
"""

from __future__ import annotations

import re
from typing import Any

import cedarpy
import orjson

from custos.config.policies import PolicySources
from custos.guardrails.policy.decision import PolicyFailed, PolicyRequest, PolicyVerdict

#: How cedarpy names the policy an evaluation error came from.
_ERRORED = re.compile(r"policy `(policy(\d+))`")
_I64 = range(-(2**63), 2**63)
#: Keys Cedar's JSON reads as entity references or extension values, not as record attributes.
_ESCAPES = ("__entity", "__extn", "__expr")


class CedarEngine:
    engine = "cedar"

    def __init__(self, sources: PolicySources) -> None:
        self.policies = cedarpy.PolicySet.from_str(sources.text)
        self.labels = sources.labels
        self.effects = sources.effects
        self.revision = sources.digest

    async def evaluate(self, request: PolicyRequest) -> PolicyVerdict:
        # Microseconds: evaluated inline, on the event loop.
        try:
            query, entities = cedar_request(request)
            result = cedarpy.is_authorized(query, self.policies, entities)
        except (ValueError, KeyError, TypeError) as exc:
            raise PolicyFailed("bad_request") from exc
        reasons = [self._label(r) for r in result.diagnostics.reasons]
        errors = result.diagnostics.errors
        broken = [self._label(p) for p in self._errored_forbids(errors)]
        if broken:
            return PolicyVerdict(
                False, broken[0], f"forbid policy {', '.join(broken)} could not be evaluated"
            )
        if result.allowed:
            return PolicyVerdict(True, reasons[0] if reasons else None, "permitted")
        if reasons:
            return PolicyVerdict(False, reasons[0], f"forbidden by {', '.join(reasons)}")
        suffix = f" ({len(errors)} policy error(s))" if errors else ""
        return PolicyVerdict(False, None, f"no policy permits this{suffix}")

    def _errored_forbids(self, errors: list[str]) -> list[str]:
        found = []
        for error in errors:
            match = _ERRORED.search(error)
            index = int(match.group(2)) if match else len(self.effects)
            if index < len(self.effects) and self.effects[index] == "forbid":
                found.append(match.group(1))  # type: ignore[union-attr]
        return found

    def _label(self, policy_id: str) -> str:
        if policy_id.startswith("policy") and policy_id[6:].isdigit():
            index = int(policy_id[6:])
            if index < len(self.labels):
                return self.labels[index]
        return policy_id


def cedar_request(request: PolicyRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Cedar request and entities of a ``PolicyRequest``."""
    principal = request.principal
    kind = "VirtualAccount" if principal.get("type") == "VirtualAccount" else "User"
    principal_uid = {"type": kind, "id": str(principal["id"])}
    teams = [{"type": "Team", "id": str(t)} for t in principal.get("teams") or ()]
    attrs = {"uid": str(principal.get("uid", principal["id"])),
             "roles": [str(r) for r in principal.get("roles") or ()]}  # fmt: skip
    resource = request.resource
    if resource.get("type") == "Tool":
        resource_uid = {"type": "Tool", "id": f"{resource['server']}/{resource['name']}"}
        resource_attrs = {"server": str(resource["server"]), "name": str(resource["name"]),
                          "arguments": cedar_value(resource.get("arguments") or {})}  # fmt: skip
    else:
        resource_uid = {"type": "Model", "id": str(resource["name"])}
        resource_attrs = {"name": str(resource["name"])}
    context = request.context
    entities = [
        {"uid": principal_uid, "attrs": attrs, "parents": teams},
        *({"uid": t, "attrs": {}, "parents": []} for t in teams),
        {"uid": resource_uid, "attrs": resource_attrs, "parents": []},
    ]
    query = {
        "principal": principal_uid,
        "action": {"type": "Action", "id": request.action},
        "resource": resource_uid,
        "context": {
            "metadata": {str(k): str(v) for k, v in (context.get("metadata") or {}).items()},
            "data_classes": [str(c) for c in context.get("data_classes") or ()],
            "time": {"__extn": {"fn": "datetime", "arg": _cedar_time(context.get("time"))}},
        },
    }
    return query, entities


def cedar_value(value: Any) -> Any:
    """A JSON value as Cedar can hold it (see the module's docstring)."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if value in _I64 else str(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() and int(value) in _I64 else repr(value)
    if isinstance(value, list):
        return [cedar_value(v) for v in value if v is not None]
    if isinstance(value, dict):
        if any(k in _ESCAPES for k in value):
            return orjson.dumps(value).decode()
        return {str(k): cedar_value(v) for k, v in value.items() if v is not None}
    return str(value)


def _cedar_time(value: Any) -> str:
    """Cedar's ``datetime`` takes ``YYYY-MM-DDThh:mm:ss(.sss)Z``: milliseconds at most."""
    text = str(value or "1970-01-01T00:00:00Z")
    if text.endswith("+00:00"):
        text = text[:-6] + "Z"
    head, dot, rest = text.partition(".")
    if dot:
        text = f"{head}.{rest.rstrip('Z')[:3].ljust(3, '0')}Z"
    return text
