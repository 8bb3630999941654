"""The one exception every stage raises to stop a request.

A ``GatewayError`` carries the stage that refused and what the caller needs (HTTP status, a
stable machine code, a message a person can act on, extra headers) and nothing it must not
see: messages are written by the gateway, never copied from a stack trace, and never contain a
provider credential.
``custos.http.errors`` renders it in the caller's protocol.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        stage: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}
        #: The stage that refused (``custos.context.StageName``); the governance chain fills it
        #: in from the stage that raised when the raiser did not.
        self.stage = stage

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.code!r}, {self.message!r})"


class ClientDisconnected(Exception):
    """The client went away before the gateway could answer (recorded as 499)."""


def bad_request(
    message: str, *, code: str = "invalid_request", param: str | None = None
) -> GatewayError:
    return GatewayError(400, code, message, param=param)


# -- rendering in the caller's protocol ------------------------------------------------------------

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def openai_error_body(err: GatewayError) -> bytes:
    error = {
        "message": err.message,
        "type": _OPENAI_TYPES.get(err.status, "api_error"),
        "param": err.param,
        "code": err.code,
    }
    return orjson.dumps({"error": error})


def anthropic_error_body(err: GatewayError, request_id: str | None = None) -> bytes:
    error = {"type": _ANTHROPIC_TYPES.get(err.status, "api_error"), "message": err.message}
    body: dict[str, object] = {"type": "error", "error": error}
    if request_id:
        body["request_id"] = request_id
    return orjson.dumps(body)


def error_body(protocol: str, err: GatewayError, request_id: str | None = None) -> bytes:
    if protocol == "anthropic":
        return anthropic_error_body(err, request_id)
    return openai_error_body(err)


def stream_error_event(protocol: str, err: GatewayError) -> bytes:
    """An error inside a stream whose 200 status has already been sent."""
    if protocol == "anthropic":
        return b"event: error\ndata: " + anthropic_error_body(err) + b"\n\n"
    return b"data: " + openai_error_body(err) + b"\n\n"
