"""The admin API in-process (httpx over ASGI), on a real store (SQLite and PostgreSQL), a real
TokenService and a real Directory.

Every test starts from ``custos init`` (``bootstrap``): one admin with one token. Users with
other roles are created through the API, as an operator would.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from custos.admin import bootstrap
from custos.admin.errors import BadInput
from custos.admin.narrowing import check_patterns
from custos.audit.records.record import EVENT_TYPES
from custos.http.admin import PREFIX, ROUTES, AdminAPI
from custos.identity.directory import Directory
from custos.identity.principal import AuthFailure, Principal
from custos.identity.tokens import TokenService
from custos.state.models import Actor
from custos.state.store import Store
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)

KEY = secrets.token_bytes(32)


@dataclass
class Env:
    store: Store
    tokens: TokenService
    directory: Directory
    client: httpx.AsyncClient
    admin: str

    async def call(
        self, method: str, path: str, token: str | None, json: Any = None, **kw: Any
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return await self.client.request(method, PREFIX + path, json=json, headers=headers, **kw)

    async def ok(self, method: str, path: str, token: str, json: Any = None, **kw: Any) -> Any:
        response = await self.call(method, path, token, json, **kw)
        assert response.status_code in (200, 201), response.text
        return response.json()

    async def user(self, email: str, roles: list[str], *, models: list[str] | None = None) -> str:
        """Create a user with ``roles`` and a PAT for them (as the admin); returns the secret."""
        await self.ok("POST", "/users", self.admin, {"email": email, "roles": roles})
        body: dict[str, Any] = {"name": "test", "user": email}
        if models is not None:
            body["models"] = models
        created = await self.ok("POST", "/tokens", self.admin, body)
        await self.directory.reload()
        return str(created["token"])

    async def event_count(self) -> int:
        return len(await self.store.list_admin_events(limit=100_000))


@pytest.fixture
async def env(store: Store) -> AsyncIterator[Env]:  # noqa: F811  (the fixture above)
    tokens = TokenService(store, KEY)
    directory = Directory(store, KEY)
    admin = await bootstrap(store, tokens, "root@example.com")
    await directory.reload()
    api = AdminAPI(lambda: (store, tokens, directory))
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield Env(store, tokens, directory, client, admin.secret)


async def manager_setup(env: Env) -> dict[str, Any]:
    """Teams red and blue, each with an account and a VAT; ``mgr`` manages red only."""
    for team in ("red", "blue"):
        await env.ok("POST", "/teams", env.admin, {"name": team})
        await env.ok(
            "POST",
            "/accounts",
            env.admin,
            {"name": f"{team}-svc", "team": team, "allowed_models": ["azure-eu/*"]},
        )
    mgr = await env.user("mgr@example.com", ["team_manager", "member"])
    await env.ok("POST", "/teams/red/members", env.admin, {"user": "mgr@example.com",
                                                           "role": "manager"})  # fmt: skip
    await env.ok("POST", "/users", env.admin, {"email": "bob@example.com"})
    await env.ok("POST", "/teams/blue/members", env.admin, {"user": "bob@example.com"})
    blue_vat = await env.ok("POST", "/tokens", env.admin, {"name": "b", "account": "blue-svc"})
    return {"mgr": mgr, "blue_vat": blue_vat["record"]["id"]}


# -- authentication -------------------------------------------------------------------------------


async def test_bearer_token_is_required_and_auth_failures_are_401(env: Env) -> None:
    missing = await env.call("GET", "/me", None)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_token"
    assert missing.headers["www-authenticate"] == "Bearer"
    malformed = await env.call("GET", "/me", "cst_pat_nope")
    assert malformed.json()["error"]["code"] == "malformed_token"
    unknown = await env.call("GET", "/me", _fresh_pat())
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (401, "unknown_token")
    me = await env.ok("GET", "/me", env.admin)
    assert me["email"] == "root@example.com"
    assert set(me["roles"]) == {"admin", "member"}
    assert me["token_id"].startswith("tok_")


def _fresh_pat() -> str:
    from custos.identity.tokens import generate

    return generate("pat")


async def test_virtual_accounts_cannot_use_the_admin_api(env: Env) -> None:
    await env.ok("POST", "/teams", env.admin, {"name": "svc"})
    await env.ok("POST", "/accounts", env.admin, {"name": "bot", "team": "svc"})
    vat = await env.ok("POST", "/tokens", env.admin, {"name": "v", "account": "bot"})
    await env.directory.reload()
    response = await env.call("GET", "/me", vat["token"])
    assert response.status_code == 403
    assert "virtual accounts" in response.json()["error"]["message"]


async def test_a_demoted_admin_is_refused_before_the_directory_reloads(env: Env) -> None:
    other = await env.user("second@example.com", ["admin"])
    await env.ok("GET", "/users", other)
    await env.ok("PATCH", "/users/second@example.com", env.admin, {"roles": ["member"]})
    # No directory reload: the API re-reads roles from the store on every call.
    response = await env.call("POST", "/teams", other, {"name": "x"})
    assert response.status_code == 403
    assert "admin role" in response.json()["error"]["message"]


# -- role tests (issue 3, "Must show") ------------------------------------------------------------


async def test_a_member_cannot_create_tokens_for_others(env: Env) -> None:
    alice = await env.user("alice@example.com", ["member"])
    await env.ok("POST", "/users", env.admin, {"email": "carol@example.com"})
    before = await env.event_count()
    for target in ("carol@example.com", "root@example.com"):
        response = await env.call("POST", "/tokens", alice, {"name": "x", "user": target})
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden"
        assert "admin role" in response.json()["error"]["message"]
    assert await env.event_count() == before
    # Her own tokens she manages: create, list, show, rotate, revoke.
    own = await env.ok("POST", "/tokens", alice, {"name": "laptop"})
    assert own["record"]["owner"] == "alice@example.com"
    listed = await env.ok("GET", "/tokens", alice)
    assert {t["owner"] for t in listed["data"]} == {"alice@example.com"}
    token_id = own["record"]["id"]
    await env.ok("GET", f"/tokens/{token_id}", alice)
    await env.ok("POST", f"/tokens/{token_id}/rotate", alice, {"grace_seconds": 0})
    # ... but not anyone else's.
    root_token = (await env.ok("GET", "/me", env.admin))["token_id"]
    # (another user's token is one she may not see: it answers as if there were none)
    assert (await env.call("GET", f"/tokens/{root_token}", alice)).status_code == 404
    assert (await env.call("POST", f"/tokens/{root_token}/revoke", alice)).status_code == 404
    assert (await env.call("GET", "/tokens?user=root@example.com", alice)).status_code == 403
    assert (await env.call("GET", "/events", alice)).status_code == 403
    assert (await env.call("POST", "/teams", alice, {"name": "t"})).status_code == 403


def _blue(ids: dict[str, Any]) -> dict[str, str]:
    """A path placeholder's value naming team blue's objects from ``manager_setup``."""
    return {
        "{user}": "bob@example.com",
        "{team}": "blue",
        "{account}": "blue-svc",
        "{token}": ids["blue_vat"],
    }


def _sample_body(path: str) -> dict[str, Any] | None:
    """A valid body for each mutating route (so only the role can be what refuses it)."""
    bodies: dict[str, dict[str, Any]] = {
        "POST /users": {"email": "new@example.com"},
        "PATCH /users/{user}": {"display_name": "x"},
        "POST /teams": {"name": "newteam"},
        "POST /teams/{team}/members": {"user": "root@example.com"},
        "PATCH /teams/{team}/members/{user}": {"role": "manager"},
        "POST /accounts": {"name": "newacct", "team": "red"},
        "PATCH /accounts/{account}": {"disabled": True},
        "POST /tokens": {"name": "x"},
        "POST /tokens/{token}/rotate": {"grace_seconds": 0},
    }
    return bodies.get(path)


async def test_an_auditor_cannot_change_anything(env: Env) -> None:
    ids = await manager_setup(env)
    auditor = await env.user("audit@example.com", ["auditor"])
    before = await env.event_count()
    mutating = [spec for spec, _ in ROUTES if spec.mutating]
    assert len(mutating) >= 14
    for spec in mutating:
        template = spec.path[len(PREFIX) :]
        path = _fill(template, _blue(ids))
        body = _sample_body(f"{spec.method} {template}")
        response = await env.call(spec.method, path, auditor, body)
        assert response.status_code == 403, f"{spec.method} {path}: {response.text}"
        assert "read-only" in response.json()["error"]["message"]
        # Even a missing object or a bad body is refused for the role first.
        bogus = await env.call(spec.method, path.replace("blue", "nope"), auditor, {"x": 1})
        assert bogus.status_code == 403, f"{spec.method} {path}: {bogus.text}"
    assert await env.event_count() == before
    # Reading everything is what an auditor is for.
    assert len((await env.ok("GET", "/users", auditor))["data"]) == 4
    assert len((await env.ok("GET", "/tokens", auditor))["data"]) >= 4
    assert len((await env.ok("GET", "/accounts", auditor))["data"]) == 2
    assert (await env.ok("GET", "/events", auditor))["data"]
    await env.ok("GET", "/teams/blue", auditor)
    await env.ok("GET", f"/tokens/{ids['blue_vat']}", auditor)


async def test_a_team_manager_cannot_touch_another_team(env: Env) -> None:
    ids = await manager_setup(env)
    mgr = ids["mgr"]
    before = await env.event_count()
    refused = [
        ("POST", "/accounts", {"name": "sneaky", "team": "blue"}),
        ("PATCH", "/accounts/blue-svc", {"disabled": True}),
        ("DELETE", "/accounts/blue-svc", None),
        ("POST", "/tokens", {"name": "x", "account": "blue-svc"}),
        ("POST", f"/tokens/{ids['blue_vat']}/revoke", None),
        ("POST", f"/tokens/{ids['blue_vat']}/rotate", {}),
        ("POST", "/teams/blue/members", {"user": "mgr@example.com"}),
        ("PATCH", "/teams/blue/members/bob@example.com", {"role": "manager"}),
        ("DELETE", "/teams/blue/members/bob@example.com", None),
        ("PATCH", "/accounts/red-svc", {"team": "blue"}),
        ("GET", "/accounts/blue-svc", None),
        ("GET", f"/tokens/{ids['blue_vat']}", None),
        ("GET", "/tokens?account=blue-svc", None),
        ("GET", "/accounts?team=blue", None),
        ("POST", "/teams", {"name": "mine"}),
        ("DELETE", "/teams/red", None),
        ("POST", "/users", {"email": "x@example.com"}),
    ]
    for method, path, body in refused:
        response = await env.call(method, path, mgr, body)
        # 404 for what the manager may not see (as if it did not exist), 403 for the rest.
        assert response.status_code in (403, 404), f"{method} {path}: {response.text}"
    assert await env.event_count() == before
    # Their own team they manage: accounts, VATs, members.
    await env.ok("POST", "/accounts", mgr, {"name": "red-two", "team": "red"})
    vat = await env.ok("POST", "/tokens", mgr, {"name": "deploy", "account": "red-svc"})
    assert vat["token"].startswith("cst_vat_")
    await env.ok("POST", "/users", env.admin, {"email": "dave@example.com"})
    await env.ok("POST", "/teams/red/members", mgr, {"user": "dave@example.com"})
    await env.ok("POST", f"/tokens/{vat['record']['id']}/revoke", mgr)
    listed = await env.ok("GET", "/accounts", mgr)
    assert {a["name"] for a in listed["data"]} == {"red-svc", "red-two"}
    tokens = await env.ok("GET", "/tokens", mgr)
    assert {t["owner"] for t in tokens["data"]} == {"red-svc", "mgr@example.com"}
    events = await env.store.list_admin_events(after_id=0, limit=100_000)
    assert events[-1].actor_role == "team_manager"
    assert events[-1].actor.startswith("user:usr_")


async def test_a_team_manager_adds_only_users_of_no_other_team_and_no_admin(env: Env) -> None:
    ids = await manager_setup(env)
    mgr = ids["mgr"]
    await env.ok("POST", "/users", env.admin, {"email": "dave@example.com"})
    before = await env.event_count()
    # bob is in blue, root is an admin: neither can a manager of red add, and to the manager
    # they look exactly like a user who does not exist.
    ghost = await env.call("POST", "/teams/red/members", mgr, {"user": "ghost@example.com"})
    assert ghost.status_code == 404
    for user in ("bob@example.com", "root@example.com"):
        response = await env.call("POST", "/teams/red/members", mgr, {"user": user})
        assert _answer(response, user) == _answer(ghost, "ghost@example.com"), response.text
        listed = await env.call("GET", f"/users/{user}", mgr)
        assert listed.status_code == 404, listed.text
    assert await env.event_count() == before
    members = await env.ok("GET", "/teams/red/members", env.admin)
    assert {m["email"] for m in members["data"]} == {"mgr@example.com"}
    # A user in no team, without the admin role, they may add.
    await env.ok("POST", "/teams/red/members", mgr, {"user": "dave@example.com"})
    # Users the manager sees (members of red) but who are in another team, or admins, need an
    # admin to join another of the manager's teams.
    await env.ok("POST", "/teams", env.admin, {"name": "green"})
    await env.ok("POST", "/teams/green/members", env.admin, {"user": "mgr@example.com",
                                                             "role": "manager"})  # fmt: skip
    await env.ok("POST", "/teams/red/members", env.admin, {"user": "bob@example.com"})
    await env.ok("POST", "/teams/red/members", env.admin, {"user": "root@example.com"})
    await env.directory.reload()
    # bob is theirs to read now, but only his memberships of teams the manager is in.
    shown = await env.ok("GET", "/users/bob@example.com", mgr)
    assert {m["team"] for m in shown["memberships"]} == {"red"}
    before = await env.event_count()
    for user in ("bob@example.com", "root@example.com"):
        response = await env.call("POST", "/teams/green/members", mgr, {"user": user})
        assert response.status_code == 403, response.text
        assert "admin role" in response.json()["error"]["message"]
    assert await env.event_count() == before
    # dave is in red only, which the manager manages: green is theirs to give him.
    await env.ok("POST", "/teams/green/members", mgr, {"user": "dave@example.com"})


def _answer(response: httpx.Response, *refs: str) -> tuple[int, str, str]:
    """A response's status, error code and message, with the object names it was asked about
    masked (so the answers for two different names compare)."""
    error = response.json()["error"]
    message = error["message"]
    for ref in sorted(refs, key=len, reverse=True):  # blue-svc before blue
        message = message.replace(ref, "<ref>")
    return response.status_code, error["code"], message


_MISSING = {
    "{user}": "ghost@example.com",
    "{team}": "ghosts",
    "{account}": "ghost-svc",
    "{token}": "tok_00000000000000000000",
}


def _fill(template: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template


async def test_objects_outside_the_callers_rights_answer_as_if_missing(env: Env) -> None:
    ids = await manager_setup(env)
    alice = await env.user("alice@example.com", ["member"])
    hidden = _blue(ids)
    pairs = [(hidden, _MISSING), ({**hidden, "{team}": "red"}, {**_MISSING, "{team}": "red"})]
    # Every route naming an object in its path ...
    requests: list[tuple[str, str, Any]] = []
    for spec, _ in ROUTES:
        template = spec.path[len(PREFIX) :]
        if spec.path_params:
            requests.append((spec.method, template, _sample_body(f"{spec.method} {template}")))
    # ... or in its query or body.
    requests += [
        ("POST", "/accounts", {"name": "n", "team": "{team}"}),
        ("PATCH", "/accounts/red-svc", {"team": "{team}"}),
        ("POST", "/tokens", {"name": "t", "account": "{account}"}),
        ("POST", "/tokens", {"name": "t", "user": "{user}"}),
        ("POST", "/teams/red/members", {"user": "{user}"}),
        ("GET", "/accounts?team={team}", None),
        ("GET", "/tokens?account={account}", None),
        ("GET", "/tokens?user={user}", None),
    ]
    before = await env.event_count()
    for caller in (ids["mgr"], alice):
        for method, template, body in requests:
            for existing, missing in pairs:
                calls = [
                    (_fill(template, values), _fill(orjson.dumps(body).decode(), values), values)
                    for values in (existing, missing)
                ]
                if calls[0][:2] == calls[1][:2]:
                    continue  # the route names nothing that differs between the two
                answers = []
                for path, filled, values in calls:
                    response = await env.call(method, path, caller, orjson.loads(filled))
                    assert response.status_code in (403, 404), response.text
                    answers.append(_answer(response, *values.values()))
                assert answers[0] == answers[1], (method, template, answers)
    assert await env.event_count() == before


async def test_a_narrowed_token_grants_nothing_beyond_its_narrowing(env: Env) -> None:
    await manager_setup(env)
    await env.ok("POST", "/accounts", env.admin, {"name": "red-wide", "team": "red",
                                                  "allowed_models": ["*"]})  # fmt: skip
    await env.ok("PATCH", "/accounts/red-wide", env.admin, {"disabled": True})
    wide_vat = await env.ok("POST", "/tokens", env.admin, {"name": "w", "account": "red-svc"})
    narrow = ["azure-eu/gpt-5.5"]
    manager = await env.ok(
        "POST", "/tokens", env.admin, {"name": "n", "user": "mgr@example.com", "models": narrow}
    )
    admin = await env.ok("POST", "/tokens", env.admin, {"name": "n", "models": narrow})
    await env.directory.reload()
    mgr, narrow_admin = manager["token"], admin["token"]
    refused: list[tuple[str, str, Any]] = [
        ("PATCH", "/accounts/red-svc", {"allowed_models": ["*"]}),
        ("PATCH", "/accounts/red-svc", {"allowed_models": ["openai-main/gpt-5.5"]}),
        ("POST", "/accounts", {"name": "red-3", "team": "red", "allowed_models": ["*"]}),
        ("PATCH", "/accounts/red-wide", {"disabled": False}),  # enabling grants "*" again
        ("POST", "/tokens", {"name": "v", "account": "red-svc"}),  # the account's azure-eu/*
        ("POST", "/tokens", {"name": "v", "account": "red-svc", "models": ["azure-eu/*"]}),
        ("POST", f"/tokens/{wide_vat['record']['id']}/rotate", {}),
        ("POST", "/tokens", {"name": "p"}),
    ]
    admin_refused: list[tuple[str, str, Any]] = [
        ("POST", "/tokens", {"name": "p", "user": "bob@example.com"}),
        ("POST", f"/tokens/{manager['record']['id']}/rotate", {}),  # within: allowed below
        ("POST", f"/tokens/{wide_vat['record']['id']}/rotate", {}),
    ]
    before = await env.event_count()
    for token, calls in ((mgr, refused), (narrow_admin, refused + admin_refused[:1])):
        for method, path, body in calls:
            response = await env.call(method, path, token, body)
            assert response.status_code == 403, f"{method} {path}: {response.text}"
            assert "narrowed" in response.json()["error"]["message"] or (
                "outside the models of the token" in response.json()["error"]["message"]
            )
    response = await env.call(*admin_refused[2][:2], narrow_admin, admin_refused[2][2])
    assert response.status_code == 403, response.text
    assert await env.event_count() == before
    # Within the narrowing, the same calls work.
    await env.ok("PATCH", "/accounts/red-svc", mgr, {"allowed_models": narrow})
    await env.ok("POST", "/accounts", mgr, {"name": "red-3", "team": "red",
                                            "allowed_models": narrow})  # fmt: skip
    vat = await env.ok("POST", "/tokens", mgr, {"name": "v", "account": "red-svc"})
    # Narrowed to the account's models as they are now: widening the account later does not
    # widen a token a narrowed caller minted.
    assert vat["record"]["allowed_models"] == narrow
    await env.ok("POST", f"/tokens/{vat['record']['id']}/rotate", mgr, {})
    await env.ok("PATCH", "/accounts/red-wide", mgr, {"disabled": True})
    created = await env.ok(
        "POST", "/tokens", narrow_admin, {"name": "p", "user": "bob@example.com", "models": narrow}
    )
    assert created["record"]["allowed_models"] == narrow
    await env.ok("POST", f"/tokens/{manager['record']['id']}/rotate", narrow_admin, {})


async def test_the_team_manager_role_alone_manages_no_team(env: Env) -> None:
    await env.ok("POST", "/teams", env.admin, {"name": "red"})
    lone = await env.user("lone@example.com", ["team_manager"])
    await env.ok("POST", "/teams/red/members", env.admin, {"user": "lone@example.com"})
    response = await env.call("POST", "/accounts", lone, {"name": "a", "team": "red"})
    assert response.status_code == 403
    assert "manager membership of team 'red'" in response.json()["error"]["message"]


# -- validation -----------------------------------------------------------------------------------


async def test_validation_errors_are_400_naming_the_field(env: Env) -> None:
    await env.ok("POST", "/teams", env.admin, {"name": "red"})
    await env.ok("POST", "/accounts", env.admin, {"name": "bot", "team": "red",
                                                   "allowed_models": ["azure-eu/*"]})  # fmt: skip
    cases: list[tuple[str, str, Any, str | None]] = [
        ("POST", "/users", {"email": "a@b.c", "colour": "red"}, "colour"),
        ("POST", "/users", {"email": "not-an-email"}, "email"),
        ("POST", "/users", {}, "email"),
        ("POST", "/users", {"email": "a@b.c", "roles": ["superuser"]}, "roles.0"),
        ("PATCH", "/users/root@example.com", {"disabled": "yes"}, "disabled"),
        ("POST", "/teams", {"name": "has space"}, "name"),
        ("POST", "/teams", {"name": 5}, "name"),
        ("POST", "/teams/red/members", {"user": "root@example.com", "role": "boss"}, "role"),
        ("POST", "/accounts", {"name": "x", "team": "red", "allowed_models": ["a?b"]},
         "allowed_models"),
        ("POST", "/tokens", {"name": "t", "models": []}, "models"),
        ("POST", "/tokens", {"name": "t", "models": ["gpt-[45]"]}, "models"),
        ("POST", "/tokens", {"name": "t", "expires_in_days": 0}, "expires_in_days"),
        ("POST", "/tokens", {"name": "t", "expires_in_days": "7"}, "expires_in_days"),
        ("POST", "/tokens", {"name": "t", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ("POST", "/tokens", {"name": "t", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ("POST", "/tokens", {"name": "t", "expires_at": "2030-01-01T00:00:00Z",
                             "expires_in_days": 3}, "expires_in_days"),
        ("POST", "/tokens", {"name": "t", "account": "bot", "models": ["openai-main/*"]},
         "models"),
        ("POST", "/tokens", {"name": "t", "user": "root@example.com", "account": "bot"},
         "account"),
        ("GET", "/events?limit=0", None, "limit"),
        # A cursor past 64 bits would overflow the store's integer (found by schemathesis).
        ("GET", f"/events?after={2**63}", None, "after"),
        ("GET", f"/audit/events?after={2**63}", None, "after"),
        ("GET", "/events?colour=red", None, "colour"),
        ("GET", "/users?x=1", None, "x"),
    ]  # fmt: skip
    before = await env.event_count()
    for method, path, body, param in cases:
        response = await env.call(method, path, env.admin, body)
        assert response.status_code == 400, f"{method} {path} {body}: {response.text}"
        error = response.json()["error"]
        assert error["param"] == param, f"{method} {path} {body}: {error}"
        assert error["type"] == "invalid_request_error"
        assert param.split(".")[0] in error["message"]
    assert await env.event_count() == before


async def test_bad_bodies_routes_and_methods(env: Env) -> None:
    raw = {"authorization": f"Bearer {env.admin}", "content-type": "application/json"}
    bad_json = await env.client.post(f"{PREFIX}/teams", content=b"{nope", headers=raw)
    assert (bad_json.status_code, bad_json.json()["error"]["code"]) == (400, "invalid_json")
    not_object = await env.client.post(f"{PREFIX}/teams", content=b"[1]", headers=raw)
    assert not_object.status_code == 400
    assert "JSON object" in not_object.json()["error"]["message"]
    text = {"authorization": f"Bearer {env.admin}", "content-type": "text/plain"}
    wrong_type = await env.client.post(f"{PREFIX}/teams", content=b'{"name":"a"}', headers=text)
    assert wrong_type.status_code == 415
    huge = await env.client.post(
        f"{PREFIX}/teams", content=b'{"name":"' + b"a" * (1 << 20) + b'"}', headers=raw
    )
    assert (huge.status_code, huge.json()["error"]["code"]) == (413, "request_too_large")
    method = await env.call("PUT", "/teams", env.admin, {"name": "a"})
    assert method.status_code == 405
    assert method.headers["allow"] == "GET, POST"
    unknown = await env.call("GET", "/nothing/here", env.admin)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_route")
    # A body-less rotate is fine: every field has a default.
    own = await env.ok("POST", "/tokens", env.admin, {"name": "spare"})
    rotated = await env.client.post(
        f"{PREFIX}/tokens/{own['record']['id']}/rotate",
        headers={"authorization": f"Bearer {env.admin}"},
    )
    assert rotated.status_code == 201, rotated.text
    assert rotated.json()["replaced"]["grace_until"] is not None


async def test_not_found_and_conflicts(env: Env) -> None:
    missing = [
        ("GET", "/users/nobody@example.com"),
        ("GET", "/users/usr_00000000000000000000"),
        ("GET", "/teams/ghosts"),
        ("GET", "/accounts/ghost"),
        ("GET", "/tokens/tok_00000000000000000000"),
        ("POST", "/tokens/tok_00000000000000000000/revoke"),
        ("DELETE", "/teams/ghosts"),
    ]
    for method, path in missing:
        response = await env.call(method, path, env.admin)
        assert response.status_code == 404, f"{method} {path}: {response.text}"
        assert response.json()["error"]["code"] == "not_found"
    await env.ok("POST", "/teams", env.admin, {"name": "red"})
    await env.ok("POST", "/accounts", env.admin, {"name": "bot", "team": "red"})
    conflicts: list[tuple[str, str, Any]] = [
        ("POST", "/teams", {"name": "red"}),
        ("POST", "/users", {"email": "ROOT@example.com"}),
        ("POST", "/accounts", {"name": "bot", "team": "red"}),
        ("DELETE", "/teams/red", None),  # owns an account
        ("DELETE", "/users/root@example.com", None),  # the only admin
        ("PATCH", "/users/root@example.com", {"roles": ["member"]}),
        ("PATCH", "/users/root@example.com", {"disabled": True}),
    ]
    for method, path, body in conflicts:
        response = await env.call(method, path, env.admin, body)
        assert response.status_code == 409, f"{method} {path}: {response.text}"
        assert response.json()["error"]["code"] == "conflict"
    created = await env.ok("POST", "/tokens", env.admin, {"name": "x"})
    await env.ok("POST", f"/tokens/{created['record']['id']}/revoke", env.admin)
    again = await env.call("POST", f"/tokens/{created['record']['id']}/revoke", env.admin)
    assert again.status_code == 409
    rotate = await env.call("POST", f"/tokens/{created['record']['id']}/rotate", env.admin, {})
    assert rotate.status_code == 409
    # A team from the config file cannot be deleted through the API.
    await env.store.create_team(Actor.system("config"), name="gitops", source="config")
    response = await env.call("DELETE", "/teams/gitops", env.admin)
    assert response.status_code == 409
    assert "config file" in response.json()["error"]["message"]


async def test_a_failed_request_leaves_nothing_behind(env: Env) -> None:
    await env.ok("POST", "/teams", env.admin, {"name": "red"})
    before = await env.event_count()
    failing: list[tuple[str, str, Any, int]] = [
        ("POST", "/teams/red/members", {"user": "ghost@example.com"}, 404),
        ("POST", "/teams/blue/members", {"user": "root@example.com"}, 404),
        ("POST", "/accounts", {"name": "bot", "team": "blue"}, 404),
        ("POST", "/tokens", {"name": "t", "account": "nobot"}, 404),
        ("POST", "/tokens", {"name": "t", "user": "ghost@example.com"}, 404),
        ("POST", "/tokens", {"name": "t", "models": ["bad model"]}, 400),
        ("POST", "/users", {"email": "x@example.com", "roles": ["root"]}, 400),
    ]
    for method, path, body, status in failing:
        response = await env.call(method, path, env.admin, body)
        assert response.status_code == status, f"{method} {path}: {response.text}"
    assert await env.event_count() == before
    assert (await env.ok("GET", "/teams/red/members", env.admin))["data"] == []
    assert len((await env.ok("GET", "/users", env.admin))["data"]) == 1
    assert len((await env.ok("GET", "/tokens", env.admin))["data"]) == 1
    assert (await env.ok("GET", "/accounts", env.admin))["data"] == []


# -- tokens ---------------------------------------------------------------------------------------


async def test_a_token_secret_is_shown_once_and_never_again(env: Env) -> None:
    await env.ok("POST", "/teams", env.admin, {"name": "red"})
    await env.ok("POST", "/accounts", env.admin, {"name": "bot", "team": "red",
                                                   "allowed_models": ["azure-eu/*"]})  # fmt: skip
    pat = await env.ok("POST", "/tokens", env.admin, {"name": "ci", "expires_in_days": 30})
    vat = await env.ok(
        "POST", "/tokens", env.admin, {"name": "svc", "account": "bot", "models": ["azure-eu/x"]}
    )
    rotated = await env.ok("POST", f"/tokens/{pat['record']['id']}/rotate", env.admin, {})
    secrets_ = [pat["token"], vat["token"], rotated["token"]]
    assert pat["token"].startswith("cst_pat_") and vat["token"].startswith("cst_vat_")
    assert "only time" in pat["warning"]
    assert pat["record"]["prefix"] == pat["token"][:12]
    assert vat["record"]["allowed_models"] == ["azure-eu/x"]
    pages = [
        await env.call("GET", "/tokens", env.admin),
        await env.call("GET", f"/tokens/{pat['record']['id']}", env.admin),
        await env.call("GET", f"/tokens/{vat['record']['id']}", env.admin),
        await env.call("GET", "/events?limit=1000", env.admin),
        await env.call("GET", "/me", env.admin),
        await env.call("GET", "/accounts/bot", env.admin),
    ]
    for page in pages:
        assert page.status_code == 200
        for secret in secrets_:
            assert secret not in page.text
            assert secret[12:] not in page.text  # not even the part after the prefix
        assert "token_hash" not in page.text
    for event in await env.store.list_admin_events(limit=100_000):
        dumped = orjson.dumps([event.before, event.after]).decode()
        assert not any(secret in dumped for secret in secrets_)


async def test_rotation_and_revocation_reach_the_directory(env: Env) -> None:
    alice = await env.user("alice@example.com", ["member"])
    first = await env.ok("POST", "/tokens", alice, {"name": "laptop"})
    await env.directory.reload()
    assert isinstance(env.directory.lookup(first["token"]), Principal)

    graceful = await env.ok(
        "POST", f"/tokens/{first['record']['id']}/rotate", alice, {"grace_seconds": 600}
    )
    await env.directory.reload()
    assert isinstance(env.directory.lookup(first["token"]), Principal)  # in its grace period
    assert isinstance(env.directory.lookup(graceful["token"]), Principal)
    assert graceful["record"]["rotated_from"] == first["record"]["id"]

    sharp = await env.ok(
        "POST", f"/tokens/{graceful['record']['id']}/rotate", alice, {"grace_seconds": 0}
    )
    await env.directory.reload()
    old = env.directory.lookup(graceful["token"])
    assert isinstance(old, AuthFailure) and old.code == "revoked_token"
    assert isinstance(env.directory.lookup(sharp["token"]), Principal)
    listed = {t["id"]: t["state"] for t in (await env.ok("GET", "/tokens", alice))["data"]}
    assert listed[graceful["record"]["id"]] == "rotated"
    assert listed[first["record"]["id"]] == "rotating"  # replaced, in its grace period

    revoked = await env.ok("POST", f"/tokens/{sharp['record']['id']}/revoke", env.admin)
    assert revoked["state"] == "revoked" and revoked["revoked_at"]
    # The admin API refuses it at once (it re-reads the token), the directory after a reload.
    response = await env.call("GET", "/me", sharp["token"])
    assert (response.status_code, response.json()["error"]["code"]) == (401, "revoked_token")
    await env.directory.reload()
    gone = env.directory.lookup(sharp["token"])
    assert isinstance(gone, AuthFailure) and gone.code == "revoked_token"


async def test_a_narrowed_token_cannot_mint_a_broader_one(env: Env) -> None:
    narrow = await env.user("n@example.com", ["member"], models=["azure-eu/*"])
    broad = await env.call("POST", "/tokens", narrow, {"name": "broad"})
    assert broad.status_code == 403
    outside = await env.call("POST", "/tokens", narrow, {"name": "o", "models": ["openai/*"]})
    assert outside.status_code == 403
    inside = await env.ok("POST", "/tokens", narrow, {"name": "i", "models": ["azure-eu/gpt"]})
    assert inside["record"]["allowed_models"] == ["azure-eu/gpt"]


async def test_admin_issues_tokens_for_others_with_expiry(env: Env) -> None:
    await env.ok("POST", "/users", env.admin, {"email": "dana@example.com", "roles": []})
    created = await env.ok(
        "POST",
        "/tokens",
        env.admin,
        {"name": "d", "user": "dana@example.com", "expires_at": "2031-02-03T04:05:06+02:00"},
    )
    assert created["record"]["owner"] == "dana@example.com"
    assert created["record"]["expires_at"].startswith("2031-02-03T02:05:06")
    await env.directory.reload()
    # Dana has no role: she may read herself, and nothing else.
    me = await env.ok("GET", "/me", created["token"])
    assert me["roles"] == []
    assert (await env.call("GET", "/tokens", created["token"])).status_code == 403
    assert (await env.call("POST", "/tokens", created["token"], {"name": "x"})).status_code == 403


# -- reads ----------------------------------------------------------------------------------------


async def test_names_and_ids_both_address_objects(env: Env) -> None:
    team = await env.ok("POST", "/teams", env.admin, {"name": "red"})
    user = await env.ok("POST", "/users", env.admin, {"email": "Eve@Example.com"})
    await env.ok("POST", f"/teams/{team['id']}/members", env.admin, {"user": user["id"]})
    by_name = await env.ok("GET", "/teams/red", env.admin)
    by_id = await env.ok("GET", f"/teams/{team['id']}", env.admin)
    assert by_name == by_id
    assert by_name["members"][0]["email"] == "Eve@Example.com"
    shown = await env.ok("GET", "/users/eve@example.com", env.admin)
    assert shown["id"] == user["id"]
    assert shown["memberships"][0]["team"] == "red"
    await env.ok("PATCH", f"/teams/red/members/{user['id']}", env.admin, {"role": "manager"})
    removed = await env.ok("DELETE", "/teams/red/members/eve@example.com", env.admin)
    assert removed["role"] == "manager"


async def test_events_page_with_a_cursor_and_filters(env: Env) -> None:
    for name in ("a", "b", "c"):
        await env.ok("POST", "/teams", env.admin, {"name": name})
    first = await env.ok("GET", "/events?limit=2", env.admin)
    assert len(first["data"]) == 2 and first["next_after"] == first["data"][-1]["id"]
    rest = await env.ok("GET", f"/events?after={first['next_after']}", env.admin)
    assert rest["next_after"] is None
    teams = await env.ok("GET", "/events?target_type=team", env.admin)
    assert [e["action"] for e in teams["data"]] == ["team.create"] * 3
    assert teams["data"][0]["actor"].startswith("user:usr_")
    assert teams["data"][0]["after"]["name"] == "a"


# -- the OpenAPI document -------------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def _openapi(env: Env) -> dict[str, Any]:
    response = await env.call("GET", "/openapi.json", None)  # no token needed
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


async def test_the_openapi_document_is_valid_and_complete(env: Env) -> None:
    document = await _openapi(env)
    assert document["openapi"] == "3.1.0"
    for spec, _ in ROUTES:
        operation = document["paths"][spec.path][spec.method.lower()]
        assert str(spec.status) in operation["responses"]
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    assert "token" in schemas["TokenCreated"]["properties"]
    assert "token" not in schemas["TokenOut"]["properties"]
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


async def test_list_filters_naming_unknown_objects_answer_a_documented_404(env: Env) -> None:
    # Found by schemathesis: ?team= and ?user= name objects, and an unknown one is a 404 that
    # the document did not list.
    document = await _openapi(env)
    for path, query in (
        ("/accounts", "team=nobody"),
        ("/tokens", "user=nobody@example.com"),
        ("/tokens", "account=nothing"),
        ("/accounts", "team="),
    ):
        response = await env.call("GET", f"{path}?{query}", env.admin)
        assert response.status_code == 404, (path, query, response.text)
        assert response.json()["error"]["code"] == "not_found"
        assert "404" in document["paths"]["/admin/v1" + path]["get"]["responses"]
    # A list without such a parameter never looks anything up, nor does a creation whose body
    # names nothing; one whose body names an object lists the 404 it answers when it is missing.
    paths = document["paths"]
    assert "404" not in paths["/admin/v1/users"]["get"]["responses"]
    for path in ("/users", "/teams", "/audit/holds", "/audit/erase"):
        assert "404" not in paths["/admin/v1" + path]["post"]["responses"], path
    for path, body in (("/accounts", {"name": "a", "team": "nope"}),
                       ("/tokens", {"name": "t", "account": "nope"})):  # fmt: skip
        assert "404" in paths["/admin/v1" + path]["post"]["responses"], path
        assert (await env.call("POST", path, env.admin, body)).status_code == 404


async def test_query_parameters_say_which_values_are_valid(env: Env) -> None:
    # What a client (or a generated test) needs to send a value the server accepts.
    document = await _openapi(env)

    def parameter(path: str, name: str) -> dict[str, Any]:
        params = document["paths"]["/admin/v1" + path]["get"]["parameters"]
        return next(p["schema"] for p in params if p["name"] == name)

    assert parameter("/audit/events", "event_type")["enum"] == sorted(EVENT_TYPES)
    for path in ("/audit/report", "/audit/report/tool-calls", "/audit/events", "/audit/verify"):
        for name in ("from", "to"):
            schema = parameter(path, name)
            assert {o["format"] for o in schema["anyOf"]} == {"date", "date-time"}
            assert "default" not in schema


async def test_a_body_is_required_exactly_where_the_router_requires_one(env: Env) -> None:
    document = await _openapi(env)
    paths = document["paths"]
    assert paths["/admin/v1/users"]["post"]["requestBody"]["required"] is True
    assert paths["/admin/v1/users/{user}"]["patch"]["requestBody"]["required"] is False
    # Nothing in a user update is required: no body is an update that changes nothing (and so
    # records no admin event).
    me = await env.ok("GET", "/me", env.admin)
    before = await env.event_count()
    auth = {"authorization": f"Bearer {env.admin}"}
    response = await env.client.patch(PREFIX + f"/users/{me['id']}", headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["roles"] == me["roles"]
    # A user creation needs its email: no body is refused and creates nothing.
    response = await env.client.post(PREFIX + "/users", headers=auth)
    assert response.status_code == 415, response.text
    assert await env.event_count() == before


def test_narrowings_can_name_every_kind_of_model_name() -> None:
    # Underscores are common in model names (Ollama tags, virtual models, the mock's options).
    served = [
        "local/llama3.1:8b-instruct-q4_K_M",
        "chat_default",
        "openai-main/gpt-5.5+latency_ms=5000",
        "vertex/claude-sonnet-4.5@20250929",
        "bedrock/anthropic.claude-v2:1",
    ]
    assert check_patterns(served, "models", known=lambda: served) == tuple(served)
    assert check_patterns(["local/*_K_M"], "models", known=lambda: served) == ("local/*_K_M",)
    for refused in ("a?b", "gpt-[45]", "has space", "é-model", "/leading-slash", ""):
        with pytest.raises(BadInput):
            check_patterns([refused], "models")


async def test_the_last_enabled_admin_cannot_be_demoted_disabled_or_deleted(env: Env) -> None:
    before = await env.event_count()
    for method, body in (
        ("PATCH", {"roles": ["member"]}),
        ("PATCH", {"disabled": True}),
        ("DELETE", None),
    ):
        response = await env.call(method, "/users/root@example.com", env.admin, body)
        assert response.status_code == 409, (method, body, response.text)
        assert "only enabled admin" in response.json()["error"]["message"]
    assert await env.event_count() == before
    # With a second enabled admin, the first may step down.
    await env.ok("POST", "/users", env.admin, {"email": "ops@example.com", "roles": ["admin"]})
    demoted = await env.ok("PATCH", "/users/root@example.com", env.admin, {"roles": ["member"]})
    assert demoted["roles"] == ["member"]


async def test_only_admins_and_auditors_read_the_reports(env: Env) -> None:
    """The model-call and the tool-call report: the same rights (admin, auditor)."""
    member = await env.user("member@example.com", ["member"])
    manager = await env.user("manager@example.com", ["team_manager"])
    auditor = await env.user("auditor@example.com", ["auditor"])
    for path in ("/audit/report", "/audit/report/tool-calls"):
        query = f"{path}?from=2026-07-01&to=2026-09-30"
        for token in (member, manager):
            response = await env.call("GET", query, token)
            assert response.status_code == 403, response.text
            assert "admin or auditor role" in response.json()["error"]["message"]
        for token in (auditor, env.admin):
            assert (await env.ok("GET", query, token))["totals"]
    bad = await env.call("GET", "/audit/report/tool-calls?from=2026-07-01&to=2026-09-30"
                         "&group_by=provider", auditor)  # fmt: skip
    assert bad.status_code == 400 and "cannot group by 'provider'" in bad.text
