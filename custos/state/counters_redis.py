"""Counters in Redis, shared by every gateway replica: one Lua script per admission.

Why Lua: a request's check-and-reserve must be one indivisible step across all the counters it
touches (every matching budget and its rate-limit window), and one round trip. Redis runs a
script to completion before any other command, so two replicas can never both see the last
unit of room. Time comes from Redis (``TIME``), so replicas whose clocks differ still agree on
window buckets and reservation expiry.

Layout (every key under ``prefix``):

- ``b|<budget>|<period>|<split>`` — hash: ``spent``, ``res`` (sum of live reservations) and
  ``r:<request id>`` per reservation; ``…|z`` — sorted set of request ids by expiry; both expire
  a week after their period ends;
- ``bi|<budget>|<period>`` — set of the period's splits (for the admin API);
- ``w|<rule>|<unit>|<split>`` — hash: one field per bucket index, ``t`` (the total) and ``o``
  (the oldest bucket still counted); expires when it would be empty anyway;
- ``epoch`` — the ledger seed epoch these counters hold (see ``custos.state.ledger``); absent
  after Redis lost its data, which is how a restart is noticed; ``seedlock`` — held while one
  replica seeds.

Failure handling: a connection error or timeout marks Redis down at once (``CountersUnavailable``
without waiting on the network), drops the pooled connections, and starts a probe that pings
every 100 ms; the first answer brings the counters back, with no restart. Commands are never
retried by the client: a script that may have run must not run twice.

A request sends its own admission at once while no other is in flight (one round trip, no
extra turn of the event loop); admissions that arrive while one is in flight go to Redis
together in the next script call, which admits them in turn (each as atomic as alone; one command
to pack, one reply to parse), so under load a batch holds what arrived during one round trip,
and the client's work per command, most of what a Redis call costs the gateway, is shared
(commands are packed by hiredis, in C).
Settlements are queued and sent in batches (one script call for up to 256) by a background task,
so finishing a request never waits on Redis; a settlement that cannot be sent is reported to the
sink with ``epoch=None`` and the ledger re-applies it once Redis is back. The task waits
``_SETTLE_LINGER_S`` after the first settlement before sending, so that at a moderate rate one
call carries the settlements of several requests instead of one each (350 requests/s were 350
calls a second). A settlement sent later keeps its reservation a little longer, which can only
refuse earlier, never overshoot (docs/architecture.md, the overshoot bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from custos.state.counters import (
    Admission,
    BudgetCounter,
    BudgetState,
    Counters,
    CountersUnavailable,
    Ticket,
    WindowCounter,
    WindowState,
)
from custos.telemetry import metrics

log = logging.getLogger("custos.counters")

_BATCH = 256
#: How long the first settlement of a batch waits for others (see the module docstring).
_SETTLE_LINGER_S = 0.02
_PROBE_S = 0.1
_SEED_LOCK_MS = 30_000


class _PackedInC:
    """Commands packed by hiredis in one C call.

    redis-py's asyncio connections pack every command in Python, an encode and three joins per
    argument, even with hiredis installed (it parses the replies): an admission's dozen keys and
    arguments and a settlement batch's thousand cost more CPU there than the rest of the call.
    The bytes are the same: the first argument split on spaces as redis-py does (``SCRIPT
    LOAD``), bytes-like values as bytes, text as UTF-8, and a value that is none of text, bytes
    or a number refused with redis-py's ``DataError``."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            if not any(isinstance(a, bytearray) for a in args):
                raise DataError(str(exc)) from None
        return [hiredis.pack_command(tuple(bytes(a) if isinstance(a, bytearray) else a
                                           for a in args))]  # fmt: skip


class _Connection(_PackedInC, aioredis.Connection):
    pass


class _SSLConnection(_PackedInC, aioredis.SSLConnection):
    pass


_LIB = """
local function num(v, d) if v then return tonumber(v) end return d end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(n) return string.format('%d', n) end
local function purge(h, z, now)
  local dead = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 256)
  for _, r in ipairs(dead) do
    local held = redis.call('HGET', h, 'r:' .. r)
    if held then
      redis.call('HDEL', h, 'r:' .. r)
      redis.call('HINCRBY', h, 'res', -tonumber(held))
    end
    redis.call('ZREM', z, r)
  end
end
"""

