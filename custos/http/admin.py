"""``AdminAPI``: the plain-ASGI handler for everything under ``/admin/v1/``.

One request goes: route (404/405) → bearer token via ``Directory.lookup`` (401 with the
``AuthFailure`` code) → the principal re-read from the store (``AdminService.recheck``: a
revocation or demotion counts at once; virtual accounts get 403) → read-only principals refused
from mutating routes (403) before the body is read → query and body validated by the pydantic
models (400 naming the field, 413 over 1 MiB, 415 not JSON) → ``AdminService`` (403/404/409) →
JSON. Errors have the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}``.

Responses carry ``Cache-Control: no-store``: some hold a token secret, shown this once.
The objects it needs exist only once the gateway has started, so the constructor takes a
zero-argument callable returning ``(store, tokens, directory)``; until it can, the API answers
503 ``not_ready``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson
from pydantic import BaseModel, ValidationError

from custos import __version__
from custos.admin import mcp_credentials
from custos.admin import schemas as s
from custos.admin.budgets import BudgetHistoryOut, BudgetList, BudgetSource, BudgetsQuery
from custos.admin.errors import BadInput, Forbidden
from custos.admin.openapi import RouteSpec, body_required, build_document
from custos.admin.service import AdminService
from custos.audit import service as audit_service
from custos.errors import GatewayError, openai_error_body
from custos.http.requests import ClientGone, bearer, read_body, with_credential
from custos.identity.directory import Directory
from custos.identity.principal import AuthFailure, Principal
from custos.identity.tokens import TokenService
from custos.paths import match_segments
from custos.state.counters import CountersUnavailable
from custos.state.errors import Conflict, Invalid, NotFound
from custos.state.store import Store

log = logging.getLogger("custos.admin")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Deps = Callable[[], tuple[Store, TokenService, Directory]]

PREFIX = "/admin/v1"
MAX_BODY_BYTES = 1 << 20
#: The config's default ``gateway.body_timeout_s``.
BODY_TIMEOUT_S = 60.0

_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler gets: the checked principal, path parameters, parsed query and body."""

    principal: Principal
    params: dict[str, str]
    query: Any
    body: Any


Handler = Callable[[AdminService, Call], Awaitable[BaseModel]]


@dataclass(frozen=True, slots=True)
class AdminRoute:
    """One admin API route: its spec (method, path, models), its handler, and its path split
    into segments for matching (``{name}`` segments capture)."""

    spec: RouteSpec
    handler: Handler
    segments: tuple[str, ...]

    def match(self, parts: list[str]) -> dict[str, str] | None:
        return match_segments(self.segments, parts)


async def _read_your_writes(directory: Directory, result: BaseModel) -> None:
    """After a token is issued, rotated or revoked here, this replica's directory has it before
    the reply goes out, so the caller can use (or is refused with) it at once. Other replicas
    hear of it through the invalidation channel, within milliseconds."""
    if isinstance(result, s.TokenCreated):
        ids = [result.record.id] + ([result.replaced.id] if result.replaced else [])
    elif isinstance(result, s.TokenOut):
        ids = [result.id]
    else:
        return
    await directory.reload_tokens(ids)


def _split(path: str) -> list[str]:
    return [unquote(p) for p in path.strip("/").split("/")]


