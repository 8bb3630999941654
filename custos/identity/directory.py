"""The token directory: bearer token → principal, from memory, with no database round trip.

``Directory.start()`` loads every token that is alive (and those dead for less than
``keep_dead_tokens``, so using one is answered ``revoked_token``/``expired_token`` rather than
``unknown_token``) into a dict keyed by the token's keyed hash. ``lookup`` is then synchronous:
one checksum test, one HMAC, one dict lookup, a few comparisons.

Freshness. Two kinds of reload, both swapping entries in without a lookup ever seeing a half
built map:

- a change to tokens only (issue, revoke, rotate) reloads just those tokens and their
  principals: one small query however many tokens exist, so a revocation reaches every
  subscribed replica within one second (measured: milliseconds) at any scale;
- without invalidation messages between processes (a SQLite store, where ``custos init
  --recover`` or another CLI writes from a process of its own), every ``poll_store`` seconds
  (1 s) one indexed read of the latest admin event id: when it moved, the whole map is
  rebuilt, so such a change is seen within about a second rather than on the refresh timer;
- any other change (user, team, virtual account), a message that may have been missed, or the
  ``refresh_interval`` timer (60 s) rebuilds the whole map (measured: ~150 ms for 10k tokens on
  a busy 2-vCPU machine; see tests/test_tokens.py). The timer repairs whatever a lost
  invalidation message missed.

If the store is unreachable the directory keeps serving the map it has and retries: the
gateway keeps working through a database outage, at the price that changes made meanwhile are
not seen until it is back.

Last used. A successful lookup records the time in a dict; every ``flush_interval`` (30 s) the
times go to the store in one batch. Nothing is written per request; at most one interval of
last-used times is lost if the process dies.

Timing. Unknown and wrong tokens (well-formed, checksum right, not issued here) take exactly the
same path: the HMAC is computed and looked up whatever the token is, and there is no early exit
between them. Malformed tokens stop before the HMAC: their defect is visible in the token itself,
so answering faster reveals nothing about what is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

from custos.emails import email_key
from custos.identity.principal import (
    EXPIRED,
    MALFORMED,
    OWNER_DELETED,
    OWNER_DISABLED,
    REVOKED,
    ROTATED,
    UNKNOWN,
    AuthFailure,
    Principal,
)
from custos.identity.tokens import TokenHasher, check_format, coerce_key
from custos.state.models import AuthSnapshot, Change, User, VirtualAccount
from custos.state.store import DEFAULT_KEEP_DEAD_TOKENS, Store

if TYPE_CHECKING:  # the transports import redis and asyncpg; a single node needs neither
    from custos.state.invalidation import Invalidation

#: The change kinds (``custos.state.models.Change``) that can alter who a token stands for.
IDENTITY_KINDS = frozenset({"token", "user", "team", "account", "*"})

log = logging.getLogger("custos.identity")

#: Beyond this many changed tokens at once, one full reload is cheaper than a partial one.
_MAX_PARTIAL_RELOAD = 500


class _Entry(NamedTuple):
    """One token as the hot path needs it (a tuple: a reload builds thousands of these)."""

    token_id: str
    #: Revoked whatever the clocks say (see ``TokenRecord.state``).
    revoked: bool
    grace_until: float | None
    expires_at: float | None
    #: The principal, or why there is none (owner disabled or deleted).
    principal: Principal | AuthFailure


#: The principal-wide fields of a ``Principal``, in its field order (everything but the token).
_Base = tuple[str, str, str, str, tuple[str, ...], tuple[str, ...], frozenset[str], frozenset[str]]


def build_entries(snapshot: AuthSnapshot) -> dict[str, _Entry]:
    """The lookup map for a snapshot: stored token hash → entry.

    What is principal-wide (teams, subjects, roles) is computed once per principal, not once
    per token: a service account with thousands of tokens costs one computation.
    """
    team_names = {t.id: t.name for t in snapshot.teams}
    teams_of: dict[str, list[str]] = {}
    managed_of: dict[str, list[str]] = {}
    for m in snapshot.memberships:
        name = team_names.get(m.team_id)
        if name is None:
            continue
        teams_of.setdefault(m.user_id, []).append(name)
        if m.role == "manager":
            managed_of.setdefault(m.user_id, []).append(name)

    bases: dict[str, _Base | AuthFailure] = {}
    account_models: dict[str, tuple[str, ...]] = {}
    for user in snapshot.users:
        bases[user.id] = OWNER_DISABLED if user.disabled else _user_base(user, teams_of, managed_of)
    for account in snapshot.accounts:
        bases[account.id] = (
            OWNER_DISABLED if account.disabled else _account_base(account, team_names)
        )
        account_models[account.id] = account.allowed_models

    entries: dict[str, _Entry] = {}
    for token in snapshot.tokens:
        base = bases.get(token.principal_id, OWNER_DELETED)
        principal: Principal | AuthFailure
        if isinstance(base, AuthFailure):
            principal = base
        elif (token.kind == "pat") != (base[0] == "user"):
            principal = OWNER_DELETED  # a PAT must name a user, a VAT an account
        else:
            principal = Principal(
                *base,  # type: ignore[arg-type]  # _Base is Principal's leading fields
                token_id=token.id,
                token_kind=token.kind,
                account_models=account_models.get(token.principal_id),
                token_models=token.allowed_models,
            )
        entries[token.token_hash] = _Entry(
            token.id, token.revoked, token.grace_until, token.expires_at, principal
        )
    return entries


def _user_base(
    user: User, teams_of: dict[str, list[str]], managed_of: dict[str, list[str]]
) -> _Base:
    teams = tuple(sorted(teams_of.get(user.id, ())))
    subjects = frozenset([f"user:{email_key(user.email)}", *(f"team:{t}" for t in teams)])
    managed = tuple(sorted(managed_of.get(user.id, ())))
    return ("user", user.id, user.email, user.display_name, teams, managed,
            frozenset(user.roles), subjects)  # fmt: skip


def _account_base(account: VirtualAccount, team_names: dict[str, str]) -> _Base:
    team = team_names.get(account.team_id)
    teams = () if team is None else (team,)
    subjects = frozenset([f"virtualaccount:{account.name}", *(f"team:{t}" for t in teams)])
    return ("virtual_account", account.id, account.name, account.name, teams, (),
            frozenset(), subjects)  # fmt: skip


class Directory:
    """In-memory token → principal map for the request path (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        token_hash_key: str | bytes,
        *,
        invalidation: Invalidation | None = None,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 30.0,
        refresh_interval: float = 60.0,
        keep_dead_tokens: timedelta = DEFAULT_KEEP_DEAD_TOKENS,
        poll_store: float | None = None,
    ) -> None:
        self.store = store
        self._hash = TokenHasher(coerce_key(token_hash_key))
        self._invalidation = invalidation
        self._clock = clock
        self._flush_interval = flush_interval
        self._refresh_interval = refresh_interval
        self._keep_dead_tokens = keep_dead_tokens
        self._poll_store = poll_store
        self._store_position = 0
        self._entries: dict[str, _Entry] = {}
        self._last_used: dict[str, float] = {}
        self._dirty = asyncio.Event()
        self._full_pending = False
        self._token_changes: set[str] = set()
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        #: Incremented by every completed reload (tests and metrics read it).
        self.generation = 0
        #: Wall time the last reload took, in seconds.
        self.last_reload_seconds = 0.0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the map, subscribe to invalidations, start the reload and flush tasks."""
        # Subscribe first: a change committed while the first load runs then causes one more
        # reload instead of going unseen until the refresh timer.
        if self._invalidation is not None:
            self._invalidation.subscribe(self._on_change)
        try:
            if self._poll_store is not None:  # before loading: a change meanwhile is seen
                self._store_position = await self.store.admin_event_position()
            await self.reload()
        except BaseException:
            if self._invalidation is not None:
                self._invalidation.unsubscribe(self._on_change)
            raise
        self._tasks = [
            asyncio.create_task(self._reload_loop(), name="custos-directory-reload"),
            asyncio.create_task(self._flush_loop(), name="custos-directory-flush"),
        ]
        if self._poll_store is not None:
            poll = self._poll_loop(self._poll_store)
            self._tasks.append(asyncio.create_task(poll, name="custos-directory-poll"))

    async def close(self) -> None:
        """Stop the background tasks and flush the last-used times still pending."""
        if self._invalidation is not None:
            self._invalidation.unsubscribe(self._on_change)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flush_last_used()

    # -- the hot path --------------------------------------------------------------------------

    def lookup(self, token: str) -> Principal | AuthFailure:
        """The principal ``token`` stands for, or why it is refused. Never touches the store."""
        entry = self._entries.get(self._hash(token))
        if entry is None:
            # Only tokens that are not ours get the shape and checksum check (every token in the
            # map was issued well formed): a mistyped token (``MALFORMED``) is told from a wrong
            # one (``UNKNOWN``), and both took the same hash and lookup first.
            return MALFORMED if check_format(token) is None else UNKNOWN
        now = self._clock()
        if entry.revoked:
            return REVOKED
        if entry.grace_until is not None and entry.grace_until <= now:
            return ROTATED
        if entry.expires_at is not None and entry.expires_at <= now:
            return EXPIRED
        if isinstance(entry.principal, AuthFailure):
            return entry.principal
        self._last_used[entry.token_id] = now
        return entry.principal

    def __len__(self) -> int:
        return len(self._entries)

    # -- freshness -----------------------------------------------------------------------------

    def invalidate(self, change: Change | None = None) -> None:
        """Ask for a reload soon (what an invalidation message does).

        A change to tokens only reloads those tokens (a revocation costs one small query, however
        many tokens there are); anything else, or ``None``, reloads everything.
        """
        if change is not None and change.kind not in IDENTITY_KINDS:
            return  # another cache's business (e.g. erased audit content keys)
        if change is not None and change.kind == "token" and not self._full_pending:
            self._token_changes.add(change.id)
        else:
            self._full_pending = True
        self._dirty.set()

    _on_change = invalidate

    async def reload(self) -> None:
        """Rebuild the whole map from the store and swap it in."""
        async with self._reload_lock:
            started = time.perf_counter()
            now = datetime.fromtimestamp(self._clock(), UTC)
            snapshot = await self.store.auth_snapshot(
                now=now, keep_dead_tokens=self._keep_dead_tokens
            )
            entries = build_entries(snapshot)
            self._entries = entries  # one assignment: lookups see the old map or the new one
            self.generation += 1
            self.last_reload_seconds = time.perf_counter() - started

    async def reload_tokens(self, token_ids: Collection[str]) -> None:
        """Reload only these tokens (and their principals) into the map."""
        async with self._reload_lock:
            snapshot = await self.store.auth_snapshot(token_ids=token_ids)
            # In place, with no await in between: the event loop runs no lookup meanwhile. A
            # token's hash never changes, so an update replaces its entry exactly.
            self._entries.update(build_entries(snapshot))
            self.generation += 1

    async def _reload_loop(self) -> None:
        backoff = 0.1
        while True:
            timed_out = False
            try:
                await asyncio.wait_for(self._dirty.wait(), self._refresh_interval)
            except TimeoutError:
                timed_out = True
            self._dirty.clear()
            tokens, self._token_changes = self._token_changes, set()
            full = self._full_pending or timed_out or len(tokens) > _MAX_PARTIAL_RELOAD
            self._full_pending = False
            try:
                if full:
                    await self.reload()
                elif tokens:
                    await self.reload_tokens(tokens)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("directory reload failed; serving the previous map", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self.invalidate()

    async def _poll_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                position = await self.store.admin_event_position()
            except Exception:  # the store is down: the map keeps serving, polled again later
                log.debug("directory: store position not read", exc_info=True)
                continue
            if position != self._store_position:
                self._store_position = position
                self.invalidate()

    # -- last used -----------------------------------------------------------------------------

    async def flush_last_used(self) -> int:
        """Write the pending last-used times in one batch; returns how many tokens it wrote."""
        if not self._last_used:
            return 0
        pending, self._last_used = self._last_used, {}
        try:
            await self.store.touch_tokens(
                {tid: datetime.fromtimestamp(ts, UTC) for tid, ts in pending.items()}
            )
        except Exception:
            # Put them back (newer times recorded meanwhile win) and try at the next flush.
            for tid, ts in pending.items():
                if self._last_used.get(tid, 0.0) < ts:
                    self._last_used[tid] = ts
            raise
        return len(pending)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            try:
                await self.flush_last_used()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("could not flush last-used times; will retry", exc_info=True)
