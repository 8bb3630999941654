"""The counters' contract (custos.state.counters), on both implementations: memory and Redis.

Redis tests use the machine's Redis under a key prefix of their own; the ones that stop or lose
Redis run a private ``redis-server``.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError, RedisError

from custos.state.counters import (
    Admission,
    BudgetCounter,
    BudgetState,
    Counters,
    CountersUnavailable,
    Ticket,
    WindowCounter,
)
from custos.state.counters_memory import MemoryCounters
from custos.state.counters_redis import RedisCounters
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.store_fixtures import REDIS_URL, redis_url  # noqa: F401 (fixture)


class Sink:
    def __init__(self) -> None:
        self.settled: list[tuple[str, int, int | None, int | None]] = []

    def budget_settled(
        self, counter: BudgetCounter, cost: int, epoch: int | None, spent: int | None
    ) -> None:
        self.settled.append((counter.key, cost, epoch, spent))


async def _drop_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def require_redis() -> None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        await client.ping()
    except (OSError, RedisError) as exc:
        pytest.skip(f"Redis at {REDIS_URL} is not reachable: {exc}")
    finally:
        await client.aclose()


async def redis_counters(url: str, prefix: str, epoch: int = 1) -> RedisCounters:
    counters = RedisCounters(url, prefix=prefix)

    async def seed() -> tuple[int, list[tuple[BudgetCounter, int]]]:
        return epoch, []

    counters.seed_source = seed
    await counters.start()
    return counters


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[Counters]:
    if request.param == "memory":
        c: Counters = MemoryCounters()
        c.sink = Sink()
        yield c
        return
    await require_redis()
    prefix = f"test-counters-{secrets.token_hex(4)}:"
    c = await redis_counters(REDIS_URL, prefix)
    c.sink = Sink()
    try:
        yield c
    finally:
        await c.close()
        await _drop_prefix(REDIS_URL, prefix)


class Charge(NamedTuple):
    """A counter and what one request charges it (the contract takes one amount for all the
    budgets and one for all the windows)."""

    counter: BudgetCounter | WindowCounter
    amount: int


def budget(key: str = "b|x|total|", limit: int = 100, amount: int = 60, enforce: bool = True):
    return Charge(BudgetCounter(key, limit, enforce, 0, "", "bi|x|total"), amount)


def window(key: str = "w|r|requests:60|", limit: int = 3, amount: int = 1, window_ms: int = 60_000,
           per_token: bool = False) -> Charge:  # fmt: skip
    return Charge(WindowCounter(key, limit, window_ms, per_token), amount)


async def admit(
    counters: Counters, budgets: list[Charge], windows: list[Charge], rid: str, ttl_ms: int
) -> Admission:
    """``counters.admit`` for charges of one amount per kind."""
    [amount] = {c.amount for c in budgets} or {0}
    [units] = {c.amount for c in windows} or {1}
    return await counters.admit(
        [c.counter for c in budgets],  # type: ignore[misc]
        amount,
        [c.counter for c in windows],  # type: ignore[misc]
        units,
        rid,
        ttl_ms,
    )


def rid() -> str:
    return secrets.token_hex(6)


async def test_admission_is_all_or_nothing(counters: Counters):
    first = await admit(counters, [budget()], [window(limit=1)], rid(), 60_000)
    assert first.admitted and first.budgets == (BudgetState(0, 60),)
    assert first.windows[0].used == 1
    # The budget refuses (60 + 60 > 100): the window is not charged either.
    refused = await admit(counters, [budget()], [window(limit=2)], rid(), 60_000)
    assert not refused.admitted and refused.denied == budget().counter
    assert refused.retry_after_ms is None
    assert refused.windows[0].used == 1
    # The window refuses: the (other) budget is not charged.
    other = budget("b|y|total|", amount=10)
    refused = await admit(counters, [other], [window(limit=1)], rid(), 60_000)
    assert not refused.admitted and refused.denied == window(limit=1).counter
    assert 0 < refused.retry_after_ms <= 61_000
    assert await counters.read(["b|x|total|", "b|y|total|"]) == [
        BudgetState(0, 60),
        BudgetState(0, 0),
    ]


async def test_settle_releases_the_reservation_and_charges_the_cost(counters: Counters):
    admission = await admit(counters, [budget()], [], "r1", 60_000)
    assert admission.ticket is not None
    counters.settle(admission.ticket, 25, 0)
    await counters.drain()
    assert await counters.read(["b|x|total|"]) == [BudgetState(25, 0)]
    assert counters.sink.settled[-1][1::2] == (25, 25)  # type: ignore[attr-defined]
    assert (await admit(counters, [budget(amount=75)], [], "r2", 60_000)).admitted
    assert not (await admit(counters, [budget(amount=1)], [], "r3", 60_000)).admitted


async def test_a_ticket_without_reservation_only_charges(counters: Counters):
    counters.settle(Ticket("", (budget().counter,), 0, (), 0), 40, 0)
    await counters.drain()
    assert await counters.read(["b|x|total|"]) == [BudgetState(40, 0)]


async def test_an_audit_budget_never_refuses(counters: Counters):
    audit = budget(limit=10, amount=60, enforce=False)
    for _ in range(3):
        assert (await admit(counters, [audit], [], rid(), 60_000)).admitted
    assert await counters.read([audit.counter.key]) == [BudgetState(0, 180)]


async def test_a_reservation_expires_unless_renewed(counters: Counters):
    kept = await admit(counters, [budget(amount=30)], [], "kept", 400)
    await admit(counters, [budget(amount=30)], [], "lost", 400)
    assert kept.ticket is not None
    await asyncio.sleep(0.25)
    await counters.renew([kept.ticket], 400)
    await asyncio.sleep(0.3)
    assert await counters.read(["b|x|total|"]) == [BudgetState(0, 30)]
    await asyncio.sleep(0.25)
    assert await counters.read(["b|x|total|"]) == [BudgetState(0, 0)]
    # Settling after expiry still charges, and releases nothing twice.
    counters.settle(kept.ticket, 7, 0)
    await counters.drain()
    assert await counters.read(["b|x|total|"]) == [BudgetState(7, 0)]


async def test_a_sliding_window_admits_its_limit_and_says_when_to_retry(counters: Counters):
    w = window(limit=3, window_ms=1200)  # 60 buckets of 20 ms
    for _ in range(3):
        assert (await admit(counters, [], [w], rid(), 1000)).admitted
    refused = await admit(counters, [], [w], rid(), 1000)
    assert not refused.admitted
    assert refused.retry_after_ms is not None and 1000 <= refused.retry_after_ms <= 1240
    assert refused.windows[0].used == 3
    await asyncio.sleep(0.5)
    assert not (await admit(counters, [], [w], rid(), 1000)).admitted
    await asyncio.sleep(refused.retry_after_ms / 1000 - 0.5 + 0.05)
    again = await admit(counters, [], [w], rid(), 1000)
    assert again.admitted and again.windows[0].used == 1


async def test_a_request_larger_than_the_window_is_never_admitted(counters: Counters):
    refused = await admit(counters, [], [window(limit=10, amount=11)], rid(), 1000)
    assert not refused.admitted and refused.retry_after_ms is None


async def test_token_windows_are_corrected_to_the_actual_usage(counters: Counters):
    w = window(key="w|t|tokens:60|", limit=100, amount=80, per_token=True)
    first = await admit(counters, [], [w], rid(), 1000)
    assert first.ticket is not None
    assert not (await admit(counters, [], [w], rid(), 1000)).admitted
    counters.settle(first.ticket, 0, 15)
    await counters.drain()
    second = await admit(counters, [], [w], rid(), 1000)
    assert second.admitted and second.windows[0].used == 95


async def test_concurrent_admissions_are_exact(counters: Counters):
    """Many concurrent requests of random sizes against one budget: the reservations never
    pass the limit, and every refused request really had no room."""
    rng = random.Random(7)
    limit = 10_000
    amounts = [rng.randint(1, 700) for _ in range(200)]
    results = await asyncio.gather(
        *(admit(counters, [budget(limit=limit, amount=a)], [], f"c{i}", 60_000)
          for i, a in enumerate(amounts))
    )  # fmt: skip
    admitted = sum(a for a, r in zip(amounts, results, strict=True) if r.admitted)
    [state] = await counters.read(["b|x|total|"])
    assert state.reserved == admitted <= limit
    refused = [a for a, r in zip(amounts, results, strict=True) if not r.admitted]
    assert refused and all(a > limit - admitted for a in refused)


async def test_two_replicas_on_one_redis_share_the_counters(redis_url):  # noqa: F811
    prefix = f"test-counters-{secrets.token_hex(4)}:"
    a, b = await redis_counters(REDIS_URL, prefix), await redis_counters(REDIS_URL, prefix)
    try:
        w = window(limit=50)
        results = await asyncio.gather(
            *(admit(c, [budget(limit=1000, amount=10)], [w], rid(), 60_000)
              for c in [a, b] * 60)
        )  # fmt: skip
        assert sum(r.admitted for r in results) == 50
        assert await a.read(["b|x|total|"]) == [BudgetState(0, 500)]
    finally:
        await a.close()
        await b.close()
        await _drop_prefix(REDIS_URL, prefix)


# -- Redis: seeding, re-applying, outages ------------------------------------------------------


async def test_redis_seeds_itself_from_the_ledger_when_empty(redis_server: RedisServer):  # noqa: F811
    calls = []

    async def seed() -> tuple[int, list[tuple[BudgetCounter, int]]]:
        calls.append(1)
        return 5, [(budget().counter, 70)]

    counters = RedisCounters(redis_server.url, prefix="s:")
    counters.seed_source = seed
    await counters.start()
    try:
        assert calls == [1]
        assert await counters.read(["b|x|total|"]) == [BudgetState(70, 0)]
        assert await counters.splits("bi|x|total") == [""]
        assert not (await admit(counters, [budget(amount=31)], [], rid(), 1000)).admitted
        redis_server.restart()  # every key gone, the seed marker too
        await asyncio.sleep(0.3)
        deadline = time.monotonic() + 5
        while True:
            try:
                admission = await admit(counters, [budget(amount=30)], [], rid(), 1000)
                break
            except CountersUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert admission.admitted and admission.budgets == (BudgetState(70, 30),)
        assert len(calls) == 2
    finally:
        await counters.close()


async def test_spend_is_reapplied_only_under_the_epoch_that_lacks_it(redis_server: RedisServer):  # noqa: F811
    counters = await redis_counters(redis_server.url, "e:", epoch=3)
    try:
        key = budget().counter
        assert await counters._reapply_one(2, [(key, 5)]) == 2  # a newer seed counted it
        assert await counters._reapply_one(3, [(key, 5)]) == 1  # applied once
        assert await counters._reapply_one(4, [(key, 5)]) == 0  # that seed is not in Redis yet
        assert await counters.read([key.key]) == [BudgetState(5, 0)]
    finally:
        await counters.close()


async def test_redis_down_fails_fast_and_recovers_without_a_restart(redis_server: RedisServer):  # noqa: F811
    counters = await redis_counters(redis_server.url, "d:")
    counters.sink = sink = Sink()
    try:
        admitted = await admit(counters, [budget()], [], "live", 60_000)
        assert admitted.ticket is not None
        redis_server.stop()
        with pytest.raises(CountersUnavailable, match="not answering"):
            await admit(counters, [budget()], [], rid(), 60_000)
        started = time.monotonic()
        with pytest.raises(CountersUnavailable):
            await admit(counters, [budget()], [], rid(), 60_000)
        assert time.monotonic() - started < 0.05  # no network wait while it is known down
        counters.settle(admitted.ticket, 9, 0)
        await counters.drain()
        assert sink.settled[-1] == ("b|x|total|", 9, None, None)  # reported as not applied
        redis_server.start()
        deadline = time.monotonic() + 5
        while True:
            try:
                await admit(counters, [budget(amount=1)], [], rid(), 60_000)
                break
            except CountersUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    finally:
        await counters.close()


async def test_memory_counters_hold_memory_for_what_is_in_flight_only():
    counters = MemoryCounters()
    live = [
        await admit(counters, [budget(limit=10**9, amount=1)], [], f"live{i}", 60_000)
        for i in range(10)
    ]
    for i in range(5000):
        admission = await admit(counters, [budget(limit=10**9, amount=1)], [], f"r{i}", 60_000)
        assert admission.ticket is not None
        counters.settle(admission.ticket, 1, 0)
    counter = counters._budgets["b|x|total|"]
    assert len(counter.holds) == 10 and counter.reserved == 10
    assert len(counter.heap) <= 2 * 10 + 32 + 1
    assert all(a.admitted for a in live)


async def test_batched_admissions_survive_a_script_flush(redis_server: RedisServer):  # noqa: F811
    counters = await redis_counters(redis_server.url, "p:")
    try:
        w = window(limit=30)
        first = await asyncio.gather(*(admit(counters, [], [w], rid(), 1000) for _ in range(20)))
        assert all(a.admitted for a in first)
        client = aioredis.Redis.from_url(redis_server.url)
        await client.script_flush()  # as after a restart: the server no longer knows the scripts
        await client.aclose()
        again = await asyncio.gather(*(admit(counters, [], [w], rid(), 1000) for _ in range(20)))
        assert sum(a.admitted for a in again) == 10  # ran exactly once each: 30 in all
    finally:
        await counters.close()


async def test_a_lone_admission_goes_at_once_and_those_arriving_meanwhile_share_a_call(
    redis_server: RedisServer,  # noqa: F811
):
    """At a moderate rate each request sends its own admission from its own task (no hand-over
    to a batching task, no extra turn of the event loop); admissions that arrive while a call is
    in flight go together in the next one, each decided as if alone."""
    counters = await redis_counters(redis_server.url, "lead:")
    calls: list[int] = []
    tasks: list[asyncio.Task[object] | None] = []
    admit_script = counters._admit

    async def counted(*, keys: list[str], args: list[object]) -> object:
        calls.append(int(args[0]))  # type: ignore[call-overload]
        tasks.append(asyncio.current_task())
        return await admit_script(keys=keys, args=args)

    counters._admit = counted  # type: ignore[assignment]
    try:
        me = asyncio.current_task()
        assert (await admit(counters, [], [window(limit=12)], rid(), 1000)).admitted
        assert calls == [1] and tasks == [me]
        calls.clear()
        admissions = await asyncio.gather(
            *(admit(counters, [], [window(limit=12)], rid(), 1000) for _ in range(15))
        )
        # the first leads alone, the other fourteen wait for it and go as one call
        assert calls == [1, 14]
        assert sum(a.admitted for a in admissions) == 11  # 12 in all: one was admitted before
        assert [a.admitted for a in admissions] == [True] * 11 + [False] * 4
    finally:
        await counters.close()


async def test_admissions_queued_behind_a_call_are_refused_not_lost_when_it_fails(
    redis_server: RedisServer,  # noqa: F811
):
    counters = await redis_counters(redis_server.url, "leadfail:")
    admit_script = counters._admit
    fail = True

    async def failing(*, keys: list[str], args: list[object]) -> object:
        if int(args[0]) > 1 and fail:  # type: ignore[call-overload]
            raise RedisError("the batch is refused")
        await asyncio.sleep(0.01)
        return await admit_script(keys=keys, args=args)

    counters._admit = failing  # type: ignore[assignment]
    try:
        results = await asyncio.gather(
            *(admit(counters, [], [window(limit=10)], rid(), 1000) for _ in range(4)),
            return_exceptions=True,
        )
        assert results[0].admitted  # type: ignore[union-attr]
        assert all(isinstance(r, CountersUnavailable) for r in results[1:])
        fail = False
        assert (await admit(counters, [], [window(limit=10)], rid(), 1000)).admitted
        assert not counters._admitting and not counters._admits
    finally:
        await counters.close()


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "0f" * 20, 2, "custos:b|x|month:2026-11-01|team=é", b"raw", 12, -5, 2**70),
        ("SCRIPT LOAD", "return 1"),  # a command name of two words, as redis-py sends it
        (b"CONFIG GET", b"maxmemory"),
        ("SET", "k", bytearray(b"v")),
        ("SET", "k", memoryview(b"w")),
    ],
)
def test_commands_are_packed_in_c_to_the_same_bytes(command: tuple[object, ...]):
    from redis.asyncio.connection import Connection

    from custos.state.counters_redis import _PackedInC

    counters = RedisCounters("redis://127.0.0.1:6379/0")
    ours = counters._redis.connection_pool.connection_class()
    assert isinstance(ours, _PackedInC)
    theirs = Connection()
    assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))
    assert b"".join(ours.pack_commands([command] * 3)) == b"".join(
        theirs.pack_commands([command] * 3)
    )


def test_a_value_redis_cannot_take_is_refused_as_redis_py_refuses_it():
    counters = RedisCounters("rediss://127.0.0.1:6379/0")
    connection = counters._redis.connection_pool.connection_class()
    assert isinstance(connection, aioredis.SSLConnection)
    for value in (None, True, object()):
        with pytest.raises(DataError):
            connection.pack_command("SET", "k", value)


async def test_settlements_close_together_go_to_redis_in_one_call() -> None:
    """At a moderate rate requests finish a few milliseconds apart: their settlements wait a
    moment for each other and cost Redis one call, not one each."""
    await require_redis()
    prefix = f"linger-{secrets.token_hex(4)}:"
    counters = await redis_counters(REDIS_URL, prefix)
    try:
        batches: list[int] = []
        settle_batch = counters._settle_batch

        async def counted(batch: list[tuple[Ticket, int, int]]) -> None:
            batches.append(len(batch))
            await settle_batch(batch)

        counters._settle_batch = counted  # type: ignore[method-assign]
        tickets = []
        for _ in range(5):
            admission = await admit(counters, [budget(amount=10)], [], rid(), 60_000)
            assert admission.ticket is not None
            tickets.append(admission.ticket)
        for ticket in tickets:  # one every 2 ms, as five requests finishing at 500/s would
            counters.settle(ticket, 7, 0)
            await asyncio.sleep(0.002)
        await counters.drain()
        assert batches == [5]
        assert await counters.read(["b|x|total|"]) == [BudgetState(35, 0)]
    finally:
        await counters.close()
        await _drop_prefix(REDIS_URL, prefix)
