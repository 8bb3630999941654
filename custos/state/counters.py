"""Counters for budgets and rate limits: one small async interface, two implementations.

``MemoryCounters`` (``custos.state.counters_memory``) keeps them in the process: the single-node
default. ``RedisCounters`` (``custos.state.counters_redis``) keeps them in Redis, shared by every
replica, with Lua scripts. ``open_counters(url)`` picks one by ``state.counters``.

Two kinds of counter:

- a **budget counter** (one budget, one period, one split) holds ``spent`` (settled
  micro-dollars) and ``reserved`` (the sum of live reservations, each held by a request id until
  it is settled or its TTL passes);
- a **window counter** (one rate-limit rule, one split) holds what was admitted in a sliding
  window of ``window_ms``, in 60 buckets of ``window_ms / 60`` (requests, or tokens).

Contract
--------
``admit(budgets, windows, rid, ttl_ms)`` decides and applies *atomically across every counter
given*, in one step (one Lua script, one round trip, on Redis; one synchronous call, which no
other coroutine can interleave with, in memory):

- it is refused when an enforcing budget has ``spent + reserved + amount > limit``, or a window
  has ``used + amount > limit``; the first such charge (budgets first, in the order given) is
  named in ``Admission.denied``, and *nothing* is changed;
- otherwise every budget gets a reservation of its ``amount`` under ``rid`` (expiring ``ttl_ms``
  from now unless renewed or settled), every window gets ``amount`` added to its current
  bucket, and the ``Ticket`` returned says what to settle.

``settle(ticket, cost_micros, tokens)`` never blocks and never raises: it releases the ticket's
reservations and adds ``cost_micros`` to each budget's ``spent``; token windows have their
bucket corrected from the estimate to ``tokens``. A ticket with ``rid == ""`` reserved nothing
(a call let through while the counters were down) and only adds spend. Each budget's outcome is
reported to the ``SettleSink`` (the ledger and alerts): the spend, the seed epoch it was applied
under (``None`` when it could not be applied) and ``spent`` after it.

``renew(tickets)`` pushes the expiry of live reservations ``ttl_ms`` further: the gateway renews
the reservations of requests still running, so only a dead process's reservations expire.

``read(keys)`` returns budget counters (reservations past their TTL released first) for the
admin API; ``splits(prefix)`` the split keys a budget period has.

Failures: ``admit``, ``renew``, ``read`` and ``splits`` raise ``CountersUnavailable`` when the
backing service cannot be reached; the caller applies its fail-open/fail-closed policy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
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
class BudgetCharge:
    """A reservation to take on one budget counter."""

    key: str
    limit: int
    amount: int
    enforce: bool
    #: Unix milliseconds at which the counter may be forgotten (its period is over), or 0.
    expires_at_ms: int
    #: The split's canonical text, listed per budget period for the admin API.
    split: str
    #: The key of the budget period's list of splits.
    index_key: str


@dataclass(slots=True)
class WindowCharge:
    """An amount to add to one sliding window."""

    key: str
    limit: int
    amount: int
    window_ms: int
    #: Token windows are corrected to the actual usage at settlement; request windows are not.
    per_token: bool

    @property
    def bucket_ms(self) -> int:
        return max(self.window_ms // BUCKETS, 1)


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
    budgets: tuple[BudgetCharge, ...]
    #: Each window charged, with the bucket index its amount went into.
    windows: tuple[tuple[WindowCharge, int], ...]


@dataclass(slots=True)
class Admission:
    admitted: bool
    #: The charge that refused the request (``None`` when admitted).
    denied: BudgetCharge | WindowCharge | None
    #: Milliseconds until the refused charge would fit (``None``: it never fits).
    retry_after_ms: int | None
    #: State of each budget and window, in the order given (after the admission when admitted).
    budgets: tuple[BudgetState, ...]
    windows: tuple[WindowState, ...]
    ticket: Ticket | None


class SettleSink(Protocol):
    """Told the outcome of every budget settlement (the ledger and the alerts listen)."""

    def budget_settled(
        self, charge: BudgetCharge, cost: int, epoch: int | None, spent: int | None
    ) -> None: ...


class Counters(ABC):
    """See the module docstring for the contract every implementation keeps."""

    #: Shared between processes (Redis): spend must be reseeded from the ledger after a loss.
    shared: bool = False

    def __init__(self) -> None:
        self.sink: SettleSink | None = None

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Connect (best effort: counters that cannot be reached yet are retried per call)."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Finish pending settlements and release connections."""

    @abstractmethod
    async def admit(
        self,
        budgets: Sequence[BudgetCharge],
        windows: Sequence[WindowCharge],
        rid: str,
        ttl_ms: int,
    ) -> Admission: ...

    @abstractmethod
    def settle(self, ticket: Ticket, cost_micros: int, tokens: int) -> None: ...

    @abstractmethod
    async def renew(self, tickets: Sequence[Ticket], ttl_ms: int) -> None: ...

    @abstractmethod
    async def read(self, keys: Sequence[str]) -> list[BudgetState]: ...

    @abstractmethod
    async def splits(self, index_key: str) -> list[str]: ...

    async def seed(self, spent: Sequence[tuple[BudgetCharge, int]]) -> None:  # noqa: B027
        """In-process counters start from the ledger's spend (shared ones seed themselves from
        the ledger whenever they find the shared state empty). ``BudgetCharge`` names the
        counter; its limit and amount are not used."""

    async def drain(self) -> None:  # noqa: B027 (optional hook)
        """Wait until every settlement queued so far has been applied (tests, shutdown)."""


def open_counters(url: str, *, prefix: str = "custos:") -> Counters:
    """``memory`` or a ``redis://…`` URL (``rediss://`` for TLS)."""
    if url == "memory":
        from custos.state.counters_memory import MemoryCounters

        return MemoryCounters()
    if url.startswith(("redis://", "rediss://")):
        from custos.state.counters_redis import RedisCounters

        return RedisCounters(url, prefix=prefix)
    raise ValueError(f"state.counters must be 'memory' or a redis:// URL, not {url!r}")
