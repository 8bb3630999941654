"""Splunk HTTP Event Collector: batches of events ``POST``ed to ``/services/collector/event``.

A batch is one request whose body is the events' JSON objects one after another (the form the
collector takes for batches), sent with ``Authorization: Splunk <token>``; it counts as received
when the collector answers 200 with ``{"code": 0}``. Each event::

    {"time": <time_start, epoch seconds with milliseconds>, "host": <gateway instance>,
     "source": …, "sourcetype": …, "index": … (when set),
     "event": <the record's fields | the OCSF event>,
     "fields": {"seq": "…", "event_id": "…", "event_type": "…", "leaf_hash": "…"}}

``fields`` are indexed fields (strings, as the collector wants them). In the ``custos`` format
``event`` is the record itself: re-encoded canonically (sorted keys, no spaces) it gives back
the stored bytes, whose leaf hash is in ``fields``.
"""

from __future__ import annotations

import ssl
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from custos.audit.siem.ocsf import to_ocsf
from custos.config.siem import SplunkHECSettings


class HECRefused(Exception):
    """The collector answered, but not with success (the message holds no token)."""


def hec_event(settings: SplunkHECSettings, seq: int, fields: dict[str, Any], at_ms: int,
              leaf_hash: str) -> dict[str, Any]:  # fmt: skip
    ocsf = settings.format == "ocsf"
    event: dict[str, Any] = {
        # Epoch seconds with three decimals, written exactly (no binary float rounding).
        "time": Decimal(at_ms).scaleb(-3),
        "host": fields.get("gateway.instance") or "custos",
        "source": settings.source,
        "sourcetype": settings.sourcetype or ("ocsf:api_activity" if ocsf else "custos:audit"),
        "event": to_ocsf(seq, fields, leaf_hash) if ocsf else fields,
        "fields": {
            "seq": str(seq),
            "event_id": fields["event_id"],
            "event_type": fields["event_type"],
            "leaf_hash": leaf_hash,
        },
    }
    if settings.index is not None:
        event["index"] = settings.index
    return event


def _decimal(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError


def batch_body(events: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e, default=_decimal) for e in events)


class HECSender:
    """One HTTP session to the collector, reused across batches."""

    def __init__(self, settings: SplunkHECSettings) -> None:
        self.settings = settings
        self.url = f"{settings.url}/services/collector/event"
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl_context: ssl.SSLContext | bool = True
            if self.settings.ca_file is not None:
                ssl_context = ssl.create_default_context(cafile=self.settings.ca_file)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_context, limit=1),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
            )
        return self._session

    async def send(self, body: bytes) -> None:
        """POST one batch; returns once the collector acknowledged it."""
        headers = {
            "Authorization": f"Splunk {self.settings.token}",
            "Content-Type": "application/json",
        }
        async with self._open().post(self.url, data=body, headers=headers) as response:
            text = await response.text(errors="replace")
            if response.status != 200:
                raise HECRefused(f"the collector answered {response.status}: {text[:200]}")
            try:
                code = orjson.loads(text).get("code")
            except (orjson.JSONDecodeError, AttributeError):
                code = None
            if code != 0:
                raise HECRefused(f"the collector answered 200 without success: {text[:200]}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
