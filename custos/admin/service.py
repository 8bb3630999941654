"""``AdminService``: every admin operation, with its role check, and no HTTP.

Contracts:

- Every method takes the calling ``Principal`` first and checks it (``custos.admin.rights``)
  before it writes anything; a denial raises ``Forbidden`` naming the role that would allow it.
  Mutating methods first refuse read-only principals (``require_writer``), whatever the target,
  so an auditor gets 403 from every change, even one naming a missing object.
- Objects are named by id or by their natural name: a user by id (``usr_…``) or email, a team
  by id (``team_…``) or name, a virtual account by id (``va_…``) or name, a token by id only.
  An unknown name raises ``NotFound``, and so does an object the caller may not see, with the
  same message: a caller learns nothing about objects outside their rights, not even that they
  exist. An object the caller sees but may not change raises ``Forbidden``.
- Whatever an operation grants (an account's models, a new or rotated token) stays within the
  narrowing of the token the call is made with, whatever the caller's role: a narrowed token
  never mints broader access than its own.
- Each change is exactly one store write, which commits the change and its admin event in one
  transaction. Everything the write depends on (names resolved, rights, input checks) happens
  before it, so a refused or failed call leaves nothing behind, not even an event.
- Token secrets exist only in the ``IssuedView`` returned by ``create_token``/``rotate_token``.

Reads are filtered the same way: admins and auditors see everything; a team manager sees their
teams' accounts and those accounts' tokens; everyone sees themselves, their own tokens and the
teams they belong to.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from custos.admin import rights
from custos.admin.budgets import (
    BudgetHistoryOut,
    BudgetList,
    BudgetSource,
    budget_history,
    list_budgets,
)
from custos.admin.errors import BadInput, Forbidden
from custos.admin.narrowing import ModelNames, check_patterns, uncovered
from custos.admin.views import (
    AccountView,
    EventPage,
    IssuedView,
    MemberView,
    TeamView,
    TokenView,
    UserView,
)
from custos.emails import email_key
from custos.identity.principal import (
    EXPIRED,
    OWNER_DELETED,
    OWNER_DISABLED,
    REVOKED,
    ROTATED,
    AuthFailure,
    Principal,
)
from custos.identity.tokens import TokenService
from custos.state.errors import Conflict, NotFound
from custos.state.ledger import SpendLedger
from custos.state.models import (
    Actor,
    Team,
    TokenRecord,
    User,
    VirtualAccount,
    utcnow,
)
from custos.state.store import Store

_TEAM_ID = re.compile(r"^team_[0-9a-f]{20}$")
_ACCOUNT_ID = re.compile(r"^va_[0-9a-f]{20}$")

#: The ``token_kind`` of a console session signed in through an identity provider (no token).
IDP_SESSION = "idp_session"

#: The longest rotation grace period and token lifetime the API accepts.
MAX_GRACE_SECONDS = 30 * 86400
MAX_EXPIRES_IN_DAYS = 3650
MAX_EVENTS_PAGE = 1000

T = TypeVar("T")


async def _by_id_or_name(
    ref: str,
    id_pattern: re.Pattern[str],
    by_id: Callable[[str], Awaitable[T]],
    by_name: Callable[[str], Awaitable[T]],
    what: str,
) -> T:
    if id_pattern.match(ref):
        try:
            return await by_id(ref)
        except NotFound:
            pass
    try:
        return await by_name(ref)
    except NotFound:
        raise _no(what, ref) from None


def _no(what: str, ref: str) -> NotFound:
    """The answer for an object that does not exist, or that the caller may not see: the same
    words for both, so the answer says nothing about objects outside the caller's rights."""
    key = "id" if what == "token" else ("id or email" if what == "user" else "id or name")
    return NotFound(f"no {what} with {key} {ref!r}")


def _actor(p: Principal, role: str) -> Actor:
    return Actor(id=f"user:{p.id}", role=role)


