"""The content tables on SQLite and PostgreSQL: attachments in (idempotent), erasure (keys and
ciphertexts gone, recorded, not brought back by a replayed attachment), the key hierarchy, and
a ciphertext bound to its record; plus the settings' key checks."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from custos.audit.records import content
from custos.audit.storage.content_store import Attachment, erase, stored_part
from custos.audit.storage.store import AuditStore
from custos.config.audit import AuditSettings
from custos.state.models import Actor, Change
from custos.state.store import Store
from tests.store_fixtures import store, store_url  # noqa: F401  (fixtures)

ACTOR = Actor("user:usr_tests", "admin")


def sealed(keys: content.ContentKeys, event_id: str, team: str, principal: str) -> Attachment:
    key = keys.data_key(team, principal)
    parts = {
        part: content.encrypt(key, event_id, part, f"{event_id} {part} text".encode())
        for part in content.PARTS
    }
    return Attachment(event_id, key.row, parts)


def plaintext(keys: content.ContentKeys, event_id: str, part: str, found: object) -> bytes:
    assert found.key is not None and found.blob is not None  # type: ignore[attr-defined]
    aead = keys.unwrap(found.key)  # type: ignore[attr-defined]
    return content.decrypt(aead, found.key.dek_id, event_id, part, found.blob)  # type: ignore[attr-defined]


async def test_attachments_erasure_and_replay(store: Store) -> None:  # noqa: F811
    keys = content.ContentKeys(lambda: secrets.token_bytes(32))
    red = sealed(keys, "evt-red", "red", "va_red")
    red_two = sealed(keys, "evt-red-2", "red", "va_red")
    blue = sealed(keys, "evt-blue", "blue", "va_blue")
    assert red.key.dek_id == red_two.key.dek_id != blue.key.dek_id  # one key per scope
    audit = AuditStore(store)
    lines = [a.encode() for a in (red, red_two, blue)]
    await audit.insert([], lines)
    await audit.insert([], lines)  # a replayed batch changes nothing

    found = await stored_part(store, "evt-red", "request", red.key.dek_id)
    assert plaintext(keys, "evt-red", "request", found) == b"evt-red request text"
    assert found.erased_at is None

    done = await erase(store, ACTOR, scope="team", subject="red")
    assert (done.data_keys, done.contents) == (1, 4)
    gone = await stored_part(store, "evt-red", "request", red.key.dek_id)
    assert gone.key is None and gone.blob is None and gone.erased_at is not None
    kept = await stored_part(store, "evt-blue", "response", blue.key.dek_id)
    assert plaintext(keys, "evt-blue", "response", kept) == b"evt-blue response text"

    # A spool replayed after the erasure (or a replica that had not heard of it yet) cannot
    # bring the destroyed key or its content back.
    await audit.insert([], [red.encode()])
    again = await stored_part(store, "evt-red", "request", red.key.dek_id)
    assert again.key is None and again.blob is None

    # The erasure is an admin event (it becomes an admin.change record): counts, no content.
    async with store.transaction(readonly=True) as tx:
        events = await tx.fetch("SELECT * FROM admin_events WHERE action = 'audit.content.erase'")
        left = await tx.fetch("SELECT dek_id FROM audit_content_keys")
    assert [(e["target_type"], e["target_id"]) for e in events] == [("team", "red")]
    assert [r["dek_id"] for r in left] == [blue.key.dek_id]

    # Erasing by principal; erasing again finds nothing more.
    assert (await erase(store, ACTOR, scope="principal", subject="va_blue")).data_keys == 1
    assert (await erase(store, ACTOR, scope="principal", subject="va_blue")).data_keys == 0


async def test_the_key_cache_forgets_what_was_erased() -> None:
    keys = content.ContentKeys(lambda: secrets.token_bytes(32))
    red = keys.data_key("red", "usr_a")
    other = keys.data_key("blue", "usr_a")
    blue = keys.data_key("blue", "usr_b")
    keys.forget(Change("team", "red"))  # another kind of change: nothing forgotten
    assert keys.data_key("red", "usr_a") is red
    keys.forget(Change("audit_content", "team:red"))
    assert keys.data_key("red", "usr_a").row.dek_id != red.row.dek_id
    keys.forget(Change("audit_content", "principal:usr_a"))
    assert keys.data_key("blue", "usr_a").row.dek_id != other.row.dek_id
    assert keys.data_key("blue", "usr_b") is blue
    keys.forget(Change.everything())
    assert keys.data_key("blue", "usr_b").row.dek_id != blue.row.dek_id


def test_a_ciphertext_is_bound_to_its_event_part_and_master_key() -> None:
    kek = secrets.token_bytes(32)
    keys = content.ContentKeys(lambda: kek)
    key = keys.data_key("red", "usr_a")
    blob = content.encrypt(key, "evt-1", "request", b"hello")
    again = content.encrypt(key, "evt-1", "request", b"hello")
    assert blob[: content.NONCE_BYTES] != again[: content.NONCE_BYTES]  # a fresh nonce each
    aead = keys.unwrap(key.row)
    assert content.decrypt(aead, key.row.dek_id, "evt-1", "request", blob) == b"hello"
    for event_id, part in [("evt-2", "request"), ("evt-1", "response")]:
        with pytest.raises(content.ContentUnreadable):
            content.decrypt(aead, key.row.dek_id, event_id, part, blob)
    stranger = content.ContentKeys(lambda: secrets.token_bytes(32))
    with pytest.raises(content.ContentKeyUnavailable):
        stranger.unwrap(key.row)
    assert key.row.wrapped != b"" and len(key.row.wrapped) == 40  # RFC 3394: 32 + 8 bytes


def test_master_key_file_beside_sqlite(tmp_path: Path) -> None:
    db = str(tmp_path / "custos.db")
    with pytest.raises(content.ContentKeyUnavailable):
        content.master_key(None, db, create=False)
    first = content.master_key(None, db)
    assert len(first) == 32 and content.master_key(None, db) == first
    assert (tmp_path / "custos.db.content-key").stat().st_mode & 0o777 == 0o600
    configured = base64.b64encode(b"k" * 32).decode()
    assert content.master_key(configured, db) == b"k" * 32
    with pytest.raises(content.ContentKeyUnavailable):
        content.master_key(None, None)


def test_content_settings() -> None:
    assert AuditSettings().content == "none"
    for mode in content.MODES:
        assert AuditSettings(content=mode).content == mode
    AuditSettings(content_key=base64.b64encode(b"x" * 32).decode())
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            AuditSettings(content_key=bad)


def test_postgresql_needs_a_configured_key_for_encrypted_modes() -> None:
    from pydantic import ValidationError

    from custos.config.schema import Config

    base = {
        "version": 1,
        "state": {"store": "postgresql://127.0.0.1/test"},
        "identity": {"token_hash_key": "k" * 32},
        "providers": {},
    }
    Config.model_validate({**base, "audit": {"content": "hash"}})
    with pytest.raises(ValidationError, match=r"audit\.content_key is required"):
        Config.model_validate({**base, "audit": {"content": "full"}})
    key = base64.b64encode(b"x" * 32).decode()
    Config.model_validate({**base, "audit": {"content": "redacted", "content_key": key}})


async def test_attachments_left_in_a_spool_are_replayed_with_their_records(tmp_path: Path) -> None:
    """What a crash leaves in the spool (a record line, then its attachment line) reaches the
    store at the next start, content included."""
    from custos.audit.records.record import rfc3339_ms, seal
    from custos.audit.storage.spool import Spool
    from custos.audit.storage.writer import AuditWriter
    from custos.state.backends import open_store

    db = await open_store(f"sqlite:///{tmp_path / 'custos.db'}")
    try:
        keys = content.ContentKeys(lambda: secrets.token_bytes(32))
        at = 1_782_907_200_000
        record = seal({"event_type": "auth.failure", "time_start": rfc3339_ms(at)}, at_ms=at)
        attachment = sealed(keys, record.event_id, "red", "usr_a")
        spool_dir = tmp_path / "spool"
        spool_dir.mkdir()
        (spool_dir / "000000000001.spool").write_bytes(
            record.body + b"\n+" + attachment.encode() + b"\n"
        )
        writer = AuditWriter(AuditStore(db), Spool(spool_dir, max_bytes=1 << 30),
                             flush_interval_s=0.01, block=lambda: False)  # fmt: skip
        assert await writer.start() == 1
        await writer.close()
        found = await stored_part(db, record.event_id, "response", attachment.key.dek_id)
        assert plaintext(keys, record.event_id, "response", found).endswith(b"response text")
        assert not (spool_dir / "000000000001.spool").exists()
    finally:
        await db.close()


def test_a_stream_and_a_plain_response_capture_the_same_output() -> None:
    import orjson

    from custos.audit.records.transcript import StreamTranscript, response_content

    def sse(*events: dict) -> bytes:
        return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)

    anthropic = StreamTranscript("anthropic")
    data = sse(
        {"type": "message_start", "message": {"content": []}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "tu_1", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '{"city": "Ly'}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": 'on"}'}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}},
    )  # fmt: skip
    anthropic.feed(data[:-7])  # an event split across two chunks
    anthropic.feed(data[-7:])
    plain = response_content("anthropic", "messages", orjson.dumps({
        "content": [{"type": "text", "text": "Hi"},
                    {"type": "tool_use", "id": "tu_1", "name": "f", "input": {"city": "Lyon"}}],
        "stop_reason": "tool_use",
    }))  # fmt: skip
    assert anthropic.result() == plain

    chat = StreamTranscript("openai")
    chat.feed(sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    ) + b"data: [DONE]\n\n")  # fmt: skip
    assert chat.result() == response_content("openai", "chat", orjson.dumps({"choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello"},
         "finish_reason": "stop"}]}))  # fmt: skip
