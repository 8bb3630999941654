"""The audit trail: one canonical record per LLM call and per governance change (DESIGN §4).

``record`` (schema, canonical bytes, leaf hash) · ``events`` (the record of each event type) ·
``trail`` (what the gateway calls) · ``writer`` and ``spool`` (queue → spool → store) ·
``store`` (the tables) · ``report`` and ``api`` (what auditors read) · ``export`` (OTLP, JSON
lines) · ``settings`` (the config section). Nothing here knows HTTP.
"""
