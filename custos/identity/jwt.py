"""Bearer JWTs from OIDC identity providers, verified against each provider's JWKS.

An IdP is configured by issuer, audience and JWKS URL (``identity.idp`` in the config). A token is
routed to its IdP by its (unverified) ``iss`` claim, then verified with PyJWT: signature with the
key named by ``kid``, ``exp``/``nbf``/``iat`` with a small leeway, issuer and audience. Keys are
cached; an unknown ``kid`` refreshes the set once (at most every ``jwks_min_refresh_s`` seconds,
so a flood of forged kids cannot turn into a flood of fetches), and the set is refreshed anyway
when older than ``jwks_max_age_s``.

One fetch at a time per IdP: every request that needs a refresh while one is under way awaits
that one (single flight), so a staleness event or a new ``kid`` costs one fetch however many
requests are waiting. A request waits for it at most ``jwks_timeout_s``, then goes on with the
keys it has. A failed fetch keeps the keys it had and is not retried for a backoff that doubles
with each failure (from ``jwks_min_refresh_s`` or 1 s, up to a minute), so an IdP that is down is
not hammered and its last keys keep working. The fetch runs in a worker thread: it must not
block the event loop.

Claims map to a principal by the IdP's ``claims`` mapping: the subject claim names the user (by
email) or the virtual account, the teams claim lists teams. A user's teams also include the teams
the config file declares with that email as member or manager.

IdPs are kept apart: each asserts only what its entry allows (``email_domains``, ``accounts``,
``teams``; required when several IdPs are configured). A token naming a user outside the IdP's
domains or an account outside its list is refused; teams outside its list are dropped from the
claim. So no IdP can speak for another's users, nor bring the config's teams and grants for an
email it does not own. The principal's id and the token id name the IdP that vouched
(``jwt:<idp>:<subject>``), and the audit record carries them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
import weakref
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

import jwt

from custos.config.schema import IdPSettings
from custos.emails import email_key
from custos.identity.principal import AuthFailure, Principal

log = logging.getLogger("custos.identity.jwt")

#: The longest wait before retrying a JWKS that failed.
_MAX_BACKOFF_S = 60.0
_MAX_JWKS_BYTES = 1024 * 1024

EXPIRED = AuthFailure("expired_token", "The JWT has expired.")


def invalid(reason: str) -> AuthFailure:
    return AuthFailure("invalid_jwt", f"The JWT was refused: {reason}.")


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2


class KeySet:
    """One IdP's signing keys by ``kid``, fetched from its JWKS URL (one fetch at a time)."""

    def __init__(
        self, url: str, *, min_refresh_s: float, max_age_s: float, timeout_s: float = 5.0
    ) -> None:
        self.url = url
        self.min_refresh_s = min_refresh_s
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.keys: dict[str, jwt.PyJWK] = {}
        #: When the keys were last fetched successfully.
        self.fetched_at = float("-inf")
        #: No fetch before this (set after a failure), and how many failed in a row.
        self._retry_at = float("-inf")
        self._failures = 0
        self._flight: asyncio.Task[None] | None = None

    async def key(self, kid: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = now - self.fetched_at > self.max_age_s
        wanted = stale or kid not in self.keys
        if wanted and (self._flight is not None or self._due(stale, now)):
            await self._refresh()
        return self.keys.get(kid)

    def _due(self, stale: bool, now: float) -> bool:
        """Whether a new fetch may start: not while backing off after a failure; for an
        unknown kid, not within ``min_refresh_s`` of the last fetch."""
        if now < self._retry_at:
            return False
        return stale or now - self.fetched_at >= self.min_refresh_s

    async def _refresh(self) -> None:
        """Join the fetch under way, or start one; wait for it at most ``timeout_s``."""
        if self._flight is None:
            self._flight = asyncio.create_task(self._fetch())
            self._flight.add_done_callback(self._landed)
        try:
            # shield: a caller that times out or goes away leaves the fetch to the others.
            await asyncio.wait_for(asyncio.shield(self._flight), self.timeout_s)
        except TimeoutError:
            log.warning("JWKS %s did not answer within %.1f s", self.url, self.timeout_s)

    def _landed(self, flight: asyncio.Task[None]) -> None:
        if self._flight is flight:
            self._flight = None
        if not flight.cancelled() and flight.exception() is not None:
            log.error("JWKS refresh of %s failed", self.url, exc_info=flight.exception())

    async def _fetch(self) -> None:
        try:
            document = await asyncio.to_thread(_fetch_json, self.url, self.timeout_s)
        except (OSError, ValueError) as exc:
            self._failures += 1
            backoff = max(self.min_refresh_s, 1.0) * 2 ** (self._failures - 1)
            self._retry_at = time.monotonic() + min(backoff, _MAX_BACKOFF_S)
            log.warning("cannot fetch JWKS %s (keeping the keys it had): %s", self.url, exc)
            return
        self.keys = _parse_keys(document)
        self.fetched_at = time.monotonic()
        self._failures, self._retry_at = 0, float("-inf")


#: The key sets in use, by what they fetch and how: a config reload that keeps an IdP's JWKS
#: settings keeps its keys and any fetch under way, instead of fetching again. Weak: a key set
#: goes when no verifier uses it any more.
_KEY_SETS: weakref.WeakValueDictionary[tuple[str, float, float, float], KeySet] = (
    weakref.WeakValueDictionary()
)


def _key_set(idp: IdPSettings) -> KeySet:
    settings = (idp.jwks_url, idp.jwks_min_refresh_s, idp.jwks_max_age_s, idp.jwks_timeout_s)
    found = _KEY_SETS.get(settings)
    if found is None:
        url, min_refresh_s, max_age_s, timeout_s = settings
        found = KeySet(url, min_refresh_s=min_refresh_s, max_age_s=max_age_s, timeout_s=timeout_s)
        _KEY_SETS[settings] = found
    return found


def _parse_keys(document: Any) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document.get("keys", []) if isinstance(document, dict) else []:
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, TypeError):
            continue
        if key.key_id:
            keys[key.key_id] = key
    return keys


