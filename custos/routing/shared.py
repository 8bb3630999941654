"""Cooldowns shared by every replica through the Redis the counters use.

The request path stays in memory: ``admit`` reads this process's view, ``record`` queues the
outcome. A background task sends the queued outcomes in one script call as soon as there are
any (and otherwise every ``POLL_S``, with none, to read the others' decisions); Redis applies
the breaker's rule (``custos.routing.health``) and answers with every cooldown in force, in its
own clock, which replaces this process's view. Replicas therefore agree within one poll.

Layout (under the counters' prefix): ``h|open`` — hash: ``<virtual model>|<target>`` → when
its cooldown ends (Redis ms; in the past: a probe may go); ``h|<virtual model>|<target>`` —
list of recent outcomes ``<ms>:<0|1>``, expiring after the window.

While Redis does not answer, each replica decides on its own outcomes (as a single gateway
would) and says so in its log; the shared view returns with Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from custos.config.schema import CooldownSettings
from custos.routing.health import Breaker, TargetHealth, breaker_key
from custos.routing.targets import ModelRoute, ModelTarget
from custos.state.counters_redis import _safe_url

log = logging.getLogger("custos.routing")

#: Seconds between reads of the shared cooldowns when there is nothing to send.
POLL_S = 0.25
_FIELDS = 7  # per outcome: key, failed, probe, failures, of_last, window ms, cooldown ms

_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local open, prefix, n = KEYS[1], ARGV[1], tonumber(ARGV[2])
for i = 0, n - 1 do
  local b = 3 + i * 7
  local key, failed, probe = ARGV[b], ARGV[b + 1] == '1', ARGV[b + 2] == '1'
  local need, keep = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local window, cool = tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
  local list = prefix .. key
  if probe then
    if failed then redis.call('HSET', open, key, now + cool) else redis.call('HDEL', open, key) end
    redis.call('DEL', list)
  elseif not redis.call('HGET', open, key) then
    redis.call('LPUSH', list, now .. ':' .. (failed and '1' or '0'))
    redis.call('LTRIM', list, 0, keep - 1)
    redis.call('PEXPIRE', list, window)
    if failed then
      local count = 0
      for _, entry in ipairs(redis.call('LRANGE', list, 0, -1)) do
        local at, bad = string.match(entry, '^(%d+):(%d)$')
        if bad == '1' and tonumber(at) >= now - window then count = count + 1 end
      end
      if count >= need then
        redis.call('HSET', open, key, now + cool)
        redis.call('DEL', list)
      end
    end
  end
end
return {now, redis.call('HGETALL', open)}
"""

Outcome = tuple[str, CooldownSettings, bool, bool]


class SharedHealth(TargetHealth):
    def __init__(
        self, url: str, prefix: str, routes: Callable[[], Mapping[str, ModelRoute]]
    ) -> None:
        super().__init__()
        self.url = url
        self._routes = routes
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, client_name="custos-routing"
        )
        self._script = self._redis.register_script(_RECORD)
        self._open_key = prefix + "h|open"
        self._list_prefix = prefix + "h|"
        self._queue: list[Outcome] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.shared = True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="custos-routing-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()

    def record(self, route: ModelRoute, target: ModelTarget, failed: bool, probe: bool) -> None:
        settings = route.cooldown
        if settings is None:
            return
        key = breaker_key(route, target)
        if not self.shared or probe:
            # A probe's answer is applied here at once (it frees the probe's turn); Redis
            # confirms it with the next reply.
            self.decide(key, settings, failed, probe, time.monotonic())
        if self.shared:
            self._queue.append((key, settings, failed, probe))
            self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            self._wake.clear()
            batch, self._queue = self._queue, []
            if batch or self._cooled_routes():
                await self._exchange(batch)

    async def _exchange(self, batch: list[Outcome]) -> None:
        args: list[Any] = [self._list_prefix, len(batch)]
        for key, settings, failed, probe in batch:
            args += [key, int(failed), int(probe), settings.failures, settings.last,
                     int(settings.window_s * 1000), int(settings.cooldown_s * 1000)]  # fmt: skip
        try:
            now_ms, flat = await self._script(keys=[self._open_key], args=args)
        except (RedisError, OSError) as exc:
            if self.shared:
                log.warning(
                    "routing cooldowns not shared: Redis at %s does not answer (%s); "
                    "deciding on this replica's outcomes",
                    _safe_url(self.url),
                    type(exc).__name__,
                )
            self.shared = False
            for key, settings, failed, probe in batch:
                if not probe:  # probes were applied when recorded
                    self.decide(key, settings, failed, probe, time.monotonic())
            return
        if not self.shared:
            log.warning("routing cooldowns shared again through Redis at %s", _safe_url(self.url))
        self.shared = True
        self._apply(int(now_ms), flat)

    def _cooled_routes(self) -> set[str]:
        return {name for name, route in self._routes().items() if route.cooldown is not None}

    def _apply(self, now_ms: int, flat: list[bytes]) -> None:
        """Make this process's view the shared one (for the routes this revision has)."""
        routes = self._cooled_routes()
        now = time.monotonic()
        shared: dict[str, float] = {}
        for index in range(0, len(flat) - 1, 2):
            key = flat[index].decode()
            if key.partition("|")[0] in routes:
                shared[key] = now + (int(flat[index + 1]) - now_ms) / 1000
        for key, until in shared.items():
            breaker = self.breakers.setdefault(key, Breaker())
            if breaker.open_until != until:
                self._set_open(key, breaker, until)
        for key, breaker in self.breakers.items():
            if key not in shared and breaker.open_until is not None:
                breaker.probe_until = 0.0
                self._set_open(key, breaker, None)
