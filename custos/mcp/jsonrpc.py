"""JSON-RPC 2.0 as MCP uses it: telling messages apart, answers, and errors in its protocol.

Every refusal on ``/mcp/*`` leaves as a JSON-RPC error object whose ``message`` is the
gateway's (naming the rule, guardrail or policy that refused, never what it found) and whose
``data`` carries the gateway's stable code (``code``: ``tool_not_allowed``,
``guardrail_blocked``, ``policy_denied``, …), the HTTP status it would have on the model routes
and the request id of its audit record.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from custos.errors import GatewayError

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
#: Server-defined codes (JSON-RPC reserves -32000 to -32099 for them).
UNAUTHORIZED: Final = -32001
UPSTREAM_FAILED: Final = -32002
DENIED: Final = -32003
LIMITED: Final = -32029
UNAVAILABLE: Final = -32050
#: A request the client cancelled (the code LSP gives it), when an answer cannot be avoided.
CANCELLED: Final = -32800

JSON_HEADERS: Final = [(b"content-type", b"application/json")]
SSE_HEADERS: Final = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def is_request(message: dict[str, Any]) -> bool:
    return "method" in message and "id" in message


def is_notification(message: dict[str, Any]) -> bool:
    return "method" in message and "id" not in message


def is_response(message: dict[str, Any]) -> bool:
    return "method" not in message and "id" in message and ("result" in message
                                                              or "error" in message)  # fmt: skip


def check_message(message: Any) -> dict[str, Any]:
    """A single JSON-RPC 2.0 message, or a ``GatewayError`` saying what is wrong with it."""
    if isinstance(message, list):
        raise GatewayError(400, "invalid_request", "JSON-RPC batches are not accepted: send "
                           "one message per request.")  # fmt: skip
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise GatewayError(400, "invalid_request", "Not a JSON-RPC 2.0 message.")
    request_id = message.get("id")
    if "id" in message and (isinstance(request_id, bool) or not isinstance(request_id, int | str)):
        raise GatewayError(400, "invalid_request", "A request id is a string or an integer.")
    method = message.get("method")
    if "method" in message and not isinstance(method, str):
        raise GatewayError(400, "invalid_request", "The method is a string.")
    params = message.get("params")
    if params is not None and not isinstance(params, dict):
        raise GatewayError(400, "invalid_params", "params is an object.")
    if not (is_request(message) or is_notification(message) or is_response(message)):
        raise GatewayError(400, "invalid_request", "Not a request, notification or response.")
    return message


def result(request_id: Any, value: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": value})


def error_code(err: GatewayError) -> int:
    """The JSON-RPC code of a refusal (the gateway's own code goes in ``data``)."""
    if err.code in ("invalid_json", "invalid_request"):
        return PARSE_ERROR if err.code == "invalid_json" else INVALID_REQUEST
    if err.code == "method_not_found":
        return METHOD_NOT_FOUND
    if err.code == "cancelled":
        return CANCELLED
    if err.code in ("guardrail_blocked", "policy_denied"):
        return DENIED
    status = err.status
    if status == 401:
        return UNAUTHORIZED
    if status in (402, 403):
        return DENIED
    if status == 429:
        return LIMITED
    if status in (400, 404, 413, 415, 422):
        return INVALID_PARAMS
    if status in (502, 504):
        return UPSTREAM_FAILED
    if status == 503:
        return UNAVAILABLE
    return INTERNAL_ERROR


def error_object(err: GatewayError, request_id: str) -> dict[str, Any]:
    data: dict[str, Any] = {"code": err.code, "status": err.status, "request_id": request_id}
    if err.param is not None:
        data["param"] = err.param
    return {"code": error_code(err), "message": err.message, "data": data}


def error(message_id: Any, err: GatewayError, request_id: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": message_id,
                         "error": error_object(err, request_id)})  # fmt: skip


def sse_event(message: bytes) -> bytes:
    """One message as a server-sent event (JSON never holds a raw newline)."""
    return b"event: message\ndata: " + message + b"\n\n"
