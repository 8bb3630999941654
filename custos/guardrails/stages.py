"""The guardrail stages of the governance chain (``custos.stage``), and data-class detection.

- ``ClassifyContent`` (stage ``classify``, after identify): finds the configured data classes in
  the request's text, once, so every later rule's ``when: {data_classes: …}`` sees them
  (authorize, budgets, rate limits, guardrails, residency). Never refuses.
- ``InputGuardrails`` (stage ``guardrails``, the chain's last stage before the terminal): the
  ``llm_input`` guardrails whose ``when`` matches, in file order. In-process checks run inline
  (microseconds); a ``validate`` webhook runs beside the provider call (``ctx.pending_checks``),
  a ``mutate`` webhook before it; a ``cedar``/``opa`` guardrail decides ``call_model`` for the
  request before the provider is called (a remote OPA is awaited).
- ``OutputGuardrails`` (stage ``guardrails``): the ``llm_output`` guardrails, on a plain
  response before it is released, and on a stream through a ``StreamGuard``.

Every guardrail that applied appends its ``Decision``; ``x-custos-applied`` lists those that let
the call through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from custos.context import DataClassHit, RequestContext
from custos.guardrails.detectors import Detector, Numbering
from custos.guardrails.policy.request import model_call
from custos.guardrails.rules import Guardrail, GuardrailFailed, Verdict
from custos.guardrails.stream import StreamGuard
from custos.guardrails.text import TextSlot, request_slots, response_slots
from custos.policy.when import Facts
from custos.stage import GatewayResponse
from custos.telemetry import metrics

log = logging.getLogger("custos.guardrails")


class GuardState:
    """The guardrails' state of one request (``ctx.guards``; a plain class, made per request)."""

    __slots__ = ("numbering", "slots", "stream")

    def __init__(self) -> None:
        self.numbering = Numbering()
        self.slots: list[TextSlot] | None = None
        self.stream: StreamGuard | None = None


def _state(ctx: RequestContext) -> GuardState:
    if ctx.guards is None:
        ctx.guards = GuardState()
    return ctx.guards  # type: ignore[no-any-return]


def _slots(ctx: RequestContext) -> list[TextSlot]:
    state = _state(ctx)
    if state.slots is None:
        state.slots = request_slots(ctx.operation, ctx.body)
    return state.slots


def facts(ctx: RequestContext) -> Facts:
    assert ctx.principal is not None
    return Facts(
        ctx.principal.subjects,
        ctx.model,
        ctx.metadata,
        frozenset(d.name for d in ctx.data_classes),
    )


#: Each guardrail's metric children by (id, hook, outcome): the verdict counter and the
#: latency histogram, looked up once instead of per call (children are never removed).
_CHILDREN: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def _record(ctx: RequestContext, guardrail: Guardrail, verdict: Verdict, hook: str) -> None:
    """Append the decision (raising its refusal) and count it."""
    decision, refusal = guardrail.decide(verdict, hook)
    ctx.decisions.append(decision)
    key = (guardrail.id, hook, decision.outcome)
    children = _CHILDREN.get(key)
    if children is None:
        children = _CHILDREN[key] = (
            metrics.child(metrics.GUARDRAIL_VERDICTS, *key),
            metrics.child(metrics.GUARDRAIL_SECONDS, guardrail.id, hook),
        )
    children[0].inc()
    children[1].observe(decision.input["latency_us"] / 1e6)  # type: ignore[index]
    if verdict.failure is not None:
        metrics.child(metrics.GUARDRAIL_ERRORS, guardrail.id, verdict.failure).inc()
    if refusal is not None:
        raise refusal


# -- data classes ---------------------------------------------------------------------------------


class ClassifyContent:
    name = "classify"

    def __init__(self, classes: dict[str, Detector]) -> None:
        self.classes = classes
        self.version = "+".join(sorted({d.version for d in classes.values()}))

    def enter(self, ctx: RequestContext) -> None:
        slots = _slots(ctx)
        if not slots:
            return
        hits: list[DataClassHit] = []
        for name, detector in self.classes.items():
            count = 0
            for slot in slots:
                count += len(detector.find(slot.text))
            if count:
                hits.append(DataClassHit(name, count, "detected"))
                metrics.child(metrics.DATA_CLASSES_DETECTED, name).inc()
        if hits:
            ctx.data_classes = sorted([*ctx.data_classes, *hits], key=lambda d: (d.name, d.source))
            ctx.data_class_detectors = self.version