def _fetch_json(url: str, timeout_s: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read(_MAX_JWKS_BYTES))


class JWTVerifier:
    def __init__(
        self, idps: list[IdPSettings], config_teams: Mapping[str, tuple[str, ...]]
    ) -> None:
        self.idps = {idp.issuer: idp for idp in idps}
        self.key_sets = {idp.issuer: _key_set(idp) for idp in idps}
        #: Teams the config file declares for each (case-folded) email.
        self.config_teams = config_teams

    async def principal(self, token: str) -> Principal | AuthFailure:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return invalid("it is not a well-formed JWT")
        idp = self.idps.get(unverified.get("iss")) if isinstance(unverified, dict) else None
        if idp is None:
            return invalid("its issuer is not configured")
        kid = header.get("kid")
        key = await self.key_sets[idp.issuer].key(kid) if isinstance(kid, str) else None
        if key is None:
            return invalid("its signing key (kid) is not in the issuer's key set")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(idp.algorithms),
                audience=idp.audience,
                issuer=idp.issuer,
                leeway=idp.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            return EXPIRED
        except jwt.InvalidAudienceError:
            return invalid("wrong audience")
        except jwt.InvalidIssuerError:
            return invalid("wrong issuer")
        except jwt.InvalidSignatureError:
            return invalid("bad signature")
        except jwt.PyJWTError as exc:
            return invalid(type(exc).__name__)
        return self._to_principal(idp, claims)

    def _to_principal(self, idp: IdPSettings, claims: dict[str, Any]) -> Principal | AuthFailure:
        subject = claims.get(idp.claims.subject)
        if not isinstance(subject, str) or not subject:
            return invalid(f"claim '{idp.claims.subject}' is missing")
        teams = _string_list(claims.get(idp.claims.teams)) if idp.claims.teams else ()
        if idp.teams is not None:
            teams = tuple(t for t in teams if t in idp.teams)
        roles = _string_list(claims.get(idp.claims.roles)) if idp.claims.roles else ()
        token_id = f"jwt:{idp.name}:{claims.get('jti') or claims.get('sub') or subject}"
        refused = _outside_scope(idp, subject)
        if refused is not None:
            return invalid(refused)
        if idp.principal == "virtualaccount":
            subjects = frozenset([f"virtualaccount:{subject}", *(f"team:{t}" for t in teams)])
            return Principal(
                "virtual_account", f"jwt:{idp.name}:{subject}", subject, subject, teams, (),
                frozenset(), subjects, token_id, "jwt", None, None,
            )  # fmt: skip
        email = email_key(subject)
        teams = tuple(dict.fromkeys((*teams, *self.config_teams.get(email, ()))))
        subjects = frozenset([f"user:{email}", *(f"team:{t}" for t in teams)])
        return Principal(
            "user", f"jwt:{idp.name}:{email}", email, subject, teams, (),
            frozenset(r for r in roles if r in _ROLES), subjects, token_id, "jwt", None, None,
        )  # fmt: skip


_ROLES = frozenset({"admin", "team_manager", "member", "auditor"})


def _outside_scope(idp: IdPSettings, subject: str) -> str | None:
    """Why ``idp`` may not assert ``subject`` (an email or an account name), or ``None``."""
    if idp.principal == "virtualaccount":
        if idp.accounts is None or any(fnmatchcase(subject, a) for a in idp.accounts):
            return None
        return f"identity provider {idp.name!r} may not assert virtual account {subject!r}"
    if idp.email_domains is None:
        return None
    domain = email_key(subject).rpartition("@")[2] if "@" in subject else ""
    if domain in idp.email_domains:
        return None
    return f"identity provider {idp.name!r} may not assert users of {domain or 'no email domain'}"


#: The public name: the console's IdP sign-in applies the same scope to its ID tokens.
outside_scope = _outside_scope


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()
