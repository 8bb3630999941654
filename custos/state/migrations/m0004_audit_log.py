"""Audit log: the sequenced Merkle log over ``audit_events``, its checkpoints and signing keys.

- ``audit_pending``: the queue of records not yet sequenced, filled by a trigger on
  ``audit_events`` in the inserting transaction (rows skipped by ``ON CONFLICT DO NOTHING`` fire
  no trigger, so a replayed record is never queued twice). ``pending_id`` only picks the next
  batch; it is never the audit order. The sequencer deletes a row when it sequences the record.
- ``audit_leaves``: ``seq`` 0..n-1, gap-free, assigned only by the sequencer; the audit order.
- ``audit_merkle_nodes``: every complete subtree ``(level, idx)`` of the tree (level 0 = the
  leaf hashes), written once when completed, so proofs are O(log n) reads.
- ``audit_tree_head``: one row, ``(size, root)`` of the tree and the leader ``epoch``. The
  sequencer writes it with compare-and-swap on ``size`` and ``epoch``, so a stalled former
  leader's write changes nothing (fencing).
- ``audit_checkpoints``: signed notes (C2SP signed-note / tlog-checkpoint), chained by ``prev``.
- ``audit_signing_keys``: public keys, kept forever, with their validity period.
"""

SQLITE = """
CREATE TABLE audit_pending (
    pending_id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE
);
CREATE TRIGGER audit_events_pending AFTER INSERT ON audit_events
BEGIN
    INSERT OR IGNORE INTO audit_pending (event_id) VALUES (NEW.event_id);
END;
INSERT INTO audit_pending (event_id) SELECT event_id FROM audit_events ORDER BY ingest_id;

CREATE TABLE audit_leaves (
    seq          INTEGER PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE REFERENCES audit_events (event_id),
    leaf_hash    BLOB NOT NULL CHECK (length(leaf_hash) = 32),
    sequenced_at TEXT NOT NULL
);

CREATE TABLE audit_merkle_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE TABLE audit_tree_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    size       INTEGER NOT NULL,
    root       BLOB NOT NULL,
    epoch      INTEGER NOT NULL,
    leader     TEXT,
    updated_at TEXT
);
INSERT INTO audit_tree_head (id, size, root, epoch)
    VALUES (1, 0, X'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 0);

CREATE TABLE audit_checkpoints (
    id        INTEGER PRIMARY KEY,
    size      INTEGER NOT NULL,
    root      BLOB NOT NULL,
    at        TEXT NOT NULL,
    note      TEXT NOT NULL,
    note_hash BLOB NOT NULL
);

CREATE TABLE audit_signing_keys (
    key_name   TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    public_key BLOB NOT NULL,
    not_before TEXT NOT NULL,
    not_after  TEXT,
    PRIMARY KEY (key_name, key_id)
);
"""

POSTGRESQL = """
CREATE TABLE audit_pending (
    pending_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   TEXT NOT NULL UNIQUE
);
CREATE FUNCTION audit_events_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_pending (event_id) VALUES (NEW.event_id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_events_pending AFTER INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_pending();
INSERT INTO audit_pending (event_id) SELECT event_id FROM audit_events ORDER BY ingest_id;

CREATE TABLE audit_leaves (
    seq          BIGINT PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE REFERENCES audit_events (event_id),
    leaf_hash    BYTEA NOT NULL CHECK (length(leaf_hash) = 32),
    sequenced_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE audit_merkle_nodes (
    level INTEGER NOT NULL,
    idx   BIGINT NOT NULL,
    hash  BYTEA NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE TABLE audit_tree_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    size       BIGINT NOT NULL,
    root       BYTEA NOT NULL,
    epoch      BIGINT NOT NULL,
    leader     TEXT,
    updated_at TIMESTAMPTZ
);
INSERT INTO audit_tree_head (id, size, root, epoch)
    VALUES (1, 0, '\\xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 0);

CREATE TABLE audit_checkpoints (
    id        BIGINT PRIMARY KEY,
    size      BIGINT NOT NULL,
    root      BYTEA NOT NULL,
    at        TIMESTAMPTZ NOT NULL,
    note      TEXT NOT NULL,
    note_hash BYTEA NOT NULL
);

CREATE TABLE audit_signing_keys (
    key_name   TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    not_before TIMESTAMPTZ NOT NULL,
    not_after  TIMESTAMPTZ,
    PRIMARY KEY (key_name, key_id)
);
"""
