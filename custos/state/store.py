"""The store: users, teams, virtual accounts, tokens and admin events, behind one async interface.

``open_store(url)`` (``custos.state.backends``) picks the implementation by URL scheme
(``sqlite:///./custos.db``, ``sqlite:///:memory:``, ``postgresql://…``) and brings the schema up
to date. The repository
logic lives here, once, written against a tiny transaction interface (``Tx``); the dialect modules
(``sqlite.py``, ``postgres.py``) only run statements. SQL is written with ``$1``-style parameters,
which SQLite accepts as ``?1`` after a mechanical rewrite.

Contracts every mutating method keeps:

- it takes the ``Actor`` making the change and writes the admin event in the same transaction as
  the change: either both are committed or neither is;
- on failure it raises ``Invalid``, ``NotFound`` or ``Conflict`` after rolling back;
- after commit it publishes a ``Change`` to the store's ``publisher`` (if any) so token
  directories on every replica reload. Publishing is best effort: a change committed but not
  announced (crash, broker down) is picked up by the directories' periodic refresh.

No method here is meant for the request path: the request path reads identities from memory
(``custos.identity.directory``), which loads them with ``auth_snapshot``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol, Self, TypeVar

import orjson

from custos.emails import email_key
from custos.state.errors import Conflict, Invalid, MigrationError, NotFound
from custos.state.migrations import all_migrations
from custos.state.models import (
    MEMBER_ROLES,
    ROLES,
    TEAM_SOURCES,
    TOKEN_KINDS,
    Actor,
    AdminEvent,
    AuthSnapshot,
    AuthToken,
    Change,
    Membership,
    Team,
    TokenRecord,
    User,
    VirtualAccount,
    utcnow,
)

log = logging.getLogger("custos.state")

Row = dict[str, Any]
T = TypeVar("T")

#: How long revoked, rotated-out and expired tokens stay in the directory, so that using one is
#: answered ``revoked_token``/``expired_token`` rather than ``unknown_token``.
DEFAULT_KEEP_DEAD_TOKENS = timedelta(days=30)

_MAX_NAME = 200
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


class Tx(Protocol):
    """One open transaction. Statements use ``$1, $2, …`` parameters in both dialects."""

    dialect: str
    #: `` FOR UPDATE`` where the dialect needs row locks for read-then-write (PostgreSQL at
    #: READ COMMITTED); empty for SQLite, whose ``BEGIN IMMEDIATE`` already serialises writers.
    for_update: str
    #: Whether writing transactions run one at a time (SQLite), so a writer may read and extend
    #: shared state (the audit's Merkle log) in its own transaction, with no lock or leader.
    serial_writes: bool
    #: What a NUL character in a stored text value becomes: PostgreSQL text cannot hold one.
    text_nul: str

    async def lock(self, key: int, *, shared: bool = False) -> None:
        """Hold the lock ``key`` (of this database schema) until the transaction ends; a shared
        one excludes only exclusive holders. A no-op where writes are serial already."""

    def erasing(self) -> AbstractAsyncContextManager[None]:
        """For the block, the bytes of rows deleted are overwritten in the database's files
        where the engine does that per connection (SQLite's ``secure_delete``); PostgreSQL's
        dead rows go with VACUUM (docs/audit.md says so)."""

    def purge_window(self) -> AbstractAsyncContextManager[None]:
        """Open the audit tables' guard triggers' one exception (migration 0005) for the block,
        in this transaction only. An error inside rolls the transaction back, which closes it."""

    async def execute(self, sql: str, *args: Any) -> int: ...

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> int | None:
        """Run ``sql`` once per row of ``args``; the rows it changed in all, where the driver
        counts them (SQLite), else ``None``."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def run_script(self, script: str) -> None: ...


class SessionLock(Protocol):
    """A lock held for as long as a connection of its own lives (``Store.session_lock``)."""

    async def alive(self) -> bool:
        """Whether the lock is still held (its connection still answers)."""

    async def release(self) -> None:
        """Give the lock up; the lock is useless afterwards."""


class ChangePublisher(Protocol):
    """Where committed changes are announced (see ``custos.state.invalidation``)."""

    async def publish(self, change: Change) -> None: ...


# -- value conversion shared by both dialects ------------------------------------------------------


def _dt(value: Any) -> datetime | None:
    """A stored time (``datetime`` from asyncpg, ISO text from SQLite) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(value).astimezone(UTC)


def _req_dt(value: Any) -> datetime:
    result = _dt(value)
    if result is None:
        raise MigrationError("a NOT NULL time column held NULL")
    return result


def _json(value: Any) -> Any:
    """A stored JSON value (text in both drivers by default) as Python."""
    if value is None or isinstance(value, list | dict):
        return value
    return orjson.loads(value)


def _dump(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _new_id(prefix: str) -> str:
    # 80 random bits: ids are not secrets, they only have to be unique and unguessable enough
    # that enumerating them is pointless.
    return f"{prefix}_{secrets.token_hex(10)}"


def _user(row: Row) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        display_name=row["display_name"],
        roles=tuple(_json(row["roles"])),
        disabled=bool(row["disabled"]),
        created_at=_req_dt(row["created_at"]),
    )


def _team(row: Row) -> Team:
    return Team(
        id=row["id"], name=row["name"], source=row["source"], created_at=_req_dt(row["created_at"])
    )


def _membership(row: Row) -> Membership:
    return Membership(
        team_id=row["team_id"],
        user_id=row["user_id"],
        role=row["role"],
        created_at=_req_dt(row["created_at"]),
    )


def _account(row: Row) -> VirtualAccount:
    return VirtualAccount(
        id=row["id"],
        name=row["name"],
        team_id=row["team_id"],
        allowed_models=tuple(_json(row["allowed_models"])),
        disabled=bool(row["disabled"]),
        created_at=_req_dt(row["created_at"]),
    )


def _token(row: Row) -> TokenRecord:
    models = _json(row["allowed_models"])
    return TokenRecord(
        id=row["id"],
        kind=row["kind"],
        principal_id=row["principal_id"],
        name=row["name"],
        token_hash=row["token_hash"],
        prefix=row["prefix"],
        created_at=_req_dt(row["created_at"]),
        expires_at=_dt(row["expires_at"]),
        revoked_at=_dt(row["revoked_at"]),
        rotated_from=row["rotated_from"],
        grace_until=_dt(row["grace_until"]),
        last_used_at=_dt(row["last_used_at"]),
        allowed_models=None if models is None else tuple(models),
    )


def _epoch(value: Any) -> float | None:
    moment = _dt(value)
    return None if moment is None else moment.timestamp()


def _auth_token(row: Row) -> AuthToken:
    models = _json(row["allowed_models"])
    return AuthToken(
        row["id"],
        row["kind"],
        row["principal_id"],
        row["token_hash"],
        row["revoked_at"] is not None,
        _epoch(row["expires_at"]),
        _epoch(row["grace_until"]),
        None if models is None else tuple(models),
    )


async def _fetch_in(tx: Tx, select: str, column: str, values: Collection[str]) -> list[Row]:
    """``select`` restricted to ``column IN values`` (portable: one placeholder per value)."""
    if not values:
        return []
    ordered = sorted(values)
    marks = ", ".join(f"${i}" for i in range(1, len(ordered) + 1))
    return await tx.fetch(f"{select} WHERE {column} IN ({marks})", *ordered)


def _event(row: Row) -> AdminEvent:
    return AdminEvent(
        id=int(row["id"]),
        at=_req_dt(row["at"]),
        actor=row["actor"],
        actor_role=row["actor_role"],
        action=row["action"],
        target_type=row["target_type"],
        target_id=row["target_id"],
        before=_json(row["before"]),
        after=_json(row["after"]),
    )


# -- input validation: Invalid before any SQL runs -------------------------------------------------


def _name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{what} must be a non-empty string")
    value = value.strip()
    if len(value) > _MAX_NAME:
        raise Invalid(f"{what} must be at most {_MAX_NAME} characters")
    return value


def _email(value: str) -> str:
    value = _name(value, "email")
    local, at, domain = value.partition("@")
    if not at or not local or not domain or any(c.isspace() for c in value):
        raise Invalid(f"email {value!r} is not an email address")
    return value


def _roles(roles: Iterable[str]) -> tuple[str, ...]:
    if isinstance(roles, str):
        raise Invalid("roles must be a list of role names")
    result = sorted(set(roles))
    unknown = [r for r in result if r not in ROLES]
    if unknown:
        raise Invalid(f"unknown role {unknown[0]!r}: roles are {', '.join(sorted(ROLES))}")
    return tuple(result)


def _models(models: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(models, str):
        raise Invalid(f"{what} must be a list of model names")
    result = tuple(models)
    for model in result:
        if not isinstance(model, str) or not model.strip() or len(model) > _MAX_NAME:
            raise Invalid(f"{what} must hold non-empty model names (got {model!r})")
    return result


def _actor(actor: Actor) -> Actor:
    if not isinstance(actor, Actor) or not actor.id or not actor.role:
        raise Invalid("every change needs an actor with an id and a role")
    return actor


class _Write:
    """The inside of one mutating transaction: the change, its admin events, its announcements."""

    def __init__(self, tx: Tx, actor: Actor, now: datetime) -> None:
        self.tx = tx
        self.actor = actor
        self.now = now
        self.changes: list[Change] = []

    async def event(
        self,
        action: str,
        target_type: str,
        target_id: str,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
    ) -> None:
        await self.tx.execute(
            "INSERT INTO admin_events (at, actor, actor_role, action, target_type, target_id,"
            " before, after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            self.now,
            self.actor.id,
            self.actor.role,
            action,
            target_type,
            target_id,
            _dump(before),
            _dump(after),
        )

    def changed(self, kind: str, id: str) -> None:
        self.changes.append(Change(kind=kind, id=id))


class Store(ABC):
    """The identity store. Open with ``open_store``; close with ``await store.close()``."""

    dialect: ClassVar[str]
    #: As ``Tx.serial_writes`` and ``Tx.text_nul``, for the store's every transaction.
    serial_writes: ClassVar[bool]
    text_nul: ClassVar[str]
    #: SQL run first in a migration transaction to keep two replicas from migrating at once.
    _migration_lock_sql: ClassVar[str | None] = None
    _migrations_table_sql: ClassVar[str]

    def __init__(self) -> None:
        self.publisher: ChangePublisher | None = None

    # -- what a dialect provides ---------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect. Called once by ``open_store``."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    @abstractmethod
    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Tx]:
        """One transaction: committed when the block exits normally, rolled back otherwise.

        ``readonly`` transactions see one consistent snapshot and take no write lock.
        """

    async def run_transaction(
        self, body: Callable[[Tx], Coroutine[Any, Any, T]], *, readonly: bool = False
    ) -> T:
        """``await body(tx)`` in one transaction (committed when it returns, rolled back when it
        raises; ``readonly`` as for ``transaction``); returns what it returns.

        For a transaction of many statements on a hot path (the audit trail's batches). Where
        every statement is a hop to a worker thread (SQLite) the whole body runs there in one
        hop, so ``body`` must await nothing but ``tx``'s methods: no sleep, lock or other I/O
        (awaiting anything else rolls the transaction back with ``RuntimeError``)."""
        async with self.transaction(readonly=readonly) as tx:
            return await body(tx)

    async def checkpoint_wal(self) -> bool:
        """Make deleted bytes leave the database's files, where the dialect keeps old page
        images in a file of its own (SQLite's WAL). False when that could not complete. A no-op
        for PostgreSQL, whose dead rows go with VACUUM (docs/audit.md says so)."""
        return True

    @property
    def database_file(self) -> str | None:
        """The file the database lives in, where it is one (SQLite); ``None`` for a server."""
        return None

    @abstractmethod
    async def session_lock(self, key: int) -> SessionLock | None:
        """Take the lock ``key`` (of this database schema) for as long as the returned lock is
        kept, or ``None`` when another process holds it. Where writes are serial no process
        needs to exclude another, and the lock is always had."""

    @staticmethod
    @abstractmethod
    def time_bucket(column: str, unit: str) -> str:
        """SQL giving the UTC ``day`` (``2026-07-01``), ``month`` (``2026-07``) or ``quarter``
        (``2026-Q3``) of the time ``column``, as text."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- migrations ----------------------------------------------------------------------------

    async def schema_version(self) -> int:
        """The highest applied migration (0 for an empty database, where it creates the
        ``schema_migrations`` bookkeeping table)."""
        async with self.transaction() as tx:
            await tx.run_script(self._migrations_table_sql)
            rows = await tx.fetch("SELECT max(version) AS v FROM schema_migrations")
        return int(rows[0]["v"] or 0)

    async def migrate(self) -> list[int]:
        """Apply every pending migration, each in its own transaction; return the versions applied.

        Idempotent: with nothing pending it changes nothing. Refuses (``MigrationError``) a
        database migrated by a newer custos, or one whose applied scripts were since edited.
        """
        migrations = all_migrations()
        known = {m.version: m for m in migrations}
        async with self.transaction() as tx:
            applied = await self._applied(tx)
        for version, checksum in applied.items():
            migration = known.get(version)
            if migration is None:
                raise MigrationError(
                    f"the database has schema version {version}, newer than this custos knows "
                    f"({len(migrations)}); upgrade custos before using this database"
                )
            if migration.checksum(self.dialect) != checksum:
                raise MigrationError(
                    f"migration {version:04d}_{migration.name} was changed after it was applied; "
                    "restore it and add a new migration instead"
                )
        done: list[int] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            async with self.transaction() as tx:
                # Re-read under the lock: another replica may have applied it meanwhile.
                if migration.version in await self._applied(tx):
                    continue
                await tx.run_script(migration.script(self.dialect))
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at)"
                    " VALUES ($1, $2, $3, $4)",
                    migration.version,
                    migration.name,
                    migration.checksum(self.dialect),
                    utcnow(),
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            done.append(migration.version)
        return done

    async def _applied(self, tx: Tx) -> dict[int, str]:
        if self._migration_lock_sql:
            await tx.execute(self._migration_lock_sql)
        await tx.run_script(self._migrations_table_sql)
        rows = await tx.fetch("SELECT version, checksum FROM schema_migrations")
        return {int(r["version"]): r["checksum"] for r in rows}

    # -- the write unit ------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self, actor: Actor) -> AsyncIterator[_Write]:
        actor = _actor(actor)
        async with self.transaction() as tx:
            unit = _Write(tx, actor, utcnow())
            yield unit
        await self._announce(unit.changes)

    async def _announce(self, changes: list[Change]) -> None:
        if self.publisher is None or not changes:
            return
        for change in dict.fromkeys(changes):
            try:
                await self.publisher.publish(change)
            except Exception:
                # The change is committed; failing the caller now would report a change that
                # happened as failed. Directories converge through their periodic refresh.
                log.warning("could not announce %s %s", change.kind, change.id, exc_info=True)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        async with self.transaction(readonly=True) as tx:
            yield tx

    # -- users ---------------------------------------------------------------------------------

    async def create_user(
        self,
        actor: Actor,
        *,
        email: str,
        display_name: str = "",
        roles: Iterable[str] = ("member",),
        disabled: bool = False,
    ) -> User:
        email = _email(email)
        role_list = _roles(roles)
        display_name = display_name.strip() if display_name else ""
        async with self._write(actor) as w:
            if await w.tx.fetchrow("SELECT id FROM users WHERE email_key = $1", email_key(email)):
                raise Conflict(f"a user with email {email!r} already exists")
            user = User(_new_id("usr"), email, display_name, role_list, bool(disabled), w.now)
            await w.tx.execute(
                "INSERT INTO users (id, email, email_key, display_name, roles, disabled,"
                " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                user.id,
                user.email,
                email_key(email),
                user.display_name,
                _dump(list(user.roles)),
                user.disabled,
                user.created_at,
            )
            await w.event("user.create", "user", user.id, None, user.to_dict())
            w.changed("user", user.id)
        return user

    async def get_user(self, user_id: str) -> User:
        async with self._read() as tx:
            row = await tx.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
        if row is None:
            raise NotFound(f"no user {user_id!r}")
        return _user(row)

    async def get_user_by_email(self, email: str) -> User:
        async with self._read() as tx:
            row = await tx.fetchrow("SELECT * FROM users WHERE email_key = $1", email_key(email))
        if row is None:
            raise NotFound(f"no user with email {email!r}")
        return _user(row)

    async def list_users(self) -> list[User]:
        async with self._read() as tx:
            rows = await tx.fetch("SELECT * FROM users ORDER BY email_key")
        return [_user(r) for r in rows]

    async def update_user(
        self,
        actor: Actor,
        user_id: str,
        *,
        email: str | None = None,
        display_name: str | None = None,
        roles: Iterable[str] | None = None,
        disabled: bool | None = None,
    ) -> User:
        """Change the fields given (``None`` leaves a field as it is)."""
        changes: dict[str, Any] = {}
        if email is not None:
            changes["email"] = _email(email)
        if display_name is not None:
            changes["display_name"] = display_name.strip()
        if roles is not None:
            changes["roles"] = _roles(roles)
        if disabled is not None:
            changes["disabled"] = bool(disabled)
        async with self._write(actor) as w:
            before = await self._locked_user(w.tx, user_id)
            after = dataclasses.replace(before, **changes)
            if after == before:
                return before
            if email_key(after.email) != email_key(before.email) and await w.tx.fetchrow(
                "SELECT id FROM users WHERE email_key = $1", email_key(after.email)
            ):
                raise Conflict(f"a user with email {after.email!r} already exists")
            await w.tx.execute(
                "UPDATE users SET email = $2, email_key = $3, display_name = $4, roles = $5,"
                " disabled = $6 WHERE id = $1",
                user_id,
                after.email,
                email_key(after.email),
                after.display_name,
                _dump(list(after.roles)),
                after.disabled,
            )
            await w.event("user.update", "user", user_id, before.to_dict(), after.to_dict())
            w.changed("user", user_id)
        return after

    async def delete_user(self, actor: Actor, user_id: str) -> User:
        """Delete a user, its team memberships, and revoke its PATs (they die with the user)."""
        async with self._write(actor) as w:
            user = await self._locked_user(w.tx, user_id)
            members = await w.tx.fetch(
                "SELECT * FROM team_members WHERE user_id = $1 ORDER BY team_id", user_id
            )
            await self._revoke_all(w, "pat", user_id)
            await w.tx.execute("DELETE FROM users WHERE id = $1", user_id)
            before = {**user.to_dict(), "memberships": [_membership(m).to_dict() for m in members]}
            await w.event("user.delete", "user", user_id, before, None)
            w.changed("user", user_id)
        return user

    async def _locked_user(self, tx: Tx, user_id: str) -> User:
        row = await tx.fetchrow(f"SELECT * FROM users WHERE id = $1{tx.for_update}", user_id)
        if row is None:
            raise NotFound(f"no user {user_id!r}")
        return _user(row)

    # -- teams and members ---------------------------------------------------------------------

    async def create_team(self, actor: Actor, *, name: str, source: str = "api") -> Team:
        name = _name(name, "team name")
        if source not in TEAM_SOURCES:
            raise Invalid(f"team source must be one of {', '.join(sorted(TEAM_SOURCES))}")
        async with self._write(actor) as w:
            if await w.tx.fetchrow("SELECT id FROM teams WHERE name = $1", name):
                raise Conflict(f"a team named {name!r} already exists")
            team = Team(_new_id("team"), name, source, w.now)
            await w.tx.execute(
                "INSERT INTO teams (id, name, source, created_at) VALUES ($1, $2, $3, $4)",
                team.id,
                team.name,
                team.source,
                team.created_at,
            )
            await w.event("team.create", "team", team.id, None, team.to_dict())
            w.changed("team", team.id)
        return team

    async def get_team(self, team_id: str) -> Team:
        async with self._read() as tx:
            row = await tx.fetchrow("SELECT * FROM teams WHERE id = $1", team_id)
        if row is None:
            raise NotFound(f"no team {team_id!r}")
        return _team(row)

    async def get_team_by_name(self, name: str) -> Team:
        async with self._read() as tx:
            row = await tx.fetchrow("SELECT * FROM teams WHERE name = $1", name)
        if row is None:
            raise NotFound(f"no team named {name!r}")
        return _team(row)

    async def list_teams(self) -> list[Team]:
        async with self._read() as tx:
            rows = await tx.fetch("SELECT * FROM teams ORDER BY name")
        return [_team(r) for r in rows]

    async def delete_team(self, actor: Actor, team_id: str) -> Team:
        """Delete a team and its memberships. A team that owns virtual accounts is a Conflict."""
        async with self._write(actor) as w:
            team = await self._locked_team(w.tx, team_id)
            owned = await w.tx.fetch(
                "SELECT name FROM virtual_accounts WHERE team_id = $1 ORDER BY name", team_id
            )
            if owned:
                names = ", ".join(r["name"] for r in owned)
                raise Conflict(
                    f"team {team.name!r} owns virtual accounts ({names}); delete or move them first"
                )
            members = await w.tx.fetch(
                "SELECT * FROM team_members WHERE team_id = $1 ORDER BY user_id", team_id
            )
            await w.tx.execute("DELETE FROM teams WHERE id = $1", team_id)
            before = {**team.to_dict(), "members": [_membership(m).to_dict() for m in members]}
            await w.event("team.delete", "team", team_id, before, None)
            w.changed("team", team_id)
        return team

    async def _locked_team(self, tx: Tx, team_id: str) -> Team:
        row = await tx.fetchrow(f"SELECT * FROM teams WHERE id = $1{tx.for_update}", team_id)
        if row is None:
            raise NotFound(f"no team {team_id!r}")
        return _team(row)

    async def add_member(
        self, actor: Actor, team_id: str, user_id: str, *, role: str = "member"
    ) -> Membership:
        if role not in MEMBER_ROLES:
            raise Invalid(f"member role must be one of {', '.join(sorted(MEMBER_ROLES))}")
        async with self._write(actor) as w:
            team = await self._locked_team(w.tx, team_id)
            user = await self._locked_user(w.tx, user_id)
            if await w.tx.fetchrow(
                "SELECT role FROM team_members WHERE team_id = $1 AND user_id = $2",
                team_id,
                user_id,
            ):
                raise Conflict(f"{user.email} is already a member of team {team.name!r}")
            membership = Membership(team_id, user_id, role, w.now)
            await w.tx.execute(
                "INSERT INTO team_members (team_id, user_id, role, created_at)"
                " VALUES ($1, $2, $3, $4)",
                team_id,
                user_id,
                role,
                w.now,
            )
            await w.event(
                "team.member_add",
                "team_member",
                f"{team_id}:{user_id}",
                None,
                membership.to_dict(),
            )
            w.changed("team", team_id)
        return membership

    async def set_member_role(
        self, actor: Actor, team_id: str, user_id: str, *, role: str
    ) -> Membership:
        if role not in MEMBER_ROLES:
            raise Invalid(f"member role must be one of {', '.join(sorted(MEMBER_ROLES))}")
        async with self._write(actor) as w:
            before = await self._locked_membership(w.tx, team_id, user_id)
            after = dataclasses.replace(before, role=role)
            if after == before:
                return before
            await w.tx.execute(
                "UPDATE team_members SET role = $3 WHERE team_id = $1 AND user_id = $2",
                team_id,
                user_id,
                role,
            )
            await w.event(
                "team.member_update",
                "team_member",
                f"{team_id}:{user_id}",
                before.to_dict(),
                after.to_dict(),
            )
            w.changed("team", team_id)
        return after

    async def remove_member(self, actor: Actor, team_id: str, user_id: str) -> Membership:
        async with self._write(actor) as w:
            before = await self._locked_membership(w.tx, team_id, user_id)
            await w.tx.execute(
                "DELETE FROM team_members WHERE team_id = $1 AND user_id = $2", team_id, user_id
            )
            await w.event(
                "team.member_remove",
                "team_member",
                f"{team_id}:{user_id}",
                before.to_dict(),
                None,
            )
            w.changed("team", team_id)
        return before

    async def _locked_membership(self, tx: Tx, team_id: str, user_id: str) -> Membership:
        row = await tx.fetchrow(
            f"SELECT * FROM team_members WHERE team_id = $1 AND user_id = $2{tx.for_update}",
            team_id,
            user_id,
        )
        if row is None:
            raise NotFound(f"user {user_id!r} is not a member of team {team_id!r}")
        return _membership(row)

    async def list_members(self, team_id: str) -> list[Membership]:
        async with self._read() as tx:
            if await tx.fetchrow("SELECT id FROM teams WHERE id = $1", team_id) is None:
                raise NotFound(f"no team {team_id!r}")
            rows = await tx.fetch(
                "SELECT * FROM team_members WHERE team_id = $1 ORDER BY user_id", team_id
            )
        return [_membership(r) for r in rows]

    async def memberships_of(self, user_id: str) -> list[Membership]:
        async with self._read() as tx:
            rows = await tx.fetch(
                "SELECT * FROM team_members WHERE user_id = $1 ORDER BY team_id", user_id
            )
        return [_membership(r) for r in rows]

    # -- virtual accounts ----------------------------------------------------------------------

    async def create_account(
        self,
        actor: Actor,
        *,
        name: str,
        team_id: str,
        allowed_models: Iterable[str] = (),
        disabled: bool = False,
    ) -> VirtualAccount:
        name = _name(name, "virtual account name")
        models = _models(allowed_models, "allowed_models")
        async with self._write(actor) as w:
            await self._locked_team(w.tx, team_id)
            if await w.tx.fetchrow("SELECT id FROM virtual_accounts WHERE name = $1", name):
                raise Conflict(f"a virtual account named {name!r} already exists")
            account = VirtualAccount(_new_id("va"), name, team_id, models, bool(disabled), w.now)
            await w.tx.execute(
                "INSERT INTO virtual_accounts (id, name, team_id, allowed_models, disabled,"
                " created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                account.id,
                account.name,
                account.team_id,
                _dump(list(models)),
                account.disabled,
                account.created_at,
            )
            await w.event("account.create", "virtual_account", account.id, None, account.to_dict())
            w.changed("account", account.id)
        return account

    async def get_account(self, account_id: str) -> VirtualAccount:
        async with self._read() as tx:
            row = await tx.fetchrow("SELECT * FROM virtual_accounts WHERE id = $1", account_id)
        if row is None:
            raise NotFound(f"no virtual account {account_id!r}")
        return _account(row)

    async def get_account_by_name(self, name: str) -> VirtualAccount:
        async with self._read() as tx:
            row = await tx.fetchrow("SELECT * FROM virtual_accounts WHERE name = $1", name)
        if row is None:
            raise NotFound(f"no virtual account named {name!r}")
        return _account(row)

    async def list_accounts(self, *, team_id: str | None = None) -> list[VirtualAccount]:
        async with self._read() as tx:
            if team_id is None:
                rows = await tx.fetch("SELECT * FROM virtual_accounts ORDER BY name")
            else:
                rows = await tx.fetch(
                    "SELECT * FROM virtual_accounts WHERE team_id = $1 ORDER BY name", team_id
                )
        return [_account(r) for r in rows]

    async def update_account(
        self,
        actor: Actor,
        account_id: str,
        *,
        team_id: str | None = None,
        allowed_models: Iterable[str] | None = None,
        disabled: bool | None = None,
    ) -> VirtualAccount:
        changes: dict[str, Any] = {}
        if allowed_models is not None:
            changes["allowed_models"] = _models(allowed_models, "allowed_models")
        if disabled is not None:
            changes["disabled"] = bool(disabled)
        if team_id is not None:
            changes["team_id"] = team_id
        async with self._write(actor) as w:
            before = await self._locked_account(w.tx, account_id)
            after = dataclasses.replace(before, **changes)
            if after == before:
                return before
            if after.team_id != before.team_id:
                await self._locked_team(w.tx, after.team_id)
            await w.tx.execute(
                "UPDATE virtual_accounts SET team_id = $2, allowed_models = $3, disabled = $4"
                " WHERE id = $1",
                account_id,
                after.team_id,
                _dump(list(after.allowed_models)),
                after.disabled,
            )
            await w.event(
                "account.update", "virtual_account", account_id, before.to_dict(), after.to_dict()
            )
            w.changed("account", account_id)
        return after

    async def delete_account(self, actor: Actor, account_id: str) -> VirtualAccount:
        """Delete a virtual account and revoke its VATs."""
        async with self._write(actor) as w:
            account = await self._locked_account(w.tx, account_id)
            await self._revoke_all(w, "vat", account_id)
            await w.tx.execute("DELETE FROM virtual_accounts WHERE id = $1", account_id)
            await w.event("account.delete", "virtual_account", account_id, account.to_dict(), None)
            w.changed("account", account_id)
        return account

    async def _locked_account(self, tx: Tx, account_id: str) -> VirtualAccount:
        row = await tx.fetchrow(
            f"SELECT * FROM virtual_accounts WHERE id = $1{tx.for_update}", account_id
        )
        if row is None:
            raise NotFound(f"no virtual account {account_id!r}")
        return _account(row)

    # -- tokens --------------------------------------------------------------------------------

    async def create_token(
        self,
        actor: Actor,
        *,
        kind: str,
        principal_id: str,
        name: str,
        token_hash: str,
        prefix: str,
        expires_at: datetime | None = None,
        allowed_models: Iterable[str] | None = None,
    ) -> TokenRecord:
        """Record a new token. Callers use ``custos.identity.tokens.TokenService``, which makes
        the secret and its hash; the store never sees the secret."""
        name = _name(name, "token name")
        models = self._token_models(allowed_models)
        async with self._write(actor) as w:
            await self._check_principal(w.tx, kind, principal_id)
            token = await self._insert_token(
                w, kind, principal_id, name, token_hash, prefix, expires_at, models, None
            )
            await w.event("token.create", "token", token.id, None, token.to_dict())
        return token

    async def rotate_token(
        self,
        actor: Actor,
        token_id: str,
        *,
        token_hash: str,
        prefix: str,
        grace_until: datetime,
        expires_at: datetime | None,
    ) -> tuple[TokenRecord, TokenRecord]:
        """Record the replacement of a token; the old one keeps working until ``grace_until``.

        Returns ``(old, new)``. A revoked or already rotated token is a Conflict: rotate its
        replacement instead, so there is only ever one line of successors.
        """
        async with self._write(actor) as w:
            old = await self._locked_token(w.tx, token_id)
            if old.revoked_at is not None:
                raise Conflict(f"token {token_id!r} is revoked; issue a new token instead")
            if old.grace_until is not None:
                raise Conflict(f"token {token_id!r} was already rotated; rotate its replacement")
            await self._check_principal(w.tx, old.kind, old.principal_id)
            new = await self._insert_token(
                w,
                old.kind,
                old.principal_id,
                old.name,
                token_hash,
                prefix,
                expires_at,
                old.allowed_models,
                old.id,
            )
            await w.tx.execute(
                "UPDATE tokens SET grace_until = $2 WHERE id = $1", token_id, grace_until
            )
            updated = dataclasses.replace(old, grace_until=grace_until)
            await w.event(
                "token.rotate",
                "token",
                token_id,
                old.to_dict(),
                {**updated.to_dict(), "replaced_by": new.to_dict()},
            )
            w.changed("token", token_id)
        return updated, new

    async def revoke_token(self, actor: Actor, token_id: str) -> TokenRecord:
        """Revoke one token now. Revoking a revoked token is a Conflict."""
        async with self._write(actor) as w:
            before = await self._locked_token(w.tx, token_id)
            if before.revoked_at is not None:
                raise Conflict(f"token {token_id!r} is already revoked")
            await w.tx.execute("UPDATE tokens SET revoked_at = $2 WHERE id = $1", token_id, w.now)
            after = dataclasses.replace(before, revoked_at=w.now)
            await w.event("token.revoke", "token", token_id, before.to_dict(), after.to_dict())
            w.changed("token", token_id)
        return after

    async def get_token(self, token_id: str) -> TokenRecord:
        async with self._read() as tx:
            row = await tx.fetchrow("SELECT * FROM tokens WHERE id = $1", token_id)
        if row is None:
            raise NotFound(f"no token {token_id!r}")
        return _token(row)

    async def list_tokens(self, *, principal_id: str | None = None) -> list[TokenRecord]:
        async with self._read() as tx:
            if principal_id is None:
                rows = await tx.fetch("SELECT * FROM tokens ORDER BY created_at, id")
            else:
                rows = await tx.fetch(
                    "SELECT * FROM tokens WHERE principal_id = $1 ORDER BY created_at, id",
                    principal_id,
                )
        return [_token(r) for r in rows]

    async def touch_tokens(self, last_used: Mapping[str, datetime]) -> None:
        """Record last-used times in one batch (not an admin change: no event, no announcement).

        A time never moves backwards, so a late flush from a slow replica cannot undo a newer one.
        """
        if not last_used:
            return
        async with self.transaction() as tx:
            await tx.executemany(
                "UPDATE tokens SET last_used_at = $2"
                " WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
                sorted(last_used.items()),
            )

    def _token_models(self, allowed_models: Iterable[str] | None) -> tuple[str, ...] | None:
        if allowed_models is None:
            return None
        models = _models(allowed_models, "allowed_models")
        if not models:
            # An empty narrowing would make a token that can call nothing: surely a mistake.
            raise Invalid("allowed_models narrows a token: give at least one model, or omit it")
        return models

    async def _check_principal(self, tx: Tx, kind: str, principal_id: str) -> None:
        if kind == "pat":
            user = await self._locked_user(tx, principal_id)
            if user.disabled:
                raise Conflict(f"user {user.email} is disabled")
        elif kind == "vat":
            account = await self._locked_account(tx, principal_id)
            if account.disabled:
                raise Conflict(f"virtual account {account.name!r} is disabled")
        else:
            raise Invalid(f"token kind must be one of {', '.join(sorted(TOKEN_KINDS))}")

    async def _insert_token(
        self,
        w: _Write,
        kind: str,
        principal_id: str,
        name: str,
        token_hash: str,
        prefix: str,
        expires_at: datetime | None,
        models: tuple[str, ...] | None,
        rotated_from: str | None,
    ) -> TokenRecord:
        if not _HASH_RE.match(token_hash):
            raise Invalid("token_hash must be 64 lowercase hex characters (HMAC-SHA256)")
        if not prefix or len(prefix) > 16:
            raise Invalid("prefix must be 1 to 16 characters")
        if expires_at is not None and expires_at.tzinfo is None:
            raise Invalid("expires_at must carry a time zone")
        token = TokenRecord(
            id=_new_id("tok"),
            kind=kind,
            principal_id=principal_id,
            name=name,
            token_hash=token_hash,
            prefix=prefix,
            created_at=w.now,
            expires_at=None if expires_at is None else expires_at.astimezone(UTC),
            revoked_at=None,
            rotated_from=rotated_from,
            grace_until=None,
            last_used_at=None,
            allowed_models=models,
        )
        await w.tx.execute(
            "INSERT INTO tokens (id, kind, principal_id, name, token_hash, prefix, created_at,"
            " expires_at, rotated_from, allowed_models)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            token.id,
            token.kind,
            token.principal_id,
            token.name,
            token.token_hash,
            token.prefix,
            token.created_at,
            token.expires_at,
            token.rotated_from,
            _dump(None if models is None else list(models)),
        )
        w.changed("token", token.id)
        return token

    async def _locked_token(self, tx: Tx, token_id: str) -> TokenRecord:
        row = await tx.fetchrow(f"SELECT * FROM tokens WHERE id = $1{tx.for_update}", token_id)
        if row is None:
            raise NotFound(f"no token {token_id!r}")
        return _token(row)

    async def _revoke_all(self, w: _Write, kind: str, principal_id: str) -> None:
        rows = await w.tx.fetch(
            "SELECT * FROM tokens WHERE kind = $1 AND principal_id = $2 AND revoked_at IS NULL"
            f" ORDER BY id{w.tx.for_update}",
            kind,
            principal_id,
        )
        for row in rows:
            before = _token(row)
            await w.tx.execute("UPDATE tokens SET revoked_at = $2 WHERE id = $1", before.id, w.now)
            after = dataclasses.replace(before, revoked_at=w.now)
            await w.event("token.revoke", "token", before.id, before.to_dict(), after.to_dict())
            w.changed("token", before.id)

    # -- reads for the directory and the audit ---------------------------------------------------

    async def auth_snapshot(
        self,
        *,
        now: datetime | None = None,
        keep_dead_tokens: timedelta = DEFAULT_KEEP_DEAD_TOKENS,
        token_ids: Collection[str] | None = None,
    ) -> AuthSnapshot:
        """What the token directory loads, read in one snapshot (so a token never appears
        without the principal it belongs to).

        Without ``token_ids``: every principal, and every token alive or dead for less than
        ``keep_dead_tokens``. With ``token_ids``: those tokens whatever their state, their
        principals, and those principals' memberships (``complete`` is then False).
        """
        horizon = (now or utcnow()) - keep_dead_tokens
        columns = (
            "id, kind, principal_id, token_hash, revoked_at, expires_at, grace_until,"
            " allowed_models"
        )
        async with self._read() as tx:
            if token_ids is None:
                tokens = await tx.fetch(
                    f"SELECT {columns} FROM tokens WHERE (revoked_at IS NULL OR revoked_at > $1)"
                    " AND (grace_until IS NULL OR grace_until > $1)"
                    " AND (expires_at IS NULL OR expires_at > $1)",
                    horizon,
                )
                users = await tx.fetch("SELECT * FROM users")
                members = await tx.fetch("SELECT * FROM team_members")
                accounts = await tx.fetch("SELECT * FROM virtual_accounts")
            else:
                tokens = await _fetch_in(tx, f"SELECT {columns} FROM tokens", "id", token_ids)
                user_ids = {t["principal_id"] for t in tokens if t["kind"] == "pat"}
                account_ids = {t["principal_id"] for t in tokens if t["kind"] == "vat"}
                users = await _fetch_in(tx, "SELECT * FROM users", "id", user_ids)
                members = await _fetch_in(tx, "SELECT * FROM team_members", "user_id", user_ids)
                accounts = await _fetch_in(tx, "SELECT * FROM virtual_accounts", "id", account_ids)
            # Teams are few; all of them keeps the partial path simple.
            teams = await tx.fetch("SELECT * FROM teams")
        return AuthSnapshot(
            users=[_user(r) for r in users],
            teams=[_team(r) for r in teams],
            memberships=[_membership(r) for r in members],
            accounts=[_account(r) for r in accounts],
            tokens=[_auth_token(r) for r in tokens],
            complete=token_ids is None,
        )

    async def admin_event_position(self) -> int:
        """The latest admin event's id: it moves with every change to users, teams, accounts
        and tokens, whichever process made it."""
        async with self._read() as tx:
            row = await tx.fetchrow("SELECT COALESCE(MAX(id), 0) AS position FROM admin_events")
        return int(row["position"]) if row is not None else 0

    async def list_admin_events(
        self,
        *,
        after_id: int = 0,
        limit: int = 1000,
        target_type: str | None = None,
        target_id: str | None = None,
    ) -> list[AdminEvent]:
        """Admin events in the order they were written, ``id > after_id``, at most ``limit``."""
        sql = "SELECT * FROM admin_events WHERE id > $1"
        args: list[Any] = [after_id]
        if target_type is not None:
            args.append(target_type)
            sql += f" AND target_type = ${len(args)}"
        if target_id is not None:
            args.append(target_id)
            sql += f" AND target_id = ${len(args)}"
        args.append(int(limit))
        sql += f" ORDER BY id LIMIT ${len(args)}"
        async with self._read() as tx:
            rows = await tx.fetch(sql, *args)
        return [_event(r) for r in rows]