# One admission. K: epoch, then (hash, zset, index) per budget, then one hash per window.
# A: rid, ttl_ms, nb, nw, then (limit, amount, enforce, expire_at_ms, split) per budget,
#    then (limit, amount, bucket_ms) per window.
# Returns {-1} when the counters are not seeded; {0, denied, retry_ms, states…} when refused;
# {1, epoch, states…, bucket per window} when admitted. States: spent, reserved per budget,
# then used, reset_ms per window.
_ADMIT_ONE = """
local function admit_one(K, A)
  local rid, ttl = A[1], tonumber(A[2])
  local nb, nw = tonumber(A[3]), tonumber(A[4])
  local now = now_ms()
  local epoch = 0
  if nb > 0 then
    epoch = num(redis.call('GET', K[1]), -1)
    if epoch < 0 then return {-1} end
  end
  local B = 60
  local denied, retry = 0, -1
  local states, cur = {}, {}
  for j = 0, nb - 1 do
    local h, z = K[2 + 3 * j], K[3 + 3 * j]
    local a = 5 + 5 * j
    purge(h, z, now)
    local spent = num(redis.call('HGET', h, 'spent'), 0)
    local res = num(redis.call('HGET', h, 'res'), 0)
    states[#states + 1] = spent
    states[#states + 1] = res
    if denied == 0 and A[a + 2] == '1'
        and spent + res + tonumber(A[a + 1]) > tonumber(A[a]) then
      denied = j + 1
    end
  end
  local wb, aw = 2 + 3 * nb, 5 + 5 * nb
  for k = 0, nw - 1 do
    local h, a = K[wb + k], aw + 3 * k
    local limit, amount, width = tonumber(A[a]), tonumber(A[a + 1]), tonumber(A[a + 2])
    local c = math.floor(now / width)
    local cutoff = c - B
    local total = num(redis.call('HGET', h, 't'), 0)
    local oldest = num(redis.call('HGET', h, 'o'), cutoff)
    if oldest < cutoff then
      if cutoff - oldest > B + 1 then
        redis.call('DEL', h)
        total = 0
      else
        for i = oldest, cutoff - 1 do
          local v = redis.call('HGET', h, int(i))
          if v then
            total = total - tonumber(v)
            redis.call('HDEL', h, int(i))
          end
        end
        redis.call('HSET', h, 't', int(total))
      end
      redis.call('HSET', h, 'o', int(cutoff))
    end
    cur[k + 1] = c
    states[#states + 1] = total
    states[#states + 1] = (c + B + 1) * width - now
    if denied == 0 and total + amount > limit then
      denied = nb + k + 1
      if amount <= limit then
        local need, freed = total + amount - limit, 0
        for i = cutoff, c do
          freed = freed + num(redis.call('HGET', h, int(i)), 0)
          if freed >= need then
            retry = (i + B + 1) * width - now
            break
          end
        end
      end
    end
  end
  if denied > 0 then
    local out = {0, denied, retry}
    for _, v in ipairs(states) do out[#out + 1] = v end
    return out
  end
  for j = 0, nb - 1 do
    local h, z, idx = K[2 + 3 * j], K[3 + 3 * j], K[4 + 3 * j]
    local a = 5 + 5 * j
    if redis.call('HSETNX', h, 'r:' .. rid, A[a + 1]) == 1 then
      redis.call('HINCRBY', h, 'res', A[a + 1])
      states[2 * j + 2] = states[2 * j + 2] + tonumber(A[a + 1])
    end
    redis.call('ZADD', z, now + ttl, rid)
    redis.call('SADD', idx, A[a + 4])
    local exp = tonumber(A[a + 3])
    if exp > 0 then
      redis.call('PEXPIREAT', h, exp)
      redis.call('PEXPIREAT', z, exp)
      redis.call('PEXPIREAT', idx, exp)
    end
  end
  for k = 0, nw - 1 do
    local h, a = K[wb + k], aw + 3 * k
    redis.call('HINCRBY', h, int(cur[k + 1]), A[a + 1])
    states[2 * nb + 2 * k + 1] = redis.call('HINCRBY', h, 't', A[a + 1])
    redis.call('HSETNX', h, 'o', int(cur[k + 1] - B))
    redis.call('PEXPIRE', h, tonumber(A[a + 2]) * (B + 2))
  end
  local out = {1, epoch}
  for _, v in ipairs(states) do out[#out + 1] = v end
  for _, c in ipairs(cur) do out[#out + 1] = c end
  return out
end
"""

