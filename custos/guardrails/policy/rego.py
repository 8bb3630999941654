"""The ``opa`` guardrail in process: Rego evaluated by rego-cpp (regopy), and what a query's
result means (shared with the remote OPA).

The query (``data.custos.allow`` unless ``query:`` says otherwise) answers either a boolean
(``true``: allowed) or a decision document ``{"allow": bool, "rule": str, "reason": str}``
(``rule`` and ``reason`` optional). An undefined result denies (no rule allowed the call);
anything else is an answer the guardrail cannot use (``bad_answer``: ``enforcing`` decides).
"""

from __future__ import annotations

import threading
from typing import Any

import orjson

from custos.config.policies import PolicySources, compile_rego
from custos.guardrails.policy.decision import PolicyFailed, PolicyRequest, PolicyVerdict

UNDEFINED = object()


class RegoEngine:
    engine = "rego"

    def __init__(self, sources: PolicySources, query: str) -> None:
        self.interpreter, self.bundle = compile_rego(sources, query)
        self.query = query
        self.revision = sources.digest
        # One interpreter holds one input at a time: calls from threads take turns.
        self._lock = threading.Lock()

    async def evaluate(self, request: PolicyRequest) -> PolicyVerdict:
        # A compiled bundle answers in about 0.1 ms: inline, on the event loop.
        import regopy

        try:
            with self._lock:
                self.interpreter.set_input(request.as_input())
                output = self.interpreter.query_bundle(self.bundle)
                if not output.ok():
                    raise PolicyFailed("error")
                text = str(output)
                result = UNDEFINED if text == "undefined" else _first_expression(output)
        except regopy.RegoError:
            raise PolicyFailed("error") from None
        return verdict_of(result, self.query)


def _first_expression(output: Any) -> Any:
    values = orjson.loads(output.expressions().json())
    if not isinstance(values, list) or not values:
        return UNDEFINED
    return values[0]


def verdict_of(result: Any, query: str) -> PolicyVerdict:
    """What a query's result means (see the module's docstring)."""
    if result is UNDEFINED:
        return PolicyVerdict(False, None, f"{query} is undefined: no rule allows this")
    if isinstance(result, bool):
        return PolicyVerdict(result, None, "allowed" if result else f"{query} is false")
    if not isinstance(result, dict) or not isinstance(result.get("allow"), bool):
        raise PolicyFailed("bad_answer")
    rule, reason = result.get("rule"), result.get("reason")
    if rule is not None and not isinstance(rule, str):
        raise PolicyFailed("bad_answer")
    if reason is not None and not isinstance(reason, str):
        raise PolicyFailed("bad_answer")
    allow = result["allow"]
    return PolicyVerdict(allow, rule, reason or ("allowed" if allow else "denied"))
