"""The admin CLI: ``custos init`` and ``custos db migrate`` on a temporary SQLite store, and the
API commands against the admin API served by uvicorn in a thread (a real HTTP round trip)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from custos.cli import admin as admin_commands
from custos.cli import main
from custos.cli import store as store_commands
from custos.http.admin import AdminAPI
from custos.identity.directory import Directory
from custos.identity.principal import Principal
from custos.identity.tokens import TokenService
from custos.state.backends import open_store
from custos.state.invalidation import MemoryInvalidation, PostgresInvalidation
from custos.state.store import Store
from tests.conftest import (
    ADMIN_EMAIL,
    CUSTOS,
    MOCK_KEY,
    TOKEN_KEY,
    GatewayProcess,
    MockProvider,
    free_port,
    standard_config,
)
from tests.store_fixtures import pg_url  # noqa: F401  (a fixture)

KEY = "test-token-hash-key-" + "x" * 40
TOKEN = re.compile(r"cst_(?:pat|vat)_[0-9A-Za-z]{38}")


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CUSTOS_TOKEN_HASH_KEY", KEY)
    monkeypatch.delenv("CUSTOS_TOKEN", raising=False)
    return f"sqlite:///{tmp_path / 'custos.db'}"


def test_init_prints_a_token_once_and_refuses_a_second_time(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--store", store_url, "--email", "ops@example.com"]) == 0
    out, err = capsys.readouterr()
    assert TOKEN.findall(out + err) == [out.strip()]  # the secret, alone on stdout, once
    assert "shown once" in err and "ops@example.com" in err

    assert main(["init", "--store", store_url, "--email", "other@example.com"]) == 1
    out, err = capsys.readouterr()
    assert "refusing" in err and "admin exists" in err
    assert not TOKEN.search(out + err)

    assert main(["init", "--store", store_url, "--if-needed"]) == 0
    out, err = capsys.readouterr()
    assert "nothing to do" in err and not TOKEN.search(out + err)


def test_init_needs_a_store_and_finds_the_key_as_the_gateway_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["init"])
    assert exited.value.code == 2
    monkeypatch.delenv("CUSTOS_TOKEN_HASH_KEY", raising=False)
    # PostgreSQL: every replica must share the key, so there is no default.
    with pytest.raises(SystemExit) as exited:
        main(["init", "--store", "postgresql://127.0.0.1:5432/test"])
    assert exited.value.code == 1
    assert "token hash key" in capsys.readouterr().err
    # SQLite: the key file beside the database, created once, readable by its owner only.
    database = tmp_path / "custos.db"
    assert main(["init", "--store", f"sqlite:///{database}"]) == 0
    key_file = tmp_path / "custos.db.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(key_file.read_text().strip()) == 64


def test_db_migrate_is_idempotent(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "migrate", "--store", store_url]) == 0
    assert "applied migration(s) 0001" in capsys.readouterr().out
    config = tmp_path / "custos.yaml"
    config.write_text(f'version: 1\nproviders: {{}}\nstate: {{store: "{store_url}"}}\n')
    assert main(["db", "migrate", "--config", str(config)]) == 0
    assert "up to date" in capsys.readouterr().out


def _leaves(parser: argparse.ArgumentParser, trail: tuple[str, ...] = ()) -> Iterator[tuple]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*trail, name), child
                yield from _leaves(child, (*trail, name))


def _admin_parser() -> argparse.ArgumentParser:
    """The ``custos`` parser with the admin commands only: those on the store and over the API."""
    parser = argparse.ArgumentParser(prog="custos")
    commands = parser.add_subparsers()
    store_commands.register(commands)
    admin_commands.register(commands)
    return parser


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = list(_leaves(_admin_parser()))
    assert len(commands) > 30
    for trail, parser in commands:
        assert parser.description, trail
        with pytest.raises(SystemExit) as exited:
            main([*trail, "--help"])
        assert exited.value.code == 0
        assert capsys.readouterr().out.startswith("usage: custos " + " ".join(trail))


# -- against a served admin API -------------------------------------------------------------------


class _App:
    """An ASGI app serving only the admin API, opening the store on lifespan startup."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.deps: tuple[Store, TokenService, Directory] | None = None
        self.admin = AdminAPI(lambda: self.deps)  # type: ignore[arg-type, return-value]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.admin(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                invalidation = MemoryInvalidation()
                store = await open_store(self.url, publisher=invalidation)
                directory = Directory(store, KEY, invalidation=invalidation)
                await directory.start()
                self.deps = (store, TokenService(store, KEY), directory)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.deps is not None:
                    await self.deps[2].close()
                    await self.deps[0].close()
                await send({"type": "lifespan.shutdown.complete"})
                return


