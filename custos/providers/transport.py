"""Moving bytes to providers: one pooled aiohttp client for the whole process.

aiohttp's client was chosen over httpx by measurement (bench/README.md): under load on one core its
pooled connections cost far less per request. Everything aiohttp-specific stays in this module; the
pipeline sees ``UpstreamResponse`` and the three exceptions below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import lru_cache

import aiohttp

from custos.providers.upstream import UpstreamRequest


class UpstreamTimeout(Exception):
    """The provider did not connect or answer within its configured time."""


class UpstreamUnreachable(Exception):
    """The connection to the provider failed or broke."""


class UpstreamTooLarge(Exception):
    """The provider's body is larger than the gateway reads (``max_response_bytes``)."""


class UpstreamRequestFailed(Exception):
    """The request could not be built or sent at all (an address or a header value the HTTP
    client refuses): the provider's failure as far as the caller is concerned, never the
    gateway's."""


class UpstreamResponse:
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = response.headers

    async def read(self, limit: int) -> bytes:
        """The whole body; ``UpstreamTooLarge`` past ``limit`` bytes (as decompressed)."""
        body, complete = await self._read(limit)
        if not complete:
            raise UpstreamTooLarge(f"the body is larger than {limit} bytes")
        return body

    async def read_prefix(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (an error's, read for its message); the rest is
        left unread and the connection closed."""
        return (await self._read(limit))[0]

    async def _read(self, limit: int) -> tuple[bytes, bool]:
        """Up to ``limit`` bytes, and whether that was the whole body. A longer body is cut off
        by closing the connection, so the rest never reaches memory."""
        response = self._response
        chunks: list[bytes] = []
        size = 0
        try:
            declared = response.content_length
            if declared is None or declared <= limit:
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    chunks.append(chunk)
                    if size > limit:
                        break
                else:
                    response.release()
                    return b"".join(chunks), True
        except TimeoutError:
            response.close()
            raise UpstreamTimeout("reading the response timed out") from None
        except aiohttp.ClientError as exc:
            response.close()
            raise UpstreamUnreachable(type(exc).__name__) from None
        response.close()
        return b"".join(chunks)[:limit], False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError:
            raise UpstreamTimeout("the stream stalled") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(type(exc).__name__) from None

    def close(self) -> None:
        """Abort the upstream request: the connection is closed, not returned to the pool."""
        self._response.close()

    def release(self) -> None:
        self._response.release()


@lru_cache(maxsize=256)
def _timeout(total_s: float | None, connect_s: float, read_s: float) -> aiohttp.ClientTimeout:
    """One immutable ``ClientTimeout`` per distinct setting, not one per request."""
    return aiohttp.ClientTimeout(total=total_s, sock_connect=connect_s, sock_read=read_s)


class Transport:
    def __init__(self, *, max_connections: int = 1000) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            ttl_dns_cache=300,
            keepalive_timeout=30,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            # Provider bodies are forwarded as bytes; aiohttp's cookie jar would only leak
            # state between tenants.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(
        self, request: UpstreamRequest, *, connect_s: float, read_s: float, total_s: float | None
    ) -> UpstreamResponse:
        """Send the request and return once the status and headers have arrived."""
        if self._session is None:
            raise RuntimeError("transport not started")
        timeout = _timeout(total_s, connect_s, read_s)
        try:
            response = await self._session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=timeout,
                allow_redirects=False,
            )
        except TimeoutError:
            raise UpstreamTimeout("no response in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(type(exc).__name__) from None
        except (ValueError, TypeError) as exc:  # UnicodeError (a host IDNA refuses) included
            raise UpstreamRequestFailed(type(exc).__name__) from None
        return UpstreamResponse(response)
