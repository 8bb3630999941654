"""What ``AdminService`` returns: store records with the names a person reads next to the ids.

Plain immutable values; the HTTP layer turns them into JSON (``custos.admin.schemas``). None of
them holds a token secret except ``IssuedView``, which exists only in the reply to a create or
rotate call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from custos.state.models import AdminEvent, Membership, Team, TokenRecord, User, VirtualAccount


@dataclass(frozen=True, slots=True)
class MemberView:
    membership: Membership
    team_name: str
    email: str


@dataclass(frozen=True, slots=True)
class UserView:
    user: User
    memberships: tuple[MemberView, ...]


@dataclass(frozen=True, slots=True)
class TeamView:
    team: Team
    members: tuple[MemberView, ...]


@dataclass(frozen=True, slots=True)
class AccountView:
    account: VirtualAccount
    team_name: str


@dataclass(frozen=True, slots=True)
class TokenView:
    """A token without its secret; ``owner`` is the user's email or the account's name."""

    record: TokenRecord
    owner: str
    state: str


@dataclass(frozen=True, slots=True)
class IssuedView:
    """A token just issued (create or rotate): the only value that carries a secret."""

    secret: str = field(repr=False)
    token: TokenView
    #: For a rotation: the old token, working until its ``grace_until``.
    replaced: TokenView | None = None


@dataclass(frozen=True, slots=True)
class EventPage:
    """A page of admin events, oldest first; ``next_after`` continues it (``None`` at the end)."""

    events: tuple[AdminEvent, ...]
    next_after: int | None
