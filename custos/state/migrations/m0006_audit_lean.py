"""Audit: less work per record on the request rate.

- SQLite: the ``audit_events_pending`` trigger goes. Every transaction that inserts records
  now also appends them to the Merkle log itself (``custos.audit.storage.store.insert_in``):
  SQLite runs one writing transaction at a time, so the queue (a row inserted by the trigger and
  deleted by the sequencer for every record, and a transaction of its own per batch) bought
  nothing there.
  Records queued before this migration are still sequenced from ``audit_pending``. PostgreSQL
  keeps the trigger and its one sequencer: there, many replicas insert at once.
- Both: the projection ``audit_llm_calls`` keeps the indexes its readers use (time, team and
  principal with time, request id) and drops those on provider, model, status and cost. Reports
  always bound the time, so those columns are filtered within a time range; each index cost an
  insert per call (measured on SQLite: 33 µs of store time per record with all indexes and the
  trigger, 17 µs without the trigger and these four).
"""

_DROPPED = """
DROP INDEX audit_llm_calls_provider;
DROP INDEX audit_llm_calls_model;
DROP INDEX audit_llm_calls_status;
DROP INDEX audit_llm_calls_cost;
"""

SQLITE = "DROP TRIGGER audit_events_pending;\n" + _DROPPED

POSTGRESQL = _DROPPED
