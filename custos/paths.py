"""URL path templates matched segment by segment, for the routes the gateway serves itself
(the admin API, the console). A bottom module: it imports nothing from ``custos``.

    >>> match_segments(("teams", "{team}", "members"), ["teams", "blue", "members"])
    {'team': 'blue'}
"""

from __future__ import annotations

from collections.abc import Sequence


def match_segments(template: Sequence[str], parts: Sequence[str]) -> dict[str, str] | None:
    """The values of ``template``'s ``{name}`` segments in ``parts`` (a path split on ``/``),
    or ``None`` when the path is not the template's: other segments must be equal, and a
    captured segment must not be empty."""
    if len(parts) != len(template):
        return None
    params: dict[str, str] = {}
    for want, got in zip(template, parts, strict=True):
        if want.startswith("{"):
            if not got:
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params
