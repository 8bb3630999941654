"""Audit: the canonical records, their query projections, config texts, and tail cursors.

- ``audit_events`` holds every record exactly as hashed (``record``: canonical JSON bytes) with
  its RFC 9162 leaf hash. ``event_id`` is unique, so replaying a spool or a second replica
  inserting the same derived event (``INSERT … ON CONFLICT DO NOTHING``) never duplicates one.
  ``ingest_id`` is a local insertion order, a hint only: it is not the audit sequence (the
  tamper-evidence issue adds a sequencer).
- ``audit_llm_calls`` is the query projection of ``llm.call`` records: one row per call with
  indexed columns for time, team, principal, provider, model, status and cost. Everything in it
  is also in the record; static facts that never change per row (gateway version, instance)
  stay in the record only.
- ``audit_llm_call_data_classes``: a call's data classes (class, count, source), with the call's
  time so "class X between two dates" is one index range.
- ``audit_config_texts``: the full text of every config revision that was served.
- No foreign keys: a projection row is written in the same transaction as its record, and
  the checks cost more than the insert on the request rate (and SQLite's
  ``audit_events`` has no ``AUTOINCREMENT`` for the same reason; rows are never deleted, so
  ``ingest_id`` still only grows).
- ``audit_cursors``: how far derived streams (``admin_events`` → ``admin.change``) were read;
  its row exists from the start so that replicas serialise on it (``FOR UPDATE``).
"""

SQLITE = """
CREATE TABLE audit_events (
    ingest_id   INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    event_type  TEXT NOT NULL,
    at          TEXT NOT NULL,
    record      BLOB NOT NULL,
    leaf_hash   BLOB NOT NULL CHECK (length(leaf_hash) = 32),
    received_at TEXT NOT NULL
);
CREATE INDEX audit_events_type_at ON audit_events (event_type, at);

CREATE TABLE audit_llm_calls (
    event_id        TEXT PRIMARY KEY,
    request_id      TEXT NOT NULL,
    time_start      TEXT NOT NULL,
    time_end        TEXT NOT NULL,
    team            TEXT,
    principal_kind  TEXT,
    principal_id    TEXT,
    token_id        TEXT,
    operation       TEXT NOT NULL,
    requested_model TEXT,
    provider        TEXT,
    provider_name   TEXT,
    model           TEXT,
    region          TEXT,
    status          INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    stopped_at      TEXT,
    error_type      TEXT,
    input_tokens    INTEGER NOT NULL,
    output_tokens   INTEGER NOT NULL,
    cost_micros     INTEGER NOT NULL,
    latency_ms      INTEGER NOT NULL,
    config_revision TEXT NOT NULL
);
CREATE INDEX audit_llm_calls_time ON audit_llm_calls (time_start);
CREATE INDEX audit_llm_calls_request ON audit_llm_calls (request_id);
CREATE INDEX audit_llm_calls_team ON audit_llm_calls (team, time_start);
CREATE INDEX audit_llm_calls_principal ON audit_llm_calls (principal_id, time_start);
CREATE INDEX audit_llm_calls_provider ON audit_llm_calls (provider, time_start);
CREATE INDEX audit_llm_calls_model ON audit_llm_calls (model, time_start);
CREATE INDEX audit_llm_calls_status ON audit_llm_calls (status, time_start);
CREATE INDEX audit_llm_calls_cost ON audit_llm_calls (cost_micros);

CREATE TABLE audit_llm_call_data_classes (
    event_id    TEXT NOT NULL,
    data_class  TEXT NOT NULL,
    source      TEXT NOT NULL,
    match_count INTEGER,
    time_start  TEXT NOT NULL,
    PRIMARY KEY (event_id, data_class, source)
) WITHOUT ROWID;
CREATE INDEX audit_llm_call_data_classes_class
    ON audit_llm_call_data_classes (data_class, time_start);

CREATE TABLE audit_config_texts (
    revision   TEXT PRIMARY KEY,
    text       TEXT NOT NULL,
    first_seen TEXT NOT NULL
);

CREATE TABLE audit_cursors (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
INSERT INTO audit_cursors (name, position) VALUES ('admin_events', 0);
"""

POSTGRESQL = """
CREATE TABLE audit_events (
    ingest_id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    event_type  TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    record      BYTEA NOT NULL,
    leaf_hash   BYTEA NOT NULL CHECK (length(leaf_hash) = 32),
    received_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX audit_events_type_at ON audit_events (event_type, at);

CREATE TABLE audit_llm_calls (
    event_id        TEXT PRIMARY KEY,
    request_id      TEXT NOT NULL,
    time_start      TIMESTAMPTZ NOT NULL,
    time_end        TIMESTAMPTZ NOT NULL,
    team            TEXT,
    principal_kind  TEXT,
    principal_id    TEXT,
    token_id        TEXT,
    operation       TEXT NOT NULL,
    requested_model TEXT,
    provider        TEXT,
    provider_name   TEXT,
    model           TEXT,
    region          TEXT,
    status          INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    stopped_at      TEXT,
    error_type      TEXT,
    input_tokens    BIGINT NOT NULL,
    output_tokens   BIGINT NOT NULL,
    cost_micros     BIGINT NOT NULL,
    latency_ms      BIGINT NOT NULL,
    config_revision TEXT NOT NULL
);
CREATE INDEX audit_llm_calls_time ON audit_llm_calls (time_start);
CREATE INDEX audit_llm_calls_request ON audit_llm_calls (request_id);
CREATE INDEX audit_llm_calls_team ON audit_llm_calls (team, time_start);
CREATE INDEX audit_llm_calls_principal ON audit_llm_calls (principal_id, time_start);
CREATE INDEX audit_llm_calls_provider ON audit_llm_calls (provider, time_start);
CREATE INDEX audit_llm_calls_model ON audit_llm_calls (model, time_start);
CREATE INDEX audit_llm_calls_status ON audit_llm_calls (status, time_start);
CREATE INDEX audit_llm_calls_cost ON audit_llm_calls (cost_micros);

CREATE TABLE audit_llm_call_data_classes (
    event_id    TEXT NOT NULL,
    data_class  TEXT NOT NULL,
    source      TEXT NOT NULL,
    match_count BIGINT,
    time_start  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (event_id, data_class, source)
);
CREATE INDEX audit_llm_call_data_classes_class
    ON audit_llm_call_data_classes (data_class, time_start);

CREATE TABLE audit_config_texts (
    revision   TEXT PRIMARY KEY,
    text       TEXT NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL
);

CREATE TABLE audit_cursors (
    name     TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
INSERT INTO audit_cursors (name, position) VALUES ('admin_events', 0);
"""