# Admissions in turn, each exactly as it would run alone (see ``_batched_admit``).
# ARGV: n, then per admission: its number of keys, its number of arguments, its arguments;
# KEYS: every admission's keys, in the same order. Returns one reply per admission.
_ADMIT = (
    _LIB
    + _ADMIT_ONE
    + """
local out, ko, ao = {}, 1, 2
for i = 1, tonumber(ARGV[1]) do
  local nk, na = tonumber(ARGV[ao]), tonumber(ARGV[ao + 1])
  out[i] = admit_one({unpack(KEYS, ko, ko + nk - 1)}, {unpack(ARGV, ao + 2, ao + 1 + na)})
  ko, ao = ko + nk, ao + 2 + na
end
return out
"""
)

# KEYS: epoch, then (hash, zset) per budget op or (hash) per window op.
# ARGV: n, then 4 per op: 'b', rid, cost, expire_at_ms | 'w', bucket, delta, ''.
# Returns {epoch or -1, spent after (or -1 when not applied) per budget op}.
_SETTLE = (
    _LIB
    + """
local epoch = num(redis.call('GET', KEYS[1]), -1)
local out = {epoch}
local ki, ai = 2, 2
for _ = 1, tonumber(ARGV[1]) do
  if ARGV[ai] == 'b' then
    local h, z = KEYS[ki], KEYS[ki + 1]
    ki = ki + 2
    if epoch < 0 then
      out[#out + 1] = -1
    else
      local rid = ARGV[ai + 1]
      if rid ~= '' then
        local held = redis.call('HGET', h, 'r:' .. rid)
        if held then
          redis.call('HDEL', h, 'r:' .. rid)
          redis.call('HINCRBY', h, 'res', -tonumber(held))
        end
        redis.call('ZREM', z, rid)
      end
      out[#out + 1] = redis.call('HINCRBY', h, 'spent', ARGV[ai + 2])
      local exp = tonumber(ARGV[ai + 3])
      if exp > 0 then redis.call('PEXPIREAT', h, exp) end
    end
  else
    local h = KEYS[ki]
    ki = ki + 1
    local bucket = ARGV[ai + 1]
    local oldest = num(redis.call('HGET', h, 'o'), nil)
    if oldest and tonumber(bucket) >= oldest and redis.call('HEXISTS', h, bucket) == 1 then
      redis.call('HINCRBY', h, bucket, ARGV[ai + 2])
      redis.call('HINCRBY', h, 't', ARGV[ai + 2])
    end
  end
  ai = ai + 4
end
return out
"""
)

# KEYS: zset per reservation; ARGV: ttl_ms, then the request id per key.
_RENEW = (
    _LIB
    + """
local at = now_ms() + tonumber(ARGV[1])
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', at, ARGV[i + 1]) end
return #KEYS
"""
)

# KEYS: (hash, zset) per budget counter. Returns spent, reserved per counter.
_READ = (
    _LIB
    + """
local now = now_ms()
local out = {}
for i = 1, #KEYS, 2 do
  purge(KEYS[i], KEYS[i + 1], now)
  out[#out + 1] = num(redis.call('HGET', KEYS[i], 'spent'), 0)
  out[#out + 1] = num(redis.call('HGET', KEYS[i], 'res'), 0)
end
return out
"""
)

# KEYS: epoch, lock, then (hash, index) per counter; ARGV: lock token, epoch, then
# (spent, expire_at_ms, split) per counter. Returns 1 seeded, 2 already seeded, 0 lock lost.
_SEED = (
    _LIB
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[2])
  return 2
