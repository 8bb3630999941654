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
    BudgetCharge,
    BudgetState,
    Counters,
    Ticket,
    WindowCharge,
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


def _budget_states(counters: list[_Budget]) -> tuple[BudgetState, ...]:
    return tuple([BudgetState(c.spent, c.reserved) for c in counters])


def _window_states(spans: list[tuple[_Window, int, int]], now: int) -> tuple[WindowState, ...]:
    return tuple([WindowState(w.total, (cur + BUCKETS + 1) * wd - now) for w, cur, wd in spans])


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
        budgets: Sequence[BudgetCharge],
        windows: Sequence[WindowCharge],
        rid: str,
        ttl_ms: int,
    ) -> Admission:
        return self.admit_now(budgets, windows, rid, ttl_ms)

    def admit_now(
        self,
        budgets: Sequence[BudgetCharge],
        windows: Sequence[WindowCharge],
        rid: str,
        ttl_ms: int,
    ) -> Admission:
        """``admit`` without the coroutine: one synchronous step, so atomic on the loop."""
        now = self._clock()
        denied: BudgetCharge | WindowCharge | None = None
        retry: int | None = None
        found = []
        for charge in budgets:
            counter = self._budgets.get(charge.key)
            if counter is None:
                counter = self._budgets[charge.key] = _Budget()
            if counter.heap and counter.heap[0][0] <= now:  # (inline: a call per request saved)
                counter.release_expired(now)
            found.append(counter)
            if (
                denied is None
                and charge.enforce
                and counter.spent + counter.reserved + charge.amount > charge.limit
            ):
                denied = charge
        spans = []
        for charge in windows:
            width = charge.bucket_ms
            window = self._windows.get(charge.key)
            if window is None:
                window = self._windows[charge.key] = _Window(width)
            else:
                window.width = width
            current = now // width
            window.advance(current)
            spans.append((window, current, width))
            if denied is None and window.total + charge.amount > charge.limit:
                denied = charge
                need = window.total + charge.amount - charge.limit
                retry = (
                    None
                    if charge.amount > charge.limit
                    else window.retry_after_ms(need, current, width, now)
                )
        if denied is not None:
            states = _budget_states(found), _window_states(spans, now)
            return Admission(False, denied, retry, *states, None)
        return self._take(budgets, windows, found, spans, rid, now, now + ttl_ms)

    def _take(
        self,
        budgets: Sequence[BudgetCharge],
        windows: Sequence[WindowCharge],
        found: list[_Budget],
        spans: list[tuple[_Window, int, int]],
        rid: str,
        now: int,
        expiry: int,
    ) -> Admission:
        """Reserve on every budget and add to every window (all were checked to have room);
        the states after the change, and the ticket to settle it."""
        for charge, counter in zip(budgets, found, strict=True):
            holds = counter.holds
            if rid not in holds:
                holds[rid] = (charge.amount, expiry)
                counter.reserved += charge.amount
                heapq.heappush(counter.heap, (expiry, rid))
            if not counter.indexed:
                counter.expires_at_ms = charge.expires_at_ms
                self._index(charge)
                counter.indexed = True
        placed = []
        for charge, (window, current, _) in zip(windows, spans, strict=True):
            buckets = window.buckets
            buckets[current] = buckets.get(current, 0) + charge.amount
            window.total += charge.amount
            placed.append((charge, current))
        states = _budget_states(found), _window_states(spans, now)
        return Admission(True, None, None, *states, Ticket(rid, tuple(budgets), tuple(placed)))

    def settle(self, ticket: Ticket, cost_micros: int, tokens: int) -> None:
        sink = self.sink
        for charge in ticket.budgets:
            counter = self._budgets.get(charge.key)
            if counter is None:
                counter = self._budgets[charge.key] = _Budget()
                counter.expires_at_ms = charge.expires_at_ms
                self._index(charge)
            hold = counter.holds.pop(ticket.rid, None) if ticket.rid else None
            if hold is not None:
                counter.reserved -= hold[0]
                counter.compact()
            counter.spent += cost_micros
            if sink is not None:
                sink.budget_settled(charge, cost_micros, None, counter.spent)
        for charge, bucket in ticket.windows:
            if not charge.per_token or tokens == charge.amount:
                continue
            window = self._windows.get(charge.key)
            if window is None or bucket not in window.buckets:
                continue  # the bucket already left the window: nothing to correct
            window.buckets[bucket] += tokens - charge.amount
            window.total += tokens - charge.amount

    async def renew(self, tickets: Sequence[Ticket], ttl_ms: int) -> None:
        expiry = self._clock() + ttl_ms
        for ticket in tickets:
            for charge in ticket.budgets:
                counter = self._budgets.get(charge.key)
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

    async def seed(self, spent: Sequence[tuple[BudgetCharge, int]]) -> None:
        """Start counters from the ledger (before serving: nothing is reserved yet)."""
        for charge, value in spent:
            counter = self._budgets.get(charge.key)
            if counter is None:
                counter = self._budgets[charge.key] = _Budget()
            counter.spent = value
            counter.expires_at_ms = charge.expires_at_ms
            self._index(charge)

    def _index(self, charge: BudgetCharge) -> None:
        self._splits.setdefault(charge.index_key, set()).add(charge.split)
        self._split_expiry[charge.index_key] = charge.expires_at_ms

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