@pytest.fixture
def served(store_url: str, capsys: pytest.CaptureFixture[str]) -> Iterator[tuple[str, str]]:
    """``(gateway URL, admin token)``: ``custos init`` run, then the admin API served."""
    assert main(["init", "--store", store_url, "--email", "root@example.com"]) == 0
    admin = capsys.readouterr().out.strip()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            _App(store_url),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            loop="asyncio",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", admin
    finally:
        server.should_exit = True
        thread.join(10)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_calls_the_admin_api(
    served: tuple[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, admin = served
    api = ["--url", url, "--token", admin]
    assert _run(capsys, "teams", "create", "red", *api)[0] == 0
    assert _run(capsys, "users", "create", "bob@example.com", "--role", "member", *api)[0] == 0
    status, out, _ = _run(capsys, "teams", "members", "add", "red", "bob@example.com", *api)
    assert status == 0 and "bob@example.com" in out

    status, out, err = _run(
        capsys,
        "tokens",
        "create",
        "--user",
        "bob@example.com",
        "--name",
        "bob-laptop",
        "--expires-in-days",
        "7",
        *api,
    )
    assert status == 0, err
    bob = out.strip()
    assert TOKEN.fullmatch(bob) and "shown once" in err

    status, out, _ = _run(capsys, "tokens", "list", *api)
    assert status == 0 and "bob-laptop" in out and "PREFIX" in out and bob not in out
    listed = json.loads(
        _run(capsys, "tokens", "list", "--user", "bob@example.com", "--json", *api)[1]
    )
    (record,) = listed["data"]
    assert record["prefix"] == bob[:12] and bob not in json.dumps(listed)

    # Bob (role member) cannot make tokens for others; the API's message reaches the terminal.
    monkeypatch.setenv("CUSTOS_TOKEN", bob)
    deadline = time.monotonic() + 5
    while (result := _run(capsys, "tokens", "create", "--user", "root@example.com", "--url", url))[
        0
    ] != 1 or "HTTP 403" not in result[2]:
        assert "unknown_token" in result[2] and time.monotonic() < deadline, result
        time.sleep(0.05)  # the directory picks the new token up within milliseconds
    assert "admin role" in result[2]

    rotated = json.loads(
        _run(capsys, "tokens", "rotate", record["id"], "--grace-seconds", "0", "--json", *api)[1]
    )
    assert rotated["record"]["rotated_from"] == record["id"] and TOKEN.fullmatch(rotated["token"])
    status, out, _ = _run(capsys, "tokens", "revoke", rotated["record"]["id"], *api)
    assert status == 0 and "revoked" in out

    status, _, err = _run(capsys, "teams", "create", "red", *api)
    assert status == 1 and "already exists" in err and "HTTP 409" in err
    status, out, _ = _run(capsys, "teams", "show", "red", *api)
    assert status == 0 and "bob@example.com" in out
    status, out, _ = _run(capsys, "events", "list", "--target-type", "team", *api)
    assert status == 0 and "team.create" in out


def test_cli_without_a_token_or_a_gateway(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run(capsys, "users", "list")
    assert status == 2 and "CUSTOS_TOKEN" in err
    status, _, err = _run(
        capsys, "users", "list", "--url", f"http://127.0.0.1:{free_port()}", "--token", "cst_pat_x"
    )
    assert status == 1 and "cannot reach" in err
    assert "--url" in err and "$CUSTOS_URL" in err and "$CUSTOS_PORT" in err  # how to aim it


def test_init_recover_issues_a_new_token_to_a_locked_out_admin(
    served: tuple[str, str], store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url, admin = served
    api = ["--url", url, "--token", admin]
    assert _run(capsys, "users", "create", "bob@example.com", "--role", "member", *api)[0] == 0
    me = json.loads(_run(capsys, "tokens", "list", "--user", "root@example.com", "--json", *api)[1])
    (own,) = me["data"]
    # The only admin revokes their only token: nobody can use the admin API any more, and init
    # refuses because an admin exists.
    assert _run(capsys, "tokens", "revoke", own["id"], *api)[0] == 0
    assert "HTTP 401" in _run(capsys, "users", "list", *api)[2]
    assert _run(capsys, "init", "--store", store_url)[0] == 1

    # Recovery is for enabled admins only, and does not go with --if-needed.
    status, out, err = _run(capsys, "init", "--store", store_url, "--recover", "--email",
                            "bob@example.com")  # fmt: skip
    assert status == 1 and "not an enabled admin" in err and not TOKEN.search(out + err)
    status, _, err = _run(capsys, "init", "--store", store_url, "--recover", "--email",
                          "nobody@example.com")  # fmt: skip
    assert status == 1 and "nobody@example.com" in err
    assert _run(capsys, "init", "--store", store_url, "--recover", "--if-needed")[0] == 2

    status, out, err = _run(capsys, "init", "--store", store_url, "--recover", "--email",
                            "root@example.com")  # fmt: skip
    assert status == 0 and "root@example.com" in err
    recovered = out.strip()
    assert TOKEN.fullmatch(recovered) and recovered != admin
    # A SQLite gateway takes the token within a second (test_init_recover_on_a_serving_sqlite…);
    # a directory loaded from the store now takes it at once, as the admin, and the store has
    # it recorded like any other token, by the actor system:recover.
    principal, actors = asyncio.run(_recovered(store_url, recovered))
    assert isinstance(principal, Principal) and "admin" in principal.roles
    assert actors[-1] == "system:recover"


async def _recovered(store_url: str, secret: str) -> tuple[Any, list[str]]:
    store = await open_store(store_url)
    directory = Directory(store, KEY)
    try:
        await directory.start()
        events = await store.list_admin_events(limit=1000)
        return directory.lookup(secret), [e.actor for e in events if e.action == "token.create"]
    finally:
        await directory.close()
        await store.close()


async def test_a_recovered_token_reaches_running_gateways_at_once(
    pg_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # With a PostgreSQL store the CLI announces the token over LISTEN/NOTIFY, as the admin API
    # would: a gateway whose refresh timer is an hour away takes it at once.
    monkeypatch.setenv("CUSTOS_TOKEN_HASH_KEY", KEY)
    init = ["init", "--store", pg_url, "--email", "root@example.com"]
    assert await asyncio.to_thread(main, init) == 0
    capsys.readouterr()
    store = await open_store(pg_url)
    invalidation = PostgresInvalidation(pg_url)
    await invalidation.start()
    gateway = Directory(store, KEY, invalidation=invalidation, refresh_interval=3600)
    await gateway.start()
    try:
        assert await asyncio.to_thread(main, [*init, "--recover"]) == 0
        secret = capsys.readouterr().out.strip()
        deadline = time.monotonic() + 2
        while not isinstance(gateway.lookup(secret), Principal):
            assert time.monotonic() < deadline, gateway.lookup(secret)
            await asyncio.sleep(0.02)
    finally:
        await gateway.close()
        await store.close()
        await invalidation.close()


def test_init_recover_on_a_serving_sqlite_gateway(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    """``custos init --recover --config FILE`` needs the store and its key, not the providers'
    secrets; a SQLite gateway (no invalidation messages between processes) uses the recovered
    token within a couple of seconds, not on its next minute-long refresh."""
    gateway = GatewayProcess(standard_config(mock_provider.url), tmp_path)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOS_")}
        env["CUSTOS_TEST_TOKEN_KEY"] = TOKEN_KEY  # identity.token_hash_key; no provider key
        recover = [*CUSTOS, "init", "--recover", "--config", str(gateway.config_path),
                   "--email", ADMIN_EMAIL]  # fmt: skip
        done = subprocess.run(recover, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        secret = done.stdout.strip()
        assert TOKEN.fullmatch(secret) and MOCK_KEY not in done.stdout + done.stderr
        migrate = [*CUSTOS, "db", "migrate", "--config", str(gateway.config_path)]
        migrated = subprocess.run(migrate, cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=60)  # fmt: skip
        assert migrated.returncode == 0, migrated.stderr
        purge = [*CUSTOS, "audit", "purge", "--config", str(gateway.config_path), "--dry-run"]
        purged = subprocess.run(purge, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=60)  # fmt: skip
        assert purged.returncode == 0, purged.stderr
        started = time.monotonic()
        while (status := _users_status(gateway, secret)) != 200:
            assert status == 401 and time.monotonic() - started < 3, status
            time.sleep(0.05)
    finally:
        gateway.stop()


def _users_status(gateway: GatewayProcess, secret: str) -> int:
    headers = {"authorization": f"Bearer {secret}"}
    return httpx.get(f"{gateway.url}/admin/v1/users", headers=headers, timeout=5).status_code


def test_tokens_list_shows_a_rotated_token_until_it_stops_working(
    served: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, admin = served
    api = ["--url", url, "--token", admin]
    made = json.loads(_run(capsys, "tokens", "create", "--user", "root@example.com", "--name",
                           "ci", "--json", *api)[1])  # fmt: skip
    old_id = made["record"]["id"]
    rotated = json.loads(
        _run(capsys, "tokens", "rotate", old_id, "--grace-seconds", "600", "--json", *api)[1]
    )
    grace_until = rotated["replaced"]["grace_until"]
    assert grace_until and rotated["replaced"]["state"] == "rotating"
    status, out, _ = _run(capsys, "tokens", "list", *api)
    assert status == 0
    header, *rows = out.splitlines()
    assert "STATE" in header and "WORKS UNTIL" in header
    (old,) = [row for row in rows if row.startswith(old_id)]
    assert " rotating " in old and grace_until[:19].replace("T", " ") in old, old
    (new,) = [row for row in rows if row.startswith(rotated["record"]["id"])]
    assert " active " in new and " never " in new, new
    # Rotating, the old token still works, on the admin API too, until its grace period ends.
    assert _run(capsys, "users", "list", "--url", url, "--token", made["token"])[0] == 0


def test_local_state_is_ignored_by_git(tmp_path: Path) -> None:
    """What ``make run`` leaves in the checkout (the store, its keys, the audit spool, the
    token file) never shows up as something to commit."""
    root = Path(__file__).resolve().parent.parent
    paths = ["custos.db", "custos.db.key", "custos-audit-spool/00000001.spool",
             ".run/quickstart.token", "audit.jsonl"]  # fmt: skip
    found = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=root,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert found.stdout.split() == paths
