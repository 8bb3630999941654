"""How serious each record is, in each format's terms (one table, so the formats agree).

=====================================  =================  ===  ====================
record                                 syslog severity    CEF  OCSF severity_id
=====================================  =================  ===  ====================
``llm.call`` served, client left       6 informational    3    1 Informational
``llm.call`` denied by the gateway     4 warning          6    3 Medium
``llm.call`` upstream_error, error     3 error            5    2 Low
``auth.failure``                       4 warning          7    3 Medium
``admin.change``, ``config.revision``,
``audit.purge``                        5 notice           4    1 Informational
anything else                          6 informational    3    1 Informational
=====================================  =================  ===  ====================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Level:
    syslog: int
    cef: int
    ocsf: int


INFO: Final = Level(6, 3, 1)
DENIED: Final = Level(4, 6, 3)
FAILED: Final = Level(3, 5, 2)
AUTH_FAILED: Final = Level(4, 7, 3)
CHANGE: Final = Level(5, 4, 1)

_BY_OUTCOME: Final = {"denied": DENIED, "upstream_error": FAILED, "error": FAILED}
_BY_TYPE: Final = {
    "auth.failure": AUTH_FAILED,
    "admin.change": CHANGE,
    "config.revision": CHANGE,
    "audit.purge": CHANGE,
}


def level_of(fields: dict[str, Any]) -> Level:
    """The level of a record from its fields (see the table above)."""
    if fields.get("event_type") == "llm.call":
        return _BY_OUTCOME.get(fields.get("outcome") or "", INFO)
    return _BY_TYPE.get(fields.get("event_type") or "", INFO)
