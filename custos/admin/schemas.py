"""The admin API's JSON: request models (strict, unknown fields refused) and response models.

Requests are validated from the raw JSON body with ``extra="forbid"`` and strict types, so a
misspelt field or a string where a number belongs is a 400 naming that field, never a guess.
Query strings are validated by the ``*Query`` models (lax: query values are always text).
The response models are built from ``custos.admin.views`` with ``from_view``; the OpenAPI
document (``custos.admin.openapi``) is generated from all of them.

No response model except ``TokenCreated`` has a field for a token secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from custos.admin.views import (
    AccountView,
    EventPage,
    IssuedView,
    MemberView,
    TeamView,
    TokenView,
    UserView,
)
from custos.state.models import AdminEvent, Team, User

Role = Literal["admin", "team_manager", "member", "auditor"]
MemberRole = Literal["member", "manager"]
Name = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Letters, digits, '.', '_' and '-'; at most 64 characters.",
    ),
]
Email = Annotated[str, Field(min_length=3, max_length=200, pattern=r"^[^@\s]+@[^@\s]+$")]
ModelName = Annotated[str, Field(min_length=1, max_length=200)]
ModelList = Annotated[list[ModelName], Field(max_length=100)]
NarrowList = Annotated[list[ModelName], Field(min_length=1, max_length=100)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


#: The largest cursor (``?after=``) a list accepts: ids are 64-bit integers in the store, and a
#: larger number would fail there instead of being refused here.
MAX_CURSOR = 2**63 - 1


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests ----------------------------------------------------------------------------------


class UserCreate(_Request):
    email: Email
    display_name: str = Field("", max_length=200)
    roles: list[Role] = Field(default_factory=lambda: ["member"], max_length=4)


class UserUpdate(_Request):
    """Fields to change; those left out stay as they are."""

    email: Email | None = None
    display_name: str | None = Field(None, max_length=200)
    roles: list[Role] | None = Field(None, max_length=4)
    disabled: bool | None = None


class TeamCreate(_Request):
    name: Name


class MemberAdd(_Request):
    user: str = Field(min_length=1, max_length=200, description="User id (usr_…) or email.")
    role: MemberRole = "member"


class MemberUpdate(_Request):
    role: MemberRole


class AccountCreate(_Request):
    name: Name
    team: str = Field(min_length=1, max_length=200, description="Owner team: id or name.")
    allowed_models: ModelList = Field(
        default_factory=list,
        description="Model names or '*' globs the account may call; empty allows nothing.",
    )


class AccountUpdate(_Request):
    allowed_models: ModelList | None = None
    disabled: bool | None = None
    team: str | None = Field(None, min_length=1, max_length=200, description="New owner team.")


class TokenCreate(_Request):
    """A PAT for yourself (no ``user``/``account``), for another user (admins), or a VAT."""

    name: str = Field(min_length=1, max_length=200)
    user: str | None = Field(
        None, min_length=1, max_length=200, description="User id or email (admins only)."
    )
    account: str | None = Field(
        None, min_length=1, max_length=200, description="Virtual account id or name: a VAT."
    )
    expires_at: AwareDatetime | None = None
    expires_in_days: int | None = Field(None, ge=1, le=3650)
    models: NarrowList | None = Field(
        None, description="Narrow the token to these models (names or '*' globs)."
    )


class TokenRotate(_Request):
    grace_seconds: int = Field(
        3600, ge=0, le=30 * 86400, description="How long the old token keeps working."
    )
    expires_at: AwareDatetime | None = None
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class AccountsQuery(_Query):
    team: str | None = Field(None, description="Only this team's accounts (id or name).")


class TokensQuery(_Query):
    user: str | None = Field(None, description="Only this user's tokens (id or email).")
    account: str | None = Field(None, description="Only this virtual account's tokens.")


class EventsQuery(_Query):
    after: int = Field(
        0, ge=0, le=MAX_CURSOR, description="Return events with a larger id (a cursor)."
    )
    limit: int = Field(100, ge=1, le=1000)
    target_type: str | None = Field(
        None, description="user, team, team_member, virtual_account, token or mcp_credential."
    )
    target_id: str | None = None


# -- responses ---------------------------------------------------------------------------------


class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(_Response):
    error: ErrorDetail


class MembershipOut(_Response):
    team_id: str
    team: str
    user_id: str
    email: str
    role: MemberRole
    created_at: datetime

    @classmethod
    def from_view(cls, view: MemberView) -> MembershipOut:
        m = view.membership
        return cls(
            team_id=m.team_id,
            team=view.team_name,
            user_id=m.user_id,
            email=view.email,
            role=m.role,  # type: ignore[arg-type]
            created_at=m.created_at,
        )


class UserOut(_Response):
    id: str
    email: str
    display_name: str
    roles: list[Role]
    disabled: bool
    created_at: datetime

    @classmethod
    def from_record(cls, user: User) -> UserOut:
        return cls(**user.to_dict())


class UserDetail(UserOut):
    memberships: list[MembershipOut]

    @classmethod
    def from_view(cls, view: UserView) -> UserDetail:
        return cls(
            **view.user.to_dict(),
            memberships=[MembershipOut.from_view(m) for m in view.memberships],
        )


class UserList(_Response):
    data: list[UserOut]


class MeOut(UserDetail):
    """The caller: their user record, memberships, and the token they called with."""

    token_id: str
    managed_teams: list[str]


class TeamOut(_Response):
    id: str
    name: str
    source: Literal["config", "api"]
    created_at: datetime

    @classmethod
    def from_record(cls, team: Team) -> TeamOut:
        return cls(**team.to_dict())


class TeamDetail(TeamOut):
    members: list[MembershipOut]

    @classmethod
    def from_view(cls, view: TeamView) -> TeamDetail:
        return cls(
            **view.team.to_dict(), members=[MembershipOut.from_view(m) for m in view.members]
        )


class TeamList(_Response):
    data: list[TeamOut]


class MemberList(_Response):
    data: list[MembershipOut]


class AccountOut(_Response):
    id: str
    name: str
    team_id: str
    team: str
    allowed_models: list[str]
    disabled: bool
    created_at: datetime

    @classmethod
    def from_view(cls, view: AccountView) -> AccountOut:
        return cls(**view.account.to_dict(), team=view.team_name)


class AccountList(_Response):
    data: list[AccountOut]


class TokenOut(_Response):
    """A token as listed: never its secret, only the prefix that tells it apart."""

    id: str
    kind: Literal["pat", "vat"]
    name: str
    prefix: str
    principal_id: str
    owner: str = Field(description="The user's email or the virtual account's name.")
    state: Literal["active", "rotating", "revoked", "rotated", "expired"] = Field(
        description="rotating: replaced by a rotation, working until grace_until."
    )
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_from: str | None
    grace_until: datetime | None
    last_used_at: datetime | None
    allowed_models: list[str] | None

    @classmethod
    def from_view(cls, view: TokenView) -> TokenOut:
        return cls(**view.record.to_dict(), owner=view.owner, state=view.state)  # type: ignore[arg-type]


class TokenList(_Response):
    data: list[TokenOut]


class TokenCreated(_Response):
    """The reply to a create or rotate: the only place a token secret ever appears."""

    token: str = Field(description="The secret. Shown once: store it now.")
    warning: str
    record: TokenOut
    replaced: TokenOut | None = Field(
        None, description="For a rotation: the old token, working until its grace_until."
    )

    @classmethod
    def from_view(cls, view: IssuedView) -> TokenCreated:
        return cls(
            token=view.secret,
            warning="This is the only time the token is shown; it cannot be recovered.",
            record=TokenOut.from_view(view.token),
            replaced=None if view.replaced is None else TokenOut.from_view(view.replaced),
        )


class EventOut(_Response):
    id: int
    at: datetime
    actor: str
    actor_role: str
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    @classmethod
    def from_record(cls, event: AdminEvent) -> EventOut:
        return cls(
            id=event.id,
            at=event.at,
            actor=event.actor,
            actor_role=event.actor_role,
            action=event.action,
            target_type=event.target_type,
            target_id=event.target_id,
            before=event.before,
            after=event.after,
        )


class EventList(_Response):
    data: list[EventOut]
    next_after: int | None = Field(
        description="Pass as ?after= for the next page; null at the end."
    )

    @classmethod
    def from_page(cls, page: EventPage) -> EventList:
        return cls(data=[EventOut.from_record(e) for e in page.events], next_after=page.next_after)
