"""The record's canonical bytes and leaf hash: what the Merkle log (issue 6) is built on."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from custos.audit.records.events import truncate_address
from custos.audit.records.record import (
    NotCanonical,
    canonical_bytes,
    leaf_hash,
    rfc3339_ms,
    seal,
    unix_ms,
    unseal,
    uuid7,
)
from custos.errors import GatewayError
from custos.policy.data_classes import declared_data_classes
from custos.wire import MAX_INT

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_INT, MAX_INT) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=8))
def test_canonical_bytes_are_the_documented_json(value: dict) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    body = canonical_bytes(value)
    assert body == expected.encode("utf-8")
    assert b"\n" not in body  # one record per line in the spool and in exports
    assert json.loads(body) == value


def test_canonical_bytes_by_example() -> None:
    record = {"b": "é\n\u2028", "a": [1, True, None], "cost_micros": 12}
    expected = '{"a":[1,true,null],"b":"é\\n\u2028","cost_micros":12}'
    assert canonical_bytes(record) == expected.encode()


@pytest.mark.parametrize(
    "bad",
    [
        {"cost": 0.5},
        {"nested": {"deep": [1, 2.0]}},
        {"big": 2**53},
        {1: "non-string key"},
        {"bytes": b"x"},
        {"set": {1}},
        {"surrogate": "\ud800"},
    ],
)
def test_non_canonical_values_are_refused(bad: dict) -> None:
    with pytest.raises(NotCanonical):
        canonical_bytes(bad)


def test_leaf_hash_is_rfc9162() -> None:
    # RFC 9162 §2.1.1: MTH({d(0)}) = SHA-256(0x00 || d(0)); the empty leaf's well-known value.
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    body = b'{"a":1}'
    assert leaf_hash(body) == hashlib.sha256(b"\x00" + body).digest()


def test_seal_completes_and_unseal_checks() -> None:
    at = 1_782_907_200_123
    sealed = seal({"event_type": "llm.call", "time_start": rfc3339_ms(at)}, at_ms=at)
    assert sealed.fields["schema_version"] == 3
    assert len(bytes.fromhex(sealed.fields["salt"])) == 16
    event_id = uuid.UUID(sealed.event_id)  # a UUIDv7 of the record's time, and a salt of its own
    assert event_id.version == 7 and int.from_bytes(event_id.bytes[:6], "big") == at
    assert event_id.bytes[9:].hex() not in sealed.fields["salt"]  # (the id's last 56 bits)
    assert sealed.fields["salt"][:14] not in event_id.hex
    assert sealed.leaf_hash == leaf_hash(sealed.body)
    back = unseal(sealed.body)
    assert (back.event_id, back.at_ms, back.leaf_hash) == (sealed.event_id, at, sealed.leaf_hash)
    # Same content, new salt: the leaf hashes differ, so a leaf reveals nothing of a record.
    again = seal({"event_type": "llm.call", "time_start": rfc3339_ms(at)}, at_ms=at)
    assert again.leaf_hash != sealed.leaf_hash
    with pytest.raises(NotCanonical):
        unseal(sealed.body.replace(b":", b": ", 1))  # not canonical any more
    with pytest.raises(NotCanonical):
        unseal(sealed.body[:-5])  # torn
    with pytest.raises(NotCanonical):
        seal({"event_type": "nope", "time_start": rfc3339_ms(at)}, at_ms=at)


def test_uuid7_and_times() -> None:
    at = 1_782_907_200_123
    parsed = uuid.UUID(uuid7(at))
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert int.from_bytes(parsed.bytes[:6], "big") == at
    assert uuid7(at) != uuid7(at)
    assert rfc3339_ms(at) == "2026-07-01T12:00:00.123Z"
    from custos.audit.records.record import parse_rfc3339

    assert unix_ms(parse_rfc3339(rfc3339_ms(at))) == at


def test_declared_data_classes() -> None:
    declared = "customer_data:2, pii.email,customer_data:1"
    hits = declared_data_classes({"data_classification": declared})
    assert [(h.name, h.count, h.source) for h in hits] == [
        ("customer_data", 3, "declared"),
        ("pii.email", None, "declared"),
    ]
    assert declared_data_classes({}) == []
    for bad in ("Customer", "x:-1", "x:1.5", "a b"):
        with pytest.raises(GatewayError) as caught:
            declared_data_classes({"data_classification": bad})
        assert caught.value.status == 400 and caught.value.code == "invalid_metadata"


def test_addresses() -> None:
    assert truncate_address("203.0.113.77") == "203.0.113.0/24"
    assert truncate_address("2001:db8:1:2::1") == "2001:db8:1::/48"
    assert truncate_address(None) is None
