"""Console sessions: server-side, in this process's memory, with a CSRF token each.

A session is created when a token signs in. The cookie carries only a random session id (32
bytes, URL-safe); the store keeps the SHA-256 of that id, never the id itself, and never the
token's secret: the session holds the ``Principal`` the token resolved to, which every request
re-reads from the store (``AdminService.recheck``), so a revoked token, a disabled user or a
removed role ends the console session's rights at once, as it ends the API's.

Sessions end at sign-out, after ``IDLE_S`` without a request, or ``MAX_AGE_S`` after sign-in,
whichever is first. They live in one process: a restart signs everyone out, and behind
several replicas the load balancer must keep a browser on one replica (or the console is
served from one).

Each session has its own CSRF token (a synchronizer token), put in every form and compared in
constant time on every POST.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from custos.identity.principal import Principal

COOKIE: Final = "custos_console"
#: Before sign-in: the double-submit cookie that protects the sign-in form itself.
SIGNIN_COOKIE: Final = "custos_console_signin"
IDLE_S: Final = 30 * 60
MAX_AGE_S: Final = 8 * 3600
#: Beyond this many live sessions the oldest are dropped (a bound on memory).
MAX_SESSIONS: Final = 10_000


@dataclass(slots=True)
class Session:
    principal: Principal
    csrf: str
    created: float
    seen: float
    #: One-time notices shown on the next page (e.g. "token revoked").
    flash: list[str] = field(default_factory=list)


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """The live sessions of this process (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_key: dict[str, Session] = {}
        self._clock = clock

    def create(self, principal: Principal) -> tuple[str, Session]:
        """A new session for ``principal``: its id (for the cookie) and the session."""
        self._sweep()
        now = self._clock()
        session_id = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), now, now)
        self._by_key[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, its idle time restarted; ``None`` if none."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self._by_key.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > IDLE_S or now - session.created > MAX_AGE_S:
            del self._by_key[key]
            return None
        session.seen = now
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._by_key.pop(_key(session_id), None)

    def _sweep(self) -> None:
        now = self._clock()
        for key, s in list(self._by_key.items()):
            if now - s.seen > IDLE_S or now - s.created > MAX_AGE_S:
                del self._by_key[key]
        while len(self._by_key) >= MAX_SESSIONS:
            oldest = min(self._by_key, key=lambda k: self._by_key[k].created)
            del self._by_key[oldest]

    def __len__(self) -> int:
        return len(self._by_key)


def same_token(expected: str, given: str | None) -> bool:
    """Whether a submitted CSRF token is the expected one (constant-time)."""
    return bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())
