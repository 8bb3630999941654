"""Model lists that narrow a token or a virtual account: their syntax and subset checks.

A pattern is an exact model name (``azure-eu/gpt-5.5``, ``chat-default``) or a glob with ``*``
(``azure-eu/*``, ``*``), as in access rules. Other glob syntax (``?``, ``[…]``) is refused: the
request path matches with ``fnmatch`` and access rules with ``*`` only, so anything else would
mean different things in different places.

``covered(pattern, allowed)`` is conservative: it says yes only when every name ``pattern``
matches is certainly matched by one of ``allowed`` (exact name matched by a pattern, the same
pattern, or a glob under a ``prefix*`` glob). It may refuse a narrowing that is in fact a subset
(``azure-eu/gpt-*`` under ``azure-eu/*`` is accepted, ``*-mini`` under ``*mini`` is not); the
fix is to write the narrowing the way the allowing list does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatchcase

from custos.admin.errors import BadInput

_PATTERN = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._:/+=@*-]{0,199}$")
_GLOB_CHARS = frozenset("*?[")
MAX_PATTERNS = 100

#: Names of the models this gateway serves (the config's routes and virtual models), if known.
ModelNames = Callable[[], Iterable[str]]


def check_patterns(
    patterns: Sequence[str], param: str, *, known: ModelNames | None = None
) -> tuple[str, ...]:
    """Validate a model list; returns it without duplicates, in the order given.

    Raises ``BadInput`` naming ``param`` for bad syntax, too many entries, or (when ``known`` is
    given) a pattern that matches no model the gateway serves.
    """
    if isinstance(patterns, str):
        raise BadInput(f"{param} must be a list of model names", param)
    if len(patterns) > MAX_PATTERNS:
        raise BadInput(f"{param} may hold at most {MAX_PATTERNS} entries", param)
    result = tuple(dict.fromkeys(patterns))
    for pattern in result:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise BadInput(
                f"{param}: {pattern!r} is not a model name or '*' glob (letters, digits and "
                "._:/+=@- only, e.g. 'azure-eu/gpt-5.5' or 'azure-eu/*')",
                param,
            )
    if known is not None:
        names = tuple(known())
        for pattern in result:
            if not any(fnmatchcase(name, pattern) for name in names):
                raise BadInput(
                    f"{param}: {pattern!r} matches no model this gateway serves "
                    "(see GET /v1/models)",
                    param,
                )
    return result


def covered(pattern: str, allowed: Iterable[str]) -> bool:
    """Whether every model ``pattern`` matches is matched by some pattern in ``allowed``."""
    for a in allowed:
        if a == pattern:
            return True
        if "*" not in pattern and fnmatchcase(pattern, a):
            return True
        if a.endswith("*") and _GLOB_CHARS.isdisjoint(a[:-1]) and pattern.startswith(a[:-1]):
            return True
    return False


def uncovered(patterns: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The patterns of ``patterns`` not ``covered`` by ``allowed``."""
    allowed = tuple(allowed)
    return [p for p in patterns if not covered(p, allowed)]