end
for i = 3, #KEYS, 2 do
  local a = 3 + 3 * ((i - 3) / 2)
  redis.call('HSET', KEYS[i], 'spent', ARGV[a])
  redis.call('SADD', KEYS[i + 1], ARGV[a + 2])
  local exp = tonumber(ARGV[a + 1])
  if exp > 0 then
    redis.call('PEXPIREAT', KEYS[i], exp)
    redis.call('PEXPIREAT', KEYS[i + 1], exp)
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""
)

# KEYS: epoch, then (hash, index) per counter; ARGV: the epoch the spend belongs to, then
# (amount, expire_at_ms, split) per counter. Returns 1 applied, 2 a newer seed holds it,
# 0 not yet (the seed of that epoch has not reached Redis).
_REAPPLY = (
    _LIB
    + """
local cur = num(redis.call('GET', KEYS[1]), -1)
local want = tonumber(ARGV[1])
if cur < want then return 0 end
if cur > want then return 2 end
for i = 2, #KEYS, 2 do
  local a = 2 + 3 * ((i - 2) / 2)
  redis.call('HINCRBY', KEYS[i], 'spent', ARGV[a])
  redis.call('SADD', KEYS[i + 1], ARGV[a + 2])
  local exp = tonumber(ARGV[a + 1])
  if exp > 0 then
    redis.call('PEXPIREAT', KEYS[i], exp)
    redis.call('PEXPIREAT', KEYS[i + 1], exp)
  end
end
return 1
"""
)


