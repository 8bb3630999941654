"""The checkpoint signing keys the database records, and when each may vouch for a checkpoint.

``audit_signing_keys`` holds every key a gateway registered, with its validity period; retiring
a key (``retire_key``) closes that period, the one change the table's guard allows. Verifiers
given out of band carry no period of their own and take the table's for the same key
(``with_recorded_validity``): the table can only narrow the trust a vkey carries, never widen it.
"""

from __future__ import annotations

from custos.audit.log.checkpoint import Checkpoint, Verifier, now_ms
from custos.state.store import Store, _dt


async def registered_verifiers(store: Store) -> list[Verifier]:
    """Every key in the key table, oldest first, with its validity period."""
    async with store.transaction(readonly=True) as tx:
        rows = await tx.fetch("SELECT * FROM audit_signing_keys ORDER BY not_before")
    return [
        Verifier(r["key_name"], bytes(r["public_key"]), _dt(r["not_before"]), _dt(r["not_after"]))
        for r in rows
    ]


def with_recorded_validity(given: list[Verifier], recorded: list[Verifier]) -> list[Verifier]:
    """The out-of-band verifiers ``given``, each narrowed to the validity period ``recorded``
    (the key table) holds for the same name and public key; unknown keys are left as given.
    Matching is on the whole public key, not the 4-byte key ID, which can be made to collide."""
    table = {(v.name, v.public_key): v for v in recorded}
    narrowed: list[Verifier] = []
    for key in given:
        row = table.get((key.name, key.public_key))
        if row is None:
            narrowed.append(key)
            continue
        starts = [t for t in (key.not_before, row.not_before) if t is not None]
        ends = [t for t in (key.not_after, row.not_after) if t is not None]
        narrowed.append(Verifier(key.name, key.public_key, max(starts, default=None),
                                 min(ends, default=None)))  # fmt: skip
    return narrowed


def validity_problem(checkpoint: Checkpoint) -> str | None:
    """Why no verified signature of ``checkpoint`` counts (``None`` when one does): each signing
    key must be valid at the checkpoint's time, and one that is suffices."""
    at = checkpoint.at
    if any(v.valid_at(at) for v in checkpoint.keys):
        return None
    reasons = [
        f"{v.name} ({v.id.hex()}) retired at {v.not_after.isoformat()}"
        if v.not_after is not None and at >= v.not_after
        else f"{v.name} ({v.id.hex()}) valid only from "
        f"{v.not_before.isoformat() if v.not_before else '?'}"
        for v in checkpoint.keys
    ]
    return f"signed at {checkpoint.time} only by keys outside their validity: {'; '.join(reasons)}"


class RetireError(Exception):
    """``retire_key`` refused: the message says why."""


async def retire_key(store: Store, name: str, key_id: str | None = None) -> Verifier:
    """Close the validity of the key ``name`` (and ``key_id``, hex, when several share the
    name): ``not_after`` = now, the one change the table's guard allows. From then on verify
    counts a checkpoint dated later only through another key's signature. Refuses (with
    ``RetireError``) an unknown key, a key already retired, and the last key still valid: a
    log with no valid key could not be signed at all. Returns the key as retired."""
    async with store.transaction() as tx:
        rows = await tx.fetch(
            f"SELECT * FROM audit_signing_keys ORDER BY not_before{tx.for_update}"
        )
        keys = [
            (str(r["key_id"]), Verifier(r["key_name"], bytes(r["public_key"]),
                                        _dt(r["not_before"]), _dt(r["not_after"])))
            for r in rows
        ]  # fmt: skip
        key = _choose_key(keys, name, key_id)
        if key.not_after is not None:
            raise RetireError(f"key {name} ({key.id.hex()}) was already retired at "
                              f"{key.not_after.isoformat()}")  # fmt: skip
        if not any(v.not_after is None and v != key for _, v in keys):
            raise RetireError(
                f"key {name} ({key.id.hex()}) is the last key still valid: configure the new "
                "signing key and start the gateway with it (which registers it) first"
            )
        now = now_ms()
        updated = await tx.execute(
            "UPDATE audit_signing_keys SET not_after = $1"
            " WHERE key_name = $2 AND key_id = $3 AND not_after IS NULL",
            now,
            name,
            key.id.hex(),
        )
        if updated != 1:
            raise RetireError(f"key {name} ({key.id.hex()}) changed meanwhile; try again")
    return Verifier(key.name, key.public_key, key.not_before, now)


def _choose_key(keys: list[tuple[str, Verifier]], name: str, key_id: str | None) -> Verifier:
    """The one key named ``name`` (with ``key_id`` when given); when several share the name
    and no ID is given, the one still valid if exactly one is."""
    named = [v for stored_id, v in keys
             if v.name == name and (key_id is None or stored_id == key_id.lower())]  # fmt: skip
    if not named:
        known = ", ".join(f"{v.name} ({i})" for i, v in keys) or "none"
        which = f"{name} ({key_id})" if key_id else name
        raise RetireError(f"no audit signing key {which}; the keys are: {known}")
    if len(named) > 1:
        still_valid = [v for v in named if v.not_after is None]
        if len(still_valid) != 1:
            ids = ", ".join(v.id.hex() for v in named)
            raise RetireError(f"several keys are named {name}: pass --key-id (one of {ids})")
        return still_valid[0]
    return named[0]
