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
full            audit + the Merkle log and its checkpoints
guarded         full + data-class detection and the guardrails: everything the config turns on
                (what ``custos serve`` runs)
==============  ==============================================================================

With ``BENCH_CPROFILE=PATH`` set, the variant runs under cProfile and writes its profile to
``PATH.VARIANT`` when it stops: where a difference between two variants comes from. The
profile's clock is the event loop thread's CPU time (``time.thread_time``): with wall-clock
time, on a machine with other work, the moments the process waits for a core are charged to
whichever function was running, and a trivial one can top the profile.
With ``BENCH_TRACEMALLOC=PATH`` set, it traces its Python allocations (``tracemalloc``,
``BENCH_TRACEMALLOC_FRAMES`` frames, 1) and writes a snapshot to ``PATH.N.snap`` every
``BENCH_TRACEMALLOC_EVERY`` seconds (30): ``bench/tracediff.py`` shows what grew between two of
them (where RSS growth in a soak comes from). Tracing adds its own memory to RSS and slows the
gateway (with 10 frames and a snapshot every 15 s, so much that the audit trail fell behind and
its queue filled the heap: keep frames few and snapshots rare).

Everything else (HTTP, parsing, routing, the upstream call, metrics) is the same code as
``custos serve`` runs, so the difference between two variants is the cost of the stages that
differ. The config should turn on every stage (``bench/bench.yaml`` does).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import signal
import sys
import threading
import time
import tracemalloc
from typing import Any

from custos.audit.log.merkle import Frontier
from custos.context import RequestContext
from custos.gateway import Gateway
from custos.identity.stage import Authenticate
from custos.policy.stages import Authorize
from custos.runtime import Runtime
from custos.server import serve

KEEPS: dict[str, frozenset[str]] = {
    "passthrough": frozenset(),
    "auth": frozenset({"auth"}),
    "limits": frozenset({"auth", "limits"}),
    "audit": frozenset({"auth", "limits", "audit"}),
    "full": frozenset({"auth", "limits", "audit", "log"}),
    "guarded": frozenset({"auth", "limits", "audit", "log", "guardrails"}),
}


def gateway_keeping(stages: frozenset[str]) -> type[Gateway]:
    class VariantGateway(Gateway):
        def build_chain(self, runtime: Runtime) -> list[object]:
            chain = super().build_chain(runtime)
            dropped = set()
            if "limits" not in stages:
                dropped.add(id(self.limiter))
            if "audit" not in stages:
                dropped.add(id(self.audit))
            kept = [stage for stage in chain if id(stage) not in dropped]
            if "guardrails" not in stages:  # data-class detection and the guardrails
                guarding = ("classify", "guardrails")
                kept = [s for s in kept if getattr(s, "name", None) not in guarding]
            if "auth" not in stages:
                kept = [_RememberedPrincipal(self.authenticate) if s is self.authenticate else s
                        for s in kept if not isinstance(s, Authorize)]  # fmt: skip
            return kept

        async def start(self) -> None:
            await super().start()
            if "log" not in stages and self.audit_log is not None:
                await self.audit_log.close()
                self.audit_log = None
                await _skip_log(self)

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


class _RememberedPrincipal:
    """Authenticate the first request normally and hand its principal to every later one (the
    variant also drops the authorize stage: every model is granted)."""

    name = "authenticate"

    def __init__(self, authenticate: Authenticate) -> None:
        self._authenticate = authenticate
        self._known: list[object] = []

    async def enter(self, ctx: RequestContext) -> None:
        if not self._known:
            await self._authenticate.enter(ctx)
            self._known.append(ctx.principal)
        ctx.principal = self._known[0]  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=sorted(KEEPS))
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    profile_to = os.environ.get("BENCH_CPROFILE")  # a file: where the variant's profile goes
    if profile_to:
        _profile_until_stopped(f"{profile_to}.{args.variant}")
    trace_to = os.environ.get("BENCH_TRACEMALLOC")  # a path prefix for the snapshots
    if trace_to:
        _snapshot_allocations(
            trace_to,
            float(os.environ.get("BENCH_TRACEMALLOC_EVERY", "30")),
            int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "1")),
        )
    return serve(
        args.config,
        host=args.host,
        port=args.port,
        watch=False,
        gateway_class=gateway_keeping(KEEPS[args.variant]),
    )


def _profile_until_stopped(path: str) -> None:
    """Profile from now on; write the profile when SIGTERM or SIGINT stops the process (uvicorn
    puts back the handlers it found and raises the signal again once it has shut down)."""
    profile = cProfile.Profile(time.thread_time)

    def stop(signum: int, _frame: object) -> None:
        profile.disable()
        profile.dump_stats(path)
        sys.exit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    profile.enable()


def _snapshot_allocations(prefix: str, every_s: float, frames: int) -> None:
    """Trace allocations from now on, and dump a snapshot every ``every_s`` seconds from a
    daemon thread (taking one holds the interpreter lock, so it sees a consistent heap)."""
    tracemalloc.start(frames)

    def dump() -> None:
        n = 0
        while True:
            time.sleep(every_s)
            n += 1
            tracemalloc.take_snapshot().dump(f"{prefix}.{n:03d}.snap")

    threading.Thread(target=dump, name="bench-tracemalloc", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
