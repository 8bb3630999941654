"""Google service-account credentials: a signed JWT exchanged for an OAuth access token.

A Vertex AI account's key file (the JSON Google issues for a service account) holds an RSA
private key and the ``token_uri`` to exchange assertions at. ``AccessTokens`` signs a JWT
(RS256, PyJWT over ``cryptography``) and POSTs it there as an ``urn:ietf:params:oauth:grant-type:
jwt-bearer`` grant through the gateway's own HTTP transport, so the exchange is asynchronous,
shares the connection pool and never blocks the event loop. (``google-auth`` does the same over the
synchronous ``requests`` library, which would need a thread and a second HTTP stack per refresh.)

The token is cached until shortly before it expires. Within ``REFRESH_AHEAD_S`` of expiry (half
its lifetime for a short-lived token) a request still uses the current token and starts one
refresh in the background; only a request that finds no usable token waits, and every such
request waits for the same single exchange.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import jwt
import orjson

from custos.config.service_account import ServiceAccountKey
from custos.providers.base import UpstreamCredentialsFailed
from custos.providers.upstream import UpstreamRequest

if TYPE_CHECKING:
    from custos.providers.transport import Transport

#: What the token may be used for: Vertex AI (every Google Cloud API, as Google documents it).
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: Lifetime asked of an assertion (Google accepts at most an hour).
ASSERTION_LIFETIME_S = 3600
#: Refresh in the background when the token has less than this left.
REFRESH_AHEAD_S = 300
#: A token with less than this left (a tenth of its lifetime for a short-lived token) is not
#: used at all: a request must not outlive it.
MIN_VALIDITY_S = 30
#: Time allowed for one exchange at the token endpoint.
EXCHANGE_TIMEOUT_S = 10.0
#: A token endpoint's answer is a small JSON object; a larger one is not read.
_MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
#: After a failed exchange, requests fail at once for this long instead of each trying again.
FAILURE_BACKOFF_S = 2.0
_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class CredentialsFailed(UpstreamCredentialsFailed):
    """No access token could be obtained (the message never contains key material)."""


def assertion(key: ServiceAccountKey, now: float) -> str:
    """A JWT signed with the service account's key asking ``token_uri`` for a token with
    ``SCOPE``."""
    issued = int(now)
    claims = {
        "iss": key.client_email,
        "scope": SCOPE,
        "aud": key.token_uri,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_S,
    }
    headers = {"kid": key.private_key_id} if key.private_key_id else None
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers=headers)


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    stale_at: float  # time.monotonic(): refresh in the background from then on
    usable_until: float  # time.monotonic(): wait for a new token from then on

    @classmethod
    def issued(cls, value: str, obtained: float, lifetime: float) -> AccessToken:
        return cls(
            value,
            stale_at=obtained + lifetime - min(REFRESH_AHEAD_S, lifetime / 2),
            usable_until=obtained + lifetime - min(MIN_VALIDITY_S, lifetime / 10),
        )


class AccessTokens:
    """One service account's access token, fetched once and shared by every request."""

    def __init__(self, account: str, key: ServiceAccountKey) -> None:
        self.account = account
        self.key = key
        self._token: AccessToken | None = None
        self._refreshing: asyncio.Task[AccessToken] | None = None
        self._failure: CredentialsFailed | None = None
        self._failed_until = 0.0
        #: Exchanges made (for tests and metrics: concurrent requests must share one).
        self.exchanges = 0

    def latest(self) -> str | None:
        """The last token obtained (``get`` has made sure it is the one to use)."""
        return self._token.value if self._token is not None else None

    async def get(self, transport: Transport) -> str:
        """A valid token: the cached one (refreshed ahead in the background), else a fresh one."""
        token = self._token
        now = time.monotonic()
        if token is not None and now < token.usable_until:
            if now >= token.stale_at:
                self._refresh(transport)  # off the hot path: this request goes on with the old
            return token.value
        if self._failure is not None and now < self._failed_until:
            raise CredentialsFailed(str(self._failure))
        # shield: a request that goes away must not cancel the exchange the others wait for.
        return (await asyncio.shield(self._refresh(transport))).value

    def _refresh(self, transport: Transport) -> asyncio.Task[AccessToken]:
        """The exchange under way, or a new one: never two at a time."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._exchange(transport))
            self._refreshing.add_done_callback(_retrieve_exception)
        return self._refreshing

    async def _exchange(self, transport: Transport) -> AccessToken:
        try:
            token = await self._request_token(transport)
        except CredentialsFailed as exc:
            self._failure, self._failed_until = exc, time.monotonic() + FAILURE_BACKOFF_S
            raise
        self._token, self._failure = token, None
        return token

    async def _request_token(self, transport: Transport) -> AccessToken:
        self.exchanges += 1
        started = time.monotonic()
        form = {"grant_type": _GRANT_TYPE, "assertion": assertion(self.key, time.time())}
        request = UpstreamRequest(
            "POST",
            self.key.token_uri,
            {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"},
            urlencode(form).encode(),
        )
        try:
            response = await transport.open(
                request,
                connect_s=EXCHANGE_TIMEOUT_S,
                read_s=EXCHANGE_TIMEOUT_S,
                total_s=EXCHANGE_TIMEOUT_S,
            )
            body = await response.read(_MAX_TOKEN_RESPONSE_BYTES)
        except Exception as exc:  # the transport's timeouts and connection failures
            raise CredentialsFailed(
                f"provider {self.account}: the token endpoint could not be reached "
                f"({type(exc).__name__})"
            ) from None
        if response.status != 200:
            raise CredentialsFailed(
                f"provider {self.account}: the token endpoint refused the service account "
                f"({response.status})"
            )
        return _parse_token(self.account, body, started)


def _parse_token(account: str, body: bytes, started: float) -> AccessToken:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    value = data.get("access_token") if isinstance(data, dict) else None
    lifetime = data.get("expires_in", 3600) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value or not isinstance(lifetime, int | float):
        raise CredentialsFailed(f"provider {account}: the token endpoint sent no access token")
    # Counted from when the exchange started: the token cannot be older than that.
    return AccessToken.issued(value, started, float(lifetime))


def _retrieve_exception(task: asyncio.Task[AccessToken]) -> None:
    # A background refresh that fails is retried by the next request; its error must not be
    # logged as "never retrieved".
    if not task.cancelled():
        task.exception()
