"""``custos audit verify``: prove the audit log intact, or name the first thing that is not.

Checks, in order (``verify_log``; each is a function of ``custos.audit.log.checks``, except 8):

1. every stored checkpoint: its note's signature by a known key valid at its time, the stored
   columns equal to the note, ``prev`` equal to the SHA-256 of the previous note, ids contiguous
   and sizes growing;
2. every sequenced record in ``seq`` order: ``seq`` contiguous from 0, the record present, its
   leaf hash recomputed from the stored bytes equal to the leaf's and to the stored tree's
   level-0 node; the tree recomputed from the leaves has each checkpoint's root at its size.
   A record whose body was emptied counts as *purged* when an ``audit.purge`` record (itself
   intact) names its ``seq``; an emptied body no purge record accounts for is a failure;
3. no checkpoint covers more records than the log holds (truncation);
4. a consistency proof from the stored nodes between successive checkpoints;
5. every exported checkpoint (``--checkpoints FILE``): validly signed, equal to the stored one
   of its size if any, its root equal to the recomputed one, and a consistency proof to the
   latest stored checkpoint. This is what catches a rewrite re-signed with the real key;
6. no record waits to be sequenced for longer than ``pending_delay_s``;
7. a log that should be signed is: records with no signing key ever registered fail (unless
   ``allow_unsigned``: an operator's choice to run unsigned), and with a key registered, records
   past the latest checkpoint fail once the first of them is older than ``unsigned_delay_s``
   (the gateways stopped signing);
8. the tables derived from records, which reports and the config history read:
   ``custos.audit.compliance.derived`` checks the query projections and the stored config texts
   against the records they came from.

With a time range (``--from``/``--to``: ``since``/``until``) only the bodies of records whose
``time_start`` falls in ``[since, until)`` are re-hashed and counted; every other check runs in
full, since the roots need every leaf hash: checkpoints (1, 3-5), sequence contiguity, each
leaf against the record's stored leaf hash and the stored tree, the roots, and records waiting
to be sequenced (6).

Verifier keys come from ``--public-key`` (vkeys, obtained out of band) or else from the
database's key table (weaker: whoever rewrote the database could have added a key; the
report says so). A checkpoint (stored or exported) counts as signed when at least one of its
verified signatures is by a key valid at the checkpoint's time. A vkey given out of band
carries no validity period of its own: it takes the one the key table records for the same key
(same name and public key), so a key closed by ``custos audit keys retire`` no longer vouches
for checkpoints dated at or after its ``not_after``, whichever way the verifier got it. The
trust stays with the vkey: the table can only narrow it (someone who rewrote the database
could at worst make checkpoints fail, or reopen a retired key, which leaves the vkey as
trusted as it was before the retirement); a vkey the table does not know is valid at any time.
The result's ``summary`` reads
``N/N checkpoints valid; M/M records valid; P purged``; ``failures`` are in order found, the
first being the one the CLI names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from custos.audit.compliance.derived import (
    check_config_texts,
    check_projections,
    check_tool_projections,
)
from custos.audit.log.checkpoint import Verifier
from custos.audit.log.checks import (
    check_checkpoints,
    check_consistency,
    check_exported,
    check_leaves,
    check_roots,
    check_sequenced,
    check_signed,
    parse_exported,
    purge_cover,
    time_window,
)
from custos.audit.log.keys import registered_verifiers, with_recorded_validity
from custos.state.models import utcnow
from custos.state.store import Store

#: How long records may wait past the latest checkpoint, when a signing key is registered,
#: before verify takes it that the gateways stopped signing (checkpoints come every
#: ``checkpoint_interval_s``, 10 s by default, at most an hour).
UNSIGNED_DELAY_S = 3900.0
#: Leaves read per query. Each page is then hashed on the event loop (~5 µs a record), so the
#: admin API passes a smaller one (``API_PAGE``) to keep each stretch short.
PAGE = 5000
API_PAGE = 1000


@dataclass
class Report:
    checkpoints_total: int = 0
    checkpoints_valid: int = 0
    #: Records whose bodies were checked (in the time range, not purged).
    records_total: int = 0
    records_valid: int = 0
    purged: int = 0
    #: The number of leaves in the log (all of them are read for the roots).
    log_size: int = 0
    since: datetime | None = None
    until: datetime | None = None
    unsigned: int = 0
    pending_late: int = 0
    exported_checked: int = 0
    #: llm.call and mcp.tool_call records whose projection rows were compared; config texts
    #: checked.
    projections_checked: int = 0
    config_texts_checked: int = 0
    keys_from_database: bool = False
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def summary(self) -> str:
        text = (
            f"{self.checkpoints_valid}/{self.checkpoints_total} checkpoints valid; "
            f"{self.records_valid}/{self.records_total} records valid; {self.purged} purged"
        )
        if self.unsigned:
            text += f"; {self.unsigned} not yet checkpointed"
        if self.exported_checked:
            text += f"; {self.exported_checked} exported checkpoint(s) checked"
        text += (f"; {self.projections_checked} projection(s) and {self.config_texts_checked} "
                 "config text(s) checked")  # fmt: skip
        if self.pending_late:
            text += f"; {self.pending_late} pending past the delay"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary,
            "checkpoints": {"total": self.checkpoints_total, "valid": self.checkpoints_valid},
            "records": {
                "total": self.records_total,
                "valid": self.records_valid,
                "purged": self.purged,
                "unsigned": self.unsigned,
                "log_size": self.log_size,
            },
            "range": {
                "from": self.since.isoformat() if self.since else None,
                "to": self.until.isoformat() if self.until else None,
            },
            "pending_late": self.pending_late,
            "exported_checked": self.exported_checked,
            "keys_from_database": self.keys_from_database,
            "failures": self.failures,
        }


async def verify_log(
    store: Store,
    *,
    verifiers: list[Verifier] | None = None,
    exported: list[str] = (),  # type: ignore[assignment]
    pending_delay_s: float = 60.0,
    since: datetime | None = None,
    until: datetime | None = None,
    page_size: int = PAGE,
    allow_unsigned: bool = False,
    unsigned_delay_s: float = UNSIGNED_DELAY_S,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Run every check of the module docstring, in its order; never raises for a bad log.
    ``since``/``until`` narrow the bodies checked to records whose time is in ``[since, until)``;
    ``progress`` is told how many leaves have been read, page after page."""
    report = Report(since=since, until=until)
    fail = report.failures.append
    registered = await registered_verifiers(store)
    report.keys_from_database = verifiers is None
    trusted = registered if verifiers is None else with_recorded_validity(verifiers, registered)

    report.checkpoints_total, checkpoints = await check_checkpoints(store, trusted, fail)
    report.checkpoints_valid = len(checkpoints)
    exported_cps = parse_exported(exported, trusted, fail)
    window = time_window(since, until)
    leaves = await check_leaves(
        store, fail, purged=await purge_cover(store, fail), window=window, page_size=page_size,
        roots_at=[c.size for c in checkpoints] + [c.size for c in exported_cps],
        progress=progress,
    )  # fmt: skip
    report.log_size, report.purged = leaves.size, leaves.purged
    report.records_total, report.records_valid = leaves.checked, leaves.valid
    check_roots(checkpoints, leaves, fail)
    report.unsigned = await check_signed(
        store, checkpoints, leaves.size, keyed=bool(registered), allow_unsigned=allow_unsigned,
        delay_s=unsigned_delay_s, fail=fail,
    )  # fmt: skip
    await check_consistency(store, checkpoints, leaves.size, fail)
    report.exported_checked = await check_exported(store, exported_cps, checkpoints, leaves, fail)
    cutoff = utcnow() - timedelta(seconds=pending_delay_s)
    report.pending_late = await check_sequenced(store, cutoff, pending_delay_s, fail)

    page = min(page_size, API_PAGE)
    report.projections_checked = await check_projections(store, fail, window=window,
                                                         page_size=page)  # fmt: skip
    report.projections_checked += await check_tool_projections(store, fail, window=window,
                                                               page_size=page)  # fmt: skip
    report.config_texts_checked = await check_config_texts(store, fail, cutoff=cutoff)
    return report


def verify_range(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """``--from``/``--to`` (either may be left out) as ``[since, until)``: dates are whole UTC
    days, ``to`` inclusive; RFC 3339 times are exact, ``to`` exclusive. Raises ``ValueError``."""
    from custos.audit.compliance.report import ReportError, parse_range

    if since is None and until is None:
        return None, None
    try:
        start, end = parse_range(since or "1970-01-01", until or "9999-12-30")
    except ReportError as exc:
        raise ValueError(str(exc)) from None
    return (start if since is not None else None), (end if until is not None else None)
