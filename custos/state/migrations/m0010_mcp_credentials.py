"""MCP per-user credentials (``auth: {type: per_user}``, custos.state.mcp_credentials).

One row per (user, server): ``ciphertext`` is nonce ‖ AES-256-GCM ciphertext ‖ tag, sealed
with the user and the server as associated data; ``key_id`` names the key that sealed it (a
digest, never key material). The rows belong to their user: deleting the user deletes them.
The value is never stored in clear.
"""

SQLITE = """
CREATE TABLE mcp_credentials (
    principal_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    server       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    ciphertext   BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (principal_id, server)
);
"""

POSTGRESQL = """
CREATE TABLE mcp_credentials (
    principal_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    server       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    ciphertext   BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (principal_id, server)
);
"""
