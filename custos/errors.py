"""The one exception every stage raises to stop a request.

A ``GatewayError`` carries what the caller needs (HTTP status, a stable machine code, a message a
person can act on, extra headers) and nothing it must not see: messages are written by the
gateway, never copied from a stack trace, and never contain a provider credential.
``custos.http.errors`` renders it in the caller's protocol.
"""

from __future__ import annotations


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.code!r}, {self.message!r})"


def bad_request(message: str, *, code: str = "invalid_request", param: str | None = None) -> GatewayError:
    return GatewayError(400, code, message, param=param)
