"""Versioned schema migrations, one numbered module per version.

A migration module is named ``mNNNN_what.py`` and defines ``SQLITE`` and ``POSTGRESQL``: the
script for each dialect. Versions are contiguous from 1. An applied migration must never be
edited: the runner records each script's SHA-256 and refuses a database whose applied scripts no
longer match the code (add a new migration instead). Migrations are Python modules rather than
``.sql`` files so they ship inside the package without package-data configuration.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import re
import sqlite3
from dataclasses import dataclass
from functools import cache

from custos.state.errors import MigrationError

DIALECTS = ("sqlite", "postgresql")
_MODULE_NAME = re.compile(r"^m(\d{4})_([a-z0-9_]+)$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sqlite: str
    postgresql: str

    def script(self, dialect: str) -> str:
        if dialect == "sqlite":
            return self.sqlite
        if dialect == "postgresql":
            return self.postgresql
        raise ValueError(f"unknown dialect {dialect!r}")

    def checksum(self, dialect: str) -> str:
        return hashlib.sha256(self.script(dialect).encode()).hexdigest()


@cache
def all_migrations() -> tuple[Migration, ...]:
    """Every migration in this package, by version; raises if numbering has a gap."""
    found: list[Migration] = []
    for info in pkgutil.iter_modules(__path__):
        match = _MODULE_NAME.match(info.name)
        if not match:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                sqlite=module.SQLITE,
                postgresql=module.POSTGRESQL,
            )
        )
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration {expected:04d} is missing (found {migration.version})")
    return tuple(found)


def split_sqlite_script(script: str) -> list[str]:
    """Split a script into statements for SQLite.

    ``sqlite3.Connection.executescript`` would COMMIT the open transaction first, which would
    break the one-transaction-per-migration rule; so statements run one by one. Splitting uses
    SQLite's own ``complete_statement``, which knows about strings and trigger bodies.
    """
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise MigrationError(f"incomplete SQL statement at the end of a script: {pending[:80]!r}")
    return statements
