"""The tamper-evident log: Merkle tree, sequencer, signed checkpoints, proofs and the checks
that verify them. It works on stored records as bytes and leaf hashes only, so any record type
(an ``llm.call`` today, an MCP tool call next) is logged and proved the same way."""
