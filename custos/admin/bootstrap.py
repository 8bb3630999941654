"""``custos init``: create the first admin user and return its token, once; ``custos init
--recover``: a new token for an existing admin, when every admin token is lost.

Works on the store directly (no gateway, no HTTP), so it runs before anything can authenticate.
The change is recorded like any other, by the actor ``system:init``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from custos.identity.tokens import TokenService
from custos.state.errors import Conflict
from custos.state.models import Actor, User
from custos.state.store import Store

INIT_ACTOR = Actor.system("init")
RECOVER_ACTOR = Actor.system("recover")


@dataclass(frozen=True, slots=True)
class Bootstrapped:
    """The first admin and its personal access token; ``secret`` is never shown again."""

    user: User
    secret: str = field(repr=False)
    token_id: str


async def has_admin(store: Store) -> bool:
    """Whether any user holds the admin role (enabled or not)."""
    return any("admin" in u.roles for u in await store.list_users())


async def bootstrap(
    store: Store, tokens: TokenService, email: str, *, token_name: str = "init"
) -> Bootstrapped:
    """Create user ``email`` with roles admin and member, and a PAT for it.

    Refuses (``Conflict``) when any admin exists already, so it cannot be used to take over a
    running installation; an existing non-admin user with that email is a ``Conflict`` too.
    The user and its token are two store writes: if issuing the token fails, the user is
    deleted again, so a failed init leaves no admin without a token behind (the admin events
    of both steps stay, as every change's do).
    """
    if await has_admin(store):
        raise Conflict("an admin exists already: custos init runs once, on an empty store")
    user = await store.create_user(
        INIT_ACTOR, email=email, display_name="Administrator", roles=("admin", "member")
    )
    try:
        issued = await tokens.issue_token(
            INIT_ACTOR, kind="pat", principal_id=user.id, name=token_name
        )
    except BaseException:
        await store.delete_user(INIT_ACTOR, user.id)
        raise
    return Bootstrapped(user=user, secret=issued.secret, token_id=issued.record.id)


async def recover_admin(
    store: Store, tokens: TokenService, email: str, *, token_name: str = "recover"
) -> Bootstrapped:
    """Issue a new personal access token for the enabled admin ``email``.

    The way back when every admin token is revoked, expired or lost (the admin API refuses to
    demote, disable or delete the last enabled admin, but a token can always be revoked or run
    out). It works on the store directly, so only whoever can open the store and read the token
    hash key can use it: they could write a token into the store anyway. Nothing else changes;
    the token is recorded like any other, by the actor ``system:recover``. Raises ``NotFound``
    for an unknown email and ``Conflict`` for a user who is not an enabled admin.
    """
    user = await store.get_user_by_email(email)
    if "admin" not in user.roles or user.disabled:
        raise Conflict(
            f"{user.email} is not an enabled admin: recovery issues tokens to admins only"
        )
    issued = await tokens.issue_token(
        RECOVER_ACTOR, kind="pat", principal_id=user.id, name=token_name
    )
    return Bootstrapped(user=user, secret=issued.secret, token_id=issued.record.id)
