"""Stages 2 and 3 of the chain (``custos.stage``): identify and authorize.

Identify reads the metadata header against the revision's contract and the data classes the
caller declares; authorize decides whether the principal may call the model: first the
narrowing its token or virtual account carries, then the access rules (default deny). Both
decide from memory compiled per revision.
"""

from __future__ import annotations

from custos.context import Decision, RequestContext
from custos.errors import GatewayError
from custos.policy.data_classes import declared_data_classes


class Identify:
    name = "identify"

    def enter(self, ctx: RequestContext) -> None:
        ctx.metadata = ctx.runtime.metadata.parse(ctx.metadata_headers)
        ctx.data_classes = declared_data_classes(ctx.metadata)


#: The decision of a model outside what the caller's token or virtual account may call.
_OUTSIDE_SCOPE = Decision("authorize", None, "deny", "scope")


class Authorize:
    name = "authorize"

    def enter(self, ctx: RequestContext) -> None:
        principal = ctx.principal
        assert principal is not None
        if not principal.may_use_model(ctx.model):
            ctx.decisions.append(_OUTSIDE_SCOPE)
            narrowed = "token" if principal.token_models is not None else "virtual account"
            raise GatewayError(
                403,
                "model_not_allowed",
                f"The model '{ctx.model}' is outside what this {narrowed} may call.",
                param="model",
            )
        decision = ctx.runtime.access.decide(principal.subjects, ctx.model)
        ctx.decisions.append(decision.decision)
        if not decision.allowed:
            raise GatewayError(
                403,
                "model_not_allowed",
                f"The model '{ctx.model}' is not allowed for {principal.name}: {decision.reason}.",
                param="model",
            )