def _expiry(
    expires_at: datetime | None, expires_in_days: int | None, now: datetime
) -> datetime | None:
    if expires_at is not None and expires_in_days is not None:
        raise BadInput("give expires_at or expires_in_days, not both", "expires_in_days")
    if expires_in_days is not None:
        if not 1 <= expires_in_days <= MAX_EXPIRES_IN_DAYS:
            raise BadInput(
                f"expires_in_days must be between 1 and {MAX_EXPIRES_IN_DAYS}", "expires_in_days"
            )
        return now + timedelta(days=expires_in_days)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise BadInput("expires_at must carry a time zone, e.g. 2030-01-01T00:00:00Z",
                           "expires_at")  # fmt: skip
        if expires_at <= now:
            raise BadInput("expires_at is in the past", "expires_at")
    return expires_at


def _within_caller(p: Principal, models: Sequence[str] | None, what: str) -> None:
    """Refuse to grant ``models`` (``None``: every model) beyond the narrowing of the token ``p``
    calls with. No role lifts this: a narrowed token never mints broader access than its own."""
    if p.token_models is None:
        return
    allowed = ", ".join(p.token_models)
    if models is None:
        raise Forbidden(
            f"{what}: the token you called with is narrowed to {allowed}, and this would grant "
            "every model; narrow it within that, or call with an unnarrowed token"
        )
    outside = uncovered(models, p.token_models)
    if outside:
        raise Forbidden(
            f"{what}: {outside[0]!r} is outside the models of the token you called with ({allowed})"
        )


