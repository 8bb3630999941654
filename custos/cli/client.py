"""A small client for the admin API on the standard library (``urllib.request``).

The gateway must not depend on an HTTP client library at run time, and the CLI is part of the
gateway's package, so this is all it uses. ``AdminClient.call`` returns the decoded JSON or
raises ``ApiError`` with the API's own error message and code.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_URL = "http://127.0.0.1:8787"
PREFIX = "/admin/v1"


class ApiError(Exception):
    """The admin API refused a call (``status`` > 0) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    def __str__(self) -> str:
        if self.status == 0:
            return self.message
        return f"{self.message} (HTTP {self.status}, {self.code})"


def path(*segments: str) -> str:
    """An admin API path with each segment percent-encoded (team names, emails)."""
    return PREFIX + "".join("/" + quote(s, safe="@") for s in segments)


class AdminClient:
    """Calls ``{url}/admin/v1/…`` with ``Authorization: Bearer {token}``."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(
        self,
        method: str,
        route: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        """Call ``route`` (a ``path(…)``); ``query`` entries that are ``None`` are left out."""
        target = self.url + route
        if query:
            pairs = {k: v for k, v in query.items() if v is not None}
            if pairs:
                target += "?" + urlencode(pairs)
        headers = {"authorization": f"Bearer {self.token}", "accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        request = urllib.request.Request(target, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            raise ApiError(0, "unreachable", f"cannot reach {self.url}: {exc.reason}") from None
        except (TimeoutError, ConnectionError) as exc:
            raise ApiError(0, "unreachable", f"cannot reach {self.url}: {exc}") from None


def _api_error(exc: urllib.error.HTTPError) -> ApiError:
    raw = exc.read()
    try:
        error = json.loads(raw)["error"]
        return ApiError(exc.code, error["code"], error["message"], error.get("param"))
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip()[:200] or exc.reason
        return ApiError(exc.code, "http_error", f"unexpected reply: {text}")
