"""``auth: {type: per_user}``: each user's own credential for an MCP server, stored encrypted.

The storage part runs on SQLite and PostgreSQL: the value is sealed (AES-256-GCM, bound to its
user and server), never in the table, the admin events or the listing in clear; a row moved to
another user or server does not decrypt; a key change makes rows unreadable, not wrong;
deleting the user deletes their credentials; a second replica's cache follows a change through
the invalidation channel. The end-to-end part runs the official ``mcp`` SDK through
``custos serve`` to a FastMCP tool server that accepts several users' tokens and says whose
arrived: two users reach it as themselves, a user without a credential gets
``mcp_credential_missing`` (and a record), a rotated credential takes effect at once, a member
cannot touch another user's, an admin deletes anyone's but reads none; the value never appears
in the store file, the log, the admin events or the audit records.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from mcp import ClientSession, McpError

from custos.config import ConfigError, parse_config
from custos.errors import GatewayError
from custos.identity.principal import Principal
from custos.mcp.credentials import per_user_credential
from custos.mcp.upstream import auth_headers
from custos.state.backends import open_store
from custos.state.invalidation import Invalidation, MemoryInvalidation, PostgresInvalidation
from custos.state.mcp_credentials import (
    CredentialCache,
    CredentialCipher,
    CredentialUnreadable,
    delete_credential,
    list_credentials,
    put_credential,
)
from custos.state.models import Actor
from custos.state.store import Store
from tests.conftest import CUSTOS, ROOT, GatewayProcess
from tests.store_fixtures import PG_URL, store, store_url  # noqa: F401  (fixtures)
from tests.test_mcp_gateway import ToolServer, record_where, run_session, text_of

KEY = b"k" * 48
ANN_SECRET = "ann-credential-4f9c2e71b8d3"
ANN_ROTATED = "ann-rotated-credential-93ad51"
BOB_SECRET = "bob-credential-0c7e5f2a91b4"
ACTOR = Actor.system("tests")


# -- storage, both dialects ------------------------------------------------------------------------


async def _user(db: Store, email: str) -> str:
    return (await db.create_user(ACTOR, email=email)).id


async def _raw_rows(db: Store) -> list[dict[str, Any]]:
    async with db.transaction(readonly=True) as tx:
        return await tx.fetch("SELECT * FROM mcp_credentials ORDER BY principal_id")


async def test_a_credential_is_sealed_bound_to_its_user_and_server(store: Store) -> None:  # noqa: F811
    cipher = CredentialCipher(KEY)
    ann, bob = await _user(store, "ann@example.com"), await _user(store, "bob@example.com")
    info, created = await put_credential(store, ACTOR, cipher, ann, "jira", ANN_SECRET)
    assert created and info.server == "jira" and info.principal_id == ann

    rows = await _raw_rows(store)
    assert len(rows) == 1
    blob = bytes(rows[0]["ciphertext"])
    assert ANN_SECRET.encode() not in blob and ANN_SECRET not in repr(rows)
    assert cipher.open(ann, "jira", blob, rows[0]["key_id"]) == ANN_SECRET
    with pytest.raises(CredentialUnreadable):  # copied to another user
        cipher.open(bob, "jira", blob, rows[0]["key_id"])
    with pytest.raises(CredentialUnreadable):  # or to another server
        cipher.open(ann, "github", blob, rows[0]["key_id"])
    with pytest.raises(CredentialUnreadable, match="another key"):
        CredentialCipher(b"x" * 48).open(ann, "jira", blob, rows[0]["key_id"])

    again, created = await put_credential(store, ACTOR, cipher, ann, "jira", ANN_ROTATED)
    assert not created and again.created_at == info.created_at
    assert again.updated_at >= info.updated_at
    assert bytes((await _raw_rows(store))[0]["ciphertext"]) != blob  # a fresh nonce each time

    listed = await list_credentials(store, ann)
    assert [(i.principal_id, i.server) for i in listed] == [(ann, "jira")]
    events = await store.list_admin_events(target_type="mcp_credential")
    assert [e.action for e in events] == ["mcp_credential.set", "mcp_credential.set"]
    assert events[0].target_id == f"{ann}/jira"
    dumped = repr(events)
    assert ANN_SECRET not in dumped and ANN_ROTATED not in dumped

    await delete_credential(store, ACTOR, ann, "jira")
    assert await _raw_rows(store) == []
    assert (await store.list_admin_events(target_type="mcp_credential"))[-1].action == (
        "mcp_credential.delete"
    )


async def test_bad_values_and_unknown_users_are_refused_and_change_nothing(store: Store) -> None:  # noqa: F811
    from custos.state.errors import Invalid, NotFound

    cipher = CredentialCipher(KEY)
    ann = await _user(store, "ann@example.com")
    for bad in ("", "two\nlines", " padded", "x" * 8193, "caf\u00e9"):
        with pytest.raises(Invalid) as caught:
            await put_credential(store, ACTOR, cipher, ann, "jira", bad)
        assert bad not in str(caught.value) or not bad
    with pytest.raises(NotFound):
        await put_credential(store, ACTOR, cipher, "usr_nobody", "jira", ANN_SECRET)
    with pytest.raises(NotFound):
        await delete_credential(store, ACTOR, ann, "jira")
    assert await _raw_rows(store) == []


async def test_deleting_the_user_deletes_their_credentials(store: Store) -> None:  # noqa: F811
    cipher = CredentialCipher(KEY)
    ann, bob = await _user(store, "ann@example.com"), await _user(store, "bob@example.com")
    await put_credential(store, ACTOR, cipher, ann, "jira", ANN_SECRET)
    await put_credential(store, ACTOR, cipher, ann, "github", ANN_ROTATED)
    await put_credential(store, ACTOR, cipher, bob, "jira", BOB_SECRET)
    await store.delete_user(ACTOR, ann)
    assert [(r["principal_id"], r["server"]) for r in await _raw_rows(store)] == [(bob, "jira")]


async def test_the_cache_of_another_replica_follows_changes(store_url: str) -> None:  # noqa: F811
    """Two stores on one database, as two replicas: a change made through one is in the
    other's cache once announced (on PostgreSQL through LISTEN/NOTIFY, as between processes),
    and in the writer's own before the call returns."""
    if store_url.startswith("postgresql"):
        name = f"custos_test_{secrets.token_hex(6)}"
        sent: Invalidation = PostgresInvalidation(PG_URL, channel=name)
        heard: Invalidation = PostgresInvalidation(PG_URL, channel=name)
    else:
        sent = heard = MemoryInvalidation()
    await sent.start()
    await heard.start()
    writer = await open_store(store_url, publisher=sent)
    reader = await open_store(store_url)
    mine = CredentialCache(writer, CredentialCipher(KEY), sent)
    theirs = CredentialCache(reader, CredentialCipher(KEY), heard)
    try:
        await mine.start()
        await theirs.start()
        ann = await _user(writer, "ann@example.com")
        await put_credential(writer, ACTOR, mine.cipher, ann, "jira", ANN_SECRET)
        assert mine.get(ann, "jira") == ANN_SECRET  # read your writes: no wait
        await _until(lambda: theirs.get(ann, "jira") == ANN_SECRET)
        await put_credential(writer, ACTOR, mine.cipher, ann, "jira", ANN_ROTATED)
        assert mine.get(ann, "jira") == ANN_ROTATED
        await _until(lambda: theirs.get(ann, "jira") == ANN_ROTATED)
        await writer.delete_user(ACTOR, ann)
        await _until(lambda: theirs.get(ann, "jira") is None)
        assert ANN_ROTATED not in repr(theirs._sealed)  # kept sealed, never in clear
    finally:
        await mine.close()
        await theirs.close()
        await writer.close()
        await reader.close()
        await sent.close()
        await heard.close()


