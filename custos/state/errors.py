"""Typed store errors: what went wrong, in words an operator can act on.

The admin API maps them to HTTP statuses: ``Invalid`` → 400, ``NotFound`` → 404,
``Conflict`` → 409. Every error raised by a store method has rolled its transaction back first,
so nothing of the failed change (and no admin event for it) is left behind.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error a ``Store`` method raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(StoreError):
    """The object named does not exist (or no longer does)."""


class Conflict(StoreError):
    """The change clashes with what is stored: a duplicate name, a revoked token, an owned team."""


class Invalid(StoreError, ValueError):
    """The input itself is wrong, whatever is stored: an unknown role, an empty name."""


class MigrationError(StoreError):
    """The database schema cannot be brought to the version this code expects."""
