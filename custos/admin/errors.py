"""Errors the admin layer adds to the store's (``Invalid``, ``NotFound``, ``Conflict``).

``Forbidden`` → 403: the caller is who they say, but their roles do not allow the operation;
its message names the role that would. ``BadInput`` → 400: an ``Invalid`` that also names the
request field at fault (``param``), so the HTTP layer can point at it.
"""

from __future__ import annotations

from custos.state.errors import Invalid, StoreError


class Forbidden(StoreError):
    """The principal's roles do not allow this operation (HTTP 403)."""


class BadInput(Invalid):
    """Bad input, with the request field it came from (HTTP 400, ``param`` set)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param
