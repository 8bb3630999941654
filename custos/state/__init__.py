"""Durable state: the identity store (SQLite or PostgreSQL) and cross-replica invalidation.

Start at ``open_store`` (``custos.state.backends``) and ``open_invalidation``
(``custos.state.invalidation``).
"""

from custos.state.backends import migrate, open_store
from custos.state.errors import Conflict, Invalid, MigrationError, NotFound, StoreError
from custos.state.models import (
    Actor,
    AdminEvent,
    AuthSnapshot,
    Change,
    Membership,
    Team,
    TokenRecord,
    User,
    VirtualAccount,
)
from custos.state.store import Store

__all__ = [
    "Actor",
    "AdminEvent",
    "AuthSnapshot",
    "Change",
    "Conflict",
    "Invalid",
    "Membership",
    "MigrationError",
    "NotFound",
    "Store",
    "StoreError",
    "Team",
    "TokenRecord",
    "User",
    "VirtualAccount",
    "migrate",
    "open_store",
]
