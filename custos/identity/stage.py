"""Stage 1, authenticate: the bearer credential → a ``Principal`` (``custos.stage``).

A gateway token is looked up in the directory's memory; a JWT from a configured IdP is verified
against its cached keys. A refusal is 401 with the reason's code (never the credential).
"""

from __future__ import annotations

from custos.context import RequestContext
from custos.errors import GatewayError
from custos.identity.directory import Directory
from custos.identity.jwt import JWTVerifier, looks_like_jwt
from custos.identity.principal import AuthFailure, Principal


class Authenticate:
    name = "authenticate"

    def __init__(self, directory: Directory | None) -> None:
        #: ``None`` until the gateway has opened its store: every request is then 503.
        self.directory = directory

    async def enter(self, ctx: RequestContext) -> None:
        ctx.principal = await self.principal_for(ctx.token, ctx.runtime.jwt)

    async def principal_for(self, token: str | AuthFailure | None, jwt: JWTVerifier) -> Principal:
        if self.directory is None:
            raise GatewayError(
                503, "not_ready", "The gateway is starting; try again shortly.", stage="gateway"
            )
        if isinstance(token, AuthFailure):  # refused while reading the headers
            raise token.to_error()
        if not token:
            raise GatewayError(
                401,
                "missing_api_key",
                "No API key: send 'Authorization: Bearer <token>' "
                "(or 'x-api-key' on /v1/messages).",
            )
        if jwt.idps and looks_like_jwt(token):
            found = await jwt.principal(token)
        else:
            found = self.directory.lookup(token)
        if isinstance(found, AuthFailure):
            raise found.to_error()
        return found
