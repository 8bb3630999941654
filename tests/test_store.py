"""The identity store, on SQLite and on PostgreSQL: one suite, run against both.

Every test gets a fresh database (a temporary SQLite file, or a PostgreSQL schema of its own).
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from custos.state import store as store_module
from custos.state.backends import migrate, open_store
from custos.state.errors import Conflict, Invalid, MigrationError, NotFound, StoreError
from custos.state.migrations import Migration, all_migrations
from custos.state.models import Actor, TokenRecord
from custos.state.store import Store
from tests.store_fixtures import PG_URL, pg_url, require_pg, store, store_url  # noqa: F401  (fixtures)

ADMIN = Actor("user:usr_admin", "admin")
TABLES = {"users", "teams", "team_members", "virtual_accounts", "tokens", "admin_events"}


def fake_hash() -> str:
    return secrets.token_hex(32)


async def table_names(s: Store) -> set[str]:
    async with s.transaction(readonly=True) as tx:
        if tx.dialect == "sqlite":
            rows = await tx.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            rows = await tx.fetch(
                "SELECT table_name AS name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
    return {r["name"] for r in rows}


async def count(s: Store, table: str) -> int:
    async with s.transaction(readonly=True) as tx:
        rows = await tx.fetch(f"SELECT count(*) AS n FROM {table}")
    return int(rows[0]["n"])


async def new_token(s: Store, principal_id: str, kind: str = "pat", **kw: object) -> TokenRecord:
    return await s.create_token(
        ADMIN,
        kind=kind,
        principal_id=principal_id,
        name=str(kw.pop("name", "laptop")),
        token_hash=fake_hash(),
        prefix="cst_pat_abcd",
        **kw,  # type: ignore[arg-type]
    )


# -- migrations -----------------------------------------------------------------------------------


async def test_migrations_create_schema_and_rerun_is_a_no_op(store_url: str) -> None:  # noqa: F811
    first = await open_store(store_url, migrate=False)
    try:
        assert await first.schema_version() == 0
        applied = await first.migrate()
        assert applied == [m.version for m in all_migrations()]
        assert await first.migrate() == []
        assert TABLES | {"schema_migrations"} <= await table_names(first)
        assert await first.schema_version() == len(all_migrations())
    finally:
        await first.close()
    # What `custos db migrate` runs, and opening again: both find nothing to do.
    assert await migrate(store_url) == []
    again = await open_store(store_url)
    await again.close()


async def test_a_failing_migration_leaves_nothing(
    store_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await migrate(store_url)
    broken = Migration(
        version=len(all_migrations()) + 1,
        name="broken",
        sqlite="CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
        postgresql="CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
    )
    monkeypatch.setattr(store_module, "all_migrations", lambda: (*all_migrations(), broken))
    with pytest.raises(Exception, match="no_such_table"):
        await open_store(store_url)
    monkeypatch.undo()
    s = await open_store(store_url)
    try:
        assert "half_done" not in await table_names(s)
        assert await s.schema_version() == len(all_migrations())
    finally:
        await s.close()


async def test_edited_or_newer_schema_is_refused(store: Store) -> None:  # noqa: F811
    async with store.transaction() as tx:
        await tx.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await store.migrate()
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE schema_migrations SET checksum = $1 WHERE version = 1",
            all_migrations()[0].checksum(store.dialect),
        )
        await tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at)"
            " VALUES (999, 'future', 'x', $1)",
            datetime.now(UTC),
        )
    with pytest.raises(MigrationError, match="newer than this custos"):
        await store.migrate()


async def test_open_store_rejects_unknown_urls() -> None:
    with pytest.raises(Invalid):
        await open_store("mysql://localhost/custos")
    with pytest.raises(Invalid):
        await open_store("custos.db")


async def test_a_postgresql_database_not_in_utf8_is_refused_at_open() -> None:
    """Audit records are UTF-8 text the database parses: in a LATIN1 database any record with
    a character LATIN1 lacks would be refused by the store and set aside, one by one."""
    await require_pg()
    name = f"custos_latin1_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(
            f"CREATE DATABASE {name} ENCODING 'LATIN1' TEMPLATE template0"
            " LC_COLLATE 'C' LC_CTYPE 'C'"
        )
        with pytest.raises(StoreError, match="LATIN1 encoding; custos needs UTF8"):
            opened = await open_store(PG_URL.rsplit("/", 1)[0] + f"/{name}")
            await opened.close()  # reached only when the database was wrongly accepted
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_sqlite_runs_in_wal_with_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    s = await open_store(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        async with s.transaction(readonly=True) as tx:
            assert (await tx.fetch("PRAGMA journal_mode"))[0]["journal_mode"] == "wal"
            assert (await tx.fetch("PRAGMA foreign_keys"))[0]["foreign_keys"] == 1
            assert (await tx.fetch("PRAGMA busy_timeout"))[0]["timeout"] >= 1000
    finally:
        await s.close()


async def test_in_memory_sqlite_works() -> None:
    s = await open_store("sqlite:///:memory:")
    try:
        user = await s.create_user(ADMIN, email="a@example.com")
        assert (await s.get_user(user.id)).email == "a@example.com"
    finally:
        await s.close()


# -- users ----------------------------------------------------------------------------------------


async def test_user_crud_and_events(store: Store) -> None:  # noqa: F811
    user = await store.create_user(
        ADMIN, email="Ada@Example.com", display_name="Ada", roles=["member", "auditor"]
    )
    assert user.roles == ("auditor", "member")
    assert await store.get_user(user.id) == user
    assert await store.get_user_by_email("ada@EXAMPLE.com") == user
    assert [u.id for u in await store.list_users()] == [user.id]

    updated = await store.update_user(ADMIN, user.id, display_name="Ada L.", disabled=True)
    assert updated.display_name == "Ada L." and updated.disabled
    assert await store.get_user(user.id) == updated
    # No change, no event.
    assert await store.update_user(ADMIN, user.id, disabled=True) == updated

    await store.delete_user(ADMIN, user.id)
    with pytest.raises(NotFound):
        await store.get_user(user.id)
    with pytest.raises(NotFound):
        await store.delete_user(ADMIN, user.id)

    events = await store.list_admin_events()
    assert [e.action for e in events] == ["user.create", "user.update", "user.delete"]
    create, update, delete = events
    assert create.actor == ADMIN.id and create.actor_role == "admin"
    assert create.target_type == "user" and create.target_id == user.id
    assert create.before is None and create.after is not None
    assert create.after["email"] == "Ada@Example.com"
    assert update.before is not None and update.after is not None
    assert update.before["display_name"] == "Ada" and update.after["display_name"] == "Ada L."
    assert delete.before is not None and delete.after is None
    assert [e.id for e in await store.list_admin_events(after_id=create.id)] == [
        update.id,
        delete.id,
    ]


async def test_emails_are_unique_case_insensitively(store: Store) -> None:  # noqa: F811
    first = await store.create_user(ADMIN, email="bob@example.com")
    with pytest.raises(Conflict, match="already exists"):
        await store.create_user(ADMIN, email="BOB@example.COM")
    other = await store.create_user(ADMIN, email="carol@example.com")
    with pytest.raises(Conflict):
        await store.update_user(ADMIN, other.id, email="Bob@Example.com")
    # Changing the case of one's own email is not a conflict.
    await store.update_user(ADMIN, first.id, email="Bob@example.com")
    assert await count(store, "users") == 2
    assert len(await store.list_admin_events()) == 3


async def test_concurrent_duplicates_yield_one_row_and_a_conflict(store: Store) -> None:  # noqa: F811
    results = await asyncio.gather(
        *(store.create_user(ADMIN, email="race@example.com") for _ in range(4)),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    assert len(created) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
    assert await count(store, "users") == 1
    assert await count(store, "admin_events") == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"email": "not-an-email"},
        {"email": ""},
        {"email": "a@example.com", "roles": ["superuser"]},
        {"email": "a@example.com", "roles": "admin"},
    ],
)
async def test_bad_user_input_is_invalid(store: Store, kwargs: dict) -> None:  # noqa: F811
    with pytest.raises(Invalid):
        await store.create_user(ADMIN, **kwargs)
    assert await count(store, "users") == 0
    assert await count(store, "admin_events") == 0


async def test_every_change_needs_an_actor(store: Store) -> None:  # noqa: F811
    with pytest.raises(Invalid, match="actor"):
        await store.create_user(Actor("", ""), email="a@example.com")
    assert await count(store, "users") == 0


# -- teams, members, virtual accounts -------------------------------------------------------------


async def test_teams_and_members(store: Store) -> None:  # noqa: F811
    team = await store.create_team(ADMIN, name="support-ai")
    assert team.source == "api"
    gitops = await store.create_team(Actor.system("config"), name="platform", source="config")
    with pytest.raises(Conflict):
        await store.create_team(ADMIN, name="support-ai")
    with pytest.raises(Invalid):
        await store.create_team(ADMIN, name="x", source="ldap")
    assert await store.get_team_by_name("platform") == gitops
    assert [t.name for t in await store.list_teams()] == ["platform", "support-ai"]

    user = await store.create_user(ADMIN, email="m@example.com")
    member = await store.add_member(ADMIN, team.id, user.id)
    assert member.role == "member"
    with pytest.raises(Conflict):
        await store.add_member(ADMIN, team.id, user.id, role="manager")
    with pytest.raises(NotFound):
        await store.add_member(ADMIN, team.id, "usr_missing")
    with pytest.raises(NotFound):
        await store.add_member(ADMIN, "team_missing", user.id)
    with pytest.raises(Invalid):
        await store.add_member(ADMIN, gitops.id, user.id, role="owner")

    promoted = await store.set_member_role(ADMIN, team.id, user.id, role="manager")
    assert promoted.role == "manager"
    await store.add_member(ADMIN, gitops.id, user.id)
    assert {m.team_id for m in await store.memberships_of(user.id)} == {team.id, gitops.id}

    await store.remove_member(ADMIN, gitops.id, user.id)
    with pytest.raises(NotFound):
        await store.remove_member(ADMIN, gitops.id, user.id)
    assert [m.user_id for m in await store.list_members(team.id)] == [user.id]

    await store.delete_team(ADMIN, team.id)
    assert await store.memberships_of(user.id) == []
    with pytest.raises(NotFound):
        await store.list_members(team.id)
    actions = [e.action for e in await store.list_admin_events()]
    assert actions == [
        "team.create",
        "team.create",
        "user.create",
        "team.member_add",
        "team.member_update",
        "team.member_add",
        "team.member_remove",
        "team.delete",
    ]
    delete = (await store.list_admin_events(target_id=team.id))[-1]
    assert delete.before is not None and delete.before["members"][0]["user_id"] == user.id


async def test_virtual_accounts(store: Store) -> None:  # noqa: F811
    team = await store.create_team(ADMIN, name="support-ai")
    other = await store.create_team(ADMIN, name="billing")
    account = await store.create_account(
        ADMIN, name="ticket-summariser", team_id=team.id, allowed_models=["azure-eu/*"]
    )
    assert account.allowed_models == ("azure-eu/*",)
    with pytest.raises(Conflict):
        await store.create_account(ADMIN, name="ticket-summariser", team_id=other.id)
    with pytest.raises(NotFound):
        await store.create_account(ADMIN, name="x", team_id="team_missing")
    with pytest.raises(Invalid):
        await store.create_account(ADMIN, name="y", team_id=team.id, allowed_models="gpt-5.5")

    moved = await store.update_account(
        ADMIN, account.id, team_id=other.id, allowed_models=["chat-default"]
    )
    assert moved.team_id == other.id and moved.allowed_models == ("chat-default",)
    assert await store.get_account_by_name("ticket-summariser") == moved
    assert await store.list_accounts(team_id=team.id) == []
    with pytest.raises(NotFound):
        await store.update_account(ADMIN, account.id, team_id="team_missing")

    # A team that owns an account cannot be deleted; nothing of the attempt is left.
    events_before = await count(store, "admin_events")
    with pytest.raises(Conflict, match="ticket-summariser"):
        await store.delete_team(ADMIN, other.id)
    assert await store.get_team(other.id) == other
    assert await count(store, "admin_events") == events_before

    vat = await new_token(store, account.id, kind="vat")
    await store.delete_account(ADMIN, account.id)
    assert (await store.get_token(vat.id)).revoked_at is not None
    await store.delete_team(ADMIN, other.id)


# -- tokens ---------------------------------------------------------------------------------------


async def test_token_create_checks_its_principal(store: Store) -> None:  # noqa: F811
    user = await store.create_user(ADMIN, email="t@example.com")
    team = await store.create_team(ADMIN, name="t")
    account = await store.create_account(ADMIN, name="svc", team_id=team.id)
    pat = await new_token(store, user.id, allowed_models=["gpt-5.5"])
    assert pat.allowed_models == ("gpt-5.5",) and pat.kind == "pat"
    vat = await new_token(store, account.id, kind="vat")
    assert vat.allowed_models is None
    assert {t.id for t in await store.list_tokens()} == {pat.id, vat.id}
    assert [t.id for t in await store.list_tokens(principal_id=user.id)] == [pat.id]

    with pytest.raises(NotFound):  # a PAT belongs to a user, not to an account
        await new_token(store, account.id, kind="pat")
    with pytest.raises(NotFound):
        await new_token(store, user.id, kind="vat")
    with pytest.raises(Invalid):
        await new_token(store, user.id, kind="jwt")
    with pytest.raises(Invalid):
        await new_token(store, user.id, allowed_models=[])
    with pytest.raises(Invalid):
        await store.create_token(
            ADMIN, kind="pat", principal_id=user.id, name="n", token_hash="secret", prefix="p"
        )
    same_hash = fake_hash()
    await store.create_token(
        ADMIN, kind="pat", principal_id=user.id, name="a", token_hash=same_hash, prefix="p"
    )
    with pytest.raises(Conflict):
        await store.create_token(
            ADMIN, kind="pat", principal_id=user.id, name="b", token_hash=same_hash, prefix="p"
        )
    await store.update_user(ADMIN, user.id, disabled=True)
    with pytest.raises(Conflict, match="disabled"):
        await new_token(store, user.id)


async def test_token_events_never_hold_the_hash(store: Store) -> None:  # noqa: F811
    user = await store.create_user(ADMIN, email="h@example.com")
    token = await new_token(store, user.id)
    await store.revoke_token(ADMIN, token.id)
    for event in await store.list_admin_events(target_type="token"):
        for side in (event.before, event.after):
            assert side is None or "token_hash" not in side
            assert token.token_hash not in repr(side)


async def test_revocation(store: Store) -> None:  # noqa: F811
    user = await store.create_user(ADMIN, email="r@example.com")
    token = await new_token(store, user.id)
    revoked = await store.revoke_token(ADMIN, token.id)
    assert revoked.revoked_at is not None
    assert revoked.state(revoked.revoked_at) == "revoked"
    assert await store.get_token(token.id) == revoked
    with pytest.raises(Conflict, match="already revoked"):
        await store.revoke_token(ADMIN, token.id)
    with pytest.raises(NotFound):
        await store.revoke_token(ADMIN, "tok_missing")
    event = (await store.list_admin_events(target_id=token.id))[-1]
    assert event.action == "token.revoke"
    assert event.before is not None and event.before["revoked_at"] is None
    assert event.after is not None and event.after["revoked_at"] is not None


async def test_rotation_sets_grace_on_the_old_token(store: Store) -> None:  # noqa: F811
    user = await store.create_user(ADMIN, email="rot@example.com")
    expires = datetime.now(UTC) + timedelta(days=30)
    old = await new_token(store, user.id, expires_at=expires, allowed_models=["m"])
    grace_until = datetime.now(UTC) + timedelta(minutes=5)
    updated, new = await store.rotate_token(
        ADMIN, old.id, token_hash=fake_hash(), prefix="cst_pat_zzzz",
        grace_until=grace_until, expires_at=expires,
    )  # fmt: skip
    assert updated.grace_until == grace_until and updated.revoked_at is None
    assert new.rotated_from == old.id and new.principal_id == user.id
    assert new.allowed_models == ("m",) and new.name == old.name
    assert updated.state(grace_until - timedelta(seconds=1)) == "rotating"
    assert updated.state(grace_until) == "rotated"
    assert await store.get_token(old.id) == updated

    with pytest.raises(Conflict, match="already rotated"):
        await store.rotate_token(
            ADMIN, old.id, token_hash=fake_hash(), prefix="p",
            grace_until=grace_until, expires_at=None,
        )  # fmt: skip
    await store.revoke_token(ADMIN, new.id)
    with pytest.raises(Conflict, match="revoked"):
        await store.rotate_token(
            ADMIN, new.id, token_hash=fake_hash(), prefix="p",
            grace_until=grace_until, expires_at=None,
        )  # fmt: skip
    event = [e for e in await store.list_admin_events() if e.action == "token.rotate"]
    assert len(event) == 1 and event[0].after is not None
    assert event[0].after["replaced_by"]["id"] == new.id


async def test_pat_dies_with_its_user(store: Store) -> None:  # noqa: F811
    user = await store.create_user(ADMIN, email="gone@example.com")
    team = await store.create_team(ADMIN, name="t")
    await store.add_member(ADMIN, team.id, user.id)
    live = await new_token(store, user.id, name="live")
    already = await new_token(store, user.id, name="already")
    await store.revoke_token(ADMIN, already.id)
    already_at = (await store.get_token(already.id)).revoked_at

    await store.delete_user(ADMIN, user.id)
    assert (await store.get_token(live.id)).revoked_at is not None
    assert (await store.get_token(already.id)).revoked_at == already_at  # untouched
    assert await store.list_members(team.id) == []
    last = await store.list_admin_events(after_id=0)
    tail = [(e.action, e.target_id) for e in last[-2:]]
    assert tail == [("token.revoke", live.id), ("user.delete", user.id)]
    assert last[-1].before is not None and last[-1].before["memberships"][0]["team_id"] == team.id


# -- atomicity: a change and its event, or neither ------------------------------------------------


async def test_failing_event_write_rolls_back_the_change(
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = await store.create_user(ADMIN, email="atomic@example.com")
    token = await new_token(store, user.id)
    events = await count(store, "admin_events")
    original = store_module._Write.event

    async def failing_after_write(self: store_module._Write, action: str, *args: object) -> None:
        await original(self, action, *args)
        if action == "user.delete":
            raise RuntimeError("disk full")

    monkeypatch.setattr(store_module._Write, "event", failing_after_write)
    with pytest.raises(RuntimeError, match="disk full"):
        await store.delete_user(ADMIN, user.id)
    await store.create_user(ADMIN, email="x@example.com")  # only user.delete is made to fail
    monkeypatch.undo()
    # Neither the user's deletion, nor the revocation of its PAT, nor any event survived.
    assert await store.get_user(user.id) == user
    assert (await store.get_token(token.id)).revoked_at is None
    assert await count(store, "admin_events") == events + 1  # the x@ user, created normally


async def test_failing_change_writes_no_event(store: Store) -> None:  # noqa: F811
    await store.create_user(ADMIN, email="dup@example.com")
    for _ in range(3):
        with pytest.raises(Conflict):
            await store.create_user(ADMIN, email="dup@example.com")
    assert await count(store, "users") == 1
    assert await count(store, "admin_events") == 1


# -- directory support ----------------------------------------------------------------------------


async def test_touch_tokens_is_batched_and_never_goes_back(store: Store) -> None:  # noqa: F811
    user = await store.create_user(ADMIN, email="used@example.com")
    a, b = await new_token(store, user.id), await new_token(store, user.id)
    events = await count(store, "admin_events")
    t1 = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    await store.touch_tokens({a.id: t1, b.id: t1})
    await store.touch_tokens({a.id: t1 - timedelta(hours=1)})  # a late, older flush
    assert (await store.get_token(a.id)).last_used_at == t1
    assert (await store.get_token(b.id)).last_used_at == t1
    assert await count(store, "admin_events") == events  # not an admin change


async def test_auth_snapshot_keeps_recently_dead_tokens_only(store: Store) -> None:  # noqa: F811
    user = await store.create_user(ADMIN, email="snap@example.com")
    alive = await new_token(store, user.id)
    dead = await new_token(store, user.id)
    await store.revoke_token(ADMIN, dead.id)
    snapshot = await store.auth_snapshot()
    assert {t.id for t in snapshot.tokens} == {alive.id, dead.id}
    later = datetime.now(UTC) + timedelta(days=31)
    assert {t.id for t in (await store.auth_snapshot(now=later)).tokens} == {alive.id}
    assert [u.id for u in snapshot.users] == [user.id]


async def test_partial_auth_snapshot_holds_the_tokens_and_their_principals(
    store: Store,  # noqa: F811
) -> None:
    team = await store.create_team(ADMIN, name="t")
    user = await store.create_user(ADMIN, email="p@example.com")
    other = await store.create_user(ADMIN, email="q@example.com")
    await store.add_member(ADMIN, team.id, user.id, role="manager")
    account = await store.create_account(ADMIN, name="svc", team_id=team.id)
    pat = await new_token(store, user.id)
    vat = await new_token(store, account.id, kind="vat")
    await new_token(store, other.id)
    await store.revoke_token(ADMIN, pat.id)

    partial = await store.auth_snapshot(token_ids=[pat.id, vat.id, "tok_missing"])
    assert not partial.complete
    by_id = {t.id: t for t in partial.tokens}
    assert set(by_id) == {pat.id, vat.id}
    assert by_id[pat.id].revoked and not by_id[vat.id].revoked
    assert [u.id for u in partial.users] == [user.id]
    assert [a.id for a in partial.accounts] == [account.id]
    assert [(m.user_id, m.role) for m in partial.memberships] == [(user.id, "manager")]
    empty = await store.auth_snapshot(token_ids=[])
    assert empty.tokens == [] and empty.users == []
    assert (await store.auth_snapshot()).complete


async def test_two_sqlite_stores_share_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    one, two = await open_store(url), await open_store(url)
    try:
        user = await one.create_user(ADMIN, email="shared@example.com")
        assert await two.get_user(user.id) == user
        await asyncio.gather(
            *(s.create_team(ADMIN, name=f"team-{i}") for i, s in enumerate([one, two] * 5))
        )
        assert len(await one.list_teams()) == 10
    finally:
        await one.close()
        await two.close()


async def _kv_rows(s: Store) -> list[tuple[str, int]]:
    async with s.transaction(readonly=True) as tx:
        rows = await tx.fetch(
            "SELECT name, position FROM audit_cursors WHERE name LIKE 't-%' ORDER BY name"
        )
    return [(r["name"], int(r["position"])) for r in rows]


async def test_run_transaction_commits_the_body_or_rolls_it_back(store: Store) -> None:  # noqa: F811
    async def write(tx: store_module.Tx) -> int:
        await tx.execute("INSERT INTO audit_cursors (name, position) VALUES ($1, $2)", "t-a", 1)
        await tx.executemany(
            "INSERT INTO audit_cursors (name, position) VALUES ($1, $2)", [("t-b", 2), ("t-c", 3)]
        )
        row = await tx.fetchrow("SELECT count(*) AS n FROM audit_cursors WHERE name LIKE 't-%'")
        assert row is not None
        return int(row["n"])

    assert await store.run_transaction(write) == 3
    assert await _kv_rows(store) == [("t-a", 1), ("t-b", 2), ("t-c", 3)]

    async def fail_half_way(tx: store_module.Tx) -> None:
        await tx.execute("UPDATE audit_cursors SET position = 99 WHERE name LIKE 't-%'")
        raise ValueError("half way")

    with pytest.raises(ValueError, match="half way"):
        await store.run_transaction(fail_half_way)
    assert await _kv_rows(store) == [("t-a", 1), ("t-b", 2), ("t-c", 3)]  # nothing of it stayed


async def test_run_transaction_on_sqlite_is_one_hop_and_refuses_other_awaits(
    tmp_path: Path,
) -> None:
    s = await open_store(f"sqlite:///{tmp_path / 'one-hop.db'}")
    try:
        hops = 0
        run = s._run  # type: ignore[attr-defined]

        async def counted(*args: object) -> object:
            nonlocal hops
            hops += 1
            return await run(*args)

        s._run = counted  # type: ignore[attr-defined]

        async def many_statements(tx: store_module.Tx) -> None:
            for n in range(10):
                await tx.execute(
                    "INSERT INTO audit_cursors (name, position) VALUES ($1, $2)", f"t-{n}", n
                )

        await s.run_transaction(many_statements)
        assert hops == 1  # ten statements, BEGIN and COMMIT: one trip to the worker thread

        async def sleeps(tx: store_module.Tx) -> None:
            await tx.execute("DELETE FROM audit_cursors WHERE name LIKE 't-%'")
            await asyncio.sleep(0)  # not a statement: the body cannot finish on the thread

        with pytest.raises(RuntimeError, match="awaited something besides tx"):
            await s.run_transaction(sleeps)
        s._run = run  # type: ignore[attr-defined]
        assert len(await _kv_rows(s)) == 10  # the delete was rolled back
    finally:
        await s.close()