class AdminAPI:
    """The admin API as an ASGI callable for ``http`` scopes whose path starts with ``/admin/``.

    ``model_names``, if given, returns the models the gateway serves (see ``AdminService``).
    """

    def __init__(
        self,
        deps: Deps,
        *,
        model_names: Callable[[], Iterable[str]] | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        body_timeout_s: float = BODY_TIMEOUT_S,
        on_auth_failure: Callable[[Scope, GatewayError], None] | None = None,
        budgets: BudgetSource | None = None,
        mcp_credential_servers: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self._deps = deps
        self._mcp_credential_servers = mcp_credential_servers
        #: The gateway's budgets (``GET /budgets``); without it that route answers 503.
        self._budgets = budgets
        #: Told of every 401 (the audit trail records it as an ``auth.failure``).
        self._on_auth_failure = on_auth_failure
        self._model_names = model_names
        self._max_body = max_body_bytes
        self._body_timeout_s = body_timeout_s
        self._service: tuple[Store, TokenService, AdminService] | None = None
        self.routes = [
            AdminRoute(spec, handler, tuple(_split(spec.path))) for spec, handler in ROUTES
        ]
        self._openapi: bytes | None = None

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, body = await self._handle(scope, receive)
            headers = list(_HEADERS)
        except GatewayError as err:
            if err.status == 401 and self._on_auth_failure is not None:
                self._on_auth_failure(scope, err)
            status, body = err.status, openai_error_body(err)
            headers = [*_HEADERS, *((k.encode(), v.encode()) for k, v in err.headers.items())]
        except Exception:
            log.exception("admin request %s %s failed", scope.get("method"), scope.get("path"))
            err = GatewayError(500, "internal_error", "The admin API failed; see the gateway log.")
            status, body, headers = 500, openai_error_body(err), list(_HEADERS)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        raw = scope.get("raw_path")
        path = raw.decode("latin-1").split("?", 1)[0] if raw else scope["path"]
        route, params = self._route(scope["method"], path)
        if route.spec.operation_id == "getOpenAPI":
            return 200, self.openapi_json()
        service, directory = self.service_and_directory()
        principal = await self._authenticate(scope, service, directory)
        try:
            if route.spec.mutating:
                service.check_writer(principal)
            query = self._query(route.spec, scope)
            body = await self._body(route.spec, scope, receive)
            result = await route.handler(service, Call(principal, params, query, body))
        except BadInput as exc:
            raise GatewayError(400, "invalid_request", exc.message, param=exc.param) from None
        except Invalid as exc:
            raise GatewayError(400, "invalid_request", exc.message) from None
        except Forbidden as exc:
            raise GatewayError(403, "forbidden", exc.message) from None
        except NotFound as exc:
            raise GatewayError(404, "not_found", exc.message) from None
        except Conflict as exc:
            raise GatewayError(409, "conflict", exc.message) from None
        if route.spec.mutating:
            await _read_your_writes(directory, result)
        return route.spec.status, result.model_dump_json().encode()

    def openapi_json(self) -> bytes:
        """The OpenAPI document (built once)."""
        if self._openapi is None:
            document = build_document([r.spec for r in self.routes], version=__version__)
            self._openapi = orjson.dumps(document)
        return self._openapi

    # -- the steps ---------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> tuple[AdminRoute, dict[str, str]]:
        parts = _split(path)
        allowed: list[str] = []
        for route in self.routes:
            params = route.match(parts)
            if params is None:
                continue
            if route.spec.method == method:
                return route, params
            allowed.append(route.spec.method)
        if allowed:
            methods = ", ".join(sorted(set(allowed)))
            raise GatewayError(
                405,
                "method_not_allowed",
                f"{path} accepts {methods} only.",
                headers={"allow": methods},
            )
        raise GatewayError(404, "unknown_route", f"No admin route {method} {path}.")

    def service_and_directory(self) -> tuple[AdminService, Directory]:
        """The ``AdminService`` every admin route calls (the console calls the same one) and the
        token directory; ``GatewayError`` 503 until the gateway has started."""
        try:
            store, tokens, directory = self._deps()
        except Exception:
            log.debug("admin API dependencies unavailable", exc_info=True)
            store = tokens = directory = None  # type: ignore[assignment]
        if store is None or tokens is None or directory is None:
            raise GatewayError(503, "not_ready", "The gateway is starting; retry in a moment.")
        cached = self._service
        if cached is None or cached[0] is not store or cached[1] is not tokens:
            service = AdminService(
                store, tokens, model_names=self._model_names, budgets=self._budgets,
                mcp_credential_servers=self._mcp_credential_servers,
            )  # fmt: skip
            self._service = cached = (store, tokens, service)
        return cached[2], directory

    async def _authenticate(
        self, scope: Scope, service: AdminService, directory: Directory
    ) -> Principal:
        token: str | AuthFailure | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                credential = bearer(value)
                if credential is not None:
                    token = with_credential(token, credential)
        if token is None:
            raise GatewayError(
                401,
                "missing_token",
                "Send your personal access token as 'Authorization: Bearer cst_pat_…'.",
                headers={"www-authenticate": "Bearer"},
            )
        found = token if isinstance(token, AuthFailure) else directory.lookup(token)
        if not isinstance(found, AuthFailure):
            try:
                found = await service.recheck(found)
            except Forbidden as exc:
                raise GatewayError(403, "forbidden", exc.message) from None
        if isinstance(found, AuthFailure):
            err = found.to_error()
            err.headers["www-authenticate"] = "Bearer"
            raise err
        return found

    def _query(self, spec: RouteSpec, scope: Scope) -> Any:
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if spec.query is None:
            if pairs:
                name = pairs[0][0]
                message = f"{spec.path} takes no query parameters (got {name!r})."
                raise GatewayError(400, "invalid_request", message, param=name)
            return None
        values: dict[str, str] = {}
        for key, value in pairs:
            if key in values:
                raise GatewayError(400, "invalid_request", f"give {key!r} once", param=key)
            values[key] = value
        try:
            return spec.query.model_validate(values)
        except ValidationError as exc:
            raise _invalid(exc, spec.query) from None

    async def _body(self, spec: RouteSpec, scope: Scope, receive: Receive) -> Any:
        if spec.body is None:
            return None
        content_type = None
        length = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.split(b";", 1)[0].strip().lower()
            elif name == b"content-length" and value.isdigit():
                length = int(value)
        try:
            raw = await read_body(receive, length, self._max_body, self._body_timeout_s)
        except ClientGone:
            raise GatewayError(400, "client_gone", "The client went away.") from None
        if not raw.strip() and not body_required(spec.body):
            raw = b"{}"
        elif content_type != b"application/json":
            shown = "none" if content_type is None else repr(content_type.decode("latin-1"))
            raise GatewayError(
                415,
                "unsupported_media_type",
                f"Send the body as JSON with 'Content-Type: application/json' (got {shown}).",
            )
        try:
            return spec.body.model_validate_json(raw)
        except ValidationError as exc:
            raise _invalid(exc, spec.body) from None


def _invalid(exc: ValidationError, model: type[BaseModel]) -> GatewayError:
    """A 400 for the first problem pydantic found, naming the field in ``param``."""
    error = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "json_invalid":
        return GatewayError(400, "invalid_json", f"The body is not valid JSON: {error['msg']}.")
    if not loc:
        return GatewayError(
            400, "invalid_request", f"The body must be a JSON object: {error['msg']}."
        )
    if kind == "extra_forbidden":
        known = ", ".join(model.model_fields) or "nothing"
        message = f"Unknown field {loc!r}: this request takes {known}."
    elif kind == "missing":
        message = f"{loc} is required."
    else:
        message = f"{loc}: {error['msg']}."
    return GatewayError(400, "invalid_request", message, param=loc)


# -- the route table ------------------------------------------------------------------------------


async def _list_users(svc: AdminService, c: Call) -> BaseModel:
    return s.UserList(data=[s.UserOut.from_record(u) for u in await svc.list_users(c.principal)])


async def _create_user(svc: AdminService, c: Call) -> BaseModel:
    b: s.UserCreate = c.body
    user = await svc.create_user(
        c.principal, email=b.email, display_name=b.display_name, roles=b.roles
    )
    return s.UserOut.from_record(user)


async def _get_user(svc: AdminService, c: Call) -> BaseModel:
    return s.UserDetail.from_view(await svc.get_user(c.principal, c.params["user"]))


async def _update_user(svc: AdminService, c: Call) -> BaseModel:
    b: s.UserUpdate = c.body
    user = await svc.update_user(
        c.principal,
        c.params["user"],
        email=b.email,
        display_name=b.display_name,
        roles=b.roles,
        disabled=b.disabled,
    )
    return s.UserOut.from_record(user)


async def _delete_user(svc: AdminService, c: Call) -> BaseModel:
    return s.UserOut.from_record(await svc.delete_user(c.principal, c.params["user"]))


async def _me(svc: AdminService, c: Call) -> BaseModel:
    view = await svc.me(c.principal)
    detail = s.UserDetail.from_view(view)
    return s.MeOut(
        **detail.model_dump(),
        token_id=c.principal.token_id,
        managed_teams=list(c.principal.managed_teams),
    )


async def _list_teams(svc: AdminService, c: Call) -> BaseModel:
    return s.TeamList(data=[s.TeamOut.from_record(t) for t in await svc.list_teams(c.principal)])


async def _create_team(svc: AdminService, c: Call) -> BaseModel:
    b: s.TeamCreate = c.body
    return s.TeamOut.from_record(await svc.create_team(c.principal, name=b.name))


async def _get_team(svc: AdminService, c: Call) -> BaseModel:
    return s.TeamDetail.from_view(await svc.get_team(c.principal, c.params["team"]))


async def _delete_team(svc: AdminService, c: Call) -> BaseModel:
    return s.TeamOut.from_record(await svc.delete_team(c.principal, c.params["team"]))


async def _list_members(svc: AdminService, c: Call) -> BaseModel:
    members = await svc.list_members(c.principal, c.params["team"])
    return s.MemberList(data=[s.MembershipOut.from_view(m) for m in members])


async def _add_member(svc: AdminService, c: Call) -> BaseModel:
    b: s.MemberAdd = c.body
    view = await svc.add_member(c.principal, c.params["team"], b.user, role=b.role)
    return s.MembershipOut.from_view(view)


async def _update_member(svc: AdminService, c: Call) -> BaseModel:
    b: s.MemberUpdate = c.body
    view = await svc.set_member_role(c.principal, c.params["team"], c.params["user"], role=b.role)
    return s.MembershipOut.from_view(view)


async def _remove_member(svc: AdminService, c: Call) -> BaseModel:
    view = await svc.remove_member(c.principal, c.params["team"], c.params["user"])
    return s.MembershipOut.from_view(view)


async def _list_accounts(svc: AdminService, c: Call) -> BaseModel:
    q: s.AccountsQuery = c.query
    views = await svc.list_accounts(c.principal, team_ref=q.team)
    return s.AccountList(data=[s.AccountOut.from_view(v) for v in views])


async def _create_account(svc: AdminService, c: Call) -> BaseModel:
    b: s.AccountCreate = c.body
    view = await svc.create_account(
        c.principal, name=b.name, team_ref=b.team, allowed_models=b.allowed_models
    )
    return s.AccountOut.from_view(view)


async def _get_account(svc: AdminService, c: Call) -> BaseModel:
    return s.AccountOut.from_view(await svc.get_account(c.principal, c.params["account"]))


async def _update_account(svc: AdminService, c: Call) -> BaseModel:
    b: s.AccountUpdate = c.body
    view = await svc.update_account(
        c.principal,
        c.params["account"],
        allowed_models=b.allowed_models,
        disabled=b.disabled,
        team_ref=b.team,
    )
    return s.AccountOut.from_view(view)


async def _delete_account(svc: AdminService, c: Call) -> BaseModel:
    return s.AccountOut.from_view(await svc.delete_account(c.principal, c.params["account"]))


async def _list_tokens(svc: AdminService, c: Call) -> BaseModel:
    q: s.TokensQuery = c.query
    views = await svc.list_tokens(c.principal, user_ref=q.user, account_ref=q.account)
    return s.TokenList(data=[s.TokenOut.from_view(v) for v in views])


async def _create_token(svc: AdminService, c: Call) -> BaseModel:
    b: s.TokenCreate = c.body
    issued = await svc.create_token(
        c.principal,
        name=b.name,
        user_ref=b.user,
        account_ref=b.account,
        expires_at=b.expires_at,
        expires_in_days=b.expires_in_days,
        models=b.models,
    )
    return s.TokenCreated.from_view(issued)


async def _get_token(svc: AdminService, c: Call) -> BaseModel:
    return s.TokenOut.from_view(await svc.get_token(c.principal, c.params["token"]))


async def _revoke_token(svc: AdminService, c: Call) -> BaseModel:
    return s.TokenOut.from_view(await svc.revoke_token(c.principal, c.params["token"]))


async def _rotate_token(svc: AdminService, c: Call) -> BaseModel:
    b: s.TokenRotate = c.body
    issued = await svc.rotate_token(
        c.principal,
        c.params["token"],
        grace_seconds=b.grace_seconds,
        expires_at=b.expires_at,
        expires_in_days=b.expires_in_days,
    )
    return s.TokenCreated.from_view(issued)


async def _list_events(svc: AdminService, c: Call) -> BaseModel:
    q: s.EventsQuery = c.query
    page = await svc.list_events(
        c.principal,
        after=q.after,
        limit=q.limit,
        target_type=q.target_type,
        target_id=q.target_id,
    )
    return s.EventList.from_page(page)


async def _audit_report(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.report(svc, c.principal, c.query)


async def _audit_tool_report(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.tool_report(svc, c.principal, c.query)


async def _audit_events(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.events(svc, c.principal, c.query)


async def _audit_request(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.request_records(svc, c.principal, c.params["request"])


async def _audit_traces(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.trace_list(svc, c.principal, c.query)


async def _audit_trace(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.trace(svc, c.principal, c.params["request"])


async def _audit_verify(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.verify(svc, c.principal, c.query)


async def _audit_holds(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.holds(svc, c.principal, c.query)


async def _audit_hold_set(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.create_hold(svc, c.principal, c.body)


async def _audit_hold_release(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.end_hold(svc, c.principal, c.params["hold"], c.body)


async def _audit_content(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.request_content(svc, c.principal, c.params["request"])


async def _audit_erase(svc: AdminService, c: Call) -> BaseModel:
    return await audit_service.erase_content(svc, c.principal, c.body)


async def _list_budgets(svc: AdminService, c: Call) -> BaseModel:
    q: BudgetsQuery = c.query
    try:
        return await svc.list_budgets(c.principal, budget=q.budget)
    except CountersUnavailable:
        raise GatewayError(
            503, "counters_unavailable", "The budget counters cannot be read right now."
        ) from None


async def _budget_history(svc: AdminService, c: Call) -> BaseModel:
    try:
        return await svc.budget_history(c.principal, c.params["budget"])
    except CountersUnavailable:
        raise GatewayError(
            503, "counters_unavailable", "The budget counters cannot be read right now."
        ) from None


async def _mcp_credentials(svc: AdminService, c: Call) -> BaseModel:
    return await mcp_credentials.list_credentials(svc, c.principal, c.query)


async def _mcp_credential_set(svc: AdminService, c: Call) -> BaseModel:
    return await mcp_credentials.set_credential(svc, c.principal, c.params["server"], c.body)


async def _mcp_credential_delete(svc: AdminService, c: Call) -> BaseModel:
    return await mcp_credentials.delete_credential(svc, c.principal, c.params["server"], c.query)


async def _no_handler(svc: AdminService, c: Call) -> BaseModel:  # the document is served early
    raise AssertionError("unreachable")


class OpenAPIDocument(BaseModel):
    """The OpenAPI 3.1 document of this API."""

    openapi: str


def _r(
    method: str,
    path: str,
    op: str,
    summary: str,
    response: type[BaseModel],
    *,
    tag: str | None = None,
    **kw: Any,
) -> RouteSpec:
    tag = tag or path.lstrip("/").split("/", 1)[0]
    mutating = method != "GET"
    return RouteSpec(method, PREFIX + path, op, summary, response, tag, mutating=mutating, **kw)  # type: ignore[arg-type]


ROUTES: list[tuple[RouteSpec, Handler]] = [
    (_r("GET", "/me", "getMe", "The caller: user, memberships, token", s.MeOut), _me),
    (_r("GET", "/users", "listUsers", "List users", s.UserList), _list_users),
    (
        _r("POST", "/users", "createUser", "Create a user (admin)", s.UserOut, body=s.UserCreate,
           status=201),
        _create_user,
    ),
    (_r("GET", "/users/{user}", "getUser", "Show a user", s.UserDetail), _get_user),
    (
        _r("PATCH", "/users/{user}", "updateUser", "Change a user's roles, email, name or "
           "disabled flag (admin)", s.UserOut, body=s.UserUpdate),
        _update_user,
    ),
    (
        _r("DELETE", "/users/{user}", "deleteUser", "Delete a user; revokes their tokens (admin)",
           s.UserOut),
        _delete_user,
    ),
    (_r("GET", "/teams", "listTeams", "List teams", s.TeamList), _list_teams),
    (
        _r("POST", "/teams", "createTeam", "Create a team (admin)", s.TeamOut, body=s.TeamCreate,
           status=201),
        _create_team,
    ),
    (_r("GET", "/teams/{team}", "getTeam", "Show a team and its members", s.TeamDetail), _get_team),
    (
        _r("DELETE", "/teams/{team}", "deleteTeam", "Delete a team (admin)", s.TeamOut),
        _delete_team,
    ),
    (
        _r("GET", "/teams/{team}/members", "listMembers", "List a team's members", s.MemberList),
        _list_members,
    ),
    (
        _r("POST", "/teams/{team}/members", "addMember", "Add a member (admin, team manager)",
           s.MembershipOut, body=s.MemberAdd, status=201),
        _add_member,
    ),
    (
        _r("PATCH", "/teams/{team}/members/{user}", "updateMember", "Set a member's role",
           s.MembershipOut, body=s.MemberUpdate),
        _update_member,
    ),
    (
        _r("DELETE", "/teams/{team}/members/{user}", "removeMember", "Remove a member",
           s.MembershipOut),
        _remove_member,
    ),
    (
        _r("GET", "/accounts", "listAccounts", "List virtual accounts", s.AccountList,
           query=s.AccountsQuery, names_objects=True),
        _list_accounts,
    ),
    (
        _r("POST", "/accounts", "createAccount", "Create a virtual account (admin, team manager)",
           s.AccountOut, body=s.AccountCreate, status=201, names_objects=True),
        _create_account,
    ),
    (
        _r("GET", "/accounts/{account}", "getAccount", "Show a virtual account", s.AccountOut),
        _get_account,
    ),
    (
        _r("PATCH", "/accounts/{account}", "updateAccount", "Change a virtual account",
           s.AccountOut, body=s.AccountUpdate),
        _update_account,
    ),
    (
        _r("DELETE", "/accounts/{account}", "deleteAccount", "Delete a virtual account; revokes "
           "its tokens", s.AccountOut),
        _delete_account,
    ),
    (
        _r("GET", "/tokens", "listTokens", "List tokens (never their secrets)", s.TokenList,
           query=s.TokensQuery, names_objects=True),
        _list_tokens,
    ),
    (
        _r("POST", "/tokens", "createToken", "Create a token; the secret is in this reply only",
           s.TokenCreated, body=s.TokenCreate, status=201, names_objects=True),
        _create_token,
    ),
    (_r("GET", "/tokens/{token}", "getToken", "Show a token", s.TokenOut), _get_token),
    (
        _r("POST", "/tokens/{token}/revoke", "revokeToken", "Revoke a token now", s.TokenOut),
        _revoke_token,
    ),
    (
        _r("POST", "/tokens/{token}/rotate", "rotateToken", "Replace a token; the old one works "
           "for grace_seconds more", s.TokenCreated, body=s.TokenRotate, status=201),
        _rotate_token,
    ),
    (
        _r("GET", "/events", "listEvents", "List admin events (admin, auditor)", s.EventList,
           query=s.EventsQuery),
        _list_events,
    ),
    (
        _r("GET", "/audit/report", "getAuditReport", "LLM calls grouped by team, provider, "
           "data class, …: requests, tokens, cost, denials (admin, auditor)",
           audit_service.ReportOut, query=audit_service.ReportQuery),
        _audit_report,
    ),
    (
        _r("GET", "/audit/report/tool-calls", "getAuditToolCallReport", "MCP tool calls grouped "
           "by team, server, tool, …: calls, served, denied, cancelled, failed (admin, auditor)",
           audit_service.ToolReportOut, query=audit_service.ToolReportQuery),
        _audit_tool_report,
    ),
    (
        _r("GET", "/audit/events", "listAuditEvents", "Audit records exactly as stored, in "
           "insertion order (admin, auditor)", audit_service.StoredRecordList,
           query=audit_service.EventsQuery),
        _audit_events,
    ),
    (
        _r("GET", "/audit/requests/{request}", "getAuditRequest", "The audit records of one "
           "request id or event id (admin, auditor)", audit_service.StoredRecordList),
        _audit_request,
    ),
    (
        _r("GET", "/audit/traces", "listAuditTraces", "Request traces the caller may read, "
           "newest first, filtered (admins and auditors: all; team managers: their teams'; "
           "everyone: their own)", audit_service.TraceListOut, query=audit_service.TracesQuery),
        _audit_traces,
    ),
    (
        _r("GET", "/audit/traces/{request}", "getAuditTrace", "One request's trace: its "
           "records and their inclusion proof status, if the caller may read it",
           audit_service.TraceOut),
        _audit_trace,
    ),
    (
        _r("GET", "/audit/verify", "verifyAuditLog", "Verify the audit log with the keys in the "
           "database: checkpoints, leaves, roots, consistency, purges (admin, auditor)",
           audit_service.VerifyOut, query=audit_service.VerifyQuery),
        _audit_verify,
    ),
    (
        _r("GET", "/audit/holds", "listAuditHolds", "Legal holds on the audit retention purge "
           "(admin, auditor)", audit_service.HoldList, query=audit_service.HoldsQuery),
        _audit_holds,
    ),
    (
        _r("POST", "/audit/holds", "setAuditHold", "Set a legal hold: suspends the retention "
           "purge for every record or one team's (admin)", audit_service.HoldOut,
           body=audit_service.HoldCreate, status=201),
        _audit_hold_set,
    ),
    (
        _r("POST", "/audit/holds/{hold}/release", "releaseAuditHold", "Release a legal hold "
           "(admin)", audit_service.HoldOut, body=audit_service.HoldRelease),
        _audit_hold_release,
    ),
    (
        _r("GET", "/audit/requests/{request}/content", "getAuditContent", "The captured "
           "content of one request, decrypted after checking it against its record (admin, "
           "auditor)", audit_service.ContentOut),
        _audit_content,
    ),
    (
        _r("POST", "/audit/erase", "eraseAuditContent", "Destroy the content keys of a team or "
           "a principal, and their encrypted content (admin)", audit_service.ErasureOut,
           body=audit_service.EraseIn),
        _audit_erase,
    ),
    (
        _r("GET", "/budgets", "listBudgets", "Budgets: limit, spent, reserved and remaining per "
           "split (admin, auditor; team managers: their teams)", BudgetList, query=BudgetsQuery),
        _list_budgets,
    ),
    (
        _r("GET", "/budgets/{budget}/history", "getBudgetHistory", "One budget's current "
           "period day by day and its last periods, per split, from the spend ledger (as "
           "listBudgets shows it to you)", BudgetHistoryOut),
        _budget_history,
    ),
    (
        _r("GET", "/mcp/credentials", "listMcpCredentials", "Which MCP servers you (admins, "
           "auditors: ?user=) hold a per-user credential for; never the values",
           mcp_credentials.CredentialList, query=mcp_credentials.CredentialsQuery,
           names_objects=True),
        _mcp_credentials,
    ),
    (
        _r("PUT", "/mcp/credentials/{server}", "setMcpCredential", "Set or replace your own "
           "credential for an MCP server with auth per_user; stored encrypted, never shown",
           mcp_credentials.CredentialOut, body=mcp_credentials.CredentialSet),
        _mcp_credential_set,
    ),
    (
        _r("DELETE", "/mcp/credentials/{server}", "deleteMcpCredential", "Delete your own "
           "credential for an MCP server (admins: anyone's, with ?user=)",
           mcp_credentials.CredentialOut, query=mcp_credentials.CredentialsQuery,
           names_objects=True),
        _mcp_credential_delete,
    ),
    (
        _r("GET", "/openapi.json", "getOpenAPI", "This document", OpenAPIDocument, auth=False,
           tag="meta"),
        _no_handler,
    ),
]  # fmt: skip