async def _until(check: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "the cache did not follow"
        await asyncio.sleep(0.02)


def _principal(kind: str, pid: str) -> Principal:
    return Principal(kind, pid, "ann@example.com", "", (), (), frozenset(), frozenset(),  # type: ignore[arg-type]
                     "tok_1", "pat", None, None)  # fmt: skip


async def test_a_virtual_account_or_a_user_without_one_is_refused(store: Store) -> None:  # noqa: F811
    cache = CredentialCache(store, CredentialCipher(KEY))
    await cache.start()
    try:
        ann = await _user(store, "ann@example.com")
        with pytest.raises(GatewayError) as caught:
            per_user_credential(cache, "jira", _principal("user", ann))
        assert caught.value.code == "mcp_credential_missing"
        assert "custos mcp credential set jira" in caught.value.message
        await put_credential(store, ACTOR, cache.cipher, ann, "jira", ANN_SECRET)
        assert per_user_credential(cache, "jira", _principal("user", ann)) == ANN_SECRET
        with pytest.raises(GatewayError) as caught:
            per_user_credential(cache, "jira", _principal("virtual_account", ann))
        assert caught.value.code == "mcp_credential_needs_user"
    finally:
        await cache.close()


# -- the config ------------------------------------------------------------------------------------


def _server(auth: str) -> Any:
    config = parse_config(f"""\
version: 1
providers: {{}}
mcp_servers:
  crm: {{url: "http://127.0.0.1:9/mcp", auth: {auth}}}
""")  # fmt: skip
    return config.config.mcp_servers["crm"]


def test_per_user_sends_the_credential_in_the_configured_header() -> None:
    assert auth_headers(_server("{type: per_user}"), "c1") == {"authorization": "Bearer c1"}
    custom = _server("{type: per_user, header: X-Api-Key, scheme: null}")
    assert auth_headers(custom, "c1") == {"x-api-key": "c1"}
    assert auth_headers(_server("{type: per_user, scheme: Token}"), "c1") == {
        "authorization": "Token c1"
    }
    assert auth_headers(custom, None) == {}
    with pytest.raises(ConfigError, match="per_user's"):
        _server("{type: passthrough, header: X-Api-Key}")


# -- end to end: the mcp SDK through custos serve --------------------------------------------------

ANN_NEW = "ann-new"  # the tool server's name for ann's rotated credential
SERVER_USERS = {"ann": ANN_SECRET, ANN_NEW: ANN_ROTATED, "bob": BOB_SECRET}


def per_user_config(url: str) -> str:
    return f"""\
version: 1
state: {{store: "sqlite:///./custos.db"}}
identity:
  token_hash_key: ${{env:CUSTOS_TEST_TOKEN_KEY}}
providers: {{}}
access:
  - id: personal-tools
    subjects: ["*"]
    mcp_tools: [personal/whoami, personal/echo]
mcp_servers:
  personal:
    url: {url}
    auth: {{type: per_user}}
"""


class PerUser:
    """The gateway, the tool server, and three members' tokens (ann, bob, carol)."""

    def __init__(self, gateway: GatewayProcess, home: Path) -> None:
        self.gateway, self.home = gateway, home
        self.tokens = {name: self._member(name) for name in ("ann", "bob", "carol")}

    def _member(self, name: str) -> str:
        email = f"{name}@example.com"
        self.admin("POST", "/users", json={"email": email, "roles": ["member"]})
        return self.admin("POST", "/tokens", json={"name": "mcp", "user": email})["token"]

    def api(self, token: str, method: str, route: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.gateway.url}/admin/v1{route}", timeout=10,
                             headers={"authorization": f"Bearer {token}"}, **kw)  # fmt: skip

    def admin(self, method: str, route: str, **kw: Any) -> Any:
        response = self.api(self.gateway.token, method, route, **kw)
        assert response.status_code < 300, response.text
        return response.json()

    def cli_set(self, user: str, secret: str) -> subprocess.CompletedProcess[str]:
        command = [*CUSTOS, "mcp", "credential", "set", "personal", "--url", self.gateway.url,
                   "--token", self.tokens[user]]  # fmt: skip
        return subprocess.run(command, input=secret + "\n", capture_output=True, text=True,
                              cwd=ROOT, timeout=60)  # fmt: skip

    def cli(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*CUSTOS, "mcp", "credential", *args, "--url", self.gateway.url,
                   "--token", self.tokens[user]]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)

    def whoami(self, user: str) -> str:
        async def body(s: ClientSession) -> str:
            return text_of(await s.call_tool("whoami", {}))

        return asyncio.run(run_session(self.gateway, body, "personal", token=self.tokens[user]))


