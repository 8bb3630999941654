"""Inclusion proofs for one record, checkable without the database.

``prove_event`` writes a JSON document::

    {"format": "custos-audit-proof/1", "event_id": …, "seq": i,
     "record": "<the record's canonical bytes as text>",
     "checkpoint": "<the signed note of a checkpoint whose size > seq>",
     "inclusion_proof": ["<base64 hash>", …]}

``check_proof`` (``custos audit check-proof FILE --public-key K``) needs only that document and
a trusted verifier key: it verifies the checkpoint's signature, recomputes the leaf hash from
the record's bytes, and runs the RFC 9162 inclusion verification against the signed root. No
other record is disclosed.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from custos.audit.log.checkpoint import Checkpoint, NoteError, Verifier, parse_checkpoint
from custos.audit.log.merkle import (
    inclusion_proof,
    leaf_hash,
    needed_for_inclusion,
    verify_inclusion,
)
from custos.audit.log.sequencer import read_nodes
from custos.state.store import Store

FORMAT: Final = "custos-audit-proof/1"


class ProofError(Exception):
    """No proof can be made, or a proof document does not hold."""


async def prove_event(store: Store, event_id: str) -> dict[str, Any]:
    """The proof document for ``event_id`` against the latest checkpoint covering it."""
    async with store.transaction(readonly=True) as tx:
        row = await tx.fetchrow(
            "SELECT l.seq, e.record FROM audit_leaves l JOIN audit_events e"
            " ON e.event_id = l.event_id WHERE l.event_id = $1",
            event_id,
        )
        if row is None:
            raise ProofError(f"event {event_id} is not (yet) in the log")
        seq = int(row["seq"])
        cp_row = await tx.fetchrow(
            "SELECT note, size FROM audit_checkpoints WHERE size > $1 ORDER BY id DESC LIMIT 1",
            seq,
        )
        if cp_row is None:
            raise ProofError(f"event {event_id} (seq {seq}) is not covered by a checkpoint yet")
        size = int(cp_row["size"])
        nodes = await read_nodes(tx, needed_for_inclusion(seq, size))
    try:
        proof = inclusion_proof(seq, size, lambda level, index: nodes[(level, index)])
    except KeyError as exc:
        raise ProofError(f"the stored tree lacks node {exc}") from None
    return {
        "format": FORMAT,
        "event_id": event_id,
        "seq": seq,
        "record": bytes(row["record"]).decode("utf-8"),
        "checkpoint": cp_row["note"],
        "inclusion_proof": [base64.b64encode(h).decode() for h in proof],
    }


def check_proof(document: dict[str, Any], verifiers: list[Verifier]) -> Checkpoint:
    """Verify a proof document; returns the checkpoint it is proven against.

    Raises ``ProofError`` when the format, the signature or the inclusion does not hold."""
    try:
        if document.get("format") != FORMAT:
            raise ProofError(f"not a {FORMAT} document")
        checkpoint = parse_checkpoint(document["checkpoint"], verifiers)
        seq = document["seq"]
        proof = [base64.b64decode(h, validate=True) for h in document["inclusion_proof"]]
        leaf = leaf_hash(document["record"].encode("utf-8"))
    except NoteError as exc:
        raise ProofError(f"checkpoint: {exc}") from None
    except (KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise ProofError(f"malformed proof document ({exc})") from None
    if type(seq) is not int or not verify_inclusion(seq, checkpoint.size, leaf, proof,
                                                    checkpoint.root):  # fmt: skip
        raise ProofError("the record is not included in the signed tree")
    return checkpoint
