"""Bearer JWTs from OIDC identity providers, verified against each provider's JWKS.

An IdP is configured by issuer, audience and JWKS URL (``identity.idp`` in the config). A token is
routed to its IdP by its (unverified) ``iss`` claim, then verified with PyJWT: signature with the
key named by ``kid``, ``exp``/``nbf``/``iat`` with a small leeway, issuer and audience. Keys are
cached; an unknown ``kid`` refreshes the set once (at most every ``jwks_min_refresh_s`` seconds,
so a flood of forged kids cannot turn into a flood of fetches), and the set is refreshed anyway
when older than ``jwks_max_age_s``. The JWKS fetch runs in a worker thread: it is rare, and
must not block the event loop.

Claims map to a principal by the IdP's ``claims`` mapping: the subject claim names the user (by
email) or the virtual account, the teams claim lists teams. A user's teams also include the teams
the config file declares with that email as member or manager.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

import jwt

from custos.config.schema import IdPSettings
from custos.identity.principal import AuthFailure, Principal
from custos.state.store import email_key

log = logging.getLogger("custos.identity.jwt")

_FETCH_TIMEOUT_S = 5.0
_MAX_JWKS_BYTES = 1024 * 1024

EXPIRED = AuthFailure("expired_token", "The JWT has expired.")


def invalid(reason: str) -> AuthFailure:
    return AuthFailure("invalid_jwt", f"The JWT was refused: {reason}.")


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2


class KeySet:
    """One IdP's signing keys by ``kid``, fetched from its JWKS URL."""

    def __init__(self, url: str, *, min_refresh_s: float, max_age_s: float) -> None:
        self.url = url
        self.min_refresh_s = min_refresh_s
        self.max_age_s = max_age_s
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        stale = time.monotonic() - self.fetched_at > self.max_age_s
        if kid not in self.keys or stale:
            await self.refresh(force=stale)
        return self.keys.get(kid)

    async def refresh(self, *, force: bool = False) -> None:
        async with self._lock:
            if not force and time.monotonic() - self.fetched_at < self.min_refresh_s:
                return
            try:
                document = await asyncio.to_thread(_fetch_json, self.url)
            except (OSError, ValueError) as exc:
                log.warning("cannot fetch JWKS %s: %s", self.url, exc)
                self.fetched_at = time.monotonic()  # don't retry on every request
                return
            keys: dict[str, jwt.PyJWK] = {}
            for entry in document.get("keys", []) if isinstance(document, dict) else []:
                try:
                    key = jwt.PyJWK(entry)
                except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, TypeError):
                    continue
                if key.key_id:
                    keys[key.key_id] = key
            self.keys = keys
            self.fetched_at = time.monotonic()


def _fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT_S) as response:
        return json.loads(response.read(_MAX_JWKS_BYTES))


class JWTVerifier:
    def __init__(
        self, idps: list[IdPSettings], config_teams: Mapping[str, tuple[str, ...]]
    ) -> None:
        self.idps = {idp.issuer: idp for idp in idps}
        self.key_sets = {
            idp.issuer: KeySet(
                idp.jwks_url, min_refresh_s=idp.jwks_min_refresh_s, max_age_s=idp.jwks_max_age_s
            )
            for idp in idps
        }
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
        roles = _string_list(claims.get(idp.claims.roles)) if idp.claims.roles else ()
        token_id = f"jwt:{idp.name}:{claims.get('jti') or claims.get('sub') or subject}"
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


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()
