"""The audit trail: one canonical record per LLM call and per governance change (DESIGN §4).

Four subsystems, each a subpackage; nothing here knows HTTP, and this module imports none of
them (import the module you need):

- ``records``: what a record is and how the request path makes one: ``record`` (schema,
  canonical bytes, leaf hash), ``events`` (the record of each event type), ``trail`` (the
  gateway's hooks), ``content`` and ``transcript`` (prompts and completions kept);
- ``storage``: getting records durable: ``writer`` and ``spool`` (queue → spool → store),
  ``store`` (the audit tables), ``content_store`` (encrypted content and its keys);
- ``log``: the tamper-evident log over any stored record: ``merkle``, ``sequencer`` (the
  leader that orders leaves, and ``AuditLog``), ``checkpoint`` (signed tree heads), ``proof``
  (inclusion proofs), ``checks`` (what verifying the log proves, one function per check),
  ``keys`` (the signing keys' validity);
- ``compliance``: what auditors and operators run: ``verify`` (every check, the report),
  ``derived`` (the projections against their records), ``retention`` (purge and holds),
  ``export`` (OTLP, JSON lines), ``report``.

Beside them: ``settings`` (the ``audit`` config section), ``classes`` (data classification),
``api`` and ``cli`` (the admin API's and the command line's audit surfaces).
"""
