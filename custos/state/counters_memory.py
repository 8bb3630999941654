"""In-process counters: the single-node default.

Atomicity comes from the event loop: ``admit`` and ``settle`` do all their work synchronously,
with no ``await`` inside, so no other request can run between the check and the change. That is
exact on one process and involves no lock. Counters of one process are not seen by another: for
several replicas use Redis.

Reservations past their TTL are released lazily, when their budget counter is next touched (a
heap per counter, so that costs nothing while none has expired). Counters of finished periods
and empty windows are dropped by ``sweep``, which the gateway calls now and then.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence

from custos.state.counters import (
    BUCKETS,
    Admission,
    BudgetCounter,
    BudgetState,
    Counters,
    Ticket,
    WindowCounter,
    WindowState,
)


class _Budget:
    __slots__ = ("expires_at_ms", "heap", "holds", "indexed", "reserved", "spent")

    def __init__(self) -> None:
        self.spent = 0
        self.reserved = 0
        #: Live reservations: request id -> (amount, expiry in unix ms).
        self.holds: dict[str, tuple[int, int]] = {}
        #: (expiry, request id), possibly stale after a renewal; checked against ``holds``.
        self.heap: list[tuple[int, str]] = []
        self.expires_at_ms = 0
        #: Listed in its budget period's splits (``MemoryCounters.splits``).
        self.indexed = False

    def compact(self) -> None:
        """Settled reservations leave stale heap entries behind; rebuild the heap once they
        outnumber the live ones (amortised O(1), and memory stays proportional to what is in
        flight rather than to the request rate times the TTL)."""
        if len(self.heap) > 2 * len(self.holds) + 32:
            self.heap = [(expiry, rid) for rid, (_, expiry) in self.holds.items()]
            heapq.heapify(self.heap)

    def release_expired(self, now_ms: int) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now_ms:
            expiry, rid = heapq.heappop(heap)
            hold = self.holds.get(rid)
            if hold is not None and hold[1] == expiry:
                del self.holds[rid]
                self.reserved -= hold[0]


class _Window:
    __slots__ = ("buckets", "oldest", "total", "width")

    def __init__(self, width: int) -> None:
        self.buckets: dict[int, int] = {}
        self.total = 0
        self.oldest = 0
        self.width = width

    def advance(self, current: int) -> None:
        """Forget buckets that left the window (those before ``current - BUCKETS``)."""
        cutoff = current - BUCKETS
        if self.oldest >= cutoff:
            return
        for index in [i for i in self.buckets if i < cutoff]:
            self.total -= self.buckets.pop(index)
        self.oldest = cutoff

    def retry_after_ms(self, need: int, current: int, width: int, now_ms: int) -> int:
        """When enough of the oldest buckets will have left to free ``need``."""
        freed = 0
        for index in sorted(self.buckets):
            freed += self.buckets[index]
            if freed >= need:
                return (index + BUCKETS + 1) * width - now_ms
        return (current + BUCKETS + 1) * width - now_ms


def _states(
    found: list[_Budget], spans: list[tuple[_Window, int]], now: int
) -> tuple[tuple[BudgetState, ...], tuple[WindowState, ...]]:
    """The budgets' and windows' states as they are now (``Admission.budgets``, ``.windows``)."""
    return (
        tuple([BudgetState(c.spent, c.reserved) for c in found]),
        tuple([WindowState(w.total, (cur + BUCKETS + 1) * w.width - now) for w, cur in spans]),
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryCounters(Counters):
    def __init__(self, clock_ms: Callable[[], int] = _now_ms) -> None:
        super().__init__()
        self._budgets: dict[str, _Budget] = {}
        self._windows: dict[str, _Window] = {}
        #: Split keys per budget period (``index_key``), and when each list may be dropped.
        self._splits: dict[str, set[str]] = {}
        self._split_expiry: dict[str, int] = {}
        self._clock = clock_ms

    # -- the contract ------------------------------------------------------------------------

    async def admit(
        self,
        budgets: Sequence[BudgetCounter],
        amount: int,
        windows: Sequence[WindowCounter],
        units: int,
        rid: str,
        ttl_ms: int,
    ) -> Admission:
        return self.admit_now(budgets, amount, windows, units, rid, ttl_ms)

    def admit_now(
        self,
        budgets: Sequence[BudgetCounter],
        amount: int,
        windows: Sequence[WindowCounter],
        units: int,
        rid: str,
        ttl_ms: int,
    ) -> Admission:
        """``admit`` without the coroutine: one synchronous step, so atomic on the loop.

        Every request runs this, so it is written for few Python operations: one pass finds
        and checks the counters, a second (only when all have room) changes them."""
        now = self._clock()
        denied: BudgetCounter | WindowCounter | None = None
        retry: int | None = None
        found = []
        for spec in budgets:
            counter = self._budgets.get(spec.key)
            if counter is None:
                counter = self._budgets[spec.key] = _Budget()
            elif counter.heap and counter.heap[0][0] <= now:  # (inline: a call per request saved)
                counter.release_expired(now)
            found.append(counter)
            if (
                spec.enforce
                and counter.spent + counter.reserved + amount > spec.limit
                and denied is None
            ):
                denied = spec
        spans = []
        for spec in windows:
            width = spec.bucket_ms
            window = self._windows.get(spec.key)
            if window is None:
                window = self._windows[spec.key] = _Window(width)
            else:
                window.width = width
            current = now // width
            window.advance(current)
            spans.append((window, current))
            if window.total + units > spec.limit and denied is None:
                denied = spec
                if units <= spec.limit:  # else it never fits: no retry time
                    need = window.total + units - spec.limit
                    retry = window.retry_after_ms(need, current, width, now)
        if denied is not None:
            return Admission(False, denied, retry, *_states(found, spans, now), None)
        expiry = now + ttl_ms
        for spec, counter in zip(budgets, found, strict=True):
            holds = counter.holds
            if rid not in holds:
                holds[rid] = (amount, expiry)
                counter.reserved += amount
                heapq.heappush(counter.heap, (expiry, rid))
            if not counter.indexed:
                counter.expires_at_ms = spec.expires_at_ms
                self._index(spec)
                counter.indexed = True
        placed = []
        for spec, (window, current) in zip(windows, spans, strict=True):
            buckets = window.buckets
            buckets[current] = buckets.get(current, 0) + units
            window.total += units
            placed.append((spec, current))
        ticket = Ticket(rid, tuple(budgets), amount, tuple(placed), units)
        return Admission(True, None, None, *_states(found, spans, now), ticket)

    def settle(self, ticket: Ticket, cost_micros: int, tokens: int) -> None:
        sink = self.sink
        rid = ticket.rid
        for spec in ticket.budgets:
            counter = self._budgets.get(spec.key)
            if counter is None:
                counter = self._budgets[spec.key] = _Budget()
                counter.expires_at_ms = spec.expires_at_ms
                self._index(spec)
            hold = counter.holds.pop(rid, None) if rid else None
            if hold is not None:
                counter.reserved -= hold[0]
                counter.compact()
            counter.spent += cost_micros
            if sink is not None:
                sink.budget_settled(spec, cost_micros, None, counter.spent)
        if not ticket.windows or tokens == ticket.units:
            return
        correction = tokens - ticket.units
        for spec, bucket in ticket.windows:
            if not spec.per_token:
                continue
            window = self._windows.get(spec.key)
            if window is None or bucket not in window.buckets:
                continue  # the bucket already left the window: nothing to correct
            window.buckets[bucket] += correction
            window.total += correction

    async def renew(self, tickets: Sequence[Ticket], ttl_ms: int) -> None:
        expiry = self._clock() + ttl_ms
        for ticket in tickets:
            for spec in ticket.budgets:
                counter = self._budgets.get(spec.key)
                hold = counter.holds.get(ticket.rid) if counter is not None else None
                if counter is not None and hold is not None:
                    counter.holds[ticket.rid] = (hold[0], expiry)
                    heapq.heappush(counter.heap, (expiry, ticket.rid))

    async def read(self, keys: Sequence[str]) -> list[BudgetState]:
        now = self._clock()
        states = []
        for key in keys:
            counter = self._budgets.get(key)
            if counter is None:
                states.append(BudgetState(0, 0))
                continue
            counter.release_expired(now)
            states.append(BudgetState(counter.spent, counter.reserved))
        return states

    async def splits(self, index_key: str) -> list[str]:
        return sorted(self._splits.get(index_key, ()))

    async def seed(self, spent: Sequence[tuple[BudgetCounter, int]]) -> None:
        """Start counters from the ledger (before serving: nothing is reserved yet)."""
        for spec, value in spent:
            counter = self._budgets.get(spec.key)
            if counter is None:
                counter = self._budgets[spec.key] = _Budget()
            counter.spent = value
            counter.expires_at_ms = spec.expires_at_ms
            self._index(spec)

    def _index(self, spec: BudgetCounter) -> None:
        self._splits.setdefault(spec.index_key, set()).add(spec.split)
        self._split_expiry[spec.index_key] = spec.expires_at_ms

    # -- housekeeping ------------------------------------------------------------------------

    def sweep(self) -> None:
        """Drop counters nothing can touch again: finished periods, windows gone empty."""
        now = self._clock()
        for key in [
            k
            for k, c in self._budgets.items()
            if c.expires_at_ms and c.expires_at_ms <= now and not c.holds
        ]:
            del self._budgets[key]
        for key in [k for k, at in self._split_expiry.items() if at and at <= now]:
            del self._split_expiry[key]
            self._splits.pop(key, None)
        for key, window in list(self._windows.items()):
            window.advance(now // window.width)
            if not window.buckets:
                del self._windows[key]
