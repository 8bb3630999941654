"""Audit guards: triggers that keep the audit tables append-only, and the legal-hold table.

What each audit table allows once this migration is applied (anything else raises an error
naming the table and saying the audit tables are append-only):

- ``audit_leaves``, ``audit_merkle_nodes``, ``audit_checkpoints``, ``audit_config_texts``:
  INSERT only; no UPDATE, no DELETE.
- ``audit_events``: INSERT; no DELETE. One UPDATE is allowed, and only inside a purge window
  (below): emptying ``record`` (to zero bytes) of a record that is already sequenced and is not
  itself an ``audit.purge`` record, every other column unchanged. The leaf hash stays.
- ``audit_llm_calls``, ``audit_llm_call_data_classes`` (query projections): INSERT; DELETE only
  inside a purge window; no UPDATE.
- ``audit_signing_keys``: INSERT; no DELETE; UPDATE only to close a key's validity, i.e. set
  ``not_after`` where it was NULL, every other column unchanged (key rotation).
- ``audit_holds`` (new here): INSERT; no DELETE; UPDATE only to release a hold, i.e. set the
  ``released_*`` columns where ``released_at`` was NULL, every other column unchanged.
- On PostgreSQL every guarded table also refuses TRUNCATE (a statement trigger).

Left unguarded, because the code changes them in normal operation and ``verify`` does not trust
them: ``audit_pending`` (the sequencer deletes what it sequenced), ``audit_tree_head`` (moved
by the sequencer's compare-and-swap, epoch bumped on each new leader), ``audit_cursors``
(advanced by the admin-event ingest) and, on SQLite, ``audit_purge_window``.

**The purge window** is how the retention purge (``custos.audit.compliance.retention``) gets its
narrow exception, explicitly and only for the transaction doing it:

- PostgreSQL: the purge transaction runs ``set_config('custos.audit_purge', 'on', true)``
  (transaction-local: it ends with the transaction); the trigger functions check it.
- SQLite: the purge transaction inserts the one row of ``audit_purge_window`` and deletes it
  again before committing, so no other connection ever sees it; the triggers' ``WHEN`` clauses
  check for it.

**What the guards are for.** They stop accidents (a stray ``UPDATE``/``DELETE`` in a console, a
buggy migration or script) and, on PostgreSQL, together with the grants in ``docs/audit.md``,
an application role that holds only INSERT and SELECT. They do not stop whoever owns the
database: the owner can drop or disable triggers, and whoever holds the SQLite file can edit it
at will. Detection does not rely on them: ``custos audit verify`` recomputes every leaf from the
stored bytes and checks the signed (and exported) checkpoints.
"""

_SQLITE_APPEND_ONLY = ("audit_leaves", "audit_merkle_nodes", "audit_checkpoints",
                       "audit_config_texts")  # fmt: skip
_REFUSED = "{table}: the audit tables are append-only ({op} refused)"


def _sqlite_refuse(table: str, op: str, when: str = "") -> str:
    name = f"audit_guard_{table}_{op.lower()}"
    message = _REFUSED.format(table=table, op=op)
    when_clause = f"\nWHEN {when}" if when else ""
    return (
        f"CREATE TRIGGER {name} BEFORE {op} ON {table}{when_clause}\n"
        f"BEGIN\n    SELECT RAISE(ABORT, '{message}');\nEND;\n"
    )


_NO_WINDOW = "NOT EXISTS (SELECT 1 FROM audit_purge_window)"

