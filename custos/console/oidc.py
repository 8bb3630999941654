"""Console sign-in through an identity provider: OIDC authorization code flow with PKCE.

For each IdP of ``identity.idp`` with a ``console`` entry (a public client, no secret):

1. ``start``: a random ``state``, ``nonce`` and PKCE verifier are kept here for
   ``PENDING_S``; the browser gets ``state`` in a cookie (``SameSite=Lax``, so it comes back
   with the IdP's redirect) and is sent to the IdP's authorization endpoint with the S256
   challenge.
2. ``finish``: the callback's ``state`` must be one kept here and the one in the browser's
   cookie (else a sign-in CSRF could log a browser into someone else's account); the code is
   exchanged at the token endpoint with the verifier; the ID token is checked with the IdP's
   keys (the same key set as its bearer JWTs): signature, issuer, audience (the client id),
   expiry, nonce. The subject claim names an email the IdP may assert (``email_domains``), and
   the session is the Custos user with that email (``AdminService.idp_session``): roles and
   teams come from the store, never from the IdP's claims.

Endpoints come from the config or the issuer's discovery document (fetched once).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import jwt

from custos.config.schema import IdPSettings
from custos.console.web import PREFIX, Request
from custos.identity.jwt import JWTVerifier, outside_scope

COOKIE: Final = "custos_console_oidc"
CALLBACK: Final = f"{PREFIX}/signin/oidc/callback"
PENDING_S: Final = 600
MAX_PENDING: Final = 10_000
TIMEOUT_S: Final = 10.0


class SignInRefused(Exception):
    """Why an IdP sign-in did not give a session (shown on the sign-in page)."""


@dataclass(frozen=True, slots=True)
class Pending:
    idp: str
    verifier: str
    nonce: str
    redirect_url: str
    next: str
    created: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA-256(verifier))."""
    return _b64(hashlib.sha256(verifier.encode()).digest())


def console_idps(idps: list[IdPSettings]) -> dict[str, IdPSettings]:
    return {idp.name: idp for idp in idps if idp.console is not None}


class OIDCSignIn:
    def __init__(self) -> None:
        self._pending: dict[str, Pending] = {}
        self._discovered: dict[str, dict[str, Any]] = {}

    async def start(self, r: Request, idp: IdPSettings, next_path: str) -> tuple[str, str]:
        """The IdP's authorization URL to send the browser to, and the ``state`` for its
        cookie."""
        assert idp.console is not None
        self._sweep()
        endpoint = (
            idp.console.authorization_endpoint
            or (await self._discovery(idp))["authorization_endpoint"]
        )
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        redirect_url = idp.console.redirect_url or _callback_url(r)
        self._pending[state] = Pending(idp.name, verifier, nonce, redirect_url, next_path,
                                       time.monotonic())  # fmt: skip
        query = urlencode({
            "response_type": "code", "client_id": idp.console.client_id,
            "redirect_uri": redirect_url, "scope": " ".join(idp.console.scopes),
            "state": state, "nonce": nonce, "code_challenge": challenge(verifier),
            "code_challenge_method": "S256",
        })  # fmt: skip
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", state

    async def finish(
        self, r: Request, idps: dict[str, IdPSettings], verifier: JWTVerifier
    ) -> tuple[str, str, str]:
        """(idp name, email, next path) of a completed sign-in, or ``SignInRefused``."""
        state = r.query.get("state", "")
        pending = self._pending.pop(state, None)
        if pending is None or time.monotonic() - pending.created > PENDING_S:
            raise SignInRefused("This sign-in expired or was not started here; try again.")
        if not secrets.compare_digest(r.cookies.get(COOKIE, ""), state):
            raise SignInRefused("This sign-in was started in another browser; try again.")
        if "error" in r.query:
            raise SignInRefused(f"The identity provider refused: {r.query['error'][:200]}")
        idp = idps.get(pending.idp)
        if idp is None or idp.console is None:
            raise SignInRefused("That identity provider is no longer configured.")
        id_token = await self._exchange(idp, pending, r.query.get("code", ""))
        claims = await _checked(id_token, idp, verifier, pending.nonce)
        subject = claims.get(idp.claims.subject)
        if not isinstance(subject, str) or not subject:
            raise SignInRefused(f"The ID token has no {idp.claims.subject!r} claim.")
        refused = outside_scope(idp, subject)
        if refused is not None:
            raise SignInRefused(refused)
        return idp.name, subject, pending.next

    async def _exchange(self, idp: IdPSettings, pending: Pending, code: str) -> str:
        assert idp.console is not None
        endpoint = idp.console.token_endpoint or (await self._discovery(idp))["token_endpoint"]
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": pending.redirect_url, "client_id": idp.console.client_id,
                "code_verifier": pending.verifier}  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(
                    endpoint, data=form, headers={"accept": "application/json"}
                ) as response,
            ):
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SignInRefused(f"The identity provider could not be reached ({exc}).") from None
        if status != 200 or not isinstance(body, dict) or "id_token" not in body:
            error = body.get("error") if isinstance(body, dict) else None
            raise SignInRefused(f"The identity provider refused the code ({error or status}).")
        return str(body["id_token"])

    async def _discovery(self, idp: IdPSettings) -> dict[str, Any]:
        found = self._discovered.get(idp.issuer)
        if found is not None:
            return found
        url = idp.issuer.rstrip("/") + "/.well-known/openid-configuration"
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as response,
            ):
                document = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SignInRefused(f"The identity provider could not be reached ({exc}).") from None
        wanted = ("authorization_endpoint", "token_endpoint")
        if not isinstance(document, dict) or not all(isinstance(document.get(k), str)
                                                     for k in wanted):  # fmt: skip
            raise SignInRefused("The identity provider's discovery document is incomplete.")
        self._discovered[idp.issuer] = document
        return document

    def _sweep(self) -> None:
        now = time.monotonic()
        for state, p in list(self._pending.items()):
            if now - p.created > PENDING_S:
                del self._pending[state]
        while len(self._pending) >= MAX_PENDING:
            del self._pending[next(iter(self._pending))]


async def _checked(
    id_token: str, idp: IdPSettings, verifier: JWTVerifier, nonce: str
) -> dict[str, Any]:
    """The ID token's claims, after checking it with the IdP's key set."""
    assert idp.console is not None
    try:
        kid = jwt.get_unverified_header(id_token).get("kid")
    except jwt.PyJWTError:
        raise SignInRefused("The identity provider returned a malformed ID token.") from None
    key_set = verifier.key_sets.get(idp.issuer)
    key = await key_set.key(kid) if key_set is not None and isinstance(kid, str) else None
    if key is None:
        raise SignInRefused("The ID token's signing key is not in the IdP's key set.")
    try:
        claims = jwt.decode(
            id_token, key.key, algorithms=list(idp.algorithms),
            audience=idp.console.client_id, issuer=idp.issuer, leeway=idp.leeway_s,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )  # fmt: skip
    except jwt.PyJWTError as exc:
        raise SignInRefused(f"The ID token does not hold ({type(exc).__name__}).") from None
    if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
        raise SignInRefused("The ID token's nonce is not this sign-in's.")
    return claims


def _callback_url(r: Request) -> str:
    host = r.headers.get(b"host", b"").decode("latin-1")
    return f"{'https' if r.secure else 'http'}://{host}{CALLBACK}"
