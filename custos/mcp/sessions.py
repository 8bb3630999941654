"""Session ids (``Mcp-Session-Id``) signed by the gateway, so that any replica serves them.

A session id is ``mcs1.`` + base64url(JSON payload) + ``.`` + base64url(HMAC-SHA-256 tag, 16
bytes), keyed by a key derived from ``identity.token_hash_key`` (which every replica of a
cluster shares already). The payload names the endpoint (``/mcp/{name}``), the token id of the
caller that opened it, the protocol version agreed, when it was issued and a random nonce. It
is signed, not encrypted: it holds nothing secret (a token's id, never the token).

Choice (docs/mcp.md): no session state is stored anywhere. A replica that sees a session id
for the first time checks its signature, its age (``SESSION_TTL_S``), that it belongs to the
endpoint asked and that the caller presenting it is the token that opened it, then opens its
own sessions to the tool servers as needed. The cost: ``DELETE`` cannot revoke an id on other
replicas (it closes this replica's upstream sessions; the id expires with its age), which is
acceptable because the id grants nothing: every request is authenticated and authorised anew.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

import orjson

PREFIX: Final = "mcs1."
#: A session is refused (404, the client opens a new one) this long after it was opened.
SESSION_TTL_S: Final = 24 * 3600
_TAG_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class McpSession:
    id: str
    endpoint: str
    token_id: str
    protocol_version: str
    issued_s: int
    nonce: str


class SessionCodec:
    def __init__(self, token_hash_key: bytes) -> None:
        self._key = hmac.new(token_hash_key, b"custos mcp session ids", hashlib.sha256).digest()

    def issue(self, endpoint: str, token_id: str, protocol_version: str) -> McpSession:
        payload = {"e": endpoint, "t": token_id, "p": protocol_version,
                   "i": int(time.time()), "n": secrets.token_hex(8)}  # fmt: skip
        body = _b64(orjson.dumps(payload))
        session_id = f"{PREFIX}{body}.{self._tag(body)}"
        return McpSession(session_id, endpoint, token_id, protocol_version, payload["i"],
                          payload["n"])  # fmt: skip

    def open(self, session_id: str, *, now: float | None = None) -> McpSession | None:
        """The session a signed id stands for, or ``None`` (not ours, altered, expired)."""
        if not session_id.startswith(PREFIX) or len(session_id) > 1024:
            return None
        body, _, tag = session_id[len(PREFIX) :].partition(".")
        if not hmac.compare_digest(tag.encode(), self._tag(body).encode()):
            return None
        try:
            payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            fields = (str(payload["e"]), str(payload["t"]), str(payload["p"]))
            session = McpSession(session_id, *fields, int(payload["i"]), str(payload["n"]))
        except (ValueError, KeyError, TypeError):
            return None
        if (now if now is not None else time.time()) - session.issued_s > SESSION_TTL_S:
            return None
        return session

    def _tag(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:_TAG_BYTES])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
