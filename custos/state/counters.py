"""Counters for budgets and rate limits: one small async interface, two implementations.

``MemoryCounters`` (``custos.state.counters_memory``) keeps them in the process: the single-node
default. ``RedisCounters`` (``custos.state.counters_redis``) keeps them in Redis, shared by every
replica, with Lua scripts. ``open_counters(url)`` (``custos.state.backends``) picks one by
``state.counters``.

Two kinds of counter:

- a **budget counter** (one budget, one period, one split) holds ``spent`` (settled
  micro-dollars) and ``reserved`` (the sum of live reservations, each held by a request id until
  it is settled or its TTL passes);
- a **window counter** (one rate-limit rule, one split) holds what was admitted in a sliding
  window of ``window_ms``, in 60 buckets of ``window_ms / 60`` (requests, or tokens).

Contract
--------
``admit(budgets, amount, windows, units, rid, ttl_ms)`` decides and applies *atomically across
every counter given*, in one step (one Lua script, one round trip, on Redis; one synchronous
call, which no other coroutine can interleave with, in memory). One request reserves the same
``amount`` (its estimated cost) on every budget counter and adds the same ``units`` (one
request, or its estimated tokens) to every window, so the counters are plain descriptions that
a caller builds once and reuses, and only the two numbers change per request:

- it is refused when an enforcing budget has ``spent + reserved + amount > limit``, or a window
  has ``used + units > limit``; the first such counter (budgets first, in the order given) is
  named in ``Admission.denied``, and *nothing* is changed;
- otherwise every budget gets a reservation of ``amount`` under ``rid`` (expiring ``ttl_ms``
  from now unless renewed or settled), every window gets ``units`` added to its current bucket,
  and the ``Ticket`` returned says what to settle.

``settle(ticket, cost_micros, tokens)`` never blocks and never raises: it releases the ticket's
reservations and adds ``cost_micros`` to each budget's ``spent``; token windows have their
bucket corrected from the estimate (``ticket.units``) to ``tokens``. A ticket with
``rid == ""`` reserved nothing (a call let through while the counters were down) and only adds
spend. Each budget's outcome is reported to the ``SettleSink`` (the ledger and alerts): the
spend, the seed epoch it was applied under (``None`` when it could not be applied) and
``spent`` after it.

``renew(tickets)`` pushes the expiry of live reservations ``ttl_ms`` further: the gateway renews
the reservations of requests still running, so only a dead process's reservations expire.

``read(keys)`` returns budget counters (reservations past their TTL released first) for the
admin API; ``splits(prefix)`` the split keys a budget period has.

Failures: ``admit``, ``renew``, ``read`` and ``splits`` raise ``CountersUnavailable`` when the
backing service cannot be reached; the caller applies its fail-open/fail-closed policy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

# The value types below are built per request, so they are plain slotted dataclasses (a frozen
# one's __init__ is several times slower); nothing changes them after construction.

#: Buckets per sliding window. The window counted is ``BUCKETS + 1`` buckets wide (the current,
#: partial one included), so nothing admitted within the last ``window_ms`` is ever left out.
BUCKETS = 60


class CountersUnavailable(Exception):
    """The counters could not be reached (Redis down, timed out, or still being seeded)."""


@dataclass(slots=True)
class BudgetCounter:
    """One budget counter (a budget, a period, a split), as ``admit`` and ``settle`` take it."""

    key: str
    limit: int
    enforce: bool
    #: Unix milliseconds at which the counter may be forgotten (its period is over), or 0.
    expires_at_ms: int
    #: The split's canonical text, listed per budget period for the admin API.
    split: str
    #: The key of the budget period's list of splits.
    index_key: str


@dataclass(slots=True)
class WindowCounter:
    """One sliding window (a rate-limit rule, a split)."""

    key: str
    limit: int
    window_ms: int
    #: Token windows are corrected to the actual usage at settlement; request windows are not.
    per_token: bool
    #: The width of one of its ``BUCKETS`` buckets (derived from ``window_ms``).
    bucket_ms: int = 0

    def __post_init__(self) -> None:
        self.bucket_ms = max(self.window_ms // BUCKETS, 1)


@dataclass(slots=True)
class BudgetState:
    spent: int
    reserved: int


@dataclass(slots=True)
class WindowState:
    #: Amount in the window, this request's included when admitted.
    used: int
    #: Milliseconds until the window is empty again (OpenAI's ``x-ratelimit-reset-*``).
    reset_ms: int


@dataclass(slots=True)
class Ticket:
    """What ``settle`` needs to undo and correct an admission."""

    rid: str
    budgets: tuple[BudgetCounter, ...]
    #: The reservation each budget holds under ``rid``.
    amount: int
    #: Each window charged, with the bucket index its units went into.
    windows: tuple[tuple[WindowCounter, int], ...]
    #: What each window was charged (the estimate a token window is corrected from).
    units: int


@dataclass(slots=True)
class Admission:
    admitted: bool
    #: The counter that refused the request (``None`` when admitted).
    denied: BudgetCounter | WindowCounter | None
    #: Milliseconds until the refused charge would fit (``None``: it never fits).
    retry_after_ms: int | None
    #: State of each budget and window, in the order given (after the admission when admitted).
    budgets: tuple[BudgetState, ...]
    windows: tuple[WindowState, ...]
    ticket: Ticket | None


class SettleSink(Protocol):
    """Told the outcome of every budget settlement (the ledger and the alerts listen)."""

    def budget_settled(
        self, counter: BudgetCounter, cost: int, epoch: int | None, spent: int | None
    ) -> None: ...


#: What a seed source returns: the ledger epoch and each budget counter's spend.
SeedSource = Callable[[], Awaitable[tuple[int, Sequence[tuple[BudgetCounter, int]]]]]


class Counters(ABC):
    """See the module docstring for the contract every implementation keeps.

    What differs between backends is stated here, so a caller never asks which backend it has:
    ``shared`` counters seed themselves from ``seed_source`` and may need spend ``reapply``-ed;
    in-process ones are seeded once (``seed``), decide in one synchronous step (``admit_now``)
    and drop dead counters on ``sweep``.
    """

    #: Shared between processes (Redis): spend must be reseeded from the ledger after a loss,
    #: which the counters do themselves from ``seed_source``.
    shared: bool = False

    def __init__(self) -> None:
        self.sink: SettleSink | None = None
        #: Shared counters: where a seed's spend comes from (the ledger); set by the owner.
        self.seed_source: SeedSource | None = None

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Connect (best effort: counters that cannot be reached yet are retried per call)."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Finish pending settlements and release connections."""

    @abstractmethod
    async def admit(
        self,
        budgets: Sequence[BudgetCounter],
        amount: int,
        windows: Sequence[WindowCounter],
        units: int,
        rid: str,
        ttl_ms: int,
    ) -> Admission: ...

    def admit_now(
        self,
        budgets: Sequence[BudgetCounter],
        amount: int,
        windows: Sequence[WindowCounter],
        units: int,
        rid: str,
        ttl_ms: int,
    ) -> Admission | None:
        """``admit`` as one synchronous step, for counters that can decide without waiting
        (in-process ones): no coroutine to create on the request path. ``None`` when the
        backend must be asked over the network: call ``admit``."""
        return None

    @abstractmethod
    def settle(self, ticket: Ticket, cost_micros: int, tokens: int) -> None: ...

    @abstractmethod
    async def renew(self, tickets: Sequence[Ticket], ttl_ms: int) -> None: ...

    @abstractmethod
    async def read(self, keys: Sequence[str]) -> list[BudgetState]: ...

    @abstractmethod
    async def splits(self, index_key: str) -> list[str]: ...

    async def seed(self, spent: Sequence[tuple[BudgetCounter, int]]) -> None:  # noqa: B027
        """In-process counters start from the ledger's spend (shared ones seed themselves from
        the ledger whenever they find the shared state empty). The limit of each
        ``BudgetCounter`` is not used."""

    async def drain(self) -> None:  # noqa: B027 (optional hook)
        """Wait until every settlement queued so far has been applied (tests, shutdown)."""

    def reapply(self, epoch: int, spent: list[tuple[BudgetCounter, int]]) -> None:  # noqa: B027
        """Spend the ledger wrote that shared counters do not hold yet (``Flushed.stale``, see
        ``custos.state.ledger``). In-process counters hold every spend they settled: nothing to
        do."""

    def sweep(self) -> None:  # noqa: B027 (optional hook)
        """Drop counters nothing can touch again (finished periods, windows gone empty). Shared
        counters expire in their backend: nothing to do."""