class RedisCounters(Counters):
    shared = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "custos:",
        timeout_s: float = 0.5,
        max_connections: int = 64,
    ) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        # A bounded pool that makes a burst wait for a connection (the default pool raises
        # past 100 connections, which would look like Redis being down).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=2.0,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        # The URL chose the class (plain or TLS); the same, packing in C.
        ssl = issubclass(pool.connection_class, aioredis.SSLConnection)
        pool.connection_class = _SSLConnection if ssl else _Connection
        self._redis = aioredis.Redis(connection_pool=pool)
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)
        self._renew = self._redis.register_script(_RENEW)
        self._read = self._redis.register_script(_READ)
        self._seed_script = self._redis.register_script(_SEED)
        self._reapply_script = self._redis.register_script(_REAPPLY)
        self._epoch_key = prefix + "epoch"
        self._lock_key = prefix + "seedlock"
        self._down_until = 0.0
        self._down_reason = ""
        self._probe: asyncio.Task[None] | None = None
        self._seeding: asyncio.Future[None] | None = None
        self._queue: list[tuple[Ticket, int, int]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._reapply: list[tuple[int, list[tuple[BudgetCounter, int]]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        #: Admissions waiting for the next batch (see ``_batched_admit``).
        self._admits: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        #: An admission call is in flight (the next ones queue in ``_admits``).
        self._admitting = False
        self._admit_batches: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._settle_loop(), name="custos-counters-settle"))
        self._tasks.append(loop.create_task(self._reapply_loop(), name="custos-counters-reapply"))
        try:
            await self._ensure_seeded()
        except CountersUnavailable as exc:
            log.warning("counters not ready at start (%s); retrying per request", exc)

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), 5)
        background = [*self._tasks, *([self._probe] if self._probe else [])]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, *self._admit_batches, return_exceptions=True)
        await self._redis.aclose()

    async def drain(self) -> None:
        while self._queue or not self._idle.is_set():
            self._wake.set()
            await self._idle.wait()
            await asyncio.sleep(0)

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
        keys = [self._epoch_key]
        args: list[Any] = [rid, ttl_ms, len(budgets), len(windows)]
        for b in budgets:
            keys += [self.prefix + b.key, self.prefix + b.key + "|z", self.prefix + b.index_key]
            args += [b.limit, amount, 1 if b.enforce else 0, b.expires_at_ms, b.split]
        for w in windows:
            keys.append(self.prefix + w.key)
            args += [w.limit, units, w.bucket_ms]
        reply = await self._batched_admit(keys, args)
        if reply[0] == -1:
            await self._ensure_seeded()
            reply = await self._batched_admit(keys, args)
            if reply[0] == -1:
                raise CountersUnavailable("the counters are being seeded from the ledger")
        nb = len(budgets)
        if reply[0] == 0:
            denied_at = int(reply[1]) - 1
            denied = budgets[denied_at] if denied_at < nb else windows[denied_at - nb]
            retry = int(reply[2])
            return Admission(
                False,
                denied,
                None if retry < 0 else retry,
                *_states(reply[3:], nb, len(windows)),
                None,
            )
        states = reply[2 : 2 + 2 * nb + 2 * len(windows)]
        buckets = reply[2 + 2 * nb + 2 * len(windows) :]
        ticket = Ticket(
            rid,
            tuple(budgets),
            amount,
            tuple((w, int(bucket)) for w, bucket in zip(windows, buckets, strict=True)),
            units,
        )
        return Admission(True, None, None, *_states(states, nb, len(windows)), ticket)

    def settle(self, ticket: Ticket, cost_micros: int, tokens: int) -> None:
        self._queue.append((ticket, cost_micros, tokens))
        self._idle.clear()
        self._wake.set()

    async def renew(self, tickets: Sequence[Ticket], ttl_ms: int) -> None:
        keys: list[str] = []
        args: list[Any] = [ttl_ms]
        for ticket in tickets:
            for b in ticket.budgets:
                keys.append(self.prefix + b.key + "|z")
                args.append(ticket.rid)
        rids = args[1:]
        for start in range(0, len(keys), _BATCH):
            end = start + _BATCH
            await self._call(self._renew, keys[start:end], [ttl_ms, *rids[start:end]])

    async def read(self, keys: Sequence[str]) -> list[BudgetState]:
        await self._seeded()
        flat: list[str] = []
        for key in keys:
            flat += [self.prefix + key, self.prefix + key + "|z"]
        reply = await self._call(self._read, flat, []) if flat else []
        return [BudgetState(int(reply[i]), int(reply[i + 1])) for i in range(0, len(reply), 2)]

    async def splits(self, index_key: str) -> list[str]:
        await self._seeded()
        members = await self._command(self._redis.smembers(self.prefix + index_key))
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    def reapply(self, epoch: int, spent: list[tuple[BudgetCounter, int]]) -> None:
        """Spend the ledger wrote that these counters do not hold yet (``Flushed.stale``): it
        is added under ``epoch``, when Redis holds that epoch (see ``custos.state.ledger``)."""
        if spent:
            self._reapply.append((epoch, spent))

    @property
    def reapply_pending(self) -> int:
        return sum(len(items) for _, items in self._reapply)

    # -- seeding -----------------------------------------------------------------------------

    async def _seeded(self) -> None:
        """Reads after a Redis restart must not show zeros: seed first when it lost its data."""
        if not await self._command(self._redis.exists(self._epoch_key)):
            await self._ensure_seeded()

    async def _ensure_seeded(self) -> None:
        """Seed from the ledger when Redis has no epoch (first start, or Redis lost its data).

        One seeding per process at a time; across processes the ``seedlock`` key picks one.
        """
        if self._seeding is None:
            self._seeding = asyncio.ensure_future(self._seed_once())
            self._seeding.add_done_callback(self._seeding_done)
        await asyncio.shield(self._seeding)

    def _seeding_done(self, future: asyncio.Future[None]) -> None:
        self._seeding = None
        if not future.cancelled():
            future.exception()  # retrieved: every waiter got it already

    async def _seed_once(self) -> None:
        if await self._command(self._redis.exists(self._epoch_key)):
            return
        token = secrets.token_hex(8)
        locked = await self._command(
            self._redis.set(self._lock_key, token, nx=True, px=_SEED_LOCK_MS)
        )
        if not locked:
            # Another replica is seeding: give it a moment to finish.
            for _ in range(40):
                await asyncio.sleep(0.05)
                if await self._command(self._redis.exists(self._epoch_key)):
                    return
            raise CountersUnavailable("another replica is still seeding the counters")
        if self.seed_source is None:
            epoch, spent = 0, ()
        else:
            try:
                epoch, spent = await self.seed_source()
            except Exception as exc:
                with contextlib.suppress(CountersUnavailable):
                    await self._command(self._redis.delete(self._lock_key))
                raise CountersUnavailable(f"cannot read the spend ledger to seed: {exc}") from exc
        keys = [self._epoch_key, self._lock_key]
        args: list[Any] = [token, epoch]
        for charge, value in spent:
            keys += [self.prefix + charge.key, self.prefix + charge.index_key]
            args += [value, charge.expires_at_ms, charge.split]
        result = await self._call(self._seed_script, keys, args)
        if result == 1:
            log.warning(
                "seeded counters at %s from the ledger: epoch %d, %d budget counter(s)",
                self.url, epoch, len(spent),
            )  # fmt: skip
            metrics.COUNTER_SEEDS.inc()
        elif result == 0:
            raise CountersUnavailable("lost the seed lock (Redis restarted while seeding?)")

    # -- background work ---------------------------------------------------------------------

    async def _settle_loop(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._queue) < _BATCH:
                await asyncio.sleep(_SETTLE_LINGER_S)  # let the next requests' join this call
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
                try:
                    await self._settle_batch(batch)
                except Exception:
                    log.exception("settling %d request(s) failed", len(batch))
            self._idle.set()

    async def _settle_batch(self, batch: list[tuple[Ticket, int, int]]) -> None:
        keys = [self._epoch_key]
        args: list[Any] = [0]
        budget_ops: list[tuple[BudgetCounter, int]] = []
        for ticket, cost, tokens in batch:
            for b in ticket.budgets:
                keys += [self.prefix + b.key, self.prefix + b.key + "|z"]
                args += ["b", ticket.rid, cost, b.expires_at_ms]
                budget_ops.append((b, cost))
            for w, bucket in ticket.windows:
                if w.per_token and tokens != ticket.units:
                    keys.append(self.prefix + w.key)
                    args += ["w", bucket, tokens - ticket.units, ""]
        args[0] = (len(args) - 1) // 4
        if args[0] == 0:
            return
        try:
            reply = await self._call(self._settle, keys, args)
        except CountersUnavailable:
            reply = None
        sink = self.sink
        if sink is None:
            return
        if reply is None:
            for charge, cost in budget_ops:
                sink.budget_settled(charge, cost, None, None)
            return
        epoch = int(reply[0])
        for (charge, cost), spent in zip(budget_ops, reply[1:], strict=True):
            applied = int(spent) >= 0
            sink.budget_settled(
                charge, cost, epoch if applied else None, int(spent) if applied else None
            )

    async def _reapply_loop(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            if not self._reapply:
                continue
            waiting: list[tuple[int, list[tuple[BudgetCounter, int]]]] = []
            pending, self._reapply = self._reapply, []
            for epoch, spent in pending:
                try:
                    if await self._reapply_one(epoch, spent) == 0:
                        waiting.append((epoch, spent))
                except CountersUnavailable:
                    waiting.append((epoch, spent))
            self._reapply = waiting + self._reapply

    async def _reapply_one(self, epoch: int, spent: list[tuple[BudgetCounter, int]]) -> int:
        keys = [self._epoch_key]
        args: list[Any] = [epoch]
        for charge, amount in spent:
            keys += [self.prefix + charge.key, self.prefix + charge.index_key]
            args += [amount, charge.expires_at_ms, charge.split]
        result = int(await self._call(self._reapply_script, keys, args))
        if result == 0 and not await self._command(self._redis.exists(self._epoch_key)):
            await self._ensure_seeded()
            result = int(await self._call(self._reapply_script, keys, args))
        return result

    # -- admissions, batched ------------------------------------------------------------------

    async def _batched_admit(self, keys: list[str], args: list[Any]) -> Any:
        """Run this request's admission now, or in the next batch if one is under way.

        While no admission call is in flight the request sends its own at once, from its own
        task: at a moderate rate a request costs one Redis round trip and no extra turn of the
        event loop (handing it to a batching task took three: the hand-over, the task's start
        and the wake-up with the reply). Admissions that arrive while a call is in flight wait
        for it and then go as one script call, which admits them in turn, each exactly as it
        would alone (a script runs to completion before any other command, so each admission
        is as atomic as before, and so is the batch). Under load the batches grow to whatever
        arrived during one round trip: one command to pack and send, one reply to read, which
        is most of what a Redis call costs the gateway.
        """
        if time.monotonic() < self._down_until:
            raise CountersUnavailable(self._down_reason)
        if self._admitting:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._admits.append((keys, args, future))
            return await future
        self._admitting = True
        try:
            reply = (await self._admit_batch([(keys, args)]))[0]
        finally:
            self._next_admits()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _next_admits(self) -> None:
        """After a call: send what queued meanwhile (in a task: the caller has its reply)."""
        if not self._admits:
            self._admitting = False
            return
        task = asyncio.get_running_loop().create_task(self._run_queued_admits())
        self._admit_batches.add(task)
        task.add_done_callback(self._admit_batches.discard)

    async def _run_queued_admits(self) -> None:
        batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        try:
            while self._admits:
                batch, self._admits = self._admits[:_BATCH], self._admits[_BATCH:]
                try:
                    replies = await self._admit_batch([(k, a) for k, a, _ in batch])
                except Exception as exc:  # every waiter gets what the call raised
                    replies = [exc] * len(batch)
                for (_, _, future), reply in zip(batch, replies, strict=True):
                    if future.done():
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
                batch = []
        finally:
            self._admitting = False
            left, self._admits = batch + self._admits, []
            for _, _, future in left:  # only when cancelled: the counters are closing
                if not future.done():
                    future.set_exception(CountersUnavailable("the counters are closing"))

    async def _admit_batch(self, batch: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """One script call for ``batch``: each admission's reply, or the error for all."""
        keys: list[str] = []
        args: list[Any] = [len(batch)]
        for k, a in batch:
            keys += k
            args.append(len(k))
            args.append(len(a))
            args += a
        try:
            # (a script Redis no longer knows did not run: redis-py loads it and sends it again)
            return list(await self._command(self._admit(keys=keys, args=args)))
        except CountersUnavailable as exc:
            return [CountersUnavailable(str(exc))] * len(batch)

    # -- talking to Redis --------------------------------------------------------------------

    async def _call(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._command(script(keys=keys, args=args))

    async def _command(self, command: Awaitable[Any]) -> Any:
        if time.monotonic() < self._down_until:
            if asyncio.iscoroutine(command):
                command.close()
            raise CountersUnavailable(self._down_reason)
        try:
            return await command
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._mark_down(exc)
            raise CountersUnavailable(self._down_reason) from None
        except RedisError as exc:
            # A script error or an out-of-memory refusal: not transient, but still not a
            # reason to answer the caller with a 500.
            log.error("Redis at %s refused a counters command: %s", self.url, exc)
            raise CountersUnavailable(f"Redis refused the command: {exc}") from None

    def _mark_down(self, exc: BaseException) -> None:
        first = self._down_until == 0.0 or time.monotonic() >= self._down_until
        where = _safe_url(self.url)
        self._down_reason = f"Redis at {where} is not answering ({type(exc).__name__})"
        self._down_until = time.monotonic() + 3600  # until the probe sees it answer again
        metrics.COUNTERS_UP.set(0)
        if first:
            log.error("counters unavailable: %s", self._down_reason)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        # Broken pooled connections would each fail once more; drop them all now.
        with contextlib.suppress(Exception):
            await self._redis.connection_pool.disconnect()
        while True:
            await asyncio.sleep(_PROBE_S)
            try:
                await self._redis.ping()
            except (RedisError, OSError):
                continue
            self._down_until = 0.0
            metrics.COUNTERS_UP.set(1)
            log.warning("counters back: Redis at %s answers again", _safe_url(self.url))
            return


def _states(
    flat: Sequence[Any], budgets: int, windows: int
) -> tuple[tuple[BudgetState, ...], tuple[WindowState, ...]]:
    values = [int(v) for v in flat]
    b = tuple(BudgetState(values[2 * i], values[2 * i + 1]) for i in range(budgets))
    base = 2 * budgets
    w = tuple(WindowState(values[base + 2 * i], values[base + 2 * i + 1]) for i in range(windows))
    return b, w


def _safe_url(url: str) -> str:
    """The URL without a password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
