"""The records the store keeps for identity: users, teams, virtual accounts, tokens, admin events.

Records are immutable values read from the store; to change one, call a ``Store`` method. All
times are timezone-aware UTC ``datetime`` values. ``to_dict`` gives the JSON-ready form used for an
admin event's before/after; it never contains a secret (a token's keyed hash is left out too,
because the event log is exported and has no use for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

Role = Literal["admin", "team_manager", "member", "auditor"]
ROLES: frozenset[str] = frozenset({"admin", "team_manager", "member", "auditor"})

TeamSource = Literal["config", "api"]
TEAM_SOURCES: frozenset[str] = frozenset({"config", "api"})

MemberRole = Literal["member", "manager"]
MEMBER_ROLES: frozenset[str] = frozenset({"member", "manager"})

TokenKind = Literal["pat", "vat"]
TOKEN_KINDS: frozenset[str] = frozenset({"pat", "vat"})


def utcnow() -> datetime:
    """Now, in UTC, at the microsecond precision both databases keep."""
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: written into every admin event.

    ``id`` names the actor durably, e.g. ``user:usr_…``, ``token:tok_…`` or ``system:init``;
    ``role`` is the role the change was authorised under (``admin``, ``team_manager``, …,
    or ``system`` for changes the gateway makes itself, such as syncing config teams).
    """

    id: str
    role: str

    @classmethod
    def system(cls, what: str) -> Actor:
        return cls(id=f"system:{what}", role="system")


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    display_name: str
    roles: tuple[str, ...]
    disabled: bool
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "display_name": self.display_name,
            "roles": list(self.roles),
            "disabled": self.disabled,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Team:
    id: str
    name: str
    source: str
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Membership:
    team_id: str
    user_id: str
    role: str
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "team_id": self.team_id,
            "user_id": self.user_id,
            "role": self.role,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class VirtualAccount:
    """A non-human identity for a production service, owned by one team.

    ``allowed_models`` lists model names or globs (``azure-eu/*``); an empty list allows nothing.
    """

    id: str
    name: str
    team_id: str
    allowed_models: tuple[str, ...]
    disabled: bool
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "team_id": self.team_id,
            "allowed_models": list(self.allowed_models),
            "disabled": self.disabled,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What is stored about a token: never the secret, only its keyed hash.

    ``principal_id`` is a user id for a PAT and a virtual account id for a VAT.
    ``allowed_models`` is ``None`` (no narrowing) or a non-empty list that narrows the principal's
    models further. ``grace_until`` is set when the token was rotated: it keeps working until then.
    """

    id: str
    kind: str
    principal_id: str
    name: str
    token_hash: str = field(repr=False)
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_from: str | None
    grace_until: datetime | None
    last_used_at: datetime | None
    allowed_models: tuple[str, ...] | None

    def state(
        self, now: datetime
    ) -> Literal["active", "rotating", "revoked", "rotated", "expired"]:
        """The token's state at ``now`` (revocation wins over rotation, rotation over expiry);
        ``rotating``: replaced, and working until ``grace_until`` (or its expiry, if sooner).

        Revocation takes effect whatever the clocks say: ``revoked_at`` is informative only, so a
        replica whose clock runs behind the one that revoked still refuses the token.
        """
        if self.revoked_at is not None:
            return "revoked"
        if self.grace_until is not None and self.grace_until <= now:
            return "rotated"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active" if self.grace_until is None else "rotating"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "principal_id": self.principal_id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "rotated_from": self.rotated_from,
            "grace_until": _iso(self.grace_until),
            "last_used_at": _iso(self.last_used_at),
            "allowed_models": None if self.allowed_models is None else list(self.allowed_models),
        }


@dataclass(frozen=True, slots=True)
class AdminEvent:
    """One recorded admin change.

    ``before`` is ``None`` for a creation, ``after`` for a deletion.
    """

    id: int
    at: datetime
    actor: str
    actor_role: str
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuthToken(NamedTuple):
    """A token as the directory needs it: what decides a lookup, times as epoch seconds.

    Lighter than ``TokenRecord`` because a directory reload builds thousands of them.
    """

    id: str
    kind: str
    principal_id: str
    token_hash: str
    revoked: bool
    expires_at: float | None
    grace_until: float | None
    allowed_models: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class AuthSnapshot:
    """What the token directory needs, read in one consistent transaction.

    A full snapshot (``complete``) holds every principal and every token alive or recently dead.
    A partial one holds some tokens, their principals and those principals' memberships.
    """

    users: list[User]
    teams: list[Team]
    memberships: list[Membership]
    accounts: list[VirtualAccount]
    tokens: list[AuthToken]
    complete: bool = True


@dataclass(frozen=True, slots=True)
class Change:
    """A committed change that other replicas' caches must pick up.

    ``kind`` is ``token``, ``user``, ``team`` or ``account``; ``*`` means "anything may have
    changed" (sent after a subscriber reconnects, when messages may have been missed).
    """

    kind: str
    id: str

    @classmethod
    def everything(cls) -> Change:
        return cls(kind="*", id="*")
