"""``Console``: the web console at ``/ui``, an ASGI handler the gateway's app dispatches to.

One request goes: route (404/405) → static asset, or the session from its cookie (none: to
the sign-in page) → the principal re-read from the store as the admin API does
(``AdminService.recheck``: a revoked token or a disabled user ends the session) → on POST, the
``Origin`` and the session's CSRF token (403 otherwise, nothing changed) → the page, which calls
the same service functions as the admin API with the signed-in principal, so every role check
is the API's own. ``Forbidden`` answers 403, ``NotFound`` 404, bad input 400, conflicts 409.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final

from custos.admin.errors import BadInput, Forbidden
from custos.admin.service import AdminService
from custos.console import pages
from custos.console.oidc import OIDCSignIn
from custos.console.sessions import COOKIE, MAX_AGE_S, SIGNIN_COOKIE, Sessions, same_token
from custos.console.web import (
    PREFIX,
    FormTooLarge,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    StreamResponse,
    cookie,
    read_form,
    redirect,
    templates,
)
from custos.errors import GatewayError
from custos.gateway import Gateway
from custos.identity.directory import Directory
from custos.identity.principal import AuthFailure, Principal
from custos.paths import match_segments
from custos.state.errors import Conflict, Invalid, NotFound

log = logging.getLogger("custos.console")

Services = Callable[[], tuple[AdminService, Directory]]
Page = Callable[["Console", Request], Awaitable[Response | StreamResponse]]

_STATIC: Final = {
    "console.css": b"text/css; charset=utf-8",
    "console.js": b"text/javascript; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    segments: tuple[str, ...]
    page: Page

    def match(self, parts: list[str]) -> dict[str, str] | None:
        return match_segments(self.segments, parts)


def _route(method: str, path: str, page: Page) -> Route:
    return Route(method, tuple(path.strip("/").split("/")) if path != "/" else ("",), page)


class Console:
    """The console (see the module docstring). ``services`` returns the admin API's own
    ``AdminService`` and the token ``Directory`` (raising ``GatewayError`` 503 until the
    gateway has started); ``on_auth_failure`` records a refused sign-in as the API records a
    refused token."""

    def __init__(
        self,
        gateway: Gateway,
        services: Services,
        *,
        on_auth_failure: Callable[[Scope, GatewayError], None] | None = None,
    ) -> None:
        self.gateway = gateway
        self.services = services
        self.on_auth_failure = on_auth_failure
        self.sessions = Sessions()
        self.oidc = OIDCSignIn()
        self.templates = templates()
        self.routes = [_route(m, p, page) for m, p, page in pages.ROUTES]
        #: The last verification started here (``pages.audit.Verification``), running or done.
        self.last_verification: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request.of(scope)
        response: Response | StreamResponse
        try:
            response = await self._handle(request, scope, receive)
        except Exception:
            log.exception("console request %s %s failed", request.method, request.path)
            response = self.error(request, 500, "The console failed; see the gateway log.")
        await response.send(send)

    async def _handle(
        self, r: Request, scope: Scope, receive: Receive
    ) -> Response | StreamResponse:
        rest = r.path[len(PREFIX) :].strip("/")
        if rest.startswith("static/"):
            return self.static(rest[len("static/") :])
        parts = rest.split("/") if rest else [""]
        route = None
        allowed = []
        for candidate in self.routes:
            params = candidate.match(parts)
            if params is None:
                continue
            if candidate.method == r.method:
                route, r.params = candidate, params
                break
            allowed.append(candidate.method)
        if route is None:
            if allowed:
                return Response(405, b"method not allowed", b"text/plain",
                                [(b"allow", ", ".join(sorted(set(allowed))).encode())])  # fmt: skip
            return self.error(r, 404, "No such page.")
        if r.method == "POST":
            try:
                r.form = await read_form(receive, scope)
            except FormTooLarge:
                return self.error(r, 413, "The form is too large.")
            except TimeoutError:
                return self.error(r, 408, "The form did not arrive in time.")
        if route.page in pages.PUBLIC:
            return await route.page(self, r)
        refused = await self._signed_in(r)
        if refused is not None:
            return refused
        if r.method == "POST" and not self._csrf_ok(r):
            return self.error(r, 403, "This form has expired or did not come from this console; "
                              "reload the page and try again.")  # fmt: skip
        try:
            return await route.page(self, r)
        except (BadInput, Invalid) as exc:
            return self.error(r, 400, getattr(exc, "message", str(exc)))
        except Forbidden as exc:
            return self.error(r, 403, exc.message)
        except NotFound as exc:
            return self.error(r, 404, exc.message)
        except Conflict as exc:
            return self.error(r, 409, exc.message)
        except GatewayError as exc:
            return self.error(r, exc.status, exc.message)

    async def _signed_in(self, r: Request) -> Response | None:
        """Attach the session and its principal as the store has it now; else where to go."""
        r.session_id = r.cookies.get(COOKIE)
        session = self.sessions.get(r.session_id)
        if session is None:
            if r.method == "GET":
                return redirect(f"{PREFIX}/signin?{pages.next_query(r)}")
            return self.error(r, 403, "Your session has ended; sign in again.")
        service, _ = self.service()
        try:
            fresh = await service.recheck(session.principal)
        except Forbidden:
            fresh = None
        if not isinstance(fresh, Principal):
            self.sessions.end(r.session_id)
            return redirect(f"{PREFIX}/signin?ended=1")
        session.principal = fresh
        r.session = session
        return None

    def _csrf_ok(self, r: Request) -> bool:
        assert r.session is not None
        return r.same_origin() and same_token(r.session.csrf, r.form.get("csrf"))

    # -- helpers the pages use ------------------------------------------------------------------

    def service(self) -> tuple[AdminService, Directory]:
        return self.services()

    def render(self, r: Request, template: str, *, status: int = 200, **values: Any) -> Response:
        session = r.session
        flash = []
        if session is not None:
            flash, session.flash = session.flash, []
        body = self.templates.get_template(template).render(
            principal=session.principal if session else None,
            csrf=session.csrf if session else "",
            nav=pages.nav(session.principal) if session else [],
            path=r.path,
            flash=flash,
            prefix=PREFIX,
            **values,
        )
        return Response(status, body.encode())

    def error(self, r: Request, status: int, message: str) -> Response:
        return self.render(r, "error.html", status=status, status_code=status, message=message)

    def static(self, name: str) -> Response:
        content_type = _STATIC.get(name)
        if content_type is None:
            return Response(404, b"not found", b"text/plain")
        body = files("custos.console").joinpath("static", name).read_bytes()
        response = Response(200, body, content_type)
        return response

    def start_session(
        self, r: Request, principal: Principal, to: str, *, via_page: bool = False
    ) -> Response:
        """Sign ``principal`` in and send the browser on to ``to``: a redirect, or
        (``via_page``) a page that moves on by itself, for a browser arriving from another
        site, which would not send the new SameSite=Strict cookie along a redirect."""
        session_id, _ = self.sessions.create(principal)
        if via_page:
            page = self.templates.get_template("continue.html").render(prefix=PREFIX, next=to)
            response = Response(200, page.encode())
        else:
            response = redirect(to)
        response.headers.append(
            (b"set-cookie", cookie(COOKIE, session_id, secure=r.secure, max_age=MAX_AGE_S))
        )
        response.headers.append((b"set-cookie", cookie(SIGNIN_COOKIE, "", secure=r.secure,
                                                       max_age=0)))  # fmt: skip
        return response

    def sign_in_token(self) -> str:
        return secrets.token_urlsafe(24)

    def authenticate(self, token: str) -> Principal | AuthFailure:
        _, directory = self.service()
        return directory.lookup(token)