SQLITE = (
    """
CREATE TABLE audit_holds (
    id             TEXT PRIMARY KEY,
    team           TEXT,
    reason         TEXT NOT NULL,
    set_by         TEXT NOT NULL,
    set_at         TEXT NOT NULL,
    released_by    TEXT,
    released_at    TEXT,
    release_reason TEXT
);

CREATE TABLE audit_purge_window (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    opened_at TEXT NOT NULL
);
"""
    + "".join(_sqlite_refuse(t, op) for t in _SQLITE_APPEND_ONLY for op in ("UPDATE", "DELETE"))
    + _sqlite_refuse(
        "audit_events",
        "UPDATE",
        f"""{_NO_WINDOW}
    OR length(NEW.record) <> 0
    OR OLD.event_type = 'audit.purge'
    OR NOT EXISTS (SELECT 1 FROM audit_leaves WHERE event_id = OLD.event_id)
    OR NEW.ingest_id IS NOT OLD.ingest_id OR NEW.event_id IS NOT OLD.event_id
    OR NEW.event_type IS NOT OLD.event_type OR NEW.at IS NOT OLD.at
    OR NEW.leaf_hash IS NOT OLD.leaf_hash OR NEW.received_at IS NOT OLD.received_at""",
    )
    + _sqlite_refuse("audit_events", "DELETE")
    + "".join(
        _sqlite_refuse(t, "UPDATE") + _sqlite_refuse(t, "DELETE", _NO_WINDOW)
        for t in ("audit_llm_calls", "audit_llm_call_data_classes")
    )
    + _sqlite_refuse(
        "audit_signing_keys",
        "UPDATE",
        """OLD.not_after IS NOT NULL OR NEW.not_after IS NULL
    OR NEW.key_name IS NOT OLD.key_name OR NEW.key_id IS NOT OLD.key_id
    OR NEW.public_key IS NOT OLD.public_key OR NEW.not_before IS NOT OLD.not_before""",
    )
    + _sqlite_refuse("audit_signing_keys", "DELETE")
    + _sqlite_refuse(
        "audit_holds",
        "UPDATE",
        """OLD.released_at IS NOT NULL OR NEW.released_at IS NULL OR NEW.released_by IS NULL
    OR NEW.id IS NOT OLD.id OR NEW.team IS NOT OLD.team OR NEW.reason IS NOT OLD.reason
    OR NEW.set_by IS NOT OLD.set_by OR NEW.set_at IS NOT OLD.set_at""",
    )
    + _sqlite_refuse("audit_holds", "DELETE")
)

_PG_GUARDED = ("audit_events", "audit_llm_calls", "audit_llm_call_data_classes", "audit_leaves",
               "audit_merkle_nodes", "audit_checkpoints", "audit_config_texts",
               "audit_signing_keys", "audit_holds")  # fmt: skip
#: The row trigger function of each table; tables not listed refuse every UPDATE and DELETE.
_PG_ROW_FUNCTIONS = {
    "audit_events": "audit_events_guard",
    "audit_llm_calls": "audit_projection_guard",
    "audit_llm_call_data_classes": "audit_projection_guard",
    "audit_signing_keys": "audit_signing_keys_guard",
    "audit_holds": "audit_holds_guard",
}

POSTGRESQL = """
CREATE TABLE audit_holds (
    id             TEXT PRIMARY KEY,
    team           TEXT,
    reason         TEXT NOT NULL,
    set_by         TEXT NOT NULL,
    set_at         TIMESTAMPTZ NOT NULL,
    released_by    TEXT,
    released_at    TIMESTAMPTZ,
    release_reason TEXT
);

CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: the audit tables are append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE FUNCTION audit_purging() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('custos.audit_purge', true), '') = 'on'
$$;

CREATE FUNCTION audit_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND audit_purging() AND length(NEW.record) = 0
       AND OLD.event_type <> 'audit.purge'
       AND EXISTS (SELECT 1 FROM audit_leaves WHERE event_id = OLD.event_id)
       AND (NEW.ingest_id, NEW.event_id, NEW.event_type, NEW.at, NEW.leaf_hash, NEW.received_at)
           IS NOT DISTINCT FROM
           (OLD.ingest_id, OLD.event_id, OLD.event_type, OLD.at, OLD.leaf_hash, OLD.received_at)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '%: the audit tables are append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE FUNCTION audit_projection_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND audit_purging() THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '%: the audit tables are append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE FUNCTION audit_signing_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.not_after IS NULL AND NEW.not_after IS NOT NULL
       AND (NEW.key_name, NEW.key_id, NEW.public_key, NEW.not_before)
           IS NOT DISTINCT FROM (OLD.key_name, OLD.key_id, OLD.public_key, OLD.not_before)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '%: the audit tables are append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE FUNCTION audit_holds_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.released_at IS NULL AND NEW.released_at IS NOT NULL
       AND NEW.released_by IS NOT NULL
       AND (NEW.id, NEW.team, NEW.reason, NEW.set_by, NEW.set_at)
           IS NOT DISTINCT FROM (OLD.id, OLD.team, OLD.reason, OLD.set_by, OLD.set_at)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '%: the audit tables are append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
""" + "".join(
    f"CREATE TRIGGER audit_guard BEFORE UPDATE OR DELETE ON {t}\n"
    f"    FOR EACH ROW EXECUTE FUNCTION {_PG_ROW_FUNCTIONS.get(t, 'audit_refuse_change')}();\n"
    f"CREATE TRIGGER audit_guard_truncate BEFORE TRUNCATE ON {t}\n"
    "    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();\n"
    for t in _PG_GUARDED
)
