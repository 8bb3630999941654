"""Audit: the records of one event type, read page by page, without sorting them all each page.

Every reader that filters ``audit_events`` by ``event_type`` pages through it in insertion
order (``event_type = $1 AND ingest_id > $2 ORDER BY ingest_id LIMIT n``: the admin API's
``/audit/events?event_type=`` and so ``custos audit export``, the verifier's purge records, the
lookup of an ``auth.failure`` by request id). On ``(event_type, at)`` SQLite found the type's
rows and then sorted all of them past the cursor for every page: an export of N records of one
type did O(N) work per page. An index ordered by ``ingest_id`` within each type serves those
pages in index order. It replaces the old one rather than joining it, so a record still costs
one index entry for its type (a smaller one). On SQLite the index is on ``event_type`` alone:
SQLite appends the row id (``ingest_id``) to every index entry, so that is the same order.
On a large PostgreSQL store the index is built while the migration holds the table (minutes per
hundred million records).
"""

SQLITE = """
DROP INDEX audit_events_type_at;
CREATE INDEX audit_events_type ON audit_events (event_type);
"""

POSTGRESQL = """
DROP INDEX audit_events_type_at;
CREATE INDEX audit_events_type ON audit_events (event_type, ingest_id);
"""