# -- input ----------------------------------------------------------------------------------------


def _applicable(ctx: RequestContext, guardrails: tuple[Guardrail, ...],
                unconditional: bool) -> Sequence[Guardrail]:  # fmt: skip
    """The guardrails whose ``when`` matches the request (``unconditional``: all of them, the
    facts not even built)."""
    if unconditional:
        return guardrails
    known = facts(ctx)
    return [g for g in guardrails if g.when.matches(known)]


class InputGuardrails:
    name = "guardrails"

    def __init__(self, guardrails: Sequence[Guardrail]) -> None:
        self.guardrails = tuple(g for g in guardrails if g.hook == "llm_input")
        self.unconditional = all(g.when.matches_all for g in self.guardrails)

    async def enter(self, ctx: RequestContext) -> None:
        applicable = _applicable(ctx, self.guardrails, self.unconditional)
        if not applicable:
            return
        state = _state(ctx)
        slots = _slots(ctx)
        changed = False
        for guardrail in applicable:
            if guardrail.detector is not None:  # a content guardrail (only those have one)
                verdict = _inspect(guardrail, slots, state.numbering)
            elif guardrail.policy is not None:
                await _decide_policy(ctx, guardrail)
                continue
            elif guardrail.webhook is not None and guardrail.operation == "validate":
                check = _remote(ctx, guardrail, slots, "llm_input")
                ctx.pending_checks.append(asyncio.ensure_future(check))
                continue
            elif guardrail.webhook is not None:
                verdict = await _remote_verdict(ctx, guardrail, slots, "llm_input")
            elif guardrail.type == "metadata":
                verdict = guardrail.check_metadata(ctx.metadata)
            else:  # a webhook guardrail built without a client: it fails (closed, by default)
                verdict = _inspect(guardrail, slots, state.numbering)
            changed = changed or verdict.changed
            _record(ctx, guardrail, verdict, "llm_input")
        if changed:  # the provider gets the rewritten request, built again from the body
            ctx.raw_body = orjson.dumps(ctx.body)
            ctx.prebuilt = None


async def _decide_policy(ctx: RequestContext, guardrail: Guardrail) -> None:
    """A ``cedar``/``opa`` guardrail's decision on ``call_model``: recorded, its refusal raised."""
    assert guardrail.policy is not None
    decision = await guardrail.policy.decide(model_call(ctx))
    ctx.decisions.append(decision.to_decision("llm_input"))
    metrics.child(metrics.GUARDRAIL_VERDICTS, guardrail.id, "llm_input", decision.outcome).inc()
    metrics.child(metrics.GUARDRAIL_SECONDS, guardrail.id, "llm_input").observe(
        decision.latency_us / 1e6
    )
    if decision.failure is not None:
        metrics.child(metrics.GUARDRAIL_ERRORS, guardrail.id, decision.failure).inc()
    refusal = decision.refusal()
    if refusal is not None:
        raise refusal


def _inspect(guardrail: Guardrail, slots: Sequence[TextSlot], numbering: Numbering) -> Verdict:
    try:
        return guardrail.inspect(slots, numbering)
    except Exception:
        log.exception("guardrail %s failed", guardrail.id)
        return Verdict(failure="error")


async def _remote(ctx: RequestContext, guardrail: Guardrail, slots: list[TextSlot],
                  hook: str) -> None:  # fmt: skip
    """A validate webhook beside the provider call: records its decision, raises a refusal."""
    verdict = await _remote_verdict(ctx, guardrail, slots, hook)
    _record(ctx, guardrail, verdict, hook)


async def _remote_verdict(
    ctx: RequestContext, guardrail: Guardrail, slots: Sequence[TextSlot], hook: str
) -> Verdict:
    verdict = Verdict()
    assert guardrail.webhook is not None
    try:
        is_blocked, texts = await guardrail.webhook(_payload(ctx, guardrail, slots, hook),
                                                    len(slots))  # fmt: skip
    except GuardrailFailed as exc:
        verdict.failure = exc.reason
        return verdict
    except Exception:
        log.exception("webhook guardrail %s failed", guardrail.id)
        verdict.failure = "error"
        return verdict
    if is_blocked:
        verdict.found["webhook.block"] = verdict.found.get("webhook.block", 0) + 1
    elif texts is not None and guardrail.enforcing != "audit":
        for slot, text in zip(slots, texts, strict=True):
            if slot.text != text:
                slot.replace(text)
                verdict.found["webhook.rewrite"] = verdict.found.get("webhook.rewrite", 0) + 1
                verdict.changed = True
    return verdict


