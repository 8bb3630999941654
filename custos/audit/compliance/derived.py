"""What ``custos audit verify`` checks beyond the Merkle log: the tables derived from records.

Reports read the query projections (``audit_llm_calls``, ``audit_llm_call_data_classes``,
``audit_tool_calls``) and
the config history reads ``audit_config_texts``; neither is hashed into the log, so an edit to
them (with the guard triggers dropped) would change reports and history unseen. Here each is
checked against the hashed records it was derived from (whose bytes ``verify`` has checked
against their leaf hashes):

- every ``llm.call`` record with a body has exactly its projection row, each column equal to the
  record's field (on PostgreSQL a NUL in text is projected as U+FFFD, as the insert does), and
  exactly its data-class rows; a record whose body the purge emptied has none;
- no projection or data-class row exists without its ``llm.call`` record;
- the same for ``mcp.tool_call`` records and their ``audit_tool_calls`` and
  ``audit_tool_call_data_classes`` rows (a NUL in text is projected as U+FFFD on both stores);
- every stored config text hashes to the ``config.text_sha256`` of a ``config.revision`` record
  of its revision, and every such record older than the pending delay has its text. A text whose
  revision's records were all purged cannot be checked (the records are gone) and is skipped.

Each function reports failures through ``fail`` and returns how many items it checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from custos.audit.log.checks import each_event
from custos.audit.records.record import CONFIG_REVISION, LLM_CALL, MCP_TOOL_CALL, parse_rfc3339
from custos.audit.storage.store import _LLM_FIELDS, TOOL_FIELDS, TOOL_NUL
from custos.state.store import Store, _dt

Fail = Callable[[str], None]

_PROJECTED = ", ".join(f"p.{column} AS p_{column}" for column, _, _ in _LLM_FIELDS)
_TOOL_CLASSES = "audit_tool_call_data_classes"
_TOOL_PROJECTED = ", ".join(f"p.{column} AS p_{column}" for column, _, _ in TOOL_FIELDS)


async def check_projections(store: Store, fail: Fail, *, window: list[Any], page_size: int) -> int:
    """The projection rows of every ``llm.call`` record (only those whose time is in
    ``window``, ``[since, until)``, when given), then rows left without a record."""
    nul = store.text_nul
    return await _check_rows(
        store, fail, LLM_CALL, "audit_llm_calls", "audit_llm_call_data_classes",
        f"p.time_end AS p_time_end, {_PROJECTED}",
        lambda row, classes: _projection_problem(row, classes, nul),
        window=window, page_size=page_size,
    )  # fmt: skip


async def check_tool_projections(
    store: Store, fail: Fail, *, window: list[Any], page_size: int
) -> int:
    """The ``audit_tool_calls`` and data-class rows of every ``mcp.tool_call`` record (in
    ``window`` when given), then rows left without a record."""
    return await _check_rows(store, fail, MCP_TOOL_CALL, "audit_tool_calls", _TOOL_CLASSES,
                             _TOOL_PROJECTED, _tool_problem, window=window,
                             page_size=page_size)  # fmt: skip


async def _check_rows(
    store: Store,
    fail: Fail,
    event_type: str,
    table: str,
    classes_table: str,
    columns: str,
    problem: Callable[[Any, list[tuple[Any, ...]]], str | None],
    *,
    window: list[Any],
    page_size: int,
) -> int:
    """Each record of ``event_type`` (in ``window`` when given) with its row of ``table`` (its
    ``columns``, aliased ``p``) and of ``classes_table``, a page at a time, checked by
    ``problem``; then the rows of both tables left without a record."""
    in_range = " AND e.at >= $3 AND e.at < $4" if window else ""
    checked, after = 0, 0
    while True:
        async with store.transaction(readonly=True) as tx:
            page = await tx.fetch(
                "SELECT e.ingest_id, e.event_id, e.record, p.event_id AS p_event_id,"
                f" p.time_start AS p_time_start, {columns}"
                f" FROM audit_events e LEFT JOIN {table} p ON p.event_id = e.event_id"
                f" WHERE e.event_type = '{event_type}' AND e.ingest_id > $1{in_range}"
                " ORDER BY e.ingest_id LIMIT $2",
                after,
                page_size,
                *window,
            )
            classes = await _class_rows(tx, [str(r["event_id"]) for r in page], classes_table)
        for row in page:
            checked += 1
            found = problem(row, classes.get(str(row["event_id"]), []))
            if found is not None:
                fail(f"projection of {event_type} record {row['event_id']}: {found}")
        if len(page) < page_size:
            break
        after = int(page[-1]["ingest_id"])
    for orphans_in in (table, classes_table):
        async with store.transaction(readonly=True) as tx:
            orphan = await tx.fetchrow(
                f"SELECT p.event_id FROM {orphans_in} p WHERE NOT EXISTS (SELECT 1 FROM"
                " audit_events e WHERE e.event_id = p.event_id AND e.event_type ="
                f" '{event_type}') LIMIT 1"
            )
        if orphan is not None:
            fail(f"{orphans_in} holds a row for {orphan['event_id']}, which is no {event_type}"
                 " record")  # fmt: skip
    return checked


def _tool_problem(row: Any, classes: list[tuple[Any, ...]]) -> str | None:
    body = bytes(row["record"]) if row["record"] is not None else b""
    if not body:  # emptied by the purge, which deletes its rows in the same transaction
        if row["p_event_id"] is not None or classes:
            return "its body was purged but its projection rows remain"
        return None
    if row["p_event_id"] is None:
        return "audit_tool_calls has no row for it"
    record = orjson.loads(body)
    nul = TOOL_NUL
    for column, key, _cast in TOOL_FIELDS:
        expected = record.get(key)
        if isinstance(expected, str):
            expected = expected.replace("\x00", nul)
        stored = row[f"p_{column}"]
        # SQLite keeps ``tool_error`` as 0 or 1, which equal False and True.
        if stored != expected:
            return f"audit_tool_calls.{column} is {stored!r}, the record says {expected!r}"
    stored_start: datetime | None = _dt(row["p_time_start"])
    if stored_start != parse_rfc3339(record["time_start"]):
        return (f"audit_tool_calls.time_start is {stored_start}, the record says "
                f"{record['time_start']}")  # fmt: skip
    listed = record.get("data_classes")
    declared = _declared(listed if isinstance(listed, list) else [], nul)
    if sorted(classes) != declared:
        return f"{_TOOL_CLASSES} holds {sorted(classes)}, the record says {declared}"
    return None


def _declared(listed: list[dict[str, Any]], nul: str) -> list[tuple[str, str, Any]]:
    """A record's data classes as its projection keeps them: (class, source, count), sorted,
    a class named twice by one source once (the first)."""
    first: dict[tuple[str, str], Any] = {}
    for c in listed:
        first.setdefault((c["class"].replace("\x00", nul), c["source"].replace("\x00", nul)),
                         c["count"])  # fmt: skip
    return sorted((name, source, count) for (name, source), count in first.items())


async def _class_rows(
    tx: Any, event_ids: list[str], table: str = "audit_llm_call_data_classes"
) -> dict[str, list[tuple[Any, ...]]]:
    if not event_ids:
        return {}
    marks = ", ".join(f"${i}" for i in range(1, len(event_ids) + 1))
    rows = await tx.fetch(
        f"SELECT event_id, data_class, source, match_count FROM {table}"
        f" WHERE event_id IN ({marks})",
        *event_ids,
    )
    found: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows:
        found.setdefault(str(r["event_id"]), []).append(
            (r["data_class"], r["source"], r["match_count"])
        )
    return found


def _projection_problem(row: Any, classes: list[tuple[Any, ...]], nul: str) -> str | None:
    body = bytes(row["record"]) if row["record"] is not None else b""
    if not body:  # emptied by the purge, which deletes its rows in the same transaction
        if row["p_event_id"] is not None or classes:
            return "its body was purged but its projection rows remain"
        return None
    if row["p_event_id"] is None:
        return "audit_llm_calls has no row for it"
    record = orjson.loads(body)
    for column, key, _cast in _LLM_FIELDS:
        expected = record.get(key)
        if isinstance(expected, str):
            expected = expected.replace("\x00", nul)
        if row[f"p_{column}"] != expected:
            return (f"audit_llm_calls.{column} is {row[f'p_{column}']!r}, the record says "
                    f"{expected!r}")  # fmt: skip
    for column in ("time_start", "time_end"):
        stored: datetime | None = _dt(row[f"p_{column}"])
        if stored != parse_rfc3339(record[column]):
            return f"audit_llm_calls.{column} is {stored}, the record says {record[column]}"
    declared = _declared(record.get("data_classes") or [], nul)
    if sorted(classes) != declared:
        return f"audit_llm_call_data_classes holds {sorted(classes)}, the record says {declared}"
    return None


async def check_config_texts(store: Store, fail: Fail, *, cutoff: datetime) -> int:
    """Every stored config text against the ``config.revision`` records of its revision;
    every such record received before ``cutoff`` has its text."""
    hashes: dict[str, set[str]] = {}
    received: dict[str, datetime] = {}
    purged = 0
    async for row in each_event(store, CONFIG_REVISION, "record, received_at"):
        body = bytes(row["record"])
        if not body:
            purged += 1
            continue
        record = orjson.loads(body)
        revision = str(record["config.revision"])
        hashes.setdefault(revision, set()).add(str(record["config.text_sha256"]))
        at = _dt(row["received_at"])
        if at is not None:
            received[revision] = min(at, received.get(revision, at))
    checked, seen, last = 0, set(), ""
    while True:
        async with store.transaction(readonly=True) as tx:
            texts = await tx.fetch(
                "SELECT revision, text FROM audit_config_texts WHERE revision > $1"
                " ORDER BY revision LIMIT 100",
                last,
            )
        for row in texts:
            revision = str(row["revision"])
            seen.add(revision)
            digest = hashlib.sha256(str(row["text"]).encode()).hexdigest()
            if revision not in hashes:
                if not purged:
                    fail(f"config text of revision {revision}: no config.revision record names "
                         "it")  # fmt: skip
                continue
            checked += 1
            if digest not in hashes[revision]:
                fail(f"config text of revision {revision} differs from the text its "
                     "config.revision record hashed (config.text_sha256)")  # fmt: skip
        if len(texts) < 100:
            break
        last = str(texts[-1]["revision"])
    for revision, at in sorted(received.items(), key=lambda item: item[1]):
        if revision not in seen and at < cutoff:
            fail(f"config text of revision {revision} is missing")
    return checked
