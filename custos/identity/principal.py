"""Who is calling: the principal a token resolves to, or why it resolves to nobody.

A ``Principal`` is what the authenticate stage adds to the request context and every later stage
reads: the user or virtual account, its teams, its roles, and the model lists that narrow what it
may call. An ``AuthFailure`` is the 401 the authenticate stage answers with instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from custos.errors import GatewayError

PrincipalKind = Literal["user", "virtual_account"]
FailureCode = Literal[
    "malformed_token",
    "unknown_token",
    "expired_token",
    "revoked_token",
    "invalid_jwt",
    "ambiguous_credentials",
]


@dataclass(frozen=True, slots=True)
class Principal:
    """A resolved caller. Immutable: a directory reload builds new ones.

    ``subjects`` are the names access rules match (DESIGN §2): ``user:<email, case-folded>``,
    ``virtualaccount:<name>`` and ``team:<name>`` for each team.

    Two lists may narrow the models the caller may use, on top of the access rules:
    ``account_models`` (a virtual account's allowed models; an empty list allows nothing) and
    ``token_models`` (the token's own narrowing). ``None`` means "no narrowing here".
    """

    kind: PrincipalKind
    id: str
    #: The user's email or the virtual account's name.
    name: str
    display_name: str
    teams: tuple[str, ...]
    #: Teams this user manages (membership role ``manager``); empty for virtual accounts.
    managed_teams: tuple[str, ...]
    #: Admin roles: ``admin``, ``team_manager``, ``member``, ``auditor``; empty for accounts.
    roles: frozenset[str]
    subjects: frozenset[str]
    token_id: str
    token_kind: str
    account_models: tuple[str, ...] | None
    token_models: tuple[str, ...] | None

    def may_use_model(self, model: str) -> bool:
        """Whether the narrowing lists allow ``model`` (globs as in access rules: ``azure-eu/*``).

        This is only the narrowing; the access rules of the config are checked separately.
        """
        for patterns in (self.account_models, self.token_models):
            if patterns is not None and not any(fnmatchcase(model, p) for p in patterns):
                return False
        return True


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a bearer token was refused; ``code`` is the stable machine-readable reason."""

    code: FailureCode
    message: str

    def to_error(self) -> GatewayError:
        return GatewayError(401, self.code, self.message)


MALFORMED = AuthFailure(
    "malformed_token",
    "The API key is malformed (wrong length, characters or checksum): check it was copied whole.",
)
UNKNOWN = AuthFailure("unknown_token", "The API key is not valid.")
#: Two different keys in one request: which one a proxy or library kept must not decide who
#: the caller is.
AMBIGUOUS = AuthFailure(
    "ambiguous_credentials",
    "The request carries two different API keys (in Authorization and x-api-key, or one of "
    "them twice): send one.",
)
EXPIRED = AuthFailure("expired_token", "The API key has expired.")
REVOKED = AuthFailure("revoked_token", "The API key has been revoked.")
ROTATED = AuthFailure(
    "revoked_token", "The API key was rotated and its grace period is over: use its replacement."
)
OWNER_DISABLED = AuthFailure("revoked_token", "The API key's owner is disabled.")
OWNER_DELETED = AuthFailure("revoked_token", "The API key's owner no longer exists.")
