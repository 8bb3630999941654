"""Model name patterns: exact names and ``*`` globs (``azure-eu/*``), compiled once."""

from __future__ import annotations

import re
from collections.abc import Iterable


class ModelPattern:
    """Matches model names against a list of exact names and globs. ``*`` matches anything."""

    __slots__ = ("_exact", "_glob", "source")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.source = tuple(patterns)
        self._exact = frozenset(p for p in self.source if "*" not in p)
        globs = [re.escape(p).replace(r"\*", ".*") for p in self.source if "*" in p]
        # Every alternative must match the whole name (fullmatch), not only the last one.
        self._glob = re.compile("|".join(f"(?:{g})" for g in globs)) if globs else None

    def matches(self, name: str) -> bool:
        if name in self._exact:
            return True
        return self._glob is not None and self._glob.fullmatch(name) is not None
