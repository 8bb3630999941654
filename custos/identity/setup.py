"""Putting identity together at start: the token hash key, the store, invalidation, the directory,
and the teams the config file declares.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from custos import private
from custos.config.schema import Config, TeamSettings
from custos.emails import email_key
from custos.identity.directory import Directory
from custos.identity.tokens import TokenService
from custos.state.backends import open_store
from custos.state.errors import Conflict, NotFound, StoreError
from custos.state.invalidation import Invalidation, open_invalidation
from custos.state.models import Actor
from custos.state.store import Store

log = logging.getLogger("custos.identity")


@dataclass(slots=True)
class Identity:
    store: Store
    invalidation: Invalidation
    directory: Directory
    tokens: TokenService

    async def close(self) -> None:
        await self.directory.close()
        await self.store.close()
        await self.invalidation.close()


#: Without invalidation messages between processes, how often the directory looks for changes
#: other processes made to the store (``Directory``'s ``poll_store``).
STORE_POLL_S = 1.0


async def open_identity(config: Config, *, base_dir: Path | None = None) -> Identity:
    key = token_hash_key(config, base_dir=base_dir)
    announced = invalidation_url(config)
    invalidation = open_invalidation(announced)
    await invalidation.start()
    store = await open_store(config.state.store, publisher=invalidation)
    poll = STORE_POLL_S if announced is None else None
    directory = Directory(store, key, invalidation=invalidation, poll_store=poll)
    await directory.start()
    return Identity(store, invalidation, directory, TokenService(store, key))


def invalidation_url(config: Config) -> str | None:
    chosen = config.identity.invalidation
    if chosen == "memory":
        return None
    if chosen == "postgresql":
        return config.state.store
    if chosen != "auto":
        return chosen
    if config.state.counters.startswith("redis"):
        return config.state.counters
    if config.state.store.startswith("postgres"):
        return config.state.store
    return None


def sqlite_path(store_url: str) -> str | None:
    if not store_url.startswith("sqlite://"):
        return None
    rest = store_url.split("://", 1)[1]
    return rest[1:] if rest.startswith("/") else rest


def token_hash_key(config: Config, *, base_dir: Path | None = None) -> bytes:
    return token_hash_key_for(config.state.store, config.identity.token_hash_key, base_dir=base_dir)


def token_hash_key_for(
    store_url: str, configured: str | None, *, base_dir: Path | None = None
) -> bytes:
    """The configured key, or for a SQLite store a key file beside the database (created once,
    mode 0600). An in-memory store gets a key that lives as long as the process."""
    if configured is not None:
        return configured.encode()
    path = sqlite_path(store_url)
    if path is None:  # the schema requires a key with PostgreSQL
        raise ValueError("identity.token_hash_key is required with a PostgreSQL store")
    if path == ":memory:":
        return secrets.token_bytes(32)
    key_file = Path(path + ".key")
    if base_dir is not None and not key_file.is_absolute():
        key_file = base_dir / key_file
    if not key_file.exists():
        private.create(key_file, secrets.token_hex(32).encode())
        log.warning("created the token hash key %s; keep it with the database", key_file)
    return key_file.read_text().strip().encode()


async def sync_config_teams(store: Store, teams: dict[str, TeamSettings], revision: str) -> None:
    """Make the store's config-declared teams match the file: create what is new (and users for
    member emails not yet known), set memberships, delete config teams no longer declared.
    Teams created through the API are never touched."""
    actor = Actor.system(f"config:{revision[:12]}")
    existing = {t.name: t for t in await store.list_teams()}
    for name, declared in teams.items():
        team = existing.get(name)
        if team is None:
            team = await store.create_team(actor, name=name, source="config")
        elif team.source != "config":
            log.warning("team %s exists from the admin API; the config's members are ignored", name)
            continue
        await _sync_members(store, actor, team.id, declared)
    for name, team in existing.items():
        if team.source == "config" and name not in teams:
            try:
                await store.delete_team(actor, team.id)
            except Conflict as exc:
                log.warning("config team %s is no longer declared but cannot go: %s", name, exc)


async def _sync_members(store: Store, actor: Actor, team_id: str, declared: TeamSettings) -> None:
    wanted = {email_key(e): "member" for e in declared.members}
    wanted.update({email_key(e): "manager" for e in declared.managers})
    current = {m.user_id: m for m in await store.list_members(team_id)}
    seen: set[str] = set()
    for email, role in wanted.items():
        try:
            user = await store.get_user_by_email(email)
        except NotFound:
            user = await store.create_user(actor, email=email)
        seen.add(user.id)
        membership = current.get(user.id)
        try:
            if membership is None:
                await store.add_member(actor, team_id, user.id, role=role)
            elif membership.role != role:
                await store.set_member_role(actor, team_id, user.id, role=role)
        except StoreError as exc:
            log.warning("cannot sync member %s of team %s: %s", email, team_id, exc)
    for user_id in current.keys() - seen:
        await store.remove_member(actor, team_id, user_id)