class AdminService:
    """The admin operations over a ``Store`` and a ``TokenService`` (see the module docstring).

    ``model_names``, if given, returns the models the gateway serves; model lists that match
    none of them are then refused (a typo would otherwise make a token that can call nothing).
    """

    def __init__(
        self,
        store: Store,
        tokens: TokenService,
        *,
        model_names: ModelNames | None = None,
        clock: Callable[[], datetime] = utcnow,
        budgets: BudgetSource | None = None,
        mcp_credential_servers: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.store = store
        #: The MCP servers with ``auth: per_user`` (a credential for another is refused).
        self.mcp_credential_servers = mcp_credential_servers
        self.tokens = tokens
        self.model_names = model_names
        self._now = clock
        self.budgets = budgets

    # -- the caller --------------------------------------------------------------------------

    async def recheck(self, p: Principal) -> Principal | AuthFailure:
        """The principal as the store has it now, or why its token no longer authenticates.

        The directory is refreshed within a second, but an admin call can afford four small
        reads to be exact: a token revoked, a user disabled or an admin demoted a moment ago
        is refused at once. Virtual accounts raise ``Forbidden``: they hold no admin roles.
        """
        if p.kind != "user":
            raise Forbidden("virtual accounts cannot use the admin API; use a personal token")
        try:
            user = await self.store.get_user(p.id)
            if p.token_kind != IDP_SESSION:
                token = await self.store.get_token(p.token_id)
                state = token.state(self._now())
                if state not in ("active", "rotating"):  # rotating: still in its grace period
                    return {"revoked": REVOKED, "rotated": ROTATED}.get(state, EXPIRED)
        except NotFound:
            return OWNER_DELETED
        if user.disabled:
            return OWNER_DISABLED
        names = {t.id: t.name for t in await self.store.list_teams()}
        memberships = await self.store.memberships_of(user.id)
        teams = tuple(sorted(names[m.team_id] for m in memberships if m.team_id in names))
        managed = tuple(
            sorted(names[m.team_id] for m in memberships
                   if m.role == "manager" and m.team_id in names)
        )  # fmt: skip
        subjects = frozenset([f"user:{email_key(user.email)}", *(f"team:{t}" for t in teams)])
        return dataclasses.replace(
            p,
            name=user.email,
            display_name=user.display_name,
            teams=teams,
            managed_teams=managed,
            roles=frozenset(user.roles),
            subjects=subjects,
        )

    async def idp_session(self, email: str, idp: str) -> Principal | AuthFailure:
        """The principal of a console session signed in through identity provider ``idp`` as
        ``email``: the Custos user with that email, with the roles and teams the store gives
        them (never the IdP's claims), checked again on every request by ``recheck``. No token
        stands behind it (``token_kind`` ``IDP_SESSION``), so nothing it grants can be narrower
        than the user."""
        try:
            user = await self.store.get_user_by_email(email)
        except NotFound:
            return OWNER_DELETED
        bare = Principal("user", user.id, user.email, user.display_name, (), (), frozenset(),
                         frozenset(), f"{IDP_SESSION}:{idp}", IDP_SESSION, None, None)  # fmt: skip
        return await self.recheck(bare)

    def check_writer(self, p: Principal) -> None:
        """Refuse read-only principals (what every mutating method does first)."""
        rights.require_writer(p)

    async def me(self, p: Principal) -> UserView:
        """The caller's own user record and memberships."""
        return await self._user_view(p, await self.store.get_user(p.id))

    # -- users -------------------------------------------------------------------------------

    async def list_users(self, p: Principal) -> list[User]:
        """Admins and auditors: every user; others: themselves and their managed teams' members."""
        users = await self.store.list_users()
        if rights.reads_all(p):
            return users
        visible = await self._visible_user_ids(p)
        return [u for u in users if u.id in visible]

    async def get_user(self, p: Principal, ref: str) -> UserView:
        return await self._user_view(p, await self._visible_user(p, ref))

    async def create_user(
        self,
        p: Principal,
        *,
        email: str,
        display_name: str = "",
        roles: Sequence[str] = ("member",),
    ) -> User:
        rights.require_writer(p)
        role = rights.require_admin(p, "creating users")
        return await self.store.create_user(
            _actor(p, role), email=email, display_name=display_name, roles=roles
        )

    async def update_user(
        self,
        p: Principal,
        ref: str,
        *,
        email: str | None = None,
        display_name: str | None = None,
        roles: Sequence[str] | None = None,
        disabled: bool | None = None,
    ) -> User:
        """Change a user's email, display name, roles or disabled flag (admins only).

        Refuses (``Conflict``) to leave the store without an enabled admin.
        """
        rights.require_writer(p)
        role = rights.require_admin(p, "changing users")
        user = await self.find_user(ref)
        loses_admin = (roles is not None and "admin" not in roles) or disabled is True
        if "admin" in user.roles and not user.disabled and loses_admin:
            await self._keep_an_admin(user)
        return await self.store.update_user(
            _actor(p, role),
            user.id,
            email=email,
            display_name=display_name,
            roles=roles,
            disabled=disabled,
        )

    async def delete_user(self, p: Principal, ref: str) -> User:
        """Delete a user (admins only): their memberships go and their tokens are revoked."""
        rights.require_writer(p)
        role = rights.require_admin(p, "deleting users")
        user = await self.find_user(ref)
        if "admin" in user.roles and not user.disabled:
            await self._keep_an_admin(user)
        return await self.store.delete_user(_actor(p, role), user.id)

    async def find_user(self, ref: str) -> User:
        """A user by id or email (no rights check: callers check what they do with it)."""
        try:
            if "@" in ref:
                return await self.store.get_user_by_email(ref)
            return await self.store.get_user(ref)
        except NotFound:
            raise _no("user", ref) from None

    async def _visible_user(self, p: Principal, ref: str) -> User:
        """A user ``p`` may see (admins and auditors: everyone; others: themselves and their
        managed teams' members), else ``NotFound`` as if there were none."""
        user = await self.find_user(ref)
        if not rights.reads_all(p) and user.id not in await self._visible_user_ids(p):
            raise _no("user", ref)
        return user

    async def _keep_an_admin(self, user: User) -> None:
        admins = [
            u.id for u in await self.store.list_users() if "admin" in u.roles and not u.disabled
        ]
        if admins == [user.id]:
            raise Conflict(f"{user.email} is the only enabled admin; make another user admin first")

    async def _visible_user_ids(self, p: Principal) -> set[str]:
        visible = {p.id}
        for team in await self.store.list_teams():
            if rights.manages(p, team.name):
                visible.update(m.user_id for m in await self.store.list_members(team.id))
        return visible

    async def _user_view(self, p: Principal, user: User) -> UserView:
        """``user`` with the memberships ``p`` may see: those of teams ``p`` sees (a manager
        reading a member learns nothing of teams it is not in)."""
        names = {t.id: t.name for t in await self.store.list_teams()}
        members = [
            MemberView(m, names.get(m.team_id, m.team_id), user.email)
            for m in await self.store.memberships_of(user.id)
        ]
        if not rights.reads_all(p):
            members = [m for m in members if m.team_name in p.teams]
        return UserView(user, tuple(members))

    # -- teams -------------------------------------------------------------------------------

    async def list_teams(self, p: Principal) -> list[Team]:
        """Admins and auditors: every team; others: the teams they belong to."""
        teams = await self.store.list_teams()
        if rights.reads_all(p):
            return teams
        return [t for t in teams if t.name in p.teams]

    async def get_team(self, p: Principal, ref: str) -> TeamView:
        """A team and its members: for admins, auditors and the team's own members."""
        team = await self._visible_team(p, ref)
        return TeamView(team, tuple(await self._members(team)))

    async def list_members(self, p: Principal, ref: str) -> list[MemberView]:
        team = await self._visible_team(p, ref)
        return await self._members(team)

    async def create_team(self, p: Principal, *, name: str) -> Team:
        rights.require_writer(p)
        role = rights.require_admin(p, "creating teams")
        return await self.store.create_team(_actor(p, role), name=name)

    async def delete_team(self, p: Principal, ref: str) -> Team:
        """Delete a team (admins only). Teams declared in the config file are refused."""
        rights.require_writer(p)
        role = rights.require_admin(p, "deleting teams")
        team = await self.find_team(ref)
        if team.source == "config":
            raise Conflict(
                f"team {team.name!r} is declared in the config file; remove it there instead"
            )
        return await self.store.delete_team(_actor(p, role), team.id)

    async def add_member(
        self, p: Principal, team_ref: str, user_ref: str, *, role: str = "member"
    ) -> MemberView:
        """Add a user to a team as ``member`` or ``manager`` (admins, the team's managers).

        A team manager may add only users in no team but theirs and without the admin role: a
        membership subjects the user to the team's limits and shows the manager their
        memberships, which for anyone else is an admin's decision.
        """
        rights.require_writer(p)
        team = await self._visible_team(p, team_ref)
        acting = rights.require_team(p, team.name, "adding team members")
        user = await self._addable_user(p, user_ref)
        m = await self.store.add_member(_actor(p, acting), team.id, user.id, role=role)
        return MemberView(m, team.name, user.email)

    async def set_member_role(
        self, p: Principal, team_ref: str, user_ref: str, *, role: str
    ) -> MemberView:
        rights.require_writer(p)
        team = await self._visible_team(p, team_ref)
        acting = rights.require_team(p, team.name, "changing team members")
        user = await self._visible_user(p, user_ref)
        m = await self.store.set_member_role(_actor(p, acting), team.id, user.id, role=role)
        return MemberView(m, team.name, user.email)

    async def remove_member(self, p: Principal, team_ref: str, user_ref: str) -> MemberView:
        rights.require_writer(p)
        team = await self._visible_team(p, team_ref)
        acting = rights.require_team(p, team.name, "removing team members")
        user = await self._visible_user(p, user_ref)
        m = await self.store.remove_member(_actor(p, acting), team.id, user.id)
        return MemberView(m, team.name, user.email)

    async def find_team(self, ref: str) -> Team:
        return await _by_id_or_name(
            ref, _TEAM_ID, self.store.get_team, self.store.get_team_by_name, "team"
        )

    async def _visible_team(self, p: Principal, ref: str) -> Team:
        """A team ``p`` may see (admins and auditors: every team; others: the teams they belong
        to), else ``NotFound`` as if there were none."""
        team = await self.find_team(ref)
        if not (rights.reads_all(p) or team.name in p.teams):
            raise _no("team", ref)
        return team

    async def _self_unless(
        self, p: Principal, ref: str, may_name_others: bool, what: str, role: str
    ) -> User:
        """The user ``ref`` names, for an operation a caller may do on itself, and on others
        only with ``role``. Without it, naming anyone else is refused the same way whether
        they exist or not."""
        try:
            user = await self.find_user(ref)
        except NotFound:
            if may_name_others:
                raise
        else:
            if may_name_others or user.id == p.id:
                return user
        raise Forbidden(f"{what} needs {role}")

    async def _addable_user(self, p: Principal, ref: str) -> User:
        """The user ``p`` may add to a team it manages: anyone for admins; for a team manager a
        user without the admin role whose teams (if any) it manages all. A user the manager
        cannot see is ``NotFound`` unless addable, as if there were none."""
        user = await self.find_user(ref)
        if rights.is_admin(p):
            return user
        names = {t.id: t.name for t in await self.store.list_teams()}
        teams = {names.get(m.team_id, m.team_id) for m in await self.store.memberships_of(user.id)}
        if not teams and "admin" not in user.roles:
            return user
        if not rights.reads_all(p) and user.id not in await self._visible_user_ids(p):
            raise _no("user", ref)
        if "admin" in user.roles or not teams <= rights.managed_teams(p):
            raise Forbidden(
                "adding an admin, or a member of a team you do not manage, needs the admin role"
            )
        return user

    async def _members(self, team: Team) -> list[MemberView]:
        emails = {u.id: u.email for u in await self.store.list_users()}
        members = await self.store.list_members(team.id)
        return [MemberView(m, team.name, emails.get(m.user_id, m.user_id)) for m in members]

    # -- virtual accounts --------------------------------------------------------------------

    async def list_accounts(
        self, p: Principal, *, team_ref: str | None = None
    ) -> list[AccountView]:
        """Admins and auditors: every account; team managers: their teams' accounts."""
        names = {t.id: t.name for t in await self.store.list_teams()}
        if team_ref is not None:
            team = await self._visible_team(p, team_ref)
            rights.require_team_read(p, team.name, "listing a team's virtual accounts")
            accounts = await self.store.list_accounts(team_id=team.id)
        else:
            accounts = await self.store.list_accounts()
        views = [AccountView(a, names.get(a.team_id, a.team_id)) for a in accounts]
        if rights.reads_all(p):
            return views
        managed = rights.managed_teams(p)
        return [v for v in views if v.team_name in managed]

    async def get_account(self, p: Principal, ref: str) -> AccountView:
        return await self._visible_account(p, ref)

    async def create_account(
        self, p: Principal, *, name: str, team_ref: str, allowed_models: Sequence[str] = ()
    ) -> AccountView:
        """Create a virtual account owned by a team (admins, the team's managers).

        Account names are unique; ``allowed_models`` lists the models (or globs) it may call.
        """
        rights.require_writer(p)
        team = await self._visible_team(p, team_ref)
        acting = rights.require_team(p, team.name, "creating a virtual account")
        models = check_patterns(allowed_models, "allowed_models", known=self.model_names)
        _within_caller(p, models, "allowed_models")
        account = await self.store.create_account(
            _actor(p, acting), name=name, team_id=team.id, allowed_models=models
        )
        return AccountView(account, team.name)

    async def update_account(
        self,
        p: Principal,
        ref: str,
        *,
        allowed_models: Sequence[str] | None = None,
        disabled: bool | None = None,
        team_ref: str | None = None,
    ) -> AccountView:
        """Change an account's models, disabled flag or owner team; a move needs rights over
        both teams."""
        rights.require_writer(p)
        view = await self._visible_account(p, ref)
        acting = rights.require_team(p, view.team_name, "changing a virtual account")
        team_id, team_name = view.account.team_id, view.team_name
        if team_ref is not None:
            team = await self._visible_team(p, team_ref)
            rights.require_team(p, team.name, "moving a virtual account to another team")
            team_id, team_name = team.id, team.name
        models = None
        if allowed_models is not None:
            models = check_patterns(allowed_models, "allowed_models", known=self.model_names)
            _within_caller(p, models, "allowed_models")
        if disabled is False and view.account.disabled:
            # Enabling grants the account's models again.
            granted = models if models is not None else view.account.allowed_models
            _within_caller(p, granted, "disabled")
        account = await self.store.update_account(
            _actor(p, acting),
            view.account.id,
            team_id=team_id,
            allowed_models=models,
            disabled=disabled,
        )
        return AccountView(account, team_name)

    async def delete_account(self, p: Principal, ref: str) -> AccountView:
        """Delete a virtual account and revoke its tokens (admins, the team's managers)."""
        rights.require_writer(p)
        view = await self._visible_account(p, ref)
        acting = rights.require_team(p, view.team_name, "deleting a virtual account")
        account = await self.store.delete_account(_actor(p, acting), view.account.id)
        return AccountView(account, view.team_name)

    async def find_account(self, ref: str) -> VirtualAccount:
        return await _by_id_or_name(
            ref,
            _ACCOUNT_ID,
            self.store.get_account,
            self.store.get_account_by_name,
            "virtual account",
        )

    async def _visible_account(self, p: Principal, ref: str) -> AccountView:
        """An account ``p`` may see (admins and auditors: every account; team managers: their
        teams'), else ``NotFound`` as if there were none."""
        account = await self.find_account(ref)
        team = await self.store.get_team(account.team_id)
        if not (rights.reads_all(p) or rights.manages(p, team.name)):
            raise _no("virtual account", ref)
        return AccountView(account, team.name)

    # -- tokens ------------------------------------------------------------------------------

    async def list_tokens(
        self, p: Principal, *, user_ref: str | None = None, account_ref: str | None = None
    ) -> list[TokenView]:
        """Tokens (never secrets), oldest first.

        With ``user_ref``/``account_ref``: that principal's tokens, if the caller may read them.
        Without: every token for admins and auditors; one's own PATs plus one's managed teams'
        VATs for everyone else.
        """
        if user_ref is not None and account_ref is not None:
            raise BadInput("filter by user or by account, not both", "account")
        if user_ref is not None:
            user = await self._self_unless(
                p, user_ref, rights.reads_all(p), "listing another user's tokens",
                "the admin or auditor role",
            )  # fmt: skip
            if user.id == p.id and not (rights.reads_all(p) or rights.owns_tokens(p)):
                rights.require_own_tokens(p)
            records = await self.store.list_tokens(principal_id=user.id)
        elif account_ref is not None:
            view = await self._visible_account(p, account_ref)
            rights.require_team_read(p, view.team_name, "listing a virtual account's tokens")
            records = await self.store.list_tokens(principal_id=view.account.id)
        else:
            records = await self.store.list_tokens()
            if not rights.reads_all(p):
                if not rights.owns_tokens(p):
                    rights.require_own_tokens(p)
                mine = await self._managed_account_ids(p)
                mine.add(p.id)
                records = [r for r in records if r.principal_id in mine]
        return await self._token_views(records)

    async def get_token(self, p: Principal, token_id: str) -> TokenView:
        record = await self._visible_token(p, token_id)
        await self._may_touch_token(p, record, write=False)
        return (await self._token_views([record]))[0]

    async def create_token(
        self,
        p: Principal,
        *,
        name: str,
        user_ref: str | None = None,
        account_ref: str | None = None,
        expires_at: datetime | None = None,
        expires_in_days: int | None = None,
        models: Sequence[str] | None = None,
    ) -> IssuedView:
        """Issue a token and return its secret, once.

        - neither ``user_ref`` nor ``account_ref``: a PAT for the caller (role member or above);
          a caller whose own token is narrowed must narrow the new one within it;
        - ``user_ref`` naming someone else: a PAT for them (admins only);
        - ``account_ref``: a VAT for that virtual account (admins, the team's managers);
          ``models`` must then lie within the account's allowed models.

        Whoever it is for, a caller whose own token is narrowed issues only tokens whose models
        lie within that narrowing; a VAT it issues without ``models`` is narrowed to the
        account's models as they are now.
        """
        rights.require_writer(p)
        if user_ref is not None and account_ref is not None:
            raise BadInput("a token is for a user or for a virtual account, not both", "account")
        expiry = _expiry(expires_at, expires_in_days, self._now())
        narrowed = None
        if models is not None:
            narrowed = check_patterns(models, "models", known=self.model_names)
            if not narrowed:
                raise BadInput("models narrows the token: give at least one, or omit it", "models")
        kind: Literal["pat", "vat"]
        if account_ref is not None:
            view = await self._visible_account(p, account_ref)
            acting = rights.require_team(p, view.team_name, "creating a virtual account token")
            if narrowed is not None:
                self._within(narrowed, view.account.allowed_models, view.account.name)
            elif p.token_models is not None:
                # Narrowed to what the account allows now, so widening the account later
                # does not widen a token a narrowed caller minted.
                narrowed = tuple(view.account.allowed_models)
            _within_caller(p, narrowed, "models")
            kind, principal_id, owner = "vat", view.account.id, view.account.name
        else:
            user = None
            if user_ref is not None:
                user = await self._self_unless(
                    p, user_ref, rights.is_admin(p), "creating a token for another user",
                    "the admin role",
                )  # fmt: skip
            if user is not None and user.id != p.id:
                acting = "admin"
            else:
                acting = rights.require_own_tokens(p)
                user = user or await self.store.get_user(p.id)
            _within_caller(p, narrowed, "models")
            kind, principal_id, owner = "pat", user.id, user.email
        issued = await self.tokens.issue_token(
            _actor(p, acting),
            kind=kind,
            principal_id=principal_id,
            name=name,
            expires_at=expiry,
            allowed_models=None if narrowed is None else list(narrowed),
        )
        return IssuedView(issued.secret, TokenView(issued.record, owner, "active"))

    async def revoke_token(self, p: Principal, token_id: str) -> TokenView:
        """Revoke a token now (its owner, admins, or the managers of a VAT's team)."""
        rights.require_writer(p)
        record = await self._visible_token(p, token_id)
        acting = await self._may_touch_token(p, record, write=True)
        revoked = await self.tokens.revoke(token_id, _actor(p, acting))
        return (await self._token_views([revoked]))[0]

    async def rotate_token(
        self,
        p: Principal,
        token_id: str,
        *,
        grace_seconds: int = 3600,
        expires_at: datetime | None = None,
        expires_in_days: int | None = None,
    ) -> IssuedView:
        """Replace a token; the old one works ``grace_seconds`` more. Returns the new secret.

        The new token keeps the old one's name and narrowing, and by default its lifetime; a
        caller whose own token is narrowed rotates only tokens within that narrowing (the
        new secret would otherwise be broader access than the caller has).
        """
        rights.require_writer(p)
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise BadInput(
                f"grace_seconds must be between 0 and {MAX_GRACE_SECONDS}", "grace_seconds"
            )
        expiry = _expiry(expires_at, expires_in_days, self._now())
        record = await self._visible_token(p, token_id)
        acting = await self._may_touch_token(p, record, write=True)
        # The new token keeps the old one's narrowing: it must lie within the caller's.
        _within_caller(p, record.allowed_models, "rotating this token")
        issued = await self.tokens.rotate(
            token_id, grace_seconds, _actor(p, acting), expires_at=expiry or "keep"
        )
        old = await self.store.get_token(token_id)
        new_view, old_view = await self._token_views([issued.record, old])
        return IssuedView(issued.secret, new_view, old_view)

    async def _visible_token(self, p: Principal, token_id: str) -> TokenRecord:
        """A token ``p`` may see (its own; admins and auditors: every token; team managers:
        their teams' VATs), else ``NotFound`` as if there were none."""
        try:
            record = await self.store.get_token(token_id)
        except NotFound:
            raise _no("token", token_id) from None
        if rights.reads_all(p) or record.principal_id == p.id:
            return record
        if record.kind == "vat" and record.principal_id in await self._managed_account_ids(p):
            return record
        raise _no("token", token_id)

    async def _may_touch_token(self, p: Principal, record: TokenRecord, *, write: bool) -> str:
        """The role under which ``p`` may read (``write=False``) or change this token."""
        if record.kind == "pat":
            if record.principal_id == p.id:
                if not write and rights.reads_all(p):
                    return rights.acting_role(p)
                return rights.require_own_tokens(p)
            if write:
                return rights.require_admin(p, "changing another user's token")
            rights.require_reader(p, "reading another user's token")
            return rights.acting_role(p)
        account = await self.store.get_account(record.principal_id)
        team = await self.store.get_team(account.team_id)
        if write:
            return rights.require_team(p, team.name, "changing a virtual account token")
        rights.require_team_read(p, team.name, "reading a virtual account token")
        return rights.acting_role(p)

    def _within(self, models: Iterable[str], allowed: Sequence[str], account: str) -> None:
        outside = uncovered(models, allowed)
        if outside:
            listed = ", ".join(allowed) or "nothing"
            raise BadInput(
                f"models: {outside[0]!r} is outside virtual account {account!r}'s allowed "
                f"models ({listed})",
                "models",
            )

    async def _managed_account_ids(self, p: Principal) -> set[str]:
        managed = rights.managed_teams(p)
        if not managed:
            return set()
        names = {t.id: t.name for t in await self.store.list_teams()}
        return {a.id for a in await self.store.list_accounts() if names.get(a.team_id) in managed}

    async def _token_views(self, records: list[TokenRecord]) -> list[TokenView]:
        now = self._now()
        owners: dict[str, str] = {}
        if any(r.kind == "pat" for r in records):
            owners.update((u.id, u.email) for u in await self.store.list_users())
        if any(r.kind == "vat" for r in records):
            owners.update((a.id, a.name) for a in await self.store.list_accounts())
        return [
            TokenView(r, owners.get(r.principal_id, r.principal_id), r.state(now)) for r in records
        ]

    # -- budgets -------------------------------------------------------------------------------

    async def list_budgets(self, p: Principal, *, budget: str | None = None) -> BudgetList:
        """Budgets with their counters (``custos.admin.budgets`` says who sees what)."""
        if self.budgets is None:
            raise Forbidden("this gateway serves no budgets")
        return await list_budgets(self.budgets, p, budget)

    async def budget_history(self, p: Principal, budget: str) -> BudgetHistoryOut:
        """One budget's current period by day and its last periods, from the spend ledger,
        for the splits ``list_budgets`` shows ``p``; a budget ``p`` may not see is missing."""
        if self.budgets is None:
            raise Forbidden("this gateway serves no budgets")
        found = await budget_history(self.budgets, SpendLedger(self.store), p, budget)
        if found is None:
            raise NotFound(f"no budget {budget!r}")
        return found

    # -- admin events ------------------------------------------------------------------------

    async def list_events(
        self,
        p: Principal,
        *,
        after: int = 0,
        limit: int = 100,
        target_type: str | None = None,
        target_id: str | None = None,
    ) -> EventPage:
        """Admin events oldest first, ``id > after`` (admins and auditors)."""
        rights.require_reader(p, "reading admin events")
        if not 1 <= limit <= MAX_EVENTS_PAGE:
            raise BadInput(f"limit must be between 1 and {MAX_EVENTS_PAGE}", "limit")
        if after < 0:
            raise BadInput("after must not be negative", "after")
        events = await self.store.list_admin_events(
            after_id=after, limit=limit, target_type=target_type, target_id=target_id
        )
        next_after = events[-1].id if len(events) == limit else None
        return EventPage(tuple(events), next_after)
