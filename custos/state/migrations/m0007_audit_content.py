"""Audit content: encrypted prompts and completions, outside the Merkle-logged tables.

- ``audit_content_keys``: the data keys (DEKs). One row per key: the ``team`` and
  ``principal_id`` it encrypts content for (its scope, what an erasure selects by), the key
  wrapped under the master key (AES key wrap, RFC 3394) and which master key wrapped it
  (``kek_id``, a fingerprint). Erasure deletes rows here: that is the crypto-shredding.
- ``audit_content``: one row per (event, part): ``part`` is ``request`` or ``response``;
  ``blob`` is nonce ‖ AES-256-GCM ciphertext ‖ tag; the record names ``SHA-256(blob)``. The
  foreign key makes a row impossible without its key and deletes the rows with their key.
- ``audit_content_erasures``: the ids of destroyed keys (never key material), so that a record
  batch replayed from a spool after an erasure cannot bring a destroyed key back, and so that
  reading the content of an erased event says "erased" rather than "missing".

Nothing here is hashed into the log: records carry only the ciphertext's hash, the key id and
the size, so deleting these rows never breaks verification.
"""

SQLITE = """
CREATE TABLE audit_content_keys (
    dek_id       TEXT PRIMARY KEY,
    team         TEXT,
    principal_id TEXT,
    kek_id       TEXT NOT NULL,
    wrapped_key  BLOB NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX audit_content_keys_team ON audit_content_keys (team);
CREATE INDEX audit_content_keys_principal ON audit_content_keys (principal_id);

CREATE TABLE audit_content (
    event_id    TEXT NOT NULL,
    part        TEXT NOT NULL CHECK (part IN ('request', 'response')),
    dek_id      TEXT NOT NULL REFERENCES audit_content_keys (dek_id) ON DELETE CASCADE,
    blob        BLOB NOT NULL,
    PRIMARY KEY (event_id, part)
);
CREATE INDEX audit_content_dek ON audit_content (dek_id);

CREATE TABLE audit_content_erasures (
    dek_id       TEXT PRIMARY KEY,
    team         TEXT,
    principal_id TEXT,
    erased_at    TEXT NOT NULL
);
"""

POSTGRESQL = """
CREATE TABLE audit_content_keys (
    dek_id       TEXT PRIMARY KEY,
    team         TEXT,
    principal_id TEXT,
    kek_id       TEXT NOT NULL,
    wrapped_key  BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX audit_content_keys_team ON audit_content_keys (team);
CREATE INDEX audit_content_keys_principal ON audit_content_keys (principal_id);

CREATE TABLE audit_content (
    event_id    TEXT NOT NULL,
    part        TEXT NOT NULL CHECK (part IN ('request', 'response')),
    dek_id      TEXT NOT NULL REFERENCES audit_content_keys (dek_id) ON DELETE CASCADE,
    blob        BYTEA NOT NULL,
    PRIMARY KEY (event_id, part)
);
CREATE INDEX audit_content_dek ON audit_content (dek_id);

CREATE TABLE audit_content_erasures (
    dek_id       TEXT PRIMARY KEY,
    team         TEXT,
    principal_id TEXT,
    erased_at    TIMESTAMPTZ NOT NULL
);
"""