def _payload(ctx: RequestContext, guardrail: Guardrail, slots: Sequence[TextSlot],
             hook: str) -> dict[str, Any]:  # fmt: skip
    principal = ctx.principal
    return {
        "guardrail": guardrail.id,
        "hook": hook,
        "operation": guardrail.operation,
        "request_id": ctx.request_id,
        "model": ctx.model,
        "api": {"protocol": ctx.protocol, "operation": ctx.operation},
        "principal": None if principal is None else {
            "kind": principal.kind, "id": principal.id, "teams": list(principal.teams)
        },
        "metadata": ctx.metadata,
        "texts": [slot.text for slot in slots],
    }  # fmt: skip


# -- output ---------------------------------------------------------------------------------------


class OutputGuardrails:
    name = "guardrails"

    def __init__(self, guardrails: Sequence[Guardrail]) -> None:
        self.guardrails = tuple(g for g in guardrails if g.hook == "llm_output")
        self.unconditional = all(g.when.matches_all for g in self.guardrails)

    async def on_response(self, ctx: RequestContext, response: GatewayResponse) -> None:
        if ctx.operation in ("embeddings", "count_tokens"):
            return  # no model text comes back
        applicable = _applicable(ctx, self.guardrails, self.unconditional)
        if not applicable:
            return
        state = _state(ctx)
        if response.stream is not None:
            state.stream = StreamGuard(ctx, applicable, state.numbering)
            return
        body = response.parsed if response.parsed is not None else orjson.loads(response.body)
        slots = response_slots(ctx.operation, body)
        changed = False
        for guardrail in applicable:
            if guardrail.webhook is not None:
                verdict = await _remote_verdict(ctx, guardrail, slots, "llm_output")
            else:
                verdict = _inspect(guardrail, slots, state.numbering)
            changed = changed or verdict.changed
            _record(ctx, guardrail, verdict, "llm_output")
        if changed:
            response.body, response.parsed = orjson.dumps(body), body

    async def on_chunk(self, ctx: RequestContext, chunk: bytes, last: bool) -> bytes:
        guard = ctx.guards.stream if ctx.guards is not None else None
        if guard is None:
            return chunk
        out = guard.feed(chunk, last)
        if last:
            if guard.whole:
                out = await _whole_stream(ctx, guard)
            guard.decisions()
            _count(guard)
        return out

    def settle(self, ctx: RequestContext) -> None:
        """A stream that ended early (the client left, the provider broke): its guardrails'
        decisions so far."""
        guard = ctx.guards.stream if ctx.guards is not None else None
        if guard is not None and not guard.finished:
            guard.decisions(reason="incomplete")
            _count(guard)


async def _whole_stream(ctx: RequestContext, guard: StreamGuard) -> bytes:
    """A webhook on a stream's output: it reads the whole text, held until it answers. It
    validates only: a rewrite it sends back is not applied to a stream (its text went out in
    deltas whose boundaries the webhook does not know); plain responses take rewrites."""
    texts = {key: state.text for key, state in guard.texts.items()}
    slots = [TextSlot(texts, key) for key in texts]
    for guardrail in guard.guardrails:
        if not guardrail.remote:
            continue
        verdict = await _remote_verdict(ctx, guardrail, slots, "llm_output")
        verdict.changed = False
        verdict.found.pop("webhook.rewrite", None)
        guard.verdicts[guardrail.id] = verdict
        if guardrail.decide(verdict, "llm_output")[1] is not None:
            guard.held.clear()
            guard.decisions(reason="blocked")
            raise guardrail.decide(verdict, "llm_output")[1]  # type: ignore[misc]
    return guard.release_all()


def _count(guard: StreamGuard) -> None:
    for decision in guard.ctx.decisions[-len(guard.guardrails) :]:
        if decision.stage == "guardrails" and decision.rule is not None:
            metrics.child(
                metrics.GUARDRAIL_VERDICTS, decision.rule, "llm_output", decision.outcome
            ).inc()
