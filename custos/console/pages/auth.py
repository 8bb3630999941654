"""Sign-in with a Custos personal access token, and sign-out.

The sign-in form is protected by a double-submit token (a random value in a cookie and in the
form, compared in constant time) and the ``Origin`` check; the token typed in is looked up in
the directory and re-read from the store exactly as the admin API authenticates a bearer token.
A refused token is recorded as an ``auth.failure`` (as the API records one) and answered 401
with the directory's reason; virtual account tokens are refused (403), as by the API. The
token's secret is never stored, logged or put in a page.
"""

from __future__ import annotations

from typing import Any

from custos.admin.errors import Forbidden
from custos.console.oidc import COOKIE as OIDC_COOKIE
from custos.console.oidc import PENDING_S, SignInRefused, console_idps
from custos.console.sessions import COOKIE, SIGNIN_COOKIE, same_token
from custos.console.web import PREFIX, Request, Response, cookie, redirect
from custos.errors import GatewayError
from custos.identity.principal import AuthFailure


def _safe_next(value: str | None) -> str:
    """Only a path inside the console (no scheme, no host, no ``//``): never an open redirect."""
    if (
        value
        and value.startswith(PREFIX + "/")
        and not value.startswith("//")
        and "\\" not in value
    ):
        return value
    return f"{PREFIX}/traces"


def _form(c: Any, r: Request, *, status: int = 200, message: str | None = None) -> Response:
    token = c.sign_in_token()
    response = c.render(
        r,
        "signin.html",
        status=status,
        signin_csrf=token,
        next=_safe_next(r.query.get("next") or r.form.get("next")),
        message=message,
        ended=r.query.get("ended") == "1",
        idps=sorted(console_idps(c.gateway.runtime.config.identity.idp)),
    )
    response.headers.append((b"set-cookie", cookie(SIGNIN_COOKIE, token, secure=r.secure)))
    return response


async def signin_form(c: Any, r: Request) -> Response:
    return _form(c, r)


async def signin(c: Any, r: Request) -> Response:
    if not (r.same_origin() and same_token(r.cookies.get(SIGNIN_COOKIE, ""), r.form.get("csrf"))):
        return _form(c, r, status=403, message="The sign-in form expired; try again.")
    token = r.form.get("token", "").strip()
    if not token:
        return _form(c, r, status=400, message="Paste your personal access token.")
    found = c.authenticate(token)
    if not isinstance(found, AuthFailure):
        service, _ = c.service()
        try:
            found = await service.recheck(found)
        except Forbidden:
            return _form(c, r, status=403, message="Virtual account tokens cannot sign in to the "
                         "console; use a personal access token.")  # fmt: skip
    if isinstance(found, AuthFailure):
        err: GatewayError = found.to_error()
        if c.on_auth_failure is not None:
            c.on_auth_failure({"path": r.path, "method": r.method, "client": None}, err)
        return _form(c, r, status=401, message=found.message)
    return c.start_session(r, found, _safe_next(r.form.get("next")))


async def signout(c: Any, r: Request) -> Response:
    c.sessions.end(r.session_id)
    response = redirect(f"{PREFIX}/signin")
    response.headers.append((b"set-cookie", cookie(COOKIE, "", secure=r.secure, max_age=0)))
    return response


# -- through an identity provider (custos.console.oidc) -------------------------------------


async def oidc_start(c: Any, r: Request) -> Response:
    idp = console_idps(c.gateway.runtime.config.identity.idp).get(r.params["idp"])
    if idp is None:
        return c.error(r, 404, "No identity provider of that name signs in to the console.")
    try:
        url, state = await c.oidc.start(r, idp, _safe_next(r.query.get("next")))
    except SignInRefused as exc:
        return _form(c, r, status=502, message=str(exc))
    response = redirect(url, status=302)
    pending = cookie(OIDC_COOKIE, state, secure=r.secure, max_age=PENDING_S, same_site="Lax")
    response.headers.append((b"set-cookie", pending))
    return response


async def oidc_callback(c: Any, r: Request) -> Response:
    idps = console_idps(c.gateway.runtime.config.identity.idp)
    try:
        idp, email, next_path = await c.oidc.finish(r, idps, c.gateway.runtime.jwt)
    except SignInRefused as exc:
        return _refused(c, r, str(exc))
    service, _ = c.service()
    found = await service.idp_session(email, idp)
    if isinstance(found, AuthFailure):
        return _refused(c, r, f"{email} is not a Custos user, or is disabled: an admin adds "
                        "users on the Identity page.")  # fmt: skip
    # The session cookie is SameSite=Strict: a browser back from another site would not send
    # it on a redirect, so a page moves on from here (same site) instead.
    response = c.start_session(r, found, next_path, via_page=True)
    response.headers.append((b"set-cookie", cookie(OIDC_COOKIE, "", secure=r.secure, max_age=0)))
    return response


def _refused(c: Any, r: Request, message: str) -> Response:
    if c.on_auth_failure is not None:
        err = GatewayError(401, "invalid_jwt", message)
        c.on_auth_failure({"path": r.path, "method": r.method, "client": None}, err)
    response = _form(c, r, status=401, message=message)
    response.headers.append((b"set-cookie", cookie(OIDC_COOKIE, "", secure=r.secure, max_age=0)))
    return response
