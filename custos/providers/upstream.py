"""What the gateway sends a provider: one HTTP request, built by an adapter, sent by the
transport.

Its own module so that the adapters' interface (``base``) and the transport that sends the request
(``transport``, which brings in aiohttp) both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