@pytest.fixture(scope="module")
def per_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PerUser]:
    users = ",".join(f"{user}={token}" for user, token in SERVER_USERS.items())
    server = ToolServer(tmp_path_factory.mktemp("personal-tools"), users=users)
    home = tmp_path_factory.mktemp("per-user-gateway")
    gateway = GatewayProcess(per_user_config(server.url), home)
    try:
        yield PerUser(gateway, home)
    finally:
        gateway.stop()
        server.stop()


def test_each_user_reaches_the_server_as_themselves(per_user: PerUser) -> None:
    done = per_user.cli_set("ann", ANN_SECRET)
    assert done.returncode == 0, done.stderr
    assert ANN_SECRET not in done.stdout + done.stderr
    reply = per_user.api(per_user.tokens["bob"], "PUT", "/mcp/credentials/personal",
                         json={"secret": BOB_SECRET})  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert BOB_SECRET not in reply.text
    assert per_user.whoami("ann") == "ann"
    assert per_user.whoami("bob") == "bob"
    listed = per_user.api(per_user.tokens["ann"], "GET", "/mcp/credentials").json()["data"]
    assert [c["server"] for c in listed] == ["personal"]


def test_a_user_without_a_credential_gets_credential_missing(per_user: PerUser) -> None:
    with pytest.raises(McpError) as caught:
        per_user.whoami("carol")
    error = caught.value.error
    assert error.data["code"] == "mcp_credential_missing"
    assert "'personal'" in error.message and "custos mcp credential set personal" in error.message
    record = record_where(per_user.gateway, request_id=error.data["request_id"])
    assert record["outcome"] == "denied" and record["mcp.server"] == "personal"

    async def listing(s: ClientSession) -> Any:
        return await s.list_tools()

    token = per_user.tokens["carol"]
    with pytest.raises(McpError) as caught:  # the server is asked as the caller: no listing
        asyncio.run(run_session(per_user.gateway, listing, "personal", token=token))
    assert caught.value.error.data["code"] == "mcp_credential_missing"


