"""Data classes a caller declares for its request: metadata key ``data_classification``.

The value is a comma-separated list of class names, each optionally with a count:
``customer_data`` or ``customer_data:3,pii.email:1``. Names are lowercase letters, digits and
``_ . -`` (at most 64 characters, starting with a letter). What is recorded is the class and its
count, never any value (DESIGN §4). Detectors (a later issue) add their own entries with their
detector as ``source``. A malformed declaration stops the request at stage 2 (identify) with
400 ``invalid_metadata``: a classification the audit cannot read must not pass silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from custos.context import DataClassHit
from custos.errors import GatewayError

METADATA_KEY = "data_classification"
DECLARED = "declared"
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_MAX_COUNT = 1_000_000_000


def declared_data_classes(metadata: Mapping[str, str]) -> list[DataClassHit]:
    """The classes declared in ``metadata``, merged by name and sorted; raises 400."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return []
    counts: dict[str, int | None] = {}
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, colon, count_text = entry.partition(":")
        name = name.strip()
        if not _NAME.match(name):
            raise _invalid(
                f"'{name[:64]}' is not a data class name (lowercase letters, digits, _ . -)"
            )
        count: int | None = None
        if colon:
            count_text = count_text.strip()
            # isdigit alone admits "²", which int() refuses.
            if not (count_text.isascii() and count_text.isdigit()) or int(count_text) > _MAX_COUNT:
                raise _invalid(f"the count of '{name}' must be a whole number")
            count = int(count_text)
        if name in counts:  # named twice: the counts add up; one unknown makes it unknown
            previous = counts[name]
            counts[name] = None if previous is None or count is None else previous + count
            if (counts[name] or 0) > _MAX_COUNT:
                raise _invalid(f"the counts of '{name}' add up to more than {_MAX_COUNT}")
        else:
            counts[name] = count
    return [DataClassHit(name, counts[name], DECLARED) for name in sorted(counts)]


def _invalid(reason: str) -> GatewayError:
    return GatewayError(
        400,
        "invalid_metadata",
        f"X-Custos-Metadata '{METADATA_KEY}' must list data classes as "
        f"'class[:count],…': {reason}.",
        param=f"metadata.{METADATA_KEY}",
    )
