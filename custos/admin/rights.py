"""Who may do what in the admin API: the four admin roles, as predicates and ``Forbidden``s.

The rules (DESIGN/issue 3, item 8):

- ``admin``: everything.
- ``team_manager``: the virtual accounts of the teams they manage, those accounts' tokens, and
  those teams' members. "Manage" needs both the ``team_manager`` role (granted by an admin) and
  a ``manager`` membership of the team: the role is the right, the membership its scope. A
  manager adds only users in no team they do not manage and without the admin role; anyone
  else joins a team through an admin.
- ``member``: their own personal access tokens (create, list, show, revoke, rotate).
- ``auditor``: reads everything, admin events included; changes nothing.

Roles add up: ``auditor`` + ``member`` reads everything and manages its own tokens. A user with
no role may read only ``/me``. Virtual accounts hold no admin roles and never reach this module
(the HTTP layer refuses them). Every denial names the role that would have allowed the call;
an object the caller may not even see is answered as missing (``AdminService`` does that).
"""

from __future__ import annotations

from custos.admin.errors import Forbidden
from custos.identity.principal import Principal

#: Roles that can change anything at all; a principal with none of them is read-only.
WRITER_ROLES = frozenset({"admin", "team_manager", "member"})
#: Roles that can read everything.
READER_ROLES = frozenset({"admin", "auditor"})


def is_admin(p: Principal) -> bool:
    return "admin" in p.roles


def reads_all(p: Principal) -> bool:
    """Admins and auditors see every object."""
    return not READER_ROLES.isdisjoint(p.roles)


def manages(p: Principal, team_name: str) -> bool:
    """Whether ``p`` manages team ``team_name`` (role ``team_manager`` and a manager membership)."""
    return "team_manager" in p.roles and team_name in p.managed_teams


def managed_teams(p: Principal) -> frozenset[str]:
    """The names of the teams ``p`` manages (empty without the ``team_manager`` role)."""
    return frozenset(p.managed_teams) if "team_manager" in p.roles else frozenset()


def owns_tokens(p: Principal) -> bool:
    """Whether ``p`` may manage its own personal access tokens."""
    return not WRITER_ROLES.isdisjoint(p.roles)


def require_writer(p: Principal) -> str:
    """Refuse read-only principals before anything else; returns the role to act under."""
    if WRITER_ROLES.isdisjoint(p.roles):
        held = ", ".join(sorted(p.roles)) or "no role"
        raise Forbidden(
            f"you hold {held}, which is read-only: changes need the admin, team_manager or "
            "member role"
        )
    return acting_role(p)


def require_admin(p: Principal, what: str) -> str:
    if not is_admin(p):
        raise Forbidden(f"{what} needs the admin role")
    return "admin"


def require_reader(p: Principal, what: str) -> None:
    if not reads_all(p):
        raise Forbidden(f"{what} needs the admin or auditor role")


def require_team(p: Principal, team_name: str, what: str) -> str:
    """Allow admins and managers of ``team_name``; returns the role the change is made under."""
    if is_admin(p):
        return "admin"
    if manages(p, team_name):
        return "team_manager"
    raise Forbidden(
        f"{what} needs the admin role, or the team_manager role and a manager membership of "
        f"team {team_name!r}"
    )


def require_team_read(p: Principal, team_name: str, what: str) -> None:
    """Allow admins, auditors and managers of ``team_name``."""
    if reads_all(p) or manages(p, team_name):
        return
    raise Forbidden(
        f"{what} needs the admin or auditor role, or the team_manager role and a manager "
        f"membership of team {team_name!r}"
    )


def require_own_tokens(p: Principal) -> str:
    if is_admin(p):
        return "admin"
    if owns_tokens(p):
        return "member"
    raise Forbidden("managing your own tokens needs the member role")


def acting_role(p: Principal) -> str:
    """The strongest admin role ``p`` holds (what an admin event records as the actor's role)."""
    for role in ("admin", "team_manager", "member", "auditor"):
        if role in p.roles:
            return role
    return "none"
