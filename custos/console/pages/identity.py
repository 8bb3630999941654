"""Users, teams, virtual accounts and tokens: lists as the API lists them, and the changes.

Each change calls the ``AdminService`` method behind the matching admin API route with the
signed-in principal, so it is checked and recorded (an admin event, then an ``admin.change``
audit record) exactly as the API's. A token issued or rotated here is shown once, in the reply
to the form (``no-store``), and reaches this replica's directory before the reply goes out, as
the API does: a revocation is refused on the model routes at once.
"""

from __future__ import annotations

from typing import Any

from custos.admin import rights
from custos.admin.errors import BadInput, Forbidden
from custos.admin.service import AdminService
from custos.console.web import PREFIX, Request, Response, redirect
from custos.identity.principal import Principal


def _models(text: str | None) -> list[str] | None:
    names = [m.strip() for m in (text or "").replace("\n", ",").split(",") if m.strip()]
    return names or None


def _int(value: str | None, name: str, default: int | None = None) -> int | None:
    if value is None or not value.strip():
        return default
    if not value.strip().isdigit():
        raise BadInput(f"{name} must be a whole number", name)
    return int(value)


async def _lists(service: AdminService, p: Principal) -> dict[str, Any]:
    """What each list shows ``p``: the admin API's list calls, with their own filtering. A
    list ``p`` may not read at all is ``None`` (the page says so instead of a table)."""
    out: dict[str, Any] = {
        "users": await service.list_users(p),
        "teams": await service.list_teams(p),
        "accounts": await service.list_accounts(p),
    }
    try:
        out["tokens"] = await service.list_tokens(p)
    except Forbidden:
        out["tokens"] = None
    return out


async def page(c: Any, r: Request, *, issued: Any = None, status: int = 200) -> Response:
    service, _ = c.service()
    p = r.principal
    return c.render(
        r,
        "identity.html",
        status=status,
        issued=issued,
        can_admin=rights.is_admin(p),
        can_accounts=rights.is_admin(p) or bool(rights.managed_teams(p)),
        can_tokens=rights.owns_tokens(p),
        writer=not rights.WRITER_ROLES.isdisjoint(p.roles),
        **await _lists(service, p),
    )


def _done(c: Any, r: Request, message: str) -> Response:
    assert r.session is not None
    r.session.flash.append(message)
    return redirect(f"{PREFIX}/identity")


async def create_user(c: Any, r: Request) -> Response:
    service, _ = c.service()
    roles = [name for name in ("admin", "team_manager", "member", "auditor") if r.form.get(name)]
    user = await service.create_user(
        r.principal,
        email=r.form.get("email", "").strip(),
        display_name=r.form.get("display_name", "").strip(),
        roles=roles or ["member"],
    )
    return _done(c, r, f"User {user.email} created.")


async def create_team(c: Any, r: Request) -> Response:
    service, _ = c.service()
    team = await service.create_team(r.principal, name=r.form.get("name", "").strip())
    return _done(c, r, f"Team {team.name} created.")


async def create_account(c: Any, r: Request) -> Response:
    service, _ = c.service()
    view = await service.create_account(
        r.principal,
        name=r.form.get("name", "").strip(),
        team_ref=r.form.get("team", "").strip(),
        allowed_models=_models(r.form.get("allowed_models")) or [],
    )
    return _done(c, r, f"Virtual account {view.account.name} created for {view.team_name}.")


async def create_token(c: Any, r: Request) -> Response:
    service, directory = c.service()
    account = r.form.get("account", "").strip() or None
    issued = await service.create_token(
        r.principal,
        name=r.form.get("name", "").strip() or "console",
        account_ref=account,
        expires_in_days=_int(r.form.get("expires_in_days"), "expires_in_days"),
        models=_models(r.form.get("models")),
    )
    await directory.reload_tokens([issued.token.record.id])
    return await page(c, r, issued=issued, status=201)


async def rotate_token(c: Any, r: Request) -> Response:
    service, directory = c.service()
    issued = await service.rotate_token(
        r.principal,
        r.params["token"],
        grace_seconds=_int(r.form.get("grace_seconds"), "grace_seconds", 3600) or 0,
    )
    ids = [issued.token.record.id] + ([issued.replaced.record.id] if issued.replaced else [])
    await directory.reload_tokens(ids)
    return await page(c, r, issued=issued, status=201)


async def revoke_token(c: Any, r: Request) -> Response:
    service, directory = c.service()
    view = await service.revoke_token(r.principal, r.params["token"])
    await directory.reload_tokens([view.record.id])
    return _done(c, r, f"Token {view.record.name} ({view.record.id}) revoked.")
