"""Budget alerts: a webhook the first time spend reaches each configured percentage.

"Once" is per budget, period, split and percentage, across replicas and restarts: before sending,
a replica claims the alert in the store (``budget_alerts``' primary key); only the claimant sends.
Sending never blocks a request: ``check`` runs at settlement and only queues; a background task
claims and posts, retrying with exponential backoff (1 s, 2 s, 4 s, …) on a network error or a
non-2xx answer, and records the outcome. A process that dies between claim and delivery loses
that alert (at most once, never twice).

The POST body (JSON):

    {"type": "custos.budget.threshold", "id": "<stable id: retries carry the same one>",
     "budget": "support-ai-monthly", "mode": "enforce", "period": "month:2025-06-01",
     "period_start": "2025-06-01T00:00:00Z", "period_end": "2025-07-01T00:00:00Z",
     "split": {"team": "support-ai"}, "percent": 80,
     "limit_micros": 5000000000, "spent_micros": 4000120000, "at": "2025-06-20T10:11:12Z"}
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import orjson

from custos.config.rules import BudgetAlerts
from custos.policy.limits import BudgetPolicy, parse_split
from custos.policy.periods import period_from_key
from custos.state.ledger import LedgerKey, SpendLedger
from custos.telemetry import metrics

log = logging.getLogger("custos.alerts")

_QUEUE = 10_000
_FIRED_MAX = 100_000


@dataclass(frozen=True, slots=True)
class AlertJob:
    key: LedgerKey
    percent: int
    budget_id: str
    mode: str
    limit_micros: int
    spent_micros: int
    alerts: BudgetAlerts


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def payload(job: AlertJob, now: datetime) -> bytes:
    budget_id, period_key, split = job.key
    period = period_from_key(period_key)
    ident = hashlib.sha256(f"{budget_id}|{period_key}|{split}|{job.percent}".encode()).hexdigest()
    return orjson.dumps(
        {
            "type": "custos.budget.threshold",
            "id": ident[:32],
            "budget": budget_id,
            "mode": job.mode,
            "period": period_key,
            "period_start": _iso(period.start),
            "period_end": _iso(period.end),
            "split": parse_split(split),
            "percent": job.percent,
            "limit_micros": job.limit_micros,
            "spent_micros": job.spent_micros,
            "at": _iso(now),
        }
    )


class Alerts:
    def __init__(
        self,
        ledger: SpendLedger,
        *,
        attempts: int = 6,
        backoff_s: float = 1.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.ledger = ledger
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._queue: asyncio.Queue[AlertJob] = asyncio.Queue(_QUEUE)
        self._fired: set[tuple[LedgerKey, int]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def check(self, budget: BudgetPolicy, key: LedgerKey, spent: int) -> None:
        """Queue an alert for every threshold ``spent`` has reached and this process has not
        queued yet (no I/O; the store decides "once" across processes)."""
        alerts = budget.alerts
        if alerts is None or budget.limit_micros <= 0:
            return
        for percent in alerts.at_percent:
            if spent * 100 < percent * budget.limit_micros:
                break  # at_percent is sorted
            mark = (key, percent)
            if mark in self._fired:
                continue
            if len(self._fired) >= _FIRED_MAX:
                self._fired.clear()  # only a cache: the store's claim is what makes it once
            self._fired.add(mark)
            job = AlertJob(
                key, percent, budget.id, budget.source.mode, budget.limit_micros, spent, alerts
            )
            try:
                self._queue.put_nowait(job)
            except asyncio.QueueFull:
                self._fired.discard(mark)
                log.error("budget alert queue full; dropped %s at %d%%", budget.id, percent)

    async def run(self) -> None:
        """Claim and deliver queued alerts, each in its own task (a slow receiver delays none)."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        try:
            while True:
                job = await self._queue.get()
                task = asyncio.create_task(self._handle(job), name="custos-budget-alert")
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        finally:
            for task in list(self._sending):
                task.cancel()
            await asyncio.gather(*self._sending, return_exceptions=True)
            await self._session.close()

    async def idle(self) -> None:
        """Wait until nothing is queued or being sent (tests)."""
        while not self._queue.empty() or self._sending:
            await asyncio.sleep(0.05)

    async def _handle(self, job: AlertJob) -> None:
        delay = self.backoff_s
        while True:
            try:
                claimed = await self.ledger.claim_alert(job.key, job.percent)
                break
            except Exception as exc:
                log.warning("cannot claim budget alert %s (%s); retrying", job.budget_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        if not claimed:
            return  # another replica (or an earlier run) sent it
        delivered, attempts, error = await self._deliver(job)
        metrics.BUDGET_ALERTS.labels(job.budget_id, "delivered" if delivered else "failed").inc()
        if not delivered:
            log.error(
                "budget alert %s %d%% not delivered after %d attempts: %s",
                job.budget_id, job.percent, attempts, error,
            )  # fmt: skip
        with contextlib.suppress(Exception):
            await self.ledger.alert_outcome(
                job.key, job.percent, delivered=delivered, attempts=attempts, error=error
            )

    async def _deliver(self, job: AlertJob) -> tuple[bool, int, str | None]:
        assert self._session is not None
        body = payload(job, datetime.now(UTC))
        headers = {"content-type": "application/json", **job.alerts.headers}
        error: str | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._session.post(job.alerts.webhook, data=body, headers=headers) as r:
                    if 200 <= r.status < 300:
                        return True, attempt, None
                    error = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = type(exc).__name__
            if attempt < self.attempts:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        return False, self.attempts, error
