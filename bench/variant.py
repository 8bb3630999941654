"""Serve the gateway with some governance stages switched off, to measure what each one costs.

    .venv/bin/python bench/variant.py VARIANT --config FILE --host H --port P

``bench/run.py --compare`` starts this instead of ``custos serve``. It lives in bench/, not in
the package: the gateway itself has no switch that turns authentication or the audit trail
off, and must not grow one. A variant names the stages it keeps:

==============  ==============================================================================
passthrough     none: the first request's token is looked up once and its principal reused
                (no token check, no access rule, no limits, no audit record)
auth            token authentication and the access rules
limits          auth + the config's rate limits and budgets
audit           limits + the audit trail (records, spool, store), without the Merkle log
full            audit + the Merkle log and its checkpoints: everything the config turns on
                (what ``custos serve`` runs)
==============  ==============================================================================

Everything else (HTTP, parsing, routing, the upstream call, metrics) is the same code as
``custos serve`` runs, so the difference between two variants is the cost of the stages that
differ. The config should turn on every stage (``bench/bench.yaml`` does).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from custos.audit.log.merkle import Frontier
from custos.context import RequestContext
from custos.gateway import Gateway
from custos.identity.principal import Principal
from custos.server import serve

KEEPS: dict[str, frozenset[str]] = {
    "passthrough": frozenset(),
    "auth": frozenset({"auth"}),
    "limits": frozenset({"auth", "limits"}),
    "audit": frozenset({"auth", "limits", "audit"}),
    "full": frozenset({"auth", "limits", "audit", "log"}),
}


def gateway_keeping(stages: frozenset[str]) -> type[Gateway]:
    class VariantGateway(Gateway):
        async def start(self) -> None:
            await super().start()
            pipeline = self.pipeline
            if "limits" not in stages:
                pipeline.limiter = None
            if "log" not in stages and self.audit_log is not None:
                await self.audit_log.close()
                self.audit_log = None
                await _skip_log(self)
            if "audit" not in stages:
                pipeline.on_settled = pipeline.admit = pipeline.release = None
            if "auth" not in stages:
                _skip_authentication(pipeline)

    return VariantGateway


async def _skip_log(gateway: Gateway) -> None:
    """Records are stored but never appended to the Merkle log: PostgreSQL's trigger no longer
    queues them, and SQLite's inserts no longer extend the tree."""
    import custos.audit.storage.store

    async def unlogged(tx: Any, leaves: Any, **_: Any) -> Frontier:
        return Frontier()

    custos.audit.storage.store.append_leaves = unlogged  # type: ignore[assignment]

    assert gateway.identity is not None
    if gateway.identity.store.dialect == "postgresql":
        async with gateway.identity.store.transaction() as tx:
            await tx.execute("DROP TRIGGER IF EXISTS audit_events_pending ON audit_events")


def _skip_authentication(pipeline: Any) -> None:
    """Authenticate the first request normally and hand its principal to every later one;
    grant every model."""
    known: list[Principal] = []
    authenticate = pipeline.authenticate

    async def remembered(ctx: RequestContext) -> Principal:
        if not known:
            known.append(await authenticate(ctx))
        ctx.principal = known[0]
        return known[0]

    pipeline.authenticate = remembered
    pipeline.authorize = lambda ctx: None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=sorted(KEEPS))
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    return serve(
        args.config,
        host=args.host,
        port=args.port,
        watch=False,
        gateway_class=gateway_keeping(KEEPS[args.variant]),
    )


if __name__ == "__main__":
    sys.exit(main())
