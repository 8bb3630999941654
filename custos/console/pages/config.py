"""The config: the revision being served, and every revision loaded with who loaded it and
the diff from the one before.

The history is the ``config.revision`` audit records, read through
``custos.audit.service.events`` (admin and auditor roles, as through the API); each
revision's text is the one the audit store keeps for it.
"""

from __future__ import annotations

import difflib
from typing import Any

import orjson

from custos.audit import service as audit_service
from custos.audit.storage.store import AuditStore
from custos.console.web import Request, Response

#: The newest revisions listed.
SHOWN = 50


async def page(c: Any, r: Request) -> Response:
    service, _ = c.service()
    history: list[dict[str, Any]] = []
    after = 0
    while True:
        found = await audit_service.events(
            service, r.principal,
            audit_service.EventsQuery.model_validate(
                {"event_type": "config.revision", "after": after}
            ),
        )  # fmt: skip
        history += [orjson.loads(e.record) for e in found.data]
        if found.next_after is None:
            break
        after = found.next_after
    history = history[::-1][:SHOWN]
    chosen = r.query.get("revision") or (history[0]["config.revision"] if history else None)
    diff = None
    if chosen is not None:
        diff = await _diff(AuditStore(service.store), history, chosen)
    return c.render(
        r,
        "config.html",
        served=c.gateway.runtime.revision,
        history=history,
        chosen=chosen,
        diff=diff,
    )


async def _diff(store: AuditStore, history: list[dict[str, Any]], revision: str) -> list[str]:
    entry = next((h for h in history if h["config.revision"] == revision), None)
    if entry is None:
        return []
    new = await store.config_text(revision) or ""
    previous = entry.get("config.previous_revision")
    old = (await store.config_text(previous) or "") if previous else ""
    return list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), previous or "(none)", revision, lineterm=""
        )
    )