def test_a_rotated_credential_takes_effect_at_once(per_user: PerUser) -> None:
    assert per_user.whoami("ann") == "ann"
    done = per_user.cli_set("ann", ANN_ROTATED)
    assert done.returncode == 0, done.stderr
    assert per_user.whoami("ann") == ANN_NEW
    listed = per_user.cli("ann", "list")
    assert listed.returncode == 0 and "personal" in listed.stdout
    assert ANN_ROTATED not in listed.stdout
    gone = per_user.cli("ann", "delete", "personal", "--json")
    assert gone.returncode == 0 and orjson.loads(gone.stdout)["server"] == "personal"
    assert "(none)" in per_user.cli("ann", "list").stdout
    assert per_user.cli("ann", "delete", "personal").returncode == 1  # nothing to delete
    assert per_user.cli_set("ann", ANN_ROTATED).returncode == 0
    assert per_user.whoami("ann") == ANN_NEW


def test_a_member_manages_only_their_own_and_an_admin_deletes_but_never_reads(
    per_user: PerUser,
) -> None:
    ann, bob = per_user.tokens["ann"], per_user.tokens["bob"]
    bob_id = per_user.admin("GET", "/users/bob@example.com")["id"]
    assert per_user.whoami("bob") == "bob"
    # a member names nobody else: not in a PUT, not in a listing, not in a delete
    refused = per_user.api(ann, "PUT", "/mcp/credentials/personal",
                           json={"secret": "stolen", "user": bob_id})  # fmt: skip
    assert refused.status_code == 400
    assert per_user.api(ann, "PUT", "/mcp/credentials/personal?user=" + bob_id,
                        json={"secret": "stolen"}).status_code == 400  # fmt: skip
    assert per_user.api(ann, "GET", f"/mcp/credentials?user={bob_id}").status_code == 404
    assert per_user.api(ann, "DELETE", f"/mcp/credentials/personal?user={bob_id}").status_code == (
        404
    )
    assert per_user.whoami("bob") == "bob"  # untouched
    # a server that takes no per-user credential
    unknown = per_user.api(ann, "PUT", "/mcp/credentials/jira", json={"secret": "x"})
    assert unknown.status_code == 404
    # an admin lists (never a value) and deletes another user's
    listed = per_user.admin("GET", f"/mcp/credentials?user={bob_id}")
    assert [c["server"] for c in listed["data"]] == ["personal"]
    assert set(listed["data"][0]) == {"user", "server", "created_at", "updated_at"}
    per_user.admin("DELETE", f"/mcp/credentials/personal?user={bob_id}")
    with pytest.raises(McpError) as caught:
        per_user.whoami("bob")
    assert caught.value.error.data["code"] == "mcp_credential_missing"
    reply = per_user.api(bob, "PUT", "/mcp/credentials/personal", json={"secret": BOB_SECRET})
    assert reply.status_code == 200
    assert per_user.whoami("bob") == "bob"
    # bad values are refused without being repeated
    bad = per_user.api(bob, "PUT", "/mcp/credentials/personal", json={"secret": "a\r\nX: y"})
    assert bad.status_code == 400 and "X: y" not in bad.text


def test_the_value_is_never_in_clear_anywhere(per_user: PerUser) -> None:
    # everything the earlier tests stored, rotated and deleted
    values = [ANN_SECRET, ANN_ROTATED, BOB_SECRET]
    events = per_user.admin("GET", "/events", params={"limit": 1000})["data"]
    actions = [e["action"] for e in events if e["target_type"] == "mcp_credential"]
    assert "mcp_credential.set" in actions and "mcp_credential.delete" in actions
    records = per_user.admin("GET", "/audit/events", params={"limit": 1000})["data"]
    assert records
    stored = b"".join(p.read_bytes() for p in per_user.home.glob("custos.db*"))
    with sqlite3.connect(per_user.home / "custos.db") as db:
        rows = db.execute("SELECT principal_id, server, ciphertext FROM mcp_credentials").fetchall()
    assert len(rows) == 2
    for secret in values:
        assert secret.encode() not in stored
        assert secret not in per_user.gateway.log()
        assert secret not in orjson.dumps(events).decode()
        assert secret not in orjson.dumps(records).decode()
        assert all(secret.encode() not in bytes(r[2]) for r in rows)
