"""The console's HTTP plumbing: a request as the pages see it, responses, headers, templates.

Every response carries the same security headers: a Content-Security-Policy that allows only
this gateway's own scripts and styles (no inline script, no inline style), refuses framing
(``frame-ancestors 'none'``) and posting forms elsewhere; ``no-store`` (pages can hold a token
secret, shown once); referrers only to this origin (with ``no-referrer`` browsers send
``Origin: null`` on form posts, which the CSRF check refuses); no MIME sniffing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import jinja2

from custos.console.sessions import Session
from custos.identity.principal import Principal

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PREFIX: Final = "/ui"
MAX_FORM_BYTES: Final = 64 * 1024
FORM_TIMEOUT_S: Final = 30.0

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class FormTooLarge(Exception):
    pass


@dataclass(slots=True)
class Request:
    """One console request: what the pages read."""

    method: str
    path: str
    query: dict[str, str]
    cookies: dict[str, str]
    headers: dict[bytes, bytes]
    secure: bool
    form: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    session: Session | None = None
    session_id: str | None = None

    @property
    def principal(self) -> Principal:
        assert self.session is not None
        return self.session.principal

    @classmethod
    def of(cls, scope: Scope) -> Request:
        headers = {name: value for name, value in scope["headers"]}
        cookies: dict[str, str] = {}
        raw = headers.get(b"cookie")
        if raw:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(raw.decode("latin-1"))
            except CookieError:
                jar = SimpleCookie()
            cookies = {k: m.value for k, m in jar.items()}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        return cls(
            method=scope["method"],
            path=scope["path"],
            query=query,
            cookies=cookies,
            headers=headers,
            secure=scope.get("scheme") == "https",
        )

    def same_origin(self) -> bool:
        """A POST whose ``Origin`` (sent by every current browser) names another site is
        refused; one without it is judged by its CSRF token alone."""
        origin = self.headers.get(b"origin")
        if origin is None:
            return True
        host = self.headers.get(b"host", b"")
        return origin.split(b"://", 1)[-1] == host


async def read_form(receive: Receive, scope: Scope) -> dict[str, str]:
    """The urlencoded body of a POST (at most ``MAX_FORM_BYTES``)."""
    chunks: list[bytes] = []
    size = 0
    more = True
    async with asyncio.timeout(FORM_TIMEOUT_S):
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                raise FormTooLarge
            chunks.append(chunk)
            more = message.get("more_body", False)
    return dict(parse_qsl(b"".join(chunks).decode("utf-8", "replace"), keep_blank_values=True))


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: bytes = b"text/html; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def send(self, send: Send) -> None:
        headers = [
            (b"content-type", self.content_type),
            (b"content-length", str(len(self.body)).encode()),
            *SECURITY_HEADERS,
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@dataclass(slots=True)
class StreamResponse:
    """A download sent as it is produced (a whole audit export need not fit in memory).

    ``first`` is produced before the response starts, so a refusal (a role, a bad range) is
    still an error page and not a broken download."""

    chunks: AsyncIterator[bytes]
    first: bytes
    content_type: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def send(self, send: Send) -> None:
        headers = [(b"content-type", self.content_type), *SECURITY_HEADERS, *self.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.first, "more_body": True})
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def redirect(location: str, *, status: int = 303) -> Response:
    return Response(status, b"", headers=[(b"location", location.encode())])


def cookie(
    name: str, value: str, *, secure: bool, max_age: int | None = None, same_site: str = "Strict"
) -> bytes:
    """A ``Set-Cookie`` value: HttpOnly, SameSite=Strict (``Lax`` only for what must come back
    with an identity provider's redirect), Path=/ui, Secure over TLS."""
    parts = [f"{name}={value}", f"Path={PREFIX}", "HttpOnly", f"SameSite={same_site}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode()


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("custos.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["usd"] = usd
    env.globals["qs"] = lambda **kw: urlencode({k: v for k, v in kw.items() if v})
    return env


def usd(micros: int | None) -> str:
    if micros is None:
        return "—"
    return f"${micros / 1_000_000:,.6f}".rstrip("0").rstrip(".") if micros else "$0"
